//! Feature-based distillation: pairs of (teacher value, student layer)
//! matched by FitNets hints (Romero et al. 2015, through a learned 1×1
//! regressor), attention transfer (Zagoruyko & Komodakis 2017) or RKD's
//! distance and angle relations (Park et al. 2019). The teacher's values
//! are any ONNX value names of its graph ([`TeacherFeatures`]), run on the
//! batch the student sees; the student's are its spec layers' outputs.
//!
//! With `hint_epochs > 0` the run is FitNets' two stages: the first
//! `hint_epochs` epochs train on the hint pairs alone (the layers up to
//! each hinted one), the rest on the recipe's logit loss plus the other
//! pairs. Otherwise every pair is added to the logit loss throughout.

use super::loss;
use crate::data::{Batch, Normalization};
use crate::teacher::{Teacher, TeacherFeatures};
use crate::train::adapter::AdapterSpec;
use crate::train::fit::StudentPass;
use crate::train::model::ModelSpec;
use candle_core::{Device, Result, Tensor};
use serde::{Deserialize, Serialize};

/// How a pair of features is matched.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FeatureLoss {
    /// FitNets: mean squared error between the teacher's value and the
    /// student's, projected to the teacher's channels by a 1×1 regressor.
    Hint,
    /// Attention transfer: the spatial attention maps' squared distance.
    Attention,
    /// RKD distance-wise: the batch's normalised pairwise distances.
    RkdDistance,
    /// RKD angle-wise: the angles of every triplet of the batch.
    RkdAngle,
}

/// One teacher value matched to one student layer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FeaturePair {
    /// The matching loss.
    pub loss: FeatureLoss,
    /// The teacher's ONNX value name, e.g. `l5.maxpool`.
    pub teacher: String,
    /// The student's spec layer (0-based) whose output is matched.
    pub student: usize,
    /// The pair's weight in the total loss.
    #[serde(default = "unit")]
    pub weight: f64,
}

fn unit() -> f64 {
    1.0
}

/// The feature pairs of a recipe, bound to a teacher and a student.
pub struct FeatureMatcher {
    pairs: Vec<FeaturePair>,
    /// The teacher value of each pair (index into the runner's names).
    value: Vec<usize>,
    /// The channels (or features) of each pair's student layer.
    student_channels: Vec<usize>,
    teacher: TeacherFeatures,
    hint_epochs: usize,
    data_norm: Normalization,
    teacher_norm: Normalization,
}

/// The adapter name of pair `k`.
fn adapter_name(k: usize) -> String {
    format!("hint{k}")
}

impl FeatureMatcher {
    /// Binds `pairs` to `teacher` and the `student` spec: each pair's
    /// shapes must fit its loss (errors name the pair, the value and the
    /// layer).
    pub fn new(
        pairs: &[FeaturePair],
        hint_epochs: usize,
        teacher: &Teacher,
        student: &ModelSpec,
        data_norm: Normalization,
    ) -> std::result::Result<Self, String> {
        let mut names: Vec<String> = Vec::new();
        let value = pairs
            .iter()
            .map(|p| match names.iter().position(|n| *n == p.teacher) {
                Some(i) => i,
                None => {
                    names.push(p.teacher.clone());
                    names.len() - 1
                }
            })
            .collect();
        let runner = TeacherFeatures::open(teacher, &names).map_err(|e| e.to_string())?;
        let mut shapes = vec![None; student.layers.len()];
        student
            .walk(|i, _, _, out| shapes[i] = Some(out.to_vec()))
            .map_err(|e| e.to_string())?;
        let mut matcher = Self {
            pairs: pairs.to_vec(),
            value,
            student_channels: Vec::with_capacity(pairs.len()),
            teacher: runner,
            hint_epochs,
            data_norm,
            teacher_norm: teacher.normalization().unwrap_or(data_norm),
        };
        for (k, p) in pairs.iter().enumerate() {
            let s = shapes.get(p.student).cloned().flatten().ok_or_else(|| {
                format!(
                    "feature pair {k}: student layer {} (the student has {} layers)",
                    p.student,
                    student.layers.len()
                )
            })?;
            let t = matcher.teacher.dims(matcher.value[k]);
            let fits = match p.loss {
                FeatureLoss::Hint => s.len() == t.len() && s[1..] == t[1..],
                FeatureLoss::Attention => s.len() == 3 && t.len() == 3 && s[1..] == t[1..],
                FeatureLoss::RkdDistance | FeatureLoss::RkdAngle => true,
            };
            if !(fits && p.weight.is_finite() && p.weight >= 0.0) {
                return Err(format!(
                    "feature pair {k} ({:?}, weight {}): student layer {} gives {s:?}, \
                     teacher value {} gives {t:?}; hints need the same spatial size \
                     (channels may differ), attention maps [C, H, W] of the same H×W",
                    p.loss, p.weight, p.student, p.teacher
                ));
            }
            matcher.student_channels.push(s[0]);
        }
        if hint_epochs > 0 && !pairs.iter().any(|p| p.loss == FeatureLoss::Hint) {
            return Err(format!(
                "hint_epochs = {hint_epochs} without a hint pair to train on"
            ));
        }
        Ok(matcher)
    }

