//! Typed run-time data: the element slices kernels read ([`Data`]) and
//! write ([`DataMut`]), the element types ([`Elem`]), and the macros that
//! instantiate a generic kernel per type.

use crate::tensor::{DType, Shape};

/// Elements of one run-time tensor, by type.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Data<'t> {
    /// float32.
    F32(&'t [f32]),
    /// int8.
    I8(&'t [i8]),
    /// uint8.
    U8(&'t [u8]),
    /// int32.
    I32(&'t [i32]),
}

/// A run-time tensor's elements to write, by type.
#[derive(Debug, PartialEq)]
pub enum DataMut<'t> {
    /// float32.
    F32(&'t mut [f32]),
    /// int8.
    I8(&'t mut [i8]),
    /// uint8.
    U8(&'t mut [u8]),
    /// int32.
    I32(&'t mut [i32]),
}

impl<'t> Data<'t> {
    /// The element type.
    pub fn dtype(&self) -> DType {
        match self {
            Data::F32(_) => DType::F32,
            Data::I8(_) => DType::I8,
            Data::U8(_) => DType::U8,
            Data::I32(_) => DType::I32,
        }
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        match self {
            Data::F32(d) => d.len(),
            Data::I8(d) => d.len(),
            Data::U8(d) => d.len(),
            Data::I32(d) => d.len(),
        }
    }

    /// Whether there are no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The elements as `T`, if they are of that type.
    pub fn get<T: Elem>(self) -> Option<&'t [T]> {
        T::slice(self)
    }
}

impl<'t> DataMut<'t> {
    /// The element type.
    pub fn dtype(&self) -> DType {
        match self {
            DataMut::F32(_) => DType::F32,
            DataMut::I8(_) => DType::I8,
            DataMut::U8(_) => DType::U8,
            DataMut::I32(_) => DType::I32,
        }
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        match self {
            DataMut::F32(d) => d.len(),
            DataMut::I8(d) => d.len(),
            DataMut::U8(d) => d.len(),
            DataMut::I32(d) => d.len(),
        }
    }

    /// Whether there are no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A shorter-lived view of the same elements.
    pub fn reborrow(&mut self) -> DataMut<'_> {
        match self {
            DataMut::F32(d) => DataMut::F32(d),
            DataMut::I8(d) => DataMut::I8(d),
            DataMut::U8(d) => DataMut::U8(d),
            DataMut::I32(d) => DataMut::I32(d),
        }
    }

    /// Copies `src` in when both have the same type and length; returns
    /// whether it did.
    pub fn copy_from(&mut self, src: Data<'_>) -> bool {
        fn copy<T: Copy>(dst: &mut [T], src: &[T]) -> bool {
            let same = dst.len() == src.len();
            if same {
                dst.copy_from_slice(src);
            }
            same
        }
        match (self, src) {
            (DataMut::F32(d), Data::F32(s)) => copy(d, s),
            (DataMut::I8(d), Data::I8(s)) => copy(d, s),
            (DataMut::U8(d), Data::U8(s)) => copy(d, s),
            (DataMut::I32(d), Data::I32(s)) => copy(d, s),
            _ => false,
        }
    }
}

/// An element type that run-time tensors hold: `f32`, `i8`, `u8`, `i32`.
pub trait Elem: Copy + Default + PartialOrd + core::fmt::Debug + 'static {
    /// Its ONNX type.
    const DTYPE: DType;
    /// The elements of `d` if they are of this type.
    fn slice(d: Data<'_>) -> Option<&[Self]>;
    /// `v` converted as Rust's `as` does (integers saturate, NaN gives 0).
    fn from_f64(v: f64) -> Self;
}

macro_rules! elem {
    ($t:ty, $variant:ident) => {
        impl Elem for $t {
            const DTYPE: DType = DType::$variant;
            #[inline]
            fn slice(d: Data<'_>) -> Option<&[Self]> {
                match d {
                    Data::$variant(s) => Some(s),
                    _ => None,
                }
            }
            #[inline]
            fn from_f64(v: f64) -> Self {
                v as $t
            }
        }
    };
}
elem!(f32, F32);
elem!(i8, I8);
elem!(u8, U8);
elem!(i32, I32);

/// Runs `$body` with `$y` bound to the output's typed slice, whatever its
/// type (the body is instantiated once per type).
#[cfg(any(feature = "op-layout", feature = "op-cast"))]
macro_rules! any_type {
    ($out:expr, |$y:ident| $body:expr) => {
        match $out {
            $crate::ops::DataMut::F32($y) => $body,
            $crate::ops::DataMut::I8($y) => $body,
            $crate::ops::DataMut::U8($y) => $body,
            $crate::ops::DataMut::I32($y) => $body,
        }
    };
}
#[cfg(any(feature = "op-layout", feature = "op-cast"))]
pub(crate) use any_type;

/// Runs `$body` with `$x` bound to the 8-bit elements of `$data` (`i8`, or
/// `u8` with the `quant-u8` feature); does nothing for other types, which
/// `prepare` has rejected (see [`super::Q8_TYPES`]).
#[cfg(all(
    feature = "op-quant",
    any(
        feature = "op-conv",
        feature = "op-gemm",
        feature = "op-pool",
        feature = "op-elementwise"
    )
))]
macro_rules! q8 {
    ($data:expr, |$x:ident| $body:expr) => {
        match $data {
            $crate::ops::Data::I8($x) => $body,
            #[cfg(feature = "quant-u8")]
            $crate::ops::Data::U8($x) => $body,
            _ => {}
        }
    };
}
#[cfg(all(
    feature = "op-quant",
    any(
        feature = "op-conv",
        feature = "op-gemm",
        feature = "op-pool",
        feature = "op-elementwise"
    )
))]
pub(crate) use q8;

