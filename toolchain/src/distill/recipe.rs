//! Distillation recipes: which loss, its temperature and weights, how the
//! teacher sees the data, and the training settings, from a TOML file
//! (`models/recipes/*.toml`) or flags.

use super::features::FeaturePair;
use super::specialists::SpecialistConfig;
use crate::data::Augment;
use crate::teacher::EnsembleMode;
use crate::train::fit::FitConfig;
use crate::train::model::{Layer, ModelSpec};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// What the student is trained to match.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Method {
    /// Cross-entropy with the labels only (the no-teacher baseline).
    Scratch,
    /// Hinton et al. 2015: `α·T²·KL(p_T^teacher ‖ p_T^student) + (1 − α)·CE`.
    Hinton,
    /// Logit matching (Buciluǎ et al. 2006): `mean((z_s − z_t)²)`.
    Mse,
    /// Decoupled KD (Zhao et al. 2022): `α·TCKD + β·NCKD`, both times `T²`.
    Dkd,
}

/// Which images the teacher's targets come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum TeacherView {
    /// The clean images, computed once and cached on disk.
    Cached,
    /// The same augmented batch the student sees ("consistent teaching",
    /// Beyer et al. 2022), computed per batch.
    Live,
}

/// A distillation recipe.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Recipe {
    /// The loss.
    pub method: Method,
    /// Softmax temperature of the soft targets.
    pub temperature: f64,
    /// Weight of the soft term (Hinton) or of TCKD (DKD).
    pub alpha: f64,
    /// Weight of NCKD (DKD only).
    pub beta: f64,
    /// How the teacher sees the images.
    pub teacher_view: TeacherView,
    /// How several teachers' distributions are combined.
    pub ensemble: EnsembleMode,
    /// The transfer set the student learns on.
    pub transfer: Transfer,
    /// Ensemble weights: one per teacher, or by validation accuracy
    /// (`teacher_weights = [2.0, 1.0]` or `teacher_weights = "accuracy"`);
    /// equal when absent.
    pub teacher_weights: Option<TeacherWeights>,
    /// Teacher assistants (student spec files, in order) the teacher
    /// distills through before the student (Mirzadeh et al. 2020).
    pub assistants: Vec<String>,
    /// Born-again generations of the student (Furlanello et al. 2018): 1 is
    /// one distillation; k > 1 distills a fresh copy from the previous one
    /// k − 1 times.
    pub generations: usize,
    /// Teacher values matched to student layers besides the logits
    /// (`[[features]]` tables: FitNets hints, attention, RKD).
    pub features: Vec<FeaturePair>,
    /// FitNets' first stage: epochs trained on the hint pairs alone.
    pub hint_epochs: usize,
    /// Peer student specs trained together with the student, each
    /// distilling from the others (deep mutual learning); no teacher.
    pub peers: Vec<String>,
    /// Specialists with a dustbin class trained after the student (its
    /// generalist) on the classes the teacher confuses (Hinton et al. §5).
    pub specialists: Option<SpecialistConfig>,
    /// Cross-resolution transfer: the student sees the image average-pooled
    /// by this factor (an `avg_pool` layer put before its first), while the
    /// teacher sees it whole; 1 = the same view. The exported student takes
    /// the full-size input.
    pub downsample: usize,
    /// Training settings (`fit.unlabeled = true` for a transfer set without labels).
    pub fit: FitConfig,
}

impl Default for Recipe {
    fn default() -> Self {
        Self {
            method: Method::Hinton,
            temperature: 4.0,
            alpha: 0.9,
            beta: 8.0,
            teacher_view: TeacherView::Cached,
            ensemble: EnsembleMode::Arithmetic,
            transfer: Transfer::default(),
            teacher_weights: None,
            assistants: Vec::new(),
            generations: 1,
            features: Vec::new(),
            hint_epochs: 0,
            peers: Vec::new(),
            specialists: None,
            downsample: 1,
            fit: FitConfig::default(),
        }
    }
}

/// How an ensemble's teachers are weighted.
#[derive(Clone, Debug, PartialEq)]
pub enum TeacherWeights {
    /// One weight per teacher.
    Fixed(Vec<f32>),
    /// By each teacher's accuracy on the validation split
    /// ([`crate::teacher::accuracy_weights`]).
    Accuracy,
}

