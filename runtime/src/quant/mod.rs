//! The runtime's int8 arithmetic, in one place.
//!
//! Weights are int8, symmetric, per output channel (zero point 0, values in
//! −127..=127); kernels also accept u8 data and a non-zero weight zero point
//! (per tensor or per channel), as ONNX `QLinearConv`, `ConvInteger` and
//! `MatMulInteger` allow. Activations are int8 or uint8, asymmetric, per
//! tensor. Bias is int32 with scale `in_scale · w_scale[c]`, products
//! `(x − zx)·(w − zw)` accumulate in int32, and each output channel is brought
//! back to 8 bits by a [`Requant`]: a Q31 multiplier and a power-of-two
//! shift, derived from the float scales once at load time and applied with
//! integer operations only, rounding exactly as TFLite Micro's
//! single-rounding `MultiplyByQuantizedMultiplier` does ([`requant`]). Then
//! the output zero point is added and the result clamped to the activation
//! range.
//!
//! [`linear`] holds the float ONNX `QuantizeLinear`/`DequantizeLinear`
//! element functions, for graph inputs and outputs.

pub mod linear;
pub mod requant;

pub use linear::{dequantize_linear, quantize_linear};
pub use requant::{
    multiply_by_quantized_multiplier, multiply_by_quantized_multiplier_double_rounding,
    quantize_multiplier, rounding_divide_by_pot, saturating_rounding_doubling_high_mul,
};

/// Everything wrong a set of quantization parameters can be. `what` names
/// the parameter ("weight scale", "input zero point", ...) and `index` the
/// element (0 for a per-tensor value), so that the caller can name the node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum QuantError {
    /// A scale (or real multiplier) is NaN or infinite.
    #[error("{what} [{index}] is not finite")]
    NonFiniteScale {
        /// The parameter.
        what: &'static str,
        /// Which element.
        index: usize,
    },
    /// A scale (or real multiplier) is zero or negative.
    #[error("{what} [{index}] is not positive")]
    NonPositiveScale {
        /// The parameter.
        what: &'static str,
        /// Which element.
        index: usize,
    },
    /// A real multiplier is 2^30 or more, which needs a left shift the
    /// fixed-point requantization cannot do in int32.
    #[error("{what} [{index}]: requantization multiplier is 2^30 or larger")]
    MultiplierTooLarge {
        /// The parameter.
        what: &'static str,
        /// Which element.
        index: usize,
    },
    /// A zero point lies outside its element type's range.
    #[error("{what} [{index}]: zero point {value} outside [{min}, {max}]")]
    ZeroPointOutOfRange {
        /// The parameter.
        what: &'static str,
        /// Which element.
        index: usize,
        /// The zero point.
        value: i64,
        /// The element type's minimum.
        min: i32,
        /// The element type's maximum.
        max: i32,
    },
    /// A per-channel vector has the wrong length.
    #[error("{what}: {len} values for {channels} channels")]
    ChannelCount {
        /// The parameter.
        what: &'static str,
        /// Its length.
        len: usize,
        /// The channel count it must match.
        channels: usize,
    },
}

impl QuantError {
    /// A fixed description of the problem, for errors that carry only a
    /// `&'static str` reason (such as [`crate::Error::Node`]).
    pub fn reason(&self) -> &'static str {
        match self {
            QuantError::NonFiniteScale { .. } => "quantization scale is not finite",
            QuantError::NonPositiveScale { .. } => "quantization scale is not positive",
            QuantError::MultiplierTooLarge { .. } => {
                "requantization multiplier (in_scale * w_scale / out_scale) is 2^30 or larger"
            }
            QuantError::ZeroPointOutOfRange { .. } => "zero point outside its type's range",
            QuantError::ChannelCount { .. } => {
                "per-channel quantization parameter length differs from the channel count"
            }
        }
    }
}

mod sealed {
    pub trait Sealed {}
    impl Sealed for i8 {}
    impl Sealed for u8 {}
}

