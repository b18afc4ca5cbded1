//! PNG charts of training runs ([`training_curves_png`]) and evaluations
//! ([`confusion_png`]).
//!
//! Both render into a temporary file next to the target and rename it into
//! place, so a failure never leaves a partial PNG at the requested path.
//! Drawing is generic over the plotters backend; only [`write_png`] knows
//! about files.

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;

use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use crate::train::fit::EpochStats;

/// The TrueType font every chart is drawn with (Debian: `fonts-dejavu-core`).
pub const FONT_PATH: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";
/// Width and height of [`training_curves_png`]'s image.
pub const TRAINING_CURVES_SIZE: (u32, u32) = (1200, 450);
/// Width and height of [`confusion_png`]'s image.
pub const CONFUSION_SIZE: (u32, u32) = (900, 860);
/// Width and height of [`accuracy_vs_size_png`]'s image.
pub const ACCURACY_SIZE_SIZE: (u32, u32) = (1200, 650);
/// Width and height of [`latency_bars_png`]'s image.
pub const LATENCY_BARS_SIZE: (u32, u32) = (1200, 600);
/// Width and height of [`accuracy_bars_png`]'s image.
pub const ACCURACY_BARS_SIZE: (u32, u32) = (1200, 600);

/// The family name the font is registered under in plotters.
const FAMILY: &str = "sans-serif";
/// Series colors: blue for training, orange for validation.
const TRAIN_COLOR: RGBColor = RGBColor(31, 119, 180);
const VAL_COLOR: RGBColor = RGBColor(255, 127, 14);
/// The dark end of the heat map's white-to-blue scale.
const HEAT_DARK: RGBColor = RGBColor(8, 48, 107);
/// Series with more points than this are drawn without markers.
const MAX_MARKERS: usize = 60;

/// Why a chart could not be written. Every variant names the output path.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PlotError {
    /// The font file could not be read.
    #[error(
        "cannot draw {}: font {} is missing ({reason}); install the Debian package \
         fonts-dejavu-core (run `make setup`)",
        .path.display(), .font.display()
    )]
    FontMissing {
        /// The chart that was to be written.
        path: PathBuf,
        /// The font file looked for.
        font: PathBuf,
        /// The I/O error.
        reason: String,
    },
    /// The font file is not a TrueType/OpenType font.
    #[error(
        "cannot draw {}: {} is not a usable TrueType font; reinstall fonts-dejavu-core",
        .path.display(), .font.display()
    )]
    FontInvalid {
        /// The chart that was to be written.
        path: PathBuf,
        /// The font file read.
        font: PathBuf,
    },
    /// There is nothing to draw.
    #[error("cannot draw {}: the {what} is empty", .path.display())]
    Empty {
        /// The chart that was to be written.
        path: PathBuf,
        /// What was empty.
        what: &'static str,
    },
    /// A confusion-matrix row does not have one entry per class.
    #[error(
        "cannot draw {}: confusion matrix row {row} has {len} entries, but the matrix \
         has {classes} rows (it must be square)",
        .path.display()
    )]
    NotSquare {
        /// The chart that was to be written.
        path: PathBuf,
        /// The first offending row.
        row: usize,
        /// That row's length.
        len: usize,
        /// Number of rows.
        classes: usize,
    },
    /// The class names do not match the confusion matrix.
    #[error(
        "cannot draw {}: the confusion matrix has {classes} classes but {names} class \
         names were given",
        .path.display()
    )]
    ClassNames {
        /// The chart that was to be written.
        path: PathBuf,
        /// Classes in the matrix.
        classes: usize,
        /// Names given.
        names: usize,
    },
    /// plotters failed while drawing.
    #[error("cannot draw {}: {reason}", .path.display())]
    Draw {
        /// The chart that was to be written.
        path: PathBuf,
        /// plotters' error.
        reason: String,
    },
    /// The PNG could not be encoded, written or moved into place.
    #[error("cannot write {}: {reason}", .path.display())]
    Write {
        /// The chart that was to be written.
        path: PathBuf,
        /// The underlying error.
        reason: String,
    },
}

/// Draws the loss and accuracy curves of a training run into a
/// [`TRAINING_CURVES_SIZE`] PNG at `path`: loss on the left, accuracy in % on
/// the right, training and (where present) validation against the epoch.
pub fn training_curves_png(
    path: &Path,
    title: &str,
    history: &[EpochStats],
) -> Result<(), PlotError> {
    if history.is_empty() {
        return Err(PlotError::Empty {
            path: path.into(),
            what: "training history",
        });
    }
    write_png(path, TRAINING_CURVES_SIZE, |root| {
        draw_training(root, title, history)
    })
}

