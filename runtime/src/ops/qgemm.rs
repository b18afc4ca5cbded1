//! The int8 Gemm that the load-time QDQ rewrite ([`crate::fuse`]) makes of
//! `DQ(a) → Gemm(·, DQ(b), DQ(c)?) [→ Relu/Clip] → Q` (alpha = beta = 1):
//! `y = clamp(requant[j](Σ (a − za)·(b − zb[j]) + c[j]) + zy)`, exactly
//! QLinearMatMul's arithmetic plus Gemm's transposes, an int32 bias per
//! output column and a fused activation. ONNX has no such op, so nothing
//! in a file parses to it.
//!
//! Its inputs are laid out as QLinearConv's (see [`super::qlinear`]): `a,
//! a_scale, a_zero_point, b, b_scale, b_zero_point, y_scale, y_zero_point,
//! c`, and its requantizations are derived from them the same way, one per
//! output column (per-channel `b`) or one for all. They round as
//! QLinearConv's do; [`super::qlinear`] describes how ONNX Runtime's QGemm
//! rounds differently (by one step on rare near-ties).

use super::qlinear::{BIAS, W, W_ZERO, X_ZERO, Y_ZERO};
use super::{q8, q8_mut, zero_points, DataMut, Elem, TensorRef, ZeroPoints};
use crate::kernels::generic::gemm_i8::gemm_i8_requant;
use crate::quant::{Clamp, OutputStage, QElem, Requant};

/// A prepared int8 Gemm.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QGemm {
    /// Rows of the output.
    pub m: usize,
    /// Reduction length.
    pub k: usize,
    /// Columns of the output (output channels).
    pub n: usize,
    /// A is stored [K, M].
    pub trans_a: bool,
    /// B is stored [N, K].
    pub trans_b: bool,
    /// Requantizations kept in the arena: 1, or one per output column.
    pub requants: usize,
    /// The fused activation, in the quantized domain.
    pub clamp: Clamp,
}

impl QGemm {
    /// Multiply-accumulates per run.
    pub fn macs(&self) -> u64 {
        (self.m * self.k * self.n) as u64
    }

    pub(super) fn eval(
        &self,
        inputs: &[Option<TensorRef<'_>>],
        requants: &[Requant],
        output: DataMut<'_>,
    ) {
        let input = |i: usize| inputs.get(i).copied().flatten();
        let (Some(a), Some(b)) = (input(0), input(W)) else {
            return;
        };
        let bias = input(BIAS).and_then(|c| c.data.get::<i32>());
        q8!(a.data, |a_data| q8!(b.data, |b_data| q8_mut!(
            output,
            |ys| {
                let (za, zb, zy) = (
                    zero_points(input(X_ZERO)),
                    zero_points(input(W_ZERO)),
                    zero_points(input(Y_ZERO)),
                );
                let stage = OutputStage {
                    bias,
                    ..OutputStage::new(requants, zy.at(0))
                }
                .with_clamp(self.clamp);
                self.run(a_data, za, b_data, zb, &stage, ys)
            }
        )));
    }

    fn run<A: QElem + Elem, B: QElem + Elem, Y: QElem>(
        &self,
        a: &[A],
        za: ZeroPoints<'_, A>,
        b: &[B],
        zb: ZeroPoints<'_, B>,
        stage: &OutputStage<'_, Y>,
        y: &mut [Y],
    ) {
        let (m, k, n) = (self.m, self.k, self.n);
        if !stage.fits(n) || a.len() < m * k || b.len() < k * n || y.len() < m * n {
            return; // never: checked when the rewrite made the op
        }
        let (a_rs, a_cs) = if self.trans_a { (1, m) } else { (k, 1) };
        let (b_rs, b_cs) = if self.trans_b { (1, k) } else { (n, 1) };
        let zero = [B::default()];
        let zb = zb.slice(&zero);
        if zb.len() != 1 && zb.len() != n {
            return; // never: checked when the rewrite made the op
        }
        gemm_i8_requant(
            m,
            k,
            n,
            a,
            a_rs,
            a_cs,
            za.at(0),
            b,
            b_rs,
            b_cs,
            zb,
            stage,
            y,
        );
    }
}
