//! Element-wise activations with ONNX semantics, usable stand-alone or fused
//! into the output loop of another kernel.
//!
//! Sigmoid and Tanh exist with the `op-sigmoid` feature only: every kernel
//! with a fused activation matches on all the variants, so without them no
//! build links libm's `expf`/`tanhf` for a model that never uses them.

#[cfg(feature = "op-sigmoid")]
use libm::{expf, tanhf};

/// An element-wise activation function (ONNX operator semantics).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Activation {
    /// Identity.
    None,
    /// `max(0, x)`; NaN stays NaN.
    Relu,
    /// `x` for `x >= 0`, `alpha * x` otherwise.
    LeakyRelu {
        /// Slope applied to negative inputs.
        alpha: f32,
    },
    /// `min(max(x, min), max)`; NaN stays NaN.
    Clip {
        /// Lower bound.
        min: f32,
        /// Upper bound.
        max: f32,
    },
    /// `1 / (1 + e^-x)`.
    #[cfg(feature = "op-sigmoid")]
    Sigmoid,
    /// Hyperbolic tangent.
    #[cfg(feature = "op-sigmoid")]
    Tanh,
    /// `max(0, min(1, alpha * x + beta))`.
    HardSigmoid {
        /// Slope.
        alpha: f32,
        /// Offset.
        beta: f32,
    },
    /// `x * max(0, min(1, x / 6 + 0.5))`.
    HardSwish,
}

// The helpers compare with `<`/`>` and return `x` otherwise, because every
// comparison with NaN is false: that is what makes NaN propagate, whereas
// `f32::max`/`f32::min` would silently replace it.

#[inline(always)]
fn relu(x: f32) -> f32 {
    if x < 0.0 {
        0.0
    } else {
        x
    }
}

#[inline(always)]
fn leaky_relu(x: f32, alpha: f32) -> f32 {
    if x < 0.0 {
        alpha * x
    } else {
        x
    }
}

#[inline(always)]
fn clip(x: f32, min: f32, max: f32) -> f32 {
    let x = if x < min { min } else { x };
    if x > max {
        max
    } else {
        x
    }
}

#[cfg(feature = "op-sigmoid")]
#[inline(always)]
fn sigmoid(x: f32) -> f32 {
    // Only ever exponentiate a non-positive number: e^x cannot overflow, and
    // for very negative x the result underflows gracefully to 0 instead of
    // computing 1 / (1 + inf).
    if x >= 0.0 {
        1.0 / (1.0 + expf(-x))
    } else {
        let e = expf(x);
        e / (1.0 + e)
    }
}

#[inline(always)]
fn hard_sigmoid(x: f32, alpha: f32, beta: f32) -> f32 {
    clip(alpha * x + beta, 0.0, 1.0)
}

#[inline(always)]
fn hard_swish(x: f32) -> f32 {
    // ONNX defines HardSwish as x * HardSigmoid<alpha = 1/6, beta = 0.5>(x);
    // following that literally keeps results bit-identical to HardSigmoid.
    x * hard_sigmoid(x, 1.0 / 6.0, 0.5)
}

/// Expands `$body` once per variant with `$f` bound to that variant's scalar
/// function, so the variant is matched once per slice rather than per element.
macro_rules! dispatch {
    ($act:expr, |$f:ident| $body:expr) => {
        match $act {
            Activation::None => {
                let $f = |x: f32| x;
                $body
            }
            Activation::Relu => {
                let $f = relu;
                $body
            }
            Activation::LeakyRelu { alpha } => {
                let $f = move |x| leaky_relu(x, alpha);
                $body
            }
            Activation::Clip { min, max } => {
                let $f = move |x| clip(x, min, max);
                $body
            }
            #[cfg(feature = "op-sigmoid")]
            Activation::Sigmoid => {
                let $f = sigmoid;
                $body
            }
            #[cfg(feature = "op-sigmoid")]
            Activation::Tanh => {
                let $f = tanhf;
                $body
            }
            Activation::HardSigmoid { alpha, beta } => {
                let $f = move |x| hard_sigmoid(x, alpha, beta);
                $body
            }
            Activation::HardSwish => {
                let $f = hard_swish;
                $body
            }
        }
    };
}

#[inline(always)]
fn map_in_place(xs: &mut [f32], f: impl Fn(f32) -> f32) {
    for v in xs {
        *v = f(*v);
    }
}

#[inline(always)]
fn map_into(x: &[f32], y: &mut [f32], f: impl Fn(f32) -> f32) {
    for (o, &v) in y.iter_mut().zip(x) {
        *o = f(v);
    }
}

impl Activation {
    /// Applies the activation to one value.
    #[inline]
    pub fn apply(self, x: f32) -> f32 {
        dispatch!(self, |f| f(x))
    }

    /// Applies the activation to every element of `xs` in place.
    pub fn apply_slice(self, xs: &mut [f32]) {
        if self == Activation::None {
            return;
        }
        dispatch!(self, |f| map_in_place(xs, f))
    }

