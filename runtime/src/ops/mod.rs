//! Operators: each file parses one op's attributes, checks its inputs and
//! infers its output shape at load time (`prepare`), and runs it on slices at
//! run time (`eval`), which cannot fail on shape.

pub mod binary;
pub mod cast;
pub mod concat;
pub mod constant;
pub mod conv;
mod data;
pub mod fold;
pub mod gemm;
pub mod integer;
pub mod matmul;
pub mod normalization;
pub mod pad;
pub mod pool;
pub mod qadd;
pub mod qgemm;
pub mod qlinear;
pub mod qpool;
pub mod quantize;
pub mod reshape;
pub mod softmax;
pub mod transpose;
pub mod unary;

use crate::error::{name, At, Error};
use crate::kernels::generic::activation::Activation;
use crate::kernels::generic::binary::BinaryOp;
use crate::limits::MAX_ATTRIBUTES;
use crate::proto::onnx::{AttributeKind, AttributeView, NodeView};
use crate::quant::{QElem, Requant};
use crate::tensor::{DType, Shape};
use crate::value::Value;

pub(crate) use data::{any_type, q8, q8_mut, zero_points, ZeroPoints};
pub use data::{Data, DataMut, Elem, Tensor, TensorRef};

/// A prepared operator with everything `eval` needs precomputed.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Op {
    /// Conv (1-D or 2-D), with an optional fused activation.
    Conv(conv::Conv),
    /// Gemm, with an optional fused activation.
    Gemm(gemm::Gemm),
    /// MatMul with numpy batch broadcasting.
    MatMul(matmul::MatMul),
    /// Add / Sub / Mul / Div with multidirectional broadcasting.
    Binary(BinaryOp),
    /// An elementwise activation (Relu, Sigmoid, constant Clip, ...).
    Unary(Activation),
    /// Clip whose min/max are run-time inputs.
    ClipDynamic,
    /// Softmax / LogSoftmax.
    Softmax(softmax::Softmax),
    /// MaxPool / AveragePool.
    Pool(pool::Pool),
    /// GlobalAveragePool.
    GlobalAveragePool,
    /// BatchNormalization (inference).
    BatchNorm(normalization::BatchNorm),
    /// Reshape, Flatten, Squeeze, Unsqueeze, Identity, Dropout: the output
    /// holds the input's elements unchanged.
    Reshape,
    /// Transpose.
    Transpose(transpose::Transpose),
    /// Concat.
    Concat(concat::Concat),
    /// Pad (constant mode).
    Pad(pad::Pad),
    /// QuantizeLinear (float32 to int8/uint8).
    Quantize(quantize::Quantize),
    /// DequantizeLinear (int8/uint8/int32 to float32).
    Dequantize(quantize::Dequantize),
    /// QLinearConv: int8/uint8 convolution, requantized output.
    QLinearConv(qlinear::QLinearConv),
    /// QLinearMatMul: int8/uint8 matrix product, requantized output.
    QLinearMatMul(qlinear::QLinearMatMul),
    /// ConvInteger: int8/uint8 convolution, int32 output.
    ConvInteger(integer::ConvInteger),
    /// MatMulInteger: int8/uint8 matrix product, int32 output.
    MatMulInteger(matmul::MatMul),
    /// int8 Gemm, made at load time from a QDQ Gemm ([`crate::fuse`]).
    QGemm(qgemm::QGemm),
    /// int8 AveragePool / GlobalAveragePool, made at load time from a QDQ
    /// one ([`crate::fuse`]).
    QAveragePool(qpool::QAveragePool),
    /// int8 Add, made at load time from a QDQ Add ([`crate::fuse`]).
    QAdd(qadd::QAdd),
    /// Cast of a run-time value between float32, int8, uint8 and int32
    /// (the output's type is the target; a Cast of a constant is folded at
    /// load time, see [`cast`]).
    Cast,
    /// Nothing to run: a `Constant` node, an activation fused into the
    /// node before it, or a DequantizeLinear/QuantizeLinear absorbed into
    /// an integer op by the QDQ rewrite.
    Nop,
}

impl Op {
    /// Whether the output may share its input 0's buffer: the kernel reads
    /// each element before writing the same position.
    pub fn in_place(&self) -> bool {
        matches!(self, Op::Unary(_))
    }

