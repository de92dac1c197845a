//! Turning a uint8 batch into the model's input on the device: HWC to CHW, horizontal
//! flips, PCA lighting offsets, mean subtraction and, for [`InputScale::Std`], division
//! by the standard deviation. Only uint8 crosses to the device (a quarter of the float
//! bytes); this work then runs there as a handful of element-wise kernels.
//!
//! The paper (section 2) trains on centred raw RGB values: 0-255 minus the mean
//! (image), nothing else ([`InputScale::Raw`]). Its N(0, 0.01^2) init and LRN's
//! alpha = 1e-4 are tuned for that scale; divided by a std of about 58, conv1's outputs
//! are about 58 times smaller and LRN's window sum vanishes next to k = 2.

use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

use std::sync::Arc;

use crate::error::{Result, TorchContext, TrainError};
use crate::lrn::is_channels_last;

pub use sv_model::InputScale;

/// Input statistics on the 0-255 scale: per-channel mean and std, and optionally the
/// paper's per-pixel mean image.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Normalization {
    /// Mean of R, G, B (subtracted when there is no mean image).
    pub mean: [f64; 3],
    /// Standard deviation of R, G, B (used by [`InputScale::Std`] only).
    pub std: [f64; 3],
    /// The per-pixel mean image (paper section 2, Caffe's `compute_image_mean`),
    /// subtracted instead of `mean`, at each crop pixel's position in the stored
    /// image (mirrored with the crop). Checkpoints keep it as the tensor
    /// [`crate::checkpoint::MEAN_IMAGE_TENSOR`], not in the JSON metadata.
    #[serde(skip)]
    pub mean_image: Option<PixelMean>,
}

impl Default for Normalization {
    /// ImageNet's usual statistics (torchvision's, times 255), no mean image.
    fn default() -> Self {
        Normalization {
            mean: [123.675, 116.28, 103.53],
            std: [58.395, 57.12, 57.375],
            mean_image: None,
        }
    }
}

/// A per-pixel mean image: `3 x side x side` values, CHW, RGB, 0-255 scale (the
/// layout `supervision pca compute --mean-image` writes).
#[derive(Clone, Debug, PartialEq)]
pub struct PixelMean {
    /// Side of the stored images it was computed over.
    pub side: u32,
    /// `chw[c * side * side + y * side + x]`.
    pub chw: Arc<[f32]>,
}

impl PixelMean {
    /// Checks that `chw` holds `3 x side x side` finite values.
    pub fn new(side: u32, chw: Vec<f32>) -> Result<PixelMean> {
        let want = 3 * side as usize * side as usize;
        if chw.len() != want || side == 0 {
            return Err(TrainError::Config(format!(
                "mean image holds {} values, expected 3x{side}x{side} = {want}",
                chw.len()
            )));
        }
        if !chw.iter().all(|v| v.is_finite()) {
            return Err(TrainError::Config(
                "mean image holds non-finite values".into(),
            ));
        }
        Ok(PixelMean {
            side,
            chw: chw.into(),
        })
    }
}

/// Mean and reciprocal std as `[1, 3, 1, 1]` tensors on one device, and the mean image
/// as `[3, side * side]` when there is one.
pub struct DeviceNorm {
    mean: Tensor,
    inv_std: Tensor,
    mean_image: Option<(Tensor, i64)>,
    channels_last: bool,
}

impl std::fmt::Debug for DeviceNorm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DeviceNorm")
    }
}

impl DeviceNorm {
    /// Uploads `n` to `device`, for inputs of `scale`.
    pub fn new(n: &Normalization, scale: InputScale, device: Device) -> Result<DeviceNorm> {
        let inv: Vec<f32> = match scale {
            InputScale::Raw => vec![1.0; 3],
            InputScale::Std => n.std.iter().map(|&s| (1.0 / s.max(1e-6)) as f32).collect(),
        };
        let mean: Vec<f32> = n.mean.iter().map(|&m| m as f32).collect();
        let make = |v: &[f32]| {
            Tensor::f_from_slice(v)
                .and_then(|t| t.f_reshape([1, 3, 1, 1]))
                .and_then(|t| t.f_to_device(device))
        };
        let mean_image = match &n.mean_image {
            None => None,
            Some(m) => {
                let side = i64::from(m.side);
                let t = Tensor::f_from_slice(&m.chw)
                    .and_then(|t| t.f_reshape([3, side * side]))
                    .and_then(|t| t.f_to_device(device))
                    .ctx(|| "upload mean image".into())?;
                Some((t, side))
            }
        };
        Ok(DeviceNorm {
            mean: make(&mean).ctx(|| "upload mean".into())?,
            inv_std: make(&inv).ctx(|| "upload std".into())?,
            mean_image,
            channels_last: false,
        })
    }

