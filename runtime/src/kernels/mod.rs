//! Compute kernels. `generic` is the scalar reference, always built; the
//! SIMD paths per architecture implement the kernels' inner loops
//! ([`dot_i8`], [`axpy_i8`], [`dot_f32`], [`axpy_f32`]) and are checked
//! against [`generic::inner`] on their own target (under QEMU here): int8
//! bit-identical, f32 within 1e-5 relative.
//!
//! Which path a build uses is fixed by the target and its features
//! ([`simd_path`] names it); x86_64 builds with `std` also detect AVX2 + FMA
//! at run time. The cargo feature `scalar` turns every SIMD path off (the
//! cross-target equality test compares the reference against each path). Where stable Rust exposes neither the intrinsics nor the
//! `target_feature` cfg (32-bit Arm, RISC-V V), the path is inline `asm!`
//! behind a cargo feature of this crate.
//!
//! | path | target | enabled by |
//! | --- | --- | --- |
//! | `avx2` | x86_64 | `target_feature = "avx2"` and `"fma"`, or run-time detection with `std` |
//! | `neon` | aarch64 | always (NEON is part of the AArch64 base); `sdot` with `target_feature = "dotprod"` |
//! | `armv7-neon` | armv7 Linux | cargo feature `arm-neon` (inline asm) |
//! | `dsp` | Cortex-M4/M7 | cargo feature `arm-dsp` (inline asm: SMLAD, SXTB16) |
//! | `rvv` | riscv64 | cargo feature `rvv` (inline asm, RVV 1.0) |
//!
//! Stride-1 convolutions (f32, and int8 where exact) take [`conv_tiled`] on
//! the paths with a float vector type ([`lanes::F32x8`]: AVX2, NEON): one
//! algorithm written against the lane trait, instantiated per path, with
//! registers holding 4 output channels × 16 positions across the whole
//! reduction. Elsewhere (Cortex-M, RISC-V, `scalar`) and for strided convs
//! the direct kernels in [`generic`] run, on the inner loops above.

pub mod conv_tiled;
pub mod generic;
pub mod lanes;

#[cfg(all(target_arch = "arm", feature = "arm-neon"))]
pub mod armv7;
#[cfg(target_arch = "x86_64")]
pub mod avx2;
#[cfg(all(target_arch = "arm", feature = "arm-dsp", not(feature = "arm-neon")))]
pub mod dsp;
#[cfg(target_arch = "aarch64")]
pub mod neon;
#[cfg(all(target_arch = "riscv64", feature = "rvv"))]
pub mod rvv;

use crate::quant::{OutputStage, QElem};
use generic::inner;

/// On x86_64, slices shorter than this take the scalar loop, inlined into
/// the kernel: a call into the AVX2 path (not inlinable across
/// `target_feature`, plus the run-time feature check) costs more than it
/// saves on a 7- or 14-wide conv row (measured on the DS-CNN student: AVX2 on
/// every row made the int8 conv 1.4× slower than scalar). Elsewhere the SIMD
/// paths win even on short rows (Cortex-M4 DSP: 28.8M vs 30.0M instructions
/// for the int8 DS-CNN), so it applies on x86_64 only.
pub const SIMD_MIN_LEN: usize = 32;

/// Whether a slice of `len` stays on the inlined scalar loop (see [`SIMD_MIN_LEN`]).
#[inline(always)]
fn short(len: usize) -> bool {
    cfg!(target_arch = "x86_64") && len < SIMD_MIN_LEN
}

/// The inner loops of one SIMD path, each with the contract of the
/// function of the same name in [`generic::inner`].
macro_rules! dispatch {
    ($f:ident($($arg:expr),*)) => {{
        #[cfg(all(target_arch = "x86_64", not(feature = "scalar")))]
        if avx2::available() {
            return avx2::$f($($arg),*);
        }
        #[cfg(all(target_arch = "aarch64", not(feature = "scalar")))]
        return neon::$f($($arg),*);
        #[cfg(all(target_arch = "arm", feature = "arm-neon", not(feature = "scalar")))]
        return armv7::$f($($arg),*);
        #[cfg(all(
            target_arch = "arm",
            feature = "arm-dsp",
            not(feature = "arm-neon"),
            not(feature = "scalar")
        ))]
        return dsp::$f($($arg),*);
        #[cfg(all(target_arch = "riscv64", feature = "rvv", not(feature = "scalar")))]
        return rvv::$f($($arg),*);
        #[allow(unreachable_code)]
        inner::$f($($arg),*)
    }};
}

