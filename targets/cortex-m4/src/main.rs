//! Cortex-M4F firmware for tinykd: runs the embedded ONNX model once with
//! `tinykd-runtime` and reports over semihosting the outputs, the argmax, the
//! instructions (QEMU) or cycles (hardware) of one inference, and the stack
//! high-water marks of loading and running.
//!
//! Memory: the model file stays in flash (weights are read in place), the
//! parsed `Model` and the arena live in `.bss`, the input is a flash constant.
#![no_std]
#![no_main]
#![deny(unsafe_op_in_unsafe_fn, clippy::undocumented_unsafe_blocks)]

mod support;

// `--no-default-features` drops the op families with the `qemu` counter; a
// firmware without any would reject every model at start-up.
#[cfg(not(any(
    feature = "all-ops",
    feature = "op-gemm",
    feature = "op-conv",
    feature = "op-pool",
    feature = "op-activation",
    feature = "op-sigmoid",
    feature = "op-softmax",
    feature = "op-elementwise",
    feature = "op-reshape",
    feature = "op-layout",
    feature = "op-cast",
    feature = "op-quant",
    feature = "op-qoperator"
)))]
compile_error!(
    "no op family enabled: add `--features all-ops,messages` (or the op-* families the model \
     uses) to `--no-default-features`"
);

use core::mem::size_of;
use cortex_m_rt::entry;
use cortex_m_semihosting::{debug, hprintln};
use support::{counter, exit, fail, fail_with};
use tinykd_runtime::{AlignedArena, Bindings, Model, Session};

/// Arena bytes reserved at link time. Checked against `model.arena_size()`
/// at start-up, so a model that needs more fails loudly. Sized for the shipped
/// students (the f32 DS-CNN needs 125,440, its int8 version 36,064); the demo
/// MLP needs 6192: 560 for activations plus 5632 for `fc1.bias` and
/// `fc2.weight`, whose raw_data sit at unaligned file offsets and so are
/// copied into the arena (a file from tinykd's exporter, which aligns them,
/// needs only the 560). A product build sizes it to its model.
const ARENA_BYTES: usize = 128 * 1024;

/// Largest output tensor the firmware can receive, in f32s.
const OUTPUT_CAPACITY: usize = 16;

/// Gives `include_bytes!` data the alignment the runtime needs to read f32
/// weights in place (the exporter aligns every raw_data to 16 in the file).
#[repr(C, align(16))]
struct Aligned<T: ?Sized>(T);

/// The ONNX file, linked into flash (`.rodata`); never copied to RAM.
static MODEL_ONNX: &Aligned<[u8]> = &Aligned(*include_bytes!(env!("TINYKD_MODEL_PATH")));

/// The input, decoded from the `.npy` file by build.rs: one image, or
/// several back to back (each is run and checked; the first is reported).
static INPUT: &[f32] = &include!(concat!(env!("OUT_DIR"), "/input.rs"));

/// The same model's outputs computed on the host by build.rs with the same
/// runtime: the device must agree, bit for bit on an int8 (QDQ) model and
/// within 1e-5 relative on a float one.
static EXPECTED: &[f32] = &include!(concat!(env!("OUT_DIR"), "/expected.rs"));

/// Loads the model, runs one inference and reports what it cost.
#[entry]
fn main() -> ! {
    counter::init();
    stack::paint();

    let model = load();
    let stack_parse = stack::high_water();

    hprintln!(
        "model: opset {}, {} nodes, {} MACs, {} weight bytes, arena {} of {} bytes",
        model.opset(),
        model.nodes().len(),
        model.macs(),
        model.parameters().1,
        model.arena_size(),
        ARENA_BYTES
    );
    hprintln!("size_of::<Model>() = {} bytes", size_of::<Model>());
    if model.arena_size() > ARENA_BYTES {
        fail(format_args!(
            "the model needs {} arena bytes; raise ARENA_BYTES",
            model.arena_size()
        ));
    }
    if model.inputs().len() != 1 || model.outputs().len() != 1 {
        fail(format_args!(
            "this firmware feeds one input and reads one output"
        ));
    }
    let out_len = model.outputs().next().map_or(0, |v| v.len());
    let in_len = model.inputs().next().map_or(0, |v| v.len());
    if in_len == 0 || !INPUT.len().is_multiple_of(in_len) {
        fail(format_args!(
            "the input holds {} values, not a whole number of {in_len}-value images",
            INPUT.len()
        ));
    }
    if out_len > OUTPUT_CAPACITY {
        fail(format_args!(
            "output has {out_len} elements; raise OUTPUT_CAPACITY"
        ));
    }

    let mut session =
        Session::new(model, arena()).unwrap_or_else(|e| fail_with(format_args!("Session::new"), e));
    let mut output = [0f32; OUTPUT_CAPACITY];
    let output = &mut output[..out_len];

    // Only the inference is counted; the stack is repainted so that its
    // high-water mark is the running one, not the (deeper) parsing one.
    stack::paint();
    let (error, count) = counter::measure(|| {
        session
            .run(&[&INPUT[..in_len]], &mut [&mut output[..]])
            .err()
    });
    let stack_run = stack::high_water();
    if let Some(e) = error {
        fail_with(format_args!("Session::run"), e);
    }

    for (i, y) in output.iter().enumerate() {
        hprintln!("logit[{}] = {}", i, y);
    }
    // First maximum, as numpy's argmax picks it.
    let best = output
        .iter()
        .enumerate()
        .fold(0, |b, (i, y)| if *y > output[b] { i } else { b });
    hprintln!("argmax = {} ({})", best, label(model, best));
    // Every image against the host's outputs (the first one's are in `output`).
    let int8 = model.qdq_fusion().1 > 0;
    let images = INPUT.len() / in_len;
    let (mut identical, mut worst) = (0usize, 0f32);
    let mut other = [0f32; OUTPUT_CAPACITY];
    for (i, (image, expected)) in INPUT
        .chunks(in_len)
        .zip(EXPECTED.chunks(out_len))
        .enumerate()
    {
        let y: &[f32] = if i == 0 {
            output
        } else {
            let y = &mut other[..out_len];
            if let Err(e) = session.run(&[image], &mut [&mut y[..]]) {
                fail_with(format_args!("Session::run, image {i}"), e);
            }
            y
        };
        identical += usize::from(
            y.iter()
                .zip(expected)
                .all(|(a, b)| a.to_bits() == b.to_bits()),
        );
        worst = y
            .iter()
            .zip(expected)
            .map(|(y, e)| (y - e).abs() / e.abs().max(1.0))
            .fold(worst, f32::max);
    }
    if EXPECTED.len() != images * out_len || worst > 1e-5 || (int8 && identical != images) {
        fail(format_args!(
            "outputs differ from the host's: {identical} of {images} images bit-identical, \
             max relative difference {worst}"
        ));
    }
    hprintln!(
        "matches the host run on {} image(s): {} bit-identical, max relative difference {}",
        images,
        identical,
        worst
    );
    hprintln!("{}: {} for one inference", counter::UNIT, count);
    hprintln!(
        "stack high-water: {} bytes loading (parse), {} bytes running",
        stack_parse,
        stack_run
    );

    exit(debug::EXIT_SUCCESS)
}

