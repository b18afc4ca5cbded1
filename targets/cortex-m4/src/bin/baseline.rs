//! The demo firmware's shell without the runtime: the same start-up,
//! semihosting output (integers, floats, strings), failure and panic
//! reports and counter as `src/main.rs`, on the same embedded input, but no
//! model. `scripts/code_size.py` subtracts its flash code from the
//! firmware's to get what the runtime adds.
//!
//! ```sh
//! timeout 60 cargo run --release --bin baseline
//! ```
#![no_std]
#![no_main]
#![deny(unsafe_op_in_unsafe_fn, clippy::undocumented_unsafe_blocks)]

#[path = "../support.rs"]
mod support;

use core::hint::black_box;
use cortex_m_rt::entry;
use cortex_m_semihosting::{debug, hprintln};
use support::{counter, exit, fail};

/// The firmware's input (from the `.npy` file, decoded by build.rs).
static INPUT: &[f32] = &include!(concat!(env!("OUT_DIR"), "/input.rs"));

/// How many values are printed, as the firmware prints its logits.
const SHOWN: usize = 10;

/// Prints a few input values and what summing them costs.
#[entry]
fn main() -> ! {
    counter::init();
    let (sum, count) = counter::measure(|| black_box(INPUT).iter().sum::<f32>());
    if !sum.is_finite() {
        fail(format_args!(
            "the input's {} values sum to {sum}",
            INPUT.len()
        ));
    }
    for (i, x) in INPUT.iter().take(SHOWN).enumerate() {
        hprintln!("x[{}] = {}", i, x);
    }
    let labels = "first,second";
    hprintln!(
        "{} values, sum {} ({})",
        INPUT.len(),
        sum,
        labels.split(',').nth(usize::from(sum > 0.0)).unwrap_or("")
    );
    hprintln!("{}: {} for the sum", counter::UNIT, count);
    exit(debug::EXIT_SUCCESS)
}