    /// The regressors of the hint pairs (student channels → teacher's).
    pub fn adapters(&self) -> Vec<AdapterSpec> {
        self.pairs
            .iter()
            .enumerate()
            .filter(|(_, p)| p.loss == FeatureLoss::Hint)
            .map(|(k, _)| AdapterSpec {
                name: adapter_name(k),
                inputs: self.student_channels[k],
                outputs: self.teacher.dims(self.value[k])[0],
            })
            .collect()
    }

    /// The student layers the pairs read, in pair order.
    pub fn taps(&self) -> Vec<usize> {
        self.pairs.iter().map(|p| p.student).collect()
    }

    /// Whether `epoch` (from 0) is in FitNets' hint stage.
    pub fn hint_stage(&self, epoch: usize) -> bool {
        epoch < self.hint_epochs
    }

    /// The weighted sum of the pairs active at `pass.epoch`, or `None`
    /// when none is.
    pub fn loss(&self, pass: &StudentPass, batch: &Batch) -> Result<Option<Tensor>> {
        let hint_stage = self.hint_stage(pass.epoch);
        let active =
            |p: &FeaturePair| (p.loss == FeatureLoss::Hint) == hint_stage || self.hint_epochs == 0;
        if !self.pairs.iter().any(active) {
            return Ok(None);
        }
        let x = super::objective::renormalize(&batch.x, self.data_norm, self.teacher_norm);
        let values = self
            .teacher
            .run(&x, batch.len())
            .map_err(|e| candle_core::Error::Msg(e.to_string()))?;
        let n = batch.len();
        let mut total: Option<Tensor> = None;
        for (k, p) in self.pairs.iter().enumerate() {
            if !active(p) {
                continue;
            }
            let v = self.value[k];
            let mut dims = vec![n];
            dims.extend(self.teacher.dims(v));
            let t = Tensor::from_slice(&values[v], dims, &Device::Cpu)?;
            let s = &pass.features[k];
            let term = match p.loss {
                FeatureLoss::Hint => loss::logit_mse(&pass.adapt(&adapter_name(k), s)?, &t)?,
                FeatureLoss::Attention => loss::attention_transfer(s, &t)?,
                FeatureLoss::RkdDistance => {
                    loss::rkd_distance(&s.flatten_from(1)?, &t.flatten_from(1)?)?
                }
                FeatureLoss::RkdAngle => loss::rkd_angle(&s.flatten_from(1)?, &t.flatten_from(1)?)?,
            };
            let term = term.affine(p.weight, 0.0)?;
            total = Some(match total {
                Some(sum) => (sum + term)?,
                None => term,
            });
        }
        Ok(total)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::distill::{Distiller, Method, Recipe, Targets, TeacherView};
    use crate::export::ExportMeta;
    use crate::teacher::{Ensemble, EnsembleMode};
    use crate::train::fit::tests::{config, temp, tiny_cnn, tiny_data};
    use crate::train::fit::{CrossEntropy, FitConfig, Objective, OptimizerKind, Trainer};
    use crate::train::model::Layer;

    /// The tiny CNN trained on the synthetic set and exported: a teacher
    /// whose values are known (`l2.maxpool` [4, 4, 4], `l3.flatten` [64]).
    fn teacher(name: &str) -> Teacher {
        let data = tiny_data();
        let idx: Vec<usize> = (0..data.len()).collect();
        let mut t = Trainer::new(tiny_cnn(), config(OptimizerKind::Adamw)).unwrap();
        for _ in 0..3 {
            t.train_epoch(&data, &idx, &CrossEntropy, |_| {}).unwrap();
        }
        let path = temp(name);
        crate::export::write(&path, t.spec(), &t.parameters(), &ExportMeta::default()).unwrap();
        Teacher::load(&path).unwrap()
    }

    /// A narrower student: conv 2 → [2, 4, 4] at layer 2, [32] at layer 3.
    fn student() -> ModelSpec {
        let mut s = tiny_cnn();
        s.name = "tiny-student".into();
        s.layers[0] = Layer::Conv {
            filters: 2,
            kernel: 3,
            stride: 1,
            padding: 1,
        };
        s
    }

    fn pair(loss: FeatureLoss, teacher: &str, student: usize) -> FeaturePair {
        FeaturePair {
            loss,
            teacher: teacher.into(),
            student,
            weight: 1.0,
        }
    }

    /// The feature pairs alone as the objective.
    struct Only<'a>(&'a FeatureMatcher);

