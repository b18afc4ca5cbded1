//! `tinykd report`: the compression comparison for one student. For each
//! seed it trains the student from scratch and by distillation, then
//! compresses the distilled one every way tinykd can (int8 PTQ with each
//! calibration method, QAT, channel pruning with and without int8,
//! magnitude pruning, f16 weights), each step one run of tinykd's own
//! commands with `--json`. Every step's output is kept in the work folder
//! and reused, so an interrupted report continues where it stopped. Then
//! every model file is measured the same way by the runtime, and the table
//! and the accuracy-vs-size chart are written.

use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use tinykd::data::{Dataset, Split};
use tinykd::report::compression::{markdown_table, measure, Measured, Row};
use tinykd::report::SizePoint;

/// Options of `tinykd report`.
#[derive(clap::Args)]
pub struct ReportArgs {
    /// The teacher.
    #[arg(long, default_value = "models/teachers/cnn.onnx")]
    pub(super) teacher: PathBuf,
    /// The student spec.
    #[arg(long, default_value = "models/students/ds-cnn.toml")]
    pub(super) student: PathBuf,
    /// The distillation recipe (of the KD student and of every fine-tune).
    #[arg(long, default_value = "models/recipes/unlabeled.toml")]
    recipe: PathBuf,
    /// Epochs of the scratch and KD students.
    #[arg(long, default_value_t = 10)]
    pub(super) epochs: usize,
    /// Epochs of quantization-aware fine-tuning.
    #[arg(long, default_value_t = 2)]
    qat_epochs: usize,
    /// Learning rate of quantization-aware fine-tuning.
    #[arg(long, default_value_t = 1e-4)]
    qat_lr: f64,
    /// Epochs of KD fine-tuning after pruning.
    #[arg(long, default_value_t = 5)]
    prune_epochs: usize,
    /// Seeds (one full set of models each).
    #[arg(long, value_delimiter = ',', default_value = "0,1,2")]
    pub(super) seeds: Vec<u64>,
    /// Where the runs are kept (and reused).
    #[arg(long, default_value = "build/report")]
    pub(super) work_dir: PathBuf,
    /// Replace the "Compression" section of this Markdown file with the table.
    #[arg(long)]
    pub(super) write_doc: Option<PathBuf>,
    /// Write the accuracy-vs-size chart here.
    #[arg(long)]
    pub(super) plot: Option<PathBuf>,
    /// Fashion-MNIST folder.
    #[arg(long, default_value = tinykd::data::DEFAULT_DIR)]
    pub(super) data_dir: PathBuf,
    /// Print JSON instead of the table.
    #[arg(long)]
    pub(super) json: bool,
    /// Compare distillation methods instead of compressions: `all`, or a
    /// list of scratch, hinton, mse, fitnets, attention, rkd, born-again,
    /// ta-chain, mutual, ensemble, specialists, cross-resolution.
    #[arg(long, value_delimiter = ',')]
    methods: Vec<String>,
    /// Train on only this many of the training images (`--methods`).
    #[arg(long)]
    pub(super) limit: Option<usize>,
}

/// A model variant: its table label, its file in a seed's folder, and
/// the tinykd command that makes it.
struct Variant {
    label: String,
    file: String,
    args: Vec<String>,
}

const PTQ_METHODS: [&str; 4] = ["minmax", "percentile", "mse", "entropy"];
const PRUNE_RATIOS: [u32; 2] = [50, 75];

