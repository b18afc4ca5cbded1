//! Direct 2-D convolution (NCHW) with groups, padding, stride, dilation and a
//! fused bias + activation, needing no scratch memory.

use super::activation::Activation;

/// Geometry of a 2-D convolution (1-D convs use h = kh = 1). Pads may be asymmetric; output size is computed by the caller.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct ConvGeometry {
    /// Number of images N.
    pub batch: usize,
    /// Input channels C (all groups together).
    pub in_channels: usize,
    /// Input height.
    pub in_h: usize,
    /// Input width.
    pub in_w: usize,
    /// Output channels M (all groups together).
    pub out_channels: usize,
    /// Output height.
    pub out_h: usize,
    /// Output width.
    pub out_w: usize,
    /// Kernel height.
    pub kernel_h: usize,
    /// Kernel width.
    pub kernel_w: usize,
    /// Vertical stride (≥ 1).
    pub stride_h: usize,
    /// Horizontal stride (≥ 1).
    pub stride_w: usize,
    /// Vertical dilation (≥ 1).
    pub dilation_h: usize,
    /// Horizontal dilation (≥ 1).
    pub dilation_w: usize,
    /// Zero rows added above the input.
    pub pad_top: usize,
    /// Zero columns added left of the input.
    pub pad_left: usize,
    /// Number of groups; divides both channel counts.
    pub groups: usize,
}

/// y = act(conv(x, w) + bias). x: `[batch, in_channels, in_h, in_w]`; w: `[out_channels, in_channels/groups, kernel_h, kernel_w]`; bias: `[out_channels]`; y: `[batch, out_channels, out_h, out_w]`.
pub fn conv2d_f32(
    g: &ConvGeometry,
    x: &[f32],
    w: &[f32],
    bias: Option<&[f32]>,
    act: Activation,
    y: &mut [f32],
) {
    debug_assert!(
        g.groups > 0
            && g.in_channels.is_multiple_of(g.groups)
            && g.out_channels.is_multiple_of(g.groups)
    );
    debug_assert!(g.stride_h > 0 && g.stride_w > 0 && g.dilation_h > 0 && g.dilation_w > 0);
    let plane_in = g.in_h * g.in_w;
    let plane_out = g.out_h * g.out_w;
    let cin_g = g.in_channels / g.groups;
    let cout_g = g.out_channels / g.groups;
    let kernel_len = cin_g * g.kernel_h * g.kernel_w;
    debug_assert!(x.len() >= g.batch * g.in_channels * plane_in);
    debug_assert!(w.len() >= g.out_channels * kernel_len);
    debug_assert!(y.len() >= g.batch * g.out_channels * plane_out);
    debug_assert!(bias.is_none_or(|b| b.len() >= g.out_channels));
    if plane_out == 0 {
        return;
    }
    // A 1×1, stride-1, unpadded conv whose output matches its input is a
    // matrix product over whole planes; skipping the row machinery lets the
    // inner loop run over H*W contiguous elements.
    let pointwise = (g.kernel_h, g.kernel_w, g.stride_h, g.stride_w) == (1, 1, 1, 1)
        && (g.pad_top, g.pad_left) == (0, 0)
        && (g.out_h, g.out_w) == (g.in_h, g.in_w);

    for n in 0..g.batch {
        for oc in 0..g.out_channels {
            let c0 = (oc / cout_g) * cin_g;
            let xg = &x[(n * g.in_channels + c0) * plane_in..][..cin_g * plane_in];
            let wo = &w[oc * kernel_len..][..kernel_len];
            let yp = &mut y[(n * g.out_channels + oc) * plane_out..][..plane_out];
            let b = bias.map_or(0.0, |b| b[oc]);
            if pointwise {
                pointwise_plane(xg, wo, b, plane_in, yp);
                act.apply_slice(yp);
            } else if cin_g == 0 {
                // No input channels: nothing to accumulate, only the bias.
                yp.fill(b);
                act.apply_slice(yp);
            } else if cin_g == 1 {
                depthwise_plane(g, xg, wo, b, yp);
                act.apply_slice(yp);
            } else {
                general_plane(g, xg, wo, b, act, yp);
            }
        }
    }
}

