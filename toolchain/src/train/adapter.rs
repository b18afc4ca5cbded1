//! Adapters: small trainable projections learned alongside a student but
//! not part of it (FitNets' regressor from a student layer to the width of
//! a teacher's hint). An adapter is a matrix `[outputs, inputs]` and a
//! bias, applied as a linear layer to `[N, inputs]` and as a 1×1
//! convolution to `[N, inputs, H, W]`. Its parameters live in their own
//! `VarMap`, so exporting the student never sees them.

use super::ops::conv2d::{conv2d_block, Conv2dParams};
use super::ops::im2col::Epilogue;
use super::ops::linear::linear;
use candle_core::{DType, Device, Result, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};
use serde::{Deserialize, Serialize};

/// The shape of one adapter.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AdapterSpec {
    /// Name the objective asks for it by.
    pub name: String,
    /// Channels (or features) of the student tensor it reads.
    pub inputs: usize,
    /// Channels (or features) it produces.
    pub outputs: usize,
}

/// A set of adapters with their parameters.
pub struct Adapters {
    specs: Vec<AdapterSpec>,
    varmap: VarMap,
    /// Weight `[outputs, inputs]` and bias `[outputs]` of each spec.
    params: Vec<(Tensor, Tensor)>,
}

/// Prefix of adapter parameters in checkpoints.
pub const PREFIX: &str = "adapter.";

impl Adapters {
    /// Creates the adapters, their weights drawn from `seed`.
    pub fn new(specs: Vec<AdapterSpec>, seed: u64) -> Result<Self> {
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
        let mut params = Vec::with_capacity(specs.len());
        for s in &specs {
            if s.inputs == 0 || s.outputs == 0 {
                return Err(candle_core::Error::Msg(format!(
                    "adapter {}: {} → {} channels",
                    s.name, s.inputs, s.outputs
                )));
            }
            let l = candle_nn::linear(s.inputs, s.outputs, vb.pp(&s.name))?;
            let bias = l.bias().cloned().expect("linear has a bias");
            params.push((l.weight().clone(), bias));
        }
        // A seed of its own, so adapters do not repeat the network's streams.
        super::init::reinit(&varmap, seed ^ 0xada9_7e45)?;
        Ok(Self {
            specs,
            varmap,
            params,
        })
    }

    /// The adapters' shapes.
    pub fn specs(&self) -> &[AdapterSpec] {
        &self.specs
    }

    /// `x` projected by the adapter `name`.
    pub fn apply(&self, name: &str, x: &Tensor) -> Result<Tensor> {
        let k = self
            .specs
            .iter()
            .position(|s| s.name == name)
            .ok_or_else(|| candle_core::Error::Msg(format!("no adapter named {name}")))?;
        let (w, b) = &self.params[k];
        let s = &self.specs[k];
        match x.dims() {
            [_, c] if *c == s.inputs => linear(x, w, b),
            [_, c, _, _] if *c == s.inputs => {
                let w = w.reshape((s.outputs, s.inputs, 1, 1))?;
                conv2d_block(x, &w, Some(b), &Conv2dParams::new(1, 0), Epilogue::NONE)
            }
            other => Err(candle_core::Error::Msg(format!(
                "adapter {name} takes {} channels, got a tensor of shape {other:?}",
                s.inputs
            ))),
        }
    }

    /// The parameters by checkpoint name (`adapter.<name>.weight`), sorted.
    pub fn parameters(&self) -> Vec<(String, Tensor)> {
        let data = self.varmap.data().lock().expect("varmap lock");
        let mut v: Vec<_> = data
            .iter()
            .map(|(k, var)| (format!("{PREFIX}{k}"), var.as_tensor().clone()))
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    /// The vars in name order (the optimizer's slots after the network's).
    pub fn vars(&self) -> Vec<Var> {
        let data = self.varmap.data().lock().expect("varmap lock");
        let mut named: Vec<_> = data.iter().collect();
        named.sort_by(|a, b| a.0.cmp(b.0));
        named.into_iter().map(|(_, v)| v.clone()).collect()
    }

    /// The `VarMap` holding the parameters (names without [`PREFIX`]).
    pub fn varmap(&self) -> &VarMap {
        &self.varmap
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn linear_and_one_by_one_conv_agree() -> Result<()> {
        let a = Adapters::new(
            vec![AdapterSpec {
                name: "h".into(),
                inputs: 3,
                outputs: 5,
            }],
            1,
        )?;
        let x = Tensor::randn(0f32, 1f32, (2, 3, 4, 4), &Device::Cpu)?;
        let conv = a.apply("h", &x)?;
        assert_eq!(conv.dims(), &[2, 5, 4, 4]);
        // The same projection per pixel: [N·H·W, C] through the linear form.
        let flat = x.permute((0, 2, 3, 1))?.reshape((32, 3))?;
        let lin = a
            .apply("h", &flat)?
            .reshape((2, 4, 4, 5))?
            .permute((0, 3, 1, 2))?;
        let diff = (conv - lin)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(diff < 1e-5, "{diff}");
        assert!(a
            .apply("h", &Tensor::zeros((2, 4), DType::F32, &Device::Cpu)?)
            .is_err());
        assert!(a.apply("other", &flat).is_err());
        let names: Vec<_> = a.parameters().into_iter().map(|(k, _)| k).collect();
        assert_eq!(names, ["adapter.h.bias", "adapter.h.weight"]);
        Ok(())
    }
}
