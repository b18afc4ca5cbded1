//! Compute kernels. `generic` is the scalar reference, always built; SIMD
//! kernels per architecture are checked against it.

pub mod generic;
