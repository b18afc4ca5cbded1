//! Teachers on ONNX Runtime (cargo feature `ort`): finding and loading
//! `libonnxruntime` at run time, sessions, running a batch, and reading a
//! model's input, output and metadata props for the engine-independent
//! checks in [`runner`](super::runner).
//!
//! The library is the one the `onnxruntime` wheel installs into the
//! project's `.venv` (`make setup`): the `ort` crate is built with
//! `load-dynamic`, so nothing is downloaded or linked at build time and a
//! build without the library still runs every other engine.

use super::runner::{check_input_count, output_error, Declared};
use super::TeacherError;
use ort::environment::Environment;
use ort::session::{Session, SessionInputValue};
use ort::value::{TensorElementType, TensorRef, ValueType};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

/// The environment variable naming the ONNX Runtime shared library.
pub const DYLIB_ENV: &str = "ORT_DYLIB_PATH";

/// Finds `libonnxruntime`: `$ORT_DYLIB_PATH` if set (even if missing, so a
/// wrong setting is reported rather than bypassed); otherwise the first
/// `.venv/lib/python3*/site-packages/onnxruntime/capi/libonnxruntime.so*`
/// below the current directory or one of its ancestors, then below the
/// executable's directory or one of its ancestors (so `target/release/tinykd`
/// and test binaries find the project's venv from anywhere).
pub fn library_path() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os(DYLIB_ENV).filter(|p| !p.is_empty()) {
        let p = PathBuf::from(p);
        return Some(std::path::absolute(&p).unwrap_or(p));
    }
    let cwd = std::env::current_dir().ok();
    let exe = std::env::current_exe().ok();
    let exe_dir = exe.as_deref().and_then(Path::parent);
    cwd.iter()
        .map(PathBuf::as_path)
        .chain(exe_dir)
        .flat_map(Path::ancestors)
        .find_map(wheel_library)
}

/// The wheel's library in `root/.venv`, if there is one.
fn wheel_library(root: &Path) -> Option<PathBuf> {
    let mut pythons: Vec<PathBuf> = std::fs::read_dir(root.join(".venv/lib"))
        .ok()?
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("python3"))
        .map(|e| e.path())
        .collect();
    pythons.sort();
    pythons.iter().find_map(|python| {
        let capi = python.join("site-packages/onnxruntime/capi");
        let mut libs: Vec<PathBuf> = std::fs::read_dir(capi)
            .ok()?
            .flatten()
            .filter(|e| {
                e.file_name()
                    .to_string_lossy()
                    .starts_with("libonnxruntime.so")
            })
            .map(|e| e.path())
            .collect();
        // `libonnxruntime.so.1.32.0` is what the wheel ships; prefer the
        // shortest name should a bare `.so` link sit beside it.
        libs.sort_by_key(|p| (p.as_os_str().len(), p.clone()));
        libs.into_iter().next()
    })
}

/// Why ONNX Runtime cannot be loaded when its library is missing; `path`
/// is the library looked for, `None` when the search found none.
pub(crate) fn not_found_reason(path: Option<&Path>) -> String {
    let what = match path {
        Some(p) => format!("the ONNX Runtime library {} does not exist", p.display()),
        None => format!(
            "no ONNX Runtime library: {DYLIB_ENV} is unset and no \
             .venv/lib/python3*/site-packages/onnxruntime/capi/libonnxruntime.so* \
             was found from the current directory or the executable"
        ),
    };
    format!(
        "{what}; set {DYLIB_ENV} or run `make setup` to install the onnxruntime wheel into .venv"
    )
}