    /// Whether the output is input 0 reinterpreted (no work at all when the
    /// two share a buffer).
    pub fn is_alias(&self) -> bool {
        matches!(self, Op::Reshape)
    }

    /// Multiply-accumulates one run performs (0 for ops that are not MAC-bound).
    pub fn macs(&self, output: &Shape) -> u64 {
        match self {
            Op::Conv(c) => c.macs(),
            Op::QLinearConv(c) => conv::macs(&c.geometry),
            Op::ConvInteger(c) => conv::macs(&c.geometry),
            Op::Gemm(g) => g.macs(),
            Op::MatMul(m) | Op::MatMulInteger(m) => m.macs(output),
            Op::QLinearMatMul(q) => q.matmul.macs(output),
            Op::QGemm(g) => g.macs(),
            _ => 0,
        }
    }

    /// How many [`Requant`]s the op keeps in the arena for the whole run:
    /// computed once from its constant scales by `Session::new` (see
    /// [`fill_requants`]), read by [`eval`]. 0 for most ops.
    pub fn requant_len(&self) -> usize {
        match self {
            Op::QLinearConv(c) => c.requants,
            Op::QLinearMatMul(m) => m.requants,
            Op::QGemm(g) => g.requants,
            Op::QAveragePool(_) => 1,
            Op::QAdd(_) => qadd::REQUANTS,
            _ => 0,
        }
    }

    /// The activation a following Relu/Clip/... can be folded into, if any.
    pub(crate) fn fused_activation_mut(&mut self) -> Option<&mut Activation> {
        match self {
            Op::Conv(c) if c.activation == Activation::None => Some(&mut c.activation),
            Op::Gemm(g) if g.activation == Activation::None => Some(&mut g.activation),
            _ => None,
        }
    }
}

/// The output type and shape a node produces.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Output<'a> {
    /// Element type.
    pub dtype: DType,
    /// Static shape.
    pub shape: Shape,
    /// Set when the output is a load-time constant (`Constant` nodes).
    pub constant: Option<crate::value::ConstData<'a>>,
}

impl Output<'_> {
    /// An f32 output of the given shape.
    pub fn f32(shape: Shape) -> Self {
        Self::typed(DType::F32, shape)
    }

    /// A run-time output of element type `dtype`.
    pub fn typed(dtype: DType, shape: Shape) -> Self {
        Output {
            dtype,
            shape,
            constant: None,
        }
    }
}

/// How each supported op's versions map onto what `prepare` implements:
/// `(op_type, versions where the op changed, oldest version implemented)`.
/// The version lists are those of the ONNX operator changelog up to opset 28.
const OP_VERSIONS: &[(&str, &[u32], u32)] = &[
    ("Add", &[1, 6, 7, 13, 14], 7),
    ("AveragePool", &[1, 7, 10, 11, 19, 22], 7),
    ("Cast", &[1, 6, 9, 13, 19, 21, 23, 24, 25, 28], 6),
    ("BatchNormalization", &[1, 6, 7, 9, 14, 15], 7),
    ("Clip", &[1, 6, 11, 12, 13], 6),
    ("Concat", &[1, 4, 11, 13], 4),
    ("Constant", &[1, 9, 11, 12, 13, 19, 21, 23, 24, 25], 1),
    ("Conv", &[1, 11, 22], 1),
    ("ConvInteger", &[10], 10),
    ("DequantizeLinear", &[10, 13, 19, 21, 23, 24, 25], 10),
    ("Div", &[1, 6, 7, 13, 14], 7),
    ("Dropout", &[1, 6, 7, 10, 12, 13, 22], 7),
    ("Flatten", &[1, 9, 11, 13, 21, 23, 24, 25], 1),
    ("Gemm", &[1, 6, 7, 9, 11, 13], 7),
    ("GlobalAveragePool", &[1, 22], 1),
    ("HardSigmoid", &[1, 6, 22], 6),
    ("HardSwish", &[14, 22], 14),
    ("Identity", &[1, 13, 14, 16, 19, 21, 23, 24, 25], 1),
    ("LeakyRelu", &[1, 6, 16], 6),
    ("LogSoftmax", &[1, 11, 13], 1),
    ("MatMul", &[1, 9, 13], 1),
    ("MatMulInteger", &[10], 10),
    ("MaxPool", &[1, 8, 10, 11, 12, 22], 1),
    ("Mul", &[1, 6, 7, 13, 14], 7),
    ("Pad", &[1, 2, 11, 13, 18, 19, 21, 23, 24, 25], 2),
    ("QLinearConv", &[10], 10),
    ("QLinearMatMul", &[10, 21], 10),
    ("QuantizeLinear", &[10, 13, 19, 21, 23, 24, 25], 10),
    ("Relu", &[1, 6, 13, 14], 6),
    ("Reshape", &[1, 5, 13, 14, 19, 21, 23, 24, 25], 5),
    ("Sigmoid", &[1, 6, 13], 6),
    ("Softmax", &[1, 11, 13], 1),
    ("Squeeze", &[1, 11, 13, 21, 23, 24, 25], 1),
    ("Sub", &[1, 6, 7, 13, 14], 7),
    ("Tanh", &[1, 6, 13], 6),
    ("Transpose", &[1, 13, 21, 23, 24, 25], 1),
    ("Unsqueeze", &[1, 11, 13, 21, 23, 24, 25], 1),
];

