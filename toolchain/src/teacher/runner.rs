//! A teacher: any ONNX classifier with one f32 image input and a
//! `[batch, classes]` output, run by tract or, with the cargo feature `ort`,
//! by ONNX Runtime ([`TeacherEngine`]).
//!
//! The input's batch dimension is either symbolic (`N`, as most exporters
//! write) or fixed. A symbolic batch is bound per distinct batch size; tract
//! keeps each bound-and-optimised plan, so a transfer set run in batches of
//! [`BATCH`](super::BATCH) costs at most two optimisations (full batches and
//! the last one). A fixed batch `k` is run `k` images at a time, the last
//! chunk padded with zeros.
//!
//! An engine only reads what the file declares and runs batches; the checks
//! (input type and shape, metadata props, output shape, label count) and the
//! chunking are engine-independent and live here once, so both engines
//! accept and reject the same files.

use super::{hex, TeacherError};
use crate::data::Normalization;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use tract_onnx::prelude::*;
use tract_onnx::tract_hir::infer::Factoid;

/// Largest batch handed to an engine in one run; bigger calls are split.
const MAX_RUN: usize = 1024;

/// Which inference engine runs a teacher.
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    clap::ValueEnum,
    serde::Serialize,
    serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum TeacherEngine {
    /// tract-onnx, pure Rust (always built).
    #[default]
    Tract,
    /// ONNX Runtime, loaded at run time from the `onnxruntime` wheel.
    #[cfg(feature = "ort")]
    Ort,
}

/// The teacher's batch dimension.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BatchDim {
    /// Symbolic: any batch size is bound at run time.
    Dynamic,
    /// Fixed in the file: images are run this many at a time.
    Fixed(usize),
}

/// What an engine reads of a teacher's single input and metadata props,
/// before the engine-independent checks.
pub(super) struct Declared {
    /// The input's name.
    pub(super) input_name: String,
    /// The input's element type, when it is known and not f32.
    pub(super) non_f32: Option<String>,
    /// The input's dims (`None`: symbolic or unknown); `None` for no known rank.
    pub(super) dims: Option<Vec<Option<usize>>>,
    /// The `labels` metadata prop.
    pub(super) labels: Option<String>,
    /// The `normalization` metadata prop.
    pub(super) normalization: Option<String>,
}

/// The engine holding the loaded model.
enum Backend {
    Tract(TractBackend),
    #[cfg(feature = "ort")]
    Ort(super::ort::OrtBackend),
}

impl Backend {
    /// Runs one batch of the given input shape, appending the logits; returns
    /// the output's shape.
    fn run(
        &self,
        path: &Path,
        shape: &[usize],
        data: &[f32],
        out: &mut Vec<f32>,
    ) -> Result<Vec<usize>, TeacherError> {
        match self {
            Backend::Tract(b) => b.run(path, shape, data, out),
            #[cfg(feature = "ort")]
            Backend::Ort(b) => b.run(path, shape, data, out),
        }
    }

    /// The output's shape for an input of `shape`; errors unless it is f32.
    fn output_shape(&self, path: &Path, shape: &[usize]) -> Result<Vec<usize>, TeacherError> {
        match self {
            Backend::Tract(b) => b.output_shape(path, shape),
            #[cfg(feature = "ort")]
            Backend::Ort(b) => b.output_shape(path, shape),
        }
    }
}

/// An ONNX classifier used as a teacher.
pub struct Teacher {
    path: PathBuf,
    sha256: String,
    engine: TeacherEngine,
    backend: Backend,
    input_name: String,
    batch: BatchDim,
    image_dims: Vec<usize>,
    classes: usize,
    labels: Option<Vec<String>>,
    normalization: Option<Normalization>,
}

impl std::fmt::Debug for Teacher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Teacher")
            .field("path", &self.path)
            .field("sha256", &self.sha256)
            .field("engine", &self.engine)
            .field("input", &self.input_shape_string())
            .field("classes", &self.classes)
            .finish_non_exhaustive()
    }
}

