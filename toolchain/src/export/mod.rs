//! Exporting trained models: a [`ModelSpec`] and its parameters become a
//! plain ONNX file (opset 13) that onnx.checker, ONNX Runtime, tract and
//! tinykd-runtime accept.
//!
//! The pipeline has three stages, one file each:
//! - [`weights`] reads what `tinykd train` writes (a safetensors file with the
//!   spec in its metadata);
//! - `lower` checks the parameters against the spec (every name and shape)
//!   and turns the layers into ONNX-shaped steps with their tensors; this is
//!   also where BatchNorm folding goes once specs have BatchNorm layers;
//! - [`onnx`] builds the `ModelProto` (tract's prost types), encodes it with
//!   prost; `align` pads it so that every initializer's `raw_data` starts
//!   at a 16-byte-aligned file offset, the padding being doc strings that
//!   every reader skips ([`check_alignment`] verifies a file).
//!
//! ```no_run
//! # fn main() -> Result<(), tinykd::export::ExportError> {
//! use tinykd::export::{load_weights, write, ExportMeta};
//! let trained = load_weights("run/weights.safetensors".as_ref())?;
//! let meta = ExportMeta {
//!     labels: (0..10).map(|i| i.to_string()).collect(),
//!     normalization: ExportMeta::normalization(0.2860, 0.3530),
//!     ..ExportMeta::default()
//! };
//! write("student.onnx".as_ref(), &trained.spec, &trained.params, &meta)?;
//! # Ok(()) }
//! ```
//!
//! [`ModelSpec`]: crate::train::model::ModelSpec

mod align;
mod lower;
pub mod onnx;
pub mod weights;

pub(crate) use align::encode_aligned;
pub use onnx::{check_alignment, export, write, ALIGN};
pub use weights::{load_weights, TrainedWeights};

use std::path::PathBuf;

/// What the exported file says about the model besides its graph; written
/// as ONNX metadata props (`labels`, `normalization`, `teacher_sha256`,
/// `recipe`, `tinykd_spec`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExportMeta {
    /// Class labels in logit order (prop `labels`, comma-separated). Empty:
    /// no prop; otherwise exactly one per output class, none with a comma.
    pub labels: Vec<String>,
    /// Input normalisation the model expects, e.g. `mean=0.2860,std=0.3530`
    /// (prop `normalization`; see [`ExportMeta::normalization`]). Empty: no prop.
    pub normalization: String,
    /// SHA-256 of the teacher model file, 64 hex digits (prop `teacher_sha256`).
    pub teacher_sha256: Option<String>,
    /// The distillation recipe used, as text (prop `recipe`).
    pub recipe: Option<String>,
    /// `producer_name` of the model (default `tinykd`).
    pub producer: String,
    /// The model's `doc_string`.
    pub doc: String,
}

impl Default for ExportMeta {
    fn default() -> Self {
        ExportMeta {
            labels: Vec::new(),
            normalization: String::new(),
            teacher_sha256: None,
            recipe: None,
            producer: "tinykd".into(),
            doc: String::new(),
        }
    }
}

impl ExportMeta {
    /// The `normalization` string for one mean and standard deviation over
    /// all channels, in the demo model's form: `mean=0.2860,std=0.3530`.
    pub fn normalization(mean: f32, std: f32) -> String {
        format!("mean={mean:.4},std={std:.4}")
    }
}

/// Errors exporting a model; each names the layer, tensor, field or file.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// The spec itself is inconsistent.
    #[error(transparent)]
    Spec(#[from] crate::train::model::ModelError),
    /// The spec is valid but cannot be exported as a classifier.
    #[error("model '{model}', layer {layer}: {reason}")]
    Unsupported {
        /// The spec's name.
        model: String,
        /// The layer's position (the layer count for the model's output).
        layer: usize,
        /// What is wrong.
        reason: String,
    },
    /// A parameter the spec needs is not among the given ones.
    #[error("layer {layer}: parameter `{name}` is missing")]
    MissingParam {
        /// The layer's position in the spec.
        layer: usize,
        /// The expected name, e.g. `l0.weight`.
        name: String,
    },
    /// A parameter has the wrong shape for its layer.
    #[error("layer {layer}: parameter `{name}` has shape {found:?}, the spec needs {expected:?}")]
    ParamShape {
        /// The layer's position in the spec.
        layer: usize,
        /// The parameter's name.
        name: String,
        /// The shape the spec implies.
        expected: Vec<usize>,
        /// The shape given.
        found: Vec<usize>,
    },
    /// A parameter's values are unusable (not finite, or not convertible to f32).
    #[error("parameter `{name}`: {reason}")]
    ParamValues {
        /// The parameter's name.
        name: String,
        /// What is wrong.
        reason: String,
    },
    /// A parameter no layer of the spec uses (or one given twice).
    #[error("parameter `{name}`: {reason}")]
    UnexpectedParam {
        /// The parameter's name.
        name: String,
        /// Why it does not fit.
        reason: String,
    },
    /// A metadata field is malformed.
    #[error("export metadata `{field}`: {reason}")]
    Meta {
        /// The field, e.g. `labels`.
        field: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// The bytes are not an ONNX model this module can read.
    #[error("not a valid ONNX model: {reason}")]
    Decode {
        /// What failed to decode.
        reason: String,
    },
    /// An initializer's `raw_data` does not start at an aligned offset.
    #[error(
        "initializer `{tensor}`: raw_data starts at offset {offset}, not a multiple of {align}"
    )]
    Misaligned {
        /// The initializer's name.
        tensor: String,
        /// Its `raw_data`'s offset in the file.
        offset: usize,
        /// The required alignment.
        align: usize,
    },
    /// A file could not be written.
    #[error("{path}: cannot write: {reason}")]
    Write {
        /// The file.
        path: PathBuf,
        /// What failed.
        reason: String,
    },
    /// A weights file could not be read or is not a tinykd weights file.
    #[error("{path}: {reason}")]
    Weights {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}
