//! Helpers for the end-to-end tests (tests/cli/): run the real `supervision` binary on
//! data the tests generate. A module of sv-cli's test target `cli` (tests/cli/main.rs
//! includes it), reached from the test modules as `sv_tests::...`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Path of the `supervision` binary that cargo built for this test run.
///
/// cargo builds a package's binaries before its integration tests and passes their
/// paths in `CARGO_BIN_EXE_<name>`: `supervision`, and with sv-cli's `train` feature
/// `supervision-torch` beside it (where `supervision` looks for it to run the libtorch
/// commands). Same profile, same features, never stale.
pub fn binary() -> &'static Path {
    let bin = Path::new(env!("CARGO_BIN_EXE_supervision"));
    #[cfg(feature = "train")]
    assert_eq!(
        Path::new(env!("CARGO_BIN_EXE_supervision-torch")).parent(),
        bin.parent(),
        "supervision runs the supervision-torch found beside it"
    );
    bin
}

/// A `supervision` command with a clean environment for logging.
pub fn supervision() -> Command {
    let mut cmd = Command::new(binary());
    cmd.env_remove("RUST_LOG");
    cmd
}

/// Run `supervision ARGS...`, returning its output; panics with stdout/stderr when the
/// exit status differs from `expect_success`.
pub fn run(args: &[&str], expect_success: bool) -> Output {
    let out = supervision()
        .args(args)
        .output()
        .expect("spawn supervision");
    if out.status.success() != expect_success {
        panic!(
            "supervision {args:?} exited {:?} (expected success={expect_success})\n--- stdout\n{}\n--- stderr\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    out
}

/// Run and expect success; returns stdout as text.
pub fn ok(args: &[&str]) -> String {
    String::from_utf8_lossy(&run(args, true).stdout).into_owned()
}

/// Run and expect failure; returns stderr as text.
pub fn fails(args: &[&str]) -> String {
    String::from_utf8_lossy(&run(args, false).stderr).into_owned()
}

/// `supervision synth` into `dir/imagenet`: `classes` classes of `per_class` train and
/// `val` val images each, from `seed`, with `extra` flags (`--archives`). Returns the
/// folder.
pub fn synth_imagenet(
    dir: &Path,
    (classes, per_class, val): (u32, u32, u32),
    seed: u64,
    extra: &[&str],
) -> PathBuf {
    let root = dir.join("imagenet");
    let (classes, per_class, val, seed) = (
        classes.to_string(),
        per_class.to_string(),
        val.to_string(),
        seed.to_string(),
    );
    let mut args = vec![
        "synth",
        "--output",
        s(&root),
        "--classes",
        &classes,
        "--per-class",
        &per_class,
        "--val-per-class",
        &val,
        "--seed",
        &seed,
    ];
    args.extend_from_slice(extra);
    ok(&args);
    root
}

/// A path as &str (the tests create their paths; they are UTF-8).
pub fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// Width and height from a PNG's IHDR.
pub fn png_dims(path: &Path) -> (u32, u32) {
    let b = std::fs::read(path).expect("read PNG");
    assert_eq!(&b[1..4], b"PNG", "{} is not a PNG", path.display());
    let w = u32::from_be_bytes(b[16..20].try_into().expect("4 bytes"));
    let h = u32::from_be_bytes(b[20..24].try_into().expect("4 bytes"));
    (w, h)
}

/// Every name in a folder, sorted.
pub fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .expect("list folder")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// Make writes of the process `cmd` starts fail past `bytes` bytes a file (EFBIG, as
/// on a full disk). SIGXFSZ keeps its default action (death): the binaries ignore it
/// themselves (`sv_cli::start`), and these tests check that they do.
#[cfg(unix)]
pub fn limit_file_size(cmd: &mut Command, bytes: u64) {
    use std::os::unix::process::CommandExt;
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            let lim = libc::rlimit {
                rlim_cur: bytes as libc::rlim_t,
                rlim_max: bytes as libc::rlim_t,
            };
            if libc::setrlimit(libc::RLIMIT_FSIZE, &lim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}
