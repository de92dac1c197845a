//! Lets this crate's own test binaries find libtorch at run time without
//! LD_LIBRARY_PATH: torch-sys tells crates that depend on it directly where libtorch's
//! libraries are (DEP_TCH_LIBTORCH_LIB), and an rpath records it in the executable.
//! libtorch_cuda is kept even though nothing references it by symbol (the linker's
//! --as-needed would drop it, and CUDA would then be silently unavailable).

fn main() {
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    let Ok(dir) = std::env::var("DEP_TCH_LIBTORCH_LIB") else {
        return;
    };
    println!("cargo:rustc-link-arg=-Wl,-rpath,{dir}");
    if std::path::Path::new(&dir).join("libtorch_cuda.so").exists() {
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed");
        println!("cargo:rustc-link-arg=-ltorch_cuda");
        println!("cargo:rustc-link-arg=-Wl,--as-needed");
    }
}
