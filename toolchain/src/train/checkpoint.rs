//! Checkpoints: one safetensors file holding a run's parameters
//! (`param.<name>`), its optimizer state (`optim.<key>`), pruning masks
//! (`mask.<name>`, if any), and in the header
//! metadata the model spec, the training settings and the epoch history as
//! JSON. Files are written atomically (temp + rename), so a run killed
//! mid-write leaves the previous checkpoint intact.

use super::fit::{EpochStats, FitConfig};
use super::model::ModelSpec;
use crate::tensor_file::write_atomically;
use candle_core::{Device, Tensor};
use candle_nn::VarMap;
use safetensors::SafeTensors;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// Value of the `format` metadata key.
const FORMAT: &str = "tinykd-checkpoint-1";

/// Errors writing or reading a checkpoint; each names the file.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    /// The file could not be written.
    #[error("{path}: cannot write checkpoint: {reason}")]
    Write {
        /// The checkpoint file.
        path: PathBuf,
        /// What failed.
        reason: String,
    },
    /// The file could not be read.
    #[error("{path}: cannot read checkpoint: {source}")]
    Read {
        /// The checkpoint file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not a tinykd checkpoint, or does not fit the model.
    #[error("{path}: invalid checkpoint: {reason}")]
    Invalid {
        /// The checkpoint file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

/// The contents of a checkpoint.
#[derive(Clone, Debug)]
pub struct Checkpoint {
    /// The model architecture.
    pub spec: ModelSpec,
    /// The run's settings.
    pub config: FitConfig,
    /// Finished epochs.
    pub history: Vec<EpochStats>,
    /// Parameter values by name (filled by [`load`]; [`save`] takes them apart).
    pub params: Vec<(String, Vec<f32>)>,
    /// Optimizer state entries.
    pub optimizer: Vec<(String, Vec<f32>)>,
    /// Notes of the run (see `Trainer::set_tag`).
    pub tags: std::collections::BTreeMap<String, String>,
    /// Pruning masks by parameter name (see `Trainer::set_masks`), flat.
    pub masks: Vec<(String, Vec<f32>)>,
}

/// Writes `ck` with the parameters `params` to `path`, atomically.
pub fn save(
    path: &Path,
    ck: &Checkpoint,
    params: &[(String, Tensor)],
) -> Result<(), CheckpointError> {
    let err = |reason: String| CheckpointError::Write {
        path: path.into(),
        reason,
    };
    let json = |v: serde_json::Result<String>| v.map_err(|e| err(e.to_string()));
    let meta = HashMap::from([
        ("format".to_string(), FORMAT.to_string()),
        ("spec".to_string(), json(serde_json::to_string(&ck.spec))?),
        (
            "config".to_string(),
            json(serde_json::to_string(&ck.config))?,
        ),
        (
            "history".to_string(),
            json(serde_json::to_string(&ck.history))?,
        ),
        ("tags".to_string(), json(serde_json::to_string(&ck.tags))?),
    ]);
    let mut tensors: Vec<(String, Tensor)> = params
        .iter()
        .map(|(k, t)| (format!("param.{k}"), t.clone()))
        .collect();
    for (prefix, entries) in [("optim", &ck.optimizer), ("mask", &ck.masks)] {
        for (k, v) in entries {
            let t = Tensor::from_slice(v, v.len(), &Device::Cpu).map_err(|e| err(e.to_string()))?;
            tensors.push((format!("{prefix}.{k}"), t));
        }
    }
    let bytes = safetensors::serialize(tensors, Some(meta)).map_err(|e| err(e.to_string()))?;
    write_atomically(path, &bytes).map_err(|e| err(e.to_string()))
}

/// Writes trained weights alone (`param.<name>` tensors, the spec in the
/// metadata), atomically: what `tinykd train` hands on.
pub fn save_weights(
    path: &Path,
    spec: &ModelSpec,
    params: &[(String, Tensor)],
) -> Result<(), CheckpointError> {
    let err = |reason: String| CheckpointError::Write {
        path: path.into(),
        reason,
    };
    let spec = serde_json::to_string(spec).map_err(|e| err(e.to_string()))?;
    let meta = HashMap::from([
        ("format".to_string(), "tinykd-weights-1".to_string()),
        ("spec".to_string(), spec),
    ]);
    let tensors = params
        .iter()
        .map(|(k, t)| (format!("param.{k}"), t.clone()));
    let bytes = safetensors::serialize(tensors, Some(meta)).map_err(|e| err(e.to_string()))?;
    write_atomically(path, &bytes).map_err(|e| err(e.to_string()))
}

/// Reads a checkpoint written by [`save`].
pub fn load(path: &Path) -> Result<Checkpoint, CheckpointError> {
    let bytes = std::fs::read(path).map_err(|source| CheckpointError::Read {
        path: path.into(),
        source,
    })?;
    let invalid = |reason: String| CheckpointError::Invalid {
        path: path.into(),
        reason,
    };
    let (_, header) = SafeTensors::read_metadata(&bytes)
        .map_err(|e| invalid(format!("not a safetensors file ({e})")))?;
    let meta = header.metadata().clone().unwrap_or_default();
    if meta.get("format").map(String::as_str) != Some(FORMAT) {
        return Err(invalid(format!(
            "no `format: {FORMAT}` in its metadata (not a tinykd checkpoint)"
        )));
    }
    let field = |key: &str| {
        meta.get(key)
            .ok_or_else(|| invalid(format!("metadata has no `{key}`")))
    };
    let spec: ModelSpec = serde_json::from_str(field("spec")?)
        .map_err(|e| invalid(format!("metadata `spec`: {e}")))?;
    let config: FitConfig = serde_json::from_str(field("config")?)
        .map_err(|e| invalid(format!("metadata `config`: {e}")))?;
    let history: Vec<EpochStats> = serde_json::from_str(field("history")?)
        .map_err(|e| invalid(format!("metadata `history`: {e}")))?;
    let tags = match meta.get("tags") {
        Some(t) => serde_json::from_str(t).map_err(|e| invalid(format!("metadata `tags`: {e}")))?,
        None => Default::default(),
    };
    let st = SafeTensors::deserialize(&bytes).map_err(|e| invalid(e.to_string()))?;
    let (mut params, mut optimizer, mut masks) = (Vec::new(), Vec::new(), Vec::new());
    for (name, view) in st.tensors() {
        if view.dtype() != safetensors::Dtype::F32 {
            return Err(invalid(format!(
                "tensor {name} is {:?}, expected F32",
                view.dtype()
            )));
        }
        let values: Vec<f32> = view
            .data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        if let Some(k) = name.strip_prefix("param.") {
            params.push((k.to_string(), values));
        } else if let Some(k) = name.strip_prefix("optim.") {
            optimizer.push((k.to_string(), values));
        } else if let Some(k) = name.strip_prefix("mask.") {
            masks.push((k.to_string(), values));
        } else {
            return Err(invalid(format!("unexpected tensor {name}")));
        }
    }
    params.sort_by(|a, b| a.0.cmp(&b.0));
    masks.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(Checkpoint {
        spec,
        config,
        history,
        params,
        optimizer,
        tags,
        masks,
    })
}

/// Sets every var of `varmap` from `params`; all must be present with the
/// right size, and nothing changes if one is not.
pub fn restore_params(
    path: &Path,
    varmap: &VarMap,
    params: &[(String, Vec<f32>)],
) -> Result<(), CheckpointError> {
    let invalid = |reason: String| CheckpointError::Invalid {
        path: path.into(),
        reason,
    };
    let data = varmap.data().lock().expect("varmap lock");
    if params.len() != data.len() {
        return Err(invalid(format!(
            "{} parameters, the model has {}",
            params.len(),
            data.len()
        )));
    }
    let mut pending = Vec::with_capacity(params.len());
    for (name, values) in params {
        let var = data
            .get(name)
            .ok_or_else(|| invalid(format!("parameter {name} is not in the model")))?;
        if values.len() != var.elem_count() {
            return Err(invalid(format!(
                "parameter {name}: {} values, the model needs {:?}",
                values.len(),
                var.dims()
            )));
        }
        let t = Tensor::from_slice(values, var.dims(), &Device::Cpu)
            .map_err(|e| invalid(e.to_string()))?;
        pending.push((var, t));
    }
    for (var, t) in pending {
        var.set(&t).map_err(|e| invalid(e.to_string()))?;
    }
    Ok(())
}
