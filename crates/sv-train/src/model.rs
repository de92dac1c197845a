//! The models: the paper's two-tower AlexNet on one device (`alexnet`), the single-tower
//! variant torchvision ships (`alexnet-owt`), and scaled-down versions of both that
//! train on a CPU in seconds (`alexnet-tiny`, `alexnet-owt-tiny`).
//!
//! A model is described by a [`ModelSpec`] (a list of [`LayerSpec`]s, pure data: the
//! summary and parameter counts come from it without libtorch work) and built into a
//! [`Model`] holding the parameter tensors in a fixed order.
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

use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

use crate::error::{Result, TorchContext, TrainError};
use crate::input::InputScale;
use crate::lrn::{LrnParams, local_response_norm};
use crate::params::{ParamStore, Precision};

/// How the weights are initialised.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum InitScheme {
    /// The paper: weights N(0, 0.01^2); biases as each layer's `bias_init` (1 in conv2,
    /// conv4, conv5, fc6, fc7; 0 elsewhere).
    Paper,
    /// PyTorch's default (what torchvision trains with): weights and biases
    /// U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
    Torch,
    /// He et al.: weights N(0, 2/fan_in), biases 0; keeps activations from shrinking
    /// layer by layer, so the small models learn within a few CPU epochs.
    Kaiming,
}

impl std::str::FromStr for InitScheme {
    type Err = TrainError;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "paper" => Ok(InitScheme::Paper),
            "torch" => Ok(InitScheme::Torch),
            "kaiming" => Ok(InitScheme::Kaiming),
            _ => Err(TrainError::Config(format!(
                "unknown init `{s}` (paper, torch, kaiming)"
            ))),
        }
    }
}

/// One layer of a model description.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum LayerSpec {
    /// 2-D convolution with bias.
    Conv {
        /// Parameter name prefix (`conv1`, `features.0`).
        name: String,
        /// Output channels.
        out: i64,
        /// Square kernel side.
        kernel: i64,
        /// Stride.
        stride: i64,
        /// Zero padding on each side.
        pad: i64,
        /// Channel groups (2 reproduces the paper's two-GPU split).
        groups: i64,
        /// Bias value under [`InitScheme::Paper`].
        bias_init: f64,
    },
    /// Rectified linear unit.
    Relu,
    /// Local response normalisation across channels, each window inside one of
    /// `towers` channel groups (2 in the paper's net: each GPU normalised its own maps).
    Lrn {
        /// The constants.
        #[serde(flatten)]
        params: LrnParams,
        /// Channel groups whose windows never meet (1 in checkpoints written before
        /// towers existed, which is how those nets were trained).
        #[serde(default = "one_tower")]
        towers: i64,
    },
    /// Max pooling.
    MaxPool {
        /// Window side.
        kernel: i64,
        /// Stride.
        stride: i64,
    },
    /// Adaptive average pooling to a fixed side (torchvision's `avgpool`).
    AdaptiveAvgPool {
        /// Output side.
        side: i64,
    },
    /// `[N, C, H, W]` to `[N, C*H*W]`.
    Flatten,
    /// Dropout (active in training only).
    Dropout {
        /// Probability of zeroing a unit.
        p: f64,
    },
    /// Fully connected layer with bias.
    Linear {
        /// Parameter name prefix (`fc6`, `classifier.1`).
        name: String,
        /// Output features.
        out: i64,
        /// Bias value under [`InitScheme::Paper`].
        bias_init: f64,
    },
}

fn one_tower() -> i64 {
    1
}

/// A whole model description.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelSpec {
    /// Registered name (`alexnet`).
    pub name: String,
    /// Side of the square input crop.
    pub input_side: i64,
    /// Number of classes (outputs of the last layer).
    pub classes: i64,
    /// Initialisation used by [`Model::new`].
    pub init: InitScheme,
    /// The scale of the input the model expects (checkpoints written before this
    /// field existed divided by the std, so that is the default when it is absent).
    #[serde(default = "InputScale::legacy")]
    pub input_scale: InputScale,
    /// The layers, in order.
    pub layers: Vec<LayerSpec>,
}

/// Input scale of the tiny models: mean/std. They start from He et al.'s init, which
/// assumes inputs of unit variance; their purpose is CPU tests that must learn in a few
/// dozen steps. Tried on the 4-class test set of sv-train's tests (3 epochs of 16
/// steps, lr 0.01, 3 seeds): He init on std-scaled input reached 0-25% top-1 error; on
/// raw 0-255 input its logits start about 50 times larger and the loss was NaN by step
/// 8; the paper's N(0, 0.01^2) init stayed at chance (75%) on either scale. The
/// paper's scale belongs to the full-size `alexnet`.
const TINY_INPUT_SCALE: InputScale = InputScale::Std;

