//! The teacher-logit cache: one `safetensors` file per (teacher, data) pair,
//! or one per shard when extraction is split across machines.
//!
//! A file holds `logits` `[n, classes]` f32 and `indices` `[n]` i64 (the
//! dataset index of each row), with string metadata: `format`
//! ([`FORMAT`]), `teacher_sha256`, `data_sha256` (see
//! [`data_sha256`](super::data_sha256)), `classes`, `total` (length of the
//! whole index list), `shard` (`all` or `k/m`), `start`/`end` (the rows of
//! the whole list this file holds), `logits_sha256` (of the logits bytes,
//! so a flipped bit is caught) and `teacher` (the file name, for people).
//! A file is used only if all of these match what the caller asks for;
//! anything else is reported and recomputed, never trusted.
//!
//! A shard `k/m` is the contiguous range `(k−1)·n/m .. k·n/m` of the index
//! list, so `m` independent jobs cover the list exactly once and
//! [`merge_shards`] can check that they did.

use super::logits::{data_sha256, logits_for, Logits};
use super::{hex, Teacher, TeacherError};
use crate::data::{Dataset, Normalization};
use crate::tensor_file::{write_atomically, TensorFileError};
use safetensors::{Dtype, SafeTensors};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::str::FromStr;

/// The `format` metadata value of a cache file.
pub const FORMAT: &str = "tinykd-teacher-logits/1";

/// What a cache file must match: the teacher, the data and the shape.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CacheKey {
    /// SHA-256 of the teacher file.
    pub teacher_sha256: String,
    /// [`data_sha256`] of the images, normalisation and index list.
    pub data_sha256: String,
    /// The teacher's class count.
    pub classes: usize,
    /// Length of the whole index list.
    pub total: usize,
    /// The teacher's file name (informational, not matched).
    pub teacher_name: String,
}

impl CacheKey {
    /// The key of `teacher` on `dataset`'s images at `indices`.
    pub fn new(
        teacher: &Teacher,
        dataset: &Dataset,
        indices: &[usize],
        normalization: Normalization,
    ) -> Result<CacheKey, TeacherError> {
        Ok(CacheKey {
            teacher_sha256: teacher.sha256().to_string(),
            data_sha256: data_sha256(dataset, indices, normalization)?,
            classes: teacher.classes(),
            total: indices.len(),
            teacher_name: teacher
                .path()
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
        })
    }

    /// The cache file's name: `<teacher hash>-<data hash>.safetensors`
    /// (16 hex digits of each; the full hashes are checked inside).
    pub fn file_name(&self) -> String {
        format!("{}.safetensors", self.stem())
    }

    /// Shard `shard`'s file name: `<…>.shard-<k>-of-<m>.safetensors`.
    pub fn shard_file_name(&self, shard: Shard) -> String {
        format!(
            "{}.shard-{}-of-{}.safetensors",
            self.stem(),
            shard.number,
            shard.count
        )
    }

    fn stem(&self) -> String {
        let short = |h: &str| h.chars().take(16).collect::<String>();
        format!(
            "{}-{}",
            short(&self.teacher_sha256),
            short(&self.data_sha256)
        )
    }
}

/// Shard `number` of `count` (1-based, written `k/m`): a contiguous part of
/// the index list.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shard {
    /// Which shard, 1..=count.
    pub number: usize,
    /// How many shards.
    pub count: usize,
}

impl Shard {
    /// Shard `number` of `count`; errors unless `1 ≤ number ≤ count`.
    pub fn new(number: usize, count: usize) -> Result<Shard, TeacherError> {
        if count == 0 || number == 0 || number > count {
            return Err(TeacherError::Shard(format!(
                "{number}/{count}: expected k/m with 1 ≤ k ≤ m"
            )));
        }
        Ok(Shard { number, count })
    }

    /// The rows of a list of `len` this shard covers.
    pub fn range(&self, len: usize) -> Range<usize> {
        (self.number - 1) * len / self.count..self.number * len / self.count
    }
}

impl FromStr for Shard {
    type Err = TeacherError;

    fn from_str(s: &str) -> Result<Shard, TeacherError> {
        let bad = || TeacherError::Shard(format!("'{s}': expected k/m, e.g. 2/8"));
        let (k, m) = s.split_once('/').ok_or_else(bad)?;
        let k = k.trim().parse().map_err(|_| bad())?;
        let m = m.trim().parse().map_err(|_| bad())?;
        Shard::new(k, m)
    }
}

impl std::fmt::Display for Shard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.number, self.count)
    }
}

