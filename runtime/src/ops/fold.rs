//! Shape arithmetic folded at load time. Exporters (PyTorch with a dynamic
//! batch, tf2onnx) compute reshape targets with `Shape` → `Gather` →
//! `Unsqueeze` → `Concat` → `Reshape`. Once symbolic dims are bound every
//! shape is static, so these chains are evaluated here, on short integer
//! tensors, and become constants; nothing of them runs at inference.

use super::{NodeCtx, Op, Output};
use crate::error::Error;
use crate::tensor::{DType, Shape};
use crate::value::{ConstData, SmallInts, Value};

/// Ops that can be folded when their inputs allow it.
const FOLDABLE: &[&str] = &[
    "Shape",
    "Gather",
    "Unsqueeze",
    "Squeeze",
    "Concat",
    "Cast",
    "Slice",
    "Add",
    "Sub",
    "Mul",
    "Div",
    "Identity",
];

/// A short integer constant input, or `None` if the input is not one.
fn small_ints(v: &Value<'_>) -> Option<([i64; SmallInts::MAX], usize)> {
    if !matches!(v.dtype, DType::I64 | DType::I32) || v.constant().is_none() || v.shape.rank() > 1 {
        return None;
    }
    let mut out = [0i64; SmallInts::MAX];
    let n = v.const_ints(&mut out)?;
    Some((out, n))
}

fn constant<'a>(
    ctx: &NodeCtx<'_, 'a>,
    values: &[i64],
    shape: &[usize],
    dtype: DType,
) -> Result<(Op, Output<'a>), Error> {
    let ints = SmallInts::new(values)
        .ok_or_else(|| ctx.unsupported("shape arithmetic beyond 8 values or i32 range"))?;
    let shape = Shape::new(shape).ok_or_else(|| ctx.err("", "bad folded shape"))?;
    Ok((
        Op::Nop,
        Output {
            dtype,
            shape,
            constant: Some(ConstData::Ints(ints)),
        },
    ))
}

/// Folds the node if it is shape arithmetic on load-time values; `None`
/// leaves it to the regular ops.
pub fn try_fold<'a>(ctx: &NodeCtx<'_, 'a>, opset: i64) -> Option<Result<(Op, Output<'a>), Error>> {
    let op = ctx.node.op_type;
    if !FOLDABLE.contains(&op) || ctx.outputs != 1 {
        return None;
    }
    if op == "Shape" {
        let x = ctx.optional_input(0)?;
        return Some(fold_shape(ctx, x));
    }
    // Everything else folds only when every present input is a short
    // integer constant (float Add/Mul/... are regular ops).
    let mut args = [([0i64; SmallInts::MAX], 0usize); 5];
    let mut n_args = 0;
    for (i, arg) in args.iter_mut().enumerate().take(ctx.inputs.len()) {
        if let Some(v) = ctx.optional_input(i) {
            *arg = small_ints(v)?;
            n_args = i + 1;
        }
    }
    if ctx.inputs.len() > 5 || n_args == 0 {
        return None;
    }
    let x = ctx.optional_input(0)?;
    let (data, len) = args[0];
    let data = &data[..len];
    let dtype = x.dtype;
    let dims: ([usize; 8], usize) = x.shape.dims();
    let x_dims = &dims.0[..dims.1];
    Some(match op {
        "Identity" => constant(ctx, data, x_dims, dtype),
        "Cast" => match ctx.attr_int("to", 0) {
            Ok(7) => constant(ctx, data, x_dims, DType::I64),
            Ok(6) => constant(ctx, data, x_dims, DType::I32),
            Ok(_) => return None,
            Err(e) => Err(e),
        },
        "Unsqueeze" | "Squeeze" => fold_squeeze(ctx, opset, data, x_dims, dtype, &args[1]),
        "Gather" => fold_gather(ctx, data, &args[1], ctx.optional_input(1)?, dtype),
        "Concat" => {
            let mut all = [0i64; 2 * SmallInts::MAX];
            let mut n = 0;
            for (vals, len) in &args[..n_args] {
                if n + len > all.len() {
                    return Some(Err(ctx.unsupported("shape arithmetic beyond 8 values")));
                }
                all[n..n + len].copy_from_slice(&vals[..*len]);
                n += len;
            }
            constant(ctx, &all[..n], &[n], dtype)
        }
        "Slice" => fold_slice(ctx, opset, data, &args),
        _ => fold_arith(ctx, op, (data, x_dims), &args[1], ctx.optional_input(1)?),
    })
}

fn fold_shape<'a>(ctx: &NodeCtx<'_, 'a>, x: &Value<'a>) -> Result<(Op, Output<'a>), Error> {
    let rank = x.shape.rank() as i64;
    let clamp = |v: i64| if v < 0 { (v + rank).max(0) } else { v.min(rank) } as usize;
    let start = clamp(ctx.attr_int("start", 0)?);
    let end = clamp(ctx.attr_int("end", rank)?);
    let dims: [i64; 8] = core::array::from_fn(|i| {
        if i < x.shape.rank() {
            x.shape.dim(i) as i64
        } else {
            0
        }
    });
    let dims = &dims[start..end.max(start)];
    constant(ctx, dims, &[dims.len()], DType::I64)
}

