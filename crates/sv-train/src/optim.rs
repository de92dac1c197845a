//! The paper's update rule (section 5), on the flat parameter buffers:
//!
//! `v <- momentum * v - weight_decay * lr * w - lr * grad;  w <- w + v`
//!
//! libtorch's SGD folds the learning rate in differently (it keeps `v` without `lr`),
//! which equals this rule only while `lr` is constant; after a schedule drop the two
//! diverge, so the rule is written out and its velocity is saved in checkpoints.
//!
//! Kernels. Master weights `w`, velocity `v` and gradients `g` are each one flat
//! buffer ([`crate::params`]), so a step is four element-wise kernels for the whole
//! model (`v *= m`; `v += w * c_w` over the decayed range; `v += g * c_g`; `w += v`),
//! with the coefficients as 0-dim device tensors and no temporary the size of a
//! layer. A bf16/fp16 gradient is read into the fp32 velocity as it is added.
//!
//! Weight decay on biases. The formula decays `w`, every parameter: that is the
//! default here. Caffe's reference `bvlc_alexnet` exempts biases (`decay_mult: 0` on
//! every bias blob); [`SgdConfig::decay_biases`] `= false` follows it (biases sit
//! after the weights in the flat buffer, so the decayed range is one prefix).
//!
//! fp16. Half-precision gradients of small values underflow; the loss is multiplied by
//! a scale before the backward pass and the update divides it out ([`LossScaler`],
//! PyTorch's GradScaler policy: start at 2^16, halve on a non-finite gradient and skip
//! that step, double after 2000 good steps). Everything stays on the device: whether
//! the gradients are finite is a 0-dim tensor that turns the update's coefficients
//! into an exact no-op for a skipped step, so no step waits for the host.

use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

use crate::error::{Result, TorchContext, TrainError};
use crate::params::{ParamStore, Precision};

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

/// Dynamic loss scaling for fp16 (PyTorch GradScaler's defaults).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct ScalerState {
    /// The current scale.
    pub scale: f64,
    /// Good steps since the scale last changed.
    pub good_steps: u32,
    /// Steps skipped so far for non-finite gradients.
    pub skipped: u64,
}

impl Default for ScalerState {
    fn default() -> Self {
        ScalerState {
            scale: 65536.0,
            good_steps: 0,
            skipped: 0,
        }
    }
}

/// The loss scale and its counters, as 0-dim device tensors (see the module header).
pub struct LossScaler {
    scale: Tensor,
    good: Tensor,
    skipped: Tensor,
}

impl std::fmt::Debug for LossScaler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LossScaler")
    }
}

impl LossScaler {
    /// Good steps after which the scale doubles.
    pub const GROWTH_INTERVAL: u32 = 2000;

    /// A scaler on `device` starting from `state`.
    pub fn new(state: ScalerState, device: Device) -> Result<LossScaler> {
        let make =
            |v: f64| Tensor::f_scalar_tensor(v, (Kind::Float, device)).ctx(|| "loss scaler".into());
        Ok(LossScaler {
            scale: make(state.scale)?,
            good: make(f64::from(state.good_steps))?,
            skipped: make(state.skipped as f64)?,
        })
    }

    /// The scale to multiply the loss by before the backward pass.
    pub fn scale(&self) -> &Tensor {
        &self.scale
    }

    /// The number of skipped steps so far (a device tensor: read it when convenient).
    pub fn skipped(&self) -> &Tensor {
        &self.skipped
    }

    /// The state, read from the device (waits for it: for checkpoints).
    pub fn state(&self) -> Result<ScalerState> {
        let read = |t: &Tensor| t.f_double_value(&[]).ctx(|| "read the loss scaler".into());
        Ok(ScalerState {
            scale: read(&self.scale)?,
            good_steps: read(&self.good)? as u32,
            skipped: read(&self.skipped)? as u64,
        })
    }

    /// After a step whose gradients were finite exactly when `ok` (0-dim, 1 or 0):
    /// count it, and halve or (after [`Self::GROWTH_INTERVAL`] good steps) double.
    fn update(&mut self, ok: &Tensor) -> Result<(), tch::TchError> {
        let bad = ok.f_neg()?.f_add_scalar(1.0)?;
        let good = self.good.f_add_scalar(1.0)?.f_mul(ok)?;
        let grow = good
            .f_ge(f64::from(Self::GROWTH_INTERVAL))?
            .f_to_kind(Kind::Float)?;
        // ok: x2 when growing, else x1; not ok: x0.5
        let factor = ok
            .f_mul(&grow.f_add_scalar(1.0)?)?
            .f_add(&bad.f_mul_scalar(0.5)?)?;
        self.scale = self.scale.f_mul(&factor)?;
        self.good = good.f_mul(&grow.f_neg()?.f_add_scalar(1.0)?)?;
        self.skipped = self.skipped.f_add(&bad)?;
        Ok(())
    }
}

