//! A teacher: any ONNX classifier with one f32 image input and a
//! `[batch, classes]` output, run by tract.
//!
//! The input's batch dimension is either symbolic (`N`, as most exporters
//! write) or fixed. A symbolic batch is bound per distinct batch size, and
//! each bound-and-optimised plan is kept, so a transfer set run in batches of
//! [`BATCH`](super::BATCH) costs at most two optimisations (full batches and
//! the last one). A fixed batch `k` is run `k` images at a time, the last
//! chunk padded with zeros.

use super::{hex, TeacherError};
use crate::data::Normalization;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use tract_onnx::prelude::*;
use tract_onnx::tract_hir::infer::Factoid;

/// Largest batch handed to tract in one run; bigger calls are split.
const MAX_RUN: usize = 1024;

/// The teacher's batch dimension.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BatchDim {
    /// Symbolic: any batch size is bound at run time.
    Dynamic,
    /// Fixed in the file: images are run this many at a time.
    Fixed(usize),
}

/// An ONNX classifier used as a teacher.
pub struct Teacher {
    path: PathBuf,
    sha256: String,
    model: InferenceModel,
    input_name: String,
    batch: BatchDim,
    image_dims: Vec<usize>,
    classes: usize,
    labels: Option<Vec<String>>,
    normalization: Option<Normalization>,
    plans: Mutex<HashMap<usize, Arc<TypedSimplePlan>>>,
}

impl std::fmt::Debug for Teacher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Teacher")
            .field("path", &self.path)
            .field("sha256", &self.sha256)
            .field("input", &self.input_shape_string())
            .field("classes", &self.classes)
            .finish_non_exhaustive()
    }
}

impl Teacher {
    /// Loads an ONNX classifier: hashes the file, checks its single input
    /// and its `[batch, classes]` output, and reads the `labels` and
    /// `normalization` metadata props if present.
    pub fn load(path: &Path) -> Result<Teacher, TeacherError> {
        let bytes = std::fs::read(path).map_err(|source| TeacherError::Io {
            path: path.into(),
            source,
        })?;
        let sha256 = hex(&Sha256::digest(&bytes));
        let model = guarded(path, || tract_onnx::onnx().model_for_read(&mut &bytes[..]))?;
        let input_err = |reason: String| TeacherError::Input {
            path: path.into(),
            reason,
        };
        if model.inputs.len() != 1 {
            return Err(input_err(format!(
                "the model has {} inputs; a teacher takes one image tensor",
                model.inputs.len()
            )));
        }
        let input_name = model.node(model.inputs[0].node).name.clone();
        let fact = model.input_fact(0).map_err(|e| tract_err(path, e))?.clone();
        if let Some(dt) = fact.datum_type.concretize() {
            if dt != f32::datum_type() {
                return Err(input_err(format!(
                    "input '{input_name}' is {dt:?}; a teacher takes f32 images"
                )));
            }
        }
        if fact.shape.is_open() {
            return Err(input_err(format!("input '{input_name}' has no known rank")));
        }
        let dims: Vec<Option<usize>> = fact
            .shape
            .dims()
            .map(|d| d.concretize().and_then(|d| d.to_i64().ok()))
            .map(|d| d.and_then(|d| usize::try_from(d).ok()))
            .collect();
        if dims.len() < 2 {
            return Err(input_err(format!(
                "input '{input_name}' has rank {}; a teacher takes [batch, ...]",
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
                        "dimension {i} of input '{input_name}' is not a fixed size; \
                         only the batch dimension may be symbolic"
                    )))
                }
            }
        }
        let labels = metadata(&model, "labels").map(|l| {
            l.split(',')
                .map(|s| s.trim().to_string())
                .collect::<Vec<_>>()
        });
        let normalization = match metadata(&model, "normalization") {
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
        let mut teacher = Teacher {
            path: path.into(),
            sha256,
            model,
            input_name,
            batch,
            image_dims,
            classes: 0,
            labels,
            normalization,
            plans: Mutex::new(HashMap::new()),
        };
        // Bind the smallest batch now: this validates the whole graph and
        // tells the class count from the output fact.
        let probe = match batch {
            BatchDim::Dynamic => 1,
            BatchDim::Fixed(k) => k,
        };
        teacher.classes = teacher.output_classes(probe)?;
        if let Some(labels) = &teacher.labels {
            if labels.len() != teacher.classes {
                return Err(TeacherError::Metadata {
                    path: path.into(),
                    key: "labels".into(),
                    value: labels.join(","),
                    reason: format!(
                        "{} labels for an output of {} classes",
                        labels.len(),
                        teacher.classes
                    ),
                });
            }
        }
        Ok(teacher)
    }

    /// The teacher file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The file's SHA-256, lower-case hex.
    pub fn sha256(&self) -> &str {
        &self.sha256
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
        let plan = self.plan(batch)?;
        let shape: Vec<usize> = std::iter::once(batch)
            .chain(self.image_dims.iter().copied())
            .collect();
        let outputs = guarded(&self.path, || {
            let input = Tensor::from_shape(&shape, data)?;
            plan.run(tvec!(input.into_tvalue()))
        })?;
        let view = outputs[0]
            .to_plain_array_view::<f32>()
            .map_err(|e| self.output_error(format!("{e}")))?;
        if view.shape() != [batch, self.classes] {
            return Err(self.output_error(format!(
                "a batch of {batch} gave {:?}, expected [{batch}, {}]",
                view.shape(),
                self.classes
            )));
        }
        out.extend(view.iter().copied());
        Ok(())
    }

    /// The output's class count for a batch of `batch`, from the plan's facts.
    fn output_classes(&self, batch: usize) -> Result<usize, TeacherError> {
        let plan = self.plan(batch)?;
        let fact = plan
            .model()
            .output_fact(0)
            .map_err(|e| tract_err(&self.path, e))?;
        if fact.datum_type != f32::datum_type() {
            return Err(self.output_error(format!("it is {:?}", fact.datum_type)));
        }
        match fact.shape.as_concrete() {
            Some(&[b, c]) if b == batch && c > 0 => Ok(c),
            Some(shape) => Err(self.output_error(format!(
                "a batch of {batch} gives {shape:?}, expected [{batch}, classes]"
            ))),
            None => Err(self.output_error(format!(
                "its shape {:?} is not fixed once the batch is bound to {batch}",
                fact.shape
            ))),
        }
    }

    fn output_error(&self, reason: String) -> TeacherError {
        TeacherError::Output {
            path: self.path.clone(),
            reason,
        }
    }

    /// The optimised plan for `batch` images, built once per batch size.
    fn plan(&self, batch: usize) -> Result<Arc<TypedSimplePlan>, TeacherError> {
        let mut plans = self.plans.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(plan) = plans.get(&batch) {
            return Ok(plan.clone());
        }
        let shape: Vec<usize> = std::iter::once(batch)
            .chain(self.image_dims.iter().copied())
            .collect();
        let plan = guarded(&self.path, || {
            self.model
                .clone()
                .with_input_fact(0, f32::fact(&shape).into())?
                .into_optimized()?
                .into_runnable()
        })?;
        plans.insert(batch, plan.clone());
        Ok(plan)
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
