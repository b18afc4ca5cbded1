//! Activation-range calibration: pure statistics over f32 activations, fed
//! batch by batch, with no runtime or ONNX involved.
//!
//! An [`Observer`] watches one tensor and keeps what every [`Method`] needs;
//! [`Observer::range`] picks the clipping range `[lo, hi]`; [`quant_params`]
//! turns it into the int8 asymmetric `(scale, zero_point)` of the int8 scheme
//! (ARCHITECTURE.md), and [`symmetric_weight_scale`] gives a per-channel
//! weight scale.
//!
//! # Histogram layout
//!
//! The histogram is signed and anchored at zero: bin `k` counts the values in
//! `[k·w, (k+1)·w)`, where the width `w` is a power of two, and the bins
//! cover exactly `[min(lo, 0), max(hi, 0)]` of the values seen so far. `w` is
//! the smallest power of two (at least 2⁻¹⁶⁰) that fits that window in
//! `2·bins` bins, so between `bins` and `2·bins` bins are in use: with the
//! default 2048, at least as fine as ONNX Runtime's and TensorRT's 2048-bin
//! histograms. When the range grows, `w` doubles and pairs of bins are
//! summed, which is exact because every edge of a wide bin is an edge of the
//! narrow ones. So an observer depends only on the multiset of values seen:
//! any batching, any order, and any [`Observer::merge`] tree give an equal
//! observer. (ONNX Runtime's `HistogramCollector` likewise keeps a
//! zero-centred signed histogram for asymmetric ranges and grows it by whole
//! bins; its merges are exact only while the range does not grow.) Zero
//! being a bin edge, the histogram of `|x|` is obtained by folding, exactly.
//! Values exactly 0 are also counted apart: they are represented exactly by
//! every range, so the `mse` and `entropy` searches leave them out (a ReLU's
//! zeros would otherwise dominate both).
//!
//! NaN is ignored (and counted, [`Observer::nan_count`]); ±∞ is an error,
//! since an infinite activation means the float model overflows and no range
//! can represent it.
//!
//! # Ranges
//!
//! Every method's `[lo, hi]` is clamped to the observed `[min, max]`, then
//! extended to contain 0 (so zero is exactly representable), then widened,
//! about 0, to at least `255 · MIN_SCALE` so that `lo < hi` and the scale is
//! never below [`MIN_SCALE`] (an all-zero tensor gets `[0, 255·MIN_SCALE]`).
//!
//! - `minmax`: the observed extremes.
//! - `percentile:P`: ONNX Runtime's convention for asymmetric ranges,
//!   `(100 − P)/2` % of the values cut from each tail; the quantile is
//!   interpolated linearly inside its bin, so it is within one bin width of
//!   the sample quantile.
//! - `mse`: the `[lo, hi]`, over all pairs of bin edges `lo ≤ 0 ≤ hi`,
//!   minimising the expected squared error of int8 asymmetric quantization
//!   on the histogram: `n_inside · s²/12` for rounding (`s = (hi − lo)/255`,
//!   the uniform-rounding model) plus the exact clipping error of the bins
//!   outside, each bin's mass taken as uniform over the bin. The error splits
//!   into prefix sums, so the full 2-D search costs O(1) per pair.
//! - `entropy`: TensorRT's KL-divergence calibration on the histogram of
//!   `|x|`: for each candidate threshold `t` (a bin edge, at least 128 bins),
//!   the reference `P` is the bins below `t` with the mass beyond added to
//!   the last one, `Q` is those bins merged into 128 levels and spread back
//!   over their non-empty bins; the `t` minimising `KL(P‖Q)` gives
//!   `[−t, t]`, then clamped to `[min, max]` (as ONNX Runtime applies it to
//!   asymmetric ranges). For one-signed tensors the asymmetric quantizer then
//!   has 256 levels over `[0, t]`, finer than the 128 the search assumes.

use std::fmt;
use std::str::FromStr;

/// Default histogram resolution: the observed range spans at least this many
/// bins (and at most twice as many).
pub const DEFAULT_BINS: usize = 2048;

/// The percentile `percentile` alone means (ONNX Runtime's default).
pub const DEFAULT_PERCENTILE: f64 = 99.999;

/// The smallest scale [`quant_params`] and [`symmetric_weight_scale`] return
/// (f32 machine epsilon, as PyTorch's observers use), so an all-zero tensor
/// or channel still gets a usable scale and a bounded bias scale.
pub const MIN_SCALE: f32 = f32::EPSILON;

/// Levels of the candidate distribution in the entropy search (TensorRT's
/// 128: one side of int8).
const ENTROPY_LEVELS: usize = 128;

