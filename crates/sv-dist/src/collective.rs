//! The collective operations data-parallel training needs, behind a small trait so
//! the training logic is the same over NCCL ([`crate::nccl::NcclCollective`], the
//! product) and over threads in one process (`testing::ThreadCollective`, a test
//! double behind the `testing` feature), plus the helpers built on them: gradient all-reduce in a few large
//! buckets, the initial broadcast with its checksum check, and reduced counts.

use tch::{Device, Kind, Tensor};

use crate::error::{DistError, Result, TorchContext};

pub use sv_c10::ReduceOp;

/// Collective operations over the ranks of a job. Every rank must make the same calls
/// in the same order with tensors of the same shapes and kinds.
pub trait Collective: Send {
    /// This rank.
    fn rank(&self) -> usize;
    /// Number of ranks.
    fn world_size(&self) -> usize;
    /// The device the tensors given to this collective must be on.
    fn device(&self) -> Device;
    /// Reduces each tensor across ranks, in place, every rank receiving the result.
    /// Tensors must be contiguous.
    fn all_reduce(&mut self, tensors: &mut [Tensor], op: ReduceOp) -> Result<()>;
    /// Replaces each tensor by rank `root`'s, in place.
    fn broadcast(&mut self, tensors: &mut [Tensor], root: usize) -> Result<()>;
    /// Returns when every rank has called it.
    fn barrier(&mut self) -> Result<()>;
    /// Tells the implementation's watchdog (if any) that this rank starts `step`, so a
    /// rank that stops making progress can be named by the others.
    fn progress(&mut self, step: u64) {
        let _ = step;
    }
    /// Tells the other ranks that this one failed with `message` (before it exits).
    fn report_failure(&mut self, message: &str) {
        let _ = message;
    }
    /// Orderly end of a job that succeeded on every rank: returns when every rank has
    /// called it, after which no collective may be called.
    fn finish(&mut self) -> Result<()> {
        self.barrier()
    }
}

/// Default bucket size for gradient all-reduce: 64 MiB of float32 (AlexNet's 244 MB of
/// gradients go in four calls; NCCL reaches its bus bandwidth well below this size).
pub const DEFAULT_BUCKET_BYTES: usize = 64 << 20;

/// Averages a flat gradient buffer across ranks in place, in buckets of at most
/// `bucket_bytes` (views of `flat`, so nothing is copied). `flat` must be a contiguous
/// 1-D tensor on the collective's device.
pub fn all_reduce_flat(
    coll: &mut dyn Collective,
    flat: &Tensor,
    bucket_bytes: usize,
    op: ReduceOp,
) -> Result<()> {
    if flat.dim() != 1 || !flat.is_contiguous() {
        return Err(DistError::Config(format!(
            "the flat buffer to all-reduce must be a contiguous 1-D tensor, not {:?}",
            flat.size()
        )));
    }
    let mut buckets = bucket_views(flat, bucket_bytes)?;
    coll.all_reduce(&mut buckets, op)
}

/// Contiguous views of a 1-D tensor, each at most `bucket_bytes` long (at least one
/// element each).
pub fn bucket_views(flat: &Tensor, bucket_bytes: usize) -> Result<Vec<Tensor>> {
    let n = flat.size1().ctx("size of the flat buffer")?;
    let elem = flat.kind().elt_size_in_bytes().max(1);
    let per = (bucket_bytes / elem).max(1) as i64;
    let mut out = Vec::with_capacity((n / per + 1) as usize);
    let mut start = 0;
    while start < n {
        let len = per.min(n - start);
        out.push(flat.f_narrow(0, start, len).ctx("bucket view")?);
        start += len;
    }
    Ok(out)
}

/// Sums `values` across ranks (exactly, as float64: counts below 2^53 stay exact).
pub fn sum_f64(coll: &mut dyn Collective, values: &[f64]) -> Result<Vec<f64>> {
    let mut t = vec![
        Tensor::f_from_slice(values)
            .and_then(|t| t.f_to_device(coll.device()))
            .ctx("counts to the device")?,
    ];
    coll.all_reduce(&mut t, ReduceOp::Sum)?;
    Vec::<f64>::try_from(&t[0].f_to_device(Device::Cpu).ctx("counts to the host")?)
        .ctx("read reduced counts")
}

