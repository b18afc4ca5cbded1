//! The Fashion-MNIST dataset: 28×28 greyscale images of clothing in ten
//! classes, 60 000 for training and 10 000 for testing, as IDX files.

use super::idx::{dims_string, read_idx};
use super::rng::{Rng, STREAM_SPLIT};
use super::DataError;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Where the Debian package `dataset-fashion-mnist` installs the files.
pub const DEFAULT_DIR: &str = "/usr/share/datasets/fashion-mnist";

/// Fashion-MNIST's class names, by label.
pub const CLASS_NAMES: [&str; 10] = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
];

/// Fashion-MNIST's image height and width.
pub const SIDE: usize = 28;

/// Which of the dataset's two files sets to load.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Split {
    /// The 60 000 training images (`train-*`).
    Train,
    /// The 10 000 test images (`t10k-*`).
    Test,
}

impl Split {
    /// The file-name prefix of this split.
    pub fn prefix(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Test => "t10k",
        }
    }
}

/// Sample indices of a training set split into training and validation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TrainVal {
    /// Indices left for training, ascending.
    pub train: Vec<usize>,
    /// Indices held out for validation, ascending.
    pub val: Vec<usize>,
}

/// Images (u8, `len × rows × cols`, row-major) with optional labels.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Dataset {
    /// Pixels, `len × rows × cols`, 0 = black.
    pub images: Vec<u8>,
    /// One label per image, each `< classes`; empty when unlabeled.
    pub labels: Vec<u8>,
    /// Image height.
    pub rows: usize,
    /// Image width.
    pub cols: usize,
    /// Number of classes; 0 when unlabeled.
    pub classes: usize,
    /// Class names by label; empty when unlabeled.
    pub class_names: Vec<String>,
}

impl Dataset {
    /// Loads a Fashion-MNIST split from `dir` (files `.gz` or plain).
    pub fn load(dir: &Path, split: Split) -> Result<Self, DataError> {
        if !dir.is_dir() {
            return Err(DataError::Missing { path: dir.into() });
        }
        let prefix = split.prefix();
        let images_path = find(dir, &format!("{prefix}-images-idx3-ubyte"))?;
        let labels_path = find(dir, &format!("{prefix}-labels-idx1-ubyte"))?;
        let mut ds = Self::load_images(&images_path)?;
        if (ds.rows, ds.cols) != (SIDE, SIDE) {
            return Err(DataError::BadHeader {
                path: images_path,
                reason: format!(
                    "header says {}×{}×{}, expected {SIDE}×{SIDE} images",
                    ds.len(),
                    ds.rows,
                    ds.cols
                ),
            });
        }
        let labels = read_idx(&labels_path, 1)?.data;
        if labels.len() != ds.len() {
            return Err(DataError::CountMismatch {
                images_path,
                images: ds.len(),
                labels_path,
                labels: labels.len(),
            });
        }
        check_labels(&labels_path, &labels, CLASS_NAMES.len())?;
        ds.labels = labels;
        ds.classes = CLASS_NAMES.len();
        ds.class_names = CLASS_NAMES.iter().map(|s| s.to_string()).collect();
        Ok(ds)
    }

    /// Loads an unlabeled image set from one IDX images file (`.gz` or
    /// plain) of any image size, e.g. a transfer set for distillation.
    pub fn load_images(path: &Path) -> Result<Self, DataError> {
        let idx = read_idx(path, 3)?;
        let &[_, rows, cols] = idx.dims.as_slice() else {
            unreachable!("read_idx returns rank-3 dims for rank 3");
        };
        if rows == 0 || cols == 0 {
            return Err(DataError::BadHeader {
                path: path.into(),
                reason: format!("header says {}: empty images", dims_string(&idx.dims)),
            });
        }
        Self::unlabeled(idx.data, rows, cols)
    }

