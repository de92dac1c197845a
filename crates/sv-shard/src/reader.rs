//! Memory-mapped reading with every length and offset validated before use.

use std::fs::File;
use std::ops::Range;
use std::path::{Path, PathBuf};

use memmap2::Mmap;
use sv_core::{ClassInfo, Geometry};

use crate::format::{DATA_OFFSET, Header, INDEX_ENTRY_SIZE, IndexEntry};
use crate::manifest::{Codec, Manifest, ShardEntry};
use crate::{Result, ShardError};

/// Map `file` read-only.
///
/// # Safety
///
/// The caller must have checked that the file is at least as long as every byte it
/// will read through the map (a map of a truncated file raises SIGBUS on access),
/// and the dataset must not be modified while it is open: shards are written once,
/// under a temporary name, and never changed in place afterwards.
unsafe fn map_readonly(file: &File) -> std::io::Result<Mmap> {
    // SAFETY: as documented above; the map is read-only and private to this process.
    unsafe { Mmap::map(file) }
}

/// One open, validated shard file.
pub struct ShardReader {
    path: PathBuf,
    name: String,
    map: Mmap,
    header: Header,
}

impl std::fmt::Debug for ShardReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShardReader")
            .field("path", &self.path)
            .field("records", &self.header.records)
            .finish()
    }
}

/// A shard file opened and checked without mapping it: the header and index were
/// read with plain reads, so no check here can raise SIGBUS, whatever another
/// program does to the file meanwhile.
pub(crate) struct CheckedShard {
    pub file: File,
    pub len: u64,
    pub header: Header,
    /// The index region, `24 n` bytes.
    pub index: Vec<u8>,
}

impl CheckedShard {
    /// Open `path` (a regular file only), check its length against the manifest's
    /// `expect`, read and check its header and index. `classes` bounds the labels.
    pub fn open(
        path: &Path,
        expect: &ShardEntry,
        codec: Codec,
        side: u32,
        classes: usize,
    ) -> Result<CheckedShard> {
        let file = match sv_core::fs::open_regular(path) {
            Ok(f) => f,
            Err(e) if e.is_not_found() => {
                return Err(ShardError::MissingShard {
                    path: path.to_path_buf(),
                });
            }
            Err(e) => return Err(e.into()),
        };
        let len = file
            .metadata()
            .map_err(|e| ShardError::io(path, "stat", e))?
            .len();
        if len != expect.bytes {
            let what = if len < expect.bytes {
                "truncated, or replaced by another file?"
            } else {
                "replaced by another file, or appended to?"
            };
            return Err(ShardError::corrupt(
                path,
                format!(
                    "file is {len} bytes but the manifest says {} ({what})",
                    expect.bytes
                ),
            ));
        }
        if len < DATA_OFFSET {
            return Err(ShardError::corrupt(
                path,
                format!("file is {len} bytes, shorter than the {DATA_OFFSET}-byte header"),
            ));
        }
        let mut head = vec![0u8; DATA_OFFSET as usize];
        read_exact_at(&file, path, 0, &mut head)?;
        let header = Header::decode(&head).map_err(|what| ShardError::corrupt(path, what))?;
        check_header(path, &header, len, expect, codec, side)?;
        // In range: check_header proved index_offset + 24 n == len.
        let mut index = vec![0u8; (len - header.index_offset) as usize];
        read_exact_at(&file, path, header.index_offset, &mut index)?;
        check_index(path, &header, &index, codec, side, classes)?;
        Ok(CheckedShard {
            file,
            len,
            header,
            index,
        })
    }

    /// Fail if the file at `path` is no longer the one opened, or no longer `len`
    /// bytes long: another program replaced or resized it.
    pub fn check_unchanged(&self, path: &Path, during: &str) -> Result<()> {
        let changed = |what: String| {
            ShardError::corrupt(
                path,
                format!(
                    "{what} while {during}: another program is changing the dataset \
                     (shards must never be modified in place)"
                ),
            )
        };
        let now = self
            .file
            .metadata()
            .map_err(|e| ShardError::io(path, "stat", e))?;
        if now.len() != self.len {
            return Err(changed(format!(
                "it changed from {} to {} bytes",
                self.len,
                now.len()
            )));
        }
        #[cfg(unix)]
        {
            use std::os::unix::fs::MetadataExt;
            let same = std::fs::metadata(path)
                .is_ok_and(|at_path| at_path.dev() == now.dev() && at_path.ino() == now.ino());
            if !same {
                return Err(changed("it was replaced by another file".into()));
            }
        }
        Ok(())
    }
}

