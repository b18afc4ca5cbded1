//! `Session`: runs a planned model inside a caller-provided arena. `run`
//! allocates nothing, keeps no global state and is deterministic.

use crate::error::{name, Error};
use crate::limits::{MAX_GRAPH_IO, MAX_NODE_INPUTS};
use crate::model::Model;
use crate::ops::{self, Data, DataMut, TensorRef};
use crate::planner::{readable_in_place, ALIGN, NONE};
use crate::proto::onnx::{TensorData, TypedWords};
use crate::quant::Requant;
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

/// Views constant `v` in place, typed, when its bytes allow it
/// ([`readable_in_place`]); `None` otherwise (it is then staged in the
/// arena, or not a run-time type).
fn const_in_place<'a>(v: &Value<'a>) -> Option<Data<'a>> {
    let c = v.constant()?;
    if !readable_in_place(v.dtype, &c) {
        return None;
    }
    let raw = match c {
        ConstData::Tensor(TensorData::Raw(raw)) => raw,
        _ => &[], // an empty tensor
    };
    // The length is exact: raw_data holds elements × size bytes (checked
    // when the value was created), and an empty tensor has no elements.
    let n = v.len().min(raw.len() / v.dtype.size().max(1));
    let p = raw.as_ptr();
    Some(match v.dtype {
        DType::U8 => Data::U8(&raw[..n]),
        DType::I8 => {
            // SAFETY: i8 has u8's size and alignment and every bit pattern
            // is valid; the bytes are borrowed for 'a and never written.
            let s = unsafe { core::slice::from_raw_parts(p.cast::<i8>(), n) };
            Data::I8(s)
        }
        DType::F32 => {
            // SAFETY: `readable_in_place` checked the pointer is 4-byte
            // aligned (and the target little-endian, as ONNX stores raw
            // data); n × 4 bytes are in `raw`; every bit pattern is a valid
            // f32; the bytes are borrowed for 'a and never written.
            let s = unsafe { core::slice::from_raw_parts(p.cast::<f32>(), n) };
            Data::F32(s)
        }
        DType::I32 => {
            // SAFETY: as for f32; every bit pattern is a valid i32.
            let s = unsafe { core::slice::from_raw_parts(p.cast::<i32>(), n) };
            Data::I32(s)
        }
        _ => return None,
    })
}

/// A typed view of `len` elements of `dtype` at `base + start`.
///
/// # Safety
/// `base + start` is 16-byte aligned, the `len` elements lie inside the
/// arena `base` points into, and nothing writes them while the view lives.
unsafe fn arena_view<'x>(
    base: *const u8,
    start: usize,
    dtype: DType,
    len: usize,
) -> Option<Data<'x>> {
    // SAFETY: in bounds per the caller's contract.
    let p = unsafe { base.add(start) };
    if !dtype.is_run_time() {
        return None;
    }
    // SAFETY: aligned for any element type (a 16-byte boundary), `len`
    // elements in bounds and not written meanwhile per the caller's
    // contract; every bit pattern is valid for f32, i8, u8 and i32.
    let view = unsafe {
        match dtype {
            DType::F32 => Data::F32(core::slice::from_raw_parts(p.cast::<f32>(), len)),
            DType::I8 => Data::I8(core::slice::from_raw_parts(p.cast::<i8>(), len)),
            DType::U8 => Data::U8(core::slice::from_raw_parts(p, len)),
            _ => Data::I32(core::slice::from_raw_parts(p.cast::<i32>(), len)),
        }
    };
    Some(view)
}

/// A writable typed view of `len` elements of `dtype` at `base + start`.
///
/// # Safety
/// As [`arena_view`], and no other view of those bytes lives meanwhile.
unsafe fn arena_view_mut<'x>(
    base: *mut u8,
    start: usize,
    dtype: DType,
    len: usize,
) -> Option<DataMut<'x>> {
    // SAFETY: in bounds per the caller's contract.
    let p = unsafe { base.add(start) };
    if !dtype.is_run_time() {
        return None;
    }
    // SAFETY: aligned, in bounds and unaliased per the caller's contract;
    // every bit pattern is valid for f32, i8, u8 and i32.
    let view = unsafe {
        match dtype {
            DType::F32 => DataMut::F32(core::slice::from_raw_parts_mut(p.cast::<f32>(), len)),
            DType::I8 => DataMut::I8(core::slice::from_raw_parts_mut(p.cast::<i8>(), len)),
            DType::U8 => DataMut::U8(core::slice::from_raw_parts_mut(p, len)),
            _ => DataMut::I32(core::slice::from_raw_parts_mut(p.cast::<i32>(), len)),
        }
    };
    Some(view)
}

