//! An exclusive lock on a folder, held for as long as one process writes it (a build,
//! a merge, a training run); each command names its own lock file and error.
//!
//! The lock file is locked with `flock(LOCK_EX | LOCK_NB)`: the kernel releases the
//! lock when the holder exits, however it dies (`kill -9` included), so a stale lock
//! never blocks a later command. The file holds who took the lock (pid, host, start
//! time, command line), so a second command fails at once naming the holder.
//!
//! The file is removed by its holder at the end while still locked. A process that
//! opened it just before the removal could then lock a file that no longer has a name,
//! while a third creates and locks a new one; so after locking, the holder checks that
//! the path still names the file it locked, and tries again if not.

use std::fs::File;
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

/// Why a [`FolderLock`] could not be taken.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// Another live process holds the lock.
    #[error("locked by {holder}")]
    Held {
        /// The holder in words: "pid 12 on host h, running `supervision ...`".
        holder: String,
    },
    /// Opening, locking or writing the lock file failed.
    #[error("{path}: could not {op} the lock file")]
    Io {
        /// The lock file.
        path: PathBuf,
        /// What was being done.
        op: &'static str,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The lock file was replaced under every attempt (16 in a row).
    #[error("{0}: could not take the lock: the lock file keeps being replaced")]
    Replaced(PathBuf),
}

/// Held while a process writes a folder; released (and the file removed) when dropped.
#[derive(Debug)]
pub struct FolderLock {
    path: PathBuf,
    file: Option<File>,
}

impl FolderLock {
    /// Locks `dir/name` (`dir` must exist), or fails at once naming the holder.
    pub fn acquire(dir: &Path, name: &str) -> Result<FolderLock, LockError> {
        let path = dir.join(name);
        let io = |op: &'static str| {
            let path = path.clone();
            move |source| LockError::Io { path, op, source }
        };
        for _ in 0..16 {
            let mut file = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(&path)
                .map_err(io("open"))?;
            if !try_lock(&file).map_err(io("lock"))? {
                let mut holder = String::new();
                let _ = file.read_to_string(&mut holder);
                return Err(LockError::Held {
                    holder: describe_holder(&holder),
                });
            }
            if !same_file(&file, &path) {
                continue; // removed by its last holder after we opened it: retry
            }
            file.set_len(0)
                .and_then(|()| file.rewind())
                .and_then(|()| file.write_all(holder_text().as_bytes()))
                .and_then(|()| file.flush())
                .map_err(io("write"))?;
            return Ok(FolderLock {
                path,
                file: Some(file),
            });
        }
        Err(LockError::Replaced(path))
    }

    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for FolderLock {
    fn drop(&mut self) {
        // Removed while still held (see the module header), then released by closing.
        let _ = std::fs::remove_file(&self.path);
        drop(self.file.take());
    }
}

fn holder_text() -> String {
    let cmdline: Vec<String> = std::env::args().collect();
    let started = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    format!(
        "pid {}\nhost {}\nstarted {started}\ncommand {}\n",
        std::process::id(),
        hostname(),
        cmdline.join(" ")
    )
}

/// "pid 123 on host x, running `supervision shard build ...`" from the lock file's text.
fn describe_holder(text: &str) -> String {
    let field = |key: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(key)?.strip_prefix(' '))
            .map(str::trim)
            .filter(|v| !v.is_empty())
    };
    match field("pid") {
        Some(pid) => {
            let mut s = format!("pid {pid}");
            if let Some(host) = field("host") {
                s.push_str(&format!(" on {host}"));
            }
            if let Some(cmd) = field("command") {
                s.push_str(&format!(", running `{cmd}`"));
            }
            s
        }
        // The holder has locked the file but not yet written who it is.
        None => "a process that is just starting".into(),
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "this host".into())
}

#[cfg(unix)]
fn try_lock(file: &File) -> std::io::Result<bool> {
    use std::os::fd::AsRawFd;
    // SAFETY: flock on a file descriptor this function borrows; no memory is shared.
    let r = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if r == 0 {
        return Ok(true);
    }
    let e = std::io::Error::last_os_error();
    if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
        Ok(false)
    } else {
        Err(e)
    }
}

/// Whether `path` still names the open `file` (same device and inode).
#[cfg(unix)]
fn same_file(file: &File, path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (file.metadata(), std::fs::metadata(path)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

// Elsewhere the folder is not locked: only Unix builds are supported for concurrent use.
#[cfg(not(unix))]
fn try_lock(_file: &File) -> std::io::Result<bool> {
    Ok(true)
}

#[cfg(not(unix))]
fn same_file(_file: &File, _path: &Path) -> bool {
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_lock_names_the_first_and_the_file_goes_with_the_holder() {
        let d = tempfile::tempdir().unwrap();
        let first = FolderLock::acquire(d.path(), ".x.lock").unwrap();
        let err = FolderLock::acquire(d.path(), ".x.lock").unwrap_err();
        assert!(
            matches!(&err, LockError::Held { holder } if holder.contains(&format!("pid {}", std::process::id()))),
            "{err:?}"
        );
        drop(first);
        assert!(!d.path().join(".x.lock").exists());
        drop(FolderLock::acquire(d.path(), ".x.lock").unwrap());
    }

    #[test]
    fn a_stale_lock_file_of_a_dead_holder_is_taken_over() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join(".x.lock"), "pid 999999\nhost gone\n").unwrap();
        let lock = FolderLock::acquire(d.path(), ".x.lock").unwrap();
        let text = std::fs::read_to_string(lock.path()).unwrap();
        assert!(
            text.starts_with(&format!("pid {}\n", std::process::id())),
            "{text}"
        );
    }

    #[test]
    fn holder_description_reads_in_words() {
        assert_eq!(
            describe_holder("pid 12\nhost h\nstarted 1\ncommand supervision shard build\n"),
            "pid 12 on h, running `supervision shard build`"
        );
        assert_eq!(describe_holder(""), "a process that is just starting");
    }
}
