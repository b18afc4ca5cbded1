//! x86_64 AVX2 + FMA inner loops.
//!
//! int8 operands are sign-extended to int16 (`vpmovsxbw`) and multiplied with
//! `vpmaddwd`, whose pair sums are exact in int32 (at most 2·128² = 32768);
//! the faster `vpmaddubsw` saturates its int16 pair sums at −128·−128 and so
//! cannot be bit-identical to the scalar reference. Lanes accumulate with
//! wrapping int32 adds, so any summation order gives the reference's bits.
//! The float loops use FMA with four independent accumulators, which hides
//! the FMA latency; their results differ from the reference only by rounding.
//!
//! The path is taken when the build enables AVX2 and FMA or, with `std` (and
//! in tests), when the CPU reports both at run time. The public functions are
//! safe: they check [`available`] before entering the `#[target_feature]`
//! code and fall back to [`inner`] otherwise. Loads are unaligned, so slices
//! may start anywhere; tails shorter than a vector are done by [`inner`].

use core::arch::x86_64::*;

use super::generic::activation::Activation;
use super::generic::conv::ConvGeometry;
use super::generic::inner;
use super::lanes;
use crate::quant::{OutputStage, QElem};

/// The name [`super::simd_path`] reports for this path.
pub const NAME: &str = "avx2";

/// Whether this build and CPU can use the path.
#[inline]
pub fn available() -> bool {
    if cfg!(all(target_feature = "avx2", target_feature = "fma")) {
        return true;
    }
    #[cfg(any(test, feature = "std"))]
    {
        std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma")
    }
    #[cfg(not(any(test, feature = "std")))]
    {
        false
    }
}

/// See [`inner::dot_i8`].
#[inline]
pub fn dot_i8(a: &[i8], b: &[i8]) -> (i32, i32) {
    if !available() {
        return inner::dot_i8(a, b);
    }
    // SAFETY: `available` checked that the CPU supports AVX2 and FMA.
    unsafe { dot_i8_avx2(a, b) }
}

/// See [`inner::axpy_i8`].
#[inline]
pub fn axpy_i8(y: &mut [i32], alpha: i32, x: &[i8], bias: i32) {
    if !available() {
        return inner::axpy_i8(y, alpha, x, bias);
    }
    // SAFETY: `available` checked that the CPU supports AVX2 and FMA.
    unsafe { axpy_i8_avx2(y, alpha, x, bias) }
}

/// See [`inner::dot_f32`].
#[inline]
pub fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
    if !available() {
        return inner::dot_f32(a, b);
    }
    // SAFETY: `available` checked that the CPU supports AVX2 and FMA.
    unsafe { dot_f32_avx2(a, b) }
}

/// See [`inner::axpy_f32`].
#[inline]
pub fn axpy_f32(y: &mut [f32], alpha: f32, x: &[f32]) {
    if !available() {
        return inner::axpy_f32(y, alpha, x);
    }
    // SAFETY: `available` checked that the CPU supports AVX2 and FMA.
    unsafe { axpy_f32_avx2(y, alpha, x) }
}

/// See [`super::conv_tiled::conv2d_f32`].
#[inline]
pub fn conv2d_f32_tiled(
    g: &ConvGeometry,
    x: &[f32],
    w: &[f32],
    bias: Option<&[f32]>,
    act: Activation,
    y: &mut [f32],
) -> bool {
    // SAFETY: `available` checked that the CPU supports AVX2 and FMA.
    available() && unsafe { conv2d_f32_tiled_avx2(g, x, w, bias, act, y) }
}

/// The tiled conv compiled for AVX2 + FMA, so its lanes are `ymm` registers.
///
/// # Safety
/// The CPU must support AVX2 and FMA.
#[target_feature(enable = "avx2,fma")]
unsafe fn conv2d_f32_tiled_avx2(
    g: &ConvGeometry,
    x: &[f32],
    w: &[f32],
    bias: Option<&[f32]>,
    act: Activation,
    y: &mut [f32],
) -> bool {
    super::conv_tiled::conv2d_f32::<F32x8>(g, x, w, bias, act, y)
}

/// See [`super::conv_tiled::conv2d_i8_requant`].
#[inline]
pub fn conv2d_i8_requant_tiled<X: QElem, W: QElem, Y: QElem>(
    g: &ConvGeometry,
    x: &[X],
    zx: X,
    w: &[W],
    zw: &[W],
    out: &OutputStage<'_, Y>,
    y: &mut [Y],
) -> bool {
    // SAFETY: `available` checked that the CPU supports AVX2 and FMA.
    available() && unsafe { conv2d_i8_requant_tiled_avx2(g, x, zx, w, zw, out, y) }
}

