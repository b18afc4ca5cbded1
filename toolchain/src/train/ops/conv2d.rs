//! Dense 2-D convolution (groups = 1) as a candle custom op: im2col + GEMM
//! forward, GEMM + col2im input gradient and GEMM-over-im2col weight
//! gradient, each a custom op so backward never goes through candle's
//! conv-transpose path. Images are split over threads; each thread unfolds
//! one image at a time into a buffer that stays in L2 for its GEMM.

use super::im2col::{by_dtype, col2im, im2col, split, threads_for, BiasGrad, Elem, Geom};
use candle_core::backend::BackendStorage;
use candle_core::{bail, CpuStorage, CustomOp2, CustomOp3, DType, Layout, Result, Shape, Tensor};
use gemm::Parallelism;

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
    if !x.device().is_cpu() || !w.device().is_cpu() {
        bail!("conv2d: tinykd's conv op is CPU-only");
    }
    if x.dtype() != w.dtype() || !matches!(x.dtype(), DType::F32 | DType::F64) {
        bail!(
            "conv2d: need f32 or f64 for both, got {:?} and {:?}",
            x.dtype(),
            w.dtype()
        );
    }
    let op = ConvOp {
        g: Geom::new(c, h, wd, kh, kw, p.stride, p.padding, p.dilation)?,
        oc,
    };
    let (x, w) = (x.contiguous()?, w.contiguous()?);
    match bias {
        None => x.apply_op2(&w, op),
        Some(b) => {
            if b.dims() != [oc] || b.dtype() != x.dtype() {
                bail!(
                    "conv2d: bias must be [{oc}] {:?}, got {:?}",
                    x.dtype(),
                    b.shape()
                );
            }
            x.apply_op3(&w, &b.contiguous()?, op)
        }
    }
}

/// `dst[m×n] (+)= lhs[m×k] · rhs[k×n]`; each matrix is a slice with (row, column) strides.
#[allow(clippy::too_many_arguments)]
fn matmul<T: Elem>(
    (m, n, k): (usize, usize, usize),
    dst: &mut [T],
    dst_s: (usize, usize),
    accumulate: bool,
    lhs: &[T],
    lhs_s: (usize, usize),
    rhs: &[T],
    rhs_s: (usize, usize),
    par: Parallelism,
) {
    let fits = |len: usize, (r, c): (usize, usize), (rs, cs): (usize, usize)| {
        r == 0 || c == 0 || (r - 1) * rs + (c - 1) * cs < len
    };
    assert!(fits(dst.len(), (m, n), dst_s) && fits(lhs.len(), (m, k), lhs_s));
    assert!(fits(rhs.len(), (k, n), rhs_s));
    // SAFETY: the asserts above keep every index the GEMM touches inside its slice.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            dst_s.1 as isize,
            dst_s.0 as isize,
            accumulate,
            lhs.as_ptr(),
            lhs_s.1 as isize,
            lhs_s.0 as isize,
            rhs.as_ptr(),
            rhs_s.1 as isize,
            rhs_s.0 as isize,
            T::ONE,
            T::ONE,
            false,
            false,
            false,
            par,
        )
    }
}

/// GEMM-internal threads, used only when there are fewer images than threads.
fn inner_par(items: usize, threads: usize) -> Parallelism {
    let n = candle_core::utils::get_num_threads();
    if items == 1 && threads == 1 && n > 1 {
        Parallelism::Rayon(n)
    } else {
        Parallelism::None
    }
}

/// Forward: `y[b] = W · im2col(x[b]) (+ bias)`.
fn forward<T: Elem>(x: &[T], w: &[T], bias: Option<&[T]>, b: usize, g: &Geom, oc: usize) -> Vec<T> {
    let (k, n, chw) = (g.k(), g.n(), g.c * g.h * g.w);
    let mut y = vec![T::ZERO; b * oc * n];
    let threads = threads_for(b, 2 * b * oc * k * n);
    let par = inner_par(b, threads);
    split(&mut y, oc * n, b, threads, |range, ys| {
        let mut col = vec![T::ZERO; if g.col_is_input() { 0 } else { k * n }];
        for (yi, bi) in ys.chunks_exact_mut(oc * n).zip(range) {
            let xi = &x[bi * chw..(bi + 1) * chw];
            let cols: &[T] = if g.col_is_input() {
                xi
            } else {
                im2col(xi, g, &mut col);
                &col
            };
            if let Some(bias) = bias {
                for (row, &bv) in yi.chunks_exact_mut(n).zip(bias) {
                    row.fill(bv);
                }
            }
            matmul(
                (oc, n, k),
                yi,
                (n, 1),
                bias.is_some(),
                w,
                (k, 1),
                cols,
                (n, 1),
                par,
            );
        }
    });
    y
}

