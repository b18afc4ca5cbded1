//! QLinearConv and QLinearMatMul: int8/uint8 inputs with scales and zero
//! points, int32 accumulation, requantized int8/uint8 output.
//!
//! The requantization is the runtime's fixed-point one ([`Requant`], Q31
//! multiplier and shift, TFLite's single rounding), derived once per output
//! channel from the constant scales. Its real multiplier is computed as the
//! ONNX reference and ONNX Runtime do, in f32: `x_scale · w_scale[c] /
//! y_scale`, so the fixed-point multiplier is that f32 value `m` exactly,
//! and `acc · m` is rounded once, exactly, to nearest with ties towards +∞.
//! The ONNX reference rounds the same product half to even, so the two
//! differ only on exact ties (none of the ONNX conformance cases; see
//! `tests/onnx_quantized_cases.rs` and `tests/quantized.rs`).
//!
//! ONNX Runtime (MLAS on x86-64, `MlasRequantizeOutput`, used by its
//! QLinearConv and QGemm and by the QDQ models it fuses into them) computes
//! `rint(f32(f32(acc) · m))`: it rounds the product to f32 first, so a
//! value within half an f32 ulp of a tie (`88.5000021` with `acc` 42618,
//! `m` = 0.0020765874) collapses onto `88.5`, which then goes to the even
//! neighbour, one step from the correctly rounded `89` that this op gives.
//! None of the differences is an exact tie. Measured on a DS-CNN student
//! (3×3, depthwise and pointwise Convs, 1000 Fashion-MNIST test images),
//! with identical int8 inputs to each layer: 3 to 14 outputs in 10^7 per
//! Conv. Through seven Convs those flips spread, and 0.10–0.27 % of the
//! int8 logits differ by one step between the two engines (`tinykd quantize`
//! reports 99.90 % identical for minmax calibration, 99.83 % percentile,
//! 99.78 % entropy, 99.73 % mse). An integer simulation of the whole network
//! with MLAS's rounding reproduces ONNX Runtime's logits bit for bit, and
//! one with this op's rounding reproduces the runtime's, so the Convs'
//! requantization accounts for every difference; MaxPool, the
//! GlobalAveragePool and the Gemm agreed exactly. The runtime keeps the
//! single correct rounding rather than reproduce MLAS's double one.
//!
//! Scales must be constants (initializers, or inputs bound at load); zero
//! points, weights and the bias may be run-time tensors. Per-channel weight
//! (or per-column `b`) scales and zero points are supported; per-row `a`
//! quantization of QLinearMatMul is not.

use super::conv::{self, ATTRIBUTES};
use super::matmul::{self, MatMul};
use super::quantize::check_scales;
use super::{
    check_dtype, check_zero_points, q8, q8_mut, zero_points, DataMut, Elem, NodeCtx, Op, Output,
    TensorRef, ZeroPoints, Q8_TYPES,
};
use crate::error::Error;
use crate::kernels::conv2d_i8_requant;
use crate::kernels::generic::conv::ConvGeometry;
use crate::kernels::generic::gemm_i8::gemm_i8_requant;
use crate::quant::{Clamp, OutputStage, QElem, Requant};
use crate::tensor::{DType, Shape};
use crate::value::Value;

/// A prepared QLinearConv.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct QLinearConv {
    /// Shapes, strides, pads, groups.
    pub geometry: ConvGeometry,
    /// Requantizations kept in the arena: 1 (per-tensor weights) or one
    /// per output channel.
    pub requants: usize,
    /// A Relu/Clip fused in by the load-time QDQ rewrite
    /// ([`crate::fuse`]); [`Clamp::NONE`] for a QLinearConv of the file.
    pub clamp: Clamp,
}

/// A prepared QLinearMatMul.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct QLinearMatMul {
    /// The product's shape.
    pub matmul: MatMul,
    /// Requantizations kept in the arena: 1 (per-tensor b) or one per
    /// column.
    pub requants: usize,
}

/// Input positions, the same for both ops (and for the int8 Gemm the QDQ
/// rewrite makes, [`super::qgemm`]): `x, x_scale, x_zero_point, w,
/// w_scale, w_zero_point, y_scale, y_zero_point[, bias]`.
pub(crate) const X_SCALE: usize = 1;
pub(crate) const X_ZERO: usize = 2;
pub(crate) const W: usize = 3;
pub(crate) const W_SCALE: usize = 4;
pub(crate) const W_ZERO: usize = 5;
pub(crate) const Y_SCALE: usize = 6;
pub(crate) const Y_ZERO: usize = 7;
pub(crate) const BIAS: usize = 8;

