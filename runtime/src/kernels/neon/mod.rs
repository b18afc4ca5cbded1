//! aarch64 NEON inner loops.
//!
//! int8 products are widened exactly (`smull`, at most 128² = 16384 in
//! int16) and pairwise added into int32 lanes (`sadalp`), which wrap as the
//! scalar reference does, so any summation order gives its bits. Multiply-
//! accumulating into int16 (`smlal`) would be one instruction fewer but
//! overflows at two −128·−128 products. With `target_feature = "dotprod"`
//! the loop is `sdot` instead (four products per int32 lane, exact), issued
//! by `asm!` because the dotprod intrinsics are not stable Rust; Σb is then
//! an `sdot` against a vector of ones. The float loops use FMA with four
//! independent accumulators to hide its latency; they differ from the
//! reference only by rounding.
//!
//! NEON is part of the AArch64 base, so every hosted aarch64 target enables
//! it; a target that does not (`aarch64-unknown-none-softfloat`) gets the
//! scalar reference. The public functions are safe: the `unsafe` is in the
//! loads and stores, each within its slice. Tails shorter than a vector are
//! done by [`inner`].

use core::arch::aarch64::*;

use super::generic::activation::Activation;
use super::generic::conv::ConvGeometry;
use super::generic::inner;
use super::lanes;
use crate::quant::{OutputStage, QElem};

/// The name [`super::simd_path`] reports for this path.
#[cfg(all(target_feature = "neon", target_feature = "dotprod"))]
pub const NAME: &str = "neon-dotprod";
/// The name [`super::simd_path`] reports for this path.
#[cfg(all(target_feature = "neon", not(target_feature = "dotprod")))]
pub const NAME: &str = "neon";
/// The name [`super::simd_path`] reports for this path.
#[cfg(not(target_feature = "neon"))]
pub const NAME: &str = "scalar";

/// See [`inner::dot_i8`].
#[inline]
pub fn dot_i8(a: &[i8], b: &[i8]) -> (i32, i32) {
    #[cfg(all(target_feature = "neon", target_feature = "dotprod"))]
    // SAFETY: the build enables NEON and dotprod for every function.
    return unsafe { dot_i8_sdot(a, b) };
    #[cfg(all(target_feature = "neon", not(target_feature = "dotprod")))]
    // SAFETY: the build enables NEON for every function.
    return unsafe { dot_i8_neon(a, b) };
    #[allow(unreachable_code)]
    inner::dot_i8(a, b)
}

/// See [`inner::axpy_i8`].
#[inline]
pub fn axpy_i8(y: &mut [i32], alpha: i32, x: &[i8], bias: i32) {
    #[cfg(target_feature = "neon")]
    // SAFETY: the build enables NEON for every function.
    return unsafe { axpy_i8_neon(y, alpha, x, bias) };
    #[allow(unreachable_code)]
    inner::axpy_i8(y, alpha, x, bias)
}

/// See [`inner::dot_f32`].
#[inline]
pub fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
    #[cfg(target_feature = "neon")]
    // SAFETY: the build enables NEON for every function.
    return unsafe { dot_f32_neon(a, b) };
    #[allow(unreachable_code)]
    inner::dot_f32(a, b)
}

/// See [`inner::axpy_f32`].
#[inline]
pub fn axpy_f32(y: &mut [f32], alpha: f32, x: &[f32]) {
    #[cfg(target_feature = "neon")]
    // SAFETY: the build enables NEON for every function.
    return unsafe { axpy_f32_neon(y, alpha, x) };
    #[allow(unreachable_code)]
    inner::axpy_f32(y, alpha, x)
}

/// [`inner::dot_i8`], 32 elements per step by `smull` + `sadalp`.
#[cfg(all(target_feature = "neon", not(target_feature = "dotprod")))]
#[inline]
#[target_feature(enable = "neon")]
fn dot_i8_neon(a: &[i8], b: &[i8]) -> (i32, i32) {
    debug_assert_eq!(a.len(), b.len());
    let n = a.len().min(b.len());
    let (a32, b32) = (a[..n].chunks_exact(32), b[..n].chunks_exact(32));
    let done = n - a32.remainder().len();
    let (mut ab0, mut ab1, mut sb) = (vdupq_n_s32(0), vdupq_n_s32(0), vdupq_n_s32(0));
    for (pa, pb) in a32.zip(b32) {
        let (pa, pb) = (pa.as_ptr(), pb.as_ptr());
        // SAFETY: each chunk holds 32 bytes, so the 16 at offsets 0 and 16
        // lie inside it; `ld1` has no alignment needs.
        let (a0, a1, b0, b1) = unsafe {
            (
                vld1q_s8(pa),
                vld1q_s8(pa.add(16)),
                vld1q_s8(pb),
                vld1q_s8(pb.add(16)),
            )
        };
        ab0 = vpadalq_s16(ab0, vmull_s8(vget_low_s8(a0), vget_low_s8(b0)));
        ab1 = vpadalq_s16(ab1, vmull_high_s8(a0, b0));
        ab0 = vpadalq_s16(ab0, vmull_s8(vget_low_s8(a1), vget_low_s8(b1)));
        ab1 = vpadalq_s16(ab1, vmull_high_s8(a1, b1));
        // Four bytes per int16 lane: at most 512 in magnitude, exact.
        sb = vpadalq_s16(sb, vpadalq_s8(vpaddlq_s8(b0), b1));
    }
    let (tab, tsb) = inner::dot_i8(&a[done..n], &b[done..n]);
    (
        vaddvq_s32(vaddq_s32(ab0, ab1)).wrapping_add(tab),
        vaddvq_s32(sb).wrapping_add(tsb),
    )
}

