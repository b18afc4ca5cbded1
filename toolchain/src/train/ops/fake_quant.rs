//! Fake quantization for quantization-aware training, as candle custom ops.
//!
//! The forward pass rounds values to the int8 grid the exported QDQ model
//! will use, with the same arithmetic: activations through the runtime's own
//! `QuantizeLinear`/`DequantizeLinear` (per tensor, asymmetric), weights with
//! the PTQ rewrite's per-channel symmetric scale and rounding. The backward
//! pass is the straight-through estimator (Bengio et al. 2013; Jacob et al.
//! 2018): the gradient passes unchanged where the value is representable and
//! is zero where the activation grid clips it (weights are never clipped:
//! their scale comes from their largest magnitude).

use crate::quantize::calibrate::{quantize_symmetric, symmetric_weight_scale};
use candle_core::{bail, CpuStorage, CustomOp1, CustomOp2, DType, Layout, Result, Shape, Tensor};
use tinykd_runtime::quant::linear::{dequantize_linear, quantize_linear};

/// `x` rounded to the int8 grid of `scale` and `zero_point` (f32, CPU);
/// its gradient passes where `x` lies within the grid's range.
pub fn fake_quant_activation(x: &Tensor, scale: f32, zero_point: i8) -> Result<Tensor> {
    if !(scale.is_finite() && scale > 0.0) {
        bail!("fake_quant_activation: scale {scale} must be finite and > 0");
    }
    f32_input("fake_quant_activation", x)?.apply_op1(ActivationGrid { scale, zero_point })
}

/// `w` rounded to int8 symmetrically per output channel (axis 0), scale
/// `max|w_c| / 127` (f32, CPU); its gradient passes unchanged.
pub fn fake_quant_weight(w: &Tensor) -> Result<Tensor> {
    if w.rank() == 0 || w.dim(0)? == 0 {
        bail!(
            "fake_quant_weight: need a weight with output channels, got {:?}",
            w.dims()
        );
    }
    f32_input("fake_quant_weight", w)?.apply_op1(WeightGrid)
}

fn f32_input(name: &str, x: &Tensor) -> Result<Tensor> {
    if !x.device().is_cpu() || x.dtype() != DType::F32 {
        bail!("{name}: needs an f32 CPU tensor, got {:?}", x.dtype());
    }
    x.contiguous()
}

fn contiguous<'a>(s: &'a CpuStorage, l: &Layout) -> Result<&'a [f32]> {
    let CpuStorage::F32(v) = s else {
        bail!("fake quantization: expected f32 storage")
    };
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&v[a..b]),
        None => bail!("fake quantization: needs a contiguous input"),
    }
}

/// Per-tensor asymmetric int8 grid of one activation.
#[derive(Clone, Copy)]
struct ActivationGrid {
    scale: f32,
    zero_point: i8,
}

impl ActivationGrid {
    /// The smallest and largest representable real values.
    fn bounds(self) -> (f32, f32) {
        (
            dequantize_linear(i8::MIN, self.scale, self.zero_point),
            dequantize_linear(i8::MAX, self.scale, self.zero_point),
        )
    }
}

impl CustomOp1 for ActivationGrid {
    fn name(&self) -> &'static str {
        "tinykd-fake-quant-activation"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = contiguous(s, l)?;
        let y = x
            .iter()
            .map(|&v| {
                let q = quantize_linear(v, self.scale, self.zero_point);
                dequantize_linear(q, self.scale, self.zero_point)
            })
            .collect();
        Ok((CpuStorage::F32(y), l.shape().clone()))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(arg.apply_op2_no_bwd(
            &grad.contiguous()?,
            &ClippedGrad(*self),
        )?))
    }
}

/// `(x, gy) → gy` where `x` is within the grid's range, else 0.
struct ClippedGrad(ActivationGrid);

