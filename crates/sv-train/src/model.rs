//! The models: the paper's two-tower AlexNet on one device (`alexnet`), the single-tower
//! variant torchvision ships (`alexnet-owt`), and scaled-down versions of both that
//! train on a CPU in seconds (`alexnet-tiny`, `alexnet-owt-tiny`).
//!
//! A model is described by a [`ModelSpec`] (a list of [`LayerSpec`]s, pure data that
//! lives in the libtorch-free sv-model crate and is re-exported here: the summary and
//! parameter counts come from it without libtorch) and built into a [`Model`] holding
//! the parameter tensors in a fixed order.
//!
//! Parameter names. `alexnet` and `alexnet-tiny` use `conv1.weight` ... `fc8.bias`.
//! `alexnet-owt` uses torchvision's own keys, so `torchvision.models.alexnet()`
//! loads its weights directly (`load_state_dict(safetensors.torch.load_file(F))`
//! after dropping the `momentum.` entries):
//!
//! | ours / torchvision | layer |
//! |---|---|
//! | `features.0.*` | conv1 64x3x11x11, stride 4, pad 2 |
//! | `features.3.*` | conv2 192x64x5x5, pad 2 |
//! | `features.6.*` | conv3 384x192x3x3 |
//! | `features.8.*` | conv4 256x384x3x3 |
//! | `features.10.*` | conv5 256x256x3x3 |
//! | `classifier.1.*` | fc6 4096x9216 |
//! | `classifier.4.*` | fc7 4096x4096 |
//! | `classifier.6.*` | fc8 1000x4096 |
//!
//! Inputs are normalised float `[N, 3, side, side]` tensors; see [`crate::input`].

use tch::{Device, Kind, Tensor};

pub use sv_model::{InitScheme, LayerSpec, MODEL_NAMES, ModelSpec, Summary, SummaryRow};

use crate::error::{Result, TorchContext};
use crate::lrn::{LrnParams, local_response_norm};
use crate::params::{ParamStore, Precision};

enum Op {
    Conv {
        w: usize,
        b: usize,
        stride: i64,
        pad: i64,
        groups: i64,
    },
    Relu,
    Lrn(LrnParams, i64),
    MaxPool {
        kernel: i64,
        stride: i64,
    },
    AdaptiveAvgPool(i64),
    Flatten,
    Dropout(f64),
    Linear {
        w: usize,
        b: usize,
    },
}

/// A built model: its parameters (trainable leaf tensors, in a fixed order) and ops.
pub struct Model {
    spec: ModelSpec,
    names: Vec<String>,
    store: ParamStore,
    ops: Vec<Op>,
    device: Device,
}

impl std::fmt::Debug for Model {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Model")
            .field("name", &self.spec.name)
            .field("device", &self.device)
            .finish()
    }
}

impl Model {
    /// Builds and initialises `spec` on `device` (seed torch's generator first for a
    /// reproducible init: [`tch::manual_seed`]). Weights are drawn on the CPU and then
    /// moved, so one seed gives the same initial weights on every device.
    pub fn new(spec: &ModelSpec, device: Device) -> Result<Model> {
        Model::with_precision(spec, device, Precision::Fp32)
    }

    /// [`Model::new`] whose training passes run in `precision` (the master weights
    /// stay fp32; see [`crate::params`]).
    pub fn with_precision(spec: &ModelSpec, device: Device, precision: Precision) -> Result<Model> {
        let summary = spec.summary()?;
        let mut names = Vec::new();
        let mut params = Vec::new();
        let mut ops = Vec::with_capacity(spec.layers.len());
        let mut in_ch = 3i64;
        let mut flat = 0i64;
        let opts = (Kind::Float, Device::Cpu);
        for (layer, row) in spec.layers.iter().zip(&summary.rows) {
            let op = match layer {
                LayerSpec::Conv {
                    name,
                    out,
                    kernel,
                    stride,
                    pad,
                    groups,
                    bias_init,
                } => {
                    let fan_in = (in_ch / groups) * kernel * kernel;
                    let w = init_tensor(
                        &[*out, in_ch / groups, *kernel, *kernel],
                        fan_in,
                        None,
                        spec.init,
                        opts,
                    )
                    .ctx(|| format!("init {name}.weight"))?;
                    let b = init_tensor(&[*out], fan_in, Some(*bias_init), spec.init, opts)
                        .ctx(|| format!("init {name}.bias"))?;
                    in_ch = *out;
                    let wi = push(&mut names, &mut params, format!("{name}.weight"), w);
                    let bi = push(&mut names, &mut params, format!("{name}.bias"), b);
                    Op::Conv {
                        w: wi,
                        b: bi,
                        stride: *stride,
                        pad: *pad,
                        groups: *groups,
                    }
                }
                LayerSpec::Relu => Op::Relu,
                LayerSpec::Lrn { params, towers } => Op::Lrn(*params, *towers),
                LayerSpec::MaxPool { kernel, stride } => Op::MaxPool {
                    kernel: *kernel,
                    stride: *stride,
                },
                LayerSpec::AdaptiveAvgPool { side } => Op::AdaptiveAvgPool(*side),
                LayerSpec::Flatten => {
                    flat = row.output[0];
                    Op::Flatten
                }
                LayerSpec::Dropout { p } => Op::Dropout(*p),
                LayerSpec::Linear {
                    name,
                    out,
                    bias_init,
                } => {
                    let w = init_tensor(&[*out, flat], flat, None, spec.init, opts)
                        .ctx(|| format!("init {name}.weight"))?;
                    let b = init_tensor(&[*out], flat, Some(*bias_init), spec.init, opts)
                        .ctx(|| format!("init {name}.bias"))?;
                    flat = *out;
                    let wi = push(&mut names, &mut params, format!("{name}.weight"), w);
                    let bi = push(&mut names, &mut params, format!("{name}.bias"), b);
                    Op::Linear { w: wi, b: bi }
                }
            };
            ops.push(op);
        }
        let store = ParamStore::new(
            names.iter().cloned().zip(params).collect(),
            device,
            precision,
        )?;
        Ok(Model {
            spec: spec.clone(),
            names,
            store,
            ops,
            device,
        })
    }