/// The names [`ModelSpec::by_name`] accepts.
pub const MODEL_NAMES: [&str; 4] = ["alexnet", "alexnet-owt", "alexnet-tiny", "alexnet-owt-tiny"];

fn conv(
    name: &str,
    out: i64,
    kernel: i64,
    stride: i64,
    pad: i64,
    groups: i64,
    bias: f64,
) -> LayerSpec {
    LayerSpec::Conv {
        name: name.into(),
        out,
        kernel,
        stride,
        pad,
        groups,
        bias_init: bias,
    }
}

fn linear(name: &str, out: i64, bias: f64) -> LayerSpec {
    LayerSpec::Linear {
        name: name.into(),
        out,
        bias_init: bias,
    }
}

const fn pool() -> LayerSpec {
    LayerSpec::MaxPool {
        kernel: 3,
        stride: 2,
    }
}

/// Widths of the two-tower family: conv1..conv5, fc6/fc7.
struct PaperDims {
    input: i64,
    conv1: (i64, i64, i64), // out, kernel, stride
    widths: [i64; 4],       // conv2..conv5
    fc: i64,
}

fn paper_family(
    name: &str,
    d: PaperDims,
    classes: i64,
    init: InitScheme,
    input_scale: InputScale,
) -> ModelSpec {
    let lrn = LayerSpec::Lrn {
        params: LrnParams::PAPER,
        towers: 2,
    };
    let [w2, w3, w4, w5] = d.widths;
    ModelSpec {
        name: name.into(),
        input_side: d.input,
        classes,
        init,
        input_scale,
        layers: vec![
            conv("conv1", d.conv1.0, d.conv1.1, d.conv1.2, 0, 1, 0.0),
            LayerSpec::Relu,
            lrn.clone(),
            pool(),
            conv("conv2", w2, 5, 1, 2, 2, 1.0),
            LayerSpec::Relu,
            lrn,
            pool(),
            conv("conv3", w3, 3, 1, 1, 1, 0.0),
            LayerSpec::Relu,
            conv("conv4", w4, 3, 1, 1, 2, 1.0),
            LayerSpec::Relu,
            conv("conv5", w5, 3, 1, 1, 2, 1.0),
            LayerSpec::Relu,
            pool(),
            LayerSpec::Flatten,
            linear("fc6", d.fc, 1.0),
            LayerSpec::Relu,
            LayerSpec::Dropout { p: 0.5 },
            linear("fc7", d.fc, 1.0),
            LayerSpec::Relu,
            LayerSpec::Dropout { p: 0.5 },
            linear("fc8", classes, 0.0),
        ],
    }
}

struct OwtDims {
    input: i64,
    conv1: (i64, i64, i64, i64), // out, kernel, stride, pad
    widths: [i64; 4],
    pooled: i64,
    fc: i64,
}

fn owt_family(name: &str, d: OwtDims, classes: i64, init: InitScheme) -> ModelSpec {
    let [w2, w3, w4, w5] = d.widths;
    // Layer names are torchvision's module indices, so the keys match its state_dict.
    ModelSpec {
        name: name.into(),
        input_side: d.input,
        classes,
        init,
        // torchvision's recipe: mean/std normalisation
        input_scale: InputScale::Std,
        layers: vec![
            conv(
                "features.0",
                d.conv1.0,
                d.conv1.1,
                d.conv1.2,
                d.conv1.3,
                1,
                0.0,
            ),
            LayerSpec::Relu,
            pool(),
            conv("features.3", w2, 5, 1, 2, 1, 1.0),
            LayerSpec::Relu,
            pool(),
            conv("features.6", w3, 3, 1, 1, 1, 0.0),
            LayerSpec::Relu,
            conv("features.8", w4, 3, 1, 1, 1, 1.0),
            LayerSpec::Relu,
            conv("features.10", w5, 3, 1, 1, 1, 1.0),
            LayerSpec::Relu,
            pool(),
            LayerSpec::AdaptiveAvgPool { side: d.pooled },
            LayerSpec::Flatten,
            LayerSpec::Dropout { p: 0.5 },
            linear("classifier.1", d.fc, 1.0),
            LayerSpec::Relu,
            LayerSpec::Dropout { p: 0.5 },
            linear("classifier.4", d.fc, 1.0),
            LayerSpec::Relu,
            linear("classifier.6", classes, 0.0),
        ],
    }
}

