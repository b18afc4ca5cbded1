//! Evaluating an exported classifier on a labelled dataset with the
//! runtime the devices run (or tract, or ONNX Runtime): accuracy, per-class accuracy, the
//! confusion matrix, throughput and single-image latency.

use crate::data::{BatchConfig, Dataset, Normalization};
use crate::engine::{declared_inputs, EngineKind};
#[cfg(feature = "ort")]
use crate::teacher::TeacherEngine;
use crate::teacher::{parse_normalization, Teacher, TeacherError};
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::time::Instant;
use tinykd_runtime::{Bindings, Model, Session};

/// Errors of an evaluation; each names the model file.
#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    /// The file could not be read.
    #[error("{path}: {source}")]
    Io {
        /// The model file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The runtime rejected the model.
    #[error("{path}: {source}")]
    Runtime {
        /// The model file.
        path: PathBuf,
        /// The runtime's error.
        source: tinykd_runtime::Error,
    },
    /// tract or ONNX Runtime failed (via the teacher runner).
    #[error(transparent)]
    Tract(#[from] TeacherError),
    /// The model does not fit the data.
    #[error("{path}: {reason}")]
    Mismatch {
        /// The model file.
        path: PathBuf,
        /// What does not fit.
        reason: String,
    },
}

/// Results of one evaluation.
#[derive(Clone, Debug, Serialize)]
pub struct EvalReport {
    /// The model file.
    pub model: PathBuf,
    /// The engine that ran it.
    pub engine: EngineKind,
    /// Top-1 accuracy.
    pub accuracy: f64,
    /// Correct predictions.
    pub correct: usize,
    /// Images evaluated.
    pub total: usize,
    /// `(class name, accuracy)` per class.
    pub per_class: Vec<(String, f64)>,
    /// `confusion[true][predicted]` counts.
    pub confusion: Vec<Vec<usize>>,
    /// Images per second over the whole set, batched.
    pub images_per_second: f64,
    /// Mean time of one single-image inference, in microseconds.
    pub latency_us: f64,
    /// The logits, `[total, classes]` row-major (not serialised).
    #[serde(skip)]
    pub logits: Vec<f32>,
}

/// Runs a model over batches of normalised images, `[n, ...]` → logits.
trait Runner {
    fn run(&mut self, x: &[f32], n: usize) -> Result<Vec<f32>, EvalError>;
}

/// The tinykd runtime, with the model parsed once for each of the two
/// batch sizes used most (the batch and 1); others are parsed per run.
struct RuntimeRunner<'a> {
    path: &'a Path,
    bytes: &'a [u8],
    batch_symbol: Option<&'a str>,
    /// Parsed models by batch size.
    models: Vec<(usize, Model<'a>)>,
    arena: Vec<u8>,
}

impl<'a> RuntimeRunner<'a> {
    fn parse<'b>(&self, dims: &'b [(&'b str, usize)]) -> Result<Model<'b>, EvalError>
    where
        'a: 'b,
    {
        let bindings = Bindings {
            dims,
            constants: &[],
        };
        Model::parse_with(self.bytes, &bindings).map_err(|source| EvalError::Runtime {
            path: self.path.into(),
            source,
        })
    }

    /// Prepares the models for the batch sizes in `dims` (`(symbol, n)` each).
    fn prepare(&mut self, dims: &'a [[(&'a str, usize); 1]]) -> Result<(), EvalError> {
        for d in dims {
            let model = self.parse(d)?;
            self.models.push((d[0].1, model));
        }
        Ok(())
    }

    fn run_model(
        path: &Path,
        model: &Model,
        arena: &mut Vec<u8>,
        x: &[f32],
        n: usize,
    ) -> Result<Vec<f32>, EvalError> {
        let input_len = model.inputs().next().map_or(0, |v| v.len());
        if model.inputs().len() != 1 || input_len != x.len() {
            return Err(EvalError::Mismatch {
                path: path.into(),
                reason: format!(
                    "the model takes {input_len} value(s) per batch of {n}, the images give {}",
                    x.len()
                ),
            });
        }
        let need = model.arena_size() + tinykd_runtime::planner::ALIGN;
        if arena.len() < need {
            arena.resize(need, 0);
        }
        let mut out = vec![0f32; model.outputs().next().map_or(0, |v| v.len())];
        let rt = |source| EvalError::Runtime {
            path: path.into(),
            source,
        };
        let mut session = Session::new(model, arena).map_err(rt)?;
        session.run(&[x], &mut [&mut out]).map_err(rt)?;
        Ok(out)
    }
}

impl Runner for RuntimeRunner<'_> {
    fn run(&mut self, x: &[f32], n: usize) -> Result<Vec<f32>, EvalError> {
        if let Some((_, model)) = self.models.iter().find(|(b, _)| *b == n) {
            return Self::run_model(self.path, model, &mut self.arena, x, n);
        }
        let symbol = self.batch_symbol.unwrap_or("N");
        let dims = [(symbol, n)];
        let model = self.parse(&dims)?;
        Self::run_model(self.path, &model, &mut self.arena, x, n)
    }
}