/// Finest bin width, 2^MIN_EXP; keeps bin indices bounded for tiny values.
const MIN_EXP: i32 = -160;

/// Quantization steps of an int8 range (−128..127).
const STEPS: f64 = 255.0;

/// Errors of calibration.
#[derive(Debug, thiserror::Error)]
pub enum CalibrateError {
    /// A range was asked of an observer that has seen no finite value.
    #[error("no finite value was observed")]
    Empty,
    /// An observed value is ±∞.
    #[error("value {value} is not finite (the float model overflows)")]
    NonFinite {
        /// The value.
        value: f32,
    },
    /// A percentile outside `(0, 100]`.
    #[error("percentile {value} is not in (0, 100]")]
    Percentile {
        /// The percentile given.
        value: f64,
    },
    /// An unknown method name.
    #[error("unknown calibration method '{given}' (expected minmax, percentile, percentile:P, mse or entropy)")]
    Method {
        /// The name given.
        given: String,
    },
    /// A histogram of zero bins.
    #[error("a histogram needs at least one bin")]
    Bins,
    /// Observers of different resolutions cannot be merged.
    #[error("cannot merge an observer of {theirs} bins into one of {ours}")]
    MergeBins {
        /// The receiving observer's bins.
        ours: usize,
        /// The merged observer's bins.
        theirs: usize,
    },
}

/// How an activation's clipping range is chosen (see the module docs).
///
/// Parsed from and written as `minmax`, `percentile` (=
/// [`DEFAULT_PERCENTILE`]), `percentile:P`, `mse`, `entropy`, in the CLI
/// (clap uses [`FromStr`]) and in recipes (serde, as that string).
#[derive(Clone, Copy, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum Method {
    /// The observed minimum and maximum.
    #[default]
    MinMax,
    /// Keep this percentage of the values, cutting half the rest from each
    /// tail.
    Percentile(f64),
    /// Minimise the expected squared quantization error.
    Mse,
    /// Minimise the KL divergence of the quantized distribution (TensorRT).
    Entropy,
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Method::MinMax => f.write_str("minmax"),
            Method::Percentile(p) => write!(f, "percentile:{p}"),
            Method::Mse => f.write_str("mse"),
            Method::Entropy => f.write_str("entropy"),
        }
    }
}

impl FromStr for Method {
    type Err = CalibrateError;

    fn from_str(s: &str) -> Result<Method, CalibrateError> {
        let unknown = || CalibrateError::Method { given: s.into() };
        match s {
            "minmax" => Ok(Method::MinMax),
            "percentile" => Ok(Method::Percentile(DEFAULT_PERCENTILE)),
            "mse" => Ok(Method::Mse),
            "entropy" => Ok(Method::Entropy),
            _ => {
                let p = s.strip_prefix("percentile:").ok_or_else(unknown)?;
                let p: f64 = p.trim().parse().map_err(|_| unknown())?;
                Ok(Method::Percentile(check_percentile(p)?))
            }
        }
    }
}

impl TryFrom<String> for Method {
    type Error = CalibrateError;

    fn try_from(s: String) -> Result<Method, CalibrateError> {
        s.parse()
    }
}

impl From<Method> for String {
    fn from(m: Method) -> String {
        m.to_string()
    }
}

fn check_percentile(p: f64) -> Result<f64, CalibrateError> {
    if p > 0.0 && p <= 100.0 {
        Ok(p)
    } else {
        Err(CalibrateError::Percentile { value: p })
    }
}

/// Range statistics of one tensor: min/max, a zero-anchored signed
/// histogram and counts (see the module docs for the layout).
#[derive(Clone, Debug, PartialEq)]
pub struct Observer {
    /// Resolution: the window spans more than `bins`, at most `2·bins` bins.
    bins: usize,
    /// Finite values observed.
    count: u64,
    /// NaNs ignored.
    nans: u64,
    /// Values exactly 0 (also in the histogram).
    zeros: u64,
    /// Observed extremes (meaningful when `count > 0`).
    min: f32,
    max: f32,
    /// The bin width is `2^exp`.
    exp: i32,
    /// Index `k` of `counts[0]`.
    first: i64,
    /// Counts of bins `first..first + counts.len()`, covering
    /// `[min(min, 0), max(max, 0)]` exactly.
    counts: Vec<u64>,
}

impl Default for Observer {
    fn default() -> Observer {
        Observer::new()
    }
}

impl Observer {
    /// An empty observer of [`DEFAULT_BINS`] resolution.
    pub fn new() -> Observer {
        Observer {
            bins: DEFAULT_BINS,
            count: 0,
            nans: 0,
            zeros: 0,
            min: f32::INFINITY,
            max: f32::NEG_INFINITY,
            exp: MIN_EXP,
            first: 0,
            counts: Vec::new(),
        }
    }

