//! `tinykd distill --peer SPEC`: deep mutual learning, the student and its
//! peers trained together with no teacher ([`tinykd::distill::mutual`]).
//! Each member checkpoints every epoch (the student at OUT.ckpt, peer k
//! at OUT.peer{k}.onnx.ckpt), so `--resume` continues the cohort; each is
//! written as ONNX and scored in the runtime.

use super::training::{
    bind_split, checkpoint_path, load_data, load_spec, write_model, DistillArgs,
};
use anyhow::{bail, Result};
use std::path::PathBuf;
use tinykd::distill::mutual::mutual_epoch;
use tinykd::distill::Recipe;
use tinykd::engine::EngineKind;
use tinykd::export::ExportMeta;
use tinykd::train::fit::Trainer;

/// The cohort's outputs: the student's `out`, then `OUT.peer{k}.onnx`.
fn outputs(out: &std::path::Path, peers: usize) -> Vec<PathBuf> {
    std::iter::once(out.to_path_buf())
        .chain((1..=peers).map(|k| out.with_extension(format!("peer{k}.onnx"))))
        .collect()
}

/// Trains the student of `a` with the recipe's peers.
pub fn mutual(a: &DistillArgs, recipe: &Recipe) -> Result<()> {
    if !a.teachers().is_empty() || a.qat || a.init.is_some() {
        bail!("mutual learning (--peer) trains its students from scratch without a teacher: drop --teacher, --qat and --init");
    }
    if !recipe.assistants.is_empty()
        || recipe.generations > 1
        || recipe.specialists.is_some()
        || !recipe.features.is_empty()
    {
        bail!("mutual learning (peers) does not combine with assistants, generations, specialists or feature pairs");
    }
    if recipe.fit.unlabeled {
        bail!("mutual learning needs the labels (fit.unlabeled is set)");
    }
    if a.run.out.extension().is_none_or(|e| e != "onnx") {
        bail!("--out {} must end in .onnx", a.run.out.display());
    }
    let specs: Vec<String> = std::iter::once(a.student().to_string())
        .chain(recipe.peers.iter().cloned())
        .collect();
    let outs = outputs(&a.run.out, recipe.peers.len());
    let mut cohort = Vec::with_capacity(specs.len());
    for (k, (spec, out)) in specs.iter().zip(&outs).enumerate() {
        let mut run = a.run.clone();
        run.out = out.clone();
        let mut t = if a.run.resume {
            Trainer::resume(&checkpoint_path(out), a.fit.epochs)?
        } else {
            let mut cfg = recipe.fit.clone();
            // Mutual learning needs students that start apart.
            cfg.seed += k as u64;
            let mut t = Trainer::new(recipe.student_view(load_spec(spec)?), cfg)?;
            t.set_tag("recipe", recipe.to_toml());
            t
        };
        bind_split(&mut t, &run)?;
        if cohort
            .first()
            .is_some_and(|c: &Trainer| c.spec().input != t.spec().input)
        {
            bail!("{spec}: the peers must take the student's input shape");
        }
        cohort.push(t);
    }
    let data = load_data(&a.run)?;
    let (train, idx) = data.transfer();
    let until = a.run.stop_after.unwrap_or(usize::MAX);
    let epochs = cohort[0].config().epochs;
    while cohort[0].epochs_done() < until.min(epochs) {
        let stats = mutual_epoch(
            &mut cohort,
            (train, idx),
            recipe.temperature,
            recipe.alpha,
            |_| {},
        )?;
        for (k, (t, out)) in cohort.iter_mut().zip(&outs).enumerate() {
            let val = t.evaluate(&data.train, data.val())?;
            t.record_validation(&val);
            t.save_checkpoint(&checkpoint_path(out))?;
            if !a.run.json {
                eprintln!(
                    "epoch {:>3} member {k}: loss {:.4}, train {:.2}%, val {:.2}%, {:.1} s",
                    stats[k].epoch,
                    stats[k].train_loss,
                    100.0 * stats[k].train_accuracy,
                    100.0 * val.accuracy,
                    stats[k].seconds
                );
            }
        }
    }
    if cohort[0].epochs_done() < epochs {
        println!(
            "stopped after epoch {}; continue with --resume",
            cohort[0].epochs_done()
        );
        return Ok(());
    }
    let mut members = Vec::new();
    for ((t, out), spec) in cohort.iter().zip(&outs).zip(&specs) {
        let meta = ExportMeta {
            recipe: Some(recipe.to_toml()),
            ..ExportMeta::default()
        };
        write_model(t, out, &data, meta)?;
        let eval = tinykd::eval::evaluate(out, &data.test, EngineKind::Tinykd, 100)?;
        members.push(serde_json::json!({
            "student": spec, "model": out, "parameters": t.spec().cost()?.parameters,
            "history": t.history(), "test_accuracy": eval.accuracy,
        }));
    }
    if a.run.json {
        println!(
            "{}",
            serde_json::to_string_pretty(
                &serde_json::json!({"mutual": members, "recipe": recipe})
            )?
        );
    } else {
        println!(
            "| member | student | model | test accuracy (runtime) |\n| --- | --- | --- | ---: |"
        );
        for (k, m) in members.iter().enumerate() {
            println!(
                "| {k} | {} | {} | {:.2} % |",
                m["student"].as_str().unwrap_or_default(),
                m["model"].as_str().unwrap_or_default(),
                100.0 * m["test_accuracy"].as_f64().unwrap_or(f64::NAN)
            );
        }
    }
    Ok(())
}