    /// Makes [`DeviceNorm::apply`] return channels-last tensors (NHWC in memory, the
    /// layout the uint8 batch already has, which cuDNN's fastest convolutions take)
    /// instead of contiguous NCHW.
    pub fn channels_last(mut self, on: bool) -> DeviceNorm {
        self.channels_last = on;
        self
    }

    /// The side of the per-pixel mean image, when one is subtracted (then
    /// [`DeviceNorm::apply`] needs each crop's window).
    pub fn mean_image_side(&self) -> Option<i64> {
        self.mean_image.as_ref().map(|(_, side)| *side)
    }

    /// `images`: uint8 `[N, H, W, 3]`; `flips`: optional bool `[N]` (flip those
    /// horizontally); `lighting`: optional float `[N, 3]` RGB offsets on the 0-255 scale;
    /// `windows`: int64 `[N, 3]`, each crop's left column and top row in the stored
    /// image and whether its pixels end up mirrored (already, or by `flips`), needed
    /// only with a mean image. Returns float `[N, 3, H, W]`, channels-last in memory
    /// when [`DeviceNorm::channels_last`] is on (the NHWC bytes are read in place: no
    /// round trip through NCHW), contiguous otherwise.
    pub fn apply(
        &self,
        images: &Tensor,
        flips: Option<&Tensor>,
        lighting: Option<&Tensor>,
        windows: Option<&Tensor>,
    ) -> Result<Tensor> {
        if self.mean_image.is_some() && windows.is_none() {
            return Err(TrainError::Config(
                "a mean image is set but the batch carries no crop windows".into(),
            ));
        }
        (|| -> Result<Tensor, tch::TchError> {
            let mut x = images.f_permute([0, 3, 1, 2])?.f_to_kind(Kind::Float)?;
            if let Some(f) = flips {
                let mask = f.f_to_kind(Kind::Bool)?.f_view([-1, 1, 1, 1])?;
                x = x.f_flip([3])?.f_where_self(&mask, &x)?;
            }
            if let Some(l) = lighting {
                x = x.f_add(&l.f_to_kind(Kind::Float)?.f_view([-1, 3, 1, 1])?)?;
            }
            let x = match (&self.mean_image, windows) {
                (Some((m, side)), Some(w)) => x.f_sub(&crop_mean(m, *side, w, &x.size())?)?,
                _ => x.f_sub(&self.mean)?,
            };
            let x = x.f_mul(&self.inv_std)?;
            // Element-wise kernels keep the layout of their first input, the permuted
            // NHWC batch, so this is normally no copy.
            match (self.channels_last, is_channels_last(&x)) {
                (true, true) => Ok(x),
                (true, false) => x
                    .f_permute([0, 2, 3, 1])?
                    .f_contiguous()?
                    .f_permute([0, 3, 1, 2]),
                (false, _) => x.f_contiguous(),
            }
        })()
        .ctx(|| "normalise input".into())
    }
}