#[cfg(all(feature = "op-qoperator", feature = "op-conv"))]
pub(super) fn prepare_conv<'a>(ctx: &NodeCtx<'_, 'a>) -> Result<(Op, Output<'a>), Error> {
    ctx.check_arity(8, 9)?;
    ctx.check_attributes(ATTRIBUTES)?;
    let x = ctx.typed_input(0, Q8_TYPES)?;
    let w = ctx.typed_input(W, Q8_TYPES)?;
    let (geometry, shape) = conv::geometry(ctx, x, w)?;
    let channels = geometry.out_channels;
    let (dtype, requants) = check_params(ctx, channels, "per-row x quantization")?;
    if let Some(b) = ctx.optional_input(BIAS) {
        check_dtype(b, &[DType::I32])?;
        if b.shape.rank() != 1 || b.len() != channels {
            return Err(ctx.err(b.name, "bias must be int32 of shape [output channels]"));
        }
    }
    Ok((
        Op::QLinearConv(QLinearConv {
            geometry,
            requants,
            clamp: Clamp::NONE,
        }),
        Output::typed(dtype, shape),
    ))
}

#[cfg(all(feature = "op-qoperator", feature = "op-gemm"))]
pub(super) fn prepare_matmul<'a>(ctx: &NodeCtx<'_, 'a>) -> Result<(Op, Output<'a>), Error> {
    ctx.check_arity(8, 8)?;
    ctx.check_attributes(&[])?;
    let a = ctx.typed_input(0, Q8_TYPES)?;
    let b = ctx.typed_input(W, Q8_TYPES)?;
    let (matmul, shape) = matmul::shapes(ctx, a, b)?;
    let (dtype, requants) = check_params(ctx, matmul.n, "per-row quantization of a")?;
    Ok((
        Op::QLinearMatMul(QLinearMatMul { matmul, requants }),
        Output::typed(dtype, shape),
    ))
}

/// Checks the six quantization parameters; returns the output type and
/// the number of requantizations (1, or `channels` when `w` is quantized
/// per output channel / per column).
fn check_params(
    ctx: &NodeCtx,
    channels: usize,
    per_row: &'static str,
) -> Result<(DType, usize), Error> {
    let x = ctx.input(0)?;
    let w = ctx.input(W)?;
    let scale = |i: usize| -> Result<&Value<'_>, Error> {
        let s = ctx.typed_input(i, &[DType::F32])?;
        if s.constant().is_none() {
            return Err(ctx.unsupported(
                "a quantization scale computed at run time (make it an initializer)",
            ));
        }
        check_scales(ctx, s)?;
        Ok(s)
    };
    let (x_scale, w_scale, y_scale) = (scale(X_SCALE)?, scale(W_SCALE)?, scale(Y_SCALE)?);
    if x_scale.len() != 1 {
        return Err(ctx.unsupported(per_row));
    }
    if y_scale.len() != 1 {
        return Err(ctx.err(y_scale.name, "the output scale must be a scalar"));
    }
    let per_channel = w_scale.len() != 1;
    if per_channel && (w_scale.shape.rank() != 1 || w_scale.len() != channels) {
        return Err(ctx.err(
            w_scale.name,
            "per-channel scale length differs from the output channel count",
        ));
    }
    let y_zero = ctx.typed_input(Y_ZERO, Q8_TYPES)?;
    for (zero, scale, of) in [
        (X_ZERO, x_scale, x),
        (W_ZERO, w_scale, w),
        (Y_ZERO, y_scale, y_zero),
    ] {
        let z = ctx.input(zero)?;
        if z.dtype != of.dtype {
            return Err(ctx.err(z.name, "the zero point's type differs from its tensor's"));
        }
        if z.len() != scale.len() || z.shape.rank() != scale.shape.rank() {
            return Err(ctx.err(z.name, "the zero point's shape differs from the scale's"));
        }
        match z.dtype {
            DType::I8 => check_zero_points::<i8>(ctx, z)?,
            _ => check_zero_points::<u8>(ctx, z)?,
        }
    }
    let mut inputs = [None; W_SCALE + 3];
    for (i, slot) in inputs.iter_mut().enumerate() {
        *slot = ctx.optional_input(i);
    }
    let mut bad = None;
    for_each_requant(&inputs, |_, r| {
        if bad.is_none() {
            bad = r.err();
        }
    });
    if let Some(e) = bad {
        return Err(ctx.err(w_scale.name, e.reason()));
    }
    Ok((y_zero.dtype, w_scale.len()))
}

