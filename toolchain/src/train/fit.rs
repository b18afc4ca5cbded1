//! The training loop: a network from a spec, seeded initialisation, an
//! objective, the fused optimizer with a learning-rate schedule, epochs over
//! prefetched batches, evaluation, and checkpoints that resume bit for bit.
//! `tinykd train` runs it with cross-entropy; distillation plugs in its own
//! [`Objective`].

use super::adapter::{self, AdapterSpec, Adapters};
use super::checkpoint::{self, Checkpoint, CheckpointError};
use super::model::{Kernels, ModelError, ModelSpec, Network};
use super::optim::{AdamW, AdamWConfig, OptimError, Sgd, SgdConfig};
use crate::data::{Augment, Batch, BatchConfig, DataError, Dataset, LabelMode, Loader};
use crate::quantize::qat::{FakeQuant, SavedRanges};
use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

/// Errors of the training loop.
#[derive(Debug, thiserror::Error)]
pub enum FitError {
    /// A tensor op failed.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    /// The model spec is invalid.
    #[error(transparent)]
    Model(#[from] ModelError),
    /// The optimizer rejected its config or state.
    #[error(transparent)]
    Optim(#[from] OptimError),
    /// Reading or batching the data failed.
    #[error(transparent)]
    Data(#[from] DataError),
    /// A checkpoint could not be written or read.
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    /// Setting up quantization-aware training failed.
    #[error("quantization-aware training: {0}")]
    Qat(#[from] crate::quantize::QuantizeError),
    /// Settings that cannot work together.
    #[error("invalid training config: {0}")]
    Config(String),
    /// The loss stopped being a number.
    #[error("epoch {epoch}, batch {batch}: the loss is {loss} (lower the learning rate?)")]
    Diverged {
        /// 1-based epoch.
        epoch: usize,
        /// Batch within the epoch.
        batch: usize,
        /// The loss value.
        loss: f32,
    },
}

/// Which optimizer updates the parameters.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum OptimizerKind {
    /// AdamW with decoupled weight decay.
    Adamw,
    /// SGD with (Nesterov) momentum and L2 weight decay.
    Sgd,
}

/// How the learning rate evolves over the run.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum Schedule {
    /// The same rate throughout.
    Constant,
    /// Cosine decay from the base rate to 0 over all steps.
    Cosine,
    /// Multiplied by `gamma` every `every` epochs.
    Step {
        /// Epochs between decays.
        every: usize,
        /// Decay factor.
        gamma: f64,
    },
}

impl Schedule {
    /// The rate at `step` of `total` steps, `steps_per_epoch` per epoch.
    pub fn rate(&self, base: f64, step: usize, total: usize, steps_per_epoch: usize) -> f64 {
        match *self {
            Schedule::Constant => base,
            Schedule::Cosine => {
                let t = step as f64 / total.max(1) as f64;
                base * 0.5 * (1.0 + (std::f64::consts::PI * t).cos())
            }
            Schedule::Step { every, gamma } => {
                let epoch = step / steps_per_epoch.max(1);
                base * gamma.powi((epoch / every.max(1)) as i32)
            }
        }
    }
}

/// Everything that determines a training run (with the spec and the data).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FitConfig {
    /// Passes over the training set.
    pub epochs: usize,
    /// Images per step.
    pub batch_size: usize,
    /// The optimizer.
    pub optimizer: OptimizerKind,
    /// Base learning rate.
    pub lr: f64,
    /// Weight decay (decoupled for AdamW, L2 for SGD).
    pub weight_decay: f64,
    /// SGD momentum (ignored by AdamW).
    pub momentum: f64,
    /// Learning-rate schedule.
    pub schedule: Schedule,
    /// Seed of the initial weights, the shuffles and the augmentation.
    pub seed: u64,
    /// Augmentation of the training batches.
    pub augment: Augment,
    /// Layer kernels (tinykd's fast ops or candle's own).
    pub kernels: Kernels,
    /// Never read the training labels (a transfer set labelled by the
    /// teacher alone).
    pub unlabeled: bool,
}

impl Default for FitConfig {
    fn default() -> Self {
        Self {
            epochs: 10,
            batch_size: 128,
            optimizer: OptimizerKind::Adamw,
            lr: 1e-3,
            weight_decay: 0.0,
            momentum: 0.9,
            schedule: Schedule::Cosine,
            seed: 0,
            augment: Augment::default(),
            kernels: Kernels::Fast,
            unlabeled: false,
        }
    }
}

/// What the student computed for one batch, as an objective sees it.
pub struct StudentPass<'a> {
    /// Logits `[N, classes]`.
    pub logits: Tensor,
    /// Outputs of the layers in [`Objective::taps`], in that order.
    pub features: Vec<Tensor>,
    /// The epoch being trained, from 0 (staged objectives switch on it).
    pub epoch: usize,
    adapters: Option<&'a Adapters>,
}

