//! `shard verify`: check a dataset's manifest, every shard's whole-file checksum and
//! every record's checksum, collecting every problem rather than stopping at the first.
//!
//! Shards are read here with plain reads, never memory-mapped: a shard truncated by
//! another program while it is being verified is reported as such (the read ends
//! early), where a map would raise SIGBUS. After its pass each shard is checked to
//! be the same file, of the same length, as the one opened.

use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::format::{DATA_OFFSET, INDEX_ENTRY_SIZE, IndexEntry};
use crate::manifest::{Codec, Manifest};
use crate::reader::{CheckedShard, decode_jpeg_payload, read_exact_at};
use crate::{Result, ShardError};

/// One thing found wrong.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// The shard file (or the manifest).
    pub path: PathBuf,
    /// Index of the record inside the shard, when one record is at fault.
    pub record: Option<usize>,
    /// What is wrong.
    pub what: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.record {
            Some(r) => write!(f, "{}: record {r}: {}", self.path.display(), self.what),
            None => write!(f, "{}: {}", self.path.display(), self.what),
        }
    }
}

/// What verification found.
#[derive(Clone, Debug, Default)]
pub struct VerifyReport {
    /// Shards checked.
    pub shards: usize,
    /// Records whose checksum was checked.
    pub records: u64,
    /// Bytes read.
    pub bytes: u64,
    /// Problems found, in shard order.
    pub problems: Vec<Problem>,
    /// Leftover temporary files from an interrupted build (not errors).
    pub leftovers: Vec<PathBuf>,
}

impl VerifyReport {
    /// Whether the dataset is intact.
    pub fn ok(&self) -> bool {
        self.problems.is_empty()
    }
}

/// Check everything in `dir` with `workers` threads. `progress` is called with the
/// bytes of each shard once it is done. Fails only when the manifest cannot be read;
/// damage is reported in the [`VerifyReport`].
pub fn verify_dataset(
    dir: &Path,
    workers: usize,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<VerifyReport> {
    let manifest = Manifest::load(dir)?;
    let next = AtomicUsize::new(0);
    let results: Mutex<Vec<(usize, u64, Vec<Problem>)>> = Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..workers.max(1).min(manifest.shards.len().max(1)) {
            s.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(entry) = manifest.shards.get(i) else {
                        break;
                    };
                    let (records, problems) = verify_shard(dir, &manifest, i);
                    progress(entry.bytes);
                    if let Ok(mut r) = results.lock() {
                        r.push((i, records, problems));
                    }
                }
            });
        }
    });
    let mut results = results.into_inner().unwrap_or_else(|p| p.into_inner());
    results.sort_by_key(|r| r.0);
    let mut report = VerifyReport {
        shards: manifest.shards.len(),
        ..VerifyReport::default()
    };
    for (i, records, problems) in results {
        report.records += records;
        report.bytes += manifest.shards[i].bytes;
        report.problems.extend(problems);
    }
    if let Ok(rd) = std::fs::read_dir(dir) {
        let mut left: Vec<PathBuf> = rd
            .filter_map(|e| e.ok())
            .filter(|e| sv_core::fs::is_temp_name(&e.file_name().to_string_lossy()))
            .map(|e| e.path())
            .collect();
        left.sort();
        report.leftovers = left;
    }
    Ok(report)
}

fn verify_shard(dir: &Path, manifest: &Manifest, i: usize) -> (u64, Vec<Problem>) {
    let entry = &manifest.shards[i];
    let path = dir.join(&entry.name);
    let problem = |record: Option<usize>, what: String| Problem {
        path: path.clone(),
        record,
        what,
    };
    let shard = match CheckedShard::open(
        &path,
        entry,
        manifest.codec,
        manifest.side,
        manifest.classes.len(),
    ) {
        Ok(s) => s,
        Err(e) => return (0, vec![problem(None, describe(&e))]),
    };
    let mut problems = Vec::new();
    match scan(&shard, &path, manifest.codec, manifest.side, &mut problems) {
        Ok(crc) => {
            let crc = sv_core::crc32_hex(crc);
            if crc != entry.crc32 {
                problems.push(problem(
                    None,
                    format!(
                        "file checksum mismatch (manifest {}, computed {crc})",
                        entry.crc32
                    ),
                ));
            }
        }
        Err(e) => problems.push(problem(None, describe(&e))),
    }
    if let Err(e) = shard.check_unchanged(&path, "it was being verified") {
        problems.push(problem(None, describe(&e)));
    }
    (shard.header.records, problems)
}

