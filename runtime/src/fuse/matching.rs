//! Recognising the parts of a QDQ pattern around a float op: the
//! DequantizeLinears feeding it (activation, weight, bias), the
//! QuantizeLinear reading it, its fused activation as a quantized clamp, and
//! whether the requantizations exist.

use super::rewrite::Readers;
#[cfg(any(feature = "op-conv", feature = "op-gemm"))]
use crate::kernels::generic::activation::Activation;
use crate::model::{Model, ABSENT};
#[cfg(any(feature = "op-conv", feature = "op-gemm"))]
use crate::ops::qlinear::for_each_requant;
use crate::ops::quantize::Granularity;
use crate::ops::{Op, Q8_TYPES};
#[cfg(any(feature = "op-conv", feature = "op-gemm"))]
use crate::proto::onnx::TensorData;
#[cfg(any(feature = "op-conv", feature = "op-gemm"))]
use crate::quant::{quantize_linear, Clamp, QElem};
use crate::tensor::DType;
#[cfg(any(feature = "op-conv", feature = "op-gemm"))]
use crate::value::ConstData;
use crate::value::{Value, ValueKind};

/// Largest per-channel parameter read element by element when it is not
/// stored as raw_data (where reading element `i` costs `i` steps).
#[cfg(any(feature = "op-conv", feature = "op-gemm"))]
const MAX_TYPED_CHANNELS: usize = 256;

/// Relative tolerance between a bias's scale and `x_scale · w_scale[c]`.
#[cfg(any(feature = "op-conv", feature = "op-gemm"))]
const BIAS_SCALE_TOLERANCE: f64 = 1e-6;

/// A DequantizeLinear feeding a float op.
#[derive(Clone, Copy)]
pub(super) struct Dq {
    /// Its quantized input.
    pub(super) q: u16,
    pub(super) scale: u16,
    /// The zero point, or [`ABSENT`].
    pub(super) zero: u16,
    pub(super) granularity: Granularity,
}

/// The QuantizeLinear that alone reads a float op's output.
#[derive(Clone, Copy)]
pub(super) struct Quant {
    pub(super) node: usize,
    /// Its (int8/uint8) output.
    pub(super) out: u16,
    pub(super) scale: u16,
    /// The zero point, or [`ABSENT`].
    pub(super) zero: u16,
}

