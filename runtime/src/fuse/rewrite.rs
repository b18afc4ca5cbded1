//! Rewriting the model's tables in place: a matched pattern's float op
//! becomes the integer op, its QuantizeLinear and the DequantizeLinears left
//! without readers become `Nop`s, and the node I/O table is compacted.

use crate::limits::{MAX_NODE_INPUTS, MAX_VALUES};
use crate::model::{Model, ABSENT};
use crate::ops::Op;
use crate::value::ValueKind;

use super::matching::Quant;

/// Who reads each value, kept up to date while rewriting.
pub(super) struct Readers {
    /// Reads by nodes that run (not `Nop`).
    pub(super) count: [u16; MAX_VALUES],
    /// Graph outputs: never removed.
    pub(super) pinned: [bool; MAX_VALUES],
    /// Read by something before the rewrite: only such values' producers
    /// are swept when they lose their readers.
    pub(super) before: [bool; MAX_VALUES],
}

impl Model<'_> {
    /// Counts each value's readers among the nodes that run, and marks the
    /// graph outputs.
    pub(super) fn readers(&self) -> Readers {
        let mut r = Readers {
            count: [0; MAX_VALUES],
            pinned: [false; MAX_VALUES],
            before: [false; MAX_VALUES],
        };
        for node in self.nodes.iter().filter(|n| n.op != Op::Nop) {
            for id in self.node_inputs(node).flatten() {
                let c = &mut r.count[usize::from(id)];
                *c = c.saturating_add(1);
            }
        }
        for &id in &self.outputs {
            r.pinned[usize::from(id)] = true;
        }
        for (b, &c) in r.before.iter_mut().zip(&r.count) {
            *b = c > 0;
        }
        r
    }

    /// Makes node `j` run `op` on `inputs`, writing `q`'s output; `q`'s node
    /// becomes a `Nop`. Nothing changes if the I/O table is full.
    pub(super) fn rewrite(
        &mut self,
        r: &mut Readers,
        j: usize,
        op: Op,
        inputs: &[u16],
        q: &Quant,
    ) -> Option<()> {
        let start = self.push_io(inputs)?;
        let old: heapless::Vec<u16, MAX_NODE_INPUTS> =
            self.node_inputs(&self.nodes[j]).flatten().collect();
        for id in old {
            let c = &mut r.count[usize::from(id)];
            *c = c.saturating_sub(1);
        }
        for &id in inputs.iter().filter(|&&id| id != ABSENT) {
            let c = &mut r.count[usize::from(id)];
            *c = c.saturating_add(1);
        }
        let float_out = self.nodes[j].output;
        let node = &mut self.nodes[j];
        node.op = op;
        node.io_start = start;
        node.n_inputs = inputs.len() as u8;
        node.output = Some(q.out);
        node.qdq_fused = true;
        self.values[usize::from(q.out)].kind = ValueKind::Computed(j as u16);
        if let Some(f) = float_out {
            self.values[usize::from(f)].kind = ValueKind::Computed(u16::MAX);
        }
        self.remove(r, q.node);
        Some(())
    }

    /// Turns node `k` into a fused `Nop`: its inputs lose a reader.
    pub(super) fn remove(&mut self, r: &mut Readers, k: usize) {
        let inputs: heapless::Vec<u16, MAX_NODE_INPUTS> =
            self.node_inputs(&self.nodes[k]).flatten().collect();
        for id in inputs {
            let c = &mut r.count[usize::from(id)];
            *c = c.saturating_sub(1);
        }
        let node = &mut self.nodes[k];
        node.op = Op::Nop;
        node.output = None;
        node.qdq_fused = true;
    }

    /// Removes the DQ and Q nodes that the rewrites left without readers,
    /// repeatedly, since removing one may leave its producer unread.
    pub(super) fn sweep(&mut self, r: &mut Readers) {
        loop {
            let mut changed = false;
            for k in (0..self.nodes.len()).rev() {
                let node = &self.nodes[k];
                let Some(out) = node.output.map(usize::from) else {
                    continue;
                };
                let qdq = matches!(node.op, Op::Dequantize(_) | Op::Quantize(_));
                if qdq && r.count[out] == 0 && !r.pinned[out] && r.before[out] {
                    self.remove(r, k);
                    self.values[out].kind = ValueKind::Computed(u16::MAX);
                    changed = true;
                }
            }
            if !changed {
                break;
            }
        }
    }

    /// Appends `ids` to the I/O table, compacting it first if it is full;
    /// returns where they start.
    pub(super) fn push_io(&mut self, ids: &[u16]) -> Option<u16> {
        if self.io.len() + ids.len() > self.io.capacity() {
            self.compact_io();
        }
        let start = self.io.len();
        if start + ids.len() > self.io.capacity() {
            return None;
        }
        for &id in ids {
            self.io.push(id).ok()?;
        }
        u16::try_from(start).ok()
    }

    /// Drops the I/O entries of `Nop` nodes and of replaced input lists,
    /// moving the rest down in order (in place: a node's entries only move
    /// to lower positions).
    pub(super) fn compact_io(&mut self) {
        for node in self.nodes.iter_mut().filter(|n| n.op == Op::Nop) {
            node.io_start = 0;
            node.n_inputs = 0;
        }
        let (mut write, mut from) = (0usize, 0usize);
        loop {
            let next = self
                .nodes
                .iter()
                .enumerate()
                .filter(|(_, n)| n.n_inputs > 0 && usize::from(n.io_start) >= from)
                .min_by_key(|(_, n)| n.io_start)
                .map(|(j, _)| j);
            let Some(j) = next else { break };
            let start = usize::from(self.nodes[j].io_start);
            let len = usize::from(self.nodes[j].n_inputs);
            self.io.copy_within(start..start + len, write);
            self.nodes[j].io_start = write as u16;
            from = start + len;
            write += len;
        }
        self.io.truncate(write);
    }
}
