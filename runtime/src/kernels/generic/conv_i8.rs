//! Direct integer 2-D convolution (NCHW) with zero points, groups (depthwise
//! included), padding, stride and dilation: ONNX `ConvInteger` (raw int32
//! accumulators) and `QLinearConv` (requantized through an
//! [`OutputStage`]). No scratch memory beyond a small stack block.
//!
//! Padding holds the input zero point, so a padded tap contributes
//! `(zx − zx)·w = 0` and is skipped. Products `(x − zx)·(w − zw)` sum in
//! int32, exact for `cin/groups · kernel_h · kernel_w ≤`
//! [`MAX_EXACT_DEPTH`](super::gemm_i8::MAX_EXACT_DEPTH) (see
//! [`super::gemm_i8`] for the bound).

use super::conv::ConvGeometry;
use crate::quant::{OutputStage, QElem};

/// Output columns requantized per step: the on-stack accumulator block.
const BLOCK: usize = 32;

/// `y[n, oc, oy, ox] = Σ (x − zx)·(w − zw[oc])` over the receptive field.
/// x: `[batch, in_channels, in_h, in_w]`; w: `[out_channels,
/// in_channels/groups, kernel_h, kernel_w]`; `zw`: one zero point, or one per
/// output channel; y: `[batch, out_channels, out_h, out_w]`.
pub fn conv2d_i8_acc<X: QElem, W: QElem>(
    g: &ConvGeometry,
    x: &[X],
    zx: X,
    w: &[W],
    zw: &[W],
    y: &mut [i32],
) {
    let plane_out = g.out_h * g.out_w;
    debug_assert!(y.len() >= g.batch * g.out_channels * plane_out);
    for_each_plane(g, x, w, zw, |n, oc, conv| {
        let yp = &mut y[(n * g.out_channels + oc) * plane_out..][..plane_out];
        for (oy, y_row) in yp.chunks_exact_mut(g.out_w).enumerate() {
            conv.row_segment(oy, 0, zx.to_i32(), y_row);
        }
    });
}

/// [`conv2d_i8_acc`] followed by `out` per output channel: bias,
/// requantization, output zero point, clamp. `out` must fit `out_channels`.
pub fn conv2d_i8_requant<X: QElem, W: QElem, Y: QElem>(
    g: &ConvGeometry,
    x: &[X],
    zx: X,
    w: &[W],
    zw: &[W],
    out: &OutputStage<'_, Y>,
    y: &mut [Y],
) {
    let plane_out = g.out_h * g.out_w;
    debug_assert!(y.len() >= g.batch * g.out_channels * plane_out);
    debug_assert!(out.fits(g.out_channels));
    let mut acc = [0i32; BLOCK];
    for_each_plane(g, x, w, zw, |n, oc, conv| {
        let yp = &mut y[(n * g.out_channels + oc) * plane_out..][..plane_out];
        for (oy, y_row) in yp.chunks_exact_mut(g.out_w).enumerate() {
            for (blk, y_blk) in y_row.chunks_mut(BLOCK).enumerate() {
                let acc = &mut acc[..y_blk.len()];
                conv.row_segment(oy, blk * BLOCK, zx.to_i32(), acc);
                for (o, &v) in y_blk.iter_mut().zip(acc.iter()) {
                    *o = out.finish(v, oc);
                }
            }
        }
    });
}

/// Checks the geometry, then calls `f(n, oc, plane)` for every image and
/// output channel with a non-empty output plane.
fn for_each_plane<X: QElem, W: QElem>(
    g: &ConvGeometry,
    x: &[X],
    w: &[W],
    zw: &[W],
    mut f: impl FnMut(usize, usize, &Plane<'_, X, W>),
) {
    debug_assert!(
        g.groups > 0
            && g.in_channels.is_multiple_of(g.groups)
            && g.out_channels.is_multiple_of(g.groups)
    );
    debug_assert!(g.stride_h > 0 && g.stride_w > 0 && g.dilation_h > 0 && g.dilation_w > 0);
    debug_assert!(zw.len() == 1 || zw.len() == g.out_channels);
    let plane_in = g.in_h * g.in_w;
    let cin_g = g.in_channels / g.groups;
    let cout_g = g.out_channels / g.groups;
    let kernel_len = cin_g * g.kernel_h * g.kernel_w;
    debug_assert!(x.len() >= g.batch * g.in_channels * plane_in);
    debug_assert!(w.len() >= g.out_channels * kernel_len);
    if g.out_h * g.out_w == 0 {
        return;
    }
    let zw_step = (zw.len() > 1) as usize;
    for n in 0..g.batch {
        for oc in 0..g.out_channels {
            let c0 = (oc / cout_g) * cin_g;
            let plane = Plane {
                g,
                xg: &x[(n * g.in_channels + c0) * plane_in..][..cin_g * plane_in],
                wo: &w[oc * kernel_len..][..kernel_len],
                zw: zw[oc * zw_step].to_i32(),
            };
            f(n, oc, &plane);
        }
    }
}

/// One output channel of one image: its input group and its filter.
struct Plane<'a, X, W> {
    g: &'a ConvGeometry,
    /// The group's input channels, `cin_g` planes.
    xg: &'a [X],
    /// The filter, `[cin_g, kernel_h, kernel_w]`.
    wo: &'a [W],
    /// The filter's zero point.
    zw: i32,
}

