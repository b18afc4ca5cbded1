//! The int8 AveragePool / GlobalAveragePool that the load-time QDQ rewrite
//! ([`crate::fuse`]) makes of `DQ(x) → AveragePool | GlobalAveragePool →
//! Q`: window sums of `x − zx` in int32, shifted left by `pre_shift` bits,
//! then one fixed-point requantization by `x_scale / (y_scale · count ·
//! 2^pre_shift)` (see [`crate::kernels::generic::pool_i8`]), a single
//! rounding (ties towards +∞) of the exact average. ONNX Runtime's contrib
//! `QLinearAveragePool` / `QLinearGlobalAveragePool` compute the same in
//! f32; results may differ from them, and from the float path, by one LSB
//! near ties.
//!
//! Inputs, as those contrib ops lay them out: `x, x_scale, x_zero_point,
//! y_scale, y_zero_point` (scales constant, zero points optional).

use super::{q8, q8_mut, zero_points, DataMut, Elem, TensorRef, ZeroPoints};
use crate::kernels::generic::pool::PoolGeometry;
use crate::kernels::generic::pool_i8::{self, avg_pool2d_i8, global_avg_pool_i8};
use crate::quant::{quantize_multiplier, OutputStage, QElem, QuantError, Requant};
use crate::value::Value;

/// Input positions.
pub(crate) const X_SCALE: usize = 1;
pub(crate) const X_ZERO: usize = 2;
pub(crate) const Y_SCALE: usize = 3;
pub(crate) const Y_ZERO: usize = 4;

/// Which windows are averaged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QPoolWindow {
    /// AveragePool's sliding window (every window counts the same number
    /// of elements).
    Window(PoolGeometry),
    /// GlobalAveragePool: all spatial elements of each channel.
    Global,
}

/// A prepared int8 average pooling.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QAveragePool {
    /// The windows.
    pub window: QPoolWindow,
    /// Elements per window, the divisor.
    pub count: usize,
    /// Bits each window sum is shifted left by before requantizing.
    pub pre_shift: u8,
}

/// `x_scale / (y_scale · count)`, in f64.
fn real(x_scale: f32, y_scale: f32, count: usize) -> f64 {
    f64::from(x_scale) / (f64::from(y_scale) * count as f64)
}

/// The left shift for an average of `count` elements from scale `x_scale`
/// to `y_scale`: as large as the sums allow ([`pool_i8::pre_shift`]), but
/// never so large that the shifted-back multiplier would flush to zero.
pub fn pre_shift(x_scale: f32, y_scale: f32, count: usize) -> u8 {
    let (_, shift) = quantize_multiplier(real(x_scale, y_scale, count));
    let room = (shift + 31).max(0) as u32;
    pool_i8::pre_shift(count).min(room) as u8
}

/// The requantization of an average of `count` elements, pre-shifted by
/// `pre_shift` bits, from scale `x_scale` to `y_scale`:
/// `x_scale / (y_scale · count · 2^pre_shift)`, in f64.
///
/// # Errors
/// A non-finite or non-positive scale, or a multiplier of 2^30 or more.
pub fn requant(
    x_scale: f32,
    y_scale: f32,
    count: usize,
    pre_shift: u8,
) -> Result<Requant, QuantError> {
    Requant::from_scale(real(x_scale, y_scale, count) / f64::from(1u32 << pre_shift))
}

/// The constant scale at input `i`.
fn scale(inputs: &[Option<&Value<'_>>], i: usize) -> f32 {
    inputs
        .get(i)
        .copied()
        .flatten()
        .and_then(|v| v.const_element(0))
        .unwrap_or(1.0) as f32
}

impl QAveragePool {
    /// The op for `count`-element windows between the scales of `inputs`
    /// (laid out as above).
    pub fn new(window: QPoolWindow, count: usize, inputs: &[Option<&Value<'_>>]) -> Self {
        let pre_shift = pre_shift(scale(inputs, X_SCALE), scale(inputs, Y_SCALE), count);
        QAveragePool {
            window,
            count,
            pre_shift,
        }
    }

    /// The op's one requantization, from its constant scales (`inputs` as
    /// laid out above).
    pub fn requant(&self, inputs: &[Option<&Value<'_>>]) -> Result<Requant, QuantError> {
        let (x_scale, y_scale) = (scale(inputs, X_SCALE), scale(inputs, Y_SCALE));
        requant(x_scale, y_scale, self.count, self.pre_shift)
    }

    pub(super) fn fill_requants(&self, inputs: &[Option<&Value<'_>>], out: &mut [Requant]) {
        if let Some(slot) = out.first_mut() {
            *slot = self.requant(inputs).unwrap_or_default();
        }
    }

    pub(super) fn eval(
        &self,
        inputs: &[Option<TensorRef<'_>>],
        requants: &[Requant],
        output: DataMut<'_>,
    ) {
        let input = |i: usize| inputs.get(i).copied().flatten();
        let Some(x) = input(0) else {
            return;
        };
        if requants.len() != 1 {
            return; // never: the planner gives the op its one entry
        }
        q8!(x.data, |xs| q8_mut!(output, |ys| {
            let (zx, zy) = (zero_points(input(X_ZERO)), zero_points(input(Y_ZERO)));
            self.run(x, xs, zx, requants, zy, ys)
        }));
    }

    fn run<X: QElem + Elem, Y: QElem + Elem>(
        &self,
        x: TensorRef<'_>,
        xs: &[X],
        zx: ZeroPoints<'_, X>,
        requants: &[Requant],
        zy: ZeroPoints<'_, Y>,
        y: &mut [Y],
    ) {
        let stage = OutputStage::new(requants, zy.at(0));
        let shift = u32::from(self.pre_shift);
        match &self.window {
            QPoolWindow::Window(g) => avg_pool2d_i8(g, xs, zx.at(0), shift, &stage, y),
            QPoolWindow::Global => {
                let rank = x.shape.rank();
                let (batch_channels, spatial) = (x.shape.product(0..2), x.shape.product(2..rank));
                if xs.len() < batch_channels * spatial || y.len() < batch_channels {
                    return; // never: shapes checked at load
                }
                global_avg_pool_i8(batch_channels, spatial, xs, zx.at(0), shift, &stage, y)
            }
        }
    }
}