    /// A labeled dataset from memory; checks sizes and label range.
    pub fn new(
        images: Vec<u8>,
        labels: Vec<u8>,
        rows: usize,
        cols: usize,
        class_names: Vec<String>,
    ) -> Result<Self, DataError> {
        let mut ds = Self::unlabeled(images, rows, cols)?;
        if labels.len() != ds.len() {
            return Err(DataError::Config(format!(
                "{} labels for {} images",
                labels.len(),
                ds.len()
            )));
        }
        if class_names.is_empty() {
            return Err(DataError::Config("a labeled dataset needs classes".into()));
        }
        check_labels(Path::new("<in-memory labels>"), &labels, class_names.len())?;
        ds.labels = labels;
        ds.classes = class_names.len();
        ds.class_names = class_names;
        Ok(ds)
    }

    /// An unlabeled dataset from memory; checks sizes.
    pub fn unlabeled(images: Vec<u8>, rows: usize, cols: usize) -> Result<Self, DataError> {
        let pixels = rows * cols;
        if pixels == 0 || !images.len().is_multiple_of(pixels) {
            return Err(DataError::Config(format!(
                "{} bytes are not a whole number of {rows}×{cols} images",
                images.len()
            )));
        }
        Ok(Dataset {
            images,
            labels: Vec::new(),
            rows,
            cols,
            classes: 0,
            class_names: Vec::new(),
        })
    }

    /// Number of images.
    pub fn len(&self) -> usize {
        self.images.len() / self.pixels().max(1)
    }

    /// Whether there are no images.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Pixels per image.
    pub fn pixels(&self) -> usize {
        self.rows * self.cols
    }

    /// Whether the dataset has labels.
    pub fn is_labeled(&self) -> bool {
        self.classes > 0
    }

    /// Image `i`'s pixels, row-major. Panics if `i >= len()`.
    pub fn image(&self, i: usize) -> &[u8] {
        let p = self.pixels();
        &self.images[i * p..(i + 1) * p]
    }

    /// Number of samples per class (empty when unlabeled).
    pub fn class_counts(&self) -> Vec<usize> {
        let mut counts = vec![0; self.classes];
        for &l in &self.labels {
            counts[usize::from(l)] += 1;
        }
        counts
    }

    /// Splits `0..len()` into training and validation indices by a
    /// permutation that depends only on `(seed, len())`, so the held-out set
    /// is the same in every run and in resumed runs.
    pub fn split_validation(&self, n_val: usize, seed: u64) -> Result<TrainVal, DataError> {
        let n = self.len();
        if n_val > n {
            return Err(DataError::Config(format!(
                "validation size {n_val} exceeds the {n} samples"
            )));
        }
        let mut perm: Vec<usize> = (0..n).collect();
        Rng::derive(seed, &[STREAM_SPLIT, n as u64]).shuffle(&mut perm);
        let mut train = perm.split_off(n_val);
        let mut val = perm;
        train.sort_unstable();
        val.sort_unstable();
        Ok(TrainVal { train, val })
    }

    /// A new dataset of the given samples, in the given order.
    pub fn subset(&self, indices: &[usize]) -> Result<Self, DataError> {
        let n = self.len();
        let p = self.pixels();
        let mut images = Vec::with_capacity(indices.len() * p);
        let mut labels = Vec::with_capacity(if self.is_labeled() { indices.len() } else { 0 });
        for &i in indices {
            if i >= n {
                return Err(DataError::IndexOutOfRange { index: i, len: n });
            }
            images.extend_from_slice(self.image(i));
            if self.is_labeled() {
                labels.push(self.labels[i]);
            }
        }
        Ok(Dataset {
            images,
            labels,
            rows: self.rows,
            cols: self.cols,
            classes: self.classes,
            class_names: self.class_names.clone(),
        })
    }
}

/// The `.gz` file if present, else the plain one.
fn find(dir: &Path, stem: &str) -> Result<PathBuf, DataError> {
    let gz = dir.join(format!("{stem}.gz"));
    if gz.is_file() {
        return Ok(gz);
    }
    let plain = dir.join(stem);
    if plain.is_file() {
        return Ok(plain);
    }
    Err(DataError::Missing { path: gz })
}

