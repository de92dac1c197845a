//! Reading images straight from tar archives, as ImageNet is downloaded, with no
//! extraction and no temporary files:
//! - `ILSVRC2012_img_train.tar`: a tar of 1,000 class tars (`n01440764.tar`, ...),
//!   each holding that class's JPEGs. A `.tar` member at the top of an archive is read
//!   as a folder named after it (its stem), so the train tar reads as the class-folder
//!   tree it extracts to;
//! - `ILSVRC2012_img_val.tar`: the 50,000 val JPEGs, flat;
//! - any tar of a tree (`wnid/file` members) or of a flat folder.
//!
//! The archive is indexed first (headers only: the `tar` crate seeks over member
//! data), giving each member's offset and size; the build then reads members in its
//! record order (sorted paths, as for a folder) with positioned reads from one
//! thread. ImageNet's tars are stored in that order, so the reads run front to back.
//! A build from a tar is byte-identical to a build from its extracted tree.
//!
//! Checked while indexing: every member's data lies inside the archive, and the
//! archive ends with tar's end-of-archive block (a truncated outer tar is an error
//! naming the last member read); paths that leave the archive (`..`, absolute),
//! links, devices, FIFOs and sparse members are rejects; directory entries are
//! ignored (their files are read from their own entries); a later member of the same
//! name replaces an earlier one, as extraction does (a class tar given twice: the
//! later one's images only, as extracting the outer tar and then the class tars
//! gives). A class tar that is not a valid tar, is truncated, or holds no members is
//! one reject, and its class stays in the class list. A compressed archive (gzip,
//! bzip2, xz, zstd) is named as such, not read as a damaged tar.
//!
//! While the build reads members: a member that can no longer be read (the archive
//! was cut or changed after it was indexed) marks the archive damaged, and the build
//! stops with an error naming it, rather than turning the rest into rejects.

use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use crate::inputs::{Found, Ignored, Listing, display_path};
use crate::read::{escape_text, io_words, likely_cause, open_regular};
use crate::{BuildError, Reject};

const BLOCK: u64 = 512;

/// A window `[base, base + len)` of a file, read with positioned reads (so several
/// windows share one file handle), seekable.
struct Window<'a> {
    file: &'a File,
    base: u64,
    len: u64,
    pos: u64,
}

impl Read for Window<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let left = self.len.saturating_sub(self.pos);
        let n = (buf.len() as u64).min(left) as usize;
        if n == 0 {
            return Ok(0);
        }
        let got = read_at(self.file, &mut buf[..n], self.base + self.pos)?;
        self.pos += got as u64;
        Ok(got)
    }
}

impl Seek for Window<'_> {
    fn seek(&mut self, to: SeekFrom) -> std::io::Result<u64> {
        let pos = match to {
            SeekFrom::Start(p) => Some(p),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
            SeekFrom::End(d) => self.len.checked_add_signed(d),
        };
        self.pos = pos.ok_or_else(|| {
            std::io::Error::new(std::io::ErrorKind::InvalidInput, "seek before the start")
        })?;
        Ok(self.pos)
    }
}

#[cfg(unix)]
fn read_at(file: &File, buf: &mut [u8], at: u64) -> std::io::Result<usize> {
    std::os::unix::fs::FileExt::read_at(file, buf, at)
}

#[cfg(windows)]
fn read_at(file: &File, buf: &mut [u8], at: u64) -> std::io::Result<usize> {
    std::os::windows::fs::FileExt::seek_read(file, buf, at)
}

/// Read exactly `buf.len()` bytes at `at`.
pub(crate) fn read_exact_at(file: &File, buf: &mut [u8], at: u64) -> std::io::Result<()> {
    let mut done = 0;
    while done < buf.len() {
        match read_at(file, &mut buf[done..], at + done as u64)? {
            0 => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "the archive ends inside this member",
                ));
            }
            n => done += n,
        }
    }
    Ok(())
}

/// An open archive the build reads members from.
#[derive(Debug)]
pub(crate) struct Archive {
    pub path: PathBuf,
    pub file: File,
    /// Set at the first member that could not be read: the archive changed or was
    /// cut after it was indexed (see [`Archive::damaged`]).
    damaged: OnceLock<String>,
}

