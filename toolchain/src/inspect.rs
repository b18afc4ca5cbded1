//! `tinykd inspect`: what a model is and what it costs to run.

use serde::Serialize;
use std::collections::BTreeMap;
use tinykd_runtime::{Model, Value};

/// A tensor's name, type and shape.
#[derive(Clone, Debug, Serialize)]
pub struct TensorInfo {
    /// Value name.
    pub name: String,
    /// Element type.
    pub dtype: String,
    /// Static shape (symbolic dims bound to 1).
    pub shape: Vec<usize>,
}

impl From<&Value<'_>> for TensorInfo {
    fn from(v: &Value<'_>) -> Self {
        TensorInfo {
            name: v.name.to_string(),
            dtype: v.dtype.to_string(),
            shape: v.shape.iter().collect(),
        }
    }
}

/// Everything `inspect` reports.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// Model file size in bytes.
    pub file_bytes: usize,
    /// ONNX IR version.
    pub ir_version: i64,
    /// Default-domain opset.
    pub opset: i64,
    /// Producer name and version.
    pub producer: String,
    /// Graph inputs.
    pub inputs: Vec<TensorInfo>,
    /// Graph outputs.
    pub outputs: Vec<TensorInfo>,
    /// Node count per op type, as in the file.
    pub ops: BTreeMap<String, usize>,
    /// Activations folded into the preceding Conv/Gemm at load time.
    pub fused_activations: usize,
    /// Nodes evaluated at load time (shape arithmetic, Constant, Casts of
    /// constants such as float16 weights).
    pub folded_nodes: usize,
    /// QDQ nodes (DequantizeLinear → float op → QuantizeLinear patterns)
    /// the runtime fused at load time, and the int8 ops they became.
    pub qdq_fused: (usize, usize),
    /// Elements held in constants.
    pub parameters: usize,
    /// Bytes held in constants, as stored in the file (2 per float16 weight).
    pub weight_bytes: usize,
    /// Multiply-accumulates per inference.
    pub macs: u64,
    /// Arena bytes the planner needs.
    pub arena_bytes: usize,
    /// Largest total of simultaneously live tensors: no plan can do better.
    pub arena_lower_bound: usize,
    /// Part of the arena holding constants copied from the file: weights
    /// that are not 4-byte aligned (0 for files from tinykd's exporter) and
    /// `arena_converted_constants`.
    pub arena_staged_constants: usize,
    /// Part of `arena_staged_constants` holding constants converted at load
    /// time: float16 weights widened to float32 by their Cast.
    pub arena_converted_constants: usize,
    /// `metadata_props`.
    pub metadata: BTreeMap<String, String>,
}