fn fold_squeeze<'a>(
    ctx: &NodeCtx<'_, 'a>,
    opset: i64,
    data: &[i64],
    x_dims: &[usize],
    dtype: DType,
    axes_input: &([i64; SmallInts::MAX], usize),
) -> Result<(Op, Output<'a>), Error> {
    let mut axes = [0i64; 8];
    let n = if opset < 13 {
        ctx.attr_ints("axes", &mut axes)?.unwrap_or(0)
    } else {
        axes[..axes_input.1].copy_from_slice(&axes_input.0[..axes_input.1]);
        axes_input.1
    };
    let unsqueeze = ctx.node.op_type == "Unsqueeze";
    let out_rank = if unsqueeze {
        x_dims.len() + n
    } else {
        x_dims.len() - n.min(x_dims.len())
    };
    let rank_for_axes = if unsqueeze { out_rank } else { x_dims.len() };
    let mut set = 0u32;
    for &a in &axes[..n] {
        set |= 1 << ctx.axis("axes", a, rank_for_axes)?;
    }
    let mut out = [0usize; 8];
    let mut r = 0;
    if unsqueeze {
        let mut src = x_dims.iter();
        for (i, slot) in out.iter_mut().enumerate().take(out_rank) {
            *slot = if set & (1 << i) != 0 {
                1
            } else {
                *src.next().unwrap_or(&1)
            };
        }
        r = out_rank;
    } else {
        for (i, &d) in x_dims.iter().enumerate() {
            let squeezed = if n == 0 { d == 1 } else { set & (1 << i) != 0 };
            if !squeezed {
                out[r] = d;
                r += 1;
            }
        }
    }
    if out[..r].iter().product::<usize>() != data.len() {
        return Err(ctx.err("", "squeeze/unsqueeze changes the element count"));
    }
    constant(ctx, data, &out[..r], dtype)
}

fn fold_gather<'a>(
    ctx: &NodeCtx<'_, 'a>,
    data: &[i64],
    indices: &([i64; SmallInts::MAX], usize),
    indices_value: &Value<'a>,
    dtype: DType,
) -> Result<(Op, Output<'a>), Error> {
    if ctx.attr_int("axis", 0)? != 0 {
        return Err(ctx.unsupported("Gather on shape values along an axis other than 0"));
    }
    let mut out = [0i64; SmallInts::MAX];
    for (slot, &i) in out.iter_mut().zip(&indices.0[..indices.1]) {
        let j = if i < 0 { i + data.len() as i64 } else { i };
        *slot = *data
            .get(usize::try_from(j).map_err(|_| ctx.err("", "Gather index out of range"))?)
            .ok_or_else(|| ctx.err("", "Gather index out of range"))?;
    }
    let (d, r) = indices_value.shape.dims();
    constant(ctx, &out[..indices.1], &d[..r], dtype)
}

fn fold_slice<'a>(
    ctx: &NodeCtx<'_, 'a>,
    opset: i64,
    data: &[i64],
    args: &[([i64; SmallInts::MAX], usize); 5],
) -> Result<(Op, Output<'a>), Error> {
    let len = data.len() as i64;
    let (start, end, step) = if opset < 10 {
        let mut s = [0i64; 1];
        let mut e = [0i64; 1];
        ctx.attr_ints("starts", &mut s)?;
        ctx.attr_ints("ends", &mut e)?;
        (s[0], e[0], 1)
    } else {
        if args[1].1 != 1
            || args[2].1 != 1
            || (args[3].1 > 0 && args[3].0[0] != 0 && args[3].0[0] != -1)
        {
            return Err(ctx.unsupported("Slice on shape values other than one axis"));
        }
        (
            args[1].0[0],
            args[2].0[0],
            if args[4].1 > 0 { args[4].0[0] } else { 1 },
        )
    };
    if step != 1 {
        return Err(ctx.unsupported("Slice on shape values with a step other than 1"));
    }
    let clamp = |v: i64| if v < 0 { (v + len).max(0) } else { v.min(len) } as usize;
    let (s, e) = (clamp(start), clamp(end));
    let out = &data[s..e.max(s)];
    constant(ctx, out, &[out.len()], DType::I64)
}

fn fold_arith<'a>(
    ctx: &NodeCtx<'_, 'a>,
    op: &str,
    (a, a_dims): (&[i64], &[usize]),
    b: &([i64; SmallInts::MAX], usize),
    b_value: &Value<'a>,
) -> Result<(Op, Output<'a>), Error> {
    let b_vals = &b.0[..b.1];
    // Scalar or equal-length 1-D operands: all that shape arithmetic uses.
    let n = a.len().max(b_vals.len());
    if (a.len() != n && a.len() != 1) || (b_vals.len() != n && b_vals.len() != 1) {
        return Err(ctx.unsupported("broadcasting shape values beyond scalars"));
    }
    let mut out = [0i64; SmallInts::MAX];
    for (i, slot) in out.iter_mut().enumerate().take(n) {
        let (x, y) = (a[i.min(a.len() - 1)], b_vals[i.min(b_vals.len() - 1)]);
        *slot = match op {
            "Add" => x.checked_add(y),
            "Sub" => x.checked_sub(y),
            "Mul" => x.checked_mul(y),
            _ => x.checked_div(y), // integer Div truncates toward zero
        }
        .ok_or_else(|| {
            ctx.err(
                "",
                "integer overflow or division by zero in shape arithmetic",
            )
        })?;
    }
    // The result has the shape of the longer operand.
    let (b_dims, b_rank) = b_value.shape.dims();
    let dims = if a.len() >= b_vals.len() {
        a_dims
    } else {
        &b_dims[..b_rank]
    };
    constant(ctx, &out[..n], dims, DType::I64)
}
