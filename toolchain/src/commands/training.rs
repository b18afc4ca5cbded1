//! `tinykd train` and `tinykd distill`: the same loop (`train::fit`), one
//! with cross-entropy, the other with a distillation recipe against ONNX
//! teachers; both checkpoint every epoch, resume, and write the model as
//! ONNX (or raw weights as safetensors).

use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tinykd::data::{augmented_views, Augment, Dataset, Normalization, Split, TrainVal};
use tinykd::distill::specialists::SpecialistConfig;
use tinykd::distill::{
    Distiller, FeatureMatcher, Method, Recipe, Targets, TeacherView, TeacherWeights,
};
use tinykd::engine::EngineKind;
use tinykd::export::ExportMeta;
use tinykd::teacher::{Ensemble, EnsembleMode, Teacher, TeacherEngine};
use tinykd::train::fit::{
    run_epochs, CrossEntropy, EpochStats, Evaluation, FitConfig, Objective, OptimizerKind,
    Progress, Schedule, Trainer,
};
use tinykd::train::model::{Kernels, ModelSpec};

/// Options shared by `train` and `distill`: data, output, resumption.
#[derive(clap::Args, Clone)]
pub struct RunArgs {
    /// Where to write the trained model: `.onnx` (exported) or `.safetensors` (weights).
    #[arg(long)]
    pub(super) out: PathBuf,
    /// Training images held out for validation.
    #[arg(long, default_value_t = 5000)]
    val: usize,
    /// Seed of the train/validation split; kept apart from --seed so runs
    /// with other seeds share the split (and the cached teacher logits).
    #[arg(long, default_value_t = 0)]
    split_seed: u64,
    /// Train on only this many of the remaining training images (quick runs).
    #[arg(long)]
    limit: Option<usize>,
    /// Fashion-MNIST folder.
    #[arg(long, default_value = tinykd::data::DEFAULT_DIR)]
    data_dir: PathBuf,
    /// Continue the run saved in OUT.ckpt (up to --epochs, if given).
    #[arg(long)]
    pub(super) resume: bool,
    /// Stop once this many epochs are done, as if killed; --resume continues.
    #[arg(long)]
    pub(super) stop_after: Option<usize>,
    /// Print a JSON summary instead of text.
    #[arg(long)]
    pub(super) json: bool,
}

/// Training settings as flags; each one given overrides the recipe's.
#[derive(clap::Args, Clone)]
pub struct FitArgs {
    /// Passes over the training set [default: 10].
    #[arg(long)]
    pub(super) epochs: Option<usize>,
    /// Images per step [default: 128].
    #[arg(long)]
    batch: Option<usize>,
    /// Optimizer [default: adamw].
    #[arg(long, value_enum)]
    optimizer: Option<OptimizerKind>,
    /// Base learning rate [default: 0.001].
    #[arg(long)]
    lr: Option<f64>,
    /// Weight decay (decoupled for AdamW, L2 for SGD) [default: 0].
    #[arg(long)]
    weight_decay: Option<f64>,
    /// Learning-rate schedule: constant, cosine, or step:EVERY:GAMMA [default: cosine].
    #[arg(long)]
    schedule: Option<String>,
    /// Seed of the initial weights, shuffling and augmentation [default: 0].
    #[arg(long)]
    seed: Option<u64>,
    /// Random shifts of up to ± this many pixels [default: 0].
    #[arg(long)]
    shift: Option<u32>,
    /// Horizontal-flip probability [default: 0].
    #[arg(long)]
    hflip: Option<f32>,
    /// Layer kernels [default: fast].
    #[arg(long, value_enum)]
    kernels: Option<Kernels>,
}

impl FitArgs {
    /// `base` with the given flags applied.
    pub(super) fn apply(&self, mut cfg: FitConfig) -> Result<FitConfig> {
        macro_rules! set {
            ($($flag:ident => $field:ident),*) => {
                $(if let Some(v) = self.$flag.clone() { cfg.$field = v; })*
            };
        }
        set!(epochs => epochs, batch => batch_size, optimizer => optimizer, lr => lr,
             weight_decay => weight_decay, seed => seed, kernels => kernels);
        if let Some(s) = &self.schedule {
            cfg.schedule = parse_schedule(s)?;
        }
        cfg.augment = Augment {
            shift: self.shift.unwrap_or(cfg.augment.shift),
            hflip: self.hflip.unwrap_or(cfg.augment.hflip),
            ..cfg.augment
        };
        Ok(cfg)
    }
}

/// Options of `tinykd train`.
#[derive(clap::Args)]
pub struct TrainArgs {
    /// A spec file (TOML) or a built-in spec: mlp, cnn, ds.
    #[arg(long)]
    arch: String,
    #[command(flatten)]
    pub(super) fit: FitArgs,
    #[command(flatten)]
    pub(super) run: RunArgs,
}

