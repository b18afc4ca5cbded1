//! The ONNX backend node test cases of the quantized ops, run through
//! `Session::run_typed` and compared bit for bit (float outputs included).
//!
//! The cases are generated into `build/onnx-node-tests/` (one folder per
//! case: `model.onnx`, `test_data_set_0/input_*.pb`, `output_*.pb`); without
//! that folder the test reports so and passes. Scales and zero points are
//! graph inputs in these models: they are bound as constants at load
//! (`Bindings::constants`), as a deployment would have them, and the data
//! inputs are fed at run time.
//!
//! Cases using what the runtime does not implement (float8, int4, int2,
//! int16 types, blocked quantization, float16 scales) must be rejected as
//! unsupported at load; every other case must pass.

// Same reason as the crate: `Error` is large by design.
#![allow(clippy::result_large_err)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use tinykd_runtime::proto::onnx::{
    GraphView, ModelView, NodeView, TensorData, TensorView, TypedWords,
};
use tinykd_runtime::{Bindings, ConstInput, DType, Data, DataMut, Model, Session, Shape};

/// The ops and, for each, the node inputs bound as load-time constants.
const OPS: &[(&str, &str, &[usize])] = &[
    ("test_quantizelinear", "QuantizeLinear", &[1, 2]),
    ("test_dequantizelinear", "DequantizeLinear", &[1, 2]),
    ("test_qlinearconv", "QLinearConv", &[1, 2, 4, 5, 6, 7]),
    ("test_qlinearmatmul", "QLinearMatMul", &[1, 2, 4, 5, 6, 7]),
    ("test_convinteger", "ConvInteger", &[2, 3]),
    ("test_matmulinteger", "MatMulInteger", &[2, 3]),
];

/// Case names whose unsupported outcome is expected.
const EXPECTED_UNSUPPORTED: &[&str] = &[
    "e4m3fn",
    "e5m2",
    "float4e2m1",
    "int16",
    "uint16",
    "int4",
    "uint4",
    "int2",
    "uint2",
    "blocked",
    "float16",
];

fn cases_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../build/onnx-node-tests")
}

/// A decoded TensorProto: element type, shape, little-endian bytes.
struct Tensor {
    name: String,
    dtype: DType,
    shape: Shape,
    bytes: Vec<u8>,
}

fn decode(bytes: &[u8]) -> Result<Tensor, String> {
    let t = TensorView::parse(bytes).map_err(|e| format!("bad TensorProto: {e:?}"))?;
    let dtype = DType::from_onnx(t.data_type);
    let dims: Vec<usize> = t
        .dims()
        .map(|d| d.map(|d| d as usize))
        .collect::<Result<_, _>>()
        .map_err(|e| format!("bad dims: {e:?}"))?;
    let shape = Shape::new(&dims).ok_or("shape too large")?;
    let size = dtype.size();
    let bytes = match t.data {
        TensorData::Raw(raw) => raw.to_vec(),
        TensorData::Empty => Vec::new(),
        TensorData::Typed {
            field,
            width,
            message,
        } => {
            let mut out = Vec::new();
            for w in TypedWords::new(message, field, width) {
                let w = w.map_err(|e| format!("bad typed data: {e:?}"))?;
                out.extend_from_slice(&w.to_le_bytes()[..size.max(1)]);
            }
            out
        }
    };
    Ok(Tensor {
        name: t.name.to_string(),
        dtype,
        shape,
        bytes,
    })
}

/// A typed buffer for `run_typed`.
enum Buffer {
    F32(Vec<f32>),
    I8(Vec<i8>),
    U8(Vec<u8>),
    I32(Vec<i32>),
}

impl Buffer {
    fn from_bytes(dtype: DType, b: &[u8]) -> Option<Buffer> {
        Some(match dtype {
            DType::F32 => Buffer::F32(
                b.chunks_exact(4)
                    .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                    .collect(),
            ),
            DType::I32 => Buffer::I32(
                b.chunks_exact(4)
                    .map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                    .collect(),
            ),
            DType::I8 => Buffer::I8(b.iter().map(|&v| v as i8).collect()),
            DType::U8 => Buffer::U8(b.to_vec()),
            _ => return None,
        })
    }