fn check_labels(path: &Path, labels: &[u8], classes: usize) -> Result<(), DataError> {
    match labels.iter().position(|&l| usize::from(l) >= classes) {
        Some(index) => Err(DataError::LabelOutOfRange {
            path: path.into(),
            label: labels[index],
            index,
            classes,
        }),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::testutil::{gzip, idx_bytes, write_split, TempDir};

    /// `n` images whose pixels all equal their index, labels `i % 10`.
    fn synthetic(n: usize) -> (Vec<u8>, Vec<u8>) {
        let images = (0..n).flat_map(|i| [i as u8; 28 * 28]).collect();
        let labels = (0..n).map(|i| (i % 10) as u8).collect();
        (images, labels)
    }

    #[test]
    fn loads_synthetic_split() {
        let dir = TempDir::new("fashion-ok");
        let (images, labels) = synthetic(25);
        write_split(&dir, "t10k", &images, &labels);
        let ds = Dataset::load(dir.path(), Split::Test).unwrap();
        assert_eq!((ds.len(), ds.rows, ds.cols, ds.classes), (25, 28, 28, 10));
        assert_eq!(ds.image(7), &[7u8; 784][..]);
        assert_eq!(ds.labels, labels);
        assert_eq!(ds.class_names[9], "Ankle boot");
        assert_eq!(ds.class_counts(), vec![3, 3, 3, 3, 3, 2, 2, 2, 2, 2]);
    }

    #[test]
    fn missing_dir_and_file_say_how_to_install() {
        let e = Dataset::load(Path::new("/nonexistent/fm"), Split::Train)
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("/nonexistent/fm: not found"), "{e}");
        assert!(
            e.contains("sudo apt-get install dataset-fashion-mnist"),
            "{e}"
        );
        assert!(e.contains("make setup") && e.contains("--data-dir"), "{e}");
        let dir = TempDir::new("fashion-missing");
        let e = Dataset::load(dir.path(), Split::Train)
            .unwrap_err()
            .to_string();
        assert!(e.contains("train-images-idx3-ubyte.gz: not found"), "{e}");
    }

    #[test]
    fn count_mismatch_names_both_files() {
        let dir = TempDir::new("fashion-count");
        let (images, labels) = synthetic(5);
        write_split(&dir, "train", &images, &labels[..4]);
        let e = Dataset::load(dir.path(), Split::Train)
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("labels and images disagree on count"), "{e}");
        assert!(e.contains("train-labels-idx1-ubyte.gz has 4 labels"), "{e}");
        assert!(e.contains("train-images-idx3-ubyte.gz has 5 images"), "{e}");
    }

    #[test]
    fn label_out_of_range_names_file_and_index() {
        let dir = TempDir::new("fashion-label");
        let (images, mut labels) = synthetic(8);
        labels[5] = 12;
        write_split(&dir, "train", &images, &labels);
        let e = Dataset::load(dir.path(), Split::Train)
            .unwrap_err()
            .to_string();
        let p = dir.path().join("train-labels-idx1-ubyte.gz");
        assert_eq!(
            e,
            format!("{}: label 12 at index 5 ≥ 10 classes", p.display())
        );
    }

    #[test]
    fn wrong_image_size_is_rejected() {
        let dir = TempDir::new("fashion-size");
        dir.write(
            "train-images-idx3-ubyte.gz",
            &gzip(&idx_bytes(3, &[2, 4, 4], &[0; 32])),
        );
        dir.write(
            "train-labels-idx1-ubyte.gz",
            &gzip(&idx_bytes(1, &[2], &[0, 1])),
        );
        let e = Dataset::load(dir.path(), Split::Train)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("header says 2×4×4, expected 28×28 images"),
            "{e}"
        );
    }

    #[test]
    fn validation_split_is_a_deterministic_partition() {
        let (images, labels) = synthetic(100);
        let ds = Dataset::new(images, labels, 28, 28, vec!["a".into(); 10]).unwrap();
        let s = ds.split_validation(20, 3).unwrap();
        assert_eq!((s.train.len(), s.val.len()), (80, 20));
        let mut all: Vec<usize> = s.train.iter().chain(&s.val).copied().collect();
        all.sort_unstable();
        assert_eq!(all, (0..100).collect::<Vec<_>>());
        assert_eq!(ds.split_validation(20, 3).unwrap(), s);
        assert_ne!(ds.split_validation(20, 4).unwrap().val, s.val);
        assert_ne!(s.val, (0..20).collect::<Vec<_>>());
        assert!(ds.split_validation(101, 3).is_err());
    }

    #[test]
    fn subset_copies_in_order_and_checks_bounds() {
        let (images, labels) = synthetic(12);
        let ds = Dataset::new(images, labels, 28, 28, vec!["a".into(); 10]).unwrap();
        let sub = ds.subset(&[11, 3, 3]).unwrap();
        assert_eq!(sub.len(), 3);
        assert_eq!(sub.labels, vec![1, 3, 3]);
        assert_eq!(sub.image(0)[0], 11);
        let e = ds.subset(&[12]).unwrap_err().to_string();
        assert!(e.contains("index 12 out of range"), "{e}");
        let e = Dataset::new(vec![0; 784], vec![3], 28, 28, vec!["a".into(); 3])
            .unwrap_err()
            .to_string();
        assert_eq!(e, "<in-memory labels>: label 3 at index 0 ≥ 3 classes");
    }

    #[test]
    fn real_dataset_if_installed() {
        let dir = Path::new(DEFAULT_DIR);
        if !dir.is_dir() {
            println!("skipped: {DEFAULT_DIR} not present (`make setup` installs it)");
            return;
        }
        let t0 = std::time::Instant::now();
        let train = Dataset::load(dir, Split::Train).unwrap();
        let elapsed = t0.elapsed();
        let test = Dataset::load(dir, Split::Test).unwrap();
        println!("loaded 60000 train images in {elapsed:?}");
        assert_eq!((train.len(), train.rows, train.cols), (60_000, 28, 28));
        assert_eq!(test.len(), 10_000);
        assert!(train.labels.iter().chain(&test.labels).all(|&l| l < 10));
        assert_eq!(train.class_counts(), vec![6000; 10]);
        assert_eq!(test.class_counts(), vec![1000; 10]);
        // The dataset's documented mean and std, which Normalization uses.
        let n = train.images.len() as f64;
        let mean = train.images.iter().map(|&p| f64::from(p)).sum::<f64>() / n / 255.0;
        let var = train
            .images
            .iter()
            .map(|&p| (f64::from(p) / 255.0 - mean).powi(2))
            .sum::<f64>()
            / n;
        assert!((mean - 0.2860).abs() < 5e-4, "mean {mean}");
        assert!((var.sqrt() - 0.3530).abs() < 5e-4, "std {}", var.sqrt());

        // One augmented epoch through the loader, timed for the record.
        let split = train.split_validation(5000, 0).unwrap();
        let train = std::sync::Arc::new(train);
        let cfg = crate::data::BatchConfig {
            augment: crate::data::Augment {
                shift: 2,
                hflip: 0.5,
                ..Default::default()
            },
            ..crate::data::BatchConfig::train(128, 0)
        };
        let t0 = std::time::Instant::now();
        let loader = crate::data::Loader::default();
        let seen: usize = loader
            .epoch(&train, &split.train, 0, &cfg)
            .unwrap()
            .map(|b| b.len())
            .sum();
        println!(
            "one augmented epoch of {seen} samples in {:?}",
            t0.elapsed()
        );
        assert_eq!(seen, 55_000);
    }
}
