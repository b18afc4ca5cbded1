//! Memory planner: gives every intermediate tensor an offset in one arena.
//!
//! Algorithm (TFLite Micro's "greedy by size"): tensors that may share
//! storage (an op's output reusing its input in place, or a reshape-like
//! output aliasing its input) are merged into one buffer; each buffer lives
//! from the node that first writes it to the last node that reads it (graph
//! outputs to the end). Buffers are placed largest first, each at the lowest
//! 16-byte-aligned offset where it overlaps no placed buffer whose lifetime
//! intersects its own. Cost: O(B² log B) for B buffers, at load time only.
//! Constants the runtime cannot read in place (misaligned, varint-encoded,
//! or stored in another type: a float16 weight that a load-time `Cast`
//! widens to float32, see [`crate::ops::cast`]) get a buffer that lives for
//! the whole run, written once by `Session::new`, and so do the requantization
//! parameters an op derives once from its constant scales
//! ([`crate::ops::Op::requant_len`]).
//!
//! Every buffer starts on a 16-byte boundary, so every typed view of the
//! arena (f32, i32, i8, u8, [`Requant`]) is aligned.

use crate::error::Error;
use crate::limits::{MAX_NODES, MAX_VALUES};
use crate::model::Model;
use crate::proto::onnx::TensorData;
use crate::quant::Requant;
use crate::tensor::DType;
use crate::value::{ConstData, ValueKind};

// A `Requant` is two i32 (no padding, any bit pattern valid) and fits the
// arena's alignment, so the session can view arena bytes as `[Requant]`.
const _: () =
    assert!(core::mem::size_of::<Requant>() == 8 && core::mem::align_of::<Requant>() <= ALIGN);

/// Arena alignment and size granularity, in bytes.
pub const ALIGN: usize = 16;

/// No arena storage (graph inputs, in-place constants, unused values).
pub const NONE: u32 = u32::MAX;

/// The result of planning: an arena offset per value.
#[derive(Clone, Debug)]
pub struct Plan {
    /// Byte offset of each value in the arena, or [`NONE`].
    pub offsets: [u32; MAX_VALUES],
    /// Bytes of arena needed.
    pub arena_size: usize,
    /// The largest total size of simultaneously live buffers: no plan can
    /// use less.
    pub lower_bound: usize,
    /// Bytes of constants copied into the arena because the file's layout
    /// does not let them be read in place, or because they are converted
    /// at load time (included in `arena_size` and `lower_bound`; 0 for
    /// float and int8 files written by tinykd's exporter).
    pub staged_constant_bytes: usize,
    /// The part of `staged_constant_bytes` holding constants converted at
    /// load time ([`ConstData::Cast`]: float16 weights widened to float32).
    pub converted_constant_bytes: usize,
    /// Number of distinct buffers placed.
    pub buffers: usize,
    /// Arena offset of each node's requantization parameters, or [`NONE`]
    /// (see [`crate::ops::Op::requant_len`]); meaningless for nodes beyond
    /// the model's.
    pub requants: [u32; MAX_NODES],
    /// Bytes of requantization parameters (included in `arena_size` and
    /// `lower_bound`).
    pub requant_bytes: usize,
}

impl Plan {
    /// No values planned.
    /// Its offsets are zero (meaningless until planned) so that a `static`
    /// empty model is all zeros and costs no flash.
    pub const EMPTY: Plan = Plan {
        offsets: [0; MAX_VALUES],
        arena_size: 0,
        lower_bound: 0,
        staged_constant_bytes: 0,
        converted_constant_bytes: 0,
        buffers: 0,
        requants: [0; MAX_NODES],
        requant_bytes: 0,
    };

    /// Resets to [`Plan::EMPTY`] in place.
    pub fn clear(&mut self) {
        self.offsets.fill(0);
        self.arena_size = 0;
        self.lower_bound = 0;
        self.staged_constant_bytes = 0;
        self.converted_constant_bytes = 0;
        self.buffers = 0;
        self.requants.fill(0);
        self.requant_bytes = 0;
    }
}

impl Default for Plan {
    fn default() -> Self {
        Plan::EMPTY
    }
}

#[derive(Clone, Copy, Debug, Default)]
struct Buffer {
    size: usize,
    first: usize,
    last: usize,
    offset: usize,
}

