//! Transpose.

use super::{Elem, NodeCtx, Op, Output, TensorRef, RUN_TIME_TYPES};
use crate::error::Error;
use crate::kernels::generic::transpose::transpose;
use crate::tensor::MAX_RANK;

/// A prepared Transpose.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Transpose {
    /// Output axis i takes input axis `perm[i]`.
    pub perm: [u8; MAX_RANK],
}

pub(super) fn prepare<'a>(ctx: &NodeCtx<'_, 'a>) -> Result<(Op, Output<'a>), Error> {
    ctx.check_arity(1, 1)?;
    ctx.check_attributes(&["perm"])?;
    let x = ctx.typed_input(0, RUN_TIME_TYPES)?;
    let rank = x.shape.rank();
    let mut perm = [0i64; MAX_RANK];
    match ctx.attr_ints("perm", &mut perm)? {
        Some(n) if n != rank => {
            return Err(ctx.attr_err("perm", "length differs from the input rank"))
        }
        Some(_) => {}
        None => (0..rank).for_each(|i| perm[i] = (rank - 1 - i) as i64),
    }
    let mut seen = 0u32;
    let mut out = [0usize; MAX_RANK];
    let mut p = [0u8; MAX_RANK];
    for i in 0..rank {
        let a = perm[i];
        if a < 0 || a >= rank as i64 || seen & (1 << a) != 0 {
            return Err(ctx.attr_err("perm", "is not a permutation of the input axes"));
        }
        seen |= 1 << a;
        p[i] = a as u8;
        out[i] = x.shape.dim(a as usize);
    }
    Ok((
        Op::Transpose(Transpose { perm: p }),
        Output::typed(x.dtype, ctx.shape(&out[..rank])?),
    ))
}

impl Transpose {
    pub(super) fn eval<T: Elem>(&self, x: TensorRef<'_>, y: &mut [T]) {
        let Some(data) = x.data.get::<T>() else {
            return;
        };
        let (dims, rank) = x.shape.dims();
        let mut perm = [0usize; MAX_RANK];
        for (p, &q) in perm.iter_mut().zip(&self.perm) {
            *p = usize::from(q);
        }
        transpose(data, &dims[..rank], &perm[..rank], y);
    }
}
