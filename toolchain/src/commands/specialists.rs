//! `tinykd distill --specialists N`: Hinton et al.'s specialists with a
//! dustbin class ([`tinykd::distill::specialists`]). The student is
//! distilled first as the generalist (OUT); the teacher's confusion matrix
//! on the validation split picks the class clusters; each specialist, of
//! the student's architecture with one output per special class and a
//! dustbin, starts from the generalist's weights (all but the last layer)
//! and is distilled on its classes and as many others (OUT.spec{k}.onnx).
//! The system is scored in the runtime: the generalist alone and combined
//! with the specialists its top classes wake, overall and on the confused
//! classes. Every stage checkpoints; `--resume` keeps finished ones.

use super::training::{
    bind_split, checkpoint_path, distill_one, load_data, load_ensemble, load_spec, stage_done,
    write_model, DistillArgs,
};
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use tinykd::data::{Dataset, Normalization};
use tinykd::distill::specialists::{
    confusable_clusters, confusion_matrix, oversampled_indices, score_system, SpecialistConfig,
    SpecialistObjective, Specialty, SystemScore,
};
use tinykd::distill::Recipe;
use tinykd::engine::EngineKind;
use tinykd::export::ExportMeta;
use tinykd::train::fit::{run_epochs, Trainer};
use tinykd::train::model::{Layer, ModelSpec};

/// `OUT.spec{k}.onnx`, specialist k's model (from 1).
pub(super) fn specialist_path(out: &Path, k: usize) -> PathBuf {
    out.with_extension(format!("spec{k}.onnx"))
}

/// `OUT.specialists.json`: the system's files and classes.
pub(super) fn manifest_path(out: &Path) -> PathBuf {
    out.with_extension("specialists.json")
}

/// The student spec with `outputs` units in its last (dense) layer.
fn specialist_spec(student: &ModelSpec, specialty: &Specialty) -> Result<ModelSpec> {
    let mut spec = student.clone();
    match spec.layers.last_mut() {
        Some(Layer::Dense { units }) => *units = specialty.outputs(),
        _ => bail!(
            "{}: a specialist replaces the last layer, which must be dense",
            student.name
        ),
    }
    spec.name = format!("{}-specialist", student.name);
    Ok(spec)
}

