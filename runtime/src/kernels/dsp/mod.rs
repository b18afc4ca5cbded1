//! Cortex-M DSP inner loops (SMLAD, SXTB16 by inline asm).
//!
//! The Armv7E-M DSP extension (Cortex-M4/M7, on by default for
//! `thumbv7em`) multiplies two pairs of int16 in one instruction: `SMLAD`
//! adds `x.lo·y.lo + x.hi·y.hi` to a 32-bit accumulator. Its intrinsics are
//! nightly-only, so the loops are `asm!`.
//!
//! - `dot_i8`: each 32-bit word holds four int8; `SXTB16` sign-extends
//!   bytes 0 and 2 into two int16 halves, `SXTB16 …, ROR #8` bytes 1 and 3.
//!   Two `SMLAD`s then give the word's four products, exact (|−128·−128| =
//!   16384 fits int16 and the pair sum fits int32), and the accumulator
//!   wraps like the reference's int32 sum. Σb adds b's two unpacked halves
//!   (`SADD16`, |sum| ≤ 256) and folds them in with `SMLAD` by 0x0001_0001.
//!   That is 10 instructions per word (two loads, four unpacks, three
//!   `SMLAD`s, one `SADD16`), 9 where both slices are word-aligned and one
//!   `LDM` fetches two words. Measured by the Cortex-M4 firmware's `kernels`
//!   binary over 1024 elements (QEMU instruction count, loop and call
//!   included): 2.44 instructions per MAC aligned, 2.68 misaligned, against
//!   4.57 for the scalar reference.
//!   Σb is two of those instructions per word; it is the caller's
//!   zero-point correction, which a weight layout prepared offline could
//!   precompute.
//! - `axpy_i8`: `alpha` is a full int32, so x is widened to 32 bits
//!   (`SXTB`, with the byte rotation folded in) and multiplied with `MLA`,
//!   whose low 32 bits are the wrapping product; y moves four at a time by
//!   `LDM`/`STM`.
//! - `dot_f32`, `axpy_f32`: the Cortex-M4 FPU is scalar (no float SIMD), so
//!   these are [`inner`]'s loops, compiled to the FPU's scalar
//!   single-precision instructions.
//!
//! `LDR` accepts unaligned addresses on Armv7-M; `LDM`/`STM` need word
//! alignment, which int32 `y` always has and the int8 slices get from a
//! short scalar head when they are misaligned by the same amount. Tails
//! shorter than one unrolled step go to [`inner`].
//!
//! `LDM` register lists must ascend, so those loops name r0–r3 explicitly
//! instead of letting the compiler pick; that also keeps the code valid in
//! A32 (where `LDRD` would need an even/odd register pair), so the module
//! builds and its tests run on armv7 Linux with `--features arm-dsp` too.

use super::generic::inner;
use core::arch::asm;

/// The name [`super::simd_path`] reports for this path.
pub const NAME: &str = "dsp";

/// Bytes one step of the `dot_i8` loops consumes from each slice.
const DOT_STEP: usize = 16;

/// See [`inner::dot_i8`]; two `SMLAD`s per four products, bit-identical.
#[inline]
pub fn dot_i8(a: &[i8], b: &[i8]) -> (i32, i32) {
    debug_assert_eq!(a.len(), b.len());
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let misalign = a.as_ptr() as usize & 3;
    if misalign == b.as_ptr() as usize & 3 {
        // Same misalignment: a scalar head of at most three bytes aligns
        // both, so the loop can fetch two words per load.
        let head = ((4 - misalign) & 3).min(n);
        let (ha, hb) = inner::dot_i8(&a[..head], &b[..head]);
        let (ab, sb) = dot_i8_aligned(&a[head..], &b[head..]);
        (ha.wrapping_add(ab), hb.wrapping_add(sb))
    } else {
        dot_i8_unaligned(a, b)
    }
}

