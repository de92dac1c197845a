//! Who am I in the job: rank, world size, local rank and rendezvous address, read from
//! the launcher's environment the way `torch.distributed`'s `env://` does.
//!
//! - **torchrun** (and anything that sets the same variables, including
//!   `supervision train --nproc-per-node N`, see [`crate::supervise`]): `RANK`,
//!   `WORLD_SIZE`, `LOCAL_RANK`, `LOCAL_WORLD_SIZE`, `MASTER_ADDR`, `MASTER_PORT`;
//!   `TORCHELASTIC_USE_AGENT_STORE=True` means the launcher runs the TCPStore server
//!   and every rank is a client (torchrun does this), otherwise rank 0 hosts it;
//!   `TORCHELASTIC_RESTART_COUNT` keeps the keys of restarted attempts apart.
//! - **Slurm** (`srun supervision train ...`), when `RANK` is not set: `SLURM_PROCID`,
//!   `SLURM_STEP_NUM_TASKS` (else `SLURM_NTASKS`), `SLURM_LOCALID`; the rendezvous
//!   host is `MASTER_ADDR` if set, else the first host of `SLURM_STEP_NODELIST` (else
//!   `SLURM_JOB_NODELIST`, `SLURM_NODELIST`), where task 0 runs; the port is
//!   `MASTER_PORT` if set, else 15000 plus the last four digits of `SLURM_JOB_ID` (the
//!   rule PyTorch Lightning uses, so two jobs sharing a node rarely collide).
//!
//! Each rank uses `cuda:LOCAL_RANK`, or `cuda:0` when the launcher gave each task a
//! single visible GPU (Slurm's `--gpus-per-task`, which sets CUDA_VISIBLE_DEVICES).

use crate::error::{DistError, Result};

/// Which launcher set the environment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Launcher {
    /// torchrun, or any launcher setting torchrun's variables.
    Torchrun,
    /// `supervision train --nproc-per-node N` (torchrun's variables, set by the parent).
    Local,
    /// srun.
    Slurm,
}

impl Launcher {
    /// Lower-case name for messages.
    pub fn as_str(self) -> &'static str {
        match self {
            Launcher::Torchrun => "torchrun",
            Launcher::Local => "--nproc-per-node",
            Launcher::Slurm => "slurm",
        }
    }
}

/// Set by the `--nproc-per-node` parent so its children know who started them.
pub const LOCAL_LAUNCHER_VAR: &str = "SUPERVISION_LAUNCHER";

/// This process's place in a data-parallel job.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RankEnv {
    /// Who launched it.
    pub launcher: Launcher,
    /// Global rank, 0-based.
    pub rank: usize,
    /// Number of ranks.
    pub world_size: usize,
    /// Rank within this node.
    pub local_rank: usize,
    /// Ranks on this node, when the launcher says.
    pub local_world_size: Option<usize>,
    /// Host of the rendezvous TCPStore.
    pub master_addr: String,
    /// Its port.
    pub master_port: u16,
    /// The launcher runs the store server (every rank connects as a client); otherwise
    /// rank 0 runs it.
    pub agent_store: bool,
    /// Restart attempt of the job (0 for the first).
    pub attempt: u64,
}

impl RankEnv {
    /// Reads the process environment; `None` when no launcher variables are set (a
    /// plain single-process run).
    pub fn from_env() -> Result<Option<RankEnv>> {
        RankEnv::from_vars(|k| std::env::var(k).ok())
    }

    /// Reads the variables through `get` (tests pass a map).
    pub fn from_vars(get: impl Fn(&str) -> Option<String>) -> Result<Option<RankEnv>> {
        let get = |k: &str| get(k).filter(|v| !v.trim().is_empty());
        let env = if get("RANK").is_some() || get("WORLD_SIZE").is_some() {
            torchrun(&get)?
        } else if get("SLURM_PROCID").is_some() {
            slurm(&get)?
        } else {
            return Ok(None);
        };
        if env.rank >= env.world_size {
            return Err(DistError::Launch(format!(
                "rank {} is not below the world size {}",
                env.rank, env.world_size
            )));
        }
        if let Some(l) = env.local_world_size
            && env.local_rank >= l
        {
            return Err(DistError::Launch(format!(
                "local rank {} is not below the local world size {l}",
                env.local_rank
            )));
        }
        Ok(Some(env))
    }

