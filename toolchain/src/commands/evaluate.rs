//! `tinykd eval`: accuracy, per-class accuracy, confusion matrix and
//! latency of an ONNX classifier on Fashion-MNIST.

use anyhow::Result;
use std::path::PathBuf;
use tinykd::data::{Dataset, Split};
use tinykd::engine::EngineKind;

/// Options of `tinykd eval`.
#[derive(clap::Args)]
pub struct EvalArgs {
    /// The ONNX classifier.
    model: PathBuf,
    /// The data set (Fashion-MNIST is the one built in).
    #[arg(long, default_value = "fashion-mnist", value_parser = ["fashion-mnist"])]
    data: String,
    /// Which split to evaluate on.
    #[arg(long, value_enum, default_value = "test")]
    split: SplitArg,
    /// Only the first N images.
    #[arg(long)]
    limit: Option<usize>,
    /// Which engine runs the model.
    #[arg(long, value_enum, default_value = "tinykd")]
    engine: EngineKind,
    /// Images per run.
    #[arg(long, default_value_t = 100)]
    batch: usize,
    /// Fashion-MNIST folder.
    #[arg(long, default_value = tinykd::data::DEFAULT_DIR)]
    data_dir: PathBuf,
    /// Also draw the confusion matrix into this PNG.
    #[arg(long)]
    confusion_png: Option<PathBuf>,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

/// A split of the data set.
#[derive(Clone, Copy, clap::ValueEnum)]
enum SplitArg {
    Train,
    Test,
}

/// `tinykd eval`.
pub fn eval(a: &EvalArgs) -> Result<()> {
    let split = match a.split {
        SplitArg::Train => Split::Train,
        SplitArg::Test => Split::Test,
    };
    let mut data = Dataset::load(&a.data_dir, split)?;
    if let Some(n) = a.limit.filter(|&n| n < data.len()) {
        data = data.subset(&(0..n).collect::<Vec<_>>())?;
    }
    let r = tinykd::eval::evaluate(&a.model, &data, a.engine, a.batch)?;
    if let Some(png) = &a.confusion_png {
        let title = a
            .model
            .file_name()
            .map_or(String::new(), |n| n.to_string_lossy().into_owned());
        tinykd::report::confusion_png(png, &title, &r.confusion, &data.class_names)?;
    }
    if a.json {
        println!("{}", serde_json::to_string_pretty(&r)?);
        return Ok(());
    }
    println!(
        "{}: accuracy {:.2}% ({}/{}) with {:?}; {:.0} images/s batched, {:.1} µs per single image",
        a.model.display(),
        100.0 * r.accuracy,
        r.correct,
        r.total,
        a.engine,
        r.images_per_second,
        r.latency_us
    );
    println!("\nper class:");
    for (name, acc) in &r.per_class {
        println!("  {name:<12} {:6.2}%", 100.0 * acc);
    }
    if let Some(png) = &a.confusion_png {
        println!("\nconfusion matrix drawn to {}", png.display());
    }
    println!("\nconfusion matrix (rows: true class, columns: predicted):");
    for (c, row) in r.confusion.iter().enumerate() {
        let cells: Vec<String> = row.iter().map(|v| format!("{v:5}")).collect();
        println!("  {c:>2} {}", cells.join(""));
    }
    Ok(())
}
