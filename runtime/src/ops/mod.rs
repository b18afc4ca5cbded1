//! Operators: each file parses one op's attributes, checks its inputs and
//! infers its output shape at load time (`prepare`), and runs it on slices at
//! run time (`eval`), which cannot fail on shape.
//!
//! Ops come in families, each behind a cargo feature (`all-ops`, the
//! default, enables them all), so that a firmware links only the kernels its
//! model needs. A family left out loses its [`Op`] variants, its entries in
//! the version table ([`supported_ops`]) and its `prepare`/`eval` arms: a
//! model using one of its ops fails to load with [`Error::UnsupportedOp`].
//!
//! | feature | ops |
//! | --- | --- |
//! | `op-gemm` | Gemm, MatMul |
//! | `op-conv` | Conv |
//! | `op-pool` | MaxPool, AveragePool, GlobalAveragePool |
//! | `op-activation` | Relu, LeakyRelu, Clip, HardSigmoid, HardSwish |
//! | `op-sigmoid` | Sigmoid, Tanh |
//! | `op-softmax` | Softmax, LogSoftmax |
//! | `op-elementwise` | Add, Sub, Mul, Div, BatchNormalization |
//! | `op-reshape` | Reshape, Flatten, Squeeze, Unsqueeze, Identity, Dropout; shape arithmetic folded at load ([`fold`]) |
//! | `op-layout` | Transpose, Concat, Pad |
//! | `op-cast` | Cast |
//! | `op-quant` | QuantizeLinear, DequantizeLinear, and the int8 ops the QDQ rewrite ([`crate::fuse`]) makes of the families above: QDQ Gemm/MatMul (with `op-gemm`), Conv (`op-conv`), average pools (`op-pool`), Add (`op-elementwise`) |
//! | `op-qoperator` | ONNX's operator-form quantized ops: QLinearMatMul, MatMulInteger (with `op-gemm`), QLinearConv, ConvInteger (with `op-conv`); implies `op-quant` |
//! | `quant-u8` | uint8 as a quantized type besides int8 (implies `op-quant`) |
//!
//! `Constant` is always there.

pub mod constant;
mod data;

#[cfg(feature = "op-cast")]
pub mod cast;

#[cfg(feature = "op-elementwise")]
pub mod binary;
#[cfg(feature = "op-layout")]
pub mod concat;
// Pooling shares Conv's attribute parsing, and the int8 MatMul ops share a
// file with the int8 Conv ones: the module is compiled for them, its op is
// registered only with `op-conv`.
#[cfg(any(
    feature = "op-conv",
    feature = "op-pool",
    all(feature = "op-quant", feature = "op-gemm")
))]
#[cfg_attr(not(feature = "op-conv"), allow(dead_code, unused_imports))]
pub mod conv;
#[cfg(feature = "op-reshape")]
pub mod fold;
#[cfg(feature = "op-gemm")]
pub mod gemm;
// ConvInteger and MatMulInteger (one file): see `conv`.
#[cfg(all(
    feature = "op-qoperator",
    any(feature = "op-conv", feature = "op-gemm")
))]
#[cfg_attr(
    not(all(feature = "op-conv", feature = "op-gemm")),
    allow(dead_code, unused_imports)
)]
pub mod integer;
// The int8 Conv ops use its batched-shape rules: see `conv`.
#[cfg(any(feature = "op-gemm", all(feature = "op-quant", feature = "op-conv")))]
#[cfg_attr(not(feature = "op-gemm"), allow(dead_code, unused_imports))]
pub mod matmul;
#[cfg(feature = "op-elementwise")]
pub mod normalization;
#[cfg(feature = "op-layout")]
pub mod pad;
#[cfg(feature = "op-pool")]
pub mod pool;
#[cfg(all(feature = "op-quant", feature = "op-elementwise"))]
pub mod qadd;
#[cfg(all(feature = "op-quant", feature = "op-gemm"))]
pub mod qgemm;
// QLinearConv and QLinearMatMul (one file): see `conv`. The QDQ rewrite
// makes these ops too; parsing them from a file is `op-qoperator`.
#[cfg(all(feature = "op-quant", any(feature = "op-conv", feature = "op-gemm")))]
#[cfg_attr(
    not(all(feature = "op-conv", feature = "op-gemm", feature = "op-qoperator")),
    allow(dead_code, unused_imports)
)]
pub mod qlinear;
#[cfg(all(feature = "op-quant", feature = "op-pool"))]
pub mod qpool;
#[cfg(feature = "op-quant")]
pub mod quantize;
#[cfg(feature = "op-reshape")]
pub mod reshape;
#[cfg(feature = "op-softmax")]
pub mod softmax;
#[cfg(feature = "op-layout")]
pub mod transpose;
#[cfg(any(feature = "op-activation", feature = "op-sigmoid"))]
pub mod unary;