impl std::str::FromStr for TeacherWeights {
    type Err = String;

    /// `2,1` or `accuracy`.
    fn from_str(s: &str) -> Result<Self, String> {
        if s == "accuracy" {
            return Ok(TeacherWeights::Accuracy);
        }
        s.split(',')
            .map(|w| {
                w.trim().parse::<f32>().map_err(|_| {
                    format!("'{w}' is not a number (give W,W,... or the word accuracy)")
                })
            })
            .collect::<Result<Vec<_>, _>>()
            .map(TeacherWeights::Fixed)
    }
}

/// TOML form: a list of numbers or the string "accuracy".
#[derive(Serialize, Deserialize)]
#[serde(untagged)]
enum WeightsToml {
    Fixed(Vec<f32>),
    Word(String),
}

impl Serialize for TeacherWeights {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            TeacherWeights::Fixed(w) => WeightsToml::Fixed(w.clone()),
            TeacherWeights::Accuracy => WeightsToml::Word("accuracy".into()),
        }
        .serialize(s)
    }
}

impl<'de> Deserialize<'de> for TeacherWeights {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match WeightsToml::deserialize(d)? {
            WeightsToml::Fixed(w) => Ok(TeacherWeights::Fixed(w)),
            WeightsToml::Word(w) if w == "accuracy" => Ok(TeacherWeights::Accuracy),
            WeightsToml::Word(w) => Err(serde::de::Error::custom(format!(
                "teacher_weights = \"{w}\": expected a list of numbers or \"accuracy\""
            ))),
        }
    }
}

/// The images the student is trained on: the training split itself
/// (`views = 1`), or that many fixed augmented copies of it (view 0 the
/// original), which the teacher labels once (cached), so teacher and
/// student see the same images ("consistent teaching") at the cost of a
/// cached pass rather than a teacher run per batch.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Transfer {
    /// Copies of the training split (1 = the split as it is).
    pub views: usize,
    /// Shifts, crops and flips that make the copies.
    pub augment: Augment,
    /// Seed of the copies: fixed apart from the run's seed, so that runs
    /// with other seeds share one cached teacher pass.
    pub seed: u64,
}

impl Default for Transfer {
    fn default() -> Self {
        Self {
            views: 1,
            augment: Augment::default(),
            seed: 0,
        }
    }
}

/// A recipe that cannot be read or makes no sense.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {reason}")]
pub struct RecipeError {
    /// The recipe file (empty for flags).
    pub path: PathBuf,
    /// What is wrong.
    pub reason: String,
}

impl Recipe {
    /// `student` as this recipe trains it: behind an `avg_pool` of
    /// [`Recipe::downsample`] when that is > 1.
    pub fn student_view(&self, mut student: ModelSpec) -> ModelSpec {
        if self.downsample > 1 {
            student.layers.insert(
                0,
                Layer::AvgPool {
                    size: self.downsample,
                },
            );
            student.name = format!("{}-pool{}", student.name, self.downsample);
        }
        student
    }

    /// Reads and checks a TOML recipe.
    pub fn from_toml_file(path: &Path) -> Result<Self, RecipeError> {
        let err = |reason: String| RecipeError {
            path: path.into(),
            reason,
        };
        let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
        let recipe: Self = toml::from_str(&text).map_err(|e| err(e.to_string()))?;
        recipe.check().map_err(err)?;
        Ok(recipe)
    }

    /// The recipe as TOML (for metadata and the sweep's winner).
    pub fn to_toml(&self) -> String {
        toml::to_string(self).expect("a recipe serialises")
    }

