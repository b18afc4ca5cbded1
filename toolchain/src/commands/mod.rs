//! The CLI's longer commands, one module per family.

pub mod evaluate;
pub mod mutual;
pub mod prune;
pub mod quantize;
pub mod report;
pub mod report_methods;
pub mod specialists;
pub mod targets;
pub mod training;