fn aligned(bytes: usize) -> Option<usize> {
    bytes.checked_add(ALIGN - 1).map(|b| b & !(ALIGN - 1))
}

/// Whether constant data of `dtype` can be read in place as a typed slice:
/// `raw_data` of bytes (int8, uint8) always, of 4-byte elements (float32,
/// int32) when 4-byte aligned on a little-endian target; never a constant
/// converted at load time ([`ConstData::Cast`]).
pub fn readable_in_place(dtype: DType, data: &ConstData<'_>) -> bool {
    match data {
        ConstData::Tensor(TensorData::Raw(raw)) => match dtype {
            DType::I8 | DType::U8 => true,
            DType::F32 | DType::I32 => {
                cfg!(target_endian = "little")
                    && (raw.as_ptr() as usize).is_multiple_of(core::mem::align_of::<f32>())
            }
            _ => false,
        },
        ConstData::Tensor(TensorData::Empty) => dtype.is_run_time(),
        _ => false,
    }
}

/// Plans `model`'s arena and stores the plan in it.
pub(crate) fn plan_into(model: &mut Model<'_>) -> Result<(), Error> {
    let mut offsets = [NONE; MAX_VALUES];
    let mut requants = [NONE; MAX_NODES];
    let summary = plan(model, &mut offsets, &mut requants)?;
    let plan = model.plan_mut();
    plan.offsets = offsets;
    plan.requants = requants;
    plan.requant_bytes = summary.requant_bytes;
    plan.arena_size = summary.arena_size;
    plan.lower_bound = summary.lower_bound;
    plan.staged_constant_bytes = summary.staged_constant_bytes;
    plan.converted_constant_bytes = summary.converted_constant_bytes;
    plan.buffers = summary.buffers;
    Ok(())
}

/// Plan figures without the offset table.
struct Summary {
    arena_size: usize,
    lower_bound: usize,
    staged_constant_bytes: usize,
    converted_constant_bytes: usize,
    buffers: usize,
    requant_bytes: usize,
}

