//! Cast: converts elements to the type of its `to` attribute.
//!
//! A Cast of a constant is folded at load time: its output is a constant
//! ([`ConstData::Cast`]) that keeps the file's elements and converts them
//! when read, so a float16 weight followed by `Cast(to=FLOAT)` (the form
//! `tinykd quantize --weights f16` writes) costs no node at run time; its
//! float32 values are written into the arena once, by `Session::new`.
//! Constant sources: float16, float32, float64, int64, int32, int8, uint8,
//! bool; constant targets: float32, int64, int32, int8, uint8.
//!
//! A Cast of a run-time value converts between float32, int8, uint8 and
//! int32, the run-time types.
//!
//! Conversions follow the ONNX rules:
//! - float → float rounds to nearest, ties to even (float16 → float32 and
//!   float32 → float32 are exact);
//! - float → integer truncates toward zero. ONNX leaves out-of-range values
//!   undefined; here they saturate to the target's range and NaN gives 0
//!   (Rust's `as`);
//! - integer → float rounds to nearest (int32 beyond 2^24 → float32);
//! - integer → integer keeps the low bits (200 as int32 → −56 as int8);
//! - bool → 0 or 1.
//!
//! `saturate` (Cast-19+) and `round_mode` (Cast-24+) only concern float8
//! targets, which are not supported, so any value of them is accepted.

use super::{Data, DataMut, NodeCtx, Op, Output};
use crate::error::{name, Error};
use crate::proto::onnx::AttributeKind;
use crate::tensor::{f16_to_f32, DType};
use crate::value::{ConstData, SmallInts, Value};

/// Element types a constant Cast reads.
const CONST_SOURCES: &[DType] = &[
    DType::F16,
    DType::F32,
    DType::F64,
    DType::I64,
    DType::I32,
    DType::I8,
    DType::U8,
    DType::Bool,
];

/// Element types a constant Cast produces.
const CONST_TARGETS: &[DType] = &[DType::F32, DType::I64, DType::I32, DType::I8, DType::U8];

pub(super) fn prepare<'a>(ctx: &NodeCtx<'_, 'a>) -> Result<(Op, Output<'a>), Error> {
    ctx.check_arity(1, 1)?;
    ctx.check_attributes(match ctx.version {
        24.. => &["to", "saturate", "round_mode"],
        19.. => &["to", "saturate"],
        _ => &["to"],
    })?;
    let to = match ctx.attr("to", AttributeKind::Int)? {
        Some(a) => DType::from_onnx(a.i),
        None => return Err(ctx.attr_err("to", "Cast needs the target type")),
    };
    let x = ctx.input(0)?;
    let unsupported_target = || Error::DType {
        value: name(ctx.node.outputs().next().unwrap_or("")),
        dtype: to,
    };
    if x.constant().is_some() {
        return fold(ctx, x, to).unwrap_or_else(|| Err(unsupported_target()));
    }
    // Not a constant: a graph input or a node's output, of a run-time type.
    if !to.is_run_time() {
        return Err(unsupported_target());
    }
    let op = if to == x.dtype { Op::Reshape } else { Op::Cast };
    Ok((op, Output::typed(to, x.shape)))
}

/// The folded Cast of constant `x`; `None` if `to` is not a type a constant
/// Cast produces.
fn fold<'a>(
    ctx: &NodeCtx<'_, 'a>,
    x: &Value<'a>,
    to: DType,
) -> Option<Result<(Op, Output<'a>), Error>> {
    let c = x.constant()?;
    let out = |constant| Output {
        dtype: to,
        shape: x.shape,
        constant: Some(constant),
    };
    if to == x.dtype {
        return Some(Ok((Op::Nop, out(c))));
    }
    if !CONST_TARGETS.contains(&to) {
        return None;
    }
    if !CONST_SOURCES.contains(&x.dtype) {
        return Some(Err(Error::DType {
            value: name(x.name),
            dtype: x.dtype,
        }));
    }
    let folded = match c {
        ConstData::Tensor(data) => ConstData::Cast {
            from: x.dtype,
            data,
        },
        ConstData::Cast { .. } => {
            return Some(Err(
                ctx.unsupported("a Cast of a constant that another Cast converted")
            ))
        }
        // The inline kinds (a `Constant` scalar, folded shape values):
        // short, and exact as f64.
        ConstData::F32(_) | ConstData::I64(_) | ConstData::Ints(_) => match small(x, to) {
            Some(c) => c,
            None => {
                return Some(Err(ctx.unsupported(
                    "a Cast of folded shape values to float32 or beyond 8 int32 values",
                )))
            }
        },
    };
    Some(Ok((Op::Nop, out(folded))))
}