/// The variants of one seed, in table order; every step reads only files
/// of the steps before it.
fn variants(a: &ReportArgs, seed: u64, dir: &Path) -> Vec<Variant> {
    let p = |f: &str| dir.join(f).display().to_string();
    let s = |v: &str| v.to_string();
    let teacher = a.teacher.display().to_string();
    let recipe = a.recipe.display().to_string();
    let seed = seed.to_string();
    let distill = |recipe: &str, epochs: usize, out: &str| {
        [
            "distill",
            "--teacher",
            &teacher,
            "--student",
            &a.student.display().to_string(),
            "--recipe",
            recipe,
            "--epochs",
            &epochs.to_string(),
            "--seed",
            &seed,
            "--out",
            &p(out),
        ]
        .map(s)
        .to_vec()
    };
    let quantize = |model: &str, method: &str, out: &str| {
        [
            "quantize",
            &p(model),
            "--method",
            method,
            "--seed",
            &seed,
            "--out",
            &p(out),
        ]
        .map(s)
        .to_vec()
    };
    let prune = |method: &str, ratio: u32, out: &str| {
        [
            "prune",
            "--teacher",
            &teacher,
            "--student-weights",
            &p("kd.onnx.ckpt"),
            "--method",
            method,
            "--sparsity",
            &format!("{}", f64::from(ratio) / 100.0),
            "--recipe",
            &recipe,
            "--epochs",
            &a.prune_epochs.to_string(),
            "--seed",
            &seed,
            "--out",
            &p(out),
        ]
        .map(s)
        .to_vec()
    };
    let scratch = Path::new(&recipe).with_file_name("scratch.toml");
    let mut v = vec![
        Variant {
            label: format!("f32, scratch ({})", epochs(a.epochs)),
            file: "scratch.onnx".into(),
            args: distill(&scratch.display().to_string(), a.epochs, "scratch.onnx"),
        },
        Variant {
            label: format!("f32, KD ({})", epochs(a.epochs)),
            file: "kd.onnx".into(),
            args: distill(&recipe, a.epochs, "kd.onnx"),
        },
    ];
    for m in PTQ_METHODS {
        let file = format!("kd.int8-{m}.onnx");
        v.push(Variant {
            label: format!("KD + int8 PTQ ({m})"),
            args: quantize("kd.onnx", m, &file),
            file,
        });
    }
    let mut qat = distill(&recipe, a.qat_epochs, "kd.qat.onnx");
    qat.extend(
        [
            "--init",
            &p("kd.onnx.ckpt"),
            "--qat",
            "--lr",
            &a.qat_lr.to_string(),
        ]
        .map(s),
    );
    v.push(Variant {
        label: format!("KD + int8 QAT ({})", epochs(a.qat_epochs)),
        file: "kd.qat.onnx".into(),
        args: qat,
    });
    for r in PRUNE_RATIOS {
        let file = format!("kd.ch{r}.onnx");
        v.push(Variant {
            label: format!(
                "KD + {r} % channels pruned (+{} KD)",
                epochs(a.prune_epochs)
            ),
            args: prune("channels", r, &file),
            file,
        });
    }
    for r in PRUNE_RATIOS {
        let file = format!("kd.ch{r}.int8.onnx");
        v.push(Variant {
            label: format!("KD + {r} % channels pruned + int8 PTQ (mse)"),
            args: quantize(&format!("kd.ch{r}.onnx"), "mse", &file),
            file,
        });
    }
    for r in PRUNE_RATIOS {
        let file = format!("kd.mag{r}.onnx");
        v.push(Variant {
            label: format!(
                "KD + {r} % weights pruned (magnitude, +{} KD)",
                epochs(a.prune_epochs)
            ),
            args: prune("magnitude", r, &file),
            file,
        });
    }
    let mut f16 = quantize("kd.onnx", "minmax", "kd.f16.onnx");
    f16.extend(["--weights", "f16"].map(s));
    v.push(Variant {
        label: "KD + f16 weights".into(),
        file: "kd.f16.onnx".into(),
        args: f16,
    });
    v
}

/// "1 epoch", "N epochs".
fn epochs(n: usize) -> String {
    format!("{n} epoch{}", if n == 1 { "" } else { "s" })
}

/// `FILE.json`: the step's `--json` output, written once the step succeeded.
fn step_json(model: &Path) -> PathBuf {
    model.with_extension("json")
}

