//! What the two executables of SuperVision share.
//!
//! SuperVision installs two binaries side by side, built by one `cargo build -p sv-cli`:
//! - `supervision`: synth, shard, pca, bench, plot, model. It never links libtorch, so it
//!   starts at once and needs nothing but itself on a data-preparation machine.
//! - `supervision-torch`: train, eval, predict. It links libtorch (and its CUDA
//!   libraries, about 0.9 s and 470 MB of mapping at start-up). `supervision train ...`
//!   runs it in its own place (exec), the way `git foo` runs `git-foo`, so users keep
//!   typing `supervision train`.
//!
//! This library holds the pieces both use: progress bars, logging set-up, standard
//! output that treats a closed pipe as a quiet exit, and the exit-code handling.

pub mod args;
pub mod cli_args;
pub mod output;
pub mod progress;

/// The log filter when neither `-v` nor `RUST_LOG` says otherwise: warnings from
/// everything, and the progress lines of long commands ([`progress`]), which are
/// written only when stderr is not a terminal (on a terminal the bar shows instead).
pub const DEFAULT_LOG_FILTER: &str = "warn,sv_cli::progress=info";

/// The logging flag both executables take (`-v`, `-vv`), for [`init_tracing`].
#[derive(clap::Args, Debug, Clone, Copy)]
pub struct Verbosity {
    /// Log more (-v: debug, -vv: trace). Default: warnings, and progress lines when
    /// stderr is not a terminal (a bar when it is). RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,
}

/// Sets up `tracing` on stderr: [`DEFAULT_LOG_FILTER`] by default, `-v` debug, `-vv`
/// trace; `RUST_LOG` overrides (`RUST_LOG=warn` silences the progress lines).
pub fn init_tracing(verbose: u8) {
    let default = match verbose {
        0 => DEFAULT_LOG_FILTER,
        1 => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colour codes only for a terminal: a log file gets plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}

/// Ends the process with a command's result: its exit code, or the error chain on
/// stderr and exit code 1. A closed standard output (`supervision ... | head`) is a
/// quiet exit with code 0, as ripgrep does.
pub fn exit_with(result: anyhow::Result<i32>) -> ! {
    match result {
        Ok(code) => std::process::exit(code),
        Err(err) if output::is_closed_stdout(&err) => std::process::exit(0),
        Err(err) => {
            eprintln!("error: {err:#}");
            std::process::exit(1);
        }
    }
}
