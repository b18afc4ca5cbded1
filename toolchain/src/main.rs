//! The `tinykd` command line.

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tinykd::conformance;
use tinykd::data::{Augment, Dataset, Split};
use tinykd::engine::{run_tinykd, run_tract, EngineKind};
use tinykd::inspect::Report;
use tinykd::tensor_file::{write_atomically, HostTensor};
use tinykd::train::fit::{CrossEntropy, FitConfig, OptimizerKind, Schedule, Trainer};
use tinykd::train::model::{Kernels, ModelSpec};

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
        after_help = "Examples:\n  tinykd bench-train\n  tinykd bench-train --models mlp --steps 50 --json\n  tinykd bench-train --write-doc docs/results.md   # also runs TensorFlow if .venv-peers exists (make bench-peers)"
    )]
    BenchTrain {
        /// Which benchmark models (comma-separated): mlp, cnn, ds.
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
    let all = bench::benchmark_models();
    let mut results = Vec::new();
    for key in keys {
        let (_, spec) = all.iter().find(|(k, _)| k == key).with_context(|| {
            format!("unknown benchmark model '{key}' (choose from mlp, cnn, ds)")
        })?;
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
        let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
        bench::tensorflow_peer(
            peer_python,
            Path::new("scripts/bench_train_tf.py"),
            &keys,
            steps,
            batch,
        )
    } else {
        None
    };
    let table = bench::markdown(&results, tf.as_ref());
    if let Some(path) = write_doc {
        write_results_section(path, "Training speed", &table)?;
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

/// Replaces (or appends) the `## {title}` section of a Markdown file.
fn write_results_section(path: &Path, title: &str, body: &str) -> Result<()> {
    let old = std::fs::read_to_string(path).unwrap_or_else(|_| "# Results\n".into());
    let header = format!("## {title}\n");
    let machine = format!(
        "Measured by `tinykd bench-train` on {} logical CPUs, batch and steps as in the table's run; medians.\n\n",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    let section = format!("{header}\n{machine}{body}\n");
    let new = match old.find(&header) {
        Some(start) => {
            let rest = &old[start + header.len()..];
            let end = rest
                .find("\n## ")
                .map_or(old.len(), |i| start + header.len() + i + 1);
            format!("{}{section}{}", &old[..start], &old[end..])
        }
        None => format!("{}\n\n{section}", old.trim_end()),
    };
    write_atomically(path, new.as_bytes())?;
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

/// Options of `tinykd train`.
#[derive(clap::Args)]
struct TrainArgs {
    /// A spec file (TOML) or a built-in spec: mlp, cnn, ds.
    #[arg(long)]
    arch: String,
    /// Where to write the trained weights (safetensors).
    #[arg(long)]
    out: PathBuf,
    /// Passes over the training set.
    #[arg(long, default_value_t = 10)]
    epochs: usize,
    /// Images per step.
    #[arg(long, default_value_t = 128)]
    batch: usize,
    /// Optimizer.
    #[arg(long, value_enum, default_value = "adamw")]
    optimizer: OptimizerKind,
    /// Base learning rate.
    #[arg(long, default_value_t = 1e-3)]
    lr: f64,
    /// Weight decay (decoupled for AdamW, L2 for SGD).
    #[arg(long, default_value_t = 0.0)]
    weight_decay: f64,
    /// SGD momentum (Nesterov).
    #[arg(long, default_value_t = 0.9)]
    momentum: f64,
    /// Learning-rate schedule: constant, cosine, or step:EVERY:GAMMA.
    #[arg(long, default_value = "cosine")]
    schedule: String,
    /// Seed of the initial weights, shuffling and augmentation.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Random shifts of up to ± this many pixels.
    #[arg(long, default_value_t = 0)]
    shift: u32,
    /// Horizontal-flip probability.
    #[arg(long, default_value_t = 0.0)]
    hflip: f32,
    /// Layer kernels.
    #[arg(long, value_enum, default_value = "fast")]
    kernels: Kernels,
    /// Training images held out for validation.
    #[arg(long, default_value_t = 5000)]
    val: usize,
    /// Train on only this many of the remaining training images (quick runs).
    #[arg(long)]
    limit: Option<usize>,
    /// Fashion-MNIST folder.
    #[arg(long, default_value = tinykd::data::DEFAULT_DIR)]
    data_dir: PathBuf,
    /// Continue from OUT.ckpt (up to --epochs).
    #[arg(long)]
    resume: bool,
    /// Print a JSON summary instead of text.
    #[arg(long)]
    json: bool,
}

fn parse_schedule(s: &str) -> Result<Schedule> {
    Ok(match s.split(':').collect::<Vec<_>>().as_slice() {
        ["constant"] => Schedule::Constant,
        ["cosine"] => Schedule::Cosine,
        ["step", every, gamma] => Schedule::Step {
            every: every.parse().context("step schedule: EVERY")?,
            gamma: gamma.parse().context("step schedule: GAMMA")?,
        },
        _ => bail!("--schedule {s}: expected constant, cosine or step:EVERY:GAMMA"),
    })
}

/// `OUT.ckpt` next to the output file.
fn checkpoint_path(out: &Path) -> PathBuf {
    let mut p = out.as_os_str().to_owned();
    p.push(".ckpt");
    PathBuf::from(p)
}

fn train(a: &TrainArgs) -> Result<()> {
    let ckpt = checkpoint_path(&a.out);
    let mut trainer = if a.resume {
        Trainer::resume(&ckpt, Some(a.epochs))?
    } else {
        let spec = match ModelSpec::builtin(&a.arch) {
            Some(spec) => spec,
            None => ModelSpec::from_toml_file(Path::new(&a.arch))?,
        };
        let cfg = FitConfig {
            epochs: a.epochs,
            batch_size: a.batch,
            optimizer: a.optimizer,
            lr: a.lr,
            weight_decay: a.weight_decay,
            momentum: a.momentum,
            schedule: parse_schedule(&a.schedule)?,
            seed: a.seed,
            augment: Augment {
                shift: a.shift,
                hflip: a.hflip,
                ..Augment::default()
            },
            kernels: a.kernels,
        };
        Trainer::new(spec, cfg)?
    };
    let train_set = Arc::new(Dataset::load(&a.data_dir, Split::Train)?);
    let test_set = Arc::new(Dataset::load(&a.data_dir, Split::Test)?);
    let split = train_set.split_validation(a.val, trainer.config().seed)?;
    let mut train_idx = split.train;
    if let Some(n) = a.limit {
        train_idx.truncate(n);
    }
    let cost = trainer.spec().cost()?;
    if !a.json {
        eprintln!(
            "train: {} ({} parameters, {} MACs), {} training / {} validation images, epochs {}..{}",
            trainer.spec().name,
            cost.parameters,
            cost.macs,
            train_idx.len(),
            split.val.len(),
            trainer.epochs_done() + 1,
            trainer.config().epochs
        );
    }
    while trainer.epochs_done() < trainer.config().epochs {
        let bar = indicatif::ProgressBar::new(0);
        if a.json {
            bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
        }
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{prefix} [{bar:30}] {pos}/{len} {per_sec} {msg}",
            )?
            .progress_chars("=> "),
        );
        bar.set_prefix(format!("epoch {}", trainer.epochs_done() + 1));
        let stats = trainer.train_epoch(&train_set, &train_idx, &CrossEntropy, |p| {
            bar.set_length(p.batches as u64);
            bar.set_position(p.batch as u64);
            bar.set_message(format!("loss {:.4} acc {:.2}%", p.loss, 100.0 * p.accuracy));
        })?;
        bar.finish_and_clear();
        if !split.val.is_empty() {
            let val = trainer.evaluate(&train_set, &split.val)?;
            trainer.record_validation(&val);
        }
        trainer.save_checkpoint(&ckpt)?;
        let last = trainer.history().last().expect("an epoch ran");
        if !a.json {
            eprintln!(
                "epoch {:>3}: loss {:.4}, train {:.2}%, val {}, {:.1} s ({:.0} images/s)",
                stats.epoch,
                stats.train_loss,
                100.0 * stats.train_accuracy,
                last.val_accuracy
                    .map_or("–".into(), |v| format!("{:.2}%", 100.0 * v)),
                stats.seconds,
                stats.images_per_second
            );
        }
    }
    let test_idx: Vec<usize> = (0..test_set.len()).collect();
    let test = trainer.evaluate(&test_set, &test_idx)?;
    tinykd::train::checkpoint::save_weights(&a.out, trainer.spec(), &trainer.parameters())?;
    if a.json {
        let summary = serde_json::json!({
            "model": trainer.spec().name,
            "parameters": cost.parameters,
            "macs": cost.macs,
            "config": trainer.config(),
            "history": trainer.history(),
            "test": test,
            "out": a.out,
        });
        println!("{}", serde_json::to_string_pretty(&summary)?);
    } else {
        println!(
            "test accuracy {:.2}% ({}/{}), loss {:.4}; weights written to {}",
            100.0 * test.accuracy,
            test.correct,
            test.total,
            test.loss,
            a.out.display()
        );
    }
    Ok(())
}

fn main() -> Result<()> {
    keep_freed_memory();
    match Cli::parse().command {
        Command::Inspect { model, json } => inspect(&model, json),
        Command::Train(args) => train(&args),
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
