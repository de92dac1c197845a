//! The parameters in flat buffers, and the precision the passes run in.
//!
//! Every parameter is a view into one flat fp32 buffer, the master weights. The
//! optimiser updates that buffer (and an equally flat velocity) with a handful of
//! element-wise kernels for the whole model instead of several per tensor, and the
//! checkpoint copies it to the host in one piece. Weights come first in the buffer and
//! biases after them, so "weights only" is one contiguous range.
//!
//! Gradients land in a second flat buffer: after the first backward pass each
//! parameter's `.grad` is re-pointed (`Tensor::set_`) at its view of that buffer, and
//! libtorch's gradient accumulation adds into a defined gradient in place, so every
//! later backward writes there (DDP's `gradient_as_bucket_view` relies on the same
//! behaviour). A test checks it against gradients computed apart. The flat gradient is
//! what a data-parallel all-reduce averages ([`ParamStore::grad_buckets`]).
//!
//! Precision. [`Precision::Fp32`] trains the master weights directly. With
//! [`Precision::Bf16`] or [`Precision::Fp16`] the forward and backward passes run on a
//! flat copy of the weights in that type, refreshed from the master after each update
//! (one cast kernel); the gradients are in that type, and the update reads them into
//! the fp32 velocity and master weights. This is what `torch.autocast` does for the
//! convolutions and matrix products (it also casts each weight per step and its weight
//! gradients come out of the reduced-precision kernels), with the weights cast once
//! for the whole model. LRN, the softmax and the loss run in fp32 (see
//! [`crate::model::Model::forward`]).

use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

use crate::error::{Result, TorchContext, TrainError};

/// The number type of the forward and backward passes (master weights, velocities and
/// the update are always fp32).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// 32-bit floats throughout.
    Fp32,
    /// bfloat16 passes: fp32's range, 8 bits of mantissa; needs no loss scaling.
    Bf16,
    /// IEEE half passes with dynamic loss scaling (see [`crate::optim::LossScaler`]).
    Fp16,
}

impl Precision {
    /// bf16 on CUDA (what current GPUs are fastest at and needs no loss scaling), fp32
    /// on the CPU.
    pub fn default_for(device: Device) -> Precision {
        if device.is_cuda() {
            Precision::Bf16
        } else {
            Precision::Fp32
        }
    }

    /// The libtorch type of the passes.
    pub fn kind(self) -> Kind {
        match self {
            Precision::Fp32 => Kind::Float,
            Precision::Bf16 => Kind::BFloat16,
            Precision::Fp16 => Kind::Half,
        }
    }

    /// `fp32`, `bf16` or `fp16`.
    pub fn as_str(self) -> &'static str {
        match self {
            Precision::Fp32 => "fp32",
            Precision::Bf16 => "bf16",
            Precision::Fp16 => "fp16",
        }
    }
}

impl std::str::FromStr for Precision {
    type Err = TrainError;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "fp32" => Ok(Precision::Fp32),
            "bf16" => Ok(Precision::Bf16),
            "fp16" => Ok(Precision::Fp16),
            _ => Err(TrainError::Config(format!(
                "unknown precision `{s}` (bf16, fp16, fp32)"
            ))),
        }
    }
}

/// One parameter's place in the flat buffers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Slot {
    /// Parameter name (`conv1.weight`).
    pub name: String,
    /// Shape.
    pub shape: Vec<i64>,
    /// First element in the flat buffers.
    pub offset: i64,
    /// Elements.
    pub numel: i64,
}

/// The parameters of a model in flat buffers (see the module header).
pub struct ParamStore {
    slots: Vec<Slot>,
    numel: i64,
    weights_numel: i64,
    precision: Precision,
    master: Tensor,
    master_views: Vec<Tensor>,
    compute: Option<Tensor>,
    leaves: Vec<Tensor>,
    grad: Tensor,
}

impl std::fmt::Debug for ParamStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ParamStore")
            .field("tensors", &self.slots.len())
            .field("numel", &self.numel)
            .field("precision", &self.precision)
            .finish()
    }
}

