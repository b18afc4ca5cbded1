//! im2col / col2im on the phase-plane layout, and the GEMM kernels of the
//! dense convolution built on them (forward, input and weight gradients).

use super::cpu::{split, sum_parts, threads_for, Elem};
use candle_core::{bail, Result};
use gemm::Parallelism;
use std::ops::Range;

/// Geometry of a 2-D convolution on one NCHW image (channels `c`, OIHW kernel).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Geom {
    /// Input channels.
    pub c: usize,
    /// Input height.
    pub h: usize,
    /// Input width.
    pub w: usize,
    /// Kernel height.
    pub kh: usize,
    /// Kernel width.
    pub kw: usize,
    /// Stride (height, width).
    pub stride: (usize, usize),
    /// Symmetric zero padding (height, width).
    pub pad: (usize, usize),
    /// Dilation (height, width).
    pub dil: (usize, usize),
    /// Output height.
    pub oh: usize,
    /// Output width.
    pub ow: usize,
}

impl Geom {
    /// Checks the sizes and derives the output size.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        c: usize,
        h: usize,
        w: usize,
        kh: usize,
        kw: usize,
        stride: (usize, usize),
        pad: (usize, usize),
        dil: (usize, usize),
    ) -> Result<Self> {
        if stride.0 == 0 || stride.1 == 0 || dil.0 == 0 || dil.1 == 0 || kh == 0 || kw == 0 {
            bail!("conv2d: stride, dilation and kernel size must be positive");
        }
        let span_h = dil.0 * (kh - 1) + 1;
        let span_w = dil.1 * (kw - 1) + 1;
        if h + 2 * pad.0 < span_h || w + 2 * pad.1 < span_w {
            bail!("conv2d: kernel {kh}x{kw} larger than padded input {h}x{w}");
        }
        let oh = (h + 2 * pad.0 - span_h) / stride.0 + 1;
        let ow = (w + 2 * pad.1 - span_w) / stride.1 + 1;
        Ok(Self {
            c,
            h,
            w,
            kh,
            kw,
            stride,
            pad,
            dil,
            oh,
            ow,
        })
    }

    /// Rows of the im2col matrix (`c·kh·kw`).
    pub fn k(&self) -> usize {
        self.c * self.kh * self.kw
    }

    /// Output pixels per channel (`oh·ow`), the columns of the im2col matrix.
    pub fn n(&self) -> usize {
        self.oh * self.ow
    }

    /// True when the im2col matrix is the image itself (1×1, stride 1, no padding).
    /// Only then is it skipped: the phase layout handles every other case.
    pub fn col_is_input(&self) -> bool {
        self.kh == 1 && self.kw == 1 && self.stride == (1, 1) && self.pad == (0, 0)
    }
}

/// Output indices `[lo, hi)` whose input index `o·stride + off` lies in `[0, len)`.
#[inline]
pub fn valid(out: usize, len: usize, stride: usize, off: isize) -> Range<usize> {
    let lo = if off >= 0 {
        0
    } else {
        (off.unsigned_abs()).div_ceil(stride)
    };
    let room = len as isize - off;
    let hi = if room <= 0 {
        0
    } else {
        ((room - 1) as usize / stride + 1).min(out)
    };
    lo.min(hi)..hi
}

/// Zero-padded "phase planes" of one image plane, the layout every conv
/// kernel here runs on. Padded pixel `(i, j)` lives in phase
/// `(i % sh, j % sw)` at row `i / sh`, column `j / sw`, in planes of `wq`
/// columns; then every kernel tap reads one contiguous run of `oh·wq` values
/// (its "span"), output rows being `wq` wide with `wq − ow` dropped columns.
/// Stride and dilation thus cost nothing in the inner loops, and building
/// the im2col matrix is one copy per (channel, tap) instead of one per row.
pub struct Phases {
    /// The convolution this layout serves.
    pub g: Geom,
    /// Rows per phase plane.
    pub hq: usize,
    /// Columns per phase plane (also the width of a widened output row).
    pub wq: usize,
}

