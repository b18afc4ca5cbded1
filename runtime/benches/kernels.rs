//! Micro-benchmarks of the kernels: the inner loops, this build's SIMD path
//! (`tinykd_runtime::kernels::*`, see `kernels::simd_path`) against the
//! scalar reference (`kernels::generic::inner`), per loop and length; and
//! the DS-CNN student's and CNN teacher's convolutions, f32 and int8, by
//! the dispatching kernel (tiled on AVX2/NEON) against the direct one.
//!
//! `cargo bench -p tinykd-runtime --bench kernels` (criterion; `make bench`
//! runs it with short measurement times).

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use std::hint::black_box;
use tinykd_runtime::kernels::generic::activation::Activation;
use tinykd_runtime::kernels::generic::conv::ConvGeometry;
use tinykd_runtime::kernels::{self, generic::conv, generic::conv_i8, generic::inner};
use tinykd_runtime::quant::{OutputStage, Requant};

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

/// A stride-1 geometry: (groups, in/out channels per group), square image,
/// square kernel and its padding.
fn geometry(name: &str) -> ConvGeometry {
    let (groups, cin_g, cout_g, hw, k, pad) = match name {
        "conv1-1x32-28x28-3x3" => (1, 1, 32, 28, 3, 1),
        "dw-32-14x14-3x3" => (32, 1, 1, 14, 3, 1),
        "pw-32x64-14x14" => (1, 32, 64, 14, 1, 0),
        "pw-128x128-7x7" => (1, 128, 128, 7, 1, 0),
        _ => (1, 64, 128, 14, 3, 1),
    };
    ConvGeometry {
        batch: 1,
        in_channels: groups * cin_g,
        in_h: hw,
        in_w: hw,
        out_channels: groups * cout_g,
        out_h: hw + 2 * pad - k + 1,
        out_w: hw + 2 * pad - k + 1,
        kernel_h: k,
        kernel_w: k,
        stride_h: 1,
        stride_w: 1,
        dilation_h: 1,
        dilation_w: 1,
        pad_top: pad,
        pad_left: pad,
        groups,
    }
}

fn convolutions(c: &mut Criterion) {
    let path = kernels::simd_path();
    let names = [
        "conv1-1x32-28x28-3x3",
        "dw-32-14x14-3x3",
        "pw-32x64-14x14",
        "pw-128x128-7x7",
        "conv-64x128-14x14-3x3",
    ];
    for name in names {
        let g = geometry(name);
        let cin_g = g.in_channels / g.groups;
        let (x_len, y_len) = (
            g.in_channels * g.in_h * g.in_w,
            g.out_channels * g.out_h * g.out_w,
        );
        let w_len = g.out_channels * cin_g * g.kernel_h * g.kernel_w;
        let (x, w, bias) = (
            values_f32(x_len, 5),
            values_f32(w_len, 6),
            values_f32(g.out_channels, 7),
        );
        let (xq, wq) = (
            values_i8(x_len, 8),
            values_i8(w_len, 9)
                .iter()
                .map(|&v| v / 4)
                .collect::<Vec<i8>>(),
        );
        let requant = [Requant::from_scale(0.002f64).unwrap()];
        let stage = OutputStage::new(&requant, 0i8);
        let (mut y, mut yq) = (vec![0f32; y_len], vec![0i8; y_len]);
        let mut grp = c.benchmark_group(format!("conv/{name}"));
        grp.throughput(Throughput::Elements(
            (y_len * cin_g * g.kernel_h * g.kernel_w) as u64,
        ));
        grp.bench_function(BenchmarkId::new("f32", "direct"), |bn| {
            bn.iter(|| {
                conv::conv2d_f32(&g, black_box(&x), &w, Some(&bias), Activation::Relu, &mut y)
            })
        });
        grp.bench_function(BenchmarkId::new("f32", path), |bn| {
            bn.iter(|| {
                kernels::conv2d_f32(&g, black_box(&x), &w, Some(&bias), Activation::Relu, &mut y)
            })
        });
        grp.bench_function(BenchmarkId::new("int8", "direct"), |bn| {
            bn.iter(|| {
                conv_i8::conv2d_i8_requant(&g, black_box(&xq), -3, &wq, &[0], &stage, &mut yq)
            })
        });
        grp.bench_function(BenchmarkId::new("int8", path), |bn| {
            bn.iter(|| {
                kernels::conv2d_i8_requant(&g, black_box(&xq), -3, &wq, &[0], &stage, &mut yq)
            })
        });
        grp.finish();
    }
}

criterion_group!(benches, inner_loops, convolutions);
criterion_main!(benches);
