//! `supervision train` as one rank of a data-parallel job: its flags, who started this
//! process (torchrun, srun, `--nproc-per-node`, or nobody), its device, and joining
//! the job over NCCL. The rules live in sv-dist; this is the CLI's glue.

use std::ffi::OsString;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use sv_cli::args::count_up_to;
use sv_cli::cli_args::{MAX_BUCKET_MIB, MAX_TIMEOUT_SECS, MAX_WORLD_SIZE};
use sv_train::Device;
use sv_train::sv_dist::launch::visible_cuda_devices;
use sv_train::sv_dist::nccl::{DistConfig, NcclCollective};
use sv_train::sv_dist::supervise::{Supervisor, local_rank_env};
use sv_train::sv_dist::watchdog::{Failure, WatchdogConfig};
use sv_train::sv_dist::{Collective, Launcher, RankEnv};
use sv_train::trainer::ParallelConfig;

/// Flags of data-parallel training (a block of `supervision train`'s flags).
#[derive(clap::Args, Debug)]
#[command(next_help_heading = "Data parallel (one process per GPU, NCCL)")]
pub struct DistArgs {
    /// Start N ranks on this machine, one per GPU (cuda:0 .. cuda:N-1), and stop them
    /// all when one fails, as `torchrun --nproc-per-node N` does. Leave it out under
    /// torchrun or srun: they start the ranks, and each reads its place from their
    /// environment (RANK/WORLD_SIZE/LOCAL_RANK/MASTER_ADDR/MASTER_PORT, or
    /// SLURM_PROCID/SLURM_NTASKS/SLURM_LOCALID and the node list).
    #[arg(long, value_name = "N", value_parser = sv_cli::args::at_least_one::<usize>)]
    pub nproc_per_node: Option<usize>,
    /// `auto`: NCCL when the job has more than one rank, nothing for one; `nccl`: NCCL
    /// even for a single rank (to check or measure that path).
    #[arg(long, default_value = "auto", value_name = "auto|nccl")]
    pub collective: String,
    /// Seconds every rank may take to reach the rendezvous before the missing ones are
    /// named.
    #[arg(long, default_value_t = 600, value_name = "SECS", value_parser = count_up_to(MAX_TIMEOUT_SECS))]
    pub rendezvous_timeout: u64,
    /// Seconds without a heartbeat (sent every second) after which a rank counts as
    /// dead: the others stop with an error naming it.
    #[arg(long, default_value_t = 30, value_name = "SECS", value_parser = count_up_to(MAX_TIMEOUT_SECS))]
    pub heartbeat_timeout: u64,
    /// Seconds a rank may stay behind the others' step (alive but stuck, e.g. on
    /// storage) before they stop with an error naming it.
    #[arg(long, default_value_t = 300, value_name = "SECS", value_parser = count_up_to(MAX_TIMEOUT_SECS))]
    pub stall_timeout: u64,
    /// Largest gradient all-reduce bucket, in MiB.
    #[arg(long, default_value_t = 64, value_name = "MIB", value_parser = count_up_to(MAX_BUCKET_MIB))]
    pub bucket_mib: usize,
    /// Also compare every rank's weights with rank 0's (checksums) every N steps; 0:
    /// only before each checkpoint.
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub check_replicas_every: u64,
}

impl DistArgs {
    /// The trainer's side of these flags.
    pub fn parallel(&self) -> ParallelConfig {
        ParallelConfig {
            bucket_bytes: self.bucket_mib << 20,
            check_every: self.check_replicas_every,
        }
    }

    fn config(&self) -> DistConfig {
        let watchdog = WatchdogConfig {
            dead_after: Duration::from_secs(self.heartbeat_timeout),
            stall_after: Duration::from_secs(self.stall_timeout),
            ..WatchdogConfig::default()
        };
        DistConfig {
            rendezvous_timeout: Duration::from_secs(self.rendezvous_timeout),
            watchdog,
            // past our stall limit, so the heartbeats name the rank first
            nccl_timeout: watchdog.stall_after + Duration::from_secs(120),
        }
    }

    fn force_nccl(&self) -> Result<bool> {
        match self.collective.as_str() {
            "auto" => Ok(false),
            "nccl" => Ok(true),
            c => bail!("unknown --collective {c} (auto, nccl)"),
        }
    }
}

/// What this process is in the job.
#[derive(Debug)]
pub enum Role {
    /// A plain single-process run.
    Single,
    /// The `--nproc-per-node` parent: starts and watches the local ranks.
    Parent(usize),
    /// One rank of a job, to join over NCCL.
    Rank(RankEnv),
}

impl Role {
    /// Reads the launcher's environment and the flags.
    pub fn resolve(args: &DistArgs) -> Result<Role> {
        let force = args.force_nccl()?;
        let env = RankEnv::from_env().context("read the launcher's environment")?;
        if let Some(e) = &env {
            check_world_size(e)?;
        }
        Ok(match (env, args.nproc_per_node) {
            // our own child: it inherits the flag
            (Some(e), _) if e.launcher == Launcher::Local => Role::Rank(e),
            (Some(e), Some(n)) => bail!(
                "--nproc-per-node {n} starts ranks itself, but {} already started this \
                 process as rank {} of {}: leave --nproc-per-node out",
                e.launcher.as_str(),
                e.rank,
                e.world_size
            ),
            (Some(e), None) if e.world_size > 1 || force => Role::Rank(e),
            (Some(_), None) => Role::Single,
            (None, Some(n)) if n > 1 => Role::Parent(n),
            (None, _) if force => Role::Rank(RankEnv {
                launcher: Launcher::Local,
                rank: 0,
                world_size: 1,
                local_rank: 0,
                local_world_size: Some(1),
                master_addr: "127.0.0.1".into(),
                // this process hosts the store; 0 lets it pick a free port
                master_port: 0,
                agent_store: false,
                attempt: 0,
            }),
            (None, _) => Role::Single,
        })
    }
}

