//! im2col / col2im on the phase-plane layout, and the GEMM kernels of the
//! dense convolution built on them (forward, input and weight gradients).

use super::cpu::{split, sum, sum_parts, threads_for, Elem};
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

/// What follows the GEMM of a conv, fused into it so that the full-size
/// conv output never leaves the worker's cache: ReLU, then max pooling over
/// `pool`×`pool` windows with stride `pool` (1 = no pooling).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Epilogue {
    /// Clamp at zero (applied after pooling: max and ReLU commute).
    pub relu: bool,
    /// Pooling window and stride; 1 keeps every pixel.
    pub pool: usize,
}

impl Epilogue {
    /// A plain convolution.
    pub const NONE: Self = Self {
        relu: false,
        pool: 1,
    };

    /// Output size of the pooled planes for conv outputs of `oh×ow`.
    pub fn out_hw(&self, oh: usize, ow: usize) -> (usize, usize) {
        (oh / self.pool, ow / self.pool)
    }
}

/// One worker's buffers, sized for one image so they stay in L2.
struct Scratch<T> {
    plane: Vec<T>,
    col: Vec<T>,
    /// The conv output (or its gradient) `[oc, oh·wq]` in widened rows.
    wide: Vec<T>,
}

impl<T: Elem> Scratch<T> {
    fn new(p: &Phases, oc: usize) -> Self {
        let skip = p.g.col_is_input();
        let (k, span) = (p.g.k(), p.span());
        Self {
            plane: vec![T::ZERO; if skip { 0 } else { p.buf_len() }],
            col: vec![T::ZERO; if skip { 0 } else { k * span }],
            wide: vec![T::ZERO; oc * span],
        }
    }
}

/// The im2col matrix `[c·kh·kw, oh·wq]` of image `x` (or `x` itself when
/// the conv is 1×1 with unit stride and no padding, where `wq = ow`).
fn im2col<'a, T: Elem>(p: &Phases, x: &'a [T], plane: &mut [T], col: &'a mut [T]) -> &'a [T] {
    let (g, span) = (&p.g, p.span());
    if g.col_is_input() {
        return x;
    }
    let mut rows = col.chunks_exact_mut(span);
    for xc in x.chunks_exact(g.h * g.w) {
        p.scatter(xc, plane);
        for ki in 0..g.kh {
            for kj in 0..g.kw {
                let s = p.tap(ki, kj);
                rows.next()
                    .expect("col row")
                    .copy_from_slice(&plane[s..s + span]);
            }
        }
    }
    col
}

/// Pools (and clamps) one widened conv output plane (rows of `wq`) into
/// `y` (`pw` columns), writing each window's winner (`dy·k + dx`) to `idx`
/// when pooling. Selects rather than branches: on real data the
/// comparisons are random.
#[inline(always)]
fn pool_plane<T: Elem + PartialOrd>(
    src: &[T],
    (wq, k, pw): (usize, usize, usize),
    relu: bool,
    y: &mut [T],
    idx: &mut [u8],
) {
    for (py, yr) in y.chunks_exact_mut(pw).enumerate() {
        let rows = &src[py * k * wq..];
        for (px, yv) in yr.iter_mut().enumerate() {
            let (mut best, mut bi) = (rows[px * k], 0u8);
            for dy in 0..k {
                let cell = &rows[dy * wq + px * k..][..k];
                for (dx, &v) in cell.iter().enumerate() {
                    let gt = v > best;
                    best = if gt { v } else { best };
                    bi = if gt { (dy * k + dx) as u8 } else { bi };
                }
            }
            // Written so that a NaN maximum stays NaN (ReLU of NaN).
            *yv = if relu && best <= T::ZERO {
                T::ZERO
            } else {
                best
            };
            if k > 1 {
                idx[py * pw + px] = bi;
            }
        }
    }
}

/// Runs `f(k)` with `k` a literal for the common windows, so the kernels specialise.
#[inline(always)]
fn with_pool<R>(k: usize, f: impl FnOnce(usize) -> R) -> R {
    match k {
        1 => f(1),
        2 => f(2),
        _ => f(k),
    }
}

