//! armv7 NEON inner loops (inline asm).
//!
//! Stable Rust has neither the NEON intrinsics nor `target_feature(enable =
//! "neon")` on 32-bit Arm, so each loop is one `asm!` block whose string
//! starts with `.fpu neon`: that lets the assembler accept NEON mnemonics
//! while the rest of the crate is compiled for the target's baseline (VFPv3,
//! no NEON). Because the compiler itself believes NEON is off, it ignores
//! clobbers of `q` registers; every block therefore declares the `d`
//! registers it touches (a `q` register is a pair of them). Only d0–d15 are
//! used: the target has no `d32`, so the compiler knows nothing of d16–d31.
//!
//! - `dot_i8`: 16 bytes per step. `vmull.s8` forms exact int16 products
//!   (|−128·−128| = 16384 fits), `vpadal.s16` folds pairs of them into int32
//!   lanes, which wrap exactly as the scalar reference's int32 sum does.
//!   Σb takes `vpaddl.s8` then `vpadal.s16` the same way.
//! - `axpy_i8`: 8 elements per step, x widened with `vmovl` to int32, then
//!   `vmla.i32` (low 32 bits of the product, i.e. wrapping) and `vadd.i32`.
//! - `dot_f32` / `axpy_f32`: `vmla.f32` (not fused, like the reference's
//!   multiply then add); dot keeps 16 partial sums to hide the add latency.
//!   NEON flushes denormals to zero, far below the 1e-5 tolerance.
//!
//! Every loop handles whole blocks in asm and leaves the (short) tail to
//! [`inner`]; `vld1`/`vst1` without an alignment hint accept any address.

use super::generic::inner;
use core::arch::asm;

/// The name [`super::simd_path`] reports for this path.
pub const NAME: &str = "armv7-neon";

/// See [`inner::dot_i8`]; 16 bytes per NEON step, bit-identical.
#[inline]
pub fn dot_i8(a: &[i8], b: &[i8]) -> (i32, i32) {
    debug_assert_eq!(a.len(), b.len());
    let n = a.len().min(b.len());
    let blocks = n / 16;
    let (mut ab, mut sb) = (0i32, 0i32);
    if blocks > 0 {
        // SAFETY: the loop reads `blocks` × 16 bytes from each pointer, which
        // lie inside `a` and `b` (blocks × 16 ≤ n). Every NEON register it
        // writes is declared clobbered as its d halves (d0–d15); pointers and
        // counter are scratch outputs; it touches no stack.
        unsafe {
            asm!(
                ".fpu neon",
                "vmov.i32 q0, #0",
                "vmov.i32 q1, #0",
                "vmov.i32 q2, #0",
                "2:",
                "vld1.8 {{d8, d9}}, [{a}]!",
                "vld1.8 {{d10, d11}}, [{b}]!",
                "vmull.s8 q6, d8, d10",
                "vmull.s8 q7, d9, d11",
                "vpaddl.s8 q5, q5",
                "vpadal.s16 q0, q6",
                "vpadal.s16 q1, q7",
                "vpadal.s16 q2, q5",
                "subs {n}, {n}, #1",
                "bne 2b",
                "vadd.i32 q0, q0, q1",
                "vadd.i32 d0, d0, d1",
                "vadd.i32 d4, d4, d5",
                "vpadd.i32 d0, d0, d4",
                "vmov {ab}, {sb}, d0",
                a = inout(reg) a.as_ptr() => _,
                b = inout(reg) b.as_ptr() => _,
                n = inout(reg) blocks => _,
                ab = lateout(reg) ab,
                sb = lateout(reg) sb,
                out("d0") _, out("d1") _, out("d2") _, out("d3") _,
                out("d4") _, out("d5") _, out("d8") _, out("d9") _,
                out("d10") _, out("d11") _, out("d12") _, out("d13") _,
                out("d14") _, out("d15") _,
                options(nostack, readonly),
            );
        }
    }
    let done = blocks * 16;
    let (tab, tsb) = inner::dot_i8(&a[done..n], &b[done..n]);
    (ab.wrapping_add(tab), sb.wrapping_add(tsb))
}