impl<'a> StudentPass<'a> {
    /// A pass with logits only.
    pub fn logits(logits: Tensor) -> Self {
        Self {
            logits,
            features: Vec::new(),
            epoch: 0,
            adapters: None,
        }
    }

    /// `x` through the trainer's adapter `name` (see [`Trainer::add_adapters`]).
    pub fn adapt(&self, name: &str, x: &Tensor) -> candle_core::Result<Tensor> {
        self.adapters
            .ok_or_else(|| candle_core::Error::Msg(format!("no adapter {name}: none were added")))?
            .apply(name, x)
    }
}

/// A training objective: the loss of one batch.
pub trait Objective {
    /// The scalar loss of the student's `pass` over `batch`.
    fn loss(&self, pass: &StudentPass, batch: &Batch) -> candle_core::Result<Tensor>;

    /// Spec layers whose outputs the loss reads (see [`Network::check_taps`]).
    fn taps(&self) -> Vec<usize> {
        Vec::new()
    }
}

/// Cross-entropy with the batch's labels.
pub struct CrossEntropy;

impl Objective for CrossEntropy {
    fn loss(&self, pass: &StudentPass, batch: &Batch) -> candle_core::Result<Tensor> {
        let labels = batch
            .labels
            .as_ref()
            .ok_or_else(|| candle_core::Error::Msg("cross-entropy needs labels".into()))?;
        let y = Tensor::from_slice(labels, labels.len(), pass.logits.device())?;
        candle_nn::loss::cross_entropy(&pass.logits, &y)
    }
}

/// Figures of one finished epoch.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EpochStats {
    /// 1-based epoch number.
    pub epoch: usize,
    /// Learning rate at the epoch's last step.
    pub lr: f64,
    /// Mean training loss over the epoch's batches.
    pub train_loss: f64,
    /// Training accuracy (on the augmented batches, while training).
    pub train_accuracy: f64,
    /// Validation loss, when a validation set was given.
    pub val_loss: Option<f64>,
    /// Validation accuracy, when a validation set was given.
    pub val_accuracy: Option<f64>,
    /// Wall time of the training pass.
    pub seconds: f64,
    /// Training throughput.
    pub images_per_second: f64,
}

/// Loss and accuracy of a model on a set of images.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Evaluation {
    /// Mean cross-entropy.
    pub loss: f64,
    /// Fraction of correct top-1 predictions.
    pub accuracy: f64,
    /// Correct predictions.
    pub correct: usize,
    /// Images evaluated.
    pub total: usize,
}

/// Progress within an epoch, for progress bars.
#[derive(Clone, Copy, Debug)]
pub struct Progress {
    /// Batches done.
    pub batch: usize,
    /// Batches in the epoch.
    pub batches: usize,
    /// Mean loss so far.
    pub loss: f64,
    /// Accuracy so far.
    pub accuracy: f64,
}

/// Either fused optimizer behind one interface.
enum Optimizer {
    AdamW(AdamW),
    Sgd(Sgd),
}

impl Optimizer {
    fn new(vars: Vec<Var>, cfg: &FitConfig) -> Result<Self, OptimError> {
        Ok(match cfg.optimizer {
            OptimizerKind::Adamw => Optimizer::AdamW(AdamW::new(
                vars,
                AdamWConfig {
                    lr: cfg.lr,
                    weight_decay: cfg.weight_decay,
                    ..AdamWConfig::default()
                },
            )?),
            OptimizerKind::Sgd => Optimizer::Sgd(Sgd::new(
                vars,
                SgdConfig {
                    lr: cfg.lr,
                    momentum: cfg.momentum,
                    weight_decay: cfg.weight_decay,
                    nesterov: cfg.momentum > 0.0,
                    ..SgdConfig::default()
                },
            )?),
        })
    }

    fn step(&mut self, grads: &candle_core::backprop::GradStore) -> Result<(), OptimError> {
        match self {
            Optimizer::AdamW(o) => o.step(grads),
            Optimizer::Sgd(o) => o.step(grads),
        }
    }

    fn set_learning_rate(&mut self, lr: f64) {
        match self {
            Optimizer::AdamW(o) => o.set_learning_rate(lr),
            Optimizer::Sgd(o) => o.set_learning_rate(lr),
        }
    }

    fn state(&self) -> Vec<(String, Vec<f32>)> {
        match self {
            Optimizer::AdamW(o) => o.state(),
            Optimizer::Sgd(o) => o.state(),
        }
    }

