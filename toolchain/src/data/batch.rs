//! Normalisation, seeded per-epoch shuffling, augmentation and batching into
//! `[B, 1, rows, cols]` f32 buffers.
//!
//! Randomness is keyed, not streamed: the epoch's order depends only on
//! `(seed, epoch)` and a batch's augmentation only on `(seed, epoch, batch)`,
//! so any batch can be rebuilt on its own — by a resumed run, or by the
//! prefetching loader on another thread — and comes out bit-identical.

use super::fashion::Dataset;
use super::rng::{Rng, STREAM_AUGMENT, STREAM_SHUFFLE, STREAM_VIEWS};
use super::DataError;
use serde::{Deserialize, Serialize};

/// Per-pixel normalisation `(x / 255 − mean) / std`; stored in model metadata
/// so inference normalises as training did.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Normalization {
    /// Mean pixel intensity on the [0, 1] scale.
    pub mean: f32,
    /// Standard deviation of pixel intensity on the [0, 1] scale.
    pub std: f32,
}

impl Normalization {
    /// Fashion-MNIST's training-set statistics.
    pub const FASHION_MNIST: Normalization = Normalization {
        mean: 0.2860,
        std: 0.3530,
    };

    /// The normalised value of one pixel.
    pub fn apply(&self, pixel: u8) -> f32 {
        (f32::from(pixel) / 255.0 - self.mean) / self.std
    }

    /// All 256 normalised values, so batching is one lookup per pixel.
    pub fn table(&self) -> [f32; 256] {
        std::array::from_fn(|p| self.apply(p as u8))
    }
}

impl Default for Normalization {
    fn default() -> Self {
        Self::FASHION_MNIST
    }
}

/// Whether batches carry labels.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LabelMode {
    /// Batches carry the dataset's labels.
    #[default]
    Labeled,
    /// Labels are never read (`Batch::labels` is `None`), e.g. for transfer
    /// sets whose targets come from the teacher.
    Unlabeled,
}

/// Per-sample augmentation; the default does nothing.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Augment {
    /// Shift by up to ± this many pixels on each axis, independently;
    /// uncovered pixels become black.
    pub shift: u32,
    /// Pad by this many black pixels and crop back to size at a random
    /// place; the same as a shift of up to ± this, drawn separately and
    /// added to `shift`'s.
    pub crop_padding: u32,
    /// Probability of a horizontal flip.
    pub hflip: f32,
    /// Standard deviation of additive Gaussian noise, in pixel intensity on
    /// the [0, 1] scale (before normalisation).
    pub noise_std: f32,
    /// Probability that a transfer-set view is blended with another image
    /// of the set, `λ·a + (1 − λ)·b` with `λ ~ U(0, 1)` (mixup); only for
    /// [`augmented_views`], whose images a teacher labels.
    pub mixup: f32,
}

impl Augment {
    /// Whether this augmentation changes nothing.
    pub fn is_none(&self) -> bool {
        self.shift == 0
            && self.crop_padding == 0
            && self.hflip == 0.0
            && self.noise_std == 0.0
            && self.mixup == 0.0
    }

    fn validate(&self) -> Result<(), DataError> {
        if !(0.0..=1.0).contains(&self.mixup) {
            return Err(DataError::Config(format!(
                "mixup probability {} is not in [0, 1]",
                self.mixup
            )));
        }
        if !(0.0..=1.0).contains(&self.hflip) {
            return Err(DataError::Config(format!(
                "hflip probability {} is not in [0, 1]",
                self.hflip
            )));
        }
        if !(self.noise_std.is_finite() && self.noise_std >= 0.0) {
            return Err(DataError::Config(format!(
                "noise_std {} is not a finite value ≥ 0",
                self.noise_std
            )));
        }
        Ok(())
    }
}

/// How one epoch is batched.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BatchConfig {
    /// Samples per batch.
    pub batch_size: usize,
    /// Drop the last batch when it is smaller than `batch_size`.
    pub drop_last: bool,
    /// Shuffle the indices each epoch.
    pub shuffle: bool,
    /// Seed of the shuffle and of the augmentation.
    pub seed: u64,
    /// Pixel normalisation.
    pub normalization: Normalization,
    /// Augmentation.
    pub augment: Augment,
    /// Whether to read labels.
    pub labels: LabelMode,
}