/// An 8-bit quantized element: `i8` or `u8`. Sealed, because the kernels'
/// int32 overflow bounds assume 8-bit values.
pub trait QElem: Copy + Default + PartialEq + core::fmt::Debug + sealed::Sealed + 'static {
    /// Smallest value, as i32.
    const MIN: i32;
    /// Largest value, as i32.
    const MAX: i32;
    /// The value, widened.
    fn to_i32(self) -> i32;
    /// `v` clamped to `[MIN, MAX]`.
    fn from_i32_saturating(v: i32) -> Self;
    /// `s` as int8 values if this is `i8` (the scheme's type, which the
    /// SIMD inner loops take).
    fn as_i8(s: &[Self]) -> Option<&[i8]>;
}

impl QElem for i8 {
    const MIN: i32 = i8::MIN as i32;
    const MAX: i32 = i8::MAX as i32;
    #[inline(always)]
    fn to_i32(self) -> i32 {
        self as i32
    }
    #[inline(always)]
    fn from_i32_saturating(v: i32) -> Self {
        v.clamp(<Self as QElem>::MIN, <Self as QElem>::MAX) as i8
    }
    #[inline(always)]
    fn as_i8(s: &[Self]) -> Option<&[i8]> {
        Some(s)
    }
}

impl QElem for u8 {
    const MIN: i32 = u8::MIN as i32;
    const MAX: i32 = u8::MAX as i32;
    #[inline(always)]
    fn to_i32(self) -> i32 {
        self as i32
    }
    #[inline(always)]
    fn from_i32_saturating(v: i32) -> Self {
        v.clamp(<Self as QElem>::MIN, <Self as QElem>::MAX) as u8
    }
    #[inline(always)]
    fn as_i8(_: &[Self]) -> Option<&[i8]> {
        None
    }
}

/// A per-output-channel requantization: `acc ↦ round(acc · M · 2^shift / 2^31)`
/// with `M = multiplier` in `[2^30, 2^31)` (or 0), `shift` in `-31..=30`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Requant {
    /// Q31 fixed-point multiplier.
    pub multiplier: i32,
    /// Power-of-two exponent: positive shifts left, negative right.
    pub shift: i32,
}

impl Requant {
    /// The requantization of a real multiplier (usually
    /// `in_scale · w_scale / out_scale`), via [`quantize_multiplier`].
    /// Multipliers below about 2^-32 flush to 0 (every output becomes the
    /// output zero point), as in TFLite.
    ///
    /// # Errors
    /// A non-finite, zero or negative multiplier, or one of 2^30 or more.
    pub fn from_scale(real: impl Into<f64>) -> Result<Requant, QuantError> {
        Self::checked("requantization multiplier", 0, real.into())
    }

    /// The requantization from input, weight and output scales. The real
    /// multiplier is computed in f64 as `in · w / out`, as TFLite Micro's
    /// per-channel preparation does.
    ///
    /// # Errors
    /// Any scale non-finite or not positive, or the multiplier out of range.
    pub fn from_scales(in_scale: f32, w_scale: f32, out_scale: f32) -> Result<Requant, QuantError> {
        check_scale("input scale", in_scale)?;
        check_scale("weight scale", w_scale)?;
        check_scale("output scale", out_scale)?;
        Self::checked(
            "weight scale",
            0,
            real_multiplier(in_scale, w_scale, out_scale),
        )
    }

    /// Fills `out[c]` with the requantization for weight scale `w_scales[c]`.
    ///
    /// # Errors
    /// `out` and `w_scales` differ in length, or a scale or multiplier is
    /// invalid (the error names the channel).
    pub fn per_channel(
        in_scale: f32,
        w_scales: &[f32],
        out_scale: f32,
        out: &mut [Requant],
    ) -> Result<(), QuantError> {
        check_channels("weight scale", w_scales.len(), out.len())?;
        check_scale("input scale", in_scale)?;
        check_scale("output scale", out_scale)?;
        check_scales("weight scale", w_scales)?;
        for (index, (r, &w)) in out.iter_mut().zip(w_scales).enumerate() {
            *r = Self::checked(
                "weight scale",
                index,
                real_multiplier(in_scale, w, out_scale),
            )?;
        }
        Ok(())
    }

