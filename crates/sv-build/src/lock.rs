//! An exclusive lock on an output folder for the whole of a build or merge:
//! `OUTPUT/.build.lock`, taken with sv-core's [`FolderLock`] (flock, released by the
//! kernel however the holder dies; the file names the holder, so a second build fails
//! at once naming the first).

use std::path::Path;

use sv_core::lock::{FolderLock, LockError};

use crate::BuildError;

/// Name of the lock file inside an output folder.
pub const LOCK_FILE: &str = ".build.lock";

/// Held for the whole of a build; released (and the file removed) when dropped.
#[derive(Debug)]
pub struct OutputLock {
    _lock: FolderLock,
}

impl OutputLock {
    /// Lock `dir` (which must exist), or fail at once naming the current holder.
    pub fn acquire(dir: &Path) -> Result<OutputLock, BuildError> {
        FolderLock::acquire(dir, LOCK_FILE)
            .map(|lock| OutputLock { _lock: lock })
            .map_err(|e| match e {
                LockError::Held { holder } => BuildError::Locked {
                    dir: dir.to_path_buf(),
                    holder,
                },
                LockError::Io { path, op, source } => BuildError::io(&path, op)(source),
                e @ LockError::Replaced(_) => BuildError::Input(e.to_string()),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_lock_names_the_first_and_the_file_goes_with_the_holder() {
        let d = tempfile::tempdir().unwrap();
        let first = OutputLock::acquire(d.path()).unwrap();
        let err = OutputLock::acquire(d.path()).unwrap_err().to_string();
        assert!(
            err.contains(&format!("pid {}", std::process::id())),
            "{err}"
        );
        drop(first);
        assert!(!d.path().join(LOCK_FILE).exists());
        let again = OutputLock::acquire(d.path()).unwrap();
        drop(again);
    }

    #[test]
    fn a_stale_lock_file_of_a_dead_holder_is_taken_over() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join(LOCK_FILE), "pid 999999\nhost gone\n").unwrap();
        let lock = OutputLock::acquire(d.path()).unwrap();
        let text = std::fs::read_to_string(d.path().join(LOCK_FILE)).unwrap();
        assert!(
            text.starts_with(&format!("pid {}\n", std::process::id())),
            "{text}"
        );
        drop(lock);
    }
}
