//! The `tinykd` binary end to end: inspect, infer, conformance, and the
//! errors a user sees for bad input.

use std::path::Path;
use std::process::Command;

fn tinykd(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_tinykd"))
        .args(args)
        .current_dir(root())
        .output()
        .expect("run tinykd")
}

fn root() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
}

const DEMO: &str = "models/demo/fashion_mlp.onnx";

#[test]
fn inspect_reports_shapes_macs_and_arena() {
    let out = tinykd(&["inspect", DEMO, "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["opset"], 13);
    assert_eq!(report["inputs"][0]["shape"], serde_json::json!([1, 784]));
    assert_eq!(report["outputs"][0]["shape"], serde_json::json!([1, 10]));
    assert_eq!(report["macs"], 784 * 128 + 128 * 10);
    assert_eq!(report["parameters"], 784 * 128 + 128 + 128 * 10 + 10);
    assert_eq!(report["ops"]["Gemm"], 2);
    assert_eq!(report["fused_activations"], 1);
    let arena = report["arena_bytes"].as_u64().unwrap();
    assert!(arena >= report["arena_lower_bound"].as_u64().unwrap());
}

#[test]
fn infer_writes_the_expected_class_with_every_engine() {
    let dir = std::env::temp_dir().join(format!("tinykd-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let samples: serde_json::Value =
        serde_json::from_slice(&std::fs::read(root().join("models/demo/samples.json")).unwrap())
            .unwrap();
    for engine in [
        "tinykd",
        "tract",
        #[cfg(feature = "ort")]
        "ort",
    ] {
        for (i, sample) in samples["samples"].as_array().unwrap().iter().enumerate() {
            let (input, label) = (
                format!("models/demo/{}", sample["file"].as_str().unwrap()),
                &sample["predicted"],
            );
            let output = dir.join(format!("{engine}_{i}.npy"));
            let out = tinykd(&[
                "infer",
                DEMO,
                "--input",
                &input,
                "--output",
                output.to_str().unwrap(),
                "--engine",
                engine,
                "--json",
            ]);
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
            assert_eq!(
                report["outputs"][0]["argmax"], *label,
                "{engine} sample {i}"
            );
            let written = tinykd::tensor_file::HostTensor::read_npy(&output).unwrap();
            assert_eq!(written.shape, vec![1, 10]);
        }
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn bad_model_fails_with_the_file_name() {
    let dir = std::env::temp_dir().join(format!("tinykd-cli-bad-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bad = dir.join("broken.onnx");
    let mut bytes = std::fs::read(root().join(DEMO)).unwrap();
    bytes.truncate(bytes.len() / 2);
    std::fs::write(&bad, &bytes).unwrap();
    let out = tinykd(&["inspect", bad.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("broken.onnx") && err.contains("truncated"),
        "{err}"
    );

    let missing = tinykd(&["infer", DEMO, "--input", "does-not-exist.npy"]);
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("does-not-exist.npy"));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn wrong_input_shape_is_a_clear_error() {
    let dir = std::env::temp_dir().join(format!("tinykd-cli-shape-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let input = dir.join("x.npy");
    tinykd::tensor_file::HostTensor::f32("", vec![1, 783], vec![0.0; 783])
        .write_npy(&input)
        .unwrap();
    let out = tinykd(&["infer", DEMO, "--input", input.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("image") && err.contains("783"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// ONNX Runtime and tract classify the first 200 test images of the shipped
/// teacher identically (their logits differ by float rounding only).
#[cfg(feature = "ort")]
#[test]
fn eval_on_ort_agrees_with_tract() {
    if !Path::new(tinykd::data::DEFAULT_DIR).is_dir() {
        println!("skipped: no Fashion-MNIST (`make setup` installs it)");
        return;
    }
    let report = |engine: &str| -> serde_json::Value {
        let out = tinykd(&[
            "eval",
            "models/teachers/cnn.onnx",
            "--engine",
            engine,
            "--limit",
            "200",
            "--json",
        ]);
        assert!(
            out.status.success(),
            "{engine}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let (tract, ort) = (report("tract"), report("ort"));
    assert_eq!(ort["engine"], "ort");
    assert_eq!(ort["total"], 200);
    assert_eq!(ort["correct"], tract["correct"]);
    assert_eq!(ort["accuracy"], tract["accuracy"]);
    assert_eq!(ort["confusion"], tract["confusion"]);
}

#[test]
fn quantize_f16_halves_the_weights_and_keeps_the_predictions() {
    let dir = std::env::temp_dir().join(format!("tinykd-cli-f16-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let f16 = dir.join("demo.f16.onnx");
    let f16 = f16.to_str().unwrap();
    let with_data = Path::new(tinykd::data::DEFAULT_DIR).is_dir();
    let limit = if with_data { "500" } else { "0" };
    let out = tinykd(&[
        "quantize",
        DEMO,
        "--weights",
        "f16",
        "--eval-limit",
        limit,
        "--out",
        f16,
        "--json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["weights"], "f16");
    assert_eq!(report["converted"]["tensors"], 4);
    let (f32_bytes, f16_bytes) = (
        report["f32_bytes"].as_f64().unwrap(),
        report["f16_bytes"].as_f64().unwrap(),
    );
    assert!(f16_bytes < 0.52 * f32_bytes, "{f32_bytes} → {f16_bytes}");
    if with_data {
        assert_eq!(report["test_images"], 500);
        let (a, b) = (&report["f32_accuracy"], &report["f16_accuracy"]);
        assert!(
            (a.as_f64().unwrap() - b.as_f64().unwrap()).abs() <= 0.004,
            "{a} vs {b}"
        );
    }

    let out = tinykd(&["inspect", f16, "--json"]);
    let inspect: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let params = 784 * 128 + 128 + 128 * 10 + 10;
    assert_eq!(inspect["parameters"], params);
    assert_eq!(inspect["weight_bytes"], 2 * params);
    assert_eq!(inspect["ops"]["Cast"], 4);
    assert_eq!(inspect["folded_nodes"], 4);
    assert!(inspect["arena_converted_constants"].as_u64().unwrap() >= 4 * params as u64);

    let samples: serde_json::Value =
        serde_json::from_slice(&std::fs::read(root().join("models/demo/samples.json")).unwrap())
            .unwrap();
    for sample in samples["samples"].as_array().unwrap() {
        let input = format!("models/demo/{}", sample["file"].as_str().unwrap());
        let out = tinykd(&["infer", f16, "--input", &input, "--json"]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let result: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(
            result["outputs"][0]["argmax"], sample["predicted"],
            "{input}"
        );
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn targets_are_listed_and_unknown_ones_refused() {
    let out = tinykd(&["targets", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let names: Vec<&str> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    for want in [
        "host",
        "cortex-m4",
        "riscv32",
        "rpi-arm64",
        "rpi-armv7",
        "riscv64",
        "android-arm64",
    ] {
        assert!(names.contains(&want), "{want} missing from {names:?}");
    }
    // `make setup` installs every toolchain: all are ready here.
    for t in v.as_array().unwrap() {
        assert_eq!(t["ready"], true, "{t}");
    }
    let bad = tinykd(&[
        "build",
        "--target",
        "esp32",
        "--model",
        "models/demo/fashion_mlp.onnx",
        "--out",
        "/tmp/never",
    ]);
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(
        !bad.status.success() && err.contains("unknown target 'esp32'"),
        "{err}"
    );
}
