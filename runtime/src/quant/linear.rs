//! ONNX `QuantizeLinear` / `DequantizeLinear` for int8 and uint8, element by
//! element, computed in f32 exactly as the ONNX reference implementation
//! (numpy) does for opsets 10, 13, 19 and 21.
//!
//! Quantize: `y = saturate(round_half_to_even(x / scale) + zero_point)`, the
//! division in f32. Dequantize: `y = (x − zero_point) · scale`, the
//! subtraction exact and the product in f32. Per-axis parameters are the
//! caller's business: these take one scale and zero point per call.

use super::QElem;

/// One element of `QuantizeLinear`.
///
/// NaN quantizes as 0 does (to the zero point) and ±∞ to the type's limits.
/// numpy's reference leaves NaN and values beyond int32 to its float-to-int
/// cast, which is platform-defined; everywhere else this matches it bit for
/// bit.
#[inline]
pub fn quantize_linear<T: QElem>(x: f32, scale: f32, zero_point: T) -> T {
    // rintf rounds half to even (the default IEEE mode), like np.rint.
    let r = libm::rintf(x / scale);
    // `as` saturates at the int32 limits and maps NaN to 0.
    T::from_i32_saturating((r as i32).saturating_add(zero_point.to_i32()))
}

/// One element of `DequantizeLinear`.
#[inline]
pub fn dequantize_linear<T: QElem>(x: T, scale: f32, zero_point: T) -> f32 {
    // The difference of two 8-bit values is exact in f32.
    (x.to_i32() - zero_point.to_i32()) as f32 * scale
}

/// `QuantizeLinear` over a slice with per-tensor parameters.
pub fn quantize_linear_slice<T: QElem>(x: &[f32], scale: f32, zero_point: T, y: &mut [T]) {
    debug_assert!(y.len() >= x.len());
    for (o, &v) in y.iter_mut().zip(x) {
        *o = quantize_linear(v, scale, zero_point);
    }
}

/// `DequantizeLinear` over a slice with per-tensor parameters.
pub fn dequantize_linear_slice<T: QElem>(x: &[T], scale: f32, zero_point: T, y: &mut [f32]) {
    debug_assert!(y.len() >= x.len());
    for (o, &v) in y.iter_mut().zip(x) {
        *o = dequantize_linear(v, scale, zero_point);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn ties_round_to_even() {
        let q = |x: f32| quantize_linear(x, 1.0, 0i8);
        assert_eq!(
            [2.5, 3.5, -2.5, -3.5, 0.5, -0.5, 1.5, 2.4999998, 2.5000002].map(q),
            [2, 4, -2, -4, 0, 0, 2, 2, 3]
        );
        // The tie is decided after the f32 division: 5 / 2 = 2.5 → 2,
        // 7 / 2 = 3.5 → 4; then the zero point is added (2 + 3 = 5).
        assert_eq!(quantize_linear(5.0, 2.0, 3i8), 5);
        assert_eq!(quantize_linear(7.0, 2.0, 3u8), 7);
        assert_eq!(quantize_linear(-5.0, 2.0, 10u8), 8);
    }

    #[test]
    fn division_is_in_f32() {
        // 0.35f32 / 0.1f32 rounds onto the tie 3.5 in f32 (→ 4, as numpy
        // gives), although the exact quotient of those two floats is
        // 3.4999998882 (→ 3); 0.85 / 0.1 is the mirror case (8.5 → 8 versus
        // 8.5000001 → 9).
        let (x, s) = (0.35f32, 0.1f32);
        assert_eq!(x / s, 3.5);
        assert!((x as f64 / s as f64) < 3.5);
        assert_eq!(quantize_linear(x, s, 0i8), 4);
        assert_eq!(0.85f32 / s, 8.5);
        assert!((0.85f32 as f64 / s as f64) > 8.5);
        assert_eq!(quantize_linear(0.85, s, 0u8), 8);
    }

    #[test]
    fn saturation() {
        assert_eq!(quantize_linear(1000.0, 1.0, 0i8), 127);
        assert_eq!(quantize_linear(-1000.0, 1.0, 0i8), -128);
        assert_eq!(quantize_linear(126.6, 1.0, 1i8), 127);
        assert_eq!(quantize_linear(300.0, 1.0, 0u8), 255);
        assert_eq!(quantize_linear(-0.6, 1.0, 0u8), 0);
        assert_eq!(quantize_linear(-10.0, 1.0, 128u8), 118);
        assert_eq!(quantize_linear(f32::INFINITY, 0.5, 0i8), 127);
        assert_eq!(quantize_linear(f32::NEG_INFINITY, 0.5, 0u8), 0);
        assert_eq!(quantize_linear(3e38, 1e-3, -100i8), 127);
        assert_eq!(quantize_linear(f32::NAN, 1.0, 7i8), 7);
        // The zero point is added before saturating: 126 + 127 → 127.
        assert_eq!(quantize_linear(-126.0, 1.0, 127i8), 1);
        assert_eq!(quantize_linear(-300.0, 1.0, 127i8), -128);
    }

    #[test]
    fn dequantize_hand_worked() {
        assert_eq!(dequantize_linear(-128i8, 0.5, 127i8), -127.5);
        assert_eq!(dequantize_linear(255u8, 0.25, 0u8), 63.75);
        assert_eq!(dequantize_linear(0u8, 0.1, 128u8), -128.0 * 0.1f32);
        let mut y = [0.0f32; 3];
        dequantize_linear_slice(&[1i8, 2, 3], 2.0, 1, &mut y);
        assert_eq!(y, [0.0, 2.0, 4.0]);
        let mut q = [0u8; 3];
        quantize_linear_slice(&[0.0, 2.0, 4.0], 2.0, 1u8, &mut q);
        assert_eq!(q, [1, 2, 3]);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2048))]

        /// Quantizing a dequantized value gives it back (scale ≥ 1e-3).
        #[test]
        fn round_trip(v in any::<i8>(), zp in any::<i8>(), log_s in -3.0f32..3.0) {
            let s = 10f32.powf(log_s);
            let x = dequantize_linear(v, s, zp);
            prop_assert_eq!(quantize_linear(x, s, zp), v);
        }

        /// Against an independent f64 formulation of the reference: the f32
        /// quotient, rounded half to even by hand.
        #[test]
        fn matches_reference(x in -1000.0f32..1000.0, log_s in -3.0f32..1.0, zp in any::<u8>()) {
            let s = 10f32.powf(log_s);
            let d = (x / s) as f64;
            let fl = d.floor();
            let r = if d - fl == 0.5 { if fl % 2.0 == 0.0 { fl } else { fl + 1.0 } } else { d.round() };
            let want = (r + zp as f64).clamp(0.0, 255.0) as u8;
            prop_assert_eq!(quantize_linear(x, s, zp), want);
        }
    }
}
