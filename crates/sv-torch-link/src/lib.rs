//! Build-script support for the crates that link libtorch (sv-c10, sv-train, sv-dist,
//! and sv-cli's `supervision-torch`): the one place that says how a binary finds
//! libtorch at run time without any environment set-up (no `LD_LIBRARY_PATH`).
//!
//! - An rpath to libtorch's lib directory, which torch-sys exports to the build
//!   scripts of crates depending on it directly (`DEP_TCH_LIBTORCH_LIB`), and sv-c10
//!   to its own dependents (`DEP_SV_C10_LIBTORCH_LIB`).
//! - `libtorch_cuda` kept as NEEDED when that directory has it: Rust code references
//!   none of its symbols, so the linker's `--as-needed` would drop it, its static
//!   initialisers would never register the CUDA backend, and CUDA would be silently
//!   unavailable on a GPU machine.
//!
//! `rustc-link-arg` reaches only the package's own binaries, tests, examples and
//! benches, never its dependents: every crate whose executables load libtorch asks
//! here for its own.
//!
//! ```no_run
//! // in build.rs's main
//! if let Some(lib) = sv_torch_link::libtorch_lib("DEP_TCH_LIBTORCH_LIB") {
//!     sv_torch_link::emit(&lib, sv_torch_link::Target::All);
//! }
//! ```

use std::path::{Path, PathBuf};

/// Which of the package's executables get the link arguments.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target<'a> {
    /// Every binary, test, example and bench of the package.
    All,
    /// One binary of the package, by name (the others must not load libtorch).
    Bin(&'a str),
}

/// libtorch's lib directory from the build-script variable `var`, registering the
/// variable with cargo so a different libtorch re-runs the build script. `None` when
/// it is not set (the package is built without libtorch).
pub fn libtorch_lib(var: &str) -> Option<PathBuf> {
    println!("cargo:rerun-if-env-changed={var}");
    std::env::var_os(var).map(PathBuf::from)
}

/// The `cargo:` lines that give `target` an rpath to `lib` and, when `lib` has
/// `libtorch_cuda.so`, keep it linked.
pub fn directives(lib: &Path, target: Target<'_>) -> Vec<String> {
    let has_cuda = lib.join("libtorch_cuda.so").exists();
    let key = match target {
        Target::All => "cargo:rustc-link-arg=".to_string(),
        Target::Bin(name) => format!("cargo:rustc-link-arg-bin={name}="),
    };
    let mut args = vec![format!("-Wl,-rpath,{}", lib.display())];
    if has_cuda {
        // --no-as-needed for this one library only, then back to the default.
        args.extend(["-Wl,--no-as-needed", "-ltorch_cuda", "-Wl,--as-needed"].map(String::from));
    }
    args.into_iter().map(|a| format!("{key}{a}")).collect()
}

/// Print [`directives`] for cargo (build scripts only: cargo reads their stdout).
pub fn emit(lib: &Path, target: Target<'_>) {
    for line in directives(lib, target) {
        println!("{line}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_libtorch_gets_only_the_rpath() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        assert_eq!(
            directives(dir, Target::All),
            [format!("cargo:rustc-link-arg=-Wl,-rpath,{}", dir.display())]
        );
    }

    #[test]
    fn cuda_libtorch_keeps_libtorch_cuda_for_the_named_binary_only() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        std::fs::write(dir.join("libtorch_cuda.so"), b"").unwrap();
        let key = "cargo:rustc-link-arg-bin=supervision-torch=";
        assert_eq!(
            directives(dir, Target::Bin("supervision-torch")),
            [
                format!("{key}-Wl,-rpath,{}", dir.display()),
                format!("{key}-Wl,--no-as-needed"),
                format!("{key}-ltorch_cuda"),
                format!("{key}-Wl,--as-needed"),
            ]
        );
    }
}
