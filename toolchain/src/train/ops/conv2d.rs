//! Dense 2-D convolution (groups = 1) as one candle custom op, optionally
//! fused with the ReLU and max pooling that follow it: im2col + GEMM
//! forward; one backward pass computing the input, weight and bias
//! gradients together. Images are split over threads; each thread unfolds
//! one image at a time into buffers that stay in L2, so the full-size conv
//! output (and its gradient) never goes through memory: for a conv → ReLU →
//! pool block that saves several passes over the largest tensor of the
//! network, plus candle's gradient bookkeeping for two nodes.

use super::cpu::{apply_conv, by_dtype, Arg, ConvKernel, Elem, Grads, KernelOp};
use super::im2col::{backward, forward, Epilogue, Geom};
use candle_core::backend::BackendStorage;
use candle_core::{bail, CpuStorage, Device, Result, Shape, Storage, Tensor};
use std::sync::Mutex;

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
    conv2d_block(x, w, bias, p, Epilogue::NONE)
}

/// Convolution + bias, then the ReLU and `pool`×`pool` max pooling (stride
/// `pool`, floor) of `ep`, as one op. Pooling ties go to the first maximum
/// in row-major window order, as TensorFlow and PyTorch do.
pub fn conv2d_block(
    x: &Tensor,
    w: &Tensor,
    bias: Option<&Tensor>,
    p: &Conv2dParams,
    ep: Epilogue,
) -> Result<Tensor> {
    let (_, c, h, wd) = x.dims4()?;
    let (oc, ic, kh, kw) = w.dims4()?;
    if ic != c {
        bail!("conv2d: input has {c} channels, weight expects {ic} (groups = 1 only)");
    }
    let g = Geom::new(c, h, wd, kh, kw, p.stride, p.padding, p.dilation)?;
    if ep.pool == 0 || ep.pool > 15 || ep.pool > g.oh || ep.pool > g.ow {
        bail!(
            "conv2d: pool window {} must be 1..=15 and fit in the {}x{} conv output",
            ep.pool,
            g.oh,
            g.ow
        );
    }
    let op = ConvBlock {
        g,
        oc,
        ep,
        winners: Mutex::new(Vec::new()),
    };
    apply_conv("conv2d", x, w, bias, oc, KernelOp(op))
}

/// The fused op; `winners` holds each pooling window's argmax after the
/// forward pass (one op value per call, so it belongs to that call alone).
struct ConvBlock {
    g: Geom,
    oc: usize,
    ep: Epilogue,
    winners: Mutex<Vec<u8>>,
}

impl ConvKernel for ConvBlock {
    fn names(&self) -> (&'static str, &'static str) {
        match (self.ep.relu, self.ep.pool > 1) {
            (false, false) => ("tinykd-conv2d", "tinykd-conv2d-bias"),
            (true, false) => ("tinykd-conv2d-relu", "tinykd-conv2d-bias-relu"),
            (false, true) => ("tinykd-conv2d-pool", "tinykd-conv2d-bias-pool"),
            (true, true) => ("tinykd-conv2d-relu-pool", "tinykd-conv2d-bias-relu-pool"),
        }
    }

    fn forward(&self, x: Arg, w: Arg, bias: Option<Arg>) -> Result<(CpuStorage, Shape)> {
        let b = x.1.dims()[0];
        let (ph, pw) = self.ep.out_hw(self.g.oh, self.g.ow);
        let shape = Shape::from((b, self.oc, ph, pw));
        by_dtype!(x.0.dtype(), T => {
            let bias = bias.map(|(s, l)| T::view(s, l)).transpose()?;
            let (y, winners) = forward::<T>(
                T::view(x.0, x.1)?, T::view(w.0, w.1)?, bias, b, &self.g, self.oc, self.ep,
            );
            *self.winners.lock().expect("winners lock") = winners;
            Ok((T::wrap(y), shape))
        })
    }