/// The process's ONNX Runtime environment, loading `library` the first time.
/// ONNX Runtime allows one environment per process, so the first library
/// loaded serves every later call; a missing `library` is still an error.
fn environment(library: &Path) -> Result<&'static Environment, String> {
    static ENVIRONMENT: OnceLock<Environment> = OnceLock::new();
    // Serialises the first load: two threads building environments at once
    // would make the second fail ("only one environment is allowed").
    static LOADING: Mutex<()> = Mutex::new(());
    // Checked before the cache so that a wrong path is never silently served
    // by a library loaded earlier from elsewhere.
    if !library.is_file() {
        return Err(not_found_reason(Some(library)));
    }
    if let Some(env) = ENVIRONMENT.get() {
        return Ok(env);
    }
    let _loading = LOADING.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(env) = ENVIRONMENT.get() {
        return Ok(env);
    }
    // `ort::init_from` returns the dlopen error; `ort::init` would panic.
    let env = ort::init_from(library)
        .map_err(|e| e.to_string())?
        .with_name("tinykd")
        .with_telemetry(false)
        .build()
        .map_err(|e| format!("cannot create the environment: {e}"))?;
    Ok(ENVIRONMENT.get_or_init(|| env))
}

/// An ONNX Runtime session of `bytes` with `library`: intra-op threads on
/// every available core, the default graph optimisation level.
pub(crate) fn session_with(library: &Path, bytes: &[u8]) -> Result<Session, String> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    session_threads(library, bytes, threads)
}

/// An ONNX Runtime session of `bytes` with `library` and `threads` intra-op
/// threads, the default graph optimisation level.
pub(crate) fn session_threads(
    library: &Path,
    bytes: &[u8],
    threads: usize,
) -> Result<Session, String> {
    let env = environment(library)?;
    Session::builder(env)
        .map_err(|e| e.to_string())?
        .with_intra_threads(threads)
        .map_err(|e| e.to_string())?
        .commit_from_memory(bytes)
        .map_err(|e| e.to_string())
}

/// [`session_with`] the library [`library_path`] finds.
pub(crate) fn session(bytes: &[u8]) -> Result<Session, String> {
    let library = library_path().ok_or_else(|| not_found_reason(None))?;
    session_with(&library, bytes)
}

fn ort_err(path: &Path, reason: impl std::fmt::Display) -> TeacherError {
    TeacherError::Ort {
        path: path.into(),
        reason: reason.to_string(),
    }
}

/// A teacher loaded into ONNX Runtime.
pub(super) struct OrtBackend {
    // `Session::run` takes `&mut self` (some ONNX Runtime internals are not
    // thread-safe), while a `Teacher` is shared across threads.
    session: Mutex<Session>,
}

impl OrtBackend {
    /// Creates the session and reads its input and metadata props.
    pub(super) fn open(
        path: &Path,
        bytes: &[u8],
        library: &Path,
    ) -> Result<(OrtBackend, Declared), TeacherError> {
        let session = session_with(library, bytes).map_err(|e| ort_err(path, e))?;
        check_input_count(path, session.inputs().len())?;
        let input = &session.inputs()[0];
        let (non_f32, dims) = match input.dtype() {
            ValueType::Tensor { ty, shape, .. } => (
                (*ty != TensorElementType::Float32).then(|| ty.to_string()),
                // ONNX Runtime writes -1 for a symbolic or unknown dimension.
                Some(shape.iter().map(|&d| usize::try_from(d).ok()).collect()),
            ),
            other => (Some(format!("a {other}")), None),
        };
        let metadata = session.metadata().map_err(|e| ort_err(path, e))?;
        let declared = Declared {
            input_name: input.name().to_string(),
            non_f32,
            dims,
            labels: metadata.custom("labels"),
            normalization: metadata.custom("normalization"),
        };
        drop(metadata);
        let backend = OrtBackend {
            session: Mutex::new(session),
        };
        Ok((backend, declared))
    }

