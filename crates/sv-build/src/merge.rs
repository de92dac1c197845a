//! Joining the parts of a build split across machines (`build` with a
//! [`Part`](crate::Part)) into one dataset with the same records, labels and order as
//! a single build.
//!
//! Each part's `build.json` says which part it is, of how many, which slice of the
//! record order it holds, and digests of the settings and of the whole input list.
//! The parts are refused unless they are finished, all of one build (same settings,
//! same inputs, same part count), and each part appears exactly once. Shards are hard
//! links to the parts' files (no pixel is copied when the parts are on the output's
//! filesystem; elsewhere they are copied), renumbered in order; the manifest, the
//! rejects (part 0 carries those found before decoding) and a build record follow.
//! The parts' shards are kept byte for byte, so the merged dataset's records equal a
//! single build's, while its shard boundaries fall where the parts ended.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use sv_shard::{Dataset, Manifest, ShardEntry, WriterConfig};

use crate::build::{BUILD_FILE, JOURNAL_FILE};
use crate::files::{
    Owned, entries, fresh_staging, list_our_files, owned, promote, read_own_file, remove,
    remove_staging, write_journal, write_json_atomic, write_rejects,
};
use crate::journal::{BuildRecord, Digest, JournalHead, LAYOUT, line, parse_journal, parse_record};
use crate::lock::OutputLock;
use crate::{BuildError, Occupant, PartProblem, PartRecord, Reject, read_rejects};
use sv_core::fs::AtomicFile;

/// What to merge.
#[derive(Clone, Debug)]
pub struct MergeConfig {
    /// The part folders, in any order.
    pub parts: Vec<PathBuf>,
    /// The dataset folder to write.
    pub output: PathBuf,
    /// Replace a dataset in `output` (only the build's own files are removed, once
    /// the new dataset is whole beside them).
    pub force: bool,
}

/// What a merge did.
#[derive(Clone, Debug)]
pub struct MergeSummary {
    /// The manifest written.
    pub manifest: Manifest,
    /// Parts joined.
    pub parts: usize,
    /// Shards hard-linked from the parts.
    pub linked: usize,
    /// Shards copied (a part on another filesystem).
    pub copied: usize,
    /// Rejects of all parts.
    pub rejects: usize,
    /// The output already held this merge, whole: nothing was written.
    pub up_to_date: bool,
}

struct PartIn {
    dir: PathBuf,
    record: BuildRecord,
    part: PartRecord,
    manifest: Manifest,
    _lock: OutputLock,
}

/// Merge the parts named by `config` into `config.output`.
pub fn merge(config: &MergeConfig) -> Result<MergeSummary, BuildError> {
    if config.parts.is_empty() {
        return Err(BuildError::Input("no parts to merge".into()));
    }
    let canon: Vec<PathBuf> = config
        .parts
        .iter()
        .map(|p| std::fs::canonicalize(p).unwrap_or_else(|_| p.clone()))
        .collect();
    for (i, c) in canon.iter().enumerate() {
        if let Some(j) = canon[..i].iter().position(|d| d == c) {
            return Err(BuildError::Parts {
                problem: PartProblem::GivenTwice,
                message: format!(
                    "{} is given twice (as {} and {})",
                    c.display(),
                    config.parts[j].display(),
                    config.parts[i].display()
                ),
            });
        }
    }
    let mut parts = config
        .parts
        .iter()
        .map(|d| open_part(d))
        .collect::<Result<Vec<_>, _>>()?;
    check_parts(&mut parts)?;
    let out = &config.output;
    let canon = |p: &Path| std::fs::canonicalize(p).ok();
    if let Some(p) = parts
        .iter()
        .find(|p| canon(&p.dir).is_some() && canon(&p.dir) == canon(out))
    {
        return Err(BuildError::Input(format!(
            "the output {} is one of the parts; merge into another folder",
            p.dir.display()
        )));
    }
    std::fs::create_dir_all(out).map_err(BuildError::io(out, "create the output folder"))?;
    let _lock = OutputLock::acquire(out)?;
    let plan = Plan::new(&parts)?;
    let summary = |linked, copied, up_to_date| MergeSummary {
        manifest: plan.manifest.clone(),
        parts: parts.len(),
        linked,
        copied,
        rejects: plan.rejects.len(),
        up_to_date,
    };
    let target = match where_to_write(out, &plan, config.force)? {
        Target::UpToDate => return Ok(summary(0, 0, true)),
        Target::Here => out.clone(),
        Target::Staged => fresh_staging(out)?,
    };
    let (linked, copied) = plan.write(&target)?;
    if target != *out {
        promote(&target, out)?;
    }
    Ok(summary(linked, copied, false))
}

