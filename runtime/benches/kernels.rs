//! Micro-benchmarks of the kernels' inner loops: this build's SIMD path
//! (`tinykd_runtime::kernels::*`, see `kernels::simd_path`) against the
//! scalar reference (`kernels::generic::inner`), per loop and length.
//!
//! `cargo bench -p tinykd-runtime --bench kernels` (criterion; `make bench`
//! runs it with short measurement times).

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use std::hint::black_box;
use tinykd_runtime::kernels::{self, generic::inner};

const LENGTHS: [usize; 4] = [16, 64, 256, 1024];

fn values_i8(n: usize, seed: u32) -> Vec<i8> {
    (0..n as u32)
        .map(|i| (i.wrapping_mul(2_654_435_761).wrapping_add(seed) >> 24) as u8 as i8)
        .collect()
}

fn values_f32(n: usize, seed: u32) -> Vec<f32> {
    values_i8(n, seed)
        .iter()
        .map(|&v| f32::from(v) / 128.0)
        .collect()
}

fn inner_loops(c: &mut Criterion) {
    let path = kernels::simd_path();
    for n in LENGTHS {
        let (a, b) = (values_i8(n, 1), values_i8(n, 2));
        let (x, w) = (values_f32(n, 3), values_f32(n, 4));
        let mut g = c.benchmark_group(format!("n={n}"));
        g.throughput(Throughput::Elements(n as u64));
        g.bench_function(BenchmarkId::new("dot_i8", "scalar"), |bn| {
            bn.iter(|| inner::dot_i8(black_box(&a), black_box(&b)))
        });
        g.bench_function(BenchmarkId::new("dot_i8", path), |bn| {
            bn.iter(|| kernels::dot_i8(black_box(&a), black_box(&b)))
        });
        let mut y = vec![0i32; n];
        g.bench_function(BenchmarkId::new("axpy_i8", "scalar"), |bn| {
            bn.iter(|| inner::axpy_i8(black_box(&mut y), 3, black_box(&a), -7))
        });
        g.bench_function(BenchmarkId::new("axpy_i8", path), |bn| {
            bn.iter(|| kernels::axpy_i8(black_box(&mut y), 3, black_box(&a), -7))
        });
        g.bench_function(BenchmarkId::new("dot_f32", "scalar"), |bn| {
            bn.iter(|| inner::dot_f32(black_box(&x), black_box(&w)))
        });
        g.bench_function(BenchmarkId::new("dot_f32", path), |bn| {
            bn.iter(|| kernels::dot_f32(black_box(&x), black_box(&w)))
        });
        let mut yf = vec![0f32; n];
        g.bench_function(BenchmarkId::new("axpy_f32", "scalar"), |bn| {
            bn.iter(|| inner::axpy_f32(black_box(&mut yf), 0.5, black_box(&x)))
        });
        g.bench_function(BenchmarkId::new("axpy_f32", path), |bn| {
            bn.iter(|| kernels::axpy_f32(black_box(&mut yf), 0.5, black_box(&x)))
        });
        g.finish();
    }
}

criterion_group!(benches, inner_loops);
criterion_main!(benches);
