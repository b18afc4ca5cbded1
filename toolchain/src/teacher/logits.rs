//! Teacher logits over the images of a dataset, and the hash that keys them.

use super::{hex, Teacher, TeacherError};
use crate::data::{DataError, Dataset, Normalization};
use sha2::{Digest, Sha256};

/// Images per teacher run when computing logits over a dataset.
pub const BATCH: usize = 256;

/// Teacher logits for a list of dataset indices, row `i` for `indices()[i]`.
#[derive(Clone, Debug, PartialEq)]
pub struct Logits {
    values: Vec<f32>,
    classes: usize,
    indices: Vec<usize>,
    /// Row of each dataset index (`u32::MAX` where absent), for lookups by
    /// the indices a training batch carries.
    rows: Vec<u32>,
    /// Whether the values were read from a cache file rather than computed.
    pub from_cache: bool,
    /// Problems met on the way that did not stop it, e.g. a corrupt cache
    /// file that was recomputed.
    pub warnings: Vec<String>,
}

impl Logits {
    /// Logits `values` (`[indices.len(), classes]`, row-major) for `indices`.
    pub fn new(
        values: Vec<f32>,
        classes: usize,
        indices: Vec<usize>,
        from_cache: bool,
    ) -> Result<Logits, TeacherError> {
        if values.len() != indices.len() * classes {
            return Err(TeacherError::Logits(format!(
                "{} logit values for {} indices × {classes} classes",
                values.len(),
                indices.len()
            )));
        }
        if indices.iter().any(|&i| i >= u32::MAX as usize) {
            return Err(TeacherError::Logits("dataset index too large".into()));
        }
        let len = indices.iter().max().map_or(0, |&m| m + 1);
        let mut rows = vec![u32::MAX; len];
        for (row, &i) in indices.iter().enumerate().rev() {
            rows[i] = row as u32;
        }
        Ok(Logits {
            values,
            classes,
            indices,
            rows,
            from_cache,
            warnings: Vec::new(),
        })
    }

    /// Number of rows.
    pub fn len(&self) -> usize {
        self.indices.len()
    }

    /// Whether there are no rows.
    pub fn is_empty(&self) -> bool {
        self.indices.is_empty()
    }

    /// Number of classes (values per row).
    pub fn classes(&self) -> usize {
        self.classes
    }

    /// All values, `[len, classes]` row-major.
    pub fn values(&self) -> &[f32] {
        &self.values
    }

    /// The dataset index of each row.
    pub fn indices(&self) -> &[usize] {
        &self.indices
    }

    /// Row `row`'s logits. Panics if `row >= len()`.
    pub fn row(&self, row: usize) -> &[f32] {
        &self.values[row * self.classes..(row + 1) * self.classes]
    }

    /// The logits of dataset index `index`, if it is among the rows.
    pub fn get(&self, index: usize) -> Option<&[f32]> {
        match self.rows.get(index) {
            Some(&row) if row != u32::MAX => Some(self.row(row as usize)),
            _ => None,
        }
    }

    /// The logits of the given dataset indices, `[indices.len(), classes]`,
    /// e.g. for the indices of a training batch.
    pub fn gather(&self, indices: &[usize]) -> Result<Vec<f32>, TeacherError> {
        let mut out = Vec::with_capacity(indices.len() * self.classes);
        for &i in indices {
            let row = self.get(i).ok_or_else(|| {
                TeacherError::Logits(format!("no teacher logits for dataset index {i}"))
            })?;
            out.extend_from_slice(row);
        }
        Ok(out)
    }

    /// The arg-max class of each row.
    pub fn predictions(&self) -> Vec<usize> {
        (0..self.len())
            .map(|r| {
                let row = self.row(r);
                (0..row.len()).fold(0, |best, c| if row[c] > row[best] { c } else { best })
            })
            .collect()
    }
}

/// Checks that every index is inside the dataset.
pub(crate) fn check_indices(dataset: &Dataset, indices: &[usize]) -> Result<(), TeacherError> {
    let len = dataset.len();
    match indices.iter().find(|&&i| i >= len) {
        Some(&index) => Err(DataError::IndexOutOfRange { index, len }.into()),
        None => Ok(()),
    }
}

/// Checks that the dataset's images fit the teacher's input.
fn check_fits(teacher: &Teacher, dataset: &Dataset, n: usize) -> Result<(), TeacherError> {
    if dataset.pixels() == teacher.values_per_image() {
        Ok(())
    } else {
        Err(teacher.shape_error(format!("[{n}, 1, {}, {}]", dataset.rows, dataset.cols)))
    }
}

/// Teacher logits for `dataset`'s images at `indices` (in that order),
/// normalised with `normalization`, run [`BATCH`] at a time on every core
/// (tract runs a plan on one thread); `progress(done, total)` is called
/// after each batch, in order.
pub fn logits_for(
    teacher: &Teacher,
    dataset: &Dataset,
    indices: &[usize],
    normalization: Normalization,
    mut progress: impl FnMut(usize, usize),
) -> Result<Logits, TeacherError> {
    check_indices(dataset, indices)?;
    check_fits(teacher, dataset, indices.len())?;
    let table = normalization.table();
    let run = |chunk: &[usize]| {
        let mut buf = Vec::with_capacity(chunk.len() * dataset.pixels());
        for &i in chunk {
            buf.extend(dataset.image(i).iter().map(|&p| table[usize::from(p)]));
        }
        teacher.logits(&buf, chunk.len())
    };
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let batches: Vec<&[usize]> = indices.chunks(BATCH).collect();
    let mut values = Vec::with_capacity(indices.len() * teacher.classes());
    for round in batches.chunks(threads) {
        let results: Vec<Result<Vec<f32>, TeacherError>> = std::thread::scope(|s| {
            let handles: Vec<_> = round
                .iter()
                .map(|&chunk| s.spawn(move || run(chunk)))
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join().unwrap_or_else(|_| {
                        Err(TeacherError::Logits("a teacher thread panicked".into()))
                    })
                })
                .collect()
        });
        for r in results {
            values.extend(r?);
            progress(values.len() / teacher.classes(), indices.len());
        }
    }
    Logits::new(values, teacher.classes(), indices.to_vec(), false)
}

