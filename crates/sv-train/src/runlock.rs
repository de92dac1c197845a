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
//! As with sv-build's lock, the file is removed by its holder at the end while still
//! locked; a process that opened it just before then retries on the new file.

use std::fs::File;
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

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
    path: PathBuf,
    file: Option<File>,
    removed: Vec<PathBuf>,
}

impl RunLock {
    /// Locks the run in `dir` (created if missing), or fails at once naming the
    /// process that holds it; then removes the run's temporary files that dead
    /// writers left (see the module header).
    pub fn acquire(dir: &Path) -> Result<RunLock> {
        std::fs::create_dir_all(dir).map_err(io_err(dir))?;
        let path = dir.join(LOCK_FILE);
        for _ in 0..16 {
            let mut file = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(&path)
                .map_err(io_err(&path))?;
            if !try_lock(&file).map_err(io_err(&path))? {
                let mut holder = String::new();
                let _ = file.read_to_string(&mut holder);
                return Err(TrainError::Locked {
                    dir: dir.to_path_buf(),
                    holder: describe_holder(&holder),
                });
            }
            if !same_file(&file, &path) {
                continue; // removed by its last holder after we opened it: retry
            }
            file.set_len(0)
                .and_then(|()| file.rewind())
                .and_then(|()| file.write_all(holder_text().as_bytes()))
                .and_then(|()| file.flush())
                .map_err(io_err(&path))?;
            let mut lock = RunLock {
                path,
                file: Some(file),
                removed: Vec::new(),
            };
            lock.removed = remove_dead_temporaries(dir)?;
            return Ok(lock);
        }
        Err(TrainError::Config(format!(
            "{}: could not take the lock: the lock file keeps being replaced",
            path.display()
        )))
    }

    /// The temporary files of dead writers that [`RunLock::acquire`] removed.
    pub fn removed(&self) -> &[PathBuf] {
        &self.removed
    }
}

impl Drop for RunLock {
    fn drop(&mut self) {
        // Removed while still held (see the module header), then released by closing.
        let _ = std::fs::remove_file(&self.path);
        drop(self.file.take());
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

fn holder_text() -> String {
    let cmdline: Vec<String> = std::env::args().collect();
    format!(
        "pid {}\nhost {}\ncommand {}\n",
        std::process::id(),
        hostname(),
        cmdline.join(" ")
    )
}

/// "pid 123 on host x, running `supervision train ...`" from the lock file's text.
fn describe_holder(text: &str) -> String {
    let field = |key: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(key)?.strip_prefix(' '))
            .map(str::trim)
            .filter(|v| !v.is_empty())
    };
    match field("pid") {
        Some(pid) => {
            let mut s = format!("pid {pid}");
            if let Some(host) = field("host") {
                s.push_str(&format!(" on {host}"));
            }
            if let Some(cmd) = field("command") {
                s.push_str(&format!(", running `{cmd}`"));
            }
            s
        }
        // The holder has locked the file but not yet written who it is.
        None => "a process that is just starting".into(),
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "this host".into())
}

fn try_lock(file: &File) -> std::io::Result<bool> {
    use std::os::fd::AsRawFd;
    // SAFETY: flock on a file descriptor this function borrows; no memory is shared.
    let r = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if r == 0 {
        return Ok(true);
    }
    let e = std::io::Error::last_os_error();
    if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
        Ok(false)
    } else {
        Err(e)
    }
}

/// Whether `path` still names the open `file` (same device and inode).
fn same_file(file: &File, path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (file.metadata(), std::fs::metadata(path)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
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