    impl Objective for Only<'_> {
        fn loss(&self, pass: &StudentPass, batch: &Batch) -> Result<Tensor> {
            Ok(self.0.loss(pass, batch)?.expect("pairs are active"))
        }

        fn taps(&self) -> Vec<usize> {
            self.0.taps()
        }
    }

    #[test]
    fn each_feature_loss_pulls_the_student_towards_the_known_teacher() {
        let teacher = teacher("features-teacher.onnx");
        let data = tiny_data();
        let idx: Vec<usize> = (0..data.len()).collect();
        let norm = Normalization::default();
        for p in [
            pair(FeatureLoss::Hint, "l2.maxpool", 2),
            pair(FeatureLoss::Attention, "l2.maxpool", 2),
            pair(FeatureLoss::RkdDistance, "l3.flatten", 3),
            pair(FeatureLoss::RkdAngle, "l3.flatten", 3),
        ] {
            let m = FeatureMatcher::new(std::slice::from_ref(&p), 0, &teacher, &student(), norm)
                .unwrap();
            let mut t = Trainer::new(student(), config(OptimizerKind::Adamw)).unwrap();
            t.add_adapters(m.adapters()).unwrap();
            let first = t.train_epoch(&data, &idx, &Only(&m), |_| {}).unwrap();
            t.train_epoch(&data, &idx, &Only(&m), |_| {}).unwrap();
            let last = t.train_epoch(&data, &idx, &Only(&m), |_| {}).unwrap();
            assert!(
                last.train_loss < 0.7 * first.train_loss,
                "{:?}: {} → {}",
                p.loss,
                first.train_loss,
                last.train_loss
            );
        }
    }

    #[test]
    fn fitnets_trains_up_to_the_hint_first_then_distills_the_whole_student() {
        let teacher = teacher("fitnets-teacher.onnx");
        let data = tiny_data();
        let idx: Vec<usize> = (0..data.len()).collect();
        let recipe = Recipe {
            method: Method::Hinton,
            teacher_view: TeacherView::Live,
            hint_epochs: 1,
            features: vec![pair(FeatureLoss::Hint, "l2.maxpool", 2)],
            fit: FitConfig {
                epochs: 4,
                ..config(OptimizerKind::Adamw)
            },
            ..Recipe::default()
        };
        let norm = Normalization::default();
        let m = FeatureMatcher::new(&recipe.features, 1, &teacher, &student(), norm).unwrap();
        let adapters = m.adapters();
        assert_eq!((adapters[0].inputs, adapters[0].outputs), (2, 4));
        let ensemble = Ensemble::new(vec![(teacher, 1.0)], EnsembleMode::Arithmetic).unwrap();
        let objective = Distiller::new(&recipe, Some(&ensemble), Targets::Live, norm)
            .unwrap()
            .with_features(m);
        let mut t = Trainer::new(student(), recipe.fit.clone()).unwrap();
        t.add_adapters(adapters).unwrap();
        let dense = |t: &Trainer| {
            let p = t.parameters();
            let w = &p.iter().find(|(k, _)| k == "l4.weight").unwrap().1;
            w.flatten_all().unwrap().to_vec1::<f32>().unwrap()
        };
        let before = dense(&t);
        t.train_epoch(&data, &idx, &objective, |_| {}).unwrap();
        assert_eq!(
            before,
            dense(&t),
            "the hint stage leaves the classifier alone"
        );
        for _ in 1..4 {
            t.train_epoch(&data, &idx, &objective, |_| {}).unwrap();
        }
        assert_ne!(before, dense(&t));
        let eval = t.evaluate(&data, &idx).unwrap();
        assert!(eval.accuracy > 0.6, "accuracy {}", eval.accuracy);
    }

    #[test]
    fn pairs_that_do_not_fit_are_refused_by_name() {
        let teacher = teacher("refused-teacher.onnx");
        let norm = Normalization::default();
        let bad = |p: FeaturePair| {
            FeatureMatcher::new(&[p], 0, &teacher, &student(), norm)
                .err()
                .expect("must fail")
        };
        let e = bad(pair(FeatureLoss::Attention, "l3.flatten", 2));
        assert!(
            e.contains("feature pair 0") && e.contains("l3.flatten"),
            "{e}"
        );
        let e = bad(pair(FeatureLoss::Hint, "l2.maxpool", 9));
        assert!(e.contains("student layer 9"), "{e}");
        let e = bad(pair(FeatureLoss::Hint, "nowhere", 2));
        assert!(e.contains("nowhere") && e.contains("l2.maxpool"), "{e}");
        let e = FeatureMatcher::new(
            &[pair(FeatureLoss::Attention, "l2.maxpool", 2)],
            2,
            &teacher,
            &student(),
            norm,
        )
        .err()
        .expect("hint epochs without a hint");
        assert!(e.contains("hint_epochs"), "{e}");
    }
}
