//! The teacher side of distillation: any ONNX classifier run by tract or,
//! with the cargo feature `ort`, ONNX Runtime ([`Teacher`],
//! [`TeacherEngine`]), its logits over a transfer set computed once and
//! cached on disk keyed by teacher hash and data hash ([`cached_logits`],
//! shardable across machines), and several teachers combined into one
//! target distribution ([`Ensemble`]).
//!
//! The cache is a `safetensors` file (a `logits` tensor `[n, classes]` f32,
//! an `indices` tensor `[n]` i64 and string metadata), so other tools can
//! produce or consume it.

pub mod cache;
pub mod ensemble;
pub mod features;
pub mod logits;
#[cfg(feature = "ort")]
pub mod ort;
pub mod runner;
#[cfg(test)]
mod testutil;

pub use cache::{cached_logits, cached_shard, merge_shards, CacheKey, Shard};
pub use ensemble::{accuracy_weights, combine, normalize_weights, Ensemble, EnsembleMode};
pub use features::TeacherFeatures;
pub use logits::{data_sha256, logits_for, Logits, BATCH};
pub use runner::{parse_normalization, BatchDim, Teacher, TeacherEngine};

use crate::data::DataError;
use std::path::PathBuf;

/// Errors loading or running teachers and reading or writing their cache.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TeacherError {
    /// A file could not be read or written.
    #[error("{path}: {source}", path = path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A value named for feature distillation is not in the teacher's graph.
    #[error("{path}: no value named '{name}' in the graph (it has: {known})", path = path.display())]
    Value {
        /// The teacher file.
        path: PathBuf,
        /// The name asked for.
        name: String,
        /// The graph's value names.
        known: String,
    },
    /// tract could not load, optimise or run the teacher.
    #[error("{path}: tract: {reason}", path = path.display())]
    Tract {
        /// The teacher file.
        path: PathBuf,
        /// tract's message.
        reason: String,
    },
    /// ONNX Runtime could not be loaded, or could not load or run the teacher.
    #[error("{path}: onnxruntime: {reason}", path = path.display())]
    Ort {
        /// The teacher file.
        path: PathBuf,
        /// What failed (for a missing library: where it was looked for).
        reason: String,
    },
    /// The teacher's input is not one f32 image tensor with a batch dim.
    #[error("{path}: unsupported teacher input: {reason}", path = path.display())]
    Input {
        /// The teacher file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The teacher's output is not `[batch, classes]` f32.
    #[error("{path}: the teacher's output must be f32 [batch, classes]: {reason}", path = path.display())]
    Output {
        /// The teacher file.
        path: PathBuf,
        /// What was found.
        reason: String,
    },
    /// The images given do not have the element count the teacher's input needs.
    #[error("{path}: images {given} do not fit the teacher's input {expected}", path = path.display())]
    Shape {
        /// The teacher file.
        path: PathBuf,
        /// The shape given, e.g. `[300, 1, 28, 28]`.
        given: String,
        /// The teacher's input shape, e.g. `[N, 784]`.
        expected: String,
    },
    /// A metadata prop of the teacher is malformed.
    #[error("{path}: bad '{key}' metadata '{value}': {reason}", path = path.display())]
    Metadata {
        /// The teacher file.
        path: PathBuf,
        /// The metadata key.
        key: String,
        /// Its value.
        value: String,
        /// What is wrong.
        reason: String,
    },
    /// The teacher's class count differs from the dataset's.
    #[error("{path}: the teacher has {teacher} classes but the dataset has {dataset}", path = path.display())]
    ClassMismatch {
        /// The teacher file.
        path: PathBuf,
        /// The teacher's class count.
        teacher: usize,
        /// The dataset's class count.
        dataset: usize,
    },
    /// Two ensemble members disagree on the class count.
    #[error("ensemble teachers disagree on classes: {first} has {first_classes}, {other} has {other_classes}", first = first.display(), other = other.display())]
    EnsembleClasses {
        /// The first member's file.
        first: PathBuf,
        /// Its class count.
        first_classes: usize,
        /// The disagreeing member's file.
        other: PathBuf,
        /// Its class count.
        other_classes: usize,
    },
    /// Ensemble weights, temperature or inputs are invalid.
    #[error("invalid ensemble: {0}")]
    Ensemble(String),
    /// Logits do not match their indices or lack a requested index.
    #[error("invalid teacher logits: {0}")]
    Logits(String),
    /// The dataset or an index into it is invalid.
    #[error(transparent)]
    Data(#[from] DataError),
    /// A cache or shard file is unusable (merging) or cannot be written.
    #[error("{path}: {reason}", path = path.display())]
    Cache {
        /// The cache file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A shard specification is invalid.
    #[error("invalid shard: {0}")]
    Shard(String),
}

/// Lower-case hex of a digest.
pub(crate) fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}
