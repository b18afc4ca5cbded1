//! Shared pieces of the convolution ops: element trait, storage access,
//! im2col / col2im for one image, and a small scoped-thread splitter.

use candle_core::backend::BackendStorage;
use candle_core::{bail, CpuStorage, CustomOp1, Layout, Result, Shape};
use std::ops::Range;

/// Float element the conv kernels run on (f32 for training, f64 for gradient checks).
pub trait Elem:
    Copy
    + Send
    + Sync
    + Default
    + PartialEq
    + 'static
    + std::ops::Add<Output = Self>
    + std::ops::Mul<Output = Self>
    + std::ops::AddAssign
{
    /// Additive identity.
    const ZERO: Self;
    /// Multiplicative identity.
    const ONE: Self;
    /// `self * a + b`, fused when `FMA` (only pass true inside an FMA-enabled function).
    fn madd<const FMA: bool>(self, a: Self, b: Self) -> Self;
    /// The contiguous slice behind `layout` if `storage` holds this type.
    fn view<'a>(storage: &'a CpuStorage, layout: &Layout) -> Result<&'a [Self]>;
    /// Wraps a vector as candle CPU storage.
    fn wrap(v: Vec<Self>) -> CpuStorage;
}

macro_rules! impl_elem {
    ($t:ty, $variant:ident) => {
        impl Elem for $t {
            const ZERO: Self = 0.0;
            const ONE: Self = 1.0;
            #[inline(always)]
            fn madd<const FMA: bool>(self, a: Self, b: Self) -> Self {
                // Without the fma target feature mul_add is a slow libm call.
                if FMA {
                    self.mul_add(a, b)
                } else {
                    self * a + b
                }
            }
            fn view<'a>(storage: &'a CpuStorage, layout: &Layout) -> Result<&'a [Self]> {
                let CpuStorage::$variant(v) = storage else {
                    bail!("expected {} storage", stringify!($t))
                };
                match layout.contiguous_offsets() {
                    Some((a, b)) => Ok(&v[a..b]),
                    None => bail!("tinykd conv ops need contiguous inputs"),
                }
            }
            fn wrap(v: Vec<Self>) -> CpuStorage {
                CpuStorage::$variant(v)
            }
        }
    };
}
impl_elem!(f32, F32);
impl_elem!(f64, F64);

/// True when the running CPU has AVX2 and FMA, so the fused kernels may run.
pub fn has_fma() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

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

/// Visits every (row of the col matrix, output row, input row) with its column range.
#[inline(always)]
fn for_each_segment(
    g: &Geom,
    mut f: impl FnMut(usize, usize, Option<usize>, &Range<usize>, isize),
) {
    let (sh, sw) = g.stride;
    for c in 0..g.c {
        for ki in 0..g.kh {
            let offh = (ki * g.dil.0) as isize - g.pad.0 as isize;
            let rows = valid(g.oh, g.h, sh, offh);
            for kj in 0..g.kw {
                let offw = (kj * g.dil.1) as isize - g.pad.1 as isize;
                let cols = valid(g.ow, g.w, sw, offw);
                let r = (c * g.kh + ki) * g.kw + kj;
                for oh in 0..g.oh {
                    let src = rows
                        .contains(&oh)
                        .then(|| c * g.h * g.w + (oh * sh).wrapping_add_signed(offh) * g.w);
                    f(r, oh, src, &cols, offw);
                }
            }
        }
    }
}

/// Unfolds one image `[c, h, w]` into `col` `[c·kh·kw, oh·ow]` (row-major).
pub fn im2col<T: Elem>(x: &[T], g: &Geom, col: &mut [T]) {
    let (n, ow, sw) = (g.n(), g.ow, g.stride.1);
    for_each_segment(g, |r, oh, src, cols, offw| {
        let dst = &mut col[r * n + oh * ow..r * n + (oh + 1) * ow];
        let Some(src) = src else {
            dst.fill(T::ZERO);
            return;
        };
        dst[..cols.start].fill(T::ZERO);
        dst[cols.end..].fill(T::ZERO);
        let first = src.wrapping_add_signed(cols.start as isize * sw as isize + offw);
        if sw == 1 {
            let len = cols.len();
            dst[cols.clone()].copy_from_slice(&x[first..first + len]);
        } else {
            for (d, o) in dst[cols.clone()].iter_mut().zip(0..) {
                *d = x[first + o * sw];
            }
        }
    });
}