fn view(flat: &Tensor, slot: &Slot) -> Result<Tensor, tch::TchError> {
    flat.f_narrow(0, slot.offset, slot.numel)?
        .f_view(slot.shape.as_slice())
}

impl ParamStore {
    /// Places `params` (name, initial values; any device, any float type) into flat
    /// buffers on `device` and makes the views the passes of `precision` train.
    /// Names ending in `.bias` are biases.
    pub fn new(
        params: Vec<(String, Tensor)>,
        device: Device,
        precision: Precision,
    ) -> Result<ParamStore> {
        let is_bias = |n: &str| n.ends_with(".bias");
        // Weights first, then biases: "weights only" is the range [0, weights_numel).
        let mut order: Vec<usize> = (0..params.len()).collect();
        order.sort_by_key(|&i| is_bias(&params[i].0));
        let mut offsets = vec![0i64; params.len()];
        let mut at = 0i64;
        let mut weights_numel = 0i64;
        for &i in &order {
            offsets[i] = at;
            at += params[i].1.numel() as i64;
            if !is_bias(&params[i].0) {
                weights_numel = at;
            }
        }
        let numel = at;
        let slots: Vec<Slot> = params
            .iter()
            .zip(&offsets)
            .map(|((name, t), &offset)| Slot {
                name: name.clone(),
                shape: t.size(),
                offset,
                numel: t.numel() as i64,
            })
            .collect();
        let _guard = tch::no_grad_guard();
        let master = Tensor::f_zeros([numel], (Kind::Float, device))
            .ctx(|| format!("allocate {numel} parameters on {device:?}"))?;
        let master_views = slots
            .iter()
            .zip(&params)
            .map(|(slot, (_, init))| {
                let mut v = view(&master, slot)?;
                v.f_copy_(init)?;
                Ok(v)
            })
            .collect::<Result<Vec<_>, tch::TchError>>()
            .ctx(|| "place the initial parameters".into())?;
        let compute = match precision {
            Precision::Fp32 => None,
            p => Some(
                master
                    .f_to_kind(p.kind())
                    .ctx(|| format!("a {} copy of the parameters", p.as_str()))?,
            ),
        };
        let base = compute.as_ref().unwrap_or(&master);
        let leaves = slots
            .iter()
            .map(|s| view(base, s).and_then(|v| v.f_set_requires_grad(true)))
            .collect::<Result<Vec<_>, tch::TchError>>()
            .ctx(|| "parameter views".into())?;
        let grad = Tensor::f_zeros([numel], (precision.kind(), device))
            .ctx(|| "allocate the gradient buffer".into())?;
        drop(_guard);
        let store = ParamStore {
            slots,
            numel,
            weights_numel,
            precision,
            master,
            master_views,
            compute,
            leaves,
            grad,
        };
        store.bind_gradients()?;
        Ok(store)
    }

    /// Gives every leaf a gradient (one backward pass through a zero sum) and points
    /// it at its view of the flat gradient buffer.
    fn bind_gradients(&self) -> Result<()> {
        let mut total: Option<Tensor> = None;
        for leaf in &self.leaves {
            let term = leaf
                .f_sum(Kind::Float)
                .and_then(|s| s.f_mul_scalar(0.0))
                .ctx(|| "bind gradients".into())?;
            total = Some(match total {
                None => term,
                Some(t) => t.f_add(&term).ctx(|| "bind gradients".into())?,
            });
        }
        let Some(total) = total else { return Ok(()) };
        total.f_backward().ctx(|| "bind gradients".into())?;
        let _guard = tch::no_grad_guard();
        for (leaf, slot) in self.leaves.iter().zip(&self.slots) {
            let target = view(&self.grad, slot).ctx(|| "gradient view".into())?;
            let mut g = leaf.grad();
            let _ = g
                .f_set_source_tensor_(&target)
                .ctx(|| format!("bind the gradient of `{}`", slot.name))?;
        }
        self.zero_grad()
    }

    /// The slots, in parameter order.
    pub fn slots(&self) -> &[Slot] {
        &self.slots
    }

