//! 2-D max / average pooling (NCHW) and global average pooling.

/// Geometry of a 2-D pooling window; out_h/out_w come from the caller (ceil_mode is expressed through them).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct PoolGeometry {
    /// Number of images N.
    pub batch: usize,
    /// Channels C.
    pub channels: usize,
    /// Input height.
    pub in_h: usize,
    /// Input width.
    pub in_w: usize,
    /// Output height.
    pub out_h: usize,
    /// Output width.
    pub out_w: usize,
    /// Window height.
    pub kernel_h: usize,
    /// Window width.
    pub kernel_w: usize,
    /// Vertical stride (≥ 1).
    pub stride_h: usize,
    /// Horizontal stride (≥ 1).
    pub stride_w: usize,
    /// Vertical dilation (≥ 1).
    pub dilation_h: usize,
    /// Horizontal dilation (≥ 1).
    pub dilation_w: usize,
    /// Padding rows above the input.
    pub pad_top: usize,
    /// Padding columns left of the input.
    pub pad_left: usize,
    /// Padding rows below the input (only affects the count_include_pad divisor).
    pub pad_bottom: usize,
    /// Padding columns right of the input (only affects the count_include_pad divisor).
    pub pad_right: usize,
}

/// Max over each window's valid input positions (padding never wins; a window with none yields -inf); NaN propagates.
pub fn max_pool2d_f32(g: &PoolGeometry, x: &[f32], y: &mut [f32]) {
    for_each_plane(g, x, y, |xp, yp| {
        reduce_plane(g, xp, yp, f32::NEG_INFINITY, |m, v| {
            // Written so that a NaN, once seen, is kept: `v > m` alone would
            // let a later number replace it, and `f32::max` drops it.
            if v > m || v.is_nan() {
                v
            } else {
                m
            }
        })
    });
}

/// Max over each window's valid input positions for 8-bit integers (exact);
/// a window with no valid position yields `i8::MIN`.
pub fn max_pool2d_i8(g: &PoolGeometry, x: &[i8], y: &mut [i8]) {
    max_pool2d_ord(g, x, y, i8::MIN);
}

/// As [`max_pool2d_i8`] for uint8 (an empty window yields 0).
pub fn max_pool2d_u8(g: &PoolGeometry, x: &[u8], y: &mut [u8]) {
    max_pool2d_ord(g, x, y, u8::MIN);
}

fn max_pool2d_ord<T: Copy + Ord>(g: &PoolGeometry, x: &[T], y: &mut [T], lowest: T) {
    for_each_plane(g, x, y, |xp, yp| reduce_plane(g, xp, yp, lowest, Ord::max));
}

/// count_include_pad: divide by the full window size clipped to the *padded* input extent (ONNX semantics: with ceil_mode, windows that run past the explicit padding still only count the explicitly padded area); otherwise divide by the number of valid input elements in the window.
pub fn avg_pool2d_f32(g: &PoolGeometry, count_include_pad: bool, x: &[f32], y: &mut [f32]) {
    // Window positions are counted in padded coordinates, where the input
    // occupies [pad, pad + in_len). Validity is separable, so the divisor is
    // (valid rows) × (valid columns).
    let (y_lo, y_hi, x_lo, x_hi) = if count_include_pad {
        (
            0,
            g.pad_top + g.in_h + g.pad_bottom,
            0,
            g.pad_left + g.in_w + g.pad_right,
        )
    } else {
        (
            g.pad_top,
            g.pad_top + g.in_h,
            g.pad_left,
            g.pad_left + g.in_w,
        )
    };
    for_each_plane(g, x, y, |xp, yp| {
        reduce_plane(g, xp, yp, 0.0, |s, v| s + v);
        for (oy, y_row) in yp.chunks_exact_mut(g.out_w).enumerate() {
            let rows = count_taps(oy * g.stride_h, g.kernel_h, g.dilation_h, y_lo, y_hi);
            for (ox, o) in y_row.iter_mut().enumerate() {
                let count =
                    rows * count_taps(ox * g.stride_w, g.kernel_w, g.dilation_w, x_lo, x_hi);
                // Windows with nothing to count (ceil_mode overhang, or only
                // padding when it is excluded) report 0 rather than 0/0.
                *o = if count == 0 { 0.0 } else { *o / count as f32 };
            }
        }
    });
}

