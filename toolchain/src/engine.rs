//! Running a model on the host: with tinykd's own runtime (the same code
//! the devices run), with tract, the reference engine for cross-checks, or
//! (cargo feature `ort`) with ONNX Runtime.

use crate::tensor_file::{Elements, HostTensor};
use std::path::{Path, PathBuf};
use tinykd_runtime::proto::onnx::{Dim, GraphView, ModelView, ValueInfoView};
use tinykd_runtime::{Bindings, ConstInput, DType, Data, DataMut, Model, Session, Shape};

/// Which engine runs the model.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum EngineKind {
    /// tinykd-runtime (no_std, arena-planned).
    Tinykd,
    /// tract-onnx (optimized plan).
    Tract,
    /// ONNX Runtime (libonnxruntime from the project's venv).
    #[cfg(feature = "ort")]
    Ort,
}

/// Errors running a model.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The model file could not be read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The runtime rejected the model or the inputs.
    #[error("{path}: {source}")]
    Runtime {
        /// The model file.
        path: PathBuf,
        /// The runtime's error.
        source: tinykd_runtime::Error,
    },
    /// The inputs do not match the model.
    #[error("{path}: {reason}")]
    Inputs {
        /// The model file.
        path: PathBuf,
        /// What does not match.
        reason: String,
    },
    /// tract failed.
    #[error("{path}: tract: {reason}")]
    Tract {
        /// The model file.
        path: PathBuf,
        /// tract's message.
        reason: String,
    },
    /// ONNX Runtime could not be loaded or failed.
    #[cfg(feature = "ort")]
    #[error("{path}: onnxruntime: {reason}")]
    Ort {
        /// The model file.
        path: PathBuf,
        /// What failed.
        reason: String,
    },
}

/// A graph input as declared in the file (before binding).
#[derive(Clone, Debug)]
pub struct DeclaredInput {
    /// Value name.
    pub name: String,
    /// Element type.
    pub dtype: DType,
    /// Dims: `Some(n)` fixed, `None` symbolic/unknown, with the symbol name.
    pub dims: Vec<(Option<usize>, Option<String>)>,
}

/// Lists the graph inputs that are not initializers.
pub fn declared_inputs(bytes: &[u8]) -> Result<Vec<DeclaredInput>, tinykd_runtime::Error> {
    let model = ModelView::parse(bytes)?;
    let graph = GraphView::parse(model.graph)?;
    let mut initializers = Vec::new();
    for t in graph.initializers() {
        initializers.push(tinykd_runtime::proto::onnx::TensorView::parse(t)?.name);
    }
    let mut out = Vec::new();
    for bytes in graph.inputs() {
        let info = ValueInfoView::parse(bytes)?;
        if initializers.contains(&info.name) {
            continue;
        }
        let mut dims = Vec::new();
        for d in info.dims() {
            dims.push(match d? {
                Dim::Value(v) => (usize::try_from(v).ok(), None),
                Dim::Param(p) => (None, Some(p.to_string())),
                Dim::Unknown => (None, None),
            });
        }
        out.push(DeclaredInput {
            name: info.name.to_string(),
            dtype: DType::from_onnx(info.elem_type),
            dims,
        });
    }
    Ok(out)
}

/// Pairs `inputs` with the model's declared inputs: by name where the
/// tensors are named, else by position.
fn match_inputs<'d, 't>(
    declared: &'d [DeclaredInput],
    inputs: &'t [HostTensor],
) -> Result<Vec<(&'d DeclaredInput, &'t HostTensor)>, String> {
    if declared.len() != inputs.len() {
        return Err(format!(
            "the model has {} inputs, {} given",
            declared.len(),
            inputs.len()
        ));
    }
    let named = inputs.iter().all(|t| !t.name.is_empty());
    declared
        .iter()
        .enumerate()
        .map(|(i, d)| {
            let t = if named {
                inputs.iter().find(|t| t.name == d.name)
            } else {
                inputs.get(i)
            };
            t.map(|t| (d, t))
                .ok_or_else(|| format!("no tensor given for input '{}'", d.name))
        })
        .collect()
}

/// Runs `model_bytes` with tinykd-runtime. Symbolic dims are bound from the
/// inputs' shapes; f32, int8, uint8 and int32 inputs are fed at run time,
/// other types (int64 shapes, bools) are bound as load-time constants. A
/// model that needs some inputs to be constants (quantization scales of
/// `QLinearConv`, as ONNX's node tests pass them) is retried with every
/// input but the first bound at load time.
pub fn run_tinykd(
    path: &Path,
    bytes: &[u8],
    inputs: &[HostTensor],
) -> Result<Vec<HostTensor>, EngineError> {
    match run_tinykd_binding(path, bytes, inputs, false) {
        Err(EngineError::Runtime { source, .. }) if source.is_unsupported() && inputs.len() > 1 => {
            run_tinykd_binding(path, bytes, inputs, true).map_err(|e| match e {
                // Report the first attempt's reason when both fail.
                EngineError::Runtime { .. } => EngineError::Runtime {
                    path: path.into(),
                    source,
                },
                other => other,
            })
        }
        other => other,
    }
}

