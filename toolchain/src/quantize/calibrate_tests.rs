//! Tests of range calibration (calibrate.rs), in their own file for length.

use super::*;
use crate::data::rng::Rng;

const ALL: [Method; 4] = [
    Method::MinMax,
    Method::Percentile(99.99),
    Method::Mse,
    Method::Entropy,
];

/// `n` seeded standard normals.
fn normal(n: usize, seed: u64) -> Vec<f32> {
    let mut rng = Rng::derive(seed, &[]);
    let mut xs = Vec::with_capacity(n + 1);
    while xs.len() < n {
        let (a, b) = rng.normal_pair();
        xs.extend([a, b]);
    }
    xs.truncate(n);
    xs
}

/// `n` seeded values uniform on `[lo, hi)`.
fn uniform(n: usize, lo: f32, hi: f32, seed: u64) -> Vec<f32> {
    let mut rng = Rng::derive(seed, &[]);
    (0..n).map(|_| lo + (hi - lo) * rng.unit_f32()).collect()
}

/// Observes `xs` in batches of 4096.
fn observed(xs: &[f32]) -> Observer {
    let mut obs = Observer::new();
    for batch in xs.chunks(4096) {
        obs.observe(batch).unwrap();
    }
    obs
}

/// Mean squared error of int8 asymmetric quantize-dequantize over `[lo, hi]`.
fn qdq_mse(xs: &[f32], (lo, hi): (f32, f32)) -> f64 {
    let (scale, zp) = quant_params(lo, hi);
    let err: f64 = xs
        .iter()
        .map(|&x| {
            let q = ((x / scale).round() + f32::from(zp)).clamp(-128.0, 127.0);
            f64::from((q - f32::from(zp)) * scale - x).powi(2)
        })
        .sum();
    err / xs.len() as f64
}

fn assert_valid((lo, hi): (f32, f32)) {
    assert!(
        lo.is_finite() && hi.is_finite() && lo <= 0.0 && 0.0 <= hi && lo < hi,
        "[{lo}, {hi}]"
    );
}

#[test]
fn minmax_is_the_exact_extremes() {
    let xs = normal(100_003, 1);
    let min = xs.iter().copied().fold(f32::INFINITY, f32::min);
    let max = xs.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let obs = observed(&xs);
    assert_eq!(obs.range(Method::MinMax).unwrap(), (min, max));
    assert_eq!(obs.min_max(), Some((min, max)));
    assert_eq!(obs.count(), 100_003);
}

#[test]
fn histogram_resolution_is_between_bins_and_twice_bins() {
    let obs = observed(&normal(100_000, 2));
    let (min, max) = obs.min_max().unwrap();
    let spanned = f64::from(max - min) / obs.bin_width();
    assert!((2047.0..=4096.0).contains(&spanned), "{spanned} bins");
}

#[test]
fn percentile_is_the_sample_quantile_within_a_bin() {
    let xs = normal(1_000_000, 3);
    let obs = observed(&xs);
    let (lo, hi) = obs.range(Method::Percentile(99.99)).unwrap();
    let mut sorted = xs.clone();
    sorted.sort_by(f32::total_cmp);
    // 0.005 % of 1e6 = 50 values cut from each tail.
    let w = obs.bin_width() as f32;
    assert!((lo - sorted[50]).abs() <= w, "{lo} vs {}", sorted[50]);
    assert!(
        (hi - sorted[1_000_000 - 50]).abs() <= w,
        "{hi} vs {}",
        sorted[999_950]
    );
    // The normal's 99.995 % quantile is 3.8906; sampling noise is ~0.04.
    assert!(
        (lo + 3.89).abs() < 0.15 && (hi - 3.89).abs() < 0.15,
        "[{lo}, {hi}]"
    );
    // 100 % keeps everything.
    assert_eq!(
        obs.range(Method::Percentile(100.0)).unwrap(),
        obs.range(Method::MinMax).unwrap()
    );
}

#[test]
fn mse_and_entropy_ignore_outliers_that_dominate_minmax() {
    let n = 1_000_000;
    let bulk = normal(n, 4);
    let mut xs = bulk.clone();
    xs.extend([50.0, -50.0]);
    xs.rotate_right(1); // one outlier in the first batch, one in the last
    let obs = observed(&xs);
    let minmax = obs.range(Method::MinMax).unwrap();
    assert_eq!(minmax, (-50.0, 50.0));
    let base = qdq_mse(&bulk, minmax);
    for m in [Method::Mse, Method::Entropy] {
        let (lo, hi) = obs.range(m).unwrap();
        eprintln!("{m}: [{lo}, {hi}]");
        assert!(
            lo < -3.5 && lo > -20.0 && hi > 3.5 && hi < 20.0,
            "{m}: [{lo}, {hi}]"
        );
        let err = qdq_mse(&bulk, (lo, hi));
        assert!(err < base / 4.0, "{m}: bulk mse {err} vs minmax {base}");
    }
    // MSE's optimum, clipping both outliers at ±t: minimise
    // 2·(50 − t)² + n·(2t/255)²/12, so t = 200/(4 + 8n/(12·255²)) ≈ 14.03.
    let t = 200.0 / (4.0 + 8.0 * n as f32 / (12.0 * 255.0 * 255.0));
    let (lo, hi) = obs.range(Method::Mse).unwrap();
    assert!(
        (hi - t).abs() < 0.1 && (lo + t).abs() < 0.1,
        "[{lo}, {hi}] vs ±{t}"
    );
    // Entropy looks at the shape, not the error: it keeps about 4–6 σ.
    let (lo, hi) = obs.range(Method::Entropy).unwrap();
    assert!(lo > -7.0 && hi < 7.0, "[{lo}, {hi}]");
}

