//! The `tinykd` command line.

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use std::path::{Path, PathBuf};
use tinykd::conformance;
use tinykd::engine::{run_tinykd, run_tract, EngineKind};
use tinykd::inspect::Report;
use tinykd::tensor_file::{write_atomically, HostTensor};
use tinykd::train::model::ModelSpec;

mod commands;
use commands::evaluate::{eval, EvalArgs};
use commands::training::{distill, sweep, train, DistillArgs, SweepArgs, TrainArgs};

#[derive(Parser)]
#[command(
    name = "tinykd",
    version,
    about = "Distill, compress and deploy neural networks to small devices"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Show a model's inputs, outputs, ops, parameters, MACs and arena size.
    #[command(
        after_help = "Examples:\n  tinykd inspect models/demo/fashion_mlp.onnx\n  tinykd inspect model.onnx --json"
    )]
    Inspect {
        /// The ONNX model.
        model: PathBuf,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Run one inference on .npy inputs and write the outputs as .npy.
    #[command(
        after_help = "Examples:\n  tinykd infer models/demo/fashion_mlp.onnx --input models/demo/sample_0.npy --output out.npy\n  tinykd infer model.onnx --input a.npy --input b.npy --output y.npy --engine tract --json\n\nWith several outputs, pass --output once per output, in graph order."
    )]
    Infer {
        /// The ONNX model.
        model: PathBuf,
        /// An input tensor (.npy), once per graph input, in graph order.
        #[arg(long = "input", required = true)]
        inputs: Vec<PathBuf>,
        /// Where to write each output (.npy); omit to only print.
        #[arg(long = "output")]
        outputs: Vec<PathBuf>,
        /// Which engine runs the model.
        #[arg(long, value_enum, default_value = "tinykd")]
        engine: EngineKind,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Train a model from a spec on Fashion-MNIST (cross-entropy), with a
    /// resumable checkpoint every epoch.
    #[command(
        after_help = "Examples:\n  tinykd train --arch cnn --epochs 12 --shift 2 --out build/cnn.safetensors\n  tinykd train --arch models/students/mlp.toml --epochs 30 --out s.safetensors --json\n  tinykd train --arch cnn --epochs 12 --out build/cnn.safetensors --resume   # after a kill\n\nThe checkpoint is written after every epoch to OUT.ckpt (weights, optimizer state, history);\n--resume continues it and ends with the same weights as an uninterrupted run.\nThe validation images are carved from the training set; test accuracy is reported at the end."
    )]
    Train(TrainArgs),
    /// Distill one or more ONNX teachers into a student from a spec.
    #[command(
        after_help = "Examples:\n  tinykd distill --teacher models/teachers/cnn.onnx --student models/students/mlp-40.toml --recipe models/recipes/kd.toml --out build/student.onnx\n  tinykd distill --teacher a.onnx --teacher b.onnx --teacher-weights 2,1 --student s.toml --method hinton --temperature 4 --alpha 0.9 --epochs 30 --out s.onnx --json\n  tinykd distill --teacher a.onnx --teacher b.onnx --teacher-weights accuracy --student s.toml --out s.onnx   # weights by validation accuracy\n  tinykd distill ... --resume   # continue a killed run from OUT.ckpt\n  tinykd distill --teacher models/teachers/cnn.onnx --student models/students/ds-cnn.toml --init build/ds.onnx.ckpt --qat --lr 1e-4 --epochs 3 --out build/ds.qat.int8.onnx   # quantization-aware fine-tune to int8\n  tinykd distill --teacher models/teachers/cnn.onnx --student models/students/ds-cnn.toml --recipe models/recipes/fitnets.toml --out build/fitnets.onnx   # hints, then KD\n  tinykd distill --teacher models/teachers/cnn.onnx --via cnn --student models/students/ds-cnn.toml --generations 3 --out build/ban.onnx   # assistant, born-again\n  tinykd distill --student models/students/ds-cnn.toml --peer models/students/ds-cnn.toml --recipe models/recipes/mutual.toml --out build/dml.onnx   # mutual learning\n  tinykd distill --teacher models/teachers/cnn.onnx --student models/students/ds-cnn.toml --specialists 2 --out build/generalist.onnx\n\nFeature pairs ([[features]] in a recipe) name teacher values by their ONNX value names (a name not in\nthe graph is an error that lists them all) and student layers by index (from 0, as in the spec).\nTeacher logits over the training images are computed once and cached in build/teacher-cache/\n(keyed by the teacher's and the data's sha256) unless the recipe sets teacher_view = \"live\"."
    )]
    Distill(DistillArgs),
    /// Search temperature and α on the validation split; write the best recipe.
    #[command(
        after_help = "Examples:\n  tinykd sweep --teacher models/teachers/cnn.onnx --student models/students/mlp-40.toml --epochs 5 --out build/best.toml\n  tinykd sweep --teacher t.onnx --student s.toml --recipe models/recipes/views.toml --temperatures 1,2,4 --alphas 0.5,0.9 --out best.toml --json\n\nEvery trial trains from the same seed on the same cached teacher logits; the test set is not used."
    )]
    Sweep(SweepArgs),
    /// Prune a trained student (magnitude: zero the smallest weights;
    /// channels: remove the weakest channels), then fine-tune it by
    /// distillation from the teacher and export it.
    #[command(
        after_help = "Examples:\n  tinykd prune --teacher models/teachers/cnn.onnx --student-weights build/student.onnx.ckpt --method channels --sparsity 0.5 --recipe models/recipes/kd.toml --epochs 2 --out build/pruned.onnx\n  tinykd prune --teacher t.onnx --student-weights s.safetensors --method magnitude --sparsity 0.8 --epochs 3 --out p.onnx --json\n  tinykd prune ... --resume   # continue a killed fine-tuning from OUT.ckpt (masks included)\n\nmagnitude: per layer, round(sparsity × n) of each Dense/Conv/Depthwise weight (smallest |w|) are zeroed\nand kept zero while fine-tuning; biases stay; the file keeps its size (dense storage).\nchannels: per Conv and hidden Dense, the output channels/units with the smallest L1 norm are removed,\nwith the inputs that read them (Depthwise layers follow their input); the final classifier keeps all\nits classes. The model and its file get smaller.\nPrinted: parameters, non-zero parameters and file bytes before/after, and test accuracy before pruning,\nright after pruning and after fine-tuning."
    )]
    Prune(commands::prune::PruneArgs),
    /// Export trained weights (.safetensors from `tinykd train`) as ONNX.
    #[command(
        after_help = "Examples:\n  tinykd export build/teacher/cnn.safetensors --out models/teachers/cnn.onnx\n\nThe file gets Fashion-MNIST's class labels and input normalisation as metadata;\nevery initializer is 16-byte aligned so the runtime can run it in place."
    )]
    Export {
        /// Weights written by `tinykd train --out X.safetensors`.
        weights: PathBuf,
        /// The ONNX file to write (atomically).
        #[arg(long)]
        out: PathBuf,
    },
    /// Accuracy, per-class accuracy, confusion matrix and latency of an ONNX
    /// classifier on Fashion-MNIST, run by the tinykd runtime (or tract).
    #[command(
        after_help = "Examples:\n  tinykd eval build/student.onnx\n  tinykd eval models/teachers/cnn.onnx --engine tract --json\n  tinykd eval model.onnx --limit 1000 --batch 50"
    )]
    Eval(EvalArgs),
    /// Quantize a float ONNX classifier to int8 (QDQ) with calibration on
    /// Fashion-MNIST, or store its weights as float16 (--weights f16);
    /// prints float vs quantized accuracy and size.
    #[command(
        after_help = "Examples:\n  tinykd quantize build/demo/student.onnx --out build/demo/student.int8.onnx\n  tinykd quantize s.onnx --method percentile:99.99 --calib-size 2000 --out s.int8.onnx --json\n  tinykd quantize s.onnx --method entropy --eval-limit 0 --out s.int8.onnx   # no evaluation\n  tinykd quantize s.onnx --weights f16 --out s.f16.onnx\n\nint8 (default): weights int8 symmetric per output channel; activations int8 asymmetric per tensor,\nranges from the float model run on a seeded sample of the training split (minmax, percentile, mse,\nentropy). The output is standard QDQ ONNX (opset 13+): ONNX Runtime and tract run it; the tinykd\nruntime executes it with integer kernels.\n\nf16: every Conv/Gemm/MatMul weight and bias (and any other float32 initializer of more than 16\nvalues) stored as float16, rounded to nearest even, followed by a Cast to float32: half the file,\ncomputed in float32, no calibration. A weight beyond float16's range (±65504) is an error. The\ntinykd runtime folds the Casts at load and widens the weights into its arena once."
    )]
    Quantize(commands::quantize::QuantizeArgs),
    /// Compare the ways to compress one student on Fashion-MNIST: scratch,
    /// KD, int8 PTQ (each calibration method), QAT, channel and magnitude
    /// pruning, pruning + int8, f16 — accuracy (mean ± std over seeds),
    /// parameters, file and arena bytes, host latency.
    #[command(
        after_help = "Examples:\n  tinykd report --write-doc docs/results.md --plot docs/compression.png\n  tinykd report --student models/students/mlp-40.toml --epochs 30 --seeds 0 --work-dir build/report-mlp --json\n  tinykd report --methods all --epochs 5 --limit 10000 --write-doc docs/results.md --plot docs/methods.png\n  tinykd report --methods hinton,fitnets,mutual --seeds 0\n\nEach step is one run of tinykd's own commands (distill, quantize, prune), kept in --work-dir with\nits JSON output; a report that is interrupted continues where it stopped when run again."
    )]
    Report(commands::report::ReportArgs),
    /// Single-image inference latency of tinykd's runtime side by side with
    /// tract and ONNX Runtime: same input, interleaved timed runs, median,
    /// p10/p90, ratio to the fastest peer, memory, file size.
    #[command(
        after_help = "Examples:\n  tinykd bench models/demo/fashion_mlp.onnx\n  tinykd bench models/students/ds-cnn-kd.onnx models/students/ds-cnn-kd.int8.onnx --engines tinykd,ort --iters 2000 --json\n\nOne thread, batch 1. Ratios measured in one run are what to compare: absolute\nmicroseconds move with the machine's load."
    )]
    Bench {
        /// ONNX models (one f32 input each).
        #[arg(required = true)]
        models: Vec<PathBuf>,
        /// Engines to compare.
        #[arg(
            long,
            value_enum,
            value_delimiter = ',',
            default_value = "tinykd,tract,ort"
        )]
        engines: Vec<tinykd::bench::Engine>,
        /// Timed runs per engine (interleaved).
        #[arg(long, default_value_t = 1000)]
        iters: usize,
        /// Untimed runs per engine first.
        #[arg(long, default_value_t = 50)]
        warmup: usize,
        /// Also write results.json, results.md and results.png here.
        #[arg(long)]
        out_dir: Option<PathBuf>,
        /// Also put a summary table (one row per model) between the
        /// `<!-- bench-summary -->` markers of this Markdown file.
        #[arg(long, value_name = "README.md")]
        summary: Option<PathBuf>,
        /// Print JSON instead of the table.
        #[arg(long)]
        json: bool,
        /// Internal: print the peak resident-set growth of ENGINE on the
        /// one model, measured in this process (`bench` runs it in a child
        /// process per engine and model).
        #[arg(long, hide = true, value_name = "ENGINE")]
        memory_probe: Option<tinykd::bench::Engine>,
    },
    /// List the deployment targets and whether this machine can build and
    /// run each (rustup target, cross linker, QEMU).
    #[command(after_help = "Examples:\n  tinykd targets\n  tinykd targets --json")]
    Targets {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Build a target with a model inside: a firmware ELF (model in flash),
    /// a Linux executable with its model, or the Android static library and
    /// C header; prints flash (code, weights) and RAM (arena, stack).
    #[command(
        after_help = "Examples:\n  tinykd build --target cortex-m4 --model models/students/ds-cnn-kd.int8.onnx --out build/fw\n  tinykd build --target rpi-arm64 --model m.onnx --out build/rpi --json\n\nFirmware stacks are measured by stack painting in one run under QEMU."
    )]
    Build(commands::targets::BuildArgs),
    /// Build a target with a model and run it on an input under QEMU:
    /// prints the outputs, the prediction and the target's counters.
    #[command(
        after_help = "Examples:\n  tinykd run --target cortex-m4 --model models/students/ds-cnn-kd.int8.onnx --input models/demo/sample_0.npy\n  tinykd run --target riscv64 --model m.onnx --input x.npy\n  tinykd run --target cortex-m4 --model m.onnx --input x.npy --probe STM32F407VGTx   # a real board (probe-rs)\n  tinykd run --target rpi-arm64 --model m.onnx --input x.npy --ssh pi@raspberrypi.local"
    )]
    Run(commands::targets::RunArgs),
    /// Run the ONNX node test cases in DIR and report passed/failed/unsupported.
    #[command(
        after_help = "Examples:\n  tinykd conformance build/onnx-node-tests --json\n  tinykd conformance build/onnx-node-tests --ops-doc docs/ops.md\n\nExits non-zero if any supported case fails."
    )]
    Conformance {
        /// A folder of case folders (each with model.onnx and test_data_set_*).
        dir: PathBuf,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
        /// Also write the supported-operator table (Markdown) here.
        #[arg(long)]
        ops_doc: Option<PathBuf>,
        /// List every case with its outcome and reason, not only failures.
        #[arg(long)]
        all: bool,
    },
    /// Measure training speed (images/s, forward/backward/optimizer) on 2 CPU cores.
    #[command(
        name = "bench-train",
        after_help = "Examples:\n  tinykd bench-train\n  tinykd bench-train --models mlp --steps 50 --json\n  tinykd bench-train --models models/teachers/cnn.toml,models/students/ds-cnn.toml --kernels fast --optimizer fused\n  tinykd bench-train --write-doc docs/results.md   # also runs TensorFlow if .venv-peers exists (make bench-peers)"
    )]
    BenchTrain {
        /// Which models (comma-separated): the built-in mlp, cnn, ds, or spec files (.toml).
        #[arg(long, default_value = "mlp,cnn,ds", value_delimiter = ',')]
        models: Vec<String>,
        /// Timed steps per model (after 2 warm-up steps).
        #[arg(long, default_value_t = 20)]
        steps: usize,
        /// Images per step.
        #[arg(long, default_value_t = 128)]
        batch: usize,
        /// Layer kernels to measure (comma-separated): candle's ops, tinykd's fast ops.
        #[arg(long, value_enum, default_value = "candle,fast", value_delimiter = ',')]
        kernels: Vec<tinykd::train::model::Kernels>,
        /// Optimizer implementations to measure (comma-separated).
        #[arg(
            long,
            value_enum,
            default_value = "candle,fused",
            value_delimiter = ','
        )]
        optimizer: Vec<tinykd::train::bench::OptimizerImpl>,
        /// Python of a venv with tensorflow-cpu, to measure the peer in the same run.
        #[arg(long, default_value = ".venv-peers/bin/python")]
        peer_python: PathBuf,
        /// Write the results table into this Markdown file (replacing its table).
        #[arg(long)]
        write_doc: Option<PathBuf>,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}

