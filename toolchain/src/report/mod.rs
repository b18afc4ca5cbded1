//! Reports of training runs, evaluations and model comparisons.
//!
//! [`plot`] draws PNG charts with `plotters`: loss and accuracy curves of a
//! training run, a confusion-matrix heat map of an evaluation, and accuracy
//! against file size of compressed models ([`compression`] measures and
//! tabulates those). Text is
//! rendered in pure Rust (`ab_glyph`) with DejaVu Sans, read at run time from
//! the Debian package `fonts-dejavu-core` (installed by `make setup`).

pub mod compression;
pub mod plot;

pub use plot::{
    accuracy_bars_png, accuracy_vs_size_png, confusion_png, latency_bars_png, training_curves_png,
    AccuracyBar, BarGroup, PlotError, SizePoint, ACCURACY_BARS_SIZE, ACCURACY_SIZE_SIZE,
    CONFUSION_SIZE, FONT_PATH, LATENCY_BARS_SIZE, TRAINING_CURVES_SIZE,
};

/// Replaces the `## {title}` section of the Markdown file at `path` (up to
/// the next `## ` heading) with `body`, or appends it; written atomically.
/// A missing file starts as `# Results`.
pub fn replace_section(path: &std::path::Path, title: &str, body: &str) -> std::io::Result<()> {
    let old = std::fs::read_to_string(path).unwrap_or_else(|_| "# Results\n".into());
    let header = format!("## {title}\n");
    let section = format!("{header}\n{}\n", body.trim_end());
    let new = match old.find(&header) {
        Some(start) => {
            let rest = &old[start + header.len()..];
            let end = rest
                .find("\n## ")
                .map_or(old.len(), |i| start + header.len() + i + 1);
            let tail = &old[end..];
            let gap = if tail.is_empty() { "" } else { "\n" };
            format!("{}{section}{gap}{tail}", &old[..start])
        }
        None => format!("{}\n\n{section}", old.trim_end()),
    };
    crate::tensor_file::write_atomically(path, new.as_bytes()).map_err(std::io::Error::other)
}
