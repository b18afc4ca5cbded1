//! The distillation pipeline end to end on real Fashion-MNIST (a small
//! subset, so it stays fast): train a student against the demo teacher,
//! export it, and check that the runtime the devices run gives the logits
//! candle computed, on 1,000 test images; then the CLI's distill → eval and
//! its errors for bad input.

use candle_core::{Device, Tensor};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use tinykd::data::{Dataset, Split};
use tinykd::distill::{Distiller, Method, Recipe, Targets};
use tinykd::engine::EngineKind;
use tinykd::export::ExportMeta;
use tinykd::teacher::{Ensemble, EnsembleMode, Teacher};
use tinykd::train::fit::{FitConfig, Trainer};
use tinykd::train::model::ModelSpec;

fn root() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
}

fn temp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("tinykd-pipeline-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

fn data_dir() -> Option<PathBuf> {
    let dir = PathBuf::from(tinykd::data::DEFAULT_DIR);
    if dir.join("train-images-idx3-ubyte.gz").exists() {
        Some(dir)
    } else {
        // `make setup` installs it; the test must not pass silently without it.
        panic!("Fashion-MNIST is missing: run `make setup`");
    }
}

#[test]
fn distilled_student_runs_in_the_runtime_with_candles_logits() {
    let dir = data_dir().unwrap();
    let train = Arc::new(Dataset::load(&dir, Split::Train).unwrap());
    let test = Dataset::load(&dir, Split::Test).unwrap();
    let indices: Vec<usize> = (0..3000).collect();
    let teacher = Teacher::load(&root().join("models/demo/fashion_mlp.onnx")).unwrap();
    let ensemble = Ensemble::new(vec![(teacher, 1.0)], EnsembleMode::Arithmetic).unwrap();
    let logits = tinykd::teacher::logits_for(
        &ensemble.members()[0].0,
        &train,
        &indices,
        Default::default(),
        |_, _| {},
    )
    .unwrap();
    let recipe = Recipe {
        method: Method::Hinton,
        fit: FitConfig {
            epochs: 2,
            ..FitConfig::default()
        },
        ..Recipe::default()
    };
    let objective = Distiller::new(
        &recipe,
        Some(&ensemble),
        Targets::Cached(vec![logits]),
        Default::default(),
    )
    .unwrap();
    let spec = ModelSpec::from_toml_file(&root().join("models/students/ds-cnn.toml")).unwrap();
    let mut trainer = Trainer::new(spec.clone(), recipe.fit.clone()).unwrap();
    for _ in 0..2 {
        trainer
            .train_epoch(&train, &indices, &objective, |_| {})
            .unwrap();
    }
    let path = temp("student.onnx");
    tinykd::export::write(&path, &spec, &trainer.parameters(), &ExportMeta::default()).unwrap();

    let first: Vec<usize> = (0..1000).collect();
    let test = test.subset(&first).unwrap();
    let report = tinykd::eval::evaluate(&path, &test, EngineKind::Tinykd, 100).unwrap();
    let x: Vec<f32> = (0..test.len())
        .flat_map(|i| {
            test.image(i)
                .iter()
                .map(|&p| tinykd::data::Normalization::default().apply(p))
        })
        .collect();
    let x = Tensor::from_vec(x, (test.len(), 1, 28, 28), &Device::Cpu).unwrap();
    let candle = trainer.network().forward(&x).unwrap();
    let candle: Vec<f32> = candle.flatten_all().unwrap().to_vec1().unwrap();
    assert_eq!(candle.len(), report.logits.len());
    let scale = candle.iter().fold(0f32, |m, v| m.max(v.abs()));
    let mut worst = 0f32;
    for (row_c, row_r) in candle.chunks(10).zip(report.logits.chunks(10)) {
        for (c, r) in row_c.iter().zip(row_r) {
            worst = worst.max((c - r).abs() / scale);
        }
        let am = |r: &[f32]| {
            r.iter()
                .enumerate()
                .max_by(|a, b| a.1.total_cmp(b.1))
                .unwrap()
                .0
        };
        assert_eq!(am(row_c), am(row_r), "argmax differs");
    }
    assert!(
        worst < 1e-4,
        "runtime vs candle: max relative difference {worst}"
    );
    assert!(
        report.accuracy > 0.3,
        "student accuracy {}",
        report.accuracy
    );
}

fn tinykd_cli(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_tinykd"))
        .args(args)
        .current_dir(root())
        .output()
        .expect("run tinykd")
}

#[test]
fn cli_distill_then_eval_and_resume() {
    data_dir();
    let out = temp("cli-student.onnx");
    let o = out.to_str().unwrap();
    let run = |extra: &[&str]| {
        let mut args = vec![
            "distill",
            "--teacher",
            "models/demo/fashion_mlp.onnx",
            "--student",
            "models/students/mlp-40.toml",
            "--recipe",
            "models/recipes/demo.toml",
            "--limit",
            "2000",
            "--val",
            "500",
            "--out",
            o,
            "--json",
        ];
        args.extend(extra);
        tinykd_cli(&args)
    };
    let full = run(&["--epochs", "2"]);
    assert!(
        full.status.success(),
        "{}",
        String::from_utf8_lossy(&full.stderr)
    );
    let full_bytes = std::fs::read(&out).unwrap();
    // Kill-and-resume: one epoch, then --resume to two, gives the same file.
    std::fs::remove_file(&out).unwrap();
    assert!(run(&["--epochs", "2", "--stop-after", "1"])
        .status
        .success());
    assert!(!out.exists(), "a stopped run wrote its model");
    // Another split would put trained-on images into validation: refused.
    let other_split = run(&["--resume", "--split-seed", "7"]);
    let err = String::from_utf8_lossy(&other_split.stderr);
    assert!(
        !other_split.status.success() && err.contains("split_seed=0") && err.contains(".ckpt"),
        "{err}"
    );
    let resumed = run(&["--resume"]);
    assert!(
        resumed.status.success(),
        "{}",
        String::from_utf8_lossy(&resumed.stderr)
    );
    assert!(
        std::fs::read(&out).unwrap() == full_bytes,
        "resumed run differs"
    );

    let eval = tinykd_cli(&["eval", o, "--limit", "500", "--json"]);
    assert!(
        eval.status.success(),
        "{}",
        String::from_utf8_lossy(&eval.stderr)
    );
    let r: serde_json::Value = serde_json::from_slice(&eval.stdout).unwrap();
    assert_eq!(r["total"], 500);
    assert!(r["accuracy"].as_f64().unwrap() > 0.5);
}

#[test]
fn teacher_with_wrong_classes_and_corrupt_data_are_clear_errors() {
    data_dir();
    // A teacher with 10 outputs on a spec is fine; a data dir with a damaged
    // IDX file names the file and writes nothing.
    let bad_dir = temp("bad-data");
    std::fs::create_dir_all(&bad_dir).unwrap();
    for f in [
        "t10k-images-idx3-ubyte.gz",
        "t10k-labels-idx1-ubyte.gz",
        "train-labels-idx1-ubyte.gz",
    ] {
        std::fs::copy(
            Path::new(tinykd::data::DEFAULT_DIR).join(f),
            bad_dir.join(f),
        )
        .unwrap();
    }
    std::fs::write(
        bad_dir.join("train-images-idx3-ubyte.gz"),
        b"\x1f\x8b\x08\x00garbage",
    )
    .unwrap();
    let out = temp("never.onnx");
    let r = tinykd_cli(&[
        "distill",
        "--teacher",
        "models/demo/fashion_mlp.onnx",
        "--student",
        "models/students/mlp-40.toml",
        "--data-dir",
        bad_dir.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(!r.status.success());
    let err = String::from_utf8_lossy(&r.stderr);
    assert!(err.contains("train-images-idx3-ubyte.gz"), "{err}");
    assert!(!out.exists(), "a failed run wrote its output");

    // A teacher whose outputs are not the data set's 10 classes.
    let five = temp("five-class.onnx");
    let spec: ModelSpec =
        toml::from_str("name = \"five\"\ninput = [784]\n[[layers]]\ntype = \"dense\"\nunits = 5\n")
            .unwrap();
    let vm = candle_nn::VarMap::new();
    let vb = candle_nn::VarBuilder::from_varmap(&vm, candle_core::DType::F32, &Device::Cpu);
    tinykd::train::model::Network::new(&spec, vb, tinykd::train::model::Kernels::Candle).unwrap();
    let params: Vec<(String, Tensor)> = vm
        .data()
        .lock()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.as_tensor().clone()))
        .collect();
    tinykd::export::write(&five, &spec, &params, &ExportMeta::default()).unwrap();
    let r = tinykd_cli(&[
        "distill",
        "--teacher",
        five.to_str().unwrap(),
        "--student",
        "models/students/mlp-40.toml",
        "--limit",
        "100",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(!r.status.success());
    let err = String::from_utf8_lossy(&r.stderr);
    assert!(
        err.contains("five-class.onnx") && err.contains('5') && err.contains("10"),
        "{err}"
    );
    assert!(!out.exists());
}

#[test]
fn cli_qat_writes_the_int8_model_it_reports_and_resumes_exactly() {
    data_dir();
    let float = temp("qat-float.onnx");
    let qat = temp("qat-int8.onnx");
    let (f, q) = (float.to_str().unwrap(), qat.to_str().unwrap());
    let ckpt = format!("{f}.ckpt");
    let distill = |extra: &[&str]| {
        let mut args = vec![
            "distill",
            "--teacher",
            "models/demo/fashion_mlp.onnx",
            "--student",
            "models/students/mlp-40.toml",
            "--recipe",
            "models/recipes/demo.toml",
            "--limit",
            "2000",
            "--val",
            "500",
            "--json",
        ];
        args.extend(extra);
        tinykd_cli(&args)
    };
    let ok = |o: &std::process::Output| {
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    };
    ok(&distill(&["--epochs", "2", "--out", f]));
    let qat_args = ["--init", &ckpt, "--qat", "--lr", "0.0003", "--out", q];
    let run = distill(&[&qat_args[..], &["--epochs", "2"]].concat());
    ok(&run);
    let r: serde_json::Value = serde_json::from_slice(&run.stdout).unwrap();
    let simulated = r["test"]["accuracy"].as_f64().unwrap();
    let int8 = r["int8_runtime_test"]["accuracy"].as_f64().unwrap();
    assert!(simulated > 0.6, "QAT accuracy {simulated}");
    // The fake-quantized network is what the int8 model computes.
    assert!((simulated - int8).abs() <= 0.002, "{simulated} vs {int8}");
    let bytes = std::fs::read(&qat).unwrap();
    assert!(
        bytes.windows(14).any(|w| w == b"QuantizeLinear"),
        "not a QDQ model"
    );
    // ONNX Runtime and tract score the written model as the runtime does.
    for engine in ["ort", "tract"] {
        let e = tinykd_cli(&["eval", q, "--engine", engine, "--json"]);
        ok(&e);
        let v: serde_json::Value = serde_json::from_slice(&e.stdout).unwrap();
        assert_eq!(v["correct"], r["int8_runtime_test"]["correct"], "{engine}");
    }
    // Killed after one epoch and resumed: the same int8 file.
    std::fs::remove_file(&qat).unwrap();
    ok(&distill(
        &[&qat_args[..], &["--epochs", "2", "--stop-after", "1"]].concat(),
    ));
    ok(&distill(&["--resume", "--qat", "--out", q]));
    assert!(
        std::fs::read(&qat).unwrap() == bytes,
        "resumed QAT run differs"
    );
    // QAT writes ONNX only.
    let bad = distill(&[
        "--init",
        &ckpt,
        "--qat",
        "--out",
        &format!("{q}.safetensors"),
    ]);
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(
        !bad.status.success() && err.contains("must end in .onnx"),
        "{err}"
    );
}

#[test]
fn cli_report_measures_every_compression_of_a_student_and_reuses_its_runs() {
    data_dir();
    let dir = temp("report");
    std::fs::create_dir_all(&dir).unwrap();
    let (doc, png) = (dir.join("results.md"), dir.join("size.png"));
    std::fs::write(
        &doc,
        "# Results\n\n## Compression\n\nold\n\n## Later\n\nkept\n",
    )
    .unwrap();
    let args = [
        "report",
        "--teacher",
        "models/demo/fashion_mlp.onnx",
        "--student",
        "models/students/mlp-40.toml",
        "--epochs",
        "1",
        "--qat-epochs",
        "1",
        "--prune-epochs",
        "1",
        "--seeds",
        "0",
        "--work-dir",
        dir.to_str().unwrap(),
        "--write-doc",
        doc.to_str().unwrap(),
        "--plot",
        png.to_str().unwrap(),
        "--json",
    ];
    let first = tinykd_cli(&args);
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    let r: serde_json::Value = serde_json::from_slice(&first.stdout).unwrap();
    let rows = r["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 14);
    let row = |label: &str| {
        rows.iter()
            .find(|r| r["label"].as_str().unwrap().starts_with(label))
            .unwrap_or_else(|| panic!("no row {label}"))["seeds"][0]
            .clone()
    };
    let kd = row("f32, KD");
    let ptq = row("KD + int8 PTQ (mse)");
    let qat = row("KD + int8 QAT");
    let ch50 = row("KD + 50 % channels pruned (");
    let mag75 = row("KD + 75 % weights pruned");
    let f16 = row("KD + f16");
    for m in rows.iter().map(|r| &r["seeds"][0]) {
        assert!(m["accuracy"].as_f64().unwrap() > 0.5, "{m}");
    }
    // int8 is about a quarter of the f32 file; ORT computes the same logits.
    assert!(ptq["file_bytes"].as_u64().unwrap() * 3 < kd["file_bytes"].as_u64().unwrap());
    for m in [&ptq, &qat] {
        assert!(m["ort_identical"].as_f64().unwrap() >= 0.999, "{m}");
    }
    assert!(kd["ort_identical"].is_null());
    // Channel pruning shrinks the model; magnitude pruning leaves zeros.
    assert!(ch50["parameters"].as_u64().unwrap() * 3 < kd["parameters"].as_u64().unwrap() * 2);
    let (total, nonzero) = (
        mag75["parameters"].as_u64().unwrap(),
        mag75["nonzero"].as_u64().unwrap(),
    );
    assert_eq!(total, kd["parameters"].as_u64().unwrap());
    assert!(nonzero * 3 < total, "{nonzero} of {total}");
    assert!(f16["file_bytes"].as_u64().unwrap() * 10 < kd["file_bytes"].as_u64().unwrap() * 6);
    // The section is replaced, the next one kept; the chart is a PNG.
    let text = std::fs::read_to_string(&doc).unwrap();
    assert!(
        !text.contains("old") && text.contains("## Later\n\nkept"),
        "{text}"
    );
    assert!(text.contains("| KD + int8 QAT (1 epoch) |"), "{text}");
    assert!(std::fs::read(&png).unwrap().starts_with(b"\x89PNG"));
    // Run again: every step is reused, the figures are the same.
    let again = tinykd_cli(&args);
    assert!(again.status.success());
    let r2: serde_json::Value = serde_json::from_slice(&again.stdout).unwrap();
    assert_eq!(r2, r);
}

#[test]
fn cli_weighs_an_ensemble_by_validation_accuracy() {
    data_dir();
    let out = temp("accuracy-weighted.onnx");
    let cache = temp("accuracy-cache");
    let r = tinykd_cli(&[
        "distill",
        "--teacher",
        "models/teachers/cnn.onnx",
        "--teacher",
        "models/demo/fashion_mlp.onnx",
        "--teacher-weights",
        "accuracy",
        "--student",
        "models/students/mlp-40.toml",
        "--limit",
        "300",
        "--val",
        "300",
        "--epochs",
        "1",
        "--cache-dir",
        cache.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    let err = String::from_utf8_lossy(&r.stderr);
    assert!(r.status.success(), "{err}");
    // One line per teacher, the weights summing to 1 and favouring neither
    // wildly (both are ~90 % accurate).
    let weights: Vec<f64> = err
        .lines()
        .filter(|l| l.contains("validation accuracy"))
        .map(|l| l.rsplit("weight ").next().unwrap().trim().parse().unwrap())
        .collect();
    assert_eq!(weights.len(), 2, "{err}");
    assert!(
        (weights.iter().sum::<f64>() - 1.0).abs() < 2e-3,
        "{weights:?}"
    );
    assert!(
        weights.iter().all(|&w| (0.3..0.7).contains(&w)),
        "{weights:?}"
    );
    assert!(out.exists());
    // Without a validation split there is nothing to weigh by.
    let r = tinykd_cli(&[
        "distill",
        "--teacher",
        "models/teachers/cnn.onnx",
        "--teacher-weights",
        "accuracy",
        "--student",
        "models/students/mlp-40.toml",
        "--limit",
        "100",
        "--val",
        "0",
        "--out",
        temp("never-weighted.onnx").to_str().unwrap(),
    ]);
    assert!(!r.status.success());
    assert!(String::from_utf8_lossy(&r.stderr).contains("needs a validation split"));
}

#[test]
fn cli_chains_assistants_and_born_again_generations_and_resumes() {
    data_dir();
    let out = temp("chain/student.onnx");
    std::fs::create_dir_all(out.parent().unwrap()).unwrap();
    let args = |extra: &[&str]| {
        let mut a = vec![
            "distill",
            "--teacher",
            "models/teachers/cnn.onnx",
            "--student",
            "models/students/mlp-40.toml",
            "--via",
            "models/students/mlp-800.toml",
            "--generations",
            "2",
            "--limit",
            "300",
            "--val",
            "100",
            "--epochs",
            "1",
            "--out",
            out.to_str().unwrap(),
        ];
        a.extend(extra);
        tinykd_cli(&a)
    };
    let r = args(&[]);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let table = String::from_utf8_lossy(&r.stdout);
    let rows: Vec<&str> = table
        .lines()
        .filter(|l| l.starts_with("| assistant") || l.starts_with("| student"))
        .collect();
    assert_eq!(rows.len(), 3, "{table}");
    assert!(
        rows[0].contains("mlp-800.toml") && rows[0].contains("cnn.onnx"),
        "{table}"
    );
    assert!(
        rows[1].contains("student.ta1.onnx") && rows[2].contains("student.gen1.onnx"),
        "{table}"
    );
    let stages = ["student.ta1.onnx", "student.gen1.onnx", "student.onnx"];
    let dir = out.parent().unwrap();
    let written: Vec<Vec<u8>> = stages
        .iter()
        .map(|f| std::fs::read(dir.join(f)).unwrap())
        .collect();
    // --resume keeps finished stages: nothing is retrained, the files stay.
    let r = args(&["--resume", "--json"]);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let text = String::from_utf8_lossy(&r.stdout);
    let chain: serde_json::Value =
        serde_json::from_str(&text).expect("one JSON document: nothing retrained");
    assert_eq!(chain["chain"].as_array().map(Vec::len), Some(3), "{text}");
    for (f, before) in stages.iter().zip(&written) {
        assert_eq!(
            &std::fs::read(dir.join(f)).unwrap(),
            before,
            "{f} was rewritten"
        );
    }
    // A chain's stages teach each other as ONNX: --out must be .onnx.
    let r = tinykd_cli(&[
        "distill",
        "--teacher",
        "models/teachers/cnn.onnx",
        "--student",
        "models/students/mlp-40.toml",
        "--generations",
        "2",
        "--out",
        temp("chain.safetensors").to_str().unwrap(),
    ]);
    assert!(!r.status.success());
    assert!(String::from_utf8_lossy(&r.stderr).contains("must end in .onnx"));
}

#[test]
fn cli_cross_resolution_student_sees_14x14_and_deploys_at_28x28() {
    data_dir();
    let out = temp("cross-resolution.onnx");
    let o = out.to_str().unwrap();
    let r = tinykd_cli(&[
        "distill",
        "--teacher",
        "models/teachers/cnn.onnx",
        "--student",
        "models/students/ds-cnn-14.toml",
        "--limit",
        "500",
        "--val",
        "100",
        "--epochs",
        "1",
        "--json",
        "--out",
        o,
    ]);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    // The model takes the 28×28 image and averages it down first.
    let bytes = std::fs::read(&out).unwrap();
    let model = tinykd_runtime::Model::parse(&bytes).unwrap();
    assert_eq!(model.nodes()[0].op_type, "AveragePool");
    let (dims, rank) = model.inputs().next().unwrap().shape.dims();
    assert_eq!(dims[..rank], [1, 1, 28, 28]);
    // A quarter of the full-resolution DS-CNN's MACs, or less.
    let full = std::fs::read(root().join("models/students/ds-cnn-kd.onnx")).unwrap();
    let full = tinykd_runtime::Model::parse(&full).unwrap();
    assert!(
        4 * model.macs() <= full.macs(),
        "{} vs {}",
        model.macs(),
        full.macs()
    );
    // The runtime scores the file as the training run reported.
    let trained: serde_json::Value = serde_json::from_slice(&r.stdout).unwrap();
    let eval = tinykd_cli(&["eval", o, "--json"]);
    let e: serde_json::Value = serde_json::from_slice(&eval.stdout).unwrap();
    let reported = trained["test"]["accuracy"]
        .as_f64()
        .expect("test accuracy in the JSON");
    assert!(
        (e["accuracy"].as_f64().unwrap() - reported).abs() < 1e-9,
        "{e} vs {trained}"
    );
    // The recipe's `downsample = 2` on the 28×28 DS-CNN spec is the same
    // student: the same seed trains the same weights.
    let viewed = temp("cross-resolution-recipe.onnx");
    let r = tinykd_cli(&[
        "distill",
        "--teacher",
        "models/teachers/cnn.onnx",
        "--student",
        "models/students/ds-cnn.toml",
        "--recipe",
        "models/recipes/cross-resolution.toml",
        "--limit",
        "500",
        "--val",
        "100",
        "--epochs",
        "1",
        "--json",
        "--out",
        viewed.to_str().unwrap(),
    ]);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let other: serde_json::Value = serde_json::from_slice(&r.stdout).unwrap();
    assert_eq!(other["macs"], trained["macs"]);
    assert_eq!(other["test"]["accuracy"], trained["test"]["accuracy"]);
}

#[test]
fn cli_feature_recipes_train_resume_exactly_and_deploy() {
    data_dir();
    for recipe in ["fitnets", "attention", "rkd"] {
        let out = temp(&format!("features/{recipe}.onnx"));
        std::fs::create_dir_all(out.parent().unwrap()).unwrap();
        let o = out.to_str().unwrap();
        let recipe_path = format!("models/recipes/{recipe}.toml");
        let args = |extra: &[&str]| {
            let mut a = vec![
                "distill",
                "--teacher",
                "models/teachers/cnn.onnx",
                "--student",
                "models/students/ds-cnn.toml",
                "--recipe",
                &recipe_path,
                "--limit",
                "256",
                "--val",
                "100",
                "--epochs",
                "3",
                "--out",
                o,
            ];
            a.extend(extra);
            tinykd_cli(&a)
        };
        let r = args(&["--json"]);
        assert!(
            r.status.success(),
            "{recipe}: {}",
            String::from_utf8_lossy(&r.stderr)
        );
        let whole = std::fs::read(&out).unwrap();
        let trained: serde_json::Value = serde_json::from_slice(&r.stdout).unwrap();
        // The runtime scores the written file as the run reported.
        let eval = tinykd_cli(&["eval", o, "--json"]);
        let e: serde_json::Value = serde_json::from_slice(&eval.stdout).unwrap();
        let reported = trained["test"]["accuracy"].as_f64().unwrap();
        assert!(
            (e["accuracy"].as_f64().unwrap() - reported).abs() < 1e-9,
            "{recipe}"
        );
        if recipe != "fitnets" {
            continue;
        }
        // Killed inside the hint stage, resumed: the same bytes (the
        // regressor's weights and moments live in the checkpoint).
        std::fs::remove_file(&out).unwrap();
        let r = args(&["--stop-after", "1"]);
        assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
        assert!(!out.exists());
        let r = args(&["--resume"]);
        assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
        assert_eq!(std::fs::read(&out).unwrap(), whole, "resumed run differs");
    }
    // A teacher value that is not in the graph is named, with the known ones.
    let bad = temp("features/bad.toml");
    std::fs::write(
        &bad,
        "[[features]]\nloss = \"hint\"\nteacher = \"conv9\"\nstudent = 7\n",
    )
    .unwrap();
    let r = tinykd_cli(&[
        "distill",
        "--teacher",
        "models/teachers/cnn.onnx",
        "--student",
        "models/students/ds-cnn.toml",
        "--recipe",
        bad.to_str().unwrap(),
        "--limit",
        "64",
        "--out",
        temp("features/bad.onnx").to_str().unwrap(),
    ]);
    let err = String::from_utf8_lossy(&r.stderr);
    assert!(
        !r.status.success() && err.contains("conv9") && err.contains("l5.maxpool"),
        "{err}"
    );
}

#[test]
fn cli_mutual_learning_trains_a_cohort_without_a_teacher_and_resumes() {
    data_dir();
    let out = temp("mutual/student.onnx");
    std::fs::create_dir_all(out.parent().unwrap()).unwrap();
    let o = out.to_str().unwrap();
    let args = |extra: &[&str]| {
        let mut a = vec![
            "distill",
            "--student",
            "models/students/mlp-40.toml",
            "--peer",
            "models/students/mlp-40.toml",
            "--recipe",
            "models/recipes/mutual.toml",
            "--limit",
            "600",
            "--val",
            "100",
            "--epochs",
            "2",
            "--out",
            o,
        ];
        a.extend(extra);
        tinykd_cli(&a)
    };
    let r = args(&["--json"]);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let doc: serde_json::Value = serde_json::from_slice(&r.stdout).unwrap();
    let members = doc["mutual"].as_array().unwrap();
    // The recipe's peer plus the --peer flag's replace each other: one peer.
    assert_eq!(members.len(), 2, "{doc}");
    let peer = out.with_extension("peer1.onnx");
    assert!(peer.exists());
    for m in members {
        // Well above chance (0.1) after 10 steps of each.
        assert!(m["test_accuracy"].as_f64().unwrap() > 0.25, "{m}");
    }
    let (student, peer_bytes) = (std::fs::read(&out).unwrap(), std::fs::read(&peer).unwrap());
    assert_ne!(student, peer_bytes, "the peers start from other seeds");
    std::fs::remove_file(&out).unwrap();
    let r = args(&["--stop-after", "1"]);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let r = args(&["--resume"]);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    assert_eq!(
        std::fs::read(&out).unwrap(),
        student,
        "resumed cohort differs"
    );
    // Mutual learning has no teacher.
    let r = args(&["--teacher", "models/teachers/cnn.onnx"]);
    assert!(!r.status.success());
    assert!(String::from_utf8_lossy(&r.stderr).contains("without a teacher"));
}

#[test]
fn cli_specialists_train_on_the_teachers_confusions_and_combine_with_the_generalist() {
    data_dir();
    let out = temp("specialists/generalist.onnx");
    std::fs::create_dir_all(out.parent().unwrap()).unwrap();
    let o = out.to_str().unwrap();
    let args = |extra: &[&str]| {
        let mut a = vec![
            "distill",
            "--teacher",
            "models/teachers/cnn.onnx",
            "--student",
            "models/students/mlp-40.toml",
            "--specialists",
            "2",
            "--limit",
            "1000",
            "--val",
            "500",
            "--epochs",
            "2",
            "--out",
            o,
        ];
        a.extend(extra);
        tinykd_cli(&a)
    };
    let r = args(&["--json"]);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let docs: Vec<serde_json::Value> = serde_json::Deserializer::from_slice(&r.stdout)
        .into_iter()
        .collect::<Result<_, _>>()
        .unwrap();
    let system = docs.last().unwrap();
    let specs = system["specialists"]["specialists"].as_array().unwrap();
    assert!(!specs.is_empty() && specs.len() <= 2, "{system}");
    // Fashion-MNIST's confusions: tops with tops, shoes with shoes.
    let tops = ["T-shirt/top", "Pullover", "Coat", "Shirt"];
    let first: Vec<&str> = specs[0]["names"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n.as_str().unwrap())
        .collect();
    assert!(first.iter().all(|n| tops.contains(n)), "{first:?}");
    for s in specs {
        let path = PathBuf::from(s["model"].as_str().unwrap());
        let bytes = std::fs::read(&path).unwrap();
        let model = tinykd_runtime::Model::parse(&bytes).unwrap();
        let classes = s["classes"].as_array().unwrap().len();
        // One output per special class and the dustbin.
        let (dims, rank) = model.outputs().next().unwrap().shape.dims();
        assert_eq!(dims[rank - 1], classes + 1, "{}", path.display());
    }
    let test = &system["test"];
    let g = test["generalist"].as_f64().unwrap();
    let eval = tinykd_cli(&["eval", o, "--json"]);
    let e: serde_json::Value = serde_json::from_slice(&eval.stdout).unwrap();
    assert!((e["accuracy"].as_f64().unwrap() - g).abs() < 1e-9);
    assert!(test["combined"].as_f64().unwrap() > 0.3, "{test}");
    assert!(test["confused_images"].as_u64().unwrap() >= 3000, "{test}");
    // --resume keeps every finished stage.
    let before = std::fs::read(out.with_extension("spec1.onnx")).unwrap();
    let r = args(&["--resume", "--json"]);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    assert_eq!(
        std::fs::read(out.with_extension("spec1.onnx")).unwrap(),
        before
    );
}

#[test]
fn cli_report_methods_scores_each_method_in_f32_and_int8_and_reuses_runs() {
    data_dir();
    let work = temp("report-methods");
    let doc = temp("report-methods/results.md");
    std::fs::create_dir_all(&work).unwrap();
    let args = [
        "report",
        "--methods",
        "scratch,hinton,mutual",
        "--student",
        "models/students/mlp-40.toml",
        "--seeds",
        "0,1",
        "--epochs",
        "2",
        "--limit",
        "600",
        "--work-dir",
        work.to_str().unwrap(),
        "--write-doc",
        doc.to_str().unwrap(),
        "--json",
    ];
    let r = tinykd_cli(&args);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let v: serde_json::Value = serde_json::from_slice(&r.stdout).unwrap();
    let methods = v["methods"].as_array().unwrap();
    assert_eq!(methods.len(), 3);
    for m in methods {
        let seeds = m["seeds"].as_array().unwrap();
        assert_eq!(seeds.len(), 2, "{m}");
        for s in seeds {
            let (f, q) = (s["f32"].as_f64().unwrap(), s["int8"].as_f64().unwrap());
            assert!(f > 0.2 && q > 0.2 && (f - q).abs() < 0.05, "{m}");
            assert!(s["seconds"].as_f64().unwrap() > 0.0);
        }
    }
    let text = std::fs::read_to_string(&doc).unwrap();
    assert!(
        text.contains("## Distillation methods") && text.contains("| mutual learning"),
        "{text}"
    );
    // Every run is reused: the second report trains nothing.
    let start = std::time::Instant::now();
    let again = tinykd_cli(&args);
    assert!(again.status.success());
    let v2: serde_json::Value = serde_json::from_slice(&again.stdout).unwrap();
    assert_eq!(v, v2);
    assert!(start.elapsed().as_secs() < 60);
}
