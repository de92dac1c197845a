//! Local response normalisation (paper section 3.3), which libtorch lacks as an op.
//!
//! `b[i] = a[i] / (k + alpha * sum_{j = max(0, i-n/2)}^{min(N-1, i+n/2)} a[j]^2)^beta`
//! over channels `i`, at each spatial position. `alpha` is the paper's (PyTorch's
//! `LocalResponseNorm` and Caffe divide their alpha by `n`: the paper's
//! `alpha = 1e-4` equals PyTorch's `alpha = 5e-4` with `size = 5`).
//!
//! Towers. In the paper's two-GPU net each GPU normalised its own kernel maps
//! (cuda-convnet2's `rnorm1a`/`rnorm1b` over 48 maps each, then 128 + 128 after conv2):
//! with `towers = 2` the channels are split into two halves and no window crosses the
//! boundary, so `N` above is the tower's channel count and `i` counts within it.
//!
//! The window sum is exact: the squared input is viewed so that each tower's channels
//! lie along one axis of a 4-D tensor, and `avg_pool2d` with a window of `n` along that
//! axis, zero padding `n/2` and `divisor_override = 1` sums the window. Both memory
//! layouts are views, never copies: NCHW-contiguous input is viewed as
//! `[N * towers, 1, C / towers, H * W]` (window down the channel rows), channels-last
//! input as `[N * H * W * towers, 1, 1, C / towers]` (window along the contiguous
//! channels).

use tch::Tensor;

pub use sv_model::LrnParams;

/// Whether a 4-D tensor is laid out channels-last (NHWC in memory): its NHWC
/// permutation is contiguous.
pub fn is_channels_last(x: &Tensor) -> bool {
    x.dim() == 4 && x.size()[1] > 1 && x.permute([0, 2, 3, 1]).is_contiguous()
}

/// Applies LRN across the channels of an `[N, C, H, W]` tensor, windows confined to
/// each of `towers` equal channel groups. The result has the input's layout.
pub fn local_response_norm(x: &Tensor, p: LrnParams, towers: i64) -> Result<Tensor, tch::TchError> {
    let (n, c, h, w) = x.size4()?;
    if towers < 1 || c % towers != 0 {
        return Err(tch::TchError::Shape(format!(
            "LRN: {c} channels do not split into {towers} towers"
        )));
    }
    let per = c / towers;
    let half = p.n / 2;
    let sq = x.f_square()?;
    let window_sum = if is_channels_last(x) {
        // NHWC memory: [N*H*W*towers, 1, 1, per] is a view; the window runs along the
        // last axis and comes back in the same order.
        sq.f_permute([0, 2, 3, 1])?
            .f_view([n * h * w * towers, 1, 1, per])?
            .f_avg_pool2d([1, p.n], [1, 1], [0, half], false, true, Some(1))?
            .f_view([n, h, w, c])?
            .f_permute([0, 3, 1, 2])?
    } else {
        sq.f_contiguous()?
            .f_view([n * towers, 1, per, h * w])?
            .f_avg_pool2d([p.n, 1], [1, 1], [half, 0], false, true, Some(1))?
            .f_view([n, c, h, w])?
    };
    let denom = (window_sum * p.alpha + p.k).f_pow_tensor_scalar(p.beta)?;
    x.f_div(&denom)
}

