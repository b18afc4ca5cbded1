//! Training in candle: model specs, fast training ops, the optimizer step and
//! the training benchmark.

pub mod adapter;
pub mod bench;
pub mod checkpoint;
pub mod fit;
pub mod init;
pub mod model;
pub mod ops;
pub mod optim;
