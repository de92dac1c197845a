//! Lets this crate's test binaries find libtorch at run time: sv-c10 exports libtorch's
//! lib directory (DEP_SV_C10_LIBTORCH_LIB); sv-torch-link records it as an rpath (and
//! keeps libtorch_cuda linked, which sv-c10's shim already needs by symbol).

fn main() {
    if let Some(lib) = sv_torch_link::libtorch_lib("DEP_SV_C10_LIBTORCH_LIB") {
        sv_torch_link::emit(&lib, sv_torch_link::Target::All);
    }
}