/// The teachers and the student, shared by `distill` and `sweep`.
#[derive(clap::Args, Clone)]
pub struct PairArgs {
    /// A teacher (any ONNX classifier); repeat for an ensemble.
    #[arg(long = "teacher")]
    teachers: Vec<PathBuf>,
    /// Ensemble weights: one number per teacher (default: the recipe's, or
    /// equal), or `accuracy` for weights by each teacher's accuracy on the
    /// validation split (its margin over chance).
    #[arg(long, value_name = "W,W,...|accuracy")]
    teacher_weights: Option<TeacherWeights>,
    /// Which engine runs the teachers.
    #[arg(long, value_enum, default_value = "tract")]
    teacher_engine: TeacherEngine,
    /// The student: a spec file (TOML) or a built-in spec.
    #[arg(long)]
    student: String,
    /// A recipe (TOML); flags override its values (`sweep` searches its T and α).
    #[arg(long)]
    recipe: Option<PathBuf>,
    /// Where teacher logits are cached.
    #[arg(long, default_value = "build/teacher-cache")]
    cache_dir: PathBuf,
}

/// Options of `tinykd distill`.
#[derive(clap::Args, Clone)]
pub struct DistillArgs {
    #[command(flatten)]
    pair: PairArgs,
    /// Loss.
    #[arg(long, value_enum)]
    method: Option<Method>,
    /// Softmax temperature of the soft targets.
    #[arg(long)]
    temperature: Option<f64>,
    /// Weight of the soft term (Hinton) or of TCKD (DKD).
    #[arg(long)]
    alpha: Option<f64>,
    /// Weight of NCKD (DKD).
    #[arg(long)]
    beta: Option<f64>,
    /// Train without reading the labels (an unlabeled transfer set).
    #[arg(long)]
    unlabeled: bool,
    /// Teacher outputs from cached clean images or live on each augmented batch.
    #[arg(long, value_enum)]
    teacher_view: Option<TeacherView>,
    /// How several teachers' distributions are combined.
    #[arg(long, value_enum)]
    ensemble: Option<EnsembleMode>,
    /// Start from trained weights (OUT.ckpt of train/distill, or the
    /// .safetensors of train) of the `--student` spec instead of random ones.
    #[arg(long)]
    pub(super) init: Option<PathBuf>,
    /// Quantization-aware training: weights and activations are
    /// fake-quantized as the int8 export will be, and `--out` (.onnx) is
    /// the int8 QDQ model. Usually a short fine-tune of a trained student
    /// (`--init`) at a lower learning rate.
    #[arg(long)]
    pub(super) qat: bool,
    /// Teacher assistants (Mirzadeh et al. 2020): student specs of
    /// intermediate size, in order; the teacher distills into the first,
    /// each into the next, the last into `--student`. Each is written next
    /// to `--out` as OUT.ta1.onnx, OUT.ta2.onnx, ... (default: the recipe's
    /// `assistants`).
    #[arg(long = "via", value_name = "SPEC")]
    assistants: Vec<String>,
    /// Born-again generations (Furlanello et al. 2018): after the student
    /// is distilled, a fresh copy of it is distilled from it, N − 1 times;
    /// generation k is written as OUT.gen{k}.onnx, the last as OUT; each
    /// generation's weights start from the recipe's seed + k − 1. A chain
    /// prints each stage's report (with --json, one JSON document per stage
    /// and then one for the chain) and a table of test accuracies.
    /// (Default: the recipe's `generations`, 1.)
    #[arg(long, value_name = "N")]
    generations: Option<usize>,
    /// Deep mutual learning (Zhang et al. 2018): peer student specs trained
    /// together with `--student`, each learning from the labels and the
    /// others' predictions; no teacher. Peer k is written as
    /// OUT.peer{k}.onnx (default: the recipe's `peers`).
    #[arg(long = "peer", value_name = "SPEC")]
    peers: Vec<String>,
    /// Specialists with a dustbin class (Hinton et al. 2015 §5): after the
    /// student (the generalist), up to N specialists of its architecture
    /// are distilled on the class clusters the teacher confuses most on the
    /// validation split, written as OUT.spec{k}.onnx; prints the accuracy
    /// of the generalist alone and combined with them, overall and on the
    /// confused classes (default: the recipe's `[specialists]`).
    #[arg(long, value_name = "N")]
    specialists: Option<usize>,
    #[command(flatten)]
    pub(super) fit: FitArgs,
    #[command(flatten)]
    pub(super) run: RunArgs,
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

/// A built-in spec by name, or a spec file.
pub(super) fn load_spec(arch: &str) -> Result<ModelSpec> {
    match ModelSpec::builtin(arch) {
        Some(spec) => Ok(spec),
        None => Ok(ModelSpec::from_toml_file(Path::new(arch))?),
    }
}

/// `OUT.ckpt` next to the output file.
pub(super) fn checkpoint_path(out: &Path) -> PathBuf {
    let mut p = out.as_os_str().to_owned();
    p.push(".ckpt");
    PathBuf::from(p)
}

/// Records the data split in a new run's checkpoint, and refuses to resume
/// a run on another split (its validation images would have been trained on).
pub(super) fn bind_split(trainer: &mut Trainer, run: &RunArgs) -> Result<()> {
    let limit = run.limit.map_or("all".to_string(), |n| n.to_string());
    let split = format!(
        "val={} split_seed={} limit={limit}",
        run.val, run.split_seed
    );
    if let Some(started) = trainer.tag("split").filter(|_| run.resume) {
        if started != split {
            bail!(
                "{}: the run was started on the split {started}, not {split}; \
                 resume with the same --val, --split-seed and --limit",
                checkpoint_path(&run.out).display()
            );
        }
    }
    trainer.set_tag("split", split);
    Ok(())
}

/// The training and test sets, the train/validation split, and the
/// transfer set the student learns from (the training split by default).
pub(super) struct Data {
    pub(super) train: Arc<Dataset>,
    pub(super) test: Arc<Dataset>,
    split: TrainVal,
    transfer: Arc<Dataset>,
    transfer_idx: Vec<usize>,
}

pub(super) fn load_data(run: &RunArgs) -> Result<Data> {
    // The output's folder is created up front, so a long run cannot fail
    // at its first checkpoint for want of it.
    if let Some(dir) = run.out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let train = Arc::new(Dataset::load(&run.data_dir, Split::Train)?);
    let test = Arc::new(Dataset::load(&run.data_dir, Split::Test)?);
    let mut split = train.split_validation(run.val, run.split_seed)?;
    if let Some(n) = run.limit {
        split.train.truncate(n);
    }
    Ok(Data {
        transfer: Arc::clone(&train),
        transfer_idx: split.train.clone(),
        train,
        test,
        split,
    })
}

impl Data {
    /// The transfer set and the indices the student trains on.
    pub(super) fn transfer(&self) -> (&Arc<Dataset>, &[usize]) {
        (&self.transfer, &self.transfer_idx)
    }

