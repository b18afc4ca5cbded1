//! Integer matrix multiplication with zero points (ONNX `MatMulInteger`,
//! `QLinearMatMul`, and the int8 form of `Gemm`), producing raw int32
//! accumulators or, through a fused [`OutputStage`], requantized 8-bit
//! outputs.
//!
//! Operands are `i8` or `u8` ([`QElem`]). Products are formed as
//! `(a − za) · (b − zb)` and summed in int32. Each factor lies in
//! `[−255, 255]`, so a sum of `k` products is exact for
//! `k ≤ ` [`MAX_EXACT_DEPTH`] (33 025) whatever the data and zero points; the
//! int8 scheme's symmetric weights (zero point 0, |b| ≤ 127) allow
//! `k ≤ 2^16` (`255 · 127 · 2^16 < 2^31`). Beyond that the sum wraps as
//! int32 arithmetic does; it never panics.

use crate::quant::{OutputStage, QElem};

/// Largest depth `k` whose int32 sum is exact for any 8-bit operands and
/// zero points: `255² · k ≤ 2^31 − 1`.
pub const MAX_EXACT_DEPTH: usize = (i32::MAX / (255 * 255)) as usize;

/// Output columns requantized per step of [`gemm_i8_requant`]: the size of
/// its on-stack accumulator block (128 bytes).
const BLOCK: usize = 32;

/// `y[m×n]` (row-major, contiguous, int32) = `Σ_p (a[i,p] − za)·(b[p,j] − zb[j])`,
/// where element (i,p) of a is `a[i*a_rs + p*a_cs]` and element (p,j) of b is
/// `b[p*b_rs + j*b_cs]`, as in [`super::matmul::matmul_f32`]. `zb` holds one
/// zero point for all of b, or one per column (`n` entries).
// The argument list mirrors BLAS gemm plus the zero points.
#[allow(clippy::too_many_arguments)]
pub fn gemm_i8_acc<A: QElem, B: QElem>(
    m: usize,
    k: usize,
    n: usize,
    a: &[A],
    a_rs: usize,
    a_cs: usize,
    za: A,
    b: &[B],
    b_rs: usize,
    b_cs: usize,
    zb: &[B],
    y: &mut [i32],
) {
    debug_assert!(y.len() >= m * n);
    if m == 0 || n == 0 {
        return;
    }
    let ops = Operands::new(m, k, n, a, a_rs, a_cs, za, b, b_rs, b_cs, zb);
    for (i, y_row) in y[..m * n].chunks_exact_mut(n).enumerate() {
        ops.row_block(i, 0, y_row);
    }
}

/// [`gemm_i8_acc`] followed by `out`, column `j` being output channel `j`:
/// `y[i,j] = out.finish(acc[i,j], j)` (bias, requantization, output zero
/// point, clamp). `out` must fit `n` channels.
#[allow(clippy::too_many_arguments)]
pub fn gemm_i8_requant<A: QElem, B: QElem, Y: QElem>(
    m: usize,
    k: usize,
    n: usize,
    a: &[A],
    a_rs: usize,
    a_cs: usize,
    za: A,
    b: &[B],
    b_rs: usize,
    b_cs: usize,
    zb: &[B],
    out: &OutputStage<'_, Y>,
    y: &mut [Y],
) {
    debug_assert!(y.len() >= m * n);
    debug_assert!(out.fits(n));
    if m == 0 || n == 0 {
        return;
    }
    let ops = Operands::new(m, k, n, a, a_rs, a_cs, za, b, b_rs, b_cs, zb);
    let mut acc = [0i32; BLOCK];
    for (i, y_row) in y[..m * n].chunks_exact_mut(n).enumerate() {
        for (blk, y_blk) in y_row.chunks_mut(BLOCK).enumerate() {
            let j0 = blk * BLOCK;
            let acc = &mut acc[..y_blk.len()];
            ops.row_block(i, j0, acc);
            for (jj, (o, &v)) in y_blk.iter_mut().zip(acc.iter()).enumerate() {
                *o = out.finish(v, j0 + jj);
            }
        }
    }
}

