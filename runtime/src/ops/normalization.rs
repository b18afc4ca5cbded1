//! BatchNormalization in inference mode.

use super::{NodeCtx, Op, Output, Tensor};
use crate::error::Error;
use crate::kernels::generic::batchnorm::batch_norm_f32;

/// A prepared BatchNormalization.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BatchNorm {
    /// Added to the variance.
    pub epsilon: f32,
}

pub(super) fn prepare<'a>(ctx: &NodeCtx<'_, 'a>) -> Result<(Op, Output<'a>), Error> {
    ctx.check_arity(5, 5)?;
    let known: &[&str] = match ctx.version {
        7..=8 => &["epsilon", "momentum", "spatial"],
        9..=13 => &["epsilon", "momentum"],
        _ => &["epsilon", "momentum", "training_mode"],
    };
    ctx.check_attributes(known)?;
    if ctx.attr_int("spatial", 1)? != 1 {
        return Err(ctx.unsupported("BatchNormalization with spatial=0"));
    }
    if ctx.attr_int("training_mode", 0)? != 0 {
        return Err(ctx.unsupported("BatchNormalization in training mode"));
    }
    let x = ctx.f32_input(0)?;
    if x.shape.rank() < 2 {
        return Err(ctx.err(x.name, "input must be [N, C, ...]"));
    }
    let channels = x.shape.dim(1);
    for i in 1..5 {
        let p = ctx.f32_input(i)?;
        if p.shape.rank() != 1 || p.shape.dim(0) != channels {
            return Err(ctx.err(p.name, "scale, bias, mean and var must have shape [C]"));
        }
    }
    Ok((
        Op::BatchNorm(BatchNorm {
            epsilon: ctx.attr_float("epsilon", 1e-5)?,
        }),
        Output::f32(x.shape),
    ))
}

impl BatchNorm {
    /// `params`: scale, bias, mean and variance.
    pub(super) fn eval(&self, x: Tensor<'_, f32>, params: [&[f32]; 4], y: &mut [f32]) {
        let [scale, bias, mean, var] = params;
        let rank = x.shape.rank();
        let (batch, channels) = (x.shape.dim(0), x.shape.dim(1));
        let spatial = x.shape.product(2..rank);
        batch_norm_f32(
            x.data,
            batch,
            channels,
            spatial,
            scale,
            bias,
            mean,
            var,
            self.epsilon,
            y,
        );
    }
}