/// Mean over each of `batch_channels` contiguous runs of `spatial` elements (0 when spatial is 0).
pub fn global_avg_pool_f32(batch_channels: usize, spatial: usize, x: &[f32], y: &mut [f32]) {
    debug_assert!(x.len() >= batch_channels * spatial && y.len() >= batch_channels);
    if spatial == 0 {
        y[..batch_channels].fill(0.0);
        return;
    }
    let inv = 1.0 / spatial as f32;
    for (o, xp) in y[..batch_channels].iter_mut().zip(x.chunks_exact(spatial)) {
        *o = xp.iter().sum::<f32>() * inv;
    }
}

fn for_each_plane<T>(g: &PoolGeometry, x: &[T], y: &mut [T], mut f: impl FnMut(&[T], &mut [T])) {
    debug_assert!(g.stride_h > 0 && g.stride_w > 0 && g.dilation_h > 0 && g.dilation_w > 0);
    let plane_in = g.in_h * g.in_w;
    let plane_out = g.out_h * g.out_w;
    let planes = g.batch * g.channels;
    debug_assert!(x.len() >= planes * plane_in && y.len() >= planes * plane_out);
    if plane_out == 0 {
        return;
    }
    for p in 0..planes {
        f(
            &x[p * plane_in..][..plane_in],
            &mut y[p * plane_out..][..plane_out],
        );
    }
}

/// Folds every valid input position of each window into its output with `f`,
/// row by row like the convolution: taps outside the input are skipped by
/// range rather than tested per element.
#[inline(always)]
fn reduce_plane<T: Copy>(g: &PoolGeometry, xp: &[T], yp: &mut [T], init: T, f: impl Fn(T, T) -> T) {
    let inside = (g.pad_top, g.pad_left, g.dilation_h, g.dilation_w) == (0, 0, 1, 1)
        && 2 * g.out_h <= g.in_h
        && 2 * g.out_w <= g.in_w;
    if inside && (g.kernel_h, g.kernel_w, g.stride_h, g.stride_w) == (2, 2, 2, 2) {
        // The usual 2×2 downsampling, one pass over each pair of rows
        // (the general loop below re-reads every output once per tap).
        for (oy, y_row) in yp.chunks_exact_mut(g.out_w).enumerate() {
            let r0 = &xp[2 * oy * g.in_w..][..2 * g.out_w];
            let r1 = &xp[(2 * oy + 1) * g.in_w..][..2 * g.out_w];
            for ((o, a), b) in y_row
                .iter_mut()
                .zip(r0.chunks_exact(2))
                .zip(r1.chunks_exact(2))
            {
                *o = f(f(f(f(init, a[0]), a[1]), b[0]), b[1]);
            }
        }
        return;
    }
    for (oy, y_row) in yp.chunks_exact_mut(g.out_w).enumerate() {
        y_row.fill(init);
        for ky in 0..g.kernel_h {
            let t = oy * g.stride_h + ky * g.dilation_h;
            if t < g.pad_top || t - g.pad_top >= g.in_h {
                continue;
            }
            let x_row = &xp[(t - g.pad_top) * g.in_w..][..g.in_w];
            for kx in 0..g.kernel_w {
                let off = kx * g.dilation_w;
                let lo = g.pad_left.saturating_sub(off).div_ceil(g.stride_w);
                let hi = (g.in_w + g.pad_left)
                    .saturating_sub(off)
                    .div_ceil(g.stride_w)
                    .min(g.out_w);
                if lo >= hi {
                    continue;
                }
                let ix0 = lo * g.stride_w + off - g.pad_left;
                let taps = x_row[ix0..].iter().step_by(g.stride_w);
                for (o, &v) in y_row[lo..hi].iter_mut().zip(taps) {
                    *o = f(*o, v);
                }
            }
        }
    }
}

/// Number of taps `k` in `0..kernel` whose position `base + k * dilation` lies in `[lo, hi)`.
#[inline]
pub(crate) fn count_taps(
    base: usize,
    kernel: usize,
    dilation: usize,
    lo: usize,
    hi: usize,
) -> usize {
    let first = lo.saturating_sub(base).div_ceil(dilation);
    let end = hi.saturating_sub(base).div_ceil(dilation).min(kernel);
    end.saturating_sub(first)
}

#[cfg(test)]
mod tests {
    use super::super::test_util::{assert_close, fill};
    use super::*;
    use proptest::prelude::*;