impl Teacher {
    /// Loads an ONNX classifier with tract: hashes the file, checks its
    /// single input and its `[batch, classes]` output, and reads the
    /// `labels` and `normalization` metadata props if present.
    pub fn load(path: &Path) -> Result<Teacher, TeacherError> {
        Self::load_with(path, TeacherEngine::Tract)
    }

    /// Loads an ONNX classifier as [`Self::load`] does, run by `engine`
    /// (ONNX Runtime's library is found as `teacher::ort::library_path` says).
    pub fn load_with(path: &Path, engine: TeacherEngine) -> Result<Teacher, TeacherError> {
        match engine {
            TeacherEngine::Tract => Self::open(path, engine, |bytes| {
                TractBackend::open(path, bytes).map(|(b, d)| (Backend::Tract(b), d))
            }),
            #[cfg(feature = "ort")]
            TeacherEngine::Ort => {
                let library = super::ort::library_path().ok_or_else(|| TeacherError::Ort {
                    path: path.into(),
                    reason: super::ort::not_found_reason(None),
                })?;
                Self::load_ort(path, &library)
            }
        }
    }

    /// Loads an ONNX classifier run by ONNX Runtime from the shared library
    /// `library`. The first library loaded serves the whole process.
    #[cfg(feature = "ort")]
    pub fn load_ort(path: &Path, library: &Path) -> Result<Teacher, TeacherError> {
        Self::open(path, TeacherEngine::Ort, |bytes| {
            super::ort::OrtBackend::open(path, bytes, library).map(|(b, d)| (Backend::Ort(b), d))
        })
    }

    /// Reads and hashes the file, lets `open` load it into an engine, and
    /// runs the engine-independent checks on what it declares.
    fn open(
        path: &Path,
        engine: TeacherEngine,
        open: impl FnOnce(&[u8]) -> Result<(Backend, Declared), TeacherError>,
    ) -> Result<Teacher, TeacherError> {
        let bytes = std::fs::read(path).map_err(|source| TeacherError::Io {
            path: path.into(),
            source,
        })?;
        let sha256 = hex(&Sha256::digest(&bytes));
        let (backend, declared) = open(&bytes)?;
        let (batch, image_dims) = input_layout(path, &declared)?;
        let labels = declared.labels.map(|l| {
            l.split(',')
                .map(|s| s.trim().to_string())
                .collect::<Vec<_>>()
        });
        let normalization = match declared.normalization {
            Some(text) => {
                Some(
                    parse_normalization(&text).map_err(|reason| TeacherError::Metadata {
                        path: path.into(),
                        key: "normalization".into(),
                        value: text.clone(),
                        reason,
                    })?,
                )
            }
            None => None,
        };
        // Run the smallest batch's shapes now: this validates the whole graph
        // and tells the class count.
        let probe = match batch {
            BatchDim::Dynamic => 1,
            BatchDim::Fixed(k) => k,
        };
        let shape: Vec<usize> = std::iter::once(probe)
            .chain(image_dims.iter().copied())
            .collect();
        let classes = match backend.output_shape(path, &shape)?[..] {
            [b, c] if b == probe && c > 0 => c,
            ref other => {
                return Err(output_error(
                    path,
                    format!("a batch of {probe} gives {other:?}, expected [{probe}, classes]"),
                ))
            }
        };
        if let Some(labels) = &labels {
            if labels.len() != classes {
                return Err(TeacherError::Metadata {
                    path: path.into(),
                    key: "labels".into(),
                    value: labels.join(","),
                    reason: format!("{} labels for an output of {classes} classes", labels.len()),
                });
            }
        }
        Ok(Teacher {
            path: path.into(),
            sha256,
            engine,
            backend,
            input_name: declared.input_name,
            batch,
            image_dims,
            classes,
            labels,
            normalization,
        })
    }

    /// The teacher file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The file's SHA-256, lower-case hex.
    pub fn sha256(&self) -> &str {
        &self.sha256
    }