/// Every rank's `value`, by rank (a one-hot sum: no all-gather needed).
pub fn gather_i64(coll: &mut dyn Collective, value: &[i64]) -> Result<Vec<Vec<i64>>> {
    let (world, rank, k) = (coll.world_size(), coll.rank(), value.len());
    let mut slots = vec![0i64; world * k];
    slots[rank * k..(rank + 1) * k].copy_from_slice(value);
    let mut t = vec![
        Tensor::f_from_slice(&slots)
            .and_then(|t| t.f_to_device(coll.device()))
            .ctx("gather buffer to the device")?,
    ];
    coll.all_reduce(&mut t, ReduceOp::Sum)?;
    let all = Vec::<i64>::try_from(&t[0].f_to_device(Device::Cpu).ctx("gathered to the host")?)
        .ctx("read gathered values")?;
    Ok(all.chunks(k.max(1)).map(<[i64]>::to_vec).collect())
}

/// Checks that every rank holds rank 0's `values` (one all-reduce). `what[i]` names
/// `values[i]` in words; the first one that differs is [`DistError::Disagree`], on
/// every rank.
pub fn agree(coll: &mut dyn Collective, what: &[&str], values: &[i64]) -> Result<()> {
    if what.len() != values.len() {
        return Err(DistError::Config(format!(
            "{} names for {} values to agree on",
            what.len(),
            values.len()
        )));
    }
    let all = gather_i64(coll, values)?;
    for (i, name) in what.iter().enumerate() {
        if let Some((rank, v)) = all.iter().enumerate().find(|(_, v)| v[i] != all[0][i]) {
            return Err(DistError::Disagree {
                what: (*name).to_string(),
                rank,
                value: v[i],
                expected: all[0][i],
            });
        }
    }
    Ok(())
}

/// The part of `0..n` that `rank` of `world` takes when work is split in contiguous
/// slices whose sizes differ by at most one (the first `n % world` ranks take one
/// more).
pub fn slice_of(n: usize, rank: usize, world: usize) -> std::ops::Range<usize> {
    let world = world.max(1);
    let (base, extra) = (n / world, n % world);
    let start = rank * base + rank.min(extra);
    start..start + base + usize::from(rank < extra)
}

/// A checksum of the exact bits of `tensors` (float or integer): two 64-bit sums of
/// the bit patterns, one plain and one weighted by position, so a changed value and
/// most swaps show. Integer sums wrap and are associative, so the result does not
/// depend on the reduction order: equal bits give equal checksums on any device.
pub fn checksum(tensors: &[Tensor]) -> Result<[i64; 2]> {
    let _guard = tch::no_grad_guard();
    let mut sums = [0i64; 2];
    for t in tensors {
        let bits = match t.kind() {
            Kind::Float => t.f_view_dtype(Kind::Int),
            Kind::Double => t.f_view_dtype(Kind::Int64),
            Kind::Half | Kind::BFloat16 => t.f_view_dtype(Kind::Int16),
            _ => Ok(t.shallow_clone()),
        }
        .and_then(|b| b.f_flatten(0, -1))
        .and_then(|b| b.f_to_kind(Kind::Int64))
        .ctx("checksum bits")?;
        let n = bits.size1().ctx("checksum length")?;
        let weights = Tensor::f_arange(n, (Kind::Int64, bits.device()))
            .and_then(|i| i.f_remainder(1021))
            .and_then(|i| i.f_add_scalar(1))
            .ctx("checksum weights")?;
        let plain = bits.f_sum(Kind::Int64).ctx("checksum sum")?;
        let weighted = bits
            .f_mul(&weights)
            .and_then(|w| w.f_sum(Kind::Int64))
            .ctx("checksum weighted sum")?;
        sums[0] = sums[0].wrapping_add(plain.int64_value(&[]));
        sums[1] = sums[1].wrapping_add(weighted.int64_value(&[]));
    }
    Ok(sums)
}

/// Makes every rank's `params` rank 0's (a broadcast), then checks that they are:
/// every rank's checksum must equal rank 0's, or [`DistError::WeightsDiffer`] names
/// the ranks that differ (on every rank).
pub fn broadcast_and_verify(coll: &mut dyn Collective, params: &mut [Tensor]) -> Result<()> {
    {
        let _guard = tch::no_grad_guard();
        coll.broadcast(params, 0)?;
    }
    verify_identical(coll, params, "after the broadcast")
}

/// Checks that every rank holds the same bits in `tensors` as rank 0 (one small
/// all-reduce of checksums); `when` says when in the error ("after step 12").
pub fn verify_identical(coll: &mut dyn Collective, tensors: &[Tensor], when: &str) -> Result<()> {
    let mine = checksum(tensors)?;
    let all = gather_i64(coll, &mine)?;
    let ranks: Vec<usize> = all
        .iter()
        .enumerate()
        .filter(|(_, c)| **c != all[0])
        .map(|(r, _)| r)
        .collect();
    if ranks.is_empty() {
        Ok(())
    } else {
        Err(DistError::WeightsDiffer {
            ranks,
            when: when.to_string(),
        })
    }
}