    /// Per output element, walks the whole window in signed coordinates and
    /// classifies each position explicitly. Returns (max, avg).
    fn naive(g: &PoolGeometry, include_pad: bool, x: &[f32]) -> (Vec<f64>, Vec<f64>) {
        let (mut mx, mut av) = (Vec::new(), Vec::new());
        for p in 0..g.batch * g.channels {
            for oy in 0..g.out_h {
                for ox in 0..g.out_w {
                    let (mut m, mut s, mut cnt) = (f64::NEG_INFINITY, 0.0, 0usize);
                    for ky in 0..g.kernel_h {
                        for kx in 0..g.kernel_w {
                            let iy =
                                (oy * g.stride_h + ky * g.dilation_h) as isize - g.pad_top as isize;
                            let ix = (ox * g.stride_w + kx * g.dilation_w) as isize
                                - g.pad_left as isize;
                            let inside =
                                iy >= 0 && ix >= 0 && iy < g.in_h as isize && ix < g.in_w as isize;
                            let in_padded = iy >= -(g.pad_top as isize)
                                && ix >= -(g.pad_left as isize)
                                && iy < (g.in_h + g.pad_bottom) as isize
                                && ix < (g.in_w + g.pad_right) as isize;
                            if inside {
                                let v = x[(p * g.in_h + iy as usize) * g.in_w + ix as usize] as f64;
                                m = m.max(v);
                                s += v;
                            }
                            if if include_pad { in_padded } else { inside } {
                                cnt += 1;
                            }
                        }
                    }
                    mx.push(m);
                    av.push(if cnt == 0 { 0.0 } else { s / cnt as f64 });
                }
            }
        }
        (mx, av)
    }

    fn geom(
        in_h: usize,
        in_w: usize,
        k: usize,
        s: usize,
        pads: [usize; 4],
        out_h: usize,
        out_w: usize,
    ) -> PoolGeometry {
        PoolGeometry {
            batch: 1,
            channels: 1,
            in_h,
            in_w,
            out_h,
            out_w,
            kernel_h: k,
            kernel_w: k,
            stride_h: s,
            stride_w: s,
            dilation_h: 1,
            dilation_w: 1,
            pad_top: pads[0],
            pad_left: pads[1],
            pad_bottom: pads[2],
            pad_right: pads[3],
        }
    }

    #[test]
    fn hand_computed_max_and_avg() {
        let x: Vec<f32> = (1..=16).map(|v| v as f32).collect();
        let g = geom(4, 4, 2, 2, [0; 4], 2, 2);
        let mut y = [0.0; 4];
        max_pool2d_f32(&g, &x, &mut y);
        assert_eq!(y, [6., 8., 14., 16.]);
        avg_pool2d_f32(&g, false, &x, &mut y);
        assert_eq!(y, [3.5, 5.5, 11.5, 13.5]);
    }

    #[test]
    fn hand_computed_padding_divisors() {
        // 2×2 input, 2×2 window, stride 1, pad 1 all round: corner windows see
        // one input element out of four padded positions.
        let x = [1., 2., 3., 4.];
        let g = geom(2, 2, 2, 1, [1; 4], 3, 3);
        let mut y = [0.0; 9];
        avg_pool2d_f32(&g, true, &x, &mut y);
        assert_eq!(y, [0.25, 0.75, 0.5, 1.0, 2.5, 1.5, 0.75, 1.75, 1.0]);
        avg_pool2d_f32(&g, false, &x, &mut y);
        assert_eq!(y, [1., 1.5, 2., 2., 2.5, 3., 3., 3.5, 4.]);
        max_pool2d_f32(&g, &[-1., -2., -3., -4.], &mut y);
        assert_eq!(y, [-1., -1., -2., -1., -1., -2., -3., -3., -4.]);
    }

    #[test]
    fn ceil_mode_overhang_is_not_counted() {
        // 3-wide input, window 2, stride 2, no pads, ceil_mode → 2 outputs; the
        // last window covers only column 2, even with count_include_pad.
        let g = geom(1, 3, 2, 2, [0; 4], 1, 2);
        let g = PoolGeometry { kernel_h: 1, ..g };
        let mut y = [0.0; 2];
        avg_pool2d_f32(&g, true, &[1., 3., 5.], &mut y);
        assert_eq!(y, [2., 5.]);
        max_pool2d_f32(&g, &[1., 3., 5.], &mut y);
        assert_eq!(y, [3., 5.]);
    }

    #[test]
    fn max_propagates_nan() {
        let g = geom(1, 3, 1, 1, [0; 4], 1, 1);
        let g = PoolGeometry { kernel_w: 3, ..g };
        let mut y = [0.0];
        max_pool2d_f32(&g, &[1.0, f32::NAN, 2.0], &mut y);
        assert!(y[0].is_nan());
    }

