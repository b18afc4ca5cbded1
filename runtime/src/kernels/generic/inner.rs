//! The inner loops of the GEMM and convolution kernels, scalar: the
//! reference every SIMD path of [`crate::kernels`] is checked against.
//!
//! Integer results wrap as int32 arithmetic does, so every path that sums
//! the same products gives the same bits whatever its order. Float results
//! depend on the summation order; SIMD paths agree within 1e-5 relative.

/// `(Σ a[p]·b[p], Σ b[p])` over two int8 slices of equal length, wrapping.
#[inline]
pub fn dot_i8(a: &[i8], b: &[i8]) -> (i32, i32) {
    debug_assert_eq!(a.len(), b.len());
    let (mut ab, mut sb) = (0i32, 0i32);
    for (&x, &w) in a.iter().zip(b) {
        ab = ab.wrapping_add(i32::from(x) * i32::from(w));
        sb = sb.wrapping_add(i32::from(w));
    }
    (ab, sb)
}

/// `y[j] += alpha · x[j] + bias` for every j in y (x at least as long), wrapping.
#[inline]
pub fn axpy_i8(y: &mut [i32], alpha: i32, x: &[i8], bias: i32) {
    debug_assert!(x.len() >= y.len());
    for (o, &v) in y.iter_mut().zip(x) {
        *o = o.wrapping_add(alpha.wrapping_mul(i32::from(v)).wrapping_add(bias));
    }
}

/// `Σ a[p]·b[p]` over two f32 slices of equal length, in eight partial
/// sums: a single accumulator chains every add behind the previous one, which
/// made the dot path an order of magnitude slower than the axpy path.
#[inline]
pub fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
    debug_assert_eq!(a.len(), b.len());
    let (a8, b8) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = a8
        .remainder()
        .iter()
        .zip(b8.remainder())
        .map(|(p, q)| p * q)
        .sum();
    let mut acc = [0.0f32; 8];
    for (pa, pb) in a8.zip(b8) {
        for ((s, &p), &q) in acc.iter_mut().zip(pa).zip(pb) {
            *s += p * q;
        }
    }
    ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7])) + tail
}

/// `y[j] += alpha · x[j]` for every j in y (x at least as long).
#[inline]
pub fn axpy_f32(y: &mut [f32], alpha: f32, x: &[f32]) {
    debug_assert!(x.len() >= y.len());
    for (o, &v) in y.iter_mut().zip(x) {
        *o += alpha * v;
    }
}
