//! The product's [`Collective`]: c10d's ProcessGroupNCCL (through sv-c10), joined
//! through the launcher's TCPStore, with the store heartbeats of [`crate::watchdog`].
//!
//! Start-up ([`NcclCollective::join`]):
//! 1. connect to the TCPStore at `MASTER_ADDR:MASTER_PORT` (rank 0 runs the server
//!    unless the launcher does), under the key prefix `supervision/attempt_<n>`;
//! 2. wait until every rank has joined, or name the ranks that did not (timeout);
//! 3. create the NCCL communicator on `cuda:<local rank>` (eagerly, so a failure shows
//!    here), and start the heartbeat thread on a second store connection.
//!
//! Collectives run on NCCL's stream; waiting for one makes the current stream wait, so
//! the host does not block (as in DDP). Once the watchdog has found a failure, every
//! collective returns it as an error naming the rank; the watchdog's callback has
//! already aborted the communicator so a collective blocked on the dead rank returns.

use std::time::{Duration, Instant};

use sv_c10::{ProcessGroupNccl, Store, TcpStoreConfig};
use tch::{Device, Tensor};

use crate::collective::{Collective, ReduceOp};
use crate::error::{DistError, Result, TorchContext};
use crate::launch::RankEnv;
use crate::watchdog::{self, Failure, OnFailure, Watchdog, WatchdogConfig};

/// Time limits of a job.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DistConfig {
    /// How long every rank may take to join (600 s: ranks of a large job start over
    /// minutes).
    pub rendezvous_timeout: Duration,
    /// Heartbeats.
    pub watchdog: WatchdogConfig,
    /// ProcessGroupNCCL's own collective timeout (its watchdog then aborts the
    /// process); longer than the heartbeats' `stall_after`, so ours names the rank first.
    pub nccl_timeout: Duration,
}

impl Default for DistConfig {
    fn default() -> Self {
        let watchdog = WatchdogConfig::default();
        DistConfig {
            rendezvous_timeout: Duration::from_secs(600),
            watchdog,
            nccl_timeout: watchdog.stall_after + Duration::from_secs(120),
        }
    }
}

/// Connects to the job's store, under this attempt's key prefix.
pub fn connect_store(env: &RankEnv, timeout: Duration) -> Result<Store> {
    let host_server = !env.agent_store && env.rank == 0;
    let base = Store::tcp(&TcpStoreConfig {
        host: env.master_addr.clone(),
        port: env.master_port,
        is_server: host_server,
        world_size: Some(env.world_size),
        timeout,
    })
    .ctx(if host_server {
        "start the rendezvous store (rank 0 runs it at MASTER_ADDR:MASTER_PORT)"
    } else {
        "connect to the rendezvous store at MASTER_ADDR:MASTER_PORT"
    })?;
    base.prefixed(&format!("supervision/attempt_{}", env.attempt))
        .ctx("prefix the store")
}

