//! A C API over `tinykd-runtime`, built as a `no_std` static library with no
//! heap: the caller owns every buffer (model bytes, arena, input, output).
//!
//! ```c
//! size_t in_len, out_len, arena_len;
//! tinykd_io_lens(model, model_len, &in_len, &out_len);
//! tinykd_arena_size(model, model_len, &arena_len);
//! uint8_t *arena = malloc(arena_len);
//! tinykd_run(model, model_len, arena, arena_len, input, in_len, output, out_len);
//! ```
//!
//! Every function returns [`TINYKD_OK`] (0) or a negative `TINYKD_ERR_*`
//! code ([`tinykd_strerror`] describes it). The model is one ONNX file whose
//! graph has one float32 input and one float32 output (tinykd's QDQ models
//! included), held in memory at a 16-byte-aligned address.
//!
//! The functions are stateless: each parses (validates and plans) the model
//! again, with the parsed model (~71 KB) on the caller's stack, so a call
//! needs about 150 KB of stack. Nothing is global, so calls from several
//! threads at once are fine as long as each has its own arena and output.
#![cfg_attr(not(test), no_std)]
#![deny(unsafe_op_in_unsafe_fn, clippy::undocumented_unsafe_blocks)]
// The runtime's `Error` is ~170 bytes; it never crosses the C boundary.
#![allow(clippy::result_large_err)]

use core::ffi::c_char;
use tinykd_runtime::{Bindings, DType, Error, Model, Session};

/// Success.
pub const TINYKD_OK: i32 = 0;
/// A pointer argument was NULL.
pub const TINYKD_ERR_NULL: i32 = -1;
/// The model bytes are not 16-byte aligned, or the input or output is not
/// aligned for `float`.
pub const TINYKD_ERR_ALIGN: i32 = -2;
/// The model is not a valid ONNX model (malformed or inconsistent).
pub const TINYKD_ERR_MODEL: i32 = -3;
/// The model is valid ONNX but uses an op, type or size the runtime does not
/// support.
pub const TINYKD_ERR_UNSUPPORTED: i32 = -4;
/// The model does not have exactly one float32 input and one float32 output.
pub const TINYKD_ERR_SIGNATURE: i32 = -5;
/// The arena is smaller than `tinykd_arena_size` says.
pub const TINYKD_ERR_ARENA_TOO_SMALL: i32 = -6;
/// `input_len` is not the model's input element count.
pub const TINYKD_ERR_INPUT_LEN: i32 = -7;
/// `output_len` is not the model's output element count.
pub const TINYKD_ERR_OUTPUT_LEN: i32 = -8;

/// The alignment the model bytes need: the runtime reads float32 weights in
/// place from them (tinykd's exporter aligns each tensor to 16 in the file).
pub const TINYKD_MODEL_ALIGN: usize = 16;

/// A panic is a bug in the runtime: end the process with the C library's
/// `abort` (SIGABRT), as a failed `assert` would.
#[cfg(not(test))]
#[panic_handler]
fn panic(_: &core::panic::PanicInfo) -> ! {
    // Declared here, not at the top level, so that cbindgen leaves it out
    // of the header.
    extern "C" {
        fn abort() -> !;
    }
    // SAFETY: `abort` takes no arguments and never returns; every C library
    // (bionic, glibc, musl) has it.
    unsafe { abort() }
}

/// The code for a runtime error.
fn code(e: &Error) -> i32 {
    match e {
        Error::ArenaTooSmall { .. } => TINYKD_ERR_ARENA_TOO_SMALL,
        Error::BufferLength { what: "input", .. } => TINYKD_ERR_INPUT_LEN,
        Error::BufferLength { .. } => TINYKD_ERR_OUTPUT_LEN,
        Error::Arity { .. } | Error::BufferType { .. } => TINYKD_ERR_SIGNATURE,
        e if e.is_unsupported() => TINYKD_ERR_UNSUPPORTED,
        _ => TINYKD_ERR_MODEL,
    }
}