    /// The validation indices (of the training set).
    pub(super) fn val(&self) -> &[usize] {
        &self.split.val
    }
}

impl DistillArgs {
    /// The teachers given with --teacher.
    pub(super) fn teachers(&self) -> &[PathBuf] {
        &self.pair.teachers
    }

    /// The --student spec.
    pub(super) fn student(&self) -> &str {
        &self.pair.student
    }

    /// The engine that runs the teachers.
    pub(super) fn teacher_engine(&self) -> TeacherEngine {
        self.pair.teacher_engine
    }

    /// Where teacher logits are cached.
    pub(super) fn cache_dir(&self) -> &Path {
        &self.pair.cache_dir
    }
}

/// Runs the epochs with a progress bar and a line per epoch, then
/// evaluates on the test set; `None` when stopped early (`--stop-after`).
fn fit(
    trainer: &mut Trainer,
    data: &Data,
    objective: &dyn Objective,
    run: &RunArgs,
) -> Result<Option<Evaluation>> {
    let cost = trainer.spec().cost()?;
    if !run.json {
        eprintln!(
            "{}: {} parameters, {} MACs per image; {} training / {} validation images; epochs {}..{}",
            trainer.spec().name,
            cost.parameters,
            cost.macs,
            data.transfer_idx.len(),
            data.split.val.len(),
            trainer.epochs_done() + 1,
            trainer.config().epochs
        );
    }
    let bar = indicatif::ProgressBar::new(0);
    if run.json {
        bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    bar.set_style(
        indicatif::ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} {per_sec} {msg}")?
            .progress_chars("=> "),
    );
    let on_batch = |epoch: usize, p: Progress| {
        if p.batch == 1 {
            bar.reset();
            bar.set_length(p.batches as u64);
            bar.set_prefix(format!("epoch {epoch}"));
        }
        bar.set_position(p.batch as u64);
        bar.set_message(format!("loss {:.4} acc {:.2}%", p.loss, 100.0 * p.accuracy));
    };
    let on_epoch = |s: &EpochStats| {
        if !run.json {
            bar.suspend(|| {
                eprintln!(
                    "epoch {:>3}: loss {:.4}, train {:.2}%, val {}, {:.1} s ({:.0} images/s)",
                    s.epoch,
                    s.train_loss,
                    100.0 * s.train_accuracy,
                    s.val_accuracy
                        .map_or("–".into(), |v| format!("{:.2}%", 100.0 * v)),
                    s.seconds,
                    s.images_per_second
                )
            });
        }
    };
    run_epochs(
        trainer,
        (&data.transfer, &data.transfer_idx),
        (&data.train, &data.split.val),
        objective,
        &checkpoint_path(&run.out),
        run.stop_after.unwrap_or(usize::MAX),
        on_batch,
        on_epoch,
    )?;
    bar.finish_and_clear();
    if trainer.epochs_done() < trainer.config().epochs {
        return Ok(None);
    }
    let test_idx: Vec<usize> = (0..data.test.len()).collect();
    Ok(Some(trainer.evaluate(&data.test, &test_idx)?))
}

/// Writes the trained model: ONNX when `out` ends in `.onnx` (int8 QDQ
/// after quantization-aware training), else weights.
pub(super) fn write_model(
    trainer: &Trainer,
    out: &Path,
    data: &Data,
    meta: ExportMeta,
) -> Result<()> {
    if out.extension().is_some_and(|e| e == "onnx") {
        let norm = Normalization::default();
        let labels = if meta.labels.is_empty() {
            data.train.class_names.clone()
        } else {
            meta.labels
        };
        let meta = ExportMeta {
            labels,
            normalization: ExportMeta::normalization(norm.mean, norm.std),
            ..meta
        };
        let params = trainer.parameters();
        match trainer.network().fake_quant() {
            Some(points) => {
                let (bytes, _) = points.export(trainer.spec(), &params, &meta)?;
                // The runtime must accept what is written, or nothing is written.
                tinykd_runtime::Model::parse(&bytes)
                    .with_context(|| format!("{}: the int8 model does not load", out.display()))?;
                tinykd::tensor_file::write_atomically(out, &bytes)?;
            }
            None => tinykd::export::write(out, trainer.spec(), &params, &meta)?,
        }
    } else {
        tinykd::train::checkpoint::save_weights(out, trainer.spec(), &trainer.parameters())?;
    }
    Ok(())
}

/// `OUT.curves.png` next to the output file.
fn curves_path(out: &Path) -> PathBuf {
    out.with_extension("curves.png")
}

fn report(
    trainer: &Trainer,
    test: &Evaluation,
    run: &RunArgs,
    extra: serde_json::Value,
) -> Result<()> {
    let cost = trainer.spec().cost()?;
    // The model is already written: a chart that fails is a warning only.
    let curves = curves_path(&run.out);
    let title = format!("{} ({} parameters)", trainer.spec().name, cost.parameters);
    let curves = match tinykd::report::training_curves_png(&curves, &title, trainer.history()) {
        Ok(()) => Some(curves),
        Err(e) => {
            eprintln!("warning: no training-curve chart: {e}");
            None
        }
    };
    if run.json {
        let mut summary = serde_json::json!({
            "model": trainer.spec().name,
            "parameters": cost.parameters,
            "macs": cost.macs,
            "config": trainer.config(),
            "history": trainer.history(),
            "test": test,
            "out": run.out,
            "curves_png": curves,
        });
        if let (Some(s), Some(e)) = (summary.as_object_mut(), extra.as_object()) {
            s.extend(e.clone());
        }
        println!("{}", serde_json::to_string_pretty(&summary)?);
    } else {
        println!(
            "test accuracy {:.2}% ({}/{}), loss {:.4}; model written to {}{}",
            100.0 * test.accuracy,
            test.correct,
            test.total,
            test.loss,
            run.out.display(),
            curves.map_or(String::new(), |c| format!(
                ", training curves to {}",
                c.display()
            ))
        );
    }
    Ok(())
}

/// Reports a run stopped by `--stop-after`.
fn stopped(trainer: &Trainer, run: &RunArgs) -> Result<()> {
    let ckpt = checkpoint_path(&run.out);
    if run.json {
        let s = serde_json::json!({"stopped_after": trainer.epochs_done(), "checkpoint": ckpt});
        println!("{s}");
    } else {
        println!(
            "stopped after epoch {}; continue with --resume (checkpoint {})",
            trainer.epochs_done(),
            ckpt.display()
        );
    }
    Ok(())
}

/// `tinykd train`.
pub fn train(a: &TrainArgs) -> Result<()> {
    let mut trainer = if a.run.resume {
        Trainer::resume(&checkpoint_path(&a.run.out), a.fit.epochs)?
    } else {
        let cfg = a.fit.apply(FitConfig::default())?;
        Trainer::new(load_spec(&a.arch)?, cfg)?
    };
    bind_split(&mut trainer, &a.run)?;
    let data = load_data(&a.run)?;
    let Some(test) = fit(&mut trainer, &data, &CrossEntropy, &a.run)? else {
        return stopped(&trainer, &a.run);
    };
    write_model(&trainer, &a.run.out, &data, ExportMeta::default())?;
    report(&trainer, &test, &a.run, serde_json::json!({}))
}

/// The recipe from the file and flags.
fn recipe_of(a: &DistillArgs) -> Result<Recipe> {
    let mut r = match &a.pair.recipe {
        Some(p) => Recipe::from_toml_file(p)?,
        None => Recipe::default(),
    };
    r.method = a.method.unwrap_or(r.method);
    r.temperature = a.temperature.unwrap_or(r.temperature);
    r.alpha = a.alpha.unwrap_or(r.alpha);
    r.beta = a.beta.unwrap_or(r.beta);
    r.teacher_view = a.teacher_view.unwrap_or(r.teacher_view);
    r.ensemble = a.ensemble.unwrap_or(r.ensemble);
    r.fit = a.fit.apply(r.fit)?;
    r.fit.unlabeled |= a.unlabeled;
    if a.pair.teacher_weights.is_some() {
        r.teacher_weights = a.pair.teacher_weights.clone();
    }
    if !a.assistants.is_empty() {
        r.assistants = a.assistants.clone();
    }
    r.generations = a.generations.unwrap_or(r.generations);
    if !a.peers.is_empty() {
        r.peers = a.peers.clone();
    }
    if let Some(count) = a.specialists {
        r.specialists = Some(SpecialistConfig {
            count,
            ..r.specialists.unwrap_or_default()
        });
    }
    r.check().map_err(|e| anyhow::anyhow!("recipe: {e}"))?;
    Ok(r)
}

/// The teachers as an ensemble, and their sha256s joined by commas.
pub(super) fn load_ensemble(
    paths: &[PathBuf],
    weights: Option<&TeacherWeights>,
    mode: EnsembleMode,
    engine: TeacherEngine,
) -> Result<(Ensemble, String)> {
    let weights = match weights {
        // Accuracy weights come later, from the validation split.
        None | Some(TeacherWeights::Accuracy) => vec![1.0; paths.len()],
        Some(TeacherWeights::Fixed(w)) => w.clone(),
    };
    let weights = if weights.len() == paths.len() {
        weights
    } else {
        bail!(
            "--teacher-weights has {} values for {} teachers",
            weights.len(),
            paths.len()
        );
    };
    let members = paths
        .iter()
        .zip(weights)
        .map(|(p, w)| Ok((Teacher::load_with(p, engine)?, w)))
        .collect::<Result<Vec<_>>>()?;
    let ensemble = Ensemble::new(members, mode)?;
    let shas = ensemble
        .members()
        .iter()
        .map(|(t, _)| t.sha256().to_string())
        .collect::<Vec<_>>()
        .join(",");
    Ok((ensemble, shas))
}

/// With `--teacher-weights accuracy`, the ensemble reweighted by each
/// member's accuracy on the validation split (its logits cached like the
/// training set's); otherwise the ensemble as it is.
fn weigh_teachers(
    ensemble: Ensemble,
    weights: Option<&TeacherWeights>,
    data: &Data,
    cache_dir: &Path,
    quiet: bool,
) -> Result<Ensemble> {
    if weights != Some(&TeacherWeights::Accuracy) {
        return Ok(ensemble);
    }
    if data.split.val.is_empty() {
        bail!("--teacher-weights accuracy needs a validation split (--val > 0)");
    }
    let val = &data.split.val;
    let logits = ensemble.cached_logits(
        &data.train,
        val,
        Normalization::default(),
        cache_dir,
        |_, _, _| {},
    )?;
    let accuracies: Vec<f64> = logits
        .iter()
        .map(|l| {
            let right = l
                .predictions()
                .iter()
                .zip(val)
                .filter(|(&p, &i)| p == usize::from(data.train.labels[i]))
                .count();
            right as f64 / val.len() as f64
        })
        .collect();
    let weights = tinykd::teacher::accuracy_weights(&accuracies, ensemble.classes())?;
    let ensemble = ensemble.reweighted(&weights)?;
    if !quiet {
        for ((t, w), a) in ensemble.members().iter().zip(&accuracies) {
            eprintln!(
                "teacher {}: validation accuracy {:.2} %, weight {w:.3}",
                t.path().display(),
                100.0 * a
            );
        }
    }
    Ok(ensemble)
}

/// Replaces the transfer set by the recipe's augmented views, if it asks for them.
fn apply_transfer(recipe: &Recipe, data: &mut Data) -> Result<()> {
    if recipe.transfer.views > 1 {
        let views = augmented_views(
            &data.train,
            &data.split.train,
            &recipe.transfer.augment,
            recipe.transfer.views,
            recipe.transfer.seed,
        )?;
        data.transfer_idx = (0..views.len()).collect();
        data.transfer = Arc::new(views);
    }
    Ok(())
}

/// The teachers' outputs the recipe needs: none, live, or logits over the
/// transfer set computed once and cached in `cache_dir`.
fn teacher_targets(
    recipe: &Recipe,
    ensemble: &Ensemble,
    data: &Data,
    cache_dir: &Path,
    quiet: bool,
) -> Result<Targets> {
    Ok(match (recipe.method, recipe.teacher_view) {
        (Method::Scratch, _) => Targets::None,
        (_, TeacherView::Live) => Targets::Live,
        (_, TeacherView::Cached) => {
            let bar = indicatif::ProgressBar::new(0);
            if quiet {
                bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
            }
            bar.set_style(indicatif::ProgressStyle::with_template(
                "teacher {prefix} [{bar:30}] {pos}/{len} images",
            )?);
            let logits = ensemble.cached_logits(
                &data.transfer,
                &data.transfer_idx,
                Normalization::default(),
                cache_dir,
                |m, done, total| {
                    bar.set_prefix(format!("{}", m + 1));
                    bar.set_length(total as u64);
                    bar.set_position(done as u64);
                },
            )?;
            bar.finish_and_clear();
            for w in logits.iter().flat_map(|l| &l.warnings) {
                eprintln!("warning: {w}");
            }
            Targets::Cached(logits)
        }
    })
}

/// `tinykd distill`: one distillation, or a chain of them through teacher
/// assistants (`--via`) and/or born-again generations (`--generations`).
pub fn distill(a: &DistillArgs) -> Result<()> {
    let recipe = recipe_of(a)?;
    if !recipe.peers.is_empty() {
        return super::mutual::mutual(a, &recipe);
    }
    if let Some(cfg) = &recipe.specialists {
        return super::specialists::specialists(a, &recipe, cfg);
    }
    if a.pair.teachers.is_empty() {
        bail!("give a --teacher (or --peer specs for mutual learning without one)");
    }
    if recipe.assistants.is_empty() && recipe.generations == 1 {
        return distill_one(a);
    }
    if a.qat || a.init.is_some() {
        bail!("assistants and generations train every stage from scratch: use --qat/--init on a single run");
    }
    if a.run.out.extension().is_none_or(|e| e != "onnx") {
        bail!(
            "a chain's stages teach each other as ONNX models: --out {} must end in .onnx",
            a.run.out.display()
        );
    }
    let stages = chain_stages(
        &recipe.assistants,
        &a.pair.student,
        recipe.generations,
        &a.run.out,
    );
    // Each born-again generation starts from its own random weights.
    let seed = recipe.fit.seed;
    let test = Dataset::load(&a.run.data_dir, Split::Test)?;
    let mut teachers = a.pair.teachers.clone();
    let mut report = Vec::new();
    for (k, (name, spec, out)) in stages.iter().enumerate() {
        let mut stage = a.clone();
        stage.assistants.clear();
        stage.generations = Some(1);
        stage.pair.student = spec.clone();
        stage.run.out = out.clone();
        stage.fit.seed = Some(seed + k.saturating_sub(recipe.assistants.len()) as u64);
        if k > 0 {
            // The previous stage is the only teacher.
            stage.pair.teacher_weights = Some(TeacherWeights::Fixed(vec![1.0]));
        }
        stage.pair.teachers = teachers;
        // With --resume, finished stages are kept and a killed one continues.
        stage.run.resume = a.run.resume && checkpoint_path(out).exists();
        if !(a.run.resume && stage_done(out)) {
            if !a.run.json {
                eprintln!(
                    "chain: stage {} of {}: {name} ({spec})",
                    k + 1,
                    stages.len()
                );
            }
            distill_one(&stage)?;
        }
        let eval = tinykd::eval::evaluate(out, &test, EngineKind::Tinykd, 100)?;
        report.push(serde_json::json!({
            "stage": name, "student": spec, "model": out, "teachers": stage.pair.teachers,
            "test_accuracy": eval.accuracy,
        }));
        teachers = vec![out.clone()];
    }
    if a.run.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({"chain": report}))?
        );
    } else {
        println!(
            "| stage | student | teacher | test accuracy (runtime) |\n| --- | --- | --- | ---: |"
        );
        for r in &report {
            let teacher = r["teachers"].as_array().map_or(String::new(), |t| {
                t.iter()
                    .filter_map(|v| v.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            });
            println!(
                "| {} | {} | {teacher} | {:.2} % |",
                r["stage"].as_str().unwrap_or_default(),
                r["student"].as_str().unwrap_or_default(),
                100.0 * r["test_accuracy"].as_f64().unwrap_or(f64::NAN)
            );
        }
    }
    Ok(())
}