impl<'m, 'a, 'r> Session<'m, 'a, 'r> {
    /// Binds `model` to `arena` (at least `model.arena_size()` bytes,
    /// 16-byte aligned, or 15 bytes more), copies into it the constants
    /// that cannot be read in place, and derives the ops' requantization
    /// parameters.
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
        let plan = model.plan();
        for (id, v) in model.values().iter().enumerate() {
            let offset = plan.offsets[id] as usize;
            if plan.offsets[id] == NONE || !matches!(v.kind, ValueKind::Constant(_)) {
                continue;
            }
            if let Some(dst) = arena.get_mut(offset..offset + v.len() * v.dtype.size()) {
                stage_constant(v, dst);
            }
        }
        for (j, node) in model.nodes().iter().enumerate() {
            let n = node.op.requant_len();
            let offset = plan.requants[j] as usize;
            if n == 0 || plan.requants[j] == NONE {
                continue;
            }
            let size = n * core::mem::size_of::<Requant>();
            let Some(bytes) = arena.get_mut(offset..offset + size) else {
                continue;
            };
            // SAFETY: `bytes` is 16-byte aligned (a planned offset in the
            // aligned arena) and exactly n Requants long; a Requant is two
            // i32 with no padding (asserted in the planner), so any bytes
            // are valid ones; the exclusive borrow of `bytes` covers it.
            let out =
                unsafe { core::slice::from_raw_parts_mut(bytes.as_mut_ptr().cast::<Requant>(), n) };
            let mut inputs: heapless::Vec<Option<&Value<'a>>, MAX_NODE_INPUTS> =
                heapless::Vec::new();
            for id in model.node_inputs(node) {
                let _ = inputs.push(id.map(|i| &model.values()[usize::from(i)]));
            }
            ops::fill_requants(&node.op, &inputs, out);
        }
        Ok(Session { model, arena })
    }

    /// The model this session runs.
    pub fn model(&self) -> &'m Model<'a> {
        self.model
    }

    /// Runs one inference of a model whose graph inputs and outputs are all
    /// float32: `inputs[i]` holds graph input i (row-major), `outputs[i]`
    /// receives graph output i. A model with other element types is run
    /// with [`Session::run_typed`] (here it is an [`Error::DType`]).
    pub fn run(&mut self, inputs: &[&[f32]], outputs: &mut [&mut [f32]]) -> Result<(), Error> {
        let model = self.model;
        check_arity("inputs", model.inputs().len(), inputs.len())?;
        check_arity("outputs", model.outputs().len(), outputs.len())?;
        let lens = inputs.iter().map(|s| (DType::F32, s.len()));
        check_buffers("input", model.inputs(), lens, true)?;
        let lens = outputs.iter().map(|s| (DType::F32, s.len()));
        check_buffers("output", model.outputs(), lens, true)?;
        let mut ins: heapless::Vec<Data<'_>, MAX_GRAPH_IO> = heapless::Vec::new();
        for s in inputs {
            let _ = ins.push(Data::F32(s));
        }
        let mut outs: heapless::Vec<DataMut<'_>, MAX_GRAPH_IO> = heapless::Vec::new();
        for s in outputs.iter_mut() {
            let _ = outs.push(DataMut::F32(s));
        }
        self.execute(&ins, &mut outs);
        Ok(())
    }

    /// Runs one inference with typed buffers: `inputs[i]` holds graph input
    /// i and `outputs[i]` receives graph output i, each of the value's
    /// element type (float32, int8, uint8 or int32) and element count.
    pub fn run_typed(
        &mut self,
        inputs: &[Data<'_>],
        outputs: &mut [DataMut<'_>],
    ) -> Result<(), Error> {
        let model = self.model;
        check_arity("inputs", model.inputs().len(), inputs.len())?;
        check_arity("outputs", model.outputs().len(), outputs.len())?;
        let lens = inputs.iter().map(|d| (d.dtype(), d.len()));
        check_buffers("input", model.inputs(), lens, false)?;
        let lens = outputs.iter().map(|d| (d.dtype(), d.len()));
        check_buffers("output", model.outputs(), lens, false)?;
        self.execute(inputs, outputs);
        Ok(())
    }

    /// Runs the nodes; the buffers have been checked against the model.
    fn execute(&mut self, inputs: &[Data<'_>], outputs: &mut [DataMut<'_>]) {
        let model = self.model;
        let base = self.arena.as_mut_ptr();
        let arena_len = self.arena.len();
        let plan = model.plan();
        let values = model.values();
        // SAFETY (for the views below): the planner gives each arena tensor
        // an in-bounds, 16-byte-aligned extent (offsets are multiples of 16
        // from a 16-aligned base, extents ≤ arena_size, checked by
        // `planner::find_overlap` in tests), and no two tensors that are live
        // at the same node overlap unless one is the in-place or alias
        // successor of the other, in which case only one slice is created.
        let view = |id: usize| -> Option<Data<'_>> {
            let v = &values[id];
            match v.kind {
                ValueKind::Input(k) => inputs.get(usize::from(k)).copied(),
                _ if plan.offsets[id] != NONE => {
                    let start = plan.offsets[id] as usize;
                    debug_assert!(start + v.len() * v.dtype.size() <= arena_len);
                    // SAFETY: see above; the slice is only read while no
                    // mutable slice overlaps it.
                    unsafe { arena_view(base, start, v.dtype, v.len()) }
                }
                _ => const_in_place(v),
            }
        };
        for (j, node) in model.nodes().iter().enumerate() {
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
            debug_assert!(start + out_value.len() * out_value.dtype.size() <= arena_len);
            // SAFETY: see above; the output's extent overlaps no input slice
            // created below unless `shares_input`, handled without one.
            let Some(output) =
                (unsafe { arena_view_mut(base, start, out_value.dtype, out_value.len()) })
            else {
                continue;
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
                let arg = id.map(usize::from).and_then(|i| {
                    Some(TensorRef {
                        data: view(i)?,
                        shape: values[i].shape,
                    })
                });
                let _ = args.push(arg);
            }
            let n = node.op.requant_len();
            let requants: &[Requant] = if n > 0 && plan.requants[j] != NONE {
                // SAFETY: the planner placed n Requants at this 16-byte
                // aligned offset for the whole run, overlapping no tensor
                // (`find_overlap` checks it); `Session::new` wrote them and
                // nothing writes them afterwards; any bytes are a valid
                // Requant (two i32, no padding).
                unsafe {
                    core::slice::from_raw_parts(
                        base.add(plan.requants[j] as usize).cast::<Requant>(),
                        n,
                    )
                }
            } else {
                &[]
            };
            ops::eval(&node.op, &args, output, &out_value.shape, requants);
        }
        for (slot, &id) in outputs.iter_mut().zip(model.output_ids()) {
            if let Some(data) = view(usize::from(id)) {
                slot.copy_from(data);
            }
        }
    }
}

