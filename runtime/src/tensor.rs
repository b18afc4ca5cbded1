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

/// Widens IEEE 754 binary16 bits to the f32 of the same value, exactly:
/// normal numbers, subnormals (all normal in f32), signed zeros and
/// infinities. A NaN keeps its sign and its 10 payload bits (the top of
/// f32's 23) and comes out quiet, as IEEE 754 conversion, x86 `vcvtph2ps`
/// and the `half` crate make it.
pub const fn f16_to_f32(bits: u16) -> f32 {
    let sign = ((bits & 0x8000) as u32) << 16;
    let exponent = ((bits >> 10) & 0x1f) as u32;
    let mantissa = (bits & 0x3ff) as u32;
    let out = if exponent == 0x1f {
        if mantissa == 0 {
            sign | 0x7f80_0000
        } else {
            sign | 0x7fc0_0000 | (mantissa << 13)
        }
    } else if exponent != 0 {
        // Rebias: 2^(e - 15) is 2^((e + 112) - 127).
        sign | ((exponent + 112) << 23) | (mantissa << 13)
    } else if mantissa == 0 {
        sign
    } else {
        // mantissa × 2^-24: shift its top bit into the implicit position
        // (bit 10); the value is then 1.f × 2^(-14 - shift).
        let shift = mantissa.leading_zeros() - 21;
        sign | ((113 - shift) << 23) | (((mantissa << shift) & 0x3ff) << 13)
    };
    f32::from_bits(out)
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

#[cfg(test)]
mod tests {
    use super::f16_to_f32;

    /// 2^k by repeated exact doubling or halving.
    fn pow2(k: i32) -> f32 {
        let step = if k < 0 { 0.5 } else { 2.0 };
        (0..k.abs()).fold(1.0f32, |x, _| x * step)
    }

    /// The value of binary16 `bits` by its definition, in f32 arithmetic
    /// (every step is exact): (−1)^s × 2^(e−15) × (1 + m/1024), or
    /// (−1)^s × 2^−14 × m/1024 when e = 0.
    fn reference(bits: u16) -> f32 {
        let sign = if bits & 0x8000 != 0 { -1.0f32 } else { 1.0 };
        let e = i32::from((bits >> 10) & 0x1f);
        let m = f32::from(bits & 0x3ff);
        match e {
            0 => sign * m * pow2(-24),
            31 if m == 0.0 => sign * f32::INFINITY,
            31 => f32::NAN,
            _ => sign * (1024.0 + m) * pow2(e - 25),
        }
    }

    #[test]
    fn every_f16_bit_pattern_widens_exactly() {
        for bits in 0..=u16::MAX {
            let got = f16_to_f32(bits);
            let want = reference(bits);
            if want.is_nan() {
                let g = got.to_bits();
                assert!(got.is_nan(), "{bits:#06x}: {got} is not NaN");
                assert_eq!(g >> 31, u32::from(bits >> 15), "{bits:#06x}: NaN sign");
                // The payload is kept, with the quiet bit (the top one) set.
                let payload = u32::from(bits & 0x3ff) | 0x200;
                assert_eq!((g >> 13) & 0x3ff, payload, "{bits:#06x}: payload");
                assert_eq!(g & 0x1fff, 0, "{bits:#06x}: low bits");
            } else {
                assert_eq!(
                    got.to_bits(),
                    want.to_bits(),
                    "{bits:#06x}: {got} vs {want}"
                );
            }
        }
    }

    #[test]
    fn known_f16_values() {
        let table: &[(u16, u32)] = &[
            (0x0000, 0x0000_0000),          // +0
            (0x8000, 0x8000_0000),          // −0
            (0x3c00, 1.0f32.to_bits()),     // 1
            (0xc000, (-2.0f32).to_bits()),  // −2
            (0x3555, 0x3eaa_a000),          // 0.333251953125
            (0x7bff, 65504.0f32.to_bits()), // largest finite
            (0xfbff, (-65504.0f32).to_bits()),
            (0x0400, 0x3880_0000), // smallest normal, 2^-14
            (0x03ff, 0x387f_c000), // largest subnormal
            (0x0001, 0x3380_0000), // smallest subnormal, 2^-24
            (0x8001, 0xb380_0000),
            (0x0200, 0x3800_0000), // 2^-15
            (0x7c00, 0x7f80_0000), // +inf
            (0xfc00, 0xff80_0000), // −inf
            (0x7e00, 0x7fc0_0000), // the canonical quiet NaN
            (0xfe00, 0xffc0_0000),
            (0x7d00, 0x7fe0_0000), // a signalling NaN comes out quiet
            (0x7c01, 0x7fc0_2000), // payload kept
        ];
        for &(h, f) in table {
            assert_eq!(f16_to_f32(h).to_bits(), f, "{h:#06x}");
        }
    }
}