/// Draws a confusion matrix (`confusion[true][predicted]` counts) as a
/// [`CONFUSION_SIZE`] PNG heat map at `path`. Cells are colored by the
/// row-normalized rate and annotated with their counts; the title gets the
/// overall accuracy appended.
pub fn confusion_png(
    path: &Path,
    title: &str,
    confusion: &[Vec<usize>],
    class_names: &[String],
) -> Result<(), PlotError> {
    let classes = confusion.len();
    if let Some((row, r)) = confusion
        .iter()
        .enumerate()
        .find(|(_, r)| r.len() != classes)
    {
        return Err(PlotError::NotSquare {
            path: path.into(),
            row,
            len: r.len(),
            classes,
        });
    }
    if class_names.len() != classes {
        let names = class_names.len();
        return Err(PlotError::ClassNames {
            path: path.into(),
            classes,
            names,
        });
    }
    if classes == 0 {
        return Err(PlotError::Empty {
            path: path.into(),
            what: "confusion matrix",
        });
    }
    write_png(path, CONFUSION_SIZE, |root| {
        draw_confusion(root, title, confusion, class_names)
    })
}

/// One model of [`accuracy_vs_size_png`].
#[derive(Clone, Debug, PartialEq)]
pub struct SizePoint {
    /// The legend entry.
    pub label: String,
    /// File size in bytes.
    pub bytes: f64,
    /// Accuracy in %.
    pub accuracy: f64,
    /// Its standard deviation over seeds, in points (drawn as an error bar).
    pub std: f64,
}

/// Draws accuracy (%) against file size (bytes) as an
/// [`ACCURACY_SIZE_SIZE`] PNG at `path`, one colored marker with an error
/// bar per model and a legend naming them.
pub fn accuracy_vs_size_png(
    path: &Path,
    title: &str,
    points: &[SizePoint],
) -> Result<(), PlotError> {
    let usable: Vec<&SizePoint> = points
        .iter()
        .filter(|p| p.bytes > 0.0 && p.bytes.is_finite() && p.accuracy.is_finite())
        .collect();
    if usable.is_empty() {
        return Err(PlotError::Empty {
            path: path.into(),
            what: "list of models",
        });
    }
    write_png(path, ACCURACY_SIZE_SIZE, |root| {
        draw_accuracy_vs_size(root, title, &usable)
    })
}

fn draw_accuracy_vs_size<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    title: &str,
    points: &[&SizePoint],
) -> AreaResult<DB> {
    root.fill(&WHITE)?;
    let root = root.titled(title, (FAMILY, 22))?;
    let fold = |f: fn(f64, f64) -> f64, init: f64, v: &dyn Fn(&SizePoint) -> f64| {
        points.iter().map(|p| v(p)).fold(init, f)
    };
    // A linear axis from 0: compressed models differ by small factors, and
    // a log axis over less than a decade gets a single tick label.
    let bytes_hi = fold(f64::max, 0.0, &|p| p.bytes) * 1.08;
    let acc_lo = fold(f64::min, f64::INFINITY, &|p| p.accuracy - p.std);
    let acc_hi = fold(f64::max, f64::NEG_INFINITY, &|p| p.accuracy + p.std);
    let pad = ((acc_hi - acc_lo) * 0.08).max(0.2);
    // The legend gets its own column: markers of equal size often overlap.
    let (plot, legend) = root.split_horizontally(root.dim_in_pixel().0 * 3 / 5);
    let mut chart = ChartBuilder::on(&plot)
        .margin(14)
        .x_label_area_size(45)
        .y_label_area_size(65)
        .build_cartesian_2d(0.0..bytes_hi, acc_lo - pad..acc_hi + pad)?;
    chart
        .configure_mesh()
        .x_desc("model file")
        .y_desc("test accuracy (%)")
        .x_labels(8)
        .y_labels(8)
        .x_label_formatter(&|b| format!("{:.0} KB", b / 1000.0))
        .label_style((FAMILY, 13))
        .axis_desc_style((FAMILY, 15))
        .draw()?;
    let row = 24;
    for (i, p) in points.iter().enumerate() {
        let color = MARKER_COLORS[i % MARKER_COLORS.len()];
        chart.draw_series(std::iter::once(PathElement::new(
            vec![(p.bytes, p.accuracy - p.std), (p.bytes, p.accuracy + p.std)],
            color.stroke_width(2),
        )))?;
        chart.draw_series(std::iter::once(Circle::new(
            (p.bytes, p.accuracy),
            6,
            color.filled(),
        )))?;
        let y = 30 + row * i as i32;
        legend.draw(&Circle::new((14, y), 6, color.filled()))?;
        legend.draw(&Text::new(
            format!(
                "{} — {:.2} %, {:.1} KB",
                p.label,
                p.accuracy,
                p.bytes / 1000.0
            ),
            (28, y - 7),
            (FAMILY, 13),
        ))?;
    }
    Ok(())
}

