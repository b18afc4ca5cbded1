//! The compression comparison of `tinykd report`: each model variant of one
//! student (float, int8, pruned, f16) measured the same way — accuracy on
//! the test set, parameters, file bytes, runtime arena and host latency, all
//! by the tinykd runtime that devices run — and tabulated over seeds.

use crate::data::Dataset;
use crate::engine::EngineKind;
use serde::{Deserialize, Serialize};
use std::path::Path;

/// Errors measuring a model.
#[derive(Debug, thiserror::Error)]
pub enum MeasureError {
    /// The file cannot be read.
    #[error("{path}: {source}", path = path.display())]
    Read {
        /// The model file.
        path: std::path::PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The runtime rejects the model.
    #[error("{path}: {reason}", path = path.display())]
    Load {
        /// The model file.
        path: std::path::PathBuf,
        /// The runtime's error.
        reason: String,
    },
    /// Evaluating it failed.
    #[error(transparent)]
    Eval(#[from] crate::eval::EvalError),
}

/// One model file's figures.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Measured {
    /// Top-1 test accuracy (0..1) in the tinykd runtime.
    pub accuracy: f64,
    /// Parameters stored in the file.
    pub parameters: u64,
    /// Of those, the ones that are not zero.
    pub nonzero: u64,
    /// File size.
    pub file_bytes: u64,
    /// The runtime's arena for one image.
    pub arena_bytes: u64,
    /// Mean single-image latency on this host, microseconds.
    pub latency_us: f64,
    /// For a model with an int8 output, the share of its output values
    /// ONNX Runtime computes identically from the same file (`None`
    /// without the `ort` feature or for float outputs).
    pub ort_identical: Option<f64>,
}

/// Measures the model at `path` on `test` with the tinykd runtime.
pub fn measure(path: &Path, test: &Dataset) -> Result<Measured, MeasureError> {
    let bytes = std::fs::read(path).map_err(|source| MeasureError::Read {
        path: path.into(),
        source,
    })?;
    let load = |reason: String| MeasureError::Load {
        path: path.into(),
        reason,
    };
    let model = tinykd_runtime::Model::parse(&bytes).map_err(|e| load(e.to_string()))?;
    let info = crate::inspect::Report::new(&model, bytes.len());
    let (parameters, nonzero) = count_initializers(&bytes).map_err(load)?;
    let eval = crate::eval::evaluate(path, test, EngineKind::Tinykd, 100)?;
    let ort_identical = match crate::quantize::output_scale(&bytes, 0) {
        Some(scale) if cfg!(feature = "ort") => {
            let theirs = crate::eval::evaluate(path, test, EngineKind::Ort, 100)?;
            Some(crate::quantize::agreement(&eval.logits, &theirs.logits, scale).identical)
        }
        _ => None,
    };
    Ok(Measured {
        accuracy: eval.accuracy,
        parameters,
        nonzero,
        file_bytes: bytes.len() as u64,
        arena_bytes: info.arena_bytes as u64,
        latency_us: eval.latency_us,
        ort_identical,
    })
}

/// Elements of the model's initializers (weights, biases, and in QDQ
/// files their scales and zero points) and how many are not zero (±0 both
/// count as zero).
fn count_initializers(bytes: &[u8]) -> Result<(u64, u64), String> {
    use prost::Message;
    use tract_onnx::pb::tensor_proto::DataType;
    let model = tract_onnx::pb::ModelProto::decode(bytes).map_err(|e| e.to_string())?;
    let (mut total, mut nonzero) = (0u64, 0u64);
    for t in model.graph.iter().flat_map(|g| &g.initializer) {
        let n: u64 = t.dims.iter().map(|&d| d.max(0) as u64).product();
        total += n;
        let width = match DataType::try_from(t.data_type) {
            Ok(DataType::Float | DataType::Int32) => 4,
            Ok(DataType::Float16) => 2,
            Ok(DataType::Int8 | DataType::Uint8) => 1,
            Ok(DataType::Int64 | DataType::Double) => 8,
            _ => {
                return Err(format!(
                    "initializer '{}': unsupported type {}",
                    t.name, t.data_type
                ))
            }
        };
        if t.raw_data.len() as u64 != n * width {
            // Typed fields (not written by tinykd): count every element.
            nonzero += n;
            continue;
        }
        // The sign bit alone (−0.0) is zero for the float types.
        let float = matches!(
            DataType::try_from(t.data_type),
            Ok(DataType::Float | DataType::Float16 | DataType::Double)
        );
        nonzero += t
            .raw_data
            .chunks(width as usize)
            .filter(|e| {
                let last = e.len() - 1;
                e.iter().enumerate().any(|(i, &b)| {
                    let b = if float && i == last { b & 0x7f } else { b };
                    b != 0
                })
            })
            .count() as u64;
    }
    Ok((total, nonzero))
}

/// A variant of the student, measured once per seed.
#[derive(Clone, Debug, Serialize)]
pub struct Row {
    /// What was done to the student.
    pub label: String,
    /// The figures of each seed's model.
    pub seeds: Vec<Measured>,
}

impl Row {
    /// Mean and sample standard deviation of the accuracy, in %.
    pub fn accuracy(&self) -> (f64, f64) {
        mean_std(self.seeds.iter().map(|m| 100.0 * m.accuracy))
    }
}

fn mean_std(v: impl Iterator<Item = f64>) -> (f64, f64) {
    let v: Vec<f64> = v.collect();
    let n = v.len().max(1) as f64;
    let mean = v.iter().sum::<f64>() / n;
    let var = if v.len() > 1 {
        v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0)
    } else {
        0.0
    };
    (mean, var.sqrt())
}

