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
mod tests {
    //! Set `TINYKD_KEEP_PLOTS=1` to keep the rendered charts for a look.
    use super::*;
    use std::io::Read;

    const PNG_SIGNATURE: [u8; 8] = [0x89, b'P', b'N', b'G', b'\r', b'\n', 0x1a, b'\n'];

    /// A fresh, empty directory under the system temp dir.
    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("tinykd-report-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn done(dir: &Path) {
        if std::env::var_os("TINYKD_KEEP_PLOTS").is_none() {
            std::fs::remove_dir_all(dir).unwrap();
        }
    }

    /// Files in `dir` other than `keep`: leftovers of a failed render.
    fn strays(dir: &Path, keep: &[&str]) -> Vec<String> {
        std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|name| !keep.contains(&name.as_str()))
            .collect()
    }

    /// Decodes an 8-bit RGB/RGBA, non-interlaced PNG (what plotters writes):
    /// its size and how many pixels are not white.
    fn decode(file: &Path) -> ((u32, u32), usize) {
        let bytes = std::fs::read(file).unwrap();
        assert_eq!(bytes[..8], PNG_SIGNATURE, "{} is not a PNG", file.display());
        assert_eq!(&bytes[12..16], b"IHDR");
        let be = |at: usize| u32::from_be_bytes(bytes[at..at + 4].try_into().unwrap());
        let (width, height) = (be(16), be(20));
        let (depth, color, interlace) = (bytes[24], bytes[25], bytes[28]);
        assert_eq!((depth, interlace), (8, 0), "unexpected PNG layout");
        let channels = match color {
            2 => 3,
            6 => 4,
            other => panic!("unexpected PNG color type {other}"),
        };
        let (mut at, mut zlib) = (8, Vec::new());
        while at + 8 <= bytes.len() {
            let len = be(at) as usize;
            if &bytes[at + 4..at + 8] == b"IDAT" {
                zlib.extend_from_slice(&bytes[at + 8..at + 8 + len]);
            }
            at += 12 + len;
        }
        let mut raw = Vec::new();
        flate2::read::ZlibDecoder::new(&zlib[..])
            .read_to_end(&mut raw)
            .unwrap();
        let stride = width as usize * channels;
        assert_eq!(
            raw.len(),
            height as usize * (stride + 1),
            "truncated image data"
        );
        let (mut prev, mut non_white) = (vec![0u8; stride], 0);
        for line in raw.chunks(stride + 1) {
            let mut cur = line[1..].to_vec();
            for i in 0..stride {
                let a = if i >= channels {
                    cur[i - channels] as i16
                } else {
                    0
                };
                let (b, c) = (
                    prev[i] as i16,
                    if i >= channels {
                        prev[i - channels] as i16
                    } else {
                        0
                    },
                );
                let predict = match line[0] {
                    0 => 0,
                    1 => a,
                    2 => b,
                    3 => (a + b) / 2,
                    4 => {
                        let p = a + b - c;
                        let (pa, pb, pc) = ((p - a).abs(), (p - b).abs(), (p - c).abs());
                        if pa <= pb && pa <= pc {
                            a
                        } else if pb <= pc {
                            b
                        } else {
                            c
                        }
                    }
                    f => panic!("bad PNG filter {f}"),
                };
                cur[i] = cur[i].wrapping_add(predict as u8);
            }
            non_white += cur
                .chunks(channels)
                .filter(|px| px[..3] != [255, 255, 255])
                .count();
            prev = cur;
        }
        ((width, height), non_white)
    }

    /// Asserts `file` is a PNG of `size` with a share of drawn pixels.
    fn assert_chart(file: &Path, size: (u32, u32)) {
        let (got, non_white) = decode(file);
        assert_eq!(got, size, "{}", file.display());
        let pixels = (size.0 * size.1) as usize;
        assert!(
            non_white * 100 > pixels,
            "{}: only {non_white} of {pixels} pixels drawn",
            file.display()
        );
        assert!(non_white < pixels, "{}: no white left", file.display());
    }

    fn history(epochs: usize, validation: bool) -> Vec<EpochStats> {
        (1..=epochs)
            .map(|e| {
                let t = e as f64;
                EpochStats {
                    epoch: e,
                    lr: 0.01 / t,
                    train_loss: 1.6 / t.sqrt(),
                    train_accuracy: 0.95 - 0.4 / t,
                    val_loss: validation.then(|| 1.7 / t.sqrt() + 0.02 * t),
                    val_accuracy: validation.then(|| 0.92 - 0.38 / t),
                    seconds: 3.0,
                    images_per_second: 20_000.0,
                }
            })
            .collect()
    }

    fn fashion_names() -> Vec<String> {
        crate::data::CLASS_NAMES
            .iter()
            .map(|s| s.to_string())
            .collect()
    }

    fn confusion(n: usize) -> Vec<Vec<usize>> {
        (0..n)
            .map(|r| {
                (0..n)
                    .map(|c| {
                        if r == c {
                            850 + 13 * r
                        } else {
                            (r * 7 + c * 3) % 23
                        }
                    })
                    .collect()
            })
            .collect()
    }

    #[test]
    fn training_curves_twelve_epochs_with_validation() {
        let dir = scratch("curves12");
        let file = dir.join("curves.png");
        training_curves_png(&file, "student, 12 epochs", &history(12, true)).unwrap();
        assert_chart(&file, TRAINING_CURVES_SIZE);
        assert_eq!(strays(&dir, &["curves.png"]), Vec::<String>::new());
        done(&dir);
    }

    #[test]
    fn training_curves_one_epoch_without_validation() {
        let dir = scratch("curves1");
        let file = dir.join("curves.png");
        let mut one = history(1, false);
        training_curves_png(&file, "one epoch", &one).unwrap();
        assert_chart(&file, TRAINING_CURVES_SIZE);
        // A diverged run (NaN loss) and a perfect one still draw.
        one[0].train_loss = f64::NAN;
        one[0].train_accuracy = 1.0;
        let nan = dir.join("curves-nan.png");
        training_curves_png(&nan, "one epoch, NaN loss", &one).unwrap();
        assert_chart(&nan, TRAINING_CURVES_SIZE);
        done(&dir);
    }

    #[test]
    fn training_curves_reject_empty_history() {
        let file = std::env::temp_dir().join("tinykd-never-written.png");
        let err = training_curves_png(&file, "empty", &[]).unwrap_err();
        assert!(matches!(err, PlotError::Empty { .. }), "{err}");
        assert!(!file.exists());
    }

    #[test]
    fn confusion_fashion_mnist() {
        let dir = scratch("confusion");
        let file = dir.join("confusion.png");
        confusion_png(
            &file,
            "Fashion-MNIST test",
            &confusion(10),
            &fashion_names(),
        )
        .unwrap();
        assert_chart(&file, CONFUSION_SIZE);
        assert_eq!(strays(&dir, &["confusion.png"]), Vec::<String>::new());
        done(&dir);
    }

    #[test]
    fn confusion_long_names_and_an_empty_row() {
        let dir = scratch("confusion3");
        let file = dir.join("confusion.png");
        let names = [
            "a class name far too long to fit beside the grid",
            "b",
            "never seen",
        ];
        let names = names.map(String::from);
        let m = vec![vec![5, 1, 0], vec![2, 7, 0], vec![0, 0, 0]];
        confusion_png(&file, "three classes", &m, &names).unwrap();
        assert_chart(&file, CONFUSION_SIZE);
        done(&dir);
    }

    #[test]
    fn confusion_rejects_non_square_matrix() {
        let dir = scratch("nonsquare");
        let file = dir.join("confusion.png");
        let mut m = confusion(10);
        m[3].pop();
        let err = confusion_png(&file, "bad", &m, &fashion_names()).unwrap_err();
        assert!(
            matches!(
                err,
                PlotError::NotSquare {
                    row: 3,
                    len: 9,
                    classes: 10,
                    ..
                }
            ),
            "{err}"
        );
        assert!(
            err.to_string().contains(&file.display().to_string()),
            "{err}"
        );
        assert_eq!(strays(&dir, &[]), Vec::<String>::new());
        done(&dir);
    }

    #[test]
    fn confusion_rejects_name_mismatch() {
        let dir = scratch("names");
        let file = dir.join("confusion.png");
        let err = confusion_png(&file, "bad", &confusion(10), &fashion_names()[..9]).unwrap_err();
        assert!(
            matches!(
                err,
                PlotError::ClassNames {
                    classes: 10,
                    names: 9,
                    ..
                }
            ),
            "{err}"
        );
        assert!(
            err.to_string().contains(&file.display().to_string()),
            "{err}"
        );
        assert_eq!(strays(&dir, &[]), Vec::<String>::new());
        done(&dir);
    }

    #[test]
    fn unwritable_path_is_an_error_naming_it() {
        let dir = scratch("unwritable");
        let file = dir.join("no-such-dir").join("chart.png");
        let err = training_curves_png(&file, "t", &history(3, true)).unwrap_err();
        assert!(matches!(err, PlotError::Write { .. }), "{err}");
        assert!(
            err.to_string().contains(&file.display().to_string()),
            "{err}"
        );
        let err = confusion_png(&file, "t", &confusion(10), &fashion_names()).unwrap_err();
        assert!(
            err.to_string().contains(&file.display().to_string()),
            "{err}"
        );
        assert!(!file.exists());
        assert_eq!(strays(&dir, &[]), Vec::<String>::new());
        done(&dir);
    }

    #[test]
    fn failed_rename_leaves_no_partial_file() {
        // The target is a non-empty directory: rendering succeeds, the rename fails.
        let dir = scratch("rename");
        let file = dir.join("chart.png");
        std::fs::create_dir_all(file.join("occupied")).unwrap();
        let err = training_curves_png(&file, "t", &history(2, false)).unwrap_err();
        assert!(matches!(err, PlotError::Write { .. }), "{err}");
        assert_eq!(strays(&dir, &["chart.png"]), Vec::<String>::new());
        done(&dir);
    }

    #[test]
    fn missing_font_says_how_to_install_it() {
        let problem = read_font(Path::new("/nonexistent/DejaVuSans.ttf")).unwrap_err();
        let msg = problem.into_error(Path::new("out/chart.png")).to_string();
        assert!(msg.contains("out/chart.png"), "{msg}");
        assert!(
            msg.contains("fonts-dejavu-core") && msg.contains("make setup"),
            "{msg}"
        );
    }
}
