//! Standard output for command results.
//!
//! `println!` panics when stdout is a closed pipe (`supervision shard inspect --json |
//! head -1`): Rust ignores SIGPIPE, so the write fails with `BrokenPipe` and `println!`
//! turns that into a panic. Commands print through [`outln!`](crate::outln) instead,
//! which returns the failure as a [`StdoutClosed`] error; [`crate::exit_with`] ends the
//! process quietly with code 0 on it. Other write errors (a full disk behind a
//! redirect) stay errors.

use std::fmt;
use std::io::{self, Write};

/// Standard output was closed by the reader (a broken pipe).
#[derive(Debug)]
pub struct StdoutClosed;

impl fmt::Display for StdoutClosed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("standard output was closed")
    }
}

impl std::error::Error for StdoutClosed {}

/// Writes one line to standard output.
pub fn line(args: fmt::Arguments<'_>) -> anyhow::Result<()> {
    let mut out = io::stdout().lock();
    match out.write_fmt(args).and_then(|()| out.write_all(b"\n")) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Err(StdoutClosed.into()),
        Err(e) => Err(anyhow::Error::new(e).context("writing to standard output")),
    }
}

/// Whether `err` (anywhere in its chain) is a closed standard output.
pub fn is_closed_stdout(err: &anyhow::Error) -> bool {
    err.chain().any(|e| e.is::<StdoutClosed>())
}

/// `println!` for command output: a closed pipe becomes a [`StdoutClosed`] error
/// (returned with `?` from the enclosing function) instead of a panic.
#[macro_export]
macro_rules! outln {
    () => {
        $crate::output::line(format_args!(""))?
    };
    ($($arg:tt)*) => {
        $crate::output::line(format_args!($($arg)*))?
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn closed_stdout_is_found_through_context() {
        let err = anyhow::Error::new(StdoutClosed).context("printing the report");
        assert!(is_closed_stdout(&err));
        let other = anyhow::Error::new(io::Error::from(io::ErrorKind::BrokenPipe));
        assert!(
            !is_closed_stdout(&other),
            "only standard output's own pipe is quiet"
        );
    }
}