/// The stages of a chain: (name, student spec, output) for each assistant,
/// the student, and its further generations; the last writes `out`.
fn chain_stages(
    assistants: &[String],
    student: &str,
    generations: usize,
    out: &Path,
) -> Vec<(String, String, PathBuf)> {
    let sibling = |suffix: String| out.with_extension(format!("{suffix}.onnx"));
    let mut stages: Vec<(String, String, PathBuf)> = assistants
        .iter()
        .enumerate()
        .map(|(i, spec)| {
            (
                format!("assistant {}", i + 1),
                spec.clone(),
                sibling(format!("ta{}", i + 1)),
            )
        })
        .collect();
    for g in 1..=generations.max(1) {
        let name = if generations > 1 {
            format!("student, generation {g}")
        } else {
            "student".into()
        };
        let path = if g == generations.max(1) {
            out.to_path_buf()
        } else {
            sibling(format!("gen{g}"))
        };
        stages.push((name, student.to_string(), path));
    }
    stages
}

/// Whether the run that writes `out` finished: its model exists and its
/// checkpoint reached the configured epochs.
pub(super) fn stage_done(out: &Path) -> bool {
    out.exists()
        && Trainer::resume(&checkpoint_path(out), None)
            .is_ok_and(|t| t.epochs_done() >= t.config().epochs)
}