/// The tiled int8 conv compiled for AVX2 + FMA.
///
/// # Safety
/// The CPU must support AVX2 and FMA.
#[target_feature(enable = "avx2,fma")]
unsafe fn conv2d_i8_requant_tiled_avx2<X: QElem, W: QElem, Y: QElem>(
    g: &ConvGeometry,
    x: &[X],
    zx: X,
    w: &[W],
    zw: &[W],
    out: &OutputStage<'_, Y>,
    y: &mut [Y],
) -> bool {
    super::conv_tiled::conv2d_i8_requant::<F32x8, X, W, Y>(g, x, zx, w, zw, out, y)
}

/// Eight f32 lanes in one `ymm` register. Its methods are only called from
/// code compiled with AVX2 and FMA (the `#[target_feature]` functions above,
/// into which they inline).
#[derive(Clone, Copy)]
struct F32x8(__m256);

impl lanes::F32x8 for F32x8 {
    #[inline(always)]
    unsafe fn load(p: *const f32) -> Self {
        // SAFETY: the caller guarantees 8 readable floats; AVX is enabled
        // wherever this inlines.
        F32x8(unsafe { _mm256_loadu_ps(p) })
    }

    #[inline(always)]
    unsafe fn store(self, p: *mut f32) {
        // SAFETY: as for `load`, with 8 writable floats.
        unsafe { _mm256_storeu_ps(p, self.0) }
    }

    #[inline(always)]
    fn splat(v: f32) -> Self {
        // SAFETY: AVX is enabled wherever this inlines.
        F32x8(unsafe { _mm256_set1_ps(v) })
    }

    #[inline(always)]
    fn mul_add(self, a: Self, b: Self) -> Self {
        // SAFETY: FMA is enabled wherever this inlines.
        F32x8(unsafe { _mm256_fmadd_ps(a.0, b.0, self.0) })
    }

    #[inline(always)]
    fn relu(self) -> Self {
        // SAFETY: AVX is enabled wherever this inlines. `max(0, x)` returns
        // its second operand when either is NaN, so NaN stays NaN.
        F32x8(unsafe { _mm256_max_ps(_mm256_setzero_ps(), self.0) })
    }
}

/// Wrapping sum of the eight int32 lanes.
#[inline]
#[target_feature(enable = "avx2")]
fn hsum_i32(v: __m256i) -> i32 {
    let s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256::<1>(v));
    let s = _mm_add_epi32(s, _mm_unpackhi_epi64(s, s));
    let s = _mm_add_epi32(s, _mm_shuffle_epi32::<0b01>(s));
    _mm_cvtsi128_si32(s)
}

/// Sum of the eight f32 lanes.
#[inline]
#[target_feature(enable = "avx2")]
fn hsum_f32(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_movehdup_ps(s));
    _mm_cvtss_f32(s)
}

/// [`inner::dot_i8`], 32 elements per step.
///
/// # Safety
/// The CPU must support AVX2 and FMA.
#[target_feature(enable = "avx2,fma")]
unsafe fn dot_i8_avx2(a: &[i8], b: &[i8]) -> (i32, i32) {
    debug_assert_eq!(a.len(), b.len());
    let n = a.len().min(b.len());
    let (a32, b32) = (a[..n].chunks_exact(32), b[..n].chunks_exact(32));
    let done = n - a32.remainder().len();
    let ones = _mm256_set1_epi16(1);
    let (mut ab, mut sb) = (_mm256_setzero_si256(), _mm256_setzero_si256());
    for (pa, pb) in a32.zip(b32) {
        let (pa, pb) = (pa.as_ptr().cast::<__m128i>(), pb.as_ptr().cast::<__m128i>());
        // SAFETY: each chunk holds 32 bytes, so both 16-byte halves (at
        // offsets 0 and 16) lie inside it; `loadu` has no alignment needs.
        let (a0, a1, b0, b1) = unsafe {
            (
                _mm_loadu_si128(pa),
                _mm_loadu_si128(pa.add(1)),
                _mm_loadu_si128(pb),
                _mm_loadu_si128(pb.add(1)),
            )
        };
        let (a0, a1) = (_mm256_cvtepi8_epi16(a0), _mm256_cvtepi8_epi16(a1));
        let (b0, b1) = (_mm256_cvtepi8_epi16(b0), _mm256_cvtepi8_epi16(b1));
        let p = _mm256_add_epi32(_mm256_madd_epi16(a0, b0), _mm256_madd_epi16(a1, b1));
        ab = _mm256_add_epi32(ab, p);
        // |b0 + b1| ≤ 256 fits int16, so one multiply-add by 1 sums 32 of b.
        sb = _mm256_add_epi32(sb, _mm256_madd_epi16(_mm256_add_epi16(b0, b1), ones));
    }
    let (tab, tsb) = inner::dot_i8(&a[done..n], &b[done..n]);
    (
        hsum_i32(ab).wrapping_add(tab),
        hsum_i32(sb).wrapping_add(tsb),
    )
}

