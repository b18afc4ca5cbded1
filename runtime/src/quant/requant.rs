//! Fixed-point requantization: TFLite (Micro)'s single-rounding
//! `MultiplyByQuantizedMultiplier` (`TFLITE_SINGLE_ROUNDING`, also
//! CMSIS-NN's `arm_nn_requantize` with `CMSIS_NN_USE_SINGLE_ROUNDING`) and
//! TFLite's `QuantizeMultiplier`; gemmlowp's `SaturatingRoundingDoublingHighMul`
//! and `RoundingDivideByPOT` for the double-rounding form.
//!
//! Why single rounding: `x · M · 2^shift / 2^31` is rounded once, to nearest
//! with ties towards +∞, in 64-bit arithmetic. The double-rounding form
//! (a rounding high multiply, then a rounding shift) rounds the intermediate
//! too, and on ordinary convolutions about one output in a hundred lands one
//! step away from a single correctly rounded result, which is what ONNX
//! Runtime and the ONNX reference compute (in float); single rounding
//! differs from them only on exact ties. It is also cheaper on a 32-bit core
//! with a 32×32→64 multiply (Cortex-M4 `SMULL`). Only [`quantize_multiplier`]
//! uses floating point, at load time.

/// `round(a · b / 2^31)` with ties towards +∞, saturating the one case that
/// overflows (`i32::MIN · i32::MIN` gives `i32::MAX`). Arm's `VQRDMULH`.
#[inline(always)]
pub fn saturating_rounding_doubling_high_mul(a: i32, b: i32) -> i32 {
    if a == i32::MIN && b == i32::MIN {
        return i32::MAX;
    }
    let ab = a as i64 * b as i64;
    let nudge: i64 = if ab >= 0 { 1 << 30 } else { 1 - (1 << 30) };
    // Truncating division (as in C++): with the asymmetric nudge this is
    // floor((ab + 2^30) / 2^31) for either sign. Every other product fits.
    ((ab + nudge) / (1i64 << 31)) as i32
}

/// `x / 2^exponent`, rounded to nearest with ties away from zero, for
/// `exponent` in `0..=31` (others are clamped into that range).
#[inline(always)]
pub fn rounding_divide_by_pot(x: i32, exponent: i32) -> i32 {
    debug_assert!((0..=31).contains(&exponent), "exponent {exponent}");
    let exponent = exponent.clamp(0, 31);
    let mask = ((1i64 << exponent) - 1) as i32;
    let remainder = x & mask;
    // A negative x rounds up only past the half, a positive one at it.
    let threshold = (mask >> 1) + (x < 0) as i32;
    (x >> exponent) + (remainder > threshold) as i32
}

/// `x · multiplier · 2^shift / 2^31`, rounded once to nearest with ties
/// towards +∞ (TFLite's single-rounding `MultiplyByQuantizedMultiplier`),
/// saturated to i32. `shift` must be in `-31..=30` (others are clamped).
#[inline(always)]
pub fn multiply_by_quantized_multiplier(x: i32, multiplier: i32, shift: i32) -> i32 {
    debug_assert!((-31..=30).contains(&shift), "shift {shift}");
    let total_shift = 31 - shift.clamp(-31, 30); // 1..=62
    let round = 1i64 << (total_shift - 1);
    // |x · multiplier| ≤ 2^62 and round ≤ 2^61: no i64 overflow.
    let result = (i64::from(x) * i64::from(multiplier) + round) >> total_shift;
    result.clamp(i64::from(i32::MIN), i64::from(i32::MAX)) as i32
}

/// The double-rounding form of [`multiply_by_quantized_multiplier`]
/// (TFLite's default build, gemmlowp): a left shift, a rounding doubling
/// high multiply, then a rounding right shift. Kept as the reference the
/// single-rounding form is compared with.
pub fn multiply_by_quantized_multiplier_double_rounding(
    x: i32,
    multiplier: i32,
    shift: i32,
) -> i32 {
    let left = shift.clamp(0, 30);
    let right = (-shift).clamp(0, 31);
    rounding_divide_by_pot(
        saturating_rounding_doubling_high_mul(x.wrapping_mul(1 << left), multiplier),
        right,
    )
}

