//! QDQ fusion: a load-time rewrite that runs the QDQ form of a quantized
//! model (float ops wrapped in DequantizeLinear (DQ) and QuantizeLinear (Q),
//! as ONNX Runtime's quantizer and tinykd's write them) with integer
//! kernels, instead of dequantizing, computing in float and quantizing again.
//!
//! | pattern | becomes |
//! | --- | --- |
//! | DQ(x) → Conv(·, DQ(w), DQ(b)?) [→ Relu/Clip] → Q | [`Op::QLinearConv`] with a clamp |
//! | DQ(a) → Gemm(·, DQ(b), DQ(c)?) [→ Relu/Clip] → Q | [`Op::QGemm`] |
//! | DQ(a) → MatMul(·, DQ(b), b constant 2-D) → Q | [`Op::QLinearMatMul`] |
//! | DQ → MaxPool / Reshape / Flatten / Squeeze / Unsqueeze / Identity / Transpose → Q, same scale and zero point | the same op on int8 |
//! | DQ → AveragePool / GlobalAveragePool → Q | [`Op::QAveragePool`] |
//! | DQ(a), DQ(b) → Add → Q | [`Op::QAdd`] |
//!
//! The Relu/Clip is the one `Model::fuse_activations` already folded into
//! the Conv/Gemm; in the quantized domain it becomes the output clamp
//! `[zero_point, MAX]` or `[Q(min), Q(max)]`.
//!
//! A pattern matches only when: the float op's output has exactly one
//! reader, that Q, and is not a graph output; activations (x, a, the
//! output) are quantized per tensor to int8/uint8 with constant scales and
//! zero points; weights are constant int8/uint8, per tensor or per output
//! channel (axis 0 of a Conv weight, the output-column axis of a Gemm or
//! MatMul weight), any constant zero points; a bias is a constant int32
//! DequantizeLinear whose scale is `x_scale · w_scale[c]` within a relative
//! 1e-6; every requantization is representable ([`crate::quant::Requant`]);
//! an AveragePool's windows all count the same number of elements. Anything
//! else stays on the DQ → float op → Q path, which is always correct.
//!
//! The rewritten node keeps its place and its `op_type`, reads the
//! quantized tensors directly and writes the Q's output; the Q becomes a
//! `Nop`, and so does every DQ (or Q) left with no reader (to a fixed
//! point), so dequantized weights are never materialised in the arena.
//!
//! Exactness: the Conv, Gemm and MatMul patterns compute what the same
//! graph written with QLinearConv / QLinearMatMul computes, bit for bit
//! (the same requantization from the same f32 scales, the same kernels);
//! max pooling and the layout ops are exact; against the float path every
//! op may differ by one LSB where rounding ties break differently. ONNX
//! Runtime's fused kernels round `acc · scale` to f32 before rounding it
//! to an integer, and so differ by one step on rare near-ties; see
//! [`crate::ops::qlinear`] for how often.
//!
//! Compiled with the `op-quant` feature; each pattern is there when its
//! float op's family is (see [`crate::ops`]). Without `quant-u8` only int8
//! tensors match ([`crate::ops::Q8_TYPES`]): a uint8 QDQ model is then
//! rejected at load by its DequantizeLinear.

mod matching;
mod rewrite;

#[cfg(feature = "op-elementwise")]
use crate::kernels::generic::binary::BinaryOp;
#[cfg(feature = "op-pool")]
use crate::kernels::generic::pool_i8::uniform_count;
use crate::limits::MAX_NODE_INPUTS;
use crate::model::{Model, ABSENT};
#[cfg(feature = "op-conv")]
use crate::ops::conv::Conv;
#[cfg(feature = "op-gemm")]
use crate::ops::gemm::Gemm;
#[cfg(feature = "op-gemm")]
use crate::ops::matmul::MatMul;
#[cfg(feature = "op-pool")]
use crate::ops::pool::PoolKind;
#[cfg(feature = "op-elementwise")]
use crate::ops::qadd::{self, QAdd};
#[cfg(feature = "op-gemm")]
use crate::ops::qgemm::QGemm;
#[cfg(feature = "op-conv")]
use crate::ops::qlinear::QLinearConv;
#[cfg(feature = "op-gemm")]
use crate::ops::qlinear::QLinearMatMul;
#[cfg(feature = "op-pool")]
use crate::ops::qpool::{QAveragePool, QPoolWindow};
use crate::ops::Op;
#[cfg(feature = "op-elementwise")]
use crate::quant::Clamp;
use rewrite::Readers;