impl ModelSpec {
    /// The registered model `name` with `classes` outputs (1000 for ImageNet).
    pub fn by_name(name: &str, classes: i64) -> Result<ModelSpec> {
        if classes < 1 {
            return Err(TrainError::Config(format!(
                "model needs at least one class, got {classes}"
            )));
        }
        let spec = match name {
            "alexnet" => paper_family(
                name,
                PaperDims {
                    input: 227,
                    conv1: (96, 11, 4),
                    widths: [256, 384, 384, 256],
                    fc: 4096,
                },
                classes,
                InitScheme::Paper,
                InputScale::Raw,
            ),
            "alexnet-tiny" => paper_family(
                name,
                PaperDims {
                    input: 63,
                    conv1: (24, 7, 2),
                    widths: [64, 96, 96, 64],
                    fc: 256,
                },
                classes,
                InitScheme::Kaiming,
                TINY_INPUT_SCALE,
            ),
            "alexnet-owt" => owt_family(
                name,
                OwtDims {
                    input: 224,
                    conv1: (64, 11, 4, 2),
                    widths: [192, 384, 256, 256],
                    pooled: 6,
                    fc: 4096,
                },
                classes,
                InitScheme::Torch,
            ),
            "alexnet-owt-tiny" => owt_family(
                name,
                OwtDims {
                    input: 64,
                    conv1: (16, 7, 2, 2),
                    widths: [48, 64, 48, 48],
                    pooled: 3,
                    fc: 256,
                },
                classes,
                InitScheme::Kaiming,
            ),
            _ => {
                return Err(TrainError::UnknownModel {
                    name: name.into(),
                    known: MODEL_NAMES.join(", "),
                });
            }
        };
        Ok(spec)
    }

    /// Output shape and parameter count of every layer, checking that the layers fit.
    pub fn summary(&self) -> Result<Summary> {
        let mut shape = vec![3, self.input_side, self.input_side];
        let mut rows = Vec::with_capacity(self.layers.len());
        let bad = |what: String| TrainError::Config(format!("model {}: {what}", self.name));
        for layer in &self.layers {
            let (label, params) = match layer {
                LayerSpec::Conv {
                    name,
                    out,
                    kernel,
                    stride,
                    pad,
                    groups,
                    ..
                } => {
                    let [c, h, w] = chw(&shape)
                        .ok_or_else(|| bad(format!("{name} needs a C x H x W input")))?;
                    if c % groups != 0 || out % groups != 0 {
                        return Err(bad(format!(
                            "{name}: {c} -> {out} channels not divisible by {groups} groups"
                        )));
                    }
                    let oh = (h + 2 * pad - kernel) / stride + 1;
                    let ow = (w + 2 * pad - kernel) / stride + 1;
                    if h + 2 * pad < *kernel || oh < 1 {
                        return Err(bad(format!(
                            "{name}: input {h}x{w} smaller than kernel {kernel}"
                        )));
                    }
                    shape = vec![*out, oh, ow];
                    let g = if *groups > 1 {
                        format!(", groups {groups}")
                    } else {
                        String::new()
                    };
                    (
                        format!("{name} conv {kernel}x{kernel}/{stride} pad {pad}{g}"),
                        out * (c / groups) * kernel * kernel + out,
                    )
                }
                LayerSpec::Relu => ("relu".to_string(), 0),
                LayerSpec::Lrn { params: p, towers } => {
                    let [c, _, _] = chw(&shape).ok_or_else(|| bad("lrn needs C x H x W".into()))?;
                    if *towers < 1 || c % towers != 0 {
                        return Err(bad(format!("lrn: {c} channels in {towers} towers")));
                    }
                    let per = if *towers > 1 {
                        format!(", per tower of {}", c / towers)
                    } else {
                        String::new()
                    };
                    (
                        format!(
                            "lrn k={} n={} alpha={} beta={}{per}",
                            p.k, p.n, p.alpha, p.beta
                        ),
                        0,
                    )
                }
                LayerSpec::MaxPool { kernel, stride } => {
                    let [c, h, w] =
                        chw(&shape).ok_or_else(|| bad("maxpool needs C x H x W".into()))?;
                    if h < *kernel || w < *kernel {
                        return Err(bad(format!("maxpool {kernel}/{stride} on {h}x{w}")));
                    }
                    shape = vec![c, (h - kernel) / stride + 1, (w - kernel) / stride + 1];
                    (format!("maxpool {kernel}/{stride}"), 0)
                }
                LayerSpec::AdaptiveAvgPool { side } => {
                    let [c, _, _] =
                        chw(&shape).ok_or_else(|| bad("avgpool needs C x H x W".into()))?;
                    shape = vec![c, *side, *side];
                    (format!("adaptive avgpool {side}x{side}"), 0)
                }
                LayerSpec::Flatten => {
                    shape = vec![shape.iter().product()];
                    ("flatten".to_string(), 0)
                }
                LayerSpec::Dropout { p } => (format!("dropout {p}"), 0),
                LayerSpec::Linear { name, out, .. } => {
                    let [inp] = shape[..] else {
                        return Err(bad(format!("{name} needs a flat input")));
                    };
                    shape = vec![*out];
                    (format!("{name} linear"), inp * out + out)
                }
            };
            rows.push(SummaryRow {
                layer: label,
                output: shape.clone(),
                params,
            });
        }
        if shape != [self.classes] {
            return Err(bad(format!(
                "output shape {shape:?}, expected [{}]",
                self.classes
            )));
        }
        let total = rows.iter().map(|r| r.params).sum();
        Ok(Summary {
            model: self.name.clone(),
            input: vec![3, self.input_side, self.input_side],
            rows,
            total_params: total,
        })
    }
}