impl Archive {
    pub fn open(path: &Path) -> Result<Archive, BuildError> {
        let (file, _) = open_regular(path)
            .map_err(|reason| BuildError::Input(format!("{}: {reason}", path.display())))?;
        Ok(Archive {
            path: path.to_path_buf(),
            file,
            damaged: OnceLock::new(),
        })
    }

    /// Why the archive can no longer be read, if a member could not be: the build
    /// must stop (the index it was listed by no longer holds), not reject the rest.
    pub fn damaged(&self) -> Option<&str> {
        self.damaged.get().map(String::as_str)
    }

    /// The bytes of the member at `offset` of `size` bytes.
    pub fn read(&self, offset: u64, size: u64, limit: u64) -> Result<Vec<u8>, String> {
        if size > limit {
            return Err(format!(
                "is {size} bytes, more than the {} MiB read for one image",
                limit >> 20
            ));
        }
        let mut buf = vec![0u8; size as usize];
        read_exact_at(&self.file, &mut buf, offset).map_err(|e| {
            let why = format!(
                "cannot read bytes {offset}..{} of the archive: {}",
                offset + size,
                io_words(&e)
            );
            let _ = self.damaged.set(why.clone());
            why
        })?;
        Ok(buf)
    }
}

/// Index the archive at `path` as a [`Listing`] (member offsets into `path`).
pub(crate) fn list(path: &Path) -> Result<Listing, BuildError> {
    let archive = Archive::open(path)?;
    let len = archive
        .file
        .metadata()
        .map_err(BuildError::io(path, "read"))?
        .len();
    let whole = Window {
        file: &archive.file,
        base: 0,
        len,
        pos: 0,
    };
    let mut index = Index::default();
    let bad = |what: String| BuildError::Input(format!("{}: {what}", path.display()));
    if len == 0 {
        return Err(bad("an empty file, not a tar archive".into()));
    }
    if let Some(cause) = not_a_tar(&archive.file, 0, len) {
        return Err(bad(format!("not a tar archive: {cause}")));
    }
    let mut members = Vec::new();
    scan(whole, &mut |m| members.push(m)).map_err(bad)?;
    if members.is_empty() {
        return Err(bad("a tar archive with no members".into()));
    }
    // Extraction writes members in order, a later one over an earlier one of the same
    // name: a class tar given twice is its later copy alone.
    let mut last: HashMap<&[Vec<u8>], usize> = HashMap::new();
    for (i, m) in members.iter().enumerate() {
        last.insert(&m.path[..], i);
    }
    let last: Vec<bool> = (0..members.len())
        .map(|i| last.get(&members[i].path[..]) == Some(&i))
        .collect();
    for (m, is_last) in members.into_iter().zip(last) {
        index.outer(m, is_last, &archive.file);
    }
    Ok(index.finish())
}

/// Why the bytes at `base` of `file` (`len` of them) are not a tar, from their first
/// bytes, when that can be told: a compressed file, a byte-order mark, a zip.
fn not_a_tar(file: &File, base: u64, len: u64) -> Option<&'static str> {
    let mut head = vec![0u8; len.min(BLOCK) as usize];
    read_exact_at(file, &mut head, base).ok()?;
    let ustar = head.len() >= 262 && &head[257..262] == b"ustar";
    // a tar's first block holds NULs, which `likely_cause` calls binary
    likely_cause(&head).filter(|c| !ustar && !c.contains("binary"))
}

/// One member as the index sees it.
struct Member {
    /// Path components, as stored (bytes), `.` and empty ones dropped.
    path: Vec<Vec<u8>>,
    /// The name for people.
    shown: String,
    kind: Kind,
    /// Offset of the data inside the scanned window.
    pos: u64,
    size: u64,
    mtime: i64,
}

enum Kind {
    File,
    Dir,
    /// A reject, with the reason.
    Unusable(String),
}

