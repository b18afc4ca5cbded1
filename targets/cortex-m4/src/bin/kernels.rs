//! Self-test firmware for the runtime's Cortex-M DSP inner loops
//! (`tinykd_runtime::kernels::dsp`, the `arm-dsp` feature).
//!
//! The runtime's own tests run with `std`, which thumbv7em lacks, so this
//! binary is their harness on the real instruction set: it compares every
//! `dsp` loop against the scalar reference (`kernels::generic::inner`) on
//! deterministic data — lengths 0..=40 and 1000, every pair of start offsets
//! 0..=3 (both the word-aligned `LDM` loop and the unaligned `LDR` loop), all
//! −128 inputs, extreme `alpha`/`bias` — and then counts the instructions
//! per MAC of `dot_i8` over 1024 elements, scalar against DSP, with the same
//! counter as the demo firmware (`src/main.rs`).
//!
//! ```sh
//! timeout 300 cargo run --release --bin kernels
//! ```
//!
//! Exit status 0 when everything matches; otherwise the first mismatch is
//! printed and the status is 1.
#![no_std]
#![no_main]
#![deny(unsafe_op_in_unsafe_fn, clippy::undocumented_unsafe_blocks)]

#[path = "../support.rs"]
mod support;

use core::hint::black_box;
use cortex_m_rt::entry;
use cortex_m_semihosting::{debug, hprintln};
use support::{counter, exit, fail};
use tinykd_runtime::kernels::{dsp, generic::inner};

/// Longest slice compared or measured.
const MAX_LEN: usize = 1024;

/// Largest start offset into a buffer (covers every misalignment of a word).
const MAX_OFFSET: usize = 3;

/// Slice lengths compared: every tail of the unrolled loops, and a long one.
fn lengths() -> impl Iterator<Item = usize> {
    (0..=40).chain([1000])
}

/// (alpha, bias) pairs for `axpy_i8`: small, int8-ish, and every extreme
/// whose products and sums wrap.
const AXPY_PARAMS: [(i32, i32); 6] = [
    (3, -7),
    (-127, 16_256),
    (i32::MAX, i32::MIN),
    (i32::MIN, i32::MAX),
    (-1, 0),
    (0x0001_0001, -0x7fff_0000),
];

/// A byte buffer whose element 0 is word-aligned, so offset k is k mod 4.
#[repr(C, align(4))]
struct Bytes([i8; MAX_LEN + MAX_OFFSET]);

/// An f32 buffer with room for the offsets.
struct Floats([f32; MAX_LEN + MAX_OFFSET]);