    fn grads(
        &self,
        x: &Tensor,
        w: &Tensor,
        bias: Option<&Tensor>,
        y: &Tensor,
        gy: &Tensor,
    ) -> Result<Grads> {
        let gy = gy.contiguous()?;
        let b = x.dims()[0];
        let need_gx = x.track_op();
        let (xs, xl) = x.storage_and_layout();
        let (ws, wl) = w.storage_and_layout();
        let (gs, gl) = gy.storage_and_layout();
        let (ys, yl) = y.storage_and_layout();
        let (Storage::Cpu(xs), Storage::Cpu(ws), Storage::Cpu(gs), Storage::Cpu(ys)) =
            (&*xs, &*ws, &*gs, &*ys)
        else {
            bail!("conv2d: backward on a non-CPU tensor");
        };
        let winners = self.winners.lock().expect("winners lock");
        if self.ep.pool > 1 && winners.len() != y.elem_count() {
            bail!("conv2d: backward without a recorded forward");
        }
        let dev = Device::Cpu;
        let g = &self.g;
        let (gx, gw, gb) = by_dtype!(xs.dtype(), T => {
            let (gx, gw, gb) = backward::<T>(
                T::view(xs, xl)?, T::view(ws, wl)?, T::view(gs, gl)?, T::view(ys, yl)?,
                &winners, b, g, self.oc, self.ep, need_gx,
            );
            (
                gx.map(|v| Tensor::from_vec(v, (b, g.c, g.h, g.w), &dev)).transpose()?,
                Tensor::from_vec(gw, w.shape(), &dev)?,
                Tensor::from_vec(gb, self.oc, &dev)?,
            )
        });
        let gb = bias.filter(|b| b.track_op()).map(|_| gb);
        Ok((gx, w.track_op().then_some(gw), gb))
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

    /// ReLU and floor max pooling from candle's ops.
    fn reference_epilogue(y: &Tensor, ep: Epilogue) -> Result<Tensor> {
        let y = if ep.relu { y.relu()? } else { y.clone() };
        match ep.pool {
            1 => Ok(y),
            k => crate::train::ops::pool::candle_max_pool2d(&y, k),
        }
    }

    #[test]
    fn fused_relu_and_pool_match_candle_ops() -> Result<()> {
        // (batch, in ch, h, w, out ch, kernel, stride, padding, relu, pool)
        let cases = [
            (2, 3, 8, 8, 4, 3, 1, 1, true, 1),
            (2, 3, 8, 8, 4, 3, 1, 1, false, 2),
            (3, 2, 9, 11, 5, 3, 1, 1, true, 2),
            (2, 4, 12, 10, 3, 3, 2, 1, true, 2),
            (2, 3, 10, 10, 4, 1, 1, 0, true, 3),
            (1, 2, 7, 7, 6, 5, 1, 2, true, 3),
        ];
        for (i, &(b, c, h, w, oc, k, s, pad, relu, pool)) in cases.iter().enumerate() {
            let ep = Epilogue { relu, pool };
            let bias = Var::from_tensor(&rand(&[oc], 100 + i as u64, DType::F32)?)?;
            let p = Conv2dParams::new(s, pad);
            let ours = |x: &Tensor, wt: &Tensor| conv2d_block(x, wt, Some(&bias), &p, ep);
            let theirs = |x: &Tensor, wt: &Tensor| {
                let y = x
                    .conv2d(wt, pad, s, 1, 1)?
                    .broadcast_add(&bias.reshape((1, oc, 1, 1))?)?;
                reference_epilogue(&y, ep)
            };
            check_vs_reference(
                &ours,
                &theirs,
                &[b, c, h, w],
                &[oc, c, k, k],
                20 * i as u64,
                1e-4,
            )?;
        }
        Ok(())
    }

    #[test]
    fn fused_bias_gradient_matches_candle_ops() -> Result<()> {
        let ep = Epilogue {
            relu: true,
            pool: 2,
        };
        let x = rand(&[3, 2, 8, 9], 1, DType::F32)?;
        let w = Var::from_tensor(&rand(&[4, 2, 3, 3], 2, DType::F32)?)?;
        let b = Var::from_tensor(&rand(&[4], 3, DType::F32)?)?;
        let ours = conv2d_block(&x, &w, Some(&b), &Conv2dParams::new(1, 1), ep)?;
        let y = x
            .conv2d(&w, 1, 1, 1, 1)?
            .broadcast_add(&b.reshape((1, 4, 1, 1))?)?;
        let theirs = reference_epilogue(&y, ep)?;
        let r = rand(ours.dims(), 4, DType::F32)?;
        let go = (ours * &r)?.sum_all()?.backward()?;
        let gt = (theirs * &r)?.sum_all()?.backward()?;
        assert!(go.get(&x).is_none(), "untracked input got a gradient");
        for v in [&w, &b] {
            assert!(rel_err(go.get(v).unwrap(), gt.get(v).unwrap())? < 1e-4);
        }
        Ok(())
    }

    #[test]
    fn fused_gradients_match_finite_differences_f64() -> Result<()> {
        let cases = [
            (Conv2dParams::new(1, 1), [2, 2, 6, 7], [3, 2, 3, 3], 2),
            (Conv2dParams::new(2, 0), [1, 3, 9, 9], [2, 3, 3, 3], 2),
            (Conv2dParams::new(1, 0), [2, 2, 6, 6], [2, 2, 1, 1], 3),
        ];
        for (i, (p, xd, wd, pool)) in cases.into_iter().enumerate() {
            let ep = Epilogue { relu: true, pool };
            check_finite_diff(
                &|x, w| conv2d_block(x, w, None, &p, ep),
                &xd,
                &wd,
                40 + i as u64,
            )?;
        }
        Ok(())
    }

    #[test]
    fn rejects_a_pool_larger_than_the_output() -> Result<()> {
        let x = rand(&[1, 2, 4, 4], 1, DType::F32)?;
        let w = rand(&[3, 2, 3, 3], 2, DType::F32)?;
        let ep = Epilogue {
            relu: true,
            pool: 5,
        };
        let err = conv2d_block(&x, &w, None, &Conv2dParams::new(1, 1), ep).unwrap_err();
        assert!(err.to_string().contains("pool window 5"), "{err}");
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
            // The op's two passes alone, and the bare GEMMs of one pass on one thread.
            let (x, w) = (rand(&xd, 1, DType::F32)?, rand(&wd, 2, DType::F32)?);
            let (xv, wv) = (
                x.flatten_all()?.to_vec1::<f32>()?,
                w.flatten_all()?.to_vec1::<f32>()?,
            );
            let (yv, _) = forward(&xv, &wv, None, 128, &g, oc, Epilogue::NONE);
            let f = median_ms(10, || {
                forward(&xv, &wv, None, 128, &g, oc, Epilogue::NONE);
                Ok(())
            })?;
            let both = median_ms(10, || {
                backward(&xv, &wv, &yv, &yv, &[], 128, &g, oc, Epilogue::NONE, i > 0);
                Ok(())
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
            let passes = if i > 0 { 2.0 } else { 1.0 };
            println!(
                "  kernels: fwd {f:.2} ms ({:.0} GFLOP/s), bwd {both:.2} ms ({:.0}); \
                 one pass of bare GEMMs on 1 core {gemm:.2} ms ({:.0} GFLOP/s incl. padded columns)",
                gf(f), passes * gf(both), 2.0 * (128 * oc * k * span) as f64 / gemm / 1e6
            );
        }
        Ok(())
    }
}
