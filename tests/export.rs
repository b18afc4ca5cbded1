//! The ONNX exporter end to end: networks built from specs with candle, their
//! logits, then the exported file checked for aligned initializers and run
//! by tinykd-runtime, tract and (with the project's .venv) onnx.checker
//! `full_check` and ONNX Runtime, which must all agree with candle.

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use prost::Message;
use std::path::{Path, PathBuf};
use tinykd::engine::{run_tinykd, run_tract};
use tinykd::export::{check_alignment, export, load_weights, write, ExportError, ExportMeta};
use tinykd::tensor_file::HostTensor;
use tinykd::train::checkpoint::save_weights;
use tinykd::train::model::{Kernels, Layer, ModelSpec, Network};
use tract_onnx::pb;

/// Largest |a − b| / max(1, |b|) allowed between engines.
const TOLERANCE: f32 = 1e-4;

mod common;
use common::Rng;

fn conv(filters: usize, kernel: usize, stride: usize, padding: usize) -> Layer {
    Layer::Conv {
        filters,
        kernel,
        stride,
        padding,
    }
}

fn depthwise(kernel: usize, stride: usize, padding: usize) -> Layer {
    Layer::Depthwise {
        kernel,
        stride,
        padding,
    }
}

fn mlp() -> ModelSpec {
    ModelSpec {
        name: "mlp-16".into(),
        input: vec![784],
        layers: vec![
            Layer::Dense { units: 16 },
            Layer::Relu,
            Layer::Dense { units: 10 },
        ],
    }
}

fn cnn() -> ModelSpec {
    ModelSpec {
        name: "cnn-dw-gap".into(),
        input: vec![1, 28, 28],
        layers: vec![
            conv(8, 3, 1, 1),
            Layer::Relu,
            Layer::MaxPool { size: 2 },
            depthwise(3, 1, 1),
            Layer::Relu,
            conv(16, 1, 1, 0),
            Layer::Relu,
            Layer::GlobalAvgPool,
            Layer::Dense { units: 10 },
        ],
    }
}

fn flatten_dense() -> ModelSpec {
    ModelSpec {
        name: "cnn-flatten".into(),
        input: vec![1, 28, 28],
        layers: vec![
            conv(4, 5, 1, 0),
            Layer::Relu,
            Layer::MaxPool { size: 3 },
            Layer::Flatten,
            Layer::Dense { units: 12 },
            Layer::Relu,
            Layer::Dense { units: 10 },
        ],
    }
}

/// The cross-resolution student's shape: a 2×2 average pool first (the
/// network sees 28×28 at 14×14; odd sizes: a 3×3 pool drops the last row
/// and column of 14), then a conv stack.
fn avg_pooled() -> ModelSpec {
    ModelSpec {
        name: "avg-pooled".into(),
        input: vec![1, 28, 28],
        layers: vec![
            Layer::AvgPool { size: 2 },
            conv(4, 3, 1, 1),
            Layer::Relu,
            Layer::AvgPool { size: 3 },
            Layer::GlobalAvgPool,
            Layer::Dense { units: 10 },
        ],
    }
}

/// Stride 2 in every conv, odd sizes, 3 input channels, a pool that drops
/// a column: [3, 15, 13] → [6, 8, 7] → [6, 4, 3] → [6, 2, 2] → [5, 2, 2] → 20 → 7.
fn strided() -> ModelSpec {
    ModelSpec {
        name: "strided".into(),
        input: vec![3, 15, 13],
        layers: vec![
            conv(6, 3, 2, 1),
            Layer::Relu,
            Layer::MaxPool { size: 2 },
            depthwise(3, 2, 1),
            Layer::Relu,
            conv(5, 2, 2, 1),
            Layer::Flatten,
            Layer::Dense { units: 7 },
        ],
    }
}