/// The paper's formula as a plain loop over an `[N, C, H, W]` array in row-major order,
/// windows confined to each of `towers` channel groups; the independent reference the
/// tests compare [`local_response_norm`] against.
pub fn reference_lrn(data: &[f64], shape: [usize; 4], p: LrnParams, towers: usize) -> Vec<f64> {
    let [n_, c_, h_, w_] = shape;
    let per = c_ / towers;
    let half = (p.n / 2) as usize;
    let at = |n: usize, c: usize, y: usize, x: usize| ((n * c_ + c) * h_ + y) * w_ + x;
    let mut out = vec![0.0; data.len()];
    for n in 0..n_ {
        for c in 0..c_ {
            let first = c / per * per;
            let last = first + per - 1;
            for y in 0..h_ {
                for x in 0..w_ {
                    let lo = c.saturating_sub(half).max(first);
                    let hi = (c + half).min(last);
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
    use tch::Kind;

    /// The NCHW tensor `data` of `shape`, either contiguous or laid out channels-last
    /// (same values, NHWC memory).
    fn tensor(data: &[f64], shape: [usize; 4], channels_last: bool) -> Tensor {
        let dims: Vec<i64> = shape.iter().map(|&d| d as i64).collect();
        let x = Tensor::from_slice(data)
            .reshape(&dims)
            .to_kind(Kind::Double);
        if channels_last {
            let y = x.permute([0, 2, 3, 1]).contiguous().permute([0, 3, 1, 2]);
            assert!(shape[1] == 1 || is_channels_last(&y));
            y
        } else {
            x
        }
    }

    fn check_towers(shape: [usize; 4], p: LrnParams, scale: f64, towers: usize) {
        let numel: usize = shape.iter().product();
        // Deterministic values of both signs and several magnitudes.
        let data: Vec<f64> = (0..numel)
            .map(|i| scale * (((i * 7919) % 113) as f64 / 113.0 - 0.4) * (1.0 + (i % 5) as f64))
            .collect();
        let want = reference_lrn(&data, shape, p, towers);
        for channels_last in [false, true] {
            let x = tensor(&data, shape, channels_last);
            let y = local_response_norm(&x, p, towers as i64).unwrap();
            assert_eq!(
                is_channels_last(&y),
                channels_last && shape[1] > 1,
                "layout kept"
            );
            let got: Vec<f64> = Vec::<f64>::try_from(y.contiguous().flatten(0, -1)).unwrap();
            for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                assert!(
                    (g - w).abs() <= 1e-12 * w.abs().max(1.0),
                    "element {i} (channels_last {channels_last}): {g} vs {w}"
                );
            }
        }
    }

    fn check(shape: [usize; 4], p: LrnParams, scale: f64) {
        check_towers(shape, p, scale, 1);
    }

    /// Two towers: a tensor whose channels on either side of the boundary differ
    /// wildly (tower 0 large, tower 1 small). Against the loop, and unlike one window
    /// over all channels, the small tower's first maps do not see the large ones.
    #[test]
    fn windows_stay_inside_each_tower() {
        let shape = [2usize, 8, 3, 2];
        let per = 4;
        let data: Vec<f64> = (0..shape.iter().product::<usize>())
            .map(|i| {
                let c = i / 6 % 8;
                let base = if c < per { 300.0 } else { 0.5 };
                base * (1.0 + ((i * 31) % 7) as f64 / 7.0)
            })
            .collect();
        let want = reference_lrn(&data, shape, LrnParams::PAPER, 2);
        let across = reference_lrn(&data, shape, LrnParams::PAPER, 1);
        for channels_last in [false, true] {
            let x = tensor(&data, shape, channels_last);
            let y = local_response_norm(&x, LrnParams::PAPER, 2).unwrap();
            let got: Vec<f64> = Vec::<f64>::try_from(y.contiguous().flatten(0, -1)).unwrap();
            for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                assert!(
                    (g - w).abs() <= 1e-12 * w.abs().max(1.0),
                    "element {i}: {g} vs {w}"
                );
            }
            // channel 4 (first of tower 1), position (0, 0, 0): one window across both
            // towers would divide it by the squares of channels 2 and 3 too
            let i = 4 * 6;
            assert!(
                got[i] > across[i] * 1.1,
                "tower 1 must not see tower 0: {} vs {}",
                got[i],
                across[i]
            );
        }
        // Other shapes and constants, two and four towers.
        check_towers([1, 10, 2, 3], LrnParams::PAPER, 200.0, 2);
        check_towers(
            [2, 12, 2, 2],
            LrnParams {
                k: 1.0,
                n: 3,
                alpha: 0.01,
                beta: 0.5,
            },
            10.0,
            4,
        );
        assert!(local_response_norm(&tensor(&data, shape, false), LrnParams::PAPER, 3).is_err());
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
        let y = local_response_norm(&x, LrnParams::PAPER, 1).unwrap();
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