/// Distills the generalist, then its specialists; scores the system.
pub fn specialists(a: &DistillArgs, recipe: &Recipe, cfg: &SpecialistConfig) -> Result<()> {
    let out = a.run.out.clone();
    if out.extension().is_none_or(|e| e != "onnx") {
        bail!("--out {} must end in .onnx", out.display());
    }
    if a.qat {
        bail!("specialists train in float: quantize the written models afterwards");
    }
    if !recipe.assistants.is_empty() || recipe.generations > 1 {
        bail!("specialists follow one distillation of the generalist: drop the assistants and generations");
    }
    if !(a.run.resume && stage_done(&out)) {
        if !a.run.json {
            eprintln!("specialists: the generalist");
        }
        distill_one(a)?;
    }
    let (ensemble, _) = load_ensemble(
        a.teachers(),
        recipe.teacher_weights.as_ref(),
        recipe.ensemble,
        a.teacher_engine(),
    )?;
    let data = load_data(&a.run)?;
    let norm = Normalization::default();
    let (train, idx) = data.transfer();
    let classes = train.classes;
    let quiet = |_: usize, _: usize, _: usize| {};
    // The teacher's confusions on held-out images pick the specialties.
    if ensemble.members().len() != 1 {
        bail!("specialists learn from one teacher; got an ensemble");
    }
    let val = ensemble.cached_logits(&data.train, data.val(), norm, a.cache_dir(), quiet)?;
    let val_logits = val[0].gather(data.val())?;
    let val_labels: Vec<u32> = data
        .val()
        .iter()
        .map(|&i| data.train.labels[i] as u32)
        .collect();
    let confusion = confusion_matrix(&val_logits, &val_labels, classes)?;
    let clusters = confusable_clusters(&confusion, cfg.max_size, cfg.count);
    if clusters.is_empty() {
        bail!("the teacher confuses no classes on the validation split: no specialist to train");
    }
    let soft = ensemble
        .cached_logits(train, idx, norm, a.cache_dir(), quiet)?
        .remove(0);
    let (generalist_spec, generalist_params) = tinykd::prune::load_student(&checkpoint_path(&out))?;
    let student = recipe.student_view(load_spec(a.student())?);
    if generalist_spec.layers != student.layers {
        bail!(
            "{}: not a run of the student {}",
            out.display(),
            a.student()
        );
    }
    let mut files = Vec::new();
    for (k, classes_k) in clusters.iter().enumerate() {
        let specialty = Specialty::new(classes_k.clone(), classes)?;
        let path = specialist_path(&out, k + 1);
        files.push((specialty.clone(), path.clone()));
        if a.run.resume && stage_done(&path) {
            continue;
        }
        let names: Vec<&str> = classes_k
            .iter()
            .map(|&c| train.class_names[c].as_str())
            .collect();
        if !a.run.json {
            eprintln!(
                "specialists: {} of {}: {}",
                k + 1,
                clusters.len(),
                names.join(", ")
            );
        }
        let spec = specialist_spec(&student, &specialty)?;
        let mut run = a.run.clone();
        run.out = path.clone();
        let ckpt = checkpoint_path(&path);
        let mut trainer = if a.run.resume && ckpt.exists() {
            Trainer::resume(&ckpt, a.fit.epochs)?
        } else {
            // The generalist's weights, all but the last layer's.
            let fresh = Trainer::new(spec.clone(), recipe.fit.clone())?;
            let last = format!("l{}.", spec.layers.len() - 1);
            let params: Vec<_> = fresh
                .parameters()
                .into_iter()
                .map(|(name, fresh)| {
                    let kept = generalist_params
                        .iter()
                        .find(|(g, _)| *g == name && !name.starts_with(&last));
                    (name, kept.map_or(fresh, |(_, t)| t.clone()))
                })
                .collect();
            let mut t = Trainer::from_parameters(spec, recipe.fit.clone(), &params)?;
            t.set_tag("specialty", format!("{classes_k:?}"));
            t
        };
        bind_split(&mut trainer, &run)?;
        let labels: Vec<u32> = idx.iter().map(|&i| train.labels[i] as u32).collect();
        let picked: Vec<usize> = oversampled_indices(&labels, &specialty, recipe.fit.seed)
            .into_iter()
            .map(|j| idx[j])
            .collect();
        let special = std::sync::Arc::new(relabelled(train, &specialty)?);
        let objective =
            SpecialistObjective::new(&specialty, &soft, recipe.temperature, recipe.alpha);
        run_epochs(
            &mut trainer,
            (&special, &picked),
            (&special, &[]),
            &objective,
            &ckpt,
            a.run.stop_after.unwrap_or(usize::MAX),
            |_, _| {},
            |s| {
                if !a.run.json {
                    eprintln!(
                        "epoch {:>3}: loss {:.4}, train {:.2}%, {:.1} s",
                        s.epoch,
                        s.train_loss,
                        100.0 * s.train_accuracy,
                        s.seconds
                    )
                }
            },
        )?;
        if trainer.epochs_done() < trainer.config().epochs {
            println!(
                "stopped after epoch {}; continue with --resume",
                trainer.epochs_done()
            );
            return Ok(());
        }
        let mut labels_meta: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        labels_meta.push("dustbin".into());
        let meta = ExportMeta {
            labels: labels_meta,
            recipe: Some(recipe.to_toml()),
            ..ExportMeta::default()
        };
        write_model(&trainer, &path, &data, meta)?;
    }
    let manifest = serde_json::json!({
        "generalist": out,
        "top_k": cfg.top_k,
        "specialists": files.iter().map(|(s, p)| serde_json::json!({
            "classes": s.classes,
            "names": s.classes.iter().map(|&c| train.class_names[c].clone()).collect::<Vec<_>>(),
            "model": p,
        })).collect::<Vec<_>>(),
    });
    tinykd::tensor_file::write_atomically(
        &manifest_path(&out),
        serde_json::to_string_pretty(&manifest)?.as_bytes(),
    )?;
    let score = score_files(&out, &files, &data.test, cfg.top_k, EngineKind::Tinykd)?;
    if a.run.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "specialists": manifest, "test": score, "confusion_val": confusion,
            }))?
        );
    } else {
        for (k, (s, p)) in files.iter().enumerate() {
            let names: Vec<&str> = s
                .classes
                .iter()
                .map(|&c| train.class_names[c].as_str())
                .collect();
            println!(
                "specialist {}: {} ({})",
                k + 1,
                names.join(", "),
                p.display()
            );
        }
        println!(
            "| model | test accuracy | on the specialists' classes ({} images) |\n| --- | ---: | ---: |",
            score.confused_images
        );
        println!(
            "| generalist | {:.2} % | {:.2} % |\n| generalist + specialists | {:.2} % | {:.2} % |",
            100.0 * score.generalist,
            100.0 * score.generalist_confused,
            100.0 * score.combined,
            100.0 * score.combined_confused
        );
    }
    Ok(())
}

