//! TEST DOUBLE. [`ThreadCollective`]: the [`Collective`] trait over threads of one
//! process, for testing the multi-rank training logic on a machine without GPUs. It is
//! not a network collective and the CLI never uses it: every real job goes through
//! NCCL ([`crate::nccl`]).
//!
//! Each rank is a thread holding one handle of a [`thread_group`]. An operation is
//! complete when every rank has called it: the last one to arrive computes the result
//! for all (sums in rank order 0, 1, ..., so every rank receives the same bits), and
//! each rank copies its share back into its tensors. It checks what NCCL cannot: that
//! every rank called the same operation on tensors of the same shapes and kinds
//! ([`DistError::Mismatch`]). A rank that drops its handle without joining (a thread that
//! ended or panicked: a "dead rank"), reports a failure, or does not arrive within the
//! timeout makes the waiting ranks fail with an error naming it.

use std::collections::HashMap;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tch::{Device, Tensor};

use crate::collective::{Collective, ReduceOp};
use crate::error::{DistError, Result, TorchContext};

/// `world` handles of one in-process group; hand handle `r` to rank `r`'s thread.
pub fn thread_group(world: usize, timeout: Duration) -> Vec<ThreadCollective> {
    let shared = Arc::new(Shared {
        world,
        timeout,
        state: Mutex::new(State {
            slots: HashMap::new(),
            gone: vec![false; world],
            failed: vec![None; world],
        }),
        cv: Condvar::new(),
    });
    (0..world)
        .map(|rank| ThreadCollective {
            rank,
            shared: shared.clone(),
            next_op: 0,
        })
        .collect()
}

struct Shared {
    world: usize,
    timeout: Duration,
    state: Mutex<State>,
    cv: Condvar,
}

struct State {
    slots: HashMap<u64, Slot>,
    gone: Vec<bool>,
    failed: Vec<Option<String>>,
}

struct Slot {
    what: Vec<Option<String>>,
    inputs: Vec<Option<Vec<Tensor>>>,
    outputs: Vec<Option<Vec<Tensor>>>,
    arrived: usize,
    taken: usize,
    outcome: Option<Outcome>,
}

/// One rank's handle (see the module header: a test double).
pub struct ThreadCollective {
    rank: usize,
    shared: Arc<Shared>,
    next_op: u64,
}

impl std::fmt::Debug for ThreadCollective {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ThreadCollective")
            .field("rank", &self.rank)
            .field("world", &self.shared.world)
            .finish()
    }
}

#[derive(Clone, Copy)]
enum Op {
    Reduce(ReduceOp),
    Broadcast(usize),
    Barrier,
}

fn describe(op: Op, tensors: &[Tensor]) -> String {
    let shapes: Vec<String> = tensors
        .iter()
        .map(|t| format!("{:?} {:?}", t.kind(), t.size()))
        .collect();
    match op {
        Op::Reduce(r) => format!("all_reduce({r:?}) of [{}]", shapes.join(", ")),
        Op::Broadcast(root) => format!("broadcast(root {root}) of [{}]", shapes.join(", ")),
        Op::Barrier => "barrier".to_string(),
    }
}

fn lock(shared: &Shared) -> MutexGuard<'_, State> {
    // A rank thread that panicked while holding the lock leaves consistent data (every
    // update is complete before unlocking), so the poison is not a reason to fail.
    shared.state.lock().unwrap_or_else(|p| p.into_inner())
}

/// The result of `op` over every rank's inputs (sums in rank order).
fn compute(op: Op, world: usize, inputs: &[Vec<Tensor>]) -> Result<Vec<Tensor>> {
    match op {
        Op::Barrier => Ok(Vec::new()),
        Op::Broadcast(root) => inputs[root]
            .iter()
            .map(Tensor::f_detach_copy)
            .collect::<std::result::Result<_, tch::TchError>>()
            .ctx("broadcast copy"),
        Op::Reduce(r) => (0..inputs[0].len())
            .map(|t| {
                let mut acc = inputs[0][t].f_detach_copy()?;
                for input in &inputs[1..] {
                    let _ = acc.f_add_(&input[t])?;
                }
                if r == ReduceOp::Avg {
                    let _ = acc.f_div_scalar_(world as f64)?;
                }
                Ok(acc)
            })
            .collect::<std::result::Result<_, tch::TchError>>()
            .ctx("reduce"),
    }
}

/// How a completed operation ended, for every rank.
#[derive(Clone)]
enum Outcome {
    Done,
    Mismatch {
        rank: usize,
        found: String,
        expected: String,
    },
    Failed(String),
}