/// The Cast of a short inline constant: integers become [`SmallInts`]; a
/// single value may become a float32 scalar.
fn small<'a>(x: &Value<'a>, to: DType) -> Option<ConstData<'a>> {
    let float = matches!(x.dtype, DType::F32 | DType::F64 | DType::F16);
    let mut out = [0i64; SmallInts::MAX];
    if x.len() > out.len() {
        return None;
    }
    let mut ok = true;
    x.for_each_const(|i, v| {
        let s = if float {
            Scalar::F64(v)
        } else {
            Scalar::Int(v as i64)
        };
        match convert(s, to) {
            Some(w) => out[i] = decode(to, w),
            None => ok = false,
        }
    })?;
    let values = &out[..x.len()];
    match to {
        _ if !ok => None,
        DType::F32 if x.len() == 1 => Some(ConstData::F32(f32::from_bits(values[0] as u32))),
        DType::F32 => None,
        _ => SmallInts::new(values).map(ConstData::Ints),
    }
}

/// A typed-field word of `to` as the integer it holds (for f32, its bits).
fn decode(to: DType, word: u64) -> i64 {
    match to {
        DType::F32 => i64::from(word as u32),
        DType::U8 => i64::from(word as u8),
        _ => word as i64,
    }
}

/// One element as Cast reads it, kept exact.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum Scalar {
    /// A float16 or float32 element.
    F32(f32),
    /// A float64 element.
    F64(f64),
    /// An integer or bool element.
    Int(i64),
}

/// Element `word` of type `from`: a `raw_data` element zero-extended, or a
/// typed field's word (`int32_data` holds float16 bits, int8, uint8 and
/// bool; `int64_data` int64; `float_data` and `double_data` the bits).
/// `None` for types Cast does not read.
pub(crate) fn read(from: DType, word: u64) -> Option<Scalar> {
    Some(match from {
        DType::F16 => Scalar::F32(f16_to_f32(word as u16)),
        DType::F32 => Scalar::F32(f32::from_bits(word as u32)),
        DType::F64 => Scalar::F64(f64::from_bits(word)),
        DType::I64 => Scalar::Int(word as i64),
        DType::I32 => Scalar::Int(i64::from(word as u32 as i32)),
        DType::I8 => Scalar::Int(i64::from(word as u8 as i8)),
        DType::U8 => Scalar::Int(i64::from(word as u8)),
        DType::Bool => Scalar::Int(i64::from(word != 0)),
        _ => return None,
    })
}

/// `s` converted to `to` (see the module docs), as a typed-field word: a
/// float32's bits, or the integer sign-extended. `None` for types Cast
/// does not produce.
pub(crate) fn convert(s: Scalar, to: DType) -> Option<u64> {
    let as_f64 = |s| match s {
        Scalar::F32(v) => f64::from(v),
        Scalar::F64(v) => v,
        Scalar::Int(v) => v as f64,
    };
    Some(match (to, s) {
        (DType::F32, Scalar::F32(v)) => u64::from(v.to_bits()),
        (DType::F32, Scalar::F64(v)) => u64::from((v as f32).to_bits()),
        (DType::F32, Scalar::Int(v)) => u64::from((v as f32).to_bits()),
        (DType::I64, Scalar::Int(v)) => v as u64,
        (DType::I32, Scalar::Int(v)) => v as i32 as u64,
        (DType::I8, Scalar::Int(v)) => v as i8 as u64,
        (DType::U8, Scalar::Int(v)) => u64::from(v as u8),
        // Floats to integers: toward zero, saturating, NaN to 0.
        (DType::I64, f) => as_f64(f) as i64 as u64,
        (DType::I32, f) => as_f64(f) as i32 as u64,
        (DType::I8, f) => as_f64(f) as i8 as u64,
        (DType::U8, f) => u64::from(as_f64(f) as u8),
        _ => return None,
    })
}

