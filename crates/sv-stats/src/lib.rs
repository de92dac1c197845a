//! sv-stats: the training set's statistics in one streaming pass: the per-pixel mean
//! image, per-channel mean and standard deviation, the 3x3 RGB covariance and its
//! principal components, which the paper uses for mean subtraction and PCA
//! lighting noise (section 4.1).
//!
//! - [`Accumulator`]: exact integer sums over `side x side x 3` HWC RGB u8 images;
//!   mergeable, so partial results of any grouping combine into the same totals.
//! - [`Moments`]: channel moments, covariance and eigen-decomposition (nalgebra,
//!   `f64`), eigenvalues descending, eigenvectors unit with a fixed sign.
//! - [`compute`]: the parallel, deterministic pass over a [`sv_shard::Dataset`].
//! - [`PcaStats`]: the statistics file (`pca.json`), with [`PcaStats::load`] for the
//!   pipeline; [`MeanImage`]: the mean image and its `.npy` file.
//!
//! # The statistics file, schema version 1
//!
//! | field | meaning |
//! |---|---|
//! | `format`, `version` | `"supervision-pca"`, `1` |
//! | `source` | `dir`, `split`, `codec`, `records` and `shards` of the dataset |
//! | `sample` | `null`, or `{requested, seed}` when a seeded subset was used |
//! | `verified` | whether every record's CRC-32 was checked during the pass |
//! | `images`, `pixels`, `side` | images used; pixels per channel (`images x side^2`) |
//! | `channel_order` | `"RGB"`: the order of every 3-vector and 3x3 matrix |
//! | `scale_255` | `mean`, `std`, `covariance`, `eigenvalues` for pixels 0-255 |
//! | `scale_unit` | the same for pixels / 255, in [0, 1] |
//! | `eigenvectors` | `eigenvectors[i]` = unit (R, G, B) vector of `eigenvalues[i]` |
//! | `lighting` | `alpha_std` (0.1) and, per convention (`paper`, `cuda_convnet2`), `magnitudes_unit` and `magnitudes_255` |
//! | `mean_image` | `null`, or `{file, layout: "CHW", shape: [3, side, side], dtype: "<f4", scale: "0-255"}` |
//!
//! Standard deviations and the covariance are population statistics over all
//! pixels (divided by `pixels`). Eigenvalues are descending; each eigenvector's
//! largest-magnitude component is positive ([`pca::orient`]).
//!
//! PCA lighting: for each image, each time it is used, draw
//! `alpha_i ~ N(0, lighting.alpha_std)` and add
//! `sum_i eigenvectors[i] * alpha_i * magnitudes[i]` to every pixel, with the
//! magnitudes of the chosen convention for the scale the pixels are on
//! ([`PcaStats::lighting_offset`]):
//!
//! - `paper` (default): magnitudes are the eigenvalues of [0, 1] pixels, as
//!   fb.resnet.torch implements the paper's `[p1 p2 p3][a1 l1, a2 l2, a3 l3]^T`.
//! - `cuda_convnet2`: magnitudes are the square roots of the eigenvalues of 0-255
//!   pixels (standard deviations along the principal axes), as the authors'
//!   cuda-convnet2 does.
//!
//! For mean subtraction, use `mean_image` (per pixel, as the paper and Caffe) or
//! `scale_*.mean` (per channel, the common simplification); `scale_unit.std` gives
//! the usual per-channel normalisation.
#![warn(missing_docs)]

mod accum;
mod compute;
mod error;
mod npy;
pub mod pca;
mod stats;

use std::path::Path;

pub use accum::{Accumulator, Totals, product};
pub use compute::{ComputeConfig, Computed, SAMPLE_STREAM, compute, selection};
pub use error::StatsError;
pub use npy::MeanImage;
pub use pca::Moments;
pub use stats::{
    Convention, FORMAT_NAME, Lighting, LightingConvention, MeanImageInfo, PAPER_ALPHA_STD,
    PcaStats, PixelScale, SampleInfo, ScaleStats, Source, VERSION,
};

/// Write `bytes` to `path` atomically ([`sv_core::fs::write_atomic`]: temporary file
/// in the same folder, synced, renamed, folder synced; nothing left on an error).
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), StatsError> {
    Ok(sv_core::fs::write_atomic(path, bytes)?)
}

/// Read a whole regular file of at most `limit` bytes (a FIFO or folder in its place
/// is an error, not a wait).
pub(crate) fn read_file(path: &Path, limit: u64) -> Result<Vec<u8>, StatsError> {
    Ok(sv_core::fs::read_regular(path, limit)?)
}
