//! QuantizeLinear (float32 to int8/uint8) and DequantizeLinear (int8, uint8
//! or int32 to float32), per tensor or per axis, as the ONNX reference
//! computes them (see [`crate::quant::linear`]): quantize divides in f32 and
//! rounds half to even, dequantize multiplies in f32.
//!
//! Not implemented, and rejected at load: blocked quantization
//! (`block_size` > 0), the float8/int4/int2/int16 types, float16/bfloat16
//! scales or outputs, a `precision` other than float32, and QuantizeLinear
//! of int32 input.

use super::{
    check_dtype, check_zero_points, zero_points, Data, DataMut, Elem, NodeCtx, Op, Output,
    TensorRef, ZeroPoints, Q8_TYPES,
};
use crate::error::{name, Error};
use crate::quant::linear::{dequantize_linear, quantize_linear};
use crate::quant::QElem;
use crate::tensor::{DType, Shape};
use crate::value::Value;

/// The element types DequantizeLinear reads: [`Q8_TYPES`] and int32.
#[cfg(feature = "quant-u8")]
const DEQUANTIZE_TYPES: &[DType] = &[DType::I8, DType::U8, DType::I32];
/// The element types DequantizeLinear reads: [`Q8_TYPES`] and int32.
#[cfg(not(feature = "quant-u8"))]
const DEQUANTIZE_TYPES: &[DType] = &[DType::I8, DType::I32];

/// Which elements share a scale and zero point.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Granularity {
    /// One scale for the whole tensor.
    PerTensor,
    /// One scale per index of this axis.
    PerAxis(u8),
}

/// A prepared QuantizeLinear; the output type (int8 or uint8) is the
/// output buffer's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Quantize {
    /// Per tensor or per axis.
    pub granularity: Granularity,
}

/// A prepared DequantizeLinear.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Dequantize {
    /// Per tensor or per axis.
    pub granularity: Granularity,
}

pub(super) fn prepare_quantize<'a>(ctx: &NodeCtx<'_, 'a>) -> Result<(Op, Output<'a>), Error> {
    ctx.check_arity(2, 3)?;
    ctx.check_attributes(match ctx.version {
        10 => &[],
        13 => &["axis"],
        19 => &["axis", "saturate"],
        21 => &["axis", "block_size", "output_dtype", "saturate"],
        _ => &[
            "axis",
            "block_size",
            "output_dtype",
            "precision",
            "saturate",
        ],
    })?;
    // `saturate` only concerns float8 outputs, which are rejected below.
    let x = ctx.f32_input(0)?;
    check_not_blocked(ctx)?;
    if !matches!(ctx.attr_int("precision", 0)?, 0 | 1) {
        return Err(ctx.unsupported("QuantizeLinear with a precision other than float32"));
    }
    let zero_point = ctx.optional_input(2);
    let mut dtype = zero_point.map_or(DType::U8, |z| z.dtype);
    let output_dtype = ctx.attr_int("output_dtype", 0)?;
    if output_dtype != 0 {
        let wanted = DType::from_onnx(output_dtype);
        if zero_point.is_some_and(|z| z.dtype != wanted) {
            return Err(ctx.attr_err("output_dtype", "differs from the zero point's element type"));
        }
        dtype = wanted;
    }
    if !matches!(dtype, DType::I8 | DType::U8) {
        if let Some(z) = zero_point {
            check_dtype(z, Q8_TYPES)?;
        }
        return Err(ctx.unsupported(
            "quantization to types other than int8 and uint8 (float8, int4, int16, ...)",
        ));
    }
    if !Q8_TYPES.contains(&dtype) {
        // uint8 in a build without the `quant-u8` feature.
        return Err(Error::DType {
            value: name(ctx.node.outputs().next().unwrap_or("")),
            dtype,
        });
    }
    let granularity = granularity(ctx, x)?;
    if let Some(z) = zero_point {
        match dtype {
            #[cfg(feature = "quant-u8")]
            DType::U8 => check_zero_points::<u8>(ctx, z)?,
            // int8: the only other type in Q8_TYPES.
            _ => check_zero_points::<i8>(ctx, z)?,
        }
    }
    Ok((
        Op::Quantize(Quantize { granularity }),
        Output::typed(dtype, x.shape),
    ))
}

