//! Elementwise activations: Relu, LeakyRelu, HardSigmoid, HardSwish, Clip
//! (feature `op-activation`), Sigmoid, Tanh (feature `op-sigmoid`).

#[cfg(feature = "op-activation")]
use super::Tensor;
use super::{NodeCtx, Op, Output};
use crate::error::{name, Error};
use crate::kernels::generic::activation::Activation;
#[cfg(feature = "op-activation")]
use crate::tensor::DType;

/// The op types this build implements here; each can be fused into a
/// preceding Conv/Gemm at load time.
pub const ACTIVATIONS: &[&str] = &[
    #[cfg(feature = "op-activation")]
    "Relu",
    #[cfg(feature = "op-activation")]
    "LeakyRelu",
    #[cfg(feature = "op-sigmoid")]
    "Sigmoid",
    #[cfg(feature = "op-sigmoid")]
    "Tanh",
    #[cfg(feature = "op-activation")]
    "HardSigmoid",
    #[cfg(feature = "op-activation")]
    "HardSwish",
    #[cfg(feature = "op-activation")]
    "Clip",
];

pub(super) fn prepare<'a>(ctx: &NodeCtx<'_, 'a>) -> Result<(Op, Output<'a>), Error> {
    let op = match ctx.node.op_type {
        #[cfg(feature = "op-activation")]
        "Relu" => {
            ctx.check_attributes(&[])?;
            Op::Unary(Activation::Relu)
        }
        #[cfg(feature = "op-activation")]
        "LeakyRelu" => {
            ctx.check_attributes(&["alpha"])?;
            Op::Unary(Activation::LeakyRelu {
                alpha: ctx.attr_float("alpha", 0.01)?,
            })
        }
        #[cfg(feature = "op-sigmoid")]
        "Sigmoid" => {
            ctx.check_attributes(&[])?;
            Op::Unary(Activation::Sigmoid)
        }
        #[cfg(feature = "op-sigmoid")]
        "Tanh" => {
            ctx.check_attributes(&[])?;
            Op::Unary(Activation::Tanh)
        }
        #[cfg(feature = "op-activation")]
        "HardSigmoid" => {
            ctx.check_attributes(&["alpha", "beta"])?;
            Op::Unary(Activation::HardSigmoid {
                alpha: ctx.attr_float("alpha", 0.2)?,
                beta: ctx.attr_float("beta", 0.5)?,
            })
        }
        #[cfg(feature = "op-activation")]
        "HardSwish" => {
            ctx.check_attributes(&[])?;
            Op::Unary(Activation::HardSwish)
        }
        #[cfg(feature = "op-activation")]
        "Clip" => return prepare_clip(ctx),
        // Not reached: `ops::prepare` sends only the op types listed above.
        _ => {
            return Err(Error::UnsupportedOp {
                at: ctx.at(),
                detail: name(""),
            })
        }
    };
    ctx.check_arity(1, 1)?;
    let x = ctx.f32_input(0)?;
    Ok((op, Output::f32(x.shape)))
}

#[cfg(feature = "op-activation")]
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
#[cfg(feature = "op-activation")]
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