/// One group of [`latency_bars_png`]: a model and each engine's latency.
#[derive(Clone, Debug, PartialEq)]
pub struct BarGroup {
    /// The model's name under its group.
    pub label: String,
    /// `(engine, microseconds)`, one bar each, in legend order.
    pub bars: Vec<(String, f64)>,
}

/// Draws grouped bars of latency (µs, log scale), one group per model and
/// one colour per engine, as a [`LATENCY_BARS_SIZE`] PNG at `path`.
pub fn latency_bars_png(path: &Path, title: &str, groups: &[BarGroup]) -> Result<(), PlotError> {
    let values: Vec<f64> = groups
        .iter()
        .flat_map(|g| g.bars.iter().map(|b| b.1))
        .filter(|v| v.is_finite() && *v > 0.0)
        .collect();
    if values.is_empty() {
        return Err(PlotError::Empty {
            path: path.into(),
            what: "set of latencies",
        });
    }
    write_png(path, LATENCY_BARS_SIZE, |root| {
        draw_latency_bars(root, title, groups, &values)
    })
}

fn draw_latency_bars<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    title: &str,
    groups: &[BarGroup],
    values: &[f64],
) -> AreaResult<DB> {
    root.fill(&WHITE)?;
    let root = root.titled(title, (FAMILY, 22))?;
    let lo = values.iter().copied().fold(f64::INFINITY, f64::min) / 2.0;
    let hi = values.iter().copied().fold(0.0, f64::max) * 2.0;
    let mut engines: Vec<&str> = Vec::new();
    for g in groups {
        for (e, _) in &g.bars {
            if !engines.contains(&e.as_str()) {
                engines.push(e);
            }
        }
    }
    let n = groups.len() as f64;
    let mut chart = ChartBuilder::on(&root)
        .margin(14)
        .x_label_area_size(60)
        .y_label_area_size(70)
        .build_cartesian_2d(0.0..n, (lo..hi).log_scale())?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(groups.len().max(1) * 2 + 1)
        .x_label_formatter(&|x| {
            // Labels sit at the middle of each group.
            let i = x.floor() as usize;
            match groups.get(i) {
                Some(g) if (x - x.floor() - 0.5).abs() < 1e-6 => g.label.clone(),
                _ => String::new(),
            }
        })
        .y_desc("median latency, µs (log scale)")
        .label_style((FAMILY, 13))
        .axis_desc_style((FAMILY, 15))
        .draw()?;
    let width = 0.8 / engines.len().max(1) as f64;
    for (k, engine) in engines.iter().enumerate() {
        let color = MARKER_COLORS[k % MARKER_COLORS.len()];
        let bars = groups.iter().enumerate().filter_map(|(i, g)| {
            let v = g.bars.iter().find(|(e, _)| e == engine)?.1;
            let x0 = i as f64 + 0.1 + k as f64 * width;
            (v.is_finite() && v > 0.0)
                .then(|| Rectangle::new([(x0, lo), (x0 + width * 0.9, v)], color.filled()))
        });
        chart
            .draw_series(bars)?
            .label(engine.to_string())
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 12, y + 5)], color.filled()));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font((FAMILY, 14))
        .draw()
}

/// One bar of [`accuracy_bars_png`]: a method's mean accuracy and its spread.
#[derive(Clone, Debug, PartialEq)]
pub struct AccuracyBar {
    /// The method's name under its bar.
    pub label: String,
    /// Mean test accuracy as a fraction (0.8712 is drawn as 87.12 %).
    pub accuracy: f64,
    /// Its standard deviation over seeds, as a fraction (drawn as an error
    /// bar; NaN draws none).
    pub std: f64,
    /// Training time in seconds, written above the bar (NaN writes nothing).
    pub seconds: f64,
}

