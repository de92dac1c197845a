//! Data-parallel training through sv-train's real `Trainer` on the CPU: each rank is a
//! thread holding one handle of the thread TEST DOUBLE of the Collective trait (sums in
//! rank order, so every rank gets the same bits), reading its own slice of every batch
//! through sv-pipeline's sampler. Tiny model, 72 px images, a few steps.
//!
//! torch's generator is process-global while here the ranks share one process (in a
//! real job each rank is a process): the tests run one at a time, the ranks build
//! their trainers one at a time, and dropout is off (its masks would race).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use sv_core::{ClassInfo, Split};
use sv_dist::Result as DistResult;
use sv_dist::collective::{Collective, ReduceOp, verify_identical};
use sv_dist::testing::{ThreadCollective, thread_group};
use sv_shard::{Codec, Dataset, DatasetWriter, WriterConfig};
use sv_train::data::PipelineSource;
use sv_train::eval::EvalMode;
use sv_train::input::Normalization;
use sv_train::metrics::{MetricsRecord, TENSORBOARD_DIR, read_metrics};
use sv_train::prefetch::{HostMemory, StagedBatch};
use sv_train::schedule::ScheduleConfig;
use sv_train::stop::StopFlag;
use sv_train::sv_pipeline::{self, Lighting, LightingConvention, LoaderConfig};
use sv_train::trainer::{
    Event, LAST_CHECKPOINT, METRICS_FILE, ParallelConfig, Stopped, TrainConfig, TrainData,
    TrainOutcome, Trainer,
};
use sv_train::{Device, TrainError};
use tch::Tensor;

const SIDE: u32 = 72;
const CLASSES: usize = 4;

/// One test at a time (see the module header).
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

fn classes() -> Vec<ClassInfo> {
    (0..CLASSES)
        .map(|i| ClassInfo {
            wnid: format!("n{i:08}"),
            name: format!("class {i}"),
        })
        .collect()
}

/// `n` images; image i is of class i % 4: channel c % 3 bright in quadrant c, on noise.
fn dataset(dir: &Path, split: Split, n: usize) -> Arc<Dataset> {
    let mut w = DatasetWriter::create(
        dir,
        WriterConfig {
            split,
            side: SIDE,
            codec: Codec::Raw,
            jpeg_quality: 90,
            jpeg_subsampling: Default::default(),
            classes: classes(),
            max_shard_bytes: 1 << 20,
        },
    )
    .unwrap();
    let side = SIDE as usize;
    let mut state = 0x2545_F491_4F6C_DD1Du64 ^ n as u64;
    for i in 0..n {
        let c = i % CLASSES;
        let px: Vec<u8> = (0..side * side * 3)
            .map(|p| {
                state = state.wrapping_mul(6364136223846793005).wrapping_add(1);
                let (y, x, ch) = (p / (side * 3), (p / 3) % side, p % 3);
                let lit = (y < side / 2) == (c < 2) && (x < side / 2) == c.is_multiple_of(2);
                if lit && ch == c % 3 {
                    220
                } else {
                    (state >> 58) as u8 * 4
                }
            })
            .collect();
        w.push(c as u32, &px).unwrap();
    }
    w.finish().unwrap();
    Arc::new(Dataset::open(dir).unwrap())
}

/// `batch` images per rank; dropout off; a constant rate.
fn config(batch: usize, max_steps: u64) -> TrainConfig {
    TrainConfig {
        model: "alexnet-tiny".into(),
        batch_size: batch,
        epochs: 2,
        max_steps: Some(max_steps),
        lr: 0.02,
        schedule: ScheduleConfig::Constant,
        seed: 7,
        checkpoint_every: 3,
        log_every: 2,
        final_ten_crop: false,
        dropout: Some(0.0),
        ..TrainConfig::default()
    }
}