/// Both operands with their layout and zero points.
struct Operands<'a, A, B> {
    k: usize,
    a: &'a [A],
    a_rs: usize,
    a_cs: usize,
    za: i32,
    b: &'a [B],
    b_rs: usize,
    b_cs: usize,
    zb: &'a [B],
}

impl<'a, A: QElem, B: QElem> Operands<'a, A, B> {
    #[allow(clippy::too_many_arguments)]
    fn new(
        m: usize,
        k: usize,
        n: usize,
        a: &'a [A],
        a_rs: usize,
        a_cs: usize,
        za: A,
        b: &'a [B],
        b_rs: usize,
        b_cs: usize,
        zb: &'a [B],
    ) -> Self {
        debug_assert!(
            zb.len() == 1 || zb.len() == n,
            "zb has {} entries",
            zb.len()
        );
        debug_assert!(k == 0 || a.len() > (m - 1) * a_rs + (k - 1) * a_cs);
        debug_assert!(k == 0 || b.len() > (k - 1) * b_rs + (n - 1) * b_cs);
        // With one column its stride is never used; call B row-major.
        let b_cs = if n == 1 { 1 } else { b_cs };
        Operands {
            k,
            a,
            a_rs,
            a_cs,
            za: za.to_i32(),
            b,
            b_rs,
            b_cs,
            zb,
        }
    }

    /// `acc[jj]` = accumulator (i, j0 + jj), for every jj in acc.
    #[inline(always)]
    fn row_block(&self, i: usize, j0: usize, acc: &mut [i32]) {
        let (k, nb) = (self.k, acc.len());
        let a_at = |p: usize| self.a[i * self.a_rs + p * self.a_cs].to_i32() - self.za;
        // Zero points of this block's columns: one for all, or one each.
        let zb = if self.zb.len() == 1 {
            &self.zb[..1]
        } else {
            &self.zb[j0..j0 + nb]
        };
        if k == 0 {
            acc.fill(0);
        } else if self.b_cs == 1 {
            // Row-major B: i-p-j order, an axpy over a contiguous B row per
            // element of a, as in matmul_f32.
            acc.fill(0);
            for p in 0..k {
                let av = a_at(p);
                let b_row = &self.b[p * self.b_rs + j0..][..nb];
                if let [z] = zb {
                    let z = z.to_i32();
                    for (o, &bv) in acc.iter_mut().zip(b_row) {
                        *o = o.wrapping_add(av * (bv.to_i32() - z));
                    }
                } else {
                    for ((o, &bv), &z) in acc.iter_mut().zip(b_row).zip(zb) {
                        *o = o.wrapping_add(av * (bv.to_i32() - z.to_i32()));
                    }
                }
            }
        } else if self.b_rs == 1 {
            // Transposed B: every column is contiguous, so each accumulator
            // is a dot product with one zero point.
            for (jj, o) in acc.iter_mut().enumerate() {
                let z = zb[if zb.len() == 1 { 0 } else { jj }].to_i32();
                let b_col = &self.b[(j0 + jj) * self.b_cs..][..k];
                *o = if self.a_cs == 1 {
                    let a_row = &self.a[i * self.a_rs..][..k];
                    dot(a_row, self.za, b_col, z)
                } else {
                    let mut s = 0i32;
                    for (p, &bv) in b_col.iter().enumerate() {
                        s = s.wrapping_add(a_at(p) * (bv.to_i32() - z));
                    }
                    s
                };
            }
        } else {
            // Arbitrary strides: the row-major order with strided B reads.
            let z_step = (zb.len() > 1) as usize;
            acc.fill(0);
            for p in 0..k {
                let av = a_at(p);
                let b_row = &self.b[p * self.b_rs + j0 * self.b_cs..];
                for (jj, o) in acc.iter_mut().enumerate() {
                    let bv = b_row[jj * self.b_cs].to_i32() - zb[jj * z_step].to_i32();
                    *o = o.wrapping_add(av * bv);
                }
            }
        }
    }
}

