//! `tinykd quantize`: post-training int8 quantization to QDQ ONNX, or
//! float16 weights (`--weights f16`), with the float and quantized accuracy
//! and size side by side.

use anyhow::{Context, Result};
use std::path::PathBuf;
use tinykd::data::{Dataset, Split};
use tinykd::engine::EngineKind;
use tinykd::quantize::calibrate::Method;
use tinykd::quantize::{quantize, QuantizeOptions};

/// What `tinykd quantize` stores the weights as.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Weights {
    /// int8 QDQ: int8 weights and activations, calibrated.
    Int8,
    /// float16 weights, computed in float32 (no calibration).
    F16,
}

/// Options of `tinykd quantize`.
#[derive(clap::Args)]
pub struct QuantizeArgs {
    /// The float ONNX classifier (opset ≥ 13).
    model: PathBuf,
    /// int8: QDQ with calibrated activations; f16: float16 weights, each
    /// followed by a Cast to float32 (no calibration; the options below
    /// about calibration do not apply).
    #[arg(long, value_enum, default_value = "int8")]
    weights: Weights,
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
    /// Where to write the quantized model (atomically).
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
    if a.weights == Weights::F16 {
        return run_f16(a, &bytes);
    }
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
            if let Some(agreement) = agreement {
                s["ort_agreement"] = serde_json::to_value(agreement)?;
            }
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
    match ort {
        Some((accuracy, Some(g))) => println!(
            "ONNX Runtime on the same file: {:.2}%; {:.3}% of the {} int8 outputs identical, \
             at most {} step(s) apart",
            100.0 * accuracy,
            100.0 * g.identical,
            g.values,
            g.max_steps
        ),
        Some((accuracy, None)) => println!(
            "ONNX Runtime on the same file: {:.2}% (the output is not an int8 value, so \
             outputs are not compared step by step)",
            100.0 * accuracy
        ),
        None => {}
    }
    Ok(())
}

/// `tinykd quantize --weights f16`: converts, checks that the runtime loads
/// the result, writes it, and compares float32 and float16-weight accuracy.
fn run_f16(a: &QuantizeArgs, bytes: &[u8]) -> Result<()> {
    let (out, summary) = tinykd::quantize::f16::to_f16_weights(&a.model, bytes)?;
    // The runtime must accept what was written, or nothing is written.
    let model = tinykd_runtime::Model::parse(&out)
        .with_context(|| format!("{}: the float16 model does not load", a.out.display()))?;
    let staged = model.plan().converted_constant_bytes;
    tinykd::tensor_file::write_atomically(&a.out, &out)?;

    let limit = a.eval_limit.unwrap_or(usize::MAX);
    let accuracy = if limit == 0 {
        None
    } else {
        let mut test = Dataset::load(&a.data_dir, Split::Test)?;
        if limit < test.len() {
            test = test.subset(&(0..limit).collect::<Vec<_>>())?;
        }
        let f32_report = tinykd::eval::evaluate(&a.model, &test, EngineKind::Tinykd, 100)?;
        let f16_report = tinykd::eval::evaluate(&a.out, &test, EngineKind::Tinykd, 100)?;
        // ONNX Runtime on the same file, where it is available; the int8
        // step comparison does not apply.
        let ort = ort_accuracy(&a.out, &test);
        Some((f32_report, f16_report, ort))
    };
    let max_logit_diff = accuracy.as_ref().map(|(f, h, _)| {
        f.logits
            .iter()
            .zip(&h.logits)
            .map(|(x, y)| (x - y).abs())
            .fold(0f32, f32::max)
    });
    if a.json {
        let mut s = serde_json::json!({
            "model": a.model,
            "out": a.out,
            "weights": a.weights,
            "converted": summary,
            "f32_bytes": bytes.len(),
            "f16_bytes": out.len(),
            "arena_converted_bytes": staged,
        });
        if let Some((f, h, ort)) = &accuracy {
            s["f32_accuracy"] = f.accuracy.into();
            s["f16_accuracy"] = h.accuracy.into();
            s["test_images"] = h.total.into();
            s["max_logit_difference"] = max_logit_diff.unwrap_or(0.0).into();
            if let Some(ort) = ort {
                s["ort_f16_accuracy"] = (*ort).into();
            }
        }
        println!("{}", serde_json::to_string_pretty(&s)?);
        return Ok(());
    }
    println!(
        "{} → {}: {} weight tensors ({} values) stored as float16, {} small float32 \
         tensors kept; largest rounding error {:.2e}{}",
        a.model.display(),
        a.out.display(),
        summary.tensors,
        summary.elements,
        summary.kept_f32,
        summary.max_abs_error,
        match (summary.subnormal, summary.flushed_to_zero) {
            (0, 0) => String::new(),
            (s, z) => format!(" ({s} subnormal, {z} became zero)"),
        }
    );
    println!(
        "size: {} bytes f32 → {} bytes f16 ({:.2}×); the runtime widens the weights into \
         {staged} bytes of arena at load",
        bytes.len(),
        out.len(),
        bytes.len() as f64 / out.len() as f64
    );
    if let Some((f, h, ort)) = accuracy {
        println!(
            "accuracy on {} test images: f32 {:.2}%, f16 {:.2}% ({:+.2} points); \
             logits differ by at most {:.2e}",
            h.total,
            100.0 * f.accuracy,
            100.0 * h.accuracy,
            100.0 * (h.accuracy - f.accuracy),
            max_logit_diff.unwrap_or(0.0)
        );
        if let Some(ort) = ort {
            println!("ONNX Runtime on the same file: {:.2}%", 100.0 * ort);
        }
    }
    Ok(())
}

/// ONNX Runtime's accuracy on `path`, or `None` when it cannot run (no
/// `ort` feature, or no library): it is a cross-check, not the result.
#[cfg(feature = "ort")]
fn ort_accuracy(path: &std::path::Path, test: &Dataset) -> Option<f64> {
    match tinykd::eval::evaluate(path, test, EngineKind::Ort, 100) {
        Ok(r) => Some(r.accuracy),
        Err(e) => {
            eprintln!("note: ONNX Runtime did not run the float16 model: {e}");
            None
        }
    }
}

#[cfg(not(feature = "ort"))]
fn ort_accuracy(_: &std::path::Path, _: &Dataset) -> Option<f64> {
    None
}

/// ONNX Runtime's accuracy on the quantized file and how its int8 outputs
/// compare with the runtime's, when the output is a dequantized int8 value
/// (`None` without the `ort` feature).
#[cfg(feature = "ort")]
fn ort_agreement(
    a: &QuantizeArgs,
    bytes: &[u8],
    ours: &tinykd::eval::EvalReport,
) -> Result<Option<OrtComparison>> {
    let mut test = Dataset::load(&a.data_dir, Split::Test)?;
    if ours.total < test.len() {
        test = test.subset(&(0..ours.total).collect::<Vec<_>>())?;
    }
    let theirs = tinykd::eval::evaluate(&a.out, &test, EngineKind::Ort, 100)?;
    let g = tinykd::quantize::output_scale(bytes, 0)
        .map(|scale| tinykd::quantize::agreement(&ours.logits, &theirs.logits, scale));
    Ok(Some((theirs.accuracy, g)))
}

/// ONNX Runtime's accuracy, and its step-by-step agreement with the runtime.
type OrtComparison = (f64, Option<tinykd::quantize::Agreement>);

#[cfg(not(feature = "ort"))]
fn ort_agreement(
    _: &QuantizeArgs,
    _: &[u8],
    _: &tinykd::eval::EvalReport,
) -> Result<Option<OrtComparison>> {
    Ok(None)
}
