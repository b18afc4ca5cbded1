//! The ONNX protobuf format, read in place.

pub mod onnx;
pub mod wire;
