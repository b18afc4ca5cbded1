//! Training data: IDX files, the Fashion-MNIST dataset, seeded shuffling,
//! augmentation and batching, and a prefetching loader.
//!
//! Everything random here is derived from `(seed, epoch, batch)` alone, never
//! from a stream carried across epochs, so a resumed run replays the exact
//! order and augmentation of the run it resumes.

pub mod batch;
pub mod fashion;
pub mod idx;
pub mod loader;
pub(crate) mod rng;
#[cfg(test)]
mod testutil;

pub use batch::{
    augmented_views, batches, epoch_order, Augment, Batch, BatchConfig, Batches, LabelMode,
    Normalization,
};
pub use fashion::{Dataset, Split, TrainVal, CLASS_NAMES, DEFAULT_DIR, SIDE};
pub use idx::{read_idx, Idx};
pub use loader::{Loader, Prefetch};

use std::path::PathBuf;

/// How to get the data when it is missing; shown in [`DataError::Missing`].
pub const INSTALL_HINT: &str = "install Fashion-MNIST with `sudo apt-get install \
dataset-fashion-mnist` or `make setup`, or pass --data-dir";

/// Errors reading datasets or planning batches.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DataError {
    /// A data file or directory does not exist.
    #[error("{path}: not found; {INSTALL_HINT}", path = path.display())]
    Missing {
        /// The file or directory.
        path: PathBuf,
    },
    /// The file could not be read.
    #[error("{path}: {source}", path = path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The file looks gzip-compressed but does not decompress.
    #[error("{path}: corrupt gzip stream: {source}", path = path.display())]
    Gzip {
        /// The file.
        path: PathBuf,
        /// The decoder's error.
        source: std::io::Error,
    },
    /// The IDX magic number is not the one expected.
    #[error("{path}: bad magic 0x{found:08x}, expected 0x{expected:08x} ({what})", path = path.display())]
    BadMagic {
        /// The file.
        path: PathBuf,
        /// The magic read.
        found: u32,
        /// The magic wanted.
        expected: u32,
        /// What the expected magic denotes.
        what: String,
    },
    /// The IDX header's dimensions are unusable or not the ones expected.
    #[error("{path}: {reason}", path = path.display())]
    BadHeader {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The file holds fewer data bytes than its header promises.
    #[error("{path}: truncated: header says {dims} ({expected} bytes) but only {got} bytes follow", path = path.display())]
    Truncated {
        /// The file.
        path: PathBuf,
        /// The header's dimensions, e.g. `60000×28×28`.
        dims: String,
        /// Data bytes promised.
        expected: usize,
        /// Data bytes present.
        got: usize,
    },
    /// The file holds more data bytes than its header promises.
    #[error("{path}: {extra} trailing bytes after the {expected} data bytes the header ({dims}) promises", path = path.display())]
    Trailing {
        /// The file.
        path: PathBuf,
        /// The header's dimensions.
        dims: String,
        /// Data bytes promised.
        expected: usize,
        /// Bytes beyond those.
        extra: u64,
    },
    /// The labels file and the images file disagree on the number of samples.
    #[error("labels and images disagree on count: {labels_path} has {labels} labels, {images_path} has {images} images", labels_path = labels_path.display(), images_path = images_path.display())]
    CountMismatch {
        /// The images file.
        images_path: PathBuf,
        /// Its sample count.
        images: usize,
        /// The labels file.
        labels_path: PathBuf,
        /// Its sample count.
        labels: usize,
    },
    /// A label is not a valid class.
    #[error("{path}: label {label} at index {index} ≥ {classes} classes", path = path.display())]
    LabelOutOfRange {
        /// The labels file (`<in-memory labels>` for in-memory data).
        path: PathBuf,
        /// The label.
        label: u8,
        /// Its sample index.
        index: usize,
        /// The class count.
        classes: usize,
    },
    /// A sample index is past the end of the dataset.
    #[error("sample index {index} out of range for a dataset of {len} samples")]
    IndexOutOfRange {
        /// The index.
        index: usize,
        /// The dataset's length.
        len: usize,
    },
    /// The loader's background thread could not be started.
    #[error("cannot start the loader thread: {0}")]
    Thread(#[source] std::io::Error),
    /// A configuration value or an in-memory dataset is invalid.
    #[error("invalid data configuration: {0}")]
    Config(String),
}