#[test]
fn uniform_ranges_are_the_support_for_every_method() {
    let obs = observed(&uniform(1_000_000, -1.0, 3.0, 5));
    for m in ALL {
        let (lo, hi) = obs.range(m).unwrap();
        assert!(
            (lo + 1.0).abs() < 0.05 && (hi - 3.0).abs() < 0.05,
            "{m}: [{lo}, {hi}]"
        );
    }
}

#[test]
fn one_signed_tensors_keep_zero_as_the_lower_end() {
    // ReLU-like: half exact zeros, half |normal|.
    let xs: Vec<f32> = normal(200_000, 6).iter().map(|x| x.max(0.0)).collect();
    let obs = observed(&xs);
    for m in ALL {
        let (lo, hi) = obs.range(m).unwrap();
        assert_eq!(lo, 0.0, "{m}");
        assert!(hi > 2.0, "{m}: hi {hi}");
        assert_eq!(quant_params(lo, hi).1, -128, "{m}");
    }
}

#[test]
fn merge_equals_observing_the_concatenation() {
    let mut a = normal(10_000, 7);
    a.extend([0.0, f32::NAN, 0.0]);
    let b: Vec<f32> = uniform(7_000, -300.0, 20.0, 8);
    let c = uniform(5_000, 1e-6, 2e-6, 9); // narrow, far finer bins
    let mut all = Observer::new();
    for xs in [&c, &a, &b] {
        all.observe(xs).unwrap();
    }
    let (oa, ob, oc) = (observed(&a), observed(&b), observed(&c));
    let mut left = oa.clone();
    left.merge(&ob).unwrap();
    left.merge(&oc).unwrap();
    let mut right = oc.clone();
    right.merge(&oa).unwrap();
    right.merge(&ob).unwrap();
    assert_eq!(left, all);
    assert_eq!(right, all);
    let mut empty = Observer::new();
    empty.merge(&all).unwrap();
    assert_eq!(empty, all);
    all.merge(&Observer::new()).unwrap();
    assert_eq!(left, all);
    assert_eq!(all.nan_count(), 1);
    assert_eq!(all.count(), 22_002);
}

#[test]
fn observing_in_any_order_gives_the_same_observer() {
    let mut xs = uniform(20_000, -3.0, 1e4, 10);
    xs.sort_by(f32::total_cmp);
    let sorted = observed(&xs);
    xs.reverse();
    assert_eq!(observed(&xs), sorted);
    let mut one = Observer::new();
    for &x in &xs {
        one.observe(&[x]).unwrap();
    }
    assert_eq!(one, sorted);
}

#[test]
fn degenerate_inputs_give_valid_ranges() {
    let cases: [&[f32]; 5] = [&[0.0; 1000], &[-0.0], &[5.0; 10], &[-2.5], &[1e-30, 3e-30]];
    for xs in cases {
        let obs = observed(xs);
        for m in ALL {
            let r = obs.range(m).unwrap();
            assert_valid(r);
            assert!(quant_params(r.0, r.1).0 >= MIN_SCALE);
        }
    }
    let zeros = observed(&[0.0; 10]);
    assert_eq!(zeros.range(Method::Mse).unwrap(), (0.0, 255.0 * MIN_SCALE));
    assert_eq!(
        observed(&[5.0; 3]).range(Method::MinMax).unwrap(),
        (0.0, 5.0)
    );
    assert_eq!(
        observed(&[-2.5]).range(Method::Entropy).unwrap(),
        (-2.5, 0.0)
    );
}

#[test]
fn extreme_magnitudes_are_binned() {
    let obs = observed(&[f32::MAX, -f32::MAX, f32::MIN_POSITIVE, 1e-45]);
    for m in ALL {
        assert_valid(obs.range(m).unwrap());
    }
    assert_eq!(obs.range(Method::MinMax).unwrap(), (-f32::MAX, f32::MAX));
}

