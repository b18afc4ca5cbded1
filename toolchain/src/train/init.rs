//! Seeded parameter initialisation. candle's CPU generator cannot be
//! seeded, so a run's initial weights are drawn here from the run's seed:
//! He-uniform weights (bound `sqrt(6 / fan_in)`, the usual choice before
//! ReLUs) and zero biases, as Keras does for its layers' biases.

use crate::data::rng::{Rng, STREAM_INIT};
use candle_core::{Result, Tensor};
use candle_nn::VarMap;

/// Redraws every parameter of `varmap` from `seed`. Names decide the role:
/// `…weight` (dims `[out, fan_in…]`) or `…bias`; each parameter has its own
/// stream keyed by its position in name order.
pub fn reinit(varmap: &VarMap, seed: u64) -> Result<()> {
    let data = varmap.data().lock().expect("varmap lock");
    let mut named: Vec<_> = data.iter().collect();
    named.sort_by(|a, b| a.0.cmp(b.0));
    for (i, (name, var)) in named.into_iter().enumerate() {
        let dims = var.dims();
        let n = var.elem_count();
        let values = if name.ends_with("bias") {
            vec![0f32; n]
        } else {
            let fan_in: usize = dims.iter().skip(1).product::<usize>().max(1);
            let bound = (6.0 / fan_in as f64).sqrt() as f32;
            let mut rng = Rng::derive(seed, &[STREAM_INIT, i as u64]);
            (0..n)
                .map(|_| (2.0 * rng.unit_f32() - 1.0) * bound)
                .collect()
        };
        var.set(&Tensor::from_vec(values, dims, var.device())?)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};
    use candle_nn::VarBuilder;

    fn params(seed: u64) -> Result<Vec<Vec<f32>>> {
        let vm = VarMap::new();
        let vb = VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu);
        candle_nn::linear(100, 20, vb.pp("a"))?;
        candle_nn::linear(20, 5, vb.pp("b"))?;
        reinit(&vm, seed)?;
        let data = vm.data().lock().unwrap();
        let mut v: Vec<_> = data.iter().collect();
        v.sort_by(|a, b| a.0.cmp(b.0));
        v.iter()
            .map(|(_, t)| t.flatten_all()?.to_vec1::<f32>())
            .collect()
    }

    #[test]
    fn same_seed_same_weights_and_he_bounds() -> Result<()> {
        let (a, b, c) = (params(7)?, params(7)?, params(8)?);
        assert_eq!(a, b);
        assert_ne!(a, c);
        // Sorted: a.bias, a.weight, b.bias, b.weight.
        assert!(a[0].iter().all(|&v| v == 0.0));
        let bound = (6.0f32 / 100.0).sqrt();
        assert!(a[1].iter().all(|v| v.abs() <= bound));
        let mean_abs = a[1].iter().map(|v| v.abs()).sum::<f32>() / a[1].len() as f32;
        assert!((mean_abs - bound / 2.0).abs() < 0.05 * bound, "{mean_abs}");
        Ok(())
    }
}
