//! PCA lighting ("fancy PCA", paper section 4.1): an RGB offset along the principal
//! components of the training set's pixel colours, drawn afresh per image per use.

use serde::{Deserialize, Serialize};

use crate::AugmentError;

/// How the eigenvalues scale the offset; the two published conventions differ by
/// about 2x in strength (PAPER.md "Data").
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LightingConvention {
    /// The paper as fb.resnet.torch implements it: on `[0, 1]` pixels add
    /// `eigvec * (alpha * eigval)`; in grey levels that is 255 times as much. With
    /// fb.resnet.torch's constants and std 0.1: about 5.5 grey levels along the first
    /// component.
    #[default]
    Paper,
    /// cuda-convnet2 (the authors' later code): the offset is scaled by
    /// `sqrt(eigval)` on the 0-255 scale, `255 * eigvec * (alpha * sqrt(eigval))`
    /// with `eigval` on the `[0, 1]` scale: about 12 grey levels with the same
    /// constants.
    CudaConvnet2,
}

/// PCA lighting settings. `eigval` are the eigenvalues of the 3x3 covariance of RGB
/// pixel values scaled to `[0, 1]` (largest first); `eigvec[i][j]` is component `i`
/// (R, G, B) of eigenvector `j` (eigenvectors are the columns, as fb.resnet.torch
/// lays them out).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Lighting {
    /// Eigenvalues of the `[0, 1]`-scale RGB covariance.
    pub eigval: [f32; 3],
    /// Eigenvectors as columns: `eigvec[channel][component]`.
    pub eigvec: [[f32; 3]; 3],
    /// How `eigval` scales the offset.
    pub convention: LightingConvention,
    /// Standard deviation of the alphas (0.1 in the paper).
    pub std: f32,
}

impl Default for Lighting {
    fn default() -> Self {
        Lighting::fb_resnet()
    }
}

impl Lighting {
    /// fb.resnet.torch's ImageNet constants, paper convention, std 0.1.
    pub fn fb_resnet() -> Lighting {
        Lighting {
            eigval: [0.2175, 0.0188, 0.0045],
            eigvec: [
                [-0.5675, 0.7192, 0.4009],
                [-0.5808, -0.0045, -0.8140],
                [-0.5836, -0.6948, 0.4203],
            ],
            convention: LightingConvention::Paper,
            std: 0.1,
        }
    }

    /// Check the settings are usable: finite values, non-negative eigenvalues and std.
    pub fn validate(&self) -> Result<(), AugmentError> {
        let finite = self
            .eigval
            .iter()
            .chain(self.eigvec.iter().flatten())
            .chain(std::iter::once(&self.std))
            .all(|v| v.is_finite());
        if !finite {
            return Err(AugmentError::Config(
                "lighting eigenvalues, eigenvectors and std must be finite".into(),
            ));
        }
        if self.eigval.iter().any(|&v| v < 0.0) || self.std < 0.0 {
            return Err(AugmentError::Config(
                "lighting eigenvalues and std must not be negative".into(),
            ));
        }
        Ok(())
    }

    /// The RGB offset, in grey levels (0-255 scale), for standard-normal draws
    /// `alpha_unit` (the alphas are `std * alpha_unit`).
    pub fn offset(&self, alpha_unit: [f32; 3]) -> [f32; 3] {
        let mut weight = [0f32; 3];
        for j in 0..3 {
            let scale = match self.convention {
                LightingConvention::Paper => self.eigval[j],
                LightingConvention::CudaConvnet2 => self.eigval[j].max(0.0).sqrt(),
            };
            weight[j] = 255.0 * self.std * alpha_unit[j] * scale;
        }
        let mut out = [0f32; 3];
        for (i, o) in out.iter_mut().enumerate() {
            *o = (0..3).map(|j| self.eigvec[i][j] * weight[j]).sum();
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paper_offset_by_hand() {
        let l = Lighting::fb_resnet();
        // alpha = (0.1, 0, 0): 255 * eigvec[:,0] * 0.1 * 0.2175
        let o = l.offset([1.0, 0.0, 0.0]);
        let k = 255.0 * 0.1 * 0.2175;
        for (i, want) in [-0.5675f32, -0.5808, -0.5836].iter().enumerate() {
            assert!((o[i] - want * k).abs() < 1e-4, "{o:?}");
        }
        // linear in the draws, summed over components
        let o2 = l.offset([0.0, -2.0, 1.0]);
        for (i, got) in o2.iter().enumerate() {
            let want =
                255.0 * 0.1 * (l.eigvec[i][1] * -2.0 * l.eigval[1] + l.eigvec[i][2] * l.eigval[2]);
            assert!((got - want).abs() < 1e-4);
        }
    }

    #[test]
    fn cuda_convnet2_uses_sqrt() {
        let mut l = Lighting::fb_resnet();
        l.convention = LightingConvention::CudaConvnet2;
        let o = l.offset([1.0, 0.0, 0.0]);
        let k = 255.0 * 0.1 * 0.2175f32.sqrt();
        assert!((o[0] - (-0.5675 * k)).abs() < 1e-3);
        // about 12 grey levels of noise along the first component vs about 5.5
        let norm = |v: [f32; 3]| v.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm(o) - 11.9).abs() < 0.2, "{}", norm(o));
        assert!((norm(Lighting::fb_resnet().offset([1.0, 0.0, 0.0])) - 5.55).abs() < 0.05);
    }

    #[test]
    fn zero_std_or_draws_give_zero() {
        let mut l = Lighting::fb_resnet();
        assert_eq!(l.offset([0.0; 3]), [0.0; 3]);
        l.std = 0.0;
        assert_eq!(l.offset([1.0, 2.0, 3.0]), [0.0; 3]);
    }

    #[test]
    fn validate_rejects_nonsense() {
        let mut l = Lighting::fb_resnet();
        assert!(l.validate().is_ok());
        l.eigval[1] = -1.0;
        assert!(l.validate().is_err());
        l.eigval[1] = f32::NAN;
        assert!(l.validate().is_err());
    }

    #[test]
    fn convention_names() {
        let s = serde_json::to_string(&LightingConvention::CudaConvnet2).unwrap();
        assert_eq!(s, "\"cuda-convnet2\"");
        let l: Lighting =
            serde_json::from_str(&serde_json::to_string(&Lighting::fb_resnet()).unwrap()).unwrap();
        assert_eq!(l, Lighting::fb_resnet());
    }
}