/// `data` labelled for the specialist `s`: its classes, then the dustbin.
fn relabelled(data: &Dataset, s: &Specialty) -> Result<Dataset> {
    let labels: Vec<u8> = data
        .labels
        .iter()
        .map(|&y| s.label(y as u32) as u8)
        .collect();
    let mut names: Vec<String> = s
        .classes
        .iter()
        .map(|&c| data.class_names[c].clone())
        .collect();
    names.push("dustbin".into());
    Ok(Dataset::new(
        data.images.clone(),
        labels,
        data.rows,
        data.cols,
        names,
    )?)
}

/// Scores a generalist file with its specialists' files on `test`, each run
/// by `engine` (in the runtime by default; int8 files as well as f32).
pub(super) fn score_files(
    generalist: &Path,
    specialists: &[(Specialty, PathBuf)],
    test: &Dataset,
    top_k: usize,
    engine: EngineKind,
) -> Result<SystemScore> {
    let g = tinykd::eval::evaluate(generalist, test, engine, 100)?;
    let mut runs = Vec::with_capacity(specialists.len());
    for (s, path) in specialists {
        let r = tinykd::eval::evaluate(path, &relabelled(test, s)?, engine, 100)
            .with_context(|| format!("specialist {}", path.display()))?;
        runs.push((s.clone(), r.logits));
    }
    let labels: Vec<u32> = test.labels.iter().map(|&y| y as u32).collect();
    Ok(score_system(&g.logits, &runs, &labels, top_k)?)
}

/// A system written by [`specialists`].
pub(super) struct Manifest {
    /// The generalist's file.
    pub(super) generalist: PathBuf,
    /// How many of the generalist's top classes wake a specialist.
    pub(super) top_k: usize,
    /// Each specialist's classes and file.
    pub(super) specialists: Vec<(Specialty, PathBuf)>,
}

/// Reads `OUT.specialists.json` (see [`manifest_path`]).
pub(super) fn read_manifest(path: &Path, classes: usize) -> Result<Manifest> {
    let text = std::fs::read_to_string(path).with_context(|| path.display().to_string())?;
    let v: serde_json::Value =
        serde_json::from_str(&text).with_context(|| path.display().to_string())?;
    let field = |k: &str| {
        v.get(k)
            .with_context(|| format!("{}: no field {k}", path.display()))
    };
    let generalist = PathBuf::from(field("generalist")?.as_str().unwrap_or_default());
    let top_k = field("top_k")?.as_u64().unwrap_or(1) as usize;
    let mut specialists = Vec::new();
    for s in field("specialists")?.as_array().into_iter().flatten() {
        let cls: Vec<usize> = serde_json::from_value(s["classes"].clone())
            .with_context(|| format!("{}: specialist classes", path.display()))?;
        let model = PathBuf::from(s["model"].as_str().unwrap_or_default());
        specialists.push((Specialty::new(cls, classes)?, model));
    }
    Ok(Manifest {
        generalist,
        top_k,
        specialists,
    })
}
