//! Distillation recipes: which loss, its temperature and weights, how the
//! teacher sees the data, and the training settings, from a TOML file
//! (`models/recipes/*.toml`) or flags.

use crate::data::Augment;
use crate::teacher::EnsembleMode;
use crate::train::fit::FitConfig;
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
            fit: FitConfig::default(),
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
}
