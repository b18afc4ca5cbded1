//! Element types and static shapes.

use core::fmt;

/// Largest tensor rank the runtime accepts.
pub const MAX_RANK: usize = 8;

/// ONNX `TensorProto.DataType`, as far as the runtime names them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DType {
    /// FLOAT (1).
    F32,
    /// UINT8 (2).
    U8,
    /// INT8 (3).
    I8,
    /// INT32 (6).
    I32,
    /// INT64 (7).
    I64,
    /// BOOL (9).
    Bool,
    /// FLOAT16 (10).
    F16,
    /// DOUBLE (11).
    F64,
    /// Any other code (saturated to `u16`).
    Other(u16),
}

impl DType {
    /// Maps an ONNX `data_type` / `elem_type` code.
    pub fn from_onnx(code: i64) -> DType {
        match code {
            1 => DType::F32,
            2 => DType::U8,
            3 => DType::I8,
            6 => DType::I32,
            7 => DType::I64,
            9 => DType::Bool,
            10 => DType::F16,
            11 => DType::F64,
            other => DType::Other(u16::try_from(other).unwrap_or(u16::MAX)),
        }
    }

    /// Bytes per element (0 for types the runtime cannot hold).
    pub fn size(self) -> usize {
        match self {
            DType::U8 | DType::I8 | DType::Bool => 1,
            DType::F16 => 2,
            DType::F32 | DType::I32 => 4,
            DType::I64 | DType::F64 => 8,
            DType::Other(_) => 0,
        }
    }

    /// Whether values of this type can exist at run time: live in the
    /// arena, flow between nodes, be graph inputs and outputs (float32,
    /// int8, uint8, int32). The others are load-time constants only.
    pub fn is_run_time(self) -> bool {
        matches!(self, DType::F32 | DType::I8 | DType::U8 | DType::I32)
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DType::F32 => f.write_str("float32"),
            DType::U8 => f.write_str("uint8"),
            DType::I8 => f.write_str("int8"),
            DType::I32 => f.write_str("int32"),
            DType::I64 => f.write_str("int64"),
            DType::Bool => f.write_str("bool"),
            DType::F16 => f.write_str("float16"),
            DType::F64 => f.write_str("float64"),
            DType::Other(code) => write!(f, "onnx type {code}"),
        }
    }
}

/// A static shape of rank ≤ [`MAX_RANK`].
#[derive(Clone, Copy, PartialEq, Eq, Default)]
pub struct Shape {
    dims: [u32; MAX_RANK],
    rank: u8,
}

impl Shape {
    /// The shape of a scalar (rank 0, one element).
    pub const SCALAR: Shape = Shape {
        dims: [0; MAX_RANK],
        rank: 0,
    };

    /// Builds a shape; `None` if the rank exceeds [`MAX_RANK`] or a dim exceeds `u32`.
    pub fn new(dims: &[usize]) -> Option<Shape> {
        if dims.len() > MAX_RANK {
            return None;
        }
        let mut s = Shape {
            dims: [0; MAX_RANK],
            rank: dims.len() as u8,
        };
        for (slot, &d) in s.dims.iter_mut().zip(dims) {
            *slot = u32::try_from(d).ok()?;
        }
        Some(s)
    }

    /// Number of dimensions.
    pub fn rank(&self) -> usize {
        usize::from(self.rank)
    }

    /// Size of dimension `i`.
    pub fn dim(&self, i: usize) -> usize {
        self.dims[i] as usize
    }

    /// The dimensions, as a fixed array (`rank()` of them meaningful) for
    /// kernels that take `&[usize]`.
    pub fn dims(&self) -> ([usize; MAX_RANK], usize) {
        let mut out = [0usize; MAX_RANK];
        for (o, &d) in out.iter_mut().zip(&self.dims[..self.rank()]) {
            *o = d as usize;
        }
        (out, self.rank())
    }

    /// Iterates the dimensions.
    pub fn iter(&self) -> impl DoubleEndedIterator<Item = usize> + ExactSizeIterator + '_ {
        self.dims[..self.rank()].iter().map(|&d| d as usize)
    }

    /// Element count, `None` on overflow.
    pub fn num_elements(&self) -> Option<usize> {
        self.iter().try_fold(1usize, |acc, d| acc.checked_mul(d))
    }

    /// Element count if the shape is within `limit`: the count and also the
    /// product of the non-zero dims are at most `limit`. The second bound
    /// matters for empty tensors, whose other dims could otherwise be huge:
    /// every product of a subset of a bounded shape's dims is itself bounded,
    /// so ops and kernels can multiply dims without overflow or long loops.
    pub fn num_elements_within(&self, limit: usize) -> Option<usize> {
        let volume = self
            .iter()
            .try_fold(1usize, |acc, d| acc.checked_mul(d.max(1)))?;
        if volume > limit {
            return None;
        }
        self.num_elements()
    }

    /// Product of dims in `range` (the caller checked the count fits).
    pub fn product(&self, range: core::ops::Range<usize>) -> usize {
        self.dims[range].iter().map(|&d| d as usize).product()
    }
}

impl fmt::Debug for Shape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl fmt::Display for Shape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[")?;
        for (i, d) in self.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{d}")?;
        }
        f.write_str("]")
    }
}