/// `acc + ` the four-products-per-lane dot of `a` and `b` (`sdot`).
#[cfg(all(target_feature = "neon", target_feature = "dotprod"))]
#[inline(always)]
fn sdot(mut acc: int32x4_t, a: int8x16_t, b: int8x16_t) -> int32x4_t {
    // SAFETY: the build enables dotprod; `sdot` reads and writes only the
    // three vector registers named here, no memory and no flags.
    unsafe {
        core::arch::asm!(
            "sdot {acc:v}.4s, {a:v}.16b, {b:v}.16b",
            acc = inout(vreg) acc,
            a = in(vreg) a,
            b = in(vreg) b,
            options(pure, nomem, nostack, preserves_flags),
        );
    }
    acc
}

/// [`inner::dot_i8`], 32 elements per step by `sdot`.
#[cfg(all(target_feature = "neon", target_feature = "dotprod"))]
#[inline]
#[target_feature(enable = "neon,dotprod")]
fn dot_i8_sdot(a: &[i8], b: &[i8]) -> (i32, i32) {
    debug_assert_eq!(a.len(), b.len());
    let n = a.len().min(b.len());
    let (a32, b32) = (a[..n].chunks_exact(32), b[..n].chunks_exact(32));
    let done = n - a32.remainder().len();
    let ones = vdupq_n_s8(1);
    let (mut ab0, mut ab1) = (vdupq_n_s32(0), vdupq_n_s32(0));
    let (mut sb0, mut sb1) = (vdupq_n_s32(0), vdupq_n_s32(0));
    for (pa, pb) in a32.zip(b32) {
        let (pa, pb) = (pa.as_ptr(), pb.as_ptr());
        // SAFETY: each chunk holds 32 bytes, so the 16 at offsets 0 and 16
        // lie inside it; `ld1` has no alignment needs.
        let (a0, a1, b0, b1) = unsafe {
            (
                vld1q_s8(pa),
                vld1q_s8(pa.add(16)),
                vld1q_s8(pb),
                vld1q_s8(pb.add(16)),
            )
        };
        ab0 = sdot(ab0, a0, b0);
        ab1 = sdot(ab1, a1, b1);
        sb0 = sdot(sb0, b0, ones);
        sb1 = sdot(sb1, b1, ones);
    }
    let (tab, tsb) = inner::dot_i8(&a[done..n], &b[done..n]);
    (
        vaddvq_s32(vaddq_s32(ab0, ab1)).wrapping_add(tab),
        vaddvq_s32(vaddq_s32(sb0, sb1)).wrapping_add(tsb),
    )
}

/// [`inner::axpy_i8`], 16 elements per step.
#[cfg(target_feature = "neon")]
#[inline]
#[target_feature(enable = "neon")]
fn axpy_i8_neon(y: &mut [i32], alpha: i32, x: &[i8], bias: i32) {
    debug_assert!(x.len() >= y.len());
    let n = y.len().min(x.len());
    let vb = vdupq_n_s32(bias);
    let mut y16 = y[..n].chunks_exact_mut(16);
    let mut x16 = x[..n].chunks_exact(16);
    for (py, px) in (&mut y16).zip(&mut x16) {
        let py = py.as_mut_ptr();
        // SAFETY: the x chunk holds 16 bytes and the y chunk 16 int32 (four
        // vectors at offsets 0, 4, 8, 12); `ld1` has no alignment needs.
        let (xs, ys) = unsafe {
            (
                vld1q_s8(px.as_ptr()),
                [
                    vld1q_s32(py),
                    vld1q_s32(py.add(4)),
                    vld1q_s32(py.add(8)),
                    vld1q_s32(py.add(12)),
                ],
            )
        };
        let (lo, hi) = (vmovl_s8(vget_low_s8(xs)), vmovl_high_s8(xs));
        let xw = [
            vmovl_s16(vget_low_s16(lo)),
            vmovl_high_s16(lo),
            vmovl_s16(vget_low_s16(hi)),
            vmovl_high_s16(hi),
        ];
        for (k, (yv, xv)) in ys.into_iter().zip(xw).enumerate() {
            // `mla` keeps the low 32 bits of the product: the wrapping multiply.
            let r = vmlaq_n_s32(vaddq_s32(yv, vb), xv, alpha);
            // SAFETY: the same in-bounds y vector (offset 4·k, k < 4) as loaded.
            unsafe { vst1q_s32(py.add(4 * k), r) };
        }
    }
    inner::axpy_i8(y16.into_remainder(), alpha, x16.remainder(), bias);
}