/// As [`q8`] for an output.
#[cfg(feature = "op-quant")]
macro_rules! q8_mut {
    ($data:expr, |$y:ident| $body:expr) => {
        match $data {
            $crate::ops::DataMut::I8($y) => $body,
            #[cfg(feature = "quant-u8")]
            $crate::ops::DataMut::U8($y) => $body,
            _ => {}
        }
    };
}
#[cfg(feature = "op-quant")]
pub(crate) use q8_mut;

/// One input tensor at run time.
#[derive(Clone, Copy, Debug)]
pub struct TensorRef<'t> {
    /// Elements, row-major.
    pub data: Data<'t>,
    /// Its shape.
    pub shape: Shape,
}

impl<'t> TensorRef<'t> {
    /// The same tensor with its elements as `T`, if they are of that type.
    pub fn typed<T: Elem>(self) -> Option<Tensor<'t, T>> {
        Some(Tensor {
            data: T::slice(self.data)?,
            shape: self.shape,
        })
    }
}

/// A tensor of known element type, as the single-type kernels take it.
#[derive(Clone, Copy, Debug)]
pub struct Tensor<'t, T> {
    /// Elements, row-major.
    pub data: &'t [T],
    /// Its shape.
    pub shape: Shape,
}

/// Zero point `i` of an optional zero-point input (one entry for all, or
/// one per channel), or 0 when the input is omitted.
#[cfg(feature = "op-quant")]
pub(crate) fn zero_points<T: Elem>(zp: Option<TensorRef<'_>>) -> ZeroPoints<'_, T> {
    ZeroPoints(zp.and_then(|t| T::slice(t.data)).filter(|s| !s.is_empty()))
}

/// The zero points of one tensor: one for all, one per channel, or none (0).
#[cfg(feature = "op-quant")]
#[derive(Clone, Copy, Debug)]
pub(crate) struct ZeroPoints<'t, T>(Option<&'t [T]>);

#[cfg(feature = "op-quant")]
impl<'t, T: Elem> ZeroPoints<'t, T> {
    /// The zero point of channel `c` (the single one when per tensor).
    #[inline]
    pub(crate) fn at(&self, c: usize) -> T {
        match self.0 {
            Some([z]) => *z,
            Some(s) => s.get(c).copied().unwrap_or_default(),
            None => T::default(),
        }
    }

    /// The zero points as the integer kernels take them: a slice of one or
    /// of one per channel (`fallback` holds the default 0 when omitted).
    #[cfg(any(feature = "op-conv", feature = "op-gemm"))]
    pub(crate) fn slice<'s>(&self, fallback: &'s [T; 1]) -> &'s [T]
    where
        't: 's,
    {
        self.0.unwrap_or(fallback)
    }
}