    /// The engine that runs the teacher.
    pub fn engine(&self) -> TeacherEngine {
        self.engine
    }

    /// Number of classes the teacher outputs.
    pub fn classes(&self) -> usize {
        self.classes
    }

    /// Class names from the `labels` metadata prop, if present.
    pub fn labels(&self) -> Option<&[String]> {
        self.labels.as_deref()
    }

    /// Input normalisation from the `normalization` metadata prop, if present.
    pub fn normalization(&self) -> Option<Normalization> {
        self.normalization
    }

    /// The input's name.
    pub fn input_name(&self) -> &str {
        &self.input_name
    }

    /// The input's batch dimension.
    pub fn batch(&self) -> BatchDim {
        self.batch
    }

    /// The input's dimensions after the batch one, e.g. `[1, 28, 28]`.
    pub fn image_dims(&self) -> &[usize] {
        &self.image_dims
    }

    /// Input values per image (the product of [`Self::image_dims`]).
    pub fn values_per_image(&self) -> usize {
        self.image_dims.iter().product()
    }

    /// The input shape as text, e.g. `[N, 784]` or `[1, 1, 28, 28]`.
    pub fn input_shape_string(&self) -> String {
        let batch = match self.batch {
            BatchDim::Dynamic => "N".to_string(),
            BatchDim::Fixed(k) => k.to_string(),
        };
        let dims: Vec<String> = std::iter::once(batch)
            .chain(self.image_dims.iter().map(|d| d.to_string()))
            .collect();
        format!("[{}]", dims.join(", "))
    }

    /// Errors unless the teacher has `classes` classes (the dataset's).
    pub fn check_classes(&self, classes: usize) -> Result<(), TeacherError> {
        if self.classes == classes {
            Ok(())
        } else {
            Err(TeacherError::ClassMismatch {
                path: self.path.clone(),
                teacher: self.classes,
                dataset: classes,
            })
        }
    }

    /// Logits `[n, classes]` for `n` normalised images laid out
    /// `[n, values_per_image]` in any rank (`[n, 1, 28, 28]` and `[n, 784]`
    /// are the same buffer); they are reshaped to the teacher's input rank.
    pub fn logits(&self, images: &[f32], n: usize) -> Result<Vec<f32>, TeacherError> {
        let per = self.values_per_image();
        if images.len() != n * per {
            let given = if n > 0 && images.len().is_multiple_of(n) {
                format!("[{n}, {}]", images.len() / n)
            } else {
                format!("of {} values for {n} images", images.len())
            };
            return Err(self.shape_error(given));
        }
        let mut out = Vec::with_capacity(n * self.classes);
        match self.batch {
            BatchDim::Dynamic => {
                for chunk in images.chunks(MAX_RUN * per) {
                    self.run(chunk, chunk.len() / per, &mut out)?;
                }
            }
            BatchDim::Fixed(k) => {
                let mut padded = Vec::new();
                for chunk in images.chunks(k * per) {
                    let rows = chunk.len() / per;
                    let batch = if rows == k {
                        chunk
                    } else {
                        padded.clear();
                        padded.extend_from_slice(chunk);
                        padded.resize(k * per, 0.0);
                        &padded
                    };
                    let before = out.len();
                    self.run(batch, k, &mut out)?;
                    out.truncate(before + rows * self.classes);
                }
            }
        }
        Ok(out)
    }

    /// The shape error for images described by `given`.
    pub(crate) fn shape_error(&self, given: String) -> TeacherError {
        TeacherError::Shape {
            path: self.path.clone(),
            given,
            expected: format!(
                "{} ({} values per image)",
                self.input_shape_string(),
                self.values_per_image()
            ),
        }
    }