/// Element `word` of type `from` (see [`read`]) converted to `to` (see
/// [`convert`]).
pub(crate) fn cast_word(from: DType, word: u64, to: DType) -> Option<u64> {
    convert(read(from, word)?, to)
}

/// Conversion of one run-time element, as Rust's `as` does it (which is
/// the ONNX rule, see the module docs).
trait CastTo<T> {
    fn cast(self) -> T;
}

macro_rules! cast_to {
    ($($s:ty),*) => {
        $(
            impl CastTo<f32> for $s { #[inline] fn cast(self) -> f32 { self as f32 } }
            impl CastTo<i8> for $s { #[inline] fn cast(self) -> i8 { self as i8 } }
            impl CastTo<u8> for $s { #[inline] fn cast(self) -> u8 { self as u8 } }
            impl CastTo<i32> for $s { #[inline] fn cast(self) -> i32 { self as i32 } }
        )*
    };
}
cast_to!(f32, i8, u8, i32);

fn convert_slice<S: Copy + CastTo<T>, T>(x: &[S], y: &mut [T]) {
    for (o, &v) in y.iter_mut().zip(x) {
        *o = v.cast();
    }
}

/// Runs a run-time Cast: `x`'s elements converted into `y`'s type.
pub(super) fn eval(x: Data<'_>, y: DataMut<'_>) {
    match x {
        Data::F32(x) => super::any_type!(y, |y| convert_slice(x, y)),
        Data::I8(x) => super::any_type!(y, |y| convert_slice(x, y)),
        Data::U8(x) => super::any_type!(y, |y| convert_slice(x, y)),
        Data::I32(x) => super::any_type!(y, |y| convert_slice(x, y)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn float_to_int_truncates_toward_zero_and_saturates() {
        let f = |v: f32, to| cast_word(DType::F32, u64::from(v.to_bits()), to).unwrap() as i64;
        assert_eq!(f(2.9, DType::I32), 2);
        assert_eq!(f(-2.9, DType::I32), -2);
        assert_eq!(f(-0.5, DType::U8), 0);
        assert_eq!(f(300.0, DType::U8), 255);
        assert_eq!(f(-300.0, DType::I8) as i8, -128);
        assert_eq!(f(f32::NAN, DType::I32), 0);
        assert_eq!(f(f32::INFINITY, DType::I32), i64::from(i32::MAX));
        assert_eq!(f(1e10, DType::I64), 10_000_000_000);
    }

    #[test]
    fn int_to_int_keeps_the_low_bits() {
        let i = |v: i64, from, to| cast_word(from, v as u64, to).unwrap() as i64;
        assert_eq!(i(200, DType::I32, DType::I8), -56);
        assert_eq!(i(-1, DType::I32, DType::U8), 255);
        assert_eq!(i(0xff, DType::U8, DType::I8), -1);
        assert_eq!(i(0xff, DType::I8, DType::I32), -1); // a raw int8 byte
        assert_eq!(i(1 << 40, DType::I64, DType::I32), 0);
        assert_eq!(i(7, DType::Bool, DType::I32), 1);
    }

    #[test]
    fn to_float32() {
        let f = |from, word| f32::from_bits(cast_word(from, word, DType::F32).unwrap() as u32);
        assert_eq!(f(DType::F16, 0x3555), 0.333_251_95);
        assert_eq!(f(DType::I32, 16_777_217), 16_777_216.0); // ties to even
        assert_eq!(f(DType::F64, 0.1f64.to_bits()), 0.1f32);
        assert_eq!(f(DType::U8, 255), 255.0);
        assert!(cast_word(DType::F32, 0, DType::F16).is_none());
        assert!(cast_word(DType::Other(16), 0, DType::F32).is_none());
    }

    #[test]
    fn run_time_cast_between_the_run_time_types() {
        let mut y = [0i8; 4];
        eval(Data::F32(&[1.7, -1.7, 1e9, f32::NAN]), DataMut::I8(&mut y));
        assert_eq!(y, [1, -1, 127, 0]);
        let mut y = [0f32; 3];
        eval(Data::I32(&[-3, 16_777_217, 0]), DataMut::F32(&mut y));
        assert_eq!(y, [-3.0, 16_777_216.0, 0.0]);
        let mut y = [0u8; 2];
        eval(Data::I32(&[256 + 7, -1]), DataMut::U8(&mut y));
        assert_eq!(y, [7, 255]);
    }
}
