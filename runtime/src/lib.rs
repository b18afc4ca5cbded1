//! tinykd-runtime: a `no_std`, no-allocation ONNX runtime for small devices.
//!
//! ```text
//! let model = Model::parse(bytes)?;              // validate + plan, no heap
//! let mut arena = [0u8; N];                      // N ≥ model.arena_size()
//! let mut session = Session::new(&model, &mut arena)?;
//! session.run(&[&input], &mut [&mut output])?;   // allocates nothing
//! ```
//!
//! `run` takes float32 buffers; a model whose graph inputs or outputs are
//! int8, uint8 or int32 (a quantized model) runs with
//! `session.run_typed(&[Data::I8(&input)], &mut [DataMut::U8(&mut output)])`.
#![cfg_attr(not(any(test, feature = "std")), no_std)]
#![warn(missing_docs)]
#![deny(unsafe_op_in_unsafe_fn, clippy::undocumented_unsafe_blocks)]
// `Error` owns short copies of the names it reports (no heap), which makes it
// ~170 bytes; errors are returned at load time only, never per inference.
#![allow(clippy::result_large_err)]

#[cfg(feature = "alloc")]
extern crate alloc;

pub mod error;
#[cfg(feature = "op-quant")]
pub mod fuse;
pub mod kernels;
pub mod limits;
pub mod model;
pub mod ops;
pub mod planner;
pub mod proto;
pub mod quant;
pub mod session;
pub mod tensor;
pub mod value;

pub use error::Error;
pub use model::{Bindings, ConstInput, LoadOptions, Model, Node};
pub use ops::{Data, DataMut};
pub use session::{AlignedArena, Session};
pub use tensor::{DType, Shape};
pub use value::Value;
