//! ConvInteger and MatMulInteger: int8/uint8 inputs with optional zero
//! points, raw int32 accumulators out (`Σ (x − zx)·(w − zw)`, wrapping as
//! int32 arithmetic does, which ONNX allows).
//!
//! The weight (or `b`) zero point may be per tensor or per output channel
//! (per column); the input (or `a`) zero point must be per tensor: a
//! per-row `a_zero_point` of MatMulInteger is rejected as unsupported.

use super::conv::{self, ATTRIBUTES};
use super::matmul::{self, MatMul};
use super::{
    check_zero_points, q8, zero_points, DataMut, Elem, NodeCtx, Op, Output, TensorRef, ZeroPoints,
    Q8_TYPES,
};
use crate::error::Error;
use crate::kernels::generic::conv::ConvGeometry;
use crate::kernels::generic::conv_i8::conv2d_i8_acc;
use crate::kernels::generic::gemm_i8::gemm_i8_acc;
use crate::quant::QElem;
use crate::tensor::{DType, Shape};
use crate::value::Value;

/// A prepared ConvInteger.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvInteger {
    /// Shapes, strides, pads, groups.
    pub geometry: ConvGeometry,
}

#[cfg(feature = "op-conv")]
pub(super) fn prepare_conv<'a>(ctx: &NodeCtx<'_, 'a>) -> Result<(Op, Output<'a>), Error> {
    ctx.check_arity(2, 4)?;
    ctx.check_attributes(ATTRIBUTES)?;
    let x = ctx.typed_input(0, Q8_TYPES)?;
    let w = ctx.typed_input(1, Q8_TYPES)?;
    let (geometry, shape) = conv::geometry(ctx, x, w)?;
    check_zero_point(ctx, 2, x, 1, "a per-channel x_zero_point")?;
    check_zero_point(ctx, 3, w, geometry.out_channels, "")?;
    Ok((
        Op::ConvInteger(ConvInteger { geometry }),
        Output::typed(DType::I32, shape),
    ))
}

#[cfg(feature = "op-gemm")]
pub(super) fn prepare_matmul<'a>(ctx: &NodeCtx<'_, 'a>) -> Result<(Op, Output<'a>), Error> {
    ctx.check_arity(2, 4)?;
    ctx.check_attributes(&[])?;
    let a = ctx.typed_input(0, Q8_TYPES)?;
    let b = ctx.typed_input(1, Q8_TYPES)?;
    let (matmul, shape) = matmul::shapes(ctx, a, b)?;
    check_zero_point(ctx, 2, a, 1, "a per-row a_zero_point")?;
    check_zero_point(
        ctx,
        3,
        b,
        matmul.n,
        "a b_zero_point that is not per tensor or per column",
    )?;
    Ok((Op::MatMulInteger(matmul), Output::typed(DType::I32, shape)))
}

/// Checks optional zero point input `i` of tensor `of`: its type, and one
/// entry or (as a 1-D tensor) `channels` entries. `unsupported` names any
/// other layout, which ONNX allows but the kernels do not take.
fn check_zero_point(
    ctx: &NodeCtx,
    i: usize,
    of: &Value<'_>,
    channels: usize,
    unsupported: &'static str,
) -> Result<(), Error> {
    let Some(z) = ctx.optional_input(i) else {
        return Ok(());
    };
    if z.dtype != of.dtype {
        return Err(ctx.err(z.name, "the zero point's type differs from its tensor's"));
    }
    if z.len() != 1 && (z.shape.rank() != 1 || z.len() != channels) {
        if unsupported.is_empty() {
            return Err(ctx.err(
                z.name,
                "per-channel zero point length differs from the output channel count",
            ));
        }
        return Err(ctx.unsupported(unsupported));
    }
    match z.dtype {
        #[cfg(feature = "quant-u8")]
        DType::U8 => check_zero_points::<u8>(ctx, z),
        // int8: `of` is one of Q8_TYPES.
        _ => check_zero_points::<i8>(ctx, z),
    }
}

impl ConvInteger {
    pub(super) fn eval(&self, inputs: &[Option<TensorRef<'_>>], output: DataMut<'_>) {
        let input = |i: usize| inputs.get(i).copied().flatten();
        let (Some(x), Some(w), DataMut::I32(y)) = (input(0), input(1), output) else {
            return;
        };
        let g = &self.geometry;
        q8!(x.data, |xs| q8!(w.data, |ws| {
            conv(g, xs, zero_points(input(2)), ws, zero_points(input(3)), y)
        }));
    }
}

fn conv<X: QElem + Elem, W: QElem + Elem>(
    g: &ConvGeometry,
    x: &[X],
    zx: ZeroPoints<'_, X>,
    w: &[W],
    zw: ZeroPoints<'_, W>,
    y: &mut [i32],
) {
    let zero = [W::default()];
    conv2d_i8_acc(g, x, zx.at(0), w, zw.slice(&zero), y);
}

pub(super) fn eval_matmul(
    mm: &MatMul,
    inputs: &[Option<TensorRef<'_>>],
    output: DataMut<'_>,
    y_shape: &Shape,
) {
    let input = |i: usize| inputs.get(i).copied().flatten();
    let (Some(a), Some(b), DataMut::I32(y)) = (input(0), input(1), output) else {
        return;
    };
    q8!(a.data, |a_data| q8!(b.data, |b_data| {
        let (za, zb) = (zero_points(input(2)), zero_points(input(3)));
        matmul_acc(
            mm,
            (a_data, &a.shape, za),
            (b_data, &b.shape, zb),
            y,
            y_shape,
        )
    }));
}

type Operand<'t, T> = (&'t [T], &'t Shape, ZeroPoints<'t, T>);

fn matmul_acc<A: QElem + Elem, B: QElem + Elem>(
    mm: &MatMul,
    a: Operand<'_, A>,
    b: Operand<'_, B>,
    y: &mut [i32],
    y_shape: &Shape,
) {
    let (m, k, n) = (mm.m, mm.k, mm.n);
    let zero = [B::default()];
    let (za, zb) = (a.2.at(0), b.2.slice(&zero));
    mm.for_each_batch(a.1, b.1, y_shape, |t, ia, ib| {
        let a_mat = &a.0[ia * m * k..(ia + 1) * m * k];
        let b_mat = &b.0[ib * k * n..(ib + 1) * k * n];
        let y_mat = &mut y[t * m * n..(t + 1) * m * n];
        gemm_i8_acc(m, k, n, a_mat, k, 1, za, b_mat, n, 1, zb, y_mat);
    });
}