/// `f(c, requantization of channel c)` for every weight scale, the real
/// multiplier computed in f32 as the ONNX reference does:
/// `(x_scale · w_scale[c]) / y_scale`.
pub(crate) fn for_each_requant(
    inputs: &[Option<&Value<'_>>],
    mut f: impl FnMut(usize, Result<Requant, crate::quant::QuantError>),
) {
    let scalar = |i: usize| {
        inputs
            .get(i)
            .copied()
            .flatten()
            .and_then(|v| v.const_element(0))
            .unwrap_or(1.0) as f32
    };
    let (x_scale, y_scale) = (scalar(X_SCALE), scalar(Y_SCALE));
    if let Some(w_scale) = inputs.get(W_SCALE).copied().flatten() {
        w_scale.for_each_const(|c, w| f(c, Requant::from_scale(x_scale * w as f32 / y_scale)));
    }
}

/// Fills the op's arena entries (see [`super::Op::requant_len`]); `inputs`
/// are the node's inputs, whose scales `prepare` checked.
pub(super) fn fill_requants(inputs: &[Option<&Value<'_>>], out: &mut [Requant]) {
    for_each_requant(inputs, |c, r| {
        if let Some(slot) = out.get_mut(c) {
            *slot = r.unwrap_or_default();
        }
    });
}

impl QLinearConv {
    pub(super) fn eval(
        &self,
        inputs: &[Option<TensorRef<'_>>],
        requants: &[Requant],
        output: DataMut<'_>,
    ) {
        let input = |i: usize| inputs.get(i).copied().flatten();
        let (Some(x), Some(w)) = (input(0), input(W)) else {
            return;
        };
        let bias = input(BIAS).and_then(|b| b.data.get::<i32>());
        let g = &self.geometry;
        q8!(x.data, |xs| q8!(w.data, |ws| q8_mut!(output, |ys| {
            let (zx, zw, zy) = (
                zero_points(input(X_ZERO)),
                zero_points(input(W_ZERO)),
                zero_points(input(Y_ZERO)),
            );
            conv(g, xs, zx, ws, zw, bias, requants, self.clamp, zy, ys)
        })));
    }
}

#[allow(clippy::too_many_arguments)]
fn conv<X: QElem + Elem, W: QElem + Elem, Y: QElem + Elem>(
    g: &ConvGeometry,
    x: &[X],
    zx: ZeroPoints<'_, X>,
    w: &[W],
    zw: ZeroPoints<'_, W>,
    bias: Option<&[i32]>,
    requants: &[Requant],
    clamp: Clamp,
    zy: ZeroPoints<'_, Y>,
    y: &mut [Y],
) {
    let stage = OutputStage {
        bias,
        ..OutputStage::new(requants, zy.at(0))
    }
    .with_clamp(clamp);
    if !stage.fits(g.out_channels) {
        return; // never: checked at load
    }
    let zero = [W::default()];
    conv2d_i8_requant(g, x, zx.at(0), w, zw.slice(&zero), &stage, y);
}

impl QLinearMatMul {
    pub(super) fn eval(
        &self,
        inputs: &[Option<TensorRef<'_>>],
        requants: &[Requant],
        output: DataMut<'_>,
        y_shape: &Shape,
    ) {
        let input = |i: usize| inputs.get(i).copied().flatten();
        let (Some(a), Some(b)) = (input(0), input(W)) else {
            return;
        };
        let mm = &self.matmul;
        q8!(a.data, |a_data| q8!(b.data, |b_data| q8_mut!(
            output,
            |ys| {
                let (za, zb, zy) = (
                    zero_points(input(X_ZERO)),
                    zero_points(input(W_ZERO)),
                    zero_points(input(Y_ZERO)),
                );
                let stage = OutputStage::new(requants, zy.at(0));
                let operands = (Operand(a_data, a.shape, za), Operand(b_data, b.shape, zb));
                matmul_requant(mm, operands, &stage, ys, y_shape)
            }
        )));
    }
}

/// One matrix-product operand: its elements, shape and zero points.
struct Operand<'t, T>(&'t [T], Shape, ZeroPoints<'t, T>);

fn matmul_requant<A: QElem + Elem, B: QElem + Elem, Y: QElem + Elem>(
    mm: &MatMul,
    (a, b): (Operand<'_, A>, Operand<'_, B>),
    stage: &OutputStage<'_, Y>,
    y: &mut [Y],
    y_shape: &Shape,
) {
    let (m, k, n) = (mm.m, mm.k, mm.n);
    if !stage.fits(n) {
        return; // never: checked at load
    }
    let zero = [B::default()];
    let (za, zb) = (a.2.at(0), b.2.slice(&zero));
    mm.for_each_batch(&a.1, &b.1, y_shape, |t, ia, ib| {
        let a_mat = &a.0[ia * m * k..(ia + 1) * m * k];
        let b_mat = &b.0[ib * k * n..(ib + 1) * k * n];
        let y_mat = &mut y[t * m * n..(t + 1) * m * n];
        gemm_i8_requant(m, k, n, a_mat, k, 1, za, b_mat, n, 1, zb, stage, y_mat);
    });
}
