//! Build script: puts `memory.x` on the linker's search path and turns the
//! demo input (a `.npy` file) into a Rust array, so the firmware embeds plain
//! f32 constants and needs neither a `.npy` parser nor an unsafe cast.
//!
//! The model and the input can be swapped without editing the firmware:
//! `TINYKD_MODEL=path/to/model.onnx TINYKD_INPUT=path/to/x.npy cargo build`
//! (relative paths are taken from this crate's folder).

use std::env;
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};

/// The demo model and one of its test inputs, relative to this crate.
const DEFAULT_MODEL: &str = "../../models/demo/fashion_mlp.onnx";
const DEFAULT_INPUT: &str = "../../models/demo/sample_0.npy";

fn main() {
    let crate_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR").unwrap());
    let out = PathBuf::from(env::var("OUT_DIR").unwrap());

    // cortex-m-rt's link.x includes memory.x; it must be found on the search path.
    fs::copy(crate_dir.join("memory.x"), out.join("memory.x")).expect("copy memory.x");
    println!("cargo:rustc-link-search={}", out.display());
    println!("cargo:rerun-if-changed=memory.x");

    let model = input_path(&crate_dir, "TINYKD_MODEL", DEFAULT_MODEL);
    println!("cargo:rustc-env=TINYKD_MODEL_PATH={}", model.display());
    println!("cargo:rerun-if-changed={}", model.display());

    let input = input_path(&crate_dir, "TINYKD_INPUT", DEFAULT_INPUT);
    println!("cargo:rerun-if-changed={}", input.display());
    let bytes = fs::read(&input).unwrap_or_else(|e| panic!("reading {}: {e}", input.display()));
    let values = npy_f32(&bytes).unwrap_or_else(|e| panic!("{}: {e}", input.display()));
    fs::write(out.join("input.rs"), rust_array(&values)).expect("write input.rs");

    let expected = run_on_host(&model, &values);
    fs::write(out.join("expected.rs"), rust_array(&expected)).expect("write expected.rs");
}

/// The model's outputs on the host, computed by the same runtime the
/// firmware links (its scalar kernels: build scripts get no SIMD features),
/// one image at a time: the input may hold several images back to back.
fn run_on_host(model_path: &Path, input: &[f32]) -> Vec<f32> {
    let bytes =
        fs::read(model_path).unwrap_or_else(|e| panic!("reading {}: {e}", model_path.display()));
    let model = tinykd_runtime::Model::parse(&bytes)
        .unwrap_or_else(|e| panic!("{}: {e}", model_path.display()));
    let mut arena = vec![0u8; model.arena_size() + 16];
    let mut session = tinykd_runtime::Session::new(&model, &mut arena).expect("host session");
    let in_len = model.inputs().next().map_or(0, |v| v.len());
    let out_len = model.outputs().next().map_or(0, |v| v.len());
    assert!(
        in_len > 0 && input.len().is_multiple_of(in_len),
        "the input holds {} values, not a whole number of the model's {in_len}-value images",
        input.len()
    );
    let mut outputs = Vec::with_capacity(input.len() / in_len * out_len);
    for image in input.chunks(in_len) {
        let mut output = vec![0f32; out_len];
        session
            .run(&[image], &mut [&mut output[..]])
            .expect("host run");
        outputs.extend(output);
    }
    outputs
}

/// The file named by environment variable `var`, or `default`, made absolute.
fn input_path(crate_dir: &Path, var: &str, default: &str) -> PathBuf {
    println!("cargo:rerun-if-env-changed={var}");
    let path = env::var_os(var).map_or_else(|| PathBuf::from(default), PathBuf::from);
    let path = crate_dir.join(path);
    path.canonicalize()
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The elements of a little-endian f32, C-order `.npy` array (format 1.0–3.0).
fn npy_f32(bytes: &[u8]) -> Result<Vec<f32>, String> {
    let rest = bytes
        .strip_prefix(b"\x93NUMPY")
        .ok_or("not a .npy file (bad magic)")?;
    let (header_len, header_start) = match rest.first() {
        Some(1) if rest.len() >= 4 => (usize::from(u16::from_le_bytes([rest[2], rest[3]])), 10),
        Some(2 | 3) if rest.len() >= 6 => (
            u32::from_le_bytes([rest[2], rest[3], rest[4], rest[5]]) as usize,
            12,
        ),
        _ => return Err("unsupported .npy format version".into()),
    };
    let data_start = header_start + header_len;
    let header = bytes
        .get(header_start..data_start)
        .ok_or("truncated .npy header")?;
    let header = std::str::from_utf8(header).map_err(|_| "non-UTF-8 .npy header")?;
    let compact: String = header.chars().filter(|c| !c.is_whitespace()).collect();
    if !compact.contains("'descr':'<f4'") {
        return Err(format!(
            "expected dtype '<f4' (little-endian f32), header is {header}"
        ));
    }
    if !compact.contains("'fortran_order':False") {
        return Err("expected a C-order array".into());
    }
    let shape = compact
        .split("'shape':(")
        .nth(1)
        .and_then(|s| s.split(')').next())
        .ok_or("no shape in the .npy header")?;
    let count = shape
        .split(',')
        .filter(|d| !d.is_empty())
        .try_fold(1usize, |n, d| {
            d.parse::<usize>().ok().and_then(|d| n.checked_mul(d))
        })
        .ok_or("bad shape in the .npy header")?;
    let data = &bytes[data_start..];
    if data.len() != count * 4 {
        return Err(format!(
            "shape ({shape}) holds {count} f32s but the file has {} data bytes",
            data.len()
        ));
    }
    Ok(data
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect())
}

/// A Rust expression `[f32; N]` holding `values` bit for bit.
fn rust_array(values: &[f32]) -> String {
    let mut s = String::from("[\n");
    for row in values.chunks(8) {
        s.push_str("   ");
        for v in row {
            write!(s, " f32::from_bits(0x{:08x}),", v.to_bits()).unwrap();
        }
        s.push('\n');
    }
    s.push(']');
    s
}
