//! Quantization-aware training (`tinykd distill --qat`): where the
//! network fake-quantizes, the activation ranges it learns while training,
//! and the export of the trained network to the same QDQ form as PTQ.
//!
//! The fake-quantization points are not a second copy of the QDQ rules:
//! [`FakeQuant::for_model`] exports the float network, asks
//! [`qdq::plan`](super::qdq::plan) which values it would quantize, and maps
//! each back to the spec layer that produces it (the exporter names layer
//! `i`'s nodes `l{i}.*`). Values that share their input's parameters
//! (MaxPool, Flatten) share its range. Each range is an exponential moving
//! average of the batch minimum and maximum (Jacob et al. 2018, as
//! TensorFlow's QAT does); the export writes those ranges instead of
//! calibrated ones, and the weights with the PTQ rewrite's own per-channel
//! scales, so the int8 model computes what training simulated.

use super::qdq::{self, ActParams, RewriteSummary};
use super::QuantizeError;
use crate::export::onnx::INPUT;
use crate::export::ExportMeta;
use crate::train::model::ModelSpec;
use crate::train::ops::fake_quant::fake_quant_activation;
use candle_core::Tensor;
use prost::Message;
use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use tract_onnx::pb;

/// Weight of the previous range in each moving-average update.
pub const MOMENTUM: f32 = 0.99;

/// The fake-quantization points of a network and their learned ranges.
#[derive(Debug)]
pub struct FakeQuant {
    /// The quantized values of the exported graph that own a range, in graph order.
    values: Vec<String>,
    /// The range slot of the network input, if it is quantized.
    input: Option<usize>,
    /// The range slot of each spec layer whose output is quantized.
    after: BTreeMap<usize, usize>,
    /// Moving-average `(min, max)` per slot; `None` until first observed.
    ranges: Mutex<Vec<Option<(f32, f32)>>>,
}

/// What a checkpoint stores of a [`FakeQuant`].
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SavedRanges {
    /// The values, as [`FakeQuant`] orders them.
    pub values: Vec<String>,
    /// Their ranges.
    pub ranges: Vec<Option<(f32, f32)>>,
}

impl FakeQuant {
    /// The fake-quantization points of `spec` (with its `params`): those
    /// the PTQ rewrite quantizes in the exported model.
    pub fn for_model(spec: &ModelSpec, params: &[(String, Tensor)]) -> Result<Self, QuantizeError> {
        let bytes = crate::export::export(spec, params, &ExportMeta::default())?;
        let model = pb::ModelProto::decode(bytes.as_slice())
            .map_err(|e| QuantizeError::Graph(format!("the exported model: {e}")))?;
        let g = model.graph.unwrap_or_default();
        let plan = qdq::plan(&g);
        let producer: HashMap<&str, &str> = g
            .node
            .iter()
            .flat_map(|n| n.output.iter().map(move |o| (o.as_str(), n.name.as_str())))
            .collect();
        let mut values: Vec<String> = Vec::new();
        let (mut input, mut after) = (None, BTreeMap::new());
        for v in &plan.activations {
            let mut root = v;
            while let Some(s) = plan.shared.get(root) {
                root = s;
            }
            let slot = match values.iter().position(|r| r == root) {
                Some(s) => s,
                None => {
                    values.push(root.clone());
                    values.len() - 1
                }
            };
            if v == INPUT {
                input = Some(slot);
                continue;
            }
            let layer = producer
                .get(v.as_str())
                .and_then(|n| {
                    n.strip_prefix('l')?
                        .split('.')
                        .next()?
                        .parse::<usize>()
                        .ok()
                })
                .ok_or_else(|| {
                    QuantizeError::Graph(format!(
                        "model '{}': quantized value '{v}' has no spec layer",
                        spec.name
                    ))
                })?;
            if after.insert(layer, slot).is_some_and(|s| s != slot) {
                return Err(QuantizeError::Graph(format!(
                    "model '{}': layer {layer} has two quantized outputs with their own ranges",
                    spec.name
                )));
            }
        }
        let ranges = Mutex::new(vec![None; values.len()]);
        Ok(FakeQuant {
            values,
            input,
            after,
            ranges,
        })
    }

