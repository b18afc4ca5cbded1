//! Element-wise arithmetic with ONNX multidirectional (numpy) broadcasting.

use super::MAX_RANK;

/// An element-wise binary arithmetic operator.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BinaryOp {
    /// `a + b`.
    Add,
    /// `a - b`.
    Sub,
    /// `a * b`.
    Mul,
    /// `a / b` (IEEE: division by zero gives ±inf or NaN).
    Div,
}

/// Computes the right-aligned numpy broadcast of `a` and `b` into `out`, returning its rank (None if incompatible or rank > MAX_RANK).
pub fn broadcast_shape(a: &[usize], b: &[usize], out: &mut [usize; MAX_RANK]) -> Option<usize> {
    let rank = a.len().max(b.len());
    if rank > MAX_RANK {
        return None;
    }
    let (a_lead, b_lead) = (rank - a.len(), rank - b.len());
    for (d, o) in out[..rank].iter_mut().enumerate() {
        let da = if d < a_lead { 1 } else { a[d - a_lead] };
        let db = if d < b_lead { 1 } else { b[d - b_lead] };
        *o = if da == db || db == 1 {
            da
        } else if da == 1 {
            db
        } else {
            return None;
        };
    }
    Some(rank)
}

/// y = a op b with ONNX multidirectional (numpy) broadcasting. Shapes are given right-aligned already expanded to the output rank: a_shape, b_shape, y_shape all have the same length (rank ≤ MAX_RANK), each a/b dim is either equal to y's or 1.
pub fn binary_f32(
    op: BinaryOp,
    a: &[f32],
    a_shape: &[usize],
    b: &[f32],
    b_shape: &[usize],
    y: &mut [f32],
    y_shape: &[usize],
) {
    // Matching on the operator once here monomorphises every loop below, so
    // the inner loops contain a single arithmetic instruction.
    match op {
        BinaryOp::Add => broadcast(|p, q| p + q, a, a_shape, b, b_shape, y, y_shape),
        BinaryOp::Sub => broadcast(|p, q| p - q, a, a_shape, b, b_shape, y, y_shape),
        BinaryOp::Mul => broadcast(|p, q| p * q, a, a_shape, b, b_shape, y, y_shape),
        BinaryOp::Div => broadcast(|p, q| p / q, a, a_shape, b, b_shape, y, y_shape),
    }
}

/// `y = f(a, b)` elementwise with broadcasting, shapes as in
/// [`binary_f32`]; any element types (the int8 kernels use it too).
#[inline(always)]
pub(crate) fn broadcast<A: Copy, B: Copy, Y: Copy, F: Fn(A, B) -> Y + Copy>(
    f: F,
    a: &[A],
    a_shape: &[usize],
    b: &[B],
    b_shape: &[usize],
    y: &mut [Y],
    y_shape: &[usize],
) {
    let rank = y_shape.len();
    debug_assert!(rank <= MAX_RANK && a_shape.len() == rank && b_shape.len() == rank);
    let total: usize = y_shape.iter().product();
    let a_len: usize = a_shape.iter().product();
    let b_len: usize = b_shape.iter().product();
    debug_assert!(a.len() >= a_len && b.len() >= b_len && y.len() >= total);
    if total == 0 {
        return;
    }
    let y = &mut y[..total];

    // Because every a/b dim equals y's or is 1, an operand is unbroadcast
    // exactly when its element count equals y's.
    if a_len == total && b_len == total {
        return run(f, y, a, 1, b, 1);
    }
    if b_len == 1 && a_len == total {
        return run(f, y, a, 1, b, 0);
    }
    if a_len == 1 && b_len == total {
        return run(f, y, a, 0, b, 1);
    }

    // General case: give each operand a stride per y dim (0 where it is
    // broadcast), then fuse adjacent dims that both operands walk uniformly.
    // Fusing turns e.g. a [C,1,1] bias against [N,C,H,W] into runs of H*W
    // with a constant b, so the inner loop below stays long and contiguous.
    // Fused dims are stored innermost first.
    let mut dims = [0usize; MAX_RANK];
    let mut sa = [0usize; MAX_RANK];
    let mut sb = [0usize; MAX_RANK];
    let mut r = 0;
    let (mut step_a, mut step_b) = (1usize, 1usize);
    for d in (0..rank).rev() {
        let n = y_shape[d];
        let da = if a_shape[d] == 1 { 0 } else { step_a };
        let db = if b_shape[d] == 1 { 0 } else { step_b };
        step_a *= a_shape[d];
        step_b *= b_shape[d];
        if n == 1 {
            continue;
        }
        if r > 0 && da == sa[r - 1] * dims[r - 1] && db == sb[r - 1] * dims[r - 1] {
            dims[r - 1] *= n;
        } else {
            dims[r] = n;
            sa[r] = da;
            sb[r] = db;
            r += 1;
        }
    }
    if r == 0 {
        // Every dim is 1: a single element (strides stay 0).
        dims[0] = 1;
        r = 1;
    }

    let inner = dims[0];
    let mut idx = [0usize; MAX_RANK];
    let (mut ao, mut bo) = (0usize, 0usize);
    for y_run in y.chunks_exact_mut(inner) {
        run(f, y_run, &a[ao..], sa[0], &b[bo..], sb[0]);
        for d in 1..r {
            idx[d] += 1;
            ao += sa[d];
            bo += sb[d];
            if idx[d] < dims[d] {
                break;
            }
            idx[d] = 0;
            ao -= sa[d] * dims[d];
            bo -= sb[d] * dims[d];
        }
    }
}

