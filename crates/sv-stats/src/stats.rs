//! The statistics file (`pca.json`): what `supervision pca compute` writes and the
//! pipeline reads. Its schema is [`PcaStats`]; the crate header shows an example.

use std::path::Path;

use serde::{Deserialize, Serialize};
use sv_core::Split;

use crate::StatsError;
use crate::accum::Totals;
use crate::pca::Moments;

/// Value of the `format` field.
pub const FORMAT_NAME: &str = "supervision-pca";
/// Schema version written by this crate; [`PcaStats::load`] accepts only this one.
pub const VERSION: u32 = 1;
/// Standard deviation of the lighting alphas in the paper (and both conventions).
pub const PAPER_ALPHA_STD: f64 = 0.1;
/// The largest statistics file read (a real one is about 3 KiB).
const MAX_STATS_BYTES: u64 = 1 << 20;

/// Dataset statistics for mean subtraction, normalisation and PCA lighting.
///
/// Statistics are over every pixel of every image used (`pixels` of them per
/// channel), channels in RGB order; the covariance is the population covariance
/// (divided by `pixels`). Values are given twice: `scale_255` for pixels as stored
/// (0-255), `scale_unit` for pixels divided by 255 (the [0, 1] scale of
/// fb.resnet.torch and torchvision).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PcaStats {
    /// Always [`FORMAT_NAME`].
    pub format: String,
    /// Schema version, [`VERSION`].
    pub version: u32,
    /// The dataset the statistics were computed over.
    pub source: Source,
    /// The subset drawn for a quick estimate; `null` when every record was used.
    pub sample: Option<SampleInfo>,
    /// Whether every record's CRC-32 was checked during the pass.
    pub verified: bool,
    /// Images used.
    pub images: u64,
    /// Pixels used per channel: `images x side x side`.
    pub pixels: u64,
    /// Image side in pixels.
    pub side: u32,
    /// Channel order of every 3-vector and 3x3 matrix: always `"RGB"`.
    pub channel_order: String,
    /// Moments for pixel values 0-255.
    pub scale_255: ScaleStats,
    /// Moments for pixel values in [0, 1] (0-255 values divided by 255).
    pub scale_unit: ScaleStats,
    /// `eigenvectors[i]` is the unit eigenvector (R, G, B components) of the
    /// covariance for `eigenvalues[i]` (either scale), oriented so its
    /// largest-magnitude component is positive.
    pub eigenvectors: [[f64; 3]; 3],
    /// PCA lighting parameters for the conventions the pipeline offers.
    pub lighting: Lighting,
    /// The per-pixel mean image file, when one was written.
    pub mean_image: Option<MeanImageInfo>,
}

/// The dataset the statistics describe.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Source {
    /// The dataset directory, as given on the command line.
    pub dir: String,
    /// Train or val.
    pub split: Split,
    /// Payload codec of the shards (`raw` or `jpeg`).
    pub codec: String,
    /// Records in the dataset (all of them, even when a sample was used).
    pub records: u64,
    /// Shard files in the dataset.
    pub shards: u64,
}

/// How a sample was drawn.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SampleInfo {
    /// Images asked for (`--sample`); `images` is smaller when the dataset is.
    pub requested: u64,
    /// Seed of the draw: the same seed and dataset give the same subset.
    pub seed: u64,
}

/// Channel moments and eigenvalues on one pixel scale.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct ScaleStats {
    /// Per-channel mean.
    pub mean: [f64; 3],
    /// Per-channel standard deviation (population).
    pub std: [f64; 3],
    /// RGB covariance, `covariance[c][d]`.
    pub covariance: [[f64; 3]; 3],
    /// Eigenvalues of the covariance, descending.
    pub eigenvalues: [f64; 3],
}

/// The PCA lighting noise of the paper (section 4.1): for each image, each time it
/// is used, draw `alpha_i ~ N(0, alpha_std)` and add
/// `sum_i eigenvectors[i] * alpha_i * magnitudes[i]` to every pixel.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Lighting {
    /// Standard deviation of the alphas (0.1 in the paper).
    pub alpha_std: f64,
    /// `magnitudes = eigenvalues` on the [0, 1] scale (the paper's formula as
    /// fb.resnet.torch implements it): the default.
    pub paper: LightingConvention,
    /// `magnitudes = sqrt(eigenvalues)` on the 0-255 scale (the authors' later
    /// cuda-convnet2): about twice the noise of `paper` on ImageNet.
    pub cuda_convnet2: LightingConvention,
}

