//! Reading trained weights: the safetensors file
//! [`save_weights`](crate::train::checkpoint::save_weights) writes
//! (`param.l{i}.weight` ... tensors; metadata `format = tinykd-weights-1` and
//! `spec`, the [`ModelSpec`] as JSON).

use super::ExportError;
use crate::train::model::ModelSpec;
use candle_core::safetensors::Load;
use candle_core::{Device, Tensor};
use safetensors::SafeTensors;
use std::path::Path;

/// The `format` metadata value of a weights file.
pub const WEIGHTS_FORMAT: &str = "tinykd-weights-1";

/// The contents of a weights file: what [`export`](super::export) takes.
#[derive(Clone, Debug)]
pub struct TrainedWeights {
    /// The model architecture.
    pub spec: ModelSpec,
    /// The parameters by name (`l{i}.weight`, `l{i}.bias`), sorted by name,
    /// on the CPU, in the file's dtype.
    pub params: Vec<(String, Tensor)>,
}

/// Reads a weights file written by `save_weights`.
pub fn load_weights(path: &Path) -> Result<TrainedWeights, ExportError> {
    let fail = |reason: String| ExportError::Weights {
        path: path.into(),
        reason,
    };
    let bytes = std::fs::read(path).map_err(|e| fail(format!("cannot read: {e}")))?;
    let (_, header) = SafeTensors::read_metadata(&bytes)
        .map_err(|e| fail(format!("not a safetensors file ({e})")))?;
    let meta = header.metadata().clone().unwrap_or_default();
    if meta.get("format").map(String::as_str) != Some(WEIGHTS_FORMAT) {
        return Err(fail(format!(
            "no `format: {WEIGHTS_FORMAT}` in its metadata (not a tinykd weights file)"
        )));
    }
    let spec = meta
        .get("spec")
        .ok_or_else(|| fail("metadata has no `spec`".into()))?;
    let spec: ModelSpec =
        serde_json::from_str(spec).map_err(|e| fail(format!("metadata `spec`: {e}")))?;
    let st = SafeTensors::deserialize(&bytes).map_err(|e| fail(e.to_string()))?;
    let mut params = Vec::new();
    for (name, view) in st.tensors() {
        let key = name
            .strip_prefix("param.")
            .ok_or_else(|| fail(format!("unexpected tensor `{name}` (not `param.*`)")))?;
        let tensor = view
            .load(&Device::Cpu)
            .map_err(|e| fail(format!("tensor `{name}`: {e}")))?;
        params.push((key.to_string(), tensor));
    }
    params.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(TrainedWeights { spec, params })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::checkpoint::save_weights;
    use crate::train::model::Layer;
    use candle_core::DType;

    #[test]
    fn round_trips_save_weights_and_rejects_other_files() {
        let dir = std::env::temp_dir().join(format!("tinykd-weights-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let spec = ModelSpec {
            name: "lin".into(),
            input: vec![3],
            layers: vec![Layer::Dense { units: 2 }],
        };
        let w = Tensor::arange(0f32, 6.0, &Device::Cpu)
            .unwrap()
            .reshape((2, 3))
            .unwrap();
        let b = Tensor::zeros(2, DType::F32, &Device::Cpu).unwrap();
        let path = dir.join("w.safetensors");
        save_weights(
            &path,
            &spec,
            &[("l0.weight".into(), w), ("l0.bias".into(), b)],
        )
        .unwrap();
        let loaded = load_weights(&path).unwrap();
        assert_eq!(loaded.spec, spec);
        let names: Vec<_> = loaded.params.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["l0.bias", "l0.weight"]);
        assert_eq!(
            loaded.params[1].1.to_vec2::<f32>().unwrap(),
            [[0.0, 1.0, 2.0], [3.0, 4.0, 5.0]]
        );
        let other = dir.join("other.safetensors");
        std::fs::write(&other, b"garbage").unwrap();
        let err = load_weights(&other).unwrap_err().to_string();
        assert!(err.contains("other.safetensors"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