/// One contiguous run of y: each operand is either walked with stride 1 or
/// held constant (stride 0); the innermost fused dim never has other strides.
#[inline(always)]
fn run<A: Copy, B: Copy, Y: Copy, F: Fn(A, B) -> Y>(
    f: F,
    y: &mut [Y],
    a: &[A],
    sa: usize,
    b: &[B],
    sb: usize,
) {
    debug_assert!(sa <= 1 && sb <= 1);
    let n = y.len();
    match (sa, sb) {
        (0, 0) => y.fill(f(a[0], b[0])),
        (_, 0) => {
            let q = b[0];
            for (o, &p) in y.iter_mut().zip(&a[..n]) {
                *o = f(p, q);
            }
        }
        (0, _) => {
            let p = a[0];
            for (o, &q) in y.iter_mut().zip(&b[..n]) {
                *o = f(p, q);
            }
        }
        _ => {
            for ((o, &p), &q) in y.iter_mut().zip(&a[..n]).zip(&b[..n]) {
                *o = f(p, q);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_util::{assert_close, fill};
    use super::*;
    use proptest::prelude::*;

    /// Test values kept away from zero so Div stays well conditioned.
    fn operand(seed: u64, n: usize) -> Vec<f32> {
        let v = fill(seed, n);
        v.into_iter()
            .map(|v| if v.abs() < 0.1 { v + 0.5 } else { v })
            .collect()
    }

    /// Unravels every output index and re-ravels it into each operand.
    fn naive(
        op: BinaryOp,
        a: &[f32],
        a_shape: &[usize],
        b: &[f32],
        b_shape: &[usize],
        y_shape: &[usize],
    ) -> Vec<f64> {
        let total: usize = y_shape.iter().product();
        (0..total)
            .map(|flat| {
                let mut rem = flat;
                let (mut ai, mut bi, mut am, mut bm) = (0, 0, 1, 1);
                for d in (0..y_shape.len()).rev() {
                    let i = rem % y_shape[d];
                    rem /= y_shape[d];
                    if a_shape[d] != 1 {
                        ai += i * am;
                    }
                    if b_shape[d] != 1 {
                        bi += i * bm;
                    }
                    am *= a_shape[d];
                    bm *= b_shape[d];
                }
                let (p, q) = (a[ai] as f64, b[bi] as f64);
                match op {
                    BinaryOp::Add => p + q,
                    BinaryOp::Sub => p - q,
                    BinaryOp::Mul => p * q,
                    BinaryOp::Div => p / q,
                }
            })
            .collect()
    }

    /// Runs the kernel on `a_shape` and `b_shape` (right-aligned) broadcast to
    /// `y_shape`, or to their numpy broadcast when None, against `naive`.
    fn check(
        op: BinaryOp,
        a_shape: &[usize],
        b_shape: &[usize],
        y_shape: Option<&[usize]>,
        seed: u64,
    ) {
        let mut out = [0; MAX_RANK];
        let rank = broadcast_shape(a_shape, b_shape, &mut out).expect("compatible");
        let y_shape = y_shape.unwrap_or(&out[..rank]);
        let rank = y_shape.len();
        let expand = |s: &[usize]| {
            let mut e = vec![1; rank - s.len()];
            e.extend_from_slice(s);
            e
        };
        let (ae, be) = (expand(a_shape), expand(b_shape));
        let a = operand(seed, ae.iter().product());
        let b = operand(seed.wrapping_mul(31).wrapping_add(7), be.iter().product());
        let total: usize = y_shape.iter().product();
        let mut y = vec![f32::NAN; total];
        binary_f32(op, &a, &ae, &b, &be, &mut y, y_shape);
        let want = naive(op, &a, &ae, &b, &be, y_shape);
        assert_close(&y, &want, &(op, a_shape, b_shape, y_shape));
    }

    #[test]
    fn hand_computed() {
        // [2,3] + [3]
        let mut y = [0.0; 6];
        binary_f32(
            BinaryOp::Add,
            &[1., 2., 3., 4., 5., 6.],
            &[2, 3],
            &[10., 20., 30.],
            &[1, 3],
            &mut y,
            &[2, 3],
        );
        assert_eq!(y, [11., 22., 33., 14., 25., 36.]);
        // [2,1] * [1,3] (outer product)
        binary_f32(
            BinaryOp::Mul,
            &[2., 3.],
            &[2, 1],
            &[1., 10., 100.],
            &[1, 3],
            &mut y,
            &[2, 3],
        );
        assert_eq!(y, [2., 20., 200., 3., 30., 300.]);
        // scalar - tensor, tensor / scalar
        let mut z = [0.0; 3];
        binary_f32(
            BinaryOp::Sub,
            &[1.],
            &[1],
            &[1., 2., 4.],
            &[3],
            &mut z,
            &[3],
        );
        assert_eq!(z, [0., -1., -3.]);
        binary_f32(
            BinaryOp::Div,
            &[1., 2., 4.],
            &[3],
            &[2.],
            &[1],
            &mut z,
            &[3],
        );
        assert_eq!(z, [0.5, 1., 2.]);
        // per-channel bias [1,2,1,1] on [1,2,2,2]
        let mut w = [0.0; 8];
        binary_f32(
            BinaryOp::Add,
            &[0.; 8],
            &[1, 2, 2, 2],
            &[1., -1.],
            &[1, 2, 1, 1],
            &mut w,
            &[1, 2, 2, 2],
        );
        assert_eq!(w, [1., 1., 1., 1., -1., -1., -1., -1.]);
    }

    #[test]
    fn broadcast_shape_rules() {
        let mut out = [0; MAX_RANK];
        assert_eq!(broadcast_shape(&[2, 3, 4], &[4], &mut out), Some(3));
        assert_eq!(&out[..3], &[2, 3, 4]);
        assert_eq!(broadcast_shape(&[5, 1, 4], &[3, 1], &mut out), Some(3));
        assert_eq!(&out[..3], &[5, 3, 4]);
        assert_eq!(broadcast_shape(&[], &[], &mut out), Some(0));
        assert_eq!(broadcast_shape(&[0], &[1], &mut out), Some(1));
        assert_eq!(out[0], 0);
        assert_eq!(broadcast_shape(&[2, 3], &[3, 3], &mut out), None);
        assert_eq!(broadcast_shape(&[0], &[3], &mut out), None);
        assert_eq!(broadcast_shape(&[1; 9], &[1], &mut out), None);
    }

    #[test]
    fn zero_size_and_rank_zero() {
        let mut y: [f32; 0] = [];
        binary_f32(
            BinaryOp::Add,
            &[],
            &[2, 0],
            &[1.0],
            &[1, 1],
            &mut y,
            &[2, 0],
        );
        // y larger than both operands: a [1,3] and a scalar b expanded to [2,3].
        let mut y = [0.0; 6];
        binary_f32(
            BinaryOp::Mul,
            &[1., 2., 3.],
            &[1, 3],
            &[2.],
            &[1, 1],
            &mut y,
            &[2, 3],
        );
        assert_eq!(y, [2., 4., 6., 2., 4., 6.]);
        let mut s = [0.0];
        binary_f32(BinaryOp::Mul, &[3.0], &[], &[4.0], &[], &mut s, &[]);
        assert_eq!(s, [12.0]);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(1024))]

        #[test]
        fn matches_naive_broadcast(
            y_shape in proptest::collection::vec(1usize..5, 1..=5),
            a_mask in 0u32..32,
            b_mask in 0u32..32,
            a_drop in 0usize..5,
            b_drop in 0usize..5,
            op in 0usize..4,
            seed in any::<u64>(),
        ) {
            let rank = y_shape.len();
            // Mask bits pick broadcast dims; dropping leading dims exercises
            // rank differences.
            let shape_of = |mask: u32, drop: usize| -> Vec<usize> {
                (drop.min(rank - 1)..rank).map(|d| if mask >> d & 1 == 1 { 1 } else { y_shape[d] }).collect()
            };
            let ops = [BinaryOp::Add, BinaryOp::Sub, BinaryOp::Mul, BinaryOp::Div];
            let (a_shape, b_shape) = (shape_of(a_mask, a_drop), shape_of(b_mask, b_drop));
            check(ops[op], &a_shape, &b_shape, None, seed);
            // The kernel also allows y larger than both operands (Expand-like).
            check(ops[op], &a_shape, &b_shape, Some(&y_shape), seed);
        }
    }
}