/// One distillation run (see [`distill`]).
pub(super) fn distill_one(a: &DistillArgs) -> Result<()> {
    if a.qat && a.run.out.extension().is_none_or(|e| e != "onnx") {
        bail!(
            "--qat writes an int8 ONNX model: --out {} must end in .onnx",
            a.run.out.display()
        );
    }
    let ckpt = checkpoint_path(&a.run.out);
    // A resumed run keeps its recipe and teachers; only --epochs may change.
    let resumed = if a.run.resume {
        Some(Trainer::resume(&ckpt, a.fit.epochs)?)
    } else {
        None
    };
    let recipe = match resumed.as_ref().and_then(|t| t.tag("recipe")) {
        Some(text) => {
            let mut r: Recipe = toml::from_str(text)
                .with_context(|| format!("{}: the recipe it was started with", ckpt.display()))?;
            r.fit = resumed.as_ref().expect("resumed").config().clone();
            r
        }
        None => recipe_of(a)?,
    };
    let (ensemble, shas) = load_ensemble(
        &a.pair.teachers,
        recipe.teacher_weights.as_ref(),
        recipe.ensemble,
        a.pair.teacher_engine,
    )?;
    let mut trainer = match resumed {
        Some(t) => {
            if t.tag("teachers").is_some_and(|s| s != shas) {
                bail!(
                    "{}: the run was started with other teachers (sha256 {}), not {shas}",
                    ckpt.display(),
                    t.tag("teachers").unwrap_or_default()
                );
            }
            t
        }
        None => {
            let spec = recipe.student_view(load_spec(&a.pair.student)?);
            spec.cost()?;
            let mut t = match &a.init {
                Some(path) => {
                    let (init_spec, params) = tinykd::prune::load_student(path)?;
                    if init_spec.layers != spec.layers || init_spec.input != spec.input {
                        bail!(
                            "{}: the weights are of model '{}', not of the student '{}' ({})",
                            path.display(),
                            init_spec.name,
                            spec.name,
                            a.pair.student
                        );
                    }
                    Trainer::from_parameters(spec, recipe.fit.clone(), &params)?
                }
                None => Trainer::new(spec, recipe.fit.clone())?,
            };
            if a.qat {
                t.enable_qat()?;
            }
            t.set_tag("recipe", recipe.to_toml());
            t.set_tag("teachers", shas.clone());
            t
        }
    };
    bind_split(&mut trainer, &a.run)?;
    let mut data = load_data(&a.run)?;
    let ensemble = weigh_teachers(
        ensemble,
        recipe.teacher_weights.as_ref(),
        &data,
        &a.pair.cache_dir,
        a.run.json,
    )?;
    let teachers = (&ensemble, shas.as_str());
    let test = data.test.clone();
    let (out, json_out) = (a.run.out.clone(), a.run.json);
    distill_fit(
        &mut trainer,
        &recipe,
        teachers,
        &a.pair.cache_dir,
        &mut data,
        &a.run,
        |t| {
            if t.network().fake_quant().is_none() {
                return Ok(serde_json::json!({}));
            }
            // The accuracy the device gets: the written int8 model in the runtime.
            let int8 = tinykd::eval::evaluate(&out, &test, EngineKind::Tinykd, 100)?;
            if !json_out {
                println!(
                    "int8 QDQ model in the runtime: test accuracy {:.2}% ({}/{}), {} bytes",
                    100.0 * int8.accuracy,
                    int8.correct,
                    int8.total,
                    std::fs::metadata(&out)?.len()
                );
            }
            Ok(serde_json::json!({"qat": true, "int8_runtime_test": int8}))
        },
    )
}