    /// Runs one batch of exactly `batch` images, appending its logits.
    fn run(&self, data: &[f32], batch: usize, out: &mut Vec<f32>) -> Result<(), TeacherError> {
        let shape: Vec<usize> = std::iter::once(batch)
            .chain(self.image_dims.iter().copied())
            .collect();
        let before = out.len();
        let got = self.backend.run(&self.path, &shape, data, out)?;
        if got != [batch, self.classes] {
            out.truncate(before);
            return Err(output_error(
                &self.path,
                format!(
                    "a batch of {batch} gave {got:?}, expected [{batch}, {}]",
                    self.classes
                ),
            ));
        }
        Ok(())
    }
}

/// Errors unless the model has exactly one input (a teacher takes one image
/// tensor); called by each engine before it reads that input.
pub(super) fn check_input_count(path: &Path, inputs: usize) -> Result<(), TeacherError> {
    if inputs == 1 {
        Ok(())
    } else {
        Err(TeacherError::Input {
            path: path.into(),
            reason: format!("the model has {inputs} inputs; a teacher takes one image tensor"),
        })
    }
}

/// The batch dimension and image dims of a declared input, which must be
/// f32 with a known rank ≥ 2 and only the batch dimension symbolic.
fn input_layout(path: &Path, d: &Declared) -> Result<(BatchDim, Vec<usize>), TeacherError> {
    let input_err = |reason: String| TeacherError::Input {
        path: path.into(),
        reason,
    };
    let name = &d.input_name;
    if let Some(dt) = &d.non_f32 {
        return Err(input_err(format!(
            "input '{name}' is {dt}; a teacher takes f32 images"
        )));
    }
    let Some(dims) = &d.dims else {
        return Err(input_err(format!("input '{name}' has no known rank")));
    };
    if dims.len() < 2 {
        return Err(input_err(format!(
            "input '{name}' has rank {}; a teacher takes [batch, ...]",
            dims.len()
        )));
    }
    let batch = match dims[0] {
        None => BatchDim::Dynamic,
        Some(0) => return Err(input_err("the batch dimension is 0".into())),
        Some(k) => BatchDim::Fixed(k),
    };
    let mut image_dims = Vec::new();
    for (i, d) in dims.iter().enumerate().skip(1) {
        match d {
            Some(d) if *d > 0 => image_dims.push(*d),
            _ => {
                return Err(input_err(format!(
                    "dimension {i} of input '{name}' is not a fixed size; \
                     only the batch dimension may be symbolic"
                )))
            }
        }
    }
    Ok((batch, image_dims))
}

/// The error for an output that is not `[batch, classes]` f32.
pub(super) fn output_error(path: &Path, reason: String) -> TeacherError {
    TeacherError::Output {
        path: path.into(),
        reason,
    }
}

/// Parses the `normalization` metadata format, `mean=0.2860,std=0.3530`.
pub fn parse_normalization(text: &str) -> Result<Normalization, String> {
    let (mut mean, mut std) = (None, None);
    for part in text.split(',') {
        let (key, value) = part
            .split_once('=')
            .ok_or_else(|| format!("'{}' is not key=value", part.trim()))?;
        let value: f32 = value
            .trim()
            .parse()
            .map_err(|_| format!("'{}' is not a number", value.trim()))?;
        if !value.is_finite() {
            return Err(format!("{} is not finite", key.trim()));
        }
        match key.trim() {
            "mean" => mean = Some(value),
            "std" => std = Some(value),
            other => return Err(format!("unknown key '{other}' (expected mean and std)")),
        }
    }
    match (mean, std) {
        (Some(mean), Some(std)) if std > 0.0 => Ok(Normalization { mean, std }),
        (Some(_), Some(std)) => Err(format!("std {std} is not positive")),
        _ => Err("expected mean=<m>,std=<s>".into()),
    }
}

/// A teacher loaded into tract, with an optimised plan per batch size.
struct TractBackend {
    model: InferenceModel,
    plans: Mutex<HashMap<usize, Arc<TypedSimplePlan>>>,
}