/// Runs one step (tinykd itself with `args --json`) unless its output is
/// there; its JSON is kept beside the model.
fn run_step(args: &[String], model: &Path) -> Result<()> {
    let json = step_json(model);
    let done = std::fs::read(&json)
        .ok()
        .is_some_and(|b| serde_json::from_slice::<serde_json::Value>(&b).is_ok());
    if model.exists() && done {
        return Ok(());
    }
    let exe = std::env::current_exe().context("finding the tinykd executable")?;
    let out = std::process::Command::new(exe)
        .args(args)
        .arg("--json")
        .output()
        .with_context(|| format!("running tinykd {}", args.join(" ")))?;
    if !out.status.success() {
        bail!(
            "tinykd {} failed:\n{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    serde_json::from_slice::<serde_json::Value>(&out.stdout)
        .with_context(|| format!("tinykd {}: output is not JSON", args.join(" ")))?;
    tinykd::tensor_file::write_atomically(&json, &out.stdout)?;
    Ok(())
}

/// The figures of `model`, measured once and kept beside it.
fn measured(model: &Path, test: &Dataset) -> Result<Measured> {
    let cache = model.with_extension("measured.json");
    let stamp = std::fs::metadata(model)?.modified()?;
    if let Ok(meta) = std::fs::metadata(&cache) {
        if meta.modified()? >= stamp {
            if let Ok(m) = serde_json::from_slice(&std::fs::read(&cache)?) {
                return Ok(m);
            }
        }
    }
    let m = measure(model, test)?;
    tinykd::tensor_file::write_atomically(&cache, &serde_json::to_vec_pretty(&m)?)?;
    Ok(m)
}

/// The report's bar over `steps` steps; hidden with `--json`.
pub(super) fn steps_bar(steps: usize, hidden: bool) -> Result<indicatif::ProgressBar> {
    let bar = indicatif::ProgressBar::new(steps as u64);
    if hidden {
        bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "[{elapsed_precise}] [{bar:30}] {pos}/{len} {msg}",
        )?
        .progress_chars("=> "),
    );
    Ok(bar)
}

/// `tinykd report`.
pub fn run(a: &ReportArgs) -> Result<()> {
    if !a.methods.is_empty() {
        return super::report_methods::run(a, &a.methods);
    }
    if a.seeds.is_empty() {
        bail!("--seeds: give at least one seed");
    }
    let test = Dataset::load(&a.data_dir, Split::Test)?;
    let plans: Vec<(u64, PathBuf, Vec<Variant>)> = a
        .seeds
        .iter()
        .map(|&s| {
            let dir = a.work_dir.join(format!("seed-{s}"));
            let v = variants(a, s, &dir);
            (s, dir, v)
        })
        .collect();
    let steps: usize = plans.iter().map(|(_, _, v)| v.len()).sum();
    let bar = steps_bar(steps, a.json)?;
    let mut rows: Vec<Row> = Vec::new();
    for (seed, dir, variants) in &plans {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        for (i, v) in variants.iter().enumerate() {
            bar.set_message(format!("seed {seed}: {}", v.label));
            let model = dir.join(&v.file);
            run_step(&v.args, &model)?;
            let m = measured(&model, &test)?;
            if rows.len() <= i {
                rows.push(Row {
                    label: v.label.clone(),
                    seeds: Vec::new(),
                });
            }
            rows[i].seeds.push(m);
            bar.inc(1);
        }
    }
    bar.finish_and_clear();

    let table = markdown_table(&rows, 1);
    let student = a.student.display();
    if let Some(path) = &a.plot {
        let points: Vec<SizePoint> = rows
            .iter()
            .map(|r| {
                let (accuracy, std) = r.accuracy();
                SizePoint {
                    label: r.label.clone(),
                    bytes: r.seeds[0].file_bytes as f64,
                    accuracy,
                    std,
                }
            })
            .collect();
        let title = format!(
            "{student}: accuracy vs size (Fashion-MNIST test, seeds {:?})",
            a.seeds
        );
        tinykd::report::accuracy_vs_size_png(path, &title, &points)?;
    }
    if let Some(doc) = &a.write_doc {
        let seeds: Vec<String> = a.seeds.iter().map(u64::to_string).collect();
        let lead = format!(
            "Regenerated by `tinykd report` (`make report`): student `{student}`, teacher `{}`, \
             recipe `{}`; seeds {}; full Fashion-MNIST (55k training / 5k validation / 10k test). \
             Every model file is measured by the tinykd runtime: test accuracy on the 10,000 test \
             images, parameters stored in the file (non-zero ones where pruning left zeros), file \
             size, the runtime's arena for one image, and the mean single-image latency on this \
             host (one thread, models measured one after another). \"ORT identical\": for int8 \
             outputs, the smallest share over seeds of the 100,000 logits that ONNX Runtime \
             computes identically from the same file.\n\n",
            a.teacher.display(),
            a.recipe.display(),
            seeds.join(", ")
        );
        let chart = a.plot.as_ref().map_or(String::new(), |p| {
            let rel = pathdiff(p, doc.parent().unwrap_or(Path::new(".")));
            format!("\n![accuracy vs size]({rel})\n")
        });
        tinykd::report::replace_section(doc, "Compression", &format!("{lead}{table}{chart}"))
            .with_context(|| format!("writing {}", doc.display()))?;
    }
    if a.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({ "rows": rows }))?
        );
    } else {
        print!("{table}");
    }
    Ok(())
}

/// `path` relative to `base` when it lies under it, else as given.
fn pathdiff(path: &Path, base: &Path) -> String {
    path.strip_prefix(base)
        .unwrap_or(path)
        .display()
        .to_string()
}
