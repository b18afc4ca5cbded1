//! What every firmware binary of this crate needs besides its job: ending
//! the run with a status over semihosting, failure and panic reports, a
//! fault handler, and the instruction/cycle counter. `src/main.rs` (the
//! firmware) and `src/bin/kernels.rs` (the kernels' self-test) both include
//! this file.

use core::fmt;
use cortex_m_rt::{exception, ExceptionFrame};
use cortex_m_semihosting::{debug, hprintln};

/// Ends the run with `status` (QEMU's exit code; a debug probe reports it).
pub fn exit(status: debug::ExitStatus) -> ! {
    debug::exit(status);
    // Reached only without a debugger attached: nothing left to do.
    loop {
        cortex_m::asm::wfi();
    }
}

/// Reports `why` and ends the run with a failure status.
pub fn fail(why: fmt::Arguments) -> ! {
    hprintln!("error: {}", why);
    exit(debug::EXIT_FAILURE)
}

/// Reports a runtime error from `what` and ends the run with a failure
/// status. Without the `messages` feature only `what` is printed: the
/// error's message is what links the runtime's `Display` impls.
#[allow(dead_code)] // the kernels self-test runs no model
pub fn fail_with(what: fmt::Arguments, error: tinykd_runtime::Error) -> ! {
    #[cfg(feature = "messages")]
    fail(format_args!("{what}: {error}"));
    #[cfg(not(feature = "messages"))]
    {
        let _ = error;
        fail(format_args!(
            "{what} failed (build with the `messages` feature for why)"
        ))
    }
}

/// A panic is a bug: report it (its message and source location with the
/// `messages` feature) and make QEMU exit non-zero.
#[panic_handler]
fn panic(info: &core::panic::PanicInfo) -> ! {
    #[cfg(feature = "messages")]
    hprintln!("panic: {}", info);
    // Printing `info` is what keeps every panic site's message and location
    // in flash, even with `panic = "abort"`.
    #[cfg(not(feature = "messages"))]
    {
        let _ = info;
        hprintln!("panic (build with the `messages` feature for where)");
    }
    exit(debug::EXIT_FAILURE)
}

/// A fault (bad address, undefined instruction, unaligned `LDM`) would
/// otherwise spin in the default handler until QEMU's timeout.
///
/// # Safety
/// Called only by the hardware, as cortex-m-rt's `HardFault` signature
/// requires; it reads nothing but the stacked frame it is given.
#[exception]
unsafe fn HardFault(frame: &ExceptionFrame) -> ! {
    hprintln!("hard fault at pc {:#010x}", frame.pc());
    exit(debug::EXIT_FAILURE)
}

/// Counts what one piece of code costs: instructions on QEMU, cycles on hardware.
pub mod counter {
    use core::sync::atomic::{compiler_fence, Ordering};

    /// What [`measure`] counts.
    #[cfg(feature = "qemu")]
    pub const UNIT: &str = "instructions";
    /// What [`measure`] counts.
    #[cfg(not(feature = "qemu"))]
    pub const UNIT: &str = "cycles";

    /// QEMU's `-icount shift=N`; must match the runner in .cargo/config.toml.
    #[cfg(feature = "qemu")]
    const ICOUNT_SHIFT: u32 = 5;

    /// CMSDK APB Timer0 on the MPS2 (AN386): CTRL, VALUE, RELOAD registers.
    /// DWT CYCCNT reads 0 under QEMU, but with `-icount` this 25 MHz timer
    /// advances exactly with the instruction count.
    #[cfg(feature = "qemu")]
    mod timer {
        const BASE: usize = 0x4000_0000;
        const CTRL: *mut u32 = BASE as *mut u32;
        const VALUE: *mut u32 = (BASE + 4) as *mut u32;
        const RELOAD: *mut u32 = (BASE + 8) as *mut u32;

        /// Starts the timer counting down from `u32::MAX`.
        pub fn start() {
            // SAFETY: these are the word-aligned registers of the CMSDK
            // timer on the AN386 memory map; no Rust object lives there and
            // nothing else in this firmware uses the timer.
            unsafe {
                RELOAD.write_volatile(u32::MAX);
                VALUE.write_volatile(u32::MAX);
                CTRL.write_volatile(1); // enable, no interrupt, internal clock
            }
        }

        /// The current (down-counting) value.
        pub fn now() -> u32 {
            // SAFETY: as in `start`; reading VALUE has no side effect.
            unsafe { VALUE.read_volatile() }
        }
    }

    /// Starts the counter.
    pub fn init() {
        #[cfg(feature = "qemu")]
        timer::start();
        #[cfg(not(feature = "qemu"))]
        {
            let mut p = cortex_m::Peripherals::take().unwrap();
            p.DCB.enable_trace();
            p.DWT.enable_cycle_counter();
        }
    }

    /// Raw counter ticks `f` takes, the timer's own read overhead included.
    fn ticks<R>(f: impl FnOnce() -> R) -> (R, u32) {
        #[cfg(feature = "qemu")]
        let (now, elapsed) = (timer::now, |a: u32, b: u32| a.wrapping_sub(b));
        #[cfg(not(feature = "qemu"))]
        let (now, elapsed) = (cortex_m::peripheral::DWT::cycle_count, |a: u32, b: u32| {
            b.wrapping_sub(a)
        });
        // The fences keep the compiler from moving `f`'s work across the reads.
        compiler_fence(Ordering::SeqCst);
        let t0 = now();
        compiler_fence(Ordering::SeqCst);
        let r = f();
        compiler_fence(Ordering::SeqCst);
        let t1 = now();
        compiler_fence(Ordering::SeqCst);
        (r, elapsed(t0, t1))
    }

    /// Runs `f` and returns its result and cost in [`UNIT`], less the cost
    /// of reading the counter.
    pub fn measure<R>(f: impl FnOnce() -> R) -> (R, u64) {
        let ((), overhead) = ticks(|| ());
        let (r, t) = ticks(f);
        let t = u64::from(t.saturating_sub(overhead));
        // One timer tick is 40 ns; one instruction is 2^ICOUNT_SHIFT ns.
        #[cfg(feature = "qemu")]
        let t = (t * 40) >> ICOUNT_SHIFT;
        (r, t)
    }
}