/// Σ (a[p] − za)·(b[p] − zb) over two contiguous slices. int8 operands
/// take the SIMD inner loop: `Σab − za·Σb − zb·Σa + k·za·zb`, equal to the
/// direct sum in wrapping int32 arithmetic.
#[inline(always)]
fn dot<A: QElem, B: QElem>(a: &[A], za: i32, b: &[B], zb: i32) -> i32 {
    if let (Some(a8), Some(b8)) = (A::as_i8(a), B::as_i8(b)) {
        let (ab, sb) = crate::kernels::dot_i8(a8, b8);
        let mut s = ab.wrapping_sub(za.wrapping_mul(sb));
        if zb != 0 {
            let sa = a8.iter().fold(0i32, |t, &v| t.wrapping_add(i32::from(v)));
            let k = a8.len() as i32;
            s = s
                .wrapping_sub(zb.wrapping_mul(sa))
                .wrapping_add(k.wrapping_mul(za).wrapping_mul(zb));
        }
        return s;
    }
    let mut s = 0i32;
    for (&av, &bv) in a.iter().zip(b) {
        s = s.wrapping_add((av.to_i32() - za) * (bv.to_i32() - zb));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::Requant;
    use proptest::prelude::*;

    /// Deterministic 8-bit values from a seed, spanning the whole type.
    fn fill_q<T: QElem>(seed: u64, n: usize) -> Vec<T> {
        let mut s = seed | 1;
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                T::from_i32_saturating(T::MIN + (s >> 56) as i32)
            })
            .collect()
    }

    /// Σ (a − za)(b − zb) in i64, one element at a time.
    #[allow(clippy::too_many_arguments)]
    fn naive<A: QElem, B: QElem>(
        m: usize,
        k: usize,
        n: usize,
        a: &[A],
        (a_rs, a_cs): (usize, usize),
        za: A,
        b: &[B],
        (b_rs, b_cs): (usize, usize),
        zb: &[B],
    ) -> Vec<i64> {
        let mut y = Vec::new();
        for i in 0..m {
            for j in 0..n {
                let z = zb[if zb.len() == 1 { 0 } else { j }].to_i32() as i64;
                let dot = (0..k).map(|p| {
                    let av = a[i * a_rs + p * a_cs].to_i32() as i64 - za.to_i32() as i64;
                    av * (b[p * b_rs + j * b_cs].to_i32() as i64 - z)
                });
                y.push(dot.sum::<i64>());
            }
        }
        y
    }

    #[test]
    fn hand_computed_acc_with_zero_points() {
        // a = [[3, −2], [0, 5]], za = 1 → [[2, −3], [−1, 4]];
        // b = [[4, 1], [0, −5]], zb per column [0, −1] → [[4, 2], [0, −4]].
        let a = [3i8, -2, 0, 5];
        let b = [4i8, 1, 0, -5];
        let mut y = [0i32; 4];
        gemm_i8_acc(2, 2, 2, &a, 2, 1, 1, &b, 2, 1, &[0, -1], &mut y);
        assert_eq!(y, [8, 16, -4, -18]);
        // Same B transposed ([2×2] stored column-major).
        let bt = [4i8, 0, 1, -5];
        let mut y = [0i32; 4];
        gemm_i8_acc(2, 2, 2, &a, 2, 1, 1, &bt, 1, 2, &[0, -1], &mut y);
        assert_eq!(y, [8, 16, -4, -18]);
    }

    #[test]
    fn hand_computed_requantized() {
        // a = [[3, −2]] (u8 would not hold −2: use i8), za = 1 → [2, −3];
        // b = [[4, 1], [0, −5]], zb = 0; acc = [8, 17].
        // bias [2, −1] → [10, 16]; scales 0.25 and 0.5:
        // 10·0.25 = 2.5 → 3 (ties towards +∞), 16·0.5 = 8; zero point 100 → u8
        // [103, 108]; clamp [0, 105] (a Clip) → [103, 105].
        let a = [3i8, -2];
        let b = [4i8, 1, 0, -5];
        let r = [
            Requant::from_scale(0.25).unwrap(),
            Requant::from_scale(0.5).unwrap(),
        ];
        let bias = [2, -1];
        let out = OutputStage {
            bias: Some(&bias[..]),
            act_max: 105u8,
            ..OutputStage::new(&r, 100u8)
        };
        let mut y = [0u8; 2];
        gemm_i8_requant(1, 2, 2, &a, 2, 1, 1, &b, 2, 1, &[0], &out, &mut y);
        assert_eq!(y, [103, 105]);
        // Negative side: −a → acc [−8, −17], + bias → [−6, −18];
        // −6·0.25 = −1.5 → −1 (ties towards +∞), −18·0.5 = −9 → [99, 91].
        let a = [-1i8, 4]; // − za(1) → [−2, 3]
        gemm_i8_requant(1, 2, 2, &a, 2, 1, 1, &b, 2, 1, &[0], &out, &mut y);
        assert_eq!(y, [99, 91]);
    }

    #[test]
    fn zero_sizes() {
        let mut y = [7i32; 6];
        gemm_i8_acc::<i8, i8>(2, 0, 3, &[], 0, 1, 0, &[], 3, 1, &[0], &mut y);
        assert_eq!(y, [0; 6]);
        let mut y = [7i32; 1];
        gemm_i8_acc::<i8, u8>(0, 3, 5, &[], 3, 1, 0, &[0; 15], 5, 1, &[0], &mut y);
        gemm_i8_acc::<u8, i8>(2, 3, 0, &[0; 6], 3, 1, 0, &[], 0, 1, &[0], &mut y);
        assert_eq!(y, [7]);
        // k = 0 with requantization: the bias alone.
        let r = [Requant::from_scale(1.0).unwrap()];
        let out = OutputStage {
            bias: Some(&[5, -5][..]),
            ..OutputStage::new(&r, 1i8)
        };
        let mut y = [0i8; 2];
        gemm_i8_requant::<u8, u8, i8>(1, 0, 2, &[], 0, 1, 0, &[], 2, 1, &[0], &out, &mut y);
        assert_eq!(y, [6, -4]);
    }

    #[test]
    fn extreme_values_at_max_exact_depth() {
        // Every product is (−128 − 127)² = 255²: the largest possible sum.
        let k = MAX_EXACT_DEPTH;
        let a = vec![-128i8; k];
        let b = vec![-128i8; k];
        let mut y = [0i32; 1];
        gemm_i8_acc(1, k, 1, &a, k, 1, 127, &b, 1, 1, &[127], &mut y);
        assert_eq!(y[0] as i64, 255 * 255 * k as i64);
        // u8 extremes the other way: (0 − 255)·(255 − 0).
        let a = vec![0u8; k];
        let b = vec![255u8; k];
        gemm_i8_acc(1, k, 1, &a, k, 1, 255, &b, 1, 1, &[0], &mut y);
        assert_eq!(y[0] as i64, -255 * 255 * k as i64);
        // The scheme's bound: k = 2^16 with |b| ≤ 127, zb = 0.
        let k = 1 << 16;
        let a = vec![0u8; k];
        let b = vec![-127i8; k];
        gemm_i8_acc(1, k, 1, &a, 1, 1, 255, &b, 1, 1, &[0], &mut y);
        assert_eq!(y[0] as i64, 255 * 127 * k as i64);
    }

    /// Runs both kernels on one random problem and compares with [`naive`].
    #[allow(clippy::too_many_arguments)]
    fn check<A: QElem, B: QElem, Y: QElem>(
        (m, k, n): (usize, usize, usize),
        a_t: bool,
        b_layout: usize,
        pad: usize,
        zb_per_col: bool,
        with_bias: bool,
        seed: u64,
    ) {
        let (a_rs, a_cs, a_len) = if a_t { (1, m, k * m) } else { (k, 1, m * k) };
        let (b_rs, b_cs, b_len) = match b_layout {
            0 => (n + pad, 1, k * (n + pad)),
            1 => (1, k + pad, n * (k + pad)),
            _ => (n * 2 + pad, 2, k * (n * 2 + pad)),
        };
        let a = fill_q::<A>(seed, a_len);
        let b = fill_q::<B>(seed ^ 0x9e37_79b9, b_len);
        let za = fill_q::<A>(seed ^ 1, 1)[0];
        let zb = fill_q::<B>(seed ^ 2, if zb_per_col { n } else { 1 });
        let ctx = (m, k, n, a_t, b_layout, pad, zb_per_col, seed);
        let want = naive(m, k, n, &a, (a_rs, a_cs), za, &b, (b_rs, b_cs), &zb);

        let mut y = vec![i32::MIN; m * n];
        gemm_i8_acc(m, k, n, &a, a_rs, a_cs, za, &b, b_rs, b_cs, &zb, &mut y);
        let got: Vec<i64> = y.iter().map(|&v| v as i64).collect();
        assert_eq!(got, want, "{ctx:?}");

        // Requantized: per-column scales in [2^-12, 2^-4], bias within ±2^14.
        let bias: Vec<i32> = fill_q::<i8>(seed ^ 3, n)
            .iter()
            .map(|&v| v as i32 * 128)
            .collect();
        let requant: Vec<Requant> = fill_q::<u8>(seed ^ 4, n)
            .iter()
            .map(|&v| Requant::from_scale((2.0f64).powf(-4.0 - v as f64 / 32.0)).unwrap())
            .collect();
        // Per-tensor or per-column requantization, full range or a random
        // clamp, chosen by seed bits.
        let requant = if seed & 16 == 0 {
            &requant[..]
        } else {
            &requant[..n.min(1)]
        };
        let zy = fill_q::<Y>(seed ^ 5, 3);
        let (act_min, act_max) = if seed & 8 == 0 {
            (
                Y::from_i32_saturating(Y::MIN),
                Y::from_i32_saturating(Y::MAX),
            )
        } else {
            zy[1].min_max(zy[2])
        };
        let out = OutputStage {
            bias: with_bias.then_some(&bias[..]),
            requant,
            zero_point: zy[0],
            act_min,
            act_max,
        };
        let mut y = vec![Y::default(); m * n];
        gemm_i8_requant(
            m, k, n, &a, a_rs, a_cs, za, &b, b_rs, b_cs, &zb, &out, &mut y,
        );
        for (idx, (&g, &w)) in y.iter().zip(&want).enumerate() {
            let j = idx % n;
            let acc = w as i32 + if with_bias { bias[j] } else { 0 };
            let r = requant[if requant.len() == 1 { 0 } else { j }];
            let v = r.apply(acc) + zy[0].to_i32();
            let v = v.clamp(act_min.to_i32(), act_max.to_i32());
            assert_eq!(g.to_i32(), v, "{ctx:?} at {idx}");
        }
    }

    /// (min, max) of two elements.
    trait MinMax: Sized {
        fn min_max(self, other: Self) -> (Self, Self);
    }
    impl<T: QElem> MinMax for T {
        fn min_max(self, other: T) -> (T, T) {
            if self.to_i32() <= other.to_i32() {
                (self, other)
            } else {
                (other, self)
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(1024))]

        #[test]
        fn matches_naive(
            m in 0usize..6,
            k in 0usize..40,
            n in 0usize..(2 * BLOCK + 3),
            a_t in any::<bool>(),
            b_layout in 0usize..3,
            pad in 0usize..3,
            zb_per_col in any::<bool>(),
            with_bias in any::<bool>(),
            types in 0usize..4,
            seed in any::<u64>(),
        ) {
            let args = ((m, k, n), a_t, b_layout, pad, zb_per_col, with_bias, seed);
            match types {
                0 => check::<i8, i8, i8>(args.0, args.1, args.2, args.3, args.4, args.5, args.6),
                1 => check::<u8, i8, u8>(args.0, args.1, args.2, args.3, args.4, args.5, args.6),
                2 => check::<u8, u8, i8>(args.0, args.1, args.2, args.3, args.4, args.5, args.6),
                _ => check::<i8, u8, u8>(args.0, args.1, args.2, args.3, args.4, args.5, args.6),
            }
        }
    }
}
