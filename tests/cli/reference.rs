//! `supervision completions` and `supervision man`: made from the clap definitions of
//! every command, `train`, `eval` and `predict` included (their flags are defined in
//! the libtorch-free part, so `supervision` knows them without `supervision-torch`).

use sv_tests::{fails, ok};

#[test]
fn completion_scripts_name_every_commands_flags() {
    let bash = ok(&["completions", "bash"]);
    assert!(bash.contains("supervision"), "{bash}");
    // train's own flags, not the forwarded stand-in's `ARGS`
    for want in [
        "--precision",
        "--nproc-per-node",
        "--lighting",
        "--mean-image",
    ] {
        assert!(bash.contains(want), "{want} in the bash script");
    }
    // a fixed choice completes to its values
    assert!(bash.contains("bf16 fp16 fp32"), "precision's values");
    // other commands too
    assert!(bash.contains("--max-shard-mib") && bash.contains("--checkpoint"));
    for shell in ["zsh", "fish"] {
        let script = ok(&["completions", shell]);
        assert!(script.contains("precision"), "{shell}: {script}");
    }
    let err = fails(&["completions", "tcsh"]);
    assert!(err.contains("tcsh") && err.contains("bash"), "{err}");
}

#[test]
fn man_writes_roff_pages_for_the_program_and_each_command() {
    let page = ok(&["man"]);
    assert!(page.contains(".TH") && page.contains(".SH NAME"), "{page}");
    for cmd in ["shard", "train", "completions", "man"] {
        assert!(page.contains(cmd), "{cmd} in supervision(1)");
    }
    let train = ok(&["man", "train"]);
    assert!(
        train.contains(".TH") && train.contains("supervision\\-train"),
        "{train}"
    );
    assert!(train.contains("\\-\\-precision"), "{train}");
    let build = ok(&["man", "shard", "build"]);
    assert!(build.contains("supervision\\-shard\\-build"), "{build}");
    let err = fails(&["man", "shard", "nope"]);
    assert!(err.contains("no command `shard nope`"), "{err}");
}
