//! Conv (1-D and 2-D, groups, dilations, explicit or automatic padding).

use super::{NodeCtx, Op, Output};
use crate::error::Error;
use crate::kernels::conv2d_f32;
use crate::kernels::generic::activation::Activation;
use crate::kernels::generic::conv::ConvGeometry;
use crate::tensor::Shape;
use crate::value::Value;

/// A prepared Conv.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Conv {
    /// Shapes, strides, pads, groups.
    pub geometry: ConvGeometry,
    /// Activation fused at load time.
    pub activation: Activation,
}

/// The spatial extent of one axis of a sliding window (Conv or pooling).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Window {
    /// Input size along the axis.
    pub input: usize,
    /// Kernel size.
    pub kernel: usize,
    /// Stride (≥ 1).
    pub stride: usize,
    /// Dilation (≥ 1).
    pub dilation: usize,
}

impl Window {
    /// Extent of the dilated kernel.
    pub fn span(&self) -> usize {
        self.dilation * (self.kernel - 1) + 1
    }

    /// Output size and (begin, end) pads under ONNX `auto_pad` rules;
    /// `explicit` holds the `pads` attribute's pair for NOTSET. `None` if the
    /// window does not fit.
    pub fn resolve(
        &self,
        auto_pad: AutoPad,
        explicit: (usize, usize),
        ceil_mode: bool,
    ) -> Option<(usize, usize, usize)> {
        match auto_pad {
            AutoPad::NotSet | AutoPad::Valid => {
                let (b, e) = if auto_pad == AutoPad::Valid {
                    (0, 0)
                } else {
                    explicit
                };
                let padded = self.input.checked_add(b)?.checked_add(e)?;
                let reach = padded.checked_sub(self.span())?;
                let mut out = if ceil_mode {
                    reach.div_ceil(self.stride)
                } else {
                    reach / self.stride
                } + 1;
                // A last window that would start beyond the input and its
                // begin padding is dropped (ONNX / PyTorch ceil_mode rule).
                if ceil_mode && (out - 1) * self.stride >= self.input + b {
                    out -= 1;
                }
                Some((out, b, e))
            }
            AutoPad::SameUpper | AutoPad::SameLower => {
                let out = self.input.div_ceil(self.stride);
                let needed =
                    ((out.max(1) - 1) * self.stride + self.span()).saturating_sub(self.input);
                let small = needed / 2;
                let (b, e) = if auto_pad == AutoPad::SameUpper {
                    (small, needed - small)
                } else {
                    (needed - small, small)
                };
                (out > 0).then_some((out, b, e))
            }
        }
    }
}

/// ONNX `auto_pad`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AutoPad {
    /// Use `pads`.
    NotSet,
    /// Pad so that output = ceil(input / stride), extra at the end.
    SameUpper,
    /// Same, extra at the beginning.
    SameLower,
    /// No padding.
    Valid,
}

/// Spatial parameters shared by Conv and pooling, resolved for 1-D/2-D.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SpatialParams {
    /// Output (h, w).
    pub out: [usize; 2],
    /// Kernel (h, w).
    pub kernel: [usize; 2],
    /// Strides (h, w).
    pub stride: [usize; 2],
    /// Dilations (h, w).
    pub dilation: [usize; 2],
    /// Pads (top, left, bottom, right).
    pub pads: [usize; 4],
}

/// Reads auto_pad/pads/strides/dilations for a window op whose input has
/// spatial dims `input` (1 or 2 of them) and kernel `kernel`, returning 2-D
/// parameters (1-D is mapped onto h = 1).
pub fn spatial_params(
    ctx: &NodeCtx,
    input: &[usize],
    kernel: &[usize],
    ceil_mode: bool,
) -> Result<SpatialParams, Error> {
    let rank = input.len();
    if rank == 0 || rank > 2 {
        return Err(ctx.unsupported("windows over more than 2 spatial axes"));
    }
    let auto_pad = match ctx.attr_string("auto_pad", "NOTSET")? {
        "NOTSET" => AutoPad::NotSet,
        "SAME_UPPER" => AutoPad::SameUpper,
        "SAME_LOWER" => AutoPad::SameLower,
        "VALID" => AutoPad::Valid,
        _ => {
            return Err(ctx.attr_err(
                "auto_pad",
                "must be NOTSET, SAME_UPPER, SAME_LOWER or VALID",
            ))
        }
    };
    let mut strides = [1i64; 2];
    let mut dilations = [1i64; 2];
    let mut pads = [0i64; 4];
    for (key, list, len) in [
        ("strides", &mut strides[..], rank),
        ("dilations", &mut dilations[..], rank),
        ("pads", &mut pads[..], 2 * rank),
    ] {
        if let Some(n) = ctx.attr_ints(key, list)? {
            if n != len {
                return Err(ctx.attr_err(key, "length does not match the number of spatial axes"));
            }
        }
    }
    if strides[..rank]
        .iter()
        .chain(&dilations[..rank])
        .any(|&v| v < 1)
    {
        return Err(ctx.attr_err("strides", "strides and dilations must be ≥ 1"));
    }
    if pads[..2 * rank].iter().any(|&p| p < 0) {
        return Err(ctx.attr_err("pads", "must be ≥ 0"));
    }
    if auto_pad != AutoPad::NotSet && pads[..2 * rank].iter().any(|&p| p != 0) {
        return Err(ctx.attr_err("pads", "cannot be combined with auto_pad"));
    }
    // Map 1-D (w only) and 2-D (h, w) onto fixed (h, w) slots.
    let mut p = SpatialParams {
        out: [1; 2],
        kernel: [1; 2],
        stride: [1; 2],
        dilation: [1; 2],
        pads: [0; 4],
    };
    for axis in 0..rank {
        let slot = axis + 2 - rank;
        let win = Window {
            input: input[axis],
            kernel: kernel[axis],
            stride: strides[axis] as usize,
            dilation: dilations[axis] as usize,
        };
        if win.kernel == 0 || win.stride > 1 << 20 || win.dilation > 1 << 20 {
            return Err(ctx.attr_err(
                "kernel_shape",
                "kernel size must be ≥ 1 and strides/dilations reasonable",
            ));
        }
        let explicit = (pads[axis] as usize, pads[axis + rank] as usize);
        if explicit.0 > 1 << 20 || explicit.1 > 1 << 20 {
            return Err(ctx.attr_err("pads", "unreasonably large"));
        }
        let (out, b, e) = win
            .resolve(auto_pad, explicit, ceil_mode)
            .ok_or_else(|| ctx.err("", "the kernel does not fit in the (padded) input"))?;
        p.out[slot] = out;
        p.kernel[slot] = win.kernel;
        p.stride[slot] = win.stride;
        p.dilation[slot] = win.dilation;
        p.pads[slot] = b;
        p.pads[slot + 2] = e;
    }
    Ok(p)
}