    fn zeros(dtype: DType, n: usize) -> Option<Buffer> {
        Buffer::from_bytes(dtype, &vec![0xa5; n * dtype.size()])
    }

    fn data(&self) -> Data<'_> {
        match self {
            Buffer::F32(v) => Data::F32(v),
            Buffer::I8(v) => Data::I8(v),
            Buffer::U8(v) => Data::U8(v),
            Buffer::I32(v) => Data::I32(v),
        }
    }

    fn data_mut(&mut self) -> DataMut<'_> {
        match self {
            Buffer::F32(v) => DataMut::F32(v),
            Buffer::I8(v) => DataMut::I8(v),
            Buffer::U8(v) => DataMut::U8(v),
            Buffer::I32(v) => DataMut::I32(v),
        }
    }

    /// Little-endian bytes, to compare bit for bit.
    fn bytes(&self) -> Vec<u8> {
        match self {
            Buffer::F32(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            Buffer::I8(v) => v.iter().map(|&x| x as u8).collect(),
            Buffer::U8(v) => v.clone(),
            Buffer::I32(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        }
    }
}

enum Outcome {
    Passed,
    Unsupported(String),
    Failed(String),
}

/// The node inputs of the case's single node, and its op type.
fn node_inputs(model: &[u8]) -> Result<(String, Vec<String>), String> {
    let view = ModelView::parse(model).map_err(|e| format!("{e:?}"))?;
    let graph = GraphView::parse(view.graph).map_err(|e| format!("{e:?}"))?;
    let node = graph.nodes().next().ok_or("no node")?;
    let node = NodeView::parse(node).map_err(|e| format!("{e:?}"))?;
    Ok((
        node.op_type.to_string(),
        node.inputs().map(str::to_string).collect(),
    ))
}

fn run_case(dir: &Path, bound_positions: &[usize]) -> Outcome {
    let fail = |why: String| Outcome::Failed(why);
    let Ok(bytes) = std::fs::read(dir.join("model.onnx")) else {
        return fail("no model.onnx".into());
    };
    let (_, node_inputs) = match node_inputs(&bytes) {
        Ok(n) => n,
        Err(e) => return fail(e),
    };
    let data_dir = dir.join("test_data_set_0");
    let read_all = |prefix: &str| -> Result<Vec<Tensor>, String> {
        let mut out = Vec::new();
        for i in 0.. {
            let path = data_dir.join(format!("{prefix}_{i}.pb"));
            let Ok(b) = std::fs::read(&path) else { break };
            out.push(decode(&b)?);
        }
        Ok(out)
    };
    let (inputs, outputs) = match (read_all("input"), read_all("output")) {
        (Ok(i), Ok(o)) => (i, o),
        (Err(e), _) | (_, Err(e)) => return fail(e),
    };
    // Graph inputs are listed in node-input order in these models; the
    // .pb files carry their names.
    let bound: Vec<&str> = bound_positions
        .iter()
        .filter_map(|&p| node_inputs.get(p).map(String::as_str))
        .filter(|n| !n.is_empty())
        .collect();
    let constants: Vec<ConstInput<'_>> = inputs
        .iter()
        .filter(|t| bound.contains(&t.name.as_str()))
        .map(|t| ConstInput {
            name: &t.name,
            dtype: t.dtype,
            shape: t.shape,
            data: &t.bytes,
        })
        .collect();
    let bindings = Bindings {
        dims: &[],
        constants: &constants,
    };
    let model = match Model::parse_with(&bytes, &bindings) {
        Ok(m) => m,
        Err(e) if e.is_unsupported() => return Outcome::Unsupported(e.to_string()),
        Err(e) => {
            // A bound parameter of a type the runtime cannot hold at all
            // (float8, int4, ...) is reported as a malformed binding.
            if constants.iter().any(|c| c.dtype.size() == 0) {
                return Outcome::Unsupported(format!("unsupported element type ({e})"));
            }
            return fail(format!("rejected: {e}"));
        }
    };
    let mut feeds = Vec::new();
    for v in model.inputs() {
        let Some(t) = inputs.iter().find(|t| t.name == v.name) else {
            return fail(format!("no data for input {}", v.name));
        };
        match Buffer::from_bytes(t.dtype, &t.bytes) {
            Some(b) => feeds.push(b),
            None => return Outcome::Unsupported(format!("input type {}", t.dtype)),
        }
    }
    let mut results = Vec::new();
    for v in model.outputs() {
        match Buffer::zeros(v.dtype, v.len()) {
            Some(b) => results.push(b),
            None => return Outcome::Unsupported(format!("output type {}", v.dtype)),
        }
    }
    let mut arena = vec![0u8; model.arena_size() + 16];
    let mut session = match Session::new(&model, &mut arena) {
        Ok(s) => s,
        Err(e) => return fail(format!("Session::new: {e}")),
    };
    let feed_data: Vec<Data<'_>> = feeds.iter().map(Buffer::data).collect();
    let mut result_data: Vec<DataMut<'_>> = results.iter_mut().map(Buffer::data_mut).collect();
    if let Err(e) = session.run_typed(&feed_data, &mut result_data) {
        return fail(format!("run_typed: {e}"));
    }
    for ((got, want), v) in results.iter().zip(&outputs).zip(model.outputs()) {
        if v.dtype != want.dtype {
            return fail(format!(
                "output {}: type {} where the case has {}",
                v.name, v.dtype, want.dtype
            ));
        }
        if got.bytes() != want.bytes {
            return fail(format!(
                "output {} differs:\n  got  {:?}\n  want {:?}",
                v.name,
                got.bytes(),
                want.bytes
            ));
        }
    }
    Outcome::Passed
}

#[test]
fn onnx_quantized_node_cases() {
    let dir = cases_dir();
    let Ok(entries) = std::fs::read_dir(&dir) else {
        eprintln!(
            "{}: not found; skipping the ONNX quantized node cases",
            dir.display()
        );
        return;
    };
    let mut names: Vec<String> = entries
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    // (passed, unsupported, failed) per op.
    let mut counts: BTreeMap<&str, (usize, usize, usize)> = BTreeMap::new();
    let mut failures = Vec::new();
    let mut unexpected = Vec::new();
    for name in &names {
        // `test_quantizelinear*` but not `test_dynamicquantizelinear*`.
        let Some(&(_, op, bound)) = OPS.iter().find(|(prefix, _, _)| name.starts_with(prefix))
        else {
            continue;
        };
        let entry = counts.entry(op).or_default();
        match run_case(&dir.join(name), bound) {
            Outcome::Passed => {
                entry.0 += 1;
                println!("pass        {name}");
            }
            Outcome::Unsupported(why) => {
                entry.1 += 1;
                println!("unsupported {name}: {why}");
                if !EXPECTED_UNSUPPORTED.iter().any(|k| name.contains(k)) {
                    unexpected.push(format!("{name}: {why}"));
                }
            }
            Outcome::Failed(why) => {
                entry.2 += 1;
                println!("FAIL        {name}: {why}");
                failures.push(format!("{name}: {why}"));
            }
        }
    }
    for (op, (p, u, f)) in &counts {
        println!("{op:18} passed {p:2}  unsupported {u:2}  failed {f:2}");
    }
    assert!(
        failures.is_empty(),
        "failed cases:\n{}",
        failures.join("\n")
    );
    assert!(
        unexpected.is_empty(),
        "cases unexpectedly unsupported:\n{}",
        unexpected.join("\n")
    );
    if !counts.is_empty() {
        let passed: usize = counts.values().map(|c| c.0).sum();
        assert!(passed > 0, "no case passed");
    }
}