#[test]
fn quant_params_put_zero_on_an_integer() {
    let ranges = [
        (-1.0, 3.0),
        (0.0, 6.0),
        (-6.0, 0.0),
        (-0.3, 0.7),
        (-1e-3, 5.0),
        (-4.0, 4.0),
    ];
    for (lo, hi) in ranges {
        let (scale, zp) = quant_params(lo, hi);
        assert!((scale - (hi - lo) / 255.0).abs() <= 1e-6 * scale, "{scale}");
        // Real 0 maps to the zero point and back to 0 exactly.
        let q = (0.0f32 / scale).round() + f32::from(zp);
        assert_eq!(q, f32::from(zp));
        assert_eq!((q - f32::from(zp)) * scale, 0.0);
        // The nudged range is within half a step of the asked one.
        let (nlo, nhi) = (
            (-128.0 - f32::from(zp)) * scale,
            (127.0 - f32::from(zp)) * scale,
        );
        assert!(nlo <= 0.0 && nhi >= 0.0);
        assert!(
            (nlo - lo).abs() <= 0.5 * scale * 1.001,
            "[{lo}, {hi}] → [{nlo}, {nhi}]"
        );
        assert!(
            (nhi - hi).abs() <= 0.5 * scale * 1.001,
            "[{lo}, {hi}] → [{nlo}, {nhi}]"
        );
    }
    assert_eq!(quant_params(0.0, 6.0).1, -128);
    assert_eq!(quant_params(-6.0, 0.0).1, 127);
    // −128 − (−1)/(4/255) = −64.25.
    assert_eq!(quant_params(-1.0, 3.0).1, -64);
    assert_eq!(quant_params(0.0, 0.0), (MIN_SCALE, -128));
}

#[test]
fn symmetric_weight_scale_has_a_floor() {
    assert!((symmetric_weight_scale(1.27) - 0.01).abs() < 1e-8);
    assert_eq!(symmetric_weight_scale(-1.27), symmetric_weight_scale(1.27));
    assert_eq!(symmetric_weight_scale(0.0), MIN_SCALE);
    assert!(symmetric_weight_scale(0.0) > 0.0);
}

#[test]
fn errors() {
    assert!(matches!(
        Observer::new().range(Method::MinMax),
        Err(CalibrateError::Empty)
    ));
    let mut obs = observed(&[1.0, -1.0]);
    let before = obs.clone();
    let err = obs.observe(&[2.0, f32::INFINITY, f32::NAN]).unwrap_err();
    assert!(matches!(err, CalibrateError::NonFinite { value } if value == f32::INFINITY));
    assert_eq!(obs, before);
    obs.observe(&[f32::NAN, f32::NAN]).unwrap();
    assert_eq!((obs.count(), obs.nan_count()), (2, 2));
    let mut nans = Observer::new();
    nans.observe(&[f32::NAN]).unwrap();
    assert!(matches!(
        nans.range(Method::Mse),
        Err(CalibrateError::Empty)
    ));
    for p in [0.0, -1.0, 100.5, f64::NAN] {
        assert!(matches!(
            obs.range(Method::Percentile(p)),
            Err(CalibrateError::Percentile { .. })
        ));
    }
    assert!(matches!(Observer::with_bins(0), Err(CalibrateError::Bins)));
    let small = Observer::with_bins(16).unwrap();
    assert!(matches!(
        obs.merge(&small),
        Err(CalibrateError::MergeBins {
            ours: 2048,
            theirs: 16
        })
    ));
}

#[test]
fn methods_parse_print_and_serialize() {
    for (s, m) in [
        ("minmax", Method::MinMax),
        ("percentile", Method::Percentile(DEFAULT_PERCENTILE)),
        ("percentile:99.9", Method::Percentile(99.9)),
        ("mse", Method::Mse),
        ("entropy", Method::Entropy),
    ] {
        assert_eq!(s.parse::<Method>().unwrap(), m);
        assert_eq!(m.to_string().parse::<Method>().unwrap(), m);
        let json = serde_json::to_string(&m).unwrap();
        assert_eq!(serde_json::from_str::<Method>(&json).unwrap(), m);
    }
    assert_eq!(
        serde_json::to_string(&Method::Percentile(99.9)).unwrap(),
        "\"percentile:99.9\""
    );
    for bad in [
        "",
        "MinMax",
        "kl",
        "percentile:",
        "percentile:x",
        "percentile:101",
        "percentile:0",
    ] {
        assert!(bad.parse::<Method>().is_err(), "{bad}");
    }
    assert!(serde_json::from_str::<Method>("\"percentile:200\"").is_err());
}

#[test]
fn methods_parse_as_clap_arguments() {
    use clap::Parser;
    #[derive(clap::Parser)]
    struct Cli {
        #[arg(long, default_value = "minmax")]
        calibrate: Method,
    }
    let cli = Cli::try_parse_from(["t", "--calibrate", "percentile:99.9"]).unwrap();
    assert_eq!(cli.calibrate, Method::Percentile(99.9));
    assert_eq!(
        Cli::try_parse_from(["t"]).unwrap().calibrate,
        Method::MinMax
    );
    assert!(Cli::try_parse_from(["t", "--calibrate", "kl"]).is_err());
}