/// [`inner::dot_f32`], 16 elements per step in four accumulators.
#[cfg(target_feature = "neon")]
#[inline]
#[target_feature(enable = "neon")]
fn dot_f32_neon(a: &[f32], b: &[f32]) -> f32 {
    debug_assert_eq!(a.len(), b.len());
    let n = a.len().min(b.len());
    let (a16, b16) = (a[..n].chunks_exact(16), b[..n].chunks_exact(16));
    let done = n - a16.remainder().len();
    let mut acc = [vdupq_n_f32(0.0); 4];
    for (pa, pb) in a16.zip(b16) {
        for (k, s) in acc.iter_mut().enumerate() {
            // SAFETY: each chunk holds 16 floats, so the 4 at offset 4·k
            // (k < 4) lie inside it; `ld1` has no alignment needs.
            let (va, vb) = unsafe {
                (
                    vld1q_f32(pa.as_ptr().add(4 * k)),
                    vld1q_f32(pb.as_ptr().add(4 * k)),
                )
            };
            *s = vfmaq_f32(*s, va, vb);
        }
    }
    let s = vaddq_f32(vaddq_f32(acc[0], acc[1]), vaddq_f32(acc[2], acc[3]));
    vaddvq_f32(s) + inner::dot_f32(&a[done..n], &b[done..n])
}

/// [`inner::axpy_f32`], 16 elements per step.
#[cfg(target_feature = "neon")]
#[inline]
#[target_feature(enable = "neon")]
fn axpy_f32_neon(y: &mut [f32], alpha: f32, x: &[f32]) {
    debug_assert!(x.len() >= y.len());
    let n = y.len().min(x.len());
    let mut y16 = y[..n].chunks_exact_mut(16);
    let mut x16 = x[..n].chunks_exact(16);
    for (py, px) in (&mut y16).zip(&mut x16) {
        for k in 0..4 {
            // SAFETY: both chunks hold 16 floats, so the 4 at offset 4·k
            // (k < 4) lie inside them; `ld1`/`st1` have no alignment needs.
            unsafe {
                let p = py.as_mut_ptr().add(4 * k);
                let v = vld1q_f32(px.as_ptr().add(4 * k));
                vst1q_f32(p, vfmaq_n_f32(vld1q_f32(p), v, alpha));
            }
        }
    }
    inner::axpy_f32(y16.into_remainder(), alpha, x16.remainder());
}

/// See [`super::conv_tiled::conv2d_f32`].
#[cfg(target_feature = "neon")]
#[inline]
pub fn conv2d_f32_tiled(
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
#[cfg(target_feature = "neon")]
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
    super::conv_tiled::conv2d_i8_requant::<F32x8, X, W, Y>(g, x, zx, w, zw, out, y)
}

/// Eight f32 lanes in two `q` registers (the build enables NEON everywhere).
#[cfg(target_feature = "neon")]
#[derive(Clone, Copy)]
struct F32x8(float32x4_t, float32x4_t);

#[cfg(target_feature = "neon")]
impl lanes::F32x8 for F32x8 {
    #[inline(always)]
    unsafe fn load(p: *const f32) -> Self {
        // SAFETY: the caller guarantees 8 readable floats; `ld1` has no
        // alignment needs.
        unsafe { F32x8(vld1q_f32(p), vld1q_f32(p.add(4))) }
    }

    #[inline(always)]
    unsafe fn store(self, p: *mut f32) {
        // SAFETY: as for `load`, with 8 writable floats.
        unsafe {
            vst1q_f32(p, self.0);
            vst1q_f32(p.add(4), self.1);
        }
    }

    #[inline(always)]
    fn splat(v: f32) -> Self {
        // SAFETY: the build enables NEON (this impl's cfg).
        unsafe { F32x8(vdupq_n_f32(v), vdupq_n_f32(v)) }
    }

    #[inline(always)]
    fn mul_add(self, a: Self, b: Self) -> Self {
        // SAFETY: the build enables NEON (this impl's cfg).
        unsafe { F32x8(vfmaq_f32(self.0, a.0, b.0), vfmaq_f32(self.1, a.1, b.1)) }
    }

    #[inline(always)]
    fn relu(self) -> Self {
        // SAFETY: the build enables NEON (this impl's cfg). `fmax` returns
        // NaN when either operand is NaN.
        unsafe {
            let zero = vdupq_n_f32(0.0);
            F32x8(vmaxq_f32(self.0, zero), vmaxq_f32(self.1, zero))
        }
    }
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
    fn the_name_follows_the_build() {
        let want = if cfg!(target_feature = "dotprod") {
            "neon-dotprod"
        } else {
            "neon"
        };
        assert_eq!(super::NAME, want);
    }
}
