//! Pruning a trained student, to be fine-tuned by distillation afterwards
//! (`tinykd prune`).
//!
//! - [`magnitude`]: unstructured pruning. Each Dense, Conv and Depthwise
//!   weight loses its smallest-magnitude entries, **per layer** (every
//!   layer reaches the target sparsity exactly, so no layer is emptied by a
//!   global threshold); biases are untouched. The result is a set of 0/1
//!   masks that `Trainer::set_masks` keeps applied during fine-tuning. The
//!   shapes, and so the dense ONNX file, do not change.
//! - [`channels`]: structured pruning. The output channels of each Conv and
//!   the units of each hidden Dense are ranked by the L1 norm of their
//!   weights and the weakest are removed, with the matching inputs of the
//!   layers that read them: a smaller [`ModelSpec`] with sliced weights.
//!   The final classifier keeps all its outputs.
//!
//! Parameters are named as [`Network`](crate::train::model::Network) names
//! them: `l{i}.weight`, `l{i}.bias`.

pub mod channels;
pub mod magnitude;

pub use channels::{prune_channels, PrunedModel};
pub use magnitude::{apply_masks, magnitude_masks};

use crate::train::model::{Layer, ModelError, ModelSpec};
use candle_core::Tensor;
use std::path::Path;

/// Errors of pruning.
#[derive(Debug, thiserror::Error)]
pub enum PruneError {
    /// A tensor op failed.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    /// The spec is invalid.
    #[error(transparent)]
    Model(#[from] ModelError),
    /// The ratio is not in [0, 1).
    #[error("pruning ratio {0} must be in [0, 1)")]
    Ratio(f64),
    /// A parameter the spec needs is missing or has the wrong shape.
    #[error("parameter {name}: {reason}")]
    Parameter {
        /// The parameter's name.
        name: String,
        /// What is wrong.
        reason: String,
    },
    /// The student file could not be read.
    #[error("{path}: {reason}")]
    Load {
        /// The file.
        path: std::path::PathBuf,
        /// What is wrong.
        reason: String,
    },
}

/// A trained student: its spec and parameters.
pub type Student = (ModelSpec, Vec<(String, Tensor)>);

/// The name and shape of every parameter of `spec`, in layer order.
pub fn parameter_shapes(spec: &ModelSpec) -> Result<Vec<(String, Vec<usize>)>, ModelError> {
    let mut shapes = Vec::new();
    spec.walk(|i, layer, input, _| {
        let (w, b) = match (layer, input) {
            (Layer::Dense { units }, [n]) => (vec![*units, *n], *units),
            (
                Layer::Conv {
                    filters, kernel, ..
                },
                [c, ..],
            ) => (vec![*filters, *c, *kernel, *kernel], *filters),
            (Layer::Depthwise { kernel, .. }, [c, ..]) => (vec![*c, 1, *kernel, *kernel], *c),
            _ => return,
        };
        shapes.push((format!("l{i}.weight"), w));
        shapes.push((format!("l{i}.bias"), vec![b]));
    })?;
    Ok(shapes)
}

/// Reads a student from a training checkpoint (`OUT.ckpt`, what `tinykd
/// train`/`distill` leave next to their output) or a weights file
/// (`.safetensors` from `tinykd train --out`).
pub fn load_student(path: &Path) -> Result<Student, PruneError> {
    let fail = |reason: String| PruneError::Load {
        path: path.into(),
        reason,
    };
    let ck = match crate::train::checkpoint::load(path) {
        Ok(ck) => ck,
        Err(ck_err) => {
            let w = crate::export::load_weights(path).map_err(|e| {
                fail(format!(
                    "neither a checkpoint ({ck_err}) nor a weights file ({e})"
                ))
            })?;
            return Ok((w.spec, w.params));
        }
    };
    let mut params = Vec::new();
    for (name, dims) in parameter_shapes(&ck.spec)? {
        let values = ck
            .params
            .iter()
            .find(|(k, _)| *k == name)
            .ok_or_else(|| fail(format!("no parameter {name}")))?;
        let t = Tensor::from_slice(&values.1, dims.as_slice(), &candle_core::Device::Cpu)
            .map_err(|e| fail(format!("parameter {name}: {e}")))?;
        params.push((name, t));
    }
    params.sort_by(|a, b| a.0.cmp(&b.0));
    Ok((ck.spec, params))
}

/// The parameter `name` of `params`.
fn param<'a>(params: &'a [(String, Tensor)], name: &str) -> Result<&'a Tensor, PruneError> {
    params
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, t)| t)
        .ok_or_else(|| PruneError::Parameter {
            name: name.into(),
            reason: "missing".into(),
        })
}

/// Parameters in `params` and how many of them are not zero.
pub fn count_nonzero(params: &[(String, Tensor)]) -> Result<(usize, usize), PruneError> {
    let (mut total, mut nonzero) = (0, 0);
    for (_, t) in params {
        let v = t.flatten_all()?.to_vec1::<f32>()?;
        total += v.len();
        nonzero += v.iter().filter(|x| **x != 0.0).count();
    }
    Ok((total, nonzero))
}

#[cfg(test)]
mod tests;