    /// An empty observer whose range spans between `bins` and `2·bins` bins.
    pub fn with_bins(bins: usize) -> Result<Observer, CalibrateError> {
        if bins == 0 {
            return Err(CalibrateError::Bins);
        }
        Ok(Observer {
            bins,
            ..Observer::new()
        })
    }

    /// Finite values observed.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// NaNs seen and ignored.
    pub fn nan_count(&self) -> u64 {
        self.nans
    }

    /// The observed `(min, max)`, or `None` before any finite value.
    pub fn min_max(&self) -> Option<(f32, f32)> {
        (self.count > 0).then_some((self.min, self.max))
    }

    /// The current bin width (a power of two).
    pub fn bin_width(&self) -> f64 {
        pow2(self.exp)
    }

    /// Adds a batch of values; NaNs are ignored. Errors on ±∞, leaving the
    /// observer unchanged.
    pub fn observe(&mut self, values: &[f32]) -> Result<(), CalibrateError> {
        let (mut lo, mut hi) = (f32::INFINITY, f32::NEG_INFINITY);
        let (mut nans, mut zeros) = (0u64, 0u64);
        for &x in values {
            if x.is_nan() {
                nans += 1;
                continue;
            }
            if x.is_infinite() {
                return Err(CalibrateError::NonFinite { value: x });
            }
            lo = lo.min(x);
            hi = hi.max(x);
            zeros += u64::from(x == 0.0);
        }
        self.nans += nans;
        let finite = values.len() as u64 - nans;
        if finite == 0 {
            return Ok(());
        }
        self.fit(lo, hi);
        let inv = pow2(-self.exp);
        for &x in values.iter().filter(|x| !x.is_nan()) {
            let k = (f64::from(x) * inv).floor() as i64;
            self.counts[(k - self.first) as usize] += 1;
        }
        self.count += finite;
        self.zeros += zeros;
        Ok(())
    }

    /// Adds everything `other` observed, as if its values had been observed
    /// here (exactly: see the module docs). Errors unless both have the same
    /// resolution.
    pub fn merge(&mut self, other: &Observer) -> Result<(), CalibrateError> {
        if self.bins != other.bins {
            return Err(CalibrateError::MergeBins {
                ours: self.bins,
                theirs: other.bins,
            });
        }
        self.nans += other.nans;
        if other.count == 0 {
            return Ok(());
        }
        self.fit(other.min, other.max);
        debug_assert!(self.exp >= other.exp);
        let shift = (self.exp - other.exp).min(63) as u32;
        for (i, &c) in other.counts.iter().enumerate().filter(|(_, &c)| c > 0) {
            let k = (other.first + i as i64) >> shift;
            self.counts[(k - self.first) as usize] += c;
        }
        self.count += other.count;
        self.zeros += other.zeros;
        Ok(())
    }

    /// Extends the extremes by `[lo, hi]` (finite) and re-bins the histogram
    /// to the width and window they need.
    fn fit(&mut self, lo: f32, hi: f32) {
        if self.count == 0 {
            (self.min, self.max) = (lo, hi);
        } else {
            (self.min, self.max) = (self.min.min(lo), self.max.max(hi));
        }
        let (l, h) = (f64::from(self.min.min(0.0)), f64::from(self.max.max(0.0)));
        let exp = fit_exp(l, h, 2 * self.bins).max(self.exp);
        let (first, last) = (bin_index(l, exp), bin_index(h, exp));
        let len = (last - first + 1) as usize;
        if exp == self.exp && first == self.first && len == self.counts.len() {
            return;
        }
        // exp never decreases; a shift by 63 maps every index in the window
        // (|k| ≤ 2·bins) to 0 or −1, as floor division should.
        let shift = (exp - self.exp).min(63) as u32;
        let mut counts = vec![0u64; len];
        for (i, &c) in self.counts.iter().enumerate().filter(|(_, &c)| c > 0) {
            let k = (self.first + i as i64) >> shift;
            counts[(k - first) as usize] += c;
        }
        (self.exp, self.first, self.counts) = (exp, first, counts);
    }

