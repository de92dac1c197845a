//! With the `train` feature, `supervision-torch` links libtorch. Two things make it run
//! without any environment set-up (see tools/setup-torch.sh):
//! - an rpath to libtorch's directory, which torch-sys exports to crates depending on
//!   it directly as DEP_TCH_LIBTORCH_LIB (sv-cli has that direct, optional dependency);
//! - libtorch_cuda kept as NEEDED: nothing references it by symbol, so the linker's
//!   --as-needed would drop it and CUDA would be silently unavailable on a GPU machine.
//!
//! Both apply to `supervision-torch` only: `supervision` must not load libtorch.

const TORCH_BIN: &str = "supervision-torch";

fn main() {
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    // Without the feature there is no supervision-torch to pass arguments to.
    if std::env::var_os("CARGO_FEATURE_TRAIN").is_none() {
        return;
    }
    let Ok(dir) = std::env::var("DEP_TCH_LIBTORCH_LIB") else {
        return;
    };
    println!("cargo:rustc-link-arg-bin={TORCH_BIN}=-Wl,-rpath,{dir}");
    if std::path::Path::new(&dir).join("libtorch_cuda.so").exists() {
        println!("cargo:rustc-link-arg-bin={TORCH_BIN}=-Wl,--no-as-needed");
        println!("cargo:rustc-link-arg-bin={TORCH_BIN}=-ltorch_cuda");
        println!("cargo:rustc-link-arg-bin={TORCH_BIN}=-Wl,--as-needed");
    }
}
