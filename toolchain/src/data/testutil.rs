//! Helpers for the data tests: a self-removing temp dir and IDX writers.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// A fresh directory under the system temp dir, removed on drop.
pub(crate) struct TempDir(PathBuf);

impl TempDir {
    pub(crate) fn new(tag: &str) -> Self {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let dir =
            std::env::temp_dir().join(format!("tinykd-data-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    pub(crate) fn path(&self) -> &Path {
        &self.0
    }

    pub(crate) fn write(&self, name: &str, bytes: &[u8]) -> PathBuf {
        let p = self.0.join(name);
        std::fs::write(&p, bytes).unwrap();
        p
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// An IDX u8 file's bytes.
pub(crate) fn idx_bytes(rank: u8, dims: &[u32], data: &[u8]) -> Vec<u8> {
    let mut out = (0x0800u32 | u32::from(rank)).to_be_bytes().to_vec();
    for d in dims {
        out.extend_from_slice(&d.to_be_bytes());
    }
    out.extend_from_slice(data);
    out
}

pub(crate) fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

/// Writes a Fashion-MNIST-shaped split (`prefix` = "train" or "t10k") of
/// `images.len() / 784` images.
pub(crate) fn write_split(dir: &TempDir, prefix: &str, images: &[u8], labels: &[u8]) {
    let n = (images.len() / (28 * 28)) as u32;
    dir.write(
        &format!("{prefix}-images-idx3-ubyte.gz"),
        &gzip(&idx_bytes(3, &[n, 28, 28], images)),
    );
    dir.write(
        &format!("{prefix}-labels-idx1-ubyte.gz"),
        &gzip(&idx_bytes(1, &[labels.len() as u32], labels)),
    );
}
