//! Lets this crate's own test binaries find libtorch at run time without
//! LD_LIBRARY_PATH: torch-sys tells crates that depend on it directly where libtorch's
//! libraries are (DEP_TCH_LIBTORCH_LIB); sv-torch-link records it as an rpath and keeps
//! libtorch_cuda linked.

fn main() {
    if let Some(lib) = sv_torch_link::libtorch_lib("DEP_TCH_LIBTORCH_LIB") {
        sv_torch_link::emit(&lib, sv_torch_link::Target::All);
    }
}