impl ThreadCollective {
    fn run(&mut self, op: Op, tensors: &mut [Tensor]) -> Result<()> {
        let _guard = tch::no_grad_guard();
        let id = self.next_op;
        self.next_op += 1;
        let (world, rank) = (self.shared.world, self.rank);
        let what = describe(op, tensors);
        let inputs = tensors
            .iter()
            .map(|t| t.f_to_device(Device::Cpu).and_then(|d| d.f_detach_copy()))
            .collect::<std::result::Result<Vec<_>, _>>()
            .ctx("copy to the thread group")?;
        let mut st = lock(&self.shared);
        let slot = st.slots.entry(id).or_insert_with(|| Slot {
            what: vec![None; world],
            inputs: (0..world).map(|_| None).collect(),
            outputs: (0..world).map(|_| None).collect(),
            arrived: 0,
            taken: 0,
            outcome: None,
        });
        slot.what[rank] = Some(what);
        slot.inputs[rank] = Some(inputs);
        slot.arrived += 1;
        if slot.arrived == world {
            let first = slot.what[0].clone().unwrap_or_default();
            let mismatch = (1..world).find(|&r| slot.what[r].as_deref() != Some(first.as_str()));
            slot.outcome = Some(match mismatch {
                Some(r) => Outcome::Mismatch {
                    rank: r,
                    found: slot.what[r].clone().unwrap_or_default(),
                    expected: first,
                },
                None => {
                    let ins: Vec<Vec<Tensor>> = slot
                        .inputs
                        .iter_mut()
                        .map(|i| i.take().unwrap_or_default())
                        .collect();
                    let copies = compute(op, world, &ins).and_then(|result| {
                        (0..world)
                            .map(|_| {
                                result
                                    .iter()
                                    .map(Tensor::f_detach_copy)
                                    .collect::<std::result::Result<Vec<_>, _>>()
                                    .ctx("result copy")
                            })
                            .collect::<Result<Vec<_>>>()
                    });
                    match copies {
                        Ok(outs) => {
                            for (r, o) in outs.into_iter().enumerate() {
                                slot.outputs[r] = Some(o);
                            }
                            Outcome::Done
                        }
                        Err(e) => Outcome::Failed(e.to_string()),
                    }
                }
            });
            self.shared.cv.notify_all();
        }
        let deadline = Instant::now() + self.shared.timeout;
        loop {
            let slot = st
                .slots
                .get_mut(&id)
                .expect("the slot lives until every rank took its share");
            if let Some(outcome) = &slot.outcome {
                let outcome = outcome.clone();
                let mine = slot.outputs[rank].take();
                slot.taken += 1;
                if slot.taken == world {
                    st.slots.remove(&id);
                }
                drop(st);
                match outcome {
                    Outcome::Done => {}
                    Outcome::Mismatch {
                        rank,
                        found,
                        expected,
                    } => {
                        return Err(DistError::Mismatch {
                            rank,
                            found,
                            other: 0,
                            expected,
                        });
                    }
                    Outcome::Failed(e) => {
                        return Err(DistError::Config(format!("thread collective: {e}")));
                    }
                }
                for (t, o) in tensors.iter_mut().zip(mine.unwrap_or_default()) {
                    t.f_copy_(&o).ctx("copy from the thread group")?;
                }
                return Ok(());
            }
            let missing: Vec<usize> = (0..world).filter(|&r| slot.what[r].is_none()).collect();
            if let Some(&r) = missing.iter().find(|&&r| st.failed[r].is_some()) {
                let reason = format!("failed: {}", st.failed[r].clone().unwrap_or_default());
                return Err(DistError::PeerFailed { rank: r, reason });
            }
            if let Some(&r) = missing.iter().find(|&&r| st.gone[r]) {
                return Err(DistError::PeerFailed {
                    rank: r,
                    reason: "left the group (its thread ended) before joining this collective"
                        .into(),
                });
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(DistError::Timeout {
                    op: "thread collective",
                    missing,
                    secs: self.shared.timeout.as_secs_f64(),
                });
            }
            st = self
                .shared
                .cv
                .wait_timeout(st, deadline - now)
                .map(|(g, _)| g)
                .unwrap_or_else(|p| p.into_inner().0);
        }
    }
}

impl Collective for ThreadCollective {
    fn rank(&self) -> usize {
        self.rank
    }
    fn world_size(&self) -> usize {
        self.shared.world
    }
    fn device(&self) -> Device {
        Device::Cpu
    }
    fn all_reduce(&mut self, tensors: &mut [Tensor], op: ReduceOp) -> Result<()> {
        self.run(Op::Reduce(op), tensors)
    }
    fn broadcast(&mut self, tensors: &mut [Tensor], root: usize) -> Result<()> {
        if root >= self.shared.world {
            return Err(DistError::Config(format!(
                "broadcast root {root} is not below the world size {}",
                self.shared.world
            )));
        }
        self.run(Op::Broadcast(root), tensors)
    }
    fn barrier(&mut self) -> Result<()> {
        self.run(Op::Barrier, &mut [])
    }
    fn report_failure(&mut self, message: &str) {
        lock(&self.shared).failed[self.rank] = Some(message.to_string());
        self.shared.cv.notify_all();
    }
}

