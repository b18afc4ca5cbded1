//! Constant-mode padding (ONNX Pad, mode = constant), with negative pads cropping.

use super::MAX_RANK;

/// Pads (or, for negative pads, crops) `x` with `value`; y's dim i is `x_shape[i] + pads_begin[i] + pads_end[i]` (caller guarantees ≥ 0).
pub fn pad_constant_f32(
    x: &[f32],
    x_shape: &[usize],
    pads_begin: &[isize],
    pads_end: &[isize],
    value: f32,
    y: &mut [f32],
) {
    pad_constant(x, x_shape, pads_begin, pads_end, value, y);
}

/// [`pad_constant_f32`] for any element type (it only moves elements).
pub fn pad_constant<T: Copy>(
    x: &[T],
    x_shape: &[usize],
    pads_begin: &[isize],
    pads_end: &[isize],
    value: T,
    y: &mut [T],
) {
    let rank = x_shape.len();
    debug_assert!(rank <= MAX_RANK && pads_begin.len() == rank && pads_end.len() == rank);
    if rank == 0 {
        if let (Some(o), Some(&v)) = (y.first_mut(), x.first()) {
            *o = v;
        }
        return;
    }
    let mut y_shape = [0usize; MAX_RANK];
    let mut x_strides = [0usize; MAX_RANK];
    let mut step = 1;
    for d in (0..rank).rev() {
        let n = x_shape[d] as isize + pads_begin[d] + pads_end[d];
        debug_assert!(n >= 0);
        y_shape[d] = n.max(0) as usize;
        x_strides[d] = step;
        step *= x_shape[d];
    }
    let total: usize = y_shape[..rank].iter().product();
    debug_assert!(x.len() >= step && y.len() >= total);
    if total == 0 {
        return;
    }

    // Along the last dim every row has the same layout: `value` up to `lo`,
    // a copy of x in [lo, hi), `value` after. Only the outer coordinates
    // decide whether a row has any x data at all.
    let last = rank - 1;
    let (yw, xw, b) = (
        y_shape[last] as isize,
        x_shape[last] as isize,
        pads_begin[last],
    );
    let lo = b.clamp(0, yw);
    let hi = (b + xw).clamp(lo, yw);
    let x_col = (lo - b) as usize;
    let (lo, hi) = (lo as usize, hi as usize);

    let mut idx = [0usize; MAX_RANK];
    for y_row in y[..total].chunks_exact_mut(yw as usize) {
        let mut x_off = Some(0usize);
        for d in 0..last {
            let xi = idx[d] as isize - pads_begin[d];
            x_off = match x_off {
                Some(off) if xi >= 0 && (xi as usize) < x_shape[d] => {
                    Some(off + xi as usize * x_strides[d])
                }
                _ => None,
            };
        }
        match x_off {
            Some(off) if lo < hi => {
                y_row[..lo].fill(value);
                y_row[lo..hi].copy_from_slice(&x[off + x_col..][..hi - lo]);
                y_row[hi..].fill(value);
            }
            _ => y_row.fill(value),
        }
        for d in (0..last).rev() {
            idx[d] += 1;
            if idx[d] < y_shape[d] {
                break;
            }
            idx[d] = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Maps every y index back to x by subtracting the begin pads and
    /// checking each coordinate explicitly.
    fn naive(x: &[f32], x_shape: &[usize], begin: &[isize], end: &[isize], value: f32) -> Vec<f32> {
        let y_shape: Vec<usize> = (0..x_shape.len())
            .map(|d| (x_shape[d] as isize + begin[d] + end[d]) as usize)
            .collect();
        let total: usize = y_shape.iter().product();
        (0..total)
            .map(|flat| {
                let mut rem = flat;
                let mut at = Some(0usize);
                let mut mul = 1;
                for d in (0..y_shape.len()).rev() {
                    let xi = (rem % y_shape[d]) as isize - begin[d];
                    rem /= y_shape[d];
                    at = at
                        .filter(|_| xi >= 0 && xi < x_shape[d] as isize)
                        .map(|a| a + xi as usize * mul);
                    mul *= x_shape[d];
                }
                at.map_or(value, |a| x[a])
            })
            .collect()
    }

    #[test]
    fn hand_computed_2d() {
        let x = [1., 2., 3., 4.];
        let mut y = [0.0; 12];
        pad_constant_f32(&x, &[2, 2], &[1, 0], &[0, 2], 9.0, &mut y);
        assert_eq!(y, [9., 9., 9., 9., 1., 2., 9., 9., 3., 4., 9., 9.]);
    }

    #[test]
    fn negative_pads_crop() {
        // Crop one column on the left, pad one on the right, drop the first row.
        let x = [1., 2., 3., 4., 5., 6.];
        let mut y = [0.0; 3];
        pad_constant_f32(&x, &[2, 3], &[-1, -1], &[0, 1], 0.0, &mut y);
        assert_eq!(y, [5., 6., 0.]);
    }

    #[test]
    fn degenerate_shapes() {
        let mut y = [0.0];
        pad_constant_f32(&[3.0], &[], &[], &[], 1.0, &mut y);
        assert_eq!(y, [3.0]);
        let mut y = [0.0; 4];
        pad_constant_f32(&[], &[0, 2], &[1, 0], &[1, 0], -1.0, &mut y);
        assert_eq!(y, [-1.0; 4]);
        pad_constant_f32(&[1.0, 2.0], &[2], &[-2], &[0], 0.0, &mut []);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(1024))]

        #[test]
        fn matches_naive(
            shape in proptest::collection::vec(0usize..5, 1..=5),
            pads in proptest::collection::vec((-3isize..=3, -3isize..=3), 5),
            value in -2.0f32..2.0,
        ) {
            // Clamp negative pads so each output dim stays ≥ 0.
            let rank = shape.len();
            let (mut begin, mut end) = (vec![0; rank], vec![0; rank]);
            for d in 0..rank {
                let n = shape[d] as isize;
                begin[d] = pads[d].0.max(-n);
                end[d] = pads[d].1.max(-(n + begin[d]));
            }
            let total: usize = shape.iter().product();
            let x: Vec<f32> = (0..total).map(|v| v as f32).collect();
            let want = naive(&x, &shape, &begin, &end, value);
            let mut y = vec![f32::NAN; want.len()];
            pad_constant_f32(&x, &shape, &begin, &end, value, &mut y);
            prop_assert_eq!(y, want);
        }
    }
}
