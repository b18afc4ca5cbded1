//! Fast training ops as candle custom ops (forward + backward), each checked
//! against candle's own ops by finite differences.

pub mod conv2d;
pub mod cpu;
pub mod depthwise;
pub mod fake_quant;
pub mod im2col;
pub mod linear;
pub mod pool;
#[cfg(test)]
mod testutil;
