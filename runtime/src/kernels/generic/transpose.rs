//! Axis permutation (ONNX Transpose).

use super::MAX_RANK;

/// Writes `y = x` with axes permuted: y's dim i is x's dim `perm[i]` (rank ≤ MAX_RANK).
pub fn transpose_f32(x: &[f32], x_shape: &[usize], perm: &[usize], y: &mut [f32]) {
    transpose(x, x_shape, perm, y);
}

/// [`transpose_f32`] for any element type (it only moves elements).
pub fn transpose<T: Copy>(x: &[T], x_shape: &[usize], perm: &[usize], y: &mut [T]) {
    let rank = x_shape.len();
    debug_assert!(rank <= MAX_RANK && perm.len() == rank);
    let total: usize = x_shape.iter().product();
    debug_assert!(x.len() >= total && y.len() >= total);
    if total == 0 {
        return;
    }
    let (x, y) = (&x[..total], &mut y[..total]);
    if perm.iter().enumerate().all(|(i, &p)| i == p) {
        y.copy_from_slice(x);
        return;
    }

    let mut x_strides = [0usize; MAX_RANK];
    let mut step = 1;
    for d in (0..rank).rev() {
        x_strides[d] = step;
        step *= x_shape[d];
    }

    // Walk y in order, reading x through per-dim source strides. Adjacent y
    // dims that are also adjacent in x are fused (and size-1 dims dropped) so
    // the inner loop is as long as possible, e.g. swapping the two outer axes
    // of [A,B,H,W] copies contiguous runs of H*W. Fused dims are stored
    // innermost first.
    let mut dims = [0usize; MAX_RANK];
    let mut src = [0usize; MAX_RANK];
    let mut r = 0;
    for &p in perm.iter().rev() {
        let (n, s) = (x_shape[p], x_strides[p]);
        if n == 1 {
            continue;
        }
        if r > 0 && s == src[r - 1] * dims[r - 1] {
            dims[r - 1] *= n;
        } else {
            dims[r] = n;
            src[r] = s;
            r += 1;
        }
    }
    if r == 0 {
        dims[0] = 1;
        src[0] = 1;
        r = 1;
    }

    let (inner, inner_stride) = (dims[0], src[0]);
    let mut idx = [0usize; MAX_RANK];
    let mut off = 0usize;
    for y_run in y.chunks_exact_mut(inner) {
        if inner_stride == 1 {
            y_run.copy_from_slice(&x[off..][..inner]);
        } else {
            for (o, &v) in y_run.iter_mut().zip(x[off..].iter().step_by(inner_stride)) {
                *o = v;
            }
        }
        for d in 1..r {
            idx[d] += 1;
            off += src[d];
            if idx[d] < dims[d] {
                break;
            }
            idx[d] = 0;
            off -= src[d] * dims[d];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// For every y index, unravels it, maps each coordinate back through the
    /// permutation and ravels it in x.
    fn naive(x: &[f32], x_shape: &[usize], perm: &[usize]) -> Vec<f32> {
        let y_shape: Vec<usize> = perm.iter().map(|&p| x_shape[p]).collect();
        let total: usize = x_shape.iter().product();
        (0..total)
            .map(|flat| {
                let mut rem = flat;
                let mut xi = vec![0; x_shape.len()];
                for d in (0..y_shape.len()).rev() {
                    xi[perm[d]] = rem % y_shape[d];
                    rem /= y_shape[d];
                }
                let at = xi.iter().zip(x_shape).fold(0, |acc, (&i, &n)| acc * n + i);
                x[at]
            })
            .collect()
    }

    fn permutations(n: usize) -> Vec<Vec<usize>> {
        if n == 0 {
            return vec![vec![]];
        }
        let mut out = Vec::new();
        for p in permutations(n - 1) {
            for pos in 0..=p.len() {
                let mut q = p.clone();
                q.insert(pos, n - 1);
                out.push(q);
            }
        }
        out
    }

    #[test]
    fn hand_computed_2x3() {
        let x = [1., 2., 3., 4., 5., 6.];
        let mut y = [0.0; 6];
        transpose_f32(&x, &[2, 3], &[1, 0], &mut y);
        assert_eq!(y, [1., 4., 2., 5., 3., 6.]);
    }

    #[test]
    fn hand_computed_nchw_to_nhwc() {
        // [1, 2, 2, 2]: channel 0 holds 0..4, channel 1 holds 10..14.
        let x = [0., 1., 2., 3., 10., 11., 12., 13.];
        let mut y = [0.0; 8];
        transpose_f32(&x, &[1, 2, 2, 2], &[0, 2, 3, 1], &mut y);
        assert_eq!(y, [0., 10., 1., 11., 2., 12., 3., 13.]);
    }

    #[test]
    fn degenerate_shapes() {
        let mut y = [0.0];
        transpose_f32(&[7.0], &[], &[], &mut y);
        assert_eq!(y, [7.0]);
        transpose_f32(&[8.0], &[1, 1, 1], &[2, 0, 1], &mut y);
        assert_eq!(y, [8.0]);
        transpose_f32(&[], &[2, 0, 3], &[2, 1, 0], &mut []);
    }

    #[test]
    fn every_permutation_up_to_rank_4() {
        let shapes: [&[usize]; 6] = [
            &[5],
            &[2, 3],
            &[2, 1, 4],
            &[3, 4, 2],
            &[2, 3, 1, 4],
            &[3, 2, 4, 5],
        ];
        for shape in shapes {
            let total: usize = shape.iter().product();
            let x: Vec<f32> = (0..total).map(|v| v as f32).collect();
            for perm in permutations(shape.len()) {
                let mut y = vec![f32::NAN; total];
                transpose_f32(&x, shape, &perm, &mut y);
                assert_eq!(y, naive(&x, shape, &perm), "{shape:?} {perm:?}");
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(1024))]

        #[test]
        fn matches_naive(shape in proptest::collection::vec(1usize..5, 0..=5), which in any::<prop::sample::Index>()) {
            let perms = permutations(shape.len());
            let perm = &perms[which.index(perms.len())];
            let total: usize = shape.iter().product();
            let x: Vec<f32> = (0..total).map(|v| v as f32).collect();
            let mut y = vec![f32::NAN; total];
            transpose_f32(&x, &shape, perm, &mut y);
            prop_assert_eq!(y, naive(&x, &shape, perm));
        }
    }
}
