//! `Session`: runs a planned model inside a caller-provided arena. `run`
//! allocates nothing, keeps no global state and is deterministic.

use crate::error::{name, Error};
use crate::limits::MAX_NODE_INPUTS;
use crate::model::Model;
use crate::ops::{self, TensorRef};
use crate::planner::{readable_in_place, ALIGN, NONE};
use crate::proto::onnx::{TensorData, TypedWords};
use crate::tensor::DType;
use crate::value::{ConstData, Value, ValueKind};

/// A 16-byte-aligned byte buffer, convenient as a `static` arena.
#[repr(C, align(16))]
pub struct AlignedArena<const N: usize>(pub [u8; N]);

impl<const N: usize> AlignedArena<N> {
    /// A zeroed arena.
    pub const fn new() -> Self {
        AlignedArena([0; N])
    }
}

impl<const N: usize> Default for AlignedArena<N> {
    fn default() -> Self {
        Self::new()
    }
}

/// A model bound to an arena, ready to run.
pub struct Session<'m, 'a, 'r> {
    model: &'m Model<'a>,
    arena: &'r mut [u8],
}

/// Reads constant `v` as f32 in place when its bytes allow it.
fn const_in_place<'a>(v: &Value<'a>) -> Option<&'a [f32]> {
    match v.constant()? {
        ConstData::Tensor(TensorData::Empty) => Some(&[]),
        c @ ConstData::Tensor(TensorData::Raw(raw)) if readable_in_place(v.dtype, &c) => {
            // SAFETY: `readable_in_place` checked the pointer is aligned for
            // f32; the length is a whole number of f32s (validated at parse:
            // raw_data length == elements × 4); any bit pattern is a valid f32;
            // the bytes are borrowed for 'a and never written.
            Some(unsafe { core::slice::from_raw_parts(raw.as_ptr().cast::<f32>(), raw.len() / 4) })
        }
        _ => None,
    }
}

impl<'m, 'a, 'r> Session<'m, 'a, 'r> {
    /// Binds `model` to `arena` (at least `model.arena_size()` bytes,
    /// 16-byte aligned, or 15 bytes more) and copies into it the constants
    /// that cannot be read in place.
    pub fn new(model: &'m Model<'a>, arena: &'r mut [u8]) -> Result<Self, Error> {
        let skip = arena.as_ptr().align_offset(ALIGN);
        let needed = model.arena_size();
        let got = arena.len().saturating_sub(skip);
        if skip >= ALIGN || got < needed {
            return Err(Error::ArenaTooSmall {
                needed: needed + skip.min(ALIGN - 1),
                got: arena.len(),
            });
        }
        let arena = &mut arena[skip..skip + needed];
        for (id, v) in model.values().iter().enumerate() {
            let offset = model.plan().offsets[id];
            if offset == NONE || !matches!(v.kind, ValueKind::Constant(_)) {
                continue;
            }
            let dst = &mut arena[offset as usize..offset as usize + v.len() * 4];
            stage_constant(v, dst);
        }
        Ok(Session { model, arena })
    }

    /// The model this session runs.
    pub fn model(&self) -> &'m Model<'a> {
        self.model
    }

