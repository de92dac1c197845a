//! The crate's error type: each variant names the rank, variable or operation involved.

/// Everything that can go wrong setting up or running a data-parallel job.
#[derive(Debug, thiserror::Error)]
pub enum DistError {
    /// A launcher variable is missing or malformed.
    #[error("environment variable {var}={value:?}: {problem}")]
    Env {
        /// The variable.
        var: &'static str,
        /// Its value (empty when unset).
        value: String,
        /// What is wrong, in words.
        problem: String,
    },
    /// The launcher's variables contradict each other.
    #[error("launcher environment: {0}")]
    Launch(String),
    /// A local rank could not be started.
    #[error("could not start local rank {rank}")]
    Spawn {
        /// The rank.
        rank: usize,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A local rank process ended badly (seen by the parent that started it).
    #[error("rank {rank} {status}; the other ranks were stopped")]
    RankExited {
        /// The rank.
        rank: usize,
        /// How it ended ("exited with status 3", "was killed by signal 9").
        status: String,
    },
    /// Another rank failed, stopped heartbeating, or stalled (seen by this rank).
    #[error("rank {rank} {reason}")]
    PeerFailed {
        /// The failed rank.
        rank: usize,
        /// What happened to it, in words.
        reason: String,
    },
    /// The rendezvous store stopped answering (its host process may be gone).
    #[error("the rendezvous store at {addr} stopped answering ({host}): {detail}")]
    StoreLost {
        /// host:port.
        addr: String,
        /// Who runs it ("run by rank 0", "run by the launcher").
        host: String,
        /// The last error, in words.
        detail: String,
    },
    /// Not every rank joined the rendezvous in time.
    #[error(
        "rank(s) {missing:?} of {world} did not join the rendezvous at {addr} within          {secs:.0} s (are all {world} ranks started, e.g. under srun or torchrun?)"
    )]
    Rendezvous {
        /// Ranks that never arrived.
        missing: Vec<usize>,
        /// World size.
        world: usize,
        /// host:port of the store.
        addr: String,
        /// Seconds waited.
        secs: f64,
    },
    /// A collective did not complete in time.
    #[error("{op} timed out after {secs:.0} s waiting for rank(s) {missing:?}")]
    Timeout {
        /// The operation.
        op: &'static str,
        /// The ranks that never arrived.
        missing: Vec<usize>,
        /// Seconds waited.
        secs: f64,
    },
    /// Ranks called different collectives (or with different shapes) at the same point.
    #[error("rank {rank} called {found} where rank {other} called {expected}")]
    Mismatch {
        /// The rank that disagreed.
        rank: usize,
        /// What it called.
        found: String,
        /// The other rank.
        other: usize,
        /// What that one called.
        expected: String,
    },
    /// The ranks' weights differ after the initial broadcast.
    #[error("the weights of rank(s) {ranks:?} differ from rank 0's after the broadcast")]
    WeightsDiffer {
        /// The ranks whose checksum differs from rank 0's.
        ranks: Vec<usize>,
    },
    /// A checkpoint written with one world size cannot resume with another.
    #[error(
        "the checkpoint was written by {saved} rank(s) and this run has {now}: each rank's \
         position in the epoch depends on the world size, so resuming would skip or repeat \
         images; resume with {saved} rank(s) (or start a new run)"
    )]
    WorldSizeChanged {
        /// World size recorded in the checkpoint.
        saved: usize,
        /// World size of this run.
        now: usize,
    },
    /// A configuration value is out of range.
    #[error("invalid distributed configuration: {0}")]
    Config(String),
    /// The c10 shim failed (store, NCCL).
    #[error("{op}")]
    C10 {
        /// What was being done.
        op: &'static str,
        /// The cause.
        #[source]
        source: sv_c10::C10Error,
    },
    /// A libtorch operation failed.
    #[error("libtorch: {op}")]
    Torch {
        /// What was being done.
        op: &'static str,
        /// The cause.
        #[source]
        source: tch::TchError,
    },
}

/// Shorthand used across the crate.
pub type Result<T, E = DistError> = std::result::Result<T, E>;

pub(crate) trait TorchContext<T> {
    fn ctx(self, op: &'static str) -> Result<T>;
}

impl<T> TorchContext<T> for std::result::Result<T, tch::TchError> {
    fn ctx(self, op: &'static str) -> Result<T> {
        self.map_err(|source| DistError::Torch { op, source })
    }
}

impl<T> TorchContext<T> for std::result::Result<T, sv_c10::C10Error> {
    fn ctx(self, op: &'static str) -> Result<T> {
        self.map_err(|source| DistError::C10 { op, source })
    }
}