    /// `acc · real multiplier`, rounded: [`multiply_by_quantized_multiplier`].
    #[inline(always)]
    pub fn apply(self, acc: i32) -> i32 {
        multiply_by_quantized_multiplier(acc, self.multiplier, self.shift)
    }

    fn checked(what: &'static str, index: usize, real: f64) -> Result<Requant, QuantError> {
        if !real.is_finite() {
            return Err(QuantError::NonFiniteScale { what, index });
        }
        if real <= 0.0 {
            return Err(QuantError::NonPositiveScale { what, index });
        }
        let (multiplier, shift) = quantize_multiplier(real);
        if shift > 30 {
            return Err(QuantError::MultiplierTooLarge { what, index });
        }
        Ok(Requant { multiplier, shift })
    }
}

fn real_multiplier(in_scale: f32, w_scale: f32, out_scale: f32) -> f64 {
    in_scale as f64 * w_scale as f64 / out_scale as f64
}

/// What every integer kernel does with an int32 accumulator of output
/// channel `c`: add `bias[c]`, requantize with `requant[c]` (or `requant[0]`
/// when it holds one entry), add the output zero point, clamp to
/// `[act_min, act_max]` (a fused ReLU/ReLU6/Clip, or the full range).
#[derive(Clone, Copy, Debug)]
pub struct OutputStage<'a, Y: QElem> {
    /// int32 bias per output channel, scale `in_scale · w_scale[c]`.
    pub bias: Option<&'a [i32]>,
    /// One entry per output channel, or a single one for all.
    pub requant: &'a [Requant],
    /// Output zero point.
    pub zero_point: Y,
    /// Lower clamp bound (an output value, zero point included).
    pub act_min: Y,
    /// Upper clamp bound.
    pub act_max: Y,
}

impl<'a, Y: QElem> OutputStage<'a, Y> {
    /// No bias, no activation: clamps to the type's full range only.
    pub fn new(requant: &'a [Requant], zero_point: Y) -> Self {
        OutputStage {
            bias: None,
            requant,
            zero_point,
            act_min: Y::from_i32_saturating(Y::MIN),
            act_max: Y::from_i32_saturating(Y::MAX),
        }
    }

    /// The output value for accumulator `acc` of channel `c`.
    ///
    /// The bias add wraps and the zero-point add saturates; both only matter
    /// where the int32 reference arithmetic would overflow (undefined
    /// behaviour in C++), never for accumulators within the documented bounds.
    #[inline(always)]
    pub fn finish(&self, acc: i32, c: usize) -> Y {
        let acc = match self.bias {
            Some(b) => acc.wrapping_add(b[c]),
            None => acc,
        };
        let r = if self.requant.len() == 1 {
            self.requant[0]
        } else {
            self.requant[c]
        };
        let v = r.apply(acc).saturating_add(self.zero_point.to_i32());
        Y::from_i32_saturating(v.clamp(self.act_min.to_i32(), self.act_max.to_i32()))
    }

    /// Whether the stage fits `channels` output channels (bias of exactly
    /// that length, requant of 1 or that length, `act_min ≤ act_max`).
    pub fn fits(&self, channels: usize) -> bool {
        self.bias.is_none_or(|b| b.len() == channels)
            && (self.requant.len() == 1 || self.requant.len() == channels)
            && self.act_min.to_i32() <= self.act_max.to_i32()
    }
}