impl Model<'_> {
    pub(super) fn value(&self, id: u16) -> &Value<'_> {
        &self.values[usize::from(id)]
    }

    /// Input `i` of node `j`, or [`ABSENT`].
    pub(super) fn raw_input(&self, j: usize, i: usize) -> u16 {
        let node = &self.nodes[j];
        if i >= usize::from(node.n_inputs) {
            return ABSENT;
        }
        self.io
            .get(usize::from(node.io_start) + i)
            .copied()
            .unwrap_or(ABSENT)
    }

    /// Input `i` of node `j`, if present.
    pub(super) fn input(&self, j: usize, i: usize) -> Option<u16> {
        Some(self.raw_input(j, i)).filter(|&id| id != ABSENT)
    }

    /// The values of `ids`, as `ops::fill_requants` takes a node's inputs.
    #[cfg(any(
        feature = "op-conv",
        feature = "op-gemm",
        feature = "op-pool",
        feature = "op-elementwise"
    ))]
    pub(super) fn inputs_of<const N: usize>(&self, ids: &[u16; N]) -> [Option<&Value<'_>>; N] {
        ids.map(|id| self.values.get(usize::from(id)))
    }

    /// A constant float scalar.
    pub(super) fn scalar(&self, id: u16) -> Option<f32> {
        let v = self.values.get(usize::from(id))?;
        (v.dtype == DType::F32 && v.constant().is_some())
            .then(|| v.const_scalar_f32())
            .flatten()
    }

    /// A constant per-tensor zero point ([`ABSENT`] is 0).
    pub(super) fn zero_point(&self, id: u16) -> Option<i32> {
        if id == ABSENT {
            return Some(0);
        }
        let v = self.values.get(usize::from(id))?;
        (v.len() == 1 && v.constant().is_some())
            .then(|| v.const_element(0))
            .flatten()
            .map(|z| z as i32)
    }

    /// Whether element-by-element reads of constant `id` are cheap: raw
    /// data, or a short typed field.
    #[cfg(any(feature = "op-conv", feature = "op-gemm"))]
    pub(super) fn indexable(&self, id: u16) -> bool {
        let v = self.value(id);
        match v.constant() {
            Some(ConstData::Tensor(TensorData::Raw(_))) => true,
            Some(_) => v.len() <= MAX_TYPED_CHANNELS,
            None => false,
        }
    }

    /// The DequantizeLinear that produces `id`.
    pub(super) fn dq(&self, id: u16) -> Option<Dq> {
        let ValueKind::Computed(p) = self.value(id).kind else {
            return None;
        };
        let p = usize::from(p);
        let node = self.nodes.get(p).filter(|n| n.output == Some(id))?;
        let Op::Dequantize(d) = node.op else {
            return None;
        };
        let zero = self.raw_input(p, 2);
        let scale = self.input(p, 1)?;
        let constant = |id: u16| self.value(id).constant().is_some();
        if !constant(scale) || (zero != ABSENT && !constant(zero)) {
            return None;
        }
        Some(Dq {
            q: self.input(p, 0)?,
            scale,
            zero,
            granularity: d.granularity,
        })
    }

    /// The DQ of an activation: 8-bit, per tensor.
    pub(super) fn activation_dq(&self, id: u16) -> Option<Dq> {
        let d = self.dq(id)?;
        let ok = Q8_TYPES.contains(&self.value(d.q).dtype)
            && d.granularity == Granularity::PerTensor
            && self.scalar(d.scale).is_some()
            && self.zero_point(d.zero).is_some();
        ok.then_some(d)
    }

    /// The DQ of a constant 8-bit weight with `channels` output channels
    /// along `axis`: per tensor, or per channel along that axis.
    #[cfg(any(feature = "op-conv", feature = "op-gemm"))]
    pub(super) fn weight_dq(&self, id: u16, axis: u8, channels: usize) -> Option<Dq> {
        let d = self.dq(id)?;
        let w = self.value(d.q);
        let scales = self.value(d.scale).len();
        let ok = Q8_TYPES.contains(&w.dtype)
            && w.constant().is_some()
            && match d.granularity {
                Granularity::PerTensor => scales == 1,
                Granularity::PerAxis(a) => a == axis && scales == channels,
            }
            && self.indexable(d.scale)
            && (d.zero == ABSENT || self.indexable(d.zero));
        ok.then_some(d)
    }

    /// The int32 bias behind `id` (a DQ of `channels` constant int32 values
    /// whose scale is `x_scale · w_scale[c]`).
    #[cfg(any(feature = "op-conv", feature = "op-gemm"))]
    pub(super) fn bias(&self, id: u16, x: &Dq, w: &Dq, channels: usize) -> Option<u16> {
        let d = self.dq(id)?;
        let b = self.value(d.q);
        let (ws, bs) = (self.value(w.scale), self.value(d.scale));
        let ok = b.dtype == DType::I32
            && b.constant().is_some()
            && b.len() == channels
            && (bs.len() == 1 || bs.len() == channels)
            && self.indexable(d.scale);
        if !ok {
            return None;
        }
        let x_scale = f64::from(self.scalar(x.scale)?);
        let at = |v: &Value<'_>, c: usize| v.const_element(if v.len() == 1 { 0 } else { c });
        for c in 0..channels {
            let want = x_scale * at(ws, c)?;
            if (at(bs, c)? - want).abs() > BIAS_SCALE_TOLERANCE * want {
                return None;
            }
        }
        Some(d.q)
    }

    /// The QuantizeLinear that alone reads node `j`'s output, per tensor to
    /// an 8-bit type with constant parameters.
    pub(super) fn quant_reader(&self, r: &Readers, j: usize) -> Option<Quant> {
        let out = self.nodes[j].output?;
        if r.count[usize::from(out)] != 1 || r.pinned[usize::from(out)] {
            return None;
        }
        let k = (j + 1..self.nodes.len()).find(|&k| {
            let node = &self.nodes[k];
            node.op != Op::Nop && self.node_inputs(node).any(|id| id == Some(out))
        })?;
        let Op::Quantize(quant) = self.nodes[k].op else {
            return None;
        };
        let q = Quant {
            node: k,
            out: self.nodes[k].output?,
            scale: self.input(k, 1)?,
            zero: self.raw_input(k, 2),
        };
        let ok = quant.granularity == Granularity::PerTensor
            && self.input(k, 0) == Some(out)
            && Q8_TYPES.contains(&self.value(q.out).dtype)
            && self.scalar(q.scale).is_some()
            && self.zero_point(q.zero).is_some();
        ok.then_some(q)
    }

    /// A fused activation as the output clamp, in the quantized domain.
    #[cfg(any(feature = "op-conv", feature = "op-gemm"))]
    pub(super) fn clamp(&self, act: Activation, q: &Quant) -> Option<Clamp> {
        let zero = self.zero_point(q.zero)?;
        match act {
            Activation::None => Some(Clamp::NONE),
            Activation::Relu => Some(Clamp {
                min: zero,
                max: i32::MAX,
            }),
            Activation::Clip { min, max } if !min.is_nan() && !max.is_nan() => {
                let scale = self.scalar(q.scale)?;
                fn quantize<T: QElem>(v: f32, scale: f32, zero: i32) -> i32 {
                    quantize_linear(v, scale, T::from_i32_saturating(zero)).to_i32()
                }
                let q = |v: f32| match self.value(q.out).dtype {
                    #[cfg(feature = "quant-u8")]
                    DType::U8 => quantize::<u8>(v, scale, zero),
                    // int8: the only other type in Q8_TYPES.
                    _ => quantize::<i8>(v, scale, zero),
                };
                // Clip's max wins over its min (as in the float kernel).
                let (lo, hi) = (q(min), q(max));
                Some(Clamp {
                    min: lo.min(hi),
                    max: hi,
                })
            }
            _ => None,
        }
    }

    /// Whether every requantization of a QLinearConv-layout input list is
    /// representable.
    #[cfg(any(feature = "op-conv", feature = "op-gemm"))]
    pub(super) fn check_requants<const N: usize>(&self, ids: &[u16; N]) -> Option<()> {
        let mut ok = true;
        for_each_requant(&self.inputs_of(ids), |_, r| ok &= r.is_ok());
        ok.then_some(())
    }
}
