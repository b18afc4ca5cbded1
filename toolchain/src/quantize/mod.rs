//! Post-training quantization of a float model to the QDQ form
//! (`QuantizeLinear`/`DequantizeLinear` around float ops) with the int8
//! scheme of ARCHITECTURE.md: weights symmetric per output channel,
//! activations asymmetric per tensor, their ranges calibrated on sample data.
//!
//! The stages, one file each: [`fold`] folds BatchNormalization into the
//! Conv before it; [`qdq::plan`] chooses the values to quantize;
//! [`calibrate`] turns the values the float model computes on calibration
//! images into ranges (the model is run by tinykd-runtime with those values
//! added as graph outputs); [`qdq::rewrite`] writes the QDQ graph, which is
//! encoded with every initializer aligned, like the exporter's files.

pub mod calibrate;
pub mod f16;
pub mod fold;
pub mod qat;
pub mod qdq;

use crate::data::Dataset;
use crate::engine::{declared_inputs, run_tinykd, EngineError};
use crate::tensor_file::{Elements, HostTensor};
use calibrate::{CalibrateError, Method, Observer};
use prost::Message;
use qdq::{ActParams, QuantPlan, RewriteSummary};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use tract_onnx::pb;

/// Errors quantizing a model; each names the file, value or stage.
#[derive(Debug, thiserror::Error)]
pub enum QuantizeError {
    /// The model file cannot be read or decoded.
    #[error("{path}: {reason}", path = path.display())]
    Read {
        /// The model file.
        path: PathBuf,
        /// What failed.
        reason: String,
    },
    /// The graph cannot be quantized as asked.
    #[error("{0}")]
    Graph(String),
    /// Running the float model on calibration data failed.
    #[error("calibration run: {0}")]
    Run(#[from] EngineError),
    /// A value's statistics are unusable.
    #[error("value '{value}': {source}")]
    Calibrate {
        /// The value.
        value: String,
        /// Why.
        source: CalibrateError,
    },
    /// Encoding the result failed.
    #[error(transparent)]
    Encode(#[from] crate::export::ExportError),
}

/// How to calibrate.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct QuantizeOptions {
    /// Range method for activations.
    pub method: Method,
    /// Calibration images (a seeded sample of the data given).
    pub calib_size: usize,
    /// Seed of the sample.
    pub seed: u64,
    /// Images per calibration run.
    pub batch: usize,
}

impl Default for QuantizeOptions {
    fn default() -> Self {
        QuantizeOptions {
            method: Method::MinMax,
            calib_size: 1000,
            seed: 0,
            batch: 100,
        }
    }
}

/// A quantized model and what was done to it.
#[derive(Clone, Debug)]
pub struct Quantized {
    /// The QDQ model file's bytes (initializers aligned).
    pub bytes: Vec<u8>,
    /// Values, weights and biases quantized.
    pub summary: RewriteSummary,
    /// BatchNormalization nodes folded into the Conv before them.
    pub folded_batch_norms: usize,
    /// Images the ranges were measured on.
    pub calibration_images: usize,
}

/// Quantizes the float ONNX model `bytes` (read from `path`, named in
/// errors), calibrating activations on a sample of `calib`.
pub fn quantize(
    path: &Path,
    bytes: &[u8],
    calib: &Dataset,
    opts: &QuantizeOptions,
) -> Result<Quantized, QuantizeError> {
    let read_err = |reason: String| QuantizeError::Read {
        path: path.into(),
        reason,
    };
    let mut model = pb::ModelProto::decode(bytes).map_err(|e| read_err(e.to_string()))?;
    check_float_model(&model, "int8 quantization").map_err(read_err)?;
    let graph = model
        .graph
        .as_mut()
        .ok_or_else(|| read_err("the model has no graph".into()))?;
    let folded_batch_norms = fold::fold_batch_norms(graph)?;
    let plan = qdq::plan(graph);
    if plan.activations.is_empty() {
        return Err(QuantizeError::Graph(format!(
            "{}: no Conv, Gemm or MatMul with float data to quantize",
            path.display()
        )));
    }
    let measured = calibrate_values(path, &model, &plan, calib, opts)?;
    let description = format!(
        "int8 QDQ: weights symmetric per channel, activations asymmetric per tensor, \
         calibrated with {} on {} images",
        opts.method,
        opts.calib_size.min(calib.len())
    );
    let (bytes, summary) = finish(&mut model, &plan, &measured, &description)?;
    Ok(Quantized {
        bytes,
        summary,
        folded_batch_norms,
        calibration_images: opts.calib_size.min(calib.len()),
    })
}

/// The end of PTQ and QAT alike: rewrites `model` to QDQ with the
/// `measured` parameters of `plan`'s values, records `description` as the
/// `quantization` metadata, and encodes it aligned.
pub(crate) fn finish(
    model: &mut pb::ModelProto,
    plan: &QuantPlan,
    measured: &HashMap<String, ActParams>,
    description: &str,
) -> Result<(Vec<u8>, RewriteSummary), QuantizeError> {
    let params = plan.resolve(measured)?;
    let summary = qdq::rewrite(model, plan, &params)?;
    model.metadata_props.retain(|p| p.key != "quantization");
    model.metadata_props.push(pb::StringStringEntryProto {
        key: "quantization".into(),
        value: description.into(),
    });
    let bytes = crate::export::encode_aligned(model)?;
    Ok((bytes, summary))
}

/// Runs the float model on the calibration sample with every measured
/// value as an extra output, and returns each value's parameters.
fn calibrate_values(
    path: &Path,
    model: &pb::ModelProto,
    plan: &QuantPlan,
    calib: &Dataset,
    opts: &QuantizeOptions,
) -> Result<HashMap<String, ActParams>, QuantizeError> {
    let mut probe = model.clone();
    let graph = probe.graph.as_mut().expect("checked by the caller");
    let measured: Vec<String> = plan.measured().cloned().collect();
    for v in &measured {
        if !graph.output.iter().any(|o| &o.name == v) {
            graph.output.push(float_output(v));
        }
    }
    let probe_bytes = probe.encode_to_vec();
    let declared = declared_inputs(&probe_bytes).map_err(|e| QuantizeError::Read {
        path: path.into(),
        reason: e.to_string(),
    })?;
    let [input] = declared.as_slice() else {
        return Err(QuantizeError::Graph(format!(
            "{}: calibration needs a model with one image input, this one has {}",
            path.display(),
            declared.len()
        )));
    };
    let per_image: usize = input
        .dims
        .iter()
        .skip(1)
        .map(|d| d.0.unwrap_or(1))
        .product();
    if per_image != calib.pixels() {
        return Err(QuantizeError::Graph(format!(
            "{}: input '{}' takes {per_image} values per image, the calibration images have {}",
            path.display(),
            input.name,
            calib.pixels()
        )));
    }
    let fixed_batch = input.dims.first().and_then(|d| d.0);
    let norm = crate::inspect::metadata(&probe_bytes, "normalization")
        .and_then(|t| crate::teacher::parse_normalization(&t).ok())
        .unwrap_or_default();
    let table = norm.table();
    let indices = sample(calib.len(), opts.calib_size, opts.seed);
    let batch = fixed_batch.unwrap_or(opts.batch.max(1));
    let mut observers: HashMap<&str, Observer> = measured
        .iter()
        .map(|v| (v.as_str(), Observer::new()))
        .collect();
    for chunk in indices.chunks(batch) {
        let mut x: Vec<f32> = chunk
            .iter()
            .flat_map(|&i| calib.image(i).iter().map(|&p| table[usize::from(p)]))
            .collect();
        let rows = fixed_batch.unwrap_or(chunk.len());
        x.resize(rows * per_image, 0.0);
        let mut shape = vec![rows];
        shape.extend(input.dims.iter().skip(1).map(|d| d.0.unwrap_or(1)));
        let tensor = HostTensor {
            name: input.name.clone(),
            shape,
            elements: Elements::F32(x),
        };
        for out in run_tinykd(path, &probe_bytes, &[tensor])? {
            let Some(obs) = observers.get_mut(out.name.as_str()) else {
                continue;
            };
            let Some(values) = out.as_f32() else { continue };
            // A padded fixed batch: only the real images' rows count.
            let per_row = values.len() / rows.max(1);
            let used = &values[..chunk.len().min(rows) * per_row];
            obs.observe(used)
                .map_err(|source| QuantizeError::Calibrate {
                    value: out.name.clone(),
                    source,
                })?;
        }
    }
    measured
        .iter()
        .map(|v| {
            let range = observers[v.as_str()].range(opts.method).map_err(|source| {
                QuantizeError::Calibrate {
                    value: v.clone(),
                    source,
                }
            })?;
            Ok((v.clone(), ActParams::from_range(range.0, range.1)))
        })
        .collect()
}

/// `n` distinct indices below `len` (all of them when `n ≥ len`), seeded.
fn sample(len: usize, n: usize, seed: u64) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..len).collect();
    let mut rng = crate::data::rng::Rng::derive(seed, &[crate::data::rng::STREAM_CALIBRATION]);
    let n = n.min(len);
    for i in 0..n {
        let j = i + rng.below((len - i) as u64) as usize;
        idx.swap(i, j);
    }
    idx.truncate(n);
    idx
}