/// Whether the runtime takes elements of `dtype` at run time.
fn fed_at_run_time(dtype: DType) -> bool {
    matches!(dtype, DType::F32 | DType::I8 | DType::U8 | DType::I32)
}

fn run_tinykd_binding(
    path: &Path,
    bytes: &[u8],
    inputs: &[HostTensor],
    bind_all_but_first: bool,
) -> Result<Vec<HostTensor>, EngineError> {
    let rt = |source| EngineError::Runtime {
        path: path.into(),
        source,
    };
    let bad = |reason: String| EngineError::Inputs {
        path: path.into(),
        reason,
    };
    let declared = declared_inputs(bytes).map_err(rt)?;
    let pairs = match_inputs(&declared, inputs).map_err(bad)?;
    let mut dims: Vec<(&str, usize)> = Vec::new();
    let mut const_bytes = Vec::new();
    for (i, (d, t)) in pairs.iter().enumerate() {
        if d.dims.len() == t.shape.len() {
            for ((_, symbol), &size) in d.dims.iter().zip(&t.shape) {
                if let Some(s) = symbol {
                    dims.push((s.as_str(), size));
                }
            }
        }
        if !fed_at_run_time(t.dtype()) || (bind_all_but_first && i > 0) {
            const_bytes.push((d.name.as_str(), t.dtype(), t.shape.clone(), t.to_le_bytes()));
        }
    }
    let mut constants = Vec::new();
    for (name, dtype, shape, data) in &const_bytes {
        let shape = Shape::new(shape)
            .ok_or_else(|| bad(format!("input '{name}' has too many dimensions")))?;
        constants.push(ConstInput {
            name,
            dtype: *dtype,
            shape,
            data,
        });
    }
    let bindings = Bindings {
        dims: &dims,
        constants: &constants,
    };
    let model = Model::parse_with(bytes, &bindings).map_err(rt)?;
    let mut run_inputs: Vec<Data<'_>> = Vec::new();
    for v in model.inputs() {
        let (_, t) = pairs
            .iter()
            .find(|(d, _)| d.name == v.name)
            .ok_or_else(|| bad(format!("no input '{}'", v.name)))?;
        let shape: Vec<usize> = v.shape.iter().collect();
        if t.shape != shape {
            return Err(bad(format!(
                "input '{}' has shape {:?}, the model needs {:?}",
                v.name, t.shape, shape
            )));
        }
        run_inputs.push(match &t.elements {
            Elements::F32(x) => Data::F32(x),
            Elements::I8(x) => Data::I8(x),
            Elements::U8(x) => Data::U8(x),
            Elements::I32(x) => Data::I32(x),
            _ => return Err(bad(format!("input '{}' is {}", v.name, t.dtype()))),
        });
    }
    let mut outputs: Vec<Elements> = Vec::new();
    for v in model.outputs() {
        outputs.push(match v.dtype {
            DType::F32 => Elements::F32(vec![0.0; v.len()]),
            DType::I8 => Elements::I8(vec![0; v.len()]),
            DType::U8 => Elements::U8(vec![0; v.len()]),
            DType::I32 => Elements::I32(vec![0; v.len()]),
            other => {
                return Err(rt(tinykd_runtime::Error::DType {
                    value: tinykd_runtime::error::name(v.name),
                    dtype: other,
                }))
            }
        });
    }
    let mut arena = vec![0u8; model.arena_size() + tinykd_runtime::planner::ALIGN];
    let mut session = Session::new(&model, &mut arena).map_err(rt)?;
    // Outputs were allocated with run-time types only, so none is skipped.
    let mut slots: Vec<DataMut<'_>> = outputs
        .iter_mut()
        .filter_map(|o| match o {
            Elements::F32(x) => Some(DataMut::F32(x)),
            Elements::I8(x) => Some(DataMut::I8(x)),
            Elements::U8(x) => Some(DataMut::U8(x)),
            Elements::I32(x) => Some(DataMut::I32(x)),
            _ => None,
        })
        .collect();
    session.run_typed(&run_inputs, &mut slots).map_err(rt)?;
    drop(slots);
    Ok(model
        .outputs()
        .zip(outputs)
        .map(|(v, elements)| HostTensor {
            name: v.name.to_string(),
            shape: v.shape.iter().collect(),
            elements,
        })
        .collect())
}

/// Runs the model file with tract (optimized), inputs f32 only. A panic
/// inside tract is reported as an error.
pub fn run_tract(path: &Path, inputs: &[HostTensor]) -> Result<Vec<HostTensor>, EngineError> {
    std::panic::catch_unwind(|| run_tract_unguarded(path, inputs)).unwrap_or_else(|_| {
        Err(EngineError::Tract {
            path: path.into(),
            reason: "tract panicked on this model".into(),
        })
    })
}