/// Newest default-domain opset the version table covers.
pub const MAX_OPSET: i64 = 28;

/// The op types the runtime implements, for listings.
pub fn supported_ops() -> impl Iterator<Item = &'static str> {
    OP_VERSIONS.iter().map(|(name, _, _)| *name)
}

/// Resolves which version of `op_type` a model importing `opset` uses.
fn op_version(at: &At, op_type: &str, opset: i64) -> Result<u32, Error> {
    let unsupported = |detail: &str| Error::UnsupportedOp {
        at: at.clone(),
        detail: name(detail),
    };
    let Some((_, versions, oldest)) = OP_VERSIONS.iter().find(|(n, _, _)| *n == op_type) else {
        return Err(unsupported(""));
    };
    if opset == 0 {
        return Err(Error::Node {
            at: at.clone(),
            value: name(""),
            reason: "the model imports no opset for the default ONNX domain",
        });
    }
    let Some(&version) = versions.iter().rev().find(|&&v| i64::from(v) <= opset) else {
        return Err(unsupported(" (does not exist in the imported opset)"));
    };
    if version < *oldest {
        return Err(unsupported(
            " (this old op version is not implemented; re-export with a newer opset)",
        ));
    }
    Ok(version)
}

/// Everything `prepare` may look at for one node.
pub struct NodeCtx<'c, 'a> {
    /// Position of the node in the graph.
    pub index: usize,
    /// The node as stored in the file.
    pub node: NodeView<'a>,
    /// The op version in effect (from the model's opset import).
    pub version: u32,
    /// The node's inputs (`None` for an omitted optional input).
    pub inputs: &'c [Option<&'c Value<'a>>],
    /// How many outputs the node declares (including empty names).
    pub outputs: usize,
    /// Which declared outputs have a non-empty name.
    pub output_used: &'c [bool],
}

impl<'c, 'a> NodeCtx<'c, 'a> {
    /// Where this node is, for errors.
    pub fn at(&self) -> At {
        At::node(self.index, self.node.name, self.node.op_type)
    }

    /// An error about one of this node's values.
    pub fn err(&self, value: &str, reason: &'static str) -> Error {
        Error::Node {
            at: self.at(),
            value: name(value),
            reason,
        }
    }

    /// A valid feature this runtime does not implement.
    pub fn unsupported(&self, what: &'static str) -> Error {
        Error::Unsupported {
            at: self.at(),
            what,
        }
    }

    /// An error about one of this node's attributes.
    pub fn attr_err(&self, attribute: &str, reason: &'static str) -> Error {
        Error::Attribute {
            at: self.at(),
            attribute: name(attribute),
            reason,
        }
    }

    /// Rejects any attribute not in `known`, so an unimplemented feature is
    /// an error instead of a silently wrong answer.
    pub fn check_attributes(&self, known: &[&str]) -> Result<(), Error> {
        for (i, a) in self.node.attributes().enumerate() {
            let a = a?;
            if i >= MAX_ATTRIBUTES {
                return Err(self.attr_err(a.name, "too many attributes"));
            }
            if a.is_reference {
                return Err(self.attr_err(
                    a.name,
                    "attribute references are only valid inside functions",
                ));
            }
            if !known.contains(&a.name) {
                return Err(Error::Unsupported {
                    at: self.at(),
                    what: "an attribute this runtime does not know for this op version",
                });
            }
        }
        Ok(())
    }

