//! The vector type the tiled kernels ([`super::conv_tiled`]) are written
//! against. Each SIMD path implements it with its registers (AVX2: one
//! `__m256`; NEON: two `float32x4_t`) and instantiates the kernels inside a
//! function compiled for its features; [`Scalar`] is the plain-array version
//! the tests run everywhere.

/// Eight f32 lanes.
pub trait F32x8: Copy {
    /// The lanes `p[0..8]`.
    ///
    /// # Safety
    /// `p` must be valid for reading 8 floats (no alignment needed).
    unsafe fn load(p: *const f32) -> Self;

    /// Writes the lanes to `p[0..8]`.
    ///
    /// # Safety
    /// `p` must be valid for writing 8 floats (no alignment needed).
    unsafe fn store(self, p: *mut f32);

    /// `v` in every lane.
    fn splat(v: f32) -> Self;

    /// `self + a·b` per lane (fused where the path has FMA).
    fn mul_add(self, a: Self, b: Self) -> Self;

    /// Relu per lane: 0 for negative lanes, NaN kept (the sign of a zero
    /// may differ from the scalar `relu`).
    fn relu(self) -> Self;
}

/// Eight lanes as a plain array: the reference instantiation of the tiled
/// kernels, used by their tests on every host.
#[derive(Clone, Copy, Debug)]
pub struct Scalar([f32; 8]);

impl F32x8 for Scalar {
    #[inline(always)]
    unsafe fn load(p: *const f32) -> Self {
        // SAFETY: the caller guarantees 8 readable floats at p.
        Scalar(unsafe { p.cast::<[f32; 8]>().read_unaligned() })
    }

    #[inline(always)]
    unsafe fn store(self, p: *mut f32) {
        // SAFETY: the caller guarantees 8 writable floats at p.
        unsafe { p.cast::<[f32; 8]>().write_unaligned(self.0) }
    }

    #[inline(always)]
    fn splat(v: f32) -> Self {
        Scalar([v; 8])
    }

    #[inline(always)]
    fn mul_add(mut self, a: Self, b: Self) -> Self {
        for ((s, a), b) in self.0.iter_mut().zip(a.0).zip(b.0) {
            *s += a * b;
        }
        self
    }

    #[inline(always)]
    fn relu(self) -> Self {
        Scalar(self.0.map(|v| if v < 0.0 { 0.0 } else { v }))
    }
}
