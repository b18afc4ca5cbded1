//! Model specs (the layers of a student or teacher) and the candle network
//! built from one.

use super::ops::conv2d::{conv2d_block, Conv2dParams};
use super::ops::depthwise::depthwise_conv2d_with;
use super::ops::fake_quant::fake_quant_weight;
use super::ops::im2col::Epilogue;
use super::ops::linear::{linear, linear_relu};
use super::ops::pool;
use crate::quantize::qat::FakeQuant;
use candle_core::{Module, Tensor};
use candle_nn::VarBuilder;
use serde::{Deserialize, Serialize};

/// One layer of a spec.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Layer {
    /// Fully connected layer with bias.
    Dense {
        /// Output features.
        units: usize,
    },
    /// 2-D convolution with bias (square kernel, symmetric padding).
    Conv {
        /// Output channels.
        filters: usize,
        /// Kernel size.
        kernel: usize,
        /// Stride.
        #[serde(default = "one")]
        stride: usize,
        /// Zero padding on every side.
        #[serde(default)]
        padding: usize,
    },
    /// Depthwise 2-D convolution with bias (one filter per channel).
    Depthwise {
        /// Kernel size.
        kernel: usize,
        /// Stride.
        #[serde(default = "one")]
        stride: usize,
        /// Zero padding on every side.
        #[serde(default)]
        padding: usize,
    },
    /// Max pooling over `size`×`size` windows with stride `size`.
    MaxPool {
        /// Window size and stride.
        size: usize,
    },
    /// Average pooling over `size`×`size` windows with stride `size`: as the
    /// first layer, the student sees the image at 1/size resolution
    /// (cross-resolution distillation) and the exported model still takes
    /// the full-size input.
    AvgPool {
        /// Window size and stride.
        size: usize,
    },
    /// Mean over the spatial dims: [N, C, H, W] → [N, C].
    GlobalAvgPool,
    /// Rectified linear unit.
    Relu,
    /// [N, ...] → [N, product of the rest].
    Flatten,
}

fn one() -> usize {
    1
}

/// A network architecture: input shape (C, H, W; or features) and layers.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSpec {
    /// Short name, e.g. `mlp-800`.
    pub name: String,
    /// Input shape without the batch dim: `[784]` or `[1, 28, 28]`.
    pub input: Vec<usize>,
    /// The layers, in order.
    pub layers: Vec<Layer>,
}

/// Errors building or describing a model.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// The spec is inconsistent (e.g. a conv on a flat input).
    #[error("model '{model}', layer {layer}: {reason}")]
    Spec {
        /// The spec's name.
        model: String,
        /// The layer's position.
        layer: usize,
        /// What is wrong.
        reason: String,
    },
    /// candle failed.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    /// A spec file that cannot be read or parsed.
    #[error("{path}: {reason}")]
    File {
        /// The spec file.
        path: std::path::PathBuf,
        /// What is wrong.
        reason: String,
    },
}

/// Parameter and multiply-accumulate counts of a spec.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Cost {
    /// Trainable parameters.
    pub parameters: usize,
    /// Multiply-accumulates of one forward pass of one image.
    pub macs: usize,
}

impl ModelSpec {
    /// The built-in specs by name: `mlp` (784-800-800-10), `cnn`, `ds`.
    pub fn builtin(name: &str) -> Option<Self> {
        match name {
            "mlp" => Some(Self::mlp_800()),
            "cnn" => Some(Self::cnn_small()),
            "ds" => Some(Self::ds_block()),
            _ => None,
        }
    }

    /// Reads a spec from a TOML file (`name`, `input`, `[[layers]]` tables
    /// with a `type`) and checks that its layers fit together.
    pub fn from_toml_file(path: &std::path::Path) -> Result<Self, ModelError> {
        let err = |reason: String| ModelError::File {
            path: path.into(),
            reason,
        };
        let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
        let spec: Self = toml::from_str(&text).map_err(|e| err(e.to_string()))?;
        spec.cost()?;
        Ok(spec)
    }

    /// The MLP 784-800-800-10 of Hinton et al. (the training benchmark's first model).
    pub fn mlp_800() -> Self {
        let dense = |units| Layer::Dense { units };
        ModelSpec {
            name: "mlp-784-800-800-10".into(),
            input: vec![784],
            layers: vec![dense(800), Layer::Relu, dense(800), Layer::Relu, dense(10)],
        }
    }