use crate::error::{name, At, Error};
#[cfg(any(feature = "op-activation", feature = "op-sigmoid"))]
use crate::kernels::generic::activation::Activation;
#[cfg(feature = "op-elementwise")]
use crate::kernels::generic::binary::BinaryOp;
use crate::limits::MAX_ATTRIBUTES;
use crate::proto::onnx::{AttributeKind, AttributeView, NodeView};
#[cfg(feature = "op-quant")]
use crate::quant::QElem;
use crate::quant::Requant;
use crate::tensor::{DType, Shape};
use crate::value::Value;

#[cfg(any(feature = "op-layout", feature = "op-cast"))]
pub(crate) use data::any_type;
#[cfg(all(
    feature = "op-quant",
    any(
        feature = "op-conv",
        feature = "op-gemm",
        feature = "op-pool",
        feature = "op-elementwise"
    )
))]
pub(crate) use data::q8;
#[cfg(feature = "op-quant")]
pub(crate) use data::{q8_mut, zero_points, ZeroPoints};
pub use data::{Data, DataMut, Elem, Tensor, TensorRef};

/// A prepared operator with everything `eval` needs precomputed.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Op {
    /// Conv (1-D or 2-D), with an optional fused activation.
    #[cfg(feature = "op-conv")]
    Conv(conv::Conv),
    /// Gemm, with an optional fused activation.
    #[cfg(feature = "op-gemm")]
    Gemm(gemm::Gemm),
    /// MatMul with numpy batch broadcasting.
    #[cfg(feature = "op-gemm")]
    MatMul(matmul::MatMul),
    /// Add / Sub / Mul / Div with multidirectional broadcasting.
    #[cfg(feature = "op-elementwise")]
    Binary(BinaryOp),
    /// An elementwise activation (Relu, Sigmoid, constant Clip, ...).
    #[cfg(any(feature = "op-activation", feature = "op-sigmoid"))]
    Unary(Activation),
    /// Clip whose min/max are run-time inputs.
    #[cfg(feature = "op-activation")]
    ClipDynamic,
    /// Softmax / LogSoftmax.
    #[cfg(feature = "op-softmax")]
    Softmax(softmax::Softmax),
    /// MaxPool / AveragePool.
    #[cfg(feature = "op-pool")]
    Pool(pool::Pool),
    /// GlobalAveragePool.
    #[cfg(feature = "op-pool")]
    GlobalAveragePool,
    /// BatchNormalization (inference).
    #[cfg(feature = "op-elementwise")]
    BatchNorm(normalization::BatchNorm),
    /// The output holds the input's elements unchanged: Reshape, Flatten,
    /// Squeeze, Unsqueeze, Identity, Dropout (`op-reshape`), and a Cast of a
    /// run-time value to its own type, so it is always compiled in.
    Reshape,
    /// Transpose.
    #[cfg(feature = "op-layout")]
    Transpose(transpose::Transpose),
    /// Concat.
    #[cfg(feature = "op-layout")]
    Concat(concat::Concat),
    /// Pad (constant mode).
    #[cfg(feature = "op-layout")]
    Pad(pad::Pad),
    /// QuantizeLinear (float32 to int8/uint8).
    #[cfg(feature = "op-quant")]
    Quantize(quantize::Quantize),
    /// DequantizeLinear (int8/uint8/int32 to float32).
    #[cfg(feature = "op-quant")]
    Dequantize(quantize::Dequantize),
    /// QLinearConv: int8/uint8 convolution, requantized output (read from
    /// the file with `op-qoperator`, or made by the QDQ rewrite).
    #[cfg(all(feature = "op-quant", feature = "op-conv"))]
    QLinearConv(qlinear::QLinearConv),
    /// QLinearMatMul: int8/uint8 matrix product, requantized output (read
    /// from the file with `op-qoperator`, or made by the QDQ rewrite).
    #[cfg(all(feature = "op-quant", feature = "op-gemm"))]
    QLinearMatMul(qlinear::QLinearMatMul),
    /// ConvInteger: int8/uint8 convolution, int32 output.
    #[cfg(all(feature = "op-qoperator", feature = "op-conv"))]
    ConvInteger(integer::ConvInteger),
    /// MatMulInteger: int8/uint8 matrix product, int32 output.
    #[cfg(all(feature = "op-qoperator", feature = "op-gemm"))]
    MatMulInteger(matmul::MatMul),
    /// int8 Gemm, made at load time from a QDQ Gemm ([`crate::fuse`]).
    #[cfg(all(feature = "op-quant", feature = "op-gemm"))]
    QGemm(qgemm::QGemm),
    /// int8 AveragePool / GlobalAveragePool, made at load time from a QDQ
    /// one ([`crate::fuse`]).
    #[cfg(all(feature = "op-quant", feature = "op-pool"))]
    QAveragePool(qpool::QAveragePool),
    /// int8 Add, made at load time from a QDQ Add ([`crate::fuse`]).
    #[cfg(all(feature = "op-quant", feature = "op-elementwise"))]
    QAdd(qadd::QAdd),
    /// Cast of a run-time value between float32, int8, uint8 and int32
    /// (the output's type is the target; a Cast of a constant is folded at
    /// load time, see [`cast`]).
    #[cfg(feature = "op-cast")]
    Cast,
    /// Nothing to run: a `Constant` node, an activation fused into the
    /// node before it, or a DequantizeLinear/QuantizeLinear absorbed into
    /// an integer op by the QDQ rewrite.
    Nop,
}