    /// The description this model was built from.
    pub fn spec(&self) -> &ModelSpec {
        &self.spec
    }

    /// Device holding the parameters.
    pub fn device(&self) -> Device {
        self.device
    }

    /// Parameter names, in the order of [`Model::params`].
    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// The trainable parameters (what the passes use: in bf16/fp16, the compute copy).
    pub fn params(&self) -> &[Tensor] {
        self.store.leaves()
    }

    /// The parameters' flat buffers (master weights, gradients).
    pub fn store(&self) -> &ParamStore {
        &self.store
    }

    /// Total number of parameter elements.
    pub fn param_count(&self) -> i64 {
        self.store.numel()
    }

    /// fp32 logits `[N, classes]` for a normalised float `[N, 3, side, side]` batch,
    /// computed in the store's precision; dropout is active only when `train`. In
    /// bf16/fp16 the input is cast down first, LRN runs in fp32 (its window sum of
    /// squares and power want the range and mantissa) and the logits come back fp32,
    /// so the softmax and the loss are fp32 too.
    pub fn forward(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        self.forward_prefix(x, train, self.ops.len())
    }

    /// Logits in fp32 from the fp32 master weights, no dropout: evaluation, which
    /// then gives the same numbers whatever precision the model trains in.
    pub fn infer(&self, x: &Tensor) -> Result<Tensor> {
        self.run_ops(
            x,
            false,
            self.ops.len(),
            self.store.master_views(),
            Kind::Float,
        )
    }

    /// The output of the first `layers` layers of the spec (1: conv1 alone, before its
    /// ReLU), for looking at activations.
    pub fn forward_prefix(&self, x: &Tensor, train: bool, layers: usize) -> Result<Tensor> {
        let kind = self.store.precision().kind();
        self.run_ops(x, train, layers, self.store.leaves(), kind)
    }

    fn run_ops(
        &self,
        x: &Tensor,
        train: bool,
        layers: usize,
        params: &[Tensor],
        kind: Kind,
    ) -> Result<Tensor> {
        let mut x = if x.kind() == kind {
            x.shallow_clone()
        } else {
            x.f_to_kind(kind).ctx(|| "cast the input".into())?
        };
        for op in self.ops.iter().take(layers) {
            x = match op {
                Op::Conv {
                    w,
                    b,
                    stride,
                    pad,
                    groups,
                } => x.f_conv2d(
                    &params[*w],
                    Some(&params[*b]),
                    [*stride, *stride],
                    [*pad, *pad],
                    [1, 1],
                    *groups,
                ),
                Op::Relu => x.f_relu(),
                Op::Lrn(p, towers) if kind == Kind::Float => local_response_norm(&x, *p, *towers),
                Op::Lrn(p, towers) => x
                    .f_to_kind(Kind::Float)
                    .and_then(|f| local_response_norm(&f, *p, *towers))
                    .and_then(|y| y.f_to_kind(kind)),
                Op::MaxPool { kernel, stride } => x.f_max_pool2d(
                    [*kernel, *kernel],
                    [*stride, *stride],
                    [0, 0],
                    [1, 1],
                    false,
                ),
                Op::AdaptiveAvgPool(side) => x.f_adaptive_avg_pool2d([*side, *side]),
                Op::Flatten => x.f_flatten(1, -1),
                Op::Dropout(p) => x.f_dropout(*p, train),
                Op::Linear { w, b } => x.f_linear(&params[*w], Some(&params[*b])),
            }
            .ctx(|| format!("forward of {}", self.spec.name))?;
        }
        if layers == self.ops.len() && x.kind() != Kind::Float {
            x = x.f_to_kind(Kind::Float).ctx(|| "fp32 logits".into())?;
        }
        Ok(x)
    }