/// The SIMD path this build (and, on x86_64 with `std`, this CPU) uses:
/// `avx2`, `neon`, `neon-dotprod`, `armv7-neon`, `dsp`, `rvv` or `scalar`.
pub fn simd_path() -> &'static str {
    #[cfg(all(target_arch = "x86_64", not(feature = "scalar")))]
    if avx2::available() {
        return avx2::NAME;
    }
    #[cfg(all(target_arch = "aarch64", not(feature = "scalar")))]
    return neon::NAME;
    #[cfg(all(target_arch = "arm", feature = "arm-neon", not(feature = "scalar")))]
    return armv7::NAME;
    #[cfg(all(
        target_arch = "arm",
        feature = "arm-dsp",
        not(feature = "arm-neon"),
        not(feature = "scalar")
    ))]
    return dsp::NAME;
    #[cfg(all(target_arch = "riscv64", feature = "rvv", not(feature = "scalar")))]
    return rvv::NAME;
    #[allow(unreachable_code)]
    "scalar"
}

/// `(Σ a[p]·b[p], Σ b[p])` over two int8 slices of equal length, wrapping.
#[inline]
pub fn dot_i8(a: &[i8], b: &[i8]) -> (i32, i32) {
    if short(a.len()) {
        return inner::dot_i8(a, b);
    }
    dispatch!(dot_i8(a, b))
}

/// `y[j] += alpha · x[j] + bias` for every j in y (x at least as long), wrapping.
#[inline]
pub fn axpy_i8(y: &mut [i32], alpha: i32, x: &[i8], bias: i32) {
    if short(y.len()) {
        return inner::axpy_i8(y, alpha, x, bias);
    }
    dispatch!(axpy_i8(y, alpha, x, bias))
}

/// `Σ a[p]·b[p]` over two f32 slices of equal length.
#[inline]
pub fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
    if short(a.len()) {
        return inner::dot_f32(a, b);
    }
    dispatch!(dot_f32(a, b))
}

/// `y[j] += alpha · x[j]` for every j in y (x at least as long).
#[inline]
pub fn axpy_f32(y: &mut [f32], alpha: f32, x: &[f32]) {
    if short(y.len()) {
        return inner::axpy_f32(y, alpha, x);
    }
    dispatch!(axpy_f32(y, alpha, x))
}

/// Conv by [`conv_tiled`] where this build has a vector type for it (AVX2,
/// NEON), else by the direct kernel [`generic::conv::conv2d_f32`].
pub fn conv2d_f32(
    g: &generic::conv::ConvGeometry,
    x: &[f32],
    w: &[f32],
    bias: Option<&[f32]>,
    act: generic::activation::Activation,
    y: &mut [f32],
) {
    if !conv2d_f32_tiled(g, x, w, bias, act, y) {
        generic::conv::conv2d_f32(g, x, w, bias, act, y);
    }
}

/// The SIMD path's instantiation of [`conv_tiled::conv2d_f32`]; false (and
/// nothing written) where there is none or the geometry is not for it.
pub fn conv2d_f32_tiled(
    g: &generic::conv::ConvGeometry,
    x: &[f32],
    w: &[f32],
    bias: Option<&[f32]>,
    act: generic::activation::Activation,
    y: &mut [f32],
) -> bool {
    #[cfg(all(target_arch = "x86_64", not(feature = "scalar")))]
    return avx2::conv2d_f32_tiled(g, x, w, bias, act, y);
    #[cfg(all(
        target_arch = "aarch64",
        target_feature = "neon",
        not(feature = "scalar")
    ))]
    return neon::conv2d_f32_tiled(g, x, w, bias, act, y);
    #[allow(unreachable_code)]
    {
        let _ = (g, x, w, bias, act, y);
        false
    }
}

/// QLinearConv by [`conv_tiled`] where this build has a vector type for it
/// and the sums are exact in f32, else by the direct kernel
/// [`generic::conv_i8::conv2d_i8_requant`]; the same bits either way.
pub fn conv2d_i8_requant<X: QElem, W: QElem, Y: QElem>(
    g: &generic::conv::ConvGeometry,
    x: &[X],
    zx: X,
    w: &[W],
    zw: &[W],
    out: &OutputStage<'_, Y>,
    y: &mut [Y],
) {
    if !conv2d_i8_requant_tiled(g, x, zx, w, zw, out, y) {
        generic::conv_i8::conv2d_i8_requant(g, x, zx, w, zw, out, y);
    }
}

