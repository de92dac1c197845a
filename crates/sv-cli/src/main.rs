//! `supervision`: the command line of SuperVision. Clap types live here; each
//! command turns its flags into a plain library config and draws progress.
//!
//! This binary never links libtorch. `train`, `eval` and `predict` are run by
//! `supervision-torch`, installed beside it by the same build: see [`forward`].

mod commands;
mod forward;

use std::ffi::OsString;

use clap::{CommandFactory, Parser, Subcommand};

/// SuperVision: prepare ImageNet into memory-mapped shards, compute its statistics,
/// stream augmented batches and train AlexNet as the 2012 paper did.
#[derive(Parser, Debug)]
#[command(name = "supervision", version, about, long_about = None)]
struct Cli {
    #[command(flatten)]
    log: sv_cli::Verbosity,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Write a small synthetic ImageNet look-alike (train tree, flat val, labels).
    Synth(commands::synth::Args),
    /// Build, verify, inspect and export shard datasets.
    #[command(subcommand)]
    Shard(commands::shard::Cmd),
    /// Dataset statistics: mean image, channel moments, RGB covariance and PCA.
    #[command(subcommand)]
    Pca(commands::pca::Cmd),
    /// Train AlexNet on shard sets (libtorch; CPU or CUDA). `supervision train --help`
    /// lists its options.
    #[command(disable_help_flag = true)]
    Train(Forwarded),
    /// Top-1/top-5 error of a checkpoint on a validation shard set (libtorch).
    #[command(disable_help_flag = true)]
    Eval(Forwarded),
    /// Top-5 classes of image files under a checkpoint (libtorch).
    #[command(disable_help_flag = true)]
    Predict(Forwarded),
    /// Describe the models: layers, output shapes, parameter counts.
    #[command(subcommand)]
    Model(commands::model::Cmd),
    /// Draw a training run's curves (loss, error, learning rate, throughput) from its
    /// metrics.jsonl to a PNG or SVG figure.
    #[command(long_about = commands::plot::LONG_ABOUT)]
    Plot(commands::plot::Args),
    /// Benchmarks: the input pipeline's throughput and determinism digest.
    #[command(subcommand)]
    Bench(commands::bench::Cmd),
    /// Shell completion script (bash, zsh, fish, ...) on stdout, every command's flags
    /// included: `supervision completions bash > ~/.local/share/bash-completion/completions/supervision`.
    Completions(sv_cli::cli_args::reference::CompletionsArgs),
    /// Manual page (roff) on stdout: `supervision man | man -l -`; `supervision man
    /// train` for a command's own page.
    Man(sv_cli::cli_args::reference::ManArgs),
}

/// The arguments of a command that `supervision-torch` runs, passed on untouched
/// (`--help` included).
#[derive(clap::Args, Debug)]
struct Forwarded {
    #[arg(
        trailing_var_arg = true,
        allow_hyphen_values = true,
        num_args = 0..,
        value_name = "ARGS"
    )]
    args: Vec<OsString>,
}

fn main() {
    // SIGXFSZ ignored, environment variables checked: before anything else.
    sv_cli::start();
    // `supervision help train` asks the binary that knows train's options.
    let raw: Vec<OsString> = std::env::args_os().collect();
    if raw.len() >= 3 && raw[1] == "help" && forward::is_torch_command(&raw[2]) {
        let cmd = raw[2].to_string_lossy().into_owned();
        sv_cli::exit_with(forward::run(&cmd, 0, vec!["--help".into()]));
    }
    let cli = Cli::parse();
    sv_cli::init_tracing(cli.log.verbose);
    let v = cli.log.verbose;
    let result = match cli.command {
        Command::Synth(args) => commands::synth::run(args),
        Command::Shard(cmd) => commands::shard::run(cmd),
        Command::Pca(cmd) => commands::pca::run(cmd),
        Command::Train(f) => forward::run("train", v, f.args),
        Command::Eval(f) => forward::run("eval", v, f.args),
        Command::Predict(f) => forward::run("predict", v, f.args),
        Command::Model(cmd) => commands::model::run(cmd),
        Command::Plot(args) => commands::plot::run(args),
        Command::Bench(cmd) => commands::bench::run(cmd),
        Command::Completions(a) => sv_cli::cli_args::reference::run_completions(Cli::command(), &a),
        Command::Man(a) => sv_cli::cli_args::reference::run_man(Cli::command(), &a),
    };
    sv_cli::exit_with(result)
}
