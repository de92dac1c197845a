//! Per-sample augmentation for AlexNet-style training, on borrowed buffers.
//!
//! Every operation reads one stored image (`side x side x 3`, interleaved RGB, HWC,
//! uint8, as the shard reader hands it out) and writes one crop into a buffer the
//! caller owns: nothing here allocates, so a worker can run these in its hot loop.
//!
//! - [`TrainAugment::draw`] picks a sample's random choices (crop origin, horizontal
//!   flip with p = 0.5, three lighting draws) from [`sv_core::sample_rng`] keyed by
//!   (seed, epoch, sample index) only, so they never depend on scheduling.
//! - [`crop_u8`] copies the crop window (row `memcpy`, or a reversed pixel copy when
//!   flipped) into HWC or CHW uint8.
//! - [`crop_f32`] does crop, flip, PCA lighting and mean/std normalisation in one pass
//!   into CHW float32, with a precomputed scale and offset per channel (or a per-pixel
//!   mean image, as Caffe's `compute_image_mean`).
//! - [`Lighting`] turns the three draws into an RGB offset in grey levels (0-255),
//!   under either convention of the paper's PCA lighting ([`LightingConvention`]).
//! - [`center_window`] and [`ten_crop_windows`] give the evaluation crops: the centre,
//!   and the paper's four corners + centre and their mirrors.
//!
//! # Value conventions
//!
//! Pixels are on the 0-255 scale throughout. A float output element is
//! `(pixel + lighting[c] - mean[c]) / std[c]`, where `pixel` is the stored uint8 value
//! at the source position, `lighting` is [`Lighting::offset`] of the sample (zero when
//! lighting is off) and `mean`/`std` are [`Normalize`]'s (a mean image is indexed at
//! the source position, so it is cropped and mirrored with the image). No clamping is
//! applied after lighting, as in the paper and fb.resnet.torch.
//!
//! # Example
//!
//! ```
//! use sv_augment::{crop_f32, Layout, Lighting, Normalize, TrainAugment, crop_u8};
//! let side = 8;
//! let image: Vec<u8> = (0..side * side * 3).map(|i| i as u8).collect();
//! let aug = TrainAugment::new(side as u32, 5)?;
//! let p = aug.draw(42, 0, 7); // seed, epoch, sample index
//! let mut crop = vec![0u8; 5 * 5 * 3];
//! crop_u8(&image, side as u32, 5, p.window, Layout::Hwc, &mut crop)?;
//! let light = Lighting::fb_resnet().offset(p.alpha_unit);
//! let mut planes = vec![0f32; 3 * 5 * 5];
//! crop_f32(&image, side as u32, 5, p.window, light, &Normalize::imagenet(), &mut planes)?;
//! # Ok::<(), sv_augment::AugmentError>(())
//! ```
#![warn(missing_docs)]

mod lighting;
mod ops;

pub use lighting::{Lighting, LightingConvention};
pub use ops::{Layout, Mean, Normalize, crop_f32, crop_u8};

use rand::Rng;
use rand_distr::{Distribution, StandardNormal};

/// Default crop side: 227, the size that gives conv1 a 55x55 output (PAPER.md).
pub const DEFAULT_CROP: u32 = 227;

/// What went wrong: a buffer of the wrong size or a window outside the image.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum AugmentError {
    /// A buffer does not have the length the geometry needs.
    #[error("{what} holds {found} elements, expected {expected}")]
    Size {
        /// Which buffer (`source image`, `destination`, `mean image`).
        what: &'static str,
        /// The length the geometry needs.
        expected: usize,
        /// The length passed.
        found: usize,
    },
    /// The crop window does not fit inside the image.
    #[error("crop window {crop}x{crop} at ({x}, {y}) does not fit in a {side}x{side} image")]
    Window {
        /// Left column.
        x: u32,
        /// Top row.
        y: u32,
        /// Crop side.
        crop: u32,
        /// Image side.
        side: u32,
    },
    /// A setting that cannot work (zero crop, non-positive std, ...).
    #[error("invalid augmentation setting: {0}")]
    Config(String),
}

/// Where a crop is taken and whether it is mirrored.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Window {
    /// Left column of the crop in the stored image.
    pub x: u32,
    /// Top row of the crop in the stored image.
    pub y: u32,
    /// Mirror left-right: output column `j` reads source column `x + crop - 1 - j`.
    pub flip: bool,
}

/// A sample's random choices for one use.
#[derive(Clone, Copy, Debug, PartialEq, Default)]
pub struct SampleParams {
    /// Crop origin and flip.
    pub window: Window,
    /// Three standard-normal draws; the lighting alphas are `std * alpha_unit`
    /// ([`Lighting::offset`] applies the std), so changing the lighting settings never
    /// changes the crops.
    pub alpha_unit: [f32; 3],
}

/// Training augmentation settings: random `crop x crop` window of a `side` image,
/// optional random horizontal flip.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TrainAugment {
    /// Side of the stored images.
    pub side: u32,
    /// Side of the crop.
    pub crop: u32,
    /// Whether to mirror with probability 0.5.
    pub flip: bool,
}

