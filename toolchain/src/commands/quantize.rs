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
    let ort = match &accuracy {
        Some((_, ours)) => ort_agreement(a, &q.bytes, ours)?,
        None => None,
    };
    if a.json {
        let mut s = serde_json::json!({
            "model": a.model,
            "out": a.out,
            "method": a.method,
            "calibration_images": q.calibration_images,
            "quantized": q.summary,
            "folded_batch_norms": q.folded_batch_norms,
            "f32_bytes": bytes.len(),
            "int8_bytes": q.bytes.len(),
        });
        if let Some((f, i)) = &accuracy {
            s["f32_accuracy"] = f.accuracy.into();
            s["int8_accuracy"] = i.accuracy.into();
            s["test_images"] = i.total.into();
        }
        if let Some((accuracy, agreement)) = &ort {
            s["ort_int8_accuracy"] = (*accuracy).into();
            s["ort_agreement"] = serde_json::to_value(agreement)?;
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
    if q.folded_batch_norms > 0 {
        println!(
            "{} BatchNormalization node(s) folded into the Conv before them",
            q.folded_batch_norms
        );
    }
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
    if let Some((accuracy, g)) = ort {
        println!(
            "ONNX Runtime on the same file: {:.2}%; {:.3}% of the {} int8 outputs identical, \
             at most {} step(s) apart",
            100.0 * accuracy,
            100.0 * g.identical,
            g.values,
            g.max_steps
        );
    }
    Ok(())
}

/// ONNX Runtime's accuracy on the quantized file and how its int8 outputs
/// compare with the runtime's (`None` without the `ort` feature).
#[cfg(feature = "ort")]
fn ort_agreement(
    a: &QuantizeArgs,
    bytes: &[u8],
    ours: &tinykd::eval::EvalReport,
) -> Result<Option<(f64, tinykd::quantize::Agreement)>> {
    let Some(scale) = tinykd::quantize::output_scale(bytes, 0) else {
        return Ok(None);
    };
    let mut test = Dataset::load(&a.data_dir, Split::Test)?;
    if ours.total < test.len() {
        test = test.subset(&(0..ours.total).collect::<Vec<_>>())?;
    }
    let theirs = tinykd::eval::evaluate(&a.out, &test, EngineKind::Ort, 100)?;
    let g = tinykd::quantize::agreement(&ours.logits, &theirs.logits, scale);
    Ok(Some((theirs.accuracy, g)))
}

#[cfg(not(feature = "ort"))]
fn ort_agreement(
    _: &QuantizeArgs,
    _: &[u8],
    _: &tinykd::eval::EvalReport,
) -> Result<Option<(f64, tinykd::quantize::Agreement)>> {
    Ok(None)
}
