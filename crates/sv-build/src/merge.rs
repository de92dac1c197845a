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

use std::path::{Path, PathBuf};

use sv_shard::{Dataset, Manifest, ShardEntry, WriterConfig};

use crate::build::{BUILD_FILE, JOURNAL_FILE};
use crate::files::{entries, list_our_files, write_json_atomic, write_rejects};
use crate::journal::{BuildRecord, LAYOUT, parse_record};
use crate::lock::OutputLock;
use crate::{BuildError, Occupant, PartRecord, Reject, read_rejects};
use sv_core::fs::AtomicFile;

/// What to merge.
#[derive(Clone, Debug)]
pub struct MergeConfig {
    /// The part folders, in any order.
    pub parts: Vec<PathBuf>,
    /// The dataset folder to write.
    pub output: PathBuf,
    /// Replace a dataset in `output` (only the build's own files are removed).
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
            return Err(BuildError::Input(format!(
                "{} is given twice (as {} and {})",
                c.display(),
                config.parts[j].display(),
                config.parts[i].display()
            )));
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
    std::fs::create_dir_all(out).map_err(|source| BuildError::Io {
        path: out.clone(),
        op: "create the output folder",
        source,
    })?;
    let _lock = OutputLock::acquire(out)?;
    clear_output(out, config.force)?;

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
    let (mut shards, mut linked, mut copied) = (Vec::new(), 0, 0);
    let mut rejects: Vec<Reject> = Vec::new();
    let mut segments = Vec::new();
    for p in &parts {
        for s in &p.manifest.shards {
            let name = writer.shard_name(shards.len());
            if place(&p.dir.join(&s.name), &out.join(&name))? {
                linked += 1;
            } else {
                copied += 1;
            }
            shards.push(ShardEntry { name, ..s.clone() });
        }
        rejects.extend(read_rejects(&p.dir)?);
        segments.extend(p.record.segments.iter().cloned());
    }
    // The segments keep their part's shard names; renumber them as placed.
    let mut n = 0;
    for seg in &mut segments {
        if let Some(shard) = &mut seg.shard {
            shard.name = writer.shard_name(n);
            n += 1;
        }
    }
    write_rejects(out, &rejects)?;
    let manifest = writer.manifest(shards);
    sv_shard::write_manifest(out, &manifest)?;
    let p0 = &parts[0];
    let record = BuildRecord {
        layout: LAYOUT,
        // Not any build's fingerprint: a later `build` into this folder starts over.
        fingerprint: format!("merged {} parts of {}", parts.len(), p0.part.settings),
        hash_inputs: segments.iter().all(|s| s.content.is_some()),
        listing: p0.record.listing.clone(),
        inputs: parts.iter().map(|p| p.record.inputs).sum(),
        records: manifest.records,
        rejects: rejects.len(),
        segments,
        ignored: p0.record.ignored.clone(),
        part: None,
    };
    write_json_atomic(out, BUILD_FILE, &record)?;
    Ok(MergeSummary {
        manifest,
        parts: parts.len(),
        linked,
        copied,
        rejects: rejects.len(),
    })
}

/// A finished part build, locked so no build changes it while it is merged.
fn open_part(dir: &Path) -> Result<PartIn, BuildError> {
    let bad = |what: String| BuildError::Input(format!("{}: {what}", dir.display()));
    if !dir.is_dir() {
        return Err(bad("not a folder".into()));
    }
    let lock = OutputLock::acquire(dir)?;
    if dir.join(JOURNAL_FILE).exists() {
        return Err(bad(
            "an unfinished build (run its command again to finish it, then merge)".into(),
        ));
    }
    let record = crate::files::read_own_file(&dir.join(BUILD_FILE))?
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
            return Err(BuildError::Input(format!(
                "{} was built from other inputs or settings than {}",
                name(p),
                name(first)
            )));
        }
    }
    for w in parts.windows(2) {
        if w[0].part.index == w[1].part.index {
            return Err(BuildError::Input(format!(
                "part {}/{} is given twice: {} and {}",
                w[0].part.index,
                w[0].part.count,
                w[0].dir.display(),
                w[1].dir.display()
            )));
        }
    }
    let count = first.part.count;
    let have: Vec<usize> = parts.iter().map(|p| p.part.index).collect();
    if let Some(missing) = (0..count).find(|k| !have.contains(k)) {
        return Err(BuildError::Input(format!(
            "part {missing}/{count} is missing: {} of {count} parts given ({})",
            parts.len(),
            parts.iter().map(name).collect::<Vec<_>>().join(", ")
        )));
    }
    let mut next = 0;
    for p in parts.iter() {
        if p.part.first_image != next {
            return Err(BuildError::Input(format!(
                "{} starts at image {}, not {next} where the part before it ends",
                name(p),
                p.part.first_image
            )));
        }
        next += p.part.images;
    }
    Ok(())
}

fn clear_output(out: &Path, force: bool) -> Result<(), BuildError> {
    let ours = list_our_files(out)?;
    if !force && !entries(out)?.is_empty() {
        return Err(BuildError::Occupied {
            dir: out.to_path_buf(),
            holds: if ours.is_empty() {
                Occupant::OtherFiles
            } else {
                Occupant::OtherDataset
            },
        });
    }
    for p in ours {
        std::fs::remove_file(&p).map_err(|source| BuildError::Io {
            path: p.clone(),
            op: "remove",
            source,
        })?;
    }
    Ok(())
}

/// Hard-link `src` as `dst`, or copy it where a link cannot be made (another
/// filesystem). Returns whether it was linked. `src` must be a regular file (a link
/// would otherwise carry a FIFO or a symbolic link into the merged dataset); a copy is
/// written through [`AtomicFile`], so a failure leaves no partial shard or temporary
/// file. The folder is synced when the manifest is written after the last shard.
fn place(src: &Path, dst: &Path) -> Result<bool, BuildError> {
    let mut from = sv_core::fs::open_regular(src).map_err(sv_shard::ShardError::from)?;
    if std::fs::hard_link(src, dst).is_ok() {
        return Ok(true);
    }
    let mut to = AtomicFile::create(dst).map_err(sv_shard::ShardError::from)?;
    std::io::copy(&mut from, &mut to).map_err(|source| BuildError::Io {
        path: dst.to_path_buf(),
        op: "copy",
        source,
    })?;
    to.commit().map_err(sv_shard::ShardError::from)?;
    Ok(false)
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
        for src in [&fifo, &link] {
            let dst = d.path().join("out.svs");
            let err = place(src, &dst).unwrap_err().to_string();
            assert!(err.contains("FIFO"), "{err}");
            assert!(std::fs::symlink_metadata(&dst).is_err(), "{err}");
        }
        let file = d.path().join("c.svs");
        std::fs::write(&file, b"shard").unwrap();
        assert!(place(&file, &d.path().join("out.svs")).unwrap());
        assert_eq!(std::fs::read(d.path().join("out.svs")).unwrap(), b"shard");
    }
}