    /// conv32-pool-conv64-pool-fc128-fc10 on 1×28×28.
    pub fn cnn_small() -> Self {
        let conv = |filters| Layer::Conv {
            filters,
            kernel: 3,
            stride: 1,
            padding: 1,
        };
        ModelSpec {
            name: "cnn-c32-c64-fc128".into(),
            input: vec![1, 28, 28],
            layers: vec![
                conv(32),
                Layer::Relu,
                Layer::MaxPool { size: 2 },
                conv(64),
                Layer::Relu,
                Layer::MaxPool { size: 2 },
                Layer::Flatten,
                Layer::Dense { units: 128 },
                Layer::Relu,
                Layer::Dense { units: 10 },
            ],
        }
    }

    /// conv16 s2 → depthwise 3×3 → pointwise 32 → GAP → fc10 on 1×28×28.
    pub fn ds_block() -> Self {
        ModelSpec {
            name: "ds-c16s2-dw3-pw32-gap".into(),
            input: vec![1, 28, 28],
            layers: vec![
                Layer::Conv {
                    filters: 16,
                    kernel: 3,
                    stride: 2,
                    padding: 1,
                },
                Layer::Relu,
                Layer::Depthwise {
                    kernel: 3,
                    stride: 1,
                    padding: 1,
                },
                Layer::Relu,
                Layer::Conv {
                    filters: 32,
                    kernel: 1,
                    stride: 1,
                    padding: 0,
                },
                Layer::Relu,
                Layer::GlobalAvgPool,
                Layer::Dense { units: 10 },
            ],
        }
    }

    fn err(&self, layer: usize, reason: impl Into<String>) -> ModelError {
        ModelError::Spec {
            model: self.name.clone(),
            layer,
            reason: reason.into(),
        }
    }

    /// Walks the layers with shape inference, calling `visit(index, layer,
    /// input shape, output shape)`; fails on an inconsistent spec, else
    /// returns the final output shape.
    pub fn walk(
        &self,
        mut visit: impl FnMut(usize, &Layer, &[usize], &[usize]),
    ) -> Result<Vec<usize>, ModelError> {
        let mut shape = self.input.clone();
        for (i, layer) in self.layers.iter().enumerate() {
            let out = match (layer, shape.as_slice()) {
                (Layer::Dense { units }, [_]) => vec![*units],
                (Layer::Dense { .. }, _) => {
                    return Err(self.err(i, "dense needs a flat input (add a flatten layer)"))
                }
                (
                    Layer::Conv {
                        kernel,
                        stride,
                        padding,
                        ..
                    }
                    | Layer::Depthwise {
                        kernel,
                        stride,
                        padding,
                    },
                    &[c, h, w],
                ) => {
                    let channels = match layer {
                        Layer::Conv { filters, .. } => *filters,
                        _ => c,
                    };
                    let out = |d: usize| {
                        (d + 2 * padding)
                            .checked_sub(*kernel)
                            .map(|r| r / stride + 1)
                    };
                    match (out(h), out(w), *stride > 0) {
                        (Some(oh), Some(ow), true) => vec![channels, oh, ow],
                        _ => {
                            return Err(
                                self.err(i, "kernel larger than the padded input, or stride 0")
                            )
                        }
                    }
                }
                (Layer::MaxPool { size } | Layer::AvgPool { size }, &[c, h, w])
                    if *size > 0 && h >= *size && w >= *size =>
                {
                    vec![c, h / size, w / size]
                }
                (Layer::GlobalAvgPool, &[c, _, _]) => vec![c],
                (Layer::Relu, s) => s.to_vec(),
                (Layer::Flatten, s) => vec![s.iter().product()],
                _ => {
                    return Err(
                        self.err(i, format!("does not apply to an input of shape {shape:?}"))
                    )
                }
            };
            visit(i, layer, &shape, &out);
            shape = out;
        }
        Ok(shape)
    }

    /// Parameters and MACs per image.
    pub fn cost(&self) -> Result<Cost, ModelError> {
        let mut cost = Cost::default();
        self.walk(|_, layer, input, out| {
            let (params, macs) = match (layer, input) {
                (Layer::Dense { units }, [n]) => (n * units + units, n * units),
                (
                    Layer::Conv {
                        filters, kernel, ..
                    },
                    [c, ..],
                ) => {
                    let per = c * kernel * kernel;
                    (filters * per + filters, out.iter().product::<usize>() * per)
                }
                (Layer::Depthwise { kernel, .. }, [c, ..]) => (
                    c * kernel * kernel + c,
                    out.iter().product::<usize>() * kernel * kernel,
                ),
                _ => (0, 0),
            };
            cost.parameters += params;
            cost.macs += macs;
        })?;
        Ok(cost)
    }
}