/// A network for `spec` with deterministic parameters (scaled like
/// Kaiming init, biases non-zero so a dropped bias shows), and its
/// parameters by name.
fn network(spec: &ModelSpec, seed: u64) -> (Network, Vec<(String, Tensor)>) {
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
    let net = Network::new(spec, vb, Kernels::Candle).unwrap();
    let mut rng = Rng(seed);
    let data = varmap.data().lock().unwrap();
    let mut names: Vec<&String> = data.keys().collect();
    names.sort();
    let mut params = Vec::new();
    for name in names {
        let var = &data[name];
        let dims = var.dims().to_vec();
        let fan_in = dims.iter().skip(1).product::<usize>().max(1);
        let scale = if dims.len() == 1 {
            0.1
        } else {
            (2.0 / fan_in as f32).sqrt()
        };
        let values = rng.normals(var.elem_count(), scale);
        var.set(&Tensor::from_vec(values, dims, &Device::Cpu).unwrap())
            .unwrap();
        params.push((name.clone(), var.as_tensor().clone()));
    }
    (net, params)
}

fn temp_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("tinykd-export-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn max_relative_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs() / y.abs().max(1.0))
        .fold(0.0, f32::max)
}

fn assert_close(what: &str, got: &HostTensor, want: &HostTensor) {
    assert_eq!(got.shape, want.shape, "{what}: shape");
    let diff = max_relative_diff(got.as_f32().unwrap(), want.as_f32().unwrap());
    assert!(
        diff <= TOLERANCE,
        "{what}: differs from candle by {diff:e} (relative)"
    );
}

fn venv_python() -> Option<PathBuf> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/python");
    p.is_file().then_some(p)
}

/// Checks the model with onnx.checker (full_check) and the alignment of its
/// initializers as the onnx package reads them, then runs it with ONNX
/// Runtime on `x.npy`, writing `y.npy`.
const ORT_SNIPPET: &str = r#"
import sys, numpy as np, onnx, onnxruntime as ort
model, x, y = sys.argv[1:4]
m = onnx.load(model)
onnx.checker.check_model(m, full_check=True)
data = open(model, "rb").read()
# A search only locates distinctive bytes; short tensors (scales, zero
# points) are covered by check_alignment's exact parse.
for t in m.graph.initializer:
    if len(t.raw_data) >= 16:
        assert data.find(t.raw_data) % 16 == 0, (t.name, data.find(t.raw_data))
s = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
np.save(y, s.run(["logits"], {"image": np.load(x)})[0].astype(np.float32))
"#;