/// [`inner::axpy_i8`], 16 elements per step.
///
/// # Safety
/// The CPU must support AVX2 and FMA.
#[target_feature(enable = "avx2,fma")]
unsafe fn axpy_i8_avx2(y: &mut [i32], alpha: i32, x: &[i8], bias: i32) {
    debug_assert!(x.len() >= y.len());
    let n = y.len().min(x.len());
    let (va, vb) = (_mm256_set1_epi32(alpha), _mm256_set1_epi32(bias));
    let mut y16 = y[..n].chunks_exact_mut(16);
    let mut x16 = x[..n].chunks_exact(16);
    for (py, px) in (&mut y16).zip(&mut x16) {
        let px = px.as_ptr().cast::<__m128i>();
        let py = py.as_mut_ptr().cast::<__m256i>();
        // SAFETY: the x chunk holds 16 bytes and the y chunk 16 int32 (two
        // 32-byte vectors at offsets 0 and 32); all accesses are unaligned.
        let (xs, y0, y1) = unsafe {
            (
                _mm_loadu_si128(px),
                _mm256_loadu_si256(py),
                _mm256_loadu_si256(py.add(1)),
            )
        };
        let x0 = _mm256_cvtepi8_epi32(xs);
        let x1 = _mm256_cvtepi8_epi32(_mm_unpackhi_epi64(xs, xs));
        // `mullo` keeps the low 32 bits of the product: the wrapping multiply.
        let y0 = _mm256_add_epi32(y0, _mm256_add_epi32(_mm256_mullo_epi32(x0, va), vb));
        let y1 = _mm256_add_epi32(y1, _mm256_add_epi32(_mm256_mullo_epi32(x1, va), vb));
        // SAFETY: the same two in-bounds y vectors that were loaded above.
        unsafe {
            _mm256_storeu_si256(py, y0);
            _mm256_storeu_si256(py.add(1), y1);
        }
    }
    inner::axpy_i8(y16.into_remainder(), alpha, x16.remainder(), bias);
}

/// [`inner::dot_f32`], 32 elements per step in four accumulators.
///
/// # Safety
/// The CPU must support AVX2 and FMA.
#[target_feature(enable = "avx2,fma")]
unsafe fn dot_f32_avx2(a: &[f32], b: &[f32]) -> f32 {
    debug_assert_eq!(a.len(), b.len());
    let n = a.len().min(b.len());
    let (a32, b32) = (a[..n].chunks_exact(32), b[..n].chunks_exact(32));
    let done = n - a32.remainder().len();
    let mut acc = [_mm256_setzero_ps(); 4];
    for (pa, pb) in a32.zip(b32) {
        for (k, s) in acc.iter_mut().enumerate() {
            // SAFETY: each chunk holds 32 floats, so the 8 at offset 8·k
            // (k < 4) lie inside it; `loadu` has no alignment needs.
            let (va, vb) = unsafe {
                (
                    _mm256_loadu_ps(pa.as_ptr().add(8 * k)),
                    _mm256_loadu_ps(pb.as_ptr().add(8 * k)),
                )
            };
            *s = _mm256_fmadd_ps(va, vb, *s);
        }
    }
    let s = _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]));
    hsum_f32(s) + inner::dot_f32(&a[done..n], &b[done..n])
}

/// [`inner::axpy_f32`], 32 elements per step.
///
/// # Safety
/// The CPU must support AVX2 and FMA.
#[target_feature(enable = "avx2,fma")]
unsafe fn axpy_f32_avx2(y: &mut [f32], alpha: f32, x: &[f32]) {
    debug_assert!(x.len() >= y.len());
    let n = y.len().min(x.len());
    let va = _mm256_set1_ps(alpha);
    let mut y32 = y[..n].chunks_exact_mut(32);
    let mut x32 = x[..n].chunks_exact(32);
    for (py, px) in (&mut y32).zip(&mut x32) {
        for k in 0..4 {
            // SAFETY: both chunks hold 32 floats, so the 8 at offset 8·k
            // (k < 4) lie inside them; all accesses are unaligned.
            unsafe {
                let p = py.as_mut_ptr().add(8 * k);
                let v = _mm256_loadu_ps(px.as_ptr().add(8 * k));
                _mm256_storeu_ps(p, _mm256_fmadd_ps(va, v, _mm256_loadu_ps(p)));
            }
        }
    }
    inner::axpy_f32(y32.into_remainder(), alpha, x32.remainder());
}

#[cfg(test)]
mod tests {
    #[test]
    fn matches_the_scalar_reference() {
        super::super::check::against_reference(
            super::dot_i8,
            super::axpy_i8,
            super::dot_f32,
            super::axpy_f32,
        );
    }

    #[test]
    fn available_follows_the_cpu() {
        let has = is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma");
        assert_eq!(super::available(), has);
    }
}