/// The model bytes as a slice, checked for NULL and alignment.
///
/// # Safety
/// As for the public functions: `model` points to `model_len` readable
/// bytes that nothing writes while the returned slice lives.
unsafe fn model_bytes<'a>(model: *const u8, model_len: usize) -> Result<&'a [u8], i32> {
    if model.is_null() {
        return Err(TINYKD_ERR_NULL);
    }
    if !model.addr().is_multiple_of(TINYKD_MODEL_ALIGN) {
        return Err(TINYKD_ERR_ALIGN);
    }
    // SAFETY: non-NULL (checked), and readable and unwritten for
    // `model_len` bytes per this function's contract.
    Ok(unsafe { core::slice::from_raw_parts(model, model_len) })
}

/// Parses `bytes` into `model` in place and returns the element counts of
/// its one float32 input and one float32 output.
fn load<'a>(model: &mut Model<'a>, bytes: &'a [u8]) -> Result<(usize, usize), i32> {
    model
        .load(bytes, &Bindings::default())
        .map_err(|e| code(&e))?;
    let (mut inputs, mut outputs) = (model.inputs(), model.outputs());
    match (inputs.next(), outputs.next(), inputs.next(), outputs.next()) {
        (Some(i), Some(o), None, None) if i.dtype == DType::F32 && o.dtype == DType::F32 => {
            Ok((i.len(), o.len()))
        }
        _ => Err(TINYKD_ERR_SIGNATURE),
    }
}

/// Turns a result into a return code.
fn status(r: Result<(), i32>) -> i32 {
    r.err().unwrap_or(TINYKD_OK)
}

/// Writes the element counts of the model's input and output to
/// `*input_len` and `*output_len`: the lengths `tinykd_run` takes.
///
/// Returns 0 on success, a negative error code otherwise (the outputs are
/// then left unchanged).
///
/// # Safety
/// `model` must point to `model_len` readable bytes at a 16-byte-aligned
/// address that nothing writes during the call; `input_len` and
/// `output_len` must be valid for writing a `size_t` (or NULL, which is an
/// error).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn tinykd_io_lens(
    model: *const u8,
    model_len: usize,
    input_len: *mut usize,
    output_len: *mut usize,
) -> i32 {
    if input_len.is_null() || output_len.is_null() {
        return TINYKD_ERR_NULL;
    }
    // SAFETY: the caller guarantees the model bytes as documented.
    let bytes = match unsafe { model_bytes(model, model_len) } {
        Ok(bytes) => bytes,
        Err(e) => return e,
    };
    let mut parsed = Model::EMPTY;
    status(load(&mut parsed, bytes).map(|(i, o)| {
        // SAFETY: both pointers are non-NULL (checked above) and writable
        // per the caller's contract.
        unsafe {
            input_len.write(i);
            output_len.write(o);
        }
    }))
}

/// Writes to `*arena_bytes` the size of the arena `tinykd_run` needs for
/// this model. The size includes 15 spare bytes, so any buffer of that size
/// works, whatever its alignment.
///
/// Returns 0 on success, a negative error code otherwise (`*arena_bytes` is
/// then left unchanged).
///
/// # Safety
/// `model` must point to `model_len` readable bytes at a 16-byte-aligned
/// address that nothing writes during the call; `arena_bytes` must be valid
/// for writing a `size_t` (or NULL, which is an error).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn tinykd_arena_size(
    model: *const u8,
    model_len: usize,
    arena_bytes: *mut usize,
) -> i32 {
    if arena_bytes.is_null() {
        return TINYKD_ERR_NULL;
    }
    // SAFETY: the caller guarantees the model bytes as documented.
    let bytes = match unsafe { model_bytes(model, model_len) } {
        Ok(bytes) => bytes,
        Err(e) => return e,
    };
    let mut parsed = Model::EMPTY;
    status(load(&mut parsed, bytes).map(|_| {
        // `Session::new` aligns the arena itself: 15 spare bytes cover any start.
        let size = parsed.arena_size() + TINYKD_MODEL_ALIGN - 1;
        // SAFETY: non-NULL (checked above) and writable per the caller's
        // contract.
        unsafe { arena_bytes.write(size) }
    }))
}