fn pointwise_plane(xg: &[f32], wo: &[f32], b: f32, plane: usize, yp: &mut [f32]) {
    yp.fill(b);
    for (&wv, xp) in wo.iter().zip(xg.chunks_exact(plane)) {
        axpy(yp, wv, xp, 1);
    }
}

/// One input channel per output channel (depthwise, any channel multiplier).
/// With a single axpy per tap, recomputing the valid range per row would cost
/// as much as the MACs, so taps go outermost and each range is found once per
/// plane.
fn depthwise_plane(g: &ConvGeometry, xp: &[f32], wo: &[f32], b: f32, yp: &mut [f32]) {
    yp.fill(b);
    for ky in 0..g.kernel_h {
        let Some([oy_lo, oy_hi, iy0]) = g.rows(ky) else {
            continue;
        };
        for kx in 0..g.kernel_w {
            let Some([lo, hi, ix0]) = g.cols(kx) else {
                continue;
            };
            let wv = wo[ky * g.kernel_w + kx];
            for (r, oy) in (oy_lo..oy_hi).enumerate() {
                let x_row = &xp[(iy0 + r * g.stride_h) * g.in_w..][..g.in_w];
                let y_row = &mut yp[oy * g.out_w..][lo..hi];
                axpy(y_row, wv, &x_row[ix0..], g.stride_w);
            }
        }
    }
}

/// Row by row so the output row stays in cache while every (tap, input
/// channel) pair adds into it; valid ranges are found once per tap and
/// shared by all input channels of the group.
fn general_plane(g: &ConvGeometry, xg: &[f32], wo: &[f32], b: f32, a: Activation, yp: &mut [f32]) {
    let taps = g.kernel_h * g.kernel_w;
    let plane_in = g.in_h * g.in_w;
    for (oy, y_row) in yp.chunks_exact_mut(g.out_w).enumerate() {
        y_row.fill(b);
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
                // Weights of one tap sit `taps` apart, one per input channel.
                let w_tap = wo[ky * g.kernel_w + kx..].iter().step_by(taps);
                for (&wv, xp) in w_tap.zip(xg.chunks_exact(plane_in)) {
                    let x_row = &xp[iy * g.in_w..][..g.in_w];
                    axpy(&mut y_row[lo..hi], wv, &x_row[ix0..], g.stride_w);
                }
            }
        }
        a.apply_slice(y_row);
    }
}

impl ConvGeometry {
    /// Output rows `[lo, hi)` for which kernel row `ky` reads real input, and
    /// the input row read at `lo`; None if every such read is padding.
    #[inline]
    pub(crate) fn rows(&self, ky: usize) -> Option<[usize; 3]> {
        let off = ky * self.dilation_h;
        valid_range(self.out_h, self.stride_h, off, self.pad_top, self.in_h)
    }

    /// Column counterpart of [`Self::rows`] for kernel column `kx`.
    #[inline]
    pub(crate) fn cols(&self, kx: usize) -> Option<[usize; 3]> {
        let off = kx * self.dilation_w;
        valid_range(self.out_w, self.stride_w, off, self.pad_left, self.in_w)
    }
}

/// Output positions `o` in `[lo, hi)` whose input position `o * s + off - pad`
/// lies inside `[0, len)`, plus that input position at `lo`.
#[inline]
fn valid_range(out: usize, s: usize, off: usize, pad: usize, len: usize) -> Option<[usize; 3]> {
    let lo = pad.saturating_sub(off).div_ceil(s);
    let hi = (len + pad).saturating_sub(off).div_ceil(s).min(out);
    (lo < hi).then(|| [lo, hi, lo * s + off - pad])
}

