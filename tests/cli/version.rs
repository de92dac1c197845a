//! `supervision-torch --version` says what the build links: libtorch's directory and
//! whether NCCL is in (sv-c10 leaves it out, with a build warning, when the CUDA/NCCL
//! headers are missing; multi-GPU training then fails only when it starts).

use std::path::Path;
use std::process::Command;

#[test]
fn torch_version_names_libtorch_and_nccl() {
    let out = Command::new(env!("CARGO_BIN_EXE_supervision-torch"))
        .arg("--version")
        .output()
        .expect("run supervision-torch --version");
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8(out.stdout).expect("utf-8");
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines[0].starts_with("supervision "), "{text}");
    let lib = lines
        .iter()
        .find_map(|l| l.strip_prefix("libtorch: "))
        .unwrap_or_else(|| panic!("no libtorch line in:\n{text}"));
    assert!(Path::new(lib).join("libtorch_cpu.so").exists(), "{text}");
    let nccl = lines
        .iter()
        .find_map(|l| l.strip_prefix("NCCL: "))
        .unwrap_or_else(|| panic!("no NCCL line in:\n{text}"));
    assert!(
        nccl == "yes" || (nccl.starts_with("no (") && nccl.ends_with(')')),
        "{text}"
    );
}
