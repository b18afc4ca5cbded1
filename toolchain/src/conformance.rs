//! `tinykd conformance`: runs the ONNX node test cases (`model.onnx` +
//! `test_data_set_*/{input,output}_*.pb`) through tinykd-runtime.

use crate::engine::{run_tinykd, EngineError};
use crate::tensor_file::{Elements, HostTensor};
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Tolerances of the ONNX backend test runner for node tests.
const RTOL: f32 = 1e-3;
const ATOL: f32 = 1e-7;

/// How one case ended.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// Every output matched.
    Passed,
    /// The runtime gave a wrong answer, rejected a valid model, or panicked.
    Failed,
    /// The model uses something the runtime does not implement.
    Unsupported,
}

/// One case's result.
#[derive(Clone, Debug, Serialize)]
pub struct CaseResult {
    /// Folder name, e.g. `test_conv_with_strides_padding`.
    pub case: String,
    /// The op types in the case's graph.
    pub ops: Vec<String>,
    /// How it ended.
    pub outcome: Outcome,
    /// Why, when not passed.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub reason: String,
}

/// The summary `--json` prints.
#[derive(Clone, Debug, Serialize)]
pub struct Summary {
    /// Cases whose outputs all matched.
    pub passed: usize,
    /// Cases with a wrong answer, a rejected valid model, or a panic.
    pub failed: usize,
    /// Cases using unsupported ops or features.
    pub unsupported: usize,
    /// The failed cases with reasons.
    pub failures: Vec<CaseResult>,
}

/// Errors that stop the whole run (a single case never does).
#[derive(Debug, thiserror::Error)]
pub enum ConformanceError {
    /// The folder could not be listed.
    #[error("{path}: {source}")]
    Io {
        /// The folder.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
}

/// Numbered files `prefix_N.pb` in `dir`, in order.
fn numbered(dir: &Path, prefix: &str) -> Vec<PathBuf> {
    let mut files: Vec<(usize, PathBuf)> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let n = name
                .strip_prefix(prefix)?
                .strip_suffix(".pb")?
                .parse()
                .ok()?;
            Some((n, e.path()))
        })
        .collect();
    files.sort();
    files.into_iter().map(|(_, p)| p).collect()
}

fn op_types(bytes: &[u8]) -> Vec<String> {
    use tinykd_runtime::proto::onnx::{GraphView, ModelView, NodeView};
    let Ok(model) = ModelView::parse(bytes) else {
        return Vec::new();
    };
    let Ok(graph) = GraphView::parse(model.graph) else {
        return Vec::new();
    };
    let mut ops: Vec<String> = graph
        .nodes()
        .filter_map(|n| NodeView::parse(n).ok())
        .map(|n| n.op_type.to_string())
        .collect();
    ops.sort();
    ops.dedup();
    ops
}

fn close(got: f32, want: f32) -> bool {
    (got.is_nan() && want.is_nan()) || got == want || (got - want).abs() <= ATOL + RTOL * want.abs()
}

/// Compares outputs; `Err` describes the first mismatch. Floats within
/// tolerance, integers exactly.
fn compare(got: &[HostTensor], want: &[HostTensor]) -> Result<(), String> {
    if got.len() != want.len() {
        return Err(format!("{} outputs, expected {}", got.len(), want.len()));
    }
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        if g.shape != w.shape {
            return Err(format!(
                "output {i}: shape {:?}, expected {:?}",
                g.shape, w.shape
            ));
        }
        let mismatch = match (&g.elements, &w.elements) {
            (Elements::F32(gd), Elements::F32(wd)) => (0..wd.len())
                .find(|&j| !close(gd[j], wd[j]))
                .map(|j| (j, gd[j].to_string(), wd[j].to_string())),
            (Elements::I8(gd), Elements::I8(wd)) => first_difference(gd, wd),
            (Elements::U8(gd), Elements::U8(wd)) => first_difference(gd, wd),
            (Elements::I32(gd), Elements::I32(wd)) => first_difference(gd, wd),
            _ => {
                return Err(format!(
                    "output {i}: type {}, expected {}",
                    g.dtype(),
                    w.dtype()
                ))
            }
        };
        if let Some((j, got, want)) = mismatch {
            return Err(format!("output {i}: element {j} is {got}, expected {want}"));
        }
    }
    Ok(())
}

/// The first index where two integer tensors differ, with both values.
fn first_difference<T: PartialEq + ToString>(
    got: &[T],
    want: &[T],
) -> Option<(usize, String, String)> {
    (0..want.len())
        .find(|&j| got[j] != want[j])
        .map(|j| (j, got[j].to_string(), want[j].to_string()))
}