/// The velocity and the rule that updates the flat buffers.
pub struct PaperSgd {
    config: SgdConfig,
    velocity: Tensor,
    decayed_numel: i64,
    coefficients: Option<(f64, Tensor, Tensor)>,
    scaler: Option<LossScaler>,
}

impl std::fmt::Debug for PaperSgd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PaperSgd")
            .field("config", &self.config)
            .field("numel", &self.velocity.numel())
            .finish()
    }
}

impl PaperSgd {
    /// A zero velocity for `store` (and a loss scaler when its passes are fp16).
    pub fn new(store: &ParamStore, config: SgdConfig) -> Result<PaperSgd> {
        let velocity = store
            .master()
            .f_zeros_like()
            .ctx(|| "allocate the velocity".into())?;
        let decayed_numel = if config.decay_biases {
            store.numel()
        } else {
            store.weights_numel()
        };
        let scaler = match store.precision() {
            Precision::Fp16 => Some(LossScaler::new(ScalerState::default(), store.device())?),
            _ => None,
        };
        Ok(PaperSgd {
            config,
            velocity,
            decayed_numel,
            coefficients: None,
            scaler,
        })
    }

    /// The flat fp32 velocity, `[numel]`, in the store's slot order.
    pub fn velocity(&self) -> &Tensor {
        &self.velocity
    }

    /// The velocity of each parameter of `store`, as views.
    pub fn velocity_views(&self, store: &ParamStore) -> Result<Vec<Tensor>> {
        store
            .slots()
            .iter()
            .map(|s| {
                self.velocity
                    .f_narrow(0, s.offset, s.numel)
                    .and_then(|v| v.f_view(s.shape.as_slice()))
                    .ctx(|| "velocity view".into())
            })
            .collect()
    }

    /// Replaces the velocity (from a checkpoint): one tensor per parameter of `store`,
    /// in its order, with its shape.
    pub fn load_velocities(&mut self, store: &ParamStore, values: Vec<Tensor>) -> Result<()> {
        if values.len() != store.slots().len() {
            return Err(TrainError::Config(format!(
                "{} velocities given, the model has {}",
                values.len(),
                store.slots().len()
            )));
        }
        let _guard = tch::no_grad_guard();
        for ((slot, mut view), new) in store
            .slots()
            .iter()
            .zip(self.velocity_views(store)?)
            .zip(values)
        {
            if new.size() != slot.shape {
                return Err(TrainError::Config(format!(
                    "velocity of `{}` has shape {:?}, the model wants {:?}",
                    slot.name,
                    new.size(),
                    slot.shape
                )));
            }
            view.f_copy_(&new).ctx(|| "load velocity".into())?;
        }
        Ok(())
    }

    /// The fp16 loss scaler, if the passes are fp16.
    pub fn scaler(&self) -> Option<&LossScaler> {
        self.scaler.as_ref()
    }

    /// Restores the loss scaler's state (from a checkpoint).
    pub fn set_scaler_state(&mut self, state: ScalerState) -> Result<()> {
        if let Some(s) = &mut self.scaler {
            *s = LossScaler::new(state, self.velocity.device())?;
        }
        Ok(())
    }

    /// `loss` multiplied by the loss scale (fp16), or `loss` itself.
    pub fn scale_loss(&self, loss: &Tensor) -> Result<Tensor> {
        match &self.scaler {
            Some(s) => loss.f_mul(s.scale()).ctx(|| "scale the loss".into()),
            None => Ok(loss.shallow_clone()),
        }
    }

    /// `(-weight_decay * lr, -lr)` as 0-dim device tensors, made again only when the
    /// rate changes.
    fn coefficients(&mut self, lr: f64) -> Result<(Tensor, Tensor)> {
        let device = self.velocity.device();
        if self.coefficients.as_ref().is_none_or(|(l, _, _)| *l != lr) {
            let make = |v: f64| {
                Tensor::f_scalar_tensor(v, (Kind::Float, device)).ctx(|| "coefficient".into())
            };
            let decay = make(-self.config.weight_decay * lr)?;
            self.coefficients = Some((lr, decay, make(-lr)?));
        }
        let (_, decay, grad) = self.coefficients.as_ref().expect("set above");
        Ok((decay.shallow_clone(), grad.shallow_clone()))
    }