/// Draws one bar per method as an [`ACCURACY_BARS_SIZE`] PNG at `path`:
/// test accuracy in % (mean, with a ±std error bar) on a linear axis zoomed
/// to the bars' range, so differences of tenths of a point show; methods
/// named under their bars (turned upright and cut where they do not fit side
/// by side), and each bar's training time written above it. Error bars stop
/// at 0 and 100 %. Bars whose accuracy is not finite are left out.
pub fn accuracy_bars_png(path: &Path, title: &str, bars: &[AccuracyBar]) -> Result<(), PlotError> {
    let usable: Vec<&AccuracyBar> = bars.iter().filter(|b| b.accuracy.is_finite()).collect();
    if usable.is_empty() {
        return Err(PlotError::Empty {
            path: path.into(),
            what: "set of accuracies",
        });
    }
    write_png(path, ACCURACY_BARS_SIZE, |root| {
        draw_accuracy_bars(root, title, &usable)
    })
}

/// `(mean, std)` of a bar in %; a std that is not finite is `None`.
fn bar_percent(bar: &AccuracyBar) -> (f64, Option<f64>) {
    let std = bar.std.is_finite().then(|| bar.std.abs() * 100.0);
    (bar.accuracy * 100.0, std)
}

/// The ends of a bar's error bar in %, kept within 0–100 %; the mean alone
/// where it has no std.
fn whisker_ends(bar: &AccuracyBar) -> (f64, f64) {
    let (mean, std) = bar_percent(bar);
    let std = std.unwrap_or(0.0);
    (
        (mean - std).max(0.0_f64.min(mean)),
        (mean + std).min(100.0_f64.max(mean)),
    )
}

/// `41 s`, `3.2 s`; empty where `seconds` is not finite.
fn seconds_text(seconds: f64) -> String {
    match seconds {
        s if !s.is_finite() => String::new(),
        s if s.abs() < 9.95 => format!("{s:.1} s"),
        s => format!("{s:.0} s"),
    }
}

fn draw_accuracy_bars<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    title: &str,
    bars: &[&AccuracyBar],
) -> AreaResult<DB> {
    root.fill(&WHITE)?;
    let root = root.titled(title, (FAMILY, 22))?;
    let (lo, hi) = bars
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), b| {
            let (down, up) = whisker_ends(b);
            (lo.min(down), hi.max(up))
        });
    let pad = ((hi - lo) * 0.08).max(0.1);
    // Bars start at the bottom of the zoomed axis; the top keeps room for
    // the training times.
    let (y_lo, y_hi) = (lo - pad, hi + pad + (hi - lo + 2.0 * pad) * 0.07);

    // Labels side by side where each fits its bar's slot, else upright.
    let (margin, y_area, gap, max_upright) = (14, 70, 6, 170);
    let n = bars.len();
    let font = TextStyle::from((FAMILY, 13).into_font()).color(&BLACK);
    let slot = (root.dim_in_pixel().0 as i32 - 2 * margin - y_area) / n as i32;
    let mut widest = 0;
    for b in bars {
        widest = widest.max(root.estimate_text_size(&b.label, &font)?.0 as i32);
    }
    let upright = widest > slot - 8;
    let mut labels = Vec::with_capacity(n);
    for b in bars {
        labels.push(if upright {
            fit_text(&root, &b.label, &font, max_upright as u32)?
        } else {
            b.label.clone()
        });
    }
    let label_h = if upright {
        let mut w = 0;
        for l in &labels {
            w = w.max(root.estimate_text_size(l, &font)?.0 as i32);
        }
        w
    } else {
        root.estimate_text_size("Mg", &font)?.1 as i32
    };

    let mut chart = ChartBuilder::on(&root)
        .margin(margin)
        .x_label_area_size(gap + label_h + 12)
        .y_label_area_size(y_area)
        .build_cartesian_2d(0.0..n as f64, y_lo..y_hi)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(0)
        .y_labels(10)
        .y_desc("test accuracy (%)")
        .label_style((FAMILY, 13))
        .axis_desc_style((FAMILY, 15))
        .draw()?;

    let bar_color = MARKER_COLORS[0];
    chart.draw_series(bars.iter().enumerate().map(|(i, b)| {
        let x = i as f64;
        let top = bar_percent(b).0;
        Rectangle::new([(x + 0.15, y_lo), (x + 0.85, top)], bar_color.filled())
    }))?;
    let whisker = BLACK.stroke_width(2);
    for (i, b) in bars.iter().enumerate() {
        let x = i as f64 + 0.5;
        if bar_percent(b).1.is_some_and(|s| s > 0.0) {
            let (down, up) = whisker_ends(b);
            let caps = [(x, down), (x, up)]
                .map(|(x, y)| PathElement::new(vec![(x - 0.08, y), (x + 0.08, y)], whisker));
            chart.draw_series(
                std::iter::once(PathElement::new(vec![(x, down), (x, up)], whisker)).chain(caps),
            )?;
        }
    }

    let area = chart.plotting_area();
    let above = TextStyle::from((FAMILY, 12).into_font())
        .color(&RGBColor(60, 60, 60))
        .pos(Pos::new(HPos::Center, VPos::Bottom));
    let under = if upright {
        font.transform(FontTransform::Rotate270)
            .pos(Pos::new(HPos::Right, VPos::Center))
    } else {
        font.pos(Pos::new(HPos::Center, VPos::Top))
    };
    for (i, (b, label)) in bars.iter().zip(&labels).enumerate() {
        let x = i as f64 + 0.5;
        let time = seconds_text(b.seconds);
        if !time.is_empty() {
            let top = whisker_ends(b).1;
            area.draw(&(EmptyElement::at((x, top)) + Text::new(time, (0, -4), above.clone())))?;
        }
        area.draw(
            &(EmptyElement::at((x, y_lo)) + Text::new(label.clone(), (0, gap), under.clone())),
        )?;
    }
    Ok(())
}

