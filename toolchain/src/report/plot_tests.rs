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
    let (size, pixels) = decode_rgb(file);
    let non_white = pixels.iter().filter(|px| **px != [255, 255, 255]).count();
    (size, non_white)
}

/// Decodes a PNG as [`decode`] does: its size and its RGB pixels, row by row.
fn decode_rgb(file: &Path) -> ((u32, u32), Vec<[u8; 3]>) {
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
    let (mut prev, mut pixels) = (vec![0u8; stride], Vec::new());
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
        pixels.extend(cur.chunks(channels).map(|px| [px[0], px[1], px[2]]));
        prev = cur;
    }
    ((width, height), pixels)
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

#[test]
fn accuracy_vs_size_draws_every_model_and_refuses_none() {
    let dir = scratch("size");
    let file = dir.join("size.png");
    let point = |label: &str, bytes: f64, accuracy: f64| SizePoint {
        label: label.into(),
        bytes,
        accuracy,
        std: 0.2,
    };
    let points = [
        point("f32", 126_939.0, 87.8),
        point("int8", 51_812.0, 87.7),
        point("int8, same size", 51_812.0, 87.9),
        point("pruned + int8", 24_994.0, 86.8),
    ];
    accuracy_vs_size_png(&file, "ds-cnn: accuracy vs size", &points).unwrap();
    assert_chart(&file, ACCURACY_SIZE_SIZE);
    assert_eq!(strays(&dir, &["size.png"]), Vec::<String>::new());
    // A model without a size cannot be placed; nothing left means no chart.
    let none = dir.join("none.png");
    let err = accuracy_vs_size_png(&none, "empty", &[point("bad", 0.0, 80.0)]).unwrap_err();
    assert!(matches!(err, PlotError::Empty { .. }), "{err}");
    assert!(!none.exists());
    done(&dir);
}

fn accuracy_bar(label: &str, accuracy: f64, std: f64, seconds: f64) -> AccuracyBar {
    AccuracyBar {
        label: label.into(),
        accuracy,
        std,
        seconds,
    }
}

#[test]
fn accuracy_bars_fourteen_methods_with_long_labels() {
    let dir = scratch("accbars14");
    let file = dir.join("bars.png");
    let mut bars: Vec<AccuracyBar> = (0..14)
        .map(|i| {
            accuracy_bar(
                &format!(
                    "method {i}: distillation, temperature {}, alpha 0.{i}",
                    i + 1
                ),
                0.868 + 0.0009 * i as f64,
                0.0015,
                30.0 + 7.5 * i as f64,
            )
        })
        .collect();
    bars[3].std = f64::NAN; // no error bar
    bars[5].seconds = 4.31; // "4.3 s"
    bars[7].seconds = f64::NAN; // no time written
    accuracy_bars_png(&file, "student accuracy by method", &bars).unwrap();
    assert_chart(&file, ACCURACY_BARS_SIZE);
    assert_eq!(strays(&dir, &["bars.png"]), Vec::<String>::new());
    done(&dir);
}

#[test]
fn accuracy_bars_skip_non_finite_and_draw_a_single_bar() {
    let dir = scratch("accbars1");
    let file = dir.join("bars.png");
    let bars = [
        accuracy_bar("diverged", f64::NAN, 0.01, 12.0),
        accuracy_bar("baseline", 0.8712, 0.0, 41.0),
        accuracy_bar("overflowed", f64::INFINITY, 0.0, 9.0),
    ];
    accuracy_bars_png(&file, "one usable bar", &bars).unwrap();
    assert_chart(&file, ACCURACY_BARS_SIZE);
    // Few short labels sit side by side; a perfect score still draws.
    let two = dir.join("two.png");
    let bars = [
        accuracy_bar("kd", 1.0, 0.002, 120.0),
        accuracy_bar("ce", 0.9987, f64::NAN, 95.5),
    ];
    accuracy_bars_png(&two, "two bars", &bars).unwrap();
    assert_chart(&two, ACCURACY_BARS_SIZE);
    assert_eq!(strays(&dir, &["bars.png", "two.png"]), Vec::<String>::new());
    done(&dir);
}

#[test]
fn accuracy_bars_reject_no_finite_accuracy() {
    let dir = scratch("accbars0");
    let file = dir.join("bars.png");
    for bars in [vec![], vec![accuracy_bar("nan", f64::NAN, 0.01, 10.0)]] {
        let err = accuracy_bars_png(&file, "empty", &bars).unwrap_err();
        assert!(
            matches!(
                err,
                PlotError::Empty {
                    what: "set of accuracies",
                    ..
                }
            ),
            "{err}"
        );
        assert!(
            err.to_string().contains(&file.display().to_string()),
            "{err}"
        );
    }
    assert!(!file.exists());
    assert_eq!(strays(&dir, &[]), Vec::<String>::new());
    done(&dir);
}

#[test]
fn accuracy_bars_text_helpers() {
    assert_eq!(seconds_text(41.2), "41 s");
    assert_eq!(seconds_text(4.31), "4.3 s");
    assert_eq!(seconds_text(9.96), "10 s");
    assert_eq!(seconds_text(f64::NAN), "");
    let (mean, std) = bar_percent(&accuracy_bar("a", 0.8712, 0.0015, 1.0));
    assert!((mean - 87.12).abs() < 1e-9 && (std.unwrap() - 0.15).abs() < 1e-9);
    assert_eq!(bar_percent(&accuracy_bar("a", 0.5, f64::NAN, 1.0)).1, None);
    // Error bars stay within 0–100 %; without a std they collapse to the mean.
    let (down, up) = whisker_ends(&accuracy_bar("a", 0.995, 0.01, 1.0));
    assert!((down - 98.5).abs() < 1e-9 && up == 100.0, "{down} {up}");
    assert_eq!(whisker_ends(&accuracy_bar("a", 0.004, 0.01, 1.0)).0, 0.0);
    assert_eq!(
        whisker_ends(&accuracy_bar("a", 0.5, f64::NAN, 1.0)),
        (50.0, 50.0)
    );
}

#[test]
fn accuracy_bars_zoom_shows_tenths_of_a_point() {
    // 87.0 % and 87.2 %: on an axis from 0 the bars would be equally tall.
    let dir = scratch("accbarszoom");
    let file = dir.join("bars.png");
    let bars = [
        accuracy_bar("low", 0.870, 0.0, 10.0),
        accuracy_bar("high", 0.872, 0.0, 10.0),
    ];
    accuracy_bars_png(&file, "zoom", &bars).unwrap();
    let ((width, height), pixels) = decode_rgb(&file);
    assert_eq!((width, height), ACCURACY_BARS_SIZE);
    let c = MARKER_COLORS[0];
    let mut halves = [0usize; 2];
    for (i, px) in pixels.iter().enumerate() {
        if *px == [c.0, c.1, c.2] {
            halves[usize::from(i as u32 % width >= width / 2)] += 1;
        }
    }
    let [low, high] = halves;
    assert!(low > 1000, "the low bar is barely drawn: {low} pixels");
    assert!(
        high as f64 > 1.5 * low as f64,
        "bars not zoomed: {low} vs {high} pixels"
    );
    done(&dir);
}