fn chw(shape: &[i64]) -> Option<[i64; 3]> {
    match *shape {
        [c, h, w] => Some([c, h, w]),
        _ => None,
    }
}

/// One row of a model summary.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SummaryRow {
    /// Layer description.
    pub layer: String,
    /// Output shape of one sample (`[C, H, W]` or `[F]`).
    pub output: Vec<i64>,
    /// Trainable parameters of this layer.
    pub params: i64,
}

/// Layers, output shapes and parameter counts.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Summary {
    /// Model name.
    pub model: String,
    /// Input shape of one sample.
    pub input: Vec<i64>,
    /// One row per layer.
    pub rows: Vec<SummaryRow>,
    /// Sum of all parameters.
    pub total_params: i64,
}

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

    #[test]
    fn parameter_counts_match_the_paper_and_torchvision() {
        let paper = ModelSpec::by_name("alexnet", 1000)
            .unwrap()
            .summary()
            .unwrap();
        assert_eq!(paper.total_params, 60_965_224);
        let per_layer: Vec<i64> = paper
            .rows
            .iter()
            .map(|r| r.params)
            .filter(|&p| p > 0)
            .collect();
        assert_eq!(
            per_layer,
            [
                34_944, 307_456, 885_120, 663_936, 442_624, 37_752_832, 16_781_312, 4_097_000
            ]
        );
        let shapes: Vec<&[i64]> = paper.rows.iter().map(|r| r.output.as_slice()).collect();
        assert_eq!(shapes[0], [96, 55, 55]);
        assert_eq!(shapes[3], [96, 27, 27]);
        assert_eq!(shapes[7], [256, 13, 13]);
        assert_eq!(shapes[14], [256, 6, 6]);
        let owt = ModelSpec::by_name("alexnet-owt", 1000)
            .unwrap()
            .summary()
            .unwrap();
        assert_eq!(owt.total_params, 61_100_840);
        assert_eq!(owt.rows[0].output, [64, 55, 55]);
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

    #[test]
    fn lrn_layers_read_old_and_new_specs() {
        let old = r#"{"type":"lrn","k":2.0,"n":5,"alpha":0.0001,"beta":0.75}"#;
        let layer: LayerSpec = serde_json::from_str(old).unwrap();
        assert_eq!(
            layer,
            LayerSpec::Lrn {
                params: LrnParams::PAPER,
                towers: 1
            },
            "checkpoints from before towers keep one window over all channels"
        );
        let spec = ModelSpec::by_name("alexnet", 10).unwrap();
        let lrn: Vec<&LayerSpec> = spec
            .layers
            .iter()
            .filter(|l| matches!(l, LayerSpec::Lrn { .. }))
            .collect();
        assert_eq!(lrn.len(), 2);
        assert!(
            lrn.iter()
                .all(|l| matches!(l, LayerSpec::Lrn { towers: 2, .. }))
        );
        let json = serde_json::to_string(&spec).unwrap();
        assert_eq!(serde_json::from_str::<ModelSpec>(&json).unwrap(), spec);
        let summary = spec.summary().unwrap();
        assert!(
            summary.rows[2].layer.contains("per tower of 48"),
            "{}",
            summary.rows[2].layer
        );
    }

    /// Every scheme `--init` offers parses from its serialised name.
    #[test]
    fn every_init_scheme_parses_from_its_name() {
        for scheme in [InitScheme::Paper, InitScheme::Torch, InitScheme::Kaiming] {
            let name = serde_json::to_value(scheme).unwrap();
            let name = name.as_str().unwrap();
            assert_eq!(name.parse::<InitScheme>().unwrap(), scheme, "{name}");
        }
        assert!("xavier".parse::<InitScheme>().is_err());
    }

    #[test]
    fn unknown_names_and_bad_geometry_are_errors() {
        assert!(matches!(
            ModelSpec::by_name("vgg", 10),
            Err(TrainError::UnknownModel { .. })
        ));
        let mut spec = ModelSpec::by_name("alexnet-tiny", 10).unwrap();
        spec.input_side = 8;
        assert!(spec.summary().is_err());
    }
}