/// Which part of the index list a file holds.
#[derive(Clone, Copy)]
enum Part {
    All,
    Shard(Shard),
}

impl Part {
    fn label(self) -> String {
        match self {
            Part::All => "all".into(),
            Part::Shard(s) => s.to_string(),
        }
    }

    fn range(self, total: usize) -> Range<usize> {
        match self {
            Part::All => 0..total,
            Part::Shard(s) => s.range(total),
        }
    }
}

/// Teacher logits for `dataset`'s images at `indices`, read from
/// `cache_dir` when a valid cache file exists, else computed (see
/// [`logits_for`]) and written there. A corrupt or mismatched file is
/// recomputed and reported in [`Logits::warnings`]; so is a failure to
/// write the cache (the logits are still returned).
pub fn cached_logits(
    teacher: &Teacher,
    dataset: &Dataset,
    indices: &[usize],
    normalization: Normalization,
    cache_dir: &Path,
    progress: impl FnMut(usize, usize),
) -> Result<Logits, TeacherError> {
    let key = CacheKey::new(teacher, dataset, indices, normalization)?;
    let path = cache_dir.join(key.file_name());
    let mut warnings = Vec::new();
    match read(&path, &key, Part::All, indices) {
        Ok(Some(values)) => return Logits::new(values, key.classes, indices.to_vec(), true),
        Ok(None) => {}
        Err(reason) => warnings.push(format!("{}: {reason}; recomputing", path.display())),
    }
    let mut logits = logits_for(teacher, dataset, indices, normalization, progress)?;
    if let Err(e) = write(cache_dir, &path, &key, Part::All, &logits) {
        warnings.push(format!("cannot write the teacher-logit cache: {e}"));
    }
    logits.warnings = warnings;
    Ok(logits)
}

/// Like [`cached_logits`] for shard `shard` of `indices` only, in its own
/// file; the [`Logits`] returned cover that shard's indices. Failing to
/// write the shard file is an error.
pub fn cached_shard(
    teacher: &Teacher,
    dataset: &Dataset,
    indices: &[usize],
    normalization: Normalization,
    cache_dir: &Path,
    shard: Shard,
    progress: impl FnMut(usize, usize),
) -> Result<Logits, TeacherError> {
    let key = CacheKey::new(teacher, dataset, indices, normalization)?;
    let part = &indices[shard.range(indices.len())];
    let path = cache_dir.join(key.shard_file_name(shard));
    let mut warnings = Vec::new();
    match read(&path, &key, Part::Shard(shard), part) {
        Ok(Some(values)) => return Logits::new(values, key.classes, part.to_vec(), true),
        Ok(None) => {}
        Err(reason) => warnings.push(format!("{}: {reason}; recomputing", path.display())),
    }
    let mut logits = logits_for(teacher, dataset, part, normalization, progress)?;
    write(cache_dir, &path, &key, Part::Shard(shard), &logits)?;
    logits.warnings = warnings;
    Ok(logits)
}

/// Merges the `count` shard files of `indices` into the whole cache file
/// (the one [`cached_logits`] reads) and returns the logits. Every shard
/// must be present and valid; the error lists those that are not.
pub fn merge_shards(
    teacher: &Teacher,
    dataset: &Dataset,
    indices: &[usize],
    normalization: Normalization,
    cache_dir: &Path,
    count: usize,
) -> Result<Logits, TeacherError> {
    let key = CacheKey::new(teacher, dataset, indices, normalization)?;
    let mut values = Vec::with_capacity(indices.len() * key.classes);
    let mut problems = Vec::new();
    for number in 1..=count.max(1) {
        let shard = Shard::new(number, count)?;
        let path = cache_dir.join(key.shard_file_name(shard));
        match read(
            &path,
            &key,
            Part::Shard(shard),
            &indices[shard.range(indices.len())],
        ) {
            Ok(Some(v)) => values.extend(v),
            Ok(None) => problems.push(format!("shard {shard} missing ({})", path.display())),
            Err(reason) => problems.push(format!(
                "shard {shard} invalid ({}: {reason})",
                path.display()
            )),
        }
    }
    if !problems.is_empty() {
        return Err(TeacherError::Cache {
            path: cache_dir.into(),
            reason: format!(
                "cannot merge the {count} shards of {}: {}",
                key.teacher_name,
                problems.join("; ")
            ),
        });
    }
    let logits = Logits::new(values, key.classes, indices.to_vec(), true)?;
    let path = cache_dir.join(key.file_name());
    write(cache_dir, &path, &key, Part::All, &logits)?;
    Ok(logits)
}