impl<Y: QElem> OutputStage<'_, Y> {
    /// Channel `c` of the stage in f64 arithmetic ([`FloatStage`]), where
    /// that gives [`Self::finish`]'s result for every accumulator below
    /// 2^24 in magnitude: the bias within ±2^30 (so no int32 wrap) and a
    /// total right shift of at most [`FloatStage::MAX_SHIFT`] (so f64's
    /// rounding error stays below the distance of any non-tie from a
    /// rounding boundary). None otherwise.
    pub fn float_channel(&self, c: usize) -> Option<FloatStage> {
        let bias = self.bias.map_or(0, |b| b[c]);
        let r = self.requant[if self.requant.len() == 1 { 0 } else { c }];
        let total_shift = 31 - r.shift.clamp(-31, 30);
        if bias.unsigned_abs() > 1 << 30 || total_shift > FloatStage::MAX_SHIFT {
            return None;
        }
        let zero_point = self.zero_point.to_i32();
        Some(FloatStage {
            bias: f64::from(bias),
            // M · 2^−shift: exact (M has 31 bits).
            scale: f64::from(r.multiplier) / (1u64 << total_shift) as f64,
            low: f64::from(self.act_min.to_i32() - zero_point - 1),
            high: f64::from(self.act_max.to_i32() - zero_point + 1),
            zero_point,
            act_min: self.act_min.to_i32(),
            act_max: self.act_max.to_i32(),
        })
    }
}

/// One output channel's [`OutputStage`] as f64 arithmetic that a compiler
/// can vectorize (no 64-bit integer multiply or shift), made by
/// [`OutputStage::float_channel`] only where it is exact.
///
/// `(acc + bias)·M/2^S` is computed as one f64 product with `M·2^−S`
/// (exact), then `+ ½` and floored: the reference's round-half-up. For a
/// result that matters (within ±300; anything beyond is clamped either way)
/// the two f64 roundings err by less than 2^−43.7, while a non-tie
/// `(acc + bias)·M/2^S + ½` lies at least 2^−S ≥ 2^−43 from an integer and
/// a tie is computed exactly, so the floor is the reference's.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct FloatStage {
    bias: f64,
    scale: f64,
    /// Clamp bounds before the zero point, widened by one so that the
    /// floor of a clamped value still clamps to the same output.
    low: f64,
    high: f64,
    zero_point: i32,
    act_min: i32,
    act_max: i32,
}

impl FloatStage {
    /// Largest total right shift (31 − shift) the f64 form is exact for.
    pub const MAX_SHIFT: i32 = 43;

    /// [`OutputStage::finish`] of an accumulator given as an integer-valued
    /// float below 2^24 in magnitude.
    #[inline(always)]
    pub fn finish(&self, acc: f32) -> i32 {
        let t = (f64::from(acc) + self.bias) * self.scale + 0.5;
        let t = t.max(self.low).min(self.high);
        // SAFETY: t lies in [low, high] ⊂ (−2^10, 2^10), so it converts.
        let truncated = unsafe { t.to_int_unchecked::<i32>() };
        let floor = truncated - i32::from(t < f64::from(truncated));
        (floor + self.zero_point).clamp(self.act_min, self.act_max)
    }
}

impl<Y: QElem> OutputStage<'_, Y> {
    /// The same stage clamped to `clamp` as well (a fused activation).
    pub fn with_clamp(self, clamp: Clamp) -> Self {
        let (act_min, act_max) = clamp.bounds();
        OutputStage {
            act_min,
            act_max,
            ..self
        }
    }
}

/// An activation fused into an integer op, in the quantized domain: the
/// outputs are clamped to `[min, max]` (output values, zero point
/// included), and to the element type's range. A Relu is
/// `[zero_point, MAX]`; a Clip is `[Q(min), Q(max)]` (quantization is
/// monotone, so clamping before or after it gives the same values).
/// `min ≤ max` always.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Clamp {
    /// Lowest output value.
    pub min: i32,
    /// Highest output value.
    pub max: i32,
}

impl Clamp {
    /// No activation: the element type's full range.
    pub const NONE: Clamp = Clamp {
        min: i32::MIN,
        max: i32::MAX,
    };

