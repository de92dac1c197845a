//! Heartbeats through the rendezvous store, so that a rank that dies, hangs or fails
//! is named by the others within a bounded time instead of leaving them blocked in a
//! collective.
//!
//! Every rank runs a thread that, each `interval`:
//! - bumps its heartbeat counter `hb/<rank>` and publishes the step its training loop
//!   last started (`step/<rank>`, from [`Watchdog::progress`]);
//! - reads the job's failure note (`failure/*`, written once, by the first rank that
//!   reports a failure or finds one), and stops with it;
//! - watches its ring neighbour, rank + 1: no new heartbeat for `dead_after` means the
//!   process died or froze; a step behind this rank's for `stall_after` means its
//!   training loop is stuck while the others wait for it in a collective (the lagging
//!   rank is the one that has not started the step everybody else has). It writes
//!   what it found as the job's failure note, so every rank learns it within one
//!   interval.
//!
//! Watching one neighbour keeps the store's load at three small requests per rank per
//! interval, whatever the world size. A rank whose store stops answering (the store's
//! host is gone) reports that. Detection takes at most `dead_after` (or `stall_after`)
//! plus two intervals; the owner's `on_failure` callback then aborts the NCCL group
//! and ends the process (see [`crate::nccl`]).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use sv_c10::Store;

use crate::error::DistError;

/// Timing of the heartbeats.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct WatchdogConfig {
    /// Time between heartbeats (1 s).
    pub interval: Duration,
    /// A neighbour silent this long is dead (30 s).
    pub dead_after: Duration,
    /// A neighbour this long behind this rank's step is stuck (300 s: longer than the
    /// longest pause one rank takes alone, a checkpoint write on rank 0).
    pub stall_after: Duration,
}

impl Default for WatchdogConfig {
    fn default() -> Self {
        WatchdogConfig {
            interval: Duration::from_secs(1),
            dead_after: Duration::from_secs(30),
            stall_after: Duration::from_secs(300),
        }
    }
}

/// What the watchdog found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Failure {
    /// A rank failed, died or stalled.
    Rank {
        /// The rank.
        rank: usize,
        /// What happened, in words.
        reason: String,
    },
    /// The store stopped answering.
    Store {
        /// The last error.
        detail: String,
    },
}

impl Failure {
    /// The error a collective returns once this is known.
    pub fn to_error(&self, store_addr: &str, store_host: &str) -> DistError {
        match self {
            Failure::Rank { rank, reason } => DistError::PeerFailed {
                rank: *rank,
                reason: reason.clone(),
            },
            Failure::Store { detail } => DistError::StoreLost {
                addr: store_addr.to_string(),
                host: store_host.to_string(),
                detail: detail.clone(),
            },
        }
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Rank { rank, reason } => write!(f, "rank {rank} {reason}"),
            Failure::Store { detail } => {
                write!(f, "the rendezvous store stopped answering: {detail}")
            }
        }
    }
}

/// Called once, on the watchdog thread, when a failure is found.
pub type OnFailure = Box<dyn Fn(&Failure) + Send + Sync>;

struct Shared {
    stop: AtomicBool,
    step: AtomicU64,
    failure: Mutex<Option<Failure>>,
}

/// The heartbeat thread of one rank.
pub struct Watchdog {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
    rank: usize,
}

impl std::fmt::Debug for Watchdog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watchdog")
            .field("rank", &self.rank)
            .finish()
    }
}

const FAILURE_COUNT: &str = "failure/count";
const FAILURE_NOTE: &str = "failure/note";

fn key(what: &str, rank: usize) -> String {
    format!("{what}/{rank}")
}

/// Writes the job's failure note unless another rank wrote one first.
fn publish(store: &Store, rank: usize, reason: &str) -> sv_c10::Result<()> {
    if store.add(FAILURE_COUNT, 1)? == 1 {
        store.set(FAILURE_NOTE, format!("{rank}\n{reason}").as_bytes())?;
    }
    Ok(())
}

fn read_note(store: &Store) -> sv_c10::Result<Option<Failure>> {
    if store.add(FAILURE_COUNT, 0)? == 0 {
        return Ok(None);
    }
    let note = String::from_utf8_lossy(&store.get(FAILURE_NOTE)?).into_owned();
    let (rank, reason) = note.split_once('\n').unwrap_or(("?", note.as_str()));
    Ok(Some(match rank.parse() {
        Ok(rank) => Failure::Rank {
            rank,
            reason: reason.to_string(),
        },
        Err(_) => Failure::Store {
            detail: note.clone(),
        },
    }))
}

