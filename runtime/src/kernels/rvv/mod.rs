//! RISC-V V 1.0 inner loops (inline asm).
//!
//! Stable Rust has neither the RVV intrinsics nor `target_feature(enable =
//! "v")`, so each loop is one `asm!` block wrapped in `.option push` /
//! `.option arch, +v` / `.option pop`: the assembler accepts vector
//! instructions there while the rest of the crate stays RV64GC. Vector
//! registers can only be clobbers on stable, so every block is a whole
//! strip-mined loop that takes pointers and lengths in and gives scalars out.
//!
//! Each loop is length-agnostic (`vsetvli` picks the strip length from the
//! elements left), so it works for any VLEN and needs no scalar tail.
//!
//! - `dot_i8`: strips of int8 at LMUL 2; `vwmul.vv` gives exact int16
//!   products (|−128·−128| = 16384 fits), `vwadd.wv` adds them into int32
//!   accumulators at LMUL 8, which hold exactly as many lanes as an int8
//!   strip at LMUL 2. Int32 lanes wrap like the reference's int32 sum, and a
//!   wrapping sum is the same whatever the order, so the final `vredsum` is
//!   bit-identical. Σb sign-extends b to int16 (`vwadd.vx` with zero) and
//!   accumulates the same way. The accumulators are updated tail-undisturbed
//!   (`tu`) so a short last strip leaves the other lanes' sums alone.
//! - `axpy_i8`: x sign-extended to int32 (`vsext.vf4`), then `vmadd.vx`
//!   (low 32 bits of the product, i.e. wrapping) and `vadd.vx` for the bias.
//! - `dot_f32`: `vfmacc.vv` into LMUL-8 partial sums, `vfredusum` at the
//!   end; fused and reordered, so it agrees with the reference within
//!   rounding (well inside 1e-5 relative). `axpy_f32`: `vfmacc.vf`.

use core::arch::asm;

/// The name [`super::simd_path`] reports for this path.
pub const NAME: &str = "rvv";

/// See [`super::generic::inner::dot_i8`]; bit-identical for any VLEN.
#[inline]
pub fn dot_i8(a: &[i8], b: &[i8]) -> (i32, i32) {
    debug_assert_eq!(a.len(), b.len());
    let n = a.len().min(b.len());
    let (ab, sb): (i64, i64);
    // SAFETY: the loop reads exactly `n` bytes from each pointer (each strip
    // reads `vl` ≤ the elements left), all inside `a` and `b`. Every vector
    // register it writes is declared clobbered, the compiler keeps nothing
    // in vl/vtype (the crate is built without V), and scalar scratch
    // registers are outputs; it touches no stack.
    unsafe {
        asm!(
            ".option push",
            ".option arch, +v",
            "vsetvli {vl}, zero, e32, m8, ta, ma",
            "vmv.v.i v8, 0",
            "vmv.v.i v16, 0",
            "beqz {n}, 3f",
            "2:",
            "vsetvli {vl}, {n}, e8, m2, ta, ma",
            "vle8.v v2, ({a})",
            "vle8.v v4, ({b})",
            "vwmul.vv v24, v2, v4",
            "vwadd.vx v28, v4, zero",
            "vsetvli zero, {vl}, e16, m4, tu, ma",
            "vwadd.wv v8, v8, v24",
            "vwadd.wv v16, v16, v28",
            "add {a}, {a}, {vl}",
            "add {b}, {b}, {vl}",
            "sub {n}, {n}, {vl}",
            "bnez {n}, 2b",
            "3:",
            "vsetvli {vl}, zero, e32, m8, ta, ma",
            "vmv.s.x v0, zero",
            "vredsum.vs v1, v8, v0",
            "vredsum.vs v2, v16, v0",
            "vmv.x.s {ab}, v1",
            "vmv.x.s {sb}, v2",
            ".option pop",
            a = inout(reg) a.as_ptr() => _,
            b = inout(reg) b.as_ptr() => _,
            n = inout(reg) n => _,
            vl = out(reg) _,
            ab = lateout(reg) ab,
            sb = lateout(reg) sb,
            out("v0") _, out("v1") _, out("v2") _, out("v3") _,
            out("v4") _, out("v5") _,
            out("v8") _, out("v9") _, out("v10") _, out("v11") _,
            out("v12") _, out("v13") _, out("v14") _, out("v15") _,
            out("v16") _, out("v17") _, out("v18") _, out("v19") _,
            out("v20") _, out("v21") _, out("v22") _, out("v23") _,
            out("v24") _, out("v25") _, out("v26") _, out("v27") _,
            out("v28") _, out("v29") _, out("v30") _, out("v31") _,
            options(nostack, readonly),
        );
    }
    // vmv.x.s sign-extends the int32 lane; its low 32 bits are the sum.
    (ab as i32, sb as i32)
}

