use super::*;

/// `n` images of `side × side` whose pixel (y, x) is `i + 10y + x` (mod 256),
/// labels `i % 10`.
fn toy(n: usize, side: usize) -> Dataset {
    let images = (0..n)
        .flat_map(|i| (0..side * side).map(move |p| ((i + 10 * (p / side) + p % side) % 256) as u8))
        .collect();
    let labels = (0..n).map(|i| (i % 10) as u8).collect();
    Dataset::new(images, labels, side, side, vec!["c".into(); 10]).unwrap()
}

fn identity() -> [f32; 256] {
    std::array::from_fn(|p| p as f32)
}

#[test]
fn normalization_constants_and_serde() {
    let n = Normalization::default();
    assert_eq!(
        n,
        Normalization {
            mean: 0.2860,
            std: 0.3530
        }
    );
    assert_eq!(n.apply(0), -0.2860 / 0.3530);
    assert_eq!(n.apply(255), (1.0 - 0.2860) / 0.3530);
    assert_eq!(n.table()[77], n.apply(77));
    let json = serde_json::to_string(&n).unwrap();
    assert_eq!(serde_json::from_str::<Normalization>(&json).unwrap(), n);
}

#[test]
fn augment_and_config_serde_defaults() {
    assert_eq!(
        serde_json::from_str::<Augment>("{}").unwrap(),
        Augment::default()
    );
    assert!(Augment::default().is_none());
    let a: Augment = serde_json::from_str(r#"{"shift": 2, "hflip": 0.5}"#).unwrap();
    assert_eq!((a.shift, a.hflip, a.crop_padding), (2, 0.5, 0));
    assert!(serde_json::from_str::<Augment>(r#"{"shfit": 2}"#).is_err());
    let c: BatchConfig =
        serde_json::from_str(r#"{"batch_size": 32, "labels": "unlabeled"}"#).unwrap();
    assert_eq!(c.batch_size, 32);
    assert_eq!(c.labels, LabelMode::Unlabeled);
    assert!(c.shuffle);
}

#[test]
fn shuffle_is_a_permutation_deterministic_per_seed_and_epoch() {
    let idx: Vec<usize> = (100..1100).collect();
    let a = epoch_order(&idx, 42, 3);
    let mut sorted = a.clone();
    sorted.sort_unstable();
    assert_eq!(sorted, idx);
    assert_ne!(a, idx);
    assert_eq!(epoch_order(&idx, 42, 3), a);
    assert_ne!(epoch_order(&idx, 42, 4), a);
    assert_ne!(epoch_order(&idx, 43, 3), a);
    // A resumed run plans epoch 3 without having seen epochs 0–2.
    let ds = toy(1200, 2);
    let resumed = batches(&ds, &idx, 3, &BatchConfig::train(64, 42)).unwrap();
    assert_eq!(resumed.order(), &a[..]);
}

#[test]
fn batches_cover_the_epoch_with_partial_last() {
    let ds = toy(10, 3);
    let idx: Vec<usize> = (0..10).collect();
    let cfg = BatchConfig::eval(4);
    let all: Vec<Batch> = batches(&ds, &idx, 0, &cfg).unwrap().collect();
    assert_eq!(
        all.iter().map(Batch::len).collect::<Vec<_>>(),
        vec![4, 4, 2]
    );
    assert_eq!(all[2].shape(), [2, 1, 3, 3]);
    assert_eq!(all[2].indices, vec![8, 9]);
    assert_eq!(all[2].labels, Some(vec![8, 9]));
    assert_eq!(
        all[1].x[..9],
        ds.image(4)
            .iter()
            .map(|&p| cfg.normalization.apply(p))
            .collect::<Vec<_>>()[..]
    );
    let dropped = BatchConfig {
        drop_last: true,
        ..cfg.clone()
    };
    let it = batches(&ds, &idx, 0, &dropped).unwrap();
    assert_eq!(it.len(), 2);
    assert_eq!(it.map(|b| b.len()).sum::<usize>(), 8);
    assert_eq!(batches(&ds, &[], 0, &cfg).unwrap().count(), 0);
}

#[test]
fn nth_and_get_match_sequential_iteration() {
    let ds = toy(50, 4);
    let idx: Vec<usize> = (0..50).collect();
    let cfg = BatchConfig {
        augment: Augment {
            shift: 1,
            hflip: 0.5,
            noise_std: 0.1,
            ..Augment::default()
        },
        ..BatchConfig::train(8, 9)
    };
    let seq: Vec<Batch> = batches(&ds, &idx, 2, &cfg).unwrap().collect();
    let mut it = batches(&ds, &idx, 2, &cfg).unwrap();
    assert_eq!(it.get(5).as_ref(), Some(&seq[5]));
    assert_eq!(it.nth(3).as_ref(), Some(&seq[3]));
    assert_eq!(it.next().as_ref(), Some(&seq[4]));
    assert_eq!(it.len(), seq.len() - 5);
    assert!(it.nth(100).is_none());
}

#[test]
fn shift_moves_pixels_as_expected() {
    // 3×3 image 1..=9; shift right 1 and up 1: content moves right and up,
    // black (0) comes in from the left and the bottom.
    let src: Vec<u8> = (1..=9).collect();
    let mut out = [f32::NAN; 9];
    render(&src, &mut out, 3, 3, 1, -1, false, &identity());
    assert_eq!(out, [0.0, 4.0, 5.0, 0.0, 7.0, 8.0, 0.0, 0.0, 0.0]);
    render(&src, &mut out, 3, 3, -2, 2, false, &identity());
    assert_eq!(out, [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 3.0, 0.0, 0.0]);
    render(&src, &mut out, 3, 3, 5, 0, false, &identity());
    assert_eq!(out, [0.0; 9]);
    // Black is the normalised black, not 0.0.
    let table = Normalization::default().table();
    render(&src, &mut out, 3, 3, 0, 1, false, &table);
    assert_eq!(out[..3], [table[0]; 3]);
    assert_eq!(out[3], table[1]);
}

#[test]
fn flip_is_exact() {
    let src: Vec<u8> = (1..=6).collect();
    let mut out = [f32::NAN; 6];
    render(&src, &mut out, 2, 3, 0, 0, true, &identity());
    assert_eq!(out, [3.0, 2.0, 1.0, 6.0, 5.0, 4.0]);
    // Flip after shift: content shifted right, then mirrored.
    render(&src, &mut out, 2, 3, 1, 0, true, &identity());
    assert_eq!(out, [2.0, 1.0, 0.0, 5.0, 4.0, 0.0]);

    let ds = toy(20, 5);
    let idx: Vec<usize> = (0..20).collect();
    let plain = BatchConfig::eval(7);
    let flipped = BatchConfig {
        augment: Augment {
            hflip: 1.0,
            ..Augment::default()
        },
        ..plain.clone()
    };
    let a: Vec<Batch> = batches(&ds, &idx, 0, &plain).unwrap().collect();
    let b: Vec<Batch> = batches(&ds, &idx, 0, &flipped).unwrap().collect();
    for (a, b) in a.iter().zip(&b) {
        for (ra, rb) in a.x.chunks(5).zip(b.x.chunks(5)) {
            let mirrored: Vec<f32> = ra.iter().rev().copied().collect();
            assert_eq!(rb, &mirrored[..]);
        }
    }
}

/// Which shift `(dx, dy)` within ±k turns `src` into `out`, if any.
fn find_shift(src: &[u8], out: &[f32], side: usize, k: i64) -> Option<(i64, i64)> {
    let table = Normalization::default().table();
    let mut want = vec![0.0; side * side];
    for dy in -k..=k {
        for dx in -k..=k {
            render(src, &mut want, side, side, dx, dy, false, &table);
            if want == out {
                return Some((dx, dy));
            }
        }
    }
    None
}

#[test]
fn random_shift_and_crop_stay_within_bounds_and_vary() {
    let ds = toy(64, 6);
    let idx: Vec<usize> = (0..64).collect();
    for (augment, k) in [
        (
            Augment {
                shift: 2,
                ..Augment::default()
            },
            2,
        ),
        (
            Augment {
                crop_padding: 1,
                ..Augment::default()
            },
            1,
        ),
        (
            Augment {
                shift: 1,
                crop_padding: 1,
                ..Augment::default()
            },
            2,
        ),
    ] {
        let cfg = BatchConfig {
            augment,
            ..BatchConfig::train(16, 5)
        };
        let mut seen = std::collections::HashSet::new();
        for b in batches(&ds, &idx, 1, &cfg).unwrap() {
            for (j, &i) in b.indices.iter().enumerate() {
                let out = &b.x[j * 36..(j + 1) * 36];
                let s = find_shift(ds.image(i), out, 6, k).expect("a shift within bounds");
                seen.insert(s);
            }
        }
        assert!(seen.len() > 2 * k as usize, "{augment:?}: only {seen:?}");
    }
}

#[test]
fn augmentation_is_keyed_by_seed_epoch_and_batch() {
    let ds = toy(40, 6);
    let idx: Vec<usize> = (0..40).collect();
    let cfg = BatchConfig {
        shuffle: false,
        augment: Augment {
            shift: 2,
            hflip: 0.5,
            noise_std: 0.05,
            ..Augment::default()
        },
        ..BatchConfig::train(10, 1)
    };
    let run =
        |cfg: &BatchConfig, epoch| batches(&ds, &idx, epoch, cfg).unwrap().collect::<Vec<_>>();
    let a = run(&cfg, 0);
    assert_eq!(run(&cfg, 0), a);
    assert_ne!(run(&cfg, 1)[0].x, a[0].x);
    assert_ne!(
        run(
            &BatchConfig {
                seed: 2,
                ..cfg.clone()
            },
            0
        )[0]
        .x,
        a[0].x
    );
    assert_ne!(a[0].x[..36], a[1].x[..36]);
}

#[test]
fn noise_has_the_requested_std_in_pixel_units() {
    let ds = toy(200, 8);
    let idx: Vec<usize> = (0..200).collect();
    let clean = BatchConfig::eval(50);
    let noisy = BatchConfig {
        augment: Augment {
            noise_std: 0.1,
            ..Augment::default()
        },
        ..clean.clone()
    };
    let std = clean.normalization.std;
    let (mut sum, mut sq, mut n) = (0.0f64, 0.0f64, 0.0f64);
    let pairs = batches(&ds, &idx, 0, &clean)
        .unwrap()
        .zip(batches(&ds, &idx, 0, &noisy).unwrap());
    for (c, z) in pairs {
        for (a, b) in c.x.iter().zip(&z.x) {
            let d = f64::from((b - a) * std);
            sum += d;
            sq += d * d;
            n += 1.0;
        }
    }
    let mean = sum / n;
    let sd = (sq / n - mean * mean).sqrt();
    assert!(mean.abs() < 0.003, "mean {mean}");
    assert!((sd - 0.1).abs() < 0.003, "std {sd}");
}

#[test]
fn unlabeled_mode_never_needs_labels() {
    let pixels: Vec<u8> = (0..5 * 16).map(|p| p as u8).collect();
    let ds = Dataset::unlabeled(pixels, 4, 4).unwrap();
    let idx: Vec<usize> = (0..5).collect();
    let cfg = BatchConfig {
        labels: LabelMode::Unlabeled,
        ..BatchConfig::eval(2)
    };
    let all: Vec<Batch> = batches(&ds, &idx, 0, &cfg).unwrap().collect();
    assert_eq!(all.len(), 3);
    assert!(all.iter().all(|b| b.labels.is_none()));
    let e = batches(&ds, &idx, 0, &BatchConfig::eval(2))
        .unwrap_err()
        .to_string();
    assert!(e.contains("LabelMode::Unlabeled"), "{e}");
}

#[test]
fn invalid_plans_are_rejected() {
    let ds = toy(4, 2);
    let e = |cfg: BatchConfig, idx: &[usize]| batches(&ds, idx, 0, &cfg).unwrap_err().to_string();
    assert!(e(BatchConfig::eval(0), &[0]).contains("batch_size"));
    assert!(e(BatchConfig::eval(2), &[0, 4]).contains("index 4 out of range"));
    let bad_flip = Augment {
        hflip: 1.5,
        ..Augment::default()
    };
    assert!(e(
        BatchConfig {
            augment: bad_flip,
            ..BatchConfig::eval(2)
        },
        &[0]
    )
    .contains("hflip"));
    let bad_norm = Normalization {
        mean: 0.0,
        std: 0.0,
    };
    assert!(e(
        BatchConfig {
            normalization: bad_norm,
            ..BatchConfig::eval(2)
        },
        &[0]
    )
    .contains("std"));
}

#[test]
fn augmented_views_keep_view_zero_and_labels_and_are_deterministic() {
    let ds = toy(5, 6);
    let aug = Augment {
        shift: 2,
        hflip: 0.5,
        ..Augment::default()
    };
    let idx = [4, 0, 2];
    let v = augmented_views(&ds, &idx, &aug, 3, 9).unwrap();
    assert_eq!(v.len(), 9);
    assert_eq!(v.labels.len(), 9);
    for (k, &i) in idx.iter().enumerate() {
        assert_eq!(v.image(k), ds.image(i), "view 0 is the original");
        for view in 0..3 {
            assert_eq!(v.labels[view * 3 + k], ds.labels[i]);
        }
    }
    assert!(
        (3..9).any(|k| v.image(k) != ds.image(idx[k % 3])),
        "views 1 and 2 are augmented"
    );
    let again = augmented_views(&ds, &idx, &aug, 3, 9).unwrap();
    assert_eq!(v, again);
    let other = augmented_views(&ds, &idx, &aug, 3, 10).unwrap();
    assert_ne!(v.images, other.images, "the seed picks the views");
    // Each copy is a shifted (and maybe mirrored) original: same pixel sum
    // or less (pixels shifted out), never new bright pixels.
    for k in 3..9 {
        let src: u32 = ds.image(idx[k % 3]).iter().map(|&p| u32::from(p)).sum();
        let got: u32 = v.image(k).iter().map(|&p| u32::from(p)).sum();
        assert!(got <= src);
    }
    let noisy = Augment {
        noise_std: 0.1,
        ..Augment::default()
    };
    assert!(augmented_views(&ds, &idx, &noisy, 2, 0).is_err());
    assert!(augmented_views(&ds, &[5], &aug, 2, 0).is_err());
}

#[test]
fn mixup_blends_views_only() {
    let ds = toy(6, 4);
    let mix = Augment {
        mixup: 1.0,
        ..Augment::default()
    };
    let idx: Vec<usize> = (0..6).collect();
    let v = augmented_views(&ds, &idx, &mix, 2, 3).unwrap();
    // With no shift or flip, a view differs from its image only by the blend,
    // and each blended pixel lies between the image's and some other's.
    assert!((6..12).any(|k| v.image(k) != ds.image(k - 6)));
    let (lo, hi) = (
        ds.images.iter().min().copied().unwrap(),
        ds.images.iter().max().copied().unwrap(),
    );
    assert!(v.images.iter().all(|&p| (lo..=hi).contains(&p)));
    let cfg = BatchConfig {
        augment: mix,
        ..BatchConfig::train(2, 0)
    };
    let err = batches(&ds, &idx, 0, &cfg).unwrap_err().to_string();
    assert!(err.contains("mixup"), "{err}");
    let bad = Augment {
        mixup: 1.5,
        ..Augment::default()
    };
    assert!(augmented_views(&ds, &idx, &bad, 2, 0).is_err());
}