    /// Finds attribute `key`, checking its type.
    pub fn attr(&self, key: &str, kind: AttributeKind) -> Result<Option<AttributeView<'a>>, Error> {
        for a in self.node.attributes().take(MAX_ATTRIBUTES) {
            let a = a?;
            if a.name == key {
                if a.kind != kind {
                    return Err(self.attr_err(key, "has the wrong type"));
                }
                return Ok(Some(a));
            }
        }
        Ok(None)
    }

    /// An INT attribute, or `default`.
    pub fn attr_int(&self, key: &str, default: i64) -> Result<i64, Error> {
        Ok(self.attr(key, AttributeKind::Int)?.map_or(default, |a| a.i))
    }

    /// A FLOAT attribute, or `default`.
    pub fn attr_float(&self, key: &str, default: f32) -> Result<f32, Error> {
        Ok(self
            .attr(key, AttributeKind::Float)?
            .map_or(default, |a| a.f))
    }

    /// A STRING attribute, or `default`.
    pub fn attr_string(&self, key: &str, default: &'a str) -> Result<&'a str, Error> {
        match self.attr(key, AttributeKind::String)? {
            None => Ok(default),
            Some(a) => core::str::from_utf8(a.s).map_err(|_| self.attr_err(key, "is not UTF-8")),
        }
    }

    /// An INTS attribute copied into `out`; `Ok(None)` when absent.
    pub fn attr_ints(&self, key: &str, out: &mut [i64]) -> Result<Option<usize>, Error> {
        let Some(a) = self.attr(key, AttributeKind::Ints)? else {
            return Ok(None);
        };
        let mut n = 0;
        for v in a.ints() {
            *out.get_mut(n)
                .ok_or_else(|| self.attr_err(key, "has too many entries"))? = v;
            n += 1;
        }
        Ok(Some(n))
    }

    /// Input `i`, which must be present.
    pub fn input(&self, i: usize) -> Result<&'c Value<'a>, Error> {
        match self.inputs.get(i) {
            Some(Some(v)) => Ok(v),
            _ => Err(self.err("", "a required input is missing")),
        }
    }

    /// Input `i`, which must be present and f32.
    pub fn f32_input(&self, i: usize) -> Result<&'c Value<'a>, Error> {
        self.typed_input(i, &[DType::F32])
    }

    /// Input `i`, which must be present and of one of the types `allowed`
    /// (else [`Error::DType`]).
    pub fn typed_input(&self, i: usize, allowed: &[DType]) -> Result<&'c Value<'a>, Error> {
        let v = self.input(i)?;
        check_dtype(v, allowed)?;
        Ok(v)
    }

    /// Optional input `i`.
    pub fn optional_input(&self, i: usize) -> Option<&'c Value<'a>> {
        self.inputs.get(i).copied().flatten()
    }

    /// Checks the input count lies in `min..=max` and that only output 0 is
    /// used (every supported op produces one tensor at inference).
    pub fn check_arity(&self, min: usize, max: usize) -> Result<(), Error> {
        if self.inputs.len() < min || self.inputs.len() > max {
            return Err(self.err("", "wrong number of inputs"));
        }
        if self.outputs == 0 {
            return Err(self.err("", "node has no outputs"));
        }
        if self.output_used.iter().skip(1).any(|&used| used) {
            return Err(
                self.unsupported("outputs after the first (training-mode or index outputs)")
            );
        }
        Ok(())
    }

    /// Reads constant integer input `i` (int64/int32) into `out`.
    pub fn const_ints(&self, i: usize, out: &mut [i64]) -> Result<usize, Error> {
        let v = self.input(i)?;
        if v.constant().is_none() {
            return Err(self.unsupported(
                "a shape/axes/pads input computed at run time (make it an initializer)",
            ));
        }
        v.const_ints(out)
            .ok_or_else(|| self.err(v.name, "must be an int64 tensor of reasonable length"))
    }

    /// Resolves `axis` against `rank` (negative counts from the end).
    pub fn axis(&self, key: &str, axis: i64, rank: usize) -> Result<usize, Error> {
        let r = rank as i64;
        let a = if axis < 0 { axis + r } else { axis };
        if a < 0 || a >= r.max(1) {
            return Err(self.attr_err(key, "axis out of range for the input rank"));
        }
        Ok(a as usize)
    }

    /// Builds a shape, rejecting ranks and sizes beyond the runtime's limits.
    pub fn shape(&self, dims: &[usize]) -> Result<Shape, Error> {
        let s =
            Shape::new(dims).ok_or_else(|| self.err("", "output rank or dimension too large"))?;
        match s.num_elements_within(crate::limits::MAX_ELEMENTS) {
            Some(_) => Ok(s),
            _ => Err(self.err("", "output has too many elements")),
        }
    }
}

