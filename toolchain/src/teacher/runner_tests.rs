//! Tests of the teacher runner (runner.rs), in their own file for length.

use super::*;
use crate::engine::run_tinykd;
use crate::teacher::testutil::{demo_path, demo_rank4, linear, synthetic, TempDir};
use crate::tensor_file::HostTensor;

/// The first `n` synthetic images, normalised for the demo teacher.
fn images(n: usize) -> Vec<f32> {
    let ds = synthetic(n);
    let table = Normalization::FASHION_MNIST.table();
    ds.images.iter().map(|&p| table[usize::from(p)]).collect()
}

fn assert_close(a: &[f32], b: &[f32], tol: f32) {
    assert_eq!(a.len(), b.len());
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        assert!((x - y).abs() <= tol, "element {i}: {x} vs {y}");
    }
}

#[test]
fn teachers_can_be_shared_across_threads() {
    fn send_sync<T: Send + Sync>() {}
    send_sync::<Teacher>();
}

#[test]
fn demo_teacher_loads_with_metadata() {
    let t = Teacher::load(&demo_path()).unwrap();
    assert_eq!(t.classes(), 10);
    assert_eq!(t.batch(), BatchDim::Dynamic);
    assert_eq!(t.image_dims(), &[784]);
    assert_eq!(t.input_name(), "image");
    assert_eq!(t.input_shape_string(), "[N, 784]");
    assert_eq!(t.labels().unwrap()[9], "Ankle boot");
    assert_eq!(t.normalization(), Some(Normalization::FASHION_MNIST));
    let bytes = std::fs::read(demo_path()).unwrap();
    assert_eq!(t.sha256(), hex(&Sha256::digest(&bytes)));
    assert_eq!(t.sha256().len(), 64);
    t.check_classes(10).unwrap();
}

#[test]
fn logits_match_the_tinykd_runtime() {
    let t = Teacher::load(&demo_path()).unwrap();
    let bytes = std::fs::read(demo_path()).unwrap();
    let x = images(4);
    let ours = t.logits(&x, 4).unwrap();
    for i in 0..4 {
        let input = HostTensor::f32("image", vec![1, 784], x[i * 784..(i + 1) * 784].to_vec());
        let out = run_tinykd(&demo_path(), &bytes, &[input]).unwrap();
        assert_eq!(out[0].shape, vec![1, 10]);
        assert_close(&ours[i * 10..(i + 1) * 10], out[0].as_f32().unwrap(), 1e-5);
    }
}

#[test]
fn a_batch_equals_one_by_one() {
    let t = Teacher::load(&demo_path()).unwrap();
    let x = images(37);
    let batch = t.logits(&x, 37).unwrap();
    let single: Vec<f32> = (0..37)
        .flat_map(|i| t.logits(&x[i * 784..(i + 1) * 784], 1).unwrap())
        .collect();
    assert_close(&batch, &single, 1e-5);
    assert!(t.logits(&[], 0).unwrap().is_empty());
}

#[test]
fn rank4_teachers_fixed_and_symbolic_match_the_demo() {
    let dir = TempDir::new("rank4");
    let demo = Teacher::load(&demo_path()).unwrap();
    let x = images(5);
    let want = demo.logits(&x, 5).unwrap();
    let fixed = Teacher::load(&dir.write("fixed.onnx", &demo_rank4(Some(1)))).unwrap();
    assert_eq!(fixed.batch(), BatchDim::Fixed(1));
    assert_eq!(fixed.input_shape_string(), "[1, 1, 28, 28]");
    assert_close(&fixed.logits(&x, 5).unwrap(), &want, 1e-5);
    let three = Teacher::load(&dir.write("three.onnx", &demo_rank4(Some(3)))).unwrap();
    assert_eq!(three.batch(), BatchDim::Fixed(3));
    assert_close(&three.logits(&x, 5).unwrap(), &want, 1e-5);
    let dynamic = Teacher::load(&dir.write("dyn.onnx", &demo_rank4(None))).unwrap();
    assert_eq!(dynamic.input_shape_string(), "[N, 1, 28, 28]");
    assert_close(&dynamic.logits(&x, 5).unwrap(), &want, 1e-5);
    assert_ne!(fixed.sha256(), dynamic.sha256());
}

#[test]
fn element_count_mismatch_names_file_and_both_shapes() {
    let t = Teacher::load(&demo_path()).unwrap();
    let e = t.logits(&vec![0.0; 2 * 700], 2).unwrap_err().to_string();
    assert!(e.contains("fashion_mlp.onnx"), "{e}");
    assert!(e.contains("[2, 700]") && e.contains("[N, 784]"), "{e}");
    let e = t.logits(&[0.0; 5], 2).unwrap_err().to_string();
    assert!(e.contains("of 5 values for 2 images"), "{e}");
}

#[test]
fn class_mismatch_names_file_and_both_counts() {
    let t = Teacher::load(&demo_path()).unwrap();
    let e = t.check_classes(7).unwrap_err().to_string();
    assert!(e.contains("fashion_mlp.onnx"), "{e}");
    assert!(
        e.ends_with("the teacher has 10 classes but the dataset has 7"),
        "{e}"
    );
}

#[test]
fn unsupported_outputs_and_metadata_are_errors() {
    let dir = TempDir::new("bad");
    let p = dir.write("rank3.onnx", &linear(3, None, 0, true, &[]));
    let e = Teacher::load(&p).unwrap_err().to_string();
    assert!(
        e.contains("rank3.onnx") && e.contains("[batch, classes]"),
        "{e}"
    );
    assert!(e.contains("[1, 1, 3]"), "{e}");
    let p = dir.write(
        "norm.onnx",
        &linear(3, None, 0, false, &[("normalization", "mean=abc")]),
    );
    let e = Teacher::load(&p).unwrap_err().to_string();
    assert!(
        e.contains("norm.onnx") && e.contains("'abc' is not a number"),
        "{e}"
    );
    let p = dir.write(
        "labels.onnx",
        &linear(3, None, 0, false, &[("labels", "a,b")]),
    );
    let e = Teacher::load(&p).unwrap_err().to_string();
    assert!(e.contains("2 labels for an output of 3 classes"), "{e}");
    let p = dir.write(
        "ok.onnx",
        &linear(
            3,
            Some(2),
            0,
            false,
            &[("normalization", "std=0.25, mean=0.5")],
        ),
    );
    let t = Teacher::load(&p).unwrap();
    assert_eq!((t.classes(), t.batch()), (3, BatchDim::Fixed(2)));
    assert_eq!(
        t.normalization(),
        Some(Normalization {
            mean: 0.5,
            std: 0.25
        })
    );
    assert!(t.labels().is_none());
    let p = dir.write("garbage.onnx", b"not onnx");
    let e = Teacher::load(&p).unwrap_err().to_string();
    assert!(e.starts_with(&format!("{}: tract:", p.display())), "{e}");
    let e = Teacher::load(&dir.path().join("missing.onnx"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("missing.onnx"), "{e}");
}

#[test]
fn normalization_metadata_format() {
    let n = parse_normalization("mean=0.2860,std=0.3530").unwrap();
    assert_eq!(n, Normalization::FASHION_MNIST);
    for bad in [
        "",
        "mean=0.1",
        "mean=0.1,std=0",
        "mean=0.1,std=-1",
        "mean=0.1,sd=1",
        "mean=inf,std=1",
    ] {
        assert!(parse_normalization(bad).is_err(), "{bad}");
    }
}
