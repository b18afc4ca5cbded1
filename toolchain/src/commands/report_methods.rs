//! `tinykd report --methods all`: the distillation family compared on one
//! student. Each method is one or more runs of tinykd's own commands with
//! `--json` (kept in the work folder and reused, so an interrupted report
//! continues); each method's deployable model (the last stage of a chain,
//! the student of a mutual cohort, the generalist with its specialists) is
//! scored in the runtime in f32 and after int8 PTQ, per seed; the table
//! (mean ± std over seeds) and a bar chart are written.

use super::report::ReportArgs;
use super::specialists::{manifest_path, read_manifest, score_files};
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::Instant;
use tinykd::data::{Dataset, Split};
use tinykd::engine::EngineKind;

/// The methods, in table order.
pub const ALL: [&str; 12] = [
    "scratch",
    "hinton",
    "mse",
    "fitnets",
    "attention",
    "rkd",
    "born-again",
    "ta-chain",
    "mutual",
    "ensemble",
    "specialists",
    "cross-resolution",
];

/// One method's figures for one seed.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Scored {
    /// Test accuracy of the f32 model(s) in the runtime.
    f32: f64,
    /// Test accuracy of the int8 PTQ model(s) in the runtime.
    int8: f64,
    /// Wall time of the method's training commands.
    seconds: f64,
    /// Extra figures (per-generation accuracies, the confused classes').
    extra: serde_json::Value,
}