/// The Q31 multiplier and shift with `real ≈ multiplier · 2^shift / 2^31`,
/// as TFLite's `QuantizeMultiplier`: `real = q · 2^shift` with `q` in
/// `[0.5, 1)` (frexp), `multiplier = round(q · 2^31)` (ties away from zero),
/// renormalized to `2^30` with `shift + 1` when that rounds up to `2^31`;
/// `(0, 0)` for zero, and for magnitudes so small that `shift < −31`.
///
/// Negative reals give negative multipliers, as in TFLite. Shifts above 30
/// are returned as is ([`super::Requant::from_scale`] rejects them); a
/// non-finite `real` gives `(0, 0)`.
pub fn quantize_multiplier(real: f64) -> (i32, i32) {
    if real == 0.0 || !real.is_finite() {
        return (0, 0);
    }
    let (q, mut shift) = libm::frexp(real);
    // |q| < 1, so |q · 2^31| ≤ 2^31 and the product is exact.
    let mut q_fixed = libm::round(q * (1i64 << 31) as f64) as i64;
    if q_fixed.abs() == 1 << 31 {
        q_fixed /= 2;
        shift += 1;
    }
    if shift < -31 {
        return (0, 0);
    }
    (q_fixed as i32, shift)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// floor((a·b + 2^30) / 2^31), the defining formula, in i128.
    fn srdhm_ref(a: i32, b: i32) -> i32 {
        let v = (a as i128 * b as i128 + (1 << 30)).div_euclid(1 << 31);
        v.min(i32::MAX as i128) as i32
    }

    /// x / 2^e rounded half away from zero, in i64.
    fn rdbp_ref(x: i32, e: i32) -> i32 {
        if e == 0 {
            return x;
        }
        let mag = (x as i64).abs();
        let q = (mag + (1i64 << (e - 1))) >> e;
        (q * (x as i64).signum()) as i32
    }

    #[test]
    fn high_mul_hand_worked() {
        // The only overflow saturates.
        assert_eq!(
            saturating_rounding_doubling_high_mul(i32::MIN, i32::MIN),
            i32::MAX
        );
        // MIN · MAX / 2^31 = −(2^31 − 1) exactly.
        assert_eq!(
            saturating_rounding_doubling_high_mul(i32::MIN, i32::MAX),
            -i32::MAX
        );
        assert_eq!(
            saturating_rounding_doubling_high_mul(i32::MAX, i32::MAX),
            i32::MAX - 1
        );
        // Multiplying by 2^30 halves: 7/2 = 3.5 → 4, −7/2 = −3.5 → −3 (ties
        // towards +∞), 5/2 → 3, −5/2 → −2, −1/2 → 0, 1/2 → 1.
        let half = 1 << 30;
        let halves =
            [7, -7, 5, -5, -1, 1, 6, -6].map(|x| saturating_rounding_doubling_high_mul(x, half));
        assert_eq!(halves, [4, -3, 3, -2, 0, 1, 3, -3]);
        // Non-ties round to nearest either way: −7 · 0.75 = −5.25 → −5.
        let three_quarters = 3 << 29;
        assert_eq!(
            saturating_rounding_doubling_high_mul(-7, three_quarters),
            -5
        );
        assert_eq!(
            saturating_rounding_doubling_high_mul(-9, three_quarters),
            -7
        );
        assert_eq!(saturating_rounding_doubling_high_mul(0, i32::MIN), 0);
    }

    #[test]
    fn divide_by_pot_hand_worked() {
        let cases = [
            // (x, exponent, want): exact ties round away from zero.
            (3, 1, 2),
            (-3, 1, -2),
            (1, 1, 1),
            (-1, 1, -1),
            (6, 2, 2),
            (-6, 2, -2),
            (2, 2, 1),
            (-2, 2, -1),
            // Non-ties to nearest.
            (5, 2, 1),
            (-5, 2, -1),
            (7, 2, 2),
            (-7, 2, -2),
            // Exponent 0 is the identity; 31 leaves only the sign's half.
            (-9, 0, -9),
            (i32::MAX, 31, 1),
            (i32::MIN, 31, -1),
            (1 << 30, 31, 1),
            (-(1 << 30), 31, -1),
            ((1 << 30) - 1, 31, 0),
            (i32::MIN, 1, -(1 << 30)),
            (i32::MAX, 1, 1 << 30),
        ];
        for (x, e, want) in cases {
            assert_eq!(rounding_divide_by_pot(x, e), want, "{x} / 2^{e}");
            assert_eq!(rdbp_ref(x, e), want, "reference {x} / 2^{e}");
        }
    }

    #[test]
    fn multiply_shifts_left_and_right() {
        let half = 1 << 30;
        let m = multiply_by_quantized_multiplier;
        // shift 0: x · 0.5; ties go towards +∞.
        assert_eq!((m(9, half, 0), m(-9, half, 0), m(8, half, 0)), (5, -4, 4));
        // shift 1: x · 1, exactly.
        for x in [0, 1, -1, 12345, -12345, i32::MAX, i32::MIN] {
            assert_eq!(m(x, half, 1), x);
        }
        // shift 3: x · 4.
        assert_eq!(m(-100, half, 3), -400);
        // shift −2: x · 0.125, rounded once: −12 → −1.5 → −1 (tie towards
        // +∞), −11 → −1.375 → −1, 12 → 1.5 → 2, 5 → 0.625 → 1.
        assert_eq!(
            [
                m(-12, half, -2),
                m(-11, half, -2),
                m(12, half, -2),
                m(5, half, -2)
            ],
            [-1, -1, 2, 1]
        );
        // 1 · 0.25 → 0 and −1 · 0.25 → 0: one rounding, no intermediate.
        assert_eq!((m(1, half, -1), m(-1, half, -1)), (0, 0));
        // shift −31, the largest right shift: (2^31 − 1)^2 / 2^62 → 1.
        assert_eq!(m(i32::MAX, i32::MAX, -31), 1);
        assert_eq!(m(-i32::MAX, i32::MAX, -31), -1);
        assert_eq!(m(1 << 29, i32::MAX, -31), 0);
        // Results beyond i32 saturate.
        assert_eq!(m(i32::MAX, i32::MAX, 30), i32::MAX);
        assert_eq!(m(i32::MIN, i32::MAX, 30), i32::MIN);
        assert_eq!(m(i32::MIN, 0, 0), 0);
    }

    #[test]
    fn double_rounding_differs_on_the_intermediate() {
        let half = 1 << 30;
        let d = multiply_by_quantized_multiplier_double_rounding;
        // 1 · 0.25: the high multiply gives 0.5 → 1, then 1/2 → 1 again,
        // where single rounding gives 0; −12 · 0.125: −6 then −1.5 → −2.
        assert_eq!((d(1, half, -1), d(-12, half, -2)), (1, -2));
        assert_eq!((d(9, half, 0), d(-100, half, 3)), (5, -400));
    }

    #[test]
    fn quantize_multiplier_hand_worked() {
        assert_eq!(quantize_multiplier(1.0), (1 << 30, 1));
        assert_eq!(quantize_multiplier(0.5), (1 << 30, 0));
        assert_eq!(quantize_multiplier(0.75), (3 << 29, 0));
        assert_eq!(quantize_multiplier(3.0), (3 << 29, 2));
        // frexp gives q = 1 − 2^-32, and round(q · 2^31) = 2^31 (the tie
        // 2^31 − 0.5 rounds away from zero), which renormalizes.
        let almost_quarter = 0.25 * (1.0 - (2.0f64).powi(-32));
        assert_eq!(quantize_multiplier(almost_quarter), (1 << 30, -1));
        // Just below that, no overflow.
        let below = 0.25 * (1.0 - (2.0f64).powi(-30));
        assert_eq!(quantize_multiplier(below), (i32::MAX - 1, -2));
        // 2^-32 is q = 0.5, shift −31: kept; 2^-33 flushes to zero.
        assert_eq!(quantize_multiplier((2.0f64).powi(-32)), (1 << 30, -31));
        assert_eq!(quantize_multiplier((2.0f64).powi(-33)), (0, 0));
        assert_eq!(quantize_multiplier(1e-12), (0, 0));
        assert_eq!(quantize_multiplier(0.0), (0, 0));
        assert_eq!(quantize_multiplier(-0.5), (-(1 << 30), 0));
        assert_eq!(quantize_multiplier(f64::NAN), (0, 0));
        // Shifts above 30 are reported, not saturated (double rounding).
        assert_eq!(quantize_multiplier((2.0f64).powi(31)), (1 << 30, 32));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4096))]

        #[test]
        fn high_mul_matches_formula(a in any::<i32>(), b in any::<i32>()) {
            prop_assert_eq!(saturating_rounding_doubling_high_mul(a, b), srdhm_ref(a, b));
        }

        #[test]
        fn divide_matches_formula(x in any::<i32>(), e in 0i32..=31) {
            prop_assert_eq!(rounding_divide_by_pot(x, e), rdbp_ref(x, e));
        }

        #[test]
        fn double_rounding_is_the_composition(x in -(1i32 << 20)..(1 << 20), m in (1i32 << 30)..=i32::MAX, shift in -31i32..=10) {
            let left = shift.max(0);
            let want = rdbp_ref(srdhm_ref(x << left, m), (-shift).max(0));
            prop_assert_eq!(multiply_by_quantized_multiplier_double_rounding(x, m, shift), want);
        }

        #[test]
        fn single_rounding_matches_formula(x in any::<i32>(), m in 0i32..=i32::MAX, shift in -31i32..=30) {
            // floor((x · m + 2^(30 − shift)) / 2^(31 − shift)), saturated, in i128.
            let total = 31 - shift;
            let want = (x as i128 * m as i128 + (1i128 << (total - 1))).div_euclid(1i128 << total);
            let want = want.clamp(i32::MIN as i128, i32::MAX as i128) as i32;
            prop_assert_eq!(multiply_by_quantized_multiplier(x, m, shift), want);
        }

        #[test]
        fn within_one_of_exact(x in -(1i32 << 24) + 1..(1 << 24), log_r in -6.0f64..0.0) {
            let r = 10f64.powf(log_r);
            prop_assume!(r > 1e-6 && r < 1.0);
            let (m, shift) = quantize_multiplier(r);
            prop_assert!((1 << 30..=i32::MAX).contains(&m) && (-31..=0).contains(&shift));
            let got = multiply_by_quantized_multiplier(x, m, shift) as f64;
            let want = (x as f64 * r).round();
            prop_assert!((got - want).abs() <= 1.0, "x {} r {} got {} want {}", x, r, got, want);
        }

        #[test]
        fn multiplier_approximates_real(log_r in -9.0f64..9.0) {
            let r = 10f64.powf(log_r);
            let (m, shift) = quantize_multiplier(r);
            let back = m as f64 * (2.0f64).powi(shift - 31);
            prop_assert!((back - r).abs() <= r * (2.0f64).powi(-31), "{} vs {}", back, r);
        }
    }
}
