//! The QDQ fusion against ONNX Runtime's own quantizer and kernels.
//!
//! `tests/data/ort_qdq/` holds a small CNN quantized by
//! `onnxruntime.quantization.quantize_static` (QDQ format, per-channel int8
//! weights, int8 activations), 100 test images and ONNX Runtime's outputs
//! on them (`scripts/gen_ort_qdq.py` writes them all). The runtime loads the
//! QDQ model, fuses its patterns into integer ops, and its outputs are
//! compared with ONNX Runtime's in LSBs of the output's quantization scale
//! (ONNX Runtime requantizes in float, the runtime in fixed point: the
//! architecture allows one LSB). The fused run is also compared with the
//! literal DQ → float op → Q run of the same file.

// Same reason as the crate: `Error` is large by design.
#![allow(clippy::result_large_err)]

use std::path::PathBuf;
use tinykd_runtime::ops::Op;
use tinykd_runtime::planner::find_overlap;
use tinykd_runtime::{Bindings, LoadOptions, Model, Session};

fn data(name: &str) -> Vec<u8> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/ort_qdq")
        .join(name);
    std::fs::read(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e} (run scripts/gen_ort_qdq.py to write it)",
            path.display()
        )
    })
}

/// A little-endian .npy array (format 1.0–3.0, C order): its dtype
/// descriptor, shape and raw element bytes.
struct Npy {
    descr: String,
    shape: Vec<usize>,
    bytes: Vec<u8>,
}

fn read_npy(file: &[u8]) -> Npy {
    assert_eq!(&file[..6], b"\x93NUMPY", "not a .npy file");
    let (header_len, start) = match file[6] {
        1 => (u16::from_le_bytes([file[8], file[9]]) as usize, 10),
        _ => (
            u32::from_le_bytes([file[8], file[9], file[10], file[11]]) as usize,
            12,
        ),
    };
    let header = std::str::from_utf8(&file[start..start + header_len]).unwrap();
    let field = |key: &str| {
        let at = header
            .find(key)
            .unwrap_or_else(|| panic!("{key} in {header}"))
            + key.len();
        header[at..].trim_start_matches([':', ' '])
    };
    let descr = field("'descr'")
        .trim_start_matches('\'')
        .split('\'')
        .next()
        .unwrap()
        .to_string();
    assert!(field("'fortran_order'").starts_with("False"));
    let shape_text = field("'shape'");
    let shape = shape_text[1..shape_text.find(')').unwrap()]
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().unwrap())
        .collect::<Vec<usize>>();
    let bytes = file[start + header_len..].to_vec();
    let size = match descr.as_str() {
        "|u1" => 1,
        "<f4" => 4,
        other => panic!("unsupported dtype {other}"),
    };
    assert_eq!(bytes.len(), shape.iter().product::<usize>() * size);
    Npy {
        descr,
        shape,
        bytes,
    }
}

/// The scale of the DequantizeLinear that produces the graph output.
fn output_scale(model: &Model<'_>) -> f32 {
    let out = model.outputs().next().unwrap().name;
    let node = model
        .nodes()
        .iter()
        .find(|n| {
            n.output
                .is_some_and(|o| model.values()[usize::from(o)].name == out)
        })
        .unwrap();
    assert_eq!(node.op_type, "DequantizeLinear");
    let scale = model.node_inputs(node).nth(1).flatten().unwrap();
    model.values()[usize::from(scale)].const_element(0).unwrap() as f32
}

/// Runs `model` on every image; returns the outputs, one row per image.
fn run_all(model: &Model<'_>, images: &Npy, classes: usize) -> Vec<Vec<f32>> {
    let mut arena = vec![0u8; model.arena_size() + 15];
    let mut session = Session::new(model, &mut arena).unwrap();
    let pixels: usize = images.shape[1..].iter().product();
    images
        .bytes
        .chunks_exact(pixels)
        .map(|img| {
            // The model's input is pixel / 255 in float32, as the script fed
            // ONNX Runtime (one correctly rounded division, identical here).
            let x: Vec<f32> = img.iter().map(|&p| p as f32 / 255.0).collect();
            let mut y = vec![0f32; classes];
            session.run(&[&x], &mut [&mut y]).unwrap();
            y
        })
        .collect()
}

/// (fraction identical, max difference) in LSBs of `scale`.
fn lsb_diff(a: &[Vec<f32>], b: &[f32], scale: f32) -> (f64, u32, usize) {
    let flat: Vec<f32> = a.iter().flatten().copied().collect();
    assert_eq!(flat.len(), b.len());
    let lsbs: Vec<u32> = flat
        .iter()
        .zip(b)
        .map(|(&x, &y)| ((x - y).abs() / scale).round() as u32)
        .collect();
    let same = lsbs.iter().filter(|&&d| d == 0).count();
    let max = lsbs.iter().copied().max().unwrap_or(0);
    (same as f64 / lsbs.len() as f64, max, lsbs.len())
}