/// Plans `model`'s arena, writing each value's offset into `offsets` and
/// each node's requantization parameters' into `requants`.
fn plan(
    model: &Model<'_>,
    offsets: &mut [u32; MAX_VALUES],
    requants: &mut [u32; MAX_NODES],
) -> Result<Summary, Error> {
    let values = model.values();
    let nodes = model.nodes();
    let end = nodes.len();
    let overflow = || Error::TooLarge {
        what: "bytes of arena",
        limit: u32::MAX as usize,
    };

    // Last reader of each value.
    let mut last_use = [0usize; MAX_VALUES];
    let mut used_at_run_time = [false; MAX_VALUES];
    for (j, node) in nodes.iter().enumerate() {
        if node.op == crate::ops::Op::Nop {
            continue;
        }
        for id in model.node_inputs(node).flatten() {
            last_use[usize::from(id)] = j;
            used_at_run_time[usize::from(id)] = true;
        }
    }
    for &id in model.output_ids() {
        last_use[usize::from(id)] = end;
        used_at_run_time[usize::from(id)] = true;
    }

    // At most one buffer per value, plus one per node's requantizations:
    // beyond the table's capacity (only for degenerate graphs) planning
    // fails rather than the load-time stack growing.
    let mut buffers = [Buffer::default(); MAX_VALUES];
    let mut n_buffers = 0;
    let mut buffer_of = [u16::MAX; MAX_VALUES];
    fn new_buffer(
        buffers: &mut [Buffer],
        n: &mut usize,
        size: usize,
        first: usize,
        last: usize,
    ) -> Result<u16, Error> {
        let slot = buffers.get_mut(*n).ok_or(Error::TooLarge {
            what: "arena buffers",
            limit: MAX_VALUES,
        })?;
        *slot = Buffer {
            size,
            first,
            last,
            offset: 0,
        };
        *n += 1;
        Ok((*n - 1) as u16)
    }

    // Staged constants live for the whole run.
    let mut staged_constant_bytes = 0usize;
    let mut converted_constant_bytes = 0usize;
    for (id, v) in values.iter().enumerate() {
        if let ValueKind::Constant(c) = v.kind {
            if used_at_run_time[id] && v.dtype.is_run_time() && !readable_in_place(v.dtype, &c) {
                let size = aligned(v.len() * v.dtype.size()).ok_or_else(overflow)?;
                staged_constant_bytes += size;
                if c.is_converted() {
                    converted_constant_bytes += size;
                }
                buffer_of[id] = new_buffer(&mut buffers, &mut n_buffers, size, 0, end)?;
            }
        }
    }

    // Requantization parameters live for the whole run, like constants.
    let mut requant_bytes = 0usize;
    let mut requant_buffer = [u16::MAX; MAX_NODES];
    for (j, node) in nodes.iter().enumerate() {
        let n = node.op.requant_len();
        let used = node
            .output
            .is_some_and(|o| used_at_run_time[usize::from(o)]);
        if n > 0 && used {
            let size = n
                .checked_mul(core::mem::size_of::<Requant>())
                .and_then(aligned)
                .ok_or_else(overflow)?;
            requant_bytes += size;
            requant_buffer[j] = new_buffer(&mut buffers, &mut n_buffers, size, 0, end)?;
        }
    }

    for (j, node) in nodes.iter().enumerate() {
        let Some(out) = node.output else { continue };
        let out = usize::from(out);
        if !matches!(values[out].kind, ValueKind::Computed(_)) || !used_at_run_time[out] {
            continue;
        }
        let size = aligned(values[out].len() * values[out].dtype.size()).ok_or_else(overflow)?;
        let input = model.node_inputs(node).next().flatten().map(usize::from);
        let shared = input.filter(|&i| {
            let b = buffer_of[i];
            let computed = matches!(values[i].kind, ValueKind::Computed(_));
            computed
                && b != u16::MAX
                && (node.op.is_alias()
                    || (node.op.in_place()
                        && buffers[usize::from(b)].last <= j
                        && last_use[i] <= j))
        });
        let b = match shared {
            Some(i) => buffer_of[i],
            None => new_buffer(&mut buffers, &mut n_buffers, size, j, last_use[out])?,
        };
        let buf = &mut buffers[usize::from(b)];
        buf.last = buf.last.max(last_use[out]);
        buf.size = buf.size.max(size);
        buffer_of[out] = b;
    }

    let buffers = &mut buffers[..n_buffers];
    let lower_bound = (0..=end)
        .map(|t| {
            buffers
                .iter()
                .filter(|b| b.first <= t && t <= b.last)
                .map(|b| b.size)
                .sum::<usize>()
        })
        .max()
        .unwrap_or(0);

    // Largest first; ties by earlier start for a stable result.
    let mut order = [0u16; MAX_VALUES];
    for (i, o) in order[..n_buffers].iter_mut().enumerate() {
        *o = i as u16;
    }
    let order = &mut order[..n_buffers];
    insertion_sort_by_key(order, |&b| {
        let b = &buffers[usize::from(b)];
        (usize::MAX - b.size, b.first)
    });
    let mut arena_size = 0usize;
    for (placed, &id) in order.iter().enumerate() {
        let buf = buffers[usize::from(id)];
        // Offsets of already-placed buffers whose lifetimes intersect, sorted.
        let mut conflicts = [(0usize, 0usize); MAX_VALUES];
        let mut n = 0;
        for &other in &order[..placed] {
            let o = &buffers[usize::from(other)];
            if o.first <= buf.last && buf.first <= o.last {
                conflicts[n] = (o.offset, o.offset + o.size);
                n += 1;
            }
        }
        let conflicts = &mut conflicts[..n];
        insertion_sort_by_key(conflicts, |&c| c);
        let mut offset = 0;
        for &(start, stop) in conflicts.iter() {
            if offset + buf.size <= start {
                break;
            }
            offset = offset.max(stop);
        }
        buffers[usize::from(id)].offset = offset;
        arena_size = arena_size.max(offset.checked_add(buf.size).ok_or_else(overflow)?);
    }
    if arena_size > u32::MAX as usize {
        return Err(overflow());
    }

    for (id, &b) in buffer_of[..values.len()].iter().enumerate() {
        if b != u16::MAX {
            offsets[id] = buffers[usize::from(b)].offset as u32;
        }
    }
    for (j, &b) in requant_buffer[..nodes.len()].iter().enumerate() {
        if b != u16::MAX {
            requants[j] = buffers[usize::from(b)].offset as u32;
        }
    }
    Ok(Summary {
        arena_size,
        lower_bound,
        staged_constant_bytes,
        converted_constant_bytes,
        buffers: n_buffers,
        requant_bytes,
    })
}

