//! Constant: a value defined by a node attribute, resolved at load time.

use super::{NodeCtx, Op, Output};
use crate::error::Error;
use crate::proto::onnx::{AttributeKind, TensorData, TensorView};
use crate::tensor::{DType, Shape};
use crate::value::ConstData;

pub(super) fn prepare<'a>(ctx: &NodeCtx<'_, 'a>) -> Result<(Op, Output<'a>), Error> {
    ctx.check_arity(0, 0)?;
    ctx.check_attributes(&[
        "value",
        "value_float",
        "value_floats",
        "value_int",
        "value_ints",
    ])?;
    let mut found = None;
    for a in ctx.node.attributes() {
        let a = a?;
        let out = match (a.name, a.kind) {
            ("value", AttributeKind::Tensor) => {
                let t = TensorView::parse(a.t)?;
                let (dtype, shape) = crate::model::check_tensor(&t)?;
                Output {
                    dtype,
                    shape,
                    constant: Some(ConstData::Tensor(t.data)),
                }
            }
            ("value_float", AttributeKind::Float) => Output {
                dtype: DType::F32,
                shape: Shape::SCALAR,
                constant: Some(ConstData::F32(a.f)),
            },
            ("value_int", AttributeKind::Int) => Output {
                dtype: DType::I64,
                shape: Shape::SCALAR,
                constant: Some(ConstData::I64(a.i)),
            },
            ("value_floats", AttributeKind::Floats) | ("value_ints", AttributeKind::Ints) => {
                let floats = a.kind == AttributeKind::Floats;
                let n = if floats {
                    a.floats().count()
                } else {
                    a.ints().count()
                };
                let shape = Shape::new(&[n]).ok_or_else(|| ctx.attr_err(a.name, "too long"))?;
                let (dtype, field, width) = if floats {
                    (DType::F32, 7, 4)
                } else {
                    (DType::I64, 8, 0)
                };
                let data = TensorData::Typed {
                    field,
                    width,
                    message: a.bytes(),
                };
                Output {
                    dtype,
                    shape,
                    constant: Some(ConstData::Tensor(data)),
                }
            }
            _ => return Err(ctx.attr_err(a.name, "has the wrong type")),
        };
        if found.replace(out).is_some() {
            return Err(ctx.attr_err(a.name, "Constant must have exactly one value attribute"));
        }
    }
    let out = found.ok_or_else(|| ctx.attr_err("value", "Constant has no value attribute"))?;
    Ok((Op::Nop, out))
}