    fn load_state(&mut self, state: &[(String, Vec<f32>)]) -> Result<(), OptimError> {
        match self {
            Optimizer::AdamW(o) => o.load_state(state),
            Optimizer::Sgd(o) => o.load_state(state),
        }
    }
}

/// The checkpoint tag holding the fake-quantization ranges of a QAT run.
const QAT_TAG: &str = "qat_ranges";

/// The checkpoint tag holding the adapters' shapes.
const ADAPTERS_TAG: &str = "adapters";

/// A model being trained, with its optimizer and history.
pub struct Trainer {
    spec: ModelSpec,
    cfg: FitConfig,
    varmap: VarMap,
    net: Network,
    opt: Optimizer,
    history: Vec<EpochStats>,
    tags: std::collections::BTreeMap<String, String>,
    /// 0/1 masks by parameter name, multiplied into their parameters after
    /// every optimizer step (pruned weights stay zero); empty: none.
    masks: Vec<(String, Tensor)>,
    /// Projections the objective trains alongside the network (not exported).
    adapters: Option<Adapters>,
}

/// An epoch in progress: its position and running figures.
pub struct EpochRun {
    epoch: usize,
    per_epoch: usize,
    start: Instant,
    loss_sum: f64,
    correct: usize,
    seen: usize,
    lr: f64,
}

impl EpochRun {
    /// The epoch being trained, from 0.
    pub fn epoch(&self) -> usize {
        self.epoch
    }

    /// Progress after the batches done so far.
    pub fn progress(&self, batch: usize) -> Progress {
        Progress {
            batch,
            batches: self.per_epoch,
            loss: self.loss_sum / self.seen.max(1) as f64,
            accuracy: self.correct as f64 / self.seen.max(1) as f64,
        }
    }
}

impl Trainer {
    /// A fresh model for `spec`, its weights drawn from `cfg.seed`.
    pub fn new(spec: ModelSpec, cfg: FitConfig) -> Result<Self, FitError> {
        if cfg.batch_size == 0 || cfg.epochs == 0 {
            return Err(FitError::Config("epochs and batch size must be ≥ 1".into()));
        }
        if !(cfg.lr.is_finite() && cfg.lr > 0.0) {
            return Err(FitError::Config(format!(
                "learning rate {} must be > 0",
                cfg.lr
            )));
        }
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
        let net = Network::new(&spec, vb, cfg.kernels)?;
        super::init::reinit(&varmap, cfg.seed)?;
        let opt = Optimizer::new(sorted_vars(&varmap), &cfg)?;
        Ok(Self {
            spec,
            cfg,
            varmap,
            net,
            opt,
            history: Vec::new(),
            tags: Default::default(),
            masks: Vec::new(),
            adapters: None,
        })
    }

    /// A model for `spec` starting from `params` (every parameter, by
    /// name, with the network's shapes) instead of random weights.
    pub fn from_parameters(
        spec: ModelSpec,
        cfg: FitConfig,
        params: &[(String, Tensor)],
    ) -> Result<Self, FitError> {
        let t = Self::new(spec, cfg)?;
        let values = params
            .iter()
            .map(|(k, v)| Ok((k.clone(), v.flatten_all()?.to_vec1::<f32>()?)))
            .collect::<candle_core::Result<Vec<_>>>()?;
        checkpoint::restore_params(Path::new("<parameters>"), &t.varmap, &values)?;
        Ok(t)
    }

    /// Adds trainable projections for the objective ([`StudentPass::adapt`]),
    /// drawn from the run's seed; saved in checkpoints and restored on
    /// resume. Only before the first epoch: the optimizer starts afresh.
    pub fn add_adapters(&mut self, specs: Vec<AdapterSpec>) -> Result<(), FitError> {
        if self.adapters.is_some() || !self.history.is_empty() {
            return Err(FitError::Config(
                "adapters are added once, before training".into(),
            ));
        }
        let adapters = Adapters::new(specs, self.cfg.seed)?;
        let mut vars = sorted_vars(&self.varmap);
        vars.extend(adapters.vars());
        self.opt = Optimizer::new(vars, &self.cfg)?;
        self.adapters = Some(adapters);
        Ok(())
    }

    /// The adapters added with [`Trainer::add_adapters`].
    pub fn adapters(&self) -> Option<&Adapters> {
        self.adapters.as_ref()
    }

    /// Keeps parameters masked from now on: each `(name, mask)` is
    /// multiplied into the parameter `name` at once and after every
    /// optimizer step (so zeros stay zero); saved in checkpoints.
    pub fn set_masks(&mut self, masks: Vec<(String, Tensor)>) -> Result<(), FitError> {
        self.masks = masks;
        self.apply_masks()
    }

    /// The masks set with [`Trainer::set_masks`].
    pub fn masks(&self) -> &[(String, Tensor)] {
        &self.masks
    }

