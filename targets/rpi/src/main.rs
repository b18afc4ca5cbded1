//! tinykd on Linux boards (Raspberry Pi, RISC-V boards): loads an ONNX model,
//! runs it with `tinykd-runtime` on an f32 `.npy` input and prints the
//! outputs, their argmax and the SIMD path the kernels took.
//!
//! ```text
//! tinykd-rpi MODEL.onnx INPUT.npy [--repeat N] [--out OUT.npy]
//! ```
//!
//! The same source builds `tinykd-rpi` (aarch64, armv7) and `tinykd-riscv64`
//! (`targets/riscv64/Cargo.toml` points its binary at this file); they differ
//! only in the runtime features their manifests turn on.
//!
//! The model's tensors are f32 on both sides, quantized (QDQ) models
//! included: tinykd's exporter keeps their graph inputs and outputs f32.
#![forbid(unsafe_code)]

mod npy;

use std::ffi::OsString;
use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;
use tinykd_runtime::{Bindings, DType, Model, Session};

/// The alignment the runtime needs to read f32 weights in place in the
/// model's bytes (tinykd's exporter aligns every raw_data to it in the file).
const MODEL_ALIGN: usize = 16;

/// This binary's command line.
fn usage() -> String {
    format!(
        "usage: {} MODEL.onnx INPUT.npy [--repeat N] [--out OUT.npy]\n\
         \n  \
         INPUT.npy      little-endian f32, C-order array holding the model's input, or\n                 several inputs back to back (each run alone; the first is printed)\n  \
         --repeat N     run N inferences and report the mean time of one (default 1)\n  \
         --out OUT.npy  also write the outputs to OUT.npy (f32, the output's shape;\n                 [images, ...] for several inputs)",
        env!("CARGO_BIN_NAME")
    )
}

/// What the command line asks for.
#[derive(Debug, PartialEq)]
struct Args {
    model: PathBuf,
    input: PathBuf,
    repeat: u32,
    out: Option<PathBuf>,
}

/// Parses the arguments after the program name; `Ok(None)` for `--help`.
fn parse_args(mut args: impl Iterator<Item = OsString>) -> Result<Option<Args>, String> {
    let mut positional = Vec::new();
    let mut repeat = 1;
    let mut out = None;
    while let Some(arg) = args.next() {
        match arg.to_str() {
            Some("-h" | "--help") => return Ok(None),
            Some("--repeat") => {
                let n = args.next().ok_or("--repeat needs a count")?;
                repeat = n
                    .to_str()
                    .and_then(|n| n.parse().ok())
                    .filter(|&n| n > 0)
                    .ok_or_else(|| {
                        format!("--repeat {}: not a positive count", n.to_string_lossy())
                    })?;
            }
            Some("--out") => out = Some(PathBuf::from(args.next().ok_or("--out needs a file")?)),
            Some(s) if s.starts_with('-') && s.len() > 1 => {
                return Err(format!("unknown option {s}"));
            }
            _ => positional.push(PathBuf::from(arg)),
        }
    }
    let [model, input]: [PathBuf; 2] = positional.try_into().map_err(|p: Vec<PathBuf>| {
        format!(
            "expected two files, MODEL.onnx and INPUT.npy; got {}",
            p.len()
        )
    })?;
    Ok(Some(Args {
        model,
        input,
        repeat,
        out,
    }))
}