/// Read `buf.len()` bytes at `offset`; a file that ends early is reported as having
/// changed (its length was checked before).
pub(crate) fn read_exact_at(file: &File, path: &Path, offset: u64, buf: &mut [u8]) -> Result<()> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = file;
    f.seek(SeekFrom::Start(offset))
        .map_err(|e| ShardError::io(path, "seek", e))?;
    f.read_exact(buf).map_err(|e| {
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            ShardError::corrupt(
                path,
                format!(
                    "file ended before byte {} although its length was checked: it is \
                     being truncated by another program",
                    offset + buf.len() as u64
                ),
            )
        } else {
            ShardError::io(path, "read", e)
        }
    })
}

/// The header against the manifest and the file length.
fn check_header(
    path: &Path,
    h: &Header,
    len: u64,
    expect: &ShardEntry,
    codec: Codec,
    side: u32,
) -> Result<()> {
    let bad = |what: String| Err(ShardError::corrupt(path, what));
    if h.codec != codec {
        return bad(format!(
            "codec is {} but the manifest says {codec}",
            h.codec
        ));
    }
    if h.side != side {
        return bad(format!("side is {} but the manifest says {side}", h.side));
    }
    if h.records != expect.records {
        return bad(format!(
            "holds {} records but the manifest says {}",
            h.records, expect.records
        ));
    }
    match h.file_len() {
        Some(implied) if implied == len => Ok(()),
        Some(implied) => bad(format!(
            "header implies {implied} bytes (index at {} + {} records x {INDEX_ENTRY_SIZE}) \
             but the file is {len}",
            h.index_offset, h.records
        )),
        None => bad(format!(
            "header's index offset {} and record count {} overflow a file length",
            h.index_offset, h.records
        )),
    }
}

/// The index CRC, and every entry inside the data region with its label in range.
fn check_index(
    path: &Path,
    h: &Header,
    index: &[u8],
    codec: Codec,
    side: u32,
    classes: usize,
) -> Result<()> {
    let bad = |what: String| Err(ShardError::corrupt(path, what));
    let crc = crc32fast::hash(index);
    if crc != h.index_crc {
        return bad(format!(
            "index checksum mismatch (stored {:08x}, computed {crc:08x})",
            h.index_crc
        ));
    }
    let stride = Geometry { side }.image_bytes() as u64;
    for (i, raw) in index.chunks_exact(INDEX_ENTRY_SIZE).enumerate() {
        let e = IndexEntry::decode(raw);
        let end = e.offset.checked_add(u64::from(e.len));
        let inside = e.offset >= DATA_OFFSET && end.is_some_and(|end| end <= h.index_offset);
        let fixed = codec != Codec::Raw
            || (u64::from(e.len) == stride
                && Some(e.offset) == (i as u64).checked_mul(stride).map(|o| o + DATA_OFFSET));
        if !inside || !fixed || e.len == 0 {
            return bad(format!(
                "record {i}: index entry (offset {}, length {}) lies outside the data \
                 region {DATA_OFFSET}..{}",
                e.offset, e.len, h.index_offset
            ));
        }
        if e.label as usize >= classes {
            return bad(format!(
                "record {i}: label {} is out of range ({classes} classes)",
                e.label
            ));
        }
    }
    Ok(())
}

impl ShardReader {
    /// Open `path`, check it against what the manifest says (`expect`), validate its
    /// header and index, then map it. `classes` bounds the labels.
    ///
    /// Every check reads the file with plain reads before it is mapped, and after
    /// mapping the file is checked to be the same one, with the same length, so a
    /// shard truncated or replaced by another program up to that point is an error,
    /// never SIGBUS. (Truncating a shard in place while it is being read later still
    /// raises SIGBUS in the reader: nothing in this project does that; see
    /// docs/guarantees.md.)
    pub fn open(
        path: &Path,
        expect: &ShardEntry,
        codec: Codec,
        side: u32,
        classes: usize,
    ) -> Result<ShardReader> {
        let checked = CheckedShard::open(path, expect, codec, side, classes)?;
        // SAFETY: the length was checked against the manifest and the header above,
        // every access through the map is bounded by it (validated entries), and the
        // file is checked to be unchanged right after mapping; shard files are
        // immutable once renamed into place.
        let map =
            unsafe { map_readonly(&checked.file) }.map_err(|e| ShardError::io(path, "mmap", e))?;
        if map.len() as u64 != checked.len {
            return Err(ShardError::corrupt(path, "file changed size while opening"));
        }
        checked.check_unchanged(path, "it was being opened")?;
        Ok(ShardReader {
            path: path.to_path_buf(),
            name: expect.name.clone(),
            map,
            header: checked.header,
        })
    }

    fn index_bytes(&self) -> &[u8] {
        // In bounds: check_header() proved index_offset + 24 n == file length.
        &self.map[self.header.index_offset as usize..]
    }