/// See [`inner::axpy_i8`]; 8 elements per NEON step, bit-identical.
#[inline]
pub fn axpy_i8(y: &mut [i32], alpha: i32, x: &[i8], bias: i32) {
    debug_assert!(x.len() >= y.len());
    let n = y.len().min(x.len());
    let blocks = n / 8;
    if blocks > 0 {
        // SAFETY: the loop reads `blocks` × 8 bytes of `x` and reads then
        // writes `blocks` × 8 int32 of `y`, all inside the slices (blocks × 8
        // ≤ n); `y` is borrowed mutably, so nothing else observes it. NEON
        // registers are declared as their d halves; no stack is used.
        unsafe {
            asm!(
                ".fpu neon",
                "vdup.32 q6, {alpha}",
                "vdup.32 q7, {bias}",
                "2:",
                "vld1.8 {{d10}}, [{x}]!",
                "vld1.32 {{d4, d5, d6, d7}}, [{y}]",
                "vmovl.s8 q4, d10",
                "vmovl.s16 q0, d8",
                "vmovl.s16 q1, d9",
                "vmla.i32 q2, q0, q6",
                "vmla.i32 q3, q1, q6",
                "vadd.i32 q2, q2, q7",
                "vadd.i32 q3, q3, q7",
                "vst1.32 {{d4, d5, d6, d7}}, [{y}]!",
                "subs {n}, {n}, #1",
                "bne 2b",
                x = inout(reg) x.as_ptr() => _,
                y = inout(reg) y.as_mut_ptr() => _,
                n = inout(reg) blocks => _,
                alpha = in(reg) alpha,
                bias = in(reg) bias,
                out("d0") _, out("d1") _, out("d2") _, out("d3") _,
                out("d4") _, out("d5") _, out("d6") _, out("d7") _,
                out("d8") _, out("d9") _, out("d10") _, out("d12") _,
                out("d13") _, out("d14") _, out("d15") _,
                options(nostack),
            );
        }
    }
    let done = blocks * 8;
    inner::axpy_i8(&mut y[done..n], alpha, &x[done..n], bias);
}

/// See [`inner::dot_f32`]; 16 floats per NEON step in 16 partial sums.
#[inline]
pub fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
    debug_assert_eq!(a.len(), b.len());
    let n = a.len().min(b.len());
    let blocks = n / 16;
    let mut sum = 0.0f32;
    if blocks > 0 {
        let bits: u32;
        // SAFETY: the loop reads `blocks` × 16 f32 from each pointer, inside
        // `a` and `b` (blocks × 16 ≤ n). NEON registers are declared as their
        // d halves; no stack is used.
        unsafe {
            asm!(
                ".fpu neon",
                "vmov.i32 q0, #0",
                "vmov.i32 q1, #0",
                "vmov.i32 q2, #0",
                "vmov.i32 q3, #0",
                "2:",
                "vld1.32 {{d8, d9, d10, d11}}, [{a}]!",
                "vld1.32 {{d12, d13, d14, d15}}, [{b}]!",
                "vmla.f32 q0, q4, q6",
                "vmla.f32 q1, q5, q7",
                "vld1.32 {{d8, d9, d10, d11}}, [{a}]!",
                "vld1.32 {{d12, d13, d14, d15}}, [{b}]!",
                "vmla.f32 q2, q4, q6",
                "vmla.f32 q3, q5, q7",
                "subs {n}, {n}, #1",
                "bne 2b",
                "vadd.f32 q0, q0, q1",
                "vadd.f32 q2, q2, q3",
                "vadd.f32 q0, q0, q2",
                "vadd.f32 d0, d0, d1",
                "vpadd.f32 d0, d0, d0",
                "vmov {bits}, s0",
                a = inout(reg) a.as_ptr() => _,
                b = inout(reg) b.as_ptr() => _,
                n = inout(reg) blocks => _,
                bits = lateout(reg) bits,
                out("d0") _, out("d1") _, out("d2") _, out("d3") _,
                out("d4") _, out("d5") _, out("d6") _, out("d7") _,
                out("d8") _, out("d9") _, out("d10") _, out("d11") _,
                out("d12") _, out("d13") _, out("d14") _, out("d15") _,
                options(nostack, readonly),
            );
        }
        sum = f32::from_bits(bits);
    }
    let done = blocks * 16;
    sum + inner::dot_f32(&a[done..n], &b[done..n])
}

/// See [`inner::axpy_f32`]; 8 floats per NEON step.
#[inline]
pub fn axpy_f32(y: &mut [f32], alpha: f32, x: &[f32]) {
    debug_assert!(x.len() >= y.len());
    let n = y.len().min(x.len());
    let blocks = n / 8;
    if blocks > 0 {
        // SAFETY: the loop reads `blocks` × 8 f32 of `x` and reads then
        // writes as many of `y`, inside the slices (blocks × 8 ≤ n); `y` is
        // borrowed mutably. NEON registers are declared as their d halves;
        // no stack is used.
        unsafe {
            asm!(
                ".fpu neon",
                "vdup.32 q7, {alpha}",
                "2:",
                "vld1.32 {{d0, d1, d2, d3}}, [{x}]!",
                "vld1.32 {{d4, d5, d6, d7}}, [{y}]",
                "vmla.f32 q2, q0, q7",
                "vmla.f32 q3, q1, q7",
                "vst1.32 {{d4, d5, d6, d7}}, [{y}]!",
                "subs {n}, {n}, #1",
                "bne 2b",
                x = inout(reg) x.as_ptr() => _,
                y = inout(reg) y.as_mut_ptr() => _,
                n = inout(reg) blocks => _,
                alpha = in(reg) alpha.to_bits(),
                out("d0") _, out("d1") _, out("d2") _, out("d3") _,
                out("d4") _, out("d5") _, out("d6") _, out("d7") _,
                out("d14") _, out("d15") _,
                options(nostack),
            );
        }
    }
    let done = blocks * 8;
    inner::axpy_f32(&mut y[done..n], alpha, &x[done..n]);
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
