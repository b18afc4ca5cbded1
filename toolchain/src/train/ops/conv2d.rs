//! Dense 2-D convolution (groups = 1) as a candle custom op: im2col + GEMM
//! forward, GEMM + col2im input gradient and GEMM-over-im2col weight
//! gradient, each a custom op so backward never goes through candle's
//! conv-transpose path. Images are split over threads; each thread unfolds
//! one image at a time into a buffer that stays in L2 for its GEMM.

use super::cpu::{apply_conv, by_dtype, Arg, ConvKernel, Elem, KernelOp};
use super::im2col::{forward, grad_input, grad_weight, Geom};
use candle_core::backend::BackendStorage;
use candle_core::{bail, CpuStorage, CustomOp2, Layout, Result, Shape, Tensor};

/// Stride, symmetric padding and dilation of a convolution, as (height, width).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Conv2dParams {
    /// Step between output pixels.
    pub stride: (usize, usize),
    /// Zeros added on each side.
    pub padding: (usize, usize),
    /// Spacing between kernel taps.
    pub dilation: (usize, usize),
}

impl Conv2dParams {
    /// Same stride and padding on both axes, no dilation.
    pub fn new(stride: usize, padding: usize) -> Self {
        Self {
            stride: (stride, stride),
            padding: (padding, padding),
            dilation: (1, 1),
        }
    }
}

/// 2-D convolution of `x` `[B, C, H, W]` with `w` `[OC, C, KH, KW]` (f32 or f64, CPU).
pub fn conv2d(x: &Tensor, w: &Tensor, stride: usize, padding: usize) -> Result<Tensor> {
    conv2d_with(x, w, None, &Conv2dParams::new(stride, padding))
}

/// 2-D convolution with per-axis parameters and an optional fused bias `[OC]`.
pub fn conv2d_with(
    x: &Tensor,
    w: &Tensor,
    bias: Option<&Tensor>,
    p: &Conv2dParams,
) -> Result<Tensor> {
    let (_, c, h, wd) = x.dims4()?;
    let (oc, ic, kh, kw) = w.dims4()?;
    if ic != c {
        bail!("conv2d: input has {c} channels, weight expects {ic} (groups = 1 only)");
    }
    let g = Geom::new(c, h, wd, kh, kw, p.stride, p.padding, p.dilation)?;
    apply_conv("conv2d", x, w, bias, oc, KernelOp(ConvOp { g, oc }))
}

/// The forward op; its geometry was checked when it was built.
#[derive(Clone, Copy, Debug)]
struct ConvOp {
    g: Geom,
    oc: usize,
}

impl ConvKernel for ConvOp {
    const NAMES: (&'static str, &'static str) = ("tinykd-conv2d", "tinykd-conv2d-bias");
    type GradInput = GradInput;
    type GradWeight = GradWeight;

    fn forward(&self, xs: Arg, w: Arg, bias: Option<Arg>) -> Result<(CpuStorage, Shape)> {
        let b = xs.1.dims()[0];
        let shape = Shape::from((b, self.oc, self.g.oh, self.g.ow));
        by_dtype!(xs.0.dtype(), T => {
            let bias = bias.map(|(s, l)| T::view(s, l)).transpose()?;
            let y = forward::<T>(T::view(xs.0, xs.1)?, T::view(w.0, w.1)?, bias, b, &self.g, self.oc);
            Ok((T::wrap(y), shape))
        })
    }

    fn grad_input(&self) -> GradInput {
        GradInput {
            g: self.g,
            oc: self.oc,
        }
    }

    fn grad_weight(&self) -> GradWeight {
        GradWeight {
            g: self.g,
            oc: self.oc,
        }
    }
}

/// `(gy, w) → gx`, the input gradient.
struct GradInput {
    g: Geom,
    oc: usize,
}

impl CustomOp2 for GradInput {
    fn name(&self) -> &'static str {
        "tinykd-conv2d-grad-input"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let b = l1.dims()[0];
        let shape = Shape::from((b, self.g.c, self.g.h, self.g.w));
        by_dtype!(s1.dtype(), T => {
            let gx = grad_input::<T>(T::view(s1, l1)?, T::view(s2, l2)?, b, &self.g, self.oc);
            Ok((T::wrap(gx), shape))
        })
    }
}

/// `(x, gy) → gw`, the weight gradient.
struct GradWeight {
    g: Geom,
    oc: usize,
}

