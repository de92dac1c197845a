//! With the `train` feature the binary links libtorch. Two things make it run without
//! any environment set-up (see ../../shared notes in tools/setup-torch.sh):
//! - an rpath to libtorch's directory, which torch-sys exports to crates depending on
//!   it directly as DEP_TCH_LIBTORCH_LIB (sv-cli has that direct, optional dependency);
//! - libtorch_cuda kept as NEEDED: nothing references it by symbol, so the linker's
//!   --as-needed would drop it and CUDA would be silently unavailable on a GPU machine.

fn main() {
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    let Ok(dir) = std::env::var("DEP_TCH_LIBTORCH_LIB") else {
        return;
    };
    println!("cargo:rustc-link-arg-bins=-Wl,-rpath,{dir}");
    if std::path::Path::new(&dir).join("libtorch_cuda.so").exists() {
        println!("cargo:rustc-link-arg-bins=-Wl,--no-as-needed");
        println!("cargo:rustc-link-arg-bins=-ltorch_cuda");
        println!("cargo:rustc-link-arg-bins=-Wl,--as-needed");
    }
}
