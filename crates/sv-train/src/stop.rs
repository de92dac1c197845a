//! A graceful stop, for jobs that a scheduler preempts or ends at a time limit.
//!
//! Slurm sends SIGTERM (or the signal chosen with `--signal=B:USR1@120`) some time
//! before it kills a job; Kubernetes sends SIGTERM and waits
//! `terminationGracePeriodSeconds`; a user presses Ctrl-C. [`install`] makes SIGTERM,
//! SIGINT and SIGUSR1 set a process-wide flag instead of ending the process; the
//! trainer checks its [`StopFlag`] after every step, finishes that step, writes
//! `last.safetensors`, and returns a [`crate::trainer::TrainOutcome`] whose `stopped`
//! names the signal. The program then exits with [`STOPPED_EXIT_CODE`], and
//! `train --resume` continues exactly where the run stopped.
//!
//! A second SIGINT while a stop is pending ends the process at once (exit status
//! 130, as the shell reports a death by SIGINT): Ctrl-C twice is the way out when one
//! step takes too long. A second SIGTERM or SIGUSR1 changes nothing: schedulers send
//! SIGTERM to every process of a job, sometimes more than once.
//!
//! The handler only stores into atomics (and calls `_exit` for the second SIGINT),
//! which is all that is safe inside a signal handler; everything else happens on the
//! training thread when it next looks at the flag.
//!
//! Data parallelism: each rank sees its own signals (a scheduler signals every
//! process, but not all at the same instant), so the ranks vote: the trainer adds the
//! flags of all ranks in the all-reduce it already does for the step's loss, and every
//! rank stops after the same step (see `crate::trainer`).

use std::sync::Arc;
use std::sync::atomic::{AtomicI32, Ordering};

use crate::error::{Result, TrainError};

/// The exit status of a run stopped by a signal after writing its checkpoint: 75,
/// `EX_TEMPFAIL` of sysexits.h ("temporary failure; the user is invited to retry"):
/// run the same command with `--resume` to continue.
/// (The same value as sv-dist's [`sv_dist::supervise::STOPPED_STATUS`], which the
/// launcher of local ranks reads.)
pub const STOPPED_EXIT_CODE: i32 = sv_dist::supervise::STOPPED_STATUS;

/// The signals that ask for a graceful stop.
pub const STOP_SIGNALS: [i32; 3] = [libc::SIGTERM, libc::SIGINT, libc::SIGUSR1];

/// The first stop signal received by this process (0: none yet).
static RECEIVED: AtomicI32 = AtomicI32::new(0);

extern "C" fn on_signal(signal: libc::c_int) {
    if RECEIVED
        .compare_exchange(0, signal, Ordering::SeqCst, Ordering::SeqCst)
        .is_err()
        && signal == libc::SIGINT
    {
        // SAFETY: _exit is async-signal-safe; it ends the process without running
        // destructors or atexit handlers, which is what "at once" means here.
        unsafe { libc::_exit(128 + libc::SIGINT) };
    }
}

/// Makes SIGTERM, SIGINT and SIGUSR1 request a graceful stop of this process (see the
/// module header) instead of ending it. Call it once, early, before training starts.
pub fn install() -> Result<()> {
    for signal in STOP_SIGNALS {
        // SAFETY: a zeroed sigaction is a valid starting value; the handler is an
        // `extern "C" fn(c_int)` that only touches atomics and calls _exit.
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
            // SA_RESTART: system calls interrupted by the signal resume (a read of a
            // shard or a checkpoint write is not cut short by the stop request).
            action.sa_flags = libc::SA_RESTART;
            libc::sigemptyset(&mut action.sa_mask);
            if libc::sigaction(signal, &action, std::ptr::null_mut()) != 0 {
                return Err(TrainError::Config(format!(
                    "cannot install the handler of {}: {}",
                    signal_name(signal),
                    std::io::Error::last_os_error()
                )));
            }
        }
    }
    Ok(())
}

/// The signal's name (`SIGTERM`), for messages.
pub fn signal_name(signal: i32) -> &'static str {
    match signal {
        libc::SIGTERM => "SIGTERM",
        libc::SIGINT => "SIGINT",
        libc::SIGUSR1 => "SIGUSR1",
        libc::SIGHUP => "SIGHUP",
        _ => "a signal",
    }
}

/// What a trainer looks at after each step to know whether to stop.
///
/// [`StopFlag::process`] (the default) is set by the signals [`install`] handles;
/// [`StopFlag::manual`] is a flag of its own, set with [`StopFlag::request`]
/// (tests, and programs that decide to stop for their own reasons).
#[derive(Clone, Debug, Default)]
pub struct StopFlag {
    own: Option<Arc<AtomicI32>>,
}

impl StopFlag {
    /// The process's flag, set by the handled signals.
    pub fn process() -> StopFlag {
        StopFlag::default()
    }

    /// A flag of its own, set only by [`StopFlag::request`].
    pub fn manual() -> StopFlag {
        StopFlag {
            own: Some(Arc::new(AtomicI32::new(0))),
        }
    }

    fn cell(&self) -> &AtomicI32 {
        self.own.as_deref().unwrap_or(&RECEIVED)
    }

    /// Asks for a stop, as if `signal` had been received (the first request counts).
    pub fn request(&self, signal: i32) {
        let _ = self
            .cell()
            .compare_exchange(0, signal, Ordering::SeqCst, Ordering::SeqCst);
    }

    /// The signal that asked for a stop, if one has.
    pub fn requested(&self) -> Option<i32> {
        match self.cell().load(Ordering::SeqCst) {
            0 => None,
            s => Some(s),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_manual_flag_keeps_its_first_request() {
        let f = StopFlag::manual();
        assert_eq!(f.requested(), None);
        let g = f.clone();
        g.request(libc::SIGUSR1);
        f.request(libc::SIGTERM);
        assert_eq!(f.requested(), Some(libc::SIGUSR1));
        assert_eq!(signal_name(libc::SIGUSR1), "SIGUSR1");
    }

    #[test]
    fn a_handled_signal_sets_the_process_flag() {
        install().unwrap();
        // the only test of this binary that raises a signal: the process flag is its own
        // SAFETY: raise sends a handled signal to this thread.
        assert_eq!(unsafe { libc::raise(libc::SIGUSR1) }, 0);
        assert_eq!(StopFlag::process().requested(), Some(libc::SIGUSR1));
        // a second SIGUSR1 neither ends the process nor replaces the first
        // SAFETY: as above.
        assert_eq!(unsafe { libc::raise(libc::SIGUSR1) }, 0);
        assert_eq!(StopFlag::process().requested(), Some(libc::SIGUSR1));
    }
}