impl Op {
    /// Whether the output may share its input 0's buffer: the kernel reads
    /// each element before writing the same position.
    // A match rather than `matches!`, so that the arm can be compiled out.
    #[allow(clippy::match_like_matches_macro)]
    pub fn in_place(&self) -> bool {
        match self {
            #[cfg(any(feature = "op-activation", feature = "op-sigmoid"))]
            Op::Unary(_) => true,
            _ => false,
        }
    }

    /// Whether the output is input 0 reinterpreted (no work at all when the
    /// two share a buffer).
    pub fn is_alias(&self) -> bool {
        matches!(self, Op::Reshape)
    }

    /// Multiply-accumulates one run performs (0 for ops that are not MAC-bound).
    #[cfg_attr(not(feature = "op-gemm"), allow(unused_variables))]
    pub fn macs(&self, output: &Shape) -> u64 {
        match self {
            #[cfg(feature = "op-conv")]
            Op::Conv(c) => c.macs(),
            #[cfg(all(feature = "op-quant", feature = "op-conv"))]
            Op::QLinearConv(c) => conv::macs(&c.geometry),
            #[cfg(all(feature = "op-qoperator", feature = "op-conv"))]
            Op::ConvInteger(c) => conv::macs(&c.geometry),
            #[cfg(feature = "op-gemm")]
            Op::Gemm(g) => g.macs(),
            #[cfg(feature = "op-gemm")]
            Op::MatMul(m) => m.macs(output),
            #[cfg(all(feature = "op-qoperator", feature = "op-gemm"))]
            Op::MatMulInteger(m) => m.macs(output),
            #[cfg(all(feature = "op-quant", feature = "op-gemm"))]
            Op::QLinearMatMul(q) => q.matmul.macs(output),
            #[cfg(all(feature = "op-quant", feature = "op-gemm"))]
            Op::QGemm(g) => g.macs(),
            _ => 0,
        }
    }

