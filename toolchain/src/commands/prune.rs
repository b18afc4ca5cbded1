//! `tinykd prune`: a trained student loses weights (magnitude) or channels
//! (channels), then is fine-tuned by distillation from the teachers with
//! `distill`'s own loop (`training::distill_fit`) and exported.

use super::training::{
    bind_split, checkpoint_path, distill_fit, load_data, load_ensemble, Data, FitArgs, RunArgs,
};
use anyhow::{bail, Context, Result};
use serde_json::json;
use std::path::PathBuf;
use tinykd::data::Normalization;
use tinykd::distill::Recipe;
use tinykd::export::ExportMeta;
use tinykd::prune;
use tinykd::teacher::TeacherEngine;
use tinykd::train::fit::Trainer;
use tinykd::train::model::ModelSpec;

/// How the student is pruned.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum PruneMethod {
    /// Unstructured: the smallest weights of each layer are zeroed and kept
    /// zero (same shapes; sparse values).
    Magnitude,
    /// Structured: the weakest channels / units (L1 norm) are removed (a
    /// smaller model).
    Channels,
}

/// Options of `tinykd prune`.
#[derive(clap::Args)]
pub struct PruneArgs {
    /// A teacher (any ONNX classifier); repeat for an ensemble.
    #[arg(long = "teacher", required = true)]
    teachers: Vec<PathBuf>,
    /// Which engine runs the teachers.
    #[arg(long, value_enum, default_value = "tract")]
    teacher_engine: TeacherEngine,
    /// The trained student: OUT.ckpt of `train`/`distill`, or the weights
    /// (.safetensors) of `train`.
    #[arg(long)]
    student_weights: PathBuf,
    /// Unstructured (magnitude) or structured (channels) pruning.
    #[arg(long, value_enum)]
    method: PruneMethod,
    /// Fraction removed, per layer: of the weights (magnitude) or of the
    /// channels / units (channels), in [0, 1).
    #[arg(long)]
    sparsity: f64,
    /// The distillation recipe of the fine-tuning (TOML); flags override it.
    #[arg(long)]
    recipe: Option<PathBuf>,
    /// Where teacher logits are cached.
    #[arg(long, default_value = "build/teacher-cache")]
    cache_dir: PathBuf,
    #[command(flatten)]
    fit: FitArgs,
    #[command(flatten)]
    run: RunArgs,
}

/// Parameters, non-zero parameters and exported bytes of a model.
fn size(
    spec: &ModelSpec,
    params: &[(String, candle_core::Tensor)],
    meta: &ExportMeta,
) -> Result<serde_json::Value> {
    let (parameters, nonzero) = prune::count_nonzero(params)?;
    let bytes = tinykd::export::export(spec, params, meta)?.len();
    Ok(json!({"parameters": parameters, "nonzero": nonzero, "file_bytes": bytes}))
}

fn pct(v: &serde_json::Value) -> String {
    v.as_f64()
        .map_or("–".into(), |a| format!("{:.2}%", 100.0 * a))
}

/// Loads and prunes the student; a trainer of the pruned model (masks set)
/// and the figures before and right after pruning.
fn prune_student(
    a: &PruneArgs,
    recipe: &Recipe,
    meta: &ExportMeta,
    data: &Data,
) -> Result<(Trainer, serde_json::Value)> {
    let (spec, params) = prune::load_student(&a.student_weights)?;
    let test: Vec<usize> = (0..data.test.len()).collect();
    let original = Trainer::from_parameters(spec.clone(), recipe.fit.clone(), &params)?;
    let before_acc = original.evaluate(&data.test, &test)?.accuracy;
    let (pspec, pparams, masks) = match a.method {
        PruneMethod::Magnitude => {
            let masks = prune::magnitude_masks(&spec, &params, a.sparsity)?;
            (spec.clone(), prune::apply_masks(&params, &masks)?, masks)
        }
        PruneMethod::Channels => {
            let p = prune::prune_channels(&spec, &params, a.sparsity)?;
            (p.spec, p.params, Vec::new())
        }
    };
    let mut t = Trainer::from_parameters(pspec.clone(), recipe.fit.clone(), &pparams)?;
    t.set_masks(masks)?;
    let pruned_acc = t.evaluate(&data.test, &test)?.accuracy;
    let mut before = size(&spec, &params, meta)?;
    before["test_accuracy"] = json!(before_acc);
    let mut pruned = size(&pspec, &pparams, meta)?;
    pruned["test_accuracy"] = json!(pruned_acc);
    let figures = json!({
        "method": a.method, "sparsity": a.sparsity, "student": a.student_weights,
        "before": before, "pruned": pruned,
    });
    t.set_tag("recipe", recipe.to_toml());
    t.set_tag("prune", figures.to_string());
    Ok((t, figures))
}