    /// Writes `y[i] = act(x[i])`; the slices must have equal lengths.
    pub(crate) fn apply_into(self, x: &[f32], y: &mut [f32]) {
        debug_assert_eq!(x.len(), y.len());
        dispatch!(self, |f| map_into(x, y, f))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const ALL: [Activation; 8] = [
        Activation::None,
        Activation::Relu,
        Activation::LeakyRelu { alpha: 0.1 },
        Activation::Clip {
            min: -1.0,
            max: 2.0,
        },
        Activation::Sigmoid,
        Activation::Tanh,
        Activation::HardSigmoid {
            alpha: 0.2,
            beta: 0.5,
        },
        Activation::HardSwish,
    ];

    /// Textbook formulas in f64.
    fn naive(act: Activation, x: f64) -> f64 {
        match act {
            Activation::None => x,
            Activation::Relu => x.max(0.0),
            Activation::LeakyRelu { alpha } => {
                if x < 0.0 {
                    alpha as f64 * x
                } else {
                    x
                }
            }
            Activation::Clip { min, max } => x.max(min as f64).min(max as f64),
            Activation::Sigmoid => 1.0 / (1.0 + (-x).exp()),
            Activation::Tanh => x.tanh(),
            Activation::HardSigmoid { alpha, beta } => {
                (alpha as f64 * x + beta as f64).clamp(0.0, 1.0)
            }
            Activation::HardSwish => x * (x / 6.0 + 0.5).clamp(0.0, 1.0),
        }
    }

    #[test]
    fn hand_computed_values() {
        assert_eq!(Activation::Relu.apply(-2.0), 0.0);
        assert_eq!(Activation::Relu.apply(3.5), 3.5);
        assert_eq!(Activation::LeakyRelu { alpha: 0.1 }.apply(-2.0), -0.2);
        assert_eq!(Activation::LeakyRelu { alpha: 0.1 }.apply(2.0), 2.0);
        let clip = Activation::Clip { min: 0.0, max: 6.0 };
        assert_eq!(clip.apply(-1.0), 0.0);
        assert_eq!(clip.apply(7.0), 6.0);
        assert_eq!(clip.apply(2.5), 2.5);
        assert_eq!(Activation::Sigmoid.apply(0.0), 0.5);
        assert!((Activation::Tanh.apply(1.0) - 0.761_594_2).abs() < 1e-6);
        let hs = Activation::HardSigmoid {
            alpha: 0.2,
            beta: 0.5,
        };
        assert_eq!(hs.apply(0.0), 0.5);
        assert_eq!(hs.apply(10.0), 1.0);
        assert_eq!(hs.apply(-10.0), 0.0);
        assert_eq!(Activation::HardSwish.apply(-4.0), 0.0);
        assert_eq!(Activation::HardSwish.apply(4.0), 4.0);
        assert_eq!(Activation::HardSwish.apply(0.0), 0.0);
        assert!((Activation::HardSwish.apply(1.0) - 1.0 * (1.0 / 6.0 + 0.5)).abs() < 1e-7);
    }

    #[test]
    fn sigmoid_is_stable_at_extremes() {
        assert_eq!(Activation::Sigmoid.apply(100.0), 1.0);
        assert_eq!(Activation::Sigmoid.apply(f32::INFINITY), 1.0);
        assert_eq!(Activation::Sigmoid.apply(f32::NEG_INFINITY), 0.0);
        let tiny = Activation::Sigmoid.apply(-80.0);
        assert!(tiny > 0.0 && (tiny as f64 - (-80.0f64).exp()).abs() < 1e-40);
        assert_eq!(Activation::Sigmoid.apply(-200.0), 0.0);
    }

    #[test]
    fn nan_propagates() {
        for act in ALL {
            assert!(act.apply(f32::NAN).is_nan(), "{act:?}");
        }
    }

    #[test]
    fn slice_forms_match_scalar() {
        let xs: Vec<f32> = (-20..=20).map(|i| i as f32 * 0.37).collect();
        for act in ALL {
            let mut in_place = xs.clone();
            act.apply_slice(&mut in_place);
            let mut out = vec![0.0; xs.len()];
            act.apply_into(&xs, &mut out);
            for (i, &x) in xs.iter().enumerate() {
                assert_eq!(in_place[i].to_bits(), act.apply(x).to_bits());
                assert_eq!(out[i].to_bits(), act.apply(x).to_bits());
            }
        }
    }

    proptest! {
        #[test]
        fn matches_textbook_formulas(
            x in -30.0f32..30.0,
            alpha in -2.0f32..2.0,
            beta in -1.0f32..1.0,
            lo in -5.0f32..0.0,
            span in 0.0f32..10.0,
        ) {
            let acts = [
                Activation::None,
                Activation::Relu,
                Activation::LeakyRelu { alpha },
                Activation::Clip { min: lo, max: lo + span },
                Activation::Sigmoid,
                Activation::Tanh,
                Activation::HardSigmoid { alpha, beta },
                Activation::HardSwish,
            ];
            for act in acts {
                let got = act.apply(x) as f64;
                let want = naive(act, x as f64);
                prop_assert!((got - want).abs() <= 1e-5 * want.abs().max(1.0), "{act:?}({x}) = {got}, want {want}");
            }
        }
    }
}