impl BatchConfig {
    /// Training: shuffled, labeled, no augmentation.
    pub fn train(batch_size: usize, seed: u64) -> Self {
        BatchConfig {
            batch_size,
            drop_last: false,
            shuffle: true,
            seed,
            normalization: Normalization::default(),
            augment: Augment::default(),
            labels: LabelMode::Labeled,
        }
    }

    /// Evaluation: in index order, labeled, no augmentation.
    pub fn eval(batch_size: usize) -> Self {
        BatchConfig {
            shuffle: false,
            ..Self::train(batch_size, 0)
        }
    }
}

impl Default for BatchConfig {
    fn default() -> Self {
        Self::train(64, 0)
    }
}

/// One batch: images `[len, 1, rows, cols]` as flat f32, row-major.
#[derive(Clone, Debug, PartialEq)]
pub struct Batch {
    /// Position of this batch in its epoch.
    pub index: usize,
    /// Normalised (and augmented) pixels, `len × rows × cols`.
    pub x: Vec<f32>,
    /// Labels, or `None` in [`LabelMode::Unlabeled`].
    pub labels: Option<Vec<u32>>,
    /// The dataset index of each sample, e.g. to look up cached teacher
    /// outputs.
    pub indices: Vec<usize>,
    /// Image height.
    pub rows: usize,
    /// Image width.
    pub cols: usize,
}

impl Batch {
    /// Number of samples.
    pub fn len(&self) -> usize {
        self.indices.len()
    }

    /// Whether the batch has no samples.
    pub fn is_empty(&self) -> bool {
        self.indices.is_empty()
    }

    /// The tensor shape of `x`: `[len, 1, rows, cols]`.
    pub fn shape(&self) -> [usize; 4] {
        [self.len(), 1, self.rows, self.cols]
    }
}

/// The order in which an epoch visits `indices`: a permutation depending only
/// on `(seed, epoch)`, so a resumed run replays it.
pub fn epoch_order(indices: &[usize], seed: u64, epoch: u64) -> Vec<usize> {
    let mut order = indices.to_vec();
    Rng::derive(seed, &[STREAM_SHUFFLE, epoch]).shuffle(&mut order);
    order
}

/// A validated epoch: its sample order and everything needed to build any
/// of its batches independently.
#[derive(Clone, Debug)]
pub(crate) struct Plan {
    order: Vec<usize>,
    cfg: BatchConfig,
    epoch: u64,
    table: [f32; 256],
    batches: usize,
}

impl Plan {
    pub(crate) fn new(
        ds: &Dataset,
        indices: &[usize],
        epoch: u64,
        cfg: &BatchConfig,
    ) -> Result<Self, DataError> {
        if cfg.batch_size == 0 {
            return Err(DataError::Config("batch_size must be > 0".into()));
        }
        let Normalization { mean, std } = cfg.normalization;
        if !(mean.is_finite() && std.is_finite() && std > 0.0) {
            return Err(DataError::Config(format!(
                "normalization mean {mean}, std {std}: need finite values and std > 0"
            )));
        }
        cfg.augment.validate()?;
        if cfg.augment.mixup > 0.0 {
            return Err(DataError::Config(
                "mixup blends images into a transfer set for a teacher to label \
                 (recipe [transfer.augment]); it is not a per-batch augmentation"
                    .into(),
            ));
        }
        let pixels = ds.pixels();
        if pixels == 0 || !ds.images.len().is_multiple_of(pixels) {
            return Err(DataError::Config(format!(
                "{} bytes are not a whole number of {}×{} images",
                ds.images.len(),
                ds.rows,
                ds.cols
            )));
        }
        let len = ds.len();
        if cfg.labels == LabelMode::Labeled && !(ds.is_labeled() && ds.labels.len() == len) {
            return Err(DataError::Config(format!(
                "labeled batches need one label per image ({} labels, {len} images); \
                 use LabelMode::Unlabeled for unlabeled data",
                ds.labels.len()
            )));
        }
        if let Some(&index) = indices.iter().find(|&&i| i >= len) {
            return Err(DataError::IndexOutOfRange { index, len });
        }
        let order = if cfg.shuffle {
            epoch_order(indices, cfg.seed, epoch)
        } else {
            indices.to_vec()
        };
        let batches = if cfg.drop_last {
            order.len() / cfg.batch_size
        } else {
            order.len().div_ceil(cfg.batch_size)
        };
        Ok(Plan {
            order,
            cfg: cfg.clone(),
            epoch,
            table: cfg.normalization.table(),
            batches,
        })
    }