/// The part of `distill` after the student and the data are set up, shared
/// with `prune`: fits `trainer` with the recipe's objective against the
/// teachers `(ensemble, sha256s)`, writes the model, then reports (with
/// what `after` returns, given the written model, merged into the JSON).
pub(super) fn distill_fit(
    trainer: &mut Trainer,
    recipe: &Recipe,
    (ensemble, shas): (&Ensemble, &str),
    cache_dir: &Path,
    data: &mut Data,
    run: &RunArgs,
    after: impl FnOnce(&Trainer) -> Result<serde_json::Value>,
) -> Result<()> {
    ensemble.check_classes(data.train.classes)?;
    apply_transfer(recipe, data)?;
    let norm = Normalization::default();
    let targets = teacher_targets(recipe, ensemble, data, cache_dir, run.json)?;
    let mut objective = Distiller::new(recipe, Some(ensemble), targets, norm)
        .map_err(|e| anyhow::anyhow!("distill: {e}"))?;
    if !recipe.features.is_empty() {
        let [(teacher, _)] = ensemble.members() else {
            bail!("feature pairs match one teacher's values; got an ensemble");
        };
        let matcher = FeatureMatcher::new(
            &recipe.features,
            recipe.hint_epochs,
            teacher,
            trainer.spec(),
            norm,
        )
        .map_err(|e| anyhow::anyhow!("distill: {e}"))?;
        let adapters = matcher.adapters();
        match trainer.adapters() {
            None => trainer.add_adapters(adapters)?,
            Some(a) if a.specs() == adapters.as_slice() => {}
            Some(_) => bail!("the checkpoint's hint regressors do not fit the recipe's pairs"),
        }
        objective = objective.with_features(matcher);
    }
    let Some(test) = fit(trainer, data, &objective, run)? else {
        return stopped(trainer, run);
    };
    let meta = ExportMeta {
        teacher_sha256: (ensemble.members().len() == 1).then(|| shas.to_string()),
        recipe: Some(recipe.to_toml()),
        ..ExportMeta::default()
    };
    write_model(trainer, &run.out, data, meta)?;
    let teachers: Vec<_> = ensemble
        .members()
        .iter()
        .map(|(t, w)| serde_json::json!({"path": t.path(), "sha256": t.sha256(), "weight": w}))
        .collect();
    let mut extra = serde_json::json!({"recipe": recipe, "teachers": teachers});
    if let (Some(e), serde_json::Value::Object(more)) = (extra.as_object_mut(), after(trainer)?) {
        e.extend(more);
    }
    report(trainer, &test, run, extra)
}