/// Sorts by key. Insertion sort: a few hundred elements at load time, and a
/// fraction of the flash `slice::sort` costs on a microcontroller.
fn insertion_sort_by_key<T: Copy, K: Ord>(items: &mut [T], key: impl Fn(&T) -> K) {
    for i in 1..items.len() {
        let item = items[i];
        let k = key(&item);
        let mut j = i;
        while j > 0 && key(&items[j - 1]) > k {
            items[j] = items[j - 1];
            j -= 1;
        }
        items[j] = item;
    }
}

/// Checks a plan against its model: every two values whose buffers are live
/// at the same time either share storage legitimately (alias/in-place chains)
/// or do not overlap, and no node's requantization parameters (live for the
/// whole run) overlap anything else. Returns the first conflicting pair; an
/// id of `MAX_VALUES + j` stands for node `j`'s requantization parameters.
pub fn find_overlap(model: &Model<'_>) -> Option<(usize, usize)> {
    let plan = model.plan();
    let values = model.values();
    let nodes = model.nodes();
    let end = nodes.len();
    let mut live = [(usize::MAX, 0usize); MAX_VALUES];
    for (j, node) in nodes.iter().enumerate() {
        if node.op == crate::ops::Op::Nop {
            continue;
        }
        if let Some(o) = node.output {
            let l = &mut live[usize::from(o)];
            l.0 = l.0.min(j);
            l.1 = l.1.max(j);
        }
        for id in model.node_inputs(node).flatten() {
            let l = &mut live[usize::from(id)];
            l.0 = l.0.min(j);
            l.1 = l.1.max(j);
        }
    }
    for &id in model.output_ids() {
        live[usize::from(id)].1 = end;
    }
    for (id, v) in values.iter().enumerate() {
        if matches!(v.kind, ValueKind::Constant(_)) {
            live[id] = (0, end);
        }
    }
    // Reshape-like and in-place outputs that share their input's bytes form
    // chains of legitimately shared storage.
    let mut alias_of = [u16::MAX; MAX_VALUES];
    for node in nodes.iter().filter(|n| n.op.is_alias() || n.op.in_place()) {
        if let (Some(o), Some(Some(i))) = (node.output, model.node_inputs(node).next()) {
            if plan.offsets[usize::from(o)] == plan.offsets[usize::from(i)] {
                alias_of[usize::from(o)] = i;
            }
        }
    }
    let root = |mut id: usize| {
        while alias_of[id] != u16::MAX {
            id = usize::from(alias_of[id]);
        }
        id
    };
    let extent = |id: usize| {
        let start = plan.offsets[id] as usize;
        (start, start + values[id].len() * values[id].dtype.size())
    };
    for a in 0..values.len() {
        for b in a + 1..values.len() {
            if plan.offsets[a] == NONE || plan.offsets[b] == NONE || root(a) == root(b) {
                continue;
            }
            let ((sa, ea), (sb, eb)) = (extent(a), extent(b));
            let (la, lb) = (live[a], live[b]);
            let time = la.0 <= lb.1 && lb.0 <= la.1;
            if sa < eb && sb < ea && time {
                return Some((a, b));
            }
        }
    }
    let requant_extent = |j: usize| {
        let start = plan.requants[j] as usize;
        let len = nodes[j].op.requant_len() * core::mem::size_of::<Requant>();
        (start, start + len)
    };
    let with_requants = |j: usize| plan.requants[j] != NONE && nodes[j].op.requant_len() > 0;
    for j in (0..nodes.len()).filter(|&j| with_requants(j)) {
        let (sj, ej) = requant_extent(j);
        for (id, &off) in plan.offsets[..values.len()].iter().enumerate() {
            let (s, e) = extent(id);
            if off != NONE && s < ej && sj < e && s != e {
                return Some((id, MAX_VALUES + j));
            }
        }
        for k in (j + 1..nodes.len()).filter(|&k| with_requants(k)) {
            let (sk, ek) = requant_extent(k);
            if sk < ej && sj < ek {
                return Some((MAX_VALUES + j, MAX_VALUES + k));
            }
        }
    }
    None
}
