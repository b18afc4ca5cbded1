//! Dense f32 matrix multiplication with caller-supplied operand strides.

/// y[m×n] (row-major, contiguous) = a[m×k] · b[k×n], where element (i,p) of a is a[i*a_rs + p*a_cs] and element (p,j) of b is b[p*b_rs + j*b_cs] (strides let callers pass transposed operands without copying).
// The argument list mirrors BLAS gemm: bundling it into a struct would only
// move the same ten values around.
#[allow(clippy::too_many_arguments)]
pub fn matmul_f32(
    m: usize,
    k: usize,
    n: usize,
    a: &[f32],
    a_rs: usize,
    a_cs: usize,
    b: &[f32],
    b_rs: usize,
    b_cs: usize,
    y: &mut [f32],
) {
    debug_assert!(y.len() >= m * n);
    if m == 0 || n == 0 {
        return;
    }
    let y = &mut y[..m * n];
    if k == 0 {
        y.fill(0.0);
        return;
    }
    debug_assert!(a.len() > (m - 1) * a_rs + (k - 1) * a_cs);
    debug_assert!(b.len() > (k - 1) * b_rs + (n - 1) * b_cs);

    if b_cs == 1 || n == 1 {
        // Row-major B: i-p-j order streams contiguous rows of B into the y row
        // (an axpy per a element), which vectorises and never revisits B rows
        // out of order.
        for (i, y_row) in y.chunks_exact_mut(n).enumerate() {
            y_row.fill(0.0);
            for p in 0..k {
                let aip = a[i * a_rs + p * a_cs];
                crate::kernels::axpy_f32(y_row, aip, &b[p * b_rs..][..n]);
            }
        }
    } else if b_rs == 1 {
        // Transposed B: each column of B is contiguous, so every output is a
        // dot product of an A row with a B column.
        for (i, y_row) in y.chunks_exact_mut(n).enumerate() {
            for (j, o) in y_row.iter_mut().enumerate() {
                let b_col = &b[j * b_cs..][..k];
                *o = if a_cs == 1 {
                    crate::kernels::dot_f32(&a[i * a_rs..][..k], b_col)
                } else {
                    let mut acc = 0.0;
                    for (p, &bv) in b_col.iter().enumerate() {
                        acc += a[i * a_rs + p * a_cs] * bv;
                    }
                    acc
                };
            }
        }
    } else {
        // Arbitrary strides: same i-p-j order as the row-major path.
        for (i, y_row) in y.chunks_exact_mut(n).enumerate() {
            y_row.fill(0.0);
            for p in 0..k {
                let aip = a[i * a_rs + p * a_cs];
                let b_row = &b[p * b_rs..];
                for (j, o) in y_row.iter_mut().enumerate() {
                    *o += aip * b_row[j * b_cs];
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_util::{assert_close, fill};
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn hand_computed_2x3_times_3x2() {
        let a = [1., 2., 3., 4., 5., 6.];
        let b = [7., 8., 9., 10., 11., 12.];
        let want = [58., 64., 139., 154.];
        let mut y = [0.0; 4];
        matmul_f32(2, 3, 2, &a, 3, 1, &b, 2, 1, &mut y);
        assert_eq!(y, want);
        // Same B stored transposed ([2×3] row-major): b_rs = 1, b_cs = 3.
        let bt = [7., 9., 11., 8., 10., 12.];
        let mut y = [0.0; 4];
        matmul_f32(2, 3, 2, &a, 3, 1, &bt, 1, 3, &mut y);
        assert_eq!(y, want);
        // Same A stored transposed ([3×2] row-major): a_rs = 1, a_cs = 2.
        let at = [1., 4., 2., 5., 3., 6.];
        let mut y = [0.0; 4];
        matmul_f32(2, 3, 2, &at, 1, 2, &bt, 1, 3, &mut y);
        assert_eq!(y, want);
    }

    #[test]
    fn zero_sizes() {
        let mut y = [7.0; 6];
        matmul_f32(2, 0, 3, &[], 0, 1, &[], 3, 1, &mut y);
        assert_eq!(y, [0.0; 6]);
        let mut y = [7.0; 1];
        matmul_f32(0, 3, 5, &[], 3, 1, &[0.0; 15], 5, 1, &mut y);
        matmul_f32(2, 3, 0, &[0.0; 6], 3, 1, &[], 0, 1, &mut y);
        assert_eq!(y, [7.0]);
    }

    #[test]
    fn nan_propagates_through_zero_weight() {
        let mut y = [0.0];
        matmul_f32(
            1,
            2,
            1,
            &[0.0, 1.0],
            2,
            1,
            &[f32::INFINITY, 1.0],
            1,
            1,
            &mut y,
        );
        assert!(y[0].is_nan());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(1024))]

        #[test]
        fn matches_naive(
            m in 0usize..6,
            k in 0usize..20,
            n in 0usize..7,
            a_t in any::<bool>(),
            b_layout in 0usize..3,
            pad in 0usize..3,
            seed in any::<u64>(),
        ) {
            // Store A as [m×k] or [k×m], and B as [k×n], [n×k] or with a padded
            // leading dimension and a column gap (general strides).
            let (a_rs, a_cs, a_len) = if a_t { (1, m, k * m) } else { (k, 1, m * k) };
            let (b_rs, b_cs, b_len) = match b_layout {
                0 => (n + pad, 1, k * (n + pad)),
                1 => (1, k + pad, n * (k + pad)),
                _ => ((n * 2) + pad, 2, k * (n * 2 + pad)),
            };
            let a = fill(seed, a_len);
            let b = fill(seed ^ 0x9e37_79b9, b_len);
            let mut y = vec![f32::NAN; m * n];
            matmul_f32(m, k, n, &a, a_rs, a_cs, &b, b_rs, b_cs, &mut y);
            let mut want = Vec::new();
            for i in 0..m {
                for j in 0..n {
                    let dot = (0..k).map(|p| a[i * a_rs + p * a_cs] as f64 * b[p * b_rs + j * b_cs] as f64);
                    want.push(dot.sum::<f64>());
                }
            }
            assert_close(&y, &want, &(m, k, n, a_t, b_layout));
        }
    }
}