impl CustomOp2 for GradWeight {
    fn name(&self) -> &'static str {
        "tinykd-conv2d-grad-weight"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let b = l1.dims()[0];
        let shape = Shape::from((self.oc, self.g.c, self.g.kh, self.g.kw));
        by_dtype!(s1.dtype(), T => {
            let gw = grad_weight::<T>(T::view(s1, l1)?, T::view(s2, l2)?, b, &self.g, self.oc);
            Ok((T::wrap(gw), shape))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::ops::testutil::{
        bench_pair, check_finite_diff, check_vs_reference, median_ms, rand, rel_err,
    };
    use candle_core::{DType, Var};

    #[test]
    fn matches_candle_forward_and_gradients() -> Result<()> {
        // (batch, in ch, h, w, out ch, kernel, stride, padding). candle's own
        // conv2d backward takes the output padding of its transposed conv from
        // the height only, so with stride 2 the leftover rows and columns must
        // agree for candle to be a valid reference (finite differences cover the rest).
        let cases = [
            (1, 1, 7, 9, 4, 3, 1, 1),
            (3, 3, 9, 11, 5, 3, 2, 1),
            (3, 3, 9, 11, 2, 3, 1, 0),
            (3, 4, 6, 7, 6, 1, 1, 0),
            (3, 8, 5, 5, 16, 1, 2, 0),
            (1, 5, 11, 13, 3, 5, 2, 0),
            (3, 2, 8, 8, 4, 5, 1, 1),
            (3, 6, 13, 7, 5, 3, 2, 0),
            (3, 16, 12, 12, 32, 3, 1, 1),
        ];
        for (i, &(b, c, h, w, oc, k, s, p)) in cases.iter().enumerate() {
            let ours = |x: &Tensor, w: &Tensor| conv2d(x, w, s, p);
            let theirs = |x: &Tensor, w: &Tensor| x.conv2d(w, p, s, 1, 1);
            check_vs_reference(
                &ours,
                &theirs,
                &[b, c, h, w],
                &[oc, c, k, k],
                10 * i as u64,
                1e-4,
            )?;
        }
        Ok(())
    }

    #[test]
    fn dilation_matches_candle() -> Result<()> {
        let p = Conv2dParams {
            stride: (1, 1),
            padding: (2, 2),
            dilation: (2, 2),
        };
        let ours = |x: &Tensor, w: &Tensor| conv2d_with(x, w, None, &p);
        let theirs = |x: &Tensor, w: &Tensor| x.conv2d(w, 2, 1, 2, 1);
        check_vs_reference(&ours, &theirs, &[3, 3, 9, 10], &[4, 3, 3, 3], 7, 1e-4)
    }

    #[test]
    fn fused_bias_matches_broadcast_add() -> Result<()> {
        let x = Var::from_tensor(&rand(&[3, 4, 7, 9], 1, DType::F32)?)?;
        let w = Var::from_tensor(&rand(&[5, 4, 3, 3], 2, DType::F32)?)?;
        let b = Var::from_tensor(&rand(&[5], 3, DType::F32)?)?;
        let ours = conv2d_with(&x, &w, Some(&b), &Conv2dParams::new(2, 1))?;
        let theirs = x
            .conv2d(&w, 1, 2, 1, 1)?
            .broadcast_add(&b.reshape((1, 5, 1, 1))?)?;
        assert!(rel_err(&ours, &theirs)? < 1e-4);
        let r = rand(ours.dims(), 4, DType::F32)?;
        let go = (ours * &r)?.sum_all()?.backward()?;
        let gt = (theirs * &r)?.sum_all()?.backward()?;
        for v in [&x, &w, &b] {
            assert!(rel_err(go.get(v).unwrap(), gt.get(v).unwrap())? < 1e-4);
        }
        Ok(())
    }

    #[test]
    fn untracked_input_gets_no_gradient() -> Result<()> {
        let x = rand(&[2, 3, 6, 6], 1, DType::F32)?;
        let w = Var::from_tensor(&rand(&[4, 3, 3, 3], 2, DType::F32)?)?;
        let go = conv2d(&x, &w, 1, 1)?.sum_all()?.backward()?;
        let gt = x.conv2d(&w, 1, 1, 1, 1)?.sum_all()?.backward()?;
        assert!(go.get(&x).is_none());
        assert!(rel_err(go.get(&w).unwrap(), gt.get(&w).unwrap())? < 1e-4);
        // A transposed (non-contiguous) input is made contiguous, not misread.
        let xt = x.transpose(2, 3)?;
        assert!(rel_err(&conv2d(&xt, &w, 1, 0)?, &xt.conv2d(&w, 0, 1, 1, 1)?)? < 1e-4);
        Ok(())
    }

    #[test]
    fn rejects_bad_arguments() -> Result<()> {
        let x = rand(&[2, 3, 5, 5], 1, DType::F32)?;
        let w = rand(&[4, 3, 3, 3], 2, DType::F32)?;
        assert!(conv2d(&x, &rand(&[4, 2, 3, 3], 2, DType::F32)?, 1, 1).is_err());
        assert!(conv2d(&x, &w.to_dtype(DType::F64)?, 1, 1).is_err());
        assert!(conv2d(&x.to_dtype(DType::F16)?, &w.to_dtype(DType::F16)?, 1, 1).is_err());
        assert!(conv2d(&x, &rand(&[4, 3, 7, 7], 2, DType::F32)?, 1, 0).is_err());
        let bad_bias = rand(&[3], 3, DType::F32)?;
        assert!(conv2d_with(&x, &w, Some(&bad_bias), &Conv2dParams::new(1, 1)).is_err());
        let dw = rand(&[3, 2, 3, 3], 2, DType::F32)?;
        assert!(super::super::depthwise::depthwise_conv2d(&x, &dw, 1, 1).is_err());
        Ok(())
    }

    #[test]
    fn gradients_match_finite_differences_f64() -> Result<()> {
        let odd = Conv2dParams {
            stride: (2, 1),
            padding: (1, 0),
            dilation: (1, 2),
        };
        let cases = [
            (odd, [2, 2, 5, 6], [3, 2, 3, 2]),
            (Conv2dParams::new(1, 0), [1, 3, 4, 4], [2, 3, 1, 1]),
            (Conv2dParams::new(2, 1), [2, 1, 5, 5], [2, 1, 3, 3]),
        ];
        for (i, (p, xd, wd)) in cases.into_iter().enumerate() {
            check_finite_diff(&|x, w| conv2d_with(x, w, None, &p), &xd, &wd, i as u64)?;
        }
        Ok(())
    }

    /// `cargo test --release -p tinykd --lib conv2d::tests::bench -- --ignored --nocapture`
    #[test]
    #[ignore]
    fn bench_vs_candle() -> Result<()> {
        use crate::train::ops::im2col::{matmul, Phases};
        let ours = |x: &Tensor, w: &Tensor| conv2d(x, w, 1, 1);
        let theirs = |x: &Tensor, w: &Tensor| x.conv2d(w, 1, 1, 1, 1);
        let layers = [
            ("1->32 28x28", [128, 1, 28, 28], [32, 1, 3, 3]),
            ("32->64 14x14", [128, 32, 14, 14], [64, 32, 3, 3]),
        ];
        for (i, (name, xd, wd)) in layers.into_iter().enumerate() {
            let (oc, g) = (
                wd[0],
                Geom::new(xd[1], xd[2], xd[3], 3, 3, (1, 1), (1, 1), (1, 1))?,
            );
            let fl = 2.0 * (128 * oc * g.k() * g.n()) as f64;
            bench_pair(
                &format!("conv {name} 3x3 b128"),
                &ours,
                &theirs,
                &xd,
                &wd,
                i > 0,
                fl,
            )?;
            // Each op alone, and the bare GEMMs of one pass on one thread.
            let (x, w) = (rand(&xd, 1, DType::F32)?, rand(&wd, 2, DType::F32)?);
            let gy = rand(&[128, oc, g.oh, g.ow], 3, DType::F32)?;
            let f = median_ms(10, || {
                x.apply_op2_no_bwd(&w, &KernelOp(ConvOp { g, oc }))
                    .map(drop)
            })?;
            let gx = median_ms(10, || {
                gy.apply_op2_no_bwd(&w, &GradInput { g, oc }).map(drop)
            })?;
            let gw = median_ms(10, || {
                x.apply_op2_no_bwd(&gy, &GradWeight { g, oc }).map(drop)
            })?;
            let (k, span) = (g.k(), Phases::new(g).span());
            let (a, b, mut c) = (
                vec![1f32; oc * k],
                vec![1f32; k * span],
                vec![0f32; oc * span],
            );
            let gemm = median_ms(10, || {
                for _ in 0..128 {
                    matmul(
                        (oc, span, k),
                        &mut c,
                        (span, 1),
                        false,
                        &a,
                        (k, 1),
                        &b,
                        (span, 1),
                        gemm::Parallelism::None,
                    );
                }
                Ok(())
            })?;
            let gf = |ms: f64| fl / ms / 1e6;
            println!(
                "  ops: fwd {f:.2} ms ({:.0} GFLOP/s), grad-input {gx:.2} ms ({:.0}), grad-weight {gw:.2} ms ({:.0}); \
                 one pass of bare GEMMs on 1 core {gemm:.2} ms ({:.0} GFLOP/s incl. padded columns)",
                gf(f), gf(gx), gf(gw), 2.0 * (128 * oc * k * span) as f64 / gemm / 1e6
            );
        }
        Ok(())
    }
}