impl Watchdog {
    /// Starts the heartbeats of `rank` in a world of `world` on `store` (a connection of
    /// its own: the thread owns it).
    pub fn start(
        store: Store,
        rank: usize,
        world: usize,
        config: WatchdogConfig,
        on_failure: OnFailure,
    ) -> Result<Watchdog, DistError> {
        let shared = Arc::new(Shared {
            stop: AtomicBool::new(false),
            step: AtomicU64::new(0),
            failure: Mutex::new(None),
        });
        let s = shared.clone();
        let thread = std::thread::Builder::new()
            .name("sv-dist-watchdog".into())
            .spawn(move || watch(store, rank, world, config, &s, on_failure))
            .map_err(|source| DistError::Spawn { rank, source })?;
        Ok(Watchdog {
            shared,
            thread: Some(thread),
            rank,
        })
    }

    /// Marks that this rank's training loop starts `step` (cheap: an atomic store).
    pub fn progress(&self, step: u64) {
        self.shared.step.store(step, Ordering::Relaxed);
    }

    /// The failure found so far, if any.
    pub fn failure(&self) -> Option<Failure> {
        self.shared
            .failure
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Stops the thread (on a clean finish or before exiting with an error).
    pub fn stop(mut self) {
        self.halt();
    }

    fn halt(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        self.halt();
    }
}

/// Writes this rank's failure for the others to read (the first note wins).
pub fn report_failure(store: &Store, rank: usize, message: &str) -> sv_c10::Result<()> {
    publish(store, rank, &format!("failed: {message}"))
}

fn watch(
    store: Store,
    rank: usize,
    world: usize,
    config: WatchdogConfig,
    shared: &Shared,
    on_failure: OnFailure,
) {
    let neighbour = (rank + 1) % world;
    let watch_neighbour = world > 1;
    let (mut seen_hb, mut seen_at) = (i64::MIN, Instant::now());
    let mut behind_since: Option<Instant> = None;
    let mut published_step = 0i64;
    let mut store_errors = 0u32;
    let found = loop {
        if shared.stop.load(Ordering::Relaxed) {
            return;
        }
        let tick = (|| -> sv_c10::Result<Option<Failure>> {
            store.add(&key("hb", rank), 1)?;
            let step = shared.step.load(Ordering::Relaxed) as i64;
            if step != published_step {
                store.add(&key("step", rank), step - published_step)?;
                published_step = step;
            }
            if let Some(f) = read_note(&store)? {
                return Ok(Some(f));
            }
            if !watch_neighbour || store.add(&key("done", neighbour), 0)? > 0 {
                return Ok(None);
            }
            let now = Instant::now();
            let hb = store.add(&key("hb", neighbour), 0)?;
            if hb != seen_hb {
                (seen_hb, seen_at) = (hb, now);
            } else if now - seen_at > config.dead_after {
                let reason = format!(
                    "stopped sending heartbeats {:.0} s ago (the process died or froze)",
                    (now - seen_at).as_secs_f64()
                );
                publish(&store, neighbour, &reason)?;
                return Ok(Some(Failure::Rank {
                    rank: neighbour,
                    reason,
                }));
            }
            let their_step = store.add(&key("step", neighbour), 0)?;
            if their_step < step {
                let since = *behind_since.get_or_insert(now);
                if now - since > config.stall_after {
                    let reason = format!(
                        "has not started step {step} for {:.0} s (it is at step {their_step}; \
                         rank {rank} waits for it)",
                        (now - since).as_secs_f64()
                    );
                    publish(&store, neighbour, &reason)?;
                    return Ok(Some(Failure::Rank {
                        rank: neighbour,
                        reason,
                    }));
                }
            } else {
                behind_since = None;
            }
            Ok(None)
        })();
        match tick {
            Ok(Some(f)) => break f,
            Ok(None) => store_errors = 0,
            Err(e) => {
                // One lost request is not a lost store; three in a row are.
                store_errors += 1;
                if store_errors >= 3 {
                    break Failure::Store {
                        detail: e.to_string(),
                    };
                }
            }
        }
        // Sleep in short slices so `stop` is prompt.
        let until = Instant::now() + config.interval;
        while Instant::now() < until {
            if shared.stop.load(Ordering::Relaxed) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20).min(config.interval));
        }
    };
    tracing::error!(rank, "{found}");
    *shared.failure.lock().unwrap_or_else(|p| p.into_inner()) = Some(found.clone());
    on_failure(&found);
}

/// Marks this rank as finished cleanly, so its neighbour does not take its silence for
/// a death.
pub fn mark_done(store: &Store, rank: usize) -> sv_c10::Result<()> {
    store.add(&key("done", rank), 1).map(|_| ())
}
