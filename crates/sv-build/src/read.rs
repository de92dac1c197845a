//! Reading one input's bytes without ever blocking on, or exhausting memory for, a
//! file that is not what it claims: only regular files are read (the type is checked
//! on the opened file, so a swap between listing and reading is caught; sv-core's
//! `fs` helpers), a FIFO is opened without waiting for a writer, and no input larger
//! than [`MAX_INPUT_BYTES`] is read. Failures are reasons in words for the rejects.

use std::fs::File;
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
    /// WebDataset tars or parquet files (see [`crate::hub`]).
    Hub(crate::hub::Reader),
}

impl Source {
    pub fn new(inputs: &crate::Inputs, input: &Path) -> Result<Source, crate::BuildError> {
        if let Some(hub) = &inputs.hub {
            return Ok(Source::Hub(crate::hub::Reader::new(hub.clone())));
        }
        Ok(match &inputs.archive {
            Some(a) => Source::Archive(crate::archive::Archive::open(a)?),
            None => Source::Folder(input.to_path_buf()),
        })
    }

    /// The bytes of one input image.
    pub fn read(&self, img: &crate::inputs::InputImage) -> Result<Vec<u8>, String> {
        match (self, img.offset) {
            (Source::Hub(r), _) => r.read(img),
            (Source::Archive(a), Some(offset)) => a.read(offset, img.size, MAX_INPUT_BYTES),
            (Source::Folder(root), _) => read_regular(&root.join(&img.path), MAX_INPUT_BYTES),
            (Source::Archive(a), None) => Err(format!(
                "internal error: no offset for a member of {}",
                a.path.display()
            )),
        }
    }

    /// Why the source can no longer be read, once a read found it damaged (an
    /// archive cut or changed after it was listed): the build stops.
    pub fn damaged(&self) -> Option<(&Path, &str)> {
        match self {
            Source::Archive(a) => a.damaged().map(|why| (a.path.as_path(), why)),
            Source::Folder(_) => None,
            Source::Hub(r) => r.damaged(),
        }
    }

    /// Whether one thread should read for all workers (an archive, read in order).
    pub fn sequential(&self) -> bool {
        matches!(self, Source::Archive(_) | Source::Hub(_))
    }
}

/// What kind of file something is, in words.
pub(crate) fn kind_of(ft: std::fs::FileType) -> &'static str {
    sv_core::fs::describe_type(ft)
}

/// Why a file could not be read, in words, without its path (reports name it).
fn reason(e: &sv_core::fs::FsError) -> String {
    use sv_core::fs::FsError;
    match e {
        FsError::Io { op, source, .. } => format!("cannot {op}: {}", io_words(source)),
        FsError::NotAFile { kind, .. } => format!("not a regular file: {kind}"),
        FsError::TooLarge { size, limit, .. } => too_large(*size, *limit),
    }
}

/// Open `path` for reading if, once open, it is a regular file (see
/// [`sv_core::fs::open_regular`]); returns the file and its length. `Err` is the
/// reason, in words.
pub(crate) fn open_regular(path: &Path) -> Result<(File, u64), String> {
    let file = sv_core::fs::open_regular(path).map_err(|e| reason(&e))?;
    let len = file
        .metadata()
        .map_err(|e| format!("cannot read its attributes: {}", io_words(&e)))?
        .len();
    Ok((file, len))
}

/// Read a whole regular file of at most `limit` bytes.
pub(crate) fn read_regular(path: &Path, limit: u64) -> Result<Vec<u8>, String> {
    sv_core::fs::read_regular(path, limit).map_err(|e| reason(&e))
}

/// A text file the build reads besides images (labels, class names, ground truth).
/// A leading UTF-8 byte-order mark (which some editors and spreadsheet programs
/// write) is dropped: it is an encoding marker, not part of the first line.
pub(crate) fn read_text(path: &Path) -> Result<String, crate::BuildError> {
    let bytes = read_regular(path, MAX_INPUT_BYTES)
        .map_err(|reason| crate::BuildError::Input(format!("{}: {reason}", path.display())))?;
    text_of(bytes).map_err(|why| crate::BuildError::Input(format!("{}: {why}", path.display())))
}