    fn entry(&self, i: usize) -> IndexEntry {
        let at = i * INDEX_ENTRY_SIZE;
        IndexEntry::decode(&self.index_bytes()[at..at + INDEX_ENTRY_SIZE])
    }

    /// Records in this shard.
    pub fn len(&self) -> usize {
        self.header.records as usize
    }

    /// Whether the shard holds no records.
    pub fn is_empty(&self) -> bool {
        self.header.records == 0
    }

    /// The shard's file name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The shard's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The whole mapped file (for whole-file checksums).
    pub fn bytes(&self) -> &[u8] {
        &self.map
    }

    /// Local record `local` (`< len()`), which is record `index` of its dataset.
    pub(crate) fn record(&self, local: usize, index: usize, codec: Codec, side: u32) -> Record<'_> {
        let e = self.entry(local);
        let start = e.offset as usize;
        Record {
            index,
            label: e.label,
            // In bounds: check_index() checked every entry against the data region.
            payload: &self.map[start..start + e.len as usize],
            crc: e.crc,
            local,
            shard: self,
            codec,
            side,
        }
    }
}

/// An open dataset: the manifest and every shard, mapped and validated.
pub struct Dataset {
    dir: PathBuf,
    manifest: Manifest,
    shards: Vec<ShardReader>,
    /// Global index of each shard's first record, plus the total at the end.
    starts: Vec<usize>,
}

impl std::fmt::Debug for Dataset {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dataset")
            .field("dir", &self.dir)
            .field("records", &self.len())
            .field("shards", &self.shards.len())
            .finish()
    }
}

impl Dataset {
    /// Open the dataset in `dir`: read the manifest, then check and map every shard.
    pub fn open(dir: impl AsRef<Path>) -> Result<Dataset> {
        let dir = dir.as_ref().to_path_buf();
        let manifest = Manifest::load(&dir)?;
        let mut shards = Vec::with_capacity(manifest.shards.len());
        let mut starts = Vec::with_capacity(manifest.shards.len() + 1);
        let mut next = 0usize;
        for entry in &manifest.shards {
            let reader = ShardReader::open(
                &dir.join(&entry.name),
                entry,
                manifest.codec,
                manifest.side,
                manifest.classes.len(),
            )?;
            starts.push(next);
            next += reader.len();
            shards.push(reader);
        }
        starts.push(next);
        Ok(Dataset {
            dir,
            manifest,
            shards,
            starts,
        })
    }

    /// The manifest.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// The dataset directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Records in the dataset.
    pub fn len(&self) -> usize {
        self.starts.last().copied().unwrap_or(0)
    }

    /// Whether the dataset holds no records.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Geometry of the stored images.
    pub fn geometry(&self) -> Geometry {
        self.manifest.geometry()
    }

    /// Payload codec.
    pub fn codec(&self) -> Codec {
        self.manifest.codec
    }

    /// The classes labels refer to.
    pub fn classes(&self) -> &[ClassInfo] {
        &self.manifest.classes
    }

    /// Number of shard files.
    pub fn shard_count(&self) -> usize {
        self.shards.len()
    }

    /// The open shards.
    pub fn shards(&self) -> &[ShardReader] {
        &self.shards
    }

    /// Global record indices held by shard `shard`.
    pub fn shard_range(&self, shard: usize) -> Range<usize> {
        match (self.starts.get(shard), self.starts.get(shard + 1)) {
            (Some(&a), Some(&b)) => a..b,
            _ => 0..0,
        }
    }

    fn locate(&self, index: usize) -> Result<(usize, usize)> {
        if index >= self.len() {
            return Err(ShardError::OutOfRange {
                index,
                len: self.len(),
            });
        }
        // The last shard whose start is <= index.
        let shard = self.starts.partition_point(|&s| s <= index) - 1;
        Ok((shard, index - self.starts[shard]))
    }

    /// Record `index` of the dataset, in O(1) (a binary search over the shards).
    pub fn record(&self, index: usize) -> Result<Record<'_>> {
        let (s, local) = self.locate(index)?;
        Ok(self.shards[s].record(local, index, self.manifest.codec, self.manifest.side))
    }

    /// Label of record `index`, without touching its payload.
    pub fn label(&self, index: usize) -> Result<u32> {
        let (s, local) = self.locate(index)?;
        Ok(self.shards[s].entry(local).label)
    }
}

/// One record, borrowed from the memory map.
#[derive(Clone, Copy)]
pub struct Record<'a> {
    /// Index in the dataset.
    pub index: usize,
    /// Class label.
    pub label: u32,
    /// The stored payload (raw pixels or JPEG bytes).
    pub payload: &'a [u8],
    crc: u32,
    local: usize,
    shard: &'a ShardReader,
    codec: Codec,
    side: u32,
}

