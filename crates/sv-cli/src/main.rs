//! `supervision`: the command line of SuperVision. Clap types live here; each
//! command turns its flags into a plain library config and draws progress.

mod commands;
mod progress;

use clap::{Parser, Subcommand};

/// SuperVision: prepare ImageNet into memory-mapped shards, compute its statistics,
/// stream augmented batches and train AlexNet as the 2012 paper did.
#[derive(Parser, Debug)]
#[command(name = "supervision", version, about, long_about = None)]
struct Cli {
    /// Log more (-v: debug, -vv: trace). RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
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
    /// Train AlexNet on shard sets (libtorch; CPU or CUDA).
    #[cfg(feature = "train")]
    Train(Box<commands::train::Args>),
    /// Top-1/top-5 error of a checkpoint on a validation shard set.
    #[cfg(feature = "train")]
    Eval(commands::eval::Args),
    /// Top-5 classes of image files under a checkpoint.
    #[cfg(feature = "train")]
    Predict(commands::predict::Args),
    /// Describe the models: layers, output shapes, parameter counts.
    #[cfg(feature = "train")]
    #[command(subcommand)]
    Model(commands::model::Cmd),
    /// Draw loss, errors and learning rate from a metrics.jsonl to a PNG.
    Plot(commands::plot::Args),
    /// Benchmarks: the input pipeline's throughput and determinism digest.
    #[command(subcommand)]
    Bench(commands::bench::Cmd),
}

fn main() {
    let cli = Cli::parse();
    init_tracing(cli.verbose);
    let result = match cli.command {
        Command::Synth(args) => commands::synth::run(args),
        Command::Shard(cmd) => commands::shard::run(cmd),
        Command::Pca(cmd) => commands::pca::run(cmd),
        #[cfg(feature = "train")]
        Command::Train(args) => commands::train::run(*args),
        #[cfg(feature = "train")]
        Command::Eval(args) => commands::eval::run(args),
        #[cfg(feature = "train")]
        Command::Predict(args) => commands::predict::run(args),
        #[cfg(feature = "train")]
        Command::Model(cmd) => commands::model::run(cmd),
        Command::Plot(args) => commands::plot::run(args),
        Command::Bench(cmd) => commands::bench::run(cmd),
    };
    match result {
        Ok(code) => std::process::exit(code),
        Err(err) => {
            eprintln!("error: {err:#}");
            std::process::exit(1);
        }
    }
}

fn init_tracing(verbose: u8) {
    let default = match verbose {
        0 => "warn",
        1 => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}