/// `bytes` as text (a leading byte-order mark dropped); `Err` says why they are not,
/// with the likely cause.
pub(crate) fn text_of(bytes: Vec<u8>) -> Result<String, String> {
    let cause = likely_cause(&bytes);
    match String::from_utf8(bytes) {
        Ok(mut text) => {
            if text.starts_with(BOM) {
                text.drain(..BOM.len_utf8());
            }
            Ok(text)
        }
        Err(e) => Err(format!(
            "not UTF-8 text (invalid byte at offset {}){}",
            e.utf8_error().valid_up_to(),
            cause.map(|c| format!(": {c}")).unwrap_or_default()
        )),
    }
}

/// Unicode's byte-order mark, U+FEFF.
const BOM: char = '\u{feff}';

/// What a file that is not what it should be most likely is, from its first bytes:
/// a compressed file, a byte-order mark, binary data.
pub(crate) fn likely_cause(head: &[u8]) -> Option<&'static str> {
    const MAGIC: &[(&[u8], &str)] = &[
        (
            &[0x1f, 0x8b],
            "this looks like a gzip file (decompress it first, e.g. with gunzip)",
        ),
        (b"BZh", "this looks like a bzip2 file (decompress it first)"),
        (
            &[0xfd, b'7', b'z', b'X', b'Z', 0],
            "this looks like an xz file (decompress it first)",
        ),
        (
            &[0x28, 0xb5, 0x2f, 0xfd],
            "this looks like a zstd file (decompress it first)",
        ),
        (
            b"PK\x03\x04",
            "this looks like a zip file, not a tar archive",
        ),
        (
            b"7z\xbc\xaf",
            "this looks like a 7-Zip file, not a tar archive",
        ),
        (
            "\u{feff}".as_bytes(),
            "it starts with a UTF-8 byte-order mark (an invisible U+FEFF some editors write)",
        ),
        (
            &[0xff, 0xfe],
            "it starts with a UTF-16 byte-order mark: save it as UTF-8",
        ),
        (
            &[0xfe, 0xff],
            "it starts with a UTF-16 byte-order mark: save it as UTF-8",
        ),
    ];
    MAGIC
        .iter()
        .find(|(m, _)| head.starts_with(m))
        .map(|(_, c)| *c)
        .or_else(|| {
            head.iter()
                .take(512)
                .any(|&b| b == 0)
                .then_some("it holds binary data")
        })
}

/// `text` with control and invisible characters written as escapes, so that what a
/// damaged file put into a message (a library's error quoting its bytes, say) shows.
pub(crate) fn escape_text(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        let invisible = c.is_control()
            || matches!(c, '\u{feff}' | '\u{200b}'..='\u{200f}' | '\u{2028}'..='\u{202e}');
        if invisible {
            out.extend(c.escape_default());
        } else if c == '\u{fffd}' {
            // what a lossy conversion left of bytes that are not UTF-8
            out.push_str("\\u{fffd}");
        } else {
            out.push(c);
        }
    }
    out
}

/// Text taken from a file, for a message: at most `max` characters, in backticks,
/// with control and invisible characters written as escapes (`\u{feff}`), and the
/// likely cause named when it starts like a known kind of file or holds a
/// byte-order mark.
pub(crate) fn quote(text: &str, max: usize) -> String {
    let shown: String = text.chars().take(max).collect();
    let mut out = format!("`{}", escape_text(&shown));
    if text.chars().nth(max).is_some() {
        out.push_str("...");
    }
    out.push('`');
    let cause = likely_cause(text.as_bytes()).or_else(|| {
        text.contains(BOM)
            .then_some("it holds a UTF-8 byte-order mark (an invisible U+FEFF)")
    });
    if let Some(c) = cause {
        out.push_str(&format!(" ({c})"));
    }
    out
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
        assert!(err.contains("directory"), "{err}");
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
        // Special files are refused by their opened type, never read.
    }
}
