//! The models as data: what `supervision model list|summary` prints and what sv-train
//! builds into tensors. No libtorch here, so the `supervision` executable (which never
//! loads it) describes the models, and the trainer, checkpoints and the CLI share one
//! definition.
//!
//! A model is a [`ModelSpec`]: a list of [`LayerSpec`]s with the input side, class
//! count, initialisation and input scale. [`ModelSpec::summary`] walks the layers with
//! the convolution and pooling arithmetic (PyTorch's floor rule) to give every layer's
//! output shape and parameter count, refusing layers that do not fit; sv-train's tests
//! check that the tensors it builds have exactly these counts and shapes.
#![warn(missing_docs)]

use serde::{Deserialize, Serialize};

/// A model name or description that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ModelError {
    /// The model name is not a registered one.
    #[error("unknown model `{name}` (known: {known})")]
    UnknownModel {
        /// The name asked for.
        name: String,
        /// The known names, comma separated.
        known: String,
    },
    /// A value is out of range or the layers do not fit together.
    #[error("invalid configuration: {0}")]
    Config(String),
}

/// LRN constants, in the paper's convention (alpha not divided by `n`; see sv-train's
/// `lrn` module for the operation).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct LrnParams {
    /// Additive constant.
    pub k: f64,
    /// Number of adjacent channels in the window (odd).
    pub n: i64,
    /// Scale of the window's sum of squares.
    pub alpha: f64,
    /// Exponent.
    pub beta: f64,
}

impl LrnParams {
    /// The paper's values: k=2, n=5, alpha=1e-4, beta=0.75.
    pub const PAPER: LrnParams = LrnParams {
        k: 2.0,
        n: 5,
        alpha: 1e-4,
        beta: 0.75,
    };
}

impl Default for LrnParams {
    fn default() -> Self {
        Self::PAPER
    }
}

/// What the input values are, after the mean is subtracted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum InputScale {
    /// Centred raw values on the 0-255 scale, not divided by anything (the paper's).
    Raw,
    /// Also divided by the per-channel standard deviation (torchvision's recipe).
    Std,
}

impl InputScale {
    /// What checkpoints written before the choice existed used.
    pub fn legacy() -> InputScale {
        InputScale::Std
    }

    /// `raw` or `std`.
    pub fn as_str(self) -> &'static str {
        match self {
            InputScale::Raw => "raw",
            InputScale::Std => "std",
        }
    }
}

impl std::str::FromStr for InputScale {
    type Err = ModelError;
    fn from_str(s: &str) -> Result<Self, ModelError> {
        match s {
            "raw" => Ok(InputScale::Raw),
            "std" => Ok(InputScale::Std),
            _ => Err(ModelError::Config(format!(
                "unknown input scale `{s}` (raw, std)"
            ))),
        }
    }
}

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
    type Err = ModelError;
    fn from_str(s: &str) -> Result<Self, ModelError> {
        match s {
            "paper" => Ok(InitScheme::Paper),
            "torch" => Ok(InitScheme::Torch),
            "kaiming" => Ok(InitScheme::Kaiming),
            _ => Err(ModelError::Config(format!(
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
    pub fn by_name(name: &str, classes: i64) -> Result<ModelSpec, ModelError> {
        if classes < 1 {
            return Err(ModelError::Config(format!(
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
                return Err(ModelError::UnknownModel {
                    name: name.into(),
                    known: MODEL_NAMES.join(", "),
                });
            }
        };
        Ok(spec)
    }

    /// Output shape and parameter count of every layer, checking that the layers fit.
    pub fn summary(&self) -> Result<Summary, ModelError> {
        let mut shape = vec![3, self.input_side, self.input_side];
        let mut rows = Vec::with_capacity(self.layers.len());
        let bad = |what: String| ModelError::Config(format!("model {}: {what}", self.name));
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

    /// Every scheme `--init` offers parses from its serialised name; likewise the
    /// input scales.
    #[test]
    fn every_init_scheme_and_input_scale_parses_from_its_name() {
        for scheme in [InitScheme::Paper, InitScheme::Torch, InitScheme::Kaiming] {
            let name = serde_json::to_value(scheme).unwrap();
            let name = name.as_str().unwrap();
            assert_eq!(name.parse::<InitScheme>().unwrap(), scheme, "{name}");
        }
        assert!("xavier".parse::<InitScheme>().is_err());
        for scale in [InputScale::Raw, InputScale::Std] {
            assert_eq!(scale.as_str().parse::<InputScale>().unwrap(), scale);
        }
        assert!("unit".parse::<InputScale>().is_err());
    }

    #[test]
    fn unknown_names_and_bad_geometry_are_errors() {
        let err = ModelSpec::by_name("vgg", 10).unwrap_err();
        assert!(matches!(err, ModelError::UnknownModel { .. }));
        assert!(err.to_string().contains("alexnet-owt-tiny"), "{err}");
        assert!(ModelSpec::by_name("alexnet", 0).is_err());
        let mut spec = ModelSpec::by_name("alexnet-tiny", 10).unwrap();
        spec.input_side = 8;
        assert!(spec.summary().is_err());
        // groups that do not divide the channels
        let mut spec = ModelSpec::by_name("alexnet", 10).unwrap();
        if let LayerSpec::Conv { groups, .. } = &mut spec.layers[4] {
            *groups = 5;
        }
        let err = spec.summary().unwrap_err().to_string();
        assert!(err.contains("groups"), "{err}");
    }

    #[test]
    fn every_registered_model_fits_its_input() {
        for name in MODEL_NAMES {
            let s = ModelSpec::by_name(name, 7).unwrap().summary().unwrap();
            assert_eq!(s.rows.last().unwrap().output, [7], "{name}");
            assert_eq!(
                s.total_params,
                s.rows.iter().map(|r| r.params).sum::<i64>(),
                "{name}"
            );
        }
    }
}
