//! The paper's update rule (section 5), written out on tensors:
//!
//! `v <- momentum * v - weight_decay * lr * w - lr * grad;  w <- w + v`
//!
//! Weight decay on biases. The formula decays `w`, every parameter: that is the
//! default here. Caffe's reference `bvlc_alexnet` exempts biases (`decay_mult: 0` on
//! every bias blob); [`SgdConfig::decay_biases`] `= false` follows it.
//!
//! libtorch's SGD folds the learning rate in differently (it keeps `v` without `lr`),
//! which equals this rule only while `lr` is constant; after a schedule drop the two
//! diverge, so the rule is hand-written and its velocities are saved in checkpoints.

use serde::{Deserialize, Serialize};
use tch::Tensor;

use crate::error::{Result, TorchContext, TrainError};

/// Momentum and weight decay of the update.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct SgdConfig {
    /// Momentum (0.9 in the paper).
    pub momentum: f64,
    /// Weight decay (0.0005 in the paper).
    pub weight_decay: f64,
    /// Decay biases too (the paper's formula, the default) or only weights (Caffe's
    /// bvlc_alexnet, `decay_mult: 0` on biases).
    #[serde(default = "decay_biases_default")]
    pub decay_biases: bool,
}

fn decay_biases_default() -> bool {
    true
}

impl Default for SgdConfig {
    fn default() -> Self {
        SgdConfig {
            momentum: 0.9,
            weight_decay: 0.0005,
            decay_biases: true,
        }
    }
}

/// Velocities for every parameter and the rule that updates them.
pub struct PaperSgd {
    config: SgdConfig,
    velocities: Vec<Tensor>,
    decayed: Vec<bool>,
}

impl std::fmt::Debug for PaperSgd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PaperSgd")
            .field("config", &self.config)
            .field("tensors", &self.velocities.len())
            .finish()
    }
}

impl PaperSgd {
    /// Zero velocities shaped like `params` (named `names`: those ending in `.bias`
    /// are biases).
    pub fn new(params: &[Tensor], names: &[String], config: SgdConfig) -> Result<PaperSgd> {
        let velocities = params
            .iter()
            .map(|p| p.f_zeros_like().ctx(|| "allocate velocity".into()))
            .collect::<Result<Vec<_>>>()?;
        let decayed = names
            .iter()
            .map(|n| config.decay_biases || !n.ends_with(".bias"))
            .collect();
        Ok(PaperSgd {
            config,
            velocities,
            decayed,
        })
    }

    /// The momentum buffers, in the order of the parameters.
    pub fn velocities(&self) -> &[Tensor] {
        &self.velocities
    }

    /// Replaces the velocities (from a checkpoint); shapes must match.
    pub fn load_velocities(&mut self, values: Vec<Tensor>) -> Result<()> {
        if values.len() != self.velocities.len() {
            return Err(TrainError::Config(format!(
                "{} velocities given, the model has {}",
                values.len(),
                self.velocities.len()
            )));
        }
        let _guard = tch::no_grad_guard();
        for (v, new) in self.velocities.iter_mut().zip(values) {
            if v.size() != new.size() {
                return Err(TrainError::Config(format!(
                    "velocity shape {:?} vs {:?}",
                    new.size(),
                    v.size()
                )));
            }
            v.f_copy_(&new).ctx(|| "load velocity".into())?;
        }
        Ok(())
    }