    /// Runs one inference: `inputs[i]` holds graph input i (row-major f32),
    /// `outputs[i]` receives graph output i.
    pub fn run(&mut self, inputs: &[&[f32]], outputs: &mut [&mut [f32]]) -> Result<(), Error> {
        let model = self.model;
        check_buffers("input", model.inputs(), inputs.iter().map(|s| s.len()))?;
        check_buffers("output", model.outputs(), outputs.iter().map(|s| s.len()))?;
        let base = self.arena.as_mut_ptr();
        let arena_len = self.arena.len();
        let plan = model.plan();
        let values = model.values();
        // SAFETY (for the two helpers below): the planner gives each arena
        // tensor an in-bounds, f32-aligned extent (offsets are multiples of
        // 16 from a 16-aligned base, extents ≤ arena_size, checked by
        // `planner::find_overlap` in tests), and no two tensors that are live
        // at the same node overlap unless one is the in-place or alias
        // successor of the other, in which case only one slice is created.
        let view = |id: usize| -> &[f32] {
            let v = &values[id];
            match v.kind {
                ValueKind::Input(k) => inputs[usize::from(k)],
                _ if plan.offsets[id] != NONE => {
                    let start = plan.offsets[id] as usize;
                    debug_assert!(start + v.len() * 4 <= arena_len);
                    // SAFETY: see above; the slice is only read while no
                    // mutable slice overlaps it.
                    unsafe { core::slice::from_raw_parts(base.add(start).cast::<f32>(), v.len()) }
                }
                _ => const_in_place(v).unwrap_or(&[]),
            }
        };
        for node in model.nodes() {
            let Some(out) = node.output.map(usize::from) else {
                continue;
            };
            let out_value = &values[out];
            // An empty output has nothing to compute, and skipping it keeps
            // kernels from looping over the other (possibly large) dims of
            // an empty tensor.
            if node.op == ops::Op::Nop || plan.offsets[out] == NONE || out_value.is_empty() {
                continue;
            }
            let first_input = model.node_inputs(node).next().flatten().map(usize::from);
            // Only alias and in-place ops are planned into their input's
            // buffer; any other equal offset is an empty tensor placed at
            // the same address, and the op must still run.
            let shares_input = (node.op.is_alias() || node.op.in_place())
                && first_input.is_some_and(|i| plan.offsets[i] == plan.offsets[out]);
            let start = plan.offsets[out] as usize;
            debug_assert!(start + out_value.len() * 4 <= arena_len);
            // SAFETY: see above; the output's extent overlaps no input slice
            // created below unless `shares_input`, handled without one.
            let output = unsafe {
                core::slice::from_raw_parts_mut(base.add(start).cast::<f32>(), out_value.len())
            };
            if shares_input {
                if node.op.in_place() {
                    ops::eval_in_place(&node.op, output);
                }
                continue; // an alias has nothing to do
            }
            let mut args: heapless::Vec<Option<TensorRef<'_>>, MAX_NODE_INPUTS> =
                heapless::Vec::new();
            for id in model.node_inputs(node) {
                let arg = id
                    .map(usize::from)
                    .filter(|&i| values[i].dtype == DType::F32)
                    .map(|i| TensorRef {
                        data: view(i),
                        shape: values[i].shape,
                    });
                let _ = args.push(arg);
            }
            ops::eval(&node.op, &args, output, &out_value.shape);
        }
        for (slot, &id) in outputs.iter_mut().zip(model.output_ids()) {
            slot.copy_from_slice(view(usize::from(id)));
        }
        Ok(())
    }
}

fn check_buffers<'v, 'a: 'v>(
    what: &'static str,
    values: impl ExactSizeIterator<Item = &'v Value<'a>>,
    lens: impl ExactSizeIterator<Item = usize>,
) -> Result<(), Error> {
    if values.len() != lens.len() {
        let what = if what == "input" { "inputs" } else { "outputs" };
        return Err(Error::Arity {
            what,
            expected: values.len(),
            got: lens.len(),
        });
    }
    for (index, (v, got)) in values.zip(lens).enumerate() {
        if v.len() != got {
            return Err(Error::BufferLength {
                what,
                index,
                value: name(v.name),
                expected: v.len(),
                got,
            });
        }
    }
    Ok(())
}

/// Decodes an f32 constant that cannot be read in place into `dst`.
fn stage_constant(v: &Value<'_>, dst: &mut [u8]) {
    let mut put = |i: usize, x: f32| {
        if let Some(d) = dst.get_mut(i * 4..i * 4 + 4) {
            d.copy_from_slice(&x.to_le_bytes());
        }
    };
    match v.constant() {
        Some(ConstData::F32(x)) => put(0, x),
        Some(ConstData::Tensor(TensorData::Raw(raw))) => {
            for (i, c) in raw.chunks_exact(4).enumerate() {
                put(i, f32::from_le_bytes([c[0], c[1], c[2], c[3]]));
            }
        }
        Some(ConstData::Tensor(TensorData::Typed {
            field,
            width,
            message,
        })) => {
            for (i, w) in TypedWords::new(message, field, width).enumerate() {
                put(i, f32::from_bits(w.unwrap_or(0) as u32));
            }
        }
        _ => {}
    }
}