    /// Applies one update with learning rate `lr` from the gradients in `store`'s
    /// flat buffer, zeroes them, and refreshes the compute copy.
    pub fn step(&mut self, store: &ParamStore, lr: f64) -> Result<()> {
        let _guard = tch::no_grad_guard();
        let (c_decay, c_grad) = self.coefficients(lr)?;
        let momentum = self.config.momentum;
        let decayed = self.decayed_numel;
        let with_decay = self.config.weight_decay != 0.0 && decayed > 0;
        let mut v = self.velocity.shallow_clone();
        let mut w = store.master().shallow_clone();
        let mut g = store.grad().shallow_clone();
        match &mut self.scaler {
            None => (|| -> Result<(), tch::TchError> {
                let _ = v.f_mul_scalar_(momentum)?;
                if with_decay {
                    let _ = v
                        .f_narrow(0, 0, decayed)?
                        .f_addcmul_(&w.f_narrow(0, 0, decayed)?, &c_decay)?;
                }
                let _ = v.f_addcmul_(&g, &c_grad)?;
                let _ = w.f_add_(&v)?;
                Ok(())
            })()
            .ctx(|| "optimiser step".into())?,
            Some(scaler) => (|| -> Result<(), tch::TchError> {
                // ok = 1 when every gradient is finite (an fp32 sum of fp16 values
                // cannot overflow, so it is finite exactly when they all are)
                let ok = g.f_sum(Kind::Float)?.f_isfinite()?.f_to_kind(Kind::Float)?;
                // non-finite gradients become 0 so that 0 * inf never reaches v
                let _ = g.f_nan_to_num_(0.0, 0.0, 0.0)?;
                // skipped step: v * 1 + w * 0 + g * 0, w + v * 0: nothing changes
                let m = ok.f_mul_scalar(momentum - 1.0)?.f_add_scalar(1.0)?;
                let inv_scale = scaler.scale().f_reciprocal()?;
                let c_grad = c_grad.f_mul(&inv_scale)?.f_mul(&ok)?;
                let _ = v.f_mul_(&m)?;
                if with_decay {
                    let c_decay = c_decay.f_mul(&ok)?;
                    let _ = v
                        .f_narrow(0, 0, decayed)?
                        .f_addcmul_(&w.f_narrow(0, 0, decayed)?, &c_decay)?;
                }
                let _ = v.f_addcmul_(&g, &c_grad)?;
                let _ = w.f_addcmul_(&v, &ok)?;
                scaler.update(&ok)
            })()
            .ctx(|| "optimiser step (fp16)".into())?,
        }
        store.zero_grad()?;
        store.refresh_compute()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A one-layer "model": weight and bias of given values.
    fn store(w: &[f32], b: &[f32], precision: Precision) -> ParamStore {
        ParamStore::new(
            vec![
                ("fc.weight".into(), Tensor::from_slice(w)),
                ("fc.bias".into(), Tensor::from_slice(b)),
            ],
            Device::Cpu,
            precision,
        )
        .unwrap()
    }

    /// Sets the flat gradient directly (weights first, then the bias).
    fn set_grad(s: &ParamStore, g: &[f32]) {
        let _g = tch::no_grad_guard();
        let src = Tensor::from_slice(g).to_kind(s.grad().kind());
        s.grad().shallow_clone().copy_(&src);
    }

    fn master(s: &ParamStore) -> Vec<f64> {
        Vec::<f64>::try_from(s.master().to_kind(Kind::Double)).unwrap()
    }

    #[test]
    fn two_steps_match_a_hand_computation() {
        // grad = c exactly: loss = sum(w * c) + b * c_b
        let s = store(&[1.0, -2.0, 0.5], &[0.25], Precision::Fp32);
        let c = [0.3, 0.1, -4.0, 0.7];
        let x = Tensor::from_slice(&[0.3f32, 0.1, -4.0]);
        let mut opt = PaperSgd::new(&s, SgdConfig::default()).unwrap();
        let loss = |s: &ParamStore| (&s.leaves()[0] * &x).sum(Kind::Float) + &s.leaves()[1] * 0.7;
        let w0 = [1.0f64, -2.0, 0.5, 0.25];
        let lr = 0.01;
        loss(&s).sum(Kind::Float).backward();
        opt.step(&s, lr).unwrap();
        let v1: Vec<f64> = (0..4).map(|i| -0.0005 * lr * w0[i] - lr * c[i]).collect();
        let w1: Vec<f64> = (0..4).map(|i| w0[i] + v1[i]).collect();
        for (i, got) in master(&s).iter().enumerate() {
            assert!(
                (got - w1[i]).abs() < 1e-7,
                "step 1, {i}: {got} vs {}",
                w1[i]
            );
        }
        assert_eq!(
            s.grad().abs().sum(Kind::Float).double_value(&[]),
            0.0,
            "gradients cleared"
        );
        // a different rate: the paper's rule keeps v with the old rate in it
        let lr2 = 0.001;
        loss(&s).sum(Kind::Float).backward();
        opt.step(&s, lr2).unwrap();
        for (i, got) in master(&s).iter().enumerate() {
            let v2 = 0.9 * v1[i] - 0.0005 * lr2 * w1[i] - lr2 * c[i];
            assert!((got - (w1[i] + v2)).abs() < 1e-6, "step 2, {i}");
        }
        let v = Vec::<f64>::try_from(opt.velocity().to_kind(Kind::Double)).unwrap();
        let v2 = 0.9 * v1[3] - 0.0005 * lr2 * w1[3] - lr2 * c[3];
        assert!((v[3] - v2).abs() < 1e-9);
    }

    /// With `decay_biases: false` (Caffe's bvlc_alexnet) a bias moves by the gradient
    /// term alone; a weight is still decayed. With the default both are.
    #[test]
    fn bias_decay_is_a_choice() {
        for decay_biases in [true, false] {
            let s = store(&[2.0], &[3.0], Precision::Fp32);
            let cfg = SgdConfig {
                decay_biases,
                ..SgdConfig::default()
            };
            let mut opt = PaperSgd::new(&s, cfg).unwrap();
            set_grad(&s, &[0.5, 0.25]);
            opt.step(&s, 0.1).unwrap();
            let m = master(&s);
            assert!((m[0] - (2.0 - 0.0005 * 0.1 * 2.0 - 0.1 * 0.5)).abs() < 1e-7);
            let want_b = if decay_biases {
                3.0 - 0.0005 * 0.1 * 3.0 - 0.1 * 0.25
            } else {
                3.0 - 0.1 * 0.25
            };
            assert!(
                (m[1] - want_b).abs() < 1e-7,
                "decay_biases {decay_biases}: {}",
                m[1]
            );
        }
    }

    /// fp16: a step whose gradients hold an inf changes nothing (weights, velocity)
    /// and halves the scale; the next finite step applies the rule to the unscaled
    /// gradient, and the scale has come down.
    #[test]
    fn fp16_skips_a_step_on_inf_and_recovers() {
        let s = store(&[1.0, -1.0], &[0.5], Precision::Fp16);
        let mut opt = PaperSgd::new(&s, SgdConfig::default()).unwrap();
        // one good step first, so the velocity is not zero
        let scale0 = 65536.0f32;
        set_grad(&s, &[0.5 * scale0, 0.25 * scale0, -0.125 * scale0]);
        opt.step(&s, 0.01).unwrap();
        let before_w = master(&s);
        let before_v = Vec::<f64>::try_from(opt.velocity().to_kind(Kind::Double)).unwrap();
        assert_eq!(opt.scaler().unwrap().state().unwrap().scale, 65536.0);

        for bad in [f32::INFINITY, f32::NAN] {
            set_grad(&s, &[1.0, bad, 2.0]);
            opt.step(&s, 0.01).unwrap();
            assert_eq!(master(&s), before_w, "skipped: weights unchanged ({bad})");
            let v = Vec::<f64>::try_from(opt.velocity().to_kind(Kind::Double)).unwrap();
            assert_eq!(v, before_v, "skipped: velocity unchanged ({bad})");
        }
        let st = opt.scaler().unwrap().state().unwrap();
        assert_eq!((st.scale, st.skipped, st.good_steps), (16384.0, 2, 0));

        // recovery: a finite step at the new scale is the fp32 rule on grad / scale
        let g = [0.5f64, -0.25, 1.0];
        let scaled: Vec<f32> = g.iter().map(|x| (x * st.scale) as f32).collect();
        set_grad(&s, &scaled);
        opt.step(&s, 0.01).unwrap();
        for i in 0..3 {
            let v = 0.9 * before_v[i] - 0.0005 * 0.01 * before_w[i] - 0.01 * g[i];
            let want = before_w[i] + v;
            assert!((master(&s)[i] - want).abs() < 1e-6, "{i}");
        }
        let st = opt.scaler().unwrap().state().unwrap();
        assert_eq!((st.scale, st.skipped, st.good_steps), (16384.0, 2, 1));
    }

    #[test]
    fn the_scale_doubles_after_the_growth_interval() {
        let s = store(&[1.0], &[0.0], Precision::Fp16);
        let mut opt = PaperSgd::new(&s, SgdConfig::default()).unwrap();
        let start = ScalerState {
            scale: 1024.0,
            good_steps: LossScaler::GROWTH_INTERVAL - 1,
            skipped: 0,
        };
        opt.set_scaler_state(start).unwrap();
        set_grad(&s, &[1.0, 1.0]);
        opt.step(&s, 0.01).unwrap();
        let st = opt.scaler().unwrap().state().unwrap();
        assert_eq!((st.scale, st.good_steps), (2048.0, 0));
    }
}
