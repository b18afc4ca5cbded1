//! Integer addition with numpy broadcasting: the int8 form of Add, in
//! TFLite's quantized-add scheme (`reference_ops::Add`, TFLite Micro's
//! `add.cc`).
//!
//! Each input, less its zero point, is shifted left by [`LEFT_SHIFT`] bits
//! and brought to a common scale, `2 · max(a_scale, b_scale)`, by its own
//! fixed-point multiplier (`a_scale / (2 · max)`, at most 0.5); the two
//! are added in int32 and the sum requantized to the output scale
//! (`2 · max / (2^20 · out_scale)`), the output zero point added and the
//! result clamped. The 20 extra bits keep the rounding of the inputs'
//! rescaling far below one output step, so the result is within one LSB of
//! `round((a − za)·a_scale/out_scale + (b − zb)·b_scale/out_scale) + zy`.
//! Inputs of 8 bits: `|a − za| · 2^20 < 2^28`, so nothing overflows.

use super::binary::broadcast;
use crate::quant::{QElem, QuantError, Requant};

/// Bits the inputs are shifted left by before rescaling (TFLite's value
/// for 8-bit inputs).
pub const LEFT_SHIFT: i32 = 20;

/// The three requantizations of an int8 add.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct AddRequants {
    /// Input a to the common scale.
    pub a: Requant,
    /// Input b to the common scale.
    pub b: Requant,
    /// The sum to the output scale.
    pub out: Requant,
}

impl AddRequants {
    /// The requantizations for input scales `a_scale`, `b_scale` and output
    /// scale `out_scale`, computed in f64 as TFLite Micro does.
    ///
    /// # Errors
    /// A scale that is not finite and positive, or an output multiplier of
    /// 2^30 or more (an output scale below ~2^-50 of the inputs').
    pub fn from_scales(
        a_scale: f32,
        b_scale: f32,
        out_scale: f32,
    ) -> Result<AddRequants, QuantError> {
        crate::quant::check_scales("add scale", &[a_scale, b_scale, out_scale])?;
        let twice_max = 2.0 * f64::from(a_scale.max(b_scale));
        Ok(AddRequants {
            a: Requant::from_scale(f64::from(a_scale) / twice_max)?,
            b: Requant::from_scale(f64::from(b_scale) / twice_max)?,
            out: Requant::from_scale(
                twice_max / ((1u32 << LEFT_SHIFT) as f64 * f64::from(out_scale)),
            )?,
        })
    }
}

/// Everything the add does after reading its inputs: requantizations,
/// output zero point and clamp.
#[derive(Clone, Copy, Debug)]
pub struct AddStage<Y: QElem> {
    /// The requantizations.
    pub requants: AddRequants,
    /// Output zero point.
    pub zero_point: Y,
    /// Lower clamp bound (an output value).
    pub act_min: Y,
    /// Upper clamp bound.
    pub act_max: Y,
}

impl<Y: QElem> AddStage<Y> {
    /// The output for inputs `a` and `b`, their zero points already taken
    /// off.
    #[inline(always)]
    pub fn add(&self, a: i32, b: i32) -> Y {
        let r = &self.requants;
        let sa = r.a.apply(a.wrapping_mul(1 << LEFT_SHIFT));
        let sb = r.b.apply(b.wrapping_mul(1 << LEFT_SHIFT));
        let v = r
            .out
            .apply(sa.wrapping_add(sb))
            .saturating_add(self.zero_point.to_i32());
        Y::from_i32_saturating(v.clamp(self.act_min.to_i32(), self.act_max.to_i32()))
    }
}

/// One operand: its elements, its shape expanded to the output rank, and
/// its zero point.
pub type Operand<'t, T> = (&'t [T], &'t [usize], T);