    /// How many [`Requant`]s the op keeps in the arena for the whole run:
    /// computed once from its constant scales by `Session::new` (see
    /// [`fill_requants`]), read by [`eval`]. 0 for most ops.
    pub fn requant_len(&self) -> usize {
        match self {
            #[cfg(all(feature = "op-quant", feature = "op-conv"))]
            Op::QLinearConv(c) => c.requants,
            #[cfg(all(feature = "op-quant", feature = "op-gemm"))]
            Op::QLinearMatMul(m) => m.requants,
            #[cfg(all(feature = "op-quant", feature = "op-gemm"))]
            Op::QGemm(g) => g.requants,
            #[cfg(all(feature = "op-quant", feature = "op-pool"))]
            Op::QAveragePool(_) => 1,
            #[cfg(all(feature = "op-quant", feature = "op-elementwise"))]
            Op::QAdd(_) => qadd::REQUANTS,
            _ => 0,
        }
    }

    /// The activation a following Relu/Clip/... can be folded into, if any.
    #[cfg(any(feature = "op-activation", feature = "op-sigmoid"))]
    pub(crate) fn fused_activation_mut(&mut self) -> Option<&mut Activation> {
        match self {
            #[cfg(feature = "op-conv")]
            Op::Conv(c) if c.activation == Activation::None => Some(&mut c.activation),
            #[cfg(feature = "op-gemm")]
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
/// Only the ops of the families compiled in are listed: any other op is
/// unsupported.
const OP_VERSIONS: &[(&str, &[u32], u32)] = &[
    #[cfg(feature = "op-elementwise")]
    ("Add", &[1, 6, 7, 13, 14], 7),
    #[cfg(feature = "op-pool")]
    ("AveragePool", &[1, 7, 10, 11, 19, 22], 7),
    #[cfg(feature = "op-cast")]
    ("Cast", &[1, 6, 9, 13, 19, 21, 23, 24, 25, 28], 6),
    #[cfg(feature = "op-elementwise")]
    ("BatchNormalization", &[1, 6, 7, 9, 14, 15], 7),
    #[cfg(feature = "op-activation")]
    ("Clip", &[1, 6, 11, 12, 13], 6),
    #[cfg(feature = "op-layout")]
    ("Concat", &[1, 4, 11, 13], 4),
    ("Constant", &[1, 9, 11, 12, 13, 19, 21, 23, 24, 25], 1),
    #[cfg(feature = "op-conv")]
    ("Conv", &[1, 11, 22], 1),
    #[cfg(all(feature = "op-qoperator", feature = "op-conv"))]
    ("ConvInteger", &[10], 10),
    #[cfg(feature = "op-quant")]
    ("DequantizeLinear", &[10, 13, 19, 21, 23, 24, 25], 10),
    #[cfg(feature = "op-elementwise")]
    ("Div", &[1, 6, 7, 13, 14], 7),
    #[cfg(feature = "op-reshape")]
    ("Dropout", &[1, 6, 7, 10, 12, 13, 22], 7),
    #[cfg(feature = "op-reshape")]
    ("Flatten", &[1, 9, 11, 13, 21, 23, 24, 25], 1),
    #[cfg(feature = "op-gemm")]
    ("Gemm", &[1, 6, 7, 9, 11, 13], 7),
    #[cfg(feature = "op-pool")]
    ("GlobalAveragePool", &[1, 22], 1),
    #[cfg(feature = "op-activation")]
    ("HardSigmoid", &[1, 6, 22], 6),
    #[cfg(feature = "op-activation")]
    ("HardSwish", &[14, 22], 14),
    #[cfg(feature = "op-reshape")]
    ("Identity", &[1, 13, 14, 16, 19, 21, 23, 24, 25], 1),
    #[cfg(feature = "op-activation")]
    ("LeakyRelu", &[1, 6, 16], 6),
    #[cfg(feature = "op-softmax")]
    ("LogSoftmax", &[1, 11, 13], 1),
    #[cfg(feature = "op-gemm")]
    ("MatMul", &[1, 9, 13], 1),
    #[cfg(all(feature = "op-qoperator", feature = "op-gemm"))]
    ("MatMulInteger", &[10], 10),
    #[cfg(feature = "op-pool")]
    ("MaxPool", &[1, 8, 10, 11, 12, 22], 1),
    #[cfg(feature = "op-elementwise")]
    ("Mul", &[1, 6, 7, 13, 14], 7),
    #[cfg(feature = "op-layout")]
    ("Pad", &[1, 2, 11, 13, 18, 19, 21, 23, 24, 25], 2),
    #[cfg(all(feature = "op-qoperator", feature = "op-conv"))]
    ("QLinearConv", &[10], 10),
    #[cfg(all(feature = "op-qoperator", feature = "op-gemm"))]
    ("QLinearMatMul", &[10, 21], 10),
    #[cfg(feature = "op-quant")]
    ("QuantizeLinear", &[10, 13, 19, 21, 23, 24, 25], 10),
    #[cfg(feature = "op-activation")]
    ("Relu", &[1, 6, 13, 14], 6),
    #[cfg(feature = "op-reshape")]
    ("Reshape", &[1, 5, 13, 14, 19, 21, 23, 24, 25], 5),
    #[cfg(feature = "op-sigmoid")]
    ("Sigmoid", &[1, 6, 13], 6),
    #[cfg(feature = "op-softmax")]
    ("Softmax", &[1, 11, 13], 1),
    #[cfg(feature = "op-reshape")]
    ("Squeeze", &[1, 11, 13, 21, 23, 24, 25], 1),
    #[cfg(feature = "op-elementwise")]
    ("Sub", &[1, 6, 7, 13, 14], 7),
    #[cfg(feature = "op-sigmoid")]
    ("Tanh", &[1, 6, 13], 6),
    #[cfg(feature = "op-layout")]
    ("Transpose", &[1, 13, 21, 23, 24, 25], 1),
    #[cfg(feature = "op-reshape")]
    ("Unsqueeze", &[1, 11, 13, 21, 23, 24, 25], 1),
];

/// Newest default-domain opset the version table covers.
pub const MAX_OPSET: i64 = 28;

/// The op types this build implements (its op families), for listings.
pub fn supported_ops() -> impl Iterator<Item = &'static str> {
    OP_VERSIONS.iter().map(|(name, _, _)| *name)
}

/// The cargo features (op families, see `runtime/Cargo.toml`) a build needs
/// to run `op_type`, whatever this build has: for tools that build a
/// firmware with only what a model uses. Empty for `Constant` (always in)
/// and for ops no family implements.
pub fn families(op_type: &str) -> &'static [&'static str] {
    match op_type {
        "Gemm" | "MatMul" => &["op-gemm"],
        "Conv" => &["op-conv"],
        "MaxPool" | "AveragePool" | "GlobalAveragePool" => &["op-pool"],
        "Relu" | "LeakyRelu" | "Clip" | "HardSigmoid" | "HardSwish" => &["op-activation"],
        "Sigmoid" | "Tanh" => &["op-sigmoid"],
        "Softmax" | "LogSoftmax" => &["op-softmax"],
        "Add" | "Sub" | "Mul" | "Div" | "BatchNormalization" => &["op-elementwise"],
        // Shape arithmetic is folded at load by op-reshape's folding.
        "Reshape" | "Flatten" | "Squeeze" | "Unsqueeze" | "Identity" | "Dropout" | "Shape"
        | "Gather" | "Slice" => &["op-reshape"],
        "Transpose" | "Concat" | "Pad" => &["op-layout"],
        "Cast" => &["op-cast"],
        "QuantizeLinear" | "DequantizeLinear" => &["op-quant"],
        "QLinearConv" | "ConvInteger" => &["op-qoperator", "op-conv"],
        "QLinearMatMul" | "MatMulInteger" => &["op-qoperator", "op-gemm"],
        _ => &[],
    }
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

/// The 8-bit quantized element types the int8 ops accept: int8, and uint8
/// with the `quant-u8` feature (without it a uint8 quantized tensor is an
/// [`Error::DType`] at load, never a kernel instance that is not there).
#[cfg(feature = "quant-u8")]
pub const Q8_TYPES: &[DType] = &[DType::I8, DType::U8];
/// The 8-bit quantized element types the int8 ops accept: int8 only (the
/// `quant-u8` feature adds uint8).
#[cfg(not(feature = "quant-u8"))]
pub const Q8_TYPES: &[DType] = &[DType::I8];

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
    #[cfg(feature = "op-reshape")]
    if let Some(folded) = fold::try_fold(ctx, opset) {
        return folded;
    }
    let op_type = ctx.node.op_type;
    let version = op_version(&ctx.at(), op_type, opset)?;
    let ctx = NodeCtx { version, ..*ctx };
    let ctx = &ctx;
    match op_type {
        #[cfg(feature = "op-conv")]
        "Conv" => conv::prepare(ctx),
        #[cfg(feature = "op-gemm")]
        "Gemm" => gemm::prepare(ctx),
        #[cfg(feature = "op-gemm")]
        "MatMul" => matmul::prepare(ctx),
        #[cfg(feature = "op-elementwise")]
        "Add" => binary::prepare(ctx, BinaryOp::Add),
        #[cfg(feature = "op-elementwise")]
        "Sub" => binary::prepare(ctx, BinaryOp::Sub),
        #[cfg(feature = "op-elementwise")]
        "Mul" => binary::prepare(ctx, BinaryOp::Mul),
        #[cfg(feature = "op-elementwise")]
        "Div" => binary::prepare(ctx, BinaryOp::Div),
        #[cfg(any(feature = "op-activation", feature = "op-sigmoid"))]
        t if unary::ACTIVATIONS.contains(&t) => unary::prepare(ctx),
        #[cfg(feature = "op-softmax")]
        "Softmax" => softmax::prepare(ctx, false),
        #[cfg(feature = "op-softmax")]
        "LogSoftmax" => softmax::prepare(ctx, true),
        #[cfg(feature = "op-pool")]
        "MaxPool" | "AveragePool" => pool::prepare(ctx),
        #[cfg(feature = "op-pool")]
        "GlobalAveragePool" => pool::prepare_global(ctx),
        #[cfg(feature = "op-elementwise")]
        "BatchNormalization" => normalization::prepare(ctx),
        #[cfg(feature = "op-reshape")]
        "Flatten" | "Reshape" | "Squeeze" | "Unsqueeze" | "Identity" | "Dropout" => {
            reshape::prepare(ctx)
        }
        #[cfg(feature = "op-layout")]
        "Transpose" => transpose::prepare(ctx),
        #[cfg(feature = "op-layout")]
        "Concat" => concat::prepare(ctx),
        #[cfg(feature = "op-layout")]
        "Pad" => pad::prepare(ctx),
        "Constant" => constant::prepare(ctx),
        #[cfg(feature = "op-cast")]
        "Cast" => cast::prepare(ctx),
        #[cfg(feature = "op-quant")]
        "QuantizeLinear" => quantize::prepare_quantize(ctx),
        #[cfg(feature = "op-quant")]
        "DequantizeLinear" => quantize::prepare_dequantize(ctx),
        #[cfg(all(feature = "op-qoperator", feature = "op-conv"))]
        "QLinearConv" => qlinear::prepare_conv(ctx),
        #[cfg(all(feature = "op-qoperator", feature = "op-gemm"))]
        "QLinearMatMul" => qlinear::prepare_matmul(ctx),
        #[cfg(all(feature = "op-qoperator", feature = "op-conv"))]
        "ConvInteger" => integer::prepare_conv(ctx),
        #[cfg(all(feature = "op-qoperator", feature = "op-gemm"))]
        "MatMulInteger" => integer::prepare_matmul(ctx),
        // Not reached: `op_version` rejects any op missing from the table.
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
// Which arguments are read depends on the op families compiled in.
#[cfg_attr(
    not(all(
        feature = "op-quant",
        any(
            feature = "op-conv",
            feature = "op-gemm",
            feature = "op-pool",
            feature = "op-elementwise"
        )
    )),
    allow(unused_variables)
)]
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
        #[cfg(feature = "op-layout")]
        Op::Transpose(t) => any_type!(output, |y| t.eval(x, y)),
        #[cfg(feature = "op-layout")]
        Op::Concat(c) => any_type!(output, |y| c.eval(inputs, y)),
        #[cfg(feature = "op-layout")]
        Op::Pad(p) => any_type!(output, |y| p.eval(x, input(2), y)),
        #[cfg(feature = "op-pool")]
        Op::Pool(p) => p.eval(x.data, output),
        #[cfg(feature = "op-quant")]
        Op::Quantize(q) => q.eval(x, input(1), input(2), output),
        #[cfg(feature = "op-quant")]
        Op::Dequantize(d) => d.eval(x, input(1), input(2), output),
        #[cfg(all(feature = "op-quant", feature = "op-conv"))]
        Op::QLinearConv(c) => c.eval(inputs, requants, output),
        #[cfg(all(feature = "op-quant", feature = "op-gemm"))]
        Op::QLinearMatMul(m) => m.eval(inputs, requants, output, output_shape),
        #[cfg(all(feature = "op-qoperator", feature = "op-conv"))]
        Op::ConvInteger(c) => c.eval(inputs, output),
        #[cfg(all(feature = "op-qoperator", feature = "op-gemm"))]
        Op::MatMulInteger(m) => integer::eval_matmul(m, inputs, output, output_shape),
        #[cfg(all(feature = "op-quant", feature = "op-gemm"))]
        Op::QGemm(g) => g.eval(inputs, requants, output),
        #[cfg(all(feature = "op-quant", feature = "op-pool"))]
        Op::QAveragePool(p) => p.eval(inputs, requants, output),
        #[cfg(all(feature = "op-quant", feature = "op-elementwise"))]
        Op::QAdd(a) => a.eval(inputs, requants, output, output_shape),
        #[cfg(feature = "op-cast")]
        Op::Cast => cast::eval(x.data, output),
        #[cfg(any(
            feature = "op-conv",
            feature = "op-gemm",
            feature = "op-elementwise",
            feature = "op-activation",
            feature = "op-sigmoid",
            feature = "op-softmax",
            feature = "op-pool"
        ))]
        _ => {
            if let DataMut::F32(y) = output {
                eval_f32(op, inputs, y, output_shape);
            }
        }
        #[cfg(not(any(
            feature = "op-conv",
            feature = "op-gemm",
            feature = "op-elementwise",
            feature = "op-activation",
            feature = "op-sigmoid",
            feature = "op-softmax",
            feature = "op-pool"
        )))]
        _ => {}
    }
}