    /// The range slot of the network input.
    pub fn input_slot(&self) -> Option<usize> {
        self.input
    }

    /// The range slot of spec layer `layer`'s output, if it is quantized.
    pub fn slot_after(&self, layer: usize) -> Option<usize> {
        self.after.get(&layer).copied()
    }

    /// `x` on the int8 grid of slot `slot`'s range; when `observe`, the
    /// range first moves towards `x`'s minimum and maximum. An unobserved
    /// slot passes `x` through.
    pub fn activation(
        &self,
        slot: usize,
        x: &Tensor,
        observe: bool,
    ) -> candle_core::Result<Tensor> {
        let mut ranges = self.ranges.lock().expect("fake-quant ranges lock");
        if observe {
            let lo = x.flatten_all()?.min(0)?.to_scalar::<f32>()?;
            let hi = x.flatten_all()?.max(0)?.to_scalar::<f32>()?;
            if !(lo.is_finite() && hi.is_finite()) {
                candle_core::bail!(
                    "value '{}' is not finite (range {lo}..{hi})",
                    self.values[slot]
                );
            }
            ranges[slot] = Some(match ranges[slot] {
                None => (lo, hi),
                Some((a, b)) => (
                    MOMENTUM * a + (1.0 - MOMENTUM) * lo,
                    MOMENTUM * b + (1.0 - MOMENTUM) * hi,
                ),
            });
        }
        match ranges[slot] {
            Some((lo, hi)) => {
                let p = ActParams::from_range(lo, hi);
                fake_quant_activation(x, p.scale, p.zero_point)
            }
            None => Ok(x.clone()),
        }
    }

    /// The ranges, for a checkpoint.
    pub fn saved(&self) -> SavedRanges {
        SavedRanges {
            values: self.values.clone(),
            ranges: self.ranges.lock().expect("fake-quant ranges lock").clone(),
        }
    }

    /// Restores ranges saved by [`FakeQuant::saved`] for the same points.
    pub fn restore(&self, saved: &SavedRanges) -> Result<(), QuantizeError> {
        if saved.values != self.values {
            return Err(QuantizeError::Graph(format!(
                "saved ranges are for values {:?}, the network quantizes {:?}",
                saved.values, self.values
            )));
        }
        *self.ranges.lock().expect("fake-quant ranges lock") = saved.ranges.clone();
        Ok(())
    }

    /// The QDQ model of `spec` with `params`: the PTQ rewrite with the
    /// learned ranges in place of calibrated ones.
    pub fn export(
        &self,
        spec: &ModelSpec,
        params: &[(String, Tensor)],
        meta: &ExportMeta,
    ) -> Result<(Vec<u8>, RewriteSummary), QuantizeError> {
        let bytes = crate::export::export(spec, params, meta)?;
        let mut model = pb::ModelProto::decode(bytes.as_slice())
            .map_err(|e| QuantizeError::Graph(format!("the exported model: {e}")))?;
        let plan = qdq::plan(model.graph.as_ref().expect("the exporter writes a graph"));
        let ranges = self.ranges.lock().expect("fake-quant ranges lock");
        let mut measured = HashMap::new();
        for v in plan.measured() {
            let slot = self.values.iter().position(|r| r == v).ok_or_else(|| {
                QuantizeError::Graph(format!("value '{v}' has no fake-quantization range"))
            })?;
            let (lo, hi) = ranges[slot].ok_or_else(|| {
                QuantizeError::Graph(format!(
                    "value '{v}' was never observed in training (no QAT batch ran)"
                ))
            })?;
            measured.insert(v.clone(), ActParams::from_range(lo, hi));
        }
        let description = "int8 QDQ: weights symmetric per channel, activations asymmetric per \
                           tensor, ranges learned by quantization-aware training (moving \
                           min/max)";
        super::finish(&mut model, &plan, &measured, description)
    }
}

#[cfg(test)]
#[path = "qat_tests.rs"]
mod tests;
