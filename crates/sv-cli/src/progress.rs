//! Progress of long-running commands, for a person at a terminal and for a log file.
//!
//! [`bar`] returns a [`Progress`] that draws an indicatif bar when stderr is a terminal.
//! When it is not (a batch scheduler, `nohup`, `2>&1 | tee`), nothing is drawn; instead
//! plain lines go through `tracing` at info level with the target `sv_cli::progress`,
//! which the default log filter shows ([`crate::DEFAULT_LOG_FILTER`]):
//! - every [`Progress::status`] and [`Progress::println`] call (train: one per metrics
//!   window and one per epoch), prefixed with the count, percentage and ETA;
//! - a count line whenever nothing was logged for the log interval (30 s by default,
//!   `SUPERVISION_PROGRESS_SECS` changes it), so a long step never leaves the log silent;
//! - a closing line with the total, the time taken and the rate.

use std::io::IsTerminal;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Seconds between count lines in log mode when nothing else was logged.
pub const DEFAULT_LOG_SECS: f64 = 30.0;

/// The environment variable that sets the count-line interval (seconds, fractions
/// allowed, 0 to 86400; 0 logs every update).
pub const LOG_SECS_ENV: &str = crate::env::PROGRESS_SECS;

/// A bar on a terminal, periodic `tracing` lines elsewhere. Shared by reference between
/// threads (every method takes `&self`).
pub struct Progress {
    what: String,
    unit: String,
    mode: Mode,
}

enum Mode {
    Bar(ProgressBar),
    Log(Mutex<LogState>),
}

struct LogState {
    total: u64,
    pos: u64,
    message: String,
    interval: Duration,
    /// Rate baseline: (time, position) at creation or the last [`Progress::reset_eta`].
    base: (Instant, u64),
    started: Instant,
    last_line: Instant,
}

impl std::fmt::Debug for Progress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Progress")
            .field("what", &self.what)
            .field("terminal", &matches!(self.mode, Mode::Bar(_)))
            .finish()
    }
}

/// Progress of `what` (the command, as a person would name it: "shard build") over
/// `total` units (images, bytes, steps; 0 when not known yet, see
/// [`Progress::set_length`]). A bar when stderr is a terminal, log lines otherwise.
pub fn bar(what: &str, total: u64, unit: &str) -> Progress {
    let terminal = std::io::stderr().is_terminal();
    Progress::new(what, total, unit, terminal, log_interval())
}

/// Progress that shows nothing, for a process that does not speak for the work (the
/// ranks other than 0 of a data-parallel job).
pub fn hidden(what: &str) -> Progress {
    Progress {
        what: what.into(),
        unit: String::new(),
        mode: Mode::Bar(ProgressBar::hidden()),
    }
}

/// `SUPERVISION_PROGRESS_SECS` ([`crate::env::progress_secs`]), or the default. Both
/// binaries refuse a bad value at start ([`crate::start`]); a program that skipped
/// that check gets a warning and the default, never a panic.
fn log_interval() -> Duration {
    let default = Duration::from_secs_f64(DEFAULT_LOG_SECS);
    match crate::env::progress_secs() {
        Ok(secs) => secs.unwrap_or(default),
        Err(e) => {
            tracing::warn!("{e:#}; using {DEFAULT_LOG_SECS} s");
            default
        }
    }
}

impl Progress {
    fn new(what: &str, total: u64, unit: &str, terminal: bool, interval: Duration) -> Progress {
        let mode = if terminal {
            let pb = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
            let template = format!(
                "{{spinner}} [{{elapsed_precise}}] {{bar:40}} {{pos}}/{{len}} {unit} ({{per_sec}}, ETA {{eta}}) {{msg}}"
            );
            pb.set_style(
                ProgressStyle::with_template(&template)
                    .unwrap_or_else(|_| ProgressStyle::default_bar())
                    .progress_chars("=> "),
            );
            Mode::Bar(pb)
        } else {
            let now = Instant::now();
            Mode::Log(Mutex::new(LogState {
                total,
                pos: 0,
                message: String::new(),
                interval,
                base: (now, 0),
                started: now,
                last_line: now,
            }))
        };
        Progress {
            what: what.into(),
            unit: unit.into(),
            mode,
        }
    }

    /// Whether this draws a bar (stderr is a terminal) rather than logging lines.
    pub fn is_bar(&self) -> bool {
        matches!(self.mode, Mode::Bar(_))
    }