/// A layer with its parameters.
enum Built {
    Dense(candle_nn::Linear),
    /// A Dense immediately followed by ReLU, run as one fused op (fast kernels).
    DenseRelu(candle_nn::Linear),
    Conv {
        weight: Tensor,
        bias: Tensor,
        stride: usize,
        padding: usize,
        groups: usize,
        /// The ReLU and max pooling that follow a dense conv, folded into
        /// it (fast kernels only; `Epilogue::NONE` otherwise).
        epilogue: Epilogue,
    },
    MaxPool(usize),
    AvgPool(usize),
    GlobalAvgPool,
    Relu,
    Flatten,
}

/// Folds each Dense + ReLU pair into one `DenseRelu`, and the ReLU and max
/// pooling after a dense conv into the conv. Each layer comes with the
/// index of the last spec layer it covers, which a fused layer extends.
fn fuse_epilogues(layers: Vec<(Built, usize)>) -> Vec<(Built, usize)> {
    let mut out: Vec<(Built, usize)> = Vec::with_capacity(layers.len());
    for (layer, end) in layers {
        match (out.last_mut(), &layer) {
            (Some((Built::Dense(_), _)), Built::Relu) => {
                if let Some((Built::Dense(l), _)) = out.pop() {
                    out.push((Built::DenseRelu(l), end));
                }
            }
            (
                Some((
                    Built::Conv {
                        groups: 1,
                        epilogue: ep,
                        ..
                    },
                    last,
                )),
                Built::Relu,
            ) if !ep.relu => {
                ep.relu = true;
                *last = end;
            }
            (
                Some((
                    Built::Conv {
                        groups: 1,
                        epilogue: ep,
                        ..
                    },
                    last,
                )),
                Built::MaxPool(k),
            ) if ep.pool == 1 => {
                ep.pool = *k;
                *last = end;
            }
            _ => out.push((layer, end)),
        }
    }
    out
}

fn dense_bias(l: &candle_nn::Linear) -> candle_core::Result<&Tensor> {
    l.bias()
        .ok_or_else(|| candle_core::Error::Msg("dense layer without bias".into()))
}

/// Which kernels the network's layers use.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Kernels {
    /// candle's own conv2d (grouped conv for depthwise).
    Candle,
    /// tinykd's custom ops: im2col + GEMM conv and a direct depthwise
    /// kernel with fused bias, max pooling, ReLU and global average pooling,
    /// each with its own backward pass.
    Fast,
}

/// A network built from a [`ModelSpec`], its parameters in a `VarMap`.
pub struct Network {
    /// The spec's name, for errors.
    name: String,
    layers: Vec<Built>,
    /// The last spec layer each of `layers` covers (fused layers cover several).
    ends: Vec<usize>,
    kernels: Kernels,
    qat: Option<Qat>,
}

/// Fake quantization of a network in quantization-aware training.
struct Qat {
    points: FakeQuant,
    /// The range slot applied after each built layer.
    slots: Vec<Option<usize>>,
}

impl Network {
    /// Creates the parameters under `vb` (Kaiming-uniform weights, as candle-nn does).
    pub fn new(spec: &ModelSpec, vb: VarBuilder, kernels: Kernels) -> Result<Self, ModelError> {
        let mut shapes = Vec::new();
        spec.walk(|_, _, input, _| shapes.push(input.to_vec()))?;
        let mut layers = Vec::new();
        for (i, (layer, input)) in spec.layers.iter().zip(&shapes).enumerate() {
            let vb = vb.pp(format!("l{i}"));
            let built = match layer {
                Layer::Dense { units } => Built::Dense(candle_nn::linear(input[0], *units, vb)?),
                Layer::Conv {
                    kernel,
                    stride,
                    padding,
                    ..
                }
                | Layer::Depthwise {
                    kernel,
                    stride,
                    padding,
                } => {
                    // A depthwise conv is a grouped conv with one group per channel.
                    let (out_channels, groups) = match layer {
                        Layer::Conv { filters, .. } => (*filters, 1),
                        _ => (input[0], input[0]),
                    };
                    let cfg = candle_nn::Conv2dConfig {
                        padding: *padding,
                        stride: *stride,
                        groups,
                        ..Default::default()
                    };
                    let c = candle_nn::conv2d(input[0], out_channels, *kernel, cfg, vb)?;
                    let bias = c
                        .bias()
                        .cloned()
                        .ok_or_else(|| spec.err(i, "conv without bias"))?;
                    Built::Conv {
                        weight: c.weight().clone(),
                        bias,
                        stride: *stride,
                        padding: *padding,
                        groups,
                        epilogue: Epilogue::NONE,
                    }
                }
                Layer::MaxPool { size } => Built::MaxPool(*size),
                Layer::AvgPool { size } => Built::AvgPool(*size),
                Layer::GlobalAvgPool => Built::GlobalAvgPool,
                Layer::Relu => Built::Relu,
                Layer::Flatten => Built::Flatten,
            };
            layers.push((built, i));
        }
        if kernels == Kernels::Fast {
            layers = fuse_epilogues(layers);
        }
        let (layers, ends) = layers.into_iter().unzip();
        Ok(Network {
            name: spec.name.clone(),
            layers,
            ends,
            kernels,
            qat: None,
        })
    }

