use super::*;
use crate::engine::{run_tinykd, run_tract};
use crate::tensor_file::HostTensor;
use std::path::PathBuf;

fn demo_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/demo/fashion_mlp.onnx")
}

fn demo_model() -> pb::ModelProto {
    pb::ModelProto::decode(std::fs::read(demo_path()).unwrap().as_slice()).unwrap()
}

fn err(model: &mut pb::ModelProto) -> String {
    rewrite(model).expect_err("the model was converted")
}

fn initializer<'m>(m: &'m mut pb::ModelProto, name: &str) -> &'m mut pb::TensorProto {
    let g = m.graph.as_mut().unwrap();
    g.initializer.iter_mut().find(|t| t.name == name).unwrap()
}

/// The demo's four test samples and 16 seeded noise images, as one batch.
fn demo_inputs() -> HostTensor {
    let dir = demo_path().parent().unwrap().to_path_buf();
    let mut x = Vec::new();
    for i in 0..4 {
        let t = HostTensor::read_npy(&dir.join(format!("sample_{i}.npy"))).unwrap();
        x.extend_from_slice(t.as_f32().unwrap());
    }
    let table = crate::data::Normalization::FASHION_MNIST.table();
    let mut state = 0x5eed_u64;
    for _ in 0..16 * 784 {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        x.push(table[(state >> 56) as usize]);
    }
    HostTensor::f32("image", vec![20, 784], x)
}

#[test]
fn demo_model_halves_and_runs_close_to_float32() {
    let bytes = std::fs::read(demo_path()).unwrap();
    let (out, s) = to_f16_weights(&demo_path(), &bytes).unwrap();
    let elements = 784 * 128 + 128 + 128 * 10 + 10;
    assert_eq!(
        (s.tensors, s.elements, s.kept_f32),
        (4, elements, 0),
        "{s:?}"
    );
    assert!(s.max_abs_error > 0.0 && s.max_abs_error < 1e-3, "{s:?}");
    let ratio = out.len() as f64 / bytes.len() as f64;
    assert!(
        (0.45..0.53).contains(&ratio),
        "{} → {} bytes",
        bytes.len(),
        out.len()
    );
    crate::export::check_alignment(&out).unwrap();
    assert_eq!(
        crate::inspect::metadata(&out, "quantization").as_deref(),
        Some(METADATA)
    );
    // Other metadata (labels, normalization) is kept.
    assert!(crate::inspect::metadata(&out, "labels").is_some());

    // The runtime folds the Casts: the float16 bytes are the parameters,
    // their float32 copies are staged in the arena once.
    let model = tinykd_runtime::Model::parse(&out).unwrap();
    assert_eq!(model.parameters(), (elements, 2 * elements));
    let staged: usize = [784 * 128usize, 128, 128 * 10, 10]
        .iter()
        .map(|n| (n * 4).div_ceil(16) * 16)
        .sum();
    assert_eq!(model.plan().converted_constant_bytes, staged);

    let x = demo_inputs();
    let f16_path = PathBuf::from("fashion_mlp.f16.onnx");
    let want = run_tinykd(&demo_path(), &bytes, std::slice::from_ref(&x)).unwrap();
    let got = run_tinykd(&f16_path, &out, std::slice::from_ref(&x)).unwrap();
    let tract = run_tract_bytes(&out, &x);
    let (want, got) = (want[0].as_f32().unwrap(), got[0].as_f32().unwrap());
    let scale = want.iter().fold(1f32, |m, v| m.max(v.abs()));
    for (i, (a, b)) in got.iter().zip(want).enumerate() {
        assert!(
            (a - b).abs() <= 1e-2 * scale,
            "logit {i}: {a} (float16 weights) vs {b} (float32)"
        );
    }
    let argmax = |row: &[f32]| {
        (0..row.len())
            .max_by(|&i, &j| row[i].total_cmp(&row[j]))
            .unwrap()
    };
    for (a, b) in got.chunks(10).zip(want.chunks(10)).take(4) {
        assert_eq!(argmax(a), argmax(b), "a test sample changed class");
    }
    // tract runs the Cast nodes itself and agrees with the runtime.
    for (a, b) in got.iter().zip(&tract) {
        assert!((a - b).abs() <= 1e-4 * scale, "{a} vs tract {b}");
    }
}