/// One lighting convention's magnitudes, given for both pixel scales so that the
/// offset can be added to pixels of either scale without conversions.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LightingConvention {
    /// What the convention is, in words.
    pub description: String,
    /// Magnitudes for offsets added to [0, 1] pixels.
    pub magnitudes_unit: [f64; 3],
    /// Magnitudes for offsets added to 0-255 pixels (`255 x magnitudes_unit`).
    pub magnitudes_255: [f64; 3],
}

/// The mean image file and its layout.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MeanImageInfo {
    /// Path of the `.npy` file, as given on the command line.
    pub file: String,
    /// Axis order, always `"CHW"` (Caffe's).
    pub layout: String,
    /// `[3, side, side]`.
    pub shape: [u32; 3],
    /// numpy dtype, `"<f4"`.
    pub dtype: String,
    /// Pixel scale of the values, `"0-255"`.
    pub scale: String,
}

impl MeanImageInfo {
    /// The description of a mean image written by [`crate::MeanImage::save_npy`].
    pub fn new(file: impl Into<String>, side: u32) -> MeanImageInfo {
        MeanImageInfo {
            file: file.into(),
            layout: "CHW".into(),
            shape: [3, side, side],
            dtype: "<f4".into(),
            scale: "0-255".into(),
        }
    }
}

/// Which lighting convention to apply.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Convention {
    /// Eigenvalue magnitudes on the [0, 1] scale (paper, fb.resnet.torch).
    Paper,
    /// Square-root magnitudes on the 0-255 scale (cuda-convnet2).
    CudaConvnet2,
}

impl std::str::FromStr for Convention {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "paper" => Ok(Convention::Paper),
            "cuda-convnet2" => Ok(Convention::CudaConvnet2),
            other => Err(format!(
                "unknown lighting convention {other:?} (expected paper or cuda-convnet2)"
            )),
        }
    }
}

/// The pixel scale an offset is meant for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PixelScale {
    /// Pixels in [0, 1].
    Unit,
    /// Pixels in 0-255.
    Byte,
}

impl PcaStats {
    /// Statistics from an accumulator's totals. `None` when they hold no pixel.
    pub fn from_totals(
        totals: &Totals,
        source: Source,
        sample: Option<SampleInfo>,
        verified: bool,
    ) -> Option<PcaStats> {
        let m255 = Moments::from_totals(totals)?;
        let unit = m255.scaled(255.0);
        let scale = |m: &Moments| ScaleStats {
            mean: m.mean,
            std: m.std,
            covariance: m.covariance,
            eigenvalues: m.eigenvalues,
        };
        let paper_unit = unit.eigenvalues;
        let convnet_255 = m255.eigenvalues.map(f64::sqrt);
        Some(PcaStats {
            format: FORMAT_NAME.into(),
            version: VERSION,
            source,
            sample,
            verified,
            images: totals.images,
            pixels: totals.pixels,
            side: totals.side,
            channel_order: "RGB".into(),
            scale_255: scale(&m255),
            scale_unit: scale(&unit),
            eigenvectors: m255.eigenvectors,
            lighting: Lighting {
                alpha_std: PAPER_ALPHA_STD,
                paper: LightingConvention {
                    description: "paper / fb.resnet.torch: offset = sum_i eigenvectors[i] * \
                                  alpha_i * eigenvalue_i, eigenvalues of [0,1] pixels, \
                                  alpha_i ~ N(0, alpha_std)"
                        .into(),
                    magnitudes_unit: paper_unit,
                    magnitudes_255: paper_unit.map(|v| v * 255.0),
                },
                cuda_convnet2: LightingConvention {
                    description: "cuda-convnet2: offset = sum_i eigenvectors[i] * alpha_i * \
                                  sqrt(eigenvalue_i), eigenvalues of 0-255 pixels, \
                                  alpha_i ~ N(0, alpha_std)"
                        .into(),
                    magnitudes_unit: convnet_255.map(|v| v / 255.0),
                    magnitudes_255: convnet_255,
                },
            },
            mean_image: None,
        })
    }

    /// The magnitudes of `convention` for pixels of `scale`.
    pub fn magnitudes(&self, convention: Convention, scale: PixelScale) -> [f64; 3] {
        let c = match convention {
            Convention::Paper => &self.lighting.paper,
            Convention::CudaConvnet2 => &self.lighting.cuda_convnet2,
        };
        match scale {
            PixelScale::Unit => c.magnitudes_unit,
            PixelScale::Byte => c.magnitudes_255,
        }
    }