/// `tinykd prune`.
pub fn run(a: &PruneArgs) -> Result<()> {
    let ckpt = checkpoint_path(&a.run.out);
    let mut data = load_data(&a.run)?;
    // A resumed run keeps its recipe, teachers, masks and figures.
    let resumed = if a.run.resume {
        let t = Trainer::resume(&ckpt, a.fit.epochs)?;
        if t.tag("prune").is_none() {
            bail!("{}: not a `tinykd prune` run", ckpt.display());
        }
        Some(t)
    } else {
        None
    };
    let recipe = match &resumed {
        Some(t) => {
            let mut r: Recipe = toml::from_str(t.tag("recipe").unwrap_or_default())
                .with_context(|| format!("{}: the run's recipe", ckpt.display()))?;
            r.fit = t.config().clone();
            r
        }
        None => {
            let mut r = match &a.recipe {
                Some(p) => Recipe::from_toml_file(p)?,
                None => Recipe::default(),
            };
            r.fit = a.fit.apply(r.fit)?;
            r.check().map_err(|e| anyhow::anyhow!("recipe: {e}"))?;
            r
        }
    };
    let (ensemble, shas) = load_ensemble(&a.teachers, None, recipe.ensemble, a.teacher_engine)?;
    let (mut trainer, figures) = match resumed {
        Some(t) => {
            let f = serde_json::from_str(t.tag("prune").unwrap_or_default())
                .with_context(|| format!("{}: the run's figures", ckpt.display()))?;
            (t, f)
        }
        None => {
            let norm = Normalization::default();
            // As `distill_fit` writes it, so the byte counts compare.
            let meta = ExportMeta {
                labels: data.test.class_names.clone(),
                normalization: ExportMeta::normalization(norm.mean, norm.std),
                teacher_sha256: (ensemble.members().len() == 1).then(|| shas.clone()),
                recipe: Some(recipe.to_toml()),
                ..ExportMeta::default()
            };
            prune_student(a, &recipe, &meta, &data)?
        }
    };
    match trainer.tag("teachers") {
        Some(s) if s != shas => bail!(
            "{}: the run was started with other teachers (sha256 {s}), not {shas}",
            ckpt.display()
        ),
        _ => trainer.set_tag("teachers", shas.clone()),
    }
    bind_split(&mut trainer, &a.run)?;
    let (b, p) = (&figures["before"], &figures["pruned"]);
    if !a.run.json {
        eprintln!(
            "pruned ({}, {}): parameters {} → {}, non-zero {} → {}; test accuracy {} → {} before fine-tuning",
            figures["method"].as_str().unwrap_or("?"),
            figures["sparsity"],
            b["parameters"],
            p["parameters"],
            b["nonzero"],
            p["nonzero"],
            pct(&b["test_accuracy"]),
            pct(&p["test_accuracy"]),
        );
    }
    let out = a.run.out.clone();
    let json_out = a.run.json;
    let teachers = (&ensemble, shas.as_str());
    distill_fit(
        &mut trainer,
        &recipe,
        teachers,
        &a.cache_dir,
        &mut data,
        &a.run,
        |t| {
            let (parameters, nonzero) = prune::count_nonzero(&t.parameters())?;
            let bytes = std::fs::metadata(&out)?.len();
            if !json_out {
                println!(
                "parameters {} → {parameters} (non-zero {} → {nonzero}); file {} → {bytes} bytes; \
                 test accuracy {} before pruning, {} right after pruning",
                b["parameters"],
                b["nonzero"],
                b["file_bytes"],
                pct(&b["test_accuracy"]),
                pct(&p["test_accuracy"]),
            );
            }
            let tuned = json!({"parameters": parameters, "nonzero": nonzero, "file_bytes": bytes});
            Ok(json!({"prune": figures, "fine_tuned": tuned}))
        },
    )
}