/// Read the whole shard once: the CRC of the file, and each record's CRC (and, for
/// JPEG records, that they decode), pushing a problem per bad record.
fn scan(
    shard: &CheckedShard,
    path: &Path,
    codec: Codec,
    side: u32,
    problems: &mut Vec<Problem>,
) -> Result<u32> {
    let entries: Vec<IndexEntry> = shard
        .index
        .chunks_exact(INDEX_ENTRY_SIZE)
        .map(IndexEntry::decode)
        .collect();
    let mut check = RecordCheck {
        path,
        codec,
        side,
        pixels: Vec::new(),
        problems,
    };
    // The writer lays records back to back in order; read them in one sequential
    // pass then. Another writer's layout (gaps, any order) is read twice: once for
    // the file checksum, once record by record.
    let mut end = DATA_OFFSET;
    let back_to_back = entries.iter().all(|e| {
        let ok = e.offset == end;
        end = e.offset + u64::from(e.len);
        ok
    }) && end == shard.header.index_offset;
    let mut file = &shard.file;
    file.seek(SeekFrom::Start(0))
        .map_err(|e| ShardError::io(path, "seek", e))?;
    let mut reader = BufReader::with_capacity(1 << 20, file);
    let mut file_crc = crc32fast::Hasher::new();
    let mut buf = vec![0u8; DATA_OFFSET as usize];
    let mut at = 0u64;
    read_into(&mut reader, path, &mut at, &mut buf)?;
    if back_to_back {
        file_crc.update(&buf);
        for (local, e) in entries.iter().enumerate() {
            buf.resize(e.len as usize, 0);
            read_into(&mut reader, path, &mut at, &mut buf)?;
            let mut record_crc = crc32fast::Hasher::new();
            record_crc.update(&buf);
            file_crc.combine(&record_crc);
            check.record(local, e, record_crc.finalize(), &buf);
        }
        buf.resize(shard.index.len(), 0);
        read_into(&mut reader, path, &mut at, &mut buf)?;
        file_crc.update(&buf);
    } else {
        buf.resize(1 << 20, 0);
        file_crc.update(&buf[..DATA_OFFSET as usize]);
        while at < shard.len {
            let n = buf.len().min((shard.len - at) as usize);
            read_into(&mut reader, path, &mut at, &mut buf[..n])?;
            file_crc.update(&buf[..n]);
        }
    }
    // Nothing may follow the index: its length was checked, so bytes here mean the
    // file grew while being read.
    if reader
        .read(&mut [0u8; 1])
        .map_err(|e| ShardError::io(path, "read", e))?
        != 0
    {
        return Err(ShardError::corrupt(
            path,
            "file grew while being verified: another program is changing the dataset",
        ));
    }
    if !back_to_back {
        for (local, e) in entries.iter().enumerate() {
            buf.resize(e.len as usize, 0);
            read_exact_at(&shard.file, path, e.offset, &mut buf)?;
            check.record(local, e, crc32fast::hash(&buf), &buf);
        }
    }
    Ok(file_crc.finalize())
}

/// Fill `buf` from the sequential reader at file position `at`.
fn read_into(reader: &mut impl Read, path: &Path, at: &mut u64, buf: &mut [u8]) -> Result<()> {
    reader.read_exact(buf).map_err(|e| {
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            ShardError::corrupt(
                path,
                format!(
                    "file ended before byte {} although its length was checked: it was \
                     truncated by another program while being verified",
                    *at + buf.len() as u64
                ),
            )
        } else {
            ShardError::io(path, "read", e)
        }
    })?;
    *at += buf.len() as u64;
    Ok(())
}

/// Checks one record's bytes, collecting problems.
struct RecordCheck<'a> {
    path: &'a Path,
    codec: Codec,
    side: u32,
    pixels: Vec<u8>,
    problems: &'a mut Vec<Problem>,
}

impl RecordCheck<'_> {
    fn record(&mut self, local: usize, e: &IndexEntry, crc: u32, payload: &[u8]) {
        let what = if crc != e.crc {
            Some(format!(
                "checksum mismatch (stored {:08x}, computed {crc:08x})",
                e.crc
            ))
        } else if self.codec == Codec::Jpeg {
            // A JPEG whose bytes match may still not decode if written by another tool.
            self.pixels
                .resize(sv_core::Geometry { side: self.side }.image_bytes(), 0);
            decode_jpeg_payload(payload, self.side, &mut self.pixels).err()
        } else {
            None
        };
        if let Some(what) = what {
            self.problems.push(Problem {
                path: self.path.to_path_buf(),
                record: Some(local),
                what,
            });
        }
    }
}

