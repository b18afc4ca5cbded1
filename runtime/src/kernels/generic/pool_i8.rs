//! Integer average pooling (NCHW), the int8 form of AveragePool and
//! GlobalAveragePool: each window's sum of `x − zx` accumulates in int32,
//! is shifted left by `pre_shift` bits and brought back to 8 bits by one
//! [`OutputStage`] whose requantization holds the division by the window's
//! element count as well as the change of scale and the shift:
//! `in_scale / (out_scale · count · 2^pre_shift)`.
//!
//! The shift was there for precision when the requantization rounded twice
//! (TFLite's double rounding, first to 2^-|shift| of an output step, which
//! for the modest multipliers of pooling moved ~10 % of outputs across a
//! rounding boundary). The single rounding of [`crate::quant::requant`]
//! rounds `sum · M · 2^shift / 2^31` once, and the pre-shift leaves the
//! result unchanged: the multiplier's Q31 mantissa `M` is the same with or
//! without it, and `shift` absorbs the 2^pre_shift. So the output is the
//! exact average `sum · in_scale / (out_scale · count)` (to the 2^-31
//! relative precision of `M`, from the scales in f64) rounded once, ties
//! towards +∞. ONNX Runtime's QLinearGlobalAveragePool (MLAS, x86-64)
//! computes `rint(f32(sum · s))` with `s = in_scale / (out_scale · count)`
//! in f32; the two can differ by one step only within about an f32 ulp of a
//! tie. For the DS-CNN student measured in [`crate::ops::qlinear`] (7×7 =
//! 49 elements) no sum from 0 to 255 · 49 does, under any of tinykd's four
//! calibrations.
//!
//! That needs every window to count the same number of elements
//! ([`uniform_count`] says whether it does: no padding, or padding counted
//! with `count_include_pad`, and no ceil-mode overhang). Padded taps hold the
//! input zero point, so they add nothing to the sum. The sum is exact for
//! windows of up to 2^31 / 255 ≈ 8.4 million elements and wraps beyond.

use super::pool::{count_taps, PoolGeometry};
use crate::quant::{OutputStage, QElem};

/// Output columns summed per step: the on-stack accumulator block.
const BLOCK: usize = 32;

/// Most bits [`pre_shift`] returns.
pub const MAX_PRE_SHIFT: u32 = 20;

/// The largest left shift (at most [`MAX_PRE_SHIFT`]) that keeps every
/// shifted window sum of `count` 8-bit differences inside int32:
/// `255 · count · 2^shift < 2^31`.
pub fn pre_shift(count: usize) -> u32 {
    let bound = 255u64.saturating_mul(count as u64);
    (0..=MAX_PRE_SHIFT)
        .rev()
        .find(|&l| bound.checked_shl(l).is_some_and(|b| b < 1 << 31))
        .unwrap_or(0)
}

/// The number of elements every window of `g` averages over, if it is the
/// same for all of them (and not 0); `None` when it varies, so that one
/// requantization cannot serve every output.
pub fn uniform_count(g: &PoolGeometry, count_include_pad: bool) -> Option<usize> {
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
    // Validity is separable: count = (valid rows) × (valid columns).
    let same = |n: usize, stride: usize, kernel: usize, dilation: usize, lo: usize, hi: usize| {
        let first = count_taps(0, kernel, dilation, lo, hi);
        (1..n)
            .all(|o| count_taps(o * stride, kernel, dilation, lo, hi) == first)
            .then_some(first)
    };
    let rows = same(g.out_h, g.stride_h, g.kernel_h, g.dilation_h, y_lo, y_hi)?;
    let cols = same(g.out_w, g.stride_w, g.kernel_w, g.dilation_w, x_lo, x_hi)?;
    rows.checked_mul(cols).filter(|&c| c > 0)
}