    /// Parameter names, in parameter order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.slots.iter().map(|s| s.name.as_str())
    }

    /// Total elements.
    pub fn numel(&self) -> i64 {
        self.numel
    }

    /// Elements of the weights (not biases): they are `[0, weights_numel)` of the
    /// flat buffers.
    pub fn weights_numel(&self) -> i64 {
        self.weights_numel
    }

    /// The precision of the passes.
    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// Device of the buffers.
    pub fn device(&self) -> Device {
        self.master.device()
    }

    /// The tensors the forward pass uses (views of the compute copy, or of the master
    /// weights in fp32); they require gradients.
    pub fn leaves(&self) -> &[Tensor] {
        &self.leaves
    }

    /// The fp32 master weights, one view per parameter (no gradients).
    pub fn master_views(&self) -> &[Tensor] {
        &self.master_views
    }

    /// The flat fp32 master weights, `[numel]`.
    pub fn master(&self) -> &Tensor {
        &self.master
    }

    /// The flat gradient buffer, `[numel]` in the precision of the passes: after a
    /// backward pass it holds every parameter's gradient at its slot. Data-parallel
    /// training averages it across processes before the update.
    pub fn grad(&self) -> &Tensor {
        &self.grad
    }

    /// The flat gradient buffer cut into consecutive views of at most `max_numel`
    /// elements (the last may be shorter), for an all-reduce bucket by bucket.
    pub fn grad_buckets(&self, max_numel: i64) -> Result<Vec<Tensor>> {
        let step = max_numel.max(1);
        (0..self.numel)
            .step_by(step as usize)
            .map(|start| {
                self.grad
                    .f_narrow(0, start, step.min(self.numel - start))
                    .ctx(|| "gradient bucket".into())
            })
            .collect()
    }

    /// Zeroes the gradient buffer (one kernel).
    pub fn zero_grad(&self) -> Result<()> {
        let _guard = tch::no_grad_guard();
        self.grad
            .shallow_clone()
            .f_zero_()
            .map(|_| ())
            .ctx(|| "zero the gradients".into())
    }

    /// Makes the compute copy equal the master weights again (after an update or a
    /// load; nothing to do in fp32).
    pub fn refresh_compute(&self) -> Result<()> {
        if let Some(c) = &self.compute {
            let _guard = tch::no_grad_guard();
            c.shallow_clone()
                .f_copy_(&self.master)
                .ctx(|| "refresh the compute copy".into())?;
        }
        Ok(())
    }

    /// Copies `values` (name -> tensor) into the master weights; every parameter must
    /// be present with its shape. `origin` names the file in errors.
    pub fn load(&self, values: &[(String, Tensor)], origin: &std::path::Path) -> Result<()> {
        let _guard = tch::no_grad_guard();
        for (slot, master) in self.slots.iter().zip(&self.master_views) {
            let Some((_, v)) = values.iter().find(|(n, _)| *n == slot.name) else {
                return Err(TrainError::Checkpoint {
                    path: origin.into(),
                    what: format!("missing tensor `{}`", slot.name),
                });
            };
            if v.size() != slot.shape {
                return Err(TrainError::Checkpoint {
                    path: origin.into(),
                    what: format!(
                        "tensor `{}` has shape {:?}, the model wants {:?}",
                        slot.name,
                        v.size(),
                        slot.shape
                    ),
                });
            }
            master
                .shallow_clone()
                .f_copy_(v)
                .ctx(|| format!("load {}", slot.name))?;
        }
        self.refresh_compute()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params() -> Vec<(String, Tensor)> {
        tch::manual_seed(4);
        vec![
            (
                "a.weight".into(),
                Tensor::randn([3, 2], (Kind::Float, Device::Cpu)),
            ),
            (
                "a.bias".into(),
                Tensor::randn([3], (Kind::Float, Device::Cpu)),
            ),
            (
                "b.weight".into(),
                Tensor::randn([1, 3], (Kind::Float, Device::Cpu)),
            ),
            (
                "b.bias".into(),
                Tensor::randn([1], (Kind::Float, Device::Cpu)),
            ),
        ]
    }

    /// `(b relu(a x))` summed: a loss whose gradients go through both layers.
    fn loss(p: &[Tensor], x: &Tensor) -> Tensor {
        x.linear(&p[0], Some(&p[1]))
            .relu()
            .linear(&p[2], Some(&p[3]))
            .to_kind(Kind::Float)
            .sum(Kind::Float)
    }

    #[test]
    fn weights_come_first_and_views_share_the_buffer() {
        let init = params();
        let copies = init.iter().map(|(n, t)| (n.clone(), t.copy())).collect();
        let store = ParamStore::new(copies, Device::Cpu, Precision::Fp32).unwrap();
        let offsets: Vec<i64> = store.slots().iter().map(|s| s.offset).collect();
        assert_eq!(
            offsets,
            [0, 9, 6, 12],
            "a.weight, b.weight, then the biases"
        );
        assert_eq!((store.numel(), store.weights_numel()), (13, 9));
        for ((_, want), got) in init.iter().zip(store.leaves()) {
            assert!(got.allclose(want, 0.0, 0.0, false));
        }
        // the views are the buffer: an update of the flat master shows in them
        let _g = tch::no_grad_guard();
        let _ = store.master().shallow_clone().f_add_scalar_(1.0).unwrap();
        assert!(store.leaves()[3].allclose(&(&init[3].1 + 1.0), 1e-6, 1e-6, false));
        let buckets = store.grad_buckets(5).unwrap();
        assert_eq!(
            buckets.iter().map(|b| b.size()[0]).collect::<Vec<_>>(),
            [5, 5, 3]
        );
    }

    /// Backward writes every parameter's gradient into its slot of the flat buffer,
    /// pass after pass, exactly as gradients computed apart.
    #[test]
    fn backward_fills_the_flat_gradient() {
        let store = ParamStore::new(params(), Device::Cpu, Precision::Fp32).unwrap();
        let x = Tensor::randn([5, 2], (Kind::Float, Device::Cpu));
        for round in 0..2 {
            store.zero_grad().unwrap();
            let scale = 1.0 + round as f64;
            (loss(store.leaves(), &x) * scale).backward();
            let apart: Vec<Tensor> = store
                .leaves()
                .iter()
                .map(|p| p.detach().copy().set_requires_grad(true))
                .collect();
            (loss(&apart, &x) * scale).backward();
            for (slot, p) in store.slots().iter().zip(&apart) {
                let flat = store
                    .grad()
                    .narrow(0, slot.offset, slot.numel)
                    .view(slot.shape.as_slice());
                assert!(
                    flat.allclose(&p.grad(), 1e-6, 1e-6, false),
                    "round {round}: {}",
                    slot.name
                );
            }
            assert!(store.grad().abs().sum(Kind::Float).double_value(&[]) > 0.0);
        }
    }

    /// Reduced precision: the passes see a bf16/fp16 copy, the gradient buffer has that
    /// type, and a refresh brings the copy back in line with the fp32 master.
    #[test]
    fn reduced_precision_trains_a_copy() {
        for precision in [Precision::Bf16, Precision::Fp16] {
            let store = ParamStore::new(params(), Device::Cpu, precision).unwrap();
            assert_eq!(store.leaves()[0].kind(), precision.kind());
            assert_eq!(store.master().kind(), Kind::Float);
            assert_eq!(store.grad().kind(), precision.kind());
            let x = Tensor::randn([5, 2], (precision.kind(), Device::Cpu));
            loss(store.leaves(), &x).backward();
            assert!(store.grad().abs().sum(Kind::Float).double_value(&[]) > 0.0);
            let _g = tch::no_grad_guard();
            let _ = store.master().shallow_clone().f_fill_(0.5).unwrap();
            store.refresh_compute().unwrap();
            assert_eq!(store.leaves()[2].double_value(&[0, 1]), 0.5);
        }
        assert_eq!("bf16".parse::<Precision>().unwrap(), Precision::Bf16);
        assert!("fp8".parse::<Precision>().is_err());
        assert_eq!(Precision::default_for(Device::Cpu), Precision::Fp32);
        assert_eq!(Precision::default_for(Device::Cuda(0)), Precision::Bf16);
    }
}
