//! The environment variables SuperVision reads, checked the way flags are.
//!
//! A variable is input from outside like a flag, so it gets the same treatment: a value
//! that does not parse or is out of range is an error naming the variable, its value
//! and the rule ("SUPERVISION_PROGRESS_SECS=\"1e20\": must be at most 86400"), never a
//! panic (`Duration::from_secs_f64(1e20)` panicked) and never silently ignored. Every
//! read goes through [`get`] or [`path`]; [`check`] reads them all once at start-up
//! ([`crate::start`]), so a bad value stops a command before it does any work.
//!
//! The variables (docs/guarantees.md lists them for users):
//! - `SUPERVISION_PROGRESS_SECS`: seconds between progress count lines in log mode
//!   ([`crate::progress`]), 0 to 86400.
//! - `SUPERVISION_TORCH`: the `supervision-torch` executable to run for train, eval and
//!   predict (`supervision` only).
//! - `RUST_LOG`: the log filter (tracing-subscriber's syntax).
//!
//! The launch variables of data-parallel training (`RANK`, `WORLD_SIZE`, ...) are read
//! and checked by sv-dist's `RankEnv`.

use std::ffi::OsString;
use std::path::PathBuf;

use anyhow::{Result, anyhow, bail};

/// Seconds between progress count lines in log mode; see [`crate::progress`].
pub const PROGRESS_SECS: &str = "SUPERVISION_PROGRESS_SECS";

/// The `supervision-torch` executable `supervision` runs for train, eval and predict.
pub const TORCH: &str = "SUPERVISION_TORCH";

/// The log filter of `tracing-subscriber` ([`crate::init_tracing`]).
pub const RUST_LOG: &str = "RUST_LOG";

/// Set by `supervision` on the command it forwards to `supervision-torch`: its own
/// process id, which exec keeps (see `forward.rs`). [`start`] takes it out of the
/// environment, so that only the process it was set for sees it, never a process that
/// one starts later.
pub const FORWARDED_BY: &str = "SUPERVISION_FORWARDED_BY";

static FORWARDED_BY_AT_START: std::sync::OnceLock<Option<OsString>> = std::sync::OnceLock::new();

/// [`FORWARDED_BY`] as this process found it at [`start`].
pub fn forwarded_by() -> Option<&'static OsString> {
    FORWARDED_BY_AT_START.get().and_then(Option::as_ref)
}

/// Reads [`FORWARDED_BY`] and removes it from the environment. Call it first thing in
/// `main`, before any thread starts ([`crate::start`] does).
pub fn start() {
    FORWARDED_BY_AT_START.get_or_init(|| {
        let value = std::env::var_os(FORWARDED_BY);
        if value.is_some() {
            // SAFETY: called at the top of `main`, before this program starts a thread,
            // so nothing reads the environment concurrently.
            unsafe { std::env::remove_var(FORWARDED_BY) };
        }
        value
    });
}

/// Longest progress interval: a day (a longer one is a mistake, and
/// `Duration::from_secs_f64` panics past `u64::MAX` seconds).
pub const MAX_PROGRESS_SECS: f64 = 86_400.0;

/// The value of `name` parsed by `parse` (one of [`crate::args`]' value parsers, or
/// any `&str -> Result<T, String>`), `None` when it is not set. An error names the
/// variable, its value and what is wrong, as a bad flag's does.
pub fn get<T>(name: &str, parse: impl Fn(&str) -> Result<T, String>) -> Result<Option<T>> {
    let Some(raw) = std::env::var_os(name) else {
        return Ok(None);
    };
    let text = utf8(name, raw)?;
    parse(&text)
        .map(Some)
        .map_err(|why| anyhow!("environment variable {name}={text:?}: {why}"))
}