/// `y = out.finish(Σ (x − zx) · 2^pre_shift over the window's valid taps,
/// 0)` for every output of every plane; `out` holds one requantization
/// (`in_scale / (out_scale · count · 2^pre_shift)`) and no bias.
pub fn avg_pool2d_i8<X: QElem, Y: QElem>(
    g: &PoolGeometry,
    x: &[X],
    zx: X,
    pre_shift: u32,
    out: &OutputStage<'_, Y>,
    y: &mut [Y],
) {
    debug_assert!(g.stride_h > 0 && g.stride_w > 0 && g.dilation_h > 0 && g.dilation_w > 0);
    let plane_in = g.in_h * g.in_w;
    let plane_out = g.out_h * g.out_w;
    let planes = g.batch * g.channels;
    debug_assert!(x.len() >= planes * plane_in && y.len() >= planes * plane_out);
    if plane_out == 0 {
        return;
    }
    let zx = zx.to_i32();
    let mut acc = [0i32; BLOCK];
    for p in 0..planes {
        let xp = &x[p * plane_in..][..plane_in];
        let yp = &mut y[p * plane_out..][..plane_out];
        for (oy, y_row) in yp.chunks_exact_mut(g.out_w).enumerate() {
            for (blk, y_blk) in y_row.chunks_mut(BLOCK).enumerate() {
                let acc = &mut acc[..y_blk.len()];
                window_sums(g, xp, zx, oy, blk * BLOCK, acc);
                for (o, &v) in y_blk.iter_mut().zip(acc.iter()) {
                    *o = out.finish(v.wrapping_shl(pre_shift), 0);
                }
            }
        }
    }
}

/// `acc[j]` = Σ (x − zx) over the valid taps of output (oy, ox0 + j): for
/// each tap the valid columns are found once, then summed along the row.
fn window_sums<X: QElem>(
    g: &PoolGeometry,
    xp: &[X],
    zx: i32,
    oy: usize,
    ox0: usize,
    acc: &mut [i32],
) {
    acc.fill(0);
    let ox1 = ox0 + acc.len();
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
            let (lo_s, hi_s) = (lo.max(ox0), hi.min(ox1));
            if lo_s >= hi_s {
                continue;
            }
            let ix = lo_s * g.stride_w + off - g.pad_left;
            let taps = x_row[ix..].iter().step_by(g.stride_w);
            for (o, &v) in acc[lo_s - ox0..hi_s - ox0].iter_mut().zip(taps) {
                *o = o.wrapping_add(v.to_i32() - zx);
            }
        }
    }
}

