//! Running `supervision-torch` for the commands that need libtorch.
//!
//! Linking libtorch costs every command its load time (the dynamic loader maps
//! libtorch and its CUDA libraries, about 0.9 s and 470 MB, before `main`), although
//! data preparation never needs it. So `train`, `eval` and `predict` live in a
//! second executable, `supervision-torch`, built and installed beside this one by the
//! same `cargo build -p sv-cli`; this binary replaces itself with it (exec on Unix),
//! so exit codes, signals and the terminal are the child's own.
//!
//! Where it is looked for, in order: `$SUPERVISION_TORCH` (a path), the folder of this
//! executable, then `PATH`.
//!
//! A target that is this very executable (`SUPERVISION_TORCH=$(which supervision)`,
//! a `supervision-torch` that is a link or a copy of `supervision`, a wrapper script
//! that runs `supervision` again) would re-execute itself forever. Two checks refuse
//! it: the target is compared with this executable as a file (path after links, and
//! device and inode), and the exec carries [`FORWARDED_BY`] with this process's id,
//! which exec keeps: a `supervision` that finds its own id (or its parent's, for a
//! script that did not exec) there was started by its own forwarding.

use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};
// Set on the forwarded command: the id of the `supervision` process that forwarded (see
// the module header). Both binaries take it out of their environment at start
// (`sv_cli::env::forwarded_by`), so no process they start inherits it.
use sv_cli::env::FORWARDED_BY;

/// The libtorch half's file name.
pub const TORCH_BINARY: &str = "supervision-torch";

const TORCH_COMMANDS: [&str; 3] = ["train", "eval", "predict"];

/// Whether `supervision-torch` runs this command.
pub fn is_torch_command(name: &OsStr) -> bool {
    TORCH_COMMANDS.iter().any(|c| name == *c)
}

/// Runs `supervision-torch COMMAND [-v...] ARGS...` in place of this process.
pub fn run(command: &str, verbose: u8, args: Vec<OsString>) -> Result<i32> {
    refuse_a_loop()?;
    let (exe, from) = locate()?;
    refuse_self(&exe, from)?;
    let mut cmd = Command::new(&exe);
    cmd.env(FORWARDED_BY, std::process::id().to_string());
    cmd.arg(command);
    for _ in 0..verbose {
        cmd.arg("-v");
    }
    cmd.args(args);
    exec(cmd, &exe)
}

#[cfg(unix)]
fn exec(mut cmd: Command, exe: &Path) -> Result<i32> {
    use std::os::unix::process::CommandExt;
    // Usage lines then read `supervision train ...`, the command the user typed.
    cmd.arg0("supervision");
    let err = cmd.exec();
    Err(err).with_context(|| format!("could not run {}", exe.display()))
}

#[cfg(not(unix))]
fn exec(mut cmd: Command, exe: &Path) -> Result<i32> {
    let status = cmd
        .status()
        .with_context(|| format!("could not run {}", exe.display()))?;
    Ok(status.code().unwrap_or(1))
}

/// Where [`locate`] found the target, for the messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Found {
    Env,
    Beside,
    Path,
}

/// This process was started by its own forwarding (through a link, copy or script
/// that [`refuse_self`] could not see through).
fn refuse_a_loop() -> Result<()> {
    let Some(by) = sv_cli::env::forwarded_by() else {
        return Ok(());
    };
    let by = by.to_string_lossy();
    let me = std::process::id().to_string();
    #[cfg(unix)]
    let parent = std::os::unix::process::parent_id().to_string();
    #[cfg(not(unix))]
    let parent = String::new();
    if *by == me || *by == parent {
        bail!(
            "{TORCH_BINARY} ran `supervision` again instead of training: the file found as \
             {TORCH_BINARY} (SUPERVISION_TORCH, the folder of supervision, or PATH) is \
             `supervision` itself or a script that runs it; point SUPERVISION_TORCH at the \
             {TORCH_BINARY} that `cargo build -p sv-cli` builds"
        );
    }
    Ok(())
}

/// `exe` is this very executable (the same file after links, or a hard link to it).
fn refuse_self(exe: &Path, from: Found) -> Result<()> {
    let Ok(here) = std::env::current_exe() else {
        return Ok(());
    };
    if !same_file(exe, &here) {
        return Ok(());
    }
    let source = match from {
        Found::Env => "SUPERVISION_TORCH is set to",
        Found::Beside => "the file beside this executable,",
        Found::Path => "the file on PATH,",
    };
    bail!(
        "{source} {}, is this `supervision` executable ({}), not {TORCH_BINARY}: running it \
         would start itself forever. Point SUPERVISION_TORCH at the {TORCH_BINARY} that \
         `cargo build -p sv-cli` builds beside supervision",
        exe.display(),
        here.display()
    )
}

/// Whether `a` and `b` are one file: equal after resolving links, or (Unix) the same
/// device and inode (hard links).
fn same_file(a: &Path, b: &Path) -> bool {
    if let (Ok(ca), Ok(cb)) = (a.canonicalize(), b.canonicalize())
        && ca == cb
    {
        return true;
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        if let (Ok(ma), Ok(mb)) = (std::fs::metadata(a), std::fs::metadata(b)) {
            return ma.dev() == mb.dev() && ma.ino() == mb.ino();
        }
    }
    false
}

fn locate() -> Result<(PathBuf, Found)> {
    let name = format!("{TORCH_BINARY}{}", std::env::consts::EXE_SUFFIX);
    if let Some(path) = sv_cli::env::path(sv_cli::env::TORCH)? {
        if !path.is_file() {
            bail!(
                "SUPERVISION_TORCH is set to {}, which is not a file",
                path.display()
            );
        }
        return Ok((path, Found::Env));
    }
    let here = std::env::current_exe().ok();
    if let Some(dir) = here.as_deref().and_then(Path::parent) {
        let beside = dir.join(&name);
        if beside.is_file() {
            return Ok((beside, Found::Beside));
        }
    }
    if let Some(paths) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&paths) {
            let candidate = dir.join(&name);
            if candidate.is_file() {
                return Ok((candidate, Found::Path));
            }
        }
    }
    let place = here.as_deref().and_then(Path::parent).map_or_else(
        || "this executable".to_string(),
        |d| d.display().to_string(),
    );
    bail!(
        "this command needs {name}, the part of SuperVision that links libtorch, and it is \
         not in {place}, not on PATH and SUPERVISION_TORCH is not set. Build both \
         executables with `source tools/setup-torch.sh && cargo build --release -p sv-cli` \
         (a `--no-default-features` build makes the data-preparation binary alone)"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_is_itself_through_links() {
        let dir = std::env::temp_dir().join(format!("sv-forward-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let a = dir.join("a");
        std::fs::write(&a, b"x").unwrap();
        let other = dir.join("other");
        std::fs::write(&other, b"x").unwrap();
        assert!(same_file(&a, &a));
        assert!(!same_file(&a, &other));
        #[cfg(unix)]
        {
            let soft = dir.join("soft");
            std::os::unix::fs::symlink(&a, &soft).unwrap();
            let hard = dir.join("hard");
            std::fs::hard_link(&a, &hard).unwrap();
            assert!(same_file(&soft, &a));
            assert!(same_file(&hard, &a));
            assert!(!same_file(&soft, &other));
        }
        assert!(!same_file(&dir.join("missing"), &a));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