/// Distinct marker colors (Tableau 20's saturated half, then its light half).
const MARKER_COLORS: [RGBColor; 16] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
    RGBColor(0, 0, 0),
    RGBColor(174, 199, 232),
    RGBColor(255, 152, 150),
    RGBColor(152, 223, 138),
    RGBColor(197, 176, 213),
    RGBColor(255, 187, 120),
];

type AreaResult<DB> = Result<(), DrawingAreaErrorKind<<DB as DrawingBackend>::ErrorType>>;

/// Renders `draw` into a temporary PNG beside `path`, then renames it onto
/// `path`. On any failure the temporary file is removed.
fn write_png<F>(path: &Path, size: (u32, u32), draw: F) -> Result<(), PlotError>
where
    F: for<'a> FnOnce(&DrawingArea<BitMapBackend<'a>, Shift>) -> AreaResult<BitMapBackend<'a>>,
{
    register_font().map_err(|problem| problem.into_error(path))?;
    let tmp = temp_path(path)?;
    // Claim the name first: a missing or read-only directory fails here with
    // a plain I/O error, before any drawing.
    std::fs::File::create_new(&tmp).map_err(|e| PlotError::Write {
        path: path.into(),
        reason: format!("cannot create {}: {e}", tmp.display()),
    })?;
    let result = render(path, &tmp, size, draw).and_then(|()| {
        std::fs::rename(&tmp, path).map_err(|e| PlotError::Write {
            path: path.into(),
            reason: e.to_string(),
        })
    });
    if result.is_err() {
        // The backend may have written part of the file; never leave it.
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

fn render<F>(path: &Path, tmp: &Path, size: (u32, u32), draw: F) -> Result<(), PlotError>
where
    F: for<'a> FnOnce(&DrawingArea<BitMapBackend<'a>, Shift>) -> AreaResult<BitMapBackend<'a>>,
{
    let root = BitMapBackend::new(tmp, size).into_drawing_area();
    draw(&root).map_err(|e| PlotError::Draw {
        path: path.into(),
        reason: e.to_string(),
    })?;
    root.present().map_err(|e| PlotError::Write {
        path: path.into(),
        reason: e.to_string(),
    })
}

/// `dir/.name.<pid>.<n>.tmp.png`: same directory (so the rename is atomic),
/// unique per process and call, and ending in `.png` so the encoder picks PNG.
fn temp_path(path: &Path) -> Result<PathBuf, PlotError> {
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    let name = path.file_name().ok_or_else(|| PlotError::Write {
        path: path.into(),
        reason: "the path has no file name".into(),
    })?;
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let tmp = format!(
        ".{}.{}.{n}.tmp.png",
        name.to_string_lossy(),
        std::process::id()
    );
    Ok(path.with_file_name(tmp))
}

/// Why the font could not be registered (cached once per process).
#[derive(Clone, Debug, PartialEq)]
enum FontProblem {
    Missing { font: PathBuf, reason: String },
    Invalid { font: PathBuf },
}

impl FontProblem {
    fn into_error(self, path: &Path) -> PlotError {
        let path = path.into();
        match self {
            FontProblem::Missing { font, reason } => PlotError::FontMissing { path, font, reason },
            FontProblem::Invalid { font } => PlotError::FontInvalid { path, font },
        }
    }
}

/// Registers [`FONT_PATH`] as plotters' `sans-serif` family, once per process.
fn register_font() -> Result<(), FontProblem> {
    static REGISTERED: OnceLock<Result<(), FontProblem>> = OnceLock::new();
    REGISTERED
        .get_or_init(|| {
            let bytes = read_font(Path::new(FONT_PATH))?;
            plotters::style::register_font(FAMILY, FontStyle::Normal, bytes).map_err(|_| {
                FontProblem::Invalid {
                    font: FONT_PATH.into(),
                }
            })
        })
        .clone()
}

/// Reads a font file and leaks it: plotters keeps fonts for the whole process.
fn read_font(font: &Path) -> Result<&'static [u8], FontProblem> {
    match std::fs::read(font) {
        Ok(bytes) => Ok(Box::leak(bytes.into_boxed_slice())),
        Err(e) => Err(FontProblem::Missing {
            font: font.into(),
            reason: e.to_string(),
        }),
    }
}