/// The merged dataset, worked out before anything is written.
struct Plan {
    /// Each shard: where it is in its part, and its entry under its new name.
    shards: Vec<(PathBuf, ShardEntry)>,
    rejects: Vec<Reject>,
    manifest: Manifest,
    record: BuildRecord,
}

impl Plan {
    fn new(parts: &[PartIn]) -> Result<Plan, BuildError> {
        let first = &parts[0].manifest;
        let writer = WriterConfig {
            split: first.split,
            side: first.side,
            codec: first.codec,
            jpeg_quality: first.jpeg_quality.unwrap_or(90),
            // a manifest without the field holds 4:4:4 records
            jpeg_subsampling: first
                .jpeg_subsampling
                .unwrap_or(sv_shard::Subsampling::S444),
            classes: first.classes.clone(),
            max_shard_bytes: 0,
        };
        let mut shards = Vec::new();
        let mut rejects: Vec<Reject> = Vec::new();
        let mut segments = Vec::new();
        // What the merge is made of: every part's settings, inputs and shards. The
        // same parts merge to the same fingerprint, so a merge run again is up to
        // date (or resumes), and a part rebuilt since is noticed.
        let mut digest = Digest::new();
        for p in parts {
            for s in &p.manifest.shards {
                let name = writer.shard_name(shards.len());
                digest.eat(format!("{} {} {} {}", s.name, s.records, s.bytes, s.crc32).as_bytes());
                shards.push((p.dir.join(&s.name), ShardEntry { name, ..s.clone() }));
            }
            rejects.extend(read_rejects(&p.dir)?);
            segments.extend(p.record.segments.iter().cloned());
            digest.eat(p.part.inputs.as_bytes());
            digest.eat(p.record.fingerprint.as_bytes());
        }
        // The segments keep their part's shard names; renumber them as placed.
        let mut n = 0;
        for seg in &mut segments {
            if let Some(shard) = &mut seg.shard {
                shard.name = writer.shard_name(n);
                n += 1;
            }
        }
        let manifest = writer.manifest(shards.iter().map(|(_, e)| e.clone()).collect());
        let p0 = &parts[0];
        let record = BuildRecord {
            layout: LAYOUT,
            // Not any build's fingerprint: a later `build` into this folder starts over.
            fingerprint: format!(
                "merged {} parts of {} ({})",
                parts.len(),
                p0.part.settings,
                digest.hex()
            ),
            hash_inputs: segments.iter().all(|s| s.content.is_some()),
            listing: p0.record.listing.clone(),
            inputs: parts.iter().map(|p| p.record.inputs).sum(),
            records: manifest.records,
            rejects: rejects.len(),
            segments,
            ignored: p0.record.ignored.clone(),
            part: None,
        };
        Ok(Plan {
            shards,
            rejects,
            manifest,
            record,
        })
    }

    /// Write the merged dataset into `dir`: a journal naming this merge first (so a
    /// merge cut short is known as this one), the shards, then the records.
    /// Returns (linked, copied).
    fn write(&self, dir: &Path) -> Result<(usize, usize), BuildError> {
        let head = line(&JournalHead {
            layout: LAYOUT,
            fingerprint: self.record.fingerprint.clone(),
        })?;
        drop(write_journal(dir, head.as_bytes())?);
        let (mut linked, mut copied) = (0, 0);
        for (src, entry) in &self.shards {
            if place(src, &dir.join(&entry.name), entry)? {
                linked += 1;
            } else {
                copied += 1;
            }
        }
        write_rejects(dir, &self.rejects)?;
        sv_shard::write_manifest(dir, &self.manifest)?;
        write_json_atomic(dir, BUILD_FILE, &self.record)?;
        remove(&dir.join(JOURNAL_FILE))?;
        // what an interrupted merge or build left that this dataset does not hold
        let keep: Vec<&str> = self.shards.iter().map(|(_, e)| e.name.as_str()).collect();
        for p in list_our_files(dir)? {
            let name = p.file_name().map(|n| n.to_string_lossy().into_owned());
            let name = name.as_deref().unwrap_or("");
            if owned(name) != Some(Owned::Record) && !keep.contains(&name) {
                remove(&p)?;
            }
        }
        Ok((linked, copied))
    }
}

/// Where a merge writes.
enum Target {
    /// The output already holds this merge, whole.
    UpToDate,
    /// Into the output: it is empty, holds only other files (with `force`), or holds
    /// this same merge unfinished.
    Here,
    /// Into a staging folder, then moved over the dataset there (`force`).
    Staged,
}