fn run_onnxruntime(python: &Path, model: &Path, input: &HostTensor) -> HostTensor {
    let dir = model.parent().unwrap();
    let (x, y) = (dir.join("x.npy"), dir.join("y.npy"));
    input.write_npy(&x).unwrap();
    let out = std::process::Command::new(python)
        .args(["-c", ORT_SNIPPET])
        .args([model, &x, &y])
        .output()
        .expect("run python");
    assert!(
        out.status.success(),
        "onnx.checker / onnxruntime failed on {}:\n{}",
        model.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    HostTensor::read_npy(&y).unwrap()
}

/// Each initializer's bytes, searched for in the file, sit at a 16-byte
/// aligned offset: a check independent of the exporter's own parser.
fn assert_aligned_by_search(bytes: &[u8]) -> usize {
    let model = pb::ModelProto::decode(bytes).unwrap();
    let graph = model.graph.unwrap();
    for t in &graph.initializer {
        assert!(!t.raw_data.is_empty(), "{}: no raw_data", t.name);
        if t.raw_data.len() < 16 {
            continue; // not distinctive enough to find by search
        }
        let at = bytes
            .windows(t.raw_data.len())
            .position(|w| w == t.raw_data.as_slice())
            .unwrap();
        assert_eq!(at % 16, 0, "{}: raw_data at offset {at}", t.name);
    }
    graph.initializer.len()
}

/// The runtime reads every weight in place (nothing staged into the arena)
/// when the file sits at an aligned address.
fn assert_no_staged_weights(bytes: &[u8]) {
    let mut buf = vec![0u8; bytes.len() + 16];
    let start = buf.as_ptr().align_offset(16);
    buf[start..start + bytes.len()].copy_from_slice(bytes);
    let bindings = tinykd_runtime::Bindings {
        dims: &[("N", 1)],
        constants: &[],
    };
    let model =
        tinykd_runtime::Model::parse_with(&buf[start..start + bytes.len()], &bindings).unwrap();
    assert_eq!(model.plan().staged_constant_bytes, 0);
}

/// Exports `spec`, then checks alignment and the logits of every engine
/// against candle for batches of 1 and 3.
fn check_spec(spec: &ModelSpec, seed: u64) {
    let (net, params) = network(spec, seed);
    let classes = match spec.layers.last() {
        Some(Layer::Dense { units }) => *units,
        _ => unreachable!("test specs end in a dense layer"),
    };
    let meta = ExportMeta {
        labels: (0..classes).map(|c| format!("class {c}")).collect(),
        normalization: ExportMeta::normalization(0.2860, 0.3530),
        recipe: Some("temperature = 4\nalpha = 0.9\n".into()),
        doc: format!("{} (test export)", spec.name),
        ..ExportMeta::default()
    };
    let dir = temp_dir(&spec.name);
    let path = dir.join("model.onnx");
    write(&path, spec, &params, &meta).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    assert_eq!(
        bytes,
        export(spec, &params, &meta).unwrap(),
        "deterministic"
    );
    check_alignment(&bytes).unwrap();
    let initializers = assert_aligned_by_search(&bytes);
    assert_no_staged_weights(&bytes);

    let python = venv_python();
    if python.is_none() {
        eprintln!(
            "{}: .venv/bin/python missing, skipping onnx.checker and onnxruntime",
            spec.name
        );
    }
    let mut rng = Rng(seed ^ 0x5eed);
    for batch in [1, 3] {
        let mut shape = vec![batch];
        shape.extend(&spec.input);
        let data = rng.normals(shape.iter().product(), 1.0);
        let x = Tensor::from_vec(data.clone(), shape.clone(), &Device::Cpu).unwrap();
        let logits = net.forward(&x).unwrap();
        let want = HostTensor::f32(
            "logits",
            logits.dims().to_vec(),
            logits.flatten_all().unwrap().to_vec1().unwrap(),
        );
        assert_eq!(want.shape, [batch, classes]);
        let input = HostTensor::f32("image", shape, data);
        let what = |engine: &str| format!("{} batch {batch}: {engine}", spec.name);

        let ours = run_tinykd(&path, &bytes, std::slice::from_ref(&input)).unwrap();
        assert_eq!(ours.len(), 1);
        assert_eq!(ours[0].name, "logits");
        assert_close(&what("tinykd-runtime"), &ours[0], &want);

        let tract = run_tract(&path, std::slice::from_ref(&input)).unwrap();
        assert_close(&what("tract"), &tract[0], &want);

        if let Some(python) = &python {
            let ort = run_onnxruntime(python, &path, &input);
            assert_close(&what("onnxruntime"), &ort, &want);
        }
    }
    eprintln!(
        "{}: {} bytes, {initializers} aligned initializers, tinykd/tract{} match candle",
        spec.name,
        bytes.len(),
        if python.is_some() { "/onnxruntime" } else { "" }
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn mlp_matches_candle_everywhere() {
    check_spec(&mlp(), 1);
}

#[test]
fn cnn_with_depthwise_and_gap_matches_candle_everywhere() {
    check_spec(&cnn(), 2);
}

#[test]
fn flatten_then_dense_matches_candle_everywhere() {
    check_spec(&flatten_dense(), 3);
}

#[test]
fn average_pools_match_candle_everywhere() {
    check_spec(&avg_pooled(), 5);
}

#[test]
fn strided_odd_sizes_match_candle_everywhere() {
    check_spec(&strided(), 4);
}

#[test]
fn weights_file_round_trip_exports_the_same_bytes() {
    let spec = cnn();
    let (_, params) = network(&spec, 5);
    let dir = temp_dir("weights");
    let path = dir.join("student.safetensors");
    save_weights(&path, &spec, &params).unwrap();
    let loaded = load_weights(&path).unwrap();
    assert_eq!(loaded.spec, spec);
    let meta = ExportMeta::default();
    assert_eq!(
        export(&loaded.spec, &loaded.params, &meta).unwrap(),
        export(&spec, &params, &meta).unwrap()
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn missing_or_misshapen_params_are_named() {
    let spec = mlp();
    let (_, params) = network(&spec, 6);
    let meta = ExportMeta::default();

    let missing: Vec<_> = params
        .iter()
        .filter(|(n, _)| n != "l0.weight")
        .cloned()
        .collect();
    let err = export(&spec, &missing, &meta).unwrap_err();
    assert!(
        matches!(&err, ExportError::MissingParam { layer: 0, name } if name == "l0.weight"),
        "{err:?}"
    );
    assert!(err.to_string().contains("layer 0") && err.to_string().contains("`l0.weight`"));

    let mut misshapen = params.clone();
    let slot = misshapen
        .iter_mut()
        .find(|(n, _)| n == "l2.weight")
        .unwrap();
    slot.1 = slot.1.t().unwrap().contiguous().unwrap(); // [16, 10] instead of [10, 16]
    let err = export(&spec, &misshapen, &meta).unwrap_err();
    let text = err.to_string();
    assert!(
        matches!(err, ExportError::ParamShape { layer: 2, .. })
            && text.contains("`l2.weight`")
            && text.contains("[16, 10]")
            && text.contains("[10, 16]"),
        "{text}"
    );
}

#[test]
fn failed_writes_leave_no_file() {
    let spec = mlp();
    let (_, params) = network(&spec, 7);
    let meta = ExportMeta::default();
    let dir = temp_dir("write");

    let nowhere = dir.join("missing-dir").join("model.onnx");
    let err = write(&nowhere, &spec, &params, &meta).unwrap_err();
    assert!(matches!(err, ExportError::Write { .. }), "{err:?}");
    assert!(err.to_string().contains("missing-dir"), "{err}");
    assert!(!nowhere.exists() && !nowhere.parent().unwrap().exists());

    // An export error happens before anything is written.
    let path = dir.join("model.onnx");
    let err = write(&path, &spec, &params[1..], &meta).unwrap_err();
    assert!(matches!(err, ExportError::MissingParam { .. }), "{err:?}");
    assert_eq!(
        std::fs::read_dir(&dir).unwrap().count(),
        0,
        "files left in {dir:?}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `tinykd quantize`'s output for the CNN (conv, depthwise, max-pool,
/// global average pool, dense): aligned, accepted by onnx.checker, and run
/// by ONNX Runtime, tract and tinykd-runtime, which agree to within one step
/// of the logits' int8 scale.
#[test]
fn quantized_cnn_passes_the_checker_and_agrees_across_engines() {
    let spec = cnn();
    let (_, params) = network(&spec, 7);
    let meta = ExportMeta {
        labels: (0..10).map(|c| format!("class {c}")).collect(),
        normalization: ExportMeta::normalization(0.2860, 0.3530),
        ..ExportMeta::default()
    };
    let dir = temp_dir("quantized-cnn");
    let float_path = dir.join("model.onnx");
    write(&float_path, &spec, &params, &meta).unwrap();
    let float_bytes = std::fs::read(&float_path).unwrap();
    // Calibration images: seeded noise in Fashion-MNIST's layout.
    let mut rng = Rng(0xca11b);
    let images: Vec<u8> = (0..300 * 784).map(|_| (rng.next() >> 56) as u8).collect();
    let calib = tinykd::data::Dataset::new(
        images,
        vec![0; 300],
        28,
        28,
        (0..10).map(|c| c.to_string()).collect(),
    )
    .unwrap();
    let opts = tinykd::quantize::QuantizeOptions {
        calib_size: 200,
        ..Default::default()
    };
    let q = tinykd::quantize::quantize(&float_path, &float_bytes, &calib, &opts).unwrap();
    check_alignment(&q.bytes).unwrap();
    assert_aligned_by_search(&q.bytes);
    assert!(
        q.summary.weights == 4 && q.summary.biases == 4,
        "{:?}",
        q.summary
    );
    let path = dir.join("model.int8.onnx");
    std::fs::write(&path, &q.bytes).unwrap();
    let model = pb::ModelProto::decode(q.bytes.as_slice()).unwrap();
    let step = model
        .graph
        .unwrap()
        .initializer
        .iter()
        .find(|t| t.name == "logits_scale")
        .map(|t| f32::from_le_bytes(t.raw_data[..4].try_into().unwrap()))
        .unwrap();

    let table = tinykd::data::Normalization::FASHION_MNIST.table();
    let x: Vec<f32> = (0..3 * 784)
        .map(|_| table[(rng.next() >> 56) as usize])
        .collect();
    let input = HostTensor::f32("image", vec![3, 1, 28, 28], x);
    let ours = run_tinykd(&path, &q.bytes, std::slice::from_ref(&input)).unwrap();
    let tract = run_tract(&path, std::slice::from_ref(&input)).unwrap();
    let within_a_step = |what: &str, got: &HostTensor| {
        let worst = ours[0]
            .as_f32()
            .unwrap()
            .iter()
            .zip(got.as_f32().unwrap())
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(
            worst <= step * 1.001,
            "{what}: {worst} apart, one step is {step}"
        );
    };
    within_a_step("tract", &tract[0]);
    if let Some(python) = venv_python() {
        within_a_step("onnxruntime", &run_onnxruntime(&python, &path, &input));
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `tinykd quantize --weights f16`'s output for the CNN: float16
/// initializers behind `Cast(to=FLOAT)`, aligned, half the weight bytes,
/// accepted by onnx.checker, and run by ONNX Runtime, tract and
/// tinykd-runtime, which agree with one another and stay within 1e-2
/// (relative) of the float32 model.
#[test]
fn f16_weights_pass_the_checker_and_agree_across_engines() {
    let spec = cnn();
    let (_, params) = network(&spec, 11);
    let meta = ExportMeta {
        labels: (0..10).map(|c| format!("class {c}")).collect(),
        normalization: ExportMeta::normalization(0.2860, 0.3530),
        ..ExportMeta::default()
    };
    let dir = temp_dir("f16-cnn");
    let float_path = dir.join("model.onnx");
    write(&float_path, &spec, &params, &meta).unwrap();
    let float_bytes = std::fs::read(&float_path).unwrap();
    let (bytes, summary) =
        tinykd::quantize::f16::to_f16_weights(&float_path, &float_bytes).unwrap();
    check_alignment(&bytes).unwrap();
    assert_aligned_by_search(&bytes);
    // 4 weights, 4 biases.
    assert_eq!(summary.tensors, 8, "{summary:?}");
    // Every initializer is a weight or bias: their bytes halve exactly (the
    // file less, as this model is small next to its graph and padding).
    let weight_bytes = |b: &[u8]| -> usize {
        let g = pb::ModelProto::decode(b).unwrap().graph.unwrap();
        g.initializer.iter().map(|t| t.raw_data.len()).sum()
    };
    assert_eq!(2 * weight_bytes(&bytes), weight_bytes(&float_bytes));
    assert!(bytes.len() < float_bytes.len());
    let path = dir.join("model.f16.onnx");
    std::fs::write(&path, &bytes).unwrap();

    let mut rng = Rng(0xf16);
    let input = HostTensor::f32("image", vec![3, 1, 28, 28], rng.normals(3 * 784, 1.0));
    let float = run_tinykd(&float_path, &float_bytes, std::slice::from_ref(&input)).unwrap();
    let ours = run_tinykd(&path, &bytes, std::slice::from_ref(&input)).unwrap();
    let diff = max_relative_diff(ours[0].as_f32().unwrap(), float[0].as_f32().unwrap());
    assert!(diff <= 1e-2, "float16 weights moved the logits by {diff:e}");
    let tract = run_tract(&path, std::slice::from_ref(&input)).unwrap();
    assert_close("f16 weights: tract", &tract[0], &ours[0]);
    if let Some(python) = venv_python() {
        let ort = run_onnxruntime(&python, &path, &input);
        assert_close("f16 weights: onnxruntime", &ort, &ours[0]);
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