/// Input gradient: `gx[b] = col2im(Wᵀ · gy[b])`.
fn grad_input<T: Elem>(gy: &[T], w: &[T], b: usize, g: &Geom, oc: usize) -> Vec<T> {
    let (k, n, chw) = (g.k(), g.n(), g.c * g.h * g.w);
    let mut gx = vec![T::ZERO; b * chw];
    let threads = threads_for(b, 2 * b * oc * k * n);
    let par = inner_par(b, threads);
    split(&mut gx, chw, b, threads, |range, gxs| {
        let mut col = vec![T::ZERO; if g.col_is_input() { 0 } else { k * n }];
        for (gxi, bi) in gxs.chunks_exact_mut(chw).zip(range) {
            let gyi = &gy[bi * oc * n..(bi + 1) * oc * n];
            let dst = if g.col_is_input() {
                &mut *gxi
            } else {
                &mut col[..]
            };
            matmul((k, n, oc), dst, (n, 1), false, w, (1, k), gyi, (n, 1), par);
            if !g.col_is_input() {
                col2im(&col, g, gxi);
            }
        }
    });
    gx
}

/// Weight gradient: `gw = Σ_b gy[b] · im2col(x[b])ᵀ`, one partial sum per thread.
fn grad_weight<T: Elem>(x: &[T], gy: &[T], b: usize, g: &Geom, oc: usize) -> Vec<T> {
    let (k, n, chw) = (g.k(), g.n(), g.c * g.h * g.w);
    let threads = threads_for(b, 2 * b * oc * k * n);
    let par = inner_par(b, threads);
    let parts = split(&mut [], 0, b, threads, |range, _: &mut [T]| {
        let mut gw = vec![T::ZERO; oc * k];
        let mut col = vec![T::ZERO; if g.col_is_input() { 0 } else { k * n }];
        for bi in range {
            let xi = &x[bi * chw..(bi + 1) * chw];
            let cols: &[T] = if g.col_is_input() {
                xi
            } else {
                im2col(xi, g, &mut col);
                &col
            };
            let gyi = &gy[bi * oc * n..(bi + 1) * oc * n];
            matmul(
                (oc, k, n),
                &mut gw,
                (k, 1),
                true,
                gyi,
                (n, 1),
                cols,
                (1, n),
                par,
            );
        }
        gw
    });
    let mut parts = parts.into_iter();
    let mut gw = parts.next().unwrap_or_else(|| vec![T::ZERO; oc * k]);
    for part in parts {
        gw.iter_mut().zip(part).for_each(|(a, p)| *a += p);
    }
    gw
}

/// The forward op; its geometry was checked when it was built.
#[derive(Clone, Copy, Debug)]
struct ConvOp {
    g: Geom,
    oc: usize,
}

impl ConvOp {
    fn run(
        &self,
        xs: (&CpuStorage, &Layout),
        w: (&CpuStorage, &Layout),
        bias: Option<(&CpuStorage, &Layout)>,
    ) -> Result<(CpuStorage, Shape)> {
        let b = xs.1.dims()[0];
        let shape = Shape::from((b, self.oc, self.g.oh, self.g.ow));
        by_dtype!(xs.0.dtype(), T => {
            let bias = bias.map(|(s, l)| T::view(s, l)).transpose()?;
            let y = forward::<T>(T::view(xs.0, xs.1)?, T::view(w.0, w.1)?, bias, b, &self.g, self.oc);
            Ok((T::wrap(y), shape))
        })
    }

    fn grads(
        &self,
        x: &Tensor,
        w: &Tensor,
        gy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let gy = gy.contiguous()?;
        let (g, oc) = (self.g, self.oc);
        // Input images never need a gradient, so skip the costliest GEMM for them.
        let gx = x
            .track_op()
            .then(|| gy.apply_op2_no_bwd(w, &GradInput { g, oc }))
            .transpose()?;
        let gw = w
            .track_op()
            .then(|| x.apply_op2_no_bwd(&gy, &GradWeight { g, oc }))
            .transpose()?;
        Ok((gx, gw))
    }
}

impl CustomOp2 for ConvOp {
    fn name(&self) -> &'static str {
        "tinykd-conv2d"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        self.run((s1, l1), (s2, l2), None)
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

impl CustomOp3 for ConvOp {
    fn name(&self) -> &'static str {
        "tinykd-conv2d-bias"
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
        self.run((s1, l1), (s2, l2), Some((s3, l3)))
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
