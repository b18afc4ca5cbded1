//! Gemm: y = act(alpha · op(A) · op(B) + beta · C).

use super::{NodeCtx, Op, Output, Tensor};
use crate::error::Error;
use crate::kernels::generic::activation::Activation;
use crate::kernels::generic::matmul::matmul_f32;

/// A prepared Gemm.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Gemm {
    /// Rows of the output.
    pub m: usize,
    /// Reduction length.
    pub k: usize,
    /// Columns of the output.
    pub n: usize,
    /// A is stored [K, M].
    pub trans_a: bool,
    /// B is stored [N, K].
    pub trans_b: bool,
    /// Scale of the product.
    pub alpha: f32,
    /// Scale of C.
    pub beta: f32,
    /// Activation fused at load time.
    pub activation: Activation,
}

pub(super) fn prepare<'a>(ctx: &NodeCtx<'_, 'a>) -> Result<(Op, Output<'a>), Error> {
    ctx.check_arity(2, 3)?;
    ctx.check_attributes(&["alpha", "beta", "transA", "transB"])?;
    let a = ctx.f32_input(0)?;
    let b = ctx.f32_input(1)?;
    if a.shape.rank() != 2 || b.shape.rank() != 2 {
        return Err(ctx.err(a.name, "Gemm inputs A and B must be rank 2"));
    }
    let trans_a = ctx.attr_int("transA", 0)? != 0;
    let trans_b = ctx.attr_int("transB", 0)? != 0;
    let (m, k) = if trans_a {
        (a.shape.dim(1), a.shape.dim(0))
    } else {
        (a.shape.dim(0), a.shape.dim(1))
    };
    let (kb, n) = if trans_b {
        (b.shape.dim(1), b.shape.dim(0))
    } else {
        (b.shape.dim(0), b.shape.dim(1))
    };
    if k != kb {
        return Err(ctx.err(b.name, "inner dimensions of A and B differ"));
    }
    if let Some(c) = ctx.optional_input(2) {
        if c.dtype != crate::tensor::DType::F32 {
            return Err(ctx.err(c.name, "C must be float32"));
        }
        let rank = c.shape.rank();
        let ok = rank <= 2
            && c.shape
                .iter()
                .rev()
                .zip([n, m])
                .all(|(d, want)| d == want || d == 1);
        if !ok {
            return Err(ctx.err(c.name, "C is not unidirectionally broadcastable to [M, N]"));
        }
    }
    let gemm = Gemm {
        m,
        k,
        n,
        trans_a,
        trans_b,
        alpha: ctx.attr_float("alpha", 1.0)?,
        beta: ctx.attr_float("beta", 1.0)?,
        activation: Activation::None,
    };
    Ok((Op::Gemm(gemm), Output::f32(ctx.shape(&[m, n])?)))
}

impl Gemm {
    /// Multiply-accumulates per run.
    pub fn macs(&self) -> u64 {
        (self.m * self.k * self.n) as u64
    }

    pub(super) fn eval(&self, a: &[f32], b: &[f32], c: Option<Tensor<'_, f32>>, y: &mut [f32]) {
        let (m, k, n) = (self.m, self.k, self.n);
        let (a_rs, a_cs) = if self.trans_a { (1, m) } else { (k, 1) };
        let (b_rs, b_cs) = if self.trans_b { (1, k) } else { (n, 1) };
        matmul_f32(m, k, n, a, a_rs, a_cs, b, b_rs, b_cs, y);
        if self.alpha != 1.0 {
            y.iter_mut().for_each(|v| *v *= self.alpha);
        }
        if let Some(c) = c.filter(|_| self.beta != 0.0) {
            // C broadcasts along any axis of size 1 (or a missing leading axis).
            let dims: [usize; 2] = match c.shape.rank() {
                0 => [1, 1],
                1 => [1, c.shape.dim(0)],
                _ => [c.shape.dim(0), c.shape.dim(1)],
            };
            let row_stride = if dims[0] == 1 { 0 } else { dims[1] };
            let col_stride = usize::from(dims[1] != 1);
            for (i, row) in y.chunks_exact_mut(n.max(1)).enumerate().take(m) {
                let c_row = &c.data[i * row_stride..];
                for (j, v) in row.iter_mut().enumerate() {
                    *v += self.beta * c_row[j * col_stride];
                }
            }
        }
        self.activation.apply_slice(y);
    }
}