/// `y = stage.add(a − za, b − zb)` elementwise, `a` and `b` broadcast to
/// `y_shape` (all three shapes of the same rank, each operand dim equal to
/// y's or 1, as [`super::binary::binary_f32`] takes them).
pub fn add_i8<A: QElem, B: QElem, Y: QElem>(
    (a, a_shape, za): Operand<'_, A>,
    (b, b_shape, zb): Operand<'_, B>,
    stage: &AddStage<Y>,
    y: &mut [Y],
    y_shape: &[usize],
) {
    let (za, zb) = (za.to_i32(), zb.to_i32());
    let f = |p: A, q: B| stage.add(p.to_i32() - za, q.to_i32() - zb);
    broadcast(f, a, a_shape, b, b_shape, y, y_shape);
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

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

    fn stage<Y: QElem>(a: f32, b: f32, out: f32, zy: Y) -> AddStage<Y> {
        AddStage {
            requants: AddRequants::from_scales(a, b, out).unwrap(),
            zero_point: zy,
            act_min: Y::from_i32_saturating(Y::MIN),
            act_max: Y::from_i32_saturating(Y::MAX),
        }
    }

    #[test]
    fn hand_computed() {
        // Equal scales: the larger input's multiplier is exactly 0.5.
        let r = AddRequants::from_scales(0.1, 0.1, 0.2).unwrap();
        assert_eq!(r.a, Requant::from_scale(0.5).unwrap());
        assert_eq!(r.a, r.b);
        // a 0.1·(7 − 1) + b 0.1·(−3 − 0) = 0.3 → 1.5 steps of 0.2 → 2
        // (away from zero), + 5 = 7.
        let s = stage(0.1, 0.1, 0.2, 5i8);
        let mut y = [0i8; 1];
        add_i8((&[7i8], &[1], 1), (&[-3i8], &[1], 0), &s, &mut y, &[1]);
        assert_eq!(y, [7]);
        // Broadcast a [2,1] against b [1,3] into [2,3], scales 0.5 and 0.25
        // onto 0.25: y = 2(a − za) + (b − zb) + zy.
        let s = stage(0.5, 0.25, 0.25, 100u8);
        let a = [3u8, 5];
        let b = [10u8, 11, 12];
        let mut y = [0u8; 6];
        add_i8((&a, &[2, 1], 3), (&b, &[1, 3], 10), &s, &mut y, &[2, 3]);
        assert_eq!(y, [100, 101, 102, 104, 105, 106]);
        // Saturation and a clamp.
        let s = AddStage {
            act_min: 0i8,
            act_max: 50,
            ..stage(1.0, 1.0, 1.0, 0i8)
        };
        let mut y = [0i8; 3];
        add_i8(
            (&[-100i8, 40, 127], &[3], 0),
            (&[-100i8, 1, 127], &[3], 0),
            &s,
            &mut y,
            &[3],
        );
        assert_eq!(y, [0, 41, 50]);
        assert!(AddRequants::from_scales(0.1, 0.0, 0.2).is_err());
        assert!(AddRequants::from_scales(1.0, 1.0, 1e-30).is_err());
    }

    /// Random shapes of rank ≤ 4 with some dims broadcast, random scales;
    /// the kernel against an index-by-index walk with the same arithmetic
    /// (bit for bit) and against the real-number sum (within one LSB).
    #[allow(clippy::too_many_arguments)]
    fn check<A: QElem, B: QElem, Y: QElem>(
        dims: &[usize],
        a_mask: u32,
        b_mask: u32,
        scales: (f32, f32, f32),
        seed: u64,
    ) {
        let a_shape: Vec<usize> = dims
            .iter()
            .enumerate()
            .map(|(i, &d)| if a_mask & 1 << i != 0 { 1 } else { d })
            .collect();
        let b_shape: Vec<usize> = dims
            .iter()
            .enumerate()
            .map(|(i, &d)| if b_mask & 1 << i != 0 { 1 } else { d })
            .collect();
        let a = fill_q::<A>(seed, a_shape.iter().product());
        let b = fill_q::<B>(seed ^ 7, b_shape.iter().product());
        let za = fill_q::<A>(seed ^ 1, 1)[0];
        let zb = fill_q::<B>(seed ^ 2, 1)[0];
        let zy = fill_q::<Y>(seed ^ 3, 1)[0];
        let s = stage(scales.0, scales.1, scales.2, zy);
        let total: usize = dims.iter().product();
        let mut y = vec![Y::default(); total];
        add_i8((&a, &a_shape, za), (&b, &b_shape, zb), &s, &mut y, dims);
        for (flat, &got) in y.iter().enumerate() {
            let (mut rem, mut ai, mut bi, mut am, mut bm) = (flat, 0, 0, 1, 1);
            for d in (0..dims.len()).rev() {
                let i = rem % dims[d];
                rem /= dims[d];
                if a_shape[d] != 1 {
                    ai += i * am;
                }
                if b_shape[d] != 1 {
                    bi += i * bm;
                }
                am *= a_shape[d];
                bm *= b_shape[d];
            }
            let (p, q) = (a[ai].to_i32() - za.to_i32(), b[bi].to_i32() - zb.to_i32());
            assert_eq!(got, s.add(p, q), "{dims:?} at {flat}");
            let real = (p as f64 * scales.0 as f64 + q as f64 * scales.1 as f64) / scales.2 as f64
                + zy.to_i32() as f64;
            let want = real.round().clamp(Y::MIN as f64, Y::MAX as f64);
            let diff = (got.to_i32() as f64 - want).abs();
            assert!(
                diff <= 1.0,
                "{dims:?} at {flat}: {} vs {real}",
                got.to_i32()
            );
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn matches_naive(
            dims in proptest::collection::vec(1usize..5, 1..5),
            a_mask in 0u32..16,
            b_mask in 0u32..16,
            log_scales in (-6.0f32..0.0, -6.0f32..0.0, -6.0f32..0.0),
            types in 0usize..4,
            seed in any::<u64>(),
        ) {
            let scales = (
                10f32.powf(log_scales.0),
                10f32.powf(log_scales.1),
                10f32.powf(log_scales.2),
            );
            let args = (&dims[..], a_mask, b_mask, scales, seed);
            match types {
                0 => check::<i8, i8, i8>(args.0, args.1, args.2, args.3, args.4),
                1 => check::<u8, i8, u8>(args.0, args.1, args.2, args.3, args.4),
                2 => check::<i8, u8, i8>(args.0, args.1, args.2, args.3, args.4),
                _ => check::<u8, u8, u8>(args.0, args.1, args.2, args.3, args.4),
            }
        }
    }
}