/// Element types every layout op (reshape, transpose, concat, pad) moves.
pub const RUN_TIME_TYPES: &[DType] = &[DType::F32, DType::I8, DType::U8, DType::I32];

/// The 8-bit quantized element types.
pub const Q8_TYPES: &[DType] = &[DType::I8, DType::U8];

/// [`Error::DType`] unless `v`'s element type is one of `allowed`.
pub fn check_dtype(v: &Value<'_>, allowed: &[DType]) -> Result<(), Error> {
    if allowed.contains(&v.dtype) {
        Ok(())
    } else {
        Err(Error::DType {
            value: name(v.name),
            dtype: v.dtype,
        })
    }
}

/// Parses and checks one node; returns its prepared op and output.
pub fn prepare<'a>(ctx: &NodeCtx<'_, 'a>, opset: i64) -> Result<(Op, Output<'a>), Error> {
    if let Some(folded) = fold::try_fold(ctx, opset) {
        return folded;
    }
    let op_type = ctx.node.op_type;
    let version = op_version(&ctx.at(), op_type, opset)?;
    let ctx = NodeCtx { version, ..*ctx };
    let ctx = &ctx;
    match op_type {
        "Conv" => conv::prepare(ctx),
        "Gemm" => gemm::prepare(ctx),
        "MatMul" => matmul::prepare(ctx),
        "Add" => binary::prepare(ctx, BinaryOp::Add),
        "Sub" => binary::prepare(ctx, BinaryOp::Sub),
        "Mul" => binary::prepare(ctx, BinaryOp::Mul),
        "Div" => binary::prepare(ctx, BinaryOp::Div),
        t if unary::ACTIVATIONS.contains(&t) => unary::prepare(ctx),
        "Softmax" => softmax::prepare(ctx, false),
        "LogSoftmax" => softmax::prepare(ctx, true),
        "MaxPool" | "AveragePool" => pool::prepare(ctx),
        "GlobalAveragePool" => pool::prepare_global(ctx),
        "BatchNormalization" => normalization::prepare(ctx),
        "Flatten" | "Reshape" | "Squeeze" | "Unsqueeze" | "Identity" | "Dropout" => {
            reshape::prepare(ctx)
        }
        "Transpose" => transpose::prepare(ctx),
        "Concat" => concat::prepare(ctx),
        "Pad" => pad::prepare(ctx),
        "Constant" => constant::prepare(ctx),
        "Cast" => cast::prepare(ctx),
        "QuantizeLinear" => quantize::prepare_quantize(ctx),
        "DequantizeLinear" => quantize::prepare_dequantize(ctx),
        "QLinearConv" => qlinear::prepare_conv(ctx),
        "QLinearMatMul" => qlinear::prepare_matmul(ctx),
        "ConvInteger" => integer::prepare_conv(ctx),
        "MatMulInteger" => integer::prepare_matmul(ctx),
        _ => Err(Error::UnsupportedOp {
            at: ctx.at(),
            detail: name(""),
        }),
    }
}

