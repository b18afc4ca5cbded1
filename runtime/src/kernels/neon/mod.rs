//! aarch64 NEON inner loops.
//!
//! Not yet vectorised: every loop is the scalar reference.

use super::generic::inner;

/// The name [`super::simd_path`] reports for this path.
pub const NAME: &str = "neon";

/// See [`inner::dot_i8`].
#[inline]
pub fn dot_i8(a: &[i8], b: &[i8]) -> (i32, i32) {
    inner::dot_i8(a, b)
}

/// See [`inner::axpy_i8`].
#[inline]
pub fn axpy_i8(y: &mut [i32], alpha: i32, x: &[i8], bias: i32) {
    inner::axpy_i8(y, alpha, x, bias)
}

/// See [`inner::dot_f32`].
#[inline]
pub fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
    inner::dot_f32(a, b)
}

/// See [`inner::axpy_f32`].
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
