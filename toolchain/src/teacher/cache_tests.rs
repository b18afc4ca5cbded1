//! Tests of the logit cache (cache.rs), in their own file for length.

use super::*;
use crate::teacher::testutil::{demo_path, synthetic, TempDir};

const NORM: Normalization = Normalization::FASHION_MNIST;

fn setup(name: &str) -> (TempDir, Teacher, Dataset, Vec<usize>) {
    let indices: Vec<usize> = (0..300).map(|i| (i * 7) % 300).collect();
    (
        TempDir::new(name),
        Teacher::load(&demo_path()).unwrap(),
        synthetic(300),
        indices,
    )
}

#[test]
fn first_call_computes_and_writes_second_loads() {
    let (dir, t, ds, idx) = setup("hit");
    let mut calls = 0;
    let first = cached_logits(&t, &ds, &idx, NORM, dir.path(), |_, _| calls += 1).unwrap();
    assert!(!first.from_cache && first.warnings.is_empty());
    assert_eq!(calls, 2);
    let key = CacheKey::new(&t, &ds, &idx, NORM).unwrap();
    let file = dir.path().join(key.file_name());
    assert!(file.is_file());
    let mut calls = 0;
    let second = cached_logits(&t, &ds, &idx, NORM, dir.path(), |_, _| calls += 1).unwrap();
    assert!(second.from_cache && second.warnings.is_empty());
    assert_eq!(calls, 0);
    assert_eq!(second.values(), first.values());
    assert_eq!(second.indices(), &idx[..]);
    // Readable as an ordinary safetensors file.
    let bytes = std::fs::read(&file).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    assert_eq!(st.tensor("logits").unwrap().shape(), &[300, 10]);
    let (_, header) = SafeTensors::read_metadata(&bytes).unwrap();
    let meta = header.metadata().clone().unwrap();
    assert_eq!(meta["teacher_sha256"], t.sha256());
    assert_eq!(meta["format"], FORMAT);
    assert_eq!(meta["teacher"], "fashion_mlp.onnx");
}

#[test]
fn corrupt_cache_files_are_recomputed_never_trusted() {
    let (dir, t, ds, idx) = setup("corrupt");
    let fresh = cached_logits(&t, &ds, &idx, NORM, dir.path(), |_, _| {}).unwrap();
    let key = CacheKey::new(&t, &ds, &idx, NORM).unwrap();
    let file = dir.path().join(key.file_name());
    let bytes = std::fs::read(&file).unwrap();
    // Truncated.
    std::fs::write(&file, &bytes[..bytes.len() / 2]).unwrap();
    let l = cached_logits(&t, &ds, &idx, NORM, dir.path(), |_, _| {}).unwrap();
    assert!(!l.from_cache);
    assert_eq!(l.warnings.len(), 1, "{:?}", l.warnings);
    assert!(
        l.warnings[0].contains("not a readable safetensors file"),
        "{:?}",
        l.warnings
    );
    assert_eq!(l.values(), fresh.values());
    // Rewritten, so the next call loads it.
    assert!(
        cached_logits(&t, &ds, &idx, NORM, dir.path(), |_, _| {})
            .unwrap()
            .from_cache
    );
    // One flipped bit in the last logit.
    let mut flipped = bytes.clone();
    *flipped.last_mut().unwrap() ^= 0x01;
    std::fs::write(&file, &flipped).unwrap();
    let l = cached_logits(&t, &ds, &idx, NORM, dir.path(), |_, _| {}).unwrap();
    assert!(
        !l.from_cache && l.warnings[0].contains("corrupt"),
        "{:?}",
        l.warnings
    );
    // Another teacher's file under this key's name.
    let mut swapped = bytes.clone();
    let sha = t.sha256().as_bytes();
    let at = swapped.windows(64).position(|w| w == sha).unwrap();
    swapped[at..at + 64].copy_from_slice(&[b'0'; 64]);
    std::fs::write(&file, &swapped).unwrap();
    let l = cached_logits(&t, &ds, &idx, NORM, dir.path(), |_, _| {}).unwrap();
    assert!(!l.from_cache, "{:?}", l.warnings);
    assert!(
        l.warnings[0].contains("its teacher_sha256 is 0000"),
        "{:?}",
        l.warnings
    );
}