/// Rank `rank`'s slice of every batch of `batch` images (sv-pipeline's sampler), with
/// flips and PCA lighting.
fn source(train: &Arc<Dataset>, batch: usize, rank: usize, world: usize) -> PipelineSource {
    let lighting = Lighting {
        eigval: [30.0 / 255.0, 5.0 / 255.0, 1.0 / 255.0],
        eigvec: [[0.58, -0.7, 0.4], [0.58, 0.0, -0.8], [0.58, 0.7, 0.4]],
        convention: LightingConvention::Paper,
        std: 0.1,
    };
    let cfg = LoaderConfig {
        batch_size: batch,
        seed: 7,
        workers: 1,
        rank,
        world_size: world,
        augment: sv_pipeline::Augment::Train {
            crop: 63,
            flip: true,
            lighting: Some(lighting),
        },
        ..LoaderConfig::default()
    };
    PipelineSource::new(train.clone(), cfg).unwrap()
}

/// What goes wrong on one rank, on purpose.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Fault {
    None,
    /// The data source fails at (epoch, batch): the rank's run returns an error.
    DataError(u64, u64),
    /// The rank's thread panics when epoch `e` starts: it dies without a word.
    Killed(u64),
    /// The data source stalls for `secs` seconds before (epoch, batch): the rank hangs.
    Hangs(u64, u64, u64),
}

/// A data source with a fault injected.
struct Faulty {
    inner: PipelineSource,
    fault: Fault,
}

impl TrainData for Faulty {
    fn batches_per_epoch(&self) -> u64 {
        self.inner.batches_per_epoch()
    }

    fn epoch(
        &mut self,
        epoch: u64,
        start: u64,
        memory: HostMemory,
    ) -> sv_train::Result<Box<dyn Iterator<Item = sv_train::Result<StagedBatch>> + Send>> {
        if self.fault == Fault::Killed(epoch) {
            panic!("rank killed at the start of epoch {epoch} (injected)");
        }
        let fault = self.fault;
        let it = self.inner.epoch(epoch, start, memory)?;
        Ok(Box::new(it.map(move |b| match (b, fault) {
            (Ok(b), Fault::Hangs(e, i, secs)) if b.epoch == e && b.index == i => {
                std::thread::sleep(Duration::from_secs(secs));
                Ok(b)
            }
            (Ok(b), Fault::DataError(e, i)) if b.epoch == e && b.index == i => {
                Err(TrainError::Batch {
                    epoch: e,
                    index: i,
                    what: "shard train-00003.svs is unreadable (injected)".into(),
                })
            }
            (b, _) => b,
        })))
    }
}

/// One job: `world` ranks (or one plain process when `job` is false).
struct Job {
    world: usize,
    job: bool,
    config: TrainConfig,
    train: Arc<Dataset>,
    val: Option<Arc<Dataset>>,
    /// Output folder of each rank (rank 0's is the job's).
    out: Vec<PathBuf>,
    /// Resume every rank from rank 0's last checkpoint.
    resume: bool,
    faults: Vec<Fault>,
    check_every: u64,
    /// Wraps each rank's collective (tests that tamper with it).
    wrap: fn(ThreadCollective) -> Box<dyn Collective>,
    /// How long a collective waits for every rank before naming the missing ones.
    timeout: Duration,
    /// Each rank's stop request (as SIGTERM would make it) once this step is done.
    stop_after: Vec<Option<u64>>,
}

/// What a rank ends with: its master weights, and the outcome.
struct RankEnd {
    weights: Vec<f32>,
    outcome: Result<TrainOutcome, String>,
}

fn host(t: &Tensor) -> Vec<f32> {
    Vec::<f32>::try_from(t.detach().to_device(Device::Cpu)).unwrap()
}

fn plain(c: ThreadCollective) -> Box<dyn Collective> {
    Box::new(c)
}

impl Job {
    fn new(world: usize, config: TrainConfig, train: &Arc<Dataset>, root: &Path) -> Job {
        Job {
            world,
            job: true,
            config,
            train: train.clone(),
            val: None,
            out: (0..world).map(|r| root.join(format!("rank{r}"))).collect(),
            resume: false,
            faults: vec![Fault::None; world],
            check_every: 1,
            wrap: plain,
            timeout: Duration::from_secs(60),
            stop_after: vec![None; world],
        }
    }