impl TrainAugment {
    /// Random crops of `crop` from `side` images, flipping enabled.
    pub fn new(side: u32, crop: u32) -> Result<TrainAugment, AugmentError> {
        check_crop(side, crop)?;
        Ok(TrainAugment {
            side,
            crop,
            flip: true,
        })
    }

    /// The random choices for sample `index` of `epoch`: drawn, in this order, crop
    /// x, crop y (uniform over every position that fits), the flip coin, and three
    /// standard normals, all from `sv_core::sample_rng(seed, epoch, index)`.
    pub fn draw(&self, seed: u64, epoch: u64, index: u64) -> SampleParams {
        let mut rng = sv_core::sample_rng(seed, epoch, index);
        let span = self.side.saturating_sub(self.crop);
        let x = rng.random_range(0..=span);
        let y = rng.random_range(0..=span);
        let coin = rng.random_bool(0.5);
        let mut alpha_unit = [0f32; 3];
        for a in &mut alpha_unit {
            *a = StandardNormal.sample(&mut rng);
        }
        SampleParams {
            window: Window {
                x,
                y,
                flip: self.flip && coin,
            },
            alpha_unit,
        }
    }
}

fn check_crop(side: u32, crop: u32) -> Result<(), AugmentError> {
    if crop == 0 || crop > side {
        return Err(AugmentError::Config(format!(
            "crop side {crop} must be between 1 and the image side {side}"
        )));
    }
    Ok(())
}

/// The centred `crop` window of a `side` image (the offset rounds down, as
/// torchvision's `CenterCrop` rounds `(side - crop) / 2`).
pub fn center_window(side: u32, crop: u32) -> Result<Window, AugmentError> {
    check_crop(side, crop)?;
    let o = (side - crop) / 2;
    Ok(Window {
        x: o,
        y: o,
        flip: false,
    })
}

/// The paper's ten test views: top-left, top-right, bottom-left, bottom-right and
/// centre crops, then the same five mirrored.
pub fn ten_crop_windows(side: u32, crop: u32) -> Result<[Window; 10], AugmentError> {
    let c = center_window(side, crop)?;
    let far = side - crop;
    let five = [(0, 0), (far, 0), (0, far), (far, far), (c.x, c.y)];
    let mut out = [Window::default(); 10];
    for (i, &(x, y)) in five.iter().enumerate() {
        out[i] = Window { x, y, flip: false };
        out[i + 5] = Window { x, y, flip: true };
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draw_is_keyed_and_in_range() {
        let aug = TrainAugment::new(256, 227).unwrap();
        let a = aug.draw(1, 2, 3);
        assert_eq!(a, aug.draw(1, 2, 3));
        assert_ne!(a, aug.draw(1, 2, 4));
        assert_ne!(a, aug.draw(1, 3, 3));
        let mut flips = 0;
        let mut xs = [false; 30];
        for i in 0..4000 {
            let p = aug.draw(9, 0, i);
            assert!(p.window.x <= 29 && p.window.y <= 29);
            xs[p.window.x as usize] = true;
            flips += usize::from(p.window.flip);
        }
        assert!(xs.iter().all(|&seen| seen), "every x offset 0..=29 occurs");
        assert!((1800..2200).contains(&flips), "flip rate near 0.5: {flips}");
    }

    #[test]
    fn alpha_draws_are_standard_normal() {
        let aug = TrainAugment::new(16, 8).unwrap();
        let n = 20_000;
        let (mut sum, mut sq) = (0f64, 0f64);
        for i in 0..n {
            for a in aug.draw(5, 1, i).alpha_unit {
                sum += f64::from(a);
                sq += f64::from(a) * f64::from(a);
            }
        }
        let m = sum / (3 * n) as f64;
        let var = sq / (3 * n) as f64 - m * m;
        assert!(m.abs() < 0.02, "mean {m}");
        assert!((var - 1.0).abs() < 0.03, "variance {var}");
    }

    #[test]
    fn no_flip_when_disabled() {
        let mut aug = TrainAugment::new(16, 8).unwrap();
        aug.flip = false;
        assert!((0..200).all(|i| !aug.draw(0, 0, i).window.flip));
    }

    #[test]
    fn bad_crop_is_an_error() {
        assert!(TrainAugment::new(256, 0).is_err());
        assert!(TrainAugment::new(256, 257).is_err());
        assert!(center_window(4, 5).is_err());
    }

    #[test]
    fn ten_crop_positions() {
        let w = ten_crop_windows(256, 227).unwrap();
        let pos: Vec<(u32, u32, bool)> = w.iter().map(|w| (w.x, w.y, w.flip)).collect();
        assert_eq!(
            pos,
            vec![
                (0, 0, false),
                (29, 0, false),
                (0, 29, false),
                (29, 29, false),
                (14, 14, false),
                (0, 0, true),
                (29, 0, true),
                (0, 29, true),
                (29, 29, true),
                (14, 14, true),
            ]
        );
        assert_eq!(
            center_window(256, 224).unwrap(),
            Window {
                x: 16,
                y: 16,
                flip: false
            }
        );
    }
}