/// The metadata that says which cache (or shard) a file is: written with
/// it, and required to match when it is read back.
fn identity(key: &CacheKey, part: Part) -> [(&'static str, String); 8] {
    let range = part.range(key.total);
    [
        ("format", FORMAT.to_string()),
        ("teacher_sha256", key.teacher_sha256.clone()),
        ("data_sha256", key.data_sha256.clone()),
        ("classes", key.classes.to_string()),
        ("total", key.total.to_string()),
        ("shard", part.label()),
        ("start", range.start.to_string()),
        ("end", range.end.to_string()),
    ]
}

/// Reads a cache file: `Ok(None)` if there is none, `Err(reason)` if it
/// exists but does not match `key`, `part` and `indices` in every respect.
fn read(
    path: &Path,
    key: &CacheKey,
    part: Part,
    indices: &[usize],
) -> Result<Option<Vec<f32>>, String> {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e.to_string()),
    };
    let st = SafeTensors::deserialize(&bytes)
        .map_err(|e| format!("not a readable safetensors file ({e})"))?;
    let (_, header) = SafeTensors::read_metadata(&bytes).map_err(|e| e.to_string())?;
    let meta = header.metadata().clone().unwrap_or_default();
    for (field, want) in identity(key, part) {
        match meta.get(field) {
            Some(got) if *got == want => {}
            Some(got) => return Err(format!("its {field} is {got}, expected {want}")),
            None => return Err(format!("its metadata has no {field}")),
        }
    }
    let rows = indices.len();
    let logits = st.tensor("logits").map_err(|e| format!("logits: {e}"))?;
    if logits.dtype() != Dtype::F32 || logits.shape() != [rows, key.classes] {
        return Err(format!(
            "logits are {:?} {:?}, expected F32 [{rows}, {}]",
            logits.dtype(),
            logits.shape(),
            key.classes
        ));
    }
    if meta.get("logits_sha256") != Some(&hex(&Sha256::digest(logits.data()))) {
        return Err("the logits do not match their logits_sha256 (corrupt)".into());
    }
    let stored = st.tensor("indices").map_err(|e| format!("indices: {e}"))?;
    let expected: Vec<u8> = indices
        .iter()
        .flat_map(|&i| (i as i64).to_le_bytes())
        .collect();
    if stored.dtype() != Dtype::I64 || stored.shape() != [rows] || stored.data() != expected {
        return Err("its indices are not the ones asked for".into());
    }
    Ok(Some(
        logits
            .data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect(),
    ))
}

/// Writes a cache file atomically.
fn write(
    cache_dir: &Path,
    path: &Path,
    key: &CacheKey,
    part: Part,
    logits: &Logits,
) -> Result<(), TeacherError> {
    std::fs::create_dir_all(cache_dir).map_err(|source| TeacherError::Io {
        path: cache_dir.into(),
        source,
    })?;
    let cache_err = |path: PathBuf, reason: String| TeacherError::Cache { path, reason };
    let value_bytes: Vec<u8> = logits
        .values()
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    let index_bytes: Vec<u8> = logits
        .indices()
        .iter()
        .flat_map(|&i| (i as i64).to_le_bytes())
        .collect();
    let meta: HashMap<String, String> = identity(key, part)
        .into_iter()
        .chain([
            ("logits_sha256", hex(&Sha256::digest(&value_bytes))),
            ("teacher", key.teacher_name.clone()),
        ])
        .map(|(k, v)| (k.to_string(), v))
        .collect();
    let view = |dtype, shape, data| {
        safetensors::tensor::TensorView::new(dtype, shape, data)
            .map_err(|e| cache_err(path.into(), e.to_string()))
    };
    let tensors = [
        (
            "indices",
            view(Dtype::I64, vec![logits.len()], &index_bytes)?,
        ),
        (
            "logits",
            view(
                Dtype::F32,
                vec![logits.len(), logits.classes()],
                &value_bytes,
            )?,
        ),
    ];
    let bytes = safetensors::serialize(tensors, Some(meta))
        .map_err(|e| cache_err(path.into(), e.to_string()))?;
    write_atomically(path, &bytes).map_err(|e| match e {
        TensorFileError::Io { path, source } => TeacherError::Io { path, source },
        TensorFileError::Format { path, reason } => cache_err(path, reason),
    })
}

#[cfg(test)]
#[path = "cache_tests.rs"]
mod tests;