/// Walk the members of the tar in `w`, calling `each` for every one; `Err` (in words,
/// naming the member) when the archive is damaged or truncated. Returns the count.
fn scan(w: Window<'_>, each: &mut dyn FnMut(Member)) -> Result<usize, String> {
    let len = w.len;
    let mut tar = tar::Archive::new(w);
    let entries = tar
        .entries_with_seek()
        .map_err(|e| format!("not a tar archive: {}", escape_text(&io_words(&e))))?;
    let mut count = 0;
    let mut last = String::new();
    let mut end = 0u64;
    for entry in entries {
        let mut entry = entry.map_err(|e| damaged(&last, end, &escape_text(&e.to_string())))?;
        let raw = entry.path_bytes().into_owned();
        let shown = String::from_utf8_lossy(&raw).into_owned();
        let pos = entry.raw_file_position();
        let size = entry.size();
        let data_end = pos.checked_add(size).filter(|&e| e <= len).ok_or_else(|| {
            format!(
                "member {shown}: its data ends past the end of the archive ({len} bytes): \
                 the archive is truncated"
            )
        })?;
        end = data_end.div_ceil(BLOCK) * BLOCK;
        let sparse = entry.pax_extensions().ok().flatten().is_some_and(|mut x| {
            x.any(|e| e.is_ok_and(|e| e.key_bytes().starts_with(b"GNU.sparse")))
        });
        let mtime = entry.header().mtime().map_or(0, |m| m as i64);
        let kind = kind(entry.header().entry_type(), sparse);
        let (path, kind) = match split_path(&raw) {
            Ok(p) => (p, kind),
            Err(why) => (Vec::new(), Kind::Unusable(why)),
        };
        count += 1;
        last = shown.clone();
        each(Member {
            path,
            shown,
            kind,
            pos,
            size,
            mtime,
        });
    }
    // tar's end-of-archive marker is a zero block; a file cut at a member boundary
    // would otherwise read as a complete, shorter archive.
    let mut block = [0u8; BLOCK as usize];
    let w = tar.into_inner();
    let at = w.base + end;
    let marked = end + BLOCK <= len
        && read_exact_at(w.file, &mut block, at).is_ok()
        && block.iter().all(|&b| b == 0);
    if !marked {
        return Err(if count == 0 {
            "not a tar archive (no member and no end-of-archive block)".into()
        } else {
            format!(
                "the archive ends after member {last} without tar's end-of-archive block: \
                 it is truncated"
            )
        });
    }
    Ok(count)
}

fn damaged(last: &str, at: u64, what: &str) -> String {
    if last.is_empty() {
        format!("not a valid tar archive: {what}")
    } else {
        format!("not a valid tar archive after member {last} (at byte {at}): {what}")
    }
}

fn kind(t: tar::EntryType, sparse: bool) -> Kind {
    let unusable = |what: &str| Kind::Unusable(format!("{what} entry: not a regular file"));
    if t.is_gnu_sparse() || sparse {
        Kind::Unusable("a sparse entry: not supported".into())
    } else if t.is_file() || t.is_contiguous() {
        Kind::File
    } else if t.is_dir() {
        Kind::Dir
    } else if t.is_symlink() {
        Kind::Unusable("a symbolic link entry: links inside archives are not followed".into())
    } else if t.is_hard_link() {
        Kind::Unusable("a hard link entry: links inside archives are not followed".into())
    } else if t.is_fifo() {
        unusable("a FIFO")
    } else if t.is_character_special() {
        unusable("a character device")
    } else if t.is_block_special() {
        unusable("a block device")
    } else {
        Kind::Unusable(format!(
            "an entry of tar type `{}`: not a regular file",
            char::from(t.as_byte()).escape_default()
        ))
    }
}

/// A member path's components; `Err` when it would leave the archive's folder.
fn split_path(raw: &[u8]) -> Result<Vec<Vec<u8>>, String> {
    if raw.first() == Some(&b'/') {
        return Err("an absolute path: members must stay inside the archive".into());
    }
    let mut parts = Vec::new();
    for c in raw.split(|&b| b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => return Err("a path with `..`: members must stay inside the archive".into()),
            c => parts.push(c.to_vec()),
        }
    }
    Ok(parts)
}

fn os_path(parts: &[Vec<u8>]) -> PathBuf {
    let mut p = PathBuf::new();
    for c in parts {
        #[cfg(unix)]
        p.push(<std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(c));
        #[cfg(not(unix))]
        p.push(String::from_utf8_lossy(c).as_ref());
    }
    p
}