/// The float-only ops: every input they read at run time is f32 (checked
/// by `prepare`), so each is handed `&[f32]` views.
#[cfg(any(
    feature = "op-conv",
    feature = "op-gemm",
    feature = "op-elementwise",
    feature = "op-activation",
    feature = "op-sigmoid",
    feature = "op-softmax",
    feature = "op-pool"
))]
#[cfg_attr(
    not(any(feature = "op-gemm", feature = "op-elementwise")),
    allow(unused_variables)
)]
fn eval_f32(op: &Op, inputs: &[Option<TensorRef<'_>>], output: &mut [f32], output_shape: &Shape) {
    let input = |i: usize| inputs.get(i).copied().flatten().and_then(TensorRef::typed);
    #[cfg(any(feature = "op-conv", feature = "op-gemm", feature = "op-elementwise"))]
    let data = |i: usize| input(i).map_or(&[][..], |t: Tensor<'_, f32>| t.data);
    let Some(x) = input(0) else {
        return;
    };
    match op {
        #[cfg(feature = "op-conv")]
        Op::Conv(c) => c.eval(x.data, data(1), input(2).map(|b| b.data), output),
        #[cfg(feature = "op-gemm")]
        Op::Gemm(g) => g.eval(x.data, data(1), input(2), output),
        #[cfg(feature = "op-gemm")]
        Op::MatMul(m) => m.eval(x, input(1), output, output_shape),
        #[cfg(feature = "op-elementwise")]
        Op::Binary(b) => binary::eval(*b, x, input(1), output, output_shape),
        #[cfg(any(feature = "op-activation", feature = "op-sigmoid"))]
        Op::Unary(act) => crate::kernels::generic::unary::unary_f32(*act, x.data, output),
        #[cfg(feature = "op-activation")]
        Op::ClipDynamic => unary::eval_clip(x.data, input(1), input(2), output),
        #[cfg(feature = "op-softmax")]
        Op::Softmax(s) => s.eval(x.data, output),
        #[cfg(feature = "op-pool")]
        Op::GlobalAveragePool => pool::eval_global(x, output),
        #[cfg(feature = "op-elementwise")]
        Op::BatchNorm(bn) => bn.eval(x, [data(1), data(2), data(3), data(4)], output),
        _ => {}
    }
}

/// Runs an op whose output shares input 0's buffer (see [`Op::in_place`]).
#[cfg_attr(
    not(any(feature = "op-activation", feature = "op-sigmoid")),
    allow(unused_variables)
)]
pub fn eval_in_place(op: &Op, data: DataMut<'_>) {
    #[cfg(any(feature = "op-activation", feature = "op-sigmoid"))]
    if let (Op::Unary(act), DataMut::F32(data)) = (op, data) {
        crate::kernels::generic::unary::unary_in_place_f32(*act, data);
    }
}