/// Runs one inference: reads `input_len` floats from `input` (the model's
/// input, row-major) and writes `output_len` floats to `output` (its
/// output). `arena` is scratch memory of at least `tinykd_arena_size` bytes;
/// its contents need not be kept between calls.
///
/// Returns 0 on success, a negative error code otherwise (`output` is then
/// unspecified).
///
/// # Safety
/// - `model` must point to `model_len` readable bytes at a 16-byte-aligned
///   address that nothing writes during the call;
/// - `arena` must point to `arena_len` writable bytes;
/// - `input` must point to `input_len` readable floats, `output` to
///   `output_len` writable floats;
/// - `arena` and `output` must not overlap each other, the model or the
///   input; none of the buffers may be written by anyone else during the
///   call. NULL pointers are errors.
#[unsafe(no_mangle)]
#[allow(clippy::too_many_arguments)] // the C signature: pointer and length pairs
pub unsafe extern "C" fn tinykd_run(
    model: *const u8,
    model_len: usize,
    arena: *mut u8,
    arena_len: usize,
    input: *const f32,
    input_len: usize,
    output: *mut f32,
    output_len: usize,
) -> i32 {
    if arena.is_null() || input.is_null() || output.is_null() {
        return TINYKD_ERR_NULL;
    }
    if !input.is_aligned() || !output.is_aligned() {
        return TINYKD_ERR_ALIGN;
    }
    // SAFETY: the caller guarantees the model bytes as documented.
    let bytes = match unsafe { model_bytes(model, model_len) } {
        Ok(bytes) => bytes,
        Err(e) => return e,
    };
    // SAFETY: non-NULL and aligned (checked above); `input_len` readable
    // floats that nobody writes during the call, per the caller's contract;
    // any bit pattern is a valid f32.
    let input = unsafe { core::slice::from_raw_parts(input, input_len) };
    // SAFETY: non-NULL and aligned (checked above); `output_len` writable
    // floats that no other reference reaches during the call (they overlap
    // no other buffer), per the caller's contract.
    let output = unsafe { core::slice::from_raw_parts_mut(output, output_len) };
    // SAFETY: non-NULL (checked above); `arena_len` writable bytes that no
    // other reference reaches during the call, per the caller's contract.
    let arena = unsafe { core::slice::from_raw_parts_mut(arena, arena_len) };
    let mut parsed = Model::EMPTY;
    status(run(&mut parsed, bytes, arena, input, output))
}

/// Parses the model, binds it to the arena and runs it once.
fn run<'a>(
    model: &mut Model<'a>,
    bytes: &'a [u8],
    arena: &mut [u8],
    input: &[f32],
    output: &mut [f32],
) -> Result<(), i32> {
    let (input_len, output_len) = load(model, bytes)?;
    if input.len() != input_len {
        return Err(TINYKD_ERR_INPUT_LEN);
    }
    if output.len() != output_len {
        return Err(TINYKD_ERR_OUTPUT_LEN);
    }
    let mut session = Session::new(model, arena).map_err(|e| code(&e))?;
    session.run(&[input], &mut [output]).map_err(|e| code(&e))
}

