//! `supervision-torch`: the commands of SuperVision that need libtorch (train, eval,
//! predict). Users run them as `supervision train ...`; the `supervision`
//! binary, which never loads libtorch, hands these commands to this one.

mod dist;
mod eval;
mod outdir;
mod predict;
mod resume;
mod settings;
mod train;

use clap::{CommandFactory, FromArgMatches, Parser};
use sv_cli::cli_args::{Given, TorchCommand};

/// `--version`: also what this build links (from build.rs): libtorch's directory and
/// whether NCCL (multi-GPU training) is in, or why not.
const LONG_VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    "\nlibtorch: ",
    env!("SV_BUILD_LIBTORCH"),
    "\nNCCL: ",
    env!("SV_BUILD_NCCL")
);

/// SuperVision's libtorch commands: train AlexNet, evaluate and apply checkpoints. Usually run as `supervision <command>`.
#[derive(Parser, Debug)]
#[command(name = "supervision", version, long_version = LONG_VERSION, about, long_about = None)]
struct Cli {
    #[command(flatten)]
    log: sv_cli::Verbosity,
    /// The flags are defined in sv-cli's library (`sv_cli::cli_args`), where
    /// `supervision` finds them for its completions and manual pages.
    #[command(subcommand)]
    command: TorchCommand,
}

fn main() {
    // SIGXFSZ ignored, environment variables checked: before anything else.
    sv_cli::start();
    // the matches say which flags were typed (train --resume compares only those)
    let matches = Cli::command().get_matches();
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    sv_cli::init_tracing(cli.log.verbose);
    // a shard truncated under a memory map: a message naming it, not "Bus error"
    sv_shard::report_truncated_shards();
    let result = match cli.command {
        TorchCommand::Train(args) => {
            let given = matches
                .subcommand_matches("train")
                .map(Given::from_matches)
                .unwrap_or_default();
            train::run(*args, &given)
        }
        TorchCommand::Eval(args) => eval::run(args),
        TorchCommand::Predict(args) => predict::run(args),
    };
    sv_cli::exit_with(result)
}