    /// The CUDA device index this rank uses, given how many devices it sees.
    pub fn cuda_index(&self, visible: usize) -> Result<usize> {
        match visible {
            0 => Err(DistError::Launch(format!(
                "rank {} (local rank {}) sees no CUDA device; data-parallel training runs \
                 one process per GPU over NCCL",
                self.rank, self.local_rank
            ))),
            n if self.local_rank < n => Ok(self.local_rank),
            // One GPU per task, made visible by the launcher: it is this rank's.
            1 => Ok(0),
            n => Err(DistError::Launch(format!(
                "local rank {} needs cuda:{} but only {n} CUDA devices are visible; start at \
                 most {n} ranks per node",
                self.local_rank, self.local_rank
            ))),
        }
    }

    /// `host:port` of the rendezvous store.
    pub fn store_addr(&self) -> String {
        format!("{}:{}", self.master_addr, self.master_port)
    }
}

fn required(get: &impl Fn(&str) -> Option<String>, var: &'static str) -> Result<String> {
    get(var).ok_or_else(|| DistError::Env {
        var,
        value: String::new(),
        problem: "not set".into(),
    })
}

fn number<T: std::str::FromStr>(var: &'static str, value: &str) -> Result<T> {
    value.trim().parse().map_err(|_| DistError::Env {
        var,
        value: value.into(),
        problem: "not a non-negative integer".into(),
    })
}

fn port(var: &'static str, value: &str) -> Result<u16> {
    match value.trim().parse::<u16>() {
        Ok(p) if p > 0 => Ok(p),
        _ => Err(DistError::Env {
            var,
            value: value.into(),
            problem: "not a TCP port (1-65535)".into(),
        }),
    }
}

fn positive(var: &'static str, value: &str) -> Result<usize> {
    match number::<usize>(var, value)? {
        0 => Err(DistError::Env {
            var,
            value: value.into(),
            problem: "must be at least 1".into(),
        }),
        n => Ok(n),
    }
}

fn torchrun(get: &impl Fn(&str) -> Option<String>) -> Result<RankEnv> {
    let rank: usize = number("RANK", &required(get, "RANK")?)?;
    let world_size = positive("WORLD_SIZE", &required(get, "WORLD_SIZE")?)?;
    let local_rank = match get("LOCAL_RANK") {
        Some(v) => number("LOCAL_RANK", &v)?,
        // A launcher that only sets RANK/WORLD_SIZE for a single process.
        None if world_size == 1 => 0,
        None => {
            return Err(DistError::Env {
                var: "LOCAL_RANK",
                value: String::new(),
                problem: "not set (it picks this rank's GPU)".into(),
            });
        }
    };
    let local_world_size = get("LOCAL_WORLD_SIZE")
        .map(|v| positive("LOCAL_WORLD_SIZE", &v))
        .transpose()?;
    let master_addr = required(get, "MASTER_ADDR")?;
    let master_port = port("MASTER_PORT", &required(get, "MASTER_PORT")?)?;
    let launcher = match get(LOCAL_LAUNCHER_VAR).as_deref() {
        Some("local") => Launcher::Local,
        _ => Launcher::Torchrun,
    };
    Ok(RankEnv {
        launcher,
        rank,
        world_size,
        local_rank,
        local_world_size,
        master_addr,
        master_port,
        agent_store: get("TORCHELASTIC_USE_AGENT_STORE").as_deref() == Some("True"),
        attempt: get("TORCHELASTIC_RESTART_COUNT")
            .map(|v| number("TORCHELASTIC_RESTART_COUNT", &v))
            .transpose()?
            .unwrap_or(0),
    })
}

