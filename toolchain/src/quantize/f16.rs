//! float16 weights: a float model whose weights are stored as FLOAT16 and
//! computed in float32.
//!
//! Every float32 weight and bias of Conv, Gemm and MatMul, and every other
//! float32 initializer of more than [`MIN_ELEMENTS`] elements, becomes a
//! FLOAT16 initializer followed by a `Cast(to=FLOAT)` whose output keeps the
//! initializer's name, so no reader changes and every op still computes in
//! float32 (standard ONNX, opset ≥ 13: ONNX Runtime, tract and onnx.checker
//! accept it). The weights take half the bytes in the file; tinykd-runtime
//! folds each Cast at load time and writes the float32 values into the
//! arena once, so the device holds both (see
//! `tinykd_runtime::planner::Plan::converted_constant_bytes`).
//!
//! Conversion rounds to nearest, ties to even (the `half` crate). A value
//! beyond float16's range (|x| rounding above 65504), NaN or infinity is an
//! error naming the initializer and element: saturating would silently
//! change what the model computes, and trained weights of that size mean
//! the model should stay in float32. Values of magnitude at most 2^-25
//! become zero and values below 2^-14 lose precision (float16 subnormals);
//! both are counted in the [`F16Summary`].
//!
//! Models that are already quantized (QDQ or QLinear ops) are refused.

use super::QuantizeError;
use half::f16;
use prost::Message;
use std::collections::HashSet;
use std::path::Path;
use tract_onnx::pb;

/// Float32 initializers that are not a Conv/Gemm/MatMul weight or bias are
/// stored as float16 only when they have more elements than this (small
/// ones are scalars and per-tensor parameters, where two bytes saved per
/// element are not worth a Cast).
pub const MIN_ELEMENTS: usize = 16;

/// The `quantization` metadata of a converted model.
pub const METADATA: &str = "float16 weights (Cast to float32 at load)";

/// Ops whose inputs 1 and 2 (weight, bias) are converted whatever their size.
const MAC_OPS: &[&str] = &["Conv", "Gemm", "MatMul"];

/// What [`to_f16_weights`] did.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct F16Summary {
    /// Initializers stored as float16.
    pub tensors: usize,
    /// Their elements.
    pub elements: usize,
    /// Float32 initializers left as they are (small, not a weight or bias).
    pub kept_f32: usize,
    /// Non-zero values that became ±0 (|x| ≤ 2^-25).
    pub flushed_to_zero: usize,
    /// Values stored as float16 subnormals (0 < |x| < 2^-14, fewer than 11
    /// significant bits).
    pub subnormal: usize,
    /// Largest |float16 − float32| over all converted values.
    pub max_abs_error: f32,
}

/// Rewrites the float ONNX model `bytes` (read from `path`, named in
/// errors) with float16 weights; returns the new file (every initializer's
/// `raw_data` 16-byte aligned, as the exporter writes) and a summary.
pub fn to_f16_weights(path: &Path, bytes: &[u8]) -> Result<(Vec<u8>, F16Summary), QuantizeError> {
    let read_err = |reason: String| QuantizeError::Read {
        path: path.into(),
        reason,
    };
    let mut model = pb::ModelProto::decode(bytes).map_err(|e| read_err(e.to_string()))?;
    if model.graph.is_none() {
        return Err(read_err("the model has no graph".into()));
    }
    let summary = rewrite(&mut model)
        .map_err(|e| QuantizeError::Graph(format!("{}: {e}", path.display())))?;
    model.metadata_props.retain(|p| p.key != "quantization");
    model.metadata_props.push(pb::StringStringEntryProto {
        key: "quantization".into(),
        value: METADATA.into(),
    });
    let bytes = crate::export::encode_aligned(&mut model)?;
    Ok((bytes, summary))
}

/// Rewrites `model`'s graph in place (see the module docs); the error says
/// why the model cannot be converted.
pub fn rewrite(model: &mut pb::ModelProto) -> Result<F16Summary, String> {
    super::check_float_model(model, "float16 weights")?;
    let g = model.graph.as_mut().ok_or("the model has no graph")?;
    let weights: HashSet<String> = g
        .node
        .iter()
        .filter(|n| MAC_OPS.contains(&n.op_type.as_str()))
        .flat_map(|n| n.input.iter().skip(1).take(2).cloned())
        .collect();
    let mut names = super::Names::new(g);
    let mut summary = F16Summary::default();
    let mut casts = Vec::new();
    let mut converted = HashSet::new();
    for t in g.initializer.iter_mut() {
        if t.data_type != pb::tensor_proto::DataType::Float as i32 {
            continue;
        }
        let count = t.dims.iter().product::<i64>().max(0) as usize;
        if !weights.contains(&t.name) && count <= MIN_ELEMENTS {
            summary.kept_f32 += 1;
            continue;
        }
        let halves = to_halves(t, &mut summary)?;
        let original = std::mem::take(&mut t.name);
        t.name = names.fresh(&format!("{original}_float16"));
        t.data_type = pb::tensor_proto::DataType::Float16 as i32;
        t.raw_data = halves.iter().flat_map(|h| h.to_le_bytes()).collect();
        t.float_data.clear();
        casts.push(pb::NodeProto {
            input: vec![t.name.clone()],
            output: vec![original.clone()],
            name: names.fresh(&format!("{original}/Cast")),
            op_type: "Cast".into(),
            attribute: vec![pb::AttributeProto {
                name: "to".into(),
                r#type: pb::attribute_proto::AttributeType::Int as i32,
                i: pb::tensor_proto::DataType::Float as i64,
                ..Default::default()
            }],
            ..Default::default()
        });
        summary.tensors += 1;
        summary.elements += halves.len();
        converted.insert(original);
    }
    if casts.is_empty() {
        return Err("no float32 weights to store as float16".into());
    }
    // An initializer also listed as a graph input (IR < 4 style) is now a
    // Cast's output: it must not be an input too.
    g.input.retain(|i| !converted.contains(&i.name));
    g.node.splice(0..0, casts);
    Ok(summary)
}

/// The elements of float32 initializer `t` as float16, checked (see the
/// module docs); updates the summary's value counts.
fn to_halves(t: &pb::TensorProto, summary: &mut F16Summary) -> Result<Vec<f16>, String> {
    let values: Vec<f32> = if !t.raw_data.is_empty() {
        t.raw_data
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect()
    } else {
        t.float_data.clone()
    };
    let count: i64 = t.dims.iter().product();
    if values.len() as i64 != count {
        return Err(format!(
            "initializer '{}' holds {} values for dims {:?} (external data is not supported)",
            t.name,
            values.len(),
            t.dims
        ));
    }
    let mut out = Vec::with_capacity(values.len());
    for (i, &v) in values.iter().enumerate() {
        if !v.is_finite() {
            return Err(format!(
                "initializer '{}' has a non-finite value ({v}) at element {i}",
                t.name
            ));
        }
        let h = f16::from_f32(v);
        if h.is_infinite() {
            return Err(format!(
                "initializer '{}' element {i} is {v}, beyond float16's range (±65504): \
                 keep this model in float32",
                t.name
            ));
        }
        if h.to_f32() == 0.0 {
            summary.flushed_to_zero += usize::from(v != 0.0);
        } else if !h.is_normal() {
            summary.subnormal += 1;
        }
        summary.max_abs_error = summary.max_abs_error.max((h.to_f32() - v).abs());
        out.push(h);
    }
    Ok(out)
}

#[cfg(test)]
#[path = "f16_tests.rs"]
mod tests;