    /// Applies one update with learning rate `lr` to `params` (whose gradients were just
    /// computed), then clears the gradients.
    pub fn step(&mut self, params: &[Tensor], lr: f64) -> Result<()> {
        let _guard = tch::no_grad_guard();
        for ((w, v), &decayed) in params
            .iter()
            .zip(self.velocities.iter_mut())
            .zip(&self.decayed)
        {
            let decay = if decayed {
                -self.config.weight_decay * lr
            } else {
                0.0
            };
            let grad = w.grad();
            if !grad.defined() {
                continue;
            }
            (|| -> Result<(), tch::TchError> {
                let _ = v.f_mul_scalar_(self.config.momentum)?;
                let _ = v.f_add_(&w.f_mul_scalar(decay)?)?;
                let _ = v.f_add_(&grad.f_mul_scalar(-lr)?)?;
                let mut w = w.shallow_clone();
                let _ = w.f_add_(v)?;
                let mut grad = grad;
                let _ = grad.f_zero_()?;
                Ok(())
            })()
            .ctx(|| "optimiser step".into())?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind};

    #[test]
    fn one_step_matches_a_hand_computation() {
        // loss = sum(w * c) makes grad = c exactly.
        let w = Tensor::from_slice(&[1.0f64, -2.0, 0.5]).set_requires_grad(true);
        let c = Tensor::from_slice(&[0.3f64, 0.1, -4.0]);
        let cfg = SgdConfig::default();
        let mut opt = PaperSgd::new(std::slice::from_ref(&w), &["w.weight".into()], cfg).unwrap();
        let lr = 0.01;
        // Step 1: v = -0.0005*0.01*w - 0.01*c ; w += v
        (&w * &c).sum(Kind::Double).backward();
        opt.step(std::slice::from_ref(&w), lr).unwrap();
        let w0 = [1.0, -2.0, 0.5];
        let cv = [0.3, 0.1, -4.0];
        let v1: Vec<f64> = (0..3).map(|i| -0.0005 * lr * w0[i] - lr * cv[i]).collect();
        let w1: Vec<f64> = (0..3).map(|i| w0[i] + v1[i]).collect();
        let got: Vec<f64> = Vec::try_from(&w.detach()).unwrap();
        for i in 0..3 {
            assert!(
                (got[i] - w1[i]).abs() < 1e-15,
                "step 1, {i}: {} vs {}",
                got[i],
                w1[i]
            );
        }
        // Step 2 with a different lr: v = 0.9 v1 - 0.0005*lr2*w1 - lr2*c
        let lr2 = 0.001;
        (&w * &c).sum(Kind::Double).backward();
        opt.step(std::slice::from_ref(&w), lr2).unwrap();
        let got: Vec<f64> = Vec::try_from(&w.detach()).unwrap();
        for i in 0..3 {
            let v2 = 0.9 * v1[i] - 0.0005 * lr2 * w1[i] - lr2 * cv[i];
            let w2 = w1[i] + v2;
            assert!(
                (got[i] - w2).abs() < 1e-15,
                "step 2, {i}: {} vs {w2}",
                got[i]
            );
        }
        let v: Vec<f64> = Vec::try_from(&opt.velocities()[0]).unwrap();
        assert!((v[2] - (0.9 * v1[2] - 0.0005 * lr2 * w1[2] - lr2 * cv[2])).abs() < 1e-15);
        assert_eq!(
            w.grad().abs().sum(Kind::Double).double_value(&[]),
            0.0,
            "gradients cleared"
        );
        let _ = Device::Cpu;
    }

    /// With `decay_biases: false` (Caffe's bvlc_alexnet) a bias moves by the gradient
    /// term alone; a weight is still decayed. With the default both are.
    #[test]
    fn bias_decay_is_a_choice() {
        for decay_biases in [true, false] {
            let w = Tensor::from_slice(&[2.0f64]).set_requires_grad(true);
            let b = Tensor::from_slice(&[3.0f64]).set_requires_grad(true);
            let cfg = SgdConfig {
                decay_biases,
                ..SgdConfig::default()
            };
            let names = ["fc.weight".to_string(), "fc.bias".to_string()];
            let params = [w.shallow_clone(), b.shallow_clone()];
            let mut opt = PaperSgd::new(&params, &names, cfg).unwrap();
            (&w * 0.5 + &b * 0.25).sum(Kind::Double).backward();
            opt.step(&params, 0.1).unwrap();
            let w1 = w.double_value(&[0]);
            let b1 = b.double_value(&[0]);
            assert!((w1 - (2.0 - 0.0005 * 0.1 * 2.0 - 0.1 * 0.5)).abs() < 1e-15);
            let want_b = if decay_biases {
                3.0 - 0.0005 * 0.1 * 3.0 - 0.1 * 0.25
            } else {
                3.0 - 0.1 * 0.25
            };
            assert!(
                (b1 - want_b).abs() < 1e-15,
                "decay_biases {decay_biases}: {b1}"
            );
        }
    }
}