    fn apply_masks(&self) -> Result<(), FitError> {
        if self.masks.is_empty() {
            return Ok(());
        }
        let data = self.varmap.data().lock().expect("varmap lock");
        for (name, mask) in &self.masks {
            let var = data
                .get(name)
                .ok_or_else(|| FitError::Config(format!("mask for unknown parameter {name}")))?;
            var.set(&var.as_tensor().mul(mask)?)?;
        }
        Ok(())
    }

    /// Trains quantization-aware from now on: the network fake-quantizes
    /// its weights and activations as the int8 export will (see
    /// [`crate::quantize::qat`]), learning activation ranges as it goes;
    /// the ranges are saved in checkpoints.
    pub fn enable_qat(&mut self) -> Result<(), FitError> {
        let points = FakeQuant::for_model(&self.spec, &self.parameters())?;
        self.net.set_fake_quant(points)?;
        Ok(())
    }

    /// Continues the run saved in the checkpoint at `path`; `epochs`, if
    /// given, replaces the total number of epochs (to extend a run).
    pub fn resume(path: &Path, epochs: Option<usize>) -> Result<Self, FitError> {
        let ck = checkpoint::load(path)?;
        let mut cfg = ck.config.clone();
        if let Some(e) = epochs {
            cfg.epochs = e;
        }
        let mut t = Self::new(ck.spec.clone(), cfg)?;
        let invalid = |reason: String| CheckpointError::Invalid {
            path: path.into(),
            reason,
        };
        if let Some(text) = ck.tags.get(ADAPTERS_TAG) {
            let specs: Vec<AdapterSpec> =
                serde_json::from_str(text).map_err(|e| invalid(format!("adapter shapes: {e}")))?;
            t.add_adapters(specs)?;
        }
        let (adapted, params): (Vec<_>, Vec<_>) = ck
            .params
            .iter()
            .cloned()
            .partition(|(k, _)| k.starts_with(adapter::PREFIX));
        checkpoint::restore_params(path, &t.varmap, &params)?;
        if let Some(a) = &t.adapters {
            let adapted: Vec<_> = adapted
                .into_iter()
                .map(|(k, v)| (k[adapter::PREFIX.len()..].to_string(), v))
                .collect();
            checkpoint::restore_params(path, a.varmap(), &adapted)?;
        } else if !adapted.is_empty() {
            return Err(invalid("adapter parameters without their shapes".into()).into());
        }
        t.opt
            .load_state(&ck.optimizer)
            .map_err(|e| CheckpointError::Invalid {
                path: path.into(),
                reason: format!("optimizer state: {e}"),
            })?;
        t.history = ck.history;
        t.tags = ck.tags;
        t.tags.remove(ADAPTERS_TAG);
        if let Some(text) = t.tags.remove(QAT_TAG) {
            let bad = |reason: String| CheckpointError::Invalid {
                path: path.into(),
                reason,
            };
            let saved: SavedRanges = serde_json::from_str(&text)
                .map_err(|e| bad(format!("fake-quantization ranges: {e}")))?;
            t.enable_qat()?;
            let points = t.net.fake_quant().expect("just enabled");
            points.restore(&saved).map_err(|e| bad(e.to_string()))?;
        }
        let masks = ck
            .masks
            .iter()
            .map(|(k, v)| {
                let dims = t
                    .parameter_dims(k)
                    .ok_or_else(|| CheckpointError::Invalid {
                        path: path.into(),
                        reason: format!("mask for unknown parameter {k}"),
                    })?;
                Ok((k.clone(), Tensor::from_slice(v, dims, &Device::Cpu)?))
            })
            .collect::<Result<Vec<_>, FitError>>()?;
        t.set_masks(masks)?;
        Ok(t)
    }

    /// The model spec.
    pub fn spec(&self) -> &ModelSpec {
        &self.spec
    }

    /// The run's settings.
    pub fn config(&self) -> &FitConfig {
        &self.cfg
    }

    /// Attaches a note that is saved in checkpoints and restored on
    /// resume (e.g. the distillation recipe and the teachers' hashes).
    pub fn set_tag(&mut self, key: &str, value: String) {
        self.tags.insert(key.into(), value);
    }

    /// A note set with [`Trainer::set_tag`].
    pub fn tag(&self, key: &str) -> Option<&str> {
        self.tags.get(key).map(String::as_str)
    }

    /// The finished epochs.
    pub fn history(&self) -> &[EpochStats] {
        &self.history
    }

    /// Epochs finished so far.
    pub fn epochs_done(&self) -> usize {
        self.history.len()
    }

    /// The network, for inference.
    pub fn network(&self) -> &Network {
        &self.net
    }