    /// Builds each rank's trainer (one at a time), joins them and runs; a panicking
    /// rank ends with an `Err` naming the panic.
    fn run(&self) -> Vec<Result<RankEnd, String>> {
        let build = Arc::new(Mutex::new(()));
        let group: Vec<Option<ThreadCollective>> = if self.job {
            thread_group(self.world, self.timeout)
                .into_iter()
                .map(Some)
                .collect()
        } else {
            vec![None]
        };
        let handles: Vec<_> = group
            .into_iter()
            .enumerate()
            .map(|(rank, coll)| {
                let (build, config, train) =
                    (build.clone(), self.config.clone(), self.train.clone());
                let (val, out, rank0) = (
                    self.val.clone(),
                    self.out[rank].clone(),
                    self.out[0].clone(),
                );
                let (resume, fault, world) = (self.resume, self.faults[rank], self.world);
                let (check_every, wrap) = (self.check_every, self.wrap);
                let stop_after = self.stop_after[rank];
                std::thread::spawn(move || -> Result<RankEnd, String> {
                    let mut t = {
                        let _one_at_a_time = build.lock().unwrap_or_else(|e| e.into_inner());
                        if resume {
                            Trainer::resume(&rank0.join(LAST_CHECKPOINT), config, Device::Cpu, &out)
                        } else {
                            let norm = Normalization::default();
                            Trainer::new(config, classes(), norm, Device::Cpu, &out)
                        }
                        .map_err(|e| e.to_string())?
                    };
                    let stop = StopFlag::manual();
                    t.stop_on(stop.clone());
                    let batch = t.config().batch_size;
                    let mut data = Faulty {
                        inner: source(&train, batch, rank, world),
                        fault,
                    };
                    if let Some(c) = coll {
                        let parallel = ParallelConfig {
                            bucket_bytes: 64 << 10, // several buckets even for the tiny model
                            check_every,
                        };
                        t.distribute(wrap(c), parallel).map_err(|e| e.to_string())?;
                    }
                    let mut on_event = |e: Event<'_>| {
                        if let Event::Step { step, .. } = e
                            && Some(step) == stop_after
                        {
                            stop.request(libc::SIGTERM);
                        }
                    };
                    let outcome = t
                        .run(&mut data, val.as_deref(), &mut on_event)
                        .map_err(|e| e.to_string());
                    if outcome.is_ok() {
                        t.finish_job().map_err(|e| e.to_string())?;
                    }
                    Ok(RankEnd {
                        weights: host(t.model().store().master()),
                        outcome,
                    })
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|_| Err("the rank panicked".into())))
            .collect()
    }
}

fn ok(end: &Result<RankEnd, String>) -> &RankEnd {
    let end = end.as_ref().unwrap();
    if let Err(e) = &end.outcome {
        panic!("the run failed: {e}");
    }
    end
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

fn files(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|d| {
            d.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

struct Data {
    _dir: tempfile::TempDir,
    root: PathBuf,
    train: Arc<Dataset>,
    val: Arc<Dataset>,
}

/// 48 training images (6 global batches of 8), 19 validation images (so the ranks'
/// slices differ in size).
fn data() -> Data {
    let dir = tempfile::tempdir().unwrap();
    let train = dataset(&dir.path().join("train"), Split::Train, 48);
    let val = dataset(&dir.path().join("val"), Split::Val, 19);
    Data {
        root: dir.path().to_path_buf(),
        _dir: dir,
        train,
        val,
    }
}

#[test]
fn two_ranks_of_half_batches_train_like_one_rank_of_whole_batches() {
    let _serial = serial();
    let d = data();
    // One process, global batch 8, 5 steps.
    let single = Job {
        job: false,
        ..Job::new(1, config(8, 5), &d.train, &d.root.join("single"))
    }
    .run();
    let want = ok(&single[0]);
    // Two ranks of 4: the same images in every step (the sampler interleaves the
    // ranks), the same augmentation (keyed by the record). Every step is followed by
    // a replica check (check_every 1): a rank that drifted by one bit fails the run.
    let two = Job::new(2, config(4, 5), &d.train, &d.root.join("two")).run();
    let (r0, r1) = (ok(&two[0]), ok(&two[1]));
    assert_eq!(r0.weights, r1.weights, "bit-identical ranks");
    // The same arithmetic up to float32 rounding: each rank's mean over 4 images,
    // averaged, against one mean over 8 (other summation orders, other convolution
    // batch sizes). Over several steps the CPU's kernels decide how far rounding is
    // amplified (a ReLU or max-pool choice flipping on one side only): one machine
    // measured 3e-8, another 9e-5 for weights that moved about 0.1 (semantics.rs
    // checks the first step's gradient tightly). So the difference must stay a small
    // fraction of how far the weights moved; a missed reduction or a sum instead of a
    // mean changes the movement itself.
    let moved = max_abs_diff(&want.weights, &host_init(&d));
    let diff = max_abs_diff(&r0.weights, &want.weights);
    assert!(moved > 1e-3, "the weights moved ({moved})");
    assert!(
        diff <= 1e-2 * moved,
        "2 x 4 vs 1 x 8 after 5 steps: max |dw| {diff:e} (moved {moved})"
    );
    // The job's loss is the whole batch's: the two runs log the same losses.
    let (a, b) = (want.outcome.as_ref().unwrap(), r0.outcome.as_ref().unwrap());
    assert_eq!(a.steps, b.steps);
    // Rank 0 alone writes (checkpoint, metrics and TensorBoard events): rank 1's
    // folder stays empty.
    assert_eq!(
        files(&d.root.join("two/rank0")),
        [LAST_CHECKPOINT, METRICS_FILE, TENSORBOARD_DIR]
    );
    assert_eq!(
        files(&d.root.join("two/rank0").join(TENSORBOARD_DIR)).len(),
        1,
        "one event file"
    );
    assert!(files(&d.root.join("two/rank1")).is_empty());
    let losses = |dir: &Path| -> Vec<(f64, f64)> {
        read_metrics(&dir.join(METRICS_FILE))
            .unwrap()
            .into_iter()
            .filter_map(|r| match r {
                MetricsRecord::Train { loss, top1_err, .. } => Some((loss, top1_err)),
                _ => None,
            })
            .collect()
    };
    let (l1, l2) = (
        losses(&d.root.join("single/rank0")),
        losses(&d.root.join("two/rank0")),
    );
    assert_eq!(l1.len(), l2.len());
    // Windows of log_every = 2 steps of 8 images (the last has one step): the job's
    // loss and error are over all of them (rank 0's alone would be another loss, and
    // half the misses). Rounding may flip a near-tie in a later step, so one miss per
    // window is allowed.
    for ((x, e1), (y, e2)) in l1.iter().zip(&l2) {
        assert!((x - y).abs() <= 1e-3 * x.abs().max(1.0), "{l1:?} vs {l2:?}");
        assert!(
            (e1 - e2).abs() <= 1.0 / 8.0 + 1e-9,
            "the job's training error counts both ranks' misses: {l1:?} vs {l2:?}"
        );
    }
}

/// The weights a fresh trainer of [`config`] starts from.
fn host_init(d: &Data) -> Vec<f32> {
    let t = Trainer::new(
        config(8, 1),
        classes(),
        Normalization::default(),
        Device::Cpu,
        &d.root.join("init"),
    )
    .unwrap();
    host(t.model().store().master())
}

#[test]
fn resume_after_a_failed_rank_is_exact_and_the_failure_is_named() {
    let _serial = serial();
    let d = data();
    let with_val = |mut j: Job| {
        j.val = Some(d.val.clone());
        j
    };
    // Uninterrupted: 2 ranks, 8 steps over 2 epochs (6 steps each), validation split.
    let whole = with_val(Job::new(2, config(4, 8), &d.train, &d.root.join("whole"))).run();
    let want = ok(&whole[0]);
    assert_eq!(want.weights, ok(&whole[1]).weights);
    // Interrupted: rank 1's data fails at step 5 (a checkpoint was written at step 3).
    let mut broken = with_val(Job::new(2, config(4, 8), &d.train, &d.root.join("cut")));
    broken.faults[1] = Fault::DataError(0, 4);
    let out = broken.run();
    let e1 = out[1].as_ref().unwrap().outcome.as_ref().unwrap_err();
    assert!(e1.contains("train-00003.svs is unreadable"), "rank 1: {e1}");
    let e0 = out[0].as_ref().unwrap().outcome.as_ref().unwrap_err();
    assert!(
        e0.starts_with("rank 1 failed: ") && e0.contains("train-00003.svs is unreadable"),
        "rank 0 names rank 1 and its cause: {e0}"
    );
    // The last checkpoint is the one of step 3, whole; rank 1 wrote nothing.
    let ck = sv_train::checkpoint::load(&d.root.join("cut/rank0").join(LAST_CHECKPOINT)).unwrap();
    assert_eq!((ck.meta.step, ck.meta.world_size), (3, 2));
    assert!(files(&d.root.join("cut/rank1")).is_empty());
    // Resumed on both ranks: the same weights, bit for bit, as the uninterrupted run.
    let resumed = with_val(Job {
        resume: true,
        ..Job::new(2, config(4, 8), &d.train, &d.root.join("cut"))
    })
    .run();
    for (r, end) in resumed.iter().enumerate() {
        assert_eq!(ok(end).weights, want.weights, "rank {r} weights");
    }
    // Rank 0's last checkpoints, weights and velocities, bit for bit.
    let tensors = |run: &str| {
        let ck = sv_train::checkpoint::load(&d.root.join(run).join("rank0").join(LAST_CHECKPOINT))
            .unwrap();
        assert_eq!((ck.meta.step, ck.meta.world_size), (8, 2));
        ck.params
            .iter()
            .chain(&ck.velocities)
            .map(|(n, t)| (n.clone(), host(&t.flatten(0, -1))))
            .collect::<Vec<_>>()
    };
    assert_eq!(tensors("cut"), tensors("whole"));
    let (a, b) = (
        want.outcome.as_ref().unwrap(),
        ok(&resumed[0]).outcome.as_ref().unwrap(),
    );
    assert_eq!(a.last_val, b.last_val, "the same validation counts");
    assert_eq!(a.steps, b.steps);

    // Another world size is refused, by a single process and by a job of 3.
    let solo = Job {
        job: false,
        resume: true,
        ..Job::new(1, config(4, 8), &d.train, &d.root.join("cut"))
    }
    .run();
    let e = solo[0].as_ref().unwrap().outcome.as_ref().unwrap_err();
    assert!(e.contains("written by 2 rank(s) and this run has 1"), "{e}");
    let mut three = Job::new(3, config(4, 8), &d.train, &d.root.join("cut"));
    three.resume = true;
    three.out = vec![
        d.root.join("cut/rank0"),
        d.root.join("cut/rank1"),
        d.root.join("cut/rank2"),
    ];
    for r in three.run() {
        let e = r.err().expect("distribute refuses");
        assert!(e.contains("written by 2 rank(s) and this run has 3"), "{e}");
    }
}

/// A graceful stop (issue 26): one rank receives the signal; the job's ranks agree on
/// the step (a step after the vote lands), rank 0 writes that step's checkpoint, and
/// the resumed job ends where the uninterrupted one does, bit for bit. One process
/// stops after the very step during which its signal came.
#[test]
fn a_stop_on_one_rank_stops_every_rank_after_the_same_step() {
    let _serial = serial();
    let d = data();
    let with_val = |mut j: Job| {
        j.val = Some(d.val.clone());
        j
    };
    let whole = with_val(Job::new(2, config(4, 8), &d.train, &d.root.join("whole"))).run();
    let want = ok(&whole[0]);
    let weights = |run: &str| {
        let ck = sv_train::checkpoint::load(&d.root.join(run).join("rank0").join(LAST_CHECKPOINT))
            .unwrap();
        let tensors: Vec<_> = ck
            .params
            .iter()
            .chain(&ck.velocities)
            .map(|(n, t)| (n.clone(), host(&t.flatten(0, -1))))
            .collect();
        (ck.meta.step, tensors)
    };
    // rank 1 is signalled after step 2: its vote goes with step 3, read after step 4
    let mut cut = with_val(Job::new(2, config(4, 8), &d.train, &d.root.join("cut")));
    cut.stop_after[1] = Some(2);
    let ends = cut.run();
    let stopped: Vec<_> = ends
        .iter()
        .map(|e| ok(e).outcome.as_ref().unwrap().stopped)
        .collect();
    assert_eq!(
        stopped,
        [
            Some(Stopped {
                step: 4,
                signal: None
            }),
            Some(Stopped {
                step: 4,
                signal: Some(libc::SIGTERM)
            })
        ]
    );
    assert_eq!(ok(&ends[0]).weights, ok(&ends[1]).weights);
    assert_eq!(weights("cut").0, 4, "rank 0 wrote the step they agreed on");
    assert!(files(&d.root.join("cut/rank1")).is_empty());
    let resumed = with_val(Job {
        resume: true,
        ..Job::new(2, config(4, 8), &d.train, &d.root.join("cut"))
    })
    .run();
    for (r, end) in resumed.iter().enumerate() {
        assert_eq!(ok(end).weights, want.weights, "rank {r} weights");
        assert_eq!(ok(end).outcome.as_ref().unwrap().stopped, None);
    }
    assert_eq!(weights("cut"), weights("whole"));
    assert_eq!(
        ok(&resumed[0]).outcome.as_ref().unwrap().last_val,
        want.outcome.as_ref().unwrap().last_val
    );

    // One process: it stops after the step during which the request came (made after
    // step 4 is reported, it is seen when step 5 is done).
    let single = |name: &str| Job {
        job: false,
        ..with_val(Job::new(1, config(8, 8), &d.train, &d.root.join(name)))
    };
    let whole = single("single-whole").run();
    let mut cut = single("single-cut");
    cut.stop_after[0] = Some(4);
    let end = cut.run();
    let outcome = ok(&end[0]).outcome.as_ref().unwrap();
    assert_eq!(outcome.stopped.map(|s| s.step), Some(5));
    assert_eq!(outcome.final_eval, None);
    assert_eq!(weights("single-cut").0, 5);
    let resumed = Job {
        resume: true,
        ..single("single-cut")
    }
    .run();
    assert_eq!(ok(&resumed[0]).weights, ok(&whole[0]).weights);
    assert_eq!(weights("single-cut"), weights("single-whole"));
}

#[test]
fn a_killed_rank_ends_the_others_with_its_name() {
    let _serial = serial();
    let d = data();
    let mut job = Job::new(3, config(2, 20), &d.train, &d.root.join("killed"));
    job.val = Some(d.val.clone());
    job.faults[2] = Fault::Killed(1); // dies when its second epoch starts
    let out = job.run();
    assert_eq!(
        out[2].as_ref().err().map(String::as_str),
        Some("the rank panicked")
    );
    for r in [0, 1] {
        let e = out[r].as_ref().unwrap().outcome.as_ref().unwrap_err();
        assert!(e.contains("rank 2 left the group"), "rank {r}: {e}");
    }
    // The epoch-end checkpoint of epoch 0 (step 8) is there and whole.
    let ck =
        sv_train::checkpoint::load(&d.root.join("killed/rank0").join(LAST_CHECKPOINT)).unwrap();
    assert_eq!((ck.meta.step, ck.meta.epoch), (8, 1));
}

#[test]
fn a_hung_rank_is_named_within_the_timeout() {
    let _serial = serial();
    let d = data();
    let mut job = Job::new(2, config(4, 5), &d.train, &d.root.join("hung"));
    job.timeout = Duration::from_secs(3);
    job.faults[1] = Fault::Hangs(0, 2, 6); // rank 1 stalls 6 s before its third batch
    let t = std::time::Instant::now();
    let out = job.run();
    let e = out[0].as_ref().unwrap().outcome.as_ref().unwrap_err();
    assert!(
        e.contains("timed out after 3 s waiting for rank(s) [1]"),
        "rank 0 names rank 1: {e}"
    );
    // rank 1 comes back to find rank 0 gone, and says so
    let e1 = out[1].as_ref().unwrap().outcome.as_ref().unwrap_err();
    assert!(e1.contains("rank 0 left the group"), "{e1}");
    assert!(t.elapsed() < Duration::from_secs(30), "{:?}", t.elapsed());
}

/// Adds 1e-3 to rank 1's first gradient bucket at its third all-reduce.
struct Tamper {
    inner: ThreadCollective,
    calls: usize,
}

impl Collective for Tamper {
    fn rank(&self) -> usize {
        self.inner.rank()
    }
    fn world_size(&self) -> usize {
        self.inner.world_size()
    }
    fn device(&self) -> Device {
        self.inner.device()
    }
    fn all_reduce(&mut self, tensors: &mut [Tensor], op: ReduceOp) -> DistResult<()> {
        self.inner.all_reduce(tensors, op)?;
        if op == ReduceOp::Avg {
            self.calls += 1;
            if self.calls == 3 && self.rank() == 1 {
                let _ = tensors[0].f_add_scalar_(1e-3).unwrap();
            }
        }
        Ok(())
    }
    fn broadcast(&mut self, tensors: &mut [Tensor], root: usize) -> DistResult<()> {
        self.inner.broadcast(tensors, root)
    }
    fn barrier(&mut self) -> DistResult<()> {
        self.inner.barrier()
    }
}

#[test]
fn replicas_that_drift_apart_are_caught_at_the_next_check() {
    let _serial = serial();
    let d = data();
    let mut job = Job::new(2, config(4, 5), &d.train, &d.root.join("drift"));
    job.wrap = |c| Box::new(Tamper { inner: c, calls: 0 });
    for r in job.run() {
        let e = r.unwrap().outcome.unwrap_err();
        assert_eq!(
            e,
            "the weights of rank(s) [1] differ from rank 0's after step 3"
        );
    }
}

#[test]
fn validation_split_across_ranks_counts_exactly() {
    let _serial = serial();
    let d = data();
    let norm = Normalization::default;
    let single = Trainer::new(
        config(4, 1),
        classes(),
        norm(),
        Device::Cpu,
        &d.root.join("s"),
    )
    .unwrap()
    .evaluate(&d.val, EvalMode::TenCrop, Some(17))
    .unwrap();
    // 3 ranks score 6 + 6 + 5 of the first 17 images; rank 0's weights broadcast.
    let build = Arc::new(Mutex::new(()));
    let handles: Vec<_> = thread_group(3, Duration::from_secs(60))
        .into_iter()
        .map(|c| {
            let (build, val, out) = (build.clone(), d.val.clone(), d.root.join("v"));
            std::thread::spawn(move || {
                let mut t = {
                    let _g = build.lock().unwrap();
                    Trainer::new(config(4, 1), classes(), norm(), Device::Cpu, &out).unwrap()
                };
                t.distribute(Box::new(c), ParallelConfig::default())
                    .unwrap();
                t.evaluate_job(&val, EvalMode::TenCrop, Some(17)).unwrap()
            })
        })
        .collect();
    for h in handles {
        assert_eq!(h.join().unwrap(), single);
    }
    assert_eq!(single.images, 17);
}

#[test]
fn ranks_with_other_settings_are_refused_by_name() {
    let _serial = serial();
    let d = data();
    let handles: Vec<_> = thread_group(2, Duration::from_secs(60))
        .into_iter()
        .map(|c| {
            let out = d.root.join(format!("cfg{}", c.rank()));
            std::thread::spawn(move || {
                // rank 1 was started with another seed
                let cfg = TrainConfig {
                    seed: 7 + c.rank() as u64,
                    ..config(4, 1)
                };
                let mut t =
                    Trainer::new(cfg, classes(), Normalization::default(), Device::Cpu, &out)
                        .unwrap();
                t.distribute(Box::new(c), ParallelConfig::default())
                    .unwrap_err()
                    .to_string()
            })
        })
        .collect();
    for h in handles {
        let e = h.join().unwrap();
        assert!(
            e.starts_with("rank 1 disagrees with rank 0 on the training settings"),
            "{e}"
        );
    }
}

#[test]
fn different_initial_weights_are_caught_by_the_checksum() {
    let handles: Vec<_> = thread_group(3, Duration::from_secs(60))
        .into_iter()
        .map(|mut coll| {
            std::thread::spawn(move || {
                let r = coll.rank();
                let p = [Tensor::full([4], r as f64, (tch::Kind::Float, Device::Cpu))];
                // No broadcast: ranks 1 and 2 differ from rank 0.
                verify_identical(&mut coll, &p, "after the broadcast").map_err(|e| e.to_string())
            })
        })
        .collect();
    for h in handles {
        let e = h.join().unwrap().unwrap_err();
        assert_eq!(
            e,
            "the weights of rank(s) [1, 2] differ from rank 0's after the broadcast"
        );
    }
}