    /// Copies `values` (name -> tensor) into the parameters; every parameter must be
    /// present with its shape.
    pub fn load_params(
        &mut self,
        values: &[(String, Tensor)],
        origin: &std::path::Path,
    ) -> Result<()> {
        self.store.load(values, origin)
    }
}

fn push(names: &mut Vec<String>, params: &mut Vec<Tensor>, name: String, t: Tensor) -> usize {
    names.push(name);
    params.push(t);
    params.len() - 1
}

fn init_tensor(
    dims: &[i64],
    fan_in: i64,
    bias: Option<f64>,
    scheme: InitScheme,
    opts: (Kind, Device),
) -> Result<Tensor, tch::TchError> {
    match (scheme, bias) {
        (InitScheme::Paper, None) => Ok(Tensor::f_randn(dims, opts)? * 0.01),
        (InitScheme::Paper, Some(b)) => Tensor::f_full(dims, b, opts),
        (InitScheme::Kaiming, None) => {
            Ok(Tensor::f_randn(dims, opts)? * (2.0 / fan_in as f64).sqrt())
        }
        (InitScheme::Kaiming, Some(_)) => Tensor::f_zeros(dims, opts),
        (InitScheme::Torch, _) => {
            let bound = 1.0 / (fan_in as f64).sqrt();
            Ok(Tensor::f_rand(dims, opts)? * (2.0 * bound) - bound)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::input::InputScale;

    /// The shapes `supervision model summary` prints (sv-model's arithmetic) are the
    /// shapes the built model produces, layer by layer.
    #[test]
    fn summary_shapes_are_the_forward_shapes() {
        for name in MODEL_NAMES {
            let spec = ModelSpec::by_name(name, 10).unwrap();
            let summary = spec.summary().unwrap();
            let model = Model::new(&spec, Device::Cpu).unwrap();
            let x = Tensor::randn(
                [1, 3, spec.input_side, spec.input_side],
                (Kind::Float, Device::Cpu),
            );
            for (i, row) in summary.rows.iter().enumerate() {
                let y = model.forward_prefix(&x, false, i + 1).unwrap();
                assert_eq!(
                    y.size()[1..],
                    row.output[..],
                    "{name} layer {i}: {}",
                    row.layer
                );
            }
        }
    }

    #[test]
    fn built_tensors_match_the_summary() {
        for name in MODEL_NAMES {
            let spec = ModelSpec::by_name(name, 10).unwrap();
            let want = spec.summary().unwrap().total_params;
            let model = Model::new(&spec, Device::Cpu).unwrap();
            assert_eq!(model.param_count(), want, "{name}");
            assert!(
                model
                    .names()
                    .iter()
                    .all(|n| n.ends_with(".weight") || n.ends_with(".bias"))
            );
        }
    }

    #[test]
    fn tiny_forward_shapes_and_dropout_mode() {
        for name in ["alexnet-tiny", "alexnet-owt-tiny"] {
            let spec = ModelSpec::by_name(name, 7).unwrap();
            tch::manual_seed(1);
            let model = Model::new(&spec, Device::Cpu).unwrap();
            let x = Tensor::randn(
                [2, 3, spec.input_side, spec.input_side],
                (Kind::Float, Device::Cpu),
            );
            let eval1 = model.forward(&x, false).unwrap();
            let eval2 = model.forward(&x, false).unwrap();
            assert_eq!(eval1.size(), [2, 7]);
            assert!(
                eval1.allclose(&eval2, 0.0, 0.0, false),
                "eval mode is deterministic"
            );
            let train = model.forward(&x, true).unwrap();
            assert!(
                !train.allclose(&eval1, 1e-6, 1e-6, false),
                "dropout acts in training"
            );
        }
    }

    #[test]
    fn paper_init_uses_the_papers_biases_and_scale() {
        let spec = ModelSpec::by_name("alexnet-tiny", 5).unwrap();
        let spec = ModelSpec {
            init: InitScheme::Paper,
            ..spec
        };
        tch::manual_seed(3);
        let model = Model::new(&spec, Device::Cpu).unwrap();
        for (name, p) in model.names().iter().zip(model.params()) {
            if name.ends_with(".bias") {
                let one = ["conv2", "conv4", "conv5", "fc6", "fc7"]
                    .iter()
                    .any(|l| name.starts_with(l));
                let want = if one { 1.0 } else { 0.0 };
                assert_eq!(p.min().double_value(&[]), want, "{name}");
                assert_eq!(p.max().double_value(&[]), want, "{name}");
            } else if p.numel() > 10_000 {
                let std = p.std(true).double_value(&[]);
                assert!((std - 0.01).abs() < 0.001, "{name}: std {std}");
            }
        }
    }

    /// Four "photographs": smooth colour fields (a few low-frequency waves per channel)
    /// with fine texture, with ImageNet's channel means and standard deviations, as
    /// uint8 NHWC crops of `side`.
    fn photo_like(n: usize, side: usize) -> Tensor {
        let mean = [124.0, 116.0, 104.0];
        let mut px = vec![0u8; n * side * side * 3];
        for img in 0..n {
            for y in 0..side {
                for x in 0..side {
                    for c in 0..3 {
                        let (fy, fx) = (y as f64 / side as f64, x as f64 / side as f64);
                        let k = (img * 3 + c) as f64;
                        let smooth = (6.3 * (fx * (1.0 + k % 3.0) + 0.3 * k)).sin()
                            + (6.3 * (fy * (2.0 + k % 2.0) - 0.2 * k)).cos()
                            + (6.3 * (fx + fy) * 3.0).sin() * 0.5;
                        let texture = (((x * 7 + y * 13 + img * 5 + c) * 2654435761) % 97) as f64;
                        let v = mean[c] + 38.0 * smooth + 0.4 * (texture - 48.0);
                        px[((img * side + y) * side + x) * 3 + c] = v.clamp(0.0, 255.0) as u8;
                    }
                }
            }
        }
        Tensor::from_slice(&px).reshape([n as i64, side as i64, side as i64, 3])
    }

    /// The paper's scale reaches conv1 and LRN: at init, on centred raw values, conv1's
    /// outputs have the size N(0, 0.01^2) weights give them (std about 0.01 *
    /// sqrt(fan_in * E[x^2]), around 10) and LRN's window sum changes its denominator
    /// by a measurable amount; divided by the std, conv1's outputs are about 50 times
    /// smaller and LRN is a constant factor k^-beta.
    #[test]
    fn paper_scale_reaches_conv1_and_lrn() {
        use crate::input::{DeviceNorm, Normalization};
        let spec = ModelSpec::by_name("alexnet", 1000).unwrap();
        assert_eq!(spec.input_scale, InputScale::Raw, "the paper's default");
        assert_eq!(
            ModelSpec::by_name("alexnet-owt", 1000).unwrap().input_scale,
            InputScale::Std
        );
        tch::manual_seed(12);
        let model = Model::new(&spec, Device::Cpu).unwrap();
        let images = photo_like(4, 227);
        let stats = Normalization::default();
        let input = |scale| {
            DeviceNorm::new(&stats, scale, Device::Cpu)
                .unwrap()
                .apply(&images, None, None, None)
                .unwrap()
        };
        let (raw, std) = (input(InputScale::Raw), input(InputScale::Std));
        let mean_sq = raw.square().mean(Kind::Float).double_value(&[]);
        assert!(
            mean_sq > 40.0 * 40.0,
            "photo-like input: E[x^2] = {mean_sq}"
        );
        let conv1 = |x: &Tensor| model.forward_prefix(x, false, 1).unwrap();
        let (c_raw, c_std) = (conv1(&raw), conv1(&std));
        let fan_in = 3.0 * 11.0 * 11.0;
        let predicted = 0.01 * (fan_in * mean_sq).sqrt();
        let got = c_raw.std(true).double_value(&[]);
        assert!(
            (0.7 * predicted..1.3 * predicted).contains(&got),
            "conv1 std {got}, predicted {predicted}"
        );
        assert!(got > 5.0, "conv1 outputs at the paper's scale: std {got}");
        let ratio = got / c_std.std(true).double_value(&[]);
        assert!(
            (35.0..80.0).contains(&ratio),
            "raw / std-scaled conv1: {ratio}"
        );

        // LRN's denominator (k + alpha * window sum)^beta against k^beta, over the
        // positive outputs of ReLU(conv1) in two towers as the net has them.
        let deviation = |c: &Tensor| {
            let a = c.relu();
            let b = local_response_norm(&a, LrnParams::PAPER, 2).unwrap();
            let pos = a.gt(0.0);
            let denom = a.masked_select(&pos) / b.masked_select(&pos);
            (denom / 2f64.powf(0.75) - 1.0)
                .mean(Kind::Float)
                .double_value(&[])
        };
        let (d_raw, d_std) = (deviation(&c_raw), deviation(&c_std));
        assert!(
            d_raw > 0.005,
            "LRN at the paper's scale: mean deviation {d_raw}"
        );
        assert!(
            d_std < d_raw / 100.0,
            "std-scaled, LRN degenerates: {d_std} vs {d_raw}"
        );
    }
}
