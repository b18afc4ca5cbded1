//! Depthwise 2-D convolution (groups = channels, multiplier 1) as a candle
//! custom op with direct kernels for forward, input and weight gradients.
//!
//! Each input plane is copied into `stride²` zero-padded phase planes of width
//! `wq`, so every kernel tap becomes one long contiguous axpy (or dot) over
//! `oh·wq` values: the `wq - ow` extra columns per row are computed and
//! dropped, which costs little and keeps the inner loops branch-free.

use super::conv2d::Conv2dParams;
use super::im2col::{by_dtype, has_fma, split, threads_for, valid, BiasGrad, Elem, Geom};
use candle_core::backend::BackendStorage;
use candle_core::{bail, CpuStorage, CustomOp2, CustomOp3, DType, Layout, Result, Shape, Tensor};

/// Depthwise convolution of `x` `[B, C, H, W]` with `w` `[C, 1, KH, KW]` (f32 or f64, CPU).
pub fn depthwise_conv2d(x: &Tensor, w: &Tensor, stride: usize, padding: usize) -> Result<Tensor> {
    depthwise_conv2d_with(x, w, None, &Conv2dParams::new(stride, padding))
}

/// Depthwise convolution with per-axis stride/padding and an optional fused bias `[C]`.
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
    if p.dilation != (1, 1) {
        bail!("depthwise_conv2d: dilation is not supported");
    }
    if !x.device().is_cpu() || !w.device().is_cpu() {
        bail!("depthwise_conv2d: tinykd's depthwise op is CPU-only");
    }
    if x.dtype() != w.dtype() || !matches!(x.dtype(), DType::F32 | DType::F64) {
        bail!(
            "depthwise_conv2d: need f32 or f64, got {:?} and {:?}",
            x.dtype(),
            w.dtype()
        );
    }
    let op = DwOp {
        g: Geom::new(c, h, wd, kh, kw, p.stride, p.padding, (1, 1))?,
    };
    let (x, w) = (x.contiguous()?, w.contiguous()?);
    match bias {
        None => x.apply_op2(&w, op),
        Some(b) => {
            if b.dims() != [c] || b.dtype() != x.dtype() {
                bail!(
                    "depthwise_conv2d: bias must be [{c}] {:?}, got {:?}",
                    x.dtype(),
                    b.shape()
                );
            }
            x.apply_op3(&w, &b.contiguous()?, op)
        }
    }
}

/// Where the phase planes of one image plane live and where each tap starts.
struct Phases {
    g: Geom,
    hq: usize,
    wq: usize,
}

impl Phases {
    fn new(g: Geom) -> Self {
        let (sh, sw) = g.stride;
        // One spare row absorbs the overrun of the dropped columns on the last row.
        Self {
            g,
            hq: g.oh + (g.kh - 1) / sh + 1,
            wq: g.ow + (g.kw - 1) / sw,
        }
    }

    fn len(&self) -> usize {
        self.g.stride.0 * self.g.stride.1 * self.hq * self.wq
    }

    /// Values the per-tap loops run over (`oh` rows of `wq`).
    fn span(&self) -> usize {
        self.g.oh * self.wq
    }

    /// Start of tap `(ki, kj)` in the phase buffer.
    fn tap(&self, ki: usize, kj: usize) -> usize {
        let (sh, sw) = self.g.stride;
        let phase = (ki % sh) * sw + kj % sw;
        phase * self.hq * self.wq + (ki / sh) * self.wq + kj / sw
    }

    /// Calls `f(q, x, len)` for each run of `len` phase slots from `q` (step 1)
    /// that mirror plane pixels from `x` (step `stride.1`).
    #[inline(always)]
    fn runs(&self, mut f: impl FnMut(usize, usize, usize)) {
        let (g, (sh, sw)) = (&self.g, self.g.stride);
        for pr in 0..sh {
            let rows = valid(self.hq, g.h, sh, pr as isize - g.pad.0 as isize);
            for pc in 0..sw {
                let off = pc as isize - g.pad.1 as isize;
                let cols = valid(self.wq, g.w, sw, off);
                let base = (pr * sw + pc) * self.hq * self.wq;
                for r in rows.clone() {
                    let ih = (r * sh + pr) - g.pad.0;
                    let iw = (cols.start * sw).wrapping_add_signed(off);
                    f(base + r * self.wq + cols.start, ih * g.w + iw, cols.len());
                }
            }
        }
    }

    /// Copies plane `x` `[h, w]` into zeroed phase planes.
    #[inline(always)]
    fn scatter<T: Elem>(&self, x: &[T], buf: &mut [T]) {
        let sw = self.g.stride.1;
        buf.fill(T::ZERO);
        self.runs(|q, x0, len| {
            if sw == 1 {
                buf[q..q + len].copy_from_slice(&x[x0..x0 + len]);
            } else {
                for (j, d) in buf[q..q + len].iter_mut().enumerate() {
                    *d = x[x0 + j * sw];
                }
            }
        });
    }

    /// Copies phase planes back onto plane `x` `[h, w]` (untouched pixels keep their value).
    #[inline(always)]
    fn gather<T: Elem>(&self, buf: &[T], x: &mut [T]) {
        let sw = self.g.stride.1;
        self.runs(|q, x0, len| {
            if sw == 1 {
                x[x0..x0 + len].copy_from_slice(&buf[q..q + len]);
            } else {
                for (j, s) in buf[q..q + len].iter().enumerate() {
                    x[x0 + j * sw] = *s;
                }
            }
        });
    }