impl Model<'_> {
    /// Rewrites every QDQ pattern it recognises (see the module docs).
    pub(crate) fn fuse_qdq(&mut self) {
        let mut r = self.readers();
        let mut fused = false;
        for j in 0..self.nodes.len() {
            let done = match self.nodes[j].op {
                #[cfg(feature = "op-conv")]
                Op::Conv(c) => self.fuse_conv(&mut r, j, c),
                #[cfg(feature = "op-gemm")]
                Op::Gemm(g) => self.fuse_gemm(&mut r, j, g),
                #[cfg(feature = "op-gemm")]
                Op::MatMul(m) => self.fuse_matmul(&mut r, j, m),
                #[cfg(feature = "op-pool")]
                Op::Pool(p) if p.kind == PoolKind::Max => self.fuse_layout(&mut r, j),
                Op::Reshape => self.fuse_layout(&mut r, j),
                #[cfg(feature = "op-layout")]
                Op::Transpose(_) => self.fuse_layout(&mut r, j),
                #[cfg(feature = "op-pool")]
                Op::Pool(p) => match p.kind {
                    PoolKind::Average { count_include_pad } => {
                        let count = uniform_count(&p.geometry, count_include_pad);
                        let window = QPoolWindow::Window(p.geometry);
                        count.and_then(|n| self.fuse_average(&mut r, j, window, n))
                    }
                    PoolKind::Max => None,
                },
                #[cfg(feature = "op-pool")]
                Op::GlobalAveragePool => self
                    .input(j, 0)
                    .map(|x| self.value(x).shape)
                    .map(|s| s.product(2..s.rank()))
                    .filter(|&n| n > 0)
                    .and_then(|n| self.fuse_average(&mut r, j, QPoolWindow::Global, n)),
                #[cfg(feature = "op-elementwise")]
                Op::Binary(BinaryOp::Add) => self.fuse_add(&mut r, j),
                _ => None,
            };
            fused |= done.is_some();
        }
        if fused {
            self.sweep(&mut r);
            self.compact_io();
        }
    }

    #[cfg(feature = "op-conv")]
    fn fuse_conv(&mut self, r: &mut Readers, j: usize, conv: Conv) -> Option<()> {
        let q = self.quant_reader(r, j)?;
        let x = self.activation_dq(self.input(j, 0)?)?;
        let channels = conv.geometry.out_channels;
        let w = self.weight_dq(self.input(j, 1)?, 0, channels)?;
        let bias = match self.input(j, 2) {
            Some(b) => self.bias(b, &x, &w, channels)?,
            None => ABSENT,
        };
        let clamp = self.clamp(conv.activation, &q)?;
        let inputs = [
            x.q, x.scale, x.zero, w.q, w.scale, w.zero, q.scale, q.zero, bias,
        ];
        self.check_requants(&inputs)?;
        let op = Op::QLinearConv(QLinearConv {
            geometry: conv.geometry,
            requants: self.value(w.scale).len(),
            clamp,
        });
        self.rewrite(r, j, op, &inputs, &q)
    }

    #[cfg(feature = "op-gemm")]
    fn fuse_gemm(&mut self, r: &mut Readers, j: usize, g: Gemm) -> Option<()> {
        if g.alpha != 1.0 || g.beta != 1.0 {
            return None;
        }
        let q = self.quant_reader(r, j)?;
        let a = self.activation_dq(self.input(j, 0)?)?;
        let axis = if g.trans_b { 0 } else { 1 };
        let b = self.weight_dq(self.input(j, 1)?, axis, g.n)?;
        let c = match self.input(j, 2) {
            // C must be one value per output column: [N] or [1, N].
            Some(c) if g.n == 1 || self.value(c).shape.iter().last() == Some(g.n) => {
                self.bias(c, &a, &b, g.n)?
            }
            Some(_) => return None,
            None => ABSENT,
        };
        let clamp = self.clamp(g.activation, &q)?;
        let inputs = [
            a.q, a.scale, a.zero, b.q, b.scale, b.zero, q.scale, q.zero, c,
        ];
        self.check_requants(&inputs)?;
        let op = Op::QGemm(QGemm {
            m: g.m,
            k: g.k,
            n: g.n,
            trans_a: g.trans_a,
            trans_b: g.trans_b,
            requants: self.value(b.scale).len(),
            clamp,
        });
        self.rewrite(r, j, op, &inputs, &q)
    }

    #[cfg(feature = "op-gemm")]
    fn fuse_matmul(&mut self, r: &mut Readers, j: usize, matmul: MatMul) -> Option<()> {
        let q = self.quant_reader(r, j)?;
        let a = self.activation_dq(self.input(j, 0)?)?;
        let b = self.weight_dq(self.input(j, 1)?, 1, matmul.n)?;
        if self.value(b.q).shape.rank() != 2 {
            return None;
        }
        let inputs = [a.q, a.scale, a.zero, b.q, b.scale, b.zero, q.scale, q.zero];
        self.check_requants(&inputs)?;
        let op = Op::QLinearMatMul(QLinearMatMul {
            matmul,
            requants: self.value(b.scale).len(),
        });
        self.rewrite(r, j, op, &inputs, &q)
    }

    /// An op that moves or selects elements (max pooling, reshapes,
    /// transposes) between a DQ and a Q of the same parameters: the same op
    /// on the quantized elements gives exactly the same values.
    fn fuse_layout(&mut self, r: &mut Readers, j: usize) -> Option<()> {
        let q = self.quant_reader(r, j)?;
        let x = self.activation_dq(self.input(j, 0)?)?;
        let same = self.value(x.q).dtype == self.value(q.out).dtype
            && self.scalar(x.scale)? == self.scalar(q.scale)?
            && self.zero_point(x.zero)? == self.zero_point(q.zero)?;
        if !same {
            return None;
        }
        let n = usize::from(self.nodes[j].n_inputs);
        let mut inputs = [ABSENT; MAX_NODE_INPUTS];
        let inputs = inputs.get_mut(..n)?;
        for (i, slot) in inputs.iter_mut().enumerate() {
            *slot = self.raw_input(j, i);
        }
        *inputs.first_mut()? = x.q;
        let op = self.nodes[j].op;
        self.rewrite(r, j, op, inputs, &q)
    }

    #[cfg(feature = "op-pool")]
    fn fuse_average(
        &mut self,
        r: &mut Readers,
        j: usize,
        window: QPoolWindow,
        count: usize,
    ) -> Option<()> {
        let q = self.quant_reader(r, j)?;
        let x = self.activation_dq(self.input(j, 0)?)?;
        let inputs = [x.q, x.scale, x.zero, q.scale, q.zero];
        let values = self.inputs_of(&inputs);
        let pool = QAveragePool::new(window, count, &values);
        pool.requant(&values).ok()?;
        self.rewrite(r, j, Op::QAveragePool(pool), &inputs, &q)
    }

    #[cfg(feature = "op-elementwise")]
    fn fuse_add(&mut self, r: &mut Readers, j: usize) -> Option<()> {
        let q = self.quant_reader(r, j)?;
        let a = self.activation_dq(self.input(j, 0)?)?;
        let b = self.activation_dq(self.input(j, 1)?)?;
        let inputs = [a.q, a.scale, a.zero, b.q, b.scale, b.zero, q.scale, q.zero];
        qadd::requants(&self.inputs_of(&inputs)).ok()?;
        let op = Op::QAdd(QAdd { clamp: Clamp::NONE });
        self.rewrite(r, j, op, &inputs, &q)
    }
}
