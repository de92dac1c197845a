//! With the `train` feature, `supervision-torch` links libtorch and runs without any
//! environment set-up (see tools/setup-torch.sh): an rpath to libtorch's directory
//! (torch-sys exports it to crates depending on it directly as DEP_TCH_LIBTORCH_LIB;
//! sv-cli has that direct, optional dependency) and libtorch_cuda kept linked, both
//! from sv-torch-link. They apply to `supervision-torch` only: `supervision` must not
//! load libtorch.
//!
//! It also hands `supervision-torch --version` what sv-c10 was built with: the
//! libtorch directory and whether NCCL (multi-GPU training) is in
//! (SV_BUILD_LIBTORCH, SV_BUILD_NCCL; sv-c10's build script decides, see there).

const TORCH_BIN: &str = "supervision-torch";

fn main() {
    // Without the feature there is no supervision-torch to pass arguments to.
    if std::env::var_os("CARGO_FEATURE_TRAIN").is_none() {
        return;
    }
    let lib = sv_torch_link::libtorch_lib("DEP_TCH_LIBTORCH_LIB");
    if let Some(lib) = &lib {
        sv_torch_link::emit(lib, sv_torch_link::Target::Bin(TORCH_BIN));
    }
    println!("cargo:rerun-if-env-changed=DEP_SV_C10_NCCL");
    let libtorch = lib.map_or_else(|| "not found".into(), |l| l.display().to_string());
    let nccl = std::env::var("DEP_SV_C10_NCCL").unwrap_or_else(|_| "unknown".into());
    println!("cargo:rustc-env=SV_BUILD_LIBTORCH={libtorch}");
    println!("cargo:rustc-env=SV_BUILD_NCCL={nccl}");
}