/// A float32 graph output of unknown shape.
fn float_output(name: &str) -> pb::ValueInfoProto {
    pb::ValueInfoProto {
        name: name.into(),
        r#type: Some(pb::TypeProto {
            denotation: String::new(),
            value: Some(pb::type_proto::Value::TensorType(pb::type_proto::Tensor {
                elem_type: pb::tensor_proto::DataType::Float as i32,
                shape: None,
            })),
        }),
        doc_string: String::new(),
    }
}

/// The scale of the int8 step of graph output `index` of a QDQ model (the
/// scale of the DequantizeLinear that produces it), if it has one.
pub fn output_scale(bytes: &[u8], index: usize) -> Option<f32> {
    let model = pb::ModelProto::decode(bytes).ok()?;
    let g = model.graph?;
    let out = &g.output.get(index)?.name;
    let dq = g
        .node
        .iter()
        .find(|n| n.op_type == "DequantizeLinear" && n.output.first() == Some(out))?;
    let scale = g
        .initializer
        .iter()
        .find(|t| Some(&t.name) == dq.input.get(1))?;
    let raw = scale.raw_data.get(..4)?;
    Some(f32::from_le_bytes(raw.try_into().ok()?))
}

/// How two engines' dequantized int8 outputs compare, in output steps.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
pub struct Agreement {
    /// Output values compared.
    pub values: usize,
    /// Share of values that are the same int8 step.
    pub identical: f64,
    /// Largest difference, in steps.
    pub max_steps: u32,
}

