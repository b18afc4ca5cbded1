//! MaxPool, AveragePool (1-D and 2-D) and GlobalAveragePool.

use super::conv::spatial_params;
use super::{Data, DataMut, NodeCtx, Op, Output, Tensor};
use crate::error::Error;
use crate::kernels::generic::pool::{
    avg_pool2d_f32, global_avg_pool_f32, max_pool2d_f32, max_pool2d_i8, max_pool2d_u8, PoolGeometry,
};
use crate::tensor::DType;

/// A prepared MaxPool or AveragePool.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pool {
    /// Window geometry.
    pub geometry: PoolGeometry,
    /// Which reduction.
    pub kind: PoolKind,
}

/// The window reduction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PoolKind {
    /// Maximum over the window (padding ignored).
    Max,
    /// Mean over the window; `count_include_pad` counts padded positions.
    Average {
        /// ONNX `count_include_pad`.
        count_include_pad: bool,
    },
}

pub(super) fn prepare<'a>(ctx: &NodeCtx<'_, 'a>) -> Result<(Op, Output<'a>), Error> {
    ctx.check_arity(1, 1)?;
    let is_max = ctx.node.op_type == "MaxPool";
    let v = ctx.version;
    // Attributes by op version: dilations and ceil_mode came in MaxPool-10 /
    // AveragePool-10 (ceil_mode) and -19 (dilations).
    let known: &[&str] = match (is_max, v) {
        (true, 1..=7) => &["auto_pad", "kernel_shape", "pads", "strides"],
        (true, 8..=9) => &[
            "auto_pad",
            "kernel_shape",
            "pads",
            "strides",
            "storage_order",
        ],
        (true, _) => &[
            "auto_pad",
            "ceil_mode",
            "dilations",
            "kernel_shape",
            "pads",
            "storage_order",
            "strides",
        ],
        (false, 1..=9) => &[
            "auto_pad",
            "count_include_pad",
            "kernel_shape",
            "pads",
            "strides",
        ],
        (false, 10..=18) => &[
            "auto_pad",
            "ceil_mode",
            "count_include_pad",
            "kernel_shape",
            "pads",
            "strides",
        ],
        (false, _) => &[
            "auto_pad",
            "ceil_mode",
            "count_include_pad",
            "dilations",
            "kernel_shape",
            "pads",
            "strides",
        ],
    };
    ctx.check_attributes(known)?;
    // MaxPool-12 added int8 and uint8 (exact: the max of integers).
    let x = if is_max && v >= 12 {
        ctx.typed_input(0, &[DType::F32, DType::I8, DType::U8])?
    } else {
        ctx.f32_input(0)?
    };
    let rank = x.shape.rank();
    if !(3..=4).contains(&rank) {
        if rank > 4 {
            return Err(ctx.unsupported("3-D and higher pooling"));
        }
        return Err(ctx.err(x.name, "pooling input must be rank 3 (1-D) or 4 (2-D)"));
    }
    let mut kernel = [0i64; 2];
    let n = ctx
        .attr_ints("kernel_shape", &mut kernel)?
        .ok_or_else(|| ctx.attr_err("kernel_shape", "is required"))?;
    if n != rank - 2 || kernel[..n].iter().any(|&k| !(1..=1 << 20).contains(&k)) {
        return Err(ctx.attr_err("kernel_shape", "must give one size ≥ 1 per spatial axis"));
    }
    let ceil_mode = match ctx.attr_int("ceil_mode", 0)? {
        0 => false,
        1 => true,
        _ => return Err(ctx.attr_err("ceil_mode", "must be 0 or 1")),
    };
    let (xd, _) = x.shape.dims();
    let kernel = [kernel[0] as usize, kernel[1] as usize];
    let p = spatial_params(ctx, &xd[2..rank], &kernel[..rank - 2], ceil_mode)?;
    let kind = if is_max {
        PoolKind::Max
    } else {
        PoolKind::Average {
            count_include_pad: ctx.attr_int("count_include_pad", 0)? != 0,
        }
    };
    let geometry = PoolGeometry {
        batch: xd[0],
        channels: xd[1],
        in_h: if rank == 4 { xd[2] } else { 1 },
        in_w: xd[rank - 1],
        out_h: p.out[0],
        out_w: p.out[1],
        kernel_h: p.kernel[0],
        kernel_w: p.kernel[1],
        stride_h: p.stride[0],
        stride_w: p.stride[1],
        dilation_h: p.dilation[0],
        dilation_w: p.dilation[1],
        pad_top: p.pads[0],
        pad_left: p.pads[1],
        pad_bottom: p.pads[2],
        pad_right: p.pads[3],
    };
    let shape = if rank == 4 {
        ctx.shape(&[xd[0], xd[1], p.out[0], p.out[1]])?
    } else {
        ctx.shape(&[xd[0], xd[1], p.out[1]])?
    };
    Ok((
        Op::Pool(Pool { geometry, kind }),
        Output::typed(x.dtype, shape),
    ))
}

pub(super) fn prepare_global<'a>(ctx: &NodeCtx<'_, 'a>) -> Result<(Op, Output<'a>), Error> {
    ctx.check_arity(1, 1)?;
    ctx.check_attributes(&[])?;
    let x = ctx.f32_input(0)?;
    let rank = x.shape.rank();
    if rank < 3 {
        return Err(ctx.err(
            x.name,
            "input must have batch, channel and at least one spatial dim",
        ));
    }
    let (mut dims, _) = x.shape.dims();
    dims[2..rank].iter_mut().for_each(|d| *d = 1);
    Ok((
        Op::GlobalAveragePool,
        Output::f32(ctx.shape(&dims[..rank])?),
    ))
}

impl Pool {
    pub(super) fn eval(&self, x: Data<'_>, y: DataMut<'_>) {
        let g = &self.geometry;
        match (self.kind, x, y) {
            (PoolKind::Max, Data::F32(x), DataMut::F32(y)) => max_pool2d_f32(g, x, y),
            (PoolKind::Max, Data::I8(x), DataMut::I8(y)) => max_pool2d_i8(g, x, y),
            (PoolKind::Max, Data::U8(x), DataMut::U8(y)) => max_pool2d_u8(g, x, y),
            (PoolKind::Average { count_include_pad }, Data::F32(x), DataMut::F32(y)) => {
                avg_pool2d_f32(g, count_include_pad, x, y)
            }
            _ => {}
        }
    }
}

pub(super) fn eval_global(x: Tensor<'_, f32>, y: &mut [f32]) {
    let rank = x.shape.rank();
    let batch_channels = x.shape.product(0..2);
    global_avg_pool_f32(batch_channels, x.shape.product(2..rank), x.data, y);
}
