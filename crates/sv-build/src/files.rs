//! The files a build or merge owns in its output folder, and the helpers that list,
//! read, write and remove them. Nothing else in an output folder is touched: a build
//! removes only files named by [`owned`].
//!
//! - `manifest.json`, `rejects.jsonl`, `build.json`, `.build-journal.jsonl`: the
//!   dataset's record and the build's own;
//! - `*.svs`: shards;
//! - `*.tmp`: a file being written (sv-core's atomic writes), left by a killed build;
//! - `.supervision-staging/`: a dataset being built or merged with `force` over
//!   another one, moved into place once whole ([`promote`]), so the old dataset stays
//!   until the new one exists (a full disk loses nothing).

use std::io::Write;
use std::path::{Path, PathBuf};

use sv_shard::MANIFEST_FILE;

use crate::journal::{Segment, line};
use crate::lock::LOCK_FILE;
use crate::{BuildError, Reject};

/// Name of the rejects report.
pub const REJECTS_FILE: &str = "rejects.jsonl";
/// Name of the build record.
pub const BUILD_FILE: &str = "build.json";
/// Name of the journal of an unfinished build.
pub const JOURNAL_FILE: &str = ".build-journal.jsonl";

/// The folder inside an output folder where a dataset that replaces another is
/// written before it is moved into place.
pub(crate) const STAGING_DIR: &str = ".supervision-staging";

/// What kind of file of a build's a name is, if it is one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Owned {
    /// The manifest, rejects, build record or journal.
    Record,
    /// A shard.
    Shard,
    /// A file being written, or left by a killed writer.
    Temporary,
}

/// The one list of the files a build owns: whether `name` is one, and which kind.
pub(crate) fn owned(name: &str) -> Option<Owned> {
    if [MANIFEST_FILE, REJECTS_FILE, BUILD_FILE, JOURNAL_FILE].contains(&name) {
        Some(Owned::Record)
    } else if name.ends_with(".svs") {
        Some(Owned::Shard)
    } else if name.ends_with(".tmp") {
        Some(Owned::Temporary)
    } else {
        None
    }
}

pub(crate) fn remove(p: &Path) -> Result<(), BuildError> {
    std::fs::remove_file(p).map_err(BuildError::io(p, "remove"))
}

/// Everything in the output folder but its lock file.
pub(crate) fn entries(out: &Path) -> Result<Vec<PathBuf>, BuildError> {
    Ok(std::fs::read_dir(out)
        .map_err(BuildError::io(out, "list"))?
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name() != LOCK_FILE && e.file_name() != STAGING_DIR)
        .map(|e| e.path())
        .collect())
}

/// Files a build writes (and may remove): nothing else is touched.
pub(crate) fn list_our_files(out: &Path) -> Result<Vec<PathBuf>, BuildError> {
    let rd = std::fs::read_dir(out).map_err(BuildError::io(out, "list"))?;
    let mut v: Vec<PathBuf> = rd
        .filter_map(|e| e.ok())
        .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| owned(&n.to_string_lossy()).is_some())
        })
        .collect();
    v.sort();
    Ok(v)
}

/// An entry named like a build's file that is not a regular file (a folder, say).
pub(crate) fn not_ours_in_the_way(
    out: &Path,
) -> Result<Option<(PathBuf, &'static str)>, BuildError> {
    let rd = std::fs::read_dir(out).map_err(BuildError::io(out, "list"))?;
    for e in rd.filter_map(|e| e.ok()) {
        let name = e.file_name().to_string_lossy().into_owned();
        // a temporary's name is chosen fresh by its writer: nothing is in its way
        let ours = owned(&name).is_some_and(|k| k != Owned::Temporary);
        if let Ok(ft) = e.file_type()
            && ours
            && !ft.is_file()
        {
            return Ok(Some((e.path(), crate::read::kind_of(ft))));
        }
    }
    Ok(None)
}

/// The largest journal or build record read (a whole ImageNet build's is a few MiB).
const MAX_RECORD_BYTES: u64 = 256 << 20;

/// The bytes of one of the build's own files in the output folder, `None` if it does
/// not exist. Only a regular file is read: a FIFO or device in its place is an error
/// naming it, never a wait.
pub(crate) fn read_own_file(path: &Path) -> Result<Option<Vec<u8>>, BuildError> {
    match sv_core::fs::read_regular(path, MAX_RECORD_BYTES) {
        Ok(b) => Ok(Some(b)),
        Err(e) if e.is_not_found() => Ok(None),
        Err(e) => Err(sv_shard::ShardError::from(e).into()),
    }
}