    /// Fake-quantizes from now on (quantization-aware training) at
    /// `points`, which must come from the same spec: the weights of every
    /// MAC layer, and the activations at the points' slots. A fused layer
    /// (conv + ReLU + max pool) is quantized after its last part, which is
    /// the same as after the part the point names, since what follows it
    /// inside is monotone and keeps zero on the grid.
    pub fn set_fake_quant(&mut self, points: FakeQuant) -> Result<(), ModelError> {
        let mut slots = Vec::with_capacity(self.layers.len());
        let mut start = 0;
        for &end in &self.ends {
            let slot = points.slot_after(end);
            if let Some(i) = (start..end).find(|&i| {
                points
                    .slot_after(i)
                    .is_some_and(|s| slot.is_none_or(|t| t != s))
            }) {
                return Err(ModelError::Spec {
                    model: self.name.clone(),
                    layer: i,
                    reason: "quantized inside a fused layer whose output is not; \
                             train with --kernels candle"
                        .into(),
                });
            }
            slots.push(slot);
            start = end + 1;
        }
        self.qat = Some(Qat { points, slots });
        Ok(())
    }

    /// The fake quantization set with [`Network::set_fake_quant`].
    pub fn fake_quant(&self) -> Option<&FakeQuant> {
        self.qat.as_ref().map(|q| &q.points)
    }