impl Drop for ThreadCollective {
    fn drop(&mut self) {
        lock(&self.shared).gone[self.rank] = true;
        self.shared.cv.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::collective::{broadcast_and_verify, gather_i64, sum_f64};
    use tch::Kind;

    fn on_threads<T: Send + 'static>(
        world: usize,
        f: impl Fn(ThreadCollective) -> T + Send + Sync + 'static,
    ) -> Vec<T> {
        let f = Arc::new(f);
        let handles: Vec<_> = thread_group(world, Duration::from_secs(10))
            .into_iter()
            .map(|c| {
                let f = f.clone();
                std::thread::spawn(move || f(c))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    }

    #[test]
    fn reduce_broadcast_gather() {
        let out = on_threads(3, |mut c| {
            let r = c.rank() as f32;
            let mut t = [
                Tensor::from_slice(&[r, 1.0]),
                Tensor::from_slice(&[10.0f64 * r as f64]),
            ];
            c.all_reduce(&mut t, ReduceOp::Sum).unwrap();
            let sum: Vec<f32> = Vec::try_from(&t[0]).unwrap();
            let mut fresh = [Tensor::from_slice(&[r, 1.0])];
            c.all_reduce(&mut fresh, ReduceOp::Avg).unwrap();
            let avg: Vec<f32> = Vec::try_from(&fresh[0]).unwrap();
            let mut b = [Tensor::from_slice(&[r])];
            c.broadcast(&mut b, 2).unwrap();
            c.barrier().unwrap();
            let mine = c.rank() as i64 * 7;
            let g = gather_i64(&mut c, &[mine]).unwrap();
            let s = sum_f64(&mut c, &[1.0, 0.5]).unwrap();
            (
                sum,
                avg,
                b[0].double_value(&[0]),
                t[1].double_value(&[0]),
                g,
                s,
            )
        });
        for (sum, avg, b, d, g, s) in out {
            assert_eq!(sum, [3.0, 3.0]);
            assert_eq!(avg, [1.0, 1.0]);
            assert_eq!(b, 2.0);
            assert_eq!(d, 30.0);
            assert_eq!(g, [vec![0], vec![7], vec![14]]);
            assert_eq!(s, [3.0, 1.5]);
        }
    }

    #[test]
    fn broadcast_then_checksums_agree() {
        let out = on_threads(2, |mut c| {
            tch::manual_seed(c.rank() as i64);
            let mut p = [Tensor::randn([5, 5], (Kind::Float, Device::Cpu))];
            broadcast_and_verify(&mut c, &mut p).unwrap();
            Vec::<f32>::try_from(&p[0].flatten(0, -1)).unwrap()
        });
        assert_eq!(out[0], out[1]);
    }

    #[test]
    fn different_calls_are_a_mismatch() {
        let out = on_threads(2, |mut c| {
            let mut t = [Tensor::zeros(
                [2 + c.rank() as i64],
                (Kind::Float, Device::Cpu),
            )];
            c.all_reduce(&mut t, ReduceOp::Sum).unwrap_err().to_string()
        });
        for e in out {
            assert!(e.contains("rank 1 called all_reduce(Sum) of [Float [3]] where rank 0 called all_reduce(Sum) of [Float [2]]"), "{e}");
        }
    }

    #[test]
    fn a_dead_rank_is_named() {
        let out = on_threads(3, |mut c| {
            if c.rank() == 1 {
                drop(c); // the rank "dies" without joining
                return String::new();
            }
            c.barrier().unwrap_err().to_string()
        });
        assert!(out[0].contains("rank 1 left the group"), "{}", out[0]);
        assert!(out[2].contains("rank 1 left the group"), "{}", out[2]);
    }

    #[test]
    fn a_failed_rank_is_named_with_its_message() {
        let out = on_threads(2, |mut c| {
            if c.rank() == 0 {
                c.report_failure("data: shard 3 is truncated");
                std::thread::sleep(Duration::from_millis(100));
                return String::new();
            }
            c.barrier().unwrap_err().to_string()
        });
        assert_eq!(out[1], "rank 0 failed: data: shard 3 is truncated");
    }

    #[test]
    fn a_hung_rank_times_out() {
        let mut g = thread_group(2, Duration::from_millis(200));
        let mut c1 = g.pop().unwrap();
        let _c0 = g.pop().unwrap(); // alive, never calls
        let e = c1.barrier().unwrap_err();
        assert!(
            matches!(&e, DistError::Timeout { missing, .. } if missing == &[0]),
            "{e:?}"
        );
    }
}