    #[test]
    fn global_average() {
        let mut y = [0.0; 2];
        global_avg_pool_f32(2, 3, &[1., 2., 3., 10., 20., 60.], &mut y);
        assert_eq!(y, [2., 30.]);
        global_avg_pool_f32(2, 0, &[], &mut y);
        assert_eq!(y, [0., 0.]);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(1024))]

        #[test]
        fn matches_naive(
            batch in 1usize..=2, channels in 1usize..=3, in_h in 1usize..=7, in_w in 1usize..=7,
            kh in 1usize..=3, kw in 1usize..=3, sh in 1usize..=3, sw in 1usize..=3,
            dh in 1usize..=2, dw in 1usize..=2, pads in [0usize..=2, 0usize..=2, 0usize..=2, 0usize..=2],
            ceil in any::<bool>(), include_pad in any::<bool>(), seed in any::<u64>(),
        ) {
            // ONNX requires pads smaller than the kernel.
            let pads = [pads[0].min(kh - 1), pads[1].min(kw - 1), pads[2].min(kh - 1), pads[3].min(kw - 1)];
            let out = |len: usize, p: usize, k: usize, s: usize, d: usize| {
                let span = d * (k - 1) + 1;
                (len + p >= span).then(|| (len + p - span + if ceil { s - 1 } else { 0 }) / s + 1)
            };
            let (Some(out_h), Some(out_w)) = (out(in_h, pads[0] + pads[2], kh, sh, dh), out(in_w, pads[1] + pads[3], kw, sw, dw)) else {
                return Ok(());
            };
            let g = PoolGeometry {
                batch, channels, in_h, in_w, out_h, out_w, kernel_h: kh, kernel_w: kw,
                stride_h: sh, stride_w: sw, dilation_h: dh, dilation_w: dw,
                pad_top: pads[0], pad_left: pads[1], pad_bottom: pads[2], pad_right: pads[3],
            };
            let x = fill(seed, batch * channels * in_h * in_w);
            let (want_max, want_avg) = naive(&g, include_pad, &x);
            let mut y = vec![f32::NAN; batch * channels * out_h * out_w];
            max_pool2d_f32(&g, &x, &mut y);
            for (i, (&got, &want)) in y.iter().zip(&want_max).enumerate() {
                prop_assert!(got as f64 == want, "max {g:?} at {i}: {got} vs {want}");
            }
            avg_pool2d_f32(&g, include_pad, &x, &mut y);
            assert_close(&y, &want_avg, &(g, include_pad));

            // The 8-bit kernels are exact: the f32 max of the same values,
            // the type's minimum where a window has no valid position.
            let floor = |y: &[f32], min: f32| -> Vec<f32> {
                y.iter().map(|&v| if v == f32::NEG_INFINITY { min } else { v }).collect()
            };
            let xi: Vec<i8> = x.iter().map(|&v| (v * 127.0) as i8).collect();
            let xu: Vec<u8> = x.iter().map(|&v| ((v + 1.0) * 127.0) as u8).collect();
            let mut yi = vec![0i8; y.len()];
            let mut yu = vec![0u8; y.len()];
            max_pool2d_i8(&g, &xi, &mut yi);
            max_pool2d_u8(&g, &xu, &mut yu);
            let xf: Vec<f32> = xi.iter().map(|&v| v as f32).collect();
            max_pool2d_f32(&g, &xf, &mut y);
            prop_assert_eq!(yi.iter().map(|&v| v as f32).collect::<Vec<_>>(), floor(&y, -128.0));
            let xf: Vec<f32> = xu.iter().map(|&v| v as f32).collect();
            max_pool2d_f32(&g, &xf, &mut y);
            prop_assert_eq!(yu.iter().map(|&v| v as f32).collect::<Vec<_>>(), floor(&y, 0.0));
        }

        #[test]
        fn global_matches_mean(bc in 0usize..4, spatial in 1usize..50, seed in any::<u64>()) {
            let x = fill(seed, bc * spatial);
            let mut y = vec![f32::NAN; bc];
            global_avg_pool_f32(bc, spatial, &x, &mut y);
            let want: Vec<f64> = x.chunks(spatial).map(|p| p.iter().map(|&v| v as f64).sum::<f64>() / spatial as f64).collect();
            assert_close(&y, &want, &(bc, spatial));
        }
    }
}