impl TractBackend {
    /// Parses the model and reads its input and metadata props.
    fn open(path: &Path, bytes: &[u8]) -> Result<(TractBackend, Declared), TeacherError> {
        let model = guarded(path, || tract_onnx::onnx().model_for_read(&mut &bytes[..]))?;
        check_input_count(path, model.inputs.len())?;
        let input_name = model.node(model.inputs[0].node).name.clone();
        let fact = model.input_fact(0).map_err(|e| tract_err(path, e))?;
        let non_f32 = fact
            .datum_type
            .concretize()
            .filter(|dt| *dt != f32::datum_type())
            .map(|dt| format!("{dt:?}"));
        let dims = (!fact.shape.is_open()).then(|| {
            fact.shape
                .dims()
                .map(|d| d.concretize().and_then(|d| d.to_i64().ok()))
                .map(|d| d.and_then(|d| usize::try_from(d).ok()))
                .collect()
        });
        let declared = Declared {
            input_name,
            non_f32,
            dims,
            labels: metadata(&model, "labels"),
            normalization: metadata(&model, "normalization"),
        };
        let backend = TractBackend {
            model,
            plans: Mutex::new(HashMap::new()),
        };
        Ok((backend, declared))
    }

    fn run(
        &self,
        path: &Path,
        shape: &[usize],
        data: &[f32],
        out: &mut Vec<f32>,
    ) -> Result<Vec<usize>, TeacherError> {
        let plan = self.plan(path, shape)?;
        let outputs = guarded(path, || {
            let input = Tensor::from_shape(shape, data)?;
            plan.run(tvec!(input.into_tvalue()))
        })?;
        let view = outputs[0]
            .to_plain_array_view::<f32>()
            .map_err(|e| output_error(path, format!("{e}")))?;
        out.extend(view.iter().copied());
        Ok(view.shape().to_vec())
    }

    /// The output's shape from the plan's facts, once the batch is bound.
    fn output_shape(&self, path: &Path, shape: &[usize]) -> Result<Vec<usize>, TeacherError> {
        let plan = self.plan(path, shape)?;
        let fact = plan
            .model()
            .output_fact(0)
            .map_err(|e| tract_err(path, e))?;
        if fact.datum_type != f32::datum_type() {
            return Err(output_error(path, format!("it is {:?}", fact.datum_type)));
        }
        match fact.shape.as_concrete() {
            Some(dims) => Ok(dims.to_vec()),
            None => Err(output_error(
                path,
                format!(
                    "its shape {:?} is not fixed once the batch is bound to {}",
                    fact.shape, shape[0]
                ),
            )),
        }
    }

    /// The optimised plan for inputs of `shape`, built once per batch size.
    fn plan(&self, path: &Path, shape: &[usize]) -> Result<Arc<TypedSimplePlan>, TeacherError> {
        let mut plans = self.plans.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(plan) = plans.get(&shape[0]) {
            return Ok(plan.clone());
        }
        let plan = guarded(path, || {
            self.model
                .clone()
                .with_input_fact(0, f32::fact(shape).into())?
                .into_optimized()?
                .into_runnable()
        })?;
        plans.insert(shape[0], plan.clone());
        Ok(plan)
    }
}

/// A `metadata_props` value, as tract stores it among the model properties.
fn metadata(model: &InferenceModel, key: &str) -> Option<String> {
    let tensor = model
        .properties
        .get(&format!("onnx.metadata_props.{key}"))?;
    let view = tensor.to_plain_array_view::<String>().ok()?;
    view.iter().next().cloned()
}

fn tract_err(path: &Path, e: TractError) -> TeacherError {
    TeacherError::Tract {
        path: path.into(),
        reason: format!("{e:#}"),
    }
}

/// Runs a tract call, turning its errors and panics into [`TeacherError::Tract`].
fn guarded<T>(path: &Path, f: impl FnOnce() -> TractResult<T>) -> Result<T, TeacherError> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(result) => result.map_err(|e| tract_err(path, e)),
        Err(_) => Err(TeacherError::Tract {
            path: path.into(),
            reason: "tract panicked on this model".into(),
        }),
    }
}

#[cfg(test)]
#[path = "runner_tests.rs"]
mod tests;