    /// The bounds as elements of `Y` (saturated to its range).
    pub fn bounds<Y: QElem>(self) -> (Y, Y) {
        (
            Y::from_i32_saturating(self.min),
            Y::from_i32_saturating(self.max),
        )
    }
}

impl Default for Clamp {
    fn default() -> Self {
        Clamp::NONE
    }
}

/// Checks that a scale is finite and positive.
///
/// # Errors
/// [`QuantError::NonFiniteScale`] or [`QuantError::NonPositiveScale`], index 0.
pub fn check_scale(what: &'static str, scale: f32) -> Result<(), QuantError> {
    check_scales(what, &[scale])
}

/// Checks that every scale is finite and positive.
///
/// # Errors
/// As [`check_scale`], naming the first bad element.
pub fn check_scales(what: &'static str, scales: &[f32]) -> Result<(), QuantError> {
    for (index, &s) in scales.iter().enumerate() {
        if !s.is_finite() {
            return Err(QuantError::NonFiniteScale { what, index });
        }
        if s <= 0.0 {
            return Err(QuantError::NonPositiveScale { what, index });
        }
    }
    Ok(())
}

/// Converts zero point `value` (element `index` of parameter `what`) to
/// element type `T`, checking its range. i64 because ONNX stores integers so.
///
/// # Errors
/// [`QuantError::ZeroPointOutOfRange`].
pub fn check_zero_point<T: QElem>(
    what: &'static str,
    index: usize,
    value: i64,
) -> Result<T, QuantError> {
    if value < T::MIN as i64 || value > T::MAX as i64 {
        return Err(QuantError::ZeroPointOutOfRange {
            what,
            index,
            value,
            min: T::MIN,
            max: T::MAX,
        });
    }
    Ok(T::from_i32_saturating(value as i32))
}

/// Checks that a per-channel vector has exactly `channels` entries.
///
/// # Errors
/// [`QuantError::ChannelCount`].
pub fn check_channels(what: &'static str, len: usize, channels: usize) -> Result<(), QuantError> {
    if len == channels {
        Ok(())
    } else {
        Err(QuantError::ChannelCount {
            what,
            len,
            channels,
        })
    }
}

