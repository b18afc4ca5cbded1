//! Distillation: the losses, recipes, and the objective that trains a
//! student on teachers' outputs with the training loop of `train::fit`.

pub mod features;
pub mod loss;
pub mod mutual;
pub mod objective;
pub mod recipe;
pub mod specialists;

pub use features::{FeatureLoss, FeatureMatcher, FeaturePair};
pub use objective::{Distiller, Targets};
pub use recipe::{Method, Recipe, RecipeError, TeacherView, TeacherWeights, Transfer};