/// One curve of a panel.
struct Curve {
    label: String,
    color: RGBColor,
    points: Vec<(i32, f64)>,
}

impl Curve {
    /// The finite `(epoch, value)` points of `history`, in % if `percent`.
    fn new(
        name: &str,
        color: RGBColor,
        history: &[EpochStats],
        value: impl Fn(&EpochStats) -> Option<f64>,
        percent: bool,
    ) -> Self {
        let scale = if percent { 100.0 } else { 1.0 };
        let points: Vec<(i32, f64)> = history
            .iter()
            .filter_map(|s| Some((s.epoch as i32, value(s)? * scale)))
            .filter(|(_, v)| v.is_finite())
            .collect();
        let label = match points.last() {
            Some((_, v)) if percent => format!("{name} (last {v:.2}%)"),
            Some((_, v)) => format!("{name} (last {v:.4})"),
            None => name.to_string(),
        };
        Curve {
            label,
            color,
            points,
        }
    }
}

fn draw_training<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    title: &str,
    history: &[EpochStats],
) -> AreaResult<DB> {
    root.fill(&WHITE)?;
    let root = root.titled(title, (FAMILY, 24))?;
    let (first, last) = history.iter().fold((usize::MAX, 0), |(lo, hi), s| {
        (lo.min(s.epoch), hi.max(s.epoch))
    });
    // Integer epochs with one empty epoch either side: never a zero-width range.
    let epochs = first as i32 - 1..last as i32 + 1;
    let loss = [
        Curve::new("train", TRAIN_COLOR, history, |s| Some(s.train_loss), false),
        Curve::new("validation", VAL_COLOR, history, |s| s.val_loss, false),
    ];
    let accuracy = [
        Curve::new(
            "train",
            TRAIN_COLOR,
            history,
            |s| Some(s.train_accuracy),
            true,
        ),
        Curve::new("validation", VAL_COLOR, history, |s| s.val_accuracy, true),
    ];
    let (left, right) = root.split_horizontally(root.dim_in_pixel().0 / 2);
    let loss_range = padded_range(&loss, None);
    draw_panel(
        &left,
        "loss",
        "loss",
        epochs.clone(),
        loss_range,
        &loss,
        SeriesLabelPosition::UpperRight,
    )?;
    let accuracy_range = padded_range(&accuracy, Some(0.0..100.0));
    draw_panel(
        &right,
        "accuracy",
        "accuracy (%)",
        epochs,
        accuracy_range,
        &accuracy,
        SeriesLabelPosition::LowerRight,
    )
}