/// Refuses a job larger than [`MAX_WORLD_SIZE`] ranks, naming the launcher's variable:
/// the global batch and the per-rank tables grow with it, and a value like
/// `WORLD_SIZE=18446744073709551615` is a mistake, not a job.
fn check_world_size(e: &RankEnv) -> Result<()> {
    let var = match e.launcher {
        Launcher::Slurm => "SLURM_NTASKS",
        Launcher::Torchrun | Launcher::Local => "WORLD_SIZE",
    };
    if e.world_size > MAX_WORLD_SIZE {
        bail!(
            "{var}={}: must be at most {MAX_WORLD_SIZE} (ranks of one job)",
            e.world_size
        );
    }
    Ok(())
}

/// The device of rank `env`: `cuda:LOCAL_RANK` (or the one GPU the launcher left
/// visible), made the process's current CUDA device. `--device` must be left at auto
/// (or plain cuda).
pub fn rank_device(env: &RankEnv, device_flag: &str) -> Result<Device> {
    if !matches!(device_flag, "auto" | "cuda") {
        bail!(
            "--device {device_flag}: rank {} of a data-parallel job uses cuda:LOCAL_RANK \
             (NCCL runs on GPUs only); leave --device at auto",
            env.rank
        );
    }
    let index = env.bind_cuda()?;
    // also turns cuDNN's autotuning on, as for any CUDA run
    Ok(sv_train::parse_device(&format!("cuda:{index}"))?)
}

/// Joins the job as rank `env` on `device` over NCCL. If another rank fails and this
/// process's training loop does not return within a grace period (a collective that
/// an abort did not release), the watchdog ends the process with an error naming the
/// failed rank.
pub fn join(env: &RankEnv, device: Device, args: &DistArgs) -> Result<Box<dyn Collective>> {
    let me = env.rank;
    let on_failure = Box::new(move |f: &Failure| {
        let message = format!("rank {me}: {f}");
        std::thread::spawn(move || {
            std::thread::sleep(EXIT_GRACE);
            eprintln!(
                "error: {message} (the training loop did not stop within {} s of it; exiting)",
                EXIT_GRACE.as_secs()
            );
            std::process::exit(1);
        });
    });
    let coll =
        NcclCollective::join(env, device, &args.config(), on_failure).with_context(|| {
            format!(
                "rank {me} of {} joining the job at {} ({})",
                env.world_size,
                env.store_addr(),
                env.launcher.as_str()
            )
        })?;
    Ok(Box::new(coll))
}

/// How long a rank's training loop has to return after the watchdog found another
/// rank's failure (the communicator is already aborted then).
const EXIT_GRACE: Duration = Duration::from_secs(30);

/// `--nproc-per-node N`: runs the store, starts N ranks of this same command with
/// torchrun's variables, and waits; the first rank to fail stops the others and is
/// named. Refused at once without N GPUs (NCCL runs on GPUs only).
pub fn run_local_ranks(n: usize, args: &DistArgs, device_flag: &str) -> Result<i32> {
    if !matches!(device_flag, "auto" | "cuda") {
        bail!(
            "--nproc-per-node {n} runs one rank per GPU (cuda:0 .. cuda:{}); --device \
             {device_flag} cannot be used with it: leave --device at auto",
            n - 1
        );
    }
    let gpus = visible_cuda_devices();
    if gpus < n {
        bail!(
            "--nproc-per-node {n} starts one rank per GPU and averages gradients with NCCL, \
             which runs on GPUs only, but libtorch sees {gpus} CUDA device(s) here; train \
             on one process without --nproc-per-node, or on a machine with {n} GPUs"
        );
    }
    let config = args.config();
    let server = sv_train::sv_dist::nccl::host_store(n, config.rendezvous_timeout)
        .context("start the rendezvous store for the local ranks")?;
    let port = server.port().context("the rendezvous store's port")?;
    let exe = std::env::current_exe().context("find this program to start the ranks")?;
    let argv: Vec<OsString> = std::env::args_os().skip(1).collect();
    let commands = (0..n)
        .map(|rank| {
            let mut c = Command::new(&exe);
            c.args(&argv).envs(local_rank_env(rank, n, port));
            c
        })
        .collect();
    eprintln!(
        "starting {n} ranks on cuda:0 .. cuda:{} (rendezvous at 127.0.0.1:{port})",
        n - 1
    );
    // SIGTERM, SIGINT, SIGUSR1 to this parent: passed on to the ranks, which stop at
    // a step with its checkpoint and exit 75, as this parent then does
    sv_train::stop::install()?;
    let ranks = Supervisor::start(commands)?;
    let stop = || sv_train::stop::StopFlag::process().requested();
    let end = ranks.wait_forwarding(Duration::from_secs(30), &stop)?;
    drop(server);
    Ok(if end.stopped {
        sv_train::stop::STOPPED_EXIT_CODE
    } else {
        0
    })
}