/// Forward: `y[b] = epilogue(W · im2col(x[b]) + bias)`, `y` `[b, oc, ph, pw]`.
/// Returns `y` and, when pooling, each window's winner (one byte per output).
#[allow(clippy::too_many_arguments)]
pub fn forward<T: Elem + PartialOrd>(
    x: &[T],
    w: &[T],
    bias: Option<&[T]>,
    b: usize,
    g: &Geom,
    oc: usize,
    ep: Epilogue,
) -> (Vec<T>, Vec<u8>) {
    let p = Phases::new(*g);
    let (k, span, chw) = (g.k(), p.span(), g.c * g.h * g.w);
    let (ph, pw) = ep.out_hw(g.oh, g.ow);
    let out = oc * ph * pw;
    let mut y = vec![T::ZERO; b * out];
    let mut idx = vec![0u8; if ep.pool > 1 { b * out } else { 0 }];
    let flops = 2 * b * oc * k * g.n();
    let (threads, par) = (threads_for(b, flops), inner_par(b, flops));
    // Pair each image's output with its winner bytes and split the pairs.
    let mut pairs: Vec<(&mut [T], &mut [u8])> = if ep.pool > 1 {
        y.chunks_exact_mut(out)
            .zip(idx.chunks_exact_mut(out))
            .collect()
    } else {
        y.chunks_exact_mut(out).map(|y| (y, &mut [][..])).collect()
    };
    split(&mut pairs, 1, b, threads, |range, images| {
        let mut sc = Scratch::new(&p, oc);
        for ((yi, ii), bi) in images.iter_mut().zip(range) {
            let cols = im2col(&p, &x[bi * chw..(bi + 1) * chw], &mut sc.plane, &mut sc.col);
            if let Some(bias) = bias {
                for (row, &bv) in sc.wide.chunks_exact_mut(span).zip(bias) {
                    row.fill(bv);
                }
            }
            matmul(
                (oc, span, k),
                &mut sc.wide,
                (span, 1),
                bias.is_some(),
                w,
                (k, 1),
                cols,
                (span, 1),
                par,
            );
            if ep.pool == 1 {
                // Rows straight through (clamped), vectorised.
                for (yc, src) in yi.chunks_exact_mut(ph * pw).zip(sc.wide.chunks_exact(span)) {
                    for (yr, sr) in yc.chunks_exact_mut(pw).zip(src.chunks(p.wq)) {
                        for (y, &v) in yr.iter_mut().zip(&sr[..pw]) {
                            *y = if ep.relu && v <= T::ZERO { T::ZERO } else { v };
                        }
                    }
                }
                continue;
            }
            with_pool(ep.pool, |kp| {
                for c in 0..oc {
                    let plane = c * ph * pw..(c + 1) * ph * pw;
                    pool_plane(
                        &sc.wide[c * span..(c + 1) * span],
                        (p.wq, kp, pw),
                        ep.relu,
                        &mut yi[plane.clone()],
                        &mut ii[plane],
                    );
                }
            });
        }
    });
    (y, idx)
}