impl Report {
    /// Builds the report for a parsed model.
    pub fn new(model: &Model<'_>, file_bytes: usize) -> Self {
        let mut ops = BTreeMap::new();
        let (mut fused_activations, mut folded_nodes) = (0, 0);
        for node in model.nodes() {
            *ops.entry(node.op_type.to_string()).or_insert(0) += 1;
            if node.op == tinykd_runtime::ops::Op::Nop && !node.qdq_fused {
                if tinykd_runtime::ops::unary::ACTIVATIONS.contains(&node.op_type) {
                    fused_activations += 1;
                } else {
                    folded_nodes += 1;
                }
            }
        }
        let (parameters, weight_bytes) = model.parameters();
        let (name, version) = model.producer();
        Report {
            file_bytes,
            ir_version: model.ir_version(),
            opset: model.opset(),
            producer: format!("{name} {version}").trim().to_string(),
            inputs: model.inputs().map(TensorInfo::from).collect(),
            outputs: model.outputs().map(TensorInfo::from).collect(),
            ops,
            fused_activations,
            folded_nodes,
            qdq_fused: model.qdq_fusion(),
            parameters,
            weight_bytes,
            macs: model.macs(),
            arena_bytes: model.arena_size(),
            arena_lower_bound: model.plan().lower_bound,
            arena_staged_constants: model.plan().staged_constant_bytes,
            arena_converted_constants: model.plan().converted_constant_bytes,
            metadata: model
                .metadata()
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    /// Renders the report as an aligned text table.
    pub fn to_text(&self) -> String {
        use std::fmt::Write;
        let mut s = String::new();
        let row = |s: &mut String, k: &str, v: String| {
            let _ = writeln!(s, "  {k:<20} {v}");
        };
        let tensors = |ts: &[TensorInfo]| {
            ts.iter()
                .map(|t| format!("{} {} {:?}", t.name, t.dtype, t.shape))
                .collect::<Vec<_>>()
                .join(", ")
        };
        row(&mut s, "file", format!("{} bytes", self.file_bytes));
        row(
            &mut s,
            "format",
            format!("ONNX IR {}, opset {}", self.ir_version, self.opset),
        );
        if !self.producer.is_empty() {
            row(&mut s, "producer", self.producer.clone());
        }
        row(&mut s, "inputs", tensors(&self.inputs));
        row(&mut s, "outputs", tensors(&self.outputs));
        let ops: Vec<String> = self.ops.iter().map(|(k, v)| format!("{k}×{v}")).collect();
        row(&mut s, "ops", ops.join(" "));
        row(
            &mut s,
            "fused activations",
            self.fused_activations.to_string(),
        );
        if self.qdq_fused.0 > 0 {
            let (nodes, ops) = self.qdq_fused;
            row(
                &mut s,
                "QDQ fused",
                format!("{nodes} QDQ nodes fused into {ops} int8 ops"),
            );
        }
        if self.folded_nodes > 0 {
            let folded = format!(
                "{} nodes (shape arithmetic, constants, casts of constants)",
                self.folded_nodes
            );
            row(&mut s, "folded at load", folded);
        }
        row(
            &mut s,
            "parameters",
            format!("{} ({} bytes)", self.parameters, self.weight_bytes),
        );
        row(&mut s, "MACs", self.macs.to_string());
        let ratio = if self.arena_lower_bound > 0 {
            self.arena_bytes as f64 / self.arena_lower_bound as f64
        } else {
            1.0
        };
        row(
            &mut s,
            "arena",
            format!(
                "{} bytes (lower bound {}, ratio {ratio:.2})",
                self.arena_bytes, self.arena_lower_bound
            ),
        );
        if self.arena_staged_constants > 0 {
            let converted = match self.arena_converted_constants {
                0 => String::new(),
                n => format!(", {n} of them float16 weights widened to float32"),
            };
            row(
                &mut s,
                "staged constants",
                format!(
                    "{} bytes of the arena, written once at load{converted}",
                    self.arena_staged_constants
                ),
            );
        }
        for (k, v) in &self.metadata {
            row(&mut s, &format!("meta {k}"), one_line(v, 100));
        }
        s
    }
}

/// `text` on one line (newlines become "; "), cut to `max` characters with
/// an ellipsis; `--json` shows the whole value.
fn one_line(text: &str, max: usize) -> String {
    let flat = text.trim().replace('\n', "; ");
    match flat.char_indices().nth(max) {
        Some((cut, _)) => format!("{}…", &flat[..cut]),
        None => flat,
    }
}

/// The value of the model's metadata prop `key`, if the file has one.
pub fn metadata(bytes: &[u8], key: &str) -> Option<String> {
    let model = tinykd_runtime::proto::onnx::ModelView::parse(bytes).ok()?;
    let value = model.metadata_props().flatten().find(|(k, _)| *k == key)?.1;
    Some(value.to_string())
}

/// Class names from the model's `labels` metadata (comma-separated), if any.
pub fn class_labels(bytes: &[u8]) -> Option<Vec<String>> {
    let labels = metadata(bytes, "labels")?;
    Some(labels.split(',').map(|l| l.trim().to_string()).collect())
}