/// Folds `col` `[c·kh·kw, oh·ow]` back onto one image, adding into `gx` `[c, h, w]`.
pub fn col2im<T: Elem>(col: &[T], g: &Geom, gx: &mut [T]) {
    let (n, ow, sw) = (g.n(), g.ow, g.stride.1);
    for_each_segment(g, |r, oh, src, cols, offw| {
        let Some(src) = src else { return };
        let seg = &col[r * n + oh * ow + cols.start..r * n + oh * ow + cols.end];
        let first = src.wrapping_add_signed(cols.start as isize * sw as isize + offw);
        if sw == 1 {
            for (d, s) in gx[first..first + seg.len()].iter_mut().zip(seg) {
                *d += *s;
            }
        } else {
            for (s, o) in seg.iter().zip(0..) {
                gx[first + o * sw] += *s;
            }
        }
    });
}

/// Threads to use for `items` independent items costing about `flops` in all.
pub fn threads_for(items: usize, flops: usize) -> usize {
    // Below ~1 MFLOP a spawned thread costs more than it saves.
    let by_work = (flops / 1_000_000).max(1);
    candle_core::utils::get_num_threads()
        .min(items)
        .min(by_work)
        .max(1)
}

/// Splits `0..items` into `threads` contiguous ranges, hands each its slice of
/// `out` (`item_len` values per item), and returns the per-range results in order.
pub fn split<T: Send, R: Send>(
    out: &mut [T],
    item_len: usize,
    items: usize,
    threads: usize,
    f: impl Fn(Range<usize>, &mut [T]) -> R + Sync,
) -> Vec<R> {
    let threads = threads.clamp(1, items.max(1));
    let per = items.div_ceil(threads);
    if threads == 1 {
        return vec![f(0..items, out)];
    }
    std::thread::scope(|s| {
        let mut rest = out;
        let mut handles = Vec::with_capacity(threads);
        let mut start = 0;
        while start < items {
            let end = (start + per).min(items);
            let (mine, tail) = std::mem::take(&mut rest).split_at_mut((end - start) * item_len);
            rest = tail;
            let f = &f;
            if end == items {
                // The calling thread takes the last range instead of idling.
                let last = f(start..end, mine);
                let mut results: Vec<R> = handles
                    .into_iter()
                    .map(|h: std::thread::ScopedJoinHandle<R>| {
                        h.join().expect("conv worker panicked")
                    })
                    .collect();
                results.push(last);
                return results;
            }
            handles.push(s.spawn(move || f(start..end, mine)));
            start = end;
        }
        handles
            .into_iter()
            .map(|h| h.join().expect("conv worker panicked"))
            .collect()
    })
}

/// Runs `$body` with `$t` bound to the element type of `$dtype` (f32 or f64).
macro_rules! by_dtype {
    ($dtype:expr, $t:ident => $body:expr) => {
        match $dtype {
            candle_core::DType::F32 => {
                type $t = f32;
                $body
            }
            candle_core::DType::F64 => {
                type $t = f64;
                $body
            }
            dt => candle_core::bail!("tinykd conv ops: unsupported dtype {dt:?}"),
        }
    };
}
pub(crate) use by_dtype;

/// `gy [B, C, OH, OW] → gb [C]`: the gradient of a per-channel bias.
pub struct BiasGrad;

impl CustomOp1 for BiasGrad {
    fn name(&self) -> &'static str {
        "tinykd-bias-grad"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let (b, c) = (l.dims()[0], l.dims()[1]);
        let n = (l.shape().elem_count() / (b * c).max(1)).max(1);
        by_dtype!(s.dtype(), T => {
            let mut gb = vec![T::ZERO; c];
            for (i, row) in T::view(s, l)?.chunks_exact(n).enumerate() {
                gb[i % c] += sum(row);
            }
            Ok((T::wrap(gb), Shape::from(c)))
        })
    }
}

/// Sum with sixteen partial sums, so the loop vectorises without fast-math.
#[inline(always)]
pub fn sum<T: Elem>(v: &[T]) -> T {
    let mut acc = [T::ZERO; 16];
    let mut it = v.chunks_exact(16);
    for c in &mut it {
        acc.iter_mut().zip(c).for_each(|(a, x)| *a += *x);
    }
    it.remainder().iter().for_each(|x| acc[0] += *x);
    acc.iter().fold(T::ZERO, |a, x| a + *x)
}