fn read_model(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("cannot read model {}", path.display()))
}

fn inspect(model_path: &Path, json: bool) -> Result<()> {
    let bytes = read_model(model_path)?;
    let model = tinykd_runtime::Model::parse(&bytes)
        .with_context(|| format!("{}", model_path.display()))?;
    let report = Report::new(&model, bytes.len());
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!("{}", model_path.display());
        print!("{}", report.to_text());
    }
    Ok(())
}

fn infer(
    model_path: &Path,
    inputs: &[PathBuf],
    outputs: &[PathBuf],
    engine: EngineKind,
    json: bool,
) -> Result<()> {
    let tensors = inputs
        .iter()
        .map(|p| HostTensor::read_npy(p))
        .collect::<Result<Vec<_>, _>>()?;
    let bytes = read_model(model_path)?;
    let labels = tinykd::inspect::class_labels(&bytes).unwrap_or_default();
    let started = std::time::Instant::now();
    let results = match engine {
        EngineKind::Tinykd => run_tinykd(model_path, &bytes, &tensors)?,
        EngineKind::Tract => run_tract(model_path, &tensors)?,
        #[cfg(feature = "ort")]
        EngineKind::Ort => tinykd::engine::run_ort(model_path, &tensors)?,
    };
    let elapsed = started.elapsed();
    if !outputs.is_empty() && outputs.len() != results.len() {
        bail!(
            "the model has {} outputs but {} --output paths were given",
            results.len(),
            outputs.len()
        );
    }
    for (t, path) in results.iter().zip(outputs) {
        t.write_npy(path)?;
    }
    if json {
        let out: Vec<_> = results
            .iter()
            .map(|t| {
                let data = t.as_f32().unwrap_or(&[]);
                serde_json::json!({ "name": t.name, "shape": t.shape, "data": data, "argmax": argmax(data) })
            })
            .collect();
        let report = serde_json::json!({ "engine": engine, "seconds": elapsed.as_secs_f64(), "outputs": out });
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    for (i, t) in results.iter().enumerate() {
        let data = t.as_f32().unwrap_or(&[]);
        let shown: Vec<String> = data.iter().take(16).map(|v| format!("{v:.4}")).collect();
        let more = if data.len() > 16 {
            format!(" … ({} values)", data.len())
        } else {
            String::new()
        };
        println!("{} {:?}: [{}]{more}", t.name, t.shape, shown.join(", "));
        if let Some(k) = argmax(data) {
            match labels.get(k).filter(|_| labels.len() == data.len()) {
                Some(label) => println!("  argmax {k} ({label})"),
                None => println!("  argmax {k}"),
            }
        }
        if let Some(path) = outputs.get(i) {
            println!("  written to {}", path.display());
        }
    }
    println!(
        "engine {engine:?}, {:.1} µs including load",
        elapsed.as_secs_f64() * 1e6
    );
    Ok(())
}

fn argmax(data: &[f32]) -> Option<usize> {
    (0..data.len()).max_by(|&a, &b| data[a].total_cmp(&data[b]))
}

fn run_conformance(dir: &Path, json: bool, ops_doc: Option<&Path>, all: bool) -> Result<()> {
    let results = conformance::run_all(dir)?;
    if results.is_empty() {
        bail!(
            "{}: no test cases found (folders with model.onnx)",
            dir.display()
        );
    }
    let summary = conformance::summarize(&results);
    if let Some(path) = ops_doc {
        write_atomically(path, conformance::ops_markdown(&results).as_bytes())?;
    }
    if json {
        let mut value = serde_json::to_value(&summary)?;
        if all {
            value["cases"] = serde_json::to_value(&results)?;
        }
        println!("{}", serde_json::to_string_pretty(&value)?);
    } else {
        let listed = if all {
            results.iter().collect::<Vec<_>>()
        } else {
            summary.failures.iter().collect()
        };
        for r in listed {
            println!("{:?} {}: {}", r.outcome, r.case, r.reason);
        }
        println!(
            "passed {}, failed {}, unsupported {}",
            summary.passed, summary.failed, summary.unsupported
        );
    }
    if summary.failed > 0 {
        bail!("{} conformance case(s) failed", summary.failed);
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn bench_train(
    keys: &[String],
    steps: usize,
    batch: usize,
    kernels: &[tinykd::train::model::Kernels],
    optimizers: &[tinykd::train::bench::OptimizerImpl],
    peer_python: &Path,
    write_doc: Option<&Path>,
    json: bool,
) -> Result<()> {
    use tinykd::train::bench;
    let mut specs = Vec::new();
    for key in keys {
        specs.push(match ModelSpec::builtin(key) {
            Some(spec) => (key.clone(), spec),
            None if key.ends_with(".toml") => {
                let spec = ModelSpec::from_toml_file(Path::new(key))?;
                (spec.name.clone(), spec)
            }
            None => bail!("unknown benchmark model '{key}' (mlp, cnn, ds or a spec .toml)"),
        });
    }
    let mut results = Vec::new();
    for (key, spec) in &specs {
        for &kernel in kernels {
            for &optimizer in optimizers {
                eprintln!("bench-train: {} ({steps} steps of {batch}, kernels {kernel:?}, optimizer {optimizer:?})...", spec.name);
                results.push((
                    key.clone(),
                    bench::bench_model(spec, batch, steps, kernel, optimizer)?,
                ));
            }
        }
    }
    let tf = if peer_python.exists() {
        eprintln!("bench-train: TensorFlow-CPU on the same shapes...");
        bench::tensorflow_peer(
            peer_python,
            Path::new("scripts/bench_train_tf.py"),
            &specs,
            steps,
            batch,
        )
    } else {
        None
    };
    let table = bench::markdown(&results, tf.as_ref());
    if let Some(path) = write_doc {
        let machine = format!(
            "Measured by `tinykd bench-train` on {} logical CPUs, batch and steps as in the table's run; medians.\n\n",
            std::thread::available_parallelism().map_or(0, |n| n.get())
        );
        tinykd::report::replace_section(path, "Training speed", &format!("{machine}{table}"))?;
    }
    if json {
        let runs: Vec<_> = results.iter().map(|(_, r)| r).collect();
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({ "runs": runs, "tensorflow": tf }))?
        );
    } else {
        print!("{table}");
    }
    Ok(())
}

/// `tinykd bench`.
fn bench(
    models: &[PathBuf],
    engines: &[tinykd::bench::Engine],
    iters: usize,
    warmup: usize,
    (out_dir, summary): (Option<&Path>, Option<&Path>),
    json: bool,
) -> Result<()> {
    let cfg = tinykd::bench::BenchConfig {
        warmup,
        iters,
        memory_probe: std::env::current_exe().ok(),
    };
    let mut results = Vec::new();
    for m in models {
        if !json {
            eprintln!("bench: {} ({iters} runs per engine)", m.display());
        }
        results.push(tinykd::bench::bench_model(m, engines, &cfg)?);
    }
    if let Some(dir) = out_dir {
        let machine = format!(
            "{} logical CPUs, runtime kernels {}",
            std::thread::available_parallelism().map_or(0, |n| n.get()),
            tinykd_runtime::kernels::simd_path()
        );
        tinykd::bench::write_results(dir, &results, &machine)
            .map_err(|e| anyhow::anyhow!("writing {}: {e}", dir.display()))?;
    }
    if let Some(doc) = summary {
        tinykd::bench::write_summary(doc, &results).map_err(|e| anyhow::anyhow!(e))?;
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&results)?);
    } else {
        print!("{}", tinykd::bench::markdown_table(&results));
        print!("{}", tinykd::bench::arena_table(&results));
    }
    Ok(())
}

