//! Local response normalisation (paper section 3.3), which libtorch lacks as an op.
//!
//! `b[i] = a[i] / (k + alpha * sum_{j = max(0, i-n/2)}^{min(N-1, i+n/2)} a[j]^2)^beta`
//! over channels `i`, at each spatial position. The window sum is exact: the squared
//! input, viewed as `[N, 1, C, H, W]` and zero padded by `n/2` on the channel axis,
//! goes through `avg_pool3d` with a `(n, 1, 1)` kernel and `divisor_override = 1`,
//! which sums the window instead of averaging it. `alpha` is the paper's (PyTorch's
//! `LocalResponseNorm` and Caffe divide their alpha by `n`: the paper's
//! `alpha = 1e-4` equals PyTorch's `alpha = 5e-4` with `size = 5`).

use serde::{Deserialize, Serialize};
use tch::Tensor;

/// LRN constants, in the paper's convention (alpha not divided by `n`).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct LrnParams {
    /// Additive constant.
    pub k: f64,
    /// Number of adjacent channels in the window (odd).
    pub n: i64,
    /// Scale of the window's sum of squares.
    pub alpha: f64,
    /// Exponent.
    pub beta: f64,
}

impl LrnParams {
    /// The paper's values: k=2, n=5, alpha=1e-4, beta=0.75.
    pub const PAPER: LrnParams = LrnParams {
        k: 2.0,
        n: 5,
        alpha: 1e-4,
        beta: 0.75,
    };
}

impl Default for LrnParams {
    fn default() -> Self {
        Self::PAPER
    }
}

/// Applies LRN across the channels of an `[N, C, H, W]` tensor.
pub fn local_response_norm(x: &Tensor, p: LrnParams) -> Result<Tensor, tch::TchError> {
    let half = p.n / 2;
    let window_sum = x
        .f_square()?
        .f_unsqueeze(1)?
        // Zero padding as its own op: avg_pool3d's padding may not exceed half the
        // kernel and needs the unpadded input to be at least the window (C >= n).
        .f_constant_pad_nd([0, 0, 0, 0, half, half])?
        .f_avg_pool3d([p.n, 1, 1], [1, 1, 1], [0, 0, 0], false, true, Some(1))?
        .f_squeeze_dim(1)?;
    let denom = (window_sum * p.alpha + p.k).f_pow_tensor_scalar(p.beta)?;
    x.f_div(&denom)
}

/// The paper's formula as a plain loop over an `[N, C, H, W]` array in row-major order;
/// the independent reference the tests compare [`local_response_norm`] against.
pub fn reference_lrn(data: &[f64], shape: [usize; 4], p: LrnParams) -> Vec<f64> {
    let [n_, c_, h_, w_] = shape;
    let half = (p.n / 2) as usize;
    let at = |n: usize, c: usize, y: usize, x: usize| ((n * c_ + c) * h_ + y) * w_ + x;
    let mut out = vec![0.0; data.len()];
    for n in 0..n_ {
        for c in 0..c_ {
            for y in 0..h_ {
                for x in 0..w_ {
                    let lo = c.saturating_sub(half);
                    let hi = (c + half).min(c_ - 1);
                    let mut sum = 0.0;
                    for j in lo..=hi {
                        let a = data[at(n, j, y, x)];
                        sum += a * a;
                    }
                    out[at(n, c, y, x)] = data[at(n, c, y, x)] / (p.k + p.alpha * sum).powf(p.beta);
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind};

    fn check(shape: [usize; 4], p: LrnParams, scale: f64) {
        let numel: usize = shape.iter().product();
        // Deterministic values of both signs and several magnitudes.
        let data: Vec<f64> = (0..numel)
            .map(|i| scale * (((i * 7919) % 113) as f64 / 113.0 - 0.4) * (1.0 + (i % 5) as f64))
            .collect();
        let want = reference_lrn(&data, shape, p);
        let dims: Vec<i64> = shape.iter().map(|&d| d as i64).collect();
        let x = Tensor::from_slice(&data)
            .reshape(&dims)
            .to_kind(Kind::Double);
        let got = local_response_norm(&x, p).unwrap().to_device(Device::Cpu);
        let got: Vec<f64> = Vec::<f64>::try_from(got.flatten(0, -1)).unwrap();
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            assert!(
                (g - w).abs() <= 1e-12 * w.abs().max(1.0),
                "element {i}: {g} vs {w}"
            );
        }
    }

    #[test]
    fn matches_the_papers_formula() {
        // Large activations make the window sum matter (alpha * sum comparable to k).
        check([2, 7, 3, 4], LrnParams::PAPER, 200.0);
        check([1, 3, 2, 2], LrnParams::PAPER, 1.0);
        // Another window and constants, channels fewer than the window.
        check(
            [1, 2, 2, 3],
            LrnParams {
                k: 1.0,
                n: 3,
                alpha: 0.01,
                beta: 0.5,
            },
            10.0,
        );
        check(
            [2, 9, 2, 2],
            LrnParams {
                k: 2.0,
                n: 5,
                alpha: 5e-3,
                beta: 0.75,
            },
            30.0,
        );
    }

    #[test]
    fn window_sum_changes_the_output() {
        // Guard against a construction that ignores neighbours: with big inputs the
        // result differs from plain scaling by k^-beta.
        let x = Tensor::from_slice(&[300.0f64; 5]).reshape([1, 5, 1, 1]);
        let y = local_response_norm(&x, LrnParams::PAPER).unwrap();
        let mid = y.double_value(&[0, 2, 0, 0]);
        let edge = y.double_value(&[0, 0, 0, 0]);
        assert!(
            mid < edge,
            "the middle channel sees five squares, the edge three"
        );
        let plain = 300.0 / 2f64.powf(0.75);
        assert!(mid < plain * 0.9);
    }
}