/// Storage for the parsed model: `Model` holds fixed-capacity tables inline,
/// so it lives in .bss and is filled in place by `Model::load`, never on the
/// stack.
static mut MODEL: Model<'static> = Model::EMPTY;

/// Parses the embedded model into [`MODEL`].
fn load() -> &'static Model<'static> {
    // SAFETY: `load` is called once, from `main`, before anything else can
    // reach MODEL (no interrupt handler touches it), so this is the only
    // reference ever created to it.
    let model = unsafe { &mut *core::ptr::addr_of_mut!(MODEL) };
    if let Err(e) = model.load(&MODEL_ONNX.0, &Bindings::default()) {
        fail_with(format_args!("Model::load"), e);
    }
    model
}

/// The arena, in .bss. A static rather than `cortex_m::singleton!`, whose
/// initialiser would build the whole value in `main`'s stack frame first.
static mut ARENA: AlignedArena<ARENA_BYTES> = AlignedArena::new();

/// The arena's bytes.
fn arena() -> &'static mut [u8] {
    // SAFETY: `arena` is called once, from `main`, and no interrupt handler
    // touches ARENA, so this is the only reference ever created to it.
    unsafe { &mut (*core::ptr::addr_of_mut!(ARENA)).0 }
}

/// Class `i`'s name from the model's `labels` metadata, or "" without one.
fn label<'a>(model: &Model<'a>, i: usize) -> &'a str {
    let labels = model
        .metadata()
        .iter()
        .find(|(k, _)| *k == "labels")
        .map_or("", |(_, v)| *v);
    labels.split(',').nth(i).unwrap_or("")
}

/// Stack high-water mark by painting: fill the unused stack with a pattern,
/// later find the deepest word that no longer holds it.
mod stack {
    use core::arch::asm;
    use core::ptr::addr_of;

    /// An unlikely value for live stack data.
    const PAINT: u32 = 0xC5AC_CE55;

    extern "C" {
        /// Lowest stack address (end of .bss/.uninit), from cortex-m-rt's link.x.
        static _stack_end: u32;
        /// Initial stack pointer (top of RAM), from cortex-m-rt's link.x.
        static _stack_start: u32;
    }

    /// Lowest stack address.
    fn bottom() -> usize {
        addr_of!(_stack_end) as usize
    }

    /// Initial SP: link.x rounds `_stack_start` down to 8 for the vector table.
    fn top() -> usize {
        addr_of!(_stack_start) as usize & !7
    }

    /// Paints every word from the stack's bottom up to the current SP.
    pub fn paint() {
        // In assembly so that no Rust frame can live in the painted range
        // while it is written.
        // SAFETY: [bottom, sp) is stack memory reserved by link.x that holds
        // no live data (the ARM EABI has no red zone and this firmware takes
        // no interrupts); `bottom` is word-aligned (link.x asserts it).
        unsafe {
            asm!(
                "mov {sp}, sp",
                "2:",
                "cmp {p}, {sp}",
                "bhs 3f",
                "str {paint}, [{p}], #4",
                "b 2b",
                "3:",
                p = inout(reg) bottom() => _,
                sp = out(reg) _,
                paint = in(reg) PAINT,
                options(nostack),
            );
        }
    }

    /// The deepest the stack has been since the last [`paint`], in bytes
    /// from the top.
    pub fn high_water() -> usize {
        let mut p = bottom();
        // SAFETY: p stays word-aligned inside the stack region [bottom, top),
        // which is RAM; the words are only read.
        while p < top() && unsafe { (p as *const u32).read_volatile() } == PAINT {
            p += 4;
        }
        top() - p
    }
}