#[test]
fn ort_quantized_cnn_runs_fused_and_matches_onnx_runtime() {
    let bytes = data("cnn_qdq.onnx");
    let images = read_npy(&data("inputs.npy"));
    let expected = read_npy(&data("ort_outputs.npy"));
    assert_eq!(images.descr, "|u1");
    assert_eq!(expected.descr, "<f4");
    assert_eq!(images.shape[0], expected.shape[0]);
    let classes = expected.shape[1];
    let ort: Vec<f32> = expected
        .bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();

    let fused = Model::parse(&bytes).unwrap();
    let mut literal = Box::new(Model::EMPTY);
    literal
        .load_with(
            &bytes,
            &Bindings::default(),
            LoadOptions { fuse_qdq: false },
        )
        .unwrap();
    assert!(find_overlap(&fused).is_none());

    // The fusion happened: every Conv/Gemm/pool/layout pattern became an
    // integer op, and only the graph input's QuantizeLinear and the graph
    // output's DequantizeLinear still run beside them.
    let (fused_nodes, int_ops) = fused.qdq_fusion();
    let running: Vec<&str> = fused
        .nodes()
        .iter()
        .filter(|n| n.op != Op::Nop)
        .map(|n| n.op_type)
        .collect();
    println!(
        "{} nodes in the file; {fused_nodes} QDQ nodes fused into {int_ops} int8 ops; \
         running: {running:?}",
        fused.nodes().len()
    );
    assert_eq!(literal.qdq_fusion(), (0, 0));
    assert_eq!(
        int_ops, 6,
        "Conv, MaxPool, Conv, GlobalAveragePool, Flatten, Gemm"
    );
    assert_eq!(fused_nodes, fused.nodes().len() - 2);
    assert_eq!(
        running,
        [
            "QuantizeLinear",
            "Conv",
            "MaxPool",
            "Conv",
            "GlobalAveragePool",
            "Flatten",
            "Gemm",
            "DequantizeLinear"
        ]
    );
    let kinds: Vec<&Op> = fused.nodes().iter().map(|n| &n.op).collect();
    assert!(kinds.iter().any(|op| matches!(op, Op::QLinearConv(_))));
    assert!(kinds.iter().any(|op| matches!(op, Op::QGemm(_))));
    assert!(kinds.iter().any(|op| matches!(op, Op::QAveragePool(_))));

    // No float weights or activations in the arena any more.
    println!(
        "arena: fused {} bytes (lower bound {}), unfused {} bytes (lower bound {})",
        fused.arena_size(),
        fused.plan().lower_bound,
        literal.arena_size(),
        literal.plan().lower_bound
    );
    assert!(fused.arena_size() * 3 < literal.arena_size());

    let scale = output_scale(&fused);
    let ours = run_all(&fused, &images, classes);
    let plain = run_all(&literal, &images, classes);
    let flat: Vec<f32> = plain.iter().flatten().copied().collect();
    let (same_ort, max_ort, n) = lsb_diff(&ours, &ort, scale);
    let (same_plain, max_plain, _) = lsb_diff(&ours, &flat, scale);
    let (same_plain_ort, max_plain_ort, _) = lsb_diff(&plain, &ort, scale);
    println!(
        "fused vs ONNX Runtime: {:.2} % of {n} outputs identical, max {max_ort} LSB \
         (scale {scale})\nfused vs unfused (DQ → f32 → Q): {:.2} % identical, max \
         {max_plain} LSB\nunfused vs ONNX Runtime: {:.2} % identical, max {max_plain_ort} LSB",
        same_ort * 100.0,
        same_plain * 100.0,
        same_plain_ort * 100.0,
    );
    // One LSB at most, as the architecture states, and ≥ 99.9 % identical.
    // ONNX Runtime requantizes in float with one rounding; the runtime's
    // single-rounding fixed point (`quant::requant`) differs from that only
    // on exact ties. (The double-rounding form, TFLite's default build,
    // measured 99.0 % here: its high multiply rounds to 1/128 of a step
    // first. See the closing note of the int8 issue.)
    assert!(max_ort <= 1, "max {max_ort} LSB from ONNX Runtime");
    assert!(
        same_ort >= 0.999,
        "only {:.2} % identical",
        same_ort * 100.0
    );
    assert!(max_plain <= 1, "max {max_plain} LSB from the unfused run");
    assert_eq!(
        same_plain_ort, 1.0,
        "ONNX Runtime's QDQ run is our unfused run"
    );
    assert_eq!(max_plain_ort, 0);

    // Same predictions as ONNX Runtime.
    let argmax = |v: &[f32]| {
        (0..v.len())
            .max_by(|&a, &b| v[a].total_cmp(&v[b]).then(b.cmp(&a)))
            .unwrap()
    };
    for (i, row) in ours.iter().enumerate() {
        let want = &ort[i * classes..(i + 1) * classes];
        assert_eq!(argmax(row), argmax(want), "image {i}");
    }
}
