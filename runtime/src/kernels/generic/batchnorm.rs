//! Inference-mode batch normalisation (ONNX BatchNormalization).

use libm::sqrtf;

/// y = (x − mean)/sqrt(var + eps)·scale + bias per channel, for x viewed as [batch, channels, spatial].
// The parameters are exactly the operator's inputs; grouping the four
// per-channel vectors into a struct would only add ceremony for callers.
#[allow(clippy::too_many_arguments)]
pub fn batch_norm_f32(
    x: &[f32],
    batch: usize,
    channels: usize,
    spatial: usize,
    scale: &[f32],
    bias: &[f32],
    mean: &[f32],
    var: &[f32],
    epsilon: f32,
    y: &mut [f32],
) {
    debug_assert!(x.len() >= batch * channels * spatial && y.len() >= batch * channels * spatial);
    debug_assert!(scale.len() >= channels && bias.len() >= channels);
    debug_assert!(mean.len() >= channels && var.len() >= channels);
    for c in 0..channels {
        // Folding the normalisation into one multiply-add per element means
        // only one sqrt and divide per channel.
        let a = scale[c] / sqrtf(var[c] + epsilon);
        let b = bias[c] - mean[c] * a;
        for n in 0..batch {
            let at = (n * channels + c) * spatial;
            for (o, &v) in y[at..][..spatial].iter_mut().zip(&x[at..][..spatial]) {
                *o = v * a + b;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_util::{assert_close, fill};
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn hand_computed() {
        // Two channels, two pixels: channel 0 has var 4 (σ 2), channel 1 var 0.25.
        let x = [3.0, 5.0, 1.0, 2.0];
        let mut y = [0.0; 4];
        batch_norm_f32(
            &x,
            1,
            2,
            2,
            &[2.0, 1.0],
            &[1.0, -1.0],
            &[1.0, 1.5],
            &[4.0, 0.25],
            0.0,
            &mut y,
        );
        assert_eq!(y, [3.0, 5.0, -2.0, 0.0]);
    }

    #[test]
    fn epsilon_is_added_to_variance() {
        let mut y = [0.0];
        batch_norm_f32(&[2.0], 1, 1, 1, &[1.0], &[0.0], &[0.0], &[0.0], 1.0, &mut y);
        assert_eq!(y, [2.0]);
    }

    proptest! {
        #[test]
        fn matches_naive(batch in 0usize..3, channels in 0usize..5, spatial in 0usize..10, eps in 1e-6f32..1e-2, seed in any::<u64>()) {
            let n = batch * channels * spatial;
            let x = fill(seed, n);
            let scale = fill(seed ^ 1, channels);
            let bias = fill(seed ^ 2, channels);
            let mean = fill(seed ^ 3, channels);
            let var: Vec<f32> = fill(seed ^ 4, channels).iter().map(|v| v.abs() + 0.1).collect();
            let mut y = vec![f32::NAN; n];
            batch_norm_f32(&x, batch, channels, spatial, &scale, &bias, &mean, &var, eps, &mut y);
            let want: Vec<f64> = (0..n).map(|i| {
                let c = i / spatial % channels;
                let sd = (var[c] as f64 + eps as f64).sqrt();
                (x[i] as f64 - mean[c] as f64) / sd * scale[c] as f64 + bias[c] as f64
            }).collect();
            assert_close(&y, &want, &(batch, channels, spatial));
        }
    }
}