/// Thousands separated by commas.
fn grouped(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// The Markdown table of `rows`; differences are against row `baseline`.
pub fn markdown_table(rows: &[Row], baseline: usize) -> String {
    let base = rows.get(baseline).map_or(0.0, |r| r.accuracy().0);
    let mut s = String::from(
        "| model | test accuracy % (mean ± std) | vs KD f32 (points) | parameters (non-zero) \
         | file bytes | arena bytes | host latency µs | ORT identical int8 outputs |\n\
         | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n",
    );
    for r in rows {
        let Some(first) = r.seeds.first() else {
            continue;
        };
        let (mean, std) = r.accuracy();
        let params = if first.nonzero < first.parameters {
            format!("{} ({})", grouped(first.parameters), grouped(first.nonzero))
        } else {
            grouped(first.parameters)
        };
        let latency = mean_std(r.seeds.iter().map(|m| m.latency_us)).0;
        // Rounds to 0 like the means do, so the baseline never reads "-0.00".
        let diff = match mean - base {
            d if d.abs() < 0.005 => 0.0,
            d => d,
        };
        let ort = r
            .seeds
            .iter()
            .filter_map(|m| m.ort_identical)
            .reduce(f64::min)
            .map_or("–".to_string(), |min| format!("≥ {:.3} %", 100.0 * min));
        s.push_str(&format!(
            "| {} | {mean:.2} ± {std:.2} | {diff:+.2} | {params} | {} | {} | {latency:.0} | {ort} |\n",
            r.label,
            grouped(first.file_bytes),
            grouped(first.arena_bytes),
        ));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(accuracy: f64, nonzero: u64, ort_identical: Option<f64>) -> Measured {
        Measured {
            accuracy,
            parameters: 30794,
            nonzero,
            file_bytes: 126939,
            arena_bytes: 125440,
            latency_us: 100.0,
            ort_identical,
        }
    }

    #[test]
    fn the_table_has_means_differences_and_sparsity() {
        let rows = vec![
            Row {
                label: "f32, KD".into(),
                seeds: vec![m(0.88, 30794, None), m(0.86, 30794, None)],
            },
            Row {
                label: "magnitude 50 %".into(),
                seeds: vec![m(0.87, 15397, Some(0.9991)), m(0.87, 15397, Some(0.9987))],
            },
        ];
        let t = markdown_table(&rows, 0);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 4, "{t}");
        assert!(
            lines[2].contains("| 87.00 ± 1.41 | +0.00 | 30,794 | 126,939 | 125,440 | 100 | – |"),
            "{t}"
        );
        assert!(
            lines[3].contains("| 87.00 ± 0.00 | +0.00 | 30,794 (15,397) |"),
            "{t}"
        );
        assert!(lines[3].ends_with("| ≥ 99.870 % |"), "{t}");
    }
}
