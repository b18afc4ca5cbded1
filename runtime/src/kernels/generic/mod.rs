//! Scalar f32 reference kernels.
//!
//! These are the ground truth that optimised kernels are checked against, so
//! they favour obvious correctness over speed, while still hoisting invariants
//! and keeping inner loops contiguous so they are usable on their own. All
//! tensors are contiguous, row-major and (for images) NCHW; nothing here
//! allocates or uses `std`.

pub mod activation;
pub mod add_i8;
pub mod batchnorm;
pub mod binary;
pub mod conv;
pub mod conv_i8;
pub mod gemm_i8;
pub mod inner;
pub mod matmul;
pub mod pad;
pub mod pool;
pub mod pool_i8;
pub mod softmax;
pub mod transpose;
pub mod unary;

/// Largest tensor rank the kernels accept; fixed so index arrays live on the stack.
pub const MAX_RANK: usize = 8;

#[cfg(test)]
mod test_util {
    /// Deterministic values in [-1, 1) from a seed, so proptest only has to generate (and shrink) the seed.
    pub fn fill(seed: u64, n: usize) -> Vec<f32> {
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

    /// Asserts `got` matches `want` within 1e-5, relative once |want| exceeds 1.
    pub fn assert_close(got: &[f32], want: &[f64], context: &dyn core::fmt::Debug) {
        assert_eq!(got.len(), want.len(), "{context:?}");
        for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
            let ok = (g as f64 - w).abs() <= 1e-5 * w.abs().max(1.0);
            assert!(ok, "{context:?} at {i}: got {g}, want {w}");
        }
    }
}
