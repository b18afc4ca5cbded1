//! `tinykd quantize`: post-training int8 quantization to QDQ ONNX, with the
//! float and int8 accuracy and size side by side.

use anyhow::{Context, Result};
use std::path::PathBuf;
use tinykd::data::{Dataset, Split};
use tinykd::engine::EngineKind;
use tinykd::quantize::calibrate::Method;
use tinykd::quantize::{quantize, QuantizeOptions};

/// Options of `tinykd quantize`.
#[derive(clap::Args)]
pub struct QuantizeArgs {
    /// The float ONNX classifier (opset ≥ 13).
    model: PathBuf,
    /// Calibration data: the training split of this data set.
    #[arg(long, default_value = "fashion-mnist", value_parser = ["fashion-mnist"])]
    calib: String,
    /// Calibration images (a seeded sample of the training split).
    #[arg(long, default_value_t = 1000)]
    calib_size: usize,
    /// Activation range method: minmax, percentile[:P], mse, entropy.
    #[arg(long, default_value = "minmax")]
    method: Method,
    /// Seed of the calibration sample.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Where to write the QDQ model (atomically).
    #[arg(long)]
    out: PathBuf,
    /// Evaluate on only the first N test images (default: all 10,000; 0 skips it).
    #[arg(long)]
    eval_limit: Option<usize>,
    /// Fashion-MNIST folder.
    #[arg(long, default_value = tinykd::data::DEFAULT_DIR)]
    data_dir: PathBuf,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

/// `tinykd quantize`.
pub fn run(a: &QuantizeArgs) -> Result<()> {
    let bytes =
        std::fs::read(&a.model).with_context(|| format!("reading {}", a.model.display()))?;
    let calib = Dataset::load(&a.data_dir, Split::Train)?;
    let opts = QuantizeOptions {
        method: a.method,
        calib_size: a.calib_size,
        seed: a.seed,
        ..QuantizeOptions::default()
    };
    let q = quantize(&a.model, &bytes, &calib, &opts)?;
    // The runtime must accept what was written, or nothing is written.
    tinykd_runtime::Model::parse(&q.bytes)
        .with_context(|| format!("{}: the quantized model does not load", a.out.display()))?;
    tinykd::tensor_file::write_atomically(&a.out, &q.bytes)?;

    let limit = a.eval_limit.unwrap_or(usize::MAX);
    let accuracy = if limit == 0 {
        None
    } else {
        let mut test = Dataset::load(&a.data_dir, Split::Test)?;
        if limit < test.len() {
            test = test.subset(&(0..limit).collect::<Vec<_>>())?;
        }
        let f32_report = tinykd::eval::evaluate(&a.model, &test, EngineKind::Tinykd, 100)?;
        let int8_report = tinykd::eval::evaluate(&a.out, &test, EngineKind::Tinykd, 100)?;
        Some((f32_report, int8_report))
    };
    if a.json {
        let mut s = serde_json::json!({
            "model": a.model,
            "out": a.out,
            "method": a.method,
            "calibration_images": q.calibration_images,
            "quantized": q.summary,
            "f32_bytes": bytes.len(),
            "int8_bytes": q.bytes.len(),
        });
        if let Some((f, i)) = &accuracy {
            s["f32_accuracy"] = f.accuracy.into();
            s["int8_accuracy"] = i.accuracy.into();
            s["test_images"] = i.total.into();
        }
        println!("{}", serde_json::to_string_pretty(&s)?);
        return Ok(());
    }
    println!(
        "{} → {}: {} activations, {} weight tensors ({} values) and {} biases quantized; \
         calibrated with {} on {} training images",
        a.model.display(),
        a.out.display(),
        q.summary.activations,
        q.summary.weights,
        q.summary.weight_elements,
        q.summary.biases,
        a.method,
        q.calibration_images
    );
    println!(
        "size: {} bytes f32 → {} bytes int8 ({:.2}×)",
        bytes.len(),
        q.bytes.len(),
        bytes.len() as f64 / q.bytes.len() as f64
    );
    if let Some((f, i)) = accuracy {
        println!(
            "accuracy on {} test images: f32 {:.2}%, int8 {:.2}% ({:+.2} points)",
            i.total,
            100.0 * f.accuracy,
            100.0 * i.accuracy,
            100.0 * (i.accuracy - f.accuracy)
        );
    }
    Ok(())
}
