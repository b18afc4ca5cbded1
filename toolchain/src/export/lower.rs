//! Lowering: a spec and its parameters become ONNX-shaped steps, each with
//! its checked f32 tensors. Every parameter is looked up by its name
//! (`l{i}.weight`, `l{i}.bias`, `i` the layer's position in the spec) and its
//! shape checked against the one the spec implies; parameters no layer uses
//! are an error too, so a file is never exported from the wrong weights.

use super::ExportError;
use crate::train::model::{Layer, ModelSpec};
use candle_core::{DType, Tensor};
use std::collections::HashMap;

/// A float tensor that becomes an initializer.
pub(crate) struct Param {
    /// Its name, `l{i}.weight` or `l{i}.bias`.
    pub name: String,
    /// Its dims.
    pub dims: Vec<usize>,
    /// Its elements, row-major.
    pub data: Vec<f32>,
}

/// One exported operation.
pub(crate) enum Op {
    /// `Gemm(transB = 1)`: `y = x·Wᵀ + b`, weight `[out, in]`.
    Dense {
        weight: Param,
        bias: Param,
    },
    /// `Conv` with a square kernel and symmetric padding; `groups` is 1, or
    /// the channel count for a depthwise conv (weight `[C, 1, K, K]`).
    Conv {
        weight: Param,
        bias: Param,
        kernel: usize,
        stride: usize,
        padding: usize,
        groups: usize,
    },
    /// `Relu`.
    Relu,
    /// `MaxPool` with window and stride `size` (floor).
    MaxPool {
        size: usize,
    },
    /// `GlobalAveragePool` then `Flatten(axis = 1)`: `[N, C, H, W]` → `[N, C]`.
    /// `AveragePool` with window and stride `size` (floor, no padding).
    AvgPool {
        size: usize,
    },
    GlobalAvgPool,
    /// `Flatten(axis = 1)`.
    Flatten,
}

/// One layer of the spec, lowered.
pub(crate) struct Step {
    /// The layer's position in the spec (names its nodes and tensors).
    pub layer: usize,
    /// What it computes.
    pub op: Op,
}

/// A whole spec, lowered.
pub(crate) struct Lowered {
    /// The steps, in order; never empty.
    pub steps: Vec<Step>,
    /// The number of output logits.
    pub classes: usize,
}

/// Checks `params` against `spec` and lowers every layer.
pub(crate) fn lower(spec: &ModelSpec, params: &[(String, Tensor)]) -> Result<Lowered, ExportError> {
    let unsupported = |layer: usize, reason: String| ExportError::Unsupported {
        model: spec.name.clone(),
        layer,
        reason,
    };
    let mut table: HashMap<&str, &Tensor> = HashMap::new();
    for (name, tensor) in params {
        if table.insert(name.as_str(), tensor).is_some() {
            return Err(ExportError::UnexpectedParam {
                name: name.clone(),
                reason: "given twice".into(),
            });
        }
    }
    // The spec's own shape walk (with its checks and messages) gives each
    // layer's input shape; lowering only picks the ONNX op and its tensors.
    let mut inputs = Vec::with_capacity(spec.layers.len());
    let shape = spec.walk(|_, _, input, _| inputs.push(input.to_vec()))?;
    let mut steps = Vec::with_capacity(spec.layers.len());
    for (i, (layer, input)) in spec.layers.iter().zip(&inputs).enumerate() {
        let op = match layer {
            Layer::Dense { units } => Op::Dense {
                weight: take(&mut table, i, "weight", vec![*units, input[0]])?,
                bias: take(&mut table, i, "bias", vec![*units])?,
            },
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
                let c = input[0];
                let (filters, per_filter, groups) = match layer {
                    Layer::Conv { filters, .. } => (*filters, c, 1),
                    _ => (c, 1, c),
                };
                let k = *kernel;
                Op::Conv {
                    weight: take(&mut table, i, "weight", vec![filters, per_filter, k, k])?,
                    bias: take(&mut table, i, "bias", vec![filters])?,
                    kernel: k,
                    stride: *stride,
                    padding: *padding,
                    groups,
                }
            }
            Layer::MaxPool { size } => Op::MaxPool { size: *size },
            Layer::AvgPool { size } => Op::AvgPool { size: *size },
            Layer::GlobalAvgPool => Op::GlobalAvgPool,
            Layer::Relu => Op::Relu,
            Layer::Flatten => Op::Flatten,
        };
        steps.push(Step { layer: i, op });
    }
    let mut unused: Vec<&str> = table.into_keys().collect();
    unused.sort_unstable();
    if let Some(name) = unused.first() {
        return Err(ExportError::UnexpectedParam {
            name: name.to_string(),
            reason: "no layer of the spec has it".into(),
        });
    }
    let classes = match (steps.is_empty(), shape.as_slice()) {
        (false, &[classes]) => classes,
        (true, _) => return Err(unsupported(0, "the spec has no layers".into())),
        (false, s) => {
            return Err(unsupported(
                spec.layers.len(),
                format!(
                    "the output has shape {s:?}; a classifier ends in [classes] \
                     (end with global_avg_pool or flatten, then dense)"
                ),
            ))
        }
    };
    Ok(Lowered {
        steps: fold_batch_norm(steps),
        classes,
    })
}