/// Runs a prepared op. `inputs` holds every declared input (`None` where an
/// optional one is omitted, or where the input is only read at load time);
/// `output` is the output buffer, of the type `prepare` gave the output;
/// `requants` the op's arena entries (see [`Op::requant_len`]).
pub fn eval(
    op: &Op,
    inputs: &[Option<TensorRef<'_>>],
    output: DataMut<'_>,
    output_shape: &Shape,
    requants: &[Requant],
) {
    let input = |i: usize| inputs.get(i).copied().flatten();
    let Some(x) = input(0) else {
        return;
    };
    match op {
        Op::Reshape => {
            let mut output = output;
            output.copy_from(x.data);
        }
        Op::Transpose(t) => any_type!(output, |y| t.eval(x, y)),
        Op::Concat(c) => any_type!(output, |y| c.eval(inputs, y)),
        Op::Pad(p) => any_type!(output, |y| p.eval(x, input(2), y)),
        Op::Pool(p) => p.eval(x.data, output),
        Op::Quantize(q) => q.eval(x, input(1), input(2), output),
        Op::Dequantize(d) => d.eval(x, input(1), input(2), output),
        Op::QLinearConv(c) => c.eval(inputs, requants, output),
        Op::QLinearMatMul(m) => m.eval(inputs, requants, output, output_shape),
        Op::ConvInteger(c) => c.eval(inputs, output),
        Op::MatMulInteger(m) => integer::eval_matmul(m, inputs, output, output_shape),
        Op::QGemm(g) => g.eval(inputs, requants, output),
        Op::QAveragePool(p) => p.eval(inputs, requants, output),
        Op::QAdd(a) => a.eval(inputs, requants, output, output_shape),
        Op::Cast => cast::eval(x.data, output),
        _ => {
            if let DataMut::F32(y) = output {
                eval_f32(op, inputs, y, output_shape);
            }
        }
    }
}

/// The float-only ops: every input they read at run time is f32 (checked
/// by `prepare`), so each is handed `&[f32]` views.
fn eval_f32(op: &Op, inputs: &[Option<TensorRef<'_>>], output: &mut [f32], output_shape: &Shape) {
    let input = |i: usize| inputs.get(i).copied().flatten().and_then(TensorRef::typed);
    let data = |i: usize| input(i).map_or(&[][..], |t: Tensor<'_, f32>| t.data);
    let Some(x) = input(0) else {
        return;
    };
    match op {
        Op::Conv(c) => c.eval(x.data, data(1), input(2).map(|b| b.data), output),
        Op::Gemm(g) => g.eval(x.data, data(1), input(2), output),
        Op::MatMul(m) => m.eval(x, input(1), output, output_shape),
        Op::Binary(b) => binary::eval(*b, x, input(1), output, output_shape),
        Op::Unary(act) => crate::kernels::generic::unary::unary_f32(*act, x.data, output),
        Op::ClipDynamic => unary::eval_clip(x.data, input(1), input(2), output),
        Op::Softmax(s) => s.eval(x.data, output),
        Op::GlobalAveragePool => pool::eval_global(x, output),
        Op::BatchNorm(bn) => bn.eval(x, [data(1), data(2), data(3), data(4)], output),
        _ => {}
    }
}

/// Runs an op whose output shares input 0's buffer (see [`Op::in_place`]).
pub fn eval_in_place(op: &Op, data: DataMut<'_>) {
    if let (Op::Unary(act), DataMut::F32(data)) = (op, data) {
        crate::kernels::generic::unary::unary_in_place_f32(*act, data);
    }
}

/// Computes the arena entries of an op with [`Op::requant_len`] > 0 from
/// its constant inputs (`inputs` as in `prepare`). Writes nothing for
/// other ops.
pub fn fill_requants(op: &Op, inputs: &[Option<&Value<'_>>], out: &mut [Requant]) {
    match op {
        Op::QLinearConv(_) | Op::QLinearMatMul(_) | Op::QGemm(_) => {
            qlinear::fill_requants(inputs, out)
        }
        Op::QAveragePool(p) => p.fill_requants(inputs, out),
        Op::QAdd(_) => qadd::fill_requants(inputs, out),
        _ => {}
    }
}

/// Reads a quantized zero point constant `v` (one per entry) as `T`'s
/// range allows, reporting an out-of-range value against the node.
pub(crate) fn check_zero_points<T: QElem>(ctx: &NodeCtx, v: &Value<'_>) -> Result<(), Error> {
    if v.constant().is_none() {
        return Ok(()); // a run-time zero point is in range by its type
    }
    let mut bad = None;
    let read = v.for_each_const(|i, z| {
        if bad.is_none() {
            if let Err(e) = crate::quant::check_zero_point::<T>("zero point", i, z as i64) {
                bad = Some(e);
            }
        }
    });
    match (read, bad) {
        (None, _) => Err(ctx.err(v.name, "unreadable constant")),
        (_, Some(e)) => Err(ctx.err(v.name, e.reason())),
        _ => Ok(()),
    }
}