/// `--resume` with a checkpoint from `saved` ranks in a run of `now` ranks.
pub fn check_resume_world(saved: usize, now: usize) -> Result<()> {
    if saved == now {
        Ok(())
    } else {
        Err(DistError::WorldSizeChanged { saved, now })
    }
}

/// The collective of a single process: every operation is the identity (a world of
/// one), so the trainer can run one code path with or without a job.
#[derive(Debug, Clone, Copy)]
pub struct Solo {
    device: Device,
}

impl Solo {
    /// A world of one on `device`.
    pub fn new(device: Device) -> Solo {
        Solo { device }
    }
}

impl Collective for Solo {
    fn rank(&self) -> usize {
        0
    }
    fn world_size(&self) -> usize {
        1
    }
    fn device(&self) -> Device {
        self.device
    }
    fn all_reduce(&mut self, _tensors: &mut [Tensor], _op: ReduceOp) -> Result<()> {
        Ok(())
    }
    fn broadcast(&mut self, _tensors: &mut [Tensor], _root: usize) -> Result<()> {
        Ok(())
    }
    fn barrier(&mut self) -> Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_cover_the_buffer_without_copying() {
        let flat = Tensor::arange(10, (Kind::Float, Device::Cpu));
        let b = bucket_views(&flat, 12).unwrap(); // 3 floats per bucket
        let sizes: Vec<i64> = b.iter().map(|t| t.size1().unwrap()).collect();
        assert_eq!(sizes, [3, 3, 3, 1]);
        let mut first = b[0].shallow_clone();
        let _ = first.f_fill_(7.0).unwrap();
        assert_eq!(flat.double_value(&[2]), 7.0, "views share the storage");
        assert_eq!(bucket_views(&flat, 1 << 20).unwrap().len(), 1);
        assert_eq!(
            bucket_views(&flat, 1).unwrap().len(),
            10,
            "at least one element"
        );
        let mut solo = Solo::new(Device::Cpu);
        let m = Tensor::zeros([2, 2], (Kind::Float, Device::Cpu));
        assert!(all_reduce_flat(&mut solo, &m, 64, ReduceOp::Avg).is_err());
    }

    #[test]
    fn checksums_see_one_bit_and_swaps() {
        let a = Tensor::from_slice(&[1.0f32, 2.0, 3.0, -0.0]);
        let c0 = checksum(std::slice::from_ref(&a)).unwrap();
        assert_eq!(c0, checksum(&[a.copy()]).unwrap());
        let mut b = a.copy();
        let _ = b.f_index_put_(
            &[Some(Tensor::from_slice(&[3i64]))],
            &Tensor::from_slice(&[0.0f32]),
            false,
        );
        assert_ne!(c0, checksum(&[b]).unwrap(), "-0.0 and 0.0 differ in bits");
        let swapped = Tensor::from_slice(&[2.0f32, 1.0, 3.0, -0.0]);
        assert_ne!(c0, checksum(&[swapped]).unwrap());
        let next = Tensor::from_slice(&[f32::from_bits(1.0f32.to_bits() + 1), 2.0, 3.0, -0.0]);
        assert_ne!(c0, checksum(&[next]).unwrap());
    }

    #[test]
    fn slices_cover_everything_once_and_differ_by_at_most_one() {
        for (n, world) in [(19, 3), (17, 3), (2, 5), (0, 2), (8, 1), (100, 8)] {
            let slices: Vec<_> = (0..world).map(|r| slice_of(n, r, world)).collect();
            assert_eq!(slices[0].start, 0);
            assert_eq!(slices[world - 1].end, n);
            for w in slices.windows(2) {
                assert_eq!(w[0].end, w[1].start, "{n} over {world}: {slices:?}");
                assert!(w[0].len() >= w[1].len() && w[0].len() - w[1].len() <= 1);
            }
        }
        assert_eq!(slice_of(19, 0, 3), 0..7);
        assert_eq!(slice_of(19, 2, 3), 13..19);
    }

    #[test]
    fn solo_is_the_identity() {
        let mut s = Solo::new(Device::Cpu);
        assert_eq!(sum_f64(&mut s, &[1.0, 2.5]).unwrap(), [1.0, 2.5]);
        assert_eq!(gather_i64(&mut s, &[4, 5]).unwrap(), [vec![4, 5]]);
        let mut p = [Tensor::from_slice(&[1.0f32])];
        broadcast_and_verify(&mut s, &mut p).unwrap();
        check_resume_world(2, 2).unwrap();
        agree(&mut s, &["the step"], &[5]).unwrap();
        let e = check_resume_world(8, 4).unwrap_err().to_string();
        assert!(e.contains("written by 8 rank(s) and this run has 4"), "{e}");
    }
}