    fn parameter_dims(&self, name: &str) -> Option<Vec<usize>> {
        let data = self.varmap.data().lock().expect("varmap lock");
        data.get(name).map(|v| v.dims().to_vec())
    }

    /// The parameters by name, sorted.
    pub fn parameters(&self) -> Vec<(String, Tensor)> {
        let data = self.varmap.data().lock().expect("varmap lock");
        let mut v: Vec<_> = data
            .iter()
            .map(|(k, var)| (k.clone(), var.as_tensor().clone()))
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    /// Reshapes a batch's pixels to the spec's input shape.
    fn input(&self, batch: &Batch) -> candle_core::Result<Tensor> {
        let mut shape = vec![batch.len()];
        shape.extend(&self.spec.input);
        Tensor::from_slice(&batch.x, shape, &Device::Cpu)
    }

    /// Trains one epoch over `indices` of `data` and records it (without
    /// validation figures; see [`Trainer::record_validation`]).
    pub fn train_epoch(
        &mut self,
        data: &Arc<Dataset>,
        indices: &[usize],
        objective: &dyn Objective,
        mut progress: impl FnMut(Progress),
    ) -> Result<EpochStats, FitError> {
        let taps = objective.taps();
        self.net.check_taps(&taps)?;
        let (batches, mut run) = self.begin_epoch(data, indices)?;
        for (i, batch) in batches.enumerate() {
            self.set_step(&mut run, i);
            let pass = self.forward(&batch, &taps, run.epoch)?;
            let loss = objective.loss(&pass, &batch)?;
            self.step(&mut run, &batch, &pass.logits, &loss)?;
            progress(run.progress(i + 1));
        }
        Ok(self.end_epoch(run))
    }

    /// The next epoch's batches (the same for every trainer with this
    /// seed, batch size and augmentation) and its running figures.
    pub fn begin_epoch(
        &self,
        data: &Arc<Dataset>,
        indices: &[usize],
    ) -> Result<(crate::data::Prefetch, EpochRun), FitError> {
        let epoch = self.history.len();
        let batching = BatchConfig {
            augment: self.cfg.augment,
            labels: if self.cfg.unlabeled {
                LabelMode::Unlabeled
            } else {
                LabelMode::Labeled
            },
            ..BatchConfig::train(self.cfg.batch_size, self.cfg.seed)
        };
        let batches = Loader::default().epoch(data, indices, epoch as u64, &batching)?;
        let run = self.start_epoch(batches.len());
        Ok((batches, run))
    }

    /// The running figures of the next epoch, of `per_epoch` batches
    /// chosen elsewhere (e.g. another trainer's, in mutual learning).
    pub fn start_epoch(&self, per_epoch: usize) -> EpochRun {
        EpochRun {
            epoch: self.history.len(),
            per_epoch,
            start: Instant::now(),
            loss_sum: 0.0,
            correct: 0,
            seen: 0,
            lr: self.cfg.lr,
        }
    }

    /// Sets the scheduled learning rate of batch `i` of `run`.
    pub fn set_step(&mut self, run: &mut EpochRun, i: usize) {
        let total = run.per_epoch * self.cfg.epochs;
        run.lr = self.cfg.schedule.rate(
            self.cfg.lr,
            run.epoch * run.per_epoch + i,
            total,
            run.per_epoch,
        );
        self.opt.set_learning_rate(run.lr);
    }

    /// The network's training pass over `batch`, with the outputs of `taps`.
    pub fn forward(
        &self,
        batch: &Batch,
        taps: &[usize],
        epoch: usize,
    ) -> Result<StudentPass<'_>, FitError> {
        let (logits, features) = self.net.forward_tapped(&self.input(batch)?, taps)?;
        Ok(StudentPass {
            logits,
            features,
            epoch,
            adapters: self.adapters.as_ref(),
        })
    }

    /// One optimizer step on `loss` (of `logits` for `batch`), counted in `run`.
    pub fn step(
        &mut self,
        run: &mut EpochRun,
        batch: &Batch,
        logits: &Tensor,
        loss: &Tensor,
    ) -> Result<(), FitError> {
        let value = loss.to_scalar::<f32>()?;
        if !value.is_finite() {
            return Err(FitError::Diverged {
                epoch: run.epoch + 1,
                batch: batch.index,
                loss: value,
            });
        }
        let grads = loss.backward()?;
        self.opt.step(&grads)?;
        self.apply_masks()?;
        run.loss_sum += value as f64 * batch.len() as f64;
        run.seen += batch.len();
        if let Some(labels) = &batch.labels {
            run.correct += count_correct(logits, labels)?;
        }
        Ok(())
    }

