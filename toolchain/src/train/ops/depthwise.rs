//! Depthwise 2-D convolution (groups = channels, multiplier 1) as a candle
//! custom op with direct kernels for forward, input and weight gradients.
//!
//! Each input plane is copied into its phase planes ([`Phases`]), so every
//! kernel tap becomes one long contiguous axpy (or dot) over `oh·wq` values:
//! the `wq − ow` extra columns per row are computed and dropped, which costs
//! little and keeps the inner loops branch-free and vectorised.

use super::conv2d::Conv2dParams;
use super::cpu::{
    apply_conv, by_dtype, has_fma, split, sum_parts, threads_for, Arg, BiasGrad, ConvKernel, Elem,
    Grads, KernelOp,
};
use super::im2col::{Geom, Phases};
use candle_core::backend::BackendStorage;
use candle_core::{bail, CpuStorage, CustomOp2, Layout, Result, Shape, Tensor};

/// Depthwise convolution of `x` `[B, C, H, W]` with `w` `[C, 1, KH, KW]` (f32 or f64, CPU).
pub fn depthwise_conv2d(x: &Tensor, w: &Tensor, stride: usize, padding: usize) -> Result<Tensor> {
    depthwise_conv2d_with(x, w, None, &Conv2dParams::new(stride, padding))
}

/// Depthwise convolution with per-axis parameters and an optional fused bias `[C]`.
pub fn depthwise_conv2d_with(
    x: &Tensor,
    w: &Tensor,
    bias: Option<&Tensor>,
    p: &Conv2dParams,
) -> Result<Tensor> {
    let (_, c, h, wd) = x.dims4()?;
    let (wc, mult, kh, kw) = w.dims4()?;
    if wc != c || mult != 1 {
        bail!(
            "depthwise_conv2d: weight must be [{c}, 1, KH, KW], got {:?}",
            w.shape()
        );
    }
    let g = Geom::new(c, h, wd, kh, kw, p.stride, p.padding, p.dilation)?;
    apply_conv("depthwise_conv2d", x, w, bias, c, KernelOp(DwOp { g }))
}

/// Lane-wise accumulators per weight-gradient dot product: 64 f32 are eight
/// AVX2 registers, enough independent chains to cover FMA latency; buffers
/// are padded to a multiple of it.
const CH: usize = 64;

/// Outputs per register block in [`correlate`]: four AVX2 registers (more
/// spill to the stack).
const BLK: usize = 32;

/// `out[j] = init + Σ_t w[t] · src[offs[t] + j]`, a block of `BLK` outputs at a
/// time kept in registers across all taps (`out.len()` is a multiple of `BLK`).
#[inline(always)]
fn correlate<T: Elem, const FMA: bool>(out: &mut [T], init: T, src: &[T], offs: &[usize], w: &[T]) {
    for (j, o) in out.chunks_exact_mut(BLK).enumerate() {
        let mut acc = [init; BLK];
        for (&off, &wv) in offs.iter().zip(w) {
            let s: &[T; BLK] = src[off + j * BLK..][..BLK].try_into().expect("block");
            for i in 0..BLK {
                acc[i] = wv.madd::<FMA>(s[i], acc[i]);
            }
        }
        o.copy_from_slice(&acc);
    }
}

/// `acc[i] += Σ_j a[j·CH + i] · b[j·CH + i]`: lane-wise partial dot products,
/// `CH` independent chains deep so FMA latency is hidden, reduced only once
/// per op instead of once per plane.
#[inline(always)]
fn dot_lanes<T: Elem, const FMA: bool>(acc: &mut [T; CH], a: &[T], b: &[T]) {
    for (xa, xb) in a.chunks_exact(CH).zip(b.chunks_exact(CH)) {
        for i in 0..CH {
            acc[i] = xa[i].madd::<FMA>(xb[i], acc[i]);
        }
    }
}

/// Which of the three kernels a worker runs over its range of planes.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Pass {
    Forward,
    GradInput,
    GradWeight,
}

/// One worker's share: planes `range` of `a` (x or gy), writing `out` or returning partial `gw`.
struct Work<'a, T> {
    ph: &'a Phases,
    pass: Pass,
    a: &'a [T],
    b: &'a [T],
    w: &'a [T],
    bias: Option<&'a [T]>,
    range: std::ops::Range<usize>,
}