impl<X: QElem, W: QElem> Plane<'_, X, W> {
    /// `acc[j]` = accumulator of output (oy, ox0 + j), for every j in acc.
    /// For each (tap, input channel) pair the valid columns are found once
    /// and an axpy runs over the contiguous (or strided) input row.
    fn row_segment(&self, oy: usize, ox0: usize, zx: i32, acc: &mut [i32]) {
        let g = self.g;
        acc.fill(0);
        let taps = g.kernel_h * g.kernel_w;
        let plane_in = g.in_h * g.in_w;
        let ox1 = ox0 + acc.len();
        for ky in 0..g.kernel_h {
            let t = oy * g.stride_h + ky * g.dilation_h;
            if t < g.pad_top || t - g.pad_top >= g.in_h {
                continue;
            }
            let iy = t - g.pad_top;
            for kx in 0..g.kernel_w {
                let Some([lo, hi, ix0]) = g.cols(kx) else {
                    continue;
                };
                let (lo_s, hi_s) = (lo.max(ox0), hi.min(ox1));
                if lo_s >= hi_s {
                    continue;
                }
                let ix = ix0 + (lo_s - lo) * g.stride_w;
                let y_seg = &mut acc[lo_s - ox0..hi_s - ox0];
                // Weights of one tap sit `taps` apart, one per input channel.
                let w_tap = self.wo[ky * g.kernel_w + kx..].iter().step_by(taps);
                for (&wv, xp) in w_tap.zip(self.xg.chunks_exact(plane_in)) {
                    let x_row = &xp[iy * g.in_w..][..g.in_w];
                    axpy(y_seg, wv.to_i32() - self.zw, &x_row[ix..], g.stride_w, zx);
                }
            }
        }
    }
}

