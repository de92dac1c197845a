//! `supervision train` as one rank of a data-parallel job: who started this
//! process (torchrun, srun, `--nproc-per-node`, or nobody), its device, and joining
//! the job over NCCL. The rules live in sv-dist, the flags in
//! `sv_cli::cli_args::dist`; this is the CLI's glue.

use std::ffi::OsString;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use sv_cli::cli_args::MAX_WORLD_SIZE;
use sv_cli::cli_args::dist::{Collective as CliCollective, DistArgs};
use sv_train::Device;
use sv_train::sv_dist::launch::visible_cuda_devices;
use sv_train::sv_dist::nccl::{DistConfig, NcclCollective};
use sv_train::sv_dist::supervise::{Supervisor, local_rank_env};
use sv_train::sv_dist::watchdog::{Failure, WatchdogConfig};
use sv_train::sv_dist::{Collective, Launcher, RankEnv};
use sv_train::trainer::ParallelConfig;

/// The trainer's side of the data-parallel flags.
pub fn parallel(args: &DistArgs) -> ParallelConfig {
    ParallelConfig {
        bucket_bytes: args.bucket_mib << 20,
        check_every: args.check_replicas_every,
    }
}

/// The rendezvous and watchdog's side of the data-parallel flags.
fn dist_config(args: &DistArgs) -> DistConfig {
    let watchdog = WatchdogConfig {
        dead_after: Duration::from_secs(args.heartbeat_timeout),
        stall_after: Duration::from_secs(args.stall_timeout),
        ..WatchdogConfig::default()
    };
    DistConfig {
        rendezvous_timeout: Duration::from_secs(args.rendezvous_timeout),
        watchdog,
        // past our stall limit, so the heartbeats name the rank first
        nccl_timeout: watchdog.stall_after + Duration::from_secs(120),
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
        let force = args.collective == CliCollective::Nccl;
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
        NcclCollective::join(env, device, &dist_config(args), on_failure).with_context(|| {
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
    let config = dist_config(args);
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