    /// Records the finished epoch `run`.
    pub fn end_epoch(&mut self, run: EpochRun) -> EpochStats {
        let seconds = run.start.elapsed().as_secs_f64();
        let stats = EpochStats {
            epoch: run.epoch + 1,
            lr: run.lr,
            train_loss: run.loss_sum / run.seen.max(1) as f64,
            train_accuracy: run.correct as f64 / run.seen.max(1) as f64,
            val_loss: None,
            val_accuracy: None,
            seconds,
            images_per_second: run.seen as f64 / seconds.max(1e-9),
        };
        self.history.push(stats.clone());
        stats
    }

    /// Adds validation figures to the last finished epoch.
    pub fn record_validation(&mut self, eval: &Evaluation) {
        if let Some(last) = self.history.last_mut() {
            last.val_loss = Some(eval.loss);
            last.val_accuracy = Some(eval.accuracy);
        }
    }

    /// Cross-entropy and accuracy on `indices` of a labeled `data`.
    pub fn evaluate(&self, data: &Arc<Dataset>, indices: &[usize]) -> Result<Evaluation, FitError> {
        evaluate(&self.net, &self.spec, data, indices)
    }

    /// Writes the run's state (weights, optimizer, history, settings) to
    /// `path`, atomically.
    pub fn save_checkpoint(&self, path: &Path) -> Result<(), FitError> {
        let mut tags = self.tags.clone();
        if let Some(points) = self.net.fake_quant() {
            let text = serde_json::to_string(&points.saved())
                .map_err(|e| FitError::Config(format!("fake-quantization ranges: {e}")))?;
            tags.insert(QAT_TAG.into(), text);
        }
        let mut params = self.parameters();
        if let Some(a) = &self.adapters {
            let text = serde_json::to_string(a.specs())
                .map_err(|e| FitError::Config(format!("adapter shapes: {e}")))?;
            tags.insert(ADAPTERS_TAG.into(), text);
            params.extend(a.parameters());
        }
        let ck = Checkpoint {
            spec: self.spec.clone(),
            config: self.cfg.clone(),
            history: self.history.clone(),
            tags,
            params: Vec::new(),
            optimizer: self.opt.state(),
            masks: self
                .masks
                .iter()
                .map(|(k, m)| Ok((k.clone(), m.flatten_all()?.to_vec1::<f32>()?)))
                .collect::<candle_core::Result<_>>()?,
        };
        checkpoint::save(path, &ck, &params)?;
        Ok(())
    }
}

/// Trains `trainer` on `train` of `data` until `until` epochs (at most its
/// configured number) are done: each epoch is followed by validation on
/// `val` of `val_data` (if any) and a
/// checkpoint at `checkpoint`, so a killed (or stopped) run resumes from the
/// last finished epoch. `on_batch` sees the progress within an epoch,
/// `on_epoch` each result.
#[allow(clippy::too_many_arguments)]
pub fn run_epochs(
    trainer: &mut Trainer,
    (data, train): (&Arc<Dataset>, &[usize]),
    (val_data, val): (&Arc<Dataset>, &[usize]),
    objective: &dyn Objective,
    checkpoint: &Path,
    until: usize,
    mut on_batch: impl FnMut(usize, Progress),
    mut on_epoch: impl FnMut(&EpochStats),
) -> Result<(), FitError> {
    while trainer.epochs_done() < until.min(trainer.config().epochs) {
        let epoch = trainer.epochs_done() + 1;
        trainer.train_epoch(data, train, objective, |p| on_batch(epoch, p))?;
        if !val.is_empty() {
            let eval = trainer.evaluate(val_data, val)?;
            trainer.record_validation(&eval);
        }
        trainer.save_checkpoint(checkpoint)?;
        on_epoch(trainer.history().last().expect("an epoch ran"));
    }
    Ok(())
}

/// Cross-entropy and accuracy of `net` on `indices` of a labeled `data`.
pub fn evaluate(
    net: &Network,
    spec: &ModelSpec,
    data: &Arc<Dataset>,
    indices: &[usize],
) -> Result<Evaluation, FitError> {
    let (mut loss_sum, mut correct) = (0f64, 0usize);
    for batch in Loader::default().epoch(data, indices, 0, &BatchConfig::eval(1000))? {
        let mut shape = vec![batch.len()];
        shape.extend(&spec.input);
        let logits = net.forward(&Tensor::from_slice(&batch.x, shape, &Device::Cpu)?)?;
        let pass = StudentPass::logits(logits);
        let loss = CrossEntropy.loss(&pass, &batch)?.to_scalar::<f32>()?;
        let logits = pass.logits;
        loss_sum += loss as f64 * batch.len() as f64;
        let labels = batch.labels.as_ref().expect("eval batches are labeled");
        correct += count_correct(&logits, labels)?;
    }
    let total = indices.len();
    Ok(Evaluation {
        loss: loss_sum / total.max(1) as f64,
        accuracy: correct as f64 / total.max(1) as f64,
        correct,
        total,
    })
}