fn slurm(get: &impl Fn(&str) -> Option<String>) -> Result<RankEnv> {
    let rank: usize = number("SLURM_PROCID", &required(get, "SLURM_PROCID")?)?;
    let world_size = match get("SLURM_STEP_NUM_TASKS") {
        Some(v) => positive("SLURM_STEP_NUM_TASKS", &v)?,
        None => positive("SLURM_NTASKS", &required(get, "SLURM_NTASKS")?)?,
    };
    let local_rank: usize = number("SLURM_LOCALID", &required(get, "SLURM_LOCALID")?)?;
    let master_addr = match get("MASTER_ADDR") {
        Some(a) => a,
        None => {
            let (var, list) = [
                "SLURM_STEP_NODELIST",
                "SLURM_JOB_NODELIST",
                "SLURM_NODELIST",
            ]
            .into_iter()
            .find_map(|v| get(v).map(|l| (v, l)))
            .ok_or_else(|| DistError::Env {
                var: "SLURM_JOB_NODELIST",
                value: String::new(),
                problem: "not set, and no MASTER_ADDR: cannot tell where rank 0 runs".into(),
            })?;
            first_host(&list).map_err(|problem| DistError::Env {
                var,
                value: list.clone(),
                problem,
            })?
        }
    };
    let master_port = match get("MASTER_PORT") {
        Some(p) => port("MASTER_PORT", &p)?,
        None => match get("SLURM_JOB_ID") {
            Some(id) => {
                let digits: String = id.chars().filter(char::is_ascii_digit).collect();
                let tail = &digits[digits.len().saturating_sub(4)..];
                15000 + tail.parse::<u16>().unwrap_or(0)
            }
            None => 29500,
        },
    };
    Ok(RankEnv {
        launcher: Launcher::Slurm,
        rank,
        world_size,
        local_rank,
        local_world_size: get("SLURM_NTASKS_PER_NODE")
            .and_then(|v| v.trim().parse().ok())
            .filter(|&n: &usize| n > 0),
        master_addr,
        master_port,
        agent_store: false,
        attempt: get("SLURM_RESTART_COUNT")
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0),
    })
}

/// The first host of a Slurm host list: `node[01-04,07],gpu5` gives `node01`,
/// `rack[1-2]-n[3-4]` gives `rack1-n3`. Zero padding of a range is kept.
pub fn first_host(list: &str) -> std::result::Result<String, String> {
    let list = list.trim();
    // The first top-level item: commas inside brackets do not separate hosts.
    let mut depth = 0usize;
    let mut end = list.len();
    for (i, c) in list.char_indices() {
        match c {
            '[' => depth += 1,
            ']' if depth == 0 => return Err(format!("unmatched `]` at byte {i}")),
            ']' => depth -= 1,
            ',' if depth == 0 => {
                end = i;
                break;
            }
            _ => {}
        }
    }
    let item = &list[..end];
    if item.is_empty() {
        return Err("empty host list".into());
    }
    let mut host = String::new();
    let mut rest = item;
    while let Some(open) = rest.find('[') {
        host.push_str(&rest[..open]);
        let close = rest[open..]
            .find(']')
            .map(|c| open + c)
            .ok_or_else(|| format!("unclosed `[` in `{item}`"))?;
        let inner = &rest[open + 1..close];
        if inner.contains('[') {
            return Err(format!("nested `[` in `{item}`"));
        }
        host.push_str(&first_of_range(inner).map_err(|e| format!("`[{inner}]` in `{item}`: {e}"))?);
        rest = &rest[close + 1..];
    }
    if rest.contains(']') {
        return Err(format!("unmatched `]` in `{item}`"));
    }
    host.push_str(rest);
    if host.chars().any(char::is_whitespace) {
        return Err(format!("white space in host `{host}`"));
    }
    Ok(host)
}

