//! MatMul with numpy semantics: 1-D operands are promoted, leading (batch)
//! dimensions broadcast.

use super::{NodeCtx, Op, Output, Tensor};
use crate::error::Error;
use crate::kernels::generic::binary::broadcast_shape;
use crate::kernels::generic::matmul::matmul_f32;
use crate::tensor::{Shape, MAX_RANK};
use crate::value::Value;

/// A prepared MatMul.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MatMul {
    /// Rows of each product.
    pub m: usize,
    /// Reduction length.
    pub k: usize,
    /// Columns of each product.
    pub n: usize,
}

/// Batch dims of `shape` (all but the matrix dims), given whether the operand
/// was 1-D (then it has no batch dims).
fn batch_dims(shape: &Shape) -> ([usize; MAX_RANK], usize) {
    let (d, r) = shape.dims();
    (d, r.saturating_sub(2))
}

#[cfg(feature = "op-gemm")]
pub(super) fn prepare<'a>(ctx: &NodeCtx<'_, 'a>) -> Result<(Op, Output<'a>), Error> {
    ctx.check_arity(2, 2)?;
    ctx.check_attributes(&[])?;
    let a = ctx.f32_input(0)?;
    let b = ctx.f32_input(1)?;
    let (mm, shape) = shapes(ctx, a, b)?;
    Ok((Op::MatMul(mm), Output::f32(shape)))
}

/// Checks that A and B (of any element type) multiply as numpy.matmul
/// does, and infers the output shape.
pub(super) fn shapes(
    ctx: &NodeCtx,
    a: &Value<'_>,
    b: &Value<'_>,
) -> Result<(MatMul, Shape), Error> {
    let (ra, rb) = (a.shape.rank(), b.shape.rank());
    if ra == 0 || rb == 0 {
        return Err(ctx.err(a.name, "MatMul operands must have rank ≥ 1"));
    }
    let (m, k) = if ra == 1 {
        (1, a.shape.dim(0))
    } else {
        (a.shape.dim(ra - 2), a.shape.dim(ra - 1))
    };
    let (kb, n) = if rb == 1 {
        (b.shape.dim(0), 1)
    } else {
        (b.shape.dim(rb - 2), b.shape.dim(rb - 1))
    };
    if k != kb {
        return Err(ctx.err(b.name, "inner dimensions of A and B differ"));
    }
    let (ba, na) = batch_dims(&a.shape);
    let (bb, nb) = batch_dims(&b.shape);
    let mut out = [0usize; MAX_RANK];
    let batch_rank = broadcast_shape(&ba[..na], &bb[..nb], &mut out)
        .ok_or_else(|| ctx.err(b.name, "batch dimensions do not broadcast"))?;
    let mut rank = batch_rank;
    if ra > 1 {
        out[rank] = m;
        rank += 1;
    }
    if rb > 1 {
        out[rank] = n;
        rank += 1;
    }
    if rank > MAX_RANK {
        return Err(ctx.err("", "output rank too large"));
    }
    Ok((MatMul { m, k, n }, ctx.shape(&out[..rank])?))
}

impl MatMul {
    /// Multiply-accumulates per run.
    pub fn macs(&self, output: &Shape) -> u64 {
        let per = (self.m * self.n).max(1);
        (output.num_elements().unwrap_or(0) / per) as u64 * (self.m * self.k * self.n) as u64
    }

    pub(super) fn eval(
        &self,
        a: Tensor<'_, f32>,
        b: Option<Tensor<'_, f32>>,
        y: &mut [f32],
        y_shape: &Shape,
    ) {
        let Some(b) = b else { return };
        let (m, k, n) = (self.m, self.k, self.n);
        self.for_each_batch(&a.shape, &b.shape, y_shape, |t, ia, ib| {
            let a_mat = &a.data[ia * m * k..(ia + 1) * m * k];
            let b_mat = &b.data[ib * k * n..(ib + 1) * k * n];
            matmul_f32(
                m,
                k,
                n,
                a_mat,
                k,
                1,
                b_mat,
                n,
                1,
                &mut y[t * m * n..(t + 1) * m * n],
            );
        });
    }

    /// Calls `f(t, ia, ib)` for every output matrix `t` (in order) with the
    /// indices of the A and B matrices it multiplies, broadcasting the batch
    /// dims.
    pub fn for_each_batch(
        &self,
        a_shape: &Shape,
        b_shape: &Shape,
        y_shape: &Shape,
        mut f: impl FnMut(usize, usize, usize),
    ) {
        let (m, n) = (self.m, self.n);
        let (ba, na) = batch_dims(a_shape);
        let (bb, nb) = batch_dims(b_shape);
        let batches = y_shape.num_elements().unwrap_or(0) / (m * n).max(1);
        let out_batch_rank = y_shape
            .rank()
            .saturating_sub(usize::from(a_shape.rank() > 1) + usize::from(b_shape.rank() > 1));
        // Strides (in matrices) of each operand over the output batch index,
        // 0 where the operand broadcasts.
        let mut sa = [0usize; MAX_RANK];
        let mut sb = [0usize; MAX_RANK];
        let (yd, _) = y_shape.dims();
        let (mut acc_a, mut acc_b) = (1usize, 1usize);
        for i in (0..out_batch_rank).rev() {
            let off = out_batch_rank - i;
            if off <= na {
                let d = ba[na - off];
                sa[i] = if d == 1 { 0 } else { acc_a };
                acc_a *= d;
            }
            if off <= nb {
                let d = bb[nb - off];
                sb[i] = if d == 1 { 0 } else { acc_b };
                acc_b *= d;
            }
        }
        let mut index = [0usize; MAX_RANK];
        for t in 0..batches {
            let (mut ia, mut ib) = (0, 0);
            for i in 0..out_batch_rank {
                ia += index[i] * sa[i];
                ib += index[i] * sb[i];
            }
            f(t, ia, ib);
            for i in (0..out_batch_rank).rev() {
                index[i] += 1;
                if index[i] < yd[i] {
                    break;
                }
                index[i] = 0;
            }
        }
    }
}
