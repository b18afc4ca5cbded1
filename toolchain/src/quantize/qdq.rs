//! The QDQ rewrite: which float values of a graph get int8 parameters
//! ([`plan`]), and the graph with `QuantizeLinear`/`DequantizeLinear` pairs
//! and int8 weights that results ([`rewrite`]).
//!
//! Activations are quantized where an int8 kernel can use them: the data
//! input and the output of Conv, Gemm and MatMul (after a Relu or Clip that
//! follows them alone, which the runtime fuses), both sides of MaxPool,
//! AveragePool, GlobalAveragePool, Add and the layout ops (Flatten, Reshape,
//! Transpose, Squeeze, Unsqueeze). Layout ops and MaxPool keep their input's
//! parameters on their output (they move values, they do not change them),
//! so the runtime runs them on int8 data directly. Everything else runs in
//! float between a DequantizeLinear and a QuantizeLinear, which is always
//! correct.
//!
//! A quantized value `v` keeps its name for its readers: its producer
//! writes `v_float`, and `v_float → QuantizeLinear → v_quantized →
//! DequantizeLinear → v` follows it, so graph outputs stay float and keep
//! their names. A graph input gets the pair in front of its readers. Weights
//! become int8 initializers, symmetric per output channel (zero point 0,
//! −127..127), with a DequantizeLinear along the channel axis; biases of
//! Conv and Gemm become int32 with scale `input scale × weight scale[c]`.

use super::calibrate::{quant_params, quantize_symmetric, symmetric_weight_scale};
use super::{Names, QuantizeError};
use std::collections::{HashMap, HashSet};
use tract_onnx::pb;

/// Int8 asymmetric per-tensor parameters of one activation.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ActParams {
    /// Real value of one step.
    pub scale: f32,
    /// The int8 value of real 0.
    pub zero_point: i8,
}

impl ActParams {
    /// The parameters of the calibrated range `[lo, hi]`.
    pub fn from_range(lo: f32, hi: f32) -> ActParams {
        let (scale, zero_point) = quant_params(lo, hi);
        ActParams { scale, zero_point }
    }
}

/// The values to quantize, in graph order, and which of them copy their
/// parameters from another (a layout op's or MaxPool's output from its input).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct QuantPlan {
    /// Float values that get a QuantizeLinear/DequantizeLinear pair.
    pub activations: Vec<String>,
    /// `output → input` for values that share their input's parameters.
    pub shared: HashMap<String, String>,
}

impl QuantPlan {
    /// The values whose ranges calibration must measure.
    pub fn measured(&self) -> impl Iterator<Item = &String> {
        self.activations
            .iter()
            .filter(|v| !self.shared.contains_key(*v))
    }

    /// Resolves every activation's parameters from the measured ones.
    pub fn resolve(
        &self,
        measured: &HashMap<String, ActParams>,
    ) -> Result<HashMap<String, ActParams>, QuantizeError> {
        let mut out = HashMap::new();
        for v in &self.activations {
            let mut source = v;
            // Chains of layout ops lead back to a measured value in graph order.
            while let Some(s) = self.shared.get(source) {
                source = s;
            }
            let p = measured
                .get(source)
                .ok_or_else(|| QuantizeError::Graph(format!("value '{v}' was not calibrated")))?;
            out.insert(v.clone(), *p);
        }
        Ok(out)
    }
}

const MAC_OPS: &[&str] = &["Conv", "Gemm", "MatMul"];
const SHARING_OPS: &[&str] = &[
    "MaxPool",
    "Flatten",
    "Reshape",
    "Transpose",
    "Squeeze",
    "Unsqueeze",
];
const AVERAGING_OPS: &[&str] = &["AveragePool", "GlobalAveragePool"];

/// Readers of each value: node positions, and whether it is a graph output.
struct Uses<'g> {
    readers: HashMap<&'g str, Vec<usize>>,
    outputs: HashSet<&'g str>,
    initializers: HashMap<&'g str, &'g pb::TensorProto>,
}

impl<'g> Uses<'g> {
    fn new(g: &'g pb::GraphProto) -> Self {
        let mut readers: HashMap<&str, Vec<usize>> = HashMap::new();
        for (i, n) in g.node.iter().enumerate() {
            for input in n.input.iter().filter(|s| !s.is_empty()) {
                readers.entry(input.as_str()).or_default().push(i);
            }
        }
        Uses {
            readers,
            outputs: g.output.iter().map(|o| o.name.as_str()).collect(),
            initializers: g.initializer.iter().map(|t| (t.name.as_str(), t)).collect(),
        }
    }

    fn sole_reader(&self, value: &str) -> Option<usize> {
        match self.readers.get(value).map(Vec::as_slice) {
            Some(&[r]) if !self.outputs.contains(value) => Some(r),
            _ => None,
        }
    }