impl<T: Elem> Work<'_, T> {
    /// Runs the pass; `FMA` may only be true when called from [`run_fma`].
    #[inline(always)]
    fn run<const FMA: bool>(&self, out: &mut [T]) -> Vec<T> {
        let (ph, g) = (self.ph, &self.ph.g);
        let (kk, hw, n, span, pq) = (
            g.kh * g.kw,
            g.h * g.w,
            g.oh * g.ow,
            ph.span(),
            ph.hq * ph.wq,
        );
        let taps: Vec<usize> = (0..g.kh)
            .flat_map(|ki| (0..g.kw).map(move |kj| ph.tap(ki, kj)))
            .collect();
        // Slack past the phase planes lets the last register block run over.
        let mut buf = vec![T::ZERO; ph.buf_len() + CH];
        let mut wide = vec![T::ZERO; span.next_multiple_of(CH)];
        // The input gradient reads widened gy shifted back by each tap's
        // offset inside its phase plane, so gy sits `front` values in.
        let front = taps.iter().map(|t| t % pq).max().unwrap_or(0);
        let mut order: Vec<usize> = (0..kk).collect();
        order.sort_by_key(|&t| taps[t] / pq);
        let back: Vec<usize> = order.iter().map(|&t| front - taps[t] % pq).collect();
        let mut ext = vec![
            T::ZERO;
            if self.pass == Pass::GradInput {
                front + pq.next_multiple_of(CH)
            } else {
                0
            }
        ];
        let mut wt = vec![T::ZERO; kk];
        let mut gw = vec![
            [T::ZERO; CH];
            if self.pass == Pass::GradWeight {
                g.c * kk
            } else {
                0
            }
        ];
        for (i, plane) in self.range.clone().enumerate() {
            let c = plane % g.c;
            let wc = self.w.get(c * kk..(c + 1) * kk).unwrap_or_default();
            match self.pass {
                Pass::Forward => {
                    ph.scatter(&self.a[plane * hw..(plane + 1) * hw], &mut buf);
                    let init = self.bias.map_or(T::ZERO, |b| b[c]);
                    let out_w = &mut wide[..span.next_multiple_of(BLK)];
                    correlate::<T, FMA>(out_w, init, &buf, &taps, wc);
                    ph.narrow(&wide[..span], &mut out[i * n..(i + 1) * n]);
                }
                Pass::GradInput => {
                    ph.widen(
                        &self.a[plane * n..(plane + 1) * n],
                        &mut ext[front..front + span],
                    );
                    order.iter().zip(&mut wt).for_each(|(&t, w)| *w = wc[t]);
                    let mut k = 0;
                    // Phase planes in order: each one's overrun is overwritten by the next.
                    for p in 0..g.stride.0 * g.stride.1 {
                        let end = k + order[k..]
                            .iter()
                            .take_while(|&&t| taps[t] / pq == p)
                            .count();
                        let dst = &mut buf[p * pq..p * pq + pq.next_multiple_of(BLK)];
                        correlate::<T, FMA>(dst, T::ZERO, &ext, &back[k..end], &wt[k..end]);
                        k = end;
                    }
                    ph.gather(&buf, &mut out[i * hw..(i + 1) * hw]);
                }
                Pass::GradWeight => {
                    ph.scatter(&self.a[plane * hw..(plane + 1) * hw], &mut buf);
                    ph.widen(&self.b[plane * n..(plane + 1) * n], &mut wide);
                    // The zero columns past `span` in `wide` mask what `buf` holds there.
                    let len = wide.len();
                    for (&s, acc) in taps.iter().zip(&mut gw[c * kk..(c + 1) * kk]) {
                        dot_lanes::<T, FMA>(acc, &buf[s..s + len], &wide);
                    }
                }
            }
        }
        gw.iter()
            .map(|l| l.iter().fold(T::ZERO, |s, v| s + *v))
            .collect()
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn run_fma<T: Elem>(work: &Work<'_, T>, out: &mut [T]) -> Vec<T> {
    work.run::<true>(out)
}

/// Runs `pass` over all `b·c` planes on up to two threads; returns the output
/// (forward, grad-input) or the summed weight gradient.
#[allow(clippy::too_many_arguments)]
fn launch<T: Elem>(
    pass: Pass,
    g: Geom,
    planes: usize,
    a: &[T],
    b: &[T],
    w: &[T],
    bias: Option<&[T]>,
) -> Vec<T> {
    let ph = Phases::new(g);
    let per = match pass {
        Pass::Forward => g.oh * g.ow,
        Pass::GradInput => g.h * g.w,
        Pass::GradWeight => 0,
    };
    let mut out = vec![T::ZERO; planes * per];
    let threads = threads_for(planes, 2 * planes * g.kh * g.kw * ph.span());
    let parts = split(&mut out, per, planes, threads, |range, out| {
        let work = Work {
            ph: &ph,
            pass,
            a,
            b,
            w,
            bias,
            range,
        };
        #[cfg(target_arch = "x86_64")]
        if has_fma() {
            // SAFETY: the CPU has just been checked for AVX2 and FMA.
            return unsafe { run_fma(&work, out) };
        }
        work.run::<false>(out)
    });
    if pass == Pass::GradWeight {
        sum_parts(parts, g.c * g.kh * g.kw)
    } else {
        out
    }
}

/// The forward op (also the grad ops, picked by `pass`).
#[derive(Clone, Copy)]
struct DwOp {
    g: Geom,
}

impl DwOp {
    fn run(
        &self,
        pass: Pass,
        (s1, l1): (&CpuStorage, &Layout),
        (s2, l2): (&CpuStorage, &Layout),
        bias: Option<(&CpuStorage, &Layout)>,
    ) -> Result<(CpuStorage, Shape)> {
        let (g, bsz) = (self.g, l1.dims()[0]);
        let shape = match pass {
            Pass::Forward => Shape::from((bsz, g.c, g.oh, g.ow)),
            Pass::GradInput => Shape::from((bsz, g.c, g.h, g.w)),
            Pass::GradWeight => Shape::from((g.c, 1, g.kh, g.kw)),
        };
        by_dtype!(s1.dtype(), T => {
            let (a, b) = (T::view(s1, l1)?, T::view(s2, l2)?);
            let bias = bias.map(|(s, l)| T::view(s, l)).transpose()?;
            let v = match pass {
                Pass::GradWeight => launch::<T>(pass, g, bsz * g.c, a, b, &[], None),
                _ => launch::<T>(pass, g, bsz * g.c, a, &[], b, bias),
            };
            Ok((T::wrap(v), shape))
        })
    }
}

impl ConvKernel for DwOp {
    fn names(&self) -> (&'static str, &'static str) {
        ("tinykd-depthwise-conv2d", "tinykd-depthwise-conv2d-bias")
    }

    fn forward(&self, x: Arg, w: Arg, bias: Option<Arg>) -> Result<(CpuStorage, Shape)> {
        self.run(Pass::Forward, x, w, bias)
    }

    fn grads(
        &self,
        x: &Tensor,
        w: &Tensor,
        bias: Option<&Tensor>,
        _y: &Tensor,
        gy: &Tensor,
    ) -> Result<Grads> {
        let gy = gy.contiguous()?;
        // Input images never need a gradient, so skip that pass for them.
        let gx = x
            .track_op()
            .then(|| gy.apply_op2_no_bwd(w, &Grad(*self, Pass::GradInput)))
            .transpose()?;
        let gw = w
            .track_op()
            .then(|| x.apply_op2_no_bwd(&gy, &Grad(*self, Pass::GradWeight)))
            .transpose()?;
        let gb = bias
            .filter(|b| b.track_op())
            .map(|_| gy.apply_op1_no_bwd(&BiasGrad))
            .transpose()?;
        Ok((gx, gw, gb))
    }
}

/// `(gy, w) → gx` or `(x, gy) → gw`.
struct Grad(DwOp, Pass);

impl CustomOp2 for Grad {
    fn name(&self) -> &'static str {
        "tinykd-depthwise-conv2d-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        self.0.run(self.1, (s1, l1), (s2, l2), None)
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
    fn matches_candle_grouped_conv() -> Result<()> {
        // (batch, channels, h, w, kernel, stride, padding); with stride 2 the
        // leftover rows and columns agree, as candle's own backward needs.
        let cases = [
            (1, 3, 7, 9, 3, 1, 1),
            (3, 4, 9, 11, 3, 2, 1),
            (3, 5, 6, 7, 1, 1, 0),
            (1, 2, 11, 13, 5, 2, 0),
            (3, 3, 8, 8, 5, 1, 1),
            (3, 4, 10, 12, 3, 2, 0),
            (1, 3, 7, 7, 1, 2, 0),
            (16, 16, 16, 16, 3, 1, 1),
        ];
        for (i, &(b, c, h, w, k, s, p)) in cases.iter().enumerate() {
            let ours = |x: &Tensor, w: &Tensor| depthwise_conv2d(x, w, s, p);
            let theirs = |x: &Tensor, w: &Tensor| x.conv2d(w, p, s, 1, c);
            check_vs_reference(
                &ours,
                &theirs,
                &[b, c, h, w],
                &[c, 1, k, k],
                10 * i as u64,
                1e-4,
            )?;
        }
        Ok(())
    }

    #[test]
    fn fused_bias_and_dilation_match_candle() -> Result<()> {
        let p = Conv2dParams {
            stride: (1, 1),
            padding: (2, 2),
            dilation: (2, 2),
        };
        let x = Var::from_tensor(&rand(&[3, 4, 9, 8], 1, DType::F32)?)?;
        let w = Var::from_tensor(&rand(&[4, 1, 3, 3], 2, DType::F32)?)?;
        let b = Var::from_tensor(&rand(&[4], 3, DType::F32)?)?;
        let ours = depthwise_conv2d_with(&x, &w, Some(&b), &p)?;
        let theirs = x
            .conv2d(&w, 2, 1, 2, 4)?
            .broadcast_add(&b.reshape((1, 4, 1, 1))?)?;
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
    fn gradients_match_finite_differences_f64() -> Result<()> {
        let odd = Conv2dParams {
            stride: (2, 3),
            padding: (1, 2),
            dilation: (1, 1),
        };
        let dil = Conv2dParams {
            stride: (1, 2),
            padding: (0, 1),
            dilation: (2, 1),
        };
        let cases = [
            (odd, [2, 3, 7, 8], [3, 1, 3, 2]),
            (dil, [1, 2, 7, 6], [2, 1, 2, 3]),
            (Conv2dParams::new(1, 1), [2, 2, 5, 4], [2, 1, 3, 3]),
        ];
        for (i, (p, xd, wd)) in cases.into_iter().enumerate() {
            check_finite_diff(
                &|x, w| depthwise_conv2d_with(x, w, None, &p),
                &xd,
                &wd,
                i as u64,
            )?;
        }
        Ok(())
    }

    /// The portable kernels (no FMA) are the same code; check they agree.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn portable_kernels_match_fma_kernels() {
        let g = Geom::new(2, 7, 9, 3, 3, (2, 1), (1, 1), (1, 1)).unwrap();
        let ph = Phases::new(g);
        let v = |n: usize| {
            (0..n)
                .map(|i| (i * 37 % 101) as f32 / 50.0 - 1.0)
                .collect::<Vec<_>>()
        };
        let (x, gy, w) = (v(4 * 63), v(4 * g.n()), v(18));
        let cases = [
            (Pass::Forward, &x, &[][..], &w[..], 4 * g.n()),
            (Pass::GradInput, &gy, &[][..], &w[..], 4 * 63),
            (Pass::GradWeight, &x, &gy[..], &[][..], 0),
        ];
        for (pass, a, b, w, len) in cases {
            let work = Work {
                ph: &ph,
                pass,
                a,
                b,
                w,
                bias: None,
                range: 0..4,
            };
            let (mut o1, mut o2) = (vec![0f32; len], vec![0f32; len]);
            let r1 = work.run::<false>(&mut o1);
            if has_fma() {
                // SAFETY: checked just above.
                let r2 = unsafe { run_fma(&work, &mut o2) };
                for (p, q) in o1.iter().chain(&r1).zip(o2.iter().chain(&r2)) {
                    assert!((p - q).abs() < 1e-5, "{p} vs {q}");
                }
            }
        }
    }

    /// `cargo test --release -p tinykd --lib depthwise::tests::bench -- --ignored --nocapture`
    #[test]
    #[ignore]
    fn bench_vs_candle() -> Result<()> {
        let ours = |x: &Tensor, w: &Tensor| depthwise_conv2d(x, w, 1, 1);
        let theirs = |x: &Tensor, w: &Tensor| x.conv2d(w, 1, 1, 1, 16);
        let flops = 2.0 * 128.0 * 16.0 * 9.0 * 196.0;
        let (xd, wd) = ([128, 16, 14, 14], [16, 1, 3, 3]);
        bench_pair(
            "depthwise 16ch 3x3 14x14 b128",
            &ours,
            &theirs,
            &xd,
            &wd,
            true,
            flops,
        )?;
        let (x, w) = (rand(&xd, 1, DType::F32)?, rand(&wd, 2, DType::F32)?);
        let op = DwOp {
            g: Geom::new(16, 14, 14, 3, 3, (1, 1), (1, 1), (1, 1))?,
        };
        let gy = x.apply_op2_no_bwd(&w, &KernelOp(op))?;
        let f = median_ms(10, || x.apply_op2_no_bwd(&w, &KernelOp(op)).map(drop))?;
        let gx = median_ms(10, || {
            gy.apply_op2_no_bwd(&w, &Grad(op, Pass::GradInput))
                .map(drop)
        })?;
        let gw = median_ms(10, || {
            x.apply_op2_no_bwd(&gy, &Grad(op, Pass::GradWeight))
                .map(drop)
        })?;
        println!("ops: fwd {f:.3} ms, grad-input {gx:.3} ms, grad-weight {gw:.3} ms");
        Ok(())
    }
}