    fn log(&self, f: impl FnOnce(&mut LogState) -> Option<String>) {
        if let Mode::Log(state) = &self.mode {
            // A poisoned lock only means another thread panicked while logging.
            let mut s = state.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(line) = f(&mut s) {
                s.last_line = Instant::now();
                drop(s);
                tracing::info!("{line}");
            }
        }
    }

    fn count_line_due(&self, s: &LogState) -> Option<String> {
        (s.last_line.elapsed() >= s.interval).then(|| {
            let mut line = self.counts(s);
            if !s.message.is_empty() {
                line.push_str(": ");
                line.push_str(&s.message);
            }
            line
        })
    }

    /// A count as a person reads it: "1200" (the unit follows), or "23.1 MiB".
    fn amount(&self, n: u64) -> String {
        if self.unit == "bytes" {
            human_bytes(n)
        } else {
            n.to_string()
        }
    }

    /// What follows an amount: " images", or nothing for bytes (the amount says it).
    fn suffix(&self) -> String {
        if self.unit == "bytes" {
            String::new()
        } else {
            format!(" {}", self.unit)
        }
    }

    /// "310 images/s", "690.1 MiB/s".
    fn rate(&self, r: f64) -> String {
        if self.unit == "bytes" {
            format!("{}/s", human_bytes(r as u64))
        } else {
            format!("{} {}/s", rate_text(r), self.unit)
        }
    }

    /// "shard build 1200/5000 images (24%, 310 images/s, ETA 12s)".
    fn counts(&self, s: &LogState) -> String {
        let (what, suffix) = (&self.what, self.suffix());
        let elapsed = s.base.0.elapsed().as_secs_f64();
        let done = s.pos.saturating_sub(s.base.1) as f64;
        let rate = (elapsed > 0.0 && done > 0.0).then(|| done / elapsed);
        let mut out = if s.total > 0 {
            format!(
                "{what} {}/{}{suffix} ({:.0}%",
                self.amount(s.pos),
                self.amount(s.total),
                100.0 * s.pos.min(s.total) as f64 / s.total as f64
            )
        } else {
            format!("{what} {}{suffix} (", self.amount(s.pos))
        };
        match rate {
            Some(r) => {
                if s.total > 0 {
                    out.push_str(", ");
                }
                out.push_str(&self.rate(r));
                if s.total > s.pos {
                    let eta = (s.total - s.pos) as f64 / r;
                    out.push_str(&format!(", ETA {}", duration_text(eta)));
                }
            }
            None if s.total == 0 => out.push_str("starting"),
            None => {}
        }
        out.push(')');
        out
    }

    /// Moves the count to `pos`.
    pub fn set_position(&self, pos: u64) {
        match &self.mode {
            Mode::Bar(pb) => pb.set_position(pos),
            Mode::Log(_) => self.log(|s| {
                s.pos = pos;
                self.count_line_due(s)
            }),
        }
    }

    /// Adds `n` to the count.
    pub fn inc(&self, n: u64) {
        match &self.mode {
            Mode::Bar(pb) => pb.inc(n),
            Mode::Log(_) => self.log(|s| {
                s.pos = s.pos.saturating_add(n);
                self.count_line_due(s)
            }),
        }
    }

    /// Sets the total once it is known.
    pub fn set_length(&self, total: u64) {
        match &self.mode {
            Mode::Bar(pb) => pb.set_length(total),
            Mode::Log(_) => self.log(|s| {
                s.total = total;
                None
            }),
        }
    }

    /// Measures the rate and ETA from here on (after a resumed part was skipped).
    pub fn reset_eta(&self) {
        match &self.mode {
            Mode::Bar(pb) => pb.reset_eta(),
            Mode::Log(_) => self.log(|s| {
                s.base = (Instant::now(), s.pos);
                None
            }),
        }
    }

    /// A short note kept beside the count (the bar's message; appended to count lines
    /// in log mode, which it does not trigger by itself).
    pub fn set_message(&self, msg: impl Into<String>) {
        let msg = msg.into();
        match &self.mode {
            Mode::Bar(pb) => pb.set_message(msg),
            Mode::Log(_) => self.log(|s| {
                s.message = msg;
                None
            }),
        }
    }