    fn is_float_initializer(&self, value: &str) -> bool {
        self.initializers
            .get(value)
            .is_some_and(|t| t.data_type == pb::tensor_proto::DataType::Float as i32)
    }
}

/// Chooses the values to quantize (see the module docs).
pub fn plan(g: &pb::GraphProto) -> QuantPlan {
    let uses = Uses::new(g);
    let mut marked: HashSet<String> = HashSet::new();
    let mut shared = HashMap::new();
    let activation = |v: &str| !v.is_empty() && !uses.initializers.contains_key(v);
    for node in &g.node {
        let op = node.op_type.as_str();
        let Some(out) = node.output.first().filter(|o| !o.is_empty()) else {
            continue;
        };
        if MAC_OPS.contains(&op) {
            for input in node.input.iter().take(2).filter(|v| activation(v)) {
                marked.insert(input.clone());
            }
            // A lone Relu/Clip after it is fused: quantize its output instead.
            let fused = uses
                .sole_reader(out)
                .filter(|&r| matches!(g.node[r].op_type.as_str(), "Relu" | "Clip"));
            match fused.and_then(|r| g.node[r].output.first()) {
                Some(after) if !after.is_empty() => marked.insert(after.clone()),
                _ => marked.insert(out.clone()),
            };
        } else if SHARING_OPS.contains(&op) || AVERAGING_OPS.contains(&op) || op == "Add" {
            let inputs = if op == "Add" { 2 } else { 1 };
            let data: Vec<&String> = node.input.iter().take(inputs).collect();
            if data.iter().any(|v| !activation(v)) {
                continue;
            }
            marked.extend(data.iter().map(|v| (*v).clone()));
            marked.insert(out.clone());
            if SHARING_OPS.contains(&op) {
                shared.insert(out.clone(), data[0].clone());
            }
        }
    }
    // Graph order: graph inputs first, then node outputs as they appear.
    let mut activations: Vec<String> = g
        .input
        .iter()
        .map(|i| i.name.clone())
        .filter(|n| marked.contains(n))
        .collect();
    for node in &g.node {
        for out in &node.output {
            if marked.contains(out) {
                activations.push(out.clone());
            }
        }
    }
    shared.retain(|out, _| activations.contains(out));
    QuantPlan {
        activations,
        shared,
    }
}

/// What [`rewrite`] did.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct RewriteSummary {
    /// Activations given a QuantizeLinear/DequantizeLinear pair.
    pub activations: usize,
    /// Weight tensors stored as int8.
    pub weights: usize,
    /// Bias tensors stored as int32.
    pub biases: usize,
    /// Weight elements stored as int8 (the parameter count quantized).
    pub weight_elements: usize,
}