impl CustomOp2 for ClippedGrad {
    fn name(&self) -> &'static str {
        "tinykd-fake-quant-activation-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (x, g) = (contiguous(s1, l1)?, contiguous(s2, l2)?);
        if x.len() != g.len() {
            bail!("fake quant grad: {:?} vs {:?}", l1.shape(), l2.shape());
        }
        let (lo, hi) = self.0.bounds();
        let gx = x
            .iter()
            .zip(g)
            .map(|(&v, &gv)| if (lo..=hi).contains(&v) { gv } else { 0.0 })
            .collect();
        Ok((CpuStorage::F32(gx), l1.shape().clone()))
    }
}

/// Per-output-channel symmetric int8 grid of a weight.
struct WeightGrid;

impl CustomOp1 for WeightGrid {
    fn name(&self) -> &'static str {
        "tinykd-fake-quant-weight"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let w = contiguous(s, l)?;
        let channels = l.shape().dims()[0];
        let per = w.len() / channels;
        let mut y = Vec::with_capacity(w.len());
        for c in w.chunks(per.max(1)) {
            let scale = symmetric_weight_scale(c.iter().fold(0f32, |m, v| m.max(v.abs())));
            y.extend(
                c.iter()
                    .map(|&v| f32::from(quantize_symmetric(v, scale)) * scale),
            );
        }
        Ok((CpuStorage::F32(y), l.shape().clone()))
    }

    fn bwd(&self, _arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(grad.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    fn t(v: &[f32], dims: &[usize]) -> Tensor {
        Tensor::from_slice(v, dims, &Device::Cpu).unwrap()
    }

    #[test]
    fn activations_land_on_the_grid_and_saturate() {
        // scale 0.5, zero point −128: the grid is 0, 0.5, …, 127.5.
        let x = t(&[-1.0, 0.0, 0.2, 0.25, 0.75, 1.3, 127.5, 300.0], &[8]);
        let y = fake_quant_activation(&x, 0.5, -128).unwrap();
        let y = y.to_vec1::<f32>().unwrap();
        // 0.25 / 0.5 = 0.5 and 0.75 / 0.5 = 1.5 are ties: half to even.
        assert_eq!(y, [0.0, 0.0, 0.0, 0.0, 1.0, 1.5, 127.5, 127.5]);
    }

    #[test]
    fn activation_gradient_is_straight_through_inside_the_range() {
        // scale 0.1, zero point 0: representable [−12.8, 12.7].
        let x = Var::from_tensor(&t(&[-20.0, -12.8, -3.33, 0.0, 5.55, 12.7, 13.0], &[7])).unwrap();
        let w = t(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0], &[7]);
        let y = fake_quant_activation(&x, 0.1, 0).unwrap();
        let g = (y * &w).unwrap().sum_all().unwrap().backward().unwrap();
        let gx = g.get(&x).unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(gx, [0.0, 2.0, 3.0, 4.0, 5.0, 6.0, 0.0]);
    }

    #[test]
    fn weights_round_per_output_channel_with_identity_gradient() {
        // Channel 0: max 1.27 → scale 0.01; channel 1: max 254 → scale 2;
        // channel 2 is all zero (the scale floor keeps it zero).
        let w = Var::from_tensor(&t(
            &[1.27, -0.013, 0.5, 254.0, -3.0, 0.9, 0.0, 0.0, 0.0],
            &[3, 3],
        ))
        .unwrap();
        let y = fake_quant_weight(&w).unwrap();
        let v = y.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let expect = [1.27, -0.01, 0.5, 254.0, -4.0, 0.0, 0.0, 0.0, 0.0];
        for (a, b) in v.iter().zip(expect) {
            assert!((a - b).abs() < 1e-6, "{v:?}");
        }
        let r = t(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0], &[3, 3]);
        let g = (y * &r).unwrap().sum_all().unwrap().backward().unwrap();
        let gw = g
            .get(&w)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        assert_eq!(gw, [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0]);
    }

    #[test]
    fn bad_scales_and_dtypes_are_refused() {
        let x = t(&[1.0], &[1]);
        assert!(fake_quant_activation(&x, 0.0, 0).is_err());
        assert!(fake_quant_activation(&x, f32::NAN, 0).is_err());
        let x64 = x.to_dtype(DType::F64).unwrap();
        assert!(fake_quant_activation(&x64, 1.0, 0).is_err());
    }
}