    /// Where the work stands now, in words: the bar's message on a terminal; in log mode
    /// one line at once, after the count (train: one per metrics window).
    pub fn status(&self, msg: impl Into<String>) {
        let msg = msg.into();
        match &self.mode {
            Mode::Bar(pb) => pb.set_message(msg),
            Mode::Log(_) => self.log(|s| Some(format!("{}: {msg}", self.counts(s)))),
        }
    }

    /// A line that stays: printed above the bar on a terminal, logged as it is otherwise
    /// (train: one per epoch).
    pub fn println(&self, line: impl AsRef<str>) {
        match &self.mode {
            Mode::Bar(pb) => pb.println(line.as_ref()),
            Mode::Log(_) => self.log(|_| Some(format!("{}: {}", self.what, line.as_ref()))),
        }
    }

    /// The work is over: clears the bar; in log mode, one closing line with the count,
    /// the time and the rate.
    pub fn finish_and_clear(&self) {
        match &self.mode {
            Mode::Bar(pb) => pb.finish_and_clear(),
            Mode::Log(_) => self.log(|s| {
                let secs = s.started.elapsed().as_secs_f64();
                let done = s.pos.saturating_sub(s.base.1) as f64;
                let of = if s.total > 0 && s.total != s.pos {
                    format!(" of {}", self.amount(s.total))
                } else {
                    String::new()
                };
                Some(format!(
                    "{} finished: {}{of}{} in {} ({})",
                    self.what,
                    self.amount(s.pos),
                    self.suffix(),
                    duration_text(secs),
                    self.rate(done / secs.max(1e-9)),
                ))
            }),
        }
    }
}

fn rate_text(r: f64) -> String {
    if r >= 100.0 {
        format!("{r:.0}")
    } else if r >= 1.0 {
        format!("{r:.1}")
    } else {
        format!("{r:.3}")
    }
}

/// Bytes as B, KiB, MiB, GiB or TiB: "512 B", "23.1 MiB".
pub fn human_bytes(b: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let (mut v, mut u) = (b as f64, 0);
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{b} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// 0.4s, 12s, 3m05s, 2h07m.
fn duration_text(secs: f64) -> String {
    if !secs.is_finite() {
        return "?".into();
    }
    if secs < 10.0 {
        return format!("{secs:.1}s");
    }
    let s = secs.round() as u64;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(p: &Progress) -> std::sync::MutexGuard<'_, LogState> {
        match &p.mode {
            Mode::Log(s) => s.lock().unwrap(),
            Mode::Bar(_) => panic!("bar"),
        }
    }

    #[test]
    fn counts_say_position_share_rate_and_eta() {
        let p = Progress::new("shard build", 1000, "images", false, Duration::ZERO);
        assert_eq!(p.counts(&state(&p)), "shard build 0/1000 images (0%)");
        {
            let mut s = state(&p);
            s.pos = 250;
            s.base.0 = Instant::now() - Duration::from_secs(10);
        }
        let line = p.counts(&state(&p));
        assert!(
            line.starts_with("shard build 250/1000 images (25%, 25.0 images/s, ETA 3"),
            "{line}"
        );
        let p = Progress::new("train", 0, "steps", false, Duration::ZERO);
        assert_eq!(p.counts(&state(&p)), "train 0 steps (starting)");
    }

    #[test]
    fn count_lines_wait_for_the_interval() {
        let p = Progress::new(
            "pca compute",
            10,
            "images",
            false,
            Duration::from_secs(3600),
        );
        assert!(p.count_line_due(&state(&p)).is_none());
        let p = Progress::new("pca compute", 10, "images", false, Duration::ZERO);
        p.set_message("3 rejected");
        let line = p.count_line_due(&state(&p)).unwrap();
        assert!(line.ends_with("(0%): 3 rejected"), "{line}");
    }

    #[test]
    fn durations_read_as_a_person_writes_them() {
        assert_eq!(duration_text(0.42), "0.4s");
        assert_eq!(duration_text(42.0), "42s");
        assert_eq!(duration_text(185.0), "3m05s");
        assert_eq!(duration_text(7620.0), "2h07m");
        assert_eq!(duration_text(f64::INFINITY), "?");
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(24_239_296), "23.1 MiB");
        let p = Progress::new("shard verify", 3 << 20, "bytes", false, Duration::ZERO);
        state(&p).pos = 1 << 20;
        let line = p.counts(&state(&p));
        assert!(
            line.starts_with("shard verify 1.0 MiB/3.0 MiB (33%, "),
            "{line}"
        );
        assert!(line.contains("iB/s, ETA "), "{line}");
    }
}