/// tract's logits for model `bytes` (through a temporary file).
fn run_tract_bytes(bytes: &[u8], x: &HostTensor) -> Vec<f32> {
    let dir = std::env::temp_dir().join(format!("tinykd-f16-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("model.onnx");
    std::fs::write(&path, bytes).unwrap();
    let out = run_tract(&path, std::slice::from_ref(x)).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    out[0].as_f32().unwrap().to_vec()
}

#[test]
fn runtime_decoder_matches_the_half_crate_on_every_bit_pattern() {
    for bits in 0..=u16::MAX {
        let ours = tinykd_runtime::tensor::f16_to_f32(bits).to_bits();
        let theirs = f16::from_bits(bits).to_f32().to_bits();
        assert_eq!(ours, theirs, "{bits:#06x}");
    }
}

/// Whether `v` becomes ±0 (having been non-zero), and whether it becomes
/// a float16 subnormal.
fn tiny(v: f32) -> (usize, usize) {
    let h = f16::from_f32(v);
    let zero = h.to_f32() == 0.0;
    (
        usize::from(zero && v != 0.0),
        usize::from(!zero && !h.is_normal()),
    )
}

#[test]
fn rounding_is_to_nearest_even_and_tiny_values_are_counted() {
    let mut m = demo_model();
    let name = m.graph.as_ref().unwrap().node[2].input[1].clone();
    let t = initializer(&mut m, &name);
    // 1 + 2^-11 ties to 1 (even), 1 + 3·2^-11 to 1 + 2^-9; 2^-25 ties to 0,
    // 2^-20 is a subnormal.
    let values = [
        1.0 + 2f32.powi(-11),
        1.0 + 3.0 * 2f32.powi(-11),
        2f32.powi(-25),
        2f32.powi(-20),
    ];
    let (mut flushed, mut subnormal) = (1, 1);
    for (i, v) in values.iter().enumerate() {
        let old = f32::from_le_bytes(t.raw_data[4 * i..4 * i + 4].try_into().unwrap());
        let (f, s) = tiny(old);
        (flushed, subnormal) = (flushed - f as isize, subnormal - s as isize);
        t.raw_data[4 * i..4 * i + 4].copy_from_slice(&v.to_le_bytes());
    }
    let before = rewrite(&mut demo_model()).unwrap();
    let s = rewrite(&mut m).unwrap();
    assert_eq!(
        s.flushed_to_zero as isize,
        before.flushed_to_zero as isize + flushed
    );
    assert_eq!(s.subnormal as isize, before.subnormal as isize + subnormal);
    let halves = &initializer(&mut m, &format!("{name}_float16")).raw_data;
    let h = |i: usize| u16::from_le_bytes([halves[2 * i], halves[2 * i + 1]]);
    assert_eq!([h(0), h(1), h(2), h(3)], [0x3c00, 0x3c02, 0x0000, 0x0010]);
}

#[test]
fn out_of_range_and_non_finite_weights_are_named() {
    for (v, what) in [(7e4f32, "beyond float16's range"), (f32::NAN, "non-finite")] {
        let mut m = demo_model();
        let name = m.graph.as_ref().unwrap().node[0].input[1].clone();
        initializer(&mut m, &name).raw_data[8..12].copy_from_slice(&v.to_le_bytes());
        let e = err(&mut m);
        assert!(e.contains(&format!("'{name}'")) && e.contains(what), "{e}");
        assert!(e.contains("element 2"), "{e}");
    }
    // 65519 still rounds to 65504, the largest float16.
    let mut m = demo_model();
    let name = m.graph.as_ref().unwrap().node[0].input[1].clone();
    initializer(&mut m, &name).raw_data[..4].copy_from_slice(&65519f32.to_le_bytes());
    rewrite(&mut m).unwrap();
}

#[test]
fn small_parameters_stay_float32_and_initializer_inputs_are_dropped() {
    let mut m = demo_model();
    let g = m.graph.as_mut().unwrap();
    let f32_tensor = |name: &str, n: usize| pb::TensorProto {
        dims: vec![n as i64],
        data_type: pb::tensor_proto::DataType::Float as i32,
        name: name.into(),
        raw_data: vec![0; 4 * n],
        ..Default::default()
    };
    g.initializer.push(f32_tensor("small", MIN_ELEMENTS));
    g.initializer.push(f32_tensor("big", MIN_ELEMENTS + 1));
    // IR < 4 lists initializers as graph inputs too.
    let mut as_input = g.input[0].clone();
    as_input.name = "big".into();
    g.input.push(as_input);
    let s = rewrite(&mut m).unwrap();
    assert_eq!((s.tensors, s.kept_f32), (5, 1), "{s:?}");
    let g = m.graph.as_ref().unwrap();
    assert!(g.input.iter().all(|i| i.name != "big"));
    let dtype = |name: &str| {
        g.initializer
            .iter()
            .find(|t| t.name == name)
            .map(|t| t.data_type)
    };
    assert_eq!(
        dtype("small"),
        Some(pb::tensor_proto::DataType::Float as i32)
    );
    assert_eq!(dtype("big"), None);
    assert_eq!(
        dtype("big_float16"),
        Some(pb::tensor_proto::DataType::Float16 as i32)
    );
    // Each Cast comes first and writes the original name.
    let cast = g.node.iter().position(|n| n.output == ["big"]).unwrap();
    assert!(g.node[..=cast].iter().all(|n| n.op_type == "Cast"));
    // The result loads in the runtime.
    let bytes = crate::export::encode_aligned(&mut m).unwrap();
    tinykd_runtime::Model::parse(&bytes).unwrap();
}

#[test]
fn unconvertible_models_are_refused_with_the_reason() {
    let mut m = demo_model();
    m.opset_import[0].version = 12;
    assert!(err(&mut m).contains("opset 12"));
    // Already converted: nothing left to convert.
    let (out, _) = to_f16_weights(&demo_path(), &std::fs::read(demo_path()).unwrap()).unwrap();
    let e = to_f16_weights(Path::new("twice.onnx"), &out)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("twice.onnx") && e.contains("no float32 weights"),
        "{e}"
    );
    // Already quantized.
    let mut m = demo_model();
    let g = m.graph.as_mut().unwrap();
    g.node.push(pb::NodeProto {
        name: "q".into(),
        op_type: "DequantizeLinear".into(),
        ..Default::default()
    });
    assert!(err(&mut m).contains("already quantized"));
}