/// The value of `name` as a path, `None` when it is not set. An empty value is an
/// error (unset the variable instead): it would name the current directory.
pub fn path(name: &str) -> Result<Option<PathBuf>> {
    match std::env::var_os(name) {
        None => Ok(None),
        Some(v) if v.is_empty() => {
            bail!("environment variable {name} is set but empty; unset it or give a path")
        }
        Some(v) => Ok(Some(PathBuf::from(v))),
    }
}

fn utf8(name: &str, raw: OsString) -> Result<String> {
    raw.into_string().map_err(|raw| {
        anyhow!(
            "environment variable {name}={}: not UTF-8 text",
            raw.to_string_lossy()
        )
    })
}

/// A number of seconds from 0 to `max`, fractions allowed (`"2.5"`).
pub fn seconds(max: f64) -> impl Fn(&str) -> Result<f64, String> + Clone + Send + Sync + 'static {
    move |text| {
        let secs: f64 = text
            .trim()
            .parse()
            .map_err(|_| format!("{text:?} is not a number of seconds"))?;
        if !secs.is_finite() || secs < 0.0 {
            return Err(format!("must be a number of seconds from 0 to {max}"));
        }
        crate::args::at_most(secs, max)
    }
}

/// `SUPERVISION_PROGRESS_SECS` as a duration, `None` when unset.
pub fn progress_secs() -> Result<Option<std::time::Duration>> {
    Ok(get(PROGRESS_SECS, seconds(MAX_PROGRESS_SECS))?.map(std::time::Duration::from_secs_f64))
}

/// `RUST_LOG`, checked: `None` when unset; an error when it does not parse as a
/// filter (tracing-subscriber would otherwise drop it without a word).
pub fn log_filter() -> Result<Option<tracing_subscriber::EnvFilter>> {
    get(RUST_LOG, |text| {
        tracing_subscriber::EnvFilter::builder()
            .parse(text)
            .map_err(|e| {
                format!("not a log filter ({e}); e.g. RUST_LOG=info or RUST_LOG=sv_build=debug")
            })
    })
}

/// Reads every variable above once: the first bad one is the error.
pub fn check() -> Result<()> {
    progress_secs()?;
    path(TORCH)?;
    log_filter()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seconds_are_finite_and_bounded() {
        let parse = seconds(MAX_PROGRESS_SECS);
        assert_eq!(parse("2.5"), Ok(2.5));
        assert_eq!(parse(" 0 "), Ok(0.0));
        assert_eq!(parse("86400"), Ok(86_400.0));
        // 1e20 panicked in Duration::from_secs_f64; each of these was accepted or
        // silently ignored.
        for bad in ["1e20", "86401", "inf", "NaN", "-1", "-0.5", "1.8e308"] {
            let err = parse(bad).unwrap_err();
            assert!(err.contains("86400"), "{bad}: {err}");
        }
        assert!(
            parse("soon")
                .unwrap_err()
                .contains("not a number of seconds")
        );
    }

    // The process environment is shared by every test thread: one test sets and
    // reads a variable no other test uses.
    #[test]
    fn a_bad_variable_is_an_error_naming_it() {
        let name = "SV_CLI_ENV_TEST_COUNT";
        // SAFETY: no other test reads or writes this variable.
        unsafe { std::env::set_var(name, "100000") };
        let err = get(name, crate::args::count_up_to(crate::args::MAX_WORKERS))
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "environment variable SV_CLI_ENV_TEST_COUNT=\"100000\": must be at most 1024"
        );
        unsafe { std::env::set_var(name, "") };
        assert!(
            path(name)
                .unwrap_err()
                .to_string()
                .contains("set but empty")
        );
        unsafe { std::env::set_var(name, "12") };
        assert_eq!(
            get(name, crate::args::count_up_to(crate::args::MAX_WORKERS)).unwrap(),
            Some(12)
        );
        unsafe { std::env::remove_var(name) };
        assert_eq!(get(name, seconds(1.0)).unwrap(), None);
        assert_eq!(path(name).unwrap(), None);
    }
}