/// [`dot_i8`] over two word-aligned slices of equal length (`LDM`).
#[inline]
fn dot_i8_aligned(a: &[i8], b: &[i8]) -> (i32, i32) {
    let steps = a.len() / DOT_STEP;
    let (mut ab, mut sb) = (0i32, 0i32);
    if steps > 0 {
        // SAFETY: both pointers are word-aligned (the caller's head makes
        // them so), as LDM requires, and the loop reads `steps` × 16 bytes
        // from each, inside `a` and `b`. All registers it writes are outputs
        // or declared clobbers (r0–r3); it touches no stack.
        unsafe {
            asm!(
                "2:",
                "ldm {a}!, {{r0, r1}}",
                "ldm {b}!, {{r2, r3}}",
                "sxtb16 {t}, r0",
                "sxtb16 r0, r0, ror #8",
                "sxtb16 {u}, r2",
                "sxtb16 r2, r2, ror #8",
                "smlad {ab}, {t}, {u}, {ab}",
                "smlad {ab}, r0, r2, {ab}",
                "sadd16 {u}, {u}, r2",
                "smlad {sb}, {u}, {ones}, {sb}",
                "sxtb16 {t}, r1",
                "sxtb16 r1, r1, ror #8",
                "sxtb16 {u}, r3",
                "sxtb16 r3, r3, ror #8",
                "smlad {ab}, {t}, {u}, {ab}",
                "smlad {ab}, r1, r3, {ab}",
                "sadd16 {u}, {u}, r3",
                "smlad {sb}, {u}, {ones}, {sb}",
                "ldm {a}!, {{r0, r1}}",
                "ldm {b}!, {{r2, r3}}",
                "sxtb16 {t}, r0",
                "sxtb16 r0, r0, ror #8",
                "sxtb16 {u}, r2",
                "sxtb16 r2, r2, ror #8",
                "smlad {ab}, {t}, {u}, {ab}",
                "smlad {ab}, r0, r2, {ab}",
                "sadd16 {u}, {u}, r2",
                "smlad {sb}, {u}, {ones}, {sb}",
                "sxtb16 {t}, r1",
                "sxtb16 r1, r1, ror #8",
                "sxtb16 {u}, r3",
                "sxtb16 r3, r3, ror #8",
                "smlad {ab}, {t}, {u}, {ab}",
                "smlad {ab}, r1, r3, {ab}",
                "sadd16 {u}, {u}, r3",
                "smlad {sb}, {u}, {ones}, {sb}",
                "subs {n}, {n}, #1",
                "bne 2b",
                a = inout(reg) a.as_ptr() => _,
                b = inout(reg) b.as_ptr() => _,
                n = inout(reg) steps => _,
                ab = inout(reg) ab,
                sb = inout(reg) sb,
                ones = in(reg) 0x0001_0001u32,
                out("r0") _,
                out("r1") _,
                out("r2") _,
                out("r3") _,
                t = out(reg) _,
                u = out(reg) _,
                options(nostack, readonly),
            );
        }
    }
    let done = steps * DOT_STEP;
    let (tab, tsb) = inner::dot_i8(&a[done..], &b[done..]);
    (ab.wrapping_add(tab), sb.wrapping_add(tsb))
}

