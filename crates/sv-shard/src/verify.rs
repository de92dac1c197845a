//! `shard verify`: check a dataset's manifest, every shard's whole-file checksum and
//! every record's checksum, collecting every problem rather than stopping at the first.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::manifest::Manifest;
use crate::reader::ShardReader;
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
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "tmp"))
            .collect();
        left.sort();
        report.leftovers = left;
    }
    Ok(report)
}

fn verify_shard(dir: &Path, manifest: &Manifest, i: usize) -> (u64, Vec<Problem>) {
    let entry = &manifest.shards[i];
    let path = dir.join(&entry.name);
    let shard = match ShardReader::open(
        &path,
        entry,
        manifest.codec,
        manifest.side,
        manifest.classes.len(),
    ) {
        Ok(s) => s,
        Err(e) => {
            return (
                0,
                vec![Problem {
                    path,
                    record: None,
                    what: strip_path(&e),
                }],
            );
        }
    };
    let mut problems = Vec::new();
    let crc = format!("{:08x}", crc32fast::hash(shard.bytes()));
    if crc != entry.crc32 {
        problems.push(Problem {
            path: path.clone(),
            record: None,
            what: format!(
                "file checksum mismatch (manifest {}, computed {crc})",
                entry.crc32
            ),
        });
    }
    // Record checks name exactly which records are damaged.
    let start: u64 = manifest.shards[..i].iter().map(|s| s.records).sum();
    let mut scratch = Vec::new();
    for local in 0..shard.len() {
        let rec = shard.record(local, start as usize + local, manifest.codec, manifest.side);
        let checked = rec.verify().and_then(|()| {
            // A JPEG whose bytes match may still not decode if written by another tool.
            if manifest.codec == crate::Codec::Jpeg {
                rec.pixels(&mut scratch).map(|_| ())
            } else {
                Ok(())
            }
        });
        if let Err(e) = checked {
            problems.push(Problem {
                path: path.clone(),
                record: Some(local),
                what: match e {
                    ShardError::Record { what, .. } => what,
                    other => other.to_string(),
                },
            });
        }
    }
    (shard.len() as u64, problems)
}

fn strip_path(e: &ShardError) -> String {
    match e {
        ShardError::Corrupt { what, .. } => what.clone(),
        ShardError::MissingShard { .. } => "missing (listed in the manifest)".into(),
        other => other.to_string(),
    }
}
