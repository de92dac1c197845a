//! Turning SIGBUS from a truncated shard into an error message naming the shard.
//!
//! Readers see shards through a memory map. If another program truncates a shard
//! file in place while it is mapped, reading a page past the new end raises SIGBUS,
//! which by default kills the process with only "Bus error". Nothing in this
//! project changes a shard in place (writers rename complete files into place, and
//! a renamed-over file stays intact for whoever mapped it), so only an outside tool
//! can cause this; [`report_truncated_shards`] makes it end with a message that
//! names the file and says what happened, and exit status 1.
//!
//! The handler runs only async-signal-safe calls (`open`, `read`, `write`, `close`,
//! `_exit`) on stack buffers: it finds the faulting address in `/proc/self/maps`, and
//! when that is a mapped `.svs` file it writes the message and exits. Any other
//! SIGBUS gets the default action back and recurs as before (a crash with a core
//! dump, as without the handler). Linux only; elsewhere a no-op.

/// Install the SIGBUS report for this process (once; later calls do nothing).
/// Binaries that read shards call it at start; a library must not install it
/// behind a program's back.
pub fn report_truncated_shards() {
    #[cfg(target_os = "linux")]
    linux::install();
}

#[cfg(target_os = "linux")]
mod linux {
    use std::sync::Once;

    const MESSAGE_HEAD: &[u8] = b"error: ";
    const MESSAGE_TAIL: &[u8] = b": the shard file shrank while it was being read (bus error \
        on a page past its end): another program truncated or rewrote it in place. Shards \
        are never modified in place by SuperVision; stop whatever changed it and verify the \
        dataset.\n";

    pub fn install() {
        static ONCE: Once = Once::new();
        ONCE.call_once(|| {
            // SAFETY: a zeroed sigaction is a valid starting value; the handler has
            // the SA_SIGINFO signature and only makes async-signal-safe calls.
            unsafe {
                let mut action: libc::sigaction = std::mem::zeroed();
                action.sa_sigaction = handler as *const () as usize;
                // SA_RESETHAND: the default action is back as soon as the handler
                // runs, so returning from it re-raises SIGBUS as if never caught.
                action.sa_flags = libc::SA_SIGINFO | libc::SA_RESETHAND;
                libc::sigemptyset(&mut action.sa_mask);
                libc::sigaction(libc::SIGBUS, &action, std::ptr::null_mut());
            }
        });
    }

    extern "C" fn handler(_sig: libc::c_int, info: *mut libc::siginfo_t, _ctx: *mut libc::c_void) {
        // SAFETY: the kernel passes a valid siginfo_t for SA_SIGINFO handlers.
        let (code, addr) = unsafe { ((*info).si_code, (*info).si_addr() as usize) };
        if code != libc::BUS_ADRERR {
            return;
        }
        let mut path = [0u8; 4096];
        let Some(len) = mapped_path(addr, &mut path) else {
            return;
        };
        if !path[..len].ends_with(b".svs") {
            return;
        }
        write_all(MESSAGE_HEAD);
        write_all(&path[..len]);
        write_all(MESSAGE_TAIL);
        // SAFETY: _exit is async-signal-safe and ends the process at once.
        unsafe { libc::_exit(1) };
    }

    fn write_all(mut bytes: &[u8]) {
        while !bytes.is_empty() {
            // SAFETY: writing an initialised buffer to stderr.
            let n = unsafe { libc::write(2, bytes.as_ptr().cast(), bytes.len()) };
            if n <= 0 {
                return;
            }
            bytes = &bytes[n as usize..];
        }
    }

    /// The path of the file mapped at `addr`, from `/proc/self/maps`, copied into
    /// `out`; its length, or `None` when `addr` is in no file mapping.
    fn mapped_path(addr: usize, out: &mut [u8]) -> Option<usize> {
        // SAFETY: a NUL-terminated literal path; the descriptor is closed below.
        let fd = unsafe { libc::open(c"/proc/self/maps".as_ptr(), libc::O_RDONLY) };
        if fd < 0 {
            return None;
        }
        let mut buf = [0u8; 8192];
        let mut have = 0usize;
        let mut found = None;
        'read: loop {
            // SAFETY: reading into the unused tail of a stack buffer.
            let n = unsafe { libc::read(fd, buf[have..].as_mut_ptr().cast(), buf.len() - have) };
            if n <= 0 {
                break;
            }
            have += n as usize;
            let mut start = 0;
            while let Some(nl) = buf[start..have].iter().position(|&b| b == b'\n') {
                let line = &buf[start..start + nl];
                if let Some(len) = path_if_contains(line, addr, out) {
                    found = Some(len);
                    break 'read;
                }
                start += nl + 1;
            }
            if start == 0 && have == buf.len() {
                // A line longer than the buffer: skip it.
                have = 0;
            } else {
                buf.copy_within(start..have, 0);
                have -= start;
            }
        }
        // SAFETY: closing the descriptor opened above.
        unsafe { libc::close(fd) };
        found
    }

    /// For a maps line `start-end perms offset dev inode   path` whose range holds
    /// `addr`: copy the path into `out` and return its length.
    pub(super) fn path_if_contains(line: &[u8], addr: usize, out: &mut [u8]) -> Option<usize> {
        let dash = line.iter().position(|&b| b == b'-')?;
        let space = line.iter().position(|&b| b == b' ')?;
        let start = hex(&line[..dash])?;
        let end = hex(line.get(dash + 1..space)?)?;
        if addr < start || addr >= end {
            return None;
        }
        // The path is the sixth field; it starts at the first '/' after the fifth.
        let mut fields = 0;
        let mut i = space;
        while i < line.len() && fields < 4 {
            while i < line.len() && line[i] == b' ' {
                i += 1;
            }
            while i < line.len() && line[i] != b' ' {
                i += 1;
            }
            fields += 1;
        }
        let path_start = i + line[i..].iter().position(|&b| b == b'/')?;
        let path = &line[path_start..];
        let len = path.len().min(out.len());
        out[..len].copy_from_slice(&path[..len]);
        Some(len)
    }

    fn hex(digits: &[u8]) -> Option<usize> {
        let mut v = 0usize;
        for &d in digits {
            let x = (d as char).to_digit(16)?;
            v = v.checked_mul(16)?.checked_add(x as usize)?;
        }
        (!digits.is_empty()).then_some(v)
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    #[test]
    fn maps_lines_are_parsed_without_allocating() {
        let line = b"7f12a000-7f12c000 r--s 00001000 fd:01 123456     /data/x y/train-00001.svs";
        let mut out = [0u8; 64];
        let n = super::linux::path_if_contains(line, 0x7f12_b000, &mut out).unwrap();
        assert_eq!(&out[..n], b"/data/x y/train-00001.svs");
        assert_eq!(
            super::linux::path_if_contains(line, 0x7f12_c000, &mut out),
            None
        );
        assert_eq!(
            super::linux::path_if_contains(line, 0x7f12_9fff, &mut out),
            None
        );
        let anon = b"7f12a000-7f12c000 rw-p 00000000 00:00 0 ";
        assert_eq!(
            super::linux::path_if_contains(anon, 0x7f12_b000, &mut out),
            None
        );
        assert_eq!(
            super::linux::path_if_contains(b"garbage", 1, &mut out),
            None
        );
    }
}