fn main() -> ExitCode {
    let args = match parse_args(std::env::args_os().skip(1)) {
        Ok(Some(args)) => args,
        Ok(None) => {
            println!("{}", usage());
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("error: {e}\n{}", usage());
            return ExitCode::from(2);
        }
    };
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Loads, runs and reports; every error names the file it concerns.
fn run(args: &Args) -> Result<(), String> {
    let model_path = args.model.display();
    let file = AlignedFile::read(&args.model).map_err(|e| format!("{model_path}: {e}"))?;
    // `Model` holds its tables inline (tens of KB): build it on the heap, in place.
    let mut model = Box::new(Model::EMPTY);
    model
        .load(file.bytes(), &Bindings::default())
        .map_err(|e| format!("{model_path}: {e}"))?;
    let (input_value, output_value) = match (model.inputs().next(), model.outputs().next()) {
        (Some(i), Some(o)) if model.inputs().len() == 1 && model.outputs().len() == 1 => (i, o),
        _ => {
            return Err(format!(
                "{model_path}: has {} inputs and {} outputs; this app feeds one input and reads one output",
                model.inputs().len(),
                model.outputs().len()
            ))
        }
    };
    for (what, v) in [("input", input_value), ("output", output_value)] {
        if v.dtype != DType::F32 {
            return Err(format!(
                "{model_path}: {what} '{}' is {}; this app feeds and reads f32 tensors",
                v.name, v.dtype
            ));
        }
    }

    let input_path = args.input.display();
    let bytes = fs::read(&args.input).map_err(|e| format!("{input_path}: {e}"))?;
    let (input, input_shape) = npy::read_f32(&bytes).map_err(|e| format!("{input_path}: {e}"))?;
    // Several images back to back run one at a time (batch 1, what devices run).
    let in_len = input_value.len();
    if in_len == 0 || input.len() % in_len != 0 {
        return Err(format!(
            "{input_path}: holds {} f32s (shape {:?}), not a whole number of the model's input '{}' of {} (shape {:?})",
            input.len(),
            input_shape,
            input_value.name,
            input_value.len(),
            input_value.shape.iter().collect::<Vec<_>>()
        ));
    }

    println!(
        "model: opset {}, {} nodes, {} MACs, {} weight bytes, arena {} bytes",
        model.opset(),
        model.nodes().len(),
        model.macs(),
        model.parameters().1,
        model.arena_size()
    );
    // `Session::new` aligns into the buffer itself: 15 spare bytes cover any start.
    let mut arena = vec![0u8; model.arena_size() + MODEL_ALIGN - 1];
    let mut session = Session::new(&model, &mut arena).map_err(|e| format!("{model_path}: {e}"))?;
    let images = input.len() / in_len;
    let mut outputs = vec![0f32; images * output_value.len()];
    let start = Instant::now();
    for _ in 0..args.repeat {
        for (x, y) in input
            .chunks(in_len)
            .zip(outputs.chunks_mut(output_value.len()))
        {
            session
                .run(&[x], &mut [y])
                .map_err(|e| format!("{model_path}: {e}"))?;
        }
    }
    let per_run = start.elapsed() / (args.repeat * images as u32);
    // The first image's outputs are printed; --out has them all.
    let output = &outputs[..output_value.len()];

    for (i, y) in output.iter().enumerate() {
        println!("logit[{i}] = {y}");
    }
    // First maximum, as numpy's argmax picks it.
    let best = output
        .iter()
        .enumerate()
        .fold(0, |b, (i, y)| if *y > output[b] { i } else { b });
    match label(&model, best) {
        "" => println!("argmax = {best}"),
        name => println!("argmax = {best} ({name})"),
    }
    println!("simd: {}", tinykd_runtime::kernels::simd_path());
    println!(
        "time: {:.3} ms per inference (mean of {} run{})",
        per_run.as_secs_f64() * 1e3,
        args.repeat * images as u32,
        if args.repeat * images as u32 == 1 {
            ""
        } else {
            "s"
        }
    );

    if let Some(out) = &args.out {
        let mut shape: Vec<usize> = output_value.shape.iter().collect();
        if images > 1 {
            shape.insert(0, images);
        }
        write_atomically(out, &npy::write_f32(&outputs, &shape))
            .map_err(|e| format!("{}: {e}", out.display()))?;
    }
    Ok(())
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

/// A file's bytes starting at a [`MODEL_ALIGN`]-aligned address, so that
/// the runtime reads the weights in place instead of copying them into the
/// arena. Safe code: the buffer has `MODEL_ALIGN - 1` spare bytes and the
/// file is read at the first aligned offset in it.
struct AlignedFile {
    buf: Vec<u8>,
    start: usize,
}

impl AlignedFile {
    fn read(path: &Path) -> std::io::Result<Self> {
        let mut file = fs::File::open(path)?;
        let len = usize::try_from(file.metadata()?.len())
            .map_err(|_| std::io::Error::other("file too large"))?;
        let mut buf = vec![0u8; len + MODEL_ALIGN - 1];
        let start = buf.as_ptr().align_offset(MODEL_ALIGN);
        if start >= MODEL_ALIGN {
            return Err(std::io::Error::other("cannot align the buffer"));
        }
        file.read_exact(&mut buf[start..start + len])?;
        buf.truncate(start + len);
        Ok(AlignedFile { buf, start })
    }

    fn bytes(&self) -> &[u8] {
        &self.buf[self.start..]
    }
}

/// Writes `bytes` to `path` through a temporary file in the same folder and
/// a rename, so a reader never sees a partly written file.
fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let name = path
        .file_name()
        .ok_or_else(|| std::io::Error::other("not a file name"))?;
    let mut tmp_name = OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(format!(".{}.tmp", std::process::id()));
    let tmp = path.with_file_name(tmp_name);
    let result = fs::File::create(&tmp)
        .and_then(|mut f| {
            f.write_all(bytes)?;
            f.sync_all()
        })
        .and_then(|()| fs::rename(&tmp, path));
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Option<Args>, String> {
        parse_args(args.iter().map(OsString::from))
    }

    #[test]
    fn parses_the_command_line() {
        let args = parse(&["m.onnx", "--repeat", "5", "x.npy", "--out", "y.npy"])
            .unwrap()
            .unwrap();
        assert_eq!(
            args,
            Args {
                model: "m.onnx".into(),
                input: "x.npy".into(),
                repeat: 5,
                out: Some("y.npy".into()),
            }
        );
        assert_eq!(parse(&["--help"]).unwrap(), None);
        assert!(parse(&["m.onnx"]).is_err());
        assert!(parse(&["m.onnx", "x.npy", "--repeat", "0"]).is_err());
        assert!(parse(&["m.onnx", "x.npy", "--bogus"]).is_err());
    }

    #[test]
    fn demo_model_runs_and_writes_its_output() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/demo");
        let out = std::env::temp_dir().join(format!("tinykd-rpi-test-{}.npy", std::process::id()));
        let args = Args {
            model: dir.join("fashion_mlp.onnx"),
            input: dir.join("sample_0.npy"),
            repeat: 2,
            out: Some(out.clone()),
        };
        run(&args).unwrap();
        let (logits, shape) = npy::read_f32(&fs::read(&out).unwrap()).unwrap();
        fs::remove_file(&out).unwrap();
        assert_eq!(shape.iter().product::<usize>(), 10);
        let best = (0..10).fold(0, |b, i| if logits[i] > logits[b] { i } else { b });
        assert_eq!(best, 9);
    }
}
