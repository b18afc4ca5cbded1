//! Distillation: the losses, recipes, and the objective that trains a
//! student on teachers' outputs with the training loop of `train::fit`.

pub mod loss;
pub mod objective;
pub mod recipe;

pub use objective::{Distiller, Targets};
pub use recipe::{Method, Recipe, RecipeError, TeacherView, TeacherWeights, Transfer};
