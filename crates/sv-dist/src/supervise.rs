//! `supervision train --nproc-per-node N`: the parent starts N local ranks (the same
//! program, with torchrun's variables set for each) and supervises them the way
//! torchrun's agent does: when one rank exits with a failure, the others are stopped
//! (SIGTERM, then SIGKILL after a grace period) and the error names the rank. Each
//! child also gets a parent-death signal, so killing the parent ends the job.
//!
//! A graceful stop ([`Supervisor::wait_forwarding`]): a stop signal the parent receives
//! is passed on to every rank once; the ranks agree on a step, write the checkpoint and
//! exit with [`STOPPED_STATUS`], which is not a failure.

use std::process::{Child, Command, ExitStatus};
use std::time::{Duration, Instant};

use crate::error::{DistError, Result};
use crate::launch::LOCAL_LAUNCHER_VAR;

/// torchrun's variables for local rank `rank` of `nproc` on this machine, with the
/// rendezvous store at `127.0.0.1:port` run by the parent.
pub fn local_rank_env(rank: usize, nproc: usize, port: u16) -> Vec<(String, String)> {
    [
        ("RANK", rank.to_string()),
        ("LOCAL_RANK", rank.to_string()),
        ("WORLD_SIZE", nproc.to_string()),
        ("LOCAL_WORLD_SIZE", nproc.to_string()),
        ("MASTER_ADDR", "127.0.0.1".to_string()),
        ("MASTER_PORT", port.to_string()),
        ("TORCHELASTIC_USE_AGENT_STORE", "True".to_string()),
        (LOCAL_LAUNCHER_VAR, "local".to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

/// How a process ended, in words.
pub fn describe(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(c), _) => format!("exited with status {c}"),
        (None, Some(s)) => format!("was killed by signal {s} ({})", signal_name(s)),
        _ => "ended in an unknown way".to_string(),
    }
}

fn signal_name(s: i32) -> &'static str {
    match s {
        libc::SIGKILL => "SIGKILL",
        libc::SIGTERM => "SIGTERM",
        libc::SIGINT => "SIGINT",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGABRT => "SIGABRT",
        libc::SIGBUS => "SIGBUS",
        libc::SIGHUP => "SIGHUP",
        libc::SIGPIPE => "SIGPIPE",
        _ => "signal",
    }
}

/// The exit status of a training process that stopped at a checkpoint because it was
/// asked to (a signal; sv-train's `stop`): `EX_TEMPFAIL` of sysexits.h, "retry later".
pub const STOPPED_STATUS: i32 = 75;

/// How a job of local ranks ended without a failure.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct JobEnd {
    /// Some rank exited with [`STOPPED_STATUS`] (the others with it or success): the
    /// job stopped at a checkpoint and continues with `--resume`.
    pub stopped: bool,
}

/// Running local ranks.
#[derive(Debug)]
pub struct Supervisor {
    children: Vec<Option<Child>>,
}