    /// Spreads `oh×ow` rows into `oh×wq` rows with zeroed extra columns.
    #[inline(always)]
    fn widen<T: Elem>(&self, src: &[T], dst: &mut [T]) {
        for (d, s) in dst
            .chunks_exact_mut(self.wq)
            .zip(src.chunks_exact(self.g.ow))
        {
            d[..self.g.ow].copy_from_slice(s);
            d[self.g.ow..].fill(T::ZERO);
        }
    }
}

#[inline(always)]
fn axpy<T: Elem, const FMA: bool>(acc: &mut [T], a: T, x: &[T]) {
    acc.iter_mut()
        .zip(x)
        .for_each(|(y, x)| *y = a.madd::<FMA>(*x, *y));
}

#[inline(always)]
fn dot<T: Elem, const FMA: bool>(a: &[T], b: &[T]) -> T {
    let mut acc = [T::ZERO; 16];
    let (ca, cb) = (a.chunks_exact(16), b.chunks_exact(16));
    let tail = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .fold(T::ZERO, |s, (x, y)| *x * *y + s);
    for (xa, xb) in ca.zip(cb) {
        for i in 0..16 {
            acc[i] = xa[i].madd::<FMA>(xb[i], acc[i]);
        }
    }
    acc.iter().fold(tail, |s, v| s + *v)
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
        let (kk, hw, n, span) = (g.kh * g.kw, g.h * g.w, g.oh * g.ow, ph.span());
        let mut buf = vec![T::ZERO; ph.len()];
        let mut wide = vec![T::ZERO; span];
        let mut gw = vec![
            T::ZERO;
            if self.pass == Pass::GradWeight {
                g.c * kk
            } else {
                0
            }
        ];
        for (i, plane) in self.range.clone().enumerate() {
            let c = plane % g.c;
            let wc = self.w.get(c * kk..(c + 1) * kk).unwrap_or_default();
            let taps = (0..g.kh).flat_map(|ki| (0..g.kw).map(move |kj| (ki, kj)));
            match self.pass {
                Pass::Forward => {
                    ph.scatter(&self.a[plane * hw..(plane + 1) * hw], &mut buf);
                    wide.fill(self.bias.map_or(T::ZERO, |b| b[c]));
                    for ((ki, kj), &wv) in taps.zip(wc) {
                        let s = ph.tap(ki, kj);
                        axpy::<T, FMA>(&mut wide, wv, &buf[s..s + span]);
                    }
                    let y = &mut out[i * n..(i + 1) * n];
                    for (d, s) in y.chunks_exact_mut(g.ow).zip(wide.chunks_exact(ph.wq)) {
                        d.copy_from_slice(&s[..g.ow]);
                    }
                }
                Pass::GradInput => {
                    ph.widen(&self.a[plane * n..(plane + 1) * n], &mut wide);
                    buf.fill(T::ZERO);
                    for ((ki, kj), &wv) in taps.zip(wc) {
                        let s = ph.tap(ki, kj);
                        axpy::<T, FMA>(&mut buf[s..s + span], wv, &wide);
                    }
                    ph.gather(&buf, &mut out[i * hw..(i + 1) * hw]);
                }
                Pass::GradWeight => {
                    ph.scatter(&self.a[plane * hw..(plane + 1) * hw], &mut buf);
                    ph.widen(&self.b[plane * n..(plane + 1) * n], &mut wide);
                    for ((ki, kj), acc) in taps.zip(&mut gw[c * kk..(c + 1) * kk]) {
                        let s = ph.tap(ki, kj);
                        *acc += dot::<T, FMA>(&buf[s..s + span], &wide);
                    }
                }
            }
        }
        gw
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
    if pass != Pass::GradWeight {
        return out;
    }
    let mut parts = parts.into_iter();
    let mut gw = parts.next().unwrap_or_default();
    for p in parts {
        gw.iter_mut().zip(p).for_each(|(a, v)| *a += v);
    }
    gw
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

    fn grads(
        &self,
        x: &Tensor,
        w: &Tensor,
        gy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let gy = gy.contiguous()?;
        let gx = x
            .track_op()
            .then(|| gy.apply_op2_no_bwd(w, &Grad(*self, Pass::GradInput)))
            .transpose()?;
        let gw = w
            .track_op()
            .then(|| x.apply_op2_no_bwd(&gy, &Grad(*self, Pass::GradWeight)))
            .transpose()?;
        Ok((gx, gw))
    }
}

impl CustomOp2 for DwOp {
    fn name(&self) -> &'static str {
        "tinykd-depthwise-conv2d"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        self.run(Pass::Forward, (s1, l1), (s2, l2), None)
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        gy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        self.grads(x, w, gy)
    }
}

impl CustomOp3 for DwOp {
    fn name(&self) -> &'static str {
        "tinykd-depthwise-conv2d-bias"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        self.run(Pass::Forward, (s1, l1), (s2, l2), Some((s3, l3)))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        bias: &Tensor,
        _res: &Tensor,
        gy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (gx, gw) = self.grads(x, w, gy)?;
        let gb = bias
            .track_op()
            .then(|| gy.contiguous()?.apply_op1_no_bwd(&BiasGrad))
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
