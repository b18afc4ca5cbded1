//! A teacher's intermediate tensors by ONNX value name, for feature-based
//! distillation (FitNets hints, attention transfer, relational KD). The
//! named values become extra graph outputs of the teacher, run by tract
//! whatever engine gives the logits (any value of the graph can be named,
//! as other tools' exports name them).

use super::runner::{output_error, BatchDim, Teacher};
use super::TeacherError;
use std::collections::HashMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use tract_onnx::prelude::*;

/// A teacher whose outputs are the named intermediate values.
pub struct TeacherFeatures {
    path: PathBuf,
    names: Vec<String>,
    model: InferenceModel,
    batch: BatchDim,
    image_dims: Vec<usize>,
    /// Each value's dims after the batch one.
    dims: Vec<Vec<usize>>,
    plans: Mutex<HashMap<usize, Arc<TypedSimplePlan>>>,
}

impl TeacherFeatures {
    /// Exposes the values `names` of `teacher`'s graph; errors name a value
    /// that is not in the graph (listing those that are) or whose shape is
    /// not `[batch, ...]` once the batch is bound.
    pub fn open(teacher: &Teacher, names: &[String]) -> Result<Self, TeacherError> {
        let path = teacher.path();
        let bytes = std::fs::read(path).map_err(|source| TeacherError::Io {
            path: path.into(),
            source,
        })?;
        let mut model = guarded(path, || tract_onnx::onnx().model_for_read(&mut &bytes[..]))?;
        let mut outlets = Vec::with_capacity(names.len());
        for name in names {
            let outlet = model.find_outlet_label(name).ok_or_else(|| {
                let mut known: Vec<&str> =
                    model.outlet_labels.values().map(String::as_str).collect();
                known.sort_unstable();
                TeacherError::Value {
                    path: path.into(),
                    name: name.clone(),
                    known: known.join(", "),
                }
            })?;
            outlets.push(outlet);
        }
        model = guarded(path, || model.with_output_outlets(&outlets))?;
        let mut features = Self {
            path: path.into(),
            names: names.to_vec(),
            model,
            batch: teacher.batch(),
            image_dims: teacher.image_dims().to_vec(),
            dims: Vec::new(),
            plans: Mutex::new(HashMap::new()),
        };
        let probe = match features.batch {
            BatchDim::Dynamic => 1,
            BatchDim::Fixed(k) => k,
        };
        let plan = features.plan(probe)?;
        for (k, name) in names.iter().enumerate() {
            let fact = plan
                .model()
                .output_fact(k)
                .map_err(|e| output_error(path, format!("{name}: {e}")))?;
            match fact.shape.as_concrete() {
                Some([b, rest @ ..]) if *b == probe && fact.datum_type == f32::datum_type() => {
                    features.dims.push(rest.to_vec())
                }
                _ => {
                    return Err(output_error(
                        path,
                        format!(
                            "value {name} is {:?} {:?}, expected f32 [batch, ...]",
                            fact.datum_type, fact.shape
                        ),
                    ))
                }
            }
        }
        Ok(features)
    }

    /// The value names, in output order.
    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// Value `k`'s dims after the batch one, e.g. `[128, 7, 7]`.
    pub fn dims(&self, k: usize) -> &[usize] {
        &self.dims[k]
    }

    /// Each value for `n` images (normalised as the teacher expects), laid
    /// out `[n, dims...]`.
    pub fn run(&self, images: &[f32], n: usize) -> Result<Vec<Vec<f32>>, TeacherError> {
        let per: usize = self.image_dims.iter().product();
        if images.len() != n * per {
            return Err(output_error(
                &self.path,
                format!("{} values for {n} images of {per}", images.len()),
            ));
        }
        let mut out: Vec<Vec<f32>> = vec![Vec::new(); self.names.len()];
        let step = match self.batch {
            BatchDim::Dynamic => n.max(1),
            BatchDim::Fixed(k) => k,
        };
        let mut padded = Vec::new();
        for chunk in images.chunks(step * per) {
            let rows = chunk.len() / per;
            let batch = match self.batch {
                BatchDim::Fixed(k) if rows < k => {
                    padded.clear();
                    padded.extend_from_slice(chunk);
                    padded.resize(k * per, 0.0);
                    &padded[..]
                }
                _ => chunk,
            };
            let b = batch.len() / per;
            let plan = self.plan(b)?;
            let shape: Vec<usize> = std::iter::once(b).chain(self.image_dims.clone()).collect();
            let values = guarded(&self.path, || {
                plan.run(tvec!(Tensor::from_shape(&shape, batch)?.into_tvalue()))
            })?;
            for (k, v) in values.iter().enumerate() {
                let view = v
                    .to_plain_array_view::<f32>()
                    .map_err(|e| output_error(&self.path, format!("{}: {e}", self.names[k])))?;
                let keep = rows * self.dims[k].iter().product::<usize>();
                out[k].extend(view.iter().take(keep).copied());
            }
        }
        Ok(out)
    }

    /// The optimised plan for batches of `batch`, built once per size.
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

/// Runs a tract call, turning its errors and panics into [`TeacherError::Tract`].
fn guarded<T>(path: &Path, f: impl FnOnce() -> TractResult<T>) -> Result<T, TeacherError> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(result) => result.map_err(|e| TeacherError::Tract {
            path: path.into(),
            reason: format!("{e:#}"),
        }),
        Err(_) => Err(TeacherError::Tract {
            path: path.into(),
            reason: "tract panicked on this model".into(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn teacher() -> Teacher {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/teachers/cnn.onnx");
        Teacher::load(&path).expect("the shipped teacher loads")
    }

    #[test]
    fn named_values_come_out_with_their_shapes_and_logits_agree() {
        let t = teacher();
        let names = ["l5.maxpool", "l8.relu", "logits"].map(String::from);
        let f = TeacherFeatures::open(&t, &names).unwrap();
        assert_eq!(f.dims(0), &[128, 7, 7]);
        assert_eq!(f.dims(1), &[256]);
        let n = 3;
        let x: Vec<f32> = (0..n * 784)
            .map(|i| ((i * 37) % 101) as f32 / 50.0 - 1.0)
            .collect();
        let out = f.run(&x, n).unwrap();
        assert_eq!(out[0].len(), n * 128 * 49);
        assert!(out[1].iter().all(|v| *v >= 0.0), "after a ReLU");
        let logits = t.logits(&x, n).unwrap();
        for (a, b) in out[2].iter().zip(&logits) {
            assert!((a - b).abs() < 1e-4, "{a} vs {b}");
        }
    }

    #[test]
    fn an_unknown_value_is_named_with_the_known_ones() {
        let err = TeacherFeatures::open(&teacher(), &["conv9".to_string()])
            .err()
            .expect("must fail")
            .to_string();
        assert!(
            err.contains("cnn.onnx") && err.contains("conv9") && err.contains("l5.maxpool"),
            "{err}"
        );
    }
}
