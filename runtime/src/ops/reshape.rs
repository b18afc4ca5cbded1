//! Ops that keep the elements and change only the shape: Reshape, Flatten,
//! Squeeze, Unsqueeze, Identity, and Dropout at inference.

use super::{NodeCtx, Op, Output, RUN_TIME_TYPES};
use crate::error::Error;
use crate::tensor::MAX_RANK;

pub(super) fn prepare<'a>(ctx: &NodeCtx<'_, 'a>) -> Result<(Op, Output<'a>), Error> {
    // The elements are moved, never looked at: any run-time type will do,
    // except for Dropout, which ONNX defines on floats.
    let x = if ctx.node.op_type == "Dropout" {
        ctx.f32_input(0)?
    } else {
        ctx.typed_input(0, RUN_TIME_TYPES)?
    };
    let (dims, rank) = x.shape.dims();
    let mut out = [0usize; MAX_RANK];
    let out_rank = match ctx.node.op_type {
        "Identity" => {
            ctx.check_arity(1, 1)?;
            ctx.check_attributes(&[])?;
            out = dims;
            rank
        }
        "Dropout" => {
            prepare_dropout(ctx)?;
            out = dims;
            rank
        }
        "Flatten" => {
            ctx.check_arity(1, 1)?;
            ctx.check_attributes(&["axis"])?;
            let axis = ctx.attr_int("axis", 1)?;
            // axis == rank is allowed: [prod(all), 1].
            let axis = if axis == rank as i64 || axis == 0 {
                axis as usize
            } else {
                ctx.axis("axis", axis, rank)?
            };
            out[0] = x.shape.product(0..axis);
            out[1] = x.shape.product(axis..rank);
            2
        }
        "Reshape" => reshape(ctx, &dims[..rank], &mut out)?,
        "Squeeze" => squeeze(ctx, &dims[..rank], &mut out)?,
        _ => unsqueeze(ctx, &dims[..rank], &mut out)?,
    };
    let shape = ctx.shape(&out[..out_rank])?;
    if shape.num_elements() != x.shape.num_elements() {
        return Err(ctx.err(x.name, "the new shape has a different element count"));
    }
    Ok((Op::Reshape, Output::typed(x.dtype, shape)))
}

fn prepare_dropout(ctx: &NodeCtx) -> Result<(), Error> {
    if ctx.version < 12 {
        ctx.check_arity(1, 1)?;
        ctx.check_attributes(&["ratio", "is_test"])?;
        return Ok(());
    }
    ctx.check_arity(1, 3)?;
    ctx.check_attributes(&["seed"])?;
    if let Some(t) = ctx.optional_input(2) {
        // Only inference (training_mode false) is the identity.
        match t.const_element(0) {
            Some(v) if v == 0.0 && t.len() == 1 => {}
            _ => return Err(ctx.unsupported("Dropout in training mode")),
        }
    }
    Ok(())
}

/// Axes from the `axes` attribute (old opsets) or input 1 (opset 13+).
fn read_axes(ctx: &NodeCtx, axes: &mut [i64; MAX_RANK]) -> Result<Option<usize>, Error> {
    if ctx.version < 13 {
        ctx.check_arity(1, 1)?;
        ctx.check_attributes(&["axes"])?;
        return ctx.attr_ints("axes", axes);
    }
    ctx.check_arity(1, 2)?;
    ctx.check_attributes(&[])?;
    if ctx.optional_input(1).is_none() {
        return Ok(None);
    }
    ctx.const_ints(1, axes).map(Some)
}

/// Normalises `axes` against `rank` into a bit set, rejecting repeats.
fn axis_set(ctx: &NodeCtx, axes: &[i64], rank: usize) -> Result<u32, Error> {
    let mut set = 0u32;
    for &a in axes {
        let a = ctx.axis("axes", a, rank)?;
        if set & (1 << a) != 0 {
            return Err(ctx.attr_err("axes", "contains a repeated axis"));
        }
        set |= 1 << a;
    }
    Ok(set)
}

fn squeeze(ctx: &NodeCtx, dims: &[usize], out: &mut [usize; MAX_RANK]) -> Result<usize, Error> {
    let mut axes = [0i64; MAX_RANK];
    let set = match read_axes(ctx, &mut axes)? {
        Some(n) => {
            let set = axis_set(ctx, &axes[..n], dims.len())?;
            if (0..dims.len()).any(|i| set & (1 << i) != 0 && dims[i] != 1) {
                return Err(ctx.attr_err("axes", "can only squeeze dimensions of size 1"));
            }
            set
        }
        None => (0..dims.len())
            .filter(|&i| dims[i] == 1)
            .fold(0, |s, i| s | 1 << i),
    };
    let mut r = 0;
    for (i, &d) in dims.iter().enumerate() {
        if set & (1 << i) == 0 {
            out[r] = d;
            r += 1;
        }
    }
    Ok(r)
}

fn unsqueeze(ctx: &NodeCtx, dims: &[usize], out: &mut [usize; MAX_RANK]) -> Result<usize, Error> {
    let mut axes = [0i64; MAX_RANK];
    let n = read_axes(ctx, &mut axes)?.ok_or_else(|| ctx.attr_err("axes", "is required"))?;
    let rank = dims.len() + n;
    if rank > MAX_RANK {
        return Err(ctx.err("", "output rank too large"));
    }
    let set = axis_set(ctx, &axes[..n], rank)?;
    let mut src = dims.iter();
    for (i, slot) in out[..rank].iter_mut().enumerate() {
        *slot = if set & (1 << i) != 0 {
            1
        } else {
            *src.next().unwrap_or(&1)
        };
    }
    Ok(rank)
}

fn reshape(ctx: &NodeCtx, dims: &[usize], out: &mut [usize; MAX_RANK]) -> Result<usize, Error> {
    ctx.check_arity(2, 2)?;
    ctx.check_attributes(if ctx.version >= 14 {
        &["allowzero"]
    } else {
        &[]
    })?;
    let allow_zero = ctx.attr_int("allowzero", 0)? != 0;
    let mut spec = [0i64; MAX_RANK];
    let rank = ctx.const_ints(1, &mut spec)?;
    let total: usize = dims.iter().product();
    let mut inferred = None;
    let mut known = 1usize;
    for (i, &s) in spec[..rank].iter().enumerate() {
        out[i] = match s {
            -1 if inferred.is_none() => {
                inferred = Some(i);
                1
            }
            -1 => return Err(ctx.err("", "shape has more than one -1")),
            0 if !allow_zero => *dims
                .get(i)
                .ok_or_else(|| ctx.err("", "shape copies (0) a dimension the input lacks"))?,
            s if s >= 0 => usize::try_from(s).map_err(|_| ctx.err("", "shape entry too large"))?,
            _ => return Err(ctx.err("", "shape entries must be ≥ -1")),
        };
        known = known
            .checked_mul(out[i])
            .ok_or_else(|| ctx.err("", "shape too large"))?;
    }
    if let Some(i) = inferred {
        if known == 0 || !total.is_multiple_of(known) {
            return Err(ctx.err("", "cannot infer the -1 dimension"));
        }
        out[i] = total / known;
    }
    Ok(rank)
}