/// Removes `l{layer}.{suffix}` from `table` and checks its shape and values.
fn take(
    table: &mut HashMap<&str, &Tensor>,
    layer: usize,
    suffix: &str,
    expected: Vec<usize>,
) -> Result<Param, ExportError> {
    let name = format!("l{layer}.{suffix}");
    let tensor = table
        .remove(name.as_str())
        .ok_or_else(|| ExportError::MissingParam {
            layer,
            name: name.clone(),
        })?;
    if tensor.dims() != expected.as_slice() {
        return Err(ExportError::ParamShape {
            layer,
            name,
            expected,
            found: tensor.dims().to_vec(),
        });
    }
    let data = tensor
        .to_dtype(DType::F32)
        .and_then(|t| t.flatten_all())
        .and_then(|t| t.to_vec1::<f32>())
        .map_err(|e| ExportError::ParamValues {
            name: name.clone(),
            reason: e.to_string(),
        })?;
    if let Some((index, value)) = data.iter().enumerate().find(|(_, v)| !v.is_finite()) {
        return Err(ExportError::ParamValues {
            name,
            reason: format!("element {index} is {value} (a diverged training run?)"),
        });
    }
    Ok(Param {
        name,
        dims: expected,
        data,
    })
}

/// Folds normalisation layers into the weights of the layer before them.
///
/// Specs have no BatchNorm layer yet, so the steps come back unchanged.
/// When one is added, lower it to an `Op::BatchNorm { gamma, beta, mean,
/// var, eps }` step and fold it here into the preceding `Dense`/`Conv` (per
/// output channel `o`, with `a = γ_o / √(σ²_o + ε)`: `W'_o = a·W_o`,
/// `b'_o = a·(b_o − μ_o) + β_o`), so the file needs no
/// `BatchNormalization` node and quantization sees the folded weights.
fn fold_batch_norm(steps: Vec<Step>) -> Vec<Step> {
    steps
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn zeros(dims: &[usize]) -> Tensor {
        Tensor::zeros(dims, DType::F32, &Device::Cpu).unwrap()
    }

    fn mlp() -> ModelSpec {
        ModelSpec {
            name: "mlp".into(),
            input: vec![6],
            layers: vec![
                Layer::Dense { units: 4 },
                Layer::Relu,
                Layer::Dense { units: 3 },
            ],
        }
    }

    fn mlp_params() -> Vec<(String, Tensor)> {
        vec![
            ("l0.weight".into(), zeros(&[4, 6])),
            ("l0.bias".into(), zeros(&[4])),
            ("l2.weight".into(), zeros(&[3, 4])),
            ("l2.bias".into(), zeros(&[3])),
        ]
    }

    #[test]
    fn lowers_an_mlp() {
        let lowered = lower(&mlp(), &mlp_params()).unwrap();
        assert_eq!(lowered.classes, 3);
        let layers: Vec<_> = lowered.steps.iter().map(|s| s.layer).collect();
        assert_eq!(layers, [0, 1, 2]);
        assert!(matches!(&lowered.steps[2].op, Op::Dense { weight, .. } if weight.dims == [3, 4]));
    }

    #[test]
    fn extra_or_duplicate_params_are_named() {
        let mut params = mlp_params();
        params.push(("l1.weight".into(), zeros(&[1])));
        let err = lower(&mlp(), &params).err().unwrap().to_string();
        assert!(
            err.contains("`l1.weight`") && err.contains("no layer"),
            "{err}"
        );
        let mut params = mlp_params();
        params.push(("l0.bias".into(), zeros(&[4])));
        let err = lower(&mlp(), &params).err().unwrap().to_string();
        assert!(err.contains("`l0.bias`") && err.contains("twice"), "{err}");
    }

    #[test]
    fn non_finite_weights_are_rejected() {
        let mut params = mlp_params();
        params[3].1 = Tensor::new(&[0f32, f32::NAN, 0.0], &Device::Cpu).unwrap();
        let err = lower(&mlp(), &params).err().unwrap().to_string();
        assert!(
            err.contains("`l2.bias`") && err.contains("element 1"),
            "{err}"
        );
    }

    #[test]
    fn the_output_must_be_flat() {
        let spec = ModelSpec {
            name: "no-head".into(),
            input: vec![1, 4, 4],
            layers: vec![Layer::MaxPool { size: 2 }],
        };
        let err = lower(&spec, &[]).err().unwrap().to_string();
        assert!(
            err.contains("layer 1") && err.contains("[1, 2, 2]"),
            "{err}"
        );
        let empty = ModelSpec {
            layers: vec![],
            ..spec
        };
        assert!(lower(&empty, &[]).is_err());
    }
}
