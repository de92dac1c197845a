//! Lets this crate's test binaries find libtorch at run time: sv-c10 exports libtorch's
//! lib directory (DEP_SV_C10_LIBTORCH_LIB) and an rpath records it. libtorch_cuda needs
//! no help: sv-c10's shim references it by symbol, so the linker keeps it.

fn main() {
    println!("cargo:rerun-if-env-changed=DEP_SV_C10_LIBTORCH_LIB");
    if let Ok(dir) = std::env::var("DEP_SV_C10_LIBTORCH_LIB") {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{dir}");
    }
}
