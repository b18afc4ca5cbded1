//! Host-side tensors and their files: NumPy `.npy` (what users pass to
//! `infer`) and ONNX `TensorProto` `.pb` (the ONNX test-data format).

use npyz::WriterBuilder;
use std::io::Write;
use std::path::{Path, PathBuf};
use tinykd_runtime::model::check_tensor;
use tinykd_runtime::proto::onnx::{TensorData, TensorView, TypedWords};
use tinykd_runtime::DType;

/// Errors reading or writing tensor files.
#[derive(Debug, thiserror::Error)]
pub enum TensorFileError {
    /// The file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The file's content is not a tensor this tool understands.
    #[error("{path}: {reason}")]
    Format {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

/// Elements of a host tensor.
#[derive(Clone, Debug, PartialEq)]
pub enum Elements {
    /// float32.
    F32(Vec<f32>),
    /// int64.
    I64(Vec<i64>),
    /// int32.
    I32(Vec<i32>),
    /// int8.
    I8(Vec<i8>),
    /// uint8.
    U8(Vec<u8>),
    /// bool.
    Bool(Vec<bool>),
    /// float64.
    F64(Vec<f64>),
    /// float16 (ONNX test data; the runtime takes it as a load-time
    /// constant only, e.g. the input of a Cast).
    F16(Vec<half::f16>),
}

/// A named tensor held on the host.
#[derive(Clone, Debug, PartialEq)]
pub struct HostTensor {
    /// Name (the ONNX value name for `.pb` files; may be empty).
    pub name: String,
    /// Dimensions.
    pub shape: Vec<usize>,
    /// Elements, row-major.
    pub elements: Elements,
}

impl HostTensor {
    /// An f32 tensor.
    pub fn f32(name: impl Into<String>, shape: Vec<usize>, data: Vec<f32>) -> Self {
        HostTensor {
            name: name.into(),
            shape,
            elements: Elements::F32(data),
        }
    }

    /// The element type.
    pub fn dtype(&self) -> DType {
        match self.elements {
            Elements::F32(_) => DType::F32,
            Elements::I64(_) => DType::I64,
            Elements::I32(_) => DType::I32,
            Elements::I8(_) => DType::I8,
            Elements::U8(_) => DType::U8,
            Elements::Bool(_) => DType::Bool,
            Elements::F64(_) => DType::F64,
            Elements::F16(_) => DType::F16,
        }
    }

    /// The f32 elements, if the tensor is f32.
    pub fn as_f32(&self) -> Option<&[f32]> {
        match &self.elements {
            Elements::F32(v) => Some(v),
            _ => None,
        }
    }

    /// Elements as little-endian bytes (the ONNX raw_data encoding).
    pub fn to_le_bytes(&self) -> Vec<u8> {
        match &self.elements {
            Elements::F32(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            Elements::I64(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            Elements::I32(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            Elements::I8(v) => v.iter().map(|&x| x as u8).collect(),
            Elements::U8(v) => v.clone(),
            Elements::Bool(v) => v.iter().map(|&x| u8::from(x)).collect(),
            Elements::F64(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            Elements::F16(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        }
    }

    /// Reads a `.npy` file (f32, f64, i64, i32, i8, u8 or bool).
    pub fn read_npy(path: &Path) -> Result<Self, TensorFileError> {
        let bytes = std::fs::read(path).map_err(|source| TensorFileError::Io {
            path: path.into(),
            source,
        })?;
        let format = |reason: String| TensorFileError::Format {
            path: path.into(),
            reason,
        };
        let npy =
            npyz::NpyFile::new(&bytes[..]).map_err(|e| format(format!("not a .npy file: {e}")))?;
        if npy.order() == npyz::Order::Fortran {
            return Err(format(
                "Fortran-ordered arrays are not supported; save with np.ascontiguousarray".into(),
            ));
        }
        let shape: Vec<usize> = npy.shape().iter().map(|&d| d as usize).collect();
        let descr = match npy.dtype() {
            npyz::DType::Plain(t) => t,
            other => return Err(format(format!("unsupported dtype {other:?}"))),
        };
        let bad = |e: std::io::Error| format(format!("cannot read elements: {e}"));
        let elements = match (descr.type_char(), descr.size_field()) {
            (npyz::TypeChar::Float, 4) => Elements::F32(npy.into_vec().map_err(bad)?),
            (npyz::TypeChar::Float, 8) => Elements::F64(npy.into_vec().map_err(bad)?),
            (npyz::TypeChar::Int, 8) => Elements::I64(npy.into_vec().map_err(bad)?),
            (npyz::TypeChar::Int, 4) => Elements::I32(npy.into_vec().map_err(bad)?),
            (npyz::TypeChar::Int, 1) => Elements::I8(npy.into_vec().map_err(bad)?),
            (npyz::TypeChar::Uint, 1) => Elements::U8(npy.into_vec().map_err(bad)?),
            (npyz::TypeChar::Bool, 1) => Elements::Bool(npy.into_vec().map_err(bad)?),
            _ => return Err(format(format!("unsupported dtype '{descr}'"))),
        };
        Ok(HostTensor {
            name: String::new(),
            shape,
            elements,
        })
    }

    /// Writes an f32 tensor as `.npy`, atomically (temp file + rename).
    pub fn write_npy(&self, path: &Path) -> Result<(), TensorFileError> {
        let data = self.as_f32().ok_or_else(|| TensorFileError::Format {
            path: path.into(),
            reason: "only float32 outputs can be written".into(),
        })?;
        let mut buf = Vec::new();
        {
            let shape: Vec<u64> = self.shape.iter().map(|&d| d as u64).collect();
            let io = |source| TensorFileError::Io {
                path: path.into(),
                source,
            };
            let mut w = npyz::WriteOptions::<f32>::new()
                .default_dtype()
                .shape(&shape)
                .writer(&mut buf)
                .begin_nd()
                .map_err(io)?;
            w.extend(data.iter().copied()).map_err(io)?;
            w.finish().map_err(io)?;
        }
        write_atomically(path, &buf)
    }

    /// Reads an ONNX `TensorProto` file (the `input_N.pb` of ONNX test data).
    pub fn read_pb(path: &Path) -> Result<Self, TensorFileError> {
        let bytes = std::fs::read(path).map_err(|source| TensorFileError::Io {
            path: path.into(),
            source,
        })?;
        let format = |reason: String| TensorFileError::Format {
            path: path.into(),
            reason,
        };
        let view = TensorView::parse(&bytes)
            .map_err(|e| format(tinykd_runtime::Error::from(e).to_string()))?;
        let (dtype, shape) = check_tensor(&view).map_err(|e| format(e.to_string()))?;
        let count = shape.num_elements().unwrap_or(0);
        let words: Vec<u64> = match view.data {
            TensorData::Raw(raw) => {
                let size = dtype.size();
                raw.chunks_exact(size)
                    .map(|c| {
                        let mut w = [0u8; 8];
                        w[..size].copy_from_slice(c);
                        u64::from_le_bytes(w)
                    })
                    .collect()
            }
            TensorData::Typed {
                field,
                width,
                message,
            } => TypedWords::new(message, field, width)
                .collect::<Result<_, _>>()
                .map_err(|e| format(format!("bad typed data: {e:?}")))?,
            TensorData::Empty => Vec::new(),
        };
        if words.len() != count {
            return Err(format("element count does not match dims".into()));
        }
        let elements = match dtype {
            DType::F32 => Elements::F32(words.iter().map(|&w| f32::from_bits(w as u32)).collect()),
            DType::F64 => Elements::F64(words.iter().map(|&w| f64::from_bits(w)).collect()),
            DType::I64 => Elements::I64(words.iter().map(|&w| w as i64).collect()),
            DType::I32 => Elements::I32(words.iter().map(|&w| w as u32 as i32).collect()),
            DType::I8 => Elements::I8(words.iter().map(|&w| w as u8 as i8).collect()),
            DType::U8 => Elements::U8(words.iter().map(|&w| w as u8).collect()),
            DType::Bool => Elements::Bool(words.iter().map(|&w| w != 0).collect()),
            DType::F16 => Elements::F16(
                words
                    .iter()
                    .map(|&w| half::f16::from_bits(w as u16))
                    .collect(),
            ),
            other => return Err(format(format!("unsupported element type {other}"))),
        };
        Ok(HostTensor {
            name: view.name.to_string(),
            shape: shape.iter().collect(),
            elements,
        })
    }
}

/// Writes `bytes` to `path` through a temporary file in the same folder and
/// a rename, so a reader never sees a half-written file.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), TensorFileError> {
    let io = |source| TensorFileError::Io {
        path: path.into(),
        source,
    };
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{file_name}.{}.tmp", std::process::id()));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn npy_round_trip() {
        let dir = std::env::temp_dir().join(format!("tinykd-npy-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("x.npy");
        let t = HostTensor::f32("", vec![2, 3], vec![1.0, -2.5, 3.0, 0.0, 1e-7, f32::MAX]);
        t.write_npy(&path).unwrap();
        assert_eq!(HostTensor::read_npy(&path).unwrap(), t);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn npy_errors_name_the_file() {
        let dir = std::env::temp_dir().join(format!("tinykd-npy-bad-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("bad.npy");
        std::fs::write(&path, b"not numpy").unwrap();
        let err = HostTensor::read_npy(&path).unwrap_err().to_string();
        assert!(err.contains("bad.npy"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