    /// The clipping range `[lo, hi]` that `method` picks: `lo < hi`, both
    /// finite, `lo ≤ 0 ≤ hi`. Errors on an empty observer or a percentile
    /// outside `(0, 100]`.
    pub fn range(&self, method: Method) -> Result<(f32, f32), CalibrateError> {
        if self.count == 0 {
            return Err(CalibrateError::Empty);
        }
        let (lo, hi) = match method {
            Method::MinMax => (f64::from(self.min), f64::from(self.max)),
            Method::Percentile(p) => self.percentile_range(check_percentile(p)?),
            Method::Mse => self.mse_range(),
            Method::Entropy => self.entropy_range(),
        };
        let (min, max) = (f64::from(self.min), f64::from(self.max));
        let lo = (lo.clamp(min, max) as f32).min(0.0);
        let hi = (hi.clamp(min, max) as f32).max(0.0);
        Ok(widen(lo, hi))
    }

    /// The lower edge of bin `i` of `counts` (`i == counts.len()` gives the
    /// upper edge of the last).
    fn edge(&self, i: usize) -> f64 {
        (self.first + i as i64) as f64 * self.bin_width()
    }

    /// Index in `counts` of the bin holding exact zeros.
    fn zero_bin(&self) -> usize {
        (-self.first) as usize
    }

    fn percentile_range(&self, p: f64) -> (f64, f64) {
        let n = self.count as f64;
        let tail = n * (100.0 - p) / 200.0;
        (self.quantile(tail), self.quantile(n - tail))
    }

    /// The value with `mass` values below it, interpolated linearly inside
    /// its bin.
    fn quantile(&self, mass: f64) -> f64 {
        let w = self.bin_width();
        let mut below = 0.0;
        for (i, &c) in self.counts.iter().enumerate().filter(|(_, &c)| c > 0) {
            let c = c as f64;
            if below + c >= mass {
                return self.edge(i) + (mass - below).max(0.0) / c * w;
            }
            below += c;
        }
        self.edge(self.counts.len())
    }

    fn mse_range(&self) -> (f64, f64) {
        let (w, len, z) = (self.bin_width(), self.counts.len(), self.zero_bin());
        // Prefix sums over bins of mass, first and second moments, each
        // bin's mass uniform over it; exact zeros left out (they cost
        // nothing in any range).
        let (mut s0, mut s1, mut s2) = (vec![0.0; len + 1], vec![0.0; len + 1], vec![0.0; len + 1]);
        for (i, &c) in self.counts.iter().enumerate() {
            let c = (c - if i == z { self.zeros } else { 0 }) as f64;
            let m = self.edge(i) + w / 2.0;
            s0[i + 1] = s0[i] + c;
            s1[i + 1] = s1[i] + c * m;
            s2[i + 1] = s2[i] + c * (m * m + w * w / 12.0);
        }
        // Σ over bins a..b of c·E[(x − t)²].
        let clip = |a: usize, b: usize, t: f64| {
            ((s2[b] - s2[a]) - 2.0 * t * (s1[b] - s1[a]) + t * t * (s0[b] - s0[a])).max(0.0)
        };
        let (l, h) = (f64::from(self.min.min(0.0)), f64::from(self.max.max(0.0)));
        let mut best = (f64::INFINITY, l, h);
        for ja in 0..=z {
            let lo = self.edge(ja).clamp(l, h);
            let below = clip(0, ja, lo);
            for jb in z..=len {
                let hi = self.edge(jb).clamp(l, h);
                if hi <= lo {
                    continue;
                }
                let step = (hi - lo) / STEPS;
                let err = (s0[jb] - s0[ja]) * step * step / 12.0 + below + clip(jb, len, hi);
                if err < best.0 {
                    best = (err, lo, hi);
                }
            }
        }
        (best.1, best.2)
    }

    fn entropy_range(&self) -> (f64, f64) {
        let last = self.first + self.counts.len() as i64 - 1;
        let mut folded = vec![0u64; (last + 1).max(-self.first) as usize];
        for (i, &c) in self.counts.iter().enumerate() {
            let k = self.first + i as i64;
            folded[if k >= 0 { k } else { -k - 1 } as usize] += c;
        }
        folded[0] -= self.zeros;
        let t = kl_threshold_bins(&folded, ENTROPY_LEVELS) as f64 * self.bin_width();
        (-t, t)
    }
}