#[test]
fn indices_and_normalization_change_the_key() {
    let (dir, t, ds, idx) = setup("key");
    let key = CacheKey::new(&t, &ds, &idx, NORM).unwrap();
    let fewer = CacheKey::new(&t, &ds, &idx[..299], NORM).unwrap();
    let reordered: Vec<usize> = idx.iter().rev().copied().collect();
    let reordered = CacheKey::new(&t, &ds, &reordered, NORM).unwrap();
    let other_norm = Normalization { std: 0.5, ..NORM };
    let renormed = CacheKey::new(&t, &ds, &idx, other_norm).unwrap();
    for other in [&fewer, &reordered, &renormed] {
        assert_eq!(other.teacher_sha256, key.teacher_sha256);
        assert_ne!(other.file_name(), key.file_name());
    }
    cached_logits(&t, &ds, &idx, NORM, dir.path(), |_, _| {}).unwrap();
    let l = cached_logits(&t, &ds, &idx, other_norm, dir.path(), |_, _| {}).unwrap();
    assert!(!l.from_cache);
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 2);
}

#[test]
fn merged_shards_equal_the_unsharded_result() {
    let (dir, t, ds, idx) = setup("shards");
    let whole = logits_for(&t, &ds, &idx, NORM, |_, _| {}).unwrap();
    let mut covered = 0;
    for k in 1..=3 {
        let shard = Shard::new(k, 3).unwrap();
        let part = cached_shard(&t, &ds, &idx, NORM, dir.path(), shard, |_, _| {}).unwrap();
        assert_eq!(part.indices(), &idx[shard.range(300)]);
        covered += part.len();
    }
    assert_eq!(covered, 300);
    let again = cached_shard(
        &t,
        &ds,
        &idx,
        NORM,
        dir.path(),
        Shard::new(2, 3).unwrap(),
        |_, _| {},
    );
    assert!(again.unwrap().from_cache);
    let merged = merge_shards(&t, &ds, &idx, NORM, dir.path(), 3).unwrap();
    assert_eq!(merged.indices(), whole.indices());
    for (a, b) in merged.values().iter().zip(whole.values()) {
        assert!((a - b).abs() <= 1e-5, "{a} vs {b}");
    }
    // The merge wrote the whole cache file.
    let l = cached_logits(&t, &ds, &idx, NORM, dir.path(), |_, _| {}).unwrap();
    assert!(l.from_cache);
    assert_eq!(l.values(), merged.values());
}

#[test]
fn merge_lists_missing_and_invalid_shards() {
    let (dir, t, ds, idx) = setup("merge-missing");
    for k in [1, 3] {
        let shard = Shard::new(k, 4).unwrap();
        cached_shard(&t, &ds, &idx, NORM, dir.path(), shard, |_, _| {}).unwrap();
    }
    let key = CacheKey::new(&t, &ds, &idx, NORM).unwrap();
    let third = dir
        .path()
        .join(key.shard_file_name(Shard::new(3, 4).unwrap()));
    std::fs::write(&third, b"junk").unwrap();
    let e = merge_shards(&t, &ds, &idx, NORM, dir.path(), 4)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("shard 2/4 missing") && e.contains("shard 4/4 missing"),
        "{e}"
    );
    assert!(e.contains("shard 3/4 invalid"), "{e}");
    assert!(!e.contains("shard 1/4"), "{e}");
    // Shards of a 4-way split do not stand in for a 2-way one.
    let e = merge_shards(&t, &ds, &idx, NORM, dir.path(), 2)
        .unwrap_err()
        .to_string();
    assert!(e.contains("shard 1/2 missing"), "{e}");
}

#[test]
fn shard_specs() {
    assert_eq!(
        "2/8".parse::<Shard>().unwrap(),
        Shard {
            number: 2,
            count: 8
        }
    );
    assert_eq!(Shard::new(2, 8).unwrap().to_string(), "2/8");
    for bad in ["0/4", "5/4", "1/0", "x/4", "3", ""] {
        assert!(bad.parse::<Shard>().is_err(), "{bad}");
    }
    let ranges: Vec<_> = (1..=3)
        .map(|k| Shard::new(k, 3).unwrap().range(10))
        .collect();
    assert_eq!(ranges, vec![0..3, 3..6, 6..10]);
    assert_eq!(Shard::new(4, 4).unwrap().range(2), 1..2);
    assert_eq!(Shard::new(1, 4).unwrap().range(2), 0..0);
}
