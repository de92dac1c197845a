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
pub mod env;
pub mod output;
pub mod progress;

/// The log filter when neither `-v` nor `RUST_LOG` says otherwise: warnings from
/// everything, and the progress lines of long commands ([`progress`]), which are
/// written only when stderr is not a terminal (on a terminal the bar shows instead).
pub const DEFAULT_LOG_FILTER: &str = "warn,sv_cli::progress=info";

/// What both executables do first, before parsing their flags: ignore SIGXFSZ
/// ([`ignore_file_size_signal`]) and check the environment variables they read
/// ([`env::check`]). A bad variable ends the process with its message and exit code
/// 2, as a bad flag does.
pub fn start() {
    ignore_file_size_signal();
    env::start();
    if let Err(e) = env::check() {
        eprintln!("error: {e:#}");
        std::process::exit(2);
    }
}

/// Ignore SIGXFSZ, so that a write past the file-size limit (`ulimit -f`, a batch
/// system's RLIMIT_FSIZE) fails with EFBIG ("File too large") and the command's normal
/// clean-up runs: temporary files removed, an error naming the file. By default the
/// signal kills the process (exit 153) and leaves `.tmp` files behind. An ignored
/// signal stays ignored across exec, so `supervision-torch` started by `supervision`
/// and the ranks it starts inherit this.
pub fn ignore_file_size_signal() {
    #[cfg(unix)]
    // SAFETY: setting a signal's disposition to SIG_IGN installs no handler code; it
    // is safe at any point of the program.
    unsafe {
        libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
    }
}

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
    // RUST_LOG was checked by `start`; a bad one here (a program that skipped it)
    // falls back to the default.
    let filter = env::log_filter()
        .ok()
        .flatten()
        .unwrap_or_else(|| tracing_subscriber::EnvFilter::new(default));
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
