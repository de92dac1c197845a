//! The TCPStore side of a job: rendezvous, heartbeats, failure notes; one process with
//! several store connections, and two processes on 127.0.0.1.

use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sv_c10::{Store, TcpStoreConfig};
use sv_dist::nccl::{DistConfig, NcclCollective, connect_store, rendezvous};
use sv_dist::watchdog::{self, Failure, Watchdog, WatchdogConfig};
use sv_dist::{DistError, Launcher, RankEnv};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn env(rank: usize, world: usize, port: u16, agent: bool) -> RankEnv {
    RankEnv {
        launcher: Launcher::Torchrun,
        rank,
        world_size: world,
        local_rank: rank,
        local_world_size: Some(world),
        master_addr: "127.0.0.1".into(),
        master_port: port,
        agent_store: agent,
        attempt: 0,
    }
}

/// A launcher-style store server and `world` prefixed client connections.
fn job(world: usize) -> (Store, Vec<Store>, u16) {
    let server = Store::tcp(&TcpStoreConfig {
        host: "127.0.0.1".into(),
        port: 0,
        is_server: true,
        world_size: None,
        timeout: Duration::from_secs(10),
    })
    .unwrap();
    let port = server.port().unwrap();
    let clients = (0..world)
        .map(|r| connect_store(&env(r, world, port, true), Duration::from_secs(10)).unwrap())
        .collect();
    (server, clients, port)
}

const FAST: WatchdogConfig = WatchdogConfig {
    interval: Duration::from_millis(50),
    dead_after: Duration::from_millis(600),
    stall_after: Duration::from_millis(800),
};

type Seen = Arc<Mutex<Vec<(usize, Failure)>>>;

fn start(stores: Vec<Store>, config: WatchdogConfig, seen: &Seen) -> Vec<Watchdog> {
    let world = stores.len();
    stores
        .into_iter()
        .enumerate()
        .map(|(r, s)| {
            let seen = seen.clone();
            Watchdog::start(
                s,
                r,
                world,
                config,
                Box::new(move |f| seen.lock().unwrap().push((r, f.clone()))),
            )
            .unwrap()
        })
        .collect()
}

fn wait_for(seen: &Seen, n: usize, limit: Duration) -> Vec<(usize, Failure)> {
    let t = Instant::now();
    while seen.lock().unwrap().len() < n && t.elapsed() < limit {
        std::thread::sleep(Duration::from_millis(20));
    }
    seen.lock().unwrap().clone()
}

#[test]
fn rendezvous_names_the_ranks_that_never_came() {
    let (_server, stores, port) = job(3);
    let e = rendezvous(
        &stores[1],
        &env(1, 3, port, true),
        Duration::from_millis(300),
    )
    .unwrap_err();
    assert!(
        matches!(&e, DistError::Rendezvous { missing, world: 3, .. } if missing == &[0, 2]),
        "{e:?}"
    );
    assert!(
        e.to_string().contains("rank(s) [0, 2] of 3 did not join"),
        "{e}"
    );
    // When everybody comes, it returns on every rank.
    let hs: Vec<_> = stores
        .into_iter()
        .enumerate()
        .map(|(r, s)| {
            std::thread::spawn(move || {
                rendezvous(&s, &env(r, 3, port, true), Duration::from_secs(10))
            })
        })
        .collect();
    for h in hs {
        h.join().unwrap().unwrap();
    }
}

#[test]
fn healthy_ranks_raise_nothing_and_finish_cleanly() {
    let (_server, stores, _) = job(3);
    let done: Vec<Store> = stores.iter().map(|s| s.try_clone().unwrap()).collect();
    let seen: Seen = Arc::default();
    let dogs = start(stores, FAST, &seen);
    for step in 1..=10 {
        dogs.iter().for_each(|d| d.progress(step));
        std::thread::sleep(Duration::from_millis(60));
    }
    // Ranks finish one after the other: a finished neighbour is not a dead one.
    for (r, d) in dogs.into_iter().enumerate() {
        watchdog::mark_done(&done[r], r).unwrap();
        d.stop();
        std::thread::sleep(Duration::from_millis(700));
    }
    assert!(
        seen.lock().unwrap().is_empty(),
        "{:?}",
        seen.lock().unwrap()
    );
}

#[test]
fn a_silent_rank_is_named_by_every_other_rank() {
    let (_server, stores, _) = job(3);
    let seen: Seen = Arc::default();
    let mut dogs = start(stores, FAST, &seen);
    std::thread::sleep(Duration::from_millis(200));
    let t = Instant::now();
    dogs.remove(2).stop(); // rank 2's heartbeats stop, without a done mark: it "died"
    let found = wait_for(&seen, 2, Duration::from_secs(10));
    let took = t.elapsed();
    assert_eq!(found.len(), 2, "{found:?}");
    for (r, f) in found {
        assert!(r == 0 || r == 1);
        match f {
            Failure::Rank { rank: 2, reason } => {
                assert!(reason.contains("stopped sending heartbeats"), "{reason}")
            }
            other => panic!("{other:?}"),
        }
    }
    // dead_after + a few intervals, with slack for a busy machine.
    assert!(took < Duration::from_secs(5), "{took:?}");
}

