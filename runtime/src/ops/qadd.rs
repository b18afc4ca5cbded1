//! The int8 Add that the load-time QDQ rewrite ([`crate::fuse`]) makes of
//! `DQ(a), DQ(b) → Add → Q`, with numpy broadcasting, in TFLite's
//! quantized-add arithmetic ([`crate::kernels::generic::add_i8`]).
//!
//! Inputs, as ONNX Runtime's contrib `QLinearAdd` lays them out: `a,
//! a_scale, a_zero_point, b, b_scale, b_zero_point, y_scale, y_zero_point`
//! (scales constant and per tensor, zero points optional). The three
//! requantizations live in the arena.

use super::{q8, q8_mut, zero_points, DataMut, Elem, TensorRef, ZeroPoints};
use crate::kernels::generic::add_i8::{add_i8, AddRequants, AddStage};
use crate::quant::{Clamp, QElem, QuantError, Requant};
use crate::tensor::{Shape, MAX_RANK};
use crate::value::Value;

/// Input positions.
pub(crate) const A_SCALE: usize = 1;
pub(crate) const A_ZERO: usize = 2;
pub(crate) const B: usize = 3;
pub(crate) const B_SCALE: usize = 4;
pub(crate) const B_ZERO: usize = 5;
pub(crate) const Y_SCALE: usize = 6;
pub(crate) const Y_ZERO: usize = 7;

/// Requantizations kept in the arena: input a's, input b's, the output's.
pub const REQUANTS: usize = 3;

/// A prepared int8 Add.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QAdd {
    /// A fused clamp (none from the QDQ rewrite today).
    pub clamp: Clamp,
}

/// The add's requantizations from its constant scales (`inputs` as laid
/// out above).
///
/// # Errors
/// As [`AddRequants::from_scales`].
pub fn requants(inputs: &[Option<&Value<'_>>]) -> Result<AddRequants, QuantError> {
    let scale = |i: usize| {
        inputs
            .get(i)
            .copied()
            .flatten()
            .and_then(|v| v.const_element(0))
            .unwrap_or(1.0) as f32
    };
    AddRequants::from_scales(scale(A_SCALE), scale(B_SCALE), scale(Y_SCALE))
}

pub(super) fn fill_requants(inputs: &[Option<&Value<'_>>], out: &mut [Requant]) {
    let r = requants(inputs).unwrap_or_default();
    for (slot, v) in out.iter_mut().zip([r.a, r.b, r.out]) {
        *slot = v;
    }
}

/// `shape`'s dims right-aligned to `rank`, padded with leading 1s.
fn expand(shape: &Shape, rank: usize) -> [usize; MAX_RANK] {
    let mut out = [1usize; MAX_RANK];
    let r = shape.rank().min(rank);
    for i in 0..r {
        out[rank - r + i] = shape.dim(shape.rank() - r + i);
    }
    out
}

impl QAdd {
    pub(super) fn eval(
        &self,
        inputs: &[Option<TensorRef<'_>>],
        requants: &[Requant],
        output: DataMut<'_>,
        y_shape: &Shape,
    ) {
        let input = |i: usize| inputs.get(i).copied().flatten();
        let (Some(a), Some(b), &[ra, rb, rout]) = (input(0), input(B), requants) else {
            return;
        };
        let requants = AddRequants {
            a: ra,
            b: rb,
            out: rout,
        };
        q8!(a.data, |a_data| q8!(b.data, |b_data| q8_mut!(
            output,
            |ys| {
                let (za, zb, zy) = (
                    zero_points(input(A_ZERO)),
                    zero_points(input(B_ZERO)),
                    zero_points(input(Y_ZERO)),
                );
                let operands = ((a_data, a.shape, za), (b_data, b.shape, zb));
                self.run(operands, requants, zy, ys, y_shape)
            }
        )));
    }

    #[allow(clippy::type_complexity)]
    fn run<A: QElem + Elem, B: QElem + Elem, Y: QElem + Elem>(
        &self,
        (a, b): (
            (&[A], Shape, ZeroPoints<'_, A>),
            (&[B], Shape, ZeroPoints<'_, B>),
        ),
        requants: AddRequants,
        zy: ZeroPoints<'_, Y>,
        y: &mut [Y],
        y_shape: &Shape,
    ) {
        let rank = y_shape.rank();
        let (ys, _) = y_shape.dims();
        let (sa, sb) = (expand(&a.1, rank), expand(&b.1, rank));
        let (act_min, act_max) = self.clamp.bounds();
        let stage = AddStage {
            requants,
            zero_point: zy.at(0),
            act_min,
            act_max,
        };
        add_i8(
            (a.0, &sa[..rank], a.2.at(0)),
            (b.0, &sb[..rank], b.2.at(0)),
            &stage,
            y,
            &ys[..rank],
        );
    }
}
