//! A prefetching loader: one background thread builds an epoch's batches in
//! order (gather, normalise, augment) while the training thread consumes
//! them. Batches are keyed by `(seed, epoch, batch)`, so the thread produces
//! exactly what [`batches`](super::batches) would.

use super::batch::{Batch, BatchConfig, Plan};
use super::fashion::Dataset;
use super::DataError;
use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::Arc;
use std::thread::JoinHandle;

/// Builds epochs on a background thread.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Loader {
    /// How many finished batches may wait for the consumer.
    pub prefetch: usize,
}

impl Default for Loader {
    fn default() -> Self {
        Loader { prefetch: 2 }
    }
}

impl Loader {
    /// A loader keeping up to `prefetch` (at least 1) batches ready.
    pub fn new(prefetch: usize) -> Self {
        Loader {
            prefetch: prefetch.max(1),
        }
    }

    /// The batches of epoch `epoch` over the samples `indices` of `ds`,
    /// built ahead on a background thread.
    pub fn epoch(
        &self,
        ds: &Arc<Dataset>,
        indices: &[usize],
        epoch: u64,
        cfg: &BatchConfig,
    ) -> Result<Prefetch, DataError> {
        self.epoch_from(ds, indices, epoch, 0, cfg)
    }

    /// Like [`Loader::epoch`], starting at batch `first`, for resuming
    /// mid-epoch without building the batches already trained on.
    pub fn epoch_from(
        &self,
        ds: &Arc<Dataset>,
        indices: &[usize],
        epoch: u64,
        first: usize,
        cfg: &BatchConfig,
    ) -> Result<Prefetch, DataError> {
        let plan = Plan::new(ds, indices, epoch, cfg)?;
        let total = plan.len();
        let first = first.min(total);
        // A bound of at least 1: a rendezvous channel would make the thread
        // wait for each `next` and so prefetch nothing.
        let (tx, rx) = sync_channel(self.prefetch.max(1));
        let ds = Arc::clone(ds);
        let handle = std::thread::Builder::new()
            .name(format!("tinykd-loader-e{epoch}"))
            .spawn(move || {
                for b in first..total {
                    // The receiver is gone: the consumer stopped early.
                    if tx.send(plan.assemble(&ds, b)).is_err() {
                        break;
                    }
                }
            })
            .map_err(DataError::Thread)?;
        Ok(Prefetch {
            rx: Some(rx),
            handle: Some(handle),
            left: total - first,
        })
    }
}

/// An epoch's batches from a [`Loader`]; dropping it stops the thread.
#[derive(Debug)]
pub struct Prefetch {
    rx: Option<Receiver<Batch>>,
    handle: Option<JoinHandle<()>>,
    left: usize,
}

impl Prefetch {
    /// Joins the thread, passing on its panic if it had one.
    fn join(&mut self) {
        if let Some(h) = self.handle.take() {
            if let Err(panic) = h.join() {
                std::panic::resume_unwind(panic);
            }
        }
    }
}

impl Iterator for Prefetch {
    type Item = Batch;

    fn next(&mut self) -> Option<Batch> {
        if self.left == 0 {
            return None;
        }
        match self.rx.as_ref()?.recv() {
            Ok(b) => {
                self.left -= 1;
                Some(b)
            }
            // The sender hung up before the last batch: the thread panicked.
            Err(_) => {
                self.left = 0;
                self.rx = None;
                self.join();
                None
            }
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.left, Some(self.left))
    }
}

impl ExactSizeIterator for Prefetch {}

impl Drop for Prefetch {
    fn drop(&mut self) {
        // Hang up first, so a thread blocked on a full channel wakes with
        // an error and exits; then it can be joined without deadlock.
        self.rx = None;
        if let Some(h) = self.handle.take() {
            // Re-panicking inside drop would abort; the panic was already
            // printed by the thread.
            let _ = h.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::{batches, Augment, LabelMode};

    fn toy(n: usize) -> Arc<Dataset> {
        let images = (0..n * 64).map(|p| (p * 7 % 251) as u8).collect();
        let labels = (0..n).map(|i| (i % 10) as u8).collect();
        Arc::new(Dataset::new(images, labels, 8, 8, vec!["c".into(); 10]).unwrap())
    }

    fn augmented() -> BatchConfig {
        BatchConfig {
            augment: Augment {
                shift: 2,
                crop_padding: 1,
                hflip: 0.5,
                noise_std: 0.05,
                mixup: 0.0,
            },
            ..BatchConfig::train(16, 11)
        }
    }

    #[test]
    fn loader_matches_direct_path_bit_for_bit() {
        let ds = toy(203);
        let idx: Vec<usize> = (0..203).rev().step_by(2).collect();
        for prefetch in [1, 3] {
            for epoch in [0, 7] {
                let cfg = augmented();
                let direct: Vec<Batch> = batches(&ds, &idx, epoch, &cfg).unwrap().collect();
                let loaded = Loader::new(prefetch).epoch(&ds, &idx, epoch, &cfg).unwrap();
                assert_eq!(loaded.len(), direct.len());
                let loaded: Vec<Batch> = loaded.collect();
                assert_eq!(loaded.len(), direct.len());
                for (a, b) in loaded.iter().zip(&direct) {
                    assert_eq!(a.indices, b.indices);
                    assert_eq!(a.labels, b.labels);
                    let bits = |x: &[f32]| x.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
                    assert_eq!(bits(&a.x), bits(&b.x));
                }
            }
        }
    }

    #[test]
    fn epoch_from_resumes_mid_epoch() {
        let ds = toy(100);
        let idx: Vec<usize> = (0..100).collect();
        let cfg = augmented();
        let direct: Vec<Batch> = batches(&ds, &idx, 3, &cfg).unwrap().collect();
        let resumed: Vec<Batch> = Loader::default()
            .epoch_from(&ds, &idx, 3, 4, &cfg)
            .unwrap()
            .collect();
        assert_eq!(resumed, direct[4..]);
        let past = Loader::default()
            .epoch_from(&ds, &idx, 3, 99, &cfg)
            .unwrap();
        assert_eq!(past.count(), 0);
    }

    #[test]
    fn dropping_early_stops_the_thread() {
        let ds = toy(5000);
        let idx: Vec<usize> = (0..5000).collect();
        let cfg = BatchConfig::train(1, 0);
        let start = std::time::Instant::now();
        for take in [0, 1, 3] {
            let mut it = Loader::new(2).epoch(&ds, &idx, 0, &cfg).unwrap();
            for _ in 0..take {
                assert!(it.next().is_some());
            }
            drop(it);
        }
        // Only the test holds the dataset again: the threads have exited.
        assert_eq!(Arc::strong_count(&ds), 1);
        assert!(start.elapsed().as_secs() < 10);
    }

    #[test]
    fn unlabeled_loader_and_config_errors() {
        let ds = Arc::new(Dataset::unlabeled(vec![3; 10 * 16], 4, 4).unwrap());
        let idx: Vec<usize> = (0..10).collect();
        let cfg = BatchConfig {
            labels: LabelMode::Unlabeled,
            ..BatchConfig::eval(4)
        };
        let all: Vec<Batch> = Loader::default()
            .epoch(&ds, &idx, 0, &cfg)
            .unwrap()
            .collect();
        assert_eq!(
            all.iter().map(Batch::len).collect::<Vec<_>>(),
            vec![4, 4, 2]
        );
        assert!(all.iter().all(|b| b.labels.is_none()));
        assert!(Loader::default().epoch(&ds, &[10], 0, &cfg).is_err());
    }
}