pub(crate) fn write_journal(out: &Path, body: &[u8]) -> Result<std::fs::File, BuildError> {
    let path = out.join(JOURNAL_FILE);
    let mut f = std::fs::File::create(&path).map_err(BuildError::io(&path, "create"))?;
    f.write_all(body).map_err(BuildError::io(&path, "write"))?;
    f.sync_all().map_err(BuildError::io(&path, "sync"))?;
    Ok(f)
}

pub(crate) fn journal_append(
    file: &mut std::fs::File,
    out: &Path,
    entry: &Segment,
) -> Result<(), BuildError> {
    let text = line(entry)?;
    file.write_all(text.as_bytes())
        .and_then(|()| file.sync_data())
        .map_err(BuildError::io(&out.join(JOURNAL_FILE), "write"))
}

pub(crate) fn write_rejects(out: &Path, rejects: &[Reject]) -> Result<(), BuildError> {
    let mut body = String::new();
    for r in rejects {
        body.push_str(&line(r)?);
    }
    write_atomic(out, REJECTS_FILE, body.as_bytes())
}

/// Read `rejects.jsonl` from a finished build.
pub fn read_rejects(out: &Path) -> Result<Vec<Reject>, BuildError> {
    let path = out.join(REJECTS_FILE);
    let text = crate::read::read_text(&path)?;
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .enumerate()
        .map(|(n, l)| {
            serde_json::from_str(l)
                .map_err(|e| BuildError::Input(format!("{}: line {}: {e}", path.display(), n + 1)))
        })
        .collect()
}

pub(crate) fn write_json_atomic<T: serde::Serialize>(
    out: &Path,
    name: &str,
    v: &T,
) -> Result<(), BuildError> {
    let mut text = serde_json::to_vec_pretty(v)
        .map_err(|e| BuildError::Input(format!("cannot serialise {name}: {e}")))?;
    text.push(b'\n');
    write_atomic(out, name, &text)
}

pub(crate) fn write_atomic(out: &Path, name: &str, bytes: &[u8]) -> Result<(), BuildError> {
    sv_core::fs::write_atomic(out.join(name), bytes).map_err(sv_shard::ShardError::from)?;
    Ok(())
}

/// A fresh staging folder in `out` (an earlier one, left by a killed build or merge,
/// is removed first).
pub(crate) fn fresh_staging(out: &Path) -> Result<PathBuf, BuildError> {
    let stage = out.join(STAGING_DIR);
    remove_staging(out)?;
    std::fs::create_dir(&stage).map_err(BuildError::io(&stage, "create"))?;
    Ok(stage)
}

/// Remove the staging folder of `out`, if there is one: only the build's own files
/// in it, then the folder (anything else in it keeps it, and is an error).
pub(crate) fn remove_staging(out: &Path) -> Result<(), BuildError> {
    let stage = out.join(STAGING_DIR);
    match std::fs::symlink_metadata(&stage) {
        Err(_) => return Ok(()),
        Ok(m) if !m.is_dir() => {
            return Err(BuildError::Input(format!(
                "{} is {}, where a build stages a dataset; move it away",
                stage.display(),
                crate::read::kind_of(m.file_type())
            )));
        }
        Ok(_) => {}
    }
    for p in list_our_files(&stage)? {
        remove(&p)?;
    }
    std::fs::remove_dir(&stage).map_err(BuildError::io(&stage, "remove"))
}

/// Move the finished dataset in `stage` into `out`, replacing the one there: its
/// shards first, then the build's other files of `out` that it does not replace are
/// removed, then its records with `manifest.json` last; the staging folder goes
/// once it is empty. Renames within one filesystem need no space, so the old
/// dataset is only removed once the new one is whole on disk.
pub(crate) fn promote(stage: &Path, out: &Path) -> Result<(), BuildError> {
    let new = list_our_files(stage)?;
    let name = |p: &Path| {
        p.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    };
    let names: Vec<String> = new.iter().map(|p| name(p)).collect();
    let rank = |p: &PathBuf| match name(p).as_str() {
        n if n == MANIFEST_FILE => 3,
        n if n == BUILD_FILE => 2,
        n if owned(n) == Some(Owned::Shard) => 0,
        _ => 1,
    };
    let mut order = new.clone();
    order.sort_by_key(rank);
    let mv = |p: &Path| {
        std::fs::rename(p, out.join(name(p))).map_err(BuildError::io(p, "move into place"))
    };
    let (shards, records): (Vec<&PathBuf>, Vec<&PathBuf>) =
        order.iter().partition(|p| rank(p) == 0);
    for p in shards {
        mv(p)?;
    }
    for p in list_our_files(out)? {
        if !names.contains(&name(&p)) {
            remove(&p)?;
        }
    }
    for p in records {
        mv(p)?;
    }
    sv_core::fs::sync_dir(out).map_err(sv_shard::ShardError::from)?;
    remove_staging(out)
}
