//! From exact integer totals to channel moments, the RGB covariance and its
//! eigen-decomposition (principal components), all in `f64`.
//!
//! The covariance is the population covariance over every pixel of every image
//! (divided by the pixel count `N`, not `N - 1`). It is computed from the integer
//! sums as `(N * S_cd - S_c * S_d) / N^2` with the numerator in `i128`, exact, so the
//! only rounding is the final division: no cancellation, whatever the dataset size.
//!
//! Eigenvalues are sorted in descending order and clamped at zero (the covariance is
//! positive semi-definite; the solver can return `-1e-17`). Each eigenvector is a unit
//! vector with a fixed sign: **its component of largest magnitude is positive** (the
//! first such component on an exact tie). LAPACK-based tools print arbitrary signs
//! (fb.resnet.torch's table has `(-0.5675, -0.5808, -0.5836)` as its first column;
//! this convention gives `(0.5675, 0.5808, 0.5836)`); lighting noise draws symmetric
//! alphas, so the sign does not change the augmentation's distribution.

use nalgebra::{Matrix3, SymmetricEigen};

use crate::accum::{Totals, product};

/// Channel moments and principal components on one pixel scale.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Moments {
    /// Mean of each channel (R, G, B).
    pub mean: [f64; 3],
    /// Standard deviation of each channel (population).
    pub std: [f64; 3],
    /// The 3x3 covariance, `covariance[c][d]` for channels `c`, `d`.
    pub covariance: [[f64; 3]; 3],
    /// Eigenvalues of the covariance, descending.
    pub eigenvalues: [f64; 3],
    /// `eigenvectors[i]` is the unit eigenvector (R, G, B components) of
    /// `eigenvalues[i]`, oriented so its largest-magnitude component is positive.
    pub eigenvectors: [[f64; 3]; 3],
}

impl Moments {
    /// Moments on the 0-255 pixel scale. `None` when the totals hold no pixel.
    pub fn from_totals(t: &Totals) -> Option<Moments> {
        if t.pixels == 0 {
            return None;
        }
        let n = i128::from(t.pixels);
        let n2 = (n * n) as f64;
        let mut covariance = [[0.0; 3]; 3];
        for (c, row) in covariance.iter_mut().enumerate() {
            for (d, v) in row.iter_mut().enumerate() {
                let s_cd = i128::from(t.products[product::INDEX[c][d]]);
                let num = n * s_cd - i128::from(t.channel_sums[c]) * i128::from(t.channel_sums[d]);
                *v = num as f64 / n2;
            }
        }
        let mean = t.channel_sums.map(|s| s as f64 / t.pixels as f64);
        let std = [0, 1, 2].map(|c| covariance[c][c].max(0.0).sqrt());
        let (eigenvalues, eigenvectors) = eigen(&covariance);
        Some(Moments {
            mean,
            std,
            covariance,
            eigenvalues,
            eigenvectors,
        })
    }

    /// The same moments for pixels divided by `divisor` (255 gives the [0, 1] scale):
    /// means and standard deviations scale by `1/divisor`, covariance and eigenvalues
    /// by `1/divisor^2`; eigenvectors are unchanged.
    pub fn scaled(&self, divisor: f64) -> Moments {
        let d2 = divisor * divisor;
        Moments {
            mean: self.mean.map(|v| v / divisor),
            std: self.std.map(|v| v / divisor),
            covariance: self.covariance.map(|r| r.map(|v| v / d2)),
            eigenvalues: self.eigenvalues.map(|v| v / d2),
            eigenvectors: self.eigenvectors,
        }
    }
}

/// Eigen-decomposition of a symmetric 3x3 matrix: eigenvalues descending (clamped at
/// zero) and unit eigenvectors oriented by [`orient`].
pub fn eigen(m: &[[f64; 3]; 3]) -> ([f64; 3], [[f64; 3]; 3]) {
    let mat = Matrix3::from_fn(|r, c| m[r][c]);
    let se = SymmetricEigen::new(mat);
    let mut order = [0usize, 1, 2];
    // Descending; total_cmp keeps the order defined even for NaN input.
    order.sort_by(|&a, &b| se.eigenvalues[b].total_cmp(&se.eigenvalues[a]));
    let values = order.map(|i| se.eigenvalues[i].max(0.0));
    let vectors = order.map(|i| {
        let col = se.eigenvectors.column(i);
        let norm = col.norm();
        let v = if norm > 0.0 {
            [col[0] / norm, col[1] / norm, col[2] / norm]
        } else {
            [col[0], col[1], col[2]]
        };
        orient(v)
    });
    (values, vectors)
}