/// Waits until all `world` ranks have called this on `store`, naming the missing ones
/// after `timeout`.
pub fn rendezvous(store: &Store, env: &RankEnv, timeout: Duration) -> Result<()> {
    store
        .set(&format!("joined/{}", env.rank), b"1")
        .ctx("announce this rank to the store")?;
    store.add("joined", 1).ctx("count the ranks")?;
    let start = Instant::now();
    loop {
        let n = store.add("joined", 0).ctx("count the ranks")?;
        if n as usize >= env.world_size {
            return Ok(());
        }
        if start.elapsed() >= timeout {
            let mut missing = Vec::new();
            for r in 0..env.world_size {
                if !store.check(&format!("joined/{r}")).ctx("list the ranks")? {
                    missing.push(r);
                }
            }
            return Err(DistError::Rendezvous {
                missing,
                world: env.world_size,
                addr: env.store_addr(),
                secs: timeout.as_secs_f64(),
            });
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// One rank's NCCL group with its heartbeats.
pub struct NcclCollective {
    pg: Option<ProcessGroupNccl>,
    store: Store,
    watchdog: Option<Watchdog>,
    env: RankEnv,
    store_host: String,
}

impl std::fmt::Debug for NcclCollective {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NcclCollective")
            .field("rank", &self.env.rank)
            .field("world", &self.env.world_size)
            .finish()
    }
}

impl NcclCollective {
    /// Joins the job described by `env` on `device` (`cuda:<local rank>`). `on_failure`
    /// runs on the watchdog thread after the communicator has been aborted, when
    /// another rank failed (the CLI ends the process there if the training thread does
    /// not return in time).
    pub fn join(
        env: &RankEnv,
        device: Device,
        config: &DistConfig,
        on_failure: OnFailure,
    ) -> Result<NcclCollective> {
        if !device.is_cuda() {
            return Err(DistError::Config(format!(
                "data-parallel training runs over NCCL on CUDA devices, not {device:?}"
            )));
        }
        let store = connect_store(env, config.rendezvous_timeout)?;
        rendezvous(&store, env, config.rendezvous_timeout)?;
        let pg = ProcessGroupNccl::new(
            &store,
            env.rank,
            env.world_size,
            device,
            config.nccl_timeout,
        )
        .ctx("create the NCCL communicator")?;
        let abort = pg.abort_handle();
        let hook: OnFailure = Box::new(move |f: &Failure| {
            let _ = abort.abort();
            on_failure(f);
        });
        let wd_store = store.try_clone().ctx("open the heartbeat connection")?;
        let watchdog = Watchdog::start(wd_store, env.rank, env.world_size, config.watchdog, hook)?;
        Ok(NcclCollective {
            pg: Some(pg),
            store,
            watchdog: Some(watchdog),
            env: env.clone(),
            store_host: if env.agent_store {
                "run by the launcher".into()
            } else {
                "run by rank 0".into()
            },
        })
    }

    fn known_failure(&self) -> Option<DistError> {
        self.watchdog
            .as_ref()
            .and_then(Watchdog::failure)
            .map(|f| f.to_error(&self.env.store_addr(), &self.store_host))
    }

    /// The failure the watchdog found, if any, else `e`.
    fn explain(&self, e: DistError) -> DistError {
        self.known_failure().unwrap_or(e)
    }

    fn pg(&self) -> Result<&ProcessGroupNccl> {
        if let Some(e) = self.known_failure() {
            return Err(e);
        }
        self.pg
            .as_ref()
            .ok_or_else(|| DistError::Config("the NCCL group was already shut down".into()))
    }

    /// Orderly end of a job that succeeded on every rank: shuts the communicator down,
    /// stops the heartbeats, and (on the rank that runs the store) waits until every
    /// rank has let go of the store before returning.
    pub fn finish(mut self) -> Result<()> {
        if let Some(pg) = self.pg.take() {
            pg.barrier()
                .ctx("final barrier")
                .map_err(|e| self.explain(e))?;
            pg.shutdown().ctx("shut the NCCL group down")?;
        }
        watchdog::mark_done(&self.store, self.env.rank).ctx("mark this rank done")?;
        if let Some(w) = self.watchdog.take() {
            w.stop();
        }
        self.store.add("released", 1).ctx("release the store")?;
        if !self.env.agent_store && self.env.rank == 0 {
            let deadline = Instant::now() + Duration::from_secs(60);
            while (self
                .store
                .add("released", 0)
                .ctx("wait for the ranks to leave")? as usize)
                < self.env.world_size
                && Instant::now() < deadline
            {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        Ok(())
    }
}

impl Collective for NcclCollective {
    fn rank(&self) -> usize {
        self.env.rank
    }
    fn world_size(&self) -> usize {
        self.env.world_size
    }
    fn device(&self) -> Device {
        self.pg
            .as_ref()
            .map_or(Device::Cpu, ProcessGroupNccl::device)
    }
    fn all_reduce(&mut self, tensors: &mut [Tensor], op: ReduceOp) -> Result<()> {
        let r = self.pg()?.all_reduce(tensors, op).ctx("NCCL all-reduce");
        r.map_err(|e| self.explain(e))
    }
    fn broadcast(&mut self, tensors: &mut [Tensor], root: usize) -> Result<()> {
        let r = self.pg()?.broadcast(tensors, root).ctx("NCCL broadcast");
        r.map_err(|e| self.explain(e))
    }
    fn barrier(&mut self) -> Result<()> {
        let r = self.pg()?.barrier().ctx("NCCL barrier");
        r.map_err(|e| self.explain(e))
    }
    fn progress(&mut self, step: u64) {
        if let Some(w) = &self.watchdog {
            w.progress(step);
        }
    }
    fn report_failure(&mut self, message: &str) {
        if let Err(e) = watchdog::report_failure(&self.store, self.env.rank, message) {
            tracing::warn!("could not tell the other ranks about this failure: {e}");
        }
    }
}
