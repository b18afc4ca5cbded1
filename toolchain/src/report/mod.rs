//! Reports of training runs and evaluations.
//!
//! [`plot`] draws PNG charts with `plotters`: loss and accuracy curves of a
//! training run, and a confusion-matrix heat map of an evaluation. Text is
//! rendered in pure Rust (`ab_glyph`) with DejaVu Sans, read at run time from
//! the Debian package `fonts-dejavu-core` (installed by `make setup`).

pub mod plot;

pub use plot::{
    confusion_png, training_curves_png, PlotError, CONFUSION_SIZE, FONT_PATH, TRAINING_CURVES_SIZE,
};
