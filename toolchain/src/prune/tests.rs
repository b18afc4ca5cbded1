//! Tests of magnitude masks (exact sparsity, kept through training and
//! resume) and channel pruning (smaller, and exact when the removed
//! channels were dead).

use super::*;
use crate::data::Dataset;
use crate::export::ExportMeta;
use crate::train::fit::{CrossEntropy, FitConfig, Trainer};
use crate::train::model::{Kernels, Layer};
use candle_core::Device;
use std::sync::Arc;

fn conv(filters: usize, kernel: usize) -> Layer {
    Layer::Conv {
        filters,
        kernel,
        stride: 1,
        padding: kernel / 2,
    }
}

/// conv → relu → maxpool → depthwise → conv → gap → dense.
fn small_cnn() -> ModelSpec {
    ModelSpec {
        name: "prune-cnn".into(),
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
            conv(8, 1),
            Layer::GlobalAvgPool,
            Layer::Dense { units: 3 },
        ],
    }
}

/// conv → relu → maxpool → flatten → dense → relu → dense.
fn flat_cnn() -> ModelSpec {
    ModelSpec {
        name: "prune-flat".into(),
        input: vec![1, 8, 8],
        layers: vec![
            conv(4, 3),
            Layer::Relu,
            Layer::MaxPool { size: 2 },
            Layer::Flatten,
            Layer::Dense { units: 10 },
            Layer::Relu,
            Layer::Dense { units: 3 },
        ],
    }
}

fn mlp() -> ModelSpec {
    ModelSpec {
        name: "prune-mlp".into(),
        input: vec![64],
        layers: vec![
            Layer::Dense { units: 8 },
            Layer::Relu,
            Layer::Dense { units: 6 },
            Layer::Relu,
            Layer::Dense { units: 3 },
        ],
    }
}

fn config() -> FitConfig {
    FitConfig {
        epochs: 2,
        batch_size: 16,
        lr: 0.01,
        seed: 3,
        kernels: Kernels::Candle,
        ..FitConfig::default()
    }
}

/// 96 labeled 8×8 images.
fn tiny_data() -> Arc<Dataset> {
    let n = 96usize;
    let mut s = 0x9e37_79b9u64;
    let mut images = Vec::with_capacity(n * 64);
    for _ in 0..n * 64 {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        images.push((s % 256) as u8);
    }
    let labels = (0..n).map(|i| (i % 3) as u8).collect();
    let names = ["a", "b", "c"].map(String::from).to_vec();
    Arc::new(Dataset::new(images, labels, 8, 8, names).unwrap())
}

fn values(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1::<f32>().unwrap()
}

fn zeros_of(params: &[(String, Tensor)], name: &str) -> usize {
    values(param(params, name).unwrap())
        .iter()
        .filter(|v| **v == 0.0)
        .count()
}

#[test]
fn masks_reach_the_sparsity_exactly_per_layer() {
    for spec in [small_cnn(), mlp()] {
        let params = Trainer::new(spec.clone(), config()).unwrap().parameters();
        for sparsity in [0.0, 0.3, 0.5, 0.9] {
            let masks = magnitude_masks(&spec, &params, sparsity).unwrap();
            let pruned = apply_masks(&params, &masks).unwrap();
            let weights: Vec<_> = parameter_shapes(&spec)
                .unwrap()
                .into_iter()
                .filter(|(n, _)| n.ends_with(".weight"))
                .collect();
            assert_eq!(masks.len(), weights.len());
            for (name, dims) in weights {
                let n: usize = dims.iter().product();
                let want = (sparsity * n as f64).round() as usize;
                assert_eq!(zeros_of(&pruned, &name), want, "{name} at {sparsity}");
                // The survivors are the largest magnitudes.
                let w = values(param(&params, &name).unwrap());
                let m = values(&masks.iter().find(|(k, _)| *k == name).unwrap().1);
                let dropped = w.iter().zip(&m).filter(|(_, m)| **m == 0.0);
                let kept = w.iter().zip(&m).filter(|(_, m)| **m == 1.0);
                let max_dropped = dropped.map(|(v, _)| v.abs()).fold(0f32, f32::max);
                let min_kept = kept.map(|(v, _)| v.abs()).fold(f32::MAX, f32::min);
                assert!(max_dropped <= min_kept, "{name}");
            }
            for (name, t) in pruned.iter().filter(|(n, _)| n.ends_with(".bias")) {
                assert_eq!(values(t), values(param(&params, name).unwrap()));
            }
        }
    }
    let err = magnitude_masks(&mlp(), &[], 1.0).unwrap_err();
    assert!(err.to_string().contains("[0, 1)"), "{err}");
}

#[test]
fn masked_weights_stay_zero_through_training_and_resume() {
    let data = tiny_data();
    let idx: Vec<usize> = (0..data.len()).collect();
    let spec = small_cnn();
    let params = Trainer::new(spec.clone(), config()).unwrap().parameters();
    let masks = magnitude_masks(&spec, &params, 0.5).unwrap();
    let mut t = Trainer::from_parameters(spec.clone(), config(), &params).unwrap();
    t.set_masks(masks.clone()).unwrap();
    let check = |t: &Trainer| {
        let now = t.parameters();
        for (name, mask) in &masks {
            let w = values(param(&now, name).unwrap());
            let m = values(mask);
            assert!(
                w.iter().zip(&m).all(|(w, m)| *m == 1.0 || *w == 0.0),
                "{name}"
            );
            // The unmasked weights did train.
            let before = values(param(&params, name).unwrap());
            assert!(w.iter().zip(&before).any(|(a, b)| a != b), "{name}");
        }
    };
    t.train_epoch(&data, &idx, &CrossEntropy, |_| {}).unwrap();
    check(&t);
    let path = std::env::temp_dir().join(format!("tinykd-prune-{}.ckpt", std::process::id()));
    t.save_checkpoint(&path).unwrap();
    let mut resumed = Trainer::resume(&path, None).unwrap();
    std::fs::remove_file(&path).ok();
    assert_eq!(resumed.masks().len(), masks.len());
    resumed
        .train_epoch(&data, &idx, &CrossEntropy, |_| {})
        .unwrap();
    check(&resumed);
}