pub(super) fn prepare_dequantize<'a>(ctx: &NodeCtx<'_, 'a>) -> Result<(Op, Output<'a>), Error> {
    ctx.check_arity(2, 3)?;
    ctx.check_attributes(match ctx.version {
        10 => &[],
        13 | 19 => &["axis"],
        21 => &["axis", "block_size"],
        _ => &["axis", "block_size", "output_dtype"],
    })?;
    let x = ctx.typed_input(0, DEQUANTIZE_TYPES)?;
    check_not_blocked(ctx)?;
    if !matches!(ctx.attr_int("output_dtype", 0)?, 0 | 1) {
        return Err(ctx.unsupported("DequantizeLinear to types other than float32"));
    }
    let granularity = granularity(ctx, x)?;
    if let Some(z) = ctx.optional_input(2) {
        if z.dtype != x.dtype {
            return Err(ctx.err(z.name, "the zero point's type differs from the input's"));
        }
        match x.dtype {
            DType::I8 => check_zero_points::<i8>(ctx, z)?,
            #[cfg(feature = "quant-u8")]
            DType::U8 => check_zero_points::<u8>(ctx, z)?,
            _ => {
                // int32 has no zero point: ONNX says it is 0.
                let mut all_zero = true;
                z.for_each_const(|_, v| all_zero &= v == 0.0);
                if z.constant().is_none() || !all_zero {
                    return Err(ctx.err(z.name, "an int32 zero point must be a constant 0"));
                }
            }
        }
    }
    Ok((
        Op::Dequantize(Dequantize { granularity }),
        Output::f32(x.shape),
    ))
}

fn check_not_blocked(ctx: &NodeCtx) -> Result<(), Error> {
    match ctx.attr_int("block_size", 0)? {
        0 => Ok(()),
        b if b > 0 => Err(ctx.unsupported("blocked quantization (block_size > 0)")),
        _ => Err(ctx.attr_err("block_size", "must not be negative")),
    }
}

/// Checks the scale (input 1) and the optional zero point (input 2) of a
/// (de)quantization of `x`, and returns how they apply: one scale for all
/// elements, or a 1-D scale along `axis` (opset 13+). Constant scales must
/// be finite and positive; a run-time scale is used as given.
fn granularity(ctx: &NodeCtx, x: &Value<'_>) -> Result<Granularity, Error> {
    let scale = ctx.input(1)?;
    check_dtype(scale, &[DType::F32])?;
    check_scales(ctx, scale)?;
    if let Some(z) = ctx.optional_input(2) {
        if z.shape != scale.shape {
            return Err(ctx.err(z.name, "the zero point's shape differs from the scale's"));
        }
    }
    if scale.len() == 1 {
        return Ok(Granularity::PerTensor);
    }
    if scale.shape.rank() != 1 {
        return Err(ctx.err(
            scale.name,
            "scale must be a scalar or 1-D (blocked quantization needs block_size)",
        ));
    }
    if ctx.version < 13 {
        return Err(ctx.err(
            scale.name,
            "before opset 13 the scale must be a scalar (per tensor)",
        ));
    }
    let axis = ctx.axis("axis", ctx.attr_int("axis", 1)?, x.shape.rank())?;
    if x.shape.rank() == 0 || x.shape.dim(axis) != scale.len() {
        return Err(ctx.err(
            scale.name,
            "per-axis scale length differs from the input's size along axis",
        ));
    }
    Ok(Granularity::PerAxis(axis as u8))
}

/// Checks that every element of a constant float scale is finite and
/// positive (a run-time scale cannot be checked).
pub(super) fn check_scales(ctx: &NodeCtx, scale: &Value<'_>) -> Result<(), Error> {
    if scale.constant().is_none() {
        return Ok(());
    }
    let mut bad = None;
    let read = scale.for_each_const(|i, s| {
        if bad.is_none() {
            bad = crate::quant::check_scale("scale", s as f32)
                .err()
                .map(|e| (i, e));
        }
    });
    match (read, bad) {
        (None, _) => Err(ctx.err(scale.name, "unreadable constant")),
        (_, Some((_, e))) => Err(ctx.err(scale.name, e.reason())),
        _ => Ok(()),
    }
}