/// SHA-256 (hex) of what a teacher sees: the image bytes at `indices` in
/// order, the normalisation, the index list and the image size. Two runs
/// share cached logits exactly when this and the teacher's hash agree.
pub fn data_sha256(
    dataset: &Dataset,
    indices: &[usize],
    normalization: Normalization,
) -> Result<String, TeacherError> {
    check_indices(dataset, indices)?;
    let mut h = Sha256::new();
    h.update(b"tinykd-teacher-data/1\0");
    h.update((dataset.rows as u64).to_le_bytes());
    h.update((dataset.cols as u64).to_le_bytes());
    h.update((indices.len() as u64).to_le_bytes());
    for &i in indices {
        h.update(dataset.image(i));
    }
    h.update(normalization.mean.to_le_bytes());
    h.update(normalization.std.to_le_bytes());
    for &i in indices {
        h.update((i as u64).to_le_bytes());
    }
    Ok(hex(&h.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::{Split, DEFAULT_DIR};
    use crate::teacher::testutil::{demo_path, synthetic};
    use std::path::Path;

    #[test]
    fn logits_for_runs_in_batches_and_reports_progress() {
        let t = Teacher::load(&demo_path()).unwrap();
        let ds = synthetic(300);
        let indices: Vec<usize> = (0..300).rev().collect();
        let mut calls = Vec::new();
        let norm = Normalization::FASHION_MNIST;
        let l = logits_for(&t, &ds, &indices, norm, |d, n| calls.push((d, n))).unwrap();
        assert_eq!(calls, vec![(256, 300), (300, 300)]);
        assert_eq!((l.len(), l.classes(), l.from_cache), (300, 10, false));
        // Row r is index 299 - r; check two against a direct run.
        let table = norm.table();
        let x: Vec<f32> = ds.image(5).iter().map(|&p| table[usize::from(p)]).collect();
        let direct = t.logits(&x, 1).unwrap();
        for (a, b) in l.row(294).iter().zip(&direct) {
            assert!((a - b).abs() <= 1e-5, "{a} vs {b}");
        }
        assert_eq!(l.get(5).unwrap(), l.row(294));
        assert_eq!(l.gather(&[5, 299]).unwrap()[..10], l.row(294)[..]);
        assert_eq!(l.gather(&[5, 299]).unwrap()[10..], l.row(0)[..]);
        assert!(l.gather(&[300]).is_err());
        assert_eq!(l.predictions().len(), 300);
    }

    #[test]
    fn wrong_image_size_and_bad_index_are_errors() {
        let t = Teacher::load(&demo_path()).unwrap();
        let ds = Dataset::new(vec![0; 2 * 100], vec![0, 1], 10, 10, vec!["a".into(); 2]).unwrap();
        let e = logits_for(&t, &ds, &[0, 1], Normalization::default(), |_, _| {})
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("fashion_mlp.onnx") && e.contains("[2, 1, 10, 10]"),
            "{e}"
        );
        assert!(e.contains("[N, 784]"), "{e}");
        let e = logits_for(&t, &synthetic(3), &[3], Normalization::default(), |_, _| {})
            .unwrap_err()
            .to_string();
        assert!(e.contains("index 3 out of range"), "{e}");
    }

    #[test]
    fn data_hash_covers_images_order_indices_and_normalization() {
        let ds = synthetic(20);
        let norm = Normalization::FASHION_MNIST;
        let h = |ds: &Dataset, idx: &[usize], norm| data_sha256(ds, idx, norm).unwrap();
        let base = h(&ds, &[1, 2, 3], norm);
        assert_eq!(base, h(&ds, &[1, 2, 3], norm));
        assert_ne!(base, h(&ds, &[3, 2, 1], norm));
        assert_ne!(base, h(&ds, &[1, 2], norm));
        let other = Normalization { mean: 0.5, ..norm };
        assert_ne!(base, h(&ds, &[1, 2, 3], other));
        let mut changed = ds.clone();
        changed.images[2 * 784 + 17] ^= 1;
        assert_ne!(base, h(&changed, &[1, 2, 3], norm));
        assert!(data_sha256(&ds, &[20], norm).is_err());
    }

    #[test]
    fn demo_teacher_scores_on_the_real_test_set() {
        let dir = Path::new(DEFAULT_DIR);
        if !dir.is_dir() {
            println!("skipped: {DEFAULT_DIR} not present (`make setup` installs it)");
            return;
        }
        let ds = Dataset::load(dir, Split::Test).unwrap();
        let t = Teacher::load(&demo_path()).unwrap();
        t.check_classes(ds.classes).unwrap();
        let norm = t.normalization().unwrap();
        let indices: Vec<usize> = (0..2000).collect();
        let l = logits_for(&t, &ds, &indices, norm, |_, _| {}).unwrap();
        let correct = l
            .predictions()
            .iter()
            .zip(&ds.labels)
            .filter(|(p, &y)| **p == usize::from(y))
            .count();
        let accuracy = correct as f64 / 2000.0;
        println!(
            "demo teacher: {:.2} % on the first 2000 test images",
            100.0 * accuracy
        );
        assert!(accuracy > 0.85, "accuracy {accuracy}");
    }
}