/// Keeps freed training buffers in the process. glibc returns freed
/// megabyte-sized blocks to the kernel, and every training step then
/// page-faults them back in (about a quarter of a step's time, measured).
fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator thresholds; it is called before
    // any other thread exists.
    unsafe {
        libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
        libc::mallopt(libc::M_MMAP_THRESHOLD, 64 << 20);
    }
}

fn export(weights: &Path, out: &Path) -> Result<()> {
    let w = tinykd::export::load_weights(weights)?;
    let norm = tinykd::data::Normalization::default();
    let meta = tinykd::export::ExportMeta {
        labels: tinykd::data::CLASS_NAMES
            .iter()
            .map(|s| s.to_string())
            .collect(),
        normalization: tinykd::export::ExportMeta::normalization(norm.mean, norm.std),
        ..Default::default()
    };
    tinykd::export::write(out, &w.spec, &w.params, &meta)?;
    println!(
        "{}: {} exported to {}",
        weights.display(),
        w.spec.name,
        out.display()
    );
    Ok(())
}

/// Dies quietly on a closed pipe (`tinykd eval m.onnx | head`), as Unix
/// tools do, instead of panicking on the next print.
fn default_sigpipe() {
    #[cfg(unix)]
    // SAFETY: restores the default disposition before any other thread exists.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

fn main() -> Result<()> {
    keep_freed_memory();
    default_sigpipe();
    match Cli::parse().command {
        Command::Inspect { model, json } => inspect(&model, json),
        Command::Train(args) => train(&args),
        Command::Distill(args) => distill(&args),
        Command::Sweep(args) => sweep(&args),
        Command::Prune(args) => commands::prune::run(&args),
        Command::Eval(args) => eval(&args),
        Command::Quantize(args) => commands::quantize::run(&args),
        Command::Report(args) => commands::report::run(&args),
        Command::Bench {
            models,
            engines,
            iters,
            warmup,
            out_dir,
            summary,
            json,
            memory_probe,
        } => match memory_probe {
            Some(engine) => {
                let [model] = models.as_slice() else {
                    anyhow::bail!("--memory-probe takes one model");
                };
                println!("{}", tinykd::bench::peak_memory_probe(model, engine)?);
                Ok(())
            }
            None => bench(
                &models,
                &engines,
                iters,
                warmup,
                (out_dir.as_deref(), summary.as_deref()),
                json,
            ),
        },
        Command::Targets { json } => commands::targets::list(json),
        Command::Build(args) => commands::targets::build(&args),
        Command::Run(args) => commands::targets::run(&args),
        Command::Export { weights, out } => export(&weights, &out),
        Command::Infer {
            model,
            inputs,
            outputs,
            engine,
            json,
        } => infer(&model, &inputs, &outputs, engine, json),
        Command::Conformance {
            dir,
            json,
            ops_doc,
            all,
        } => run_conformance(&dir, json, ops_doc.as_deref(), all),
        Command::BenchTrain {
            models,
            steps,
            batch,
            kernels,
            optimizer,
            peer_python,
            write_doc,
            json,
        } => bench_train(
            &models,
            steps,
            batch,
            &kernels,
            &optimizer,
            &peer_python,
            write_doc.as_deref(),
            json,
        ),
    }
}