/// The span of all curves' values plus 5% either side; a single value (or
/// none) still gets a nonzero width. `clamp` bounds the result.
fn padded_range(curves: &[Curve], clamp: Option<Range<f64>>) -> Range<f64> {
    let values = curves.iter().flat_map(|c| c.points.iter().map(|p| p.1));
    let (lo, hi) = values.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
        (lo.min(v), hi.max(v))
    });
    if lo > hi {
        return clamp.unwrap_or(0.0..1.0);
    }
    let pad = if hi - lo > 1e-9 * hi.abs().max(1.0) {
        (hi - lo) * 0.05
    } else {
        (hi.abs() * 0.1).max(0.5e-3)
    };
    let (mut lo, mut hi) = (lo - pad, hi + pad);
    if let Some(bounds) = clamp {
        // The data lies within the bounds, so one side keeps its padding.
        (lo, hi) = (lo.max(bounds.start), hi.min(bounds.end));
    }
    lo..hi
}

fn draw_panel<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    caption: &str,
    y_desc: &str,
    epochs: Range<i32>,
    values: Range<f64>,
    curves: &[Curve],
    legend: SeriesLabelPosition,
) -> AreaResult<DB> {
    let x_labels = (epochs.end - epochs.start + 1).clamp(2, 15) as usize;
    let mut chart = ChartBuilder::on(area)
        .caption(caption, (FAMILY, 18))
        .margin(12)
        .x_label_area_size(45)
        .y_label_area_size(65)
        .build_cartesian_2d(epochs, values)?;
    chart
        .configure_mesh()
        .x_desc("epoch")
        .y_desc(y_desc)
        .x_labels(x_labels)
        .y_labels(8)
        .label_style((FAMILY, 13))
        .axis_desc_style((FAMILY, 15))
        .draw()?;
    for curve in curves.iter().filter(|c| !c.points.is_empty()) {
        let color = curve.color;
        chart
            .draw_series(LineSeries::new(
                curve.points.iter().copied(),
                color.stroke_width(2),
            ))?
            .label(curve.label.as_str())
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], color.stroke_width(2)));
        if curve.points.len() <= MAX_MARKERS {
            chart.draw_series(
                curve
                    .points
                    .iter()
                    .map(|&p| Circle::new(p, 3, color.filled())),
            )?;
        }
    }
    if curves.iter().all(|c| c.points.is_empty()) {
        let (w, h) = chart.plotting_area().dim_in_pixel();
        let note = TextStyle::from((FAMILY, 16).into_font())
            .color(&BLACK)
            .pos(Pos::new(HPos::Center, VPos::Center));
        let area = chart.plotting_area().strip_coord_spec();
        return area.draw_text("no finite values", &note, (w as i32 / 2, h as i32 / 2));
    }
    chart
        .configure_series_labels()
        .position(legend)
        .label_font((FAMILY, 14))
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK.mix(0.4))
        .draw()
}