    /// The RGB offset to add to every pixel of one image, for alphas drawn from
    /// `N(0, lighting.alpha_std)`: `sum_i eigenvectors[i] * alphas[i] * magnitudes[i]`.
    pub fn lighting_offset(
        &self,
        convention: Convention,
        scale: PixelScale,
        alphas: [f64; 3],
    ) -> [f64; 3] {
        let mag = self.magnitudes(convention, scale);
        let mut out = [0.0; 3];
        for i in 0..3 {
            for (o, v) in out.iter_mut().zip(self.eigenvectors[i]) {
                *o += v * alphas[i] * mag[i];
            }
        }
        out
    }

    /// The PCA lighting of `convention` as the augmentation applies it: the
    /// eigenvectors as columns, [0, 1]-scale eigenvalues and the alphas' std.
    pub fn lighting(&self, convention: sv_augment::LightingConvention) -> sv_augment::Lighting {
        let mut eigvec = [[0f32; 3]; 3];
        for (i, v) in self.eigenvectors.iter().enumerate() {
            for (c, x) in v.iter().enumerate() {
                eigvec[c][i] = *x as f32;
            }
        }
        sv_augment::Lighting {
            eigval: self.scale_unit.eigenvalues.map(|v| v as f32),
            eigvec,
            convention,
            std: self.lighting.alpha_std as f32,
        }
    }

    /// Pretty JSON text with a final newline.
    pub fn to_json(&self) -> String {
        // Serialising plain structs of numbers and strings cannot fail.
        let mut s = serde_json::to_string_pretty(self).unwrap_or_default();
        s.push('\n');
        s
    }

    /// Write the statistics to `path` atomically (temporary file, sync, rename).
    /// Statistics that could not be used (see [`PcaStats::load`]) are refused, not
    /// written.
    pub fn save(&self, path: &Path) -> Result<(), StatsError> {
        self.validate(path)?;
        crate::write_atomic(path, self.to_json().as_bytes())
    }

    /// Read and check a statistics file: format name and version, at least one
    /// image, and values that can normalise and light images: every number finite,
    /// standard deviations positive, means within the pixel range, eigenvalues and
    /// lighting magnitudes not negative, eigenvectors of unit length. The error names
    /// the file and the field.
    pub fn load(path: impl AsRef<Path>) -> Result<PcaStats, StatsError> {
        let path = path.as_ref();
        let text = crate::read_file(path, MAX_STATS_BYTES)?;
        let stats: PcaStats = serde_json::from_slice(&text).map_err(|e| StatsError::Json {
            path: path.to_path_buf(),
            source: e,
        })?;
        stats.validate(path)?;
        Ok(stats)
    }

