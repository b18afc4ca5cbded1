//! Tests of quantization-aware training: the points follow the PTQ plan,
//! the fake-quantized network computes what the exported int8 model does in
//! the runtime, and the ranges survive a checkpoint.

use super::*;
use crate::data::Dataset;
use crate::tensor_file::{Elements, HostTensor};
use crate::train::fit::{CrossEntropy, FitConfig, Trainer};
use crate::train::model::{Kernels, Layer};
use std::sync::Arc;

/// conv → relu → maxpool → depthwise → relu → conv → relu → gap → dense.
fn small_cnn() -> ModelSpec {
    let conv = |filters, kernel: usize| Layer::Conv {
        filters,
        kernel,
        stride: 1,
        padding: kernel / 2,
    };
    ModelSpec {
        name: "qat-cnn".into(),
        input: vec![1, 8, 8],
        layers: vec![
            conv(6, 3),
            Layer::Relu,
            Layer::MaxPool { size: 2 },
            Layer::Depthwise {
                kernel: 3,
                stride: 1,
                padding: 1,
            },
            Layer::Relu,
            conv(8, 1),
            Layer::Relu,
            Layer::GlobalAvgPool,
            Layer::Dense { units: 3 },
        ],
    }
}

fn config(kernels: Kernels) -> FitConfig {
    FitConfig {
        epochs: 3,
        batch_size: 16,
        lr: 0.01,
        seed: 5,
        kernels,
        ..FitConfig::default()
    }
}

/// 96 labeled 8×8 images.
fn tiny_data() -> Arc<Dataset> {
    let n = 96usize;
    let mut s = 0x2545_f491u64;
    let mut images = Vec::with_capacity(n * 64);
    for i in 0..n * 64 {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        // A learnable signal: the class brightens one third of the image.
        let class = (i / 64) % 3;
        let bright = (i % 64) / 22 == class;
        images.push((s % 128) as u8 + if bright { 120 } else { 0 });
    }
    let labels = (0..n).map(|i| (i % 3) as u8).collect();
    let names = ["a", "b", "c"].map(String::from).to_vec();
    Arc::new(Dataset::new(images, labels, 8, 8, names).unwrap())
}

fn slots(points: &FakeQuant, layers: usize) -> Vec<Option<usize>> {
    (0..layers).map(|i| points.slot_after(i)).collect()
}

#[test]
fn points_follow_the_qdq_plan() {
    let cnn = ModelSpec::cnn_small();
    let params = Trainer::new(cnn.clone(), config(Kernels::Fast))
        .unwrap()
        .parameters();
    let p = FakeQuant::for_model(&cnn, &params).unwrap();
    assert_eq!(p.input_slot(), Some(0));
    // conv relu pool conv relu pool flatten dense relu dense: the ReLUs own
    // ranges, pools and flatten share them, the logits own one.
    let (a, b, c, d) = (Some(1), Some(2), Some(3), Some(4));
    assert_eq!(
        slots(&p, cnn.layers.len()),
        [None, a, a, None, b, b, b, None, c, d]
    );
    let ds = ModelSpec::ds_block();
    let params = Trainer::new(ds.clone(), config(Kernels::Fast))
        .unwrap()
        .parameters();
    let p = FakeQuant::for_model(&ds, &params).unwrap();
    // conv relu dw relu pw relu gap dense: the GAP averages, so it owns a range.
    let s = slots(&p, ds.layers.len());
    assert_eq!(s, [None, a, None, b, None, c, d, Some(5)]);
}

/// Logits of `x` `[n, 1, 8, 8]` by the runtime running `bytes`.
fn runtime_logits(bytes: &[u8], x: &[f32], n: usize) -> Vec<f32> {
    let input = HostTensor {
        name: "image".into(),
        shape: vec![n, 1, 8, 8],
        elements: Elements::F32(x.to_vec()),
    };
    let out = crate::engine::run_tinykd(std::path::Path::new("qat.onnx"), bytes, &[input]).unwrap();
    out[0].as_f32().unwrap().to_vec()
}

#[test]
fn the_fake_quantized_network_computes_what_the_int8_export_does() {
    let data = tiny_data();
    let idx: Vec<usize> = (0..data.len()).collect();
    for kernels in [Kernels::Fast, Kernels::Candle] {
        let mut t = Trainer::new(small_cnn(), config(kernels)).unwrap();
        t.enable_qat().unwrap();
        for _ in 0..3 {
            t.train_epoch(&data, &idx, &CrossEntropy, |_| {}).unwrap();
        }
        let acc = t.evaluate(&data, &idx).unwrap().accuracy;
        assert!(acc > 0.6, "{kernels:?}: QAT did not learn ({acc})");

        let points = t.network().fake_quant().unwrap();
        let (bytes, summary) = points
            .export(t.spec(), &t.parameters(), &ExportMeta::default())
            .unwrap();
        assert_eq!(summary.weights, 4);
        let x: Vec<f32> = (0..96 * 64)
            .map(|i| ((i * 7919) % 256) as f32 / 64.0 - 2.0)
            .collect();
        let xt = Tensor::from_slice(&x, (96, 1, 8, 8), &candle_core::Device::Cpu).unwrap();
        let ours = t.network().forward(&xt).unwrap();
        let ours = ours.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let int8 = runtime_logits(&bytes, &x, 96);
        let scale = super::super::output_scale(&bytes, 0).unwrap();
        let a = super::super::agreement(&ours, &int8, scale);
        // Differences come only from the int32 bias and the runtime's
        // fixed-point requantization rounding a value that lies on a tie.
        assert!(
            a.identical >= 0.99 && a.max_steps <= 1,
            "{kernels:?}: {a:?}"
        );
    }
}

#[test]
fn ranges_survive_a_checkpoint() {
    let data = tiny_data();
    let idx: Vec<usize> = (0..data.len()).collect();
    let mut t = Trainer::new(small_cnn(), config(Kernels::Fast)).unwrap();
    t.enable_qat().unwrap();
    t.train_epoch(&data, &idx, &CrossEntropy, |_| {}).unwrap();
    let path = std::env::temp_dir().join(format!("tinykd-qat-{}.ckpt", std::process::id()));
    t.save_checkpoint(&path).unwrap();
    let mut resumed = Trainer::resume(&path, None).unwrap();
    std::fs::remove_file(&path).ok();
    let saved = t.network().fake_quant().unwrap().saved();
    assert!(saved.ranges.iter().all(Option::is_some));
    assert_eq!(resumed.network().fake_quant().unwrap().saved(), saved);
    // Training goes on identically from the checkpoint.
    t.train_epoch(&data, &idx, &CrossEntropy, |_| {}).unwrap();
    resumed
        .train_epoch(&data, &idx, &CrossEntropy, |_| {})
        .unwrap();
    for ((n, a), (_, b)) in t.parameters().iter().zip(&resumed.parameters()) {
        let (a, b) = (
            a.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            b.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
        );
        assert_eq!(a, b, "{n}");
    }
    assert_eq!(
        resumed.network().fake_quant().unwrap().saved(),
        t.network().fake_quant().unwrap().saved()
    );
}

#[test]
fn an_unobserved_network_is_not_exported() {
    let mut t = Trainer::new(small_cnn(), config(Kernels::Fast)).unwrap();
    t.enable_qat().unwrap();
    let err = t
        .network()
        .fake_quant()
        .unwrap()
        .export(t.spec(), &t.parameters(), &ExportMeta::default())
        .unwrap_err()
        .to_string();
    assert!(err.contains("never observed"), "{err}");
}