/// Deterministic pseudo-random values (xorshift64), as the runtime's tests use.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Rng(seed | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// Any int8, the full range.
    fn i8(&mut self) -> i8 {
        (self.next() >> 56) as u8 as i8
    }

    /// Any int32, the full range.
    fn i32(&mut self) -> i32 {
        (self.next() >> 32) as u32 as i32
    }

    /// An f32 in [-1, 1).
    fn f32(&mut self) -> f32 {
        ((self.next() >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }
}

/// Compares the DSP loops with the scalar reference, then measures them.
#[entry]
fn main() -> ! {
    counter::init();

    let mut a = Bytes([0; MAX_LEN + MAX_OFFSET]);
    let mut b = Bytes([0; MAX_LEN + MAX_OFFSET]);
    let mut y = [0i32; MAX_LEN];
    let mut y_ref = [0i32; MAX_LEN];
    let mut fx = Floats([0.0; MAX_LEN + MAX_OFFSET]);
    let mut fy = Floats([0.0; MAX_LEN + MAX_OFFSET]);
    let mut cases = 0u32;

    for n in lengths() {
        for oa in 0..=MAX_OFFSET {
            for ob in 0..=MAX_OFFSET {
                let mut rng = Rng::new(0x9e37 + (n * 16 + oa * 4 + ob) as u64);
                a.0.iter_mut().for_each(|v| *v = rng.i8());
                b.0.iter_mut().for_each(|v| *v = rng.i8());
                let (x, w) = (&a.0[oa..oa + n], &b.0[ob..ob + n]);

                check_dot(x, w, n, oa, ob, "random");
                cases += 1;

                for start in &mut y[..n] {
                    *start = rng.i32();
                }
                for (alpha, bias) in AXPY_PARAMS {
                    y_ref[..n].copy_from_slice(&y[..n]);
                    let mut got = y;
                    dsp::axpy_i8(&mut got[..n], alpha, x, bias);
                    inner::axpy_i8(&mut y_ref[..n], alpha, x, bias);
                    check_axpy(&got[..n], &y_ref[..n], n, oa, alpha, bias);
                    cases += 1;
                }
                // x longer than y: only y's length may be used.
                if n > 0 {
                    y_ref[..n].copy_from_slice(&y[..n]);
                    let mut got = y;
                    dsp::axpy_i8(&mut got[..n - 1], -3, x, 5);
                    inner::axpy_i8(&mut y_ref[..n - 1], -3, x, 5);
                    check_axpy(&got[..n], &y_ref[..n], n - 1, oa, -3, 5);
                    cases += 1;
                }

                for (fill_a, fill_b, what) in [
                    (i8::MIN, i8::MIN, "all -128"),
                    (i8::MIN, i8::MAX, "-128 by 127"),
                ] {
                    a.0.iter_mut().for_each(|v| *v = fill_a);
                    b.0.iter_mut().for_each(|v| *v = fill_b);
                    check_dot(&a.0[oa..oa + n], &b.0[ob..ob + n], n, oa, ob, what);
                    cases += 1;
                }

                fx.0.iter_mut().for_each(|v| *v = rng.f32());
                fy.0.iter_mut().for_each(|v| *v = rng.f32());
                let (p, q) = (&fx.0[oa..oa + n], &fy.0[ob..ob + n]);
                let (got, want) = (dsp::dot_f32(p, q), inner::dot_f32(p, q));
                let scale = p.iter().zip(q).map(|(s, t)| (s * t).abs()).sum::<f32>();
                if (got - want).abs() > 1e-5 * scale.max(1.0) {
                    fail(format_args!(
                        "dot_f32 n={n} +{oa} +{ob}: dsp {got} vs scalar {want}"
                    ));
                }
                let (mut got, mut want) = (fy.0, fy.0);
                dsp::axpy_f32(&mut got[..n], -0.75, p);
                inner::axpy_f32(&mut want[..n], -0.75, p);
                for (j, (g, w)) in got[..n].iter().zip(&want[..n]).enumerate() {
                    if (g - w).abs() > 1e-5 * w.abs().max(1.0) {
                        fail(format_args!(
                            "axpy_f32 n={n} +{oa} at {j}: dsp {g} vs scalar {w}"
                        ));
                    }
                }
                cases += 2;
            }
        }
    }
    hprintln!(
        "kernels: {} matches the scalar reference ({} cases)",
        dsp::NAME,
        cases
    );

    measure_dot(&mut a, &mut b);
    measure_axpy(&mut a, &mut y);
    exit(debug::EXIT_SUCCESS)
}

/// `dsp::dot_i8` must equal `inner::dot_i8` bit for bit.
fn check_dot(x: &[i8], w: &[i8], n: usize, oa: usize, ob: usize, what: &str) {
    let (got, want) = (dsp::dot_i8(x, w), inner::dot_i8(x, w));
    if got != want {
        fail(format_args!(
            "dot_i8 ({what}) n={n} +{oa} +{ob}: dsp {got:?} vs scalar {want:?}"
        ));
    }
}

/// `dsp::axpy_i8` must leave the same values as `inner::axpy_i8`.
fn check_axpy(got: &[i32], want: &[i32], n: usize, oa: usize, alpha: i32, bias: i32) {
    if let Some(j) = got.iter().zip(want).position(|(g, w)| g != w) {
        fail(format_args!(
            "axpy_i8 n={n} +{oa} alpha={alpha} bias={bias} at {j}: dsp {} vs scalar {}",
            got[j], want[j]
        ));
    }
}

/// Instructions of `dot_i8` over 1024 elements: scalar, DSP on word-aligned
/// slices (the `LDM` loop) and on slices misaligned against each other.
fn measure_dot(a: &mut Bytes, b: &mut Bytes) {
    let mut rng = Rng::new(2024);
    a.0.iter_mut().for_each(|v| *v = rng.i8());
    b.0.iter_mut().for_each(|v| *v = rng.i8());
    let (x, w, w1) = (&a.0[..MAX_LEN], &b.0[..MAX_LEN], &b.0[1..=MAX_LEN]);

    let (r0, scalar) = counter::measure(|| black_box(inner::dot_i8(black_box(x), black_box(w))));
    let (r1, aligned) = counter::measure(|| black_box(dsp::dot_i8(black_box(x), black_box(w))));
    let (r2, unaligned) = counter::measure(|| black_box(dsp::dot_i8(black_box(x), black_box(w1))));
    if r0 != r1 || r2 != inner::dot_i8(x, w1) {
        fail(format_args!(
            "dot_i8 over {MAX_LEN}: the measured runs disagree"
        ));
    }
    let macs = MAX_LEN as f32;
    hprintln!(
        "dot_i8, {} MACs: scalar {} {} ({:.2}/MAC)",
        MAX_LEN,
        scalar,
        counter::UNIT,
        scalar as f32 / macs
    );
    hprintln!(
        "dot_i8, {} MACs: dsp {} {} ({:.2}/MAC) word-aligned, {} ({:.2}/MAC) misaligned",
        MAX_LEN,
        aligned,
        counter::UNIT,
        aligned as f32 / macs,
        unaligned,
        unaligned as f32 / macs
    );
}

/// Instructions of `axpy_i8` over 1024 elements, scalar against DSP.
fn measure_axpy(a: &mut Bytes, y: &mut [i32; MAX_LEN]) {
    let x = &a.0[..MAX_LEN];
    let start = *y;
    let ((), scalar) = counter::measure(|| inner::axpy_i8(black_box(&mut y[..]), -77, x, 1234));
    let want = *y;
    *y = start;
    let ((), simd) = counter::measure(|| dsp::axpy_i8(black_box(&mut y[..]), -77, x, 1234));
    if *y != want {
        fail(format_args!(
            "axpy_i8 over {MAX_LEN}: the measured runs disagree"
        ));
    }
    let elems = MAX_LEN as f32;
    hprintln!(
        "axpy_i8, {} elements: scalar {} {} ({:.2}/element), dsp {} ({:.2}/element)",
        MAX_LEN,
        scalar,
        counter::UNIT,
        scalar as f32 / elems,
        simd,
        simd as f32 / elems
    );
}