/// The mean image `m` (`[3, side * side]`) cropped and mirrored as each of the
/// `windows` (`[N, 3]`: x, y, mirrored), as `[N, 3, h, w]` for a batch of `size`.
/// The windows must lie inside the image: callers check that the mean image has the
/// stored images' side (checking every batch here would stall the device queue).
fn crop_mean(
    m: &Tensor,
    side: i64,
    windows: &Tensor,
    size: &[i64],
) -> Result<Tensor, tch::TchError> {
    let (n, h, w) = (size[0], size[2], size[3]);
    let device = m.device();
    let win = windows.f_to_device(device)?.f_to_kind(Kind::Int64)?;
    let col = |i: i64| win.f_select(1, i).and_then(|t| t.f_view([n, 1]));
    let (x0, y0, mirrored) = (col(0)?, col(1)?, col(2)?.f_ne(0)?);
    let ar_w = Tensor::f_arange(w, (Kind::Int64, device))?.f_view([1, w])?;
    let ar_h = Tensor::f_arange(h, (Kind::Int64, device))?.f_view([1, h])?;
    let forward = x0.f_add(&ar_w)?;
    let backward = x0.f_add_scalar(w - 1)?.f_sub(&ar_w)?;
    let cols = backward.f_where_self(&mirrored, &forward)?; // [N, w]
    let rows = y0.f_add(&ar_h)?; // [N, h]
    let idx = rows
        .f_view([n, h, 1])?
        .f_mul_scalar(side)?
        .f_add(&cols.f_view([n, 1, w])?)?;
    m.f_index_select(1, &idx.f_view([-1])?)?
        .f_view([3, n, h, w])?
        .f_permute([1, 0, 2, 3])
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The mean image is read at each crop pixel's stored position, mirrored with the
    /// crop, whether the crop was mirrored before (window flag) or by `flips`.
    #[test]
    fn mean_image_follows_each_crops_window() {
        let side = 4usize;
        // mean value at (c, y, x) = 100c + 10y + x
        let chw: Vec<f32> = (0..3 * side * side)
            .map(|i| (100 * (i / 16) + 10 * (i % 16 / 4) + i % 4) as f32)
            .collect();
        let n = Normalization {
            mean: [0.0; 3],
            std: [1.0, 2.0, 4.0],
            mean_image: Some(PixelMean::new(side as u32, chw).unwrap()),
        };
        let dn = DeviceNorm::new(&n, InputScale::Std, Device::Cpu).unwrap();
        assert_eq!(dn.mean_image_side(), Some(4));
        // three 2x2 crops of zeros
        let images = Tensor::zeros([3, 2, 2, 3], (Kind::Uint8, Device::Cpu));
        // crop 0 at (x 1, y 2); crop 1 at (x 2, y 0) already mirrored; crop 2 at
        // (x 0, y 1) mirrored on the device by `flips`
        let windows = Tensor::from_slice(&[1i64, 2, 0, 2, 0, 1, 0, 1, 1]).reshape([3, 3]);
        let flips = Tensor::from_slice(&[false, false, true]);
        let out = dn
            .apply(&images, Some(&flips), None, Some(&windows))
            .unwrap();
        assert_eq!(out.size(), [3, 3, 2, 2]);
        assert!(out.is_contiguous());
        let dn_cl = DeviceNorm::new(&n, InputScale::Std, Device::Cpu)
            .unwrap()
            .channels_last(true);
        let out_cl = dn_cl
            .apply(&images, Some(&flips), None, Some(&windows))
            .unwrap();
        assert!(
            is_channels_last(&out_cl),
            "channels-last with the mean image too"
        );
        assert!(out_cl.allclose(&out, 0.0, 0.0, false));
        let cases = [(0, 1, 2, false), (1, 2, 0, true), (2, 0, 1, true)];
        for (s, x0, y0, mirrored) in cases {
            for c in 0..3i64 {
                for i in 0..2i64 {
                    for j in 0..2i64 {
                        let sx = if mirrored { x0 + 1 - j } else { x0 + j };
                        let m = (100 * c + 10 * (y0 + i) + sx) as f64;
                        let want = -m / n.std[c as usize];
                        let got = out.double_value(&[s, c, i, j]);
                        assert!(
                            (got - want).abs() < 1e-5,
                            "s{s} c{c} ({i},{j}): {got} vs {want}"
                        );
                    }
                }
            }
        }
        // without windows a mean image cannot be applied
        assert!(dn.apply(&images, None, None, None).is_err());
        assert!(PixelMean::new(4, vec![0.0; 47]).is_err());
        assert!(PixelMean::new(4, vec![f32::NAN; 48]).is_err());
    }

    #[test]
    fn normalises_flips_and_lights_per_sample() {
        let n = Normalization {
            mean: [10.0, 20.0, 30.0],
            std: [2.0, 4.0, 5.0],
            mean_image: None,
        };
        let dn = DeviceNorm::new(&n, InputScale::Std, Device::Cpu).unwrap();
        let raw = DeviceNorm::new(&n, InputScale::Raw, Device::Cpu).unwrap();
        // Two 1x2 images, HWC: pixel values chosen per (sample, x, channel).
        let px: Vec<u8> = (0..2 * 2 * 3).map(|i| (i * 10) as u8).collect();
        let images = Tensor::from_slice(&px).reshape([2, 1, 2, 3]);
        let flips = Tensor::from_slice(&[false, true]);
        let light = Tensor::from_slice(&[1.0f32, 2.0, 3.0, -1.0, -2.0, -3.0]).reshape([2, 3]);
        let out = dn.apply(&images, Some(&flips), Some(&light), None).unwrap();
        let out_raw = raw
            .apply(&images, Some(&flips), Some(&light), None)
            .unwrap();
        assert_eq!(out.size(), [2, 3, 1, 2]);
        for s in 0..2i64 {
            for c in 0..3i64 {
                for x in 0..2i64 {
                    let src_x = if s == 1 { 1 - x } else { x };
                    let raw = ((s * 6 + src_x * 3 + c) * 10) as f64;
                    let l = if s == 0 {
                        (c + 1) as f64
                    } else {
                        -((c + 1) as f64)
                    };
                    let centred = raw + l - n.mean[c as usize];
                    let want = centred / n.std[c as usize];
                    let got = out.double_value(&[s, c, 0, x]);
                    assert!((got - want).abs() < 1e-5, "s{s} c{c} x{x}: {got} vs {want}");
                    // the paper's scale: centred, not divided
                    let got = out_raw.double_value(&[s, c, 0, x]);
                    assert!((got - centred).abs() < 1e-4, "raw s{s} c{c} x{x}: {got}");
                }
            }
        }
    }
}