/// Compares dequantized outputs `a` and `b` of one int8 output whose step is `scale`.
pub fn agreement(a: &[f32], b: &[f32], scale: f32) -> Agreement {
    let steps: Vec<u32> = a
        .iter()
        .zip(b)
        .map(|(x, y)| ((x - y).abs() / scale).round() as u32)
        .collect();
    Agreement {
        values: steps.len(),
        identical: steps.iter().filter(|&&s| s == 0).count() as f64 / steps.len().max(1) as f64,
        max_steps: steps.iter().copied().max().unwrap_or(0),
    }
}

/// Every name used in a graph (values and nodes), to make new ones unique.
pub(crate) struct Names(std::collections::HashSet<String>);

impl Names {
    /// The names used in `g`.
    pub(crate) fn new(g: &pb::GraphProto) -> Self {
        let mut s = std::collections::HashSet::new();
        s.extend(g.input.iter().map(|i| i.name.clone()));
        s.extend(g.output.iter().map(|o| o.name.clone()));
        s.extend(g.initializer.iter().map(|t| t.name.clone()));
        for n in &g.node {
            s.extend(n.input.iter().chain(&n.output).cloned());
            s.insert(n.name.clone());
        }
        Names(s)
    }

    /// `base`, or `base_2`, `base_3`, … if taken; reserved from then on.
    pub(crate) fn fresh(&mut self, base: &str) -> String {
        let mut name = base.to_string();
        let mut k = 2;
        while self.0.contains(&name) {
            name = format!("{base}_{k}");
            k += 1;
        }
        self.0.insert(name.clone());
        name
    }
}

/// Ops of a model that is already quantized.
const QUANTIZED_OPS: &[&str] = &[
    "QuantizeLinear",
    "DequantizeLinear",
    "QLinearConv",
    "QLinearMatMul",
    "ConvInteger",
    "MatMulInteger",
];

/// Checks that `model` is a float model a quantizer can rewrite: opset 13
/// or newer (per-axis QuantizeLinear, Cast-13) and no quantized ops yet.
/// `what` names the conversion in the message, e.g. "int8 quantization".
pub(crate) fn check_float_model(model: &pb::ModelProto, what: &str) -> Result<(), String> {
    let default = model
        .opset_import
        .iter()
        .find(|o| o.domain.is_empty() || o.domain == "ai.onnx")
        .map(|o| o.version);
    match default {
        Some(v) if v >= 13 => {}
        Some(v) => {
            return Err(format!(
                "the model imports opset {v}; {what} needs opset 13 or newer \
                 (re-export the float model with opset ≥ 13)"
            ))
        }
        None => return Err("the model imports no default-domain opset".into()),
    }
    let nodes = model.graph.iter().flat_map(|g| &g.node);
    if let Some(n) = nodes
        .clone()
        .find(|n| QUANTIZED_OPS.contains(&n.op_type.as_str()))
    {
        return Err(format!(
            "the model is already quantized (node '{}' is {}); {what} starts from the float model",
            n.name, n.op_type
        ));
    }
    Ok(())
}
