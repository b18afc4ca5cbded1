//! Unstructured magnitude pruning: per layer, the `round(sparsity × n)`
//! weights of smallest magnitude (ties broken by position) get a 0 in the
//! layer's mask, the others a 1. Biases are never masked.

use super::{param, parameter_shapes, PruneError};
use crate::train::model::ModelSpec;
use candle_core::Tensor;

/// 0/1 masks for the weight of every Dense, Conv and Depthwise layer of
/// `spec`, each zeroing exactly `round(sparsity × weights)` entries of its
/// layer; sorted by parameter name.
pub fn magnitude_masks(
    spec: &ModelSpec,
    params: &[(String, Tensor)],
    sparsity: f64,
) -> Result<Vec<(String, Tensor)>, PruneError> {
    if !(0.0..1.0).contains(&sparsity) {
        return Err(PruneError::Ratio(sparsity));
    }
    let mut masks = Vec::new();
    for (name, dims) in parameter_shapes(spec)? {
        if !name.ends_with(".weight") {
            continue;
        }
        let w = param(params, &name)?;
        if w.dims() != dims.as_slice() {
            return Err(PruneError::Parameter {
                name,
                reason: format!("shape {:?}, the spec needs {dims:?}", w.dims()),
            });
        }
        let values = w.flatten_all()?.to_vec1::<f32>()?;
        let k = (sparsity * values.len() as f64).round() as usize;
        let mut order: Vec<usize> = (0..values.len()).collect();
        order.sort_by(|&a, &b| values[a].abs().total_cmp(&values[b].abs()).then(a.cmp(&b)));
        let mut mask = vec![1f32; values.len()];
        for &i in &order[..k] {
            mask[i] = 0.0;
        }
        masks.push((name, Tensor::from_vec(mask, dims, w.device())?));
    }
    masks.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(masks)
}

/// `params` with each masked parameter multiplied by its mask.
pub fn apply_masks(
    params: &[(String, Tensor)],
    masks: &[(String, Tensor)],
) -> Result<Vec<(String, Tensor)>, PruneError> {
    params
        .iter()
        .map(|(k, t)| match masks.iter().find(|(m, _)| m == k) {
            Some((_, mask)) => Ok((k.clone(), t.mul(mask)?)),
            None => Ok((k.clone(), t.clone())),
        })
        .collect()
}