/// Rewrites `model`'s graph to the QDQ form with the activation parameters
/// `params` (one per value of `plan.activations`).
pub fn rewrite(
    model: &mut pb::ModelProto,
    plan: &QuantPlan,
    params: &HashMap<String, ActParams>,
) -> Result<RewriteSummary, QuantizeError> {
    super::check_float_model(model, "int8 quantization").map_err(QuantizeError::Graph)?;
    let g = model
        .graph
        .as_mut()
        .ok_or_else(|| QuantizeError::Graph("the model has no graph".into()))?;
    let mut names = Names::new(g);
    let mut summary = RewriteSummary::default();
    let mut front: Vec<pb::NodeProto> = Vec::new();
    let mut new_initializers: Vec<pb::TensorProto> = Vec::new();
    let mut removed: HashSet<String> = HashSet::new();

    // Weights and biases first: they need the (unrenamed) node inputs.
    let weights = weight_jobs(g)?;
    for job in &weights {
        if removed.contains(&job.weight) {
            continue; // shared by several nodes: quantized once
        }
        let w = find_initializer(g, &job.weight)?;
        let (q, scales) = quantize_weight(w, job.axis)?;
        summary.weights += 1;
        summary.weight_elements += q.len();
        let qn = names.fresh(&format!("{}_quantized", job.weight));
        let sn = names.fresh(&format!("{}_scale", job.weight));
        let zn = names.fresh(&format!("{}_zero_point", job.weight));
        new_initializers.push(int8_tensor(&qn, &w.dims, &q));
        new_initializers.push(f32_tensor(&sn, &[scales.len() as i64], &scales));
        new_initializers.push(int8_tensor(
            &zn,
            &[scales.len() as i64],
            &vec![0; scales.len()],
        ));
        front.push(dequantize(&qn, &sn, &zn, &job.weight, Some(job.axis)));
        removed.insert(job.weight.clone());
        let Some(bias) = &job.bias else { continue };
        let Some(x) = params.get(&job.input) else {
            continue;
        };
        if removed.contains(bias) {
            continue;
        }
        let b = find_initializer(g, bias)?;
        let values = float_values(b)?;
        if values.len() != scales.len() {
            continue; // a broadcast bias: left in float
        }
        let b_scales: Vec<f32> = scales.iter().map(|&s| x.scale * s).collect();
        let q: Vec<i32> = values
            .iter()
            .zip(&b_scales)
            .map(|(&v, &s)| {
                (f64::from(v) / f64::from(s))
                    .round()
                    .clamp(-2147483647.0, 2147483647.0) as i32
            })
            .collect();
        let qn = names.fresh(&format!("{bias}_quantized"));
        let sn = names.fresh(&format!("{bias}_scale"));
        let zn = names.fresh(&format!("{bias}_zero_point"));
        let n = q.len() as i64;
        new_initializers.push(int32_tensor(&qn, &b.dims, &q));
        new_initializers.push(f32_tensor(&sn, &[n], &b_scales));
        new_initializers.push(int32_tensor(&zn, &[n], &vec![0; q.len()]));
        front.push(dequantize(&qn, &sn, &zn, bias, Some(0)));
        removed.insert(bias.clone());
        summary.biases += 1;
    }

    // Activation pairs: after their producer, or in front for graph inputs.
    let graph_inputs: HashSet<String> = g.input.iter().map(|i| i.name.clone()).collect();
    let mut after: HashMap<String, Vec<pb::NodeProto>> = HashMap::new();
    let mut input_renames: HashMap<String, String> = HashMap::new();
    let mut output_renames: HashMap<String, String> = HashMap::new();
    for v in &plan.activations {
        let p = params
            .get(v)
            .ok_or_else(|| QuantizeError::Graph(format!("no parameters for value '{v}'")))?;
        let sn = names.fresh(&format!("{v}_scale"));
        let zn = names.fresh(&format!("{v}_zero_point"));
        let qn = names.fresh(&format!("{v}_quantized"));
        new_initializers.push(f32_tensor(&sn, &[], &[p.scale]));
        new_initializers.push(int8_tensor(&zn, &[], &[p.zero_point]));
        summary.activations += 1;
        if graph_inputs.contains(v) {
            let dq = names.fresh(&format!("{v}_dequantized"));
            front.push(quantize(v, &sn, &zn, &qn));
            front.push(dequantize(&qn, &sn, &zn, &dq, None));
            input_renames.insert(v.clone(), dq);
        } else {
            let float = names.fresh(&format!("{v}_float"));
            let pair = vec![
                quantize(&float, &sn, &zn, &qn),
                dequantize(&qn, &sn, &zn, v, None),
            ];
            after.insert(v.clone(), pair);
            output_renames.insert(v.clone(), float);
        }
    }

    let old_nodes = std::mem::take(&mut g.node);
    g.node = front;
    for mut node in old_nodes {
        for input in node.input.iter_mut() {
            if let Some(r) = input_renames.get(input) {
                *input = r.clone();
            }
        }
        let mut pairs = Vec::new();
        for out in node.output.iter_mut() {
            if let Some(float) = output_renames.get(out) {
                pairs.extend(after.remove(out).unwrap_or_default());
                *out = float.clone();
            }
        }
        g.node.push(node);
        g.node.extend(pairs);
    }
    g.initializer.retain(|t| !removed.contains(&t.name));
    g.input.retain(|i| !removed.contains(&i.name));
    g.initializer.extend(new_initializers);
    g.value_info.clear(); // types changed; every reader infers them
    Ok(summary)
}

/// One weight to quantize: its node's data input, weight, bias and channel axis.
struct WeightJob {
    input: String,
    weight: String,
    bias: Option<String>,
    axis: i64,
}

fn weight_jobs(g: &pb::GraphProto) -> Result<Vec<WeightJob>, QuantizeError> {
    let uses = Uses::new(g);
    let mut jobs = Vec::new();
    for node in &g.node {
        let (Some(x), Some(w)) = (node.input.first(), node.input.get(1)) else {
            continue;
        };
        if !uses.is_float_initializer(w) {
            continue;
        }
        let dims = &uses.initializers[w.as_str()].dims;
        let axis = match node.op_type.as_str() {
            "Conv" if dims.len() >= 3 => 0,
            "Gemm" if dims.len() == 2 => {
                let attr = |name: &str, default: f32| {
                    node.attribute
                        .iter()
                        .find(|a| a.name == name)
                        .map_or(default, |a| a.f)
                };
                if attr("alpha", 1.0) != 1.0 || attr("beta", 1.0) != 1.0 {
                    continue;
                }
                let trans_b = node
                    .attribute
                    .iter()
                    .find(|a| a.name == "transB")
                    .is_some_and(|a| a.i != 0);
                if trans_b {
                    0
                } else {
                    1
                }
            }
            "MatMul" if dims.len() == 2 => 1,
            _ => continue,
        };
        let bias = node
            .input
            .get(2)
            .filter(|b| !b.is_empty() && node.op_type != "MatMul")
            .filter(|b| uses.is_float_initializer(b))
            .filter(|b| uses.readers.get(b.as_str()).is_some_and(|r| r.len() == 1))
            .cloned();
        jobs.push(WeightJob {
            input: x.clone(),
            weight: w.clone(),
            bias,
            axis,
        });
    }
    Ok(jobs)
}

