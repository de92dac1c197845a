//! Data-parallel training semantics through the Collective trait (the checksum of
//! differing weights is tested in trainer.rs), on the CPU with the
//! thread test double: sv-train's model and the paper's update rule, gradients averaged
//! in buckets of a flat buffer, as the trainer does.

use std::time::Duration;

use sv_dist::DistError;
use sv_dist::collective::{
    Collective, ReduceOp, all_reduce_flat, broadcast_and_verify, checksum, verify_identical,
};
use sv_dist::testing::thread_group;
use sv_train::model::{Model, ModelSpec};
use sv_train::optim::{PaperSgd, SgdConfig};
use tch::{Device, Kind, Tensor};

const CLASSES: i64 = 10;
const BATCH: i64 = 8;
const STEPS: usize = 4;

/// The whole run's data: `STEPS` batches of `BATCH` images and labels.
fn data(side: i64) -> Vec<(Tensor, Tensor)> {
    tch::manual_seed(11);
    (0..STEPS)
        .map(|_| {
            (
                Tensor::randn([BATCH, 3, side, side], (Kind::Float, Device::Cpu)),
                Tensor::randint(CLASSES, [BATCH], (Kind::Int64, Device::Cpu)),
            )
        })
        .collect()
}

fn spec() -> ModelSpec {
    ModelSpec::by_name("alexnet-tiny", CLASSES).unwrap()
}

fn initial() -> Vec<Tensor> {
    tch::manual_seed(3);
    let m = Model::new(&spec(), Device::Cpu).unwrap();
    m.params().iter().map(|p| p.detach().copy()).collect()
}

fn load(model: &Model, values: &[Tensor]) {
    let _g = tch::no_grad_guard();
    for (p, v) in model.params().iter().zip(values) {
        p.shallow_clone().copy_(v);
    }
}

fn snapshot(model: &Model) -> Vec<Tensor> {
    model.params().iter().map(|p| p.detach().copy()).collect()
}

/// One step on `input`: loss mean over this rank's images, gradients averaged over the
/// ranks through a flat buffer in small buckets, the paper's update.
fn step(
    model: &Model,
    opt: &mut PaperSgd,
    coll: &mut dyn Collective,
    input: &Tensor,
    labels: &Tensor,
) -> Result<Tensor, DistError> {
    let logits = model.forward(input, false).unwrap(); // dropout off
    let loss = logits.cross_entropy_for_logits(labels);
    loss.backward();
    // The gradients sit in the model's flat buffer; 256 KiB buckets: several buckets
    // even for the tiny model.
    all_reduce_flat(coll, model.store().grad(), 256 << 10, ReduceOp::Avg)?;
    let averaged = model.store().grad().copy();
    opt.step(model.store(), 0.01).unwrap();
    Ok(averaged)
}

/// Rank `r` of `world`: samples r, r + world, r + 2 world, ... of each batch (the
/// sampler's interleaving), so the ranks' batches together are the single-rank batch.
fn shard(batch: &(Tensor, Tensor), r: i64, world: i64) -> (Tensor, Tensor) {
    let idx = Tensor::arange_start_step(r, BATCH, world, (Kind::Int64, Device::Cpu));
    (batch.0.index_select(0, &idx), batch.1.index_select(0, &idx))
}

fn copies(ts: &[Tensor]) -> Vec<Tensor> {
    ts.iter().map(Tensor::copy).collect()
}

fn batch_copies(bs: &[(Tensor, Tensor)]) -> Vec<(Tensor, Tensor)> {
    bs.iter().map(|(x, y)| (x.copy(), y.copy())).collect()
}

fn max_abs_diff(a: &[Tensor], b: &[Tensor]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs().max().double_value(&[]))
        .fold(0.0, f64::max)
}