/// The SIMD path's instantiation of [`conv_tiled::conv2d_i8_requant`];
/// false (and nothing written) where there is none or it does not apply.
pub fn conv2d_i8_requant_tiled<X: QElem, W: QElem, Y: QElem>(
    g: &generic::conv::ConvGeometry,
    x: &[X],
    zx: X,
    w: &[W],
    zw: &[W],
    out: &OutputStage<'_, Y>,
    y: &mut [Y],
) -> bool {
    #[cfg(all(target_arch = "x86_64", not(feature = "scalar")))]
    return avx2::conv2d_i8_requant_tiled(g, x, zx, w, zw, out, y);
    #[cfg(all(
        target_arch = "aarch64",
        target_feature = "neon",
        not(feature = "scalar")
    ))]
    return neon::conv2d_i8_requant_tiled(g, x, zx, w, zw, out, y);
    #[allow(unreachable_code)]
    {
        let _ = (g, x, zx, w, zw, out, y);
        false
    }
}

/// Checks of a SIMD path against [`generic::inner`], for each path's tests.
#[cfg(test)]
pub(crate) mod check {
    use super::generic::inner;

    /// Deterministic int8 values over the whole range.
    pub fn fill_i8(seed: u64, n: usize) -> Vec<i8> {
        let mut s = seed | 1;
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                (s >> 56) as u8 as i8
            })
            .collect()
    }

    /// Deterministic f32 values in [-1, 1).
    pub fn fill_f32(seed: u64, n: usize) -> Vec<f32> {
        let mut s = seed | 1;
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
            })
            .collect()
    }

    /// Lengths that cover empty, short, every tail, and long inputs.
    pub const LENGTHS: [usize; 14] = [0, 1, 3, 7, 8, 15, 16, 17, 31, 32, 33, 64, 100, 1000];

    /// `dot_i8` and `axpy_i8` equal the reference bit for bit, including
    /// the extremes (−128·−128 sums that overflow int32), long slices and
    /// slices misaligned alike and differently; `dot_f32` and `axpy_f32`
    /// within 1e-5 relative.
    pub fn against_reference(
        dot_i8: fn(&[i8], &[i8]) -> (i32, i32),
        axpy_i8: fn(&mut [i32], i32, &[i8], i32),
        dot_f32: fn(&[f32], &[f32]) -> f32,
        axpy_f32: fn(&mut [f32], f32, &[f32]),
    ) {
        for (i, &n) in LENGTHS.iter().enumerate() {
            for offset in [0, 1, 3] {
                let seed = 7 + i as u64 * 31 + offset as u64;
                let a = fill_i8(seed, n + offset);
                let b = fill_i8(seed + 1, n + offset);
                let (a, b) = (&a[offset..], &b[offset..]);
                assert_eq!(dot_i8(a, b), inner::dot_i8(a, b), "dot_i8 n={n} +{offset}");
                let extreme = vec![i8::MIN; n];
                assert_eq!(
                    dot_i8(&extreme, &extreme),
                    inner::dot_i8(&extreme, &extreme),
                    "dot_i8 of −128s, n={n}"
                );
                for (alpha, bias) in [(3, -7), (-127, 16_256), (i32::MAX, i32::MIN)] {
                    let start: Vec<i32> = fill_i8(seed + 2, n)
                        .iter()
                        .map(|&v| i32::from(v) * 1000)
                        .collect();
                    let (mut got, mut want) = (start.clone(), start);
                    axpy_i8(&mut got, alpha, a, bias);
                    inner::axpy_i8(&mut want, alpha, a, bias);
                    assert_eq!(got, want, "axpy_i8 n={n} +{offset} alpha={alpha}");
                }
                let x = fill_f32(seed, n + offset);
                let y = fill_f32(seed + 1, n + offset);
                let (x, y) = (&x[offset..], &y[offset..]);
                let (got, want) = (dot_f32(x, y), inner::dot_f32(x, y));
                let scale: f32 = x
                    .iter()
                    .zip(y)
                    .map(|(p, q)| (p * q).abs())
                    .sum::<f32>()
                    .max(1.0);
                assert!(
                    (got - want).abs() <= 1e-5 * scale,
                    "dot_f32 n={n}: {got} vs {want}"
                );
                let start = fill_f32(seed + 3, n);
                let (mut got, mut want) = (start.clone(), start);
                axpy_f32(&mut got, -0.75, x);
                inner::axpy_f32(&mut want, -0.75, x);
                for (j, (g, w)) in got.iter().zip(&want).enumerate() {
                    assert!(
                        (g - w).abs() <= 1e-5 * w.abs().max(1.0),
                        "axpy_f32 n={n} at {j}: {g} vs {w}"
                    );
                }
                // x longer than y: only y's length is used.
                if n > 1 {
                    let mut short = vec![0i32; n - 1];
                    let mut short_ref = short.clone();
                    axpy_i8(&mut short, 2, a, 1);
                    inner::axpy_i8(&mut short_ref, 2, a, 1);
                    assert_eq!(short, short_ref);
                }
            }
        }
        long_slices(dot_i8, axpy_i8, dot_f32, axpy_f32);
        // 2^17 products of 16384 overflow int32: the sums must wrap exactly.
        let m = vec![i8::MIN; 1 << 17];
        assert_eq!(dot_i8(&m, &m), inner::dot_i8(&m, &m), "2^17 × −128²");
        misaligned_differently(dot_i8, axpy_i8);
    }

    /// Several unrolled blocks plus tails, and outputs shorter than inputs.
    fn long_slices(
        dot_i8: fn(&[i8], &[i8]) -> (i32, i32),
        axpy_i8: fn(&mut [i32], i32, &[i8], i32),
        dot_f32: fn(&[f32], &[f32]) -> f32,
        axpy_f32: fn(&mut [f32], f32, &[f32]),
    ) {
        for n in [4096, 4099, 65_536 + 21] {
            let a = fill_i8(n as u64, n);
            let b = fill_i8(n as u64 + 1, n);
            assert_eq!(dot_i8(&a, &b), inner::dot_i8(&a, &b), "n={n}");
            let m = vec![i8::MIN; n];
            assert_eq!(dot_i8(&m, &m), inner::dot_i8(&m, &m), "−128s n={n}");
            for len in [n, n - 1, n - 17, n / 2 + 3] {
                let mut got: Vec<i32> = (0..len as i32).map(|v| v.wrapping_mul(7919)).collect();
                let mut want = got.clone();
                axpy_i8(&mut got, i32::MIN + 3, &a, 12_345);
                inner::axpy_i8(&mut want, i32::MIN + 3, &a, 12_345);
                assert_eq!(got, want, "axpy_i8 n={n} len={len}");
                let x = fill_f32(n as u64, n);
                let mut got = fill_f32(len as u64, len);
                let mut want = got.clone();
                axpy_f32(&mut got, 0.5, &x);
                inner::axpy_f32(&mut want, 0.5, &x);
                for (g, w) in got.iter().zip(&want) {
                    assert!(
                        (g - w).abs() <= 1e-5 * w.abs().max(1.0),
                        "axpy_f32 n={n} len={len}"
                    );
                }
            }
            let (x, z) = (fill_f32(n as u64, n), fill_f32(n as u64 + 1, n));
            let scale: f32 = x.iter().zip(&z).map(|(p, q)| (p * q).abs()).sum();
            let (got, want) = (dot_f32(&x, &z), inner::dot_f32(&x, &z));
            assert!((got - want).abs() <= 1e-5 * scale.max(1.0), "dot_f32 n={n}");
        }
    }

    /// The two operands misaligned each on its own (the loop above offsets
    /// both alike), for the paths that align one of them first.
    fn misaligned_differently(
        dot_i8: fn(&[i8], &[i8]) -> (i32, i32),
        axpy_i8: fn(&mut [i32], i32, &[i8], i32),
    ) {
        let a = fill_i8(11, 300);
        let b = fill_i8(12, 300);
        for oa in 0..4 {
            for ob in 0..4 {
                for n in [0, 1, 5, 15, 16, 17, 33, 64, 255] {
                    let (x, w) = (&a[oa..oa + n], &b[ob..ob + n]);
                    assert_eq!(dot_i8(x, w), inner::dot_i8(x, w), "n={n} +{oa} +{ob}");
                    let mut got: Vec<i32> = (0..n as i32).map(|v| v * 77_777).collect();
                    let mut want = got.clone();
                    axpy_i8(&mut got, -128, x, i32::MAX);
                    inner::axpy_i8(&mut want, -128, x, i32::MAX);
                    assert_eq!(got, want, "axpy n={n} +{oa}");
                }
            }
        }
    }
}