    pub(crate) fn len(&self) -> usize {
        self.batches
    }

    /// Builds batch `b` (< `len()`) of `ds`, the dataset the plan was made for.
    pub(crate) fn assemble(&self, ds: &Dataset, b: usize) -> Batch {
        let bs = self.cfg.batch_size;
        let indices = self.order[b * bs..((b + 1) * bs).min(self.order.len())].to_vec();
        let (rows, cols, pixels) = (ds.rows, ds.cols, ds.pixels());
        let mut x = vec![0.0f32; indices.len() * pixels];
        let aug = &self.cfg.augment;
        if aug.is_none() {
            for (dst, &i) in x.chunks_exact_mut(pixels).zip(&indices) {
                for (o, &p) in dst.iter_mut().zip(ds.image(i)) {
                    *o = self.table[usize::from(p)];
                }
            }
        } else {
            let mut rng = Rng::derive(self.cfg.seed, &[STREAM_AUGMENT, self.epoch, b as u64]);
            let noise_scale = aug.noise_std / self.cfg.normalization.std;
            for (dst, &i) in x.chunks_exact_mut(pixels).zip(&indices) {
                // Fixed draw order per sample, so results do not depend on
                // anything but the key.
                let (mut dx, mut dy) = (0, 0);
                for k in [aug.shift, aug.crop_padding] {
                    if k > 0 {
                        dx += rng.offset(k);
                        dy += rng.offset(k);
                    }
                }
                let flip = aug.hflip > 0.0 && rng.unit_f32() < aug.hflip;
                render(ds.image(i), dst, rows, cols, dx, dy, flip, &self.table);
                if aug.noise_std > 0.0 {
                    add_noise(dst, noise_scale, &mut rng);
                }
            }
        }
        let labels = match self.cfg.labels {
            LabelMode::Labeled => Some(indices.iter().map(|&i| u32::from(ds.labels[i])).collect()),
            LabelMode::Unlabeled => None,
        };
        Batch {
            index: b,
            x,
            labels,
            indices,
            rows,
            cols,
        }
    }
}

/// Writes `src` shifted by `(dx, dy)` (positive = right, down), then mirrored
/// left–right if `flip`, through the normalisation `table`; pixels shifted in
/// from outside are black (`table[0]`).
#[allow(clippy::too_many_arguments)]
fn render<T: Copy>(
    src: &[u8],
    dst: &mut [T],
    rows: usize,
    cols: usize,
    dx: i64,
    dy: i64,
    flip: bool,
    table: &[T; 256],
) {
    let black = table[0];
    for (y, out) in dst.chunks_exact_mut(cols).enumerate() {
        let sy = y as i64 - dy;
        if !(0..rows as i64).contains(&sy) {
            out.fill(black);
            continue;
        }
        let row = &src[sy as usize * cols..][..cols];
        for (x, o) in out.iter_mut().enumerate() {
            let x = if flip { cols - 1 - x } else { x };
            let sx = x as i64 - dx;
            *o = if (0..cols as i64).contains(&sx) {
                table[usize::from(row[sx as usize])]
            } else {
                black
            };
        }
    }
}