/// Checks that a parameter is per tensor (one entry) or per channel
/// (`channels` entries), the two forms the kernels accept.
///
/// # Errors
/// [`QuantError::ChannelCount`].
pub fn check_tensor_or_channels(
    what: &'static str,
    len: usize,
    channels: usize,
) -> Result<(), QuantError> {
    if len == 1 {
        Ok(())
    } else {
        check_channels(what, len, channels)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A stage for channel 0 from a scale, bias, zero point and clamp.
    fn stage(
        requant: &[Requant; 1],
        bias: &[i32; 1],
        zp: i8,
        lo: i8,
        hi: i8,
    ) -> OutputStage<'static, i8> {
        // Leaked so the stage can be 'static in a test.
        let requant: &'static [Requant] = Box::leak(Box::new(*requant));
        let bias: &'static [i32] = Box::leak(Box::new(*bias));
        OutputStage {
            bias: Some(bias),
            requant,
            zero_point: zp,
            act_min: lo.min(hi),
            act_max: lo.max(hi),
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4096))]

        /// The f64 stage equals the integer one wherever it is offered,
        /// on random accumulators and on ones next to rounding ties.
        #[test]
        fn float_stage_equals_the_integer_stage(
            scale_exp in -14.0f64..2.0, mantissa in 1.0f64..2.0, bias in -(1i32 << 20)..(1 << 20),
            zp in any::<i8>(), lo in any::<i8>(), hi in any::<i8>(),
            acc in -(1i32 << 24) + 1..(1 << 24), k in -300i64..300,
        ) {
            let requant = [Requant::from_scale(mantissa * 2f64.powf(scale_exp)).unwrap()];
            let out = stage(&requant, &[bias], zp, lo, hi);
            let Some(fs) = out.float_channel(0) else {
                prop_assert!(31 - requant[0].shift > FloatStage::MAX_SHIFT);
                return Ok(());
            };
            prop_assert_eq!(fs.finish(acc as f32), i32::from(out.finish(acc, 0)));
            // The accumulators nearest the tie (k + ½)·2^S/M − bias.
            let (m, s) = (i64::from(requant[0].multiplier), 31 - requant[0].shift);
            let tie = ((2 * k + 1) << (s - 1)) / m - i64::from(bias);
            for a in tie - 2..=tie + 2 {
                if a.unsigned_abs() < 1 << 24 {
                    let a = a as i32;
                    prop_assert_eq!(fs.finish(a as f32), i32::from(out.finish(a, 0)), "acc {}", a);
                }
            }
        }
    }

    #[test]
    fn float_stage_is_refused_where_it_could_differ() {
        let tiny = [Requant::from_scale(1e-5f64).unwrap()];
        assert!(stage(&tiny, &[0], 0, -128, 127).float_channel(0).is_none());
        let fine = [Requant::from_scale(1e-3f64).unwrap()];
        assert!(stage(&fine, &[(1 << 30) + 1], 0, -128, 127)
            .float_channel(0)
            .is_none());
        assert!(stage(&fine, &[1 << 30], 0, -128, 127)
            .float_channel(0)
            .is_some());
        // An exact tie: 0.5 · 3 = 1.5 rounds up to 2, −1.5 to −1.
        let half = [Requant::from_scale(0.5f64).unwrap()];
        let fs = stage(&half, &[0], 0, -128, 127).float_channel(0).unwrap();
        assert_eq!((fs.finish(3.0), fs.finish(-3.0)), (2, -1));
    }

    #[test]
    fn elem_ranges_and_saturation() {
        assert_eq!((<i8 as QElem>::MIN, <i8 as QElem>::MAX), (-128, 127));
        assert_eq!((<u8 as QElem>::MIN, <u8 as QElem>::MAX), (0, 255));
        assert_eq!(i8::from_i32_saturating(300), 127);
        assert_eq!(i8::from_i32_saturating(-300), -128);
        assert_eq!(u8::from_i32_saturating(-1), 0);
        assert_eq!(u8::from_i32_saturating(256), 255);
        assert_eq!(u8::from_i32_saturating(17), 17);
        assert_eq!(200u8.to_i32(), 200);
        assert_eq!((-5i8).to_i32(), -5);
    }

    #[test]
    fn from_scale_values_and_errors() {
        assert_eq!(
            Requant::from_scale(1.0f32),
            Ok(Requant {
                multiplier: 1 << 30,
                shift: 1
            })
        );
        assert_eq!(
            Requant::from_scale(0.5f64),
            Ok(Requant {
                multiplier: 1 << 30,
                shift: 0
            })
        );
        let what = "requantization multiplier";
        assert_eq!(
            Requant::from_scale(f64::NAN),
            Err(QuantError::NonFiniteScale { what, index: 0 })
        );
        assert_eq!(
            Requant::from_scale(f32::INFINITY),
            Err(QuantError::NonFiniteScale { what, index: 0 })
        );
        assert_eq!(
            Requant::from_scale(0.0),
            Err(QuantError::NonPositiveScale { what, index: 0 })
        );
        assert_eq!(
            Requant::from_scale(-0.25),
            Err(QuantError::NonPositiveScale { what, index: 0 })
        );
        // 2^29·1.5 needs shift 30, the largest accepted; 2^30 needs 31.
        assert_eq!(
            Requant::from_scale(1.5 * (1u64 << 29) as f64)
                .unwrap()
                .shift,
            30
        );
        assert_eq!(
            Requant::from_scale((1u64 << 30) as f64),
            Err(QuantError::MultiplierTooLarge { what, index: 0 })
        );
        // Tiny multipliers flush to zero, as in TFLite.
        assert_eq!(Requant::from_scale(1e-12), Ok(Requant::default()));
        assert_eq!(Requant::from_scale(1e-12).unwrap().apply(i32::MAX), 0);
    }

    #[test]
    fn from_scales_and_per_channel() {
        // 0.5 · 0.25 / 0.125 = 1.
        let r = Requant::from_scales(0.5, 0.25, 0.125).unwrap();
        assert_eq!(r, Requant::from_scale(1.0).unwrap());
        assert_eq!(r.apply(-77), -77);
        assert_eq!(
            Requant::from_scales(0.5, 0.25, 0.0),
            Err(QuantError::NonPositiveScale {
                what: "output scale",
                index: 0
            })
        );
        let mut out = [Requant::default(); 3];
        Requant::per_channel(0.5, &[0.25, 0.5, 1.0], 0.125, &mut out).unwrap();
        assert_eq!(out.map(|r| r.apply(10)), [10, 20, 40]);
        assert_eq!(
            Requant::per_channel(0.5, &[0.25, f32::NAN, 1.0], 0.125, &mut out),
            Err(QuantError::NonFiniteScale {
                what: "weight scale",
                index: 1
            })
        );
        assert_eq!(
            Requant::per_channel(0.5, &[0.25], 0.125, &mut out),
            Err(QuantError::ChannelCount {
                what: "weight scale",
                len: 1,
                channels: 3
            })
        );
    }

    #[test]
    fn validation_helpers() {
        assert_eq!(check_scales("s", &[1.0, 0.1]), Ok(()));
        assert_eq!(
            check_scales("s", &[1.0, -0.0]),
            Err(QuantError::NonPositiveScale {
                what: "s",
                index: 1
            })
        );
        assert_eq!(
            check_scale("s", f32::NEG_INFINITY),
            Err(QuantError::NonFiniteScale {
                what: "s",
                index: 0
            })
        );
        assert_eq!(check_zero_point::<i8>("zp", 0, -128), Ok(-128i8));
        assert_eq!(check_zero_point::<u8>("zp", 0, 255), Ok(255u8));
        let e = check_zero_point::<u8>("zp", 4, -1).unwrap_err();
        assert_eq!(
            e,
            QuantError::ZeroPointOutOfRange {
                what: "zp",
                index: 4,
                value: -1,
                min: 0,
                max: 255
            }
        );
        assert!(check_zero_point::<i8>("zp", 0, 128).is_err());
        assert_eq!(check_channels("b", 4, 4), Ok(()));
        assert!(check_channels("b", 1, 4).is_err());
        assert_eq!(check_tensor_or_channels("zp", 1, 4), Ok(()));
        assert_eq!(check_tensor_or_channels("zp", 4, 4), Ok(()));
        assert_eq!(
            check_tensor_or_channels("zp", 3, 4),
            Err(QuantError::ChannelCount {
                what: "zp",
                len: 3,
                channels: 4
            })
        );
        assert!(!e.reason().is_empty());
    }

    #[test]
    fn output_stage_order_of_operations() {
        // scale 0.25, bias 2, zero point −3, clamp [−3, 127] (ReLU).
        let r = [Requant::from_scale(0.25).unwrap()];
        let stage = OutputStage {
            bias: Some(&[2, -1][..]),
            act_min: -3i8,
            ..OutputStage::new(&r, -3i8)
        };
        assert!(stage.fits(2) && !stage.fits(3));
        // (8 + 2)·0.25 = 2.5 → 3 (ties away from zero), −3 → 0.
        assert_eq!(stage.finish(8, 0), 0);
        // (17 − 1)·0.25 = 4 → 1.
        assert_eq!(stage.finish(17, 1), 1);
        // (−40 + 2)·0.25 = −9.5 → −10 → −13 → clamped to −3.
        assert_eq!(stage.finish(-40, 0), -3);
        // Saturates at the type's range.
        assert_eq!(stage.finish(i32::MAX - 2, 0), 127);
    }
}