/// TensorRT's search on a histogram of `|x|`: the number of bins `i`
/// (`levels ≤ i ≤ hist.len()`, or just `hist.len()` when shorter) whose
/// upper edge, as a threshold, minimises `KL(P‖Q)`; ties go to the smaller.
/// An empty histogram gives 0.
fn kl_threshold_bins(hist: &[u64], levels: usize) -> usize {
    let n = hist.len();
    let total: f64 = hist.iter().map(|&c| c as f64).sum();
    if total == 0.0 {
        return 0;
    }
    let mut kept = hist[..levels.min(n)].iter().map(|&c| c as f64).sum::<f64>();
    let (mut sums, mut nonzero) = (vec![0.0; levels], vec![0u32; levels]);
    let mut best = (f64::INFINITY, n);
    for i in levels.min(n)..=n {
        if i > levels.min(n) {
            kept += hist[i - 1] as f64;
        }
        // Q is finite where P is non-zero unless the last bin is empty and
        // takes the outliers: skip such thresholds (TensorRT's KL is ∞).
        if i == 0 || kept == 0.0 || (hist[i - 1] == 0 && kept < total) {
            continue;
        }
        sums.fill(0.0);
        nonzero.fill(0);
        for (j, &c) in hist[..i].iter().enumerate().filter(|(_, &c)| c > 0) {
            sums[j * levels / i] += c as f64;
            nonzero[j * levels / i] += 1;
        }
        let mut kl = 0.0;
        for (j, &c) in hist[..i].iter().enumerate().filter(|(_, &c)| c > 0) {
            let p = (c as f64 + if j == i - 1 { total - kept } else { 0.0 }) / total;
            let g = j * levels / i;
            let q = sums[g] / f64::from(nonzero[g]) / kept;
            kl += p * (p / q).ln();
        }
        if kl < best.0 {
            best = (kl, i);
        }
    }
    best.1
}

/// `2^e` for `e` in f64's normal range.
fn pow2(e: i32) -> f64 {
    debug_assert!((-1022..=1023).contains(&e));
    f64::from_bits(((e + 1023) as u64) << 52)
}

/// The bin of `x` at width `2^exp` (exact: the scaling is by a power of two).
fn bin_index(x: f64, exp: i32) -> i64 {
    (x * pow2(-exp)).floor() as i64
}

/// The smallest `exp ≥ MIN_EXP` with which `[l, h]` spans at most `cap`
/// bins. The span never grows with `exp`, and a wider window never needs a
/// smaller `exp`, so this depends only on `(l, h, cap)`.
fn fit_exp(l: f64, h: f64, cap: usize) -> i32 {
    let span = |exp| bin_index(h, exp) - bin_index(l, exp) + 1;
    // Start where the span is surely too large: (h − l)/2^exp ≥ 2·cap.
    let mut exp = if h > l {
        ((h - l) / cap as f64).log2().floor() as i32 - 1
    } else {
        MIN_EXP
    }
    .max(MIN_EXP);
    while span(exp) > cap as i64 {
        exp += 1;
    }
    exp
}

/// Widens `[lo, hi]` (`lo ≤ 0 ≤ hi`) about 0 to at least `255 · MIN_SCALE`.
fn widen(lo: f32, hi: f32) -> (f32, f32) {
    let min_width = STEPS as f32 * MIN_SCALE;
    if hi - lo >= min_width {
        (lo, hi)
    } else if hi - lo > 0.0 {
        let f = min_width / (hi - lo);
        (lo * f, hi * f)
    } else {
        (0.0, min_width)
    }
}

/// Int8 asymmetric per-tensor parameters for the range `[lo, hi]` (extended
/// to contain 0), as ONNX Runtime and TFLite compute them:
/// `scale = (hi − lo)/255` (at least [`MIN_SCALE`]) and
/// `zero_point = round(−128 − lo/scale)` clamped to −128..127, rounding half
/// away from zero (TFLite). Real 0 quantizes to `zero_point` exactly. Meant
/// for ranges from [`Observer::range`]; `lo`, `hi` must be finite.
pub fn quant_params(lo: f32, hi: f32) -> (f32, i8) {
    let (lo, hi) = (f64::from(lo.min(0.0)), f64::from(hi.max(0.0)));
    let scale = (((hi - lo) / STEPS) as f32).max(MIN_SCALE);
    let zero_point = (-128.0 - lo / f64::from(scale))
        .round()
        .clamp(-128.0, 127.0);
    (scale, zero_point as i8)
}

/// The int8 symmetric scale (zero point 0, range −127..127) of a weight
/// channel whose largest magnitude is `max_abs`: `max_abs/127`, at least
/// [`MIN_SCALE`] (an all-zero channel, or NaN, gets the floor).
pub fn symmetric_weight_scale(max_abs: f32) -> f32 {
    (max_abs.abs() / 127.0).max(MIN_SCALE)
}

/// A weight value on the symmetric int8 grid of `scale` (−127..127; ties
/// away from zero).
pub fn quantize_symmetric(v: f32, scale: f32) -> i8 {
    (v / scale).round().clamp(-127.0, 127.0) as i8
}

#[cfg(test)]
#[path = "calibrate_tests.rs"]
mod tests;
