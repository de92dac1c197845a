//! Reading one input's bytes without ever blocking on, or exhausting memory for, a
//! file that is not what it claims: only regular files are read (the type is checked
//! on the opened file, so a swap between listing and reading is caught), a FIFO is
//! opened without waiting for a writer, and no input larger than [`MAX_INPUT_BYTES`]
//! is read.

use std::fs::File;
use std::io::Read;
use std::path::Path;

/// The largest input file read (ImageNet's largest JPEG is about 15 MB; a decoded
/// image is limited to 256 MiB by the decoder anyway).
pub const MAX_INPUT_BYTES: u64 = 256 << 20;

/// Where the images' bytes are read from.
#[derive(Debug)]
pub(crate) enum Source {
    /// Files under this folder.
    Folder(std::path::PathBuf),
    /// Members of this archive, by offset.
    Archive(crate::archive::Archive),
}

impl Source {
    pub fn new(inputs: &crate::Inputs, input: &Path) -> Result<Source, crate::BuildError> {
        Ok(match &inputs.archive {
            Some(a) => Source::Archive(crate::archive::Archive::open(a)?),
            None => Source::Folder(input.to_path_buf()),
        })
    }

    /// The bytes of one input image.
    pub fn read(&self, img: &crate::inputs::InputImage) -> Result<Vec<u8>, String> {
        match (self, img.offset) {
            (Source::Archive(a), Some(offset)) => a.read(offset, img.size, MAX_INPUT_BYTES),
            (Source::Folder(root), _) => read_regular(&root.join(&img.path), MAX_INPUT_BYTES),
            (Source::Archive(a), None) => Err(format!(
                "internal error: no offset for a member of {}",
                a.path.display()
            )),
        }
    }

    /// Whether one thread should read for all workers (an archive, read in order).
    pub fn sequential(&self) -> bool {
        matches!(self, Source::Archive(_))
    }
}

/// What kind of file a non-regular file is, in words.
pub(crate) fn kind_of(ft: std::fs::FileType) -> &'static str {
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        if ft.is_fifo() {
            return "a FIFO (named pipe)";
        }
        if ft.is_socket() {
            return "a socket";
        }
        if ft.is_char_device() {
            return "a character device";
        }
        if ft.is_block_device() {
            return "a block device";
        }
    }
    if ft.is_file() {
        "a regular file"
    } else if ft.is_dir() {
        "a folder"
    } else if ft.is_symlink() {
        "a symbolic link"
    } else {
        "not a regular file"
    }
}

/// Open `path` for reading if, once open, it is a regular file of at most `limit`
/// bytes; returns the file and its length. `Err` is the reason, in words.
pub(crate) fn open_regular(path: &Path, limit: u64) -> Result<(File, u64), String> {
    let mut options = std::fs::OpenOptions::new();
    options.read(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        // A FIFO opened without O_NONBLOCK waits for a writer forever; a terminal
        // would become ours. Neither flag changes how a regular file reads.
        options.custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY);
    }
    let file = options
        .open(path)
        .map_err(|e| format!("cannot open: {}", io_words(&e)))?;
    let meta = file
        .metadata()
        .map_err(|e| format!("cannot read its attributes: {}", io_words(&e)))?;
    if !meta.is_file() {
        return Err(format!("not a regular file: {}", kind_of(meta.file_type())));
    }
    if meta.len() > limit {
        return Err(too_large(meta.len(), limit));
    }
    Ok((file, meta.len()))
}

/// Read a whole regular file of at most `limit` bytes (see [`open_regular`]).
pub(crate) fn read_regular(path: &Path, limit: u64) -> Result<Vec<u8>, String> {
    let (file, len) = open_regular(path, limit)?;
    let mut bytes = Vec::with_capacity(len as usize);
    // `take`: a file that grows while it is read still stops at the limit.
    file.take(limit + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("cannot read: {}", io_words(&e)))?;
    if bytes.len() as u64 > limit {
        return Err(too_large(bytes.len() as u64, limit));
    }
    Ok(bytes)
}

/// A text file the build reads besides images (labels, class names, ground truth).
pub(crate) fn read_text(path: &Path) -> Result<String, crate::BuildError> {
    let bytes = read_regular(path, MAX_INPUT_BYTES)
        .map_err(|reason| crate::BuildError::Input(format!("{}: {reason}", path.display())))?;
    String::from_utf8(bytes).map_err(|e| {
        crate::BuildError::Input(format!(
            "{}: not UTF-8 text (invalid byte at offset {})",
            path.display(),
            e.utf8_error().valid_up_to()
        ))
    })
}

fn too_large(len: u64, limit: u64) -> String {
    format!(
        "is {len} bytes, more than the {} MiB read for one image",
        limit >> 20
    )
}

/// An I/O error in words, without Rust's `(os error N)` suffix.
pub(crate) fn io_words(e: &std::io::Error) -> String {
    let s = e.to_string();
    match s.find(" (os error") {
        Some(at) => s[..at].to_lowercase(),
        None => s,
    }
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;
    use std::os::unix::ffi::OsStrExt;

    /// Fail rather than hang.
    fn within<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(f());
        });
        rx.recv_timeout(std::time::Duration::from_secs(20))
            .expect("reading hung")
    }

    #[test]
    fn special_files_are_refused_at_once() {
        let d = tempfile::tempdir().unwrap();
        let fifo = d.path().join("fifo");
        let c = std::ffi::CString::new(fifo.as_os_str().as_bytes()).unwrap();
        // SAFETY: a valid, NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
        let err = within(move || read_regular(&fifo, MAX_INPUT_BYTES)).unwrap_err();
        assert!(err.contains("FIFO"), "{err}");
        let err = within(|| read_regular(Path::new("/dev/zero"), MAX_INPUT_BYTES)).unwrap_err();
        assert!(err.contains("character device"), "{err}");
        let err = read_regular(d.path(), MAX_INPUT_BYTES).unwrap_err();
        assert!(err.contains("folder"), "{err}");
    }

    #[test]
    fn size_limit_and_missing_files_in_words() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("big");
        std::fs::write(&p, vec![7u8; 100]).unwrap();
        assert_eq!(read_regular(&p, 100).unwrap().len(), 100);
        assert!(read_regular(&p, 99).unwrap_err().contains("100 bytes"));
        let err = read_regular(&d.path().join("none"), 10).unwrap_err();
        assert_eq!(err, "cannot open: no such file or directory");
    }
}