    /// Logits for a batch: `[N, ...input]` → `[N, classes]`.
    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        Ok(self.run(x, false, &[])?.0)
    }

    /// Logits for a training batch: as [`Network::forward`], and with fake
    /// quantization the activation ranges first move towards this batch's.
    pub fn forward_train(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        Ok(self.run(x, true, &[])?.0)
    }

    /// Logits for a training batch and the outputs of the spec layers
    /// `taps` (in that order), each as the layers after it see it.
    pub fn forward_tapped(
        &self,
        x: &Tensor,
        taps: &[usize],
    ) -> candle_core::Result<(Tensor, Vec<Tensor>)> {
        self.run(x, true, taps)
    }

    /// Errors unless each of `taps` is a spec layer whose output the
    /// network computes: with the fast kernels, a conv's ReLU and max pool
    /// run inside the conv, so only the last of them can be tapped.
    pub fn check_taps(&self, taps: &[usize]) -> Result<(), ModelError> {
        let last = self.ends.last().copied().unwrap_or(0);
        for &t in taps {
            if !self.ends.contains(&t) {
                let reason = if t > last {
                    format!("the model has {} layers", last + 1)
                } else {
                    let end = self.ends.iter().find(|&&e| e > t).expect("t < last");
                    format!(
                        "its output is not computed (fused into layer {end}); \
                         tap layer {end} or train with --kernels candle"
                    )
                };
                return Err(ModelError::Spec {
                    model: self.name.clone(),
                    layer: t,
                    reason,
                });
            }
        }
        Ok(())
    }

    fn run(
        &self,
        x: &Tensor,
        observe: bool,
        taps: &[usize],
    ) -> candle_core::Result<(Tensor, Vec<Tensor>)> {
        let mut tapped: Vec<Option<Tensor>> = vec![None; taps.len()];
        let fq_weight = |w: &Tensor| match self.qat {
            Some(_) => fake_quant_weight(w),
            None => Ok(w.clone()),
        };
        let mut x = x.clone();
        if let Some(slot) = self.qat.as_ref().and_then(|q| q.points.input_slot()) {
            let points = &self.qat.as_ref().expect("checked").points;
            x = points.activation(slot, &x, observe)?;
        }
        for (k, layer) in self.layers.iter().enumerate() {
            x = match layer {
                Built::Dense(l) => {
                    let w = fq_weight(l.weight())?;
                    match self.kernels {
                        Kernels::Candle => {
                            candle_nn::Linear::new(w, l.bias().cloned()).forward(&x)?
                        }
                        Kernels::Fast => linear(&x, &w, dense_bias(l)?)?,
                    }
                }
                Built::DenseRelu(l) => linear_relu(&x, &fq_weight(l.weight())?, dense_bias(l)?)?,
                Built::Conv {
                    weight,
                    bias,
                    stride,
                    padding,
                    groups,
                    epilogue,
                } => {
                    let weight = &fq_weight(weight)?;
                    match self.kernels {
                        Kernels::Candle => x
                            .conv2d(weight, *padding, *stride, 1, *groups)?
                            .broadcast_add(&bias.reshape((1, bias.dim(0)?, 1, 1))?)?,
                        Kernels::Fast => {
                            let p = Conv2dParams::new(*stride, *padding);
                            if *groups == 1 {
                                conv2d_block(&x, weight, Some(bias), &p, *epilogue)?
                            } else {
                                depthwise_conv2d_with(&x, weight, Some(bias), &p)?
                            }
                        }
                    }
                }
                Built::MaxPool(size) => match self.kernels {
                    Kernels::Candle => pool::candle_max_pool2d(&x, *size)?,
                    Kernels::Fast => pool::max_pool2d(&x, *size)?,
                },
                Built::AvgPool(size) => x.avg_pool2d(*size)?,
                Built::GlobalAvgPool => match self.kernels {
                    Kernels::Candle => x.mean((2, 3))?,
                    Kernels::Fast => pool::global_avg_pool(&x)?,
                },
                Built::Relu => match self.kernels {
                    Kernels::Candle => x.relu()?,
                    Kernels::Fast => pool::relu(&x)?,
                },
                Built::Flatten => x.flatten_from(1)?,
            };
            if let Some(q) = &self.qat {
                if let Some(slot) = q.slots[k] {
                    x = q.points.activation(slot, &x, observe)?;
                }
            }
            for (t, out) in taps.iter().zip(tapped.iter_mut()) {
                if *t == self.ends[k] {
                    *out = Some(x.clone());
                }
            }
        }
        let tapped = tapped
            .into_iter()
            .zip(taps)
            .map(|(t, i)| {
                t.ok_or_else(|| {
                    candle_core::Error::Msg(format!("{}: layer {i} cannot be tapped", self.name))
                })
            })
            .collect::<candle_core::Result<_>>()?;
        Ok((x, tapped))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn costs_match_hand_counts() {
        let mlp = ModelSpec::mlp_800().cost().unwrap();
        assert_eq!(
            mlp.parameters,
            784 * 800 + 800 + 800 * 800 + 800 + 800 * 10 + 10
        );
        assert_eq!(mlp.macs, 784 * 800 + 800 * 800 + 800 * 10);
        let cnn = ModelSpec::cnn_small().cost().unwrap();
        let conv = 28 * 28 * 32 * 9 + 14 * 14 * 64 * 32 * 9;
        assert_eq!(cnn.macs, conv + 64 * 7 * 7 * 128 + 128 * 10);
        let ds = ModelSpec::ds_block().cost().unwrap();
        assert_eq!(
            ds.parameters,
            (16 * 9 + 16) + (16 * 9 + 16) + (32 * 16 + 32) + (32 * 10 + 10)
        );
    }

    #[test]
    fn bad_specs_name_the_layer() {
        let mut spec = ModelSpec::cnn_small();
        spec.layers.remove(6); // the flatten before the first dense
        let err = spec.cost().unwrap_err().to_string();
        assert!(err.contains("layer 6") && err.contains("flatten"), "{err}");
    }

    #[test]
    fn forward_shapes_and_fast_kernels_match_candle() {
        let varmap = candle_nn::VarMap::new();
        let vb =
            VarBuilder::from_varmap(&varmap, candle_core::DType::F32, &candle_core::Device::Cpu);
        for spec in [
            ModelSpec::mlp_800(),
            ModelSpec::cnn_small(),
            ModelSpec::ds_block(),
        ] {
            let candle = Network::new(&spec, vb.pp(&spec.name), Kernels::Candle).unwrap();
            // Same VarBuilder prefix: the same parameters, other conv kernels.
            let fast = Network::new(&spec, vb.pp(&spec.name), Kernels::Fast).unwrap();
            let mut shape = vec![3];
            shape.extend(&spec.input);
            let x = Tensor::randn(0f32, 1f32, shape, &candle_core::Device::Cpu).unwrap();
            let (a, b) = (candle.forward(&x).unwrap(), fast.forward(&x).unwrap());
            assert_eq!(b.dims(), &[3, 10], "{}", spec.name);
            let diff = (a - &b)
                .unwrap()
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            let scale = b
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap()
                .max(1.0);
            assert!(
                diff <= 1e-4 * scale,
                "{}: fast vs candle differ by {diff}",
                spec.name
            );
        }
    }
}
