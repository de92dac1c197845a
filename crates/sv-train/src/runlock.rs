//! The run lock: one training process writes an output folder at a time, and what a
//! dead one left behind is cleared.
//!
//! `OUT/.train.lock` is locked with `flock(LOCK_EX | LOCK_NB)` by the process that
//! writes the run's files (a single process, or rank 0 of a job) for as long as it
//! trains. The kernel releases the lock when its holder exits, however it dies
//! (`kill -9` included), so a lock is never stale; the file says who holds it (pid,
//! host, command), so a second `train` on the same folder stops at once naming the
//! first.
//!
//! Every writer of a run's files holds the lock, so the temporary files of those names
//! (`.last.safetensors.<pid>.<n>.tmp`, `.epoch-0003.safetensors.<pid>.link.tmp`, ...)
//! found by a process that has just taken it were left by a process that died while
//! writing: [`RunLock::acquire`] removes them. Files of other names are never touched.
//!
//! The locking itself is sv-core's [`FolderLock`], as for `shard build`'s lock.

use std::path::{Path, PathBuf};

use sv_core::lock::{FolderLock, LockError};

use crate::error::{Result, TrainError, io_err};

/// Name of the lock file inside an output folder.
pub const LOCK_FILE: &str = ".train.lock";

/// The final names whose temporaries belong to a run (the history checkpoints
/// `epoch-NNNN.safetensors` are matched by their prefix).
const RUN_FILE_PREFIXES: [&str; 4] = [
    crate::files::LAST_CHECKPOINT,
    crate::files::BEST_CHECKPOINT,
    crate::files::METRICS_FILE,
    "epoch-",
];

/// Held by the process that writes a run's files; released (and the file removed)
/// when dropped.
#[derive(Debug)]
pub struct RunLock {
    _lock: FolderLock,
    removed: Vec<PathBuf>,
}

impl RunLock {
    /// Locks the run in `dir` (created if missing), or fails at once naming the
    /// process that holds it; then removes the run's temporary files that dead
    /// writers left (see the module header).
    pub fn acquire(dir: &Path) -> Result<RunLock> {
        std::fs::create_dir_all(dir).map_err(io_err(dir))?;
        let lock = FolderLock::acquire(dir, LOCK_FILE).map_err(|e| match e {
            LockError::Held { holder } => TrainError::Locked {
                dir: dir.to_path_buf(),
                holder,
            },
            LockError::Io { path, source, .. } => io_err(path)(source),
            e @ LockError::Replaced(_) => TrainError::Config(e.to_string()),
        })?;
        Ok(RunLock {
            _lock: lock,
            removed: remove_dead_temporaries(dir)?,
        })
    }

    /// The temporary files of dead writers that [`RunLock::acquire`] removed.
    pub fn removed(&self) -> &[PathBuf] {
        &self.removed
    }
}

/// Whether `name` is a temporary file of one of the run's files.
pub fn is_run_temporary(name: &str) -> bool {
    sv_core::fs::is_temp_name(name)
        && name.strip_prefix('.').is_some_and(|rest| {
            RUN_FILE_PREFIXES.iter().any(|p| {
                rest.strip_prefix(p)
                    .is_some_and(|after| p.ends_with('-') || after.starts_with('.'))
            })
        })
}

/// Removes the run's temporary files in `dir` (the caller holds the lock, so their
/// writers are dead). Returns what it removed.
fn remove_dead_temporaries(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut removed = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io_err(dir))? {
        let entry = entry.map_err(io_err(dir))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if !is_run_temporary(name) || entry.file_type().map_err(io_err(dir))?.is_dir() {
            continue;
        }
        let path = entry.path();
        match std::fs::remove_file(&path) {
            Ok(()) => removed.push(path),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err(&path)(e)),
        }
    }
    removed.sort();
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_run_files_temporaries_count() {
        for yes in [
            ".last.safetensors.123.0.tmp",
            ".best.safetensors.9.4.tmp",
            ".metrics.jsonl.77.1.tmp",
            ".epoch-0003.safetensors.12.link.tmp",
            ".epoch-0003.safetensors.12.0.tmp",
        ] {
            assert!(is_run_temporary(yes), "{yes}");
        }
        for no in [
            "last.safetensors",
            ".last.safetensors",
            ".last.safetensorsx.1.0.tmp",
            ".notes.1.0.tmp",
            ".train-00000.svs.1.0.tmp",
            "last.safetensors.1.0.tmp",
        ] {
            assert!(!is_run_temporary(no), "{no}");
        }
    }

    #[test]
    fn a_second_holder_is_refused_by_name_and_dead_temporaries_go() {
        let d = tempfile::tempdir().unwrap();
        let dead = d.path().join(".last.safetensors.4194304.0.tmp");
        let other = d.path().join(".notes.txt.1.0.tmp");
        std::fs::write(&dead, "torn").unwrap();
        std::fs::write(&other, "not the run's").unwrap();
        let lock = RunLock::acquire(d.path()).unwrap();
        assert_eq!(lock.removed(), std::slice::from_ref(&dead));
        assert!(!dead.exists() && other.exists());
        let e = RunLock::acquire(d.path()).unwrap_err().to_string();
        assert!(e.contains(&format!("pid {}", std::process::id())), "{e}");
        drop(lock);
        assert!(!d.path().join(LOCK_FILE).exists());
        drop(RunLock::acquire(d.path()).unwrap());
    }
}
