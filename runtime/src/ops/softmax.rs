//! Softmax and LogSoftmax: opset 13 reduces one axis; earlier opsets coerce
//! the input to 2-D at `axis` and reduce the whole trailing block.

use super::{NodeCtx, Op, Output};
use crate::error::Error;
use crate::kernels::generic::softmax::{log_softmax_f32, softmax_f32};

/// A prepared Softmax / LogSoftmax over the middle dim of [outer, axis, inner].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Softmax {
    /// Product of the dims before the axis.
    pub outer: usize,
    /// Length of the reduced extent.
    pub axis_len: usize,
    /// Product of the dims after the axis.
    pub inner: usize,
    /// LogSoftmax instead of Softmax.
    pub log: bool,
}

pub(super) fn prepare<'a>(ctx: &NodeCtx<'_, 'a>, log: bool) -> Result<(Op, Output<'a>), Error> {
    ctx.check_arity(1, 1)?;
    ctx.check_attributes(&["axis"])?;
    let x = ctx.f32_input(0)?;
    let rank = x.shape.rank();
    let legacy = ctx.version < 13;
    let axis = ctx.attr_int("axis", if legacy { 1 } else { -1 })?;
    if rank == 0 {
        return Err(ctx.err(x.name, "input must have rank ≥ 1"));
    }
    let axis = ctx.axis("axis", axis, rank)?;
    let outer = x.shape.product(0..axis);
    let (axis_len, inner) = if legacy {
        (x.shape.product(axis..rank), 1)
    } else {
        (x.shape.dim(axis), x.shape.product(axis + 1..rank))
    };
    Ok((
        Op::Softmax(Softmax {
            outer,
            axis_len,
            inner,
            log,
        }),
        Output::f32(x.shape),
    ))
}

impl Softmax {
    pub(super) fn eval(&self, x: &[f32], y: &mut [f32]) {
        if self.log {
            log_softmax_f32(x, y, self.outer, self.axis_len, self.inner);
        } else {
            softmax_f32(x, y, self.outer, self.axis_len, self.inner);
        }
    }
}