    /// Checks the values make sense together.
    pub fn check(&self) -> Result<(), String> {
        if !(self.temperature.is_finite() && self.temperature > 0.0) {
            return Err(format!("temperature {} must be > 0", self.temperature));
        }
        if !(0.0..=1.0).contains(&self.alpha) && self.method == Method::Hinton {
            return Err(format!("alpha {} must be in [0, 1]", self.alpha));
        }
        if !(self.alpha >= 0.0 && self.beta >= 0.0) {
            return Err("alpha and beta must be ≥ 0".into());
        }
        if self.transfer.views == 0 {
            return Err("transfer.views must be ≥ 1".into());
        }
        if self.hint_epochs >= self.fit.epochs && self.hint_epochs > 0 {
            return Err(format!(
                "hint_epochs {} leaves none of the {} epochs for the distillation stage",
                self.hint_epochs, self.fit.epochs
            ));
        }
        if let Some(s) = &self.specialists {
            if s.count == 0 || s.max_size < 2 || s.top_k == 0 {
                return Err(format!(
                    "specialists: count {} and top_k {} must be ≥ 1, max_size {} ≥ 2",
                    s.count, s.top_k, s.max_size
                ));
            }
        }
        if self.downsample == 0 {
            return Err("downsample must be ≥ 1 (1: the student sees the full image)".into());
        }
        if self.generations == 0 {
            return Err("generations must be ≥ 1".into());
        }
        if self.fit.unlabeled && matches!(self.method, Method::Scratch | Method::Dkd) {
            return Err(format!(
                "method {:?} needs labels, but fit.unlabeled is set",
                self.method
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_partial_recipes_with_defaults_and_rejects_typos() {
        let r: Recipe = toml::from_str(
            "method = \"dkd\"\ntemperature = 2.0\n[fit]\nepochs = 3\nlr = 0.002\n[fit.augment]\nshift = 2\n",
        )
        .unwrap();
        assert_eq!(r.method, Method::Dkd);
        assert_eq!(r.fit.epochs, 3);
        assert_eq!(r.fit.augment.shift, 2);
        assert_eq!(r.fit.batch_size, FitConfig::default().batch_size);
        assert!(toml::from_str::<Recipe>("temprature = 2.0").is_err());
        let round: Recipe = toml::from_str(&r.to_toml()).unwrap();
        assert_eq!(round, r);
        let bad = Recipe {
            temperature: 0.0,
            ..Recipe::default()
        };
        assert!(bad.check().unwrap_err().contains("temperature"));
    }

    #[test]
    fn chains_and_ensemble_weights_come_from_the_recipe() {
        let r: Recipe = toml::from_str(
            "teacher_weights = \"accuracy\"\nassistants = [\"a.toml\"]\ngenerations = 3\n",
        )
        .unwrap();
        assert_eq!(r.teacher_weights, Some(TeacherWeights::Accuracy));
        assert_eq!(
            (r.assistants.as_slice(), r.generations),
            (&["a.toml".to_string()][..], 3)
        );
        let round: Recipe = toml::from_str(&r.to_toml()).unwrap();
        assert_eq!(round, r);
        let fixed: Recipe = toml::from_str("teacher_weights = [2.0, 1]").unwrap();
        assert_eq!(
            fixed.teacher_weights,
            Some(TeacherWeights::Fixed(vec![2.0, 1.0]))
        );
        assert_eq!(toml::from_str::<Recipe>(&fixed.to_toml()).unwrap(), fixed);
        let e = toml::from_str::<Recipe>("teacher_weights = \"best\"")
            .unwrap_err()
            .to_string();
        assert!(e.contains("accuracy"), "{e}");
        let zero = Recipe {
            generations: 0,
            ..Recipe::default()
        };
        assert!(zero.check().unwrap_err().contains("generations"));
        assert_eq!("2,1".parse(), Ok(TeacherWeights::Fixed(vec![2.0, 1.0])));
        assert!("2,x".parse::<TeacherWeights>().unwrap_err().contains("'x'"));
    }

    #[test]
    fn downsample_puts_an_average_pool_before_the_student() {
        let r: Recipe = toml::from_str("downsample = 2").unwrap();
        let spec = ModelSpec::ds_block();
        let seen = r.student_view(spec.clone());
        assert_eq!(seen.layers[0], Layer::AvgPool { size: 2 });
        assert_eq!(&seen.layers[1..], spec.layers.as_slice());
        assert_eq!(seen.input, spec.input);
        assert!(2 * seen.cost().unwrap().macs < spec.cost().unwrap().macs);
        assert_eq!(Recipe::default().student_view(spec.clone()), spec);
        let zero = Recipe {
            downsample: 0,
            ..Recipe::default()
        };
        assert!(zero.check().unwrap_err().contains("downsample"));
    }

    #[test]
    fn every_shipped_recipe_reads() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/recipes");
        let mut n = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "toml") {
                Recipe::from_toml_file(&path).unwrap_or_else(|e| panic!("{e}"));
                n += 1;
            }
        }
        assert!(n >= 8, "{n} recipes");
    }
}