/// Per layer, the output rows made dead.
type Dead<'a> = Vec<(usize, &'a [usize])>;

/// `params` with the listed output rows (channels / units) of each layer's
/// weight and bias set to zero.
fn kill(params: &[(String, Tensor)], dead: &[(usize, &[usize])]) -> Vec<(String, Tensor)> {
    params
        .iter()
        .map(|(name, t)| {
            let layer: usize = name[1..name.find('.').unwrap()].parse().unwrap();
            let Some((_, rows)) = dead.iter().find(|(l, _)| *l == layer) else {
                return (name.clone(), t.clone());
            };
            let mut v = values(t);
            let per = v.len() / t.dim(0).unwrap();
            for &r in *rows {
                v[r * per..(r + 1) * per].fill(0.0);
            }
            (
                name.clone(),
                Tensor::from_vec(v, t.dims(), &Device::Cpu).unwrap(),
            )
        })
        .collect()
}

fn logits(spec: &ModelSpec, params: &[(String, Tensor)], x: &Tensor) -> Vec<f32> {
    let t = Trainer::from_parameters(spec.clone(), config(), params).unwrap();
    values(&t.network().forward(x).unwrap())
}

fn file_bytes(spec: &ModelSpec, params: &[(String, Tensor)]) -> usize {
    crate::export::export(spec, params, &ExportMeta::default())
        .unwrap()
        .len()
}

#[test]
fn channel_pruning_of_dead_channels_keeps_the_logits() {
    // Per spec: the layers whose odd channels are made dead (weights and
    // bias zero; a depthwise layer after a dead channel gets a zero bias
    // there too, so the channel stays exactly zero).
    let odd = |n: usize| (1..n).step_by(2).collect::<Vec<_>>();
    let (c6, c8, c4, u10, u8, u6) = (odd(6), odd(8), odd(4), odd(10), odd(8), odd(6));
    let cases: Vec<(ModelSpec, Dead, Vec<usize>)> = vec![
        (small_cnn(), vec![(0, &c6), (3, &c6), (4, &c8)], vec![0, 4]),
        (flat_cnn(), vec![(0, &c4), (4, &u10)], vec![0, 4]),
        (mlp(), vec![(0, &u8), (2, &u6)], vec![0, 2]),
    ];
    for (spec, dead, pruned_layers) in cases {
        let orig = Trainer::new(spec.clone(), config()).unwrap().parameters();
        let mut params = kill(&orig, &dead);
        // A depthwise layer needs only a zero bias on dead channels: keep
        // its weights, so that their slicing is checked too.
        if matches!(spec.layers[3], Layer::Depthwise { .. }) {
            let w = param(&orig, "l3.weight").unwrap().clone();
            params.iter_mut().find(|(n, _)| n == "l3.weight").unwrap().1 = w;
        }
        let pruned = prune_channels(&spec, &params, 0.5).unwrap();
        let layers: Vec<usize> = pruned.kept.iter().map(|(l, _)| *l).collect();
        assert_eq!(layers, pruned_layers, "{}", spec.name);
        for (l, keep) in &pruned.kept {
            let n = keep.len() * 2;
            assert_eq!(
                *keep,
                (0..n).step_by(2).collect::<Vec<_>>(),
                "{} layer {l}",
                spec.name
            );
        }
        let before = spec.cost().unwrap().parameters;
        let after = pruned.spec.cost().unwrap().parameters;
        assert!(after < before * 6 / 10, "{}: {before} → {after}", spec.name);
        let (count, _) = count_nonzero(&pruned.params).unwrap();
        assert_eq!(count, after, "{}", spec.name);
        assert!(
            file_bytes(&pruned.spec, &pruned.params) < file_bytes(&spec, &params),
            "{}",
            spec.name
        );
        let mut shape = vec![5];
        shape.extend(&spec.input);
        let x = Tensor::randn(0f32, 1f32, shape, &Device::Cpu).unwrap();
        let (a, b) = (
            logits(&spec, &params, &x),
            logits(&pruned.spec, &pruned.params, &x),
        );
        let scale = a.iter().fold(1f32, |m, v| m.max(v.abs()));
        for (a, b) in a.iter().zip(&b) {
            assert!((a - b).abs() <= 1e-5 * scale, "{}: {a} vs {b}", spec.name);
        }
    }
}

#[test]
fn the_classifier_is_never_pruned_and_ratio_zero_changes_nothing() {
    let spec = small_cnn();
    let params = Trainer::new(spec.clone(), config()).unwrap().parameters();
    let same = prune_channels(&spec, &params, 0.0).unwrap();
    assert_eq!(same.spec, spec);
    let most = prune_channels(&spec, &params, 0.99).unwrap();
    assert_eq!(most.spec.layers[6], Layer::Dense { units: 3 });
    assert_eq!(most.spec.layers[0], conv(1, 3));
    assert!(prune_channels(&spec, &params, 1.0).is_err());
}