/// `y[i] = out.finish(Σ (x − zx) · 2^pre_shift over the i-th run of
/// `spatial` elements, 0)` for each of `batch_channels` contiguous runs
/// (GlobalAveragePool).
pub fn global_avg_pool_i8<X: QElem, Y: QElem>(
    batch_channels: usize,
    spatial: usize,
    x: &[X],
    zx: X,
    pre_shift: u32,
    out: &OutputStage<'_, Y>,
    y: &mut [Y],
) {
    debug_assert!(x.len() >= batch_channels * spatial && y.len() >= batch_channels);
    let zx = zx.to_i32();
    for (i, o) in y[..batch_channels].iter_mut().enumerate() {
        let xp = &x[i * spatial..][..spatial];
        let sum = xp
            .iter()
            .fold(0i32, |s, &v| s.wrapping_add(v.to_i32() - zx));
        *o = out.finish(sum.wrapping_shl(pre_shift), 0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::Requant;
    use proptest::prelude::*;

    fn fill_q<T: QElem>(seed: u64, n: usize) -> Vec<T> {
        let mut s = seed | 1;
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                T::from_i32_saturating(T::MIN + (s >> 56) as i32)
            })
            .collect()
    }

    /// Per output, walks the whole window in signed coordinates: the sum of
    /// `x − zx` over the input positions and the count of the positions
    /// that count (padded ones too with `include_pad`).
    fn naive_sums<X: QElem>(
        g: &PoolGeometry,
        include_pad: bool,
        x: &[X],
        zx: X,
    ) -> Vec<(i64, usize)> {
        let mut out = Vec::new();
        for p in 0..g.batch * g.channels {
            for oy in 0..g.out_h {
                for ox in 0..g.out_w {
                    let (mut s, mut cnt) = (0i64, 0usize);
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
                                let v = x[(p * g.in_h + iy as usize) * g.in_w + ix as usize];
                                s += (v.to_i32() - zx.to_i32()) as i64;
                            }
                            if if include_pad { in_padded } else { inside } {
                                cnt += 1;
                            }
                        }
                    }
                    out.push((s, cnt));
                }
            }
        }
        out
    }

    #[test]
    fn hand_computed() {
        // One 2×3 plane, 2×2 windows, stride 1 → 1×2 outputs; zx = −1:
        // sums of x + 1: [1+2+4+5, 2+3+5+6] + 4 = [16, 20]; count 4, scale
        // 0.5 / 4 → 2, 2.5 → 3 (ties away); zero point 10 → [12, 13].
        let g = PoolGeometry {
            batch: 1,
            channels: 1,
            in_h: 2,
            in_w: 3,
            out_h: 1,
            out_w: 2,
            kernel_h: 2,
            kernel_w: 2,
            stride_h: 1,
            stride_w: 1,
            dilation_h: 1,
            dilation_w: 1,
            ..PoolGeometry::default()
        };
        assert_eq!(uniform_count(&g, false), Some(4));
        let x = [1i8, 2, 3, 4, 5, 6];
        let r = [Requant::from_scale(0.5 / 4.0).unwrap()];
        let out = OutputStage::new(&r, 10i8);
        let mut y = [0i8; 2];
        avg_pool2d_i8(&g, &x, -1, 0, &out, &mut y);
        assert_eq!(y, [12, 13]);
        // The same with the sums shifted and the scale shifted back.
        let r = [Requant::from_scale(0.5 / 4.0 / 256.0).unwrap()];
        let out = OutputStage::new(&r, 10i8);
        avg_pool2d_i8(&g, &x, -1, 8, &out, &mut y);
        assert_eq!(y, [12, 13]);
        // Global: both rows of 3, zx 0, scale 1/3: 6/3 = 2, 15/3 = 5.
        let r = [Requant::from_scale(1.0 / 3.0).unwrap()];
        let out = OutputStage::new(&r, 0u8);
        let mut y = [0u8; 2];
        global_avg_pool_i8(2, 3, &[1u8, 2, 3, 4, 5, 6], 0, 0, &out, &mut y);
        assert_eq!(y, [2, 5]);
        // No elements: nothing to do.
        global_avg_pool_i8(0, 3, &[0u8; 0], 0, 0, &out, &mut y[..0]);
    }

    #[test]
    fn pre_shift_keeps_sums_in_range() {
        assert_eq!(pre_shift(1), MAX_PRE_SHIFT);
        // 255 · 196 = 49 980: · 2^15 ≈ 1.64e9 < 2^31 ≤ · 2^16.
        assert_eq!(pre_shift(196), 15);
        assert_eq!(pre_shift(1 << 23), 0);
        assert_eq!(pre_shift(usize::MAX), 0);
        for count in [1usize, 9, 196, 1000, 65_536, 8_000_000] {
            let l = pre_shift(count);
            assert!((255 * count as u64) << l < 1 << 31, "{count}");
        }
    }

    #[test]
    fn count_uniformity() {
        let mut g = PoolGeometry {
            batch: 1,
            channels: 1,
            in_h: 4,
            in_w: 4,
            out_h: 4,
            out_w: 4,
            kernel_h: 3,
            kernel_w: 3,
            stride_h: 1,
            stride_w: 1,
            dilation_h: 1,
            dilation_w: 1,
            pad_top: 1,
            pad_left: 1,
            pad_bottom: 1,
            pad_right: 1,
        };
        // Padding counted: every window is 3×3; excluded: corners count 4.
        assert_eq!(uniform_count(&g, true), Some(9));
        assert_eq!(uniform_count(&g, false), None);
        // Ceil-mode overhang past the padding shrinks the last window.
        g = PoolGeometry {
            in_h: 5,
            in_w: 5,
            out_h: 3,
            out_w: 3,
            kernel_h: 2,
            kernel_w: 2,
            stride_h: 2,
            stride_w: 2,
            pad_top: 0,
            pad_left: 0,
            pad_bottom: 0,
            pad_right: 0,
            ..g
        };
        assert_eq!(uniform_count(&g, true), None);
        g.out_h = 2;
        g.out_w = 2;
        assert_eq!(uniform_count(&g, false), Some(4));
    }

    /// Checks both kernels on one random problem against [`naive_sums`]
    /// followed by the same output stage.
    fn check<X: QElem, Y: QElem>(g: &PoolGeometry, include_pad: bool, seed: u64) {
        let x = fill_q::<X>(seed, g.batch * g.channels * g.in_h * g.in_w);
        let zx = fill_q::<X>(seed ^ 1, 1)[0];
        let zy = fill_q::<Y>(seed ^ 2, 1)[0];
        let want = naive_sums(g, include_pad, &x, zx);
        let count = uniform_count(g, include_pad);
        if let Some(c) = count {
            assert!(want.iter().all(|&(_, n)| n == c), "{g:?}");
        } else {
            let first = want.first().map(|w| w.1);
            assert!(
                want.is_empty() || want.iter().any(|w| Some(w.1) != first) || first == Some(0),
                "{g:?}"
            );
        }
        // The real multiplier 0.7 / count, the sums pre-shifted as the op
        // does it: bit for bit against the same arithmetic on the naive
        // sums, and within one step of the exactly rounded average.
        let stage = |n: usize| {
            let l = pre_shift(n);
            let real = 0.7 / n as f64;
            (
                l,
                real,
                [Requant::from_scale(real / (1u64 << l) as f64).unwrap()],
            )
        };
        let expect = |sum: i64, l: u32, real: f64, r: Requant, at: &dyn core::fmt::Debug| {
            let v = (r.apply((sum << l) as i32) + zy.to_i32()).clamp(Y::MIN, Y::MAX);
            let exact = (sum as f64 * real + zy.to_i32() as f64).round();
            let exact = exact.clamp(Y::MIN as f64, Y::MAX as f64);
            assert!((v as f64 - exact).abs() <= 1.0, "{g:?} {at:?}");
            v
        };
        let (l, real, r) = stage(count.unwrap_or(g.kernel_h * g.kernel_w));
        let out = OutputStage::new(&r, zy);
        let mut y = vec![Y::default(); want.len()];
        avg_pool2d_i8(g, &x, zx, l, &out, &mut y);
        for (i, (&got, &(sum, _))) in y.iter().zip(&want).enumerate() {
            assert_eq!(got.to_i32(), expect(sum, l, real, r[0], &i), "{g:?} at {i}");
        }
        // Global pooling is the window covering each whole plane.
        let spatial = g.in_h * g.in_w;
        let planes = g.batch * g.channels;
        let (l, real, r) = stage(spatial);
        let out = OutputStage::new(&r, zy);
        let mut y = vec![Y::default(); planes];
        global_avg_pool_i8(planes, spatial, &x, zx, l, &out, &mut y);
        for (p, &got) in y.iter().enumerate() {
            let sum: i64 = x[p * spatial..][..spatial]
                .iter()
                .map(|v| (v.to_i32() - zx.to_i32()) as i64)
                .sum();
            assert_eq!(
                got.to_i32(),
                expect(sum, l, real, r[0], &p),
                "global plane {p}"
            );
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn matches_naive(
            (in_h, in_w) in (1usize..9, 1usize..40),
            (kh, kw) in (1usize..4, 1usize..4),
            (sh, sw) in (1usize..3, 1usize..3),
            (dh, dw) in (1usize..3, 1usize..3),
            pads in proptest::array::uniform4(0usize..2),
            include_pad in any::<bool>(),
            channels in 1usize..3,
            types in 0usize..4,
            seed in any::<u64>(),
        ) {
            let span = |k: usize, d: usize| d * (k - 1) + 1;
            let (ph, pw) = (in_h + pads[0] + pads[2], in_w + pads[1] + pads[3]);
            prop_assume!(ph >= span(kh, dh) && pw >= span(kw, dw));
            let g = PoolGeometry {
                batch: 1,
                channels,
                in_h,
                in_w,
                out_h: (ph - span(kh, dh)) / sh + 1,
                out_w: (pw - span(kw, dw)) / sw + 1,
                kernel_h: kh,
                kernel_w: kw,
                stride_h: sh,
                stride_w: sw,
                dilation_h: dh,
                dilation_w: dw,
                pad_top: pads[0],
                pad_left: pads[1],
                pad_bottom: pads[2],
                pad_right: pads[3],
            };
            match types {
                0 => check::<i8, i8>(&g, include_pad, seed),
                1 => check::<u8, i8>(&g, include_pad, seed),
                2 => check::<i8, u8>(&g, include_pad, seed),
                _ => check::<u8, u8>(&g, include_pad, seed),
            }
        }
    }
}