fn check_arity(what: &'static str, expected: usize, got: usize) -> Result<(), Error> {
    if expected != got {
        return Err(Error::Arity {
            what,
            expected,
            got,
        });
    }
    Ok(())
}

/// Checks each buffer's element type and length against its graph value;
/// `f32_only` reports any non-float32 value as [`Error::DType`] (the
/// float-only `run`).
fn check_buffers<'v, 'a: 'v>(
    what: &'static str,
    values: impl ExactSizeIterator<Item = &'v Value<'a>>,
    buffers: impl ExactSizeIterator<Item = (DType, usize)>,
    f32_only: bool,
) -> Result<(), Error> {
    for (index, (v, (dtype, got))) in values.zip(buffers).enumerate() {
        if f32_only && v.dtype != DType::F32 {
            return Err(Error::DType {
                value: name(v.name),
                dtype: v.dtype,
            });
        }
        if v.dtype != dtype {
            return Err(Error::BufferType {
                what,
                index,
                value: name(v.name),
                expected: v.dtype,
                got: dtype,
            });
        }
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

/// Decodes a constant that cannot be read in place into `dst` (its arena
/// extent, `len × size` bytes), in the target's byte order; a constant
/// folded from a `Cast` (a float16 weight) is converted on the way.
fn stage_constant(v: &Value<'_>, dst: &mut [u8]) {
    let size = v.dtype.size();
    let dtype = v.dtype;
    // Element i from a 64-bit word: the bits of a float32 or a (sign- or
    // zero-extended) integer, as the typed fields and `SmallInts` hold them.
    let mut put = |i: usize, word: u64| {
        let Some(d) = dst.get_mut(i * size..(i + 1) * size) else {
            return;
        };
        match dtype {
            DType::F32 | DType::I32 => d.copy_from_slice(&(word as u32).to_ne_bytes()),
            DType::I8 | DType::U8 => d[0] = word as u8,
            _ => {}
        }
    };
    match v.constant() {
        Some(ConstData::F32(x)) => put(0, u64::from(x.to_bits())),
        Some(ConstData::I64(x)) => put(0, x as u64),
        Some(ConstData::Ints(ints)) => {
            for (i, x) in ints.iter().enumerate() {
                put(i, x as u64);
            }
        }
        Some(ConstData::Tensor(TensorData::Raw(raw))) if size > 0 => {
            for (i, c) in raw.chunks_exact(size).enumerate() {
                let mut word = [0u8; 8];
                word[..size].copy_from_slice(c);
                put(i, u64::from_le_bytes(word));
            }
        }
        Some(ConstData::Tensor(TensorData::Typed {
            field,
            width,
            message,
        })) => {
            for (i, w) in TypedWords::new(message, field, width).enumerate() {
                put(i, w.unwrap_or(0));
            }
        }
        #[cfg(feature = "op-cast")]
        Some(ConstData::Cast { from, data }) => {
            for (i, w) in crate::value::words(from, data).enumerate() {
                let word = w.and_then(|w| ops::cast::cast_word(from, w, dtype));
                put(i, word.unwrap_or(0));
            }
        }
        _ => {}
    }
}