/// A step: tinykd `args` (with `--json`) that writes `model`; its output
/// and wall time are kept in `MODEL.run.json`, and a finished step is not rerun.
fn step(args: &[String], model: &Path) -> Result<(f64, Vec<serde_json::Value>)> {
    let record = model.with_extension("run.json");
    if model.exists() {
        if let Ok(v) =
            serde_json::from_slice::<serde_json::Value>(&std::fs::read(&record).unwrap_or_default())
        {
            let docs = v["output"].as_array().cloned().unwrap_or_default();
            return Ok((v["seconds"].as_f64().unwrap_or(f64::NAN), docs));
        }
    }
    let exe = std::env::current_exe().context("finding the tinykd executable")?;
    let start = Instant::now();
    let out = std::process::Command::new(exe)
        .args(args)
        .arg("--json")
        .output()
        .with_context(|| format!("running tinykd {}", args.join(" ")))?;
    let seconds = start.elapsed().as_secs_f64();
    if !out.status.success() {
        bail!(
            "tinykd {} failed:\n{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // Chains print one JSON document per stage, then their own.
    let docs = serde_json::Deserializer::from_slice(&out.stdout)
        .into_iter::<serde_json::Value>()
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("tinykd {}: output is not JSON", args.join(" ")))?;
    let v = serde_json::json!({"args": args, "seconds": seconds, "output": docs});
    tinykd::tensor_file::write_atomically(&record, &serde_json::to_vec_pretty(&v)?)?;
    Ok((seconds, docs))
}

/// `model` quantized to int8 by `tinykd quantize` (PTQ, min-max), beside it.
fn int8_of(model: &Path, seed: u64, data_dir: &Path) -> Result<PathBuf> {
    let int8 = model.with_extension("int8.onnx");
    let s = |v: &str| v.to_string();
    let args = [
        s("quantize"),
        model.display().to_string(),
        s("--seed"),
        seed.to_string(),
        s("--data-dir"),
        data_dir.display().to_string(),
        s("--out"),
        int8.display().to_string(),
        // Scored here (a specialist's labels are not the test set's).
        s("--eval-limit"),
        s("0"),
    ];
    step(&args, &int8)?;
    Ok(int8)
}

/// Runtime test accuracy of `model`, f32 and after int8 PTQ.
fn f32_and_int8(model: &Path, test: &Dataset, seed: u64, data_dir: &Path) -> Result<(f64, f64)> {
    let f32 = tinykd::eval::evaluate(model, test, EngineKind::Tinykd, 100)?.accuracy;
    let int8 = int8_of(model, seed, data_dir)?;
    let q = tinykd::eval::evaluate(&int8, test, EngineKind::Tinykd, 100)?.accuracy;
    Ok((f32, q))
}

/// Runs method `m` for `seed` in `dir` and scores it.
fn method(a: &ReportArgs, m: &str, seed: u64, dir: &Path, test: &Dataset) -> Result<Scored> {
    let s = |v: &str| v.to_string();
    let out = dir.join(format!("{m}.onnx"));
    let teacher = a.teacher.display().to_string();
    let student = a.student.display().to_string();
    let recipe = |name: &str| format!("models/recipes/{name}.toml");
    let mut args = vec![s("distill")];
    let mut common = vec![
        s("--epochs"),
        a.epochs.to_string(),
        s("--seed"),
        seed.to_string(),
        s("--data-dir"),
        a.data_dir.display().to_string(),
        s("--cache-dir"),
        a.work_dir.join("teacher-cache").display().to_string(),
        s("--out"),
        out.display().to_string(),
    ];
    if let Some(n) = a.limit {
        common.extend([s("--limit"), n.to_string()]);
    }
    let with = |teachers: &[String], student: &str, recipe: String, more: &[String]| {
        let mut v = Vec::new();
        for t in teachers {
            v.extend([s("--teacher"), t.clone()]);
        }
        v.extend([s("--student"), student.to_string(), s("--recipe"), recipe]);
        v.extend(more.iter().cloned());
        v
    };
    let one = std::slice::from_ref(&teacher);
    args.extend(match m {
        // The teacher is loaded but unused: the baseline runs the same loop.
        "scratch" => with(one, &student, recipe("scratch"), &[]),
        "hinton" => with(one, &student, recipe("kd"), &[]),
        "mse" => with(one, &student, recipe("mse"), &[]),
        "fitnets" => with(one, &student, recipe("fitnets"), &[]),
        "attention" => with(one, &student, recipe("attention"), &[]),
        "rkd" => with(one, &student, recipe("rkd"), &[]),
        "born-again" => with(one, &student, recipe("born-again"), &[]),
        // The assistant: the 421k-parameter CNN, between the teacher (1.7M) and the student.
        "ta-chain" => with(one, &student, recipe("kd"), &[s("--via"), s("cnn")]),
        "mutual" => with(
            &[],
            &student,
            recipe("mutual"),
            &[s("--peer"), student.clone()],
        ),
        "ensemble" => {
            let second = ensemble_teacher(a)?;
            with(
                &[teacher.clone(), second],
                &student,
                recipe("ensemble-accuracy"),
                &[],
            )
        }
        "specialists" => with(one, &student, recipe("kd"), &[s("--specialists"), s("2")]),
        "cross-resolution" => with(one, &student, recipe("cross-resolution"), &[]),
        other => bail!("unknown method {other} (known: {})", ALL.join(", ")),
    });
    args.extend(common);
    let (seconds, docs) = step(&args, &out)?;
    let mut extra = serde_json::json!({});
    let (f32, int8) = if m == "specialists" {
        let system = read_manifest(&manifest_path(&out), test.classes)?;
        let (generalist, top_k, specs) = (system.generalist, system.top_k, system.specialists);
        let f = score_files(&generalist, &specs, test, top_k, EngineKind::Tinykd)?;
        let g8 = int8_of(&generalist, seed, &a.data_dir)?;
        let mut specs8 = Vec::new();
        for (sp, p) in &specs {
            specs8.push((sp.clone(), int8_of(p, seed, &a.data_dir)?));
        }
        let q = score_files(&g8, &specs8, test, top_k, EngineKind::Tinykd)?;
        extra = serde_json::json!({"f32": f, "int8": q});
        (f.combined, q.combined)
    } else {
        f32_and_int8(&out, test, seed, &a.data_dir)?
    };
    if let Some(chain) = docs.last().and_then(|d| d.get("chain")) {
        extra = serde_json::json!({"stages": chain});
    }
    Ok(Scored {
        f32,
        int8,
        seconds,
        extra,
    })
}

/// The second teacher of the ensemble: the 784-800-800-10 MLP, trained
/// once by the report (seed 0) on the same data.
fn ensemble_teacher(a: &ReportArgs) -> Result<String> {
    let out = a.work_dir.join("teacher-mlp-800.onnx");
    let s = |v: &str| v.to_string();
    let mut args = vec![
        s("train"),
        s("--arch"),
        s("mlp"),
        s("--epochs"),
        a.epochs.to_string(),
        s("--seed"),
        s("0"),
        s("--data-dir"),
        a.data_dir.display().to_string(),
        s("--out"),
        out.display().to_string(),
    ];
    if let Some(n) = a.limit {
        args.extend([s("--limit"), n.to_string()]);
    }
    step(&args, &out)?;
    Ok(out.display().to_string())
}

/// Mean and sample standard deviation.
fn mean_std(v: &[f64]) -> (f64, f64) {
    let n = v.len() as f64;
    let mean = v.iter().sum::<f64>() / n.max(1.0);
    let var = v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0).max(1.0);
    (mean, var.sqrt())
}

