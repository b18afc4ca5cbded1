use super::*;
use crate::data::{Dataset, Split, DEFAULT_DIR};
use crate::engine::run_tinykd;
use crate::quantize::{quantize, QuantizeOptions};
use crate::tensor_file::HostTensor;
use prost::Message;
use std::path::{Path, PathBuf};

fn demo_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/demo/fashion_mlp.onnx")
}

fn demo_model() -> pb::ModelProto {
    pb::ModelProto::decode(std::fs::read(demo_path()).unwrap().as_slice()).unwrap()
}

#[test]
fn plan_quantizes_mac_inputs_and_the_fused_relu_output() {
    let m = demo_model();
    let g = m.graph.as_ref().unwrap();
    let p = plan(g);
    // image → Gemm → Relu → Gemm → logits: the Gemm output feeding the
    // Relu alone is not quantized, the Relu output is.
    let gemm0_out = &g.node[0].output[0];
    let relu_out = &g.node[1].output[0];
    assert_eq!(g.node[1].op_type, "Relu");
    assert_eq!(
        p.activations,
        vec![
            g.input[0].name.clone(),
            relu_out.clone(),
            "logits".to_string()
        ]
    );
    assert!(!p.activations.contains(gemm0_out));
    assert!(p.shared.is_empty());
}

#[test]
fn layout_ops_share_their_input_parameters() {
    let mut m = demo_model();
    let g = m.graph.as_mut().unwrap();
    // Put a Flatten between the Relu and the second Gemm.
    let relu_out = g.node[1].output[0].clone();
    g.node[2].input[0] = "flat".into();
    g.node.insert(
        2,
        pb::NodeProto {
            input: vec![relu_out.clone()],
            output: vec!["flat".into()],
            op_type: "Flatten".into(),
            ..Default::default()
        },
    );
    let p = plan(g);
    assert_eq!(p.shared.get("flat"), Some(&relu_out));
    let measured: Vec<&String> = p.measured().collect();
    assert!(!measured.contains(&&"flat".to_string()));
    let params: HashMap<String, ActParams> = measured
        .iter()
        .map(|v| ((*v).clone(), ActParams::from_range(-1.0, 2.0)))
        .collect();
    let resolved = p.resolve(&params).unwrap();
    assert_eq!(resolved["flat"], resolved[&relu_out]);
}

#[test]
fn rewrite_stores_int8_weights_per_channel_and_keeps_the_output_name() {
    let mut m = demo_model();
    let g = m.graph.as_ref().unwrap();
    let w_name = g.node[0].input[1].clone();
    let w = g
        .initializer
        .iter()
        .find(|t| t.name == w_name)
        .unwrap()
        .clone();
    let p = plan(g);
    let params: HashMap<String, ActParams> = p
        .activations
        .iter()
        .map(|v| (v.clone(), ActParams::from_range(-2.0, 6.0)))
        .collect();
    let s = rewrite(&mut m, &p, &params).unwrap();
    assert_eq!((s.activations, s.weights, s.biases), (3, 2, 2));
    let g = m.graph.as_ref().unwrap();
    assert!(
        g.initializer.iter().all(|t| t.name != w_name),
        "float weight left behind"
    );
    let q = g
        .initializer
        .iter()
        .find(|t| t.name == format!("{w_name}_quantized"))
        .unwrap();
    assert_eq!(q.data_type, pb::tensor_proto::DataType::Int8 as i32);
    assert_eq!(q.dims, w.dims);
    // Gemm(transB=1): channel = row; each row's largest magnitude maps to ±127.
    let cols = w.dims[1] as usize;
    let qv: Vec<i8> = q.raw_data.iter().map(|&b| b as i8).collect();
    for row in qv.chunks(cols).take(5) {
        assert_eq!(row.iter().map(|v| v.unsigned_abs()).max(), Some(127));
        assert!(row.iter().all(|&v| v != -128));
    }
    // The dequantized weight keeps the float weight's name, along axis 0.
    let dq = g.node.iter().find(|n| n.output[0] == w_name).unwrap();
    assert_eq!(dq.op_type, "DequantizeLinear");
    assert_eq!(dq.attribute[0].i, 0);
    // The graph output is still float and named as before.
    assert_eq!(g.output[0].name, "logits");
    let last = g.node.last().unwrap();
    assert_eq!(
        (last.op_type.as_str(), last.output[0].as_str()),
        ("DequantizeLinear", "logits")
    );
}

#[test]
fn old_opsets_are_refused_with_a_reason() {
    let mut m = demo_model();
    m.opset_import[0].version = 11;
    let p = plan(m.graph.as_ref().unwrap());
    let params = p
        .activations
        .iter()
        .map(|v| (v.clone(), ActParams::from_range(-1.0, 1.0)))
        .collect();
    let e = rewrite(&mut m, &p, &params).unwrap_err().to_string();
    assert!(e.contains("opset 11") && e.contains("13"), "{e}");
}

#[test]
fn quantized_demo_model_runs_close_to_the_float_one() {
    let dir = Path::new(DEFAULT_DIR);
    if !dir.is_dir() {
        println!("skipped: {DEFAULT_DIR} not present (`make setup` installs it)");
        return;
    }
    let train = Dataset::load(dir, Split::Train).unwrap();
    let bytes = std::fs::read(demo_path()).unwrap();
    let opts = QuantizeOptions {
        calib_size: 300,
        ..QuantizeOptions::default()
    };
    let q = quantize(&demo_path(), &bytes, &train, &opts).unwrap();
    crate::export::check_alignment(&q.bytes).unwrap();
    let test = Dataset::load(dir, Split::Test).unwrap();
    let table = crate::data::Normalization::FASHION_MNIST.table();
    let n = 200;
    let x: Vec<f32> = (0..n)
        .flat_map(|i| test.image(i).iter().map(|&p| table[usize::from(p)]))
        .collect();
    let input = HostTensor::f32("image", vec![n, 784], x);
    let path = Path::new("quantized.onnx");
    let f = run_tinykd(path, &bytes, std::slice::from_ref(&input)).unwrap();
    let i = run_tinykd(path, &q.bytes, &[input]).unwrap();
    let (f, i) = (f[0].as_f32().unwrap(), i[0].as_f32().unwrap());
    let argmax = |r: &[f32]| (0..10).fold(0, |b, c| if r[c] > r[b] { c } else { b });
    let agree = f
        .chunks(10)
        .zip(i.chunks(10))
        .filter(|(a, b)| argmax(a) == argmax(b))
        .count();
    let max_diff = f
        .iter()
        .zip(i)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    let spread = f.iter().fold(0f32, |m, v| m.max(v.abs()));
    println!("argmax agreement {agree}/{n}, max |logit diff| {max_diff} (logits up to {spread})");
    assert!(agree >= n * 97 / 100, "{agree}/{n}");
    assert!(max_diff < 0.1 * spread, "{max_diff} vs {spread}");
}

#[test]
fn an_already_quantized_model_is_refused_before_calibration() {
    let ort_qdq =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../runtime/tests/data/ort_qdq/cnn_qdq.onnx");
    let bytes = std::fs::read(&ort_qdq).unwrap();
    let names = (0..10).map(|c| c.to_string()).collect();
    let calib = Dataset::new(vec![0; 10 * 784], vec![0; 10], 28, 28, names).unwrap();
    let e = quantize(&ort_qdq, &bytes, &calib, &QuantizeOptions::default())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("cnn_qdq.onnx") && e.contains("already quantized"),
        "{e}"
    );
}