/// Calls `f(range, c)` for each run of elements sharing scale `c`.
fn for_each_run(
    granularity: Granularity,
    shape: &Shape,
    len: usize,
    mut f: impl FnMut(core::ops::Range<usize>, usize),
) {
    match granularity {
        Granularity::PerTensor => f(0..len, 0),
        Granularity::PerAxis(axis) => {
            let axis = usize::from(axis);
            let channels = shape.dim(axis);
            let inner = shape.product(axis + 1..shape.rank());
            let outer = shape.product(0..axis);
            for o in 0..outer {
                for c in 0..channels {
                    let start = (o * channels + c) * inner;
                    if start + inner > len {
                        return; // never: `len` is the shape's element count
                    }
                    f(start..start + inner, c);
                }
            }
        }
    }
}

impl Quantize {
    pub(super) fn eval(
        &self,
        x: TensorRef<'_>,
        scale: Option<TensorRef<'_>>,
        zero_point: Option<TensorRef<'_>>,
        y: DataMut<'_>,
    ) {
        let (Data::F32(xs), Some(scale)) = (x.data, scale.and_then(|s| s.data.get::<f32>())) else {
            return;
        };
        let g = self.granularity;
        super::q8_mut!(y, |ys| quantize(
            g,
            &x.shape,
            xs,
            scale,
            zero_points(zero_point),
            ys
        ));
    }
}

fn quantize<T: QElem + Elem>(
    g: Granularity,
    shape: &Shape,
    x: &[f32],
    scale: &[f32],
    zero_point: ZeroPoints<'_, T>,
    y: &mut [T],
) {
    for_each_run(g, shape, x.len().min(y.len()), |run, c| {
        let (s, z) = (scale.get(c).copied().unwrap_or(1.0), zero_point.at(c));
        for (o, &v) in y[run.clone()].iter_mut().zip(&x[run]) {
            *o = quantize_linear(v, s, z);
        }
    });
}

impl Dequantize {
    pub(super) fn eval(
        &self,
        x: TensorRef<'_>,
        scale: Option<TensorRef<'_>>,
        zero_point: Option<TensorRef<'_>>,
        y: DataMut<'_>,
    ) {
        let (DataMut::F32(y), Some(scale)) = (y, scale.and_then(|s| s.data.get::<f32>())) else {
            return;
        };
        let g = self.granularity;
        match x.data {
            Data::I8(xs) => dequantize(g, &x.shape, xs, scale, zero_points(zero_point), y),
            #[cfg(feature = "quant-u8")]
            Data::U8(xs) => dequantize(g, &x.shape, xs, scale, zero_points(zero_point), y),
            Data::I32(xs) => for_each_run(g, &x.shape, xs.len().min(y.len()), |run, c| {
                // The zero point is 0 (checked at load); numpy's
                // `x.astype(float32) * scale`.
                let s = scale.get(c).copied().unwrap_or(1.0);
                for (o, &v) in y[run.clone()].iter_mut().zip(&xs[run]) {
                    *o = v as f32 * s;
                }
            }),
            // float32, and uint8 without `quant-u8`: rejected at load.
            _ => {}
        }
    }
}

fn dequantize<T: QElem + Elem>(
    g: Granularity,
    shape: &Shape,
    x: &[T],
    scale: &[f32],
    zero_point: ZeroPoints<'_, T>,
    y: &mut [f32],
) {
    for_each_run(g, shape, x.len().min(y.len()), |run, c| {
        let (s, z) = (scale.get(c).copied().unwrap_or(1.0), zero_point.at(c));
        for (o, &v) in y[run.clone()].iter_mut().zip(&x[run]) {
            *o = dequantize_linear(v, s, z);
        }
    });
}