/// Computes the arena entries of an op with [`Op::requant_len`] > 0 from
/// its constant inputs (`inputs` as in `prepare`). Writes nothing for
/// other ops.
#[cfg_attr(
    not(all(
        feature = "op-quant",
        any(
            feature = "op-conv",
            feature = "op-gemm",
            feature = "op-pool",
            feature = "op-elementwise"
        )
    )),
    allow(unused_variables)
)]
pub fn fill_requants(op: &Op, inputs: &[Option<&Value<'_>>], out: &mut [Requant]) {
    match op {
        #[cfg(all(feature = "op-quant", feature = "op-conv"))]
        Op::QLinearConv(_) => qlinear::fill_requants(inputs, out),
        #[cfg(all(feature = "op-quant", feature = "op-gemm"))]
        Op::QLinearMatMul(_) | Op::QGemm(_) => qlinear::fill_requants(inputs, out),
        #[cfg(all(feature = "op-quant", feature = "op-pool"))]
        Op::QAveragePool(p) => p.fill_requants(inputs, out),
        #[cfg(all(feature = "op-quant", feature = "op-elementwise"))]
        Op::QAdd(_) => qadd::fill_requants(inputs, out),
        _ => {}
    }
}

/// Reads a quantized zero point constant `v` (one per entry) as `T`'s
/// range allows, reporting an out-of-range value against the node.
#[cfg(feature = "op-quant")]
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_supported_op_names_its_family() {
        for op in supported_ops().filter(|&op| op != "Constant") {
            assert!(!families(op).is_empty(), "{op}");
        }
        assert_eq!(families("QLinearConv"), ["op-qoperator", "op-conv"]);
        assert!(families("NonMaxSuppression").is_empty());
    }
}
