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

use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

/// The libtorch half's file name.
pub const TORCH_BINARY: &str = "supervision-torch";

const TORCH_COMMANDS: [&str; 3] = ["train", "eval", "predict"];

/// Whether `supervision-torch` runs this command.
pub fn is_torch_command(name: &OsStr) -> bool {
    TORCH_COMMANDS.iter().any(|c| name == *c)
}

/// Runs `supervision-torch COMMAND [-v...] ARGS...` in place of this process.
pub fn run(command: &str, verbose: u8, args: Vec<OsString>) -> Result<i32> {
    let exe = locate()?;
    let mut cmd = Command::new(&exe);
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

fn locate() -> Result<PathBuf> {
    let name = format!("{TORCH_BINARY}{}", std::env::consts::EXE_SUFFIX);
    if let Some(path) = std::env::var_os("SUPERVISION_TORCH") {
        let path = PathBuf::from(path);
        if !path.is_file() {
            bail!(
                "SUPERVISION_TORCH is set to {}, which is not a file",
                path.display()
            );
        }
        return Ok(path);
    }
    let here = std::env::current_exe().ok();
    if let Some(dir) = here.as_deref().and_then(Path::parent) {
        let beside = dir.join(&name);
        if beside.is_file() {
            return Ok(beside);
        }
    }
    if let Some(paths) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&paths) {
            let candidate = dir.join(&name);
            if candidate.is_file() {
                return Ok(candidate);
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