fn run_tract_unguarded(path: &Path, inputs: &[HostTensor]) -> Result<Vec<HostTensor>, EngineError> {
    use tract_onnx::prelude::*;
    let fail = |e: anyhow_like::Error| EngineError::Tract {
        path: path.into(),
        reason: format!("{e:#}"),
    };
    let bytes = std::fs::read(path).map_err(|source| EngineError::Io {
        path: path.into(),
        source,
    })?;
    let declared = declared_inputs(&bytes).map_err(|source| EngineError::Runtime {
        path: path.into(),
        source,
    })?;
    let pairs = match_inputs(&declared, inputs).map_err(|reason| EngineError::Inputs {
        path: path.into(),
        reason,
    })?;
    let mut model = tract_onnx::onnx().model_for_path(path).map_err(fail)?;
    let mut values = TVec::new();
    for (i, (_, t)) in pairs.iter().enumerate() {
        let Elements::F32(data) = &t.elements else {
            return Err(EngineError::Inputs {
                path: path.into(),
                reason: "tract cross-checks take f32 inputs".into(),
            });
        };
        model = model
            .with_input_fact(i, f32::fact(&t.shape).into())
            .map_err(fail)?;
        let tensor = Tensor::from_shape(&t.shape, data.as_slice()).map_err(fail)?;
        values.push(tensor.into_tvalue());
    }
    let plan = model
        .into_optimized()
        .map_err(fail)?
        .into_runnable()
        .map_err(fail)?;
    let outputs = plan.run(values).map_err(fail)?;
    let names: Vec<String> = plan
        .model()
        .output_outlets()
        .map_err(fail)?
        .iter()
        .map(|o| plan.model().outlet_label(*o).unwrap_or("").to_string())
        .collect();
    outputs
        .iter()
        .zip(names)
        .map(|(o, name)| {
            let view = o.to_plain_array_view::<f32>().map_err(fail)?;
            Ok(HostTensor::f32(
                name,
                view.shape().to_vec(),
                view.iter().copied().collect(),
            ))
        })
        .collect()
}

/// Runs the model file with ONNX Runtime; inputs of any element type the
/// tensor files hold, f32 outputs.
#[cfg(feature = "ort")]
pub fn run_ort(path: &Path, inputs: &[HostTensor]) -> Result<Vec<HostTensor>, EngineError> {
    use ort::session::SessionInputValue;
    use ort::value::{DynValue, Tensor};
    let fail = |reason: String| EngineError::Ort {
        path: path.into(),
        reason,
    };
    let bytes = std::fs::read(path).map_err(|source| EngineError::Io {
        path: path.into(),
        source,
    })?;
    let declared = declared_inputs(&bytes).map_err(|source| EngineError::Runtime {
        path: path.into(),
        source,
    })?;
    let pairs = match_inputs(&declared, inputs).map_err(|reason| EngineError::Inputs {
        path: path.into(),
        reason,
    })?;
    let mut session = crate::teacher::ort::session(&bytes).map_err(fail)?;
    let mut values: Vec<(String, SessionInputValue)> = Vec::new();
    for (d, t) in pairs {
        let shape = t.shape.clone();
        let value: DynValue = match &t.elements {
            Elements::F32(v) => Tensor::from_array((shape, v.clone())).map(Tensor::into_dyn),
            Elements::I64(v) => Tensor::from_array((shape, v.clone())).map(Tensor::into_dyn),
            Elements::I32(v) => Tensor::from_array((shape, v.clone())).map(Tensor::into_dyn),
            Elements::I8(v) => Tensor::from_array((shape, v.clone())).map(Tensor::into_dyn),
            Elements::U8(v) => Tensor::from_array((shape, v.clone())).map(Tensor::into_dyn),
            Elements::Bool(v) => Tensor::from_array((shape, v.clone())).map(Tensor::into_dyn),
            Elements::F64(v) => Tensor::from_array((shape, v.clone())).map(Tensor::into_dyn),
            Elements::F16(_) => {
                return Err(fail(format!(
                    "input '{}': float16 inputs are not supported with ONNX Runtime here",
                    d.name
                )))
            }
        }
        .map_err(|e| fail(format!("input '{}': {e}", d.name)))?;
        values.push((d.name.clone(), value.into()));
    }
    let names: Vec<String> = session
        .outputs()
        .iter()
        .map(|o| o.name().to_string())
        .collect();
    let outputs = session.run(values).map_err(|e| fail(e.to_string()))?;
    names
        .into_iter()
        .enumerate()
        .map(|(i, name)| {
            let (shape, data) = outputs[i]
                .try_extract_tensor::<f32>()
                .map_err(|e| fail(format!("output '{name}': {e}")))?;
            let shape = shape.iter().map(|&d| d.max(0) as usize).collect();
            Ok(HostTensor::f32(name, shape, data.to_vec()))
        })
        .collect()
}

mod anyhow_like {
    pub type Error = tract_onnx::prelude::TractError;
}
