//! Softmax and log-softmax over one axis of a tensor viewed as [outer, axis_len, inner].

use libm::{expf, logf};

/// Softmax over the middle dimension of the [outer, axis_len, inner] view of `x`, written to `y`.
pub fn softmax_f32(x: &[f32], y: &mut [f32], outer: usize, axis_len: usize, inner: usize) {
    for_each_lane(x, y, outer, axis_len, inner, |x, y, stride| {
        let m = lane_max(x, axis_len, stride);
        let mut sum = 0.0;
        for (o, &v) in lane_mut(y, axis_len, stride).zip(lane(x, axis_len, stride)) {
            let e = expf(v - m);
            *o = e;
            sum += e;
        }
        // sum >= 1 because the max element contributes e^0, so the
        // reciprocal is finite.
        let inv = 1.0 / sum;
        for o in lane_mut(y, axis_len, stride) {
            *o *= inv;
        }
    });
}

/// Log-softmax over the middle dimension of the [outer, axis_len, inner] view of `x`, written to `y`.
pub fn log_softmax_f32(x: &[f32], y: &mut [f32], outer: usize, axis_len: usize, inner: usize) {
    for_each_lane(x, y, outer, axis_len, inner, |x, y, stride| {
        let m = lane_max(x, axis_len, stride);
        let sum: f32 = lane(x, axis_len, stride).map(|&v| expf(v - m)).sum();
        // Subtract in two steps: (x - m) is exact-ish near the max, which is
        // where log-softmax values are small and precision matters.
        let log_sum = logf(sum);
        for (o, &v) in lane_mut(y, axis_len, stride).zip(lane(x, axis_len, stride)) {
            *o = (v - m) - log_sum;
        }
    });
}

/// Calls `f` with each lane's start in `x` and `y` and the element stride.
/// Lanes are strided when `inner > 1`; that avoids any scratch memory, and
/// the block a lane walks is small for the shapes softmax sees in practice.
fn for_each_lane(
    x: &[f32],
    y: &mut [f32],
    outer: usize,
    axis_len: usize,
    inner: usize,
    mut f: impl FnMut(&[f32], &mut [f32], usize),
) {
    let block = axis_len * inner;
    debug_assert!(x.len() >= outer * block && y.len() >= outer * block);
    if block == 0 {
        return;
    }
    for o in 0..outer {
        let xb = &x[o * block..][..block];
        let yb = &mut y[o * block..][..block];
        for i in 0..inner {
            f(&xb[i..], &mut yb[i..], inner);
        }
    }
}

#[inline(always)]
fn lane(x: &[f32], len: usize, stride: usize) -> impl Iterator<Item = &f32> {
    x.iter().step_by(stride).take(len)
}

#[inline(always)]
fn lane_mut(y: &mut [f32], len: usize, stride: usize) -> impl Iterator<Item = &mut f32> {
    y.iter_mut().step_by(stride).take(len)
}

#[inline(always)]
fn lane_max(x: &[f32], len: usize, stride: usize) -> f32 {
    lane(x, len, stride).fold(f32::NEG_INFINITY, |m, &v| if v > m { v } else { m })
}

#[cfg(test)]
mod tests {
    use super::super::test_util::fill;
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn hand_computed() {
        let x = [1.0f32, 2.0, 3.0];
        let mut y = [0.0; 3];
        softmax_f32(&x, &mut y, 1, 3, 1);
        let d = 1.0 + 1.0f64.exp() + 2.0f64.exp();
        let want = [1.0 / d, 1.0f64.exp() / d, 2.0f64.exp() / d];
        for (g, w) in y.iter().zip(want) {
            assert!((*g as f64 - w).abs() < 1e-6);
        }
        log_softmax_f32(&x, &mut y, 1, 3, 1);
        for (g, w) in y.iter().zip(want) {
            assert!((*g as f64 - w.ln()).abs() < 1e-6);
        }
    }

    #[test]
    fn large_inputs_do_not_overflow() {
        let x = [1000.0f32, 1000.0, -1000.0];
        let mut y = [0.0; 3];
        softmax_f32(&x, &mut y, 1, 3, 1);
        assert_eq!(y, [0.5, 0.5, 0.0]);
        log_softmax_f32(&x, &mut y, 1, 3, 1);
        assert!((y[0] - (-core::f32::consts::LN_2)).abs() < 1e-6);
        assert_eq!(y[2], -2000.0 - core::f32::consts::LN_2);
    }

    #[test]
    fn strided_axis_by_hand() {
        // [2, 2] with the axis first: columns are the lanes.
        let x = [0.0f32, 5.0, 0.0, 5.0];
        let mut y = [0.0; 4];
        softmax_f32(&x, &mut y, 1, 2, 2);
        assert_eq!(y, [0.5, 0.5, 0.5, 0.5]);
    }

    proptest! {
        #[test]
        fn matches_naive(outer in 0usize..4, axis_len in 0usize..7, inner in 0usize..5, scale in 0.1f32..20.0, seed in any::<u64>()) {
            let n = outer * axis_len * inner;
            let x: Vec<f32> = fill(seed, n).into_iter().map(|v| v * scale).collect();
            let (mut y, mut ly) = (vec![f32::NAN; n], vec![f32::NAN; n]);
            softmax_f32(&x, &mut y, outer, axis_len, inner);
            log_softmax_f32(&x, &mut ly, outer, axis_len, inner);
            for o in 0..outer {
                for i in 0..inner {
                    let at = |a: usize| (o * axis_len + a) * inner + i;
                    let denom: f64 = (0..axis_len).map(|a| (x[at(a)] as f64).exp()).sum();
                    for a in 0..axis_len {
                        let want = (x[at(a)] as f64).exp() / denom;
                        prop_assert!((y[at(a)] as f64 - want).abs() <= 1e-5 * want.max(1e-3), "{} vs {}", y[at(a)], want);
                        let lw = x[at(a)] as f64 - denom.ln();
                        prop_assert!((ly[at(a)] as f64 - lw).abs() <= 1e-5 * lw.abs().max(1.0), "{} vs {}", ly[at(a)], lw);
                    }
                }
            }
        }
    }
}
