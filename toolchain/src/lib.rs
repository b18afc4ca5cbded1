//! tinykd: distill, compress and deploy neural networks to small devices.
//! This crate is the host side: the CLI's library (engines, tensor files,
//! inspection, conformance); the device side is `tinykd-runtime`.

// Errors wrap tinykd_runtime::Error, which is large by design (see there).
#![allow(clippy::result_large_err)]

pub mod bench;
pub mod conformance;
pub mod data;
pub mod distill;
pub mod engine;
pub mod eval;
pub mod export;
pub mod inspect;
pub mod prune;
pub mod quantize;
pub mod report;
pub mod targets;
pub mod teacher;
pub mod tensor_file;
pub mod train;