/// `y[j] += alpha * x[j * step]` for every j in y.
#[inline(always)]
fn axpy(y: &mut [f32], alpha: f32, x: &[f32], step: usize) {
    if step == 1 {
        crate::kernels::axpy_f32(y, alpha, x);
    } else {
        for (o, &v) in y.iter_mut().zip(x.iter().step_by(step)) {
            *o += alpha * v;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_util::{assert_close, fill};
    use super::*;
    use proptest::prelude::*;

    /// Seven nested loops with an explicit bounds check per multiply-add.
    fn naive(
        g: &ConvGeometry,
        x: &[f32],
        w: &[f32],
        b: Option<&[f32]>,
        act: Activation,
    ) -> Vec<f64> {
        let (cin_g, cout_g) = (g.in_channels / g.groups, g.out_channels / g.groups);
        let (kh, kw) = (g.kernel_h, g.kernel_w);
        // Input coordinate of output `o`, tap `k`, or None when it falls in padding.
        let at = |o: usize, s: usize, k: usize, d: usize, pad: usize, len: usize| {
            (o * s + k * d).checked_sub(pad).filter(|&i| i < len)
        };
        let mut y = Vec::new();
        for n in 0..g.batch {
            for oc in 0..g.out_channels {
                for oy in 0..g.out_h {
                    for ox in 0..g.out_w {
                        let mut acc = b.map_or(0.0, |b| b[oc] as f64);
                        for icg in 0..cin_g {
                            let ic = (oc / cout_g) * cin_g + icg;
                            for ky in 0..kh {
                                for kx in 0..kw {
                                    let iy =
                                        at(oy, g.stride_h, ky, g.dilation_h, g.pad_top, g.in_h);
                                    let ix =
                                        at(ox, g.stride_w, kx, g.dilation_w, g.pad_left, g.in_w);
                                    let (Some(iy), Some(ix)) = (iy, ix) else {
                                        continue;
                                    };
                                    let xv =
                                        x[((n * g.in_channels + ic) * g.in_h + iy) * g.in_w + ix];
                                    let wv = w[((oc * cin_g + icg) * kh + ky) * kw + kx];
                                    acc += xv as f64 * wv as f64;
                                }
                            }
                        }
                        y.push(act.apply(acc as f32) as f64);
                    }
                }
            }
        }
        y
    }

    fn check(g: &ConvGeometry, with_bias: bool, act: Activation, seed: u64) {
        let cin_g = g.in_channels / g.groups;
        let x = fill(seed, g.batch * g.in_channels * g.in_h * g.in_w);
        let w_len = g.out_channels * cin_g * g.kernel_h * g.kernel_w;
        let w = fill(seed ^ 0xabcdef, w_len);
        let bias = fill(seed ^ 0x1234, g.out_channels);
        let bias = with_bias.then_some(&bias[..]);
        let mut y = vec![f32::NAN; g.batch * g.out_channels * g.out_h * g.out_w];
        conv2d_f32(g, &x, &w, bias, act, &mut y);
        let want = naive(g, &x, &w, bias, act);
        assert_close(&y, &want, g);
    }

    /// Output extent for the given total padding, or None if the kernel does not fit.
    fn out_len(in_len: usize, pads: usize, k: usize, s: usize, d: usize) -> Option<usize> {
        let span = d * (k - 1) + 1;
        (in_len + pads >= span).then(|| (in_len + pads - span) / s + 1)
    }

    const ACTS: [Activation; 4] = [
        Activation::None,
        Activation::Relu,
        Activation::Clip {
            min: -0.5,
            max: 0.5,
        },
        Activation::Sigmoid,
    ];

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
    fn hand_computed_3x3_same_padding() {
        // All-ones 3×3 kernel over 1..9 with pad 1 sums each neighbourhood.
        let g = ConvGeometry {
            pad_top: 1,
            pad_left: 1,
            ..simple(1, 3, 3, 1, [3, 3], [3, 3])
        };
        let x: Vec<f32> = (1..=9).map(|v| v as f32).collect();
        let mut y = [0.0; 9];
        conv2d_f32(&g, &x, &[1.0; 9], Some(&[0.5]), Activation::None, &mut y);
        assert_eq!(y, [12.5, 21.5, 16.5, 27.5, 45.5, 33.5, 24.5, 39.5, 28.5]);
    }

    #[test]
    fn hand_computed_grouped_strided() {
        // Two groups of one channel each, 1×2 kernel, stride 2, then Relu.
        let g = ConvGeometry {
            stride_w: 2,
            groups: 2,
            ..simple(2, 1, 4, 2, [1, 2], [1, 2])
        };
        let x = [1., 2., 3., 4., 5., 6., 7., 8.];
        let mut y = [0.0; 4];
        conv2d_f32(&g, &x, &[1., -1., 1., 1.], None, Activation::Relu, &mut y);
        assert_eq!(y, [0., 0., 11., 15.]);
    }

    #[test]
    fn hand_computed_dilated_two_channels() {
        // 1×2 kernel with dilation 2 over two input channels, pad 1 on the left.
        let g = ConvGeometry {
            dilation_w: 2,
            pad_left: 1,
            ..simple(2, 1, 3, 1, [1, 2], [1, 2])
        };
        let x = [1., 2., 3., 10., 20., 30.];
        let mut y = [0.0; 2];
        conv2d_f32(&g, &x, &[1., 2., 1., 1.], None, Activation::None, &mut y);
        // ox 0 taps columns -1 (pad) and 1; ox 1 taps columns 0 and 2.
        assert_eq!(y, [2. * 2. + 20., 1. + 2. * 3. + 10. + 30.]);
    }

    #[test]
    fn hand_computed_pointwise() {
        // 1×1 conv mixing two channels of a 2×1 image.
        let g = simple(2, 2, 1, 1, [1, 1], [2, 1]);
        let mut y = [0.0; 2];
        let (x, w) = ([1., 2., 10., 20.], [3., 0.5]);
        conv2d_f32(&g, &x, &w, Some(&[1.0]), Activation::None, &mut y);
        assert_eq!(y, [9., 17.]);
    }

    prop_compose! {
        fn geometry(force_cin_g: Option<usize>, pointwise: bool)(
            batch in 1usize..=2, groups in 1usize..=3, cin_g in 1usize..=3, cout_g in 1usize..=3,
            in_h in 1usize..=9, in_w in 1usize..=9, kh in 1usize..=3, kw in 1usize..=3,
            sh in 1usize..=3, sw in 1usize..=3, dh in 1usize..=2, dw in 1usize..=2,
            pads in [0usize..=3, 0usize..=3, 0usize..=3, 0usize..=3],
        ) -> Option<ConvGeometry> {
            let cin_g = force_cin_g.unwrap_or(cin_g);
            let (kh, kw, sh, sw, pads) = if pointwise { (1, 1, 1, 1, [0; 4]) } else { (kh, kw, sh, sw, pads) };
            let out_h = out_len(in_h, pads[0] + pads[2], kh, sh, dh)?;
            let out_w = out_len(in_w, pads[1] + pads[3], kw, sw, dw)?;
            Some(ConvGeometry {
                batch, in_channels: groups * cin_g, in_h, in_w, out_channels: groups * cout_g, out_h, out_w,
                kernel_h: kh, kernel_w: kw, stride_h: sh, stride_w: sw, dilation_h: dh, dilation_w: dw,
                pad_top: pads[0], pad_left: pads[1], groups,
            })
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(1024))]

        #[test]
        fn general_matches_naive(g in geometry(None, false), bias in any::<bool>(), a in 0usize..4, seed in any::<u64>()) {
            prop_assume!(g.is_some());
            check(&g.unwrap(), bias, ACTS[a], seed);
        }

        #[test]
        fn depthwise_matches_naive(g in geometry(Some(1), false), bias in any::<bool>(), a in 0usize..4, seed in any::<u64>()) {
            prop_assume!(g.is_some());
            check(&g.unwrap(), bias, ACTS[a], seed);
        }

        #[test]
        fn pointwise_matches_naive(g in geometry(None, true), bias in any::<bool>(), a in 0usize..4, seed in any::<u64>()) {
            check(&g.unwrap(), bias, ACTS[a], seed);
        }
    }
}
