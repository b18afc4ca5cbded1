//! Structured channel pruning: the output channels of each Conv and the
//! units of each hidden Dense are ranked by the L1 norm of their weights
//! (after removing the inputs already pruned upstream), the top
//! `round((1 − ratio) × n)` (at least one) are kept in their original
//! order, and the layers that read them lose the matching inputs:
//!
//! - a Conv or Dense loses the input channels / features removed before it;
//! - a Depthwise layer has one filter per channel, so its channels follow
//!   its input's: it loses the same channels and is never ranked itself;
//! - Flatten of `[C, H, W]` maps a removed channel `c` to the features
//!   `c·H·W .. (c+1)·H·W`; ReLU, max pooling and global average pooling
//!   pass the channel set through.
//!
//! The final classifier (the last Dense or Conv) keeps all its outputs.

use super::{param, PruneError};
use crate::train::model::{Layer, ModelSpec};
use candle_core::{Device, Tensor};

/// A channel-pruned model.
#[derive(Clone, Debug)]
pub struct PrunedModel {
    /// The smaller spec (fewer filters / units; same layers otherwise).
    pub spec: ModelSpec,
    /// Its parameters, sliced from the original's, sorted by name.
    pub params: Vec<(String, Tensor)>,
    /// Per pruned layer: its index and the original channels / units kept.
    pub kept: Vec<(usize, Vec<usize>)>,
}

/// Removes `ratio` of the channels (units) of every Conv and hidden Dense
/// of `spec`, ranked by L1 norm; see the module doc.
pub fn prune_channels(
    spec: &ModelSpec,
    params: &[(String, Tensor)],
    ratio: f64,
) -> Result<PrunedModel, PruneError> {
    if !(0.0..1.0).contains(&ratio) {
        return Err(PruneError::Ratio(ratio));
    }
    let mut inputs = Vec::new();
    spec.walk(|_, _, input, _| inputs.push(input.to_vec()))?;
    let classifier = spec
        .layers
        .iter()
        .rposition(|l| matches!(l, Layer::Dense { .. } | Layer::Conv { .. }));
    let mut out = PrunedModel {
        spec: spec.clone(),
        params: Vec::new(),
        kept: Vec::new(),
    };
    // The surviving channels (or features) of the current activation, as
    // indices into the original model's; `None`: all of them.
    let mut alive: Option<Vec<usize>> = None;
    for (i, layer) in spec.layers.iter().enumerate() {
        let (wn, bn) = (format!("l{i}.weight"), format!("l{i}.bias"));
        match layer {
            Layer::Dense { .. } | Layer::Conv { .. } => {
                let mut w = param(params, &wn)?.clone();
                let mut b = param(params, &bn)?.clone();
                if let Some(a) = &alive {
                    w = w.index_select(&index(a)?, 1)?;
                }
                alive = None;
                if Some(i) != classifier {
                    let keep = strongest(&w, ratio)?;
                    let idx = index(&keep)?;
                    w = w.index_select(&idx, 0)?;
                    b = b.index_select(&idx, 0)?;
                    out.spec.layers[i] = match *layer {
                        Layer::Conv {
                            kernel,
                            stride,
                            padding,
                            ..
                        } => Layer::Conv {
                            filters: keep.len(),
                            kernel,
                            stride,
                            padding,
                        },
                        _ => Layer::Dense { units: keep.len() },
                    };
                    out.kept.push((i, keep.clone()));
                    alive = Some(keep);
                }
                out.params.push((wn, w));
                out.params.push((bn, b));
            }
            Layer::Depthwise { .. } => {
                let (mut w, mut b) = (param(params, &wn)?.clone(), param(params, &bn)?.clone());
                if let Some(a) = &alive {
                    let idx = index(a)?;
                    w = w.index_select(&idx, 0)?;
                    b = b.index_select(&idx, 0)?;
                }
                out.params.push((wn, w));
                out.params.push((bn, b));
            }
            Layer::Flatten => {
                if let (Some(a), [_, h, w]) = (&alive, inputs[i].as_slice()) {
                    let block = h * w;
                    alive = Some(a.iter().flat_map(|c| c * block..(c + 1) * block).collect());
                }
            }
            Layer::MaxPool { .. } | Layer::AvgPool { .. } | Layer::GlobalAvgPool | Layer::Relu => {}
        }
    }
    out.params.sort_by(|a, b| a.0.cmp(&b.0));
    out.spec.cost()?;
    Ok(out)
}

/// The rows of `w` (`[out, ...]`) with the largest L1 norms, at least one,
/// `round((1 − ratio) × out)` in all, in ascending order.
fn strongest(w: &Tensor, ratio: f64) -> Result<Vec<usize>, PruneError> {
    let l1 = w.abs()?.flatten_from(1)?.sum(1)?.to_vec1::<f32>()?;
    let n = ((1.0 - ratio) * l1.len() as f64).round().max(1.0) as usize;
    let mut order: Vec<usize> = (0..l1.len()).collect();
    order.sort_by(|&a, &b| l1[b].total_cmp(&l1[a]).then(a.cmp(&b)));
    let mut keep = order[..n.min(l1.len())].to_vec();
    keep.sort_unstable();
    Ok(keep)
}

fn index(idx: &[usize]) -> candle_core::Result<Tensor> {
    let v: Vec<u32> = idx.iter().map(|&i| i as u32).collect();
    Tensor::from_vec(v, idx.len(), &Device::Cpu)
}