#[test]
fn a_stalled_rank_is_named_and_its_step_given() {
    let (_server, stores, _) = job(3);
    let seen: Seen = Arc::default();
    let dogs = start(stores, FAST, &seen);
    for d in &dogs {
        d.progress(4);
    }
    std::thread::sleep(Duration::from_millis(150));
    // Ranks 0 and 2 start step 5; rank 1 never does (its heartbeats go on).
    dogs[0].progress(5);
    dogs[2].progress(5);
    let found = wait_for(&seen, 3, Duration::from_secs(10));
    assert_eq!(found.len(), 3, "every rank learns it: {found:?}");
    for (_, f) in found {
        match f {
            Failure::Rank { rank: 1, reason } => {
                assert!(reason.contains("has not started step 5"), "{reason}");
                assert!(reason.contains("it is at step 4"), "{reason}");
            }
            other => panic!("{other:?}"),
        }
    }
}

#[test]
fn a_reported_failure_reaches_the_others_with_its_message() {
    let (_server, stores, _) = job(2);
    let reporter = stores[0].try_clone().unwrap();
    let seen: Seen = Arc::default();
    let _dogs = start(stores, FAST, &seen);
    watchdog::report_failure(&reporter, 0, "data: shard 3 is truncated").unwrap();
    let found = wait_for(&seen, 2, Duration::from_secs(5));
    assert!(found.iter().any(|(r, _)| *r == 1), "{found:?}");
    for (_, f) in found {
        assert_eq!(
            f.to_string(),
            "rank 0 failed: data: shard 3 is truncated",
            "the first note wins"
        );
    }
}

#[test]
fn a_lost_store_is_reported() {
    let (server, stores, _) = job(2);
    let seen: Seen = Arc::default();
    let _dogs = start(stores, FAST, &seen);
    std::thread::sleep(Duration::from_millis(150));
    drop(server); // the store's host went away
    let found = wait_for(&seen, 2, Duration::from_secs(30));
    assert_eq!(found.len(), 2, "{found:?}");
    assert!(
        found
            .iter()
            .all(|(_, f)| matches!(f, Failure::Store { .. })),
        "{found:?}"
    );
}

#[test]
fn nccl_on_a_machine_without_gpus_is_a_clean_error() {
    if tch::Cuda::is_available() {
        return;
    }
    let port = free_port();
    let e = NcclCollective::join(
        &env(0, 1, port, false),
        tch::Device::Cuda(0),
        &DistConfig::default(),
        Box::new(|_| {}),
    )
    .unwrap_err();
    let msg = format!(
        "{e}: {}",
        std::error::Error::source(&e)
            .map(|s| s.to_string())
            .unwrap_or_default()
    );
    assert!(msg.contains("create the NCCL communicator"), "{msg}");
    assert!(
        msg.contains("no GPUs found") || msg.contains("no NCCL support"),
        "{msg}"
    );
    let e = NcclCollective::join(
        &env(0, 1, port, false),
        tch::Device::Cpu,
        &DistConfig::default(),
        Box::new(|_| {}),
    )
    .unwrap_err();
    assert!(e.to_string().contains("NCCL on CUDA devices"), "{e}");
}

const CHILD: &str = "SV_DIST_TEST_CHILD_PORT";

/// Rank 1 of `a_killed_process_is_named_by_the_other` (does nothing on its own).
#[test]
fn store_child_rank() {
    let Ok(port) = std::env::var(CHILD) else {
        return;
    };
    let e = env(1, 2, port.parse().unwrap(), false);
    let store = connect_store(&e, Duration::from_secs(20)).unwrap();
    rendezvous(&store, &e, Duration::from_secs(20)).unwrap();
    let _dog = Watchdog::start(store.try_clone().unwrap(), 1, 2, FAST, Box::new(|_| {})).unwrap();
    std::thread::sleep(Duration::from_secs(60)); // killed long before
}

#[test]
fn a_killed_process_is_named_by_the_other() {
    let port = free_port();
    let e = env(0, 2, port, false); // rank 0 runs the store, as without a launcher store
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "store::store_child_rank", "--test-threads", "1"])
        .env(CHILD, port.to_string())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let store = connect_store(&e, Duration::from_secs(20)).unwrap();
    rendezvous(&store, &e, Duration::from_secs(20)).unwrap();
    let seen: Seen = Arc::default();
    let s2 = seen.clone();
    let dog = Watchdog::start(
        store.try_clone().unwrap(),
        0,
        2,
        FAST,
        Box::new(move |f| s2.lock().unwrap().push((0, f.clone()))),
    )
    .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let t = Instant::now();
    child.kill().unwrap(); // SIGKILL: no goodbye
    child.wait().unwrap();
    let found = wait_for(&seen, 1, Duration::from_secs(10));
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    assert!(
        matches!(&found[..], [(0, Failure::Rank { rank: 1, .. })]),
        "{found:?}"
    );
    assert_eq!(dog.failure(), Some(found[0].1.clone()));
}
