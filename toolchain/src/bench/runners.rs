//! One prepared model per engine, run on the same input: the parts of
//! loading and planning that a device does once are done here, so a timed
//! run is one inference.

use super::{BenchError, Engine};
use std::path::Path;

/// A model loaded into an engine, ready to run its input again.
pub(super) trait Runner {
    /// One inference.
    fn run(&mut self) -> Result<(), BenchError>;
    /// The engine's own working memory, where it knows it (tinykd's arena).
    fn arena_bytes(&self) -> Option<u64>;
}

/// An engine's run as a closure over what it prepared.
struct Prepared {
    engine: Engine,
    path: std::path::PathBuf,
    run: Box<dyn FnMut() -> Result<(), String>>,
    arena: Option<u64>,
}

impl Runner for Prepared {
    fn run(&mut self) -> Result<(), BenchError> {
        (self.run)().map_err(|reason| BenchError::Engine {
            path: self.path.clone(),
            engine: self.engine,
            reason,
        })
    }

    fn arena_bytes(&self) -> Option<u64> {
        self.arena
    }
}

/// The single input's shape with the batch (or any symbolic dim) set to 1,
/// and deterministic values in [-1, 1).
pub(super) fn input_for(path: &Path, bytes: &[u8]) -> Result<(Vec<usize>, Vec<f32>), BenchError> {
    let fail = |reason: String| BenchError::Engine {
        path: path.into(),
        engine: Engine::Tinykd,
        reason,
    };
    let declared = crate::engine::declared_inputs(bytes).map_err(|e| fail(e.to_string()))?;
    let [input] = declared.as_slice() else {
        return Err(fail(format!(
            "the benchmark feeds one input; the model has {}",
            declared.len()
        )));
    };
    if input.dtype != tinykd_runtime::DType::F32 {
        return Err(fail(format!(
            "input '{}' is {}; the benchmark feeds f32",
            input.name, input.dtype
        )));
    }
    let shape: Vec<usize> = input.dims.iter().map(|d| d.0.unwrap_or(1)).collect();
    let mut s = 0x9e37_79b9_7f4a_7c15u64;
    let values = (0..shape.iter().product::<usize>())
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect();
    Ok((shape, values))
}

/// Prepares `engine` on the model `bytes` (read from `path`).
pub(super) fn open(
    engine: Engine,
    path: &Path,
    bytes: &[u8],
    shape: &[usize],
    input: &[f32],
) -> Result<Box<dyn Runner>, BenchError> {
    let fail = |reason: String| BenchError::Engine {
        path: path.into(),
        engine,
        reason,
    };
    let (run, arena) = match engine {
        Engine::Tinykd => tinykd(bytes, input).map_err(fail)?,
        Engine::Tract => (tract(path, shape, input).map_err(fail)?, None),
        Engine::Ort => (ort(bytes, shape, input).map_err(fail)?, None),
    };
    Ok(Box::new(Prepared {
        engine,
        path: path.into(),
        run,
        arena,
    }))
}

type RunFn = Box<dyn FnMut() -> Result<(), String>>;

/// The runtime as a device runs it: the model parsed once from an aligned
/// copy of the file (weights read in place), a session over one arena. The
/// benchmark lives as long as the process, so the copy, the parsed model and
/// the arena are leaked to give the session its `'static` borrows.
fn tinykd(bytes: &[u8], input: &[f32]) -> Result<(RunFn, Option<u64>), String> {
    let buf: &'static mut [u8] = Box::leak(vec![0u8; bytes.len() + 16].into_boxed_slice());
    let start = buf.as_ptr().align_offset(16);
    let file: &'static mut [u8] = &mut buf[start..start + bytes.len()];
    file.copy_from_slice(bytes);
    let file: &'static [u8] = file;
    let model = tinykd_runtime::Model::parse(file).map_err(|e| e.to_string())?;
    let model: &'static tinykd_runtime::Model<'static> = Box::leak(Box::new(model));
    let arena_len = model.arena_size();
    let arena: &'static mut [u8] = Box::leak(vec![0u8; arena_len + 16].into_boxed_slice());
    let mut session = tinykd_runtime::Session::new(model, arena).map_err(|e| e.to_string())?;
    let out_len = model.outputs().next().map_or(0, |v| v.len());
    let (x, mut y) = (input.to_vec(), vec![0f32; out_len]);
    let run = move || session.run(&[&x], &mut [&mut y]).map_err(|e| e.to_string());
    Ok((Box::new(run), Some(arena_len as u64)))
}

/// tract's optimized plan for the concrete input shape.
fn tract(path: &Path, shape: &[usize], input: &[f32]) -> Result<RunFn, String> {
    use tract_onnx::prelude::*;
    let plan = tract_onnx::onnx()
        .model_for_path(path)
        .and_then(|m| m.with_input_fact(0, f32::fact(shape).into()))
        .and_then(|m| m.into_optimized())
        .and_then(|m| m.into_runnable())
        .map_err(|e| format!("{e:#}"))?;
    let x = Tensor::from_shape(shape, input).map_err(|e| format!("{e:#}"))?;
    let run = move || {
        plan.run(tvec!(x.clone().into_tvalue()))
            .map(drop)
            .map_err(|e| format!("{e:#}"))
    };
    Ok(Box::new(run))
}

/// An ONNX Runtime session with one intra-op thread.
#[cfg(feature = "ort")]
fn ort(bytes: &[u8], shape: &[usize], input: &[f32]) -> Result<RunFn, String> {
    use ort::session::SessionInputValue;
    use ort::value::TensorRef;
    let library = crate::teacher::ort::library_path()
        .ok_or_else(|| crate::teacher::ort::not_found_reason(None))?;
    let mut session = crate::teacher::ort::session_threads(&library, bytes, 1)?;
    let (shape, x) = (shape.to_vec(), input.to_vec());
    let run = move || {
        let t =
            TensorRef::from_array_view((shape.clone(), x.as_slice())).map_err(|e| e.to_string())?;
        session
            .run([SessionInputValue::from(t)])
            .map(drop)
            .map_err(|e| e.to_string())
    };
    Ok(Box::new(run))
}

#[cfg(not(feature = "ort"))]
fn ort(_: &[u8], _: &[usize], _: &[f32]) -> Result<RunFn, String> {
    Err("this tinykd was built without the `ort` feature".into())
}