impl std::fmt::Debug for Record<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Record")
            .field("index", &self.index)
            .field("label", &self.label)
            .field("shard", &self.shard.name)
            .field("local", &self.local)
            .field("bytes", &self.payload.len())
            .finish()
    }
}

impl<'a> Record<'a> {
    /// Name of the shard file holding the record.
    pub fn shard_name(&self) -> &str {
        &self.shard.name
    }

    /// Index of the record inside its shard.
    pub fn local_index(&self) -> usize {
        self.local
    }

    fn error(&self, what: String) -> ShardError {
        ShardError::Record {
            path: self.shard.path.clone(),
            record: self.local,
            index: self.index,
            what,
        }
    }

    /// Check the payload against its stored CRC-32.
    pub fn verify(&self) -> Result<()> {
        let crc = crc32fast::hash(self.payload);
        if crc == self.crc {
            Ok(())
        } else {
            Err(self.error(format!(
                "checksum mismatch (stored {:08x}, computed {crc:08x})",
                self.crc
            )))
        }
    }

    /// Unmap the pages that hold this record from this process (Linux/Unix
    /// `madvise(MADV_DONTNEED)`), so that records already used stop counting in the
    /// process's resident set. The data is untouched: the map is a read-only shared
    /// file map, so the next read of these bytes faults them back in from the page
    /// cache (or the disk) with the same contents.
    ///
    /// The range is widened to the aligned 2 MiB blocks around the record. On a page
    /// fault Linux maps more than the page asked for: the cached pages of the
    /// surrounding 64 KiB ("fault-around"), or a whole 2 MiB page-cache folio at once
    /// where the file system caches large folios (ext4 on Linux 6.16 and later). So
    /// reading a record also maps parts of its neighbours, and releasing only the
    /// record's own pages leaves those behind to pile up over an epoch (measured:
    /// about half of the dataset stayed resident). A neighbour in use at that moment
    /// is read back the same way. A no-op on platforms without `madvise`.
    pub fn release_pages(&self) -> std::io::Result<()> {
        #[cfg(unix)]
        {
            const BLOCK: usize = 2 << 20;
            let map = &self.shard.map;
            let offset = self.payload.as_ptr() as usize - map.as_ptr() as usize;
            let start = offset / BLOCK * BLOCK;
            let end = (offset + self.payload.len())
                .div_ceil(BLOCK)
                .saturating_mul(BLOCK)
                .min(map.len());
            // SAFETY: MADV_DONTNEED on a read-only MAP_SHARED file map only drops page
            // table entries; any later read (including through a `Record` borrowed
            // elsewhere at this moment) faults the same file bytes back in. Shard files
            // are never modified while open (see `map_readonly`), so the contents seen
            // before and after are identical. `start..end` lies inside the map: it
            // starts at or before the payload (a sub-slice of the map) and is clamped
            // to the map's length.
            unsafe {
                map.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, start, end - start)
            }
        }
        #[cfg(not(unix))]
        Ok(())
    }

    /// The image as `side x side x 3` HWC RGB: the mapped bytes themselves for raw
    /// records, decoded into `scratch` for JPEG records.
    pub fn pixels<'b>(&'b self, scratch: &'b mut Vec<u8>) -> Result<&'b [u8]>
    where
        'a: 'b,
    {
        match self.codec {
            Codec::Raw => Ok(self.payload),
            Codec::Jpeg => {
                scratch.resize(Geometry { side: self.side }.image_bytes(), 0);
                self.decode_into(scratch)?;
                Ok(scratch)
            }
        }
    }

    /// Write the image (`side x side x 3` HWC RGB) into `out`.
    pub fn decode_into(&self, out: &mut [u8]) -> Result<()> {
        let want = Geometry { side: self.side }.image_bytes();
        if out.len() != want {
            return Err(ShardError::Invalid(format!(
                "output buffer is {} bytes, expected {want}",
                out.len()
            )));
        }
        match self.codec {
            Codec::Raw => {
                out.copy_from_slice(self.payload);
                Ok(())
            }
            Codec::Jpeg => self.decode_jpeg(out),
        }
    }

    fn decode_jpeg(&self, out: &mut [u8]) -> Result<()> {
        decode_jpeg_payload(self.payload, self.side, out).map_err(|what| self.error(what))
    }
}

/// Decode a JPEG record payload into `out` (`side x side x 3` RGB) with sv-image's
/// decoder set-up (the one place a JPEG decoder is configured); the error says what is
/// wrong, in words.
pub(crate) fn decode_jpeg_payload(
    payload: &[u8],
    side: u32,
    out: &mut [u8],
) -> std::result::Result<(), String> {
    sv_image::jpeg_rgb_exact(payload, side, side, out).map_err(|e| e.to_string())
}