/// The listing as it is built, with later members replacing earlier ones.
#[derive(Default)]
struct Index {
    listing: Listing,
    /// File path -> its place in `listing.files`.
    seen: HashMap<PathBuf, usize>,
    dirs: std::collections::BTreeSet<std::ffi::OsString>,
}

impl Index {
    /// A member of the outer archive; `.tar` files at its top are expanded, unless a
    /// later member of the same name replaces them (`is_last` is false).
    fn outer(&mut self, m: Member, is_last: bool, file: &File) {
        let is_class_tar = m.path.len() == 1
            && matches!(m.kind, Kind::File)
            && m.path[0].len() > 4
            && m.path[0].ends_with(b".tar")
            && m.path[0][0] != b'.';
        if !is_class_tar {
            self.member(m, Vec::new(), 0);
            return;
        }
        if !is_last {
            self.ignore(
                &m.shown,
                "replaced by a later entry of the same name (its images are not used)",
            );
            return;
        }
        let stem = m.path[0][..m.path[0].len() - 4].to_vec();
        if let Some(cause) = not_a_tar(file, m.pos, m.size) {
            self.dirs
                .insert(os_path(std::slice::from_ref(&stem)).into_os_string());
            self.reject(
                &m.shown,
                format!("not a tar archive: {cause}; none of its images are used"),
            );
            return;
        }
        let inner = Window {
            file,
            base: m.pos,
            len: m.size,
            pos: 0,
        };
        let mut members = Vec::new();
        let result = scan(inner, &mut |im| members.push(im));
        self.dirs
            .insert(os_path(std::slice::from_ref(&stem)).into_os_string());
        match result {
            Ok(0) => self.reject(
                &m.shown,
                "an empty class archive: it holds no images".into(),
            ),
            Ok(_) => {
                for im in members {
                    self.member(im, vec![stem.clone()], m.pos);
                }
            }
            Err(why) => self.reject(&m.shown, format!("{why}; none of its images are used")),
        }
    }

    /// A member whose path is below `prefix`, its data at `base + pos`.
    fn member(&mut self, m: Member, prefix: Vec<Vec<u8>>, base: u64) {
        let shown = match prefix.first() {
            Some(p) => format!("{}/{}", String::from_utf8_lossy(p), m.shown),
            None => m.shown.clone(),
        };
        if let Kind::Unusable(why) = m.kind {
            self.reject(&shown, why);
            return;
        }
        if m.path.is_empty() {
            return; // the archive's own top folder entry (`./`)
        }
        let mut parts = prefix;
        parts.extend(m.path);
        let path = os_path(&parts);
        let shown = display_path(&path);
        if parts.iter().any(|c| c.first() == Some(&b'.')) {
            self.ignore(
                &shown,
                "a hidden entry (a name in its path starts with a dot)",
            );
            return;
        }
        if parts.len() > 1 {
            self.dirs.insert(os_path(&parts[..1]).into_os_string());
        }
        match m.kind {
            Kind::Dir => self.ignore(
                &shown,
                "a directory entry (its files are read from their own entries)",
            ),
            Kind::File => {
                let found = Found {
                    path: path.clone(),
                    size: m.size,
                    mtime_s: m.mtime,
                    mtime_ns: 0,
                    offset: Some(base + m.pos),
                };
                match self.seen.get(&path) {
                    Some(&at) => {
                        self.ignore(&shown, "replaced by a later entry of the same name");
                        self.listing.files[at] = found;
                    }
                    None => {
                        self.seen.insert(path, self.listing.files.len());
                        self.listing.files.push(found);
                    }
                }
            }
            Kind::Unusable(_) => {}
        }
    }

    fn reject(&mut self, path: &str, reason: String) {
        self.listing.rejects.push(Reject {
            path: path.to_string(),
            reason,
        });
    }

    fn ignore(&mut self, path: &str, reason: &str) {
        self.listing.ignored.push(Ignored {
            path: path.to_string(),
            reason: reason.into(),
        });
    }

    fn finish(mut self) -> Listing {
        self.listing.dirs = self.dirs.into_iter().collect();
        self.listing
    }
}
