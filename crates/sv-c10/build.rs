//! Compiles csrc/shim.cpp against the headers of the libtorch that tch links (found
//! through torch-sys's DEP_TCH_LIBTORCH_LIB, `<torch>/lib`, so `<torch>/include` is
//! beside it).
//!
//! - Streams, events and TCPStore need only libtorch's own headers.
//! - ProcessGroupNCCL also needs the CUDA runtime's and NCCL's headers. With a pip
//!   wheel of torch they are in `<site-packages>/nvidia/{cu13,nccl}/include`; the
//!   runtime wheels lack two pieces (crt/host_config.h, nv/target) that
//!   tools/setup-torch.sh installs (nvidia-cuda-crt, nvidia-cuda-cccl). `CUDA_HOME`
//!   (a CUDA toolkit) is the other place looked at. Without them the shim is built
//!   without NCCL (a cargo warning says so) and the NCCL calls return an error;
//!   `SV_C10_NCCL=0` asks for that build on purpose (it compiles faster). Either way
//!   dependents' build scripts get the outcome as DEP_SV_C10_NCCL (`yes`, or `no (why)`),
//!   which `supervision-torch --version` prints.
//!
//! Cost, once per clean build (it adds to CI's): compiling the shim takes about 15 s of
//! CPU time with ProcessGroupNCCL (its headers pull in much of ATen and the CUDA
//! runtime's), about 6 s without (`SV_C10_NCCL=0`); measured with g++ -O0 on a
//! 2-core machine (`/usr/bin/time g++ -c ... csrc/shim.cpp`, user time).
//!
//! The shim references libtorch_cuda, torch_cpu and c10 symbols only (no libcudart),
//! so a binary that already has an rpath to `<torch>/lib` needs nothing more at run
//! time. This crate's own test binaries get that rpath here, and keep libtorch_cuda
//! linked (sv-torch-link, shared with the other crates that link libtorch).

use std::path::{Path, PathBuf};

fn main() {
    println!("cargo:rerun-if-changed=csrc/shim.cpp");
    println!("cargo:rerun-if-env-changed=LIBTORCH_CXX11_ABI");
    println!("cargo:rerun-if-env-changed=CUDA_HOME");
    println!("cargo:rerun-if-env-changed=SV_C10_NCCL");
    let lib = sv_torch_link::libtorch_lib("DEP_TCH_LIBTORCH_LIB")
        .expect("torch-sys did not export DEP_TCH_LIBTORCH_LIB (libtorch's lib directory)");
    let torch = lib.parent().expect("libtorch's lib directory has a parent");
    let include = torch.join("include");
    let abi = std::env::var("LIBTORCH_CXX11_ABI").unwrap_or_else(|_| "1".into());

    let mut build = cc::Build::new();
    build
        .cpp(true)
        .pic(true)
        .file("csrc/shim.cpp")
        .include(&include)
        .include(include.join("torch/csrc/api/include"))
        .flag("-std=c++17")
        .flag(format!("-D_GLIBCXX_USE_CXX11_ABI={abi}"))
        .flag("-DGLOG_USE_GLOG_EXPORT")
        // libtorch's headers are not warning-clean; the shim's own code is small.
        .warnings(false)
        .flag_if_supported("-Wno-interference-size");

    let has_cuda_lib = lib.join("libtorch_cuda.so").exists();
    let wanted = std::env::var("SV_C10_NCCL").map_or(true, |v| v != "0");
    // Ok, or why ProcessGroupNCCL is left out.
    let nccl = match nccl_includes(torch) {
        _ if !wanted => Err("SV_C10_NCCL=0 asked for a build without it".to_string()),
        _ if !has_cuda_lib => Err(format!(
            "{} has no libtorch_cuda.so (a CPU-only libtorch)",
            lib.display()
        )),
        None => Err(
            "the CUDA/NCCL headers (crt/host_config.h, nv/target, nccl.h) were not \
                     found; tools/setup-torch.sh installs them (nvidia-cuda-crt, \
                     nvidia-cuda-cccl)"
                .to_string(),
        ),
        Some(dirs) => {
            build
                .define("USE_C10D_NCCL", None)
                .define("USE_CUDA", None)
                .define("SV_C10_NCCL", None);
            for d in dirs {
                build.include(d);
            }
            Ok(())
        }
    };
    match &nccl {
        Ok(()) => println!("cargo:nccl=yes"),
        Err(why) => {
            if wanted {
                println!(
                    "cargo:warning=sv-c10 built without NCCL, so multi-GPU training \
                     (--collective nccl) ends with an error: {why}"
                );
            }
            // For dependents (DEP_SV_C10_NCCL): supervision-torch --version says it.
            println!("cargo:nccl=no ({why})");
        }
    }
    build.compile("sv_c10_shim");

    // The shim's symbols live in these; listed after the static library.
    if has_cuda_lib {
        println!("cargo:rustc-link-lib=dylib=torch_cuda");
    }
    println!("cargo:rustc-link-lib=dylib=torch_cpu");
    println!("cargo:rustc-link-lib=dylib=c10");
    println!("cargo:rustc-link-search=native={}", lib.display());
    // For dependents' build scripts, which give their own test binaries an rpath.
    println!("cargo:libtorch_lib={}", lib.display());

    // This crate's tests, examples and benches only (link-arg does not propagate).
    sv_torch_link::emit(&lib, sv_torch_link::Target::All);
}

/// The include directories ProcessGroupNCCL's headers need, if all are present.
fn nccl_includes(torch: &Path) -> Option<Vec<PathBuf>> {
    let complete = |cuda: &Path, nccl: &Path| {
        cuda.join("cuda_runtime_api.h").exists()
            && cuda.join("crt/host_config.h").exists()
            && cuda.join("nv/target").exists()
            && nccl.join("nccl.h").exists()
    };
    // A pip wheel: torch/ sits in site-packages beside nvidia/.
    if let Some(site) = torch.parent() {
        let cuda = site.join("nvidia/cu13/include");
        let nccl = site.join("nvidia/nccl/include");
        if complete(&cuda, &nccl) {
            return Some(vec![cuda, nccl]);
        }
        // nccl.h from the wheel with a CUDA toolkit's runtime headers.
        if let Some(home) = std::env::var_os("CUDA_HOME") {
            let cuda = PathBuf::from(home).join("include");
            if complete(&cuda, &nccl) {
                return Some(vec![cuda, nccl]);
            }
            if complete(&cuda, &cuda) {
                return Some(vec![cuda]);
            }
        }
    }
    None
}