    /// Runs one batch of input `shape`, appending the first output's values;
    /// returns that output's shape.
    pub(super) fn run(
        &self,
        path: &Path,
        shape: &[usize],
        data: &[f32],
        out: &mut Vec<f32>,
    ) -> Result<Vec<usize>, TeacherError> {
        let input =
            TensorRef::from_array_view((shape.to_vec(), data)).map_err(|e| ort_err(path, e))?;
        let mut session = self.session.lock().unwrap_or_else(|e| e.into_inner());
        let outputs = session
            .run([SessionInputValue::from(input)])
            .map_err(|e| ort_err(path, e))?;
        let (dims, values) = outputs[0]
            .try_extract_tensor::<f32>()
            .map_err(|e| output_error(path, e.to_string()))?;
        out.extend_from_slice(values);
        Ok(dims.iter().map(|&d| d.max(0) as usize).collect())
    }

    /// The first output's shape for an input of `shape`, from a run on
    /// zeros: ONNX Runtime declares symbolic output dims as -1, and the run
    /// also proves the whole graph executes, as tract's plan does.
    pub(super) fn output_shape(
        &self,
        path: &Path,
        shape: &[usize],
    ) -> Result<Vec<usize>, TeacherError> {
        {
            let session = self.session.lock().unwrap_or_else(|e| e.into_inner());
            let Some(output) = session.outputs().first() else {
                return Err(output_error(path, "the model has no outputs".into()));
            };
            match output.dtype() {
                ValueType::Tensor { ty, .. } if *ty == TensorElementType::Float32 => {}
                ValueType::Tensor { ty, .. } => {
                    return Err(output_error(path, format!("it is {ty}")))
                }
                other => return Err(output_error(path, format!("it is a {other}"))),
            }
        }
        let zeros = vec![0f32; shape.iter().product()];
        let mut out = Vec::new();
        self.run(path, shape, &zeros, &mut out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::Normalization;
    use crate::teacher::testutil::{demo_rank4, linear, synthetic, TempDir};
    use crate::teacher::{BatchDim, Teacher, TeacherEngine};

    /// The shipped CNN teacher, input `[N, 1, 28, 28]`.
    fn cnn_path() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/teachers/cnn.onnx")
    }

    /// `n` synthetic images, normalised with Fashion-MNIST's statistics.
    fn images(n: usize) -> Vec<f32> {
        let table = Normalization::FASHION_MNIST.table();
        synthetic(n)
            .images
            .iter()
            .map(|&p| table[usize::from(p)])
            .collect()
    }

    fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
        assert_eq!(a.len(), b.len());
        a.iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f32::max)
    }

    fn both(path: &Path) -> (Teacher, Teacher) {
        let tract = Teacher::load(path).unwrap();
        let ort = Teacher::load_with(path, TeacherEngine::Ort).unwrap();
        assert_eq!(ort.engine(), TeacherEngine::Ort);
        (tract, ort)
    }

    #[test]
    fn the_project_venv_library_is_found() {
        let lib = library_path().expect("run `make setup` to install onnxruntime into .venv");
        assert!(lib.is_file(), "{}", lib.display());
    }

    #[test]
    fn cnn_teacher_matches_tract() {
        let (tract, ort) = both(&cnn_path());
        assert_eq!(ort.classes(), tract.classes());
        assert_eq!(ort.labels(), tract.labels());
        assert!(ort.labels().is_some());
        assert_eq!(ort.normalization(), tract.normalization());
        assert_eq!(ort.normalization(), Some(Normalization::FASHION_MNIST));
        assert_eq!(ort.input_name(), tract.input_name());
        assert_eq!(ort.batch(), tract.batch());
        assert_eq!(ort.image_dims(), tract.image_dims());
        assert_eq!(ort.sha256(), tract.sha256());
        let x = images(64);
        let want = tract.logits(&x, 64).unwrap();
        assert_eq!(want.len(), 64 * 10);
        let got = ort.logits(&x, 64).unwrap();
        let d = max_abs_diff(&got, &want);
        assert!(d <= 1e-4, "max abs diff {d}");
        // A batch that divides nothing, and the empty batch.
        let n = 37;
        let d = max_abs_diff(&ort.logits(&x[..n * 784], n).unwrap(), &want[..n * 10]);
        assert!(d <= 1e-4, "max abs diff {d}");
        assert!(ort.logits(&[], 0).unwrap().is_empty());
        let e = ort.logits(&[0.0; 5], 2).unwrap_err().to_string();
        assert!(e.contains("of 5 values for 2 images"), "{e}");
    }

    #[test]
    fn fixed_and_symbolic_batches_match_tract() {
        let dir = TempDir::new("ort-fixed");
        let x = images(7);
        for (name, batch) in [("one", Some(1)), ("three", Some(3)), ("dyn", None)] {
            let p = dir.write(&format!("{name}.onnx"), &demo_rank4(batch));
            let (tract, ort) = both(&p);
            let want = match batch {
                Some(k) => BatchDim::Fixed(k),
                None => BatchDim::Dynamic,
            };
            assert_eq!(ort.batch(), want);
            assert_eq!(ort.input_shape_string(), tract.input_shape_string());
            let d = max_abs_diff(&ort.logits(&x, 7).unwrap(), &tract.logits(&x, 7).unwrap());
            assert!(d <= 1e-4, "{name}: max abs diff {d}");
        }
    }

    #[test]
    fn unsupported_files_are_rejected_as_tract_rejects_them() {
        let dir = TempDir::new("ort-bad");
        let p = dir.write("rank3.onnx", &linear(3, None, 0, true, &[]));
        let e = Teacher::load_with(&p, TeacherEngine::Ort)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("[batch, classes]") && e.contains("[1, 1, 3]"),
            "{e}"
        );
        let p = dir.write(
            "labels.onnx",
            &linear(3, None, 0, false, &[("labels", "a,b")]),
        );
        let e = Teacher::load_with(&p, TeacherEngine::Ort)
            .unwrap_err()
            .to_string();
        assert!(e.contains("2 labels for an output of 3 classes"), "{e}");
        let p = dir.write("garbage.onnx", b"not onnx");
        let e = Teacher::load_with(&p, TeacherEngine::Ort).unwrap_err();
        assert!(matches!(e, TeacherError::Ort { .. }), "{e}");
    }

    #[test]
    fn a_missing_library_is_a_typed_error() {
        let dir = TempDir::new("ort-nolib");
        let lib = dir.path().join("libonnxruntime.so.0.0.0");
        let e = Teacher::load_ort(&cnn_path(), &lib).unwrap_err();
        let TeacherError::Ort { path, reason } = &e else {
            panic!("not an Ort error: {e}");
        };
        assert_eq!(path, &cnn_path());
        assert!(reason.contains(&lib.display().to_string()), "{reason}");
        assert!(
            reason.contains(DYLIB_ENV) && reason.contains("make setup"),
            "{reason}"
        );
        // A file that is not a library fails the load, without a panic (it
        // may instead be served by a library already loaded in this process).
        let fake = dir.write("libonnxruntime.so.1.99.0", b"not a library");
        if let Err(e) = Teacher::load_ort(&cnn_path(), &fake) {
            assert!(matches!(e, TeacherError::Ort { .. }), "{e}");
        }
    }

    #[test]
    fn the_wheel_layout_is_searched() {
        let dir = TempDir::new("ort-search");
        assert_eq!(wheel_library(dir.path()), None);
        let capi = dir
            .path()
            .join(".venv/lib/python3.11/site-packages/onnxruntime/capi");
        std::fs::create_dir_all(&capi).unwrap();
        std::fs::write(capi.join("libonnxruntime_providers_shared.so"), b"").unwrap();
        assert_eq!(wheel_library(dir.path()), None);
        std::fs::write(capi.join("libonnxruntime.so.1.32.0"), b"").unwrap();
        assert_eq!(
            wheel_library(dir.path()),
            Some(capi.join("libonnxruntime.so.1.32.0"))
        );
    }
}