/// [`dot_i8`] over two slices of equal length at any alignment (`LDR`).
#[inline]
fn dot_i8_unaligned(a: &[i8], b: &[i8]) -> (i32, i32) {
    let steps = a.len() / DOT_STEP;
    let (mut ab, mut sb) = (0i32, 0i32);
    if steps > 0 {
        // SAFETY: the loop reads `steps` × 16 bytes from each pointer, inside
        // `a` and `b`, with LDR, which allows unaligned addresses on
        // Armv7-M (CCR.UNALIGN_TRP is left clear). All registers it writes
        // are outputs or scratch outputs; it touches no stack.
        unsafe {
            asm!(
                "2:",
                "ldr {x}, [{a}], #4",
                "ldr {y}, [{b}], #4",
                "sxtb16 {t}, {x}",
                "sxtb16 {x}, {x}, ror #8",
                "sxtb16 {u}, {y}",
                "sxtb16 {y}, {y}, ror #8",
                "smlad {ab}, {t}, {u}, {ab}",
                "smlad {ab}, {x}, {y}, {ab}",
                "sadd16 {u}, {u}, {y}",
                "smlad {sb}, {u}, {ones}, {sb}",
                "ldr {x}, [{a}], #4",
                "ldr {y}, [{b}], #4",
                "sxtb16 {t}, {x}",
                "sxtb16 {x}, {x}, ror #8",
                "sxtb16 {u}, {y}",
                "sxtb16 {y}, {y}, ror #8",
                "smlad {ab}, {t}, {u}, {ab}",
                "smlad {ab}, {x}, {y}, {ab}",
                "sadd16 {u}, {u}, {y}",
                "smlad {sb}, {u}, {ones}, {sb}",
                "ldr {x}, [{a}], #4",
                "ldr {y}, [{b}], #4",
                "sxtb16 {t}, {x}",
                "sxtb16 {x}, {x}, ror #8",
                "sxtb16 {u}, {y}",
                "sxtb16 {y}, {y}, ror #8",
                "smlad {ab}, {t}, {u}, {ab}",
                "smlad {ab}, {x}, {y}, {ab}",
                "sadd16 {u}, {u}, {y}",
                "smlad {sb}, {u}, {ones}, {sb}",
                "ldr {x}, [{a}], #4",
                "ldr {y}, [{b}], #4",
                "sxtb16 {t}, {x}",
                "sxtb16 {x}, {x}, ror #8",
                "sxtb16 {u}, {y}",
                "sxtb16 {y}, {y}, ror #8",
                "smlad {ab}, {t}, {u}, {ab}",
                "smlad {ab}, {x}, {y}, {ab}",
                "sadd16 {u}, {u}, {y}",
                "smlad {sb}, {u}, {ones}, {sb}",
                "subs {n}, {n}, #1",
                "bne 2b",
                a = inout(reg) a.as_ptr() => _,
                b = inout(reg) b.as_ptr() => _,
                n = inout(reg) steps => _,
                ab = inout(reg) ab,
                sb = inout(reg) sb,
                ones = in(reg) 0x0001_0001u32,
                x = out(reg) _,
                y = out(reg) _,
                t = out(reg) _,
                u = out(reg) _,
                options(nostack, readonly),
            );
        }
    }
    let done = steps * DOT_STEP;
    let (tab, tsb) = inner::dot_i8(&a[done..], &b[done..]);
    (ab.wrapping_add(tab), sb.wrapping_add(tsb))
}

/// See [`inner::axpy_i8`]; four elements per step, bit-identical.
#[inline]
pub fn axpy_i8(y: &mut [i32], alpha: i32, x: &[i8], bias: i32) {
    debug_assert!(x.len() >= y.len());
    let n = y.len().min(x.len());
    let steps = n / 4;
    if steps > 0 {
        // SAFETY: the loop reads `steps` × 4 bytes of `x` (LDR, unaligned
        // allowed) and reads then writes `steps` × 4 int32 of `y` (LDM/STM,
        // word-aligned as every `i32` is), all inside the slices; `y` is
        // borrowed mutably. All registers it writes are scratch outputs or
        // declared clobbers (r0–r3); it touches no stack.
        unsafe {
            asm!(
                "2:",
                "ldr {w}, [{x}], #4",
                "ldm {y}, {{r0, r1, r2, r3}}",
                "sxtb {t}, {w}",
                "mla r0, {alpha}, {t}, r0",
                "sxtb {t}, {w}, ror #8",
                "mla r1, {alpha}, {t}, r1",
                "sxtb {t}, {w}, ror #16",
                "mla r2, {alpha}, {t}, r2",
                "asr {t}, {w}, #24",
                "mla r3, {alpha}, {t}, r3",
                "add r0, r0, {bias}",
                "add r1, r1, {bias}",
                "add r2, r2, {bias}",
                "add r3, r3, {bias}",
                "stm {y}!, {{r0, r1, r2, r3}}",
                "subs {n}, {n}, #1",
                "bne 2b",
                x = inout(reg) x.as_ptr() => _,
                y = inout(reg) y.as_mut_ptr() => _,
                n = inout(reg) steps => _,
                alpha = in(reg) alpha,
                bias = in(reg) bias,
                w = out(reg) _,
                t = out(reg) _,
                out("r0") _,
                out("r1") _,
                out("r2") _,
                out("r3") _,
                options(nostack),
            );
        }
    }
    let done = steps * 4;
    inner::axpy_i8(&mut y[done..n], alpha, &x[done..n], bias);
}

/// See [`inner::dot_f32`]: the scalar loop, as the Cortex-M4 has no float SIMD.
#[inline]
pub fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
    inner::dot_f32(a, b)
}

/// See [`inner::axpy_f32`]: the scalar loop, as the Cortex-M4 has no float SIMD.
#[inline]
pub fn axpy_f32(y: &mut [f32], alpha: f32, x: &[f32]) {
    inner::axpy_f32(y, alpha, x)
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
}