/// The first value of a bracket expression such as `01-04,07` (`01`).
fn first_of_range(inner: &str) -> std::result::Result<String, String> {
    let first = inner.split(',').next().unwrap_or_default().trim();
    let (lo, hi) = match first.split_once('-') {
        Some((lo, hi)) => (lo, Some(hi)),
        None => (first, None),
    };
    let digits = |s: &str| !s.is_empty() && s.chars().all(|c| c.is_ascii_digit());
    if !digits(lo) || hi.is_some_and(|h| !digits(h)) {
        return Err("expected numbers or ranges like 01-04".into());
    }
    if let Some(h) = hi
        && h.parse::<u128>().ok() < lo.parse::<u128>().ok()
    {
        return Err(format!("range {lo}-{h} runs backwards"));
    }
    Ok(lo.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> Result<Option<RankEnv>> {
        let m: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        RankEnv::from_vars(|k| m.get(k).cloned())
    }

    const TORCHRUN: &[(&str, &str)] = &[
        ("RANK", "5"),
        ("WORLD_SIZE", "16"),
        ("LOCAL_RANK", "1"),
        ("LOCAL_WORLD_SIZE", "8"),
        ("MASTER_ADDR", "10.0.0.7"),
        ("MASTER_PORT", "29400"),
        ("TORCHELASTIC_USE_AGENT_STORE", "True"),
        ("TORCHELASTIC_RESTART_COUNT", "2"),
    ];

    #[test]
    fn nothing_set_is_a_single_process_run() {
        assert_eq!(env(&[]).unwrap(), None);
        assert_eq!(
            env(&[("RANK", " ")]).unwrap(),
            None,
            "blank counts as unset"
        );
    }

    #[test]
    fn torchrun_variables() {
        let e = env(TORCHRUN).unwrap().unwrap();
        assert_eq!(
            e,
            RankEnv {
                launcher: Launcher::Torchrun,
                rank: 5,
                world_size: 16,
                local_rank: 1,
                local_world_size: Some(8),
                master_addr: "10.0.0.7".into(),
                master_port: 29400,
                agent_store: true,
                attempt: 2,
            }
        );
        assert_eq!(e.store_addr(), "10.0.0.7:29400");
        let mut local = TORCHRUN.to_vec();
        local.push((LOCAL_LAUNCHER_VAR, "local"));
        assert_eq!(env(&local).unwrap().unwrap().launcher, Launcher::Local);
        // Without the agent store, rank 0 hosts it.
        let own: Vec<_> = TORCHRUN
            .iter()
            .copied()
            .filter(|(k, _)| !k.starts_with("TORCHELASTIC"))
            .collect();
        let e = env(&own).unwrap().unwrap();
        assert!(!e.agent_store);
        assert_eq!(e.attempt, 0);
    }

    fn with(
        base: &[(&'static str, &'static str)],
        k: &'static str,
        v: &'static str,
    ) -> Vec<(&'static str, &'static str)> {
        let mut out: Vec<_> = base.iter().copied().filter(|(key, _)| *key != k).collect();
        if !v.is_empty() {
            out.push((k, v));
        }
        out
    }

    #[test]
    fn torchrun_errors_name_the_variable() {
        for (k, v, needle) in [
            ("RANK", "x", "RANK=\"x\": not a non-negative integer"),
            ("RANK", "-1", "RANK=\"-1\""),
            ("WORLD_SIZE", "0", "WORLD_SIZE=\"0\": must be at least 1"),
            ("WORLD_SIZE", "", "WORLD_SIZE=\"\": not set"),
            ("LOCAL_RANK", "", "LOCAL_RANK=\"\": not set"),
            ("MASTER_ADDR", "", "MASTER_ADDR=\"\": not set"),
            ("MASTER_PORT", "", "MASTER_PORT=\"\": not set"),
            (
                "MASTER_PORT",
                "70000",
                "MASTER_PORT=\"70000\": not a TCP port",
            ),
            ("MASTER_PORT", "0", "not a TCP port"),
            ("LOCAL_WORLD_SIZE", "0", "LOCAL_WORLD_SIZE"),
            (
                "TORCHELASTIC_RESTART_COUNT",
                "two",
                "TORCHELASTIC_RESTART_COUNT",
            ),
        ] {
            let e = env(&with(TORCHRUN, k, v)).unwrap_err().to_string();
            assert!(e.contains(needle), "{k}={v}: {e}");
        }
        let e = env(&with(TORCHRUN, "RANK", "16")).unwrap_err().to_string();
        assert!(e.contains("rank 16 is not below the world size 16"), "{e}");
        let e = env(&with(TORCHRUN, "LOCAL_RANK", "8"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("local rank 8 is not below the local world size 8"),
            "{e}"
        );
        // One process needs no LOCAL_RANK.
        let one = [
            ("RANK", "0"),
            ("WORLD_SIZE", "1"),
            ("MASTER_ADDR", "127.0.0.1"),
            ("MASTER_PORT", "29500"),
        ];
        assert_eq!(env(&one).unwrap().unwrap().local_rank, 0);
    }

    const SLURM: &[(&str, &str)] = &[
        ("SLURM_PROCID", "9"),
        ("SLURM_NTASKS", "32"),
        ("SLURM_LOCALID", "1"),
        ("SLURM_JOB_NODELIST", "gpu-a[017-020,031],gpu-b7"),
        ("SLURM_JOB_ID", "1234567"),
    ];

    #[test]
    fn slurm_variables() {
        let e = env(SLURM).unwrap().unwrap();
        assert_eq!(e.launcher, Launcher::Slurm);
        assert_eq!((e.rank, e.world_size, e.local_rank), (9, 32, 1));
        assert_eq!(e.master_addr, "gpu-a017");
        assert_eq!(e.master_port, 15000 + 4567);
        assert!(!e.agent_store);
        // The step's own task count and node list win over the job's.
        let step = with(
            &with(SLURM, "SLURM_STEP_NUM_TASKS", "16"),
            "SLURM_STEP_NODELIST",
            "gpu-c[3-4]",
        );
        let e = env(&step).unwrap().unwrap();
        assert_eq!((e.world_size, e.master_addr.as_str()), (16, "gpu-c3"));
        // MASTER_ADDR / MASTER_PORT override the derived ones.
        let set = with(&with(SLURM, "MASTER_ADDR", "head"), "MASTER_PORT", "6000");
        let e = env(&set).unwrap().unwrap();
        assert_eq!((e.master_addr.as_str(), e.master_port), ("head", 6000));
        // torchrun's variables win over Slurm's (torchrun inside an allocation).
        let mut both = SLURM.to_vec();
        both.extend_from_slice(TORCHRUN);
        assert_eq!(env(&both).unwrap().unwrap().launcher, Launcher::Torchrun);
        // Older SLURM_NODELIST, short job ids.
        let old = with(
            &with(
                &with(SLURM, "SLURM_JOB_NODELIST", ""),
                "SLURM_NODELIST",
                "n1",
            ),
            "SLURM_JOB_ID",
            "42",
        );
        let e = env(&old).unwrap().unwrap();
        assert_eq!((e.master_addr.as_str(), e.master_port), ("n1", 15042));
    }

    #[test]
    fn slurm_errors_name_the_variable() {
        let e = env(&with(SLURM, "SLURM_JOB_NODELIST", ""))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("SLURM_JOB_NODELIST") && e.contains("MASTER_ADDR"),
            "{e}"
        );
        let e = env(&with(SLURM, "SLURM_JOB_NODELIST", "n[3-1]"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("SLURM_JOB_NODELIST=\"n[3-1]\"") && e.contains("backwards"),
            "{e}"
        );
        let e = env(&with(SLURM, "SLURM_LOCALID", ""))
            .unwrap_err()
            .to_string();
        assert!(e.contains("SLURM_LOCALID"), "{e}");
        let e = env(&with(SLURM, "SLURM_PROCID", "32"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("rank 32 is not below the world size 32"), "{e}");
    }

    #[test]
    fn first_host_of_node_lists() {
        for (list, first) in [
            ("node01", "node01"),
            ("node[01-04,07]", "node01"),
            ("node[07,01-04]", "node07"),
            ("node[1-4]", "node1"),
            ("node[001-128]", "node001"),
            ("a[2-3],b[1-9]", "a2"),
            ("a,b,c", "a"),
            ("rack[1-2]-n[3-4]", "rack1-n3"),
            ("gpu-[10-11].cluster", "gpu-10.cluster"),
            (" n5 ", "n5"),
            ("[3-4]", "3"),
        ] {
            assert_eq!(first_host(list).as_deref(), Ok(first), "{list}");
        }
        for bad in [
            "",
            ",a",
            "node[01-04",
            "node]01[",
            "node[a-b]",
            "node[4-1]",
            "node[]",
            "node[1-]",
            "n[[1]]",
            "node 1",
        ] {
            assert!(first_host(bad).is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn device_for_the_local_rank() {
        let e = env(TORCHRUN).unwrap().unwrap(); // local rank 1
        assert_eq!(e.cuda_index(8).unwrap(), 1);
        assert_eq!(e.cuda_index(1).unwrap(), 0, "one GPU bound per task");
        assert!(
            e.cuda_index(0)
                .unwrap_err()
                .to_string()
                .contains("sees no CUDA device")
        );
        let three = with(TORCHRUN, "LOCAL_RANK", "3");
        let e = env(&three).unwrap().unwrap();
        assert!(
            e.cuda_index(2)
                .unwrap_err()
                .to_string()
                .contains("only 2 CUDA devices")
        );
    }
}