/// Options of `tinykd sweep`.
#[derive(clap::Args)]
pub struct SweepArgs {
    #[command(flatten)]
    pair: PairArgs,
    /// Temperatures to try.
    #[arg(long, value_delimiter = ',', default_value = "1,2,4,8")]
    temperatures: Vec<f64>,
    /// α values to try.
    #[arg(long, value_delimiter = ',', default_value = "0.1,0.5,0.9")]
    alphas: Vec<f64>,
    /// Epochs per trial (default: the recipe's).
    #[arg(long)]
    epochs: Option<usize>,
    /// Seed of every trial.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Training images held out for validation (the sweep's score).
    #[arg(long, default_value_t = 5000)]
    val: usize,
    /// Train on only this many of the remaining training images.
    #[arg(long)]
    limit: Option<usize>,
    /// Fashion-MNIST folder.
    #[arg(long, default_value = tinykd::data::DEFAULT_DIR)]
    data_dir: PathBuf,
    /// Where to write the winning recipe (TOML).
    #[arg(long)]
    out: PathBuf,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

/// `tinykd sweep`: a grid over temperature and α, scored on the
/// validation split (never the test set); writes the best recipe.
pub fn sweep(a: &SweepArgs) -> Result<()> {
    let mut base = match &a.pair.recipe {
        Some(p) => Recipe::from_toml_file(p)?,
        None => Recipe::default(),
    };
    if base.method == Method::Scratch {
        bail!("sweep: the recipe's method is scratch, which has no temperature or α");
    }
    base.fit.epochs = a.epochs.unwrap_or(base.fit.epochs);
    if a.pair.teacher_weights.is_some() {
        base.teacher_weights = a.pair.teacher_weights.clone();
    }
    base.fit.seed = a.seed;
    let (ensemble, shas) = load_ensemble(
        &a.pair.teachers,
        base.teacher_weights.as_ref(),
        base.ensemble,
        a.pair.teacher_engine,
    )?;
    let run = RunArgs {
        out: a.out.with_extension("trial.safetensors"),
        val: a.val,
        split_seed: 0,
        limit: a.limit,
        data_dir: a.data_dir.clone(),
        resume: false,
        stop_after: None,
        json: true,
    };
    let mut data = load_data(&run)?;
    if data.split.val.is_empty() {
        bail!("sweep: --val 0 leaves nothing to score the trials on");
    }
    ensemble.check_classes(data.train.classes)?;
    let ensemble = weigh_teachers(
        ensemble,
        base.teacher_weights.as_ref(),
        &data,
        &a.pair.cache_dir,
        a.json,
    )?;
    apply_transfer(&base, &mut data)?;
    let targets = teacher_targets(&base, &ensemble, &data, &a.pair.cache_dir, a.json)?;
    let spec = base.student_view(load_spec(&a.pair.student)?);
    let mut trials = Vec::new();
    for &temperature in &a.temperatures {
        for &alpha in &a.alphas {
            let recipe = Recipe {
                temperature,
                alpha,
                ..base.clone()
            };
            recipe.check().map_err(|e| anyhow::anyhow!("sweep: {e}"))?;
            let targets = match &targets {
                Targets::Cached(l) => Targets::Cached(l.clone()),
                Targets::Live => Targets::Live,
                Targets::None => Targets::None,
            };
            let objective =
                Distiller::new(&recipe, Some(&ensemble), targets, Normalization::default())
                    .map_err(|e| anyhow::anyhow!("sweep: {e}"))?;
            let mut trainer = Trainer::new(spec.clone(), recipe.fit.clone())?;
            let start = std::time::Instant::now();
            run_epochs(
                &mut trainer,
                (&data.transfer, &data.transfer_idx),
                (&data.train, &[]),
                &objective,
                &checkpoint_path(&run.out),
                usize::MAX,
                |_, _| {},
                |_| {},
            )?;
            let val = trainer.evaluate(&data.train, &data.split.val)?;
            if !a.json {
                eprintln!(
                    "T = {temperature:<4} α = {alpha:<4}: validation {:.2}% ({:.0} s)",
                    100.0 * val.accuracy,
                    start.elapsed().as_secs_f64()
                );
            }
            trials.push((recipe, val.accuracy));
        }
    }
    std::fs::remove_file(checkpoint_path(&run.out)).ok();
    let (best, acc) = trials
        .iter()
        .max_by(|x, y| x.1.total_cmp(&y.1))
        .context("sweep: no trials (empty --temperatures or --alphas)")?;
    let text = format!(
        "# Chosen by `tinykd sweep` on the validation split ({:.2}%),\n# teacher sha256 {shas}, student {}.\n{}",
        100.0 * acc,
        spec.name,
        best.to_toml()
    );
    tinykd::tensor_file::write_atomically(&a.out, text.as_bytes())?;
    if a.json {
        let rows: Vec<_> = trials
            .iter()
            .map(|(r, v)| serde_json::json!({"temperature": r.temperature, "alpha": r.alpha, "val_accuracy": v}))
            .collect();
        let out = serde_json::json!({"trials": rows, "best": {"temperature": best.temperature, "alpha": best.alpha, "val_accuracy": acc}, "recipe": a.out});
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        println!(
            "best: T = {}, α = {} ({:.2}% on validation); recipe written to {}",
            best.temperature,
            best.alpha,
            100.0 * acc,
            a.out.display()
        );
    }
    Ok(())
}
