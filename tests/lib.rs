//! Helpers for the end-to-end tests: find (or build) the real `supervision` binary
//! and run it on data the tests generate.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

/// Path of the `supervision` binary of this build (target/<profile>/supervision).
///
/// `cargo test` builds a package's binaries only for that package's own integration
/// tests, and these live in another package: so the binaries (`supervision`, and
/// `supervision-torch`, which it runs for the libtorch commands) are brought up to date
/// here once per test process, in this build's profile. Up to date, that is cargo's
/// quick no-op; never a stale binary from an earlier build.
pub fn binary() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let exe = std::env::current_exe().expect("test executable path");
        // target/<profile>/deps/cli-<hash>
        let profile_dir = exe
            .parent()
            .and_then(Path::parent)
            .expect("target profile dir");
        let bin = profile_dir.join(format!("supervision{}", std::env::consts::EXE_SUFFIX));
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut build = Command::new(cargo);
        build.args(["build", "-p", "sv-cli", "--bins"]);
        if profile_dir.file_name().is_some_and(|n| n == "release") {
            build.arg("--release");
        }
        if !cfg!(feature = "train") {
            // without libtorch: `supervision` alone
            build.arg("--no-default-features");
        }
        let status = build.status().expect("run cargo build");
        assert!(status.success(), "cargo build -p sv-cli failed");
        bin
    })
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
/// on a full disk; SIGXFSZ ignored so the write returns the error).
#[cfg(unix)]
pub fn limit_file_size(cmd: &mut Command, bytes: u64) {
    use std::os::unix::process::CommandExt;
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
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