/// A transfer set of `views` augmented copies of the images at `indices`
/// (shifts, crops and flips of `augment`; noise is a per-batch option and
/// is not allowed here), labels kept: view `v` of sample `k` is image
/// `v·len + k`. The copies are fixed by `(seed, view, sample)`, so a
/// teacher's outputs on them can be cached and the student trained on
/// exactly the images the teacher labelled.
pub fn augmented_views(
    ds: &Dataset,
    indices: &[usize],
    augment: &Augment,
    views: usize,
    seed: u64,
) -> Result<Dataset, DataError> {
    augment.validate()?;
    if augment.noise_std > 0.0 {
        return Err(DataError::Config(
            "augmented views take shifts, crops and flips, not noise".into(),
        ));
    }
    if let Some(&bad) = indices.iter().find(|&&i| i >= ds.len()) {
        return Err(DataError::IndexOutOfRange {
            index: bad,
            len: ds.len(),
        });
    }
    let (rows, cols) = (ds.rows, ds.cols);
    let identity: [u8; 256] = std::array::from_fn(|i| i as u8);
    let mut images = vec![0u8; views * indices.len() * rows * cols];
    let mut labels = Vec::with_capacity(views * indices.len());
    for (v, out) in images.chunks_mut(indices.len() * rows * cols).enumerate() {
        for (k, (&i, dst)) in indices
            .iter()
            .zip(out.chunks_exact_mut(rows * cols))
            .enumerate()
        {
            let mut rng = Rng::derive(seed, &[STREAM_VIEWS, v as u64, k as u64]);
            let (mut dx, mut dy) = (0, 0);
            for s in [augment.shift, augment.crop_padding] {
                if s > 0 {
                    dx += rng.offset(s);
                    dy += rng.offset(s);
                }
            }
            let flip = augment.hflip > 0.0 && rng.unit_f32() < augment.hflip;
            // View 0 is the original image, so the set always contains it.
            if v == 0 {
                dst.copy_from_slice(ds.image(i));
                continue;
            }
            render(ds.image(i), dst, rows, cols, dx, dy, flip, &identity);
            if augment.mixup > 0.0 && rng.unit_f32() < augment.mixup {
                let other = ds.image(indices[rng.below(indices.len() as u64) as usize]);
                let lambda = rng.unit_f32();
                for (d, &o) in dst.iter_mut().zip(other) {
                    let mixed = lambda * f32::from(*d) + (1.0 - lambda) * f32::from(o);
                    *d = mixed.round() as u8;
                }
            }
        }
        if ds.is_labeled() {
            labels.extend(indices.iter().map(|&i| ds.labels[i]));
        }
    }
    let mut out = Dataset::unlabeled(images, rows, cols)?;
    if ds.is_labeled() {
        out.labels = labels;
        out.classes = ds.classes;
        out.class_names = ds.class_names.clone();
    }
    Ok(out)
}

fn add_noise(dst: &mut [f32], scale: f32, rng: &mut Rng) {
    for pair in dst.chunks_mut(2) {
        let (a, b) = rng.normal_pair();
        pair[0] += scale * a;
        if let Some(v) = pair.get_mut(1) {
            *v += scale * b;
        }
    }
}

/// The batches of one epoch, built on the calling thread.
#[derive(Debug)]
pub struct Batches<'a> {
    ds: &'a Dataset,
    plan: Plan,
    next: usize,
}

impl Batches<'_> {
    /// Batch `b` of this epoch, independent of iteration state; `None` past
    /// the end.
    pub fn get(&self, b: usize) -> Option<Batch> {
        (b < self.plan.len()).then(|| self.plan.assemble(self.ds, b))
    }

    /// The epoch's sample order.
    pub fn order(&self) -> &[usize] {
        &self.plan.order
    }
}

impl Iterator for Batches<'_> {
    type Item = Batch;

    fn next(&mut self) -> Option<Batch> {
        let b = self.get(self.next)?;
        self.next += 1;
        Some(b)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let left = self.plan.len().saturating_sub(self.next);
        (left, Some(left))
    }

    // Skipping must not build the skipped batches: resuming mid-epoch uses it.
    fn nth(&mut self, n: usize) -> Option<Batch> {
        self.next = self.next.saturating_add(n).min(self.plan.len());
        self.next()
    }
}

impl ExactSizeIterator for Batches<'_> {}

/// The batches of epoch `epoch` over the samples `indices` of `ds`, built
/// lazily on the calling thread.
pub fn batches<'a>(
    ds: &'a Dataset,
    indices: &[usize],
    epoch: u64,
    cfg: &BatchConfig,
) -> Result<Batches<'a>, DataError> {
    Ok(Batches {
        ds,
        plan: Plan::new(ds, indices, epoch, cfg)?,
        next: 0,
    })
}

#[cfg(test)]
mod tests;
