//! The project's two file mechanisms, kept in one place so every crate behaves alike:
//!
//! - **Atomic writes** ([`AtomicFile`], [`write_atomic`]): a final file is written
//!   under a temporary name in the same folder, synced, renamed over the final name,
//!   and the folder is synced, so after a crash or power cut the final name holds
//!   either the old complete file or the new complete file, never a mix, and a
//!   rename that was reported is on disk. If anything fails before the rename (a
//!   full disk, an error in the caller's writer, a panic), the temporary file is
//!   removed and the old file is left as it was.
//! - **Regular files only** ([`open_regular`], [`read_regular`]): a FIFO, socket or
//!   device named where a data file is expected would block a reader forever or
//!   stream without end; these open without blocking and check the type of what was
//!   opened (after the open, so a file swapped in between cannot slip through).
//!
//! Temporary names are `.<final name>.<pid>.<n>.tmp`: hidden, unique per process and
//! write, created with `O_EXCL` so two writers never share one, and ending in `.tmp`
//! ([`is_temp_name`]) so the owner of a folder can recognise what a killed writer
//! left behind.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// A file operation that failed, naming the path and what was being done.
#[derive(Debug, thiserror::Error)]
pub enum FsError {
    /// The operating system refused an operation.
    #[error("{path}: {op} failed")]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// What was being done (`open`, `write`, `sync`, `rename`, ...).
        op: &'static str,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A path that should name a regular file names something else.
    #[error("{path} is {kind}, not a regular file")]
    NotAFile {
        /// The path.
        path: PathBuf,
        /// What it is, in words (`a directory`, `a FIFO (named pipe)`, ...).
        kind: &'static str,
    },
    /// A file larger than the caller accepts for its kind.
    #[error("{path} is {size} bytes, more than the {limit} bytes allowed for this file")]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// Its size.
        size: u64,
        /// The most accepted.
        limit: u64,
    },
}

impl FsError {
    fn io(path: &Path, op: &'static str) -> impl FnOnce(std::io::Error) -> FsError + use<> {
        let path = path.to_path_buf();
        move |source| FsError::Io { path, op, source }
    }

    /// The path the error is about.
    pub fn path(&self) -> &Path {
        match self {
            FsError::Io { path, .. }
            | FsError::NotAFile { path, .. }
            | FsError::TooLarge { path, .. } => path,
        }
    }

    /// Whether the error says the path does not exist.
    pub fn is_not_found(&self) -> bool {
        matches!(self, FsError::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound)
    }
}

/// Whether a file name is one of this project's temporary names (a leftover when no
/// writer is running).
pub fn is_temp_name(name: &str) -> bool {
    name.ends_with(".tmp")
}

/// What a file type is, in words, for messages.
pub fn describe_type(ft: std::fs::FileType) -> &'static str {
    if ft.is_file() {
        return "a regular file";
    }
    if ft.is_dir() {
        return "a directory";
    }
    if ft.is_symlink() {
        return "a symbolic link";
    }
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
    "a special file"
}

/// Open `path` for reading if it is a regular file (symbolic links are followed).
///
/// The open never blocks (a FIFO without a writer would block a plain open forever),
/// and the type is checked on the opened descriptor.
pub fn open_regular(path: impl AsRef<Path>) -> Result<File, FsError> {
    let path = path.as_ref();
    let mut options = OpenOptions::new();
    options.read(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        // O_NONBLOCK only changes how the open itself behaves here: reads of regular
        // files ignore it, and anything else is refused below.
        options.custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY);
    }
    let file = options.open(path).map_err(FsError::io(path, "open"))?;
    let ft = file
        .metadata()
        .map_err(FsError::io(path, "stat"))?
        .file_type();
    if !ft.is_file() {
        return Err(FsError::NotAFile {
            path: path.to_path_buf(),
            kind: describe_type(ft),
        });
    }
    Ok(file)
}