/// Top-1 hits of `logits` `[N, classes]` against `labels`.
fn count_correct(logits: &Tensor, labels: &[u32]) -> candle_core::Result<usize> {
    let predicted = logits.argmax(1)?.to_vec1::<u32>()?;
    Ok(predicted.iter().zip(labels).filter(|(p, y)| p == y).count())
}

/// The vars of `varmap` in name order, so the optimizer's slots (and its
/// checkpointed state) line up across runs; `VarMap` itself is a `HashMap`.
fn sorted_vars(varmap: &VarMap) -> Vec<Var> {
    let data = varmap.data().lock().expect("varmap lock");
    let mut named: Vec<_> = data.iter().collect();
    named.sort_by(|a, b| a.0.cmp(b.0));
    named.into_iter().map(|(_, v)| v.clone()).collect()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::train::model::Layer;

    /// 300 labeled 8×8 images whose class shows in their brightness, so a
    /// model can learn them.
    pub(crate) fn tiny_data() -> Arc<Dataset> {
        let (n, mut s) = (300usize, 0x1234_5678u64);
        let mut images = Vec::with_capacity(n * 64);
        let mut labels = Vec::with_capacity(n);
        for i in 0..n {
            let class = (i % 3) as u8;
            labels.push(class);
            for _ in 0..64 {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                images.push((class as u64 * 90 + s % 60) as u8);
            }
        }
        let names = ["a", "b", "c"].map(String::from).to_vec();
        Arc::new(Dataset::new(images, labels, 8, 8, names).unwrap())
    }

    pub(crate) fn tiny_cnn() -> ModelSpec {
        ModelSpec {
            name: "tiny-cnn".into(),
            input: vec![1, 8, 8],
            layers: vec![
                Layer::Conv {
                    filters: 4,
                    kernel: 3,
                    stride: 1,
                    padding: 1,
                },
                Layer::Relu,
                Layer::MaxPool { size: 2 },
                Layer::Flatten,
                Layer::Dense { units: 3 },
            ],
        }
    }

    pub(crate) fn tiny_mlp() -> ModelSpec {
        ModelSpec {
            name: "tiny-mlp".into(),
            input: vec![64],
            layers: vec![
                Layer::Dense { units: 16 },
                Layer::Relu,
                Layer::Dense { units: 3 },
            ],
        }
    }

    pub(crate) fn config(optimizer: OptimizerKind) -> FitConfig {
        FitConfig {
            epochs: 3,
            batch_size: 32,
            optimizer,
            lr: 0.01,
            seed: 5,
            augment: Augment {
                shift: 1,
                ..Augment::default()
            },
            ..FitConfig::default()
        }
    }

    fn bits(t: &Trainer) -> Vec<(String, Vec<u32>)> {
        t.parameters()
            .into_iter()
            .map(|(k, v)| {
                let v = v.flatten_all().unwrap().to_vec1::<f32>().unwrap();
                (k, v.iter().map(|x| x.to_bits()).collect())
            })
            .collect()
    }

    pub(crate) fn temp(name: &str) -> std::path::PathBuf {
        std::env::temp_dir().join(format!("tinykd-fit-{}-{name}", std::process::id()))
    }

    #[test]
    fn learns_and_resume_gives_bit_identical_weights() -> Result<(), FitError> {
        let data = tiny_data();
        let idx: Vec<usize> = (0..data.len()).collect();
        for (spec, opt) in [
            (tiny_cnn(), OptimizerKind::Adamw),
            (tiny_mlp(), OptimizerKind::Sgd),
        ] {
            let mut whole = Trainer::new(spec.clone(), config(opt))?;
            for _ in 0..3 {
                whole.train_epoch(&data, &idx, &CrossEntropy, |_| {})?;
            }
            let eval = whole.evaluate(&data, &idx)?;
            assert!(
                eval.accuracy > 0.6,
                "{}: accuracy {}",
                spec.name,
                eval.accuracy
            );

            let path = temp(&format!("{}.ckpt", spec.name));
            let mut first = Trainer::new(spec.clone(), config(opt))?;
            first.train_epoch(&data, &idx, &CrossEntropy, |_| {})?;
            first.save_checkpoint(&path)?;
            drop(first);
            let mut resumed = Trainer::resume(&path, None)?;
            assert_eq!(resumed.epochs_done(), 1);
            while resumed.epochs_done() < 3 {
                resumed.train_epoch(&data, &idx, &CrossEntropy, |_| {})?;
            }
            std::fs::remove_file(&path).ok();
            assert!(
                bits(&whole) == bits(&resumed),
                "{}: resumed weights differ",
                spec.name
            );
            assert_eq!(whole.history().len(), resumed.history().len());
        }
        Ok(())
    }

    /// Pulls the tiny CNN's first block, through an adapter, towards a
    /// fixed target: the adapter's parameters train and resume with the run.
    struct ToTarget;

    impl Objective for ToTarget {
        fn loss(&self, pass: &StudentPass, _: &Batch) -> candle_core::Result<Tensor> {
            let h = pass.adapt("a", &pass.features[0])?;
            (h - 0.5)?.sqr()?.mean_all()
        }

        fn taps(&self) -> Vec<usize> {
            vec![2]
        }
    }

    #[test]
    fn adapters_train_and_resume_bit_identical_and_fused_layers_cannot_be_tapped(
    ) -> Result<(), FitError> {
        let data = tiny_data();
        let idx: Vec<usize> = (0..data.len()).collect();
        let adapter = || {
            vec![AdapterSpec {
                name: "a".into(),
                inputs: 4,
                outputs: 6,
            }]
        };
        let mut whole = Trainer::new(tiny_cnn(), config(OptimizerKind::Adamw))?;
        whole.add_adapters(adapter())?;
        let first = whole.train_epoch(&data, &idx, &ToTarget, |_| {})?;
        let second = whole.train_epoch(&data, &idx, &ToTarget, |_| {})?;
        assert!(
            second.train_loss < 0.5 * first.train_loss,
            "{first:?} {second:?}"
        );
        let path = temp("adapters.ckpt");
        let mut part = Trainer::new(tiny_cnn(), config(OptimizerKind::Adamw))?;
        part.add_adapters(adapter())?;
        part.train_epoch(&data, &idx, &ToTarget, |_| {})?;
        part.save_checkpoint(&path)?;
        let mut resumed = Trainer::resume(&path, None)?;
        std::fs::remove_file(&path).ok();
        resumed.train_epoch(&data, &idx, &ToTarget, |_| {})?;
        assert!(bits(&whole) == bits(&resumed));
        let adapter_bits = |t: &Trainer| -> Vec<Vec<f32>> {
            t.adapters()
                .unwrap()
                .parameters()
                .iter()
                .map(|(_, v)| v.flatten_all().unwrap().to_vec1().unwrap())
                .collect()
        };
        assert_eq!(adapter_bits(&whole), adapter_bits(&resumed));
        assert!(whole.add_adapters(adapter()).is_err());
        // conv + ReLU + pool run as one op: the ReLU's output is not there.
        let err = whole.network().check_taps(&[1]).unwrap_err().to_string();
        assert!(err.contains("layer 1") && err.contains("layer 2"), "{err}");
        assert!(whole.network().check_taps(&[2, 4]).is_ok());
        Ok(())
    }

    #[test]
    fn same_seed_same_run_other_seed_other_run() -> Result<(), FitError> {
        let data = tiny_data();
        let idx: Vec<usize> = (0..data.len()).collect();
        let run = |seed| -> Result<_, FitError> {
            let mut t = Trainer::new(
                tiny_mlp(),
                FitConfig {
                    seed,
                    ..config(OptimizerKind::Adamw)
                },
            )?;
            t.train_epoch(&data, &idx, &CrossEntropy, |_| {})?;
            Ok(bits(&t))
        };
        assert!(run(1)? == run(1)?);
        assert!(run(1)? != run(2)?);
        Ok(())
    }

    #[test]
    fn damaged_checkpoint_is_a_clear_error() {
        let path = temp("damaged.ckpt");
        std::fs::write(&path, b"\x10\x00\x00\x00\x00\x00\x00\x00{\"a\":").unwrap();
        let err = Trainer::resume(&path, None).err().expect("must fail");
        std::fs::remove_file(&path).ok();
        let msg = err.to_string();
        assert!(
            msg.contains("damaged.ckpt") && msg.contains("invalid checkpoint"),
            "{msg}"
        );
        let missing = Trainer::resume(&temp("missing.ckpt"), None)
            .err()
            .expect("must fail");
        assert!(missing.to_string().contains("missing.ckpt"), "{missing}");
    }

    #[test]
    fn schedules() {
        assert_eq!(Schedule::Constant.rate(0.1, 50, 100, 10), 0.1);
        assert!((Schedule::Cosine.rate(0.1, 50, 100, 10) - 0.05).abs() < 1e-12);
        assert!(Schedule::Cosine.rate(0.1, 100, 100, 10).abs() < 1e-12);
        let step = Schedule::Step {
            every: 2,
            gamma: 0.5,
        };
        assert_eq!(step.rate(0.1, 39, 100, 10), 0.05);
        assert_eq!(step.rate(0.1, 40, 100, 10), 0.025);
    }
}