impl Phases {
    /// Layout for `g`.
    pub fn new(g: Geom) -> Self {
        let (sh, sw) = g.stride;
        // One spare row absorbs the overrun of the dropped columns on the last row.
        let hq = g.oh + (g.kh - 1) * g.dil.0 / sh + 1;
        Self {
            g,
            hq,
            wq: g.ow + (g.kw - 1) * g.dil.1 / sw,
        }
    }

    /// Values in all phase planes of one image plane.
    pub fn buf_len(&self) -> usize {
        self.g.stride.0 * self.g.stride.1 * self.hq * self.wq
    }

    /// Length of a widened output plane (`oh·wq`).
    pub fn span(&self) -> usize {
        self.g.oh * self.wq
    }

    /// Start of tap `(ki, kj)`'s span in one plane's phase buffer.
    pub fn tap(&self, ki: usize, kj: usize) -> usize {
        let (sh, sw) = self.g.stride;
        let (a, b) = (ki * self.g.dil.0, kj * self.g.dil.1);
        ((a % sh) * sw + b % sw) * self.hq * self.wq + (a / sh) * self.wq + b / sw
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

    /// Copies plane `x` `[h, w]` into phase planes `buf`. Slots no pixel maps
    /// to are left alone: they stay zero if `buf` is only ever scattered into.
    #[inline(always)]
    pub fn scatter<T: Elem>(&self, x: &[T], buf: &mut [T]) {
        let sw = self.g.stride.1;
        self.runs(|q, x0, len| {
            if sw == 1 {
                copy_run(&mut buf[q..q + len], &x[x0..x0 + len]);
            } else {
                for (j, d) in buf[q..q + len].iter_mut().enumerate() {
                    *d = x[x0 + j * sw];
                }
            }
        });
    }

    /// Copies phase planes `buf` back onto plane `x` `[h, w]`; pixels no tap
    /// reads keep their value.
    #[inline(always)]
    pub fn gather<T: Elem>(&self, buf: &[T], x: &mut [T]) {
        let sw = self.g.stride.1;
        self.runs(|q, x0, len| {
            if sw == 1 {
                copy_run(&mut x[x0..x0 + len], &buf[q..q + len]);
            } else {
                for (j, s) in buf[q..q + len].iter().enumerate() {
                    x[x0 + j * sw] = *s;
                }
            }
        });
    }

    /// Spreads rows of `ow` into rows of `wq`, leaving the extra columns
    /// alone (callers keep them zero by writing `dst` only through here).
    #[inline(always)]
    pub fn widen<T: Elem>(&self, src: &[T], dst: &mut [T]) {
        for (d, s) in dst
            .chunks_exact_mut(self.wq)
            .zip(src.chunks_exact(self.g.ow))
        {
            copy_run(&mut d[..self.g.ow], s);
        }
    }

    /// Drops the extra columns: rows of `wq` in `src` become rows of `ow` in `dst`.
    #[inline(always)]
    pub fn narrow<T: Elem>(&self, src: &[T], dst: &mut [T]) {
        for (d, s) in dst
            .chunks_exact_mut(self.g.ow)
            .zip(src.chunks_exact(self.wq))
        {
            copy_run(d, &s[..self.g.ow]);
        }
    }
}

/// `dst.copy_from_slice(src)` for the short runs of image rows, inlined as
/// 8-wide moves: a libc memcpy call per 14-pixel row costs more than the copy.
#[inline(always)]
pub fn copy_run<T: Copy>(dst: &mut [T], src: &[T]) {
    const B: usize = 8;
    let n = dst.len();
    assert_eq!(n, src.len());
    if n < B {
        dst.iter_mut().zip(src).for_each(|(d, s)| *d = *s);
        return;
    }
    for (d, s) in dst.chunks_exact_mut(B).zip(src.chunks_exact(B)) {
        let s: [T; B] = s.try_into().expect("block");
        *<&mut [T; B]>::try_from(d).expect("block") = s;
    }
    // The last block overlaps the previous one instead of a scalar tail.
    let s: [T; B] = src[n - B..].try_into().expect("block");
    *<&mut [T; B]>::try_from(&mut dst[n - B..]).expect("block") = s;
}

/// `dst[m×n] (+)= lhs[m×k] · rhs[k×n]`; each matrix is a slice with (row, column) strides.
#[allow(clippy::too_many_arguments)]
pub fn matmul<T: Elem>(
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

/// GEMM-internal threads: only for a single image big enough to share, as
/// otherwise the images themselves are split over the threads.
fn inner_par(items: usize, flops: usize) -> Parallelism {
    let n = candle_core::utils::get_num_threads();
    if items == 1 && n > 1 && flops >= 4_000_000 {
        Parallelism::Rayon(n)
    } else {
        Parallelism::None
    }
}

/// One worker's buffers, sized for one image so they stay in L2.
struct Scratch<T> {
    plane: Vec<T>,
    col: Vec<T>,
    wide: Vec<T>,
}

impl<T: Elem> Scratch<T> {
    fn new(p: &Phases, oc: usize) -> Self {
        let skip = p.g.col_is_input();
        let (k, span) = (p.g.k(), p.span());
        Self {
            plane: vec![T::ZERO; if skip { 0 } else { p.buf_len() }],
            col: vec![T::ZERO; if skip { 0 } else { k * span }],
            wide: vec![T::ZERO; if p.wq == p.g.ow { 0 } else { oc * span }],
        }
    }

    /// The im2col matrix `[c·kh·kw, oh·wq]` of image `x` (or `x` itself).
    fn col<'a>(&'a mut self, p: &Phases, x: &'a [T]) -> &'a [T] {
        let (g, span) = (&p.g, p.span());
        if g.col_is_input() {
            return x;
        }
        let mut rows = self.col.chunks_exact_mut(span);
        for xc in x.chunks_exact(g.h * g.w) {
            p.scatter(xc, &mut self.plane);
            for ki in 0..g.kh {
                for kj in 0..g.kw {
                    let s = p.tap(ki, kj);
                    rows.next()
                        .expect("col row")
                        .copy_from_slice(&self.plane[s..s + span]);
                }
            }
        }
        &self.col
    }

    /// `gy` `[oc, oh·ow]` with rows widened to `wq` (or `gy` itself).
    fn wide_gy<'a>(&'a mut self, p: &Phases, gy: &'a [T]) -> &'a [T] {
        if p.wq == p.g.ow {
            return gy;
        }
        let (n, span) = (p.g.n(), p.span());
        for (d, s) in self.wide.chunks_exact_mut(span).zip(gy.chunks_exact(n)) {
            p.widen(s, d);
        }
        &self.wide
    }
}

/// Forward: `y[b] = W · im2col(x[b]) (+ bias)`.
pub fn forward<T: Elem>(
    x: &[T],
    w: &[T],
    bias: Option<&[T]>,
    b: usize,
    g: &Geom,
    oc: usize,
) -> Vec<T> {
    let p = Phases::new(*g);
    let (k, n, span, chw) = (g.k(), g.n(), p.span(), g.c * g.h * g.w);
    let mut y = vec![T::ZERO; b * oc * n];
    let flops = 2 * b * oc * k * n;
    let (threads, par) = (threads_for(b, flops), inner_par(b, flops));
    split(&mut y, oc * n, b, threads, |range, ys| {
        let mut sc = Scratch::new(&p, oc);
        let mut wide = std::mem::take(&mut sc.wide);
        for (yi, bi) in ys.chunks_exact_mut(oc * n).zip(range) {
            let cols = sc.col(&p, &x[bi * chw..(bi + 1) * chw]);
            // Narrow outputs go straight into y; wide ones through `wide`.
            let dst = if wide.is_empty() {
                &mut yi[..]
            } else {
                &mut wide[..]
            };
            if let Some(bias) = bias {
                for (row, &bv) in dst.chunks_exact_mut(span).zip(bias) {
                    row.fill(bv);
                }
            }
            matmul(
                (oc, span, k),
                dst,
                (span, 1),
                bias.is_some(),
                w,
                (k, 1),
                cols,
                (span, 1),
                par,
            );
            if !wide.is_empty() {
                for (d, s) in yi.chunks_exact_mut(n).zip(wide.chunks_exact(span)) {
                    p.narrow(s, d);
                }
            }
        }
    });
    y
}

/// Input gradient: `gx[b] = col2im(Wᵀ · gy[b])`.
pub fn grad_input<T: Elem>(gy: &[T], w: &[T], b: usize, g: &Geom, oc: usize) -> Vec<T> {
    let p = Phases::new(*g);
    let (k, n, span, hw) = (g.k(), g.n(), p.span(), g.h * g.w);
    let mut gx = vec![T::ZERO; b * g.c * hw];
    let flops = 2 * b * oc * k * n;
    let (threads, par) = (threads_for(b, flops), inner_par(b, flops));
    split(&mut gx, g.c * hw, b, threads, |range, gxs| {
        let mut sc = Scratch::new(&p, oc);
        let (mut col, mut plane) = (std::mem::take(&mut sc.col), std::mem::take(&mut sc.plane));
        for (gxi, bi) in gxs.chunks_exact_mut(g.c * hw).zip(range) {
            let gyw = sc.wide_gy(&p, &gy[bi * oc * n..(bi + 1) * oc * n]);
            if g.col_is_input() {
                matmul((k, n, oc), gxi, (n, 1), false, w, (1, k), gyw, (n, 1), par);
                continue;
            }
            matmul(
                (k, span, oc),
                &mut col,
                (span, 1),
                false,
                w,
                (1, k),
                gyw,
                (span, 1),
                par,
            );
            // col2im: each row adds onto its tap's span of the channel's phase planes.
            let mut rows = col.chunks_exact(span);
            for gxc in gxi.chunks_exact_mut(hw) {
                plane.fill(T::ZERO);
                for ki in 0..g.kh {
                    for kj in 0..g.kw {
                        let s = p.tap(ki, kj);
                        let row = rows.next().expect("col row");
                        plane[s..s + span]
                            .iter_mut()
                            .zip(row)
                            .for_each(|(d, v)| *d += *v);
                    }
                }
                p.gather(&plane, gxc);
            }
        }
    });
    gx
}

/// Weight gradient: `gw = Σ_b gy[b] · im2col(x[b])ᵀ`, one partial sum per thread.
pub fn grad_weight<T: Elem>(x: &[T], gy: &[T], b: usize, g: &Geom, oc: usize) -> Vec<T> {
    let p = Phases::new(*g);
    let (k, n, span, chw) = (g.k(), g.n(), p.span(), g.c * g.h * g.w);
    let flops = 2 * b * oc * k * n;
    let (threads, par) = (threads_for(b, flops), inner_par(b, flops));
    let parts = split(&mut [], 0, b, threads, |range, _: &mut [T]| {
        let mut gw = vec![T::ZERO; oc * k];
        let mut sc = Scratch::new(&p, oc);
        let mut sc2 = Scratch {
            plane: vec![],
            col: vec![],
            wide: std::mem::take(&mut sc.wide),
        };
        for bi in range {
            let cols = sc.col(&p, &x[bi * chw..(bi + 1) * chw]);
            let gyw = sc2.wide_gy(&p, &gy[bi * oc * n..(bi + 1) * oc * n]);
            // Dropped columns of gyw are zero, so their im2col values add nothing.
            matmul(
                (oc, k, span),
                &mut gw,
                (k, 1),
                true,
                gyw,
                (span, 1),
                cols,
                (1, span),
                par,
            );
        }
        gw
    });
    sum_parts(parts, oc * k)
}