fn where_to_write(out: &Path, plan: &Plan, force: bool) -> Result<Target, BuildError> {
    let fingerprint = &plan.record.fingerprint;
    let journal = read_own_file(&out.join(JOURNAL_FILE))?
        .and_then(|b| parse_journal(&String::from_utf8_lossy(&b)))
        .map(|(head, _)| head.fingerprint);
    let record = read_own_file(&out.join(BUILD_FILE))?.and_then(|b| parse_record(&b));
    if journal.is_none()
        && record.as_ref().is_some_and(|r| r == &plan.record)
        && Manifest::load(out).ok().as_ref() == Some(&plan.manifest)
        && Dataset::open(out).is_ok()
        && read_rejects(out).ok().as_ref() == Some(&plan.rejects)
    {
        return Ok(Target::UpToDate);
    }
    // the same merge, cut short or damaged since: done again in place
    if journal.as_ref() == Some(fingerprint)
        || record
            .as_ref()
            .is_some_and(|r| &r.fingerprint == fingerprint)
    {
        return Ok(Target::Here);
    }
    let ours = list_our_files(out)?;
    if ours.is_empty() {
        if !force && !entries(out)?.is_empty() {
            return Err(occupied(out, Occupant::OtherFiles));
        }
        remove_staging(out)?;
        return Ok(Target::Here);
    }
    if !force {
        let holds = if journal.is_some() {
            Occupant::InterruptedBuild
        } else {
            Occupant::OtherDataset
        };
        return Err(occupied(out, holds));
    }
    Ok(Target::Staged)
}

fn occupied(out: &Path, holds: Occupant) -> BuildError {
    BuildError::Occupied {
        dir: out.to_path_buf(),
        holds,
    }
}

/// A finished part build, locked so no build changes it while it is merged.
fn open_part(dir: &Path) -> Result<PartIn, BuildError> {
    let part_err = |problem, what: String| BuildError::Parts {
        problem,
        message: format!("{}: {what}", dir.display()),
    };
    let bad = |what: String| part_err(PartProblem::NotAPart, what);
    if !dir.is_dir() {
        return Err(bad("not a folder".into()));
    }
    let lock = OutputLock::acquire(dir)?;
    if dir.join(JOURNAL_FILE).exists() {
        return Err(part_err(
            PartProblem::Unfinished,
            "an unfinished build (run its command again to finish it, then merge)".into(),
        ));
    }
    let record = read_own_file(&dir.join(BUILD_FILE))?
        .and_then(|b| parse_record(&b))
        .ok_or_else(|| bad(format!("no {BUILD_FILE} of a finished build")))?;
    let part = record
        .part
        .clone()
        .ok_or_else(|| bad("a whole build, not a part (built without a part number)".into()))?;
    // Opening checks every shard's length, header and index against the manifest.
    let manifest = Dataset::open(dir)?.manifest().clone();
    let listed: Vec<&ShardEntry> = record
        .segments
        .iter()
        .filter_map(|s| s.shard.as_ref())
        .collect();
    if listed.len() != manifest.shards.len()
        || listed.iter().zip(&manifest.shards).any(|(a, b)| *a != b)
    {
        return Err(bad(format!(
            "its manifest and {BUILD_FILE} list different shards"
        )));
    }
    Ok(PartIn {
        dir: dir.to_path_buf(),
        record,
        part,
        manifest,
        _lock: lock,
    })
}

/// Sort the parts by number and refuse any that does not belong.
fn check_parts(parts: &mut [PartIn]) -> Result<(), BuildError> {
    parts.sort_by_key(|p| p.part.index);
    let first = &parts[0];
    let name = |p: &PartIn| {
        format!(
            "{} (part {}/{})",
            p.dir.display(),
            p.part.index,
            p.part.count
        )
    };
    for p in parts.iter().skip(1) {
        if p.part.settings != first.part.settings
            || p.part.inputs != first.part.inputs
            || p.part.count != first.part.count
            || p.part.total_images != first.part.total_images
        {
            return Err(BuildError::Parts {
                problem: PartProblem::OtherBuild,
                message: format!(
                    "{} was built from other inputs or settings than {}",
                    name(p),
                    name(first)
                ),
            });
        }
    }
    for w in parts.windows(2) {
        if w[0].part.index == w[1].part.index {
            return Err(BuildError::Parts {
                problem: PartProblem::GivenTwice,
                message: format!(
                    "part {}/{} is given twice: {} and {}",
                    w[0].part.index,
                    w[0].part.count,
                    w[0].dir.display(),
                    w[1].dir.display()
                ),
            });
        }
    }
    let count = first.part.count;
    let have: Vec<usize> = parts.iter().map(|p| p.part.index).collect();
    if let Some(missing) = (0..count).find(|k| !have.contains(k)) {
        return Err(BuildError::Parts {
            problem: PartProblem::Missing,
            message: format!(
                "part {missing}/{count} is missing: {} of {count} parts given ({})",
                parts.len(),
                parts.iter().map(name).collect::<Vec<_>>().join(", ")
            ),
        });
    }
    let mut next = 0;
    for p in parts.iter() {
        if p.part.first_image != next {
            return Err(BuildError::Parts {
                problem: PartProblem::Misplaced,
                message: format!(
                    "{} starts at image {}, not {next} where the part before it ends",
                    name(p),
                    p.part.first_image
                ),
            });
        }
        next += p.part.images;
    }
    Ok(())
}