/// An error about one shard, in words, without the path (the problem carries it).
fn describe(e: &ShardError) -> String {
    match e {
        ShardError::Corrupt { what, .. } => what.clone(),
        ShardError::MissingShard { .. } => "missing (listed in the manifest)".into(),
        ShardError::NotAFile { kind, .. } => format!("it is {kind}, not a regular file"),
        ShardError::Io { op, source, .. } => format!("{op} failed: {source}"),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{DatasetWriter, WriterConfig};
    use sv_core::{ClassInfo, Split};

    /// One raw shard of 6 records, 16x16; returns the dataset dir and the manifest.
    fn dataset() -> (tempfile::TempDir, Manifest) {
        let dir = tempfile::tempdir().unwrap();
        let config = WriterConfig {
            split: Split::Train,
            side: 16,
            codec: Codec::Raw,
            jpeg_quality: 90,
            jpeg_subsampling: crate::Subsampling::default(),
            classes: vec![ClassInfo {
                wnid: "n1".into(),
                name: "one".into(),
            }],
            max_shard_bytes: 1 << 20,
        };
        let mut w = DatasetWriter::create(dir.path(), config).unwrap();
        for i in 0..6u8 {
            w.push(0, &[i; 768]).unwrap();
        }
        let m = w.finish().unwrap();
        (dir, m)
    }

    fn open(dir: &Path, m: &Manifest) -> (PathBuf, CheckedShard) {
        let path = dir.join(&m.shards[0].name);
        let s = CheckedShard::open(&path, &m.shards[0], m.codec, m.side, 1).unwrap();
        (path, s)
    }

    fn scan_err(path: &Path, s: &CheckedShard) -> String {
        let mut problems = Vec::new();
        let e = scan(s, path, Codec::Raw, 16, &mut problems).unwrap_err();
        describe(&e)
    }

    #[test]
    fn a_shard_truncated_while_being_verified_is_an_error_not_sigbus() {
        let (dir, m) = dataset();
        let (path, s) = open(dir.path(), &m);
        let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        f.set_len(4096 + 3 * 768).unwrap();
        let err = scan_err(&path, &s);
        assert!(err.contains("truncated by another program"), "{err}");
        let err = describe(&s.check_unchanged(&path, "verifying").unwrap_err());
        assert!(err.contains("changed from"), "{err}");
    }

    #[test]
    fn a_shard_grown_or_replaced_while_being_verified_is_named() {
        let (dir, m) = dataset();
        let (path, s) = open(dir.path(), &m);
        let mut bytes = std::fs::read(&path).unwrap();
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        std::io::Write::write_all(&mut f, b"more").unwrap();
        assert!(scan_err(&path, &s).contains("grew while being verified"));

        // Replaced by rename, as a tool writing a new version would: the old file
        // reads intact, but is no longer what the dataset holds.
        let (dir, m) = dataset();
        let (path, s) = open(dir.path(), &m);
        bytes.truncate(s.len as usize);
        let other = dir.path().join("other");
        std::fs::write(&other, &bytes).unwrap();
        std::fs::rename(&other, &path).unwrap();
        let mut problems = Vec::new();
        scan(&s, &path, Codec::Raw, 16, &mut problems).unwrap();
        assert!(problems.is_empty());
        let err = describe(&s.check_unchanged(&path, "verifying").unwrap_err());
        assert!(err.contains("replaced by another file"), "{err}");
    }

    #[test]
    fn records_written_out_of_order_are_still_checked() {
        // Another writer's layout: record 1 before record 0 in the data region.
        let (dir, m) = dataset();
        let path = dir.path().join(&m.shards[0].name);
        let mut b = std::fs::read(&path).unwrap();
        let x = 4096 + 6 * 768;
        let (e0, e1) = (x, x + INDEX_ENTRY_SIZE);
        let o0: [u8; 8] = b[e0..e0 + 8].try_into().unwrap();
        let o1: [u8; 8] = b[e1..e1 + 8].try_into().unwrap();
        b[e0..e0 + 8].copy_from_slice(&o1);
        b[e1..e1 + 8].copy_from_slice(&o0);
        // Fix the CRCs of the records (they moved) and of the index and header.
        let (c0, c1) = (b[e0 + 16..e0 + 20].to_vec(), b[e1 + 16..e1 + 20].to_vec());
        b[e0 + 16..e0 + 20].copy_from_slice(&c1);
        b[e1 + 16..e1 + 20].copy_from_slice(&c0);
        let icrc = crc32fast::hash(&b[x..]);
        b[52..56].copy_from_slice(&icrc.to_le_bytes());
        let hcrc = crc32fast::hash(&b[..56]);
        b[56..60].copy_from_slice(&hcrc.to_le_bytes());
        // Also damage record 3, so the record pass has something to find.
        b[4096 + 3 * 768 + 5] ^= 1;
        std::fs::write(&path, &b).unwrap();
        let entry = crate::ShardEntry {
            crc32: sv_core::crc32_hex(crc32fast::hash(&b)),
            ..m.shards[0].clone()
        };
        // The reader refuses raw records away from their fixed place, but JPEG
        // records may lie anywhere: check the slow path on the checked parts.
        assert!(CheckedShard::open(&path, &entry, Codec::Raw, 16, 1).is_err());
        let mut problems = Vec::new();
        let s = CheckedShard {
            file: std::fs::File::open(&path).unwrap(),
            len: b.len() as u64,
            header: crate::format::Header::decode(&b).unwrap(),
            index: b[x..].to_vec(),
        };
        let crc = scan(&s, &path, Codec::Raw, 16, &mut problems).unwrap();
        assert_eq!(sv_core::crc32_hex(crc), entry.crc32);
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert_eq!(problems[0].record, Some(3));
    }
}
