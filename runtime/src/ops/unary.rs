//! Elementwise activations: Relu, LeakyRelu, Sigmoid, Tanh, HardSigmoid,
//! HardSwish, Clip.

use super::{NodeCtx, Op, Output, Tensor};
use crate::error::Error;
use crate::kernels::generic::activation::Activation;
use crate::tensor::DType;

/// The op types this file implements; each can be fused into a preceding
/// Conv/Gemm at load time.
pub const ACTIVATIONS: &[&str] = &[
    "Relu",
    "LeakyRelu",
    "Sigmoid",
    "Tanh",
    "HardSigmoid",
    "HardSwish",
    "Clip",
];

pub(super) fn prepare<'a>(ctx: &NodeCtx<'_, 'a>) -> Result<(Op, Output<'a>), Error> {
    let op = match ctx.node.op_type {
        "Relu" => {
            ctx.check_attributes(&[])?;
            Op::Unary(Activation::Relu)
        }
        "LeakyRelu" => {
            ctx.check_attributes(&["alpha"])?;
            Op::Unary(Activation::LeakyRelu {
                alpha: ctx.attr_float("alpha", 0.01)?,
            })
        }
        "Sigmoid" => {
            ctx.check_attributes(&[])?;
            Op::Unary(Activation::Sigmoid)
        }
        "Tanh" => {
            ctx.check_attributes(&[])?;
            Op::Unary(Activation::Tanh)
        }
        "HardSigmoid" => {
            ctx.check_attributes(&["alpha", "beta"])?;
            Op::Unary(Activation::HardSigmoid {
                alpha: ctx.attr_float("alpha", 0.2)?,
                beta: ctx.attr_float("beta", 0.5)?,
            })
        }
        "HardSwish" => {
            ctx.check_attributes(&[])?;
            Op::Unary(Activation::HardSwish)
        }
        _ => return prepare_clip(ctx),
    };
    ctx.check_arity(1, 1)?;
    let x = ctx.f32_input(0)?;
    Ok((op, Output::f32(x.shape)))
}

fn prepare_clip<'a>(ctx: &NodeCtx<'_, 'a>) -> Result<(Op, Output<'a>), Error> {
    let x = ctx.f32_input(0)?;
    if ctx.version < 11 {
        ctx.check_arity(1, 1)?;
        ctx.check_attributes(&["min", "max"])?;
        let min = ctx.attr_float("min", f32::MIN)?;
        let max = ctx.attr_float("max", f32::MAX)?;
        return Ok((
            Op::Unary(Activation::Clip { min, max }),
            Output::f32(x.shape),
        ));
    }
    ctx.check_arity(1, 3)?;
    ctx.check_attributes(&[])?;
    let mut bounds = [f32::NEG_INFINITY, f32::INFINITY];
    let mut dynamic = false;
    for (i, bound) in bounds.iter_mut().enumerate() {
        let Some(v) = ctx.optional_input(i + 1) else {
            continue;
        };
        if v.dtype != DType::F32 || v.len() != 1 || v.shape.rank() > 1 {
            return Err(ctx.err(v.name, "Clip min/max must be float32 scalars"));
        }
        match v.const_scalar_f32() {
            Some(c) => *bound = c,
            None if v.constant().is_some() => return Err(ctx.err(v.name, "unreadable constant")),
            None => dynamic = true,
        }
    }
    let op = if dynamic {
        Op::ClipDynamic
    } else {
        Op::Unary(Activation::Clip {
            min: bounds[0],
            max: bounds[1],
        })
    };
    Ok((op, Output::f32(x.shape)))
}

/// Clip with run-time bounds (each a one-element tensor, or absent).
pub(super) fn eval_clip(
    x: &[f32],
    min: Option<Tensor<'_, f32>>,
    max: Option<Tensor<'_, f32>>,
    y: &mut [f32],
) {
    let bound = |t: Option<Tensor<'_, f32>>, default: f32| {
        t.and_then(|t| t.data.first().copied()).unwrap_or(default)
    };
    let act = Activation::Clip {
        min: bound(min, f32::NEG_INFINITY),
        max: bound(max, f32::INFINITY),
    };
    crate::kernels::generic::unary::unary_f32(act, x, y);
}