/// See [`super::generic::inner::axpy_i8`]; bit-identical for any VLEN.
#[inline]
pub fn axpy_i8(y: &mut [i32], alpha: i32, x: &[i8], bias: i32) {
    debug_assert!(x.len() >= y.len());
    let n = y.len().min(x.len());
    // SAFETY: the loop reads `n` bytes of `x` and reads then writes `n` int32
    // of `y` (each strip handles `vl` ≤ the elements left), inside the
    // slices; `y` is borrowed mutably. Vector registers are declared
    // clobbered, scalar scratch registers are outputs; no stack is used.
    unsafe {
        asm!(
            ".option push",
            ".option arch, +v",
            "beqz {n}, 3f",
            "2:",
            "vsetvli {vl}, {n}, e8, m2, ta, ma",
            "vle8.v v2, ({x})",
            "vsetvli zero, {vl}, e32, m8, ta, ma",
            "vle32.v v16, ({y})",
            "vsext.vf4 v8, v2",
            "vmadd.vx v8, {alpha}, v16",
            "vadd.vx v8, v8, {bias}",
            "vse32.v v8, ({y})",
            "add {x}, {x}, {vl}",
            "sub {n}, {n}, {vl}",
            "slli {vl}, {vl}, 2",
            "add {y}, {y}, {vl}",
            "bnez {n}, 2b",
            "3:",
            ".option pop",
            x = inout(reg) x.as_ptr() => _,
            y = inout(reg) y.as_mut_ptr() => _,
            n = inout(reg) n => _,
            vl = out(reg) _,
            alpha = in(reg) alpha,
            bias = in(reg) bias,
            out("v2") _, out("v3") _,
            out("v8") _, out("v9") _, out("v10") _, out("v11") _,
            out("v12") _, out("v13") _, out("v14") _, out("v15") _,
            out("v16") _, out("v17") _, out("v18") _, out("v19") _,
            out("v20") _, out("v21") _, out("v22") _, out("v23") _,
            options(nostack),
        );
    }
}

/// See [`super::generic::inner::dot_f32`]; VLEN-agnostic partial sums.
#[inline]
pub fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
    debug_assert_eq!(a.len(), b.len());
    let n = a.len().min(b.len());
    let bits: i64;
    // SAFETY: the loop reads exactly `n` f32 from each pointer (each strip
    // reads `vl` ≤ the elements left), inside `a` and `b`. Vector registers
    // are declared clobbered, scalar scratch registers are outputs; no
    // stack is used.
    unsafe {
        asm!(
            ".option push",
            ".option arch, +v",
            "vsetvli {vl}, zero, e32, m8, ta, ma",
            "vmv.v.i v8, 0",
            "beqz {n}, 3f",
            "2:",
            "vsetvli {vl}, {n}, e32, m8, tu, ma",
            "vle32.v v16, ({a})",
            "vle32.v v24, ({b})",
            "vfmacc.vv v8, v16, v24",
            "sub {n}, {n}, {vl}",
            "slli {vl}, {vl}, 2",
            "add {a}, {a}, {vl}",
            "add {b}, {b}, {vl}",
            "bnez {n}, 2b",
            "3:",
            "vsetvli {vl}, zero, e32, m8, ta, ma",
            "vmv.s.x v0, zero",
            "vfredusum.vs v1, v8, v0",
            "vmv.x.s {bits}, v1",
            ".option pop",
            a = inout(reg) a.as_ptr() => _,
            b = inout(reg) b.as_ptr() => _,
            n = inout(reg) n => _,
            vl = out(reg) _,
            bits = lateout(reg) bits,
            out("v0") _, out("v1") _,
            out("v8") _, out("v9") _, out("v10") _, out("v11") _,
            out("v12") _, out("v13") _, out("v14") _, out("v15") _,
            out("v16") _, out("v17") _, out("v18") _, out("v19") _,
            out("v20") _, out("v21") _, out("v22") _, out("v23") _,
            out("v24") _, out("v25") _, out("v26") _, out("v27") _,
            out("v28") _, out("v29") _, out("v30") _, out("v31") _,
            options(nostack, readonly),
        );
    }
    // The f32 sits in the low 32 bits (vmv.x.s sign-extends it).
    f32::from_bits(bits as u32)
}

/// See [`super::generic::inner::axpy_f32`]; VLEN-agnostic.
#[inline]
pub fn axpy_f32(y: &mut [f32], alpha: f32, x: &[f32]) {
    debug_assert!(x.len() >= y.len());
    let n = y.len().min(x.len());
    // SAFETY: the loop reads `n` f32 of `x` and reads then writes `n` of `y`
    // (each strip handles `vl` ≤ the elements left), inside the slices; `y`
    // is borrowed mutably. Vector registers are declared clobbered, scalar
    // scratch registers are outputs; no stack is used.
    unsafe {
        asm!(
            ".option push",
            ".option arch, +v",
            "beqz {n}, 3f",
            "2:",
            "vsetvli {vl}, {n}, e32, m8, ta, ma",
            "vle32.v v8, ({x})",
            "vle32.v v16, ({y})",
            "vfmacc.vf v16, {alpha}, v8",
            "vse32.v v16, ({y})",
            "sub {n}, {n}, {vl}",
            "slli {vl}, {vl}, 2",
            "add {x}, {x}, {vl}",
            "add {y}, {y}, {vl}",
            "bnez {n}, 2b",
            "3:",
            ".option pop",
            x = inout(reg) x.as_ptr() => _,
            y = inout(reg) y.as_mut_ptr() => _,
            n = inout(reg) n => _,
            vl = out(reg) _,
            alpha = in(freg) alpha,
            out("v8") _, out("v9") _, out("v10") _, out("v11") _,
            out("v12") _, out("v13") _, out("v14") _, out("v15") _,
            out("v16") _, out("v17") _, out("v18") _, out("v19") _,
            out("v20") _, out("v21") _, out("v22") _, out("v23") _,
            options(nostack),
        );
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
}