/// Read the whole of `path`, a regular file of at most `limit` bytes.
pub fn read_regular(path: impl AsRef<Path>, limit: u64) -> Result<Vec<u8>, FsError> {
    let path = path.as_ref();
    let file = open_regular(path)?;
    let size = file.metadata().map_err(FsError::io(path, "stat"))?.len();
    if size > limit {
        return Err(FsError::TooLarge {
            path: path.to_path_buf(),
            size,
            limit,
        });
    }
    let mut bytes = Vec::with_capacity(usize::try_from(size).unwrap_or(0));
    // take(): a file that grows while being read still stops at the limit.
    file.take(limit.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(FsError::io(path, "read"))?;
    if bytes.len() as u64 > limit {
        return Err(FsError::TooLarge {
            path: path.to_path_buf(),
            size: bytes.len() as u64,
            limit,
        });
    }
    Ok(bytes)
}

/// Fail early when `path` cannot be the target of an atomic write because something
/// other than a regular file (a directory, a FIFO, ...) is there, so that a long
/// computation is not thrown away at the end. A missing path is fine.
pub fn check_write_target(path: impl AsRef<Path>) -> Result<(), FsError> {
    let path = path.as_ref();
    match std::fs::metadata(path) {
        Ok(m) if m.is_file() => Ok(()),
        Ok(m) => Err(FsError::NotAFile {
            path: path.to_path_buf(),
            kind: describe_type(m.file_type()),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(FsError::Io {
            path: path.to_path_buf(),
            op: "stat",
            source: e,
        }),
    }
}

/// A file being written under a temporary name; [`commit`](Self::commit) puts it in
/// place. Dropped without a commit (an error, a panic), it removes its temporary
/// file and leaves whatever was at the final name untouched.
///
/// It writes straight to the file: wrap it in a [`std::io::BufWriter`] for small
/// writes, and take it back with `into_inner` before committing.
#[derive(Debug)]
pub struct AtomicFile {
    path: PathBuf,
    temp: PathBuf,
    file: Option<File>,
}

impl AtomicFile {
    /// Start writing `path` (its folder must exist). Fails at once when `path` names
    /// a directory or another non-regular file.
    pub fn create(path: impl AsRef<Path>) -> Result<AtomicFile, FsError> {
        let path = path.as_ref().to_path_buf();
        check_write_target(&path)?;
        let name = path
            .file_name()
            .ok_or_else(|| FsError::NotAFile {
                path: path.clone(),
                kind: "a folder path",
            })?
            .to_string_lossy()
            .into_owned();
        let dir = parent_dir(&path);
        static NEXT: AtomicU64 = AtomicU64::new(0);
        loop {
            let n = NEXT.fetch_add(1, Ordering::Relaxed);
            let temp = dir.join(format!(".{name}.{}.{n}.tmp", std::process::id()));
            match OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .open(&temp)
            {
                Ok(file) => {
                    return Ok(AtomicFile {
                        path,
                        temp,
                        file: Some(file),
                    });
                }
                // A leftover of an earlier process with the same id: pick another.
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(FsError::io(&temp, "create")(e)),
            }
        }
    }

    /// The final path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The temporary file being written. A writer that insists on opening a path
    /// itself may write here (replacing its contents) before [`commit`](Self::commit).
    pub fn temp_path(&self) -> &Path {
        &self.temp
    }

    fn file(&mut self) -> std::io::Result<&mut File> {
        self.file
            .as_mut()
            .ok_or_else(|| std::io::Error::other("atomic file already committed"))
    }

    /// Ask the kernel to start writing back, in the background, what has been written
    /// from byte `from` on, so the sync in [`commit`](Self::commit) waits for less.
    /// A hint only (Linux's `sync_file_range(SYNC_FILE_RANGE_WRITE)`; nothing elsewhere):
    /// it neither blocks on the disk nor makes anything durable, and its errors are
    /// left to the sync, which reports them.
    pub fn start_writeback(&self, from: u64) {
        #[cfg(target_os = "linux")]
        if let (Some(f), Ok(from)) = (&self.file, libc::off64_t::try_from(from)) {
            use std::os::fd::AsRawFd;
            // SAFETY: a plain syscall on an open descriptor we own; no memory is passed.
            unsafe {
                libc::sync_file_range(f.as_raw_fd(), from, 0, libc::SYNC_FILE_RANGE_WRITE);
            }
        }
        #[cfg(not(target_os = "linux"))]
        let _ = from;
    }

    /// Sync the data, rename the file over the final name, sync the folder. On an
    /// error the temporary file is removed and the final name is left as it was
    /// (unless the rename itself was done).
    pub fn commit(mut self) -> Result<(), FsError> {
        let file = self.file.take();
        if let Some(f) = file {
            f.sync_all().map_err(FsError::io(&self.path, "sync"))?;
        }
        std::fs::rename(&self.temp, &self.path).map_err(FsError::io(&self.path, "rename"))?;
        // The temporary name is gone; nothing is left to clean up.
        self.temp = PathBuf::new();
        sync_dir(parent_dir(&self.path))
    }
}

impl Write for AtomicFile {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.file()?.write(buf)
    }
    fn write_all(&mut self, buf: &[u8]) -> std::io::Result<()> {
        self.file()?.write_all(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.file()?.flush()
    }
}

impl Seek for AtomicFile {
    fn seek(&mut self, pos: SeekFrom) -> std::io::Result<u64> {
        self.file()?.seek(pos)
    }
}

impl Drop for AtomicFile {
    fn drop(&mut self) {
        drop(self.file.take());
        if !self.temp.as_os_str().is_empty() {
            // Best effort: the error that got us here is what the caller reports.
            let _ = std::fs::remove_file(&self.temp);
        }
    }
}

/// Write `bytes` to `path` atomically (see the module header).
pub fn write_atomic(path: impl AsRef<Path>, bytes: &[u8]) -> Result<(), FsError> {
    let mut file = AtomicFile::create(path)?;
    // the error names the file being written, not its temporary name
    file.write_all(bytes)
        .map_err(FsError::io(file.path(), "write"))?;
    file.commit()
}

/// The folder a path lies in (`.` for a bare file name).
fn parent_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// Sync a folder, so that a rename inside it survives a power cut.
pub fn sync_dir(dir: impl AsRef<Path>) -> Result<(), FsError> {
    #[cfg(unix)]
    {
        let dir = dir.as_ref();
        let d = File::open(dir).map_err(FsError::io(dir, "open folder"))?;
        match d.sync_all() {
            Ok(()) => Ok(()),
            // Some file systems cannot sync a folder; nothing more can be done there.
            Err(e) if matches!(e.raw_os_error(), Some(libc::EINVAL | libc::ENOTSUP)) => Ok(()),
            Err(e) => Err(FsError::Io {
                path: dir.to_path_buf(),
                op: "sync folder",
                source: e,
            }),
        }
    }
    #[cfg(not(unix))]
    {
        // Folders cannot be opened for syncing here; the rename is what it is.
        let _ = dir;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn write_atomic_replaces_whole_and_leaves_nothing_else() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("a.json");
        write_atomic(&p, b"first").unwrap();
        write_atomic(&p, b"second, longer").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"second, longer");
        assert_eq!(names(t.path()), ["a.json"]);
    }

    #[test]
    fn a_failure_mid_write_keeps_the_old_file_and_leaves_no_temp() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("pca.json");
        write_atomic(&p, b"old and complete").unwrap();
        // The caller's writer fails half way (as on a full disk).
        let r = (|| -> Result<(), FsError> {
            let mut f = AtomicFile::create(&p)?;
            f.write_all(b"new but cut ").unwrap();
            assert!(f.temp_path().exists());
            Err(FsError::io(f.temp_path(), "write")(
                std::io::Error::from_raw_os_error(
                    28, // ENOSPC
                ),
            ))
        })();
        assert!(r.unwrap_err().to_string().contains("write failed"));
        assert_eq!(std::fs::read(&p).unwrap(), b"old and complete");
        assert_eq!(names(t.path()), ["pca.json"]);
        // A panic in the middle cleans up too.
        let caught = std::panic::catch_unwind(|| {
            let mut f = AtomicFile::create(&p).unwrap();
            f.write_all(b"x").unwrap();
            panic!("writer bug");
        });
        assert!(caught.is_err());
        assert_eq!(names(t.path()), ["pca.json"]);
    }

    #[test]
    fn a_failed_rename_leaves_no_temp() {
        let t = tempfile::tempdir().unwrap();
        // The target turns into a folder between create and commit.
        let p = t.path().join("out");
        let f = AtomicFile::create(&p).unwrap();
        std::fs::create_dir(&p).unwrap();
        std::fs::write(p.join("inside"), b"keep").unwrap();
        let err = f.commit().unwrap_err();
        assert!(err.to_string().contains("rename failed"), "{err}");
        assert_eq!(names(t.path()), ["out"]);
        assert_eq!(std::fs::read(p.join("inside")).unwrap(), b"keep");
    }

    #[test]
    fn a_directory_target_is_refused_before_writing() {
        let t = tempfile::tempdir().unwrap();
        let err = write_atomic(t.path(), b"x").unwrap_err();
        // tempdir's path has a file name; it is a directory.
        assert!(
            matches!(
                err,
                FsError::NotAFile {
                    kind: "a directory",
                    ..
                }
            ),
            "{err}"
        );
        assert!(
            err.to_string()
                .contains("is a directory, not a regular file")
        );
        let sub = t.path().join("d");
        std::fs::create_dir(&sub).unwrap();
        assert!(write_atomic(&sub, b"x").is_err());
        assert_eq!(names(t.path()), ["d"]);
        assert!(names(&sub).is_empty());
        // A path without a file name.
        assert!(write_atomic(Path::new("/"), b"x").is_err());
    }

    #[test]
    fn streaming_with_seek_and_temp_path_writers() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("shard.svs");
        let mut f = std::io::BufWriter::new(AtomicFile::create(&p).unwrap());
        f.write_all(&[0u8; 8]).unwrap();
        f.write_all(b"body").unwrap();
        f.seek(SeekFrom::Start(0)).unwrap();
        f.write_all(b"HEADER!!").unwrap();
        f.into_inner().unwrap().commit().unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"HEADER!!body");
        // A writer that opens the temporary path itself.
        let f = AtomicFile::create(&p).unwrap();
        std::fs::write(f.temp_path(), b"via path").unwrap();
        f.commit().unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"via path");
        assert_eq!(names(t.path()), ["shard.svs"]);
        assert!(is_temp_name(".shard.svs.1.0.tmp") && !is_temp_name("shard.svs"));
    }

    #[test]
    fn two_writers_never_share_a_temp_file() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("x");
        let mut a = AtomicFile::create(&p).unwrap();
        let mut b = AtomicFile::create(&p).unwrap();
        assert_ne!(a.temp_path(), b.temp_path());
        a.write_all(b"aaaa").unwrap();
        b.write_all(b"bb").unwrap();
        a.commit().unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"aaaa");
        b.commit().unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"bb");
    }

    #[test]
    fn a_bare_file_name_is_written_in_the_current_folder() {
        assert_eq!(parent_dir(Path::new("pca.json")), PathBuf::from("."));
        assert_eq!(parent_dir(Path::new("a/b.json")), PathBuf::from("a"));
    }

    #[cfg(unix)]
    #[test]
    fn special_files_are_refused_without_blocking() {
        let t = tempfile::tempdir().unwrap();
        let fifo = t.path().join("manifest.json");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
        // Would block forever without O_NONBLOCK: no writer ever opens the FIFO.
        let err = read_regular(&fifo, 1 << 20).unwrap_err();
        assert!(
            err.to_string()
                .ends_with("manifest.json is a FIFO (named pipe), not a regular file"),
            "{err}"
        );
        let link = t.path().join("link");
        std::os::unix::fs::symlink(&fifo, &link).unwrap();
        assert!(matches!(open_regular(&link), Err(FsError::NotAFile { .. })));
        let err = open_regular(t.path()).unwrap_err();
        assert!(err.to_string().contains("is a directory"), "{err}");
        let err = open_regular(Path::new("/dev/null")).unwrap_err();
        assert!(err.to_string().contains("a character device"), "{err}");
        assert!(
            open_regular(t.path().join("missing"))
                .unwrap_err()
                .is_not_found()
        );
        assert!(matches!(
            check_write_target(&fifo),
            Err(FsError::NotAFile { .. })
        ));
        // Regular files read as usual, within the limit.
        let f = t.path().join("f");
        std::fs::write(&f, b"12345").unwrap();
        assert_eq!(read_regular(&f, 5).unwrap(), b"12345");
        let err = read_regular(&f, 4).unwrap_err();
        assert!(
            matches!(
                err,
                FsError::TooLarge {
                    size: 5,
                    limit: 4,
                    ..
                }
            ),
            "{err}"
        );
    }
}
