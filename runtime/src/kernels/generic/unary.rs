//! Stand-alone element-wise activation operators (Relu, Sigmoid, Clip, ...).

use super::activation::Activation;

/// Writes `y[i] = act(x[i])`; `x` and `y` must have the same length.
pub fn unary_f32(act: Activation, x: &[f32], y: &mut [f32]) {
    debug_assert_eq!(x.len(), y.len());
    let n = x.len().min(y.len());
    act.apply_into(&x[..n], &mut y[..n]);
}

/// Replaces every element of `xy` with `act(xy[i])`.
pub fn unary_in_place_f32(act: Activation, xy: &mut [f32]) {
    act.apply_slice(xy);
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn relu_by_hand() {
        let x = [-1.0, 0.0, 2.0, -0.5, f32::NAN];
        let mut y = [9.0; 5];
        unary_f32(Activation::Relu, &x, &mut y);
        assert_eq!(&y[..4], &[0.0, 0.0, 2.0, 0.0]);
        assert!(y[4].is_nan());
    }

    #[test]
    fn none_copies() {
        let x = [1.5, -2.5, 3.0];
        let mut y = [0.0; 3];
        unary_f32(Activation::None, &x, &mut y);
        assert_eq!(y, x);
    }

    #[test]
    fn clip_in_place_by_hand() {
        let mut xy = [-3.0, 0.5, 7.0, 6.0];
        unary_in_place_f32(Activation::Clip { min: 0.0, max: 6.0 }, &mut xy);
        assert_eq!(xy, [0.0, 0.5, 6.0, 6.0]);
    }

    #[test]
    fn empty_is_fine() {
        unary_f32(Activation::Sigmoid, &[], &mut []);
        unary_in_place_f32(Activation::Tanh, &mut []);
    }

    proptest! {
        #[test]
        fn matches_scalar_apply(
            xs in proptest::collection::vec(-50.0f32..50.0, 0..64),
            which in 0usize..8,
            alpha in -1.0f32..1.0,
        ) {
            let act = [
                Activation::None,
                Activation::Relu,
                Activation::LeakyRelu { alpha },
                Activation::Clip { min: -alpha.abs(), max: alpha.abs() },
                Activation::Sigmoid,
                Activation::Tanh,
                Activation::HardSigmoid { alpha, beta: 0.5 },
                Activation::HardSwish,
            ][which];
            let mut y = vec![0.0; xs.len()];
            unary_f32(act, &xs, &mut y);
            let mut z = xs.clone();
            unary_in_place_f32(act, &mut z);
            for (i, &x) in xs.iter().enumerate() {
                prop_assert_eq!(y[i].to_bits(), act.apply(x).to_bits());
                prop_assert_eq!(z[i].to_bits(), act.apply(x).to_bits());
            }
        }
    }
}
