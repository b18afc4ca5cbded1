//! Values of a graph: graph inputs, constants (initializers and `Constant`
//! nodes, read in place from the file) and node outputs.

use crate::proto::onnx::{TensorData, TypedWords};
use crate::tensor::{DType, Shape};

/// Where a value's data comes from.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum ValueKind<'a> {
    /// The caller passes it to `Session::run` (graph input number `n`).
    Input(u16),
    /// Constant data inside the model file (or bound by the caller at load).
    Constant(ConstData<'a>),
    /// Produced by node number `n` at run time.
    Computed(u16),
}

/// Constant elements, still in the file's encoding.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum ConstData<'a> {
    /// A TensorProto payload.
    Tensor(TensorData<'a>),
    /// A single f32 (`Constant` node `value_float`).
    F32(f32),
    /// A single i64 (`Constant` node `value_int`).
    I64(i64),
    /// A short integer tensor computed at load time (shape arithmetic).
    Ints(SmallInts),
    /// A TensorProto payload of element type `from`, converted to the
    /// value's type as ONNX `Cast` converts ([`crate::ops::cast`]) whenever
    /// it is read: a `Cast` of a constant folded at load time, such as a
    /// float16 weight widened to float32. Never readable in place, so a
    /// run-time value of this kind is staged in the arena by `Session::new`.
    /// Made by the `op-cast` family only.
    #[cfg(feature = "op-cast")]
    Cast {
        /// The element type stored in the file.
        from: DType,
        /// The stored elements.
        data: TensorData<'a>,
    },
}

impl ConstData<'_> {
    /// Whether the elements are converted when read: a folded Cast
    /// ([`ConstData::Cast`]), which the file does not hold as such.
    // A match rather than `matches!`, so that the arm can be compiled out.
    #[allow(clippy::match_like_matches_macro)]
    pub fn is_converted(&self) -> bool {
        match self {
            #[cfg(feature = "op-cast")]
            ConstData::Cast { .. } => true,
            _ => false,
        }
    }
}

/// Up to 8 integers held inline: the result of folding shape computations
/// (`Shape` → `Gather` → `Concat` → `Reshape`) at load time. Dims and shape
/// arithmetic fit in i32; anything larger is not folded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SmallInts {
    values: [i32; 8],
    len: u8,
}

impl SmallInts {
    /// Capacity.
    pub const MAX: usize = 8;

    /// Copies `values`; `None` if there are more than 8 or one exceeds i32.
    pub fn new(values: &[i64]) -> Option<Self> {
        if values.len() > Self::MAX {
            return None;
        }
        let mut out = SmallInts {
            values: [0; 8],
            len: values.len() as u8,
        };
        for (slot, &v) in out.values.iter_mut().zip(values) {
            *slot = i32::try_from(v).ok()?;
        }
        Some(out)
    }

    /// The values, widened.
    pub fn iter(&self) -> impl Iterator<Item = i64> + '_ {
        self.values[..usize::from(self.len)]
            .iter()
            .map(|&v| i64::from(v))
    }
}

/// One value of the graph: its name, type and static shape.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Value<'a> {
    /// The ONNX value name.
    pub name: &'a str,
    /// Element type.
    pub dtype: DType,
    /// Static shape (symbolic dims already bound).
    pub shape: Shape,
    /// Where the data comes from.
    pub kind: ValueKind<'a>,
}

impl<'a> Value<'a> {
    /// Element count (validated not to overflow when the value was created).
    pub fn len(&self) -> usize {
        self.shape.num_elements().unwrap_or(0)
    }

