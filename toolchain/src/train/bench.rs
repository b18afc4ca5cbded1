//! `tinykd bench-train`: training throughput (images/s) with a forward /
//! backward / optimizer breakdown, side by side with TensorFlow-CPU when a
//! peer venv is installed (`make bench-peers`).

use super::model::{Kernels, ModelError, ModelSpec, Network};
use super::optim::{AdamW, AdamWConfig, OptimError};
use candle_core::{DType, Device, Tensor};
use candle_nn::{Optimizer, VarBuilder, VarMap};
use serde::Serialize;
use std::path::Path;
use std::time::Instant;

/// Median milliseconds of each phase of a training step.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct StepTimes {
    /// Forward pass and loss.
    pub forward_ms: f64,
    /// `loss.backward()`.
    pub backward_ms: f64,
    /// Optimizer update.
    pub optimizer_ms: f64,
    /// The whole step (median of whole steps, not the sum of medians).
    pub step_ms: f64,
}

/// One model's measurement.
#[derive(Clone, Debug, Serialize)]
pub struct TrainBench {
    /// Model name.
    pub model: String,
    /// Trainable parameters.
    pub parameters: usize,
    /// Forward MACs per image.
    pub macs_per_image: usize,
    /// Images per step.
    pub batch: usize,
    /// Timed steps (after warm-up).
    pub steps: usize,
    /// Layer kernels.
    pub kernels: Kernels,
    /// Optimizer implementation.
    pub optimizer: OptimizerImpl,
    /// Phase medians.
    pub times: StepTimes,
    /// Images per second (batch / median step).
    pub images_per_s: f64,
    /// Training GFLOP/s, counting forward + backward as 3 × 2 × MACs.
    pub gflops: f64,
}

/// Errors while benchmarking.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// The model could not be built.
    #[error(transparent)]
    Model(#[from] ModelError),
    /// candle failed.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    /// The fused optimizer failed.
    #[error(transparent)]
    Optim(#[from] OptimError),
}

/// Which AdamW runs the update.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum OptimizerImpl {
    /// candle_nn::AdamW (per-tensor op chains).
    Candle,
    /// tinykd's fused AdamW (one pass per parameter, in place).
    Fused,
}

/// Either optimizer behind one `step`.
enum AnyAdamW {
    Candle(candle_nn::AdamW),
    Fused(AdamW),
}

impl AnyAdamW {
    fn step(&mut self, grads: &candle_core::backprop::GradStore) -> Result<(), BenchError> {
        match self {
            AnyAdamW::Candle(o) => o.step(grads)?,
            AnyAdamW::Fused(o) => o.step(grads)?,
        }
        Ok(())
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Times `steps` training steps (after 2 warm-up steps) of `spec` on random
/// data: forward + cross-entropy + backward + AdamW.
pub fn bench_model(
    spec: &ModelSpec,
    batch: usize,
    steps: usize,
    kernels: Kernels,
    optimizer_impl: OptimizerImpl,
) -> Result<TrainBench, BenchError> {
    let device = Device::Cpu;
    let cost = spec.cost()?;
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &device);
    let net = Network::new(spec, vb, kernels)?;
    let mut optimizer = match optimizer_impl {
        OptimizerImpl::Candle => AnyAdamW::Candle(candle_nn::AdamW::new(
            varmap.all_vars(),
            candle_nn::ParamsAdamW::default(),
        )?),
        OptimizerImpl::Fused => {
            AnyAdamW::Fused(AdamW::new(varmap.all_vars(), AdamWConfig::default())?)
        }
    };
    let mut shape = vec![batch];
    shape.extend(&spec.input);
    let x = Tensor::randn(0f32, 1f32, shape, &device)?;
    let labels: Vec<u32> = (0..batch as u32).map(|i| (i * 7) % 10).collect();
    let y = Tensor::from_vec(labels, batch, &device)?;
    let mut phases = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for step in 0..steps + 2 {
        let t0 = Instant::now();
        let loss = candle_nn::loss::cross_entropy(&net.forward(&x)?, &y)?;
        let t1 = Instant::now();
        let grads = loss.backward()?;
        let t2 = Instant::now();
        optimizer.step(&grads)?;
        let t3 = Instant::now();
        if step >= 2 {
            let ms = |a: Instant, b: Instant| (b - a).as_secs_f64() * 1e3;
            phases.0.push(ms(t0, t1));
            phases.1.push(ms(t1, t2));
            phases.2.push(ms(t2, t3));
            phases.3.push(ms(t0, t3));
        }
    }
    let times = StepTimes {
        forward_ms: median(phases.0),
        backward_ms: median(phases.1),
        optimizer_ms: median(phases.2),
        step_ms: median(phases.3),
    };
    let images_per_s = batch as f64 / (times.step_ms / 1e3);
    let gflops = 6.0 * cost.macs as f64 * batch as f64 / (times.step_ms / 1e3) / 1e9;
    Ok(TrainBench {
        model: spec.name.clone(),
        parameters: cost.parameters,
        macs_per_image: cost.macs,
        batch,
        steps,
        kernels,
        optimizer: optimizer_impl,
        times,
        images_per_s,
        gflops,
    })
}

/// TensorFlow-CPU's images/s per model key, from
/// `scripts/bench_train_tf.py` run with the peer venv's Python on the same
/// specs (passed as JSON on stdin).
pub fn tensorflow_peer(
    python: &Path,
    script: &Path,
    specs: &[(String, ModelSpec)],
    steps: usize,
    batch: usize,
) -> Option<serde_json::Value> {
    use std::io::Write;
    let specs: serde_json::Map<String, serde_json::Value> = specs
        .iter()
        .map(|(k, s)| Some((k.clone(), serde_json::to_value(s).ok()?)))
        .collect::<Option<_>>()?;
    let mut child = std::process::Command::new(python)
        .arg(script)
        .args([
            "--steps",
            &steps.to_string(),
            "--batch",
            &batch.to_string(),
            "--specs",
            "-",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .ok()?;
    let input = serde_json::to_vec(&specs).ok()?;
    child.stdin.take()?.write_all(&input).ok()?;
    let out = child.wait_with_output().ok()?;
    if !out.status.success() {
        eprintln!(
            "bench-train: TensorFlow peer failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
        return None;
    }
    serde_json::from_slice(&out.stdout).ok()
}

/// Renders results (and TensorFlow's, if measured) as a Markdown table.
pub fn markdown(results: &[(String, TrainBench)], tf: Option<&serde_json::Value>) -> String {
    let mut md = String::from(
        "| model | params | kernels | optimizer | forward ms | backward ms | optimizer ms | step ms | images/s | GFLOP/s | TF images/s | ratio to TF |\n\
         | --- | ---: | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n",
    );
    for (key, r) in results {
        let tf_ips = tf.and_then(|t| t[key.as_str()]["images_per_s"].as_f64());
        let (tf_col, ratio) = match tf_ips {
            Some(v) => (format!("{v:.0}"), format!("{:.2}", r.images_per_s / v)),
            None => ("–".into(), "–".into()),
        };
        md.push_str(&format!(
            "| {} | {} | {:?} | {:?} | {:.1} | {:.1} | {:.1} | {:.1} | {:.0} | {:.1} | {tf_col} | {ratio} |\n",
            r.model,
            r.parameters,
            r.kernels,
            r.optimizer,
            r.times.forward_ms,
            r.times.backward_ms,
            r.times.optimizer_ms,
            r.times.step_ms,
            r.images_per_s,
            r.gflops
        ));
    }
    md
}