/// A short English description of a return code, as a static NUL-terminated
/// string (never NULL; never to be freed).
#[unsafe(no_mangle)]
pub extern "C" fn tinykd_strerror(code: i32) -> *const c_char {
    let text = match code {
        TINYKD_OK => c"success",
        TINYKD_ERR_NULL => c"a pointer argument is NULL",
        TINYKD_ERR_ALIGN => c"model bytes not 16-byte aligned, or input/output not float-aligned",
        TINYKD_ERR_MODEL => c"not a valid ONNX model",
        TINYKD_ERR_UNSUPPORTED => c"the model uses an op, type or size tinykd does not support",
        TINYKD_ERR_SIGNATURE => c"the model does not have one float32 input and one float32 output",
        TINYKD_ERR_ARENA_TOO_SMALL => c"arena smaller than tinykd_arena_size",
        TINYKD_ERR_INPUT_LEN => c"input_len is not the model's input element count",
        TINYKD_ERR_OUTPUT_LEN => c"output_len is not the model's output element count",
        _ => c"unknown tinykd error code",
    };
    text.as_ptr()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    /// A file's bytes at a 16-byte-aligned address: (buffer, start offset).
    fn aligned(path: &Path) -> (Vec<u8>, usize) {
        let bytes = std::fs::read(path).unwrap();
        let mut buf = vec![0u8; bytes.len() + TINYKD_MODEL_ALIGN];
        let start = buf.as_ptr().align_offset(TINYKD_MODEL_ALIGN);
        buf[start..start + bytes.len()].copy_from_slice(&bytes);
        buf.truncate(start + bytes.len());
        (buf, start)
    }

    fn demo(file: &str) -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../models/demo")
            .join(file)
    }

    /// The demo input, from its `.npy` file (format 1.0, '<f4').
    fn sample() -> Vec<f32> {
        let bytes = std::fs::read(demo("sample_0.npy")).unwrap();
        let header = usize::from(u16::from_le_bytes([bytes[8], bytes[9]]));
        bytes[10 + header..]
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect()
    }

    #[test]
    fn runs_the_demo_model() {
        let (buf, start) = aligned(&demo("fashion_mlp.onnx"));
        let model = &buf[start..];
        let (mut n_in, mut n_out, mut arena_len) = (0, 0, 0);
        // SAFETY: valid pointers to live, aligned buffers of the given lengths.
        unsafe {
            assert_eq!(
                tinykd_io_lens(model.as_ptr(), model.len(), &mut n_in, &mut n_out),
                0
            );
            assert_eq!(
                tinykd_arena_size(model.as_ptr(), model.len(), &mut arena_len),
                0
            );
        }
        assert_eq!((n_in, n_out), (784, 10));
        let input = sample();
        let mut output = vec![0f32; n_out];
        // Any buffer of `arena_len` bytes works, whatever its alignment.
        for skip in [0, 1, 15] {
            let mut arena_buf = vec![0u8; arena_len + skip];
            let arena = &mut arena_buf[skip..];
            // SAFETY: as above; the buffers do not overlap.
            let rc = unsafe {
                tinykd_run(
                    model.as_ptr(),
                    model.len(),
                    arena.as_mut_ptr(),
                    arena.len(),
                    input.as_ptr(),
                    input.len(),
                    output.as_mut_ptr(),
                    output.len(),
                )
            };
            assert_eq!(rc, TINYKD_OK, "arena at offset {skip}");
        }
        let best = (0..10).fold(0, |b, i| if output[i] > output[b] { i } else { b });
        assert_eq!(best, 9);
    }

    #[test]
    fn reports_errors() {
        let (buf, start) = aligned(&demo("fashion_mlp.onnx"));
        let model = &buf[start..];
        let mut n = 0;
        let input = sample();
        let mut arena = vec![0u8; 1 << 16];
        let mut output = [0f32; 10];
        // SAFETY: valid pointers to live buffers of the given lengths (the
        // misaligned model view is 1 byte shorter), or NULL.
        unsafe {
            assert_eq!(
                tinykd_arena_size(core::ptr::null(), 0, &mut n),
                TINYKD_ERR_NULL
            );
            assert_eq!(
                tinykd_arena_size(model.as_ptr(), model.len(), core::ptr::null_mut()),
                TINYKD_ERR_NULL
            );
            assert_eq!(
                tinykd_arena_size(model[1..].as_ptr(), model.len() - 1, &mut n),
                TINYKD_ERR_ALIGN
            );
            assert_eq!(
                tinykd_arena_size(model.as_ptr(), 100, &mut n),
                TINYKD_ERR_MODEL
            );
            let run = |arena: &mut [u8], input: &[f32], output: &mut [f32]| {
                tinykd_run(
                    model.as_ptr(),
                    model.len(),
                    arena.as_mut_ptr(),
                    arena.len(),
                    input.as_ptr(),
                    input.len(),
                    output.as_mut_ptr(),
                    output.len(),
                )
            };
            assert_eq!(
                run(&mut arena[..100], &input, &mut output),
                TINYKD_ERR_ARENA_TOO_SMALL
            );
            assert_eq!(
                run(&mut arena, &input[1..], &mut output),
                TINYKD_ERR_INPUT_LEN
            );
            assert_eq!(
                run(&mut arena, &input, &mut output[1..]),
                TINYKD_ERR_OUTPUT_LEN
            );
            assert_eq!(run(&mut arena, &input, &mut output), TINYKD_OK);
        }
        for code in 0..=9 {
            // SAFETY: tinykd_strerror returns a static NUL-terminated string.
            let text = unsafe { core::ffi::CStr::from_ptr(tinykd_strerror(-code)) };
            assert!(!text.to_bytes().is_empty());
        }
    }
}