    /// The checks of [`PcaStats::load`], for statistics about to be written to
    /// `path` (named in the error).
    pub fn validate(&self, path: &Path) -> Result<(), StatsError> {
        if self.format != FORMAT_NAME {
            return Err(StatsError::format(
                path,
                format!("format is {:?}, expected {FORMAT_NAME:?}", self.format),
            ));
        }
        if self.version != VERSION {
            return Err(StatsError::format(
                path,
                format!(
                    "schema version {} is not supported (this build reads version {VERSION})",
                    self.version
                ),
            ));
        }
        if self.images == 0 || self.pixels == 0 {
            return Err(StatsError::format(path, "statistics over zero images"));
        }
        let check = |field: &str, values: &[f64], ok: fn(f64) -> bool, want: &str| match values
            .iter()
            .position(|&v| !(v.is_finite() && ok(v)))
        {
            None => Ok(()),
            Some(i) => {
                let at = if values.len() > 1 {
                    format!("{field}[{i}]")
                } else {
                    field.to_string()
                };
                Err(StatsError::format(
                    path,
                    format!("{at} is {}, expected {want}", values[i]),
                ))
            }
        };
        let positive = |v: f64| v > 0.0;
        let not_negative = |v: f64| v >= 0.0;
        for (name, s, top) in [
            ("scale_255", &self.scale_255, 255.0),
            ("scale_unit", &self.scale_unit, 1.0),
        ] {
            let within: fn(f64) -> bool = if top == 1.0 {
                |v| (0.0..=1.0).contains(&v)
            } else {
                |v| (0.0..=255.0).contains(&v)
            };
            check(
                &format!("{name}.mean"),
                &s.mean,
                within,
                &format!("a pixel mean within 0-{top}"),
            )?;
            check(
                &format!("{name}.std"),
                &s.std,
                positive,
                "a positive number (a standard deviation of 0 cannot normalise: every \
                 image would have the same value in that channel)",
            )?;
            for (r, row) in s.covariance.iter().enumerate() {
                check(
                    &format!("{name}.covariance[{r}]"),
                    row,
                    |_| true,
                    "a finite number",
                )?;
            }
            check(
                &format!("{name}.eigenvalues"),
                &s.eigenvalues,
                not_negative,
                "a number >= 0 (a covariance has no negative eigenvalue)",
            )?;
        }
        for (i, v) in self.eigenvectors.iter().enumerate() {
            check(
                &format!("eigenvectors[{i}]"),
                v,
                |_| true,
                "a finite number",
            )?;
            let norm = v.iter().map(|x| x * x).sum::<f64>().sqrt();
            if (norm - 1.0).abs() > 1e-6 {
                return Err(StatsError::format(
                    path,
                    format!("eigenvectors[{i}] has norm {norm}, expected 1"),
                ));
            }
        }
        check(
            "lighting.alpha_std",
            &[self.lighting.alpha_std],
            not_negative,
            "a number >= 0",
        )?;
        for (name, c) in [
            ("paper", &self.lighting.paper),
            ("cuda_convnet2", &self.lighting.cuda_convnet2),
        ] {
            for (scale, m) in [
                ("magnitudes_unit", &c.magnitudes_unit),
                ("magnitudes_255", &c.magnitudes_255),
            ] {
                check(
                    &format!("lighting.{name}.{scale}"),
                    m,
                    not_negative,
                    "a number >= 0",
                )?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn example() -> PcaStats {
        let t = Totals {
            side: 1,
            images: 3,
            pixels: 3,
            channel_sums: [3, 30, 300],
            products: [5, 302, 30_002, 32, 302, 3_002],
        };
        let source = Source {
            dir: "shards/train".into(),
            split: Split::Train,
            codec: "raw".into(),
            records: 3,
            shards: 1,
        };
        PcaStats::from_totals(&t, source, None, true).unwrap()
    }

    #[test]
    fn json_round_trips_exactly() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pca.json");
        let mut s = example();
        s.mean_image = Some(MeanImageInfo::new("mean.npy", 1));
        s.save(&path).unwrap();
        let back = PcaStats::load(&path).unwrap();
        assert_eq!(back, s);
        let v: serde_json::Value = serde_json::from_str(&s.to_json()).unwrap();
        assert_eq!(v["format"], "supervision-pca");
        assert_eq!(v["channel_order"], "RGB");
        assert!(v["scale_unit"]["eigenvalues"].is_array());
    }

    /// The augmentation's lighting from these statistics adds the same offset as
    /// `lighting_offset` (the augmentation takes unit draws and scales them by the std).
    #[test]
    fn lighting_for_the_augmentation_matches_the_offsets() {
        let s = example();
        let unit = [0.7f64, -1.3, 2.1];
        let alphas = unit.map(|a| a * s.lighting.alpha_std);
        for (aug, conv) in [
            (sv_augment::LightingConvention::Paper, Convention::Paper),
            (
                sv_augment::LightingConvention::CudaConvnet2,
                Convention::CudaConvnet2,
            ),
        ] {
            let got = s.lighting(aug).offset(unit.map(|a| a as f32));
            let want = s.lighting_offset(conv, PixelScale::Byte, alphas);
            for c in 0..3 {
                assert!((f64::from(got[c]) - want[c]).abs() < 1e-3 * want[c].abs().max(1.0));
            }
        }
    }

    #[test]
    fn conventions_relate_as_documented() {
        let s = example();
        let l255 = s.scale_255.eigenvalues;
        for i in 0..3 {
            let paper = s.lighting.paper.magnitudes_unit[i];
            assert!((paper - l255[i] / 65025.0).abs() <= 1e-15 * l255[0].max(1.0));
            let cc = s.lighting.cuda_convnet2.magnitudes_255[i];
            assert!((cc - l255[i].sqrt()).abs() < 1e-12);
            assert!((s.lighting.cuda_convnet2.magnitudes_unit[i] * 255.0 - cc).abs() < 1e-12);
        }
        // An offset along the first eigenvector only.
        let off = s.lighting_offset(Convention::Paper, PixelScale::Byte, [1.0, 0.0, 0.0]);
        let mag = s.lighting.paper.magnitudes_255[0];
        for (o, v) in off.iter().zip(s.eigenvectors[0]) {
            assert!((o - v * mag).abs() < 1e-12);
        }
        let u = s.lighting_offset(Convention::Paper, PixelScale::Unit, [0.3, -0.2, 0.1]);
        let b = s.lighting_offset(Convention::Paper, PixelScale::Byte, [0.3, -0.2, 0.1]);
        for (u, b) in u.iter().zip(b) {
            assert!((u * 255.0 - b).abs() < 1e-9);
        }
        assert_eq!("cuda-convnet2".parse(), Ok(Convention::CudaConvnet2));
        assert!("caffe".parse::<Convention>().is_err());
    }

    #[test]
    fn load_rejects_other_formats_and_versions() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pca.json");
        let mut s = example();
        s.version = 2;
        std::fs::write(&path, s.to_json()).unwrap();
        let err = PcaStats::load(&path).unwrap_err().to_string();
        assert!(err.contains("schema version 2"), "{err}");
        let mut s = example();
        s.format = "something-else".into();
        std::fs::write(&path, s.to_json()).unwrap();
        let err = PcaStats::load(&path).unwrap_err().to_string();
        assert!(err.contains("something-else"), "{err}");
        std::fs::write(&path, "{\"format\": 3").unwrap();
        let err = PcaStats::load(&path).unwrap_err();
        assert!(matches!(err, StatsError::Json { .. }), "{err}");
        let err = PcaStats::load(dir.path().join("missing.json")).unwrap_err();
        assert!(
            err.to_string().contains("missing.json: open failed"),
            "{err}"
        );
    }

    #[test]
    fn load_names_the_file_and_field_that_cannot_be_used() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pca.json");
        type Edit = fn(&mut PcaStats);
        let cases: &[(&str, Edit)] = &[
            ("scale_255.std[1] is 0,", |s| s.scale_255.std[1] = 0.0),
            ("scale_unit.std[2] is -0.1,", |s| s.scale_unit.std[2] = -0.1),
            ("scale_255.std[0] is NaN", |s| s.scale_255.std[0] = f64::NAN),
            ("scale_unit.mean[0] is 1.5,", |s| s.scale_unit.mean[0] = 1.5),
            ("scale_255.covariance[2][1] is inf", |s| {
                s.scale_255.covariance[2][1] = f64::INFINITY
            }),
            ("scale_255.eigenvalues[2] is -3", |s| {
                s.scale_255.eigenvalues[2] = -3.0
            }),
            ("lighting.alpha_std is -0.1", |s| {
                s.lighting.alpha_std = -0.1
            }),
            ("lighting.cuda_convnet2.magnitudes_255[0] is -1", |s| {
                s.lighting.cuda_convnet2.magnitudes_255[0] = -1.0
            }),
            ("eigenvectors[1] has norm", |s| {
                s.eigenvectors[1] = [1.0, 1.0, 0.0]
            }),
        ];
        for (want, edit) in cases {
            let mut s = example();
            edit(&mut s);
            // serde_json writes non-finite numbers as null; test those on the
            // in-memory value, the others through a file.
            let err = s.validate(&path).unwrap_err().to_string();
            assert!(
                err.contains("pca.json") && err.contains(want),
                "{want}: {err}"
            );
            let err = s.save(&path).unwrap_err().to_string();
            assert!(err.contains(want), "{want}: {err}");
            assert!(!path.exists(), "{want}: written although unusable");
            if s.to_json().contains("null") {
                continue;
            }
            std::fs::write(&path, s.to_json()).unwrap();
            let err = PcaStats::load(&path).unwrap_err().to_string();
            assert!(
                err.contains("pca.json") && err.contains(want),
                "{want}: {err}"
            );
            std::fs::remove_file(&path).unwrap();
        }
    }

    #[cfg(unix)]
    #[test]
    fn load_refuses_a_folder_or_fifo_without_waiting() {
        let dir = tempfile::tempdir().unwrap();
        let err = PcaStats::load(dir.path()).unwrap_err();
        assert!(err.to_string().contains("is a directory"), "{err}");
        let fifo = dir.path().join("pca.json");
        let status = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap();
        assert!(status.success());
        let err = PcaStats::load(&fifo).unwrap_err().to_string();
        assert!(err.contains("pca.json is a FIFO"), "{err}");
        let err = crate::MeanImage::load_npy(&fifo).unwrap_err().to_string();
        assert!(err.contains("pca.json is a FIFO"), "{err}");
    }
}
