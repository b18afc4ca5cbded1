//! The distillation objective: a recipe's loss between the student's
//! logits and the teachers' outputs for the same images, plugged into the
//! training loop as an [`Objective`].

use super::features::FeatureMatcher;
use super::loss;
use super::recipe::{Method, Recipe, TeacherView};
use crate::data::{Batch, Normalization};
use crate::teacher::{combine, Ensemble, Logits};
use crate::train::fit::{Objective, StudentPass};
use candle_core::{Device, Result, Tensor};

/// Where the teachers' outputs for a batch come from.
pub enum Targets {
    /// No teacher (the scratch baseline).
    None,
    /// Per-member logits over the training set, looked up by dataset index.
    Cached(Vec<Logits>),
    /// The members run on each batch (the images the student sees).
    Live,
}

/// A recipe's loss against an ensemble of teachers (one teacher is an
/// ensemble of one).
pub struct Distiller<'a> {
    recipe: &'a Recipe,
    teachers: Option<&'a Ensemble>,
    targets: Targets,
    /// How the batches were normalised (members may expect another).
    data_norm: Normalization,
    /// Feature pairs matched besides the logits.
    features: Option<FeatureMatcher>,
}

fn msg(e: impl std::fmt::Display) -> candle_core::Error {
    candle_core::Error::Msg(e.to_string())
}

impl<'a> Distiller<'a> {
    /// An objective for `recipe`; `teachers` and `targets` must fit its
    /// method and teacher view (checked here).
    pub fn new(
        recipe: &'a Recipe,
        teachers: Option<&'a Ensemble>,
        targets: Targets,
        data_norm: Normalization,
    ) -> std::result::Result<Self, String> {
        let needs_teacher = recipe.method != Method::Scratch;
        match (&targets, teachers, needs_teacher) {
            (Targets::None, _, false) => {}
            (Targets::Cached(l), Some(t), true) if l.len() == t.members().len() => {}
            (Targets::Live, Some(_), true) if recipe.teacher_view == TeacherView::Live => {}
            _ => {
                return Err(format!(
                    "method {:?} with teacher view {:?} needs {} teacher outputs",
                    recipe.method,
                    recipe.teacher_view,
                    if needs_teacher { "matching" } else { "no" }
                ))
            }
        }
        Ok(Self {
            recipe,
            teachers,
            targets,
            data_norm,
            features: None,
        })
    }

    /// Also matches the feature pairs of `matcher` (see [`super::features`]).
    pub fn with_features(mut self, matcher: FeatureMatcher) -> Self {
        self.features = Some(matcher);
        self
    }

    /// Each member's logits `[n, classes]` for the batch.
    fn member_logits(&self, batch: &Batch) -> Result<Vec<Vec<f32>>> {
        let teachers = self.teachers.ok_or_else(|| msg("no teacher"))?;
        match &self.targets {
            Targets::Cached(all) => all
                .iter()
                .map(|l| l.gather(&batch.indices).map_err(msg))
                .collect(),
            Targets::Live => teachers
                .members()
                .iter()
                .map(|(t, _)| {
                    let norm = t.normalization().unwrap_or(self.data_norm);
                    let x = renormalize(&batch.x, self.data_norm, norm);
                    t.logits(&x, batch.len()).map_err(msg)
                })
                .collect(),
            Targets::None => Err(msg("no teacher outputs")),
        }
    }

    /// The members' logits averaged with the ensemble's weights.
    fn mean_logits(&self, members: &[Vec<f32>], weights: &[f32]) -> Vec<f32> {
        let mut mean = vec![0f32; members[0].len()];
        for (m, w) in members.iter().zip(weights) {
            mean.iter_mut().zip(m).for_each(|(a, v)| *a += w * v);
        }
        mean
    }
}

/// `x` normalised with `from`, re-expressed as normalised with `to`.
pub(super) fn renormalize(x: &[f32], from: Normalization, to: Normalization) -> Vec<f32> {
    if from == to {
        return x.to_vec();
    }
    let (a, b) = (from.std / to.std, (from.mean - to.mean) / to.std);
    x.iter().map(|v| v * a + b).collect()
}

impl Objective for Distiller<'_> {
    fn loss(&self, pass: &StudentPass, batch: &Batch) -> Result<Tensor> {
        let Some(features) = &self.features else {
            return self.logit_loss(&pass.logits, batch);
        };
        let matched = features.loss(pass, batch)?;
        if features.hint_stage(pass.epoch) {
            return matched.ok_or_else(|| msg("no hint pair in the hint stage"));
        }
        let logits = self.logit_loss(&pass.logits, batch)?;
        match matched {
            Some(m) => logits + m,
            None => Ok(logits),
        }
    }

    fn taps(&self) -> Vec<usize> {
        self.features
            .as_ref()
            .map(FeatureMatcher::taps)
            .unwrap_or_default()
    }
}

impl Distiller<'_> {
    /// The recipe's loss on the student's logits.
    fn logit_loss(&self, student: &Tensor, batch: &Batch) -> Result<Tensor> {
        let r = self.recipe;
        let device = Device::Cpu;
        let labels = batch
            .labels
            .as_ref()
            .map(|l| loss::label_tensor(l, &device))
            .transpose()?;
        let need_labels = || {
            labels
                .as_ref()
                .ok_or_else(|| msg("this method needs labels"))
        };
        if r.method == Method::Scratch {
            return loss::cross_entropy(student, need_labels()?);
        }
        let teachers = self.teachers.ok_or_else(|| msg("no teacher"))?;
        let members = self.member_logits(batch)?;
        let (n, classes) = (batch.len(), teachers.classes());
        let weights = teachers.weights();
        match r.method {
            Method::Hinton => {
                let slices: Vec<&[f32]> = members.iter().map(Vec::as_slice).collect();
                let p = combine(
                    &slices,
                    &weights,
                    classes,
                    r.temperature as f32,
                    teachers.mode(),
                )
                .map_err(msg)?;
                let p = Tensor::from_vec(p, (n, classes), &device)?;
                loss::hinton(student, &p, labels.as_ref(), r.temperature, r.alpha)
            }
            Method::Mse => {
                let z =
                    Tensor::from_vec(self.mean_logits(&members, &weights), (n, classes), &device)?;
                loss::logit_mse(student, &z)
            }
            Method::Dkd => {
                let z =
                    Tensor::from_vec(self.mean_logits(&members, &weights), (n, classes), &device)?;
                loss::decoupled(student, &z, need_labels()?, r.temperature, r.alpha, r.beta)
            }
            Method::Scratch => unreachable!("handled above"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renormalize_maps_pixels_between_normalisations() {
        let from = Normalization {
            mean: 0.2860,
            std: 0.3530,
        };
        let to = Normalization {
            mean: 0.5,
            std: 0.5,
        };
        for pixel in [0u8, 17, 128, 255] {
            let got = renormalize(&[from.apply(pixel)], from, to)[0];
            assert!((got - to.apply(pixel)).abs() < 1e-5, "{pixel}: {got}");
        }
    }
}
