//! Add, Sub, Mul, Div with multidirectional (numpy) broadcasting.

use super::{NodeCtx, Op, Output, Tensor};
use crate::error::Error;
use crate::kernels::generic::binary::{binary_f32, broadcast_shape, BinaryOp};
use crate::tensor::{Shape, MAX_RANK};

pub(super) fn prepare<'a>(ctx: &NodeCtx<'_, 'a>, op: BinaryOp) -> Result<(Op, Output<'a>), Error> {
    ctx.check_arity(2, 2)?;
    ctx.check_attributes(&[])?;
    let a = ctx.f32_input(0)?;
    let b = ctx.f32_input(1)?;
    let (da, ra) = a.shape.dims();
    let (db, rb) = b.shape.dims();
    let mut out = [0usize; MAX_RANK];
    let rank = broadcast_shape(&da[..ra], &db[..rb], &mut out)
        .ok_or_else(|| ctx.err(b.name, "input shapes are not broadcast-compatible"))?;
    Ok((Op::Binary(op), Output::f32(ctx.shape(&out[..rank])?)))
}

/// `shape`'s dims right-aligned to `rank`, padded with leading 1s.
fn expand(shape: &Shape, rank: usize) -> [usize; MAX_RANK] {
    let mut out = [1usize; MAX_RANK];
    let r = shape.rank();
    for i in 0..r {
        out[rank - r + i] = shape.dim(i);
    }
    out
}

pub(super) fn eval(
    op: BinaryOp,
    a: Tensor<'_, f32>,
    b: Option<Tensor<'_, f32>>,
    y: &mut [f32],
    y_shape: &Shape,
) {
    let Some(b) = b else { return };
    let rank = y_shape.rank();
    let (ys, _) = y_shape.dims();
    let sa = expand(&a.shape, rank);
    let sb = expand(&b.shape, rank);
    binary_f32(op, a.data, &sa[..rank], b.data, &sb[..rank], y, &ys[..rank]);
}
