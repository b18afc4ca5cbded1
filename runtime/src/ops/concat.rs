//! Concat.

use super::{Elem, NodeCtx, Op, Output, TensorRef, RUN_TIME_TYPES};
use crate::error::Error;

/// A prepared Concat.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Concat {
    /// The axis the inputs are joined along.
    pub axis: u8,
}

pub(super) fn prepare<'a>(ctx: &NodeCtx<'_, 'a>) -> Result<(Op, Output<'a>), Error> {
    ctx.check_arity(1, crate::limits::MAX_NODE_INPUTS)?;
    ctx.check_attributes(&["axis"])?;
    let first = ctx.typed_input(0, RUN_TIME_TYPES)?;
    let rank = first.shape.rank();
    if rank == 0 {
        return Err(ctx.err(first.name, "cannot concatenate scalars"));
    }
    let axis_attr = ctx.attr("axis", crate::proto::onnx::AttributeKind::Int)?;
    let axis = ctx.axis(
        "axis",
        axis_attr
            .ok_or_else(|| ctx.attr_err("axis", "is required"))?
            .i,
        rank,
    )?;
    let (mut out, _) = first.shape.dims();
    out[axis] = 0;
    for i in 0..ctx.inputs.len() {
        let v = ctx.input(i)?;
        if v.dtype != first.dtype {
            return Err(ctx.err(v.name, "inputs must all have the same element type"));
        }
        if v.shape.rank() != rank || (0..rank).any(|d| d != axis && v.shape.dim(d) != out[d]) {
            return Err(ctx.err(v.name, "inputs must agree on every dimension but the axis"));
        }
        out[axis] = out[axis]
            .checked_add(v.shape.dim(axis))
            .ok_or_else(|| ctx.err(v.name, "too large"))?;
    }
    Ok((
        Op::Concat(Concat { axis: axis as u8 }),
        Output::typed(first.dtype, ctx.shape(&out[..rank])?),
    ))
}

impl Concat {
    pub(super) fn eval<T: Elem>(&self, inputs: &[Option<TensorRef<'_>>], y: &mut [T]) {
        let axis = usize::from(self.axis);
        let mut written = 0;
        let Some(Some(first)) = inputs.first() else {
            return;
        };
        let outer = first.shape.product(0..axis);
        for o in 0..outer {
            for t in inputs.iter().flatten() {
                let Some(data) = t.data.get::<T>() else {
                    return;
                };
                let chunk = t.shape.product(axis..t.shape.rank());
                y[written..written + chunk].copy_from_slice(&data[o * chunk..(o + 1) * chunk]);
                written += chunk;
            }
        }
    }
}