/// `y[j] += alpha * (x[j * step] − zx)` for every j in y, wrapping.
#[inline(always)]
fn axpy<X: QElem>(y: &mut [i32], alpha: i32, x: &[X], step: usize, zx: i32) {
    if let (1, Some(x8)) = (step, X::as_i8(x)) {
        // alpha·(x − zx) = alpha·x − alpha·zx, in wrapping int32 arithmetic.
        crate::kernels::axpy_i8(y, alpha, x8, alpha.wrapping_mul(zx).wrapping_neg());
    } else if step == 1 {
        for (o, &v) in y.iter_mut().zip(x) {
            *o = o.wrapping_add(alpha * (v.to_i32() - zx));
        }
    } else {
        for (o, &v) in y.iter_mut().zip(x.iter().step_by(step)) {
            *o = o.wrapping_add(alpha * (v.to_i32() - zx));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::Requant;
    use proptest::prelude::*;

    /// Deterministic 8-bit values from a seed, spanning the whole type.
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

    /// Seven nested loops in i64, padding read as the input zero point.
    fn naive<X: QElem, W: QElem>(g: &ConvGeometry, x: &[X], zx: X, w: &[W], zw: &[W]) -> Vec<i64> {
        let (cin_g, cout_g) = (g.in_channels / g.groups, g.out_channels / g.groups);
        let (kh, kw) = (g.kernel_h, g.kernel_w);
        let at = |o: usize, s: usize, k: usize, d: usize, pad: usize, len: usize| {
            (o * s + k * d).checked_sub(pad).filter(|&i| i < len)
        };
        let zx = zx.to_i32() as i64;
        let mut y = Vec::new();
        for n in 0..g.batch {
            for oc in 0..g.out_channels {
                let z = zw[if zw.len() == 1 { 0 } else { oc }].to_i32() as i64;
                for oy in 0..g.out_h {
                    for ox in 0..g.out_w {
                        let mut acc = 0i64;
                        for icg in 0..cin_g {
                            let ic = (oc / cout_g) * cin_g + icg;
                            for ky in 0..kh {
                                for kx in 0..kw {
                                    let iy =
                                        at(oy, g.stride_h, ky, g.dilation_h, g.pad_top, g.in_h);
                                    let ix =
                                        at(ox, g.stride_w, kx, g.dilation_w, g.pad_left, g.in_w);
                                    let xv = match (iy, ix) {
                                        (Some(iy), Some(ix)) => x
                                            [((n * g.in_channels + ic) * g.in_h + iy) * g.in_w + ix]
                                            .to_i32()
                                            as i64,
                                        _ => zx, // padding
                                    };
                                    let wv = w[((oc * cin_g + icg) * kh + ky) * kw + kx].to_i32();
                                    acc += (xv - zx) * (wv as i64 - z);
                                }
                            }
                        }
                        y.push(acc);
                    }
                }
            }
        }
        y
    }

    fn check<X: QElem, W: QElem, Y: QElem>(
        g: &ConvGeometry,
        zw_per_ch: bool,
        with_bias: bool,
        seed: u64,
    ) {
        let cin_g = g.in_channels / g.groups;
        let x = fill_q::<X>(seed, g.batch * g.in_channels * g.in_h * g.in_w);
        let w = fill_q::<W>(
            seed ^ 0xabcdef,
            g.out_channels * cin_g * g.kernel_h * g.kernel_w,
        );
        let zx = fill_q::<X>(seed ^ 1, 1)[0];
        let zw = fill_q::<W>(seed ^ 2, if zw_per_ch { g.out_channels } else { 1 });
        let want = naive(g, &x, zx, &w, &zw);
        let plane_out = g.out_h * g.out_w;

        let mut y = vec![i32::MIN; g.batch * g.out_channels * plane_out];
        conv2d_i8_acc(g, &x, zx, &w, &zw, &mut y);
        let got: Vec<i64> = y.iter().map(|&v| v as i64).collect();
        assert_eq!(got, want, "{g:?} zw {zw:?} zx {zx:?}");

        let bias: Vec<i32> = fill_q::<i8>(seed ^ 3, g.out_channels)
            .iter()
            .map(|&v| v as i32 * 64)
            .collect();
        let requant: Vec<Requant> = fill_q::<u8>(seed ^ 4, g.out_channels)
            .iter()
            .map(|&v| Requant::from_scale((2.0f64).powf(-3.0 - v as f64 / 32.0)).unwrap())
            .collect();
        let requant = if seed & 16 == 0 {
            &requant[..]
        } else {
            &requant[..1]
        };
        let zy = fill_q::<Y>(seed ^ 5, 3);
        let (act_min, act_max) = if seed & 8 == 0 {
            (
                Y::from_i32_saturating(Y::MIN),
                Y::from_i32_saturating(Y::MAX),
            )
        } else if zy[1].to_i32() <= zy[2].to_i32() {
            (zy[1], zy[2])
        } else {
            (zy[2], zy[1])
        };
        let out = OutputStage {
            bias: with_bias.then_some(&bias[..]),
            requant,
            zero_point: zy[0],
            act_min,
            act_max,
        };
        let mut y = vec![Y::default(); g.batch * g.out_channels * plane_out];
        conv2d_i8_requant(g, &x, zx, &w, &zw, &out, &mut y);
        for (idx, (&got, &acc)) in y.iter().zip(&want).enumerate() {
            let oc = idx / plane_out % g.out_channels;
            let acc = acc as i32 + if with_bias { bias[oc] } else { 0 };
            let r = requant[if requant.len() == 1 { 0 } else { oc }];
            let v = (r.apply(acc) + zy[0].to_i32()).clamp(act_min.to_i32(), act_max.to_i32());
            assert_eq!(got.to_i32(), v, "{g:?} at {idx}");
        }
    }

    /// Single-image, single-group geometry with unit stride and dilation and no padding.
    fn simple(
        c_in: usize,
        h: usize,
        w: usize,
        c_out: usize,
        k: [usize; 2],
        out: [usize; 2],
    ) -> ConvGeometry {
        ConvGeometry {
            batch: 1,
            in_channels: c_in,
            in_h: h,
            in_w: w,
            out_channels: c_out,
            out_h: out[0],
            out_w: out[1],
            kernel_h: k[0],
            kernel_w: k[1],
            stride_h: 1,
            stride_w: 1,
            dilation_h: 1,
            dilation_w: 1,
            groups: 1,
            ..Default::default()
        }
    }

    #[test]
    fn hand_computed_3x3_padded_with_zero_points() {
        // Input 1..9 with zx = 5 is −4..4; an all-ones 3×3 kernel with zw = −1
        // (stored 0) over pad 1 sums each neighbourhood of the centred input,
        // the padding contributing nothing.
        let g = ConvGeometry {
            pad_top: 1,
            pad_left: 1,
            ..simple(1, 3, 3, 1, [3, 3], [3, 3])
        };
        let x: Vec<u8> = (1..=9).collect();
        let w = [0i8; 9];
        let mut y = [0i32; 9];
        conv2d_i8_acc(&g, &x, 5u8, &w, &[-1], &mut y);
        assert_eq!(y, [-8, -9, -4, -3, 0, 3, 4, 9, 8]);
    }

    #[test]
    fn hand_computed_depthwise_requantized() {
        // Two channels (depthwise), 1×2 kernel, stride 2, per-channel weight
        // zero points [0, 1] and scales [0.5, 0.25], bias [1, −2], zx = −1,
        // output zero point 10, ReLU (clamp at the zero point).
        let g = ConvGeometry {
            stride_w: 2,
            groups: 2,
            ..simple(2, 1, 4, 2, [1, 2], [1, 2])
        };
        let x = [0i8, 1, 2, 3, 4, 5, 6, 7]; // − zx → [1, 2, 3, 4], [5, 6, 7, 8]
        let w = [1i8, -1, 3, -3]; // − zw → [1, −1], [2, −4]
                                  // ch 0: 1−2 = −1, 3−4 = −1; ch 1: 10−24 = −14, 14−32 = −18.
        let mut acc = [0i32; 4];
        conv2d_i8_acc(&g, &x, -1, &w, &[0, 1], &mut acc);
        assert_eq!(acc, [-1, -1, -14, -18]);
        // + bias: [0, 0, −16, −20]; ·[0.5, 0.25]: [0, 0, −4, −5];
        // + 10: [10, 10, 6, 5]; ReLU at 10: [10, 10, 10, 10]. Without it:
        let r = [
            Requant::from_scale(0.5).unwrap(),
            Requant::from_scale(0.25).unwrap(),
        ];
        let bias = [1, -2];
        let mut out = OutputStage {
            bias: Some(&bias[..]),
            ..OutputStage::new(&r, 10i8)
        };
        let mut y = [0i8; 4];
        conv2d_i8_requant(&g, &x, -1, &w, &[0, 1], &out, &mut y);
        assert_eq!(y, [10, 10, 6, 5]);
        out.act_min = 10;
        conv2d_i8_requant(&g, &x, -1, &w, &[0, 1], &out, &mut y);
        assert_eq!(y, [10, 10, 10, 10]);
        // Without bias the ties round towards +∞: −1·0.5 = −0.5 → 0,
        // −14·0.25 = −3.5 → −3 and −18·0.25 = −4.5 → −4.
        out.bias = None;
        out.act_min = -128;
        conv2d_i8_requant(&g, &x, -1, &w, &[0, 1], &out, &mut y);
        assert_eq!(y, [10, 10, 7, 6]);
    }

    #[test]
    fn near_ties_round_once_unlike_onnx_runtime() {
        // Scales and accumulators from a DS-CNN student's first Conv where
        // ONNX Runtime (MLAS: rint(f32(f32(acc) · m))) differs by one step:
        // the f32 product collapses 88.5000021 and 19.4999993 onto the
        // ties 88.5 and 19.5, which then go to the even neighbour. The
        // runtime rounds acc · m once, exactly: 89 and 19.
        let (x_scale, y_scale) = (0.011_106_005_f32, 0.037_224_263_f32);
        let w_scales = [0.006_960_148_f32, 0.006_203_95_f32];
        // The multiplier as QLinearConv derives it, in f32.
        let m = w_scales.map(|w| x_scale * w / y_scale);
        let r = m.map(|m| Requant::from_scale(m).unwrap());
        // 1×1 conv, one input channel: x − zx = 128, w = [127, −3], so
        // acc = 16256 + 26362 = 42618 and −384 + 10919 = 10535.
        let g = simple(1, 1, 1, 2, [1, 1], [1, 1]);
        let bias = [26362, 10919];
        let stage = OutputStage {
            bias: Some(&bias[..]),
            ..OutputStage::new(&r, -128i8)
        };
        let mut y = [0i8; 2];
        conv2d_i8_requant(&g, &[100i8], -28, &[127i8, -3], &[0], &stage, &mut y);
        assert_eq!(y.map(|v| i32::from(v) + 128), [89, 19]);
        // What MLAS computes instead, and why.
        let acc = [42618f32, 10535.0];
        let product = [acc[0] * m[0], acc[1] * m[1]];
        assert_eq!(product, [88.5, 19.5]);
        assert_eq!(product.map(f32::round_ties_even), [88.0, 20.0]);
        // The exact products lie on the runtime's side of the ties.
        for (c, want) in [(0usize, 89i64), (1, 19)] {
            let exact = f64::from(acc[c]) * f64::from(m[c]);
            assert!((exact - want as f64).abs() < 0.5, "{exact}");
        }
    }

    #[test]
    fn wide_rows_cross_blocks() {
        // out_w = 2·BLOCK + 5 with padding on both sides and a dilated kernel.
        let wdt = 2 * BLOCK + 5;
        let g = ConvGeometry {
            pad_left: 2,
            dilation_w: 2,
            ..simple(2, 2, wdt, 3, [2, 3], [1, wdt])
        };
        check::<u8, i8, u8>(&g, true, true, 0x5eed);
        check::<i8, i8, i8>(&g, false, true, 0x5eed ^ 24);
        // Strided, so blocks after the first start mid-row in the input;
        // depthwise and grouped.
        for (groups, cin_g, sw) in [(3, 1, 2), (2, 2, 3), (1, 3, 2)] {
            let in_w = 150;
            let out_w = out_len(in_w, 4, 3, sw, 2).unwrap();
            assert!(out_w > 2 * BLOCK / sw);
            let g = ConvGeometry {
                pad_left: 2,
                pad_top: 1,
                stride_w: sw,
                dilation_w: 2,
                groups,
                ..simple(groups * cin_g, 3, in_w, groups * 2, [3, 3], [3, out_w])
            };
            check::<u8, u8, u8>(&g, true, true, 0xfeed ^ sw as u64);
            check::<i8, i8, i8>(&g, false, false, 0xfeed ^ 24);
        }
    }

    /// Output extent for the given total padding, or None if the kernel does not fit.
    fn out_len(in_len: usize, pads: usize, k: usize, s: usize, d: usize) -> Option<usize> {
        let span = d * (k - 1) + 1;
        (in_len + pads >= span).then(|| (in_len + pads - span) / s + 1)
    }

    prop_compose! {
        fn geometry(force_cin_g: Option<usize>)(
            batch in 1usize..=2, groups in 1usize..=3, cin_g in 1usize..=3, cout_g in 1usize..=3,
            in_h in 1usize..=9, in_w in 1usize..=9, kh in 1usize..=3, kw in 1usize..=3,
            sh in 1usize..=3, sw in 1usize..=3, dh in 1usize..=2, dw in 1usize..=2,
            pads in [0usize..=3, 0usize..=3, 0usize..=3, 0usize..=3],
        ) -> Option<ConvGeometry> {
            let cin_g = force_cin_g.unwrap_or(cin_g);
            let out_h = out_len(in_h, pads[0] + pads[2], kh, sh, dh)?;
            let out_w = out_len(in_w, pads[1] + pads[3], kw, sw, dw)?;
            Some(ConvGeometry {
                batch, in_channels: groups * cin_g, in_h, in_w, out_channels: groups * cout_g, out_h, out_w,
                kernel_h: kh, kernel_w: kw, stride_h: sh, stride_w: sw, dilation_h: dh, dilation_w: dw,
                pad_top: pads[0], pad_left: pads[1], groups,
            })
        }
    }

    fn check_types(types: usize, g: &ConvGeometry, zw_per_ch: bool, bias: bool, seed: u64) {
        match types {
            0 => check::<i8, i8, i8>(g, zw_per_ch, bias, seed),
            1 => check::<u8, i8, u8>(g, zw_per_ch, bias, seed),
            2 => check::<u8, u8, i8>(g, zw_per_ch, bias, seed),
            _ => check::<i8, u8, u8>(g, zw_per_ch, bias, seed),
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(1024))]

        #[test]
        fn general_matches_naive(g in geometry(None), zw_per_ch in any::<bool>(), bias in any::<bool>(), types in 0usize..4, seed in any::<u64>()) {
            prop_assume!(g.is_some());
            check_types(types, &g.unwrap(), zw_per_ch, bias, seed);
        }

        #[test]
        fn depthwise_matches_naive(g in geometry(Some(1)), zw_per_ch in any::<bool>(), bias in any::<bool>(), types in 0usize..4, seed in any::<u64>()) {
            prop_assume!(g.is_some());
            check_types(types, &g.unwrap(), zw_per_ch, bias, seed);
        }
    }
}