/// The sign convention: flip `v` so its largest-magnitude component (the first one
/// on an exact tie) is positive.
pub fn orient(v: [f64; 3]) -> [f64; 3] {
    let mut k = 0;
    for i in 1..3 {
        if v[i].abs() > v[k].abs() {
            k = i;
        }
    }
    if v[k] < 0.0 { v.map(|x| -x) } else { v }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reconstruct(values: &[f64; 3], vectors: &[[f64; 3]; 3]) -> [[f64; 3]; 3] {
        let mut m = [[0.0; 3]; 3];
        for (lambda, v) in values.iter().zip(vectors) {
            for r in 0..3 {
                for c in 0..3 {
                    m[r][c] += lambda * v[r] * v[c];
                }
            }
        }
        m
    }

    #[test]
    fn decomposition_reconstructs_and_is_orthonormal() {
        // fb.resnet.torch's published eigen-pairs, rebuilt into a covariance.
        let vals = [0.2175, 0.0188, 0.0045];
        let vecs = [
            [-0.5675, -0.5808, -0.5836],
            [0.7192, -0.0045, -0.6948],
            [0.4009, -0.8140, 0.4203],
        ];
        let cov = reconstruct(&vals, &vecs);
        let (values, vectors) = eigen(&cov);
        let back = reconstruct(&values, &vectors);
        for r in 0..3 {
            for c in 0..3 {
                assert!(
                    (back[r][c] - cov[r][c]).abs() < 1e-14,
                    "{back:?} vs {cov:?}"
                );
            }
        }
        for i in 0..3 {
            for j in 0..3 {
                let dot: f64 = (0..3).map(|k| vectors[i][k] * vectors[j][k]).sum();
                let want = if i == j { 1.0 } else { 0.0 };
                assert!((dot - want).abs() < 1e-12, "v{i}.v{j} = {dot}");
            }
        }
        assert!(values[0] >= values[1] && values[1] >= values[2]);
        // The published vectors are orthonormal to about 1e-4.
        assert!((values[0] - 0.2175).abs() < 1e-3);
        // Sign convention: largest-magnitude component positive.
        assert!(vectors[0].iter().all(|&x| x > 0.5));
        assert!(vectors[1][0] > 0.7);
        assert!(vectors[2][1] > 0.8);
    }

    #[test]
    fn orientation_is_fixed_whatever_the_solver_returns() {
        assert_eq!(orient([0.1, -0.9, 0.2]), [-0.1, 0.9, -0.2]);
        assert_eq!(orient([0.1, 0.9, -0.2]), [0.1, 0.9, -0.2]);
        // exact tie: the first component wins
        assert_eq!(orient([-0.5, 0.5, 0.0]), [0.5, -0.5, -0.0]);
    }

    #[test]
    fn exact_covariance_from_totals() {
        // Pixels (R, G, B): (0, 0, 0) and (2, 4, 6): mean (1, 2, 3),
        // covariance = [1 2 3]^T [1 2 3].
        let t = Totals {
            side: 1,
            images: 2,
            pixels: 2,
            channel_sums: [2, 4, 6],
            products: [4, 16, 36, 8, 12, 24],
        };
        let m = Moments::from_totals(&t).unwrap();
        assert_eq!(m.mean, [1.0, 2.0, 3.0]);
        assert_eq!(
            m.covariance,
            [[1.0, 2.0, 3.0], [2.0, 4.0, 6.0], [3.0, 6.0, 9.0]]
        );
        assert_eq!(m.std, [1.0, 2.0, 3.0]);
        assert!((m.eigenvalues[0] - 14.0).abs() < 1e-12);
        assert!(m.eigenvalues[1].abs() < 1e-12 && m.eigenvalues[2].abs() < 1e-12);
        let k = 14f64.sqrt();
        for (got, want) in m.eigenvectors[0].iter().zip([1.0 / k, 2.0 / k, 3.0 / k]) {
            assert!((got - want).abs() < 1e-12);
        }
        let u = m.scaled(255.0);
        assert!((u.eigenvalues[0] - 14.0 / 65025.0).abs() < 1e-15);
        assert_eq!(u.eigenvectors, m.eigenvectors);
        let empty = Totals {
            pixels: 0,
            images: 0,
            ..t
        };
        assert!(Moments::from_totals(&empty).is_none());
    }
}