#[cfg(feature = "op-conv")]
pub(super) fn prepare<'a>(ctx: &NodeCtx<'_, 'a>) -> Result<(Op, Output<'a>), Error> {
    ctx.check_arity(2, 3)?;
    ctx.check_attributes(ATTRIBUTES)?;
    let x = ctx.f32_input(0)?;
    let w = ctx.f32_input(1)?;
    let (geometry, shape) = geometry(ctx, x, w)?;
    if let Some(b) = ctx.optional_input(2) {
        if b.dtype != crate::tensor::DType::F32
            || b.shape.rank() != 1
            || b.shape.dim(0) != geometry.out_channels
        {
            return Err(ctx.err(b.name, "bias must be float32 of shape [out_channels]"));
        }
    }
    Ok((
        Op::Conv(Conv {
            geometry,
            activation: Activation::None,
        }),
        Output::f32(shape),
    ))
}

/// The attributes of Conv, QLinearConv and ConvInteger.
pub(super) const ATTRIBUTES: &[&str] = &[
    "auto_pad",
    "dilations",
    "group",
    "kernel_shape",
    "pads",
    "strides",
];

/// Checks a convolution's input `x` and weight `w` (of any element type)
/// against its attributes; returns the geometry and the output shape.
pub(super) fn geometry(
    ctx: &NodeCtx,
    x: &Value<'_>,
    w: &Value<'_>,
) -> Result<(ConvGeometry, Shape), Error> {
    let rank = x.shape.rank();
    if !(3..=4).contains(&rank) || w.shape.rank() != rank {
        if rank > 4 && w.shape.rank() == rank {
            return Err(ctx.unsupported("3-D and higher convolutions"));
        }
        return Err(ctx.err(
            x.name,
            "Conv input and weight must both be rank 3 (1-D) or 4 (2-D)",
        ));
    }
    let group = ctx.attr_int("group", 1)?;
    let (batch, in_channels, out_channels) = (x.shape.dim(0), x.shape.dim(1), w.shape.dim(0));
    if group < 1 || in_channels % group as usize != 0 || out_channels % group as usize != 0 {
        return Err(ctx.attr_err(
            "group",
            "must divide both the input and output channel counts",
        ));
    }
    let group = group as usize;
    if w.shape.dim(1) * group != in_channels {
        return Err(ctx.err(w.name, "weight dim 1 × group must equal the input channels"));
    }
    let (xd, _) = x.shape.dims();
    let (wd, _) = w.shape.dims();
    let mut kernel_attr = [0i64; 2];
    if let Some(n) = ctx.attr_ints("kernel_shape", &mut kernel_attr)? {
        if n != rank - 2
            || kernel_attr[..n]
                .iter()
                .zip(&wd[2..rank])
                .any(|(&k, &d)| k != d as i64)
        {
            return Err(ctx.attr_err("kernel_shape", "does not match the weight's spatial dims"));
        }
    }
    let p = spatial_params(ctx, &xd[2..rank], &wd[2..rank], false)?;
    let geometry = ConvGeometry {
        batch,
        in_channels,
        in_h: if rank == 4 { xd[2] } else { 1 },
        in_w: xd[rank - 1],
        out_channels,
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
        groups: group,
    };
    let shape = if rank == 4 {
        ctx.shape(&[batch, out_channels, p.out[0], p.out[1]])?
    } else {
        ctx.shape(&[batch, out_channels, p.out[1]])?
    };
    Ok((geometry, shape))
}

/// Multiply-accumulates of one convolution run.
pub fn macs(g: &ConvGeometry) -> u64 {
    let per_output = (g.in_channels / g.groups.max(1)) * g.kernel_h * g.kernel_w;
    (g.batch * g.out_channels * g.out_h * g.out_w) as u64 * per_output as u64
}

impl Conv {
    /// Multiply-accumulates per run.
    pub fn macs(&self) -> u64 {
        macs(&self.geometry)
    }

    pub(super) fn eval(&self, x: &[f32], w: &[f32], bias: Option<&[f32]>, y: &mut [f32]) {
        conv2d_f32(&self.geometry, x, w, bias, self.activation, y);
    }
}