/// `tinykd report --methods ...`.
pub fn run(a: &ReportArgs, methods: &[String]) -> Result<()> {
    let methods: Vec<String> = if methods.iter().any(|m| m == "all") {
        ALL.iter().map(|m| m.to_string()).collect()
    } else {
        methods.to_vec()
    };
    for m in &methods {
        if !ALL.contains(&m.as_str()) {
            bail!(
                "--methods: unknown method {m} (known: all, {})",
                ALL.join(", ")
            );
        }
    }
    if a.seeds.is_empty() {
        bail!("--seeds: give at least one seed");
    }
    let test = Dataset::load(&a.data_dir, Split::Test)?;
    let bar = super::report::steps_bar(methods.len() * a.seeds.len(), a.json)?;
    let mut rows: Vec<(String, Vec<Scored>)> = Vec::new();
    for m in &methods {
        let mut per_seed = Vec::new();
        for &seed in &a.seeds {
            bar.set_message(format!("{m}, seed {seed}"));
            let dir = a.work_dir.join(format!("methods/seed-{seed}"));
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            per_seed.push(
                method(a, m, seed, &dir, &test)
                    .with_context(|| format!("method {m}, seed {seed}"))?,
            );
            bar.inc(1);
        }
        rows.push((m.clone(), per_seed));
    }
    bar.finish_and_clear();
    let scratch = rows
        .iter()
        .find(|(m, _)| m == "scratch")
        .map(|(_, s)| mean_std(&s.iter().map(|x| x.f32).collect::<Vec<_>>()).0);
    let mut table = String::from(
        "| method | test accuracy f32 % | int8 PTQ % | vs scratch (points) | training time s |\n| --- | ---: | ---: | ---: | ---: |\n",
    );
    let mut bars = Vec::new();
    for (m, s) in &rows {
        let (f, fs) = mean_std(&s.iter().map(|x| x.f32).collect::<Vec<_>>());
        let (q, qs) = mean_std(&s.iter().map(|x| x.int8).collect::<Vec<_>>());
        let (t, _) = mean_std(&s.iter().map(|x| x.seconds).collect::<Vec<_>>());
        let delta = scratch.map_or("–".into(), |b| format!("{:+.2}", 100.0 * (f - b)));
        table.push_str(&format!(
            "| {} | {:.2} ± {:.2} | {:.2} ± {:.2} | {delta} | {t:.0} |\n",
            label(m),
            100.0 * f,
            100.0 * fs,
            100.0 * q,
            100.0 * qs
        ));
        bars.push(tinykd::report::AccuracyBar {
            label: m.clone(),
            accuracy: f,
            std: fs,
            seconds: t,
        });
    }
    if let Some(path) = &a.plot {
        let title = format!(
            "{}: distillation methods (Fashion-MNIST test, seeds {:?})",
            a.student.display(),
            a.seeds
        );
        tinykd::report::accuracy_bars_png(path, &title, &bars)?;
    }
    if let Some(doc) = &a.write_doc {
        let seeds: Vec<String> = a.seeds.iter().map(u64::to_string).collect();
        let data = a.limit.map_or("the full 55k training split".into(), |n| {
            format!("{n} training images")
        });
        let lead = format!(
            "Regenerated by `tinykd report --methods all` (`make report-methods`): student `{}` \
             (in the cross-resolution row behind a 2×2 average pool), teacher `{}`; seeds {}; \
             {} epochs per training stage on {data}, 5k validation, scored on the 10k test images \
             by the tinykd runtime, each model in f32 and after int8 PTQ (`tinykd quantize`, \
             min-max). Training time: wall time of the method's tinykd commands, all stages \
             (teacher runs included). Each method's recipe is in `models/recipes/`.\n\n",
            a.student.display(),
            a.teacher.display(),
            seeds.join(", "),
            a.epochs
        );
        let chart = a.plot.as_ref().map_or(String::new(), |p| {
            let base = doc.parent().unwrap_or(Path::new("."));
            format!(
                "\n![distillation methods]({})\n",
                p.strip_prefix(base).unwrap_or(p).display()
            )
        });
        tinykd::report::replace_section(
            doc,
            "Distillation methods",
            &format!("{lead}{table}{chart}"),
        )
        .with_context(|| format!("writing {}", doc.display()))?;
    }
    if a.json {
        let v: Vec<_> = rows
            .iter()
            .map(|(m, s)| serde_json::json!({"method": m, "seeds": s}))
            .collect();
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({"methods": v}))?
        );
    } else {
        print!("{table}");
    }
    Ok(())
}

/// The table's name of a method.
fn label(m: &str) -> &'static str {
    match m {
        "scratch" => "scratch (labels only)",
        "hinton" => "Hinton KD (T = 4, α = 0.9)",
        "mse" => "logit MSE",
        "fitnets" => "FitNets (2 hint epochs, then KD)",
        "attention" => "attention transfer + KD",
        "rkd" => "RKD (distance + angle) + KD",
        "born-again" => "born-again, generation 3",
        "ta-chain" => "TA chain (via CNN 421k)",
        "mutual" => "mutual learning (2 students)",
        "ensemble" => "weighted ensemble (CNN + MLP, by val. accuracy)",
        "specialists" => "generalist + 2 specialists",
        "cross-resolution" => "cross-resolution (student at 14×14)",
        _ => "?",
    }
}
