//! Pad, constant mode (negative pads crop).

use super::{Elem, NodeCtx, Op, Output, TensorRef, RUN_TIME_TYPES};
use crate::error::Error;
use crate::kernels::generic::pad::pad_constant;
use crate::tensor::{DType, MAX_RANK};

/// A prepared Pad.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Pad {
    /// Elements added (negative: removed) before each axis.
    pub begin: [i32; MAX_RANK],
    /// Elements added (negative: removed) after each axis.
    pub end: [i32; MAX_RANK],
    /// The fill value when it is an attribute or a constant (converted to
    /// the element type; a `constant_value` input read at run time wins).
    pub value: f64,
}

pub(super) fn prepare<'a>(ctx: &NodeCtx<'_, 'a>) -> Result<(Op, Output<'a>), Error> {
    // Pad-2 pads floats only; Pad-11 and later any numeric type.
    let x = if ctx.version < 11 {
        ctx.f32_input(0)?
    } else {
        ctx.typed_input(0, RUN_TIME_TYPES)?
    };
    let rank = x.shape.rank();
    let mut pads = [0i64; 2 * MAX_RANK];
    let mut value = 0.0;
    let n;
    if ctx.version < 11 {
        ctx.check_arity(1, 1)?;
        ctx.check_attributes(&["mode", "pads", "value"])?;
        n = ctx
            .attr_ints("pads", &mut pads)?
            .ok_or_else(|| ctx.attr_err("pads", "is required"))?;
        value = f64::from(ctx.attr_float("value", 0.0)?);
    } else {
        ctx.check_arity(2, if ctx.version >= 18 { 4 } else { 3 })?;
        ctx.check_attributes(&["mode"])?;
        n = ctx.const_ints(1, &mut pads)?;
        if let Some(v) = ctx.optional_input(2) {
            if v.dtype != x.dtype || v.len() != 1 {
                return Err(ctx.err(
                    v.name,
                    "constant_value must be a scalar of the input's element type",
                ));
            }
            value = v.const_element(0).unwrap_or(0.0);
            if x.dtype != DType::F32 && value != f64::from(value as i32) {
                return Err(ctx.err(v.name, "constant_value is not an integer of its type"));
            }
        }
    }
    if ctx.attr_string("mode", "constant")? != "constant" {
        return Err(ctx.unsupported("Pad modes other than constant"));
    }
    // Opset 18 `axes` selects which axes `pads` covers.
    let mut axes = [0i64; MAX_RANK];
    let n_axes = match ctx.optional_input(3) {
        Some(_) => ctx.const_ints(3, &mut axes)?,
        None => {
            (0..rank).for_each(|i| axes[i] = i as i64);
            rank
        }
    };
    if n != 2 * n_axes {
        return Err(ctx.err("", "pads must hold two entries per padded axis"));
    }
    let mut p = Pad {
        begin: [0; MAX_RANK],
        end: [0; MAX_RANK],
        value,
    };
    let mut out = [0usize; MAX_RANK];
    let (dims, _) = x.shape.dims();
    out[..rank].copy_from_slice(&dims[..rank]);
    let mut seen = 0u32;
    for (i, &a) in axes[..n_axes].iter().enumerate() {
        let a = ctx.axis("axes", a, rank)?;
        if seen & (1 << a) != 0 {
            return Err(ctx.err("", "axes repeats an axis"));
        }
        seen |= 1 << a;
        let (b, e) = (pads[i], pads[i + n_axes]);
        let limit = 1u64 << 24;
        // `unsigned_abs`: `abs` of i64::MIN overflows.
        if b.unsigned_abs() > limit || e.unsigned_abs() > limit {
            return Err(ctx.err("", "pad amount too large"));
        }
        let size = dims[a] as i64 + b + e;
        if size < 0 {
            return Err(ctx.err("", "negative pads remove more than the whole axis"));
        }
        p.begin[a] = b as i32;
        p.end[a] = e as i32;
        out[a] = size as usize;
    }
    Ok((Op::Pad(p), Output::typed(x.dtype, ctx.shape(&out[..rank])?)))
}

impl Pad {
    pub(super) fn eval<T: Elem>(
        &self,
        x: TensorRef<'_>,
        value: Option<TensorRef<'_>>,
        y: &mut [T],
    ) {
        let Some(data) = x.data.get::<T>() else {
            return;
        };
        let (dims, rank) = x.shape.dims();
        let mut begin = [0isize; MAX_RANK];
        let mut end = [0isize; MAX_RANK];
        for i in 0..rank {
            begin[i] = self.begin[i] as isize;
            end[i] = self.end[i] as isize;
        }
        let fill = value
            .and_then(|v| v.data.get::<T>())
            .and_then(|v| v.first().copied())
            .unwrap_or_else(|| T::from_f64(self.value));
        pad_constant(data, &dims[..rank], &begin[..rank], &end[..rank], fill, y);
    }
}
