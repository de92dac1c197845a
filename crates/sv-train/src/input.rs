//! Turning a uint8 batch into the model's input on the device: HWC to CHW, horizontal
//! flips, PCA lighting offsets, mean subtraction and division by the standard
//! deviation. Only uint8 crosses to the device (a quarter of the float bytes); this
//! work then runs there as a handful of element-wise kernels.

use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

use crate::error::{Result, TorchContext};

/// Per-channel statistics on the 0-255 scale.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Normalization {
    /// Mean of R, G, B.
    pub mean: [f64; 3],
    /// Standard deviation of R, G, B.
    pub std: [f64; 3],
}

impl Default for Normalization {
    /// ImageNet's usual statistics (torchvision's, times 255).
    fn default() -> Self {
        Normalization {
            mean: [123.675, 116.28, 103.53],
            std: [58.395, 57.12, 57.375],
        }
    }
}

/// Mean and reciprocal std as `[1, 3, 1, 1]` tensors on one device.
pub struct DeviceNorm {
    mean: Tensor,
    inv_std: Tensor,
}

impl std::fmt::Debug for DeviceNorm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DeviceNorm")
    }
}

impl DeviceNorm {
    /// Uploads `n` to `device`.
    pub fn new(n: &Normalization, device: Device) -> Result<DeviceNorm> {
        let inv: Vec<f32> = n.std.iter().map(|&s| (1.0 / s.max(1e-6)) as f32).collect();
        let mean: Vec<f32> = n.mean.iter().map(|&m| m as f32).collect();
        let make = |v: &[f32]| {
            Tensor::f_from_slice(v)
                .and_then(|t| t.f_reshape([1, 3, 1, 1]))
                .and_then(|t| t.f_to_device(device))
        };
        Ok(DeviceNorm {
            mean: make(&mean).ctx(|| "upload mean".into())?,
            inv_std: make(&inv).ctx(|| "upload std".into())?,
        })
    }

    /// `images`: uint8 `[N, H, W, 3]`; `flips`: optional bool `[N]` (flip those
    /// horizontally); `lighting`: optional float `[N, 3]` RGB offsets on the 0-255 scale.
    /// Returns float `[N, 3, H, W]`.
    pub fn apply(
        &self,
        images: &Tensor,
        flips: Option<&Tensor>,
        lighting: Option<&Tensor>,
    ) -> Result<Tensor> {
        (|| -> Result<Tensor, tch::TchError> {
            let mut x = images.f_permute([0, 3, 1, 2])?.f_to_kind(Kind::Float)?;
            if let Some(f) = flips {
                let mask = f.f_to_kind(Kind::Bool)?.f_view([-1, 1, 1, 1])?;
                x = x.f_flip([3])?.f_where_self(&mask, &x)?;
            }
            if let Some(l) = lighting {
                x = x.f_add(&l.f_to_kind(Kind::Float)?.f_view([-1, 3, 1, 1])?)?;
            }
            x.f_sub(&self.mean)?.f_mul(&self.inv_std)?.f_contiguous()
        })()
        .ctx(|| "normalise input".into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalises_flips_and_lights_per_sample() {
        let n = Normalization {
            mean: [10.0, 20.0, 30.0],
            std: [2.0, 4.0, 5.0],
        };
        let dn = DeviceNorm::new(&n, Device::Cpu).unwrap();
        // Two 1x2 images, HWC: pixel values chosen per (sample, x, channel).
        let px: Vec<u8> = (0..2 * 2 * 3).map(|i| (i * 10) as u8).collect();
        let images = Tensor::from_slice(&px).reshape([2, 1, 2, 3]);
        let flips = Tensor::from_slice(&[false, true]);
        let light = Tensor::from_slice(&[1.0f32, 2.0, 3.0, -1.0, -2.0, -3.0]).reshape([2, 3]);
        let out = dn.apply(&images, Some(&flips), Some(&light)).unwrap();
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
                    let want = (raw + l - n.mean[c as usize]) / n.std[c as usize];
                    let got = out.double_value(&[s, c, 0, x]);
                    assert!((got - want).abs() < 1e-5, "s{s} c{c} x{x}: {got} vs {want}");
                }
            }
        }
    }
}