    /// Whether the value has no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The constant data, if the value is a constant.
    pub fn constant(&self) -> Option<ConstData<'a>> {
        match self.kind {
            ValueKind::Constant(c) => Some(c),
            _ => None,
        }
    }

    /// Reads constant element `i` as f64 (exact for f32 and for integers up
    /// to 2^53); `None` if not constant, out of range or undecodable.
    pub fn const_element(&self, i: usize) -> Option<f64> {
        let data = self.constant()?;
        if i >= self.len() {
            return None;
        }
        match data {
            ConstData::F32(v) => Some(f64::from(v)),
            ConstData::I64(v) => Some(v as f64),
            ConstData::Ints(ints) => ints.iter().nth(i).map(|v| v as f64),
            ConstData::Tensor(TensorData::Raw(bytes)) => {
                let size = self.dtype.size();
                decode_le(self.dtype, bytes.get(i * size..(i + 1) * size)?)
            }
            ConstData::Tensor(TensorData::Typed {
                field,
                width,
                message,
            }) => decode_word(
                self.dtype,
                TypedWords::new(message, field, width).nth(i)?.ok()?,
            ),
            ConstData::Tensor(TensorData::Empty) => None,
            #[cfg(feature = "op-cast")]
            ConstData::Cast { from, data } => {
                let word = words(from, data).nth(i)??;
                decode_word(
                    self.dtype,
                    crate::ops::cast::cast_word(from, word, self.dtype)?,
                )
            }
        }
    }

    /// Calls `f(i, element)` for every element of a constant, in order and
    /// in one pass (each as [`Value::const_element`] reads it). `None`, after
    /// the elements before it, if an element cannot be decoded; `None` at
    /// once if the value is not a constant.
    pub fn for_each_const(&self, mut f: impl FnMut(usize, f64)) -> Option<()> {
        let n = self.len();
        match self.constant()? {
            ConstData::F32(v) => f(0, f64::from(v)),
            ConstData::I64(v) => f(0, v as f64),
            ConstData::Ints(ints) => ints.iter().enumerate().for_each(|(i, v)| f(i, v as f64)),
            ConstData::Tensor(TensorData::Raw(bytes)) => {
                let size = self.dtype.size();
                if size == 0 || bytes.len() / size < n {
                    return None;
                }
                for (i, b) in bytes.chunks_exact(size).take(n).enumerate() {
                    f(i, decode_le(self.dtype, b)?);
                }
            }
            ConstData::Tensor(TensorData::Typed {
                field,
                width,
                message,
            }) => {
                let mut count = 0;
                for (i, w) in TypedWords::new(message, field, width).take(n).enumerate() {
                    f(i, decode_word(self.dtype, w.ok()?)?);
                    count += 1;
                }
                if count != n {
                    return None;
                }
            }
            ConstData::Tensor(TensorData::Empty) if n == 0 => {}
            ConstData::Tensor(TensorData::Empty) => return None,
            #[cfg(feature = "op-cast")]
            ConstData::Cast { from, data } => {
                let mut count = 0;
                for (i, w) in words(from, data).take(n).enumerate() {
                    let word = crate::ops::cast::cast_word(from, w?, self.dtype)?;
                    f(i, decode_word(self.dtype, word)?);
                    count += 1;
                }
                if count != n {
                    return None;
                }
            }
        }
        Some(())
    }

    /// Reads an integer constant (int64 or int32) into `out`; returns the
    /// count, or `None` if not an integer constant or longer than `out`.
    pub fn const_ints(&self, out: &mut [i64]) -> Option<usize> {
        if !matches!(self.dtype, DType::I64 | DType::I32) {
            return None;
        }
        let n = self.len();
        if n > out.len() {
            return None;
        }
        match self.constant()? {
            ConstData::I64(v) => out[0] = v,
            ConstData::Tensor(TensorData::Typed {
                field,
                width,
                message,
            }) => {
                for (slot, w) in out[..n]
                    .iter_mut()
                    .zip(TypedWords::new(message, field, width))
                {
                    *slot = if self.dtype == DType::I32 {
                        w.ok()? as u32 as i32 as i64
                    } else {
                        w.ok()? as i64
                    };
                }
            }
            _ => {
                for (i, slot) in out[..n].iter_mut().enumerate() {
                    *slot = self.const_element(i)? as i64;
                }
            }
        }
        Some(n)
    }

    /// Reads a scalar (one-element) float constant.
    pub fn const_scalar_f32(&self) -> Option<f32> {
        if self.len() != 1 || self.dtype != DType::F32 {
            return None;
        }
        self.const_element(0).map(|v| v as f32)
    }
}

/// The elements of a TensorProto payload of `dtype`, in order, each as one
/// word: a `raw_data` element's little-endian bytes zero-extended, or a
/// typed field's word (`None` for an undecodable one). Either way
/// [`crate::ops::cast::read`] interprets it.
#[cfg(feature = "op-cast")]
pub(crate) fn words<'d>(
    dtype: DType,
    data: TensorData<'d>,
) -> impl Iterator<Item = Option<u64>> + 'd {
    let size = dtype.size();
    let raw = match data {
        TensorData::Raw(bytes) if size > 0 => Some(bytes.chunks_exact(size).map(|c| {
            let mut word = [0u8; 8];
            word[..c.len()].copy_from_slice(c);
            Some(u64::from_le_bytes(word))
        })),
        _ => None,
    };
    let typed = match data {
        TensorData::Typed {
            field,
            width,
            message,
        } => Some(TypedWords::new(message, field, width).map(Result::ok)),
        _ => None,
    };
    raw.into_iter().flatten().chain(typed.into_iter().flatten())
}

/// One little-endian element of `dtype`, widened to f64.
fn decode_le(dtype: DType, b: &[u8]) -> Option<f64> {
    Some(match (dtype, b) {
        (DType::F32, &[b0, b1, b2, b3]) => f64::from(f32::from_le_bytes([b0, b1, b2, b3])),
        (DType::F64, &[b0, b1, b2, b3, b4, b5, b6, b7]) => {
            f64::from_le_bytes([b0, b1, b2, b3, b4, b5, b6, b7])
        }
        (DType::I64, &[b0, b1, b2, b3, b4, b5, b6, b7]) => {
            i64::from_le_bytes([b0, b1, b2, b3, b4, b5, b6, b7]) as f64
        }
        (DType::I32, &[b0, b1, b2, b3]) => f64::from(i32::from_le_bytes([b0, b1, b2, b3])),
        (DType::F16, &[b0, b1]) => {
            f64::from(crate::tensor::f16_to_f32(u16::from_le_bytes([b0, b1])))
        }
        (DType::I8, &[b0]) => f64::from(b0 as i8),
        (DType::U8 | DType::Bool, &[b0]) => f64::from(b0),
        _ => return None,
    })
}

/// One word of a typed data field (`float_data`, `int32_data`, ...) of
/// `dtype`, widened to f64.
fn decode_word(dtype: DType, word: u64) -> Option<f64> {
    Some(match dtype {
        DType::F32 => f64::from(f32::from_bits(word as u32)),
        DType::F16 => f64::from(crate::tensor::f16_to_f32(word as u16)),
        DType::F64 => f64::from_bits(word),
        DType::I64 => word as i64 as f64,
        DType::I32 | DType::I8 => f64::from(word as u32 as i32),
        DType::U8 | DType::Bool => word as f64,
        _ => return None,
    })
}