/// Gradients of [`forward`] from `gy` `[b, oc, ph, pw]`, the forward's
/// output `y` (for the ReLU mask) and winners `idx`, in one pass over the
/// images: `(gx, gw, gbias)`, `gx` only when `need_gx`.
#[allow(clippy::too_many_arguments)]
pub fn backward<T: Elem + PartialOrd>(
    x: &[T],
    w: &[T],
    gy: &[T],
    y: &[T],
    idx: &[u8],
    b: usize,
    g: &Geom,
    oc: usize,
    ep: Epilogue,
    need_gx: bool,
) -> (Option<Vec<T>>, Vec<T>, Vec<T>) {
    let p = Phases::new(*g);
    let (k, span, chw, hw) = (g.k(), p.span(), g.c * g.h * g.w, g.h * g.w);
    let (ph, pw) = ep.out_hw(g.oh, g.ow);
    let out = oc * ph * pw;
    let flops = 2 * b * oc * k * g.n() * if need_gx { 2 } else { 1 };
    let (threads, par) = (threads_for(b, flops), inner_par(b, flops));
    let mut gx = vec![T::ZERO; if need_gx { b * chw } else { 0 }];
    let item = if need_gx { chw } else { 0 };
    let parts = split(&mut gx, item, b, threads, |range, gxs| {
        let mut sc = Scratch::new(&p, oc);
        let col2im = need_gx && !g.col_is_input();
        let mut gx_col = vec![T::ZERO; if col2im { k * span } else { 0 }];
        // Not `sc.plane`: im2col relies on its padding slots staying zero.
        let mut gx_plane = vec![T::ZERO; if col2im { p.buf_len() } else { 0 }];
        let (mut gw, mut gb) = (vec![T::ZERO; oc * k], vec![T::ZERO; oc]);
        for (i, bi) in range.enumerate() {
            // The conv output's gradient, widened: each pooled gradient goes
            // to its window's winner, if the ReLU let it through.
            let (gyi, yi) = (&gy[bi * out..][..out], &y[bi * out..][..out]);
            if ep.pool == 1 {
                // Every kept pixel is written (masked values as zeros) and the
                // dropped columns are never touched, so no fill is needed and
                // the rows vectorise.
                for (c, gbc) in gb.iter_mut().enumerate() {
                    let plane = c * ph * pw..(c + 1) * ph * pw;
                    let (g, yv) = (&gyi[plane.clone()], &yi[plane]);
                    let dst = &mut sc.wide[c * span..(c + 1) * span];
                    for ((d, g), yv) in dst
                        .chunks_mut(p.wq)
                        .zip(g.chunks_exact(pw))
                        .zip(yv.chunks_exact(pw))
                    {
                        for ((d, &g), &yv) in d[..pw].iter_mut().zip(g).zip(yv) {
                            *d = if ep.relu && yv <= T::ZERO { T::ZERO } else { g };
                        }
                        *gbc += sum(&d[..pw]);
                    }
                }
            } else {
                sc.wide.fill(T::ZERO);
                with_pool(ep.pool, |kp| {
                    for (c, gbc) in gb.iter_mut().enumerate() {
                        let dst = &mut sc.wide[c * span..(c + 1) * span];
                        let mut total = T::ZERO;
                        for py in 0..ph {
                            for px in 0..pw {
                                let o = (c * ph + py) * pw + px;
                                if ep.relu && yi[o] <= T::ZERO {
                                    continue;
                                }
                                let win = idx[bi * out + o] as usize;
                                let (dy, dx) = (win / kp, win % kp);
                                dst[(py * kp + dy) * p.wq + px * kp + dx] = gyi[o];
                                total += gyi[o];
                            }
                        }
                        *gbc += total;
                    }
                });
            }
            let cols = im2col(&p, &x[bi * chw..(bi + 1) * chw], &mut sc.plane, &mut sc.col);
            // Dropped columns of the widened gradient are zero, so their
            // im2col values add nothing.
            matmul(
                (oc, k, span),
                &mut gw,
                (k, 1),
                true,
                &sc.wide,
                (span, 1),
                cols,
                (1, span),
                par,
            );
            if !need_gx {
                continue;
            }
            let gxi = &mut gxs[i * chw..(i + 1) * chw];
            // For a 1×1 unpadded conv the column matrix is the input gradient itself.
            let dst = if g.col_is_input() {
                &mut gxi[..]
            } else {
                &mut gx_col[..]
            };
            matmul(
                (k, span, oc),
                dst,
                (span, 1),
                false,
                w,
                (1, k),
                &sc.wide,
                (span, 1),
                par,
            );
            if g.col_is_input() {
                continue;
            }
            // col2im: each row adds onto its tap's span of the channel's phase planes.
            let mut rows = gx_col.chunks_exact(span);
            for gxc in gxi.chunks_exact_mut(hw) {
                gx_plane.fill(T::ZERO);
                for ki in 0..g.kh {
                    for kj in 0..g.kw {
                        let s = p.tap(ki, kj);
                        let row = rows.next().expect("col row");
                        gx_plane[s..s + span]
                            .iter_mut()
                            .zip(row)
                            .for_each(|(d, v)| *d += *v);
                    }
                }
                p.gather(&gx_plane, gxc);
            }
        }
        (gw, gb)
    });
    let (gws, gbs): (Vec<_>, Vec<_>) = parts.into_iter().unzip();
    (
        need_gx.then_some(gx),
        sum_parts(gws, oc * k),
        sum_parts(gbs, oc),
    )
}