impl Supervisor {
    /// Starts `commands[r]` as rank `r`. If one cannot be started, the ones already
    /// running are stopped.
    pub fn start(commands: Vec<Command>) -> Result<Supervisor> {
        let mut sup = Supervisor {
            children: Vec::with_capacity(commands.len()),
        };
        for (rank, mut cmd) in commands.into_iter().enumerate() {
            use std::os::unix::process::CommandExt;
            // SAFETY: prctl is async-signal-safe; the closure allocates nothing.
            unsafe {
                cmd.pre_exec(|| {
                    // Die with the parent (its death would otherwise orphan the rank).
                    if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
            match cmd.spawn() {
                Ok(c) => sup.children.push(Some(c)),
                Err(source) => {
                    sup.stop_all(Duration::from_secs(5));
                    return Err(DistError::Spawn { rank, source });
                }
            }
        }
        Ok(sup)
    }

    /// Process ids of the ranks still running (by rank; None once reaped).
    pub fn pids(&self) -> Vec<Option<u32>> {
        self.children
            .iter()
            .map(|c| c.as_ref().map(Child::id))
            .collect()
    }

    /// Waits for every rank. All succeed (or stop at a checkpoint, [`STOPPED_STATUS`]):
    /// Ok. The first to fail ends the others (SIGTERM, SIGKILL after `grace`) and is
    /// named in the error.
    pub fn wait(self, grace: Duration) -> Result<JobEnd> {
        self.wait_forwarding(grace, &|| None)
    }

    /// [`Supervisor::wait`], passing on a stop: once `stop` names a signal (the
    /// parent's own stop request), it is sent to every running rank, once. SIGINT goes
    /// on as SIGTERM: a Ctrl-C on the terminal reaches the ranks too (one process
    /// group), and a second SIGINT would end a rank at once instead of at a step.
    pub fn wait_forwarding(
        mut self,
        grace: Duration,
        stop: &dyn Fn() -> Option<i32>,
    ) -> Result<JobEnd> {
        let mut end = JobEnd { stopped: false };
        let mut forwarded = false;
        loop {
            if !forwarded && let Some(signal) = stop() {
                forwarded = true;
                let signal = if signal == libc::SIGINT {
                    libc::SIGTERM
                } else {
                    signal
                };
                for c in self.children.iter().flatten() {
                    // SAFETY: plain kill(2) on a child not yet reaped (its pid is ours).
                    unsafe { libc::kill(c.id() as libc::pid_t, signal) };
                }
            }
            let mut running = 0;
            for rank in 0..self.children.len() {
                let Some(child) = self.children[rank].as_mut() else {
                    continue;
                };
                match child.try_wait() {
                    Ok(Some(status)) => {
                        self.children[rank] = None;
                        if status.code() == Some(STOPPED_STATUS) {
                            end.stopped = true;
                        } else if !status.success() {
                            self.stop_all(grace);
                            return Err(DistError::RankExited {
                                rank,
                                status: describe(status),
                            });
                        }
                    }
                    Ok(None) => running += 1,
                    Err(e) => {
                        self.stop_all(grace);
                        return Err(DistError::RankExited {
                            rank,
                            status: format!("could not be waited for ({e})"),
                        });
                    }
                }
            }
            if running == 0 {
                return Ok(end);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGTERM to every running rank, then SIGKILL to those still there after `grace`;
    /// reaps them all.
    fn stop_all(&mut self, grace: Duration) {
        for c in self.children.iter().flatten() {
            // SAFETY: plain kill(2) on a child we have not reaped (so its pid is ours).
            unsafe { libc::kill(c.id() as libc::pid_t, libc::SIGTERM) };
        }
        let deadline = Instant::now() + grace;
        loop {
            let mut left = 0;
            for slot in &mut self.children {
                if let Some(c) = slot {
                    if matches!(c.try_wait(), Ok(Some(_))) {
                        *slot = None;
                    } else {
                        left += 1;
                    }
                }
            }
            if left == 0 {
                return;
            }
            if Instant::now() >= deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        for c in self.children.iter_mut().flatten() {
            let _ = c.kill();
            let _ = c.wait();
        }
        self.children.iter_mut().for_each(|s| *s = None);
    }
}

impl Drop for Supervisor {
    fn drop(&mut self) {
        if self.children.iter().any(Option::is_some) {
            self.stop_all(Duration::from_secs(5));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(script: &str) -> Command {
        let mut c = Command::new("sh");
        c.args(["-c", script]);
        c
    }

    #[test]
    fn all_succeed() {
        let sup = Supervisor::start(vec![sh("exit 0"), sh("sleep 0.2")]).unwrap();
        sup.wait(Duration::from_secs(1)).unwrap();
    }

    #[test]
    fn one_failure_stops_the_others_and_names_the_rank() {
        let t = Instant::now();
        let sup = Supervisor::start(vec![
            sh("sleep 60"),
            sh("sleep 0.3; exit 3"),
            sh("sleep 60"),
        ])
        .unwrap();
        let pids = sup.pids();
        let e = sup.wait(Duration::from_secs(5)).unwrap_err();
        assert!(t.elapsed() < Duration::from_secs(20), "{:?}", t.elapsed());
        assert!(
            matches!(&e, DistError::RankExited { rank: 1, status } if status == "exited with status 3"),
            "{e:?}"
        );
        assert_eq!(
            e.to_string(),
            "rank 1 exited with status 3; the other ranks were stopped"
        );
        for pid in pids.into_iter().flatten() {
            // SAFETY: signal 0 only checks whether the pid exists.
            let alive = unsafe { libc::kill(pid as libc::pid_t, 0) } == 0;
            assert!(!alive, "pid {pid} was stopped and reaped");
        }
    }

    #[test]
    fn a_rank_that_ignores_sigterm_is_killed_after_the_grace() {
        let t = Instant::now();
        let sup = Supervisor::start(vec![
            sh("trap '' TERM; while true; do sleep 0.1; done"),
            sh("kill -9 $$"),
        ])
        .unwrap();
        let e = sup.wait(Duration::from_millis(500)).unwrap_err();
        assert!(t.elapsed() < Duration::from_secs(20), "{:?}", t.elapsed());
        assert!(
            e.to_string()
                .contains("rank 1 was killed by signal 9 (SIGKILL)"),
            "{e}"
        );
    }

    #[test]
    fn a_stop_is_passed_on_once_and_a_stopped_rank_is_no_failure() {
        // each rank stops (status 75) on its first SIGUSR1; a second would fail it
        let rank = "n=0; trap 'n=$((n+1)); [ $n -gt 1 ] && exit 9; s=1' USR1; s=0; \
                    while [ $s = 0 ]; do sleep 0.05; done; exit 75";
        let sup = Supervisor::start(vec![sh(rank), sh(rank), sh("exit 0")]).unwrap();
        let asked = Instant::now();
        let stop = || (asked.elapsed() > Duration::from_millis(300)).then_some(libc::SIGUSR1);
        let end = sup.wait_forwarding(Duration::from_secs(5), &stop).unwrap();
        assert_eq!(end, JobEnd { stopped: true });
        // without a stop, a job whose ranks all succeed did not stop
        let sup = Supervisor::start(vec![sh("exit 0")]).unwrap();
        assert_eq!(
            sup.wait(Duration::from_secs(1)).unwrap(),
            JobEnd { stopped: false }
        );
    }

    #[test]
    fn a_rank_that_cannot_start_is_named() {
        let e = Supervisor::start(vec![sh("sleep 60"), Command::new("/nonexistent/program")])
            .unwrap_err();
        assert!(matches!(e, DistError::Spawn { rank: 1, .. }), "{e:?}");
    }

    #[test]
    fn local_env_is_torchruns() {
        let env = local_rank_env(1, 4, 4321);
        let m: std::collections::HashMap<_, _> = env.into_iter().collect();
        let e = crate::launch::RankEnv::from_vars(|k| m.get(k).cloned())
            .unwrap()
            .unwrap();
        assert_eq!(e.launcher, crate::launch::Launcher::Local);
        assert_eq!((e.rank, e.world_size, e.local_rank), (1, 4, 1));
        assert_eq!(e.store_addr(), "127.0.0.1:4321");
        assert!(e.agent_store);
    }
}
