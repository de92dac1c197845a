//! `train`'s output folder: what a run writes there, and how a run starts from what
//! the folder holds (a new run, `--force` deleting the earlier run's files, `--resume`).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use sv_cli::cli_args::TrainArgs;
use sv_train::trainer::{BEST_CHECKPOINT, LAST_CHECKPOINT, METRICS_FILE};

/// The files a run writes in its output folder.
const RUN_FILES: [&str; 3] = [LAST_CHECKPOINT, BEST_CHECKPOINT, METRICS_FILE];

/// The run files present in `out` (with the history checkpoints `epoch-NNNN.safetensors`
/// of `--keep` and the event files in `tensorboard/`), and the temporary files their
/// writers left when killed (`.last.safetensors.<pid>.<n>.tmp`,
/// `.epoch-NNNN.safetensors.<pid>.link.tmp`).
fn run_files(out: &Path) -> Result<(Vec<PathBuf>, Vec<PathBuf>)> {
    let mut present: Vec<PathBuf> = RUN_FILES
        .iter()
        .map(|f| out.join(f))
        .filter(|p| p.symlink_metadata().is_ok())
        .collect();
    let mut leftovers = Vec::new();
    let list = |dir: &Path| -> Result<Vec<(String, PathBuf)>> {
        let entries = match std::fs::read_dir(dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e).with_context(|| format!("list {}", dir.display())),
        };
        let mut names = Vec::new();
        for entry in entries {
            let entry = entry.with_context(|| format!("list {}", dir.display()))?;
            names.push((
                entry.file_name().to_string_lossy().into_owned(),
                entry.path(),
            ));
        }
        names.sort();
        Ok(names)
    };
    for (name, path) in list(out)? {
        if sv_core::fs::is_temp_name(&name)
            && (RUN_FILES
                .iter()
                .any(|f| name.starts_with(&format!(".{f}.")))
                || name.starts_with(".epoch-"))
        {
            leftovers.push(path);
        } else if sv_train::checkpoint::epoch_of(&name).is_some() {
            present.push(path);
        }
    }
    for (name, path) in list(&out.join(sv_train::metrics::TENSORBOARD_DIR))? {
        if name.starts_with("events.out.tfevents.") {
            present.push(path);
        }
    }
    Ok((present, leftovers))
}

fn names(paths: &[PathBuf]) -> String {
    paths
        .iter()
        .map(|p| p.file_name().unwrap_or_default().to_string_lossy())
        .collect::<Vec<_>>()
        .join(", ")
}

/// What the output folder holds decides how the run starts: a new run needs a folder
/// without a run (or `--force`, which deletes that run's files first); `--resume`
/// continues from `last.safetensors`. Returns the checkpoint to resume from.
///
/// In a data-parallel job only rank 0 (`lead`) deletes: the other ranks take the same
/// decision from the same flags without touching the folder (rank 0 writes nothing
/// before every rank has joined).
pub fn prepare_out(args: &TrainArgs, lead: bool) -> Result<Option<PathBuf>> {
    let out = &args.out;
    if let Ok(m) = std::fs::metadata(out)
        && !m.is_dir()
    {
        bail!(
            "--out {} is {}, not a folder",
            out.display(),
            sv_core::fs::describe_type(m.file_type())
        );
    }
    let (present, leftovers) = run_files(out)?;
    let last = out.join(LAST_CHECKPOINT);
    if args.force && !lead {
        return Ok(None);
    }
    if args.force {
        for p in present.iter().chain(&leftovers) {
            if p.symlink_metadata().is_ok_and(|m| m.is_dir()) {
                bail!(
                    "{} is a folder: --force deletes only a run's own files; move it away",
                    p.display()
                );
            }
            std::fs::remove_file(p).with_context(|| format!("delete {}", p.display()))?;
        }
        if !present.is_empty() {
            eprintln!(
                "--force: deleted the earlier run's {} in {}",
                names(&present),
                out.display()
            );
        }
        return Ok(None);
    }
    if args.resume {
        if last.exists() {
            return Ok(Some(last));
        }
        if out.join(BEST_CHECKPOINT).exists() {
            bail!(
                "--resume: {} holds {BEST_CHECKPOINT} but no {LAST_CHECKPOINT} to continue from; \
                 pass --force to start a new run there (deletes {})",
                out.display(),
                names(&present)
            );
        }
        eprintln!("no {} yet: starting a new run", last.display());
        return Ok(None);
    }
    if !present.is_empty() {
        bail!(
            "{} already holds a training run ({}): pass --resume to continue it, or --force to \
             delete those files and start a new one",
            out.display(),
            names(&present)
        );
    }
    Ok(None)
}