#[test]
fn two_ranks_of_half_batches_equal_one_rank_of_whole_batches() {
    let side = spec().input_side;
    let batches = data(side);
    let init = initial();

    // One rank, whole batches.
    let single = Model::new(&spec(), Device::Cpu).unwrap();
    load(&single, &init);
    let mut opt = PaperSgd::new(single.store(), SgdConfig::default()).unwrap();
    let mut solo = sv_dist::Solo::new(Device::Cpu);
    let mut want_grads = Vec::new();
    for b in batches.iter() {
        want_grads.push(step(&single, &mut opt, &mut solo, &b.0, &b.1).unwrap());
    }
    let want = snapshot(&single);

    // Two ranks, half batches; rank 1 starts from other weights, which the broadcast
    // replaces with rank 0's.
    let handles: Vec<_> = thread_group(2, Duration::from_secs(60))
        .into_iter()
        .map(|mut coll| {
            // Tensors are Send, not Sync: each thread gets its own copies.
            let (batches, init) = (batch_copies(&batches), copies(&init));
            std::thread::spawn(move || {
                let r = coll.rank() as i64;
                let model = Model::new(&spec(), Device::Cpu).unwrap();
                if r == 0 {
                    load(&model, &init);
                } else {
                    let _g = tch::no_grad_guard();
                    for p in model.params() {
                        let _ = p.shallow_clone().fill_(0.5);
                    }
                }
                let mut params: Vec<Tensor> =
                    model.params().iter().map(Tensor::shallow_clone).collect();
                broadcast_and_verify(&mut coll, &mut params).unwrap();
                let mut opt = PaperSgd::new(model.store(), SgdConfig::default()).unwrap();
                let mut sums = Vec::new();
                let mut first_grad = None;
                for b in batches.iter() {
                    let (x, y) = shard(b, r, 2);
                    let g = step(&model, &mut opt, &mut coll, &x, &y).unwrap();
                    first_grad.get_or_insert(g);
                    // Bit-identical on every rank after every step.
                    verify_identical(&mut coll, model.params(), "after a step").unwrap();
                    sums.push(checksum(model.params()).unwrap());
                }
                (snapshot(&model), sums, first_grad.unwrap())
            })
        })
        .collect();
    let out: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    assert_eq!(out[0].1, out[1].1, "same checksums step by step");
    assert_eq!(
        max_abs_diff(&out[0].0, &out[1].0),
        0.0,
        "bit-identical ranks"
    );

    // The first step starts from the same weights in both runs, so its averaged
    // gradient differs from the single rank's only by float32 rounding: the mean over 8
    // images becomes the mean of two means over 4, and the CPU's convolution kernels
    // (chosen per batch size and per CPU) sum in other orders. A real fault (a bucket
    // not reduced, a sum instead of a mean, a rank's half missing) is an error of 50% or
    // more; 1e-4 of the largest component leaves room for any kernel's rounding.
    let g_two = &out[0].2;
    let g_one = &want_grads[0];
    let g_diff = (g_two - g_one).abs().max().double_value(&[]);
    let g_scale = g_one.abs().max().double_value(&[]);
    assert!(g_scale > 0.0, "a gradient to compare");
    assert!(
        g_diff <= 1e-4 * g_scale,
        "first step, 2 x {} vs 1 x {BATCH}: max |dg| {g_diff:e} (gradient up to {g_scale:e})",
        BATCH / 2
    );

    // After several steps the rounding is amplified wherever a ReLU or a max-pool
    // choice flips on one side only, by an amount that depends on the CPU: measured
    // 3e-8 on one machine and 9e-5 on another, for weights that moved 0.12. The
    // difference must stay a small fraction of how far the weights moved; a wrong
    // update rule or a missed reduction moves them by a different amount altogether.
    let diff = max_abs_diff(&out[0].0, &want);
    let moved = max_abs_diff(&want, &init);
    assert!(moved > 1e-3, "the weights moved ({moved})");
    assert!(
        diff <= 1e-2 * moved,
        "{STEPS} steps, 2 x {} vs 1 x {BATCH}: max |dw| {diff:e} (weights moved {moved})",
        BATCH / 2
    );
}

#[test]
fn a_rank_that_dies_mid_run_ends_the_others_with_its_name() {
    let side = spec().input_side;
    let batches = data(side);
    let handles: Vec<_> = thread_group(3, Duration::from_secs(60))
        .into_iter()
        .map(|mut coll| {
            let batches = batch_copies(&batches);
            std::thread::spawn(move || -> Result<usize, String> {
                let r = coll.rank();
                let model = Model::new(&spec(), Device::Cpu).unwrap();
                let mut params: Vec<Tensor> =
                    model.params().iter().map(Tensor::shallow_clone).collect();
                broadcast_and_verify(&mut coll, &mut params).map_err(|e| e.to_string())?;
                let mut opt = PaperSgd::new(model.store(), SgdConfig::default()).unwrap();
                for (i, b) in batches.iter().enumerate() {
                    if r == 2 && i == 2 {
                        panic!("rank 2 crashes at step 2");
                    }
                    let (x, y) = shard(b, r as i64, 3);
                    let _averaged =
                        step(&model, &mut opt, &mut coll, &x, &y).map_err(|e| e.to_string())?;
                }
                Ok(r)
            })
        })
        .collect();
    let out: Vec<_> = handles.into_iter().map(|h| h.join()).collect();
    assert!(out[2].is_err(), "rank 2 panicked");
    for r in [0, 1] {
        let e = out[r].as_ref().unwrap().as_ref().unwrap_err();
        assert!(e.contains("rank 2 left the group"), "rank {r}: {e}");
    }
}