/// Int8 symmetric per-channel weights along `axis`, and the channel scales.
fn quantize_weight(w: &pb::TensorProto, axis: i64) -> Result<(Vec<i8>, Vec<f32>), QuantizeError> {
    let values = float_values(w)?;
    let dims: Vec<usize> = w.dims.iter().map(|&d| d.max(0) as usize).collect();
    let axis = axis as usize;
    let channels = dims[axis];
    let inner: usize = dims[axis + 1..].iter().product();
    let channel_of = |i: usize| (i / inner.max(1)) % channels.max(1);
    let mut max_abs = vec![0f32; channels];
    for (i, &v) in values.iter().enumerate() {
        if !v.is_finite() {
            return Err(QuantizeError::Graph(format!(
                "weight '{}' has a non-finite value at element {i}",
                w.name
            )));
        }
        let c = channel_of(i);
        max_abs[c] = max_abs[c].max(v.abs());
    }
    let scales: Vec<f32> = max_abs.iter().map(|&m| symmetric_weight_scale(m)).collect();
    let q = values
        .iter()
        .enumerate()
        .map(|(i, &v)| quantize_symmetric(v, scales[channel_of(i)]))
        .collect();
    Ok((q, scales))
}

fn find_initializer<'g>(
    g: &'g pb::GraphProto,
    name: &str,
) -> Result<&'g pb::TensorProto, QuantizeError> {
    g.initializer
        .iter()
        .find(|t| t.name == name)
        .ok_or_else(|| QuantizeError::Graph(format!("initializer '{name}' not found")))
}

/// The elements of a float32 initializer (raw or typed).
pub(crate) fn float_values(t: &pb::TensorProto) -> Result<Vec<f32>, QuantizeError> {
    let count: i64 = t.dims.iter().product();
    let values: Vec<f32> = if !t.raw_data.is_empty() {
        t.raw_data
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect()
    } else {
        t.float_data.clone()
    };
    if values.len() as i64 != count {
        return Err(QuantizeError::Graph(format!(
            "initializer '{}' holds {} values for dims {:?} (external data is not supported)",
            t.name,
            values.len(),
            t.dims
        )));
    }
    Ok(values)
}

fn tensor(
    name: &str,
    dims: &[i64],
    data_type: pb::tensor_proto::DataType,
    raw: Vec<u8>,
) -> pb::TensorProto {
    pb::TensorProto {
        dims: dims.to_vec(),
        data_type: data_type as i32,
        name: name.into(),
        raw_data: raw,
        ..Default::default()
    }
}

fn f32_tensor(name: &str, dims: &[i64], v: &[f32]) -> pb::TensorProto {
    let raw = v.iter().flat_map(|x| x.to_le_bytes()).collect();
    tensor(name, dims, pb::tensor_proto::DataType::Float, raw)
}

fn int8_tensor(name: &str, dims: &[i64], v: &[i8]) -> pb::TensorProto {
    let raw = v.iter().map(|&x| x as u8).collect();
    tensor(name, dims, pb::tensor_proto::DataType::Int8, raw)
}

fn int32_tensor(name: &str, dims: &[i64], v: &[i32]) -> pb::TensorProto {
    let raw = v.iter().flat_map(|x| x.to_le_bytes()).collect();
    tensor(name, dims, pb::tensor_proto::DataType::Int32, raw)
}

fn quantize(x: &str, scale: &str, zero_point: &str, y: &str) -> pb::NodeProto {
    pb::NodeProto {
        input: vec![x.into(), scale.into(), zero_point.into()],
        output: vec![y.into()],
        name: format!("{y}/QuantizeLinear"),
        op_type: "QuantizeLinear".into(),
        ..Default::default()
    }
}

fn dequantize(x: &str, scale: &str, zero_point: &str, y: &str, axis: Option<i64>) -> pb::NodeProto {
    pb::NodeProto {
        input: vec![x.into(), scale.into(), zero_point.into()],
        output: vec![y.into()],
        name: format!("{y}/DequantizeLinear"),
        op_type: "DequantizeLinear".into(),
        attribute: axis
            .map(|a| pb::AttributeProto {
                name: "axis".into(),
                r#type: pb::attribute_proto::AttributeType::Int as i32,
                i: a,
                ..Default::default()
            })
            .into_iter()
            .collect(),
        ..Default::default()
    }
}

#[cfg(test)]
#[path = "qdq_tests.rs"]
mod tests;