impl Runner for Teacher {
    fn run(&mut self, x: &[f32], n: usize) -> Result<Vec<f32>, EvalError> {
        Ok(self.logits(x, n)?)
    }
}

/// The `normalization` metadata of an ONNX file, if it has one.
fn file_normalization(path: &Path, bytes: &[u8]) -> Result<Option<Normalization>, EvalError> {
    let Some(text) = crate::inspect::metadata(bytes, "normalization") else {
        return Ok(None);
    };
    parse_normalization(&text)
        .map(Some)
        .map_err(|reason| EvalError::Mismatch {
            path: path.into(),
            reason: format!("metadata normalization '{text}': {reason}"),
        })
}

/// Evaluates the ONNX classifier at `path` on every image of `data`,
/// `batch` images per run, normalised as the file's metadata says (else
/// with Fashion-MNIST's statistics).
pub fn evaluate(
    path: &Path,
    data: &Dataset,
    engine: EngineKind,
    batch: usize,
) -> Result<EvalReport, EvalError> {
    let bytes = std::fs::read(path).map_err(|source| EvalError::Io {
        path: path.into(),
        source,
    })?;
    let norm = file_normalization(path, &bytes)?.unwrap_or_default();
    let declared = declared_inputs(&bytes).map_err(|source| EvalError::Runtime {
        path: path.into(),
        source,
    })?;
    let symbol = declared
        .first()
        .and_then(|d| d.dims.first())
        .and_then(|(_, s)| s.clone());
    // A fixed batch dim decides the batch; a symbolic one is bound to `batch`.
    let fixed = declared
        .first()
        .and_then(|d| d.dims.first())
        .and_then(|d| d.0);
    let batch = match (&symbol, fixed) {
        (None, Some(b)) => b.max(1),
        _ => batch.max(1),
    };
    let sizes = symbol
        .as_deref()
        .map(|s| vec![[(s, batch)], [(s, 1)]])
        .unwrap_or_default();
    let mut runner: Box<dyn Runner + '_> = match engine {
        EngineKind::Tinykd => {
            let mut r = RuntimeRunner {
                path,
                bytes: &bytes,
                batch_symbol: symbol.as_deref(),
                models: Vec::new(),
                arena: Vec::new(),
            };
            r.prepare(&sizes)?;
            Box::new(r)
        }
        EngineKind::Tract => Box::new(Teacher::load(path)?),
        #[cfg(feature = "ort")]
        EngineKind::Ort => Box::new(Teacher::load_with(path, TeacherEngine::Ort)?),
    };
    let indices: Vec<usize> = (0..data.len()).collect();
    let cfg = BatchConfig {
        normalization: norm,
        ..BatchConfig::eval(batch)
    };
    let start = Instant::now();
    let mut logits = Vec::new();
    for b in crate::data::batches(data, &indices, 0, &cfg).map_err(TeacherError::from)? {
        logits.extend(runner.run(&b.x, b.len())?);
    }
    let seconds = start.elapsed().as_secs_f64();
    let classes = data.classes.max(1);
    if logits.len() != data.len() * classes {
        return Err(EvalError::Mismatch {
            path: path.into(),
            reason: format!(
                "{} logits for {} images of {classes} classes",
                logits.len(),
                data.len()
            ),
        });
    }
    let latency_us = single_image_latency(runner.as_mut(), data, norm)?;
    let mut confusion = vec![vec![0usize; classes]; classes];
    for (row, &y) in logits.chunks_exact(classes).zip(&data.labels) {
        confusion[y as usize][argmax(row)] += 1;
    }
    let correct: usize = (0..classes).map(|c| confusion[c][c]).sum();
    let per_class = confusion
        .iter()
        .enumerate()
        .map(|(c, row)| {
            let n: usize = row.iter().sum();
            let name = data.class_names.get(c).cloned().unwrap_or(c.to_string());
            (name, row[c] as f64 / n.max(1) as f64)
        })
        .collect();
    Ok(EvalReport {
        model: path.into(),
        engine,
        accuracy: correct as f64 / data.len().max(1) as f64,
        correct,
        total: data.len(),
        per_class,
        confusion,
        images_per_second: data.len() as f64 / seconds.max(1e-9),
        latency_us,
        logits,
    })
}

/// Mean single-image latency over up to 200 images (after a warm-up run).
fn single_image_latency(
    runner: &mut dyn Runner,
    data: &Dataset,
    norm: Normalization,
) -> Result<f64, EvalError> {
    let n = data.len().min(200);
    if n == 0 {
        return Ok(0.0);
    }
    let images: Vec<Vec<f32>> = (0..n)
        .map(|i| data.image(i).iter().map(|&p| norm.apply(p)).collect())
        .collect();
    runner.run(&images[0], 1)?;
    let start = Instant::now();
    for x in &images {
        runner.run(x, 1)?;
    }
    Ok(start.elapsed().as_secs_f64() * 1e6 / n as f64)
}

/// Index of the largest value (the first on ties).
fn argmax(row: &[f32]) -> usize {
    row.iter()
        .enumerate()
        .fold((0, f32::NEG_INFINITY), |(bi, bv), (i, &v)| {
            if v > bv {
                (i, v)
            } else {
                (bi, bv)
            }
        })
        .0
}