fn draw_confusion<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    title: &str,
    confusion: &[Vec<usize>],
    class_names: &[String],
) -> AreaResult<DB> {
    let n = confusion.len();
    let total: usize = confusion.iter().flatten().sum();
    let correct: usize = (0..n).map(|i| confusion[i][i]).sum();
    let heading = match total {
        0 => format!("{title} (no samples)"),
        _ => format!(
            "{title}: accuracy {:.2}% ({correct}/{total})",
            100.0 * correct as f64 / total as f64
        ),
    };
    root.fill(&WHITE)?;
    let root = root.titled(&heading, (FAMILY, 22))?;
    let (width, height) = root.dim_in_pixel();
    let (width, height) = (width as i32, height as i32);

    // Layout: axis title, names, grid, color bar; names are cut to fit.
    let (axis_title, gap, bar_room, max_name) = (26, 8, 90, 150);
    let probe = TextStyle::from((FAMILY, 14).into_font());
    let mut names = Vec::with_capacity(n);
    for name in class_names {
        names.push(fit_text(&root, name, &probe, max_name as u32)?);
    }
    let mut name_w = 0;
    for name in &names {
        name_w = name_w.max(root.estimate_text_size(name, &probe)?.0 as i32);
    }
    let (x0, y0) = (axis_title + name_w + gap, 6);
    let side = (width - x0 - bar_room)
        .min(height - y0 - gap - name_w - axis_title)
        .max(n as i32);
    let edge = |i: usize| (i as i32 * side) / n as i32;
    let cell = side / n as i32;

    for (r, row) in confusion.iter().enumerate() {
        let row_total: usize = row.iter().sum();
        for (c, &count) in row.iter().enumerate() {
            let rate = if row_total == 0 {
                0.0
            } else {
                count as f64 / row_total as f64
            };
            let (x, y, x1, y1) = (
                x0 + edge(c),
                y0 + edge(r),
                x0 + edge(c + 1),
                y0 + edge(r + 1),
            );
            root.draw(&Rectangle::new([(x, y), (x1, y1)], heat(rate).filled()))?;
            root.draw(&Rectangle::new([(x, y), (x1, y1)], RGBColor(200, 200, 200)))?;
            if cell >= 14 {
                let ink = if rate > 0.5 { WHITE } else { BLACK };
                let size = (cell as f64 * 0.3).clamp(7.0, 16.0);
                let style = TextStyle::from((FAMILY, size).into_font())
                    .color(&ink)
                    .pos(Pos::new(HPos::Center, VPos::Center));
                root.draw_text(&count.to_string(), &style, ((x + x1) / 2, (y + y1) / 2))?;
            }
        }
    }

    if cell >= 6 {
        let size = (cell as f64 * 0.8).min(14.0);
        let font = TextStyle::from((FAMILY, size).into_font()).color(&BLACK);
        let rows = font.pos(Pos::new(HPos::Right, VPos::Center));
        let cols = font
            .transform(FontTransform::Rotate270)
            .pos(Pos::new(HPos::Right, VPos::Center));
        for (i, name) in names.iter().enumerate() {
            let mid = (edge(i) + edge(i + 1)) / 2;
            root.draw_text(name, &rows, (x0 - gap, y0 + mid))?;
            root.draw_text(name, &cols, (x0 + mid, y0 + side + gap))?;
        }
    }
    let desc = TextStyle::from((FAMILY, 15).into_font())
        .color(&BLACK)
        .pos(Pos::new(HPos::Center, VPos::Center));
    root.draw_text(
        "predicted class",
        &desc,
        (x0 + side / 2, y0 + side + gap + name_w + axis_title / 2),
    )?;
    let desc = desc.transform(FontTransform::Rotate270);
    root.draw_text("true class", &desc, (axis_title / 2, y0 + side / 2))?;

    // Color bar: the row-normalized rate, 100% at the top.
    let (bx, bw) = (x0 + side + 24, 18);
    for y in 0..side {
        let rate = 1.0 - y as f64 / (side - 1).max(1) as f64;
        root.draw(&Rectangle::new(
            [(bx, y0 + y), (bx + bw, y0 + y + 1)],
            heat(rate).filled(),
        ))?;
    }
    root.draw(&Rectangle::new(
        [(bx, y0), (bx + bw, y0 + side)],
        BLACK.mix(0.5),
    ))?;
    let ticks = TextStyle::from((FAMILY, 13).into_font())
        .color(&BLACK)
        .pos(Pos::new(HPos::Left, VPos::Center));
    for (rate, label) in [(1.0, "100%"), (0.5, "50%"), (0.0, "0%")] {
        let y = y0 + ((1.0 - rate) * (side - 1) as f64) as i32;
        root.draw_text(label, &ticks, (bx + bw + 6, y))?;
    }
    let caption = desc.pos(Pos::new(HPos::Center, VPos::Top));
    root.draw_text("row rate", &caption, (bx + bw + 40, y0 + side / 2))
}

/// White (rate 0) to [`HEAT_DARK`] (rate 1).
fn heat(rate: f64) -> RGBColor {
    let mix = |dark: u8| (255.0 - rate.clamp(0.0, 1.0) * (255.0 - dark as f64)).round() as u8;
    RGBColor(mix(HEAT_DARK.0), mix(HEAT_DARK.1), mix(HEAT_DARK.2))
}

/// `text`, cut and ended with "…" where it is wider than `max` pixels.
fn fit_text<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    text: &str,
    style: &TextStyle,
    max: u32,
) -> Result<String, DrawingAreaErrorKind<DB::ErrorType>> {
    if area.estimate_text_size(text, style)?.0 <= max {
        return Ok(text.to_string());
    }
    let mut chars: Vec<char> = text.chars().collect();
    while !chars.is_empty() {
        chars.pop();
        let cut = format!("{}…", chars.iter().collect::<String>().trim_end());
        if area.estimate_text_size(&cut, style)?.0 <= max {
            return Ok(cut);
        }
    }
    Ok("…".to_string())
}

#[cfg(test)]
#[path = "plot_tests.rs"]
mod tests;