/// Runs one case folder.
pub fn run_case(dir: &Path) -> CaseResult {
    let case = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let model_path = dir.join("model.onnx");
    let result = |outcome, reason: String, ops| CaseResult {
        case: case.clone(),
        ops,
        outcome,
        reason,
    };
    let bytes = match std::fs::read(&model_path) {
        Ok(b) => b,
        Err(e) => {
            return result(
                Outcome::Failed,
                format!("{}: {e}", model_path.display()),
                Vec::new(),
            )
        }
    };
    let ops = op_types(&bytes);
    let mut sets: Vec<PathBuf> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.is_dir()
                && p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with("test_data_set_"))
        })
        .collect();
    sets.sort();
    if sets.is_empty() {
        return result(Outcome::Failed, "no test_data_set_* folder".into(), ops);
    }
    for set in sets {
        let read = |prefix| {
            numbered(&set, prefix)
                .iter()
                .map(|p| HostTensor::read_pb(p))
                .collect::<Result<Vec<_>, _>>()
        };
        let (inputs, expected) = match (read("input_"), read("output_")) {
            (Ok(i), Ok(o)) => (i, o),
            (Err(e), _) | (_, Err(e)) => return result(Outcome::Unsupported, e.to_string(), ops),
        };
        let run = std::panic::catch_unwind(|| run_tinykd(&model_path, &bytes, &inputs));
        let outputs = match run {
            Err(_) => return result(Outcome::Failed, "panicked".into(), ops),
            Ok(Err(EngineError::Runtime { source, .. })) if source.is_unsupported() => {
                return result(Outcome::Unsupported, source.to_string(), ops)
            }
            Ok(Err(e)) => return result(Outcome::Failed, e.to_string(), ops),
            Ok(Ok(o)) => o,
        };
        if let Some(t) = expected.iter().find(|t| {
            !matches!(
                t.elements,
                Elements::F32(_) | Elements::I8(_) | Elements::U8(_) | Elements::I32(_)
            )
        }) {
            return result(
                Outcome::Unsupported,
                format!("expected output of type {}", t.dtype()),
                ops,
            );
        }
        if let Err(reason) = compare(&outputs, &expected) {
            return result(
                Outcome::Failed,
                format!(
                    "{}: {reason}",
                    set.file_name().unwrap_or_default().to_string_lossy()
                ),
                ops,
            );
        }
    }
    result(Outcome::Passed, String::new(), ops)
}

/// Runs every case folder under `root` (folders holding a `model.onnx`).
pub fn run_all(root: &Path) -> Result<Vec<CaseResult>, ConformanceError> {
    let io = |source| ConformanceError::Io {
        path: root.into(),
        source,
    };
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(root)
        .map_err(io)?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.join("model.onnx").is_file())
        .collect();
    dirs.sort();
    // A panicking case is reported, not printed: keep the default hook quiet.
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let results = dirs.iter().map(|d| run_case(d)).collect();
    std::panic::set_hook(hook);
    Ok(results)
}

/// Counts outcomes.
pub fn summarize(results: &[CaseResult]) -> Summary {
    let count = |o: Outcome| results.iter().filter(|r| r.outcome == o).count();
    Summary {
        passed: count(Outcome::Passed),
        failed: count(Outcome::Failed),
        unsupported: count(Outcome::Unsupported),
        failures: results
            .iter()
            .filter(|r| r.outcome == Outcome::Failed)
            .cloned()
            .collect(),
    }
}

/// Renders `docs/ops.md`: each supported op and the cases that exercise it.
pub fn ops_markdown(results: &[CaseResult]) -> String {
    let mut by_op: BTreeMap<&str, (Vec<&str>, Vec<&str>)> = BTreeMap::new();
    for op in tinykd_runtime::ops::supported_ops() {
        by_op.insert(op, (Vec::new(), Vec::new()));
    }
    for r in results {
        for op in &r.ops {
            if let Some((passed, other)) = by_op.get_mut(op.as_str()) {
                match r.outcome {
                    Outcome::Passed => passed.push(&r.case),
                    _ => other.push(&r.case),
                }
            }
        }
    }
    let s = summarize(results);
    let mut md = String::from(
        "# Supported operators\n\nGenerated by `make ops-doc` (`tinykd conformance build/onnx-node-tests --ops-doc docs/ops.md`) from the ONNX node test cases of the installed `onnx` package. Do not edit by hand.\n\n",
    );
    md.push_str(&format!(
        "Conformance: {} passed, {} failed, {} unsupported (of {} cases).\n\n",
        s.passed,
        s.failed,
        s.unsupported,
        results.len()
    ));
    md.push_str("| op | cases passed | other cases using it (unsupported feature, or other ops in the graph) |\n| --- | --- | --- |\n");
    for (op, (passed, other)) in &by_op {
        let list = |v: &Vec<&str>| {
            if v.is_empty() {
                "–".to_string()
            } else {
                v.iter()
                    .map(|c| format!("`{c}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            }
        };
        md.push_str(&format!(
            "| {op} | {}: {} | {} |\n",
            passed.len(),
            list(passed),
            other.len()
        ));
    }
    md
}