/// Hard-link `src` as `dst`, or copy it where a link cannot be made (another
/// filesystem); either way its bytes are read and their CRC-32 checked against the
/// part's manifest (`entry`), so a damaged part is refused, not carried into the
/// merged dataset under its old checksum. Returns whether it was linked. `src` must
/// be a regular file (a link would otherwise carry a FIFO or a symbolic link into the
/// merged dataset); a copy is written through [`AtomicFile`], so a failure leaves no
/// partial shard or temporary file. The folder is synced when the manifest is
/// written after the last shard.
fn place(src: &Path, dst: &Path, entry: &ShardEntry) -> Result<bool, BuildError> {
    let mut from = sv_core::fs::open_regular(src).map_err(sv_shard::ShardError::from)?;
    let read_err = BuildError::io(src, "read");
    // a file of this merge's, cut short by an earlier run, is replaced
    let _ = std::fs::remove_file(dst);
    let linked = std::fs::hard_link(src, dst).is_ok();
    let mut hasher = crc32fast::Hasher::new();
    let mut len = 0u64;
    let mut buf = vec![0u8; 1 << 20];
    let mut to = if linked {
        None
    } else {
        Some(AtomicFile::create(dst).map_err(sv_shard::ShardError::from)?)
    };
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(read_err(e)),
        };
        hasher.update(&buf[..n]);
        len += n as u64;
        if let Some(to) = &mut to {
            to.write_all(&buf[..n])
                .map_err(BuildError::io(dst, "copy"))?;
        }
    }
    let crc = format!("{:08x}", hasher.finalize());
    if crc != entry.crc32 || len != entry.bytes {
        if linked {
            let _ = std::fs::remove_file(dst);
        }
        return Err(BuildError::ShardDamaged {
            path: src.to_path_buf(),
            reason: format!(
                "{len} bytes with CRC-32 {crc}, where its part's manifest says {} bytes with \
                 CRC-32 {}",
                entry.bytes, entry.crc32
            ),
        });
    }
    if let Some(to) = to {
        to.commit().map_err(sv_shard::ShardError::from)?;
    }
    Ok(linked)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mkfifo(path: &Path) {
        let c = std::ffi::CString::new(path.to_str().unwrap()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0, "mkfifo");
    }

    /// A part's shard replaced by a FIFO or a symbolic link to one after the part was
    /// opened is refused, never linked into the merged dataset (issue 15, item 9).
    #[test]
    fn only_regular_files_are_placed() {
        let d = tempfile::tempdir().unwrap();
        let fifo = d.path().join("a.svs");
        mkfifo(&fifo);
        let link = d.path().join("b.svs");
        std::os::unix::fs::symlink(&fifo, &link).unwrap();
        let entry = |bytes: &[u8]| ShardEntry {
            name: String::new(),
            records: 1,
            bytes: bytes.len() as u64,
            crc32: format!("{:08x}", crc32fast::hash(bytes)),
        };
        for src in [&fifo, &link] {
            let dst = d.path().join("out.svs");
            let err = place(src, &dst, &entry(b"")).unwrap_err().to_string();
            assert!(err.contains("FIFO"), "{err}");
            assert!(std::fs::symlink_metadata(&dst).is_err(), "{err}");
        }
        let file = d.path().join("c.svs");
        std::fs::write(&file, b"shard").unwrap();
        assert!(place(&file, &d.path().join("out.svs"), &entry(b"shard")).unwrap());
        // Issue 26, item 13: bytes that do not match the manifest are refused, and
        // nothing is left in the output
        let err = place(&file, &d.path().join("bad.svs"), &entry(b"shars"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("CRC-32"), "{err}");
        assert!(!d.path().join("bad.svs").exists());
        assert_eq!(std::fs::read(d.path().join("out.svs")).unwrap(), b"shard");
    }
}
