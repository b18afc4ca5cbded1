//! Several teachers combined into one tempered target distribution.
//!
//! With member logits `z_i`, normalised weights `w_i` (Σ w_i = 1) and
//! temperature `T`:
//! - arithmetic: `p = Σ w_i · softmax(z_i / T)`, the mixture; it keeps every
//!   class any member believes in;
//! - geometric: `p = softmax(Σ w_i · log_softmax(z_i / T))`, the normalised
//!   weighted geometric mean (a product of experts); it keeps what the
//!   members agree on and is sharper.
//!
//! Sums run in f64, and each softmax subtracts its row maximum, so no logit
//! range overflows; the output is f32 and sums to 1 within f32 rounding.

use super::cache::cached_logits;
use super::logits::Logits;
use super::{Teacher, TeacherError};
use crate::data::{Dataset, Normalization};
use std::path::Path;
use std::str::FromStr;

/// How member distributions are combined.
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    serde::Serialize,
    serde::Deserialize,
    clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum EnsembleMode {
    /// Weighted mean of the members' tempered softmax.
    #[default]
    Arithmetic,
    /// Normalised weighted geometric mean of the members' tempered softmax.
    Geometric,
}

impl FromStr for EnsembleMode {
    type Err = TeacherError;

    fn from_str(s: &str) -> Result<EnsembleMode, TeacherError> {
        match s {
            "arithmetic" => Ok(EnsembleMode::Arithmetic),
            "geometric" => Ok(EnsembleMode::Geometric),
            other => Err(TeacherError::Ensemble(format!(
                "unknown mode '{other}' (expected arithmetic or geometric)"
            ))),
        }
    }
}

/// Teachers with weights (normalised to sum 1) and a combination mode.
#[derive(Debug)]
pub struct Ensemble {
    members: Vec<(Teacher, f32)>,
    mode: EnsembleMode,
}

impl Ensemble {
    /// An ensemble; errors on invalid weights (see [`normalize_weights`])
    /// or members that disagree on the class count.
    pub fn new(members: Vec<(Teacher, f32)>, mode: EnsembleMode) -> Result<Ensemble, TeacherError> {
        let raw: Vec<f32> = members.iter().map(|(_, w)| *w).collect();
        let weights = normalize_weights(&raw)?;
        let first = &members[0].0;
        if let Some((other, _)) = members.iter().find(|(t, _)| t.classes() != first.classes()) {
            return Err(TeacherError::EnsembleClasses {
                first: first.path().into(),
                first_classes: first.classes(),
                other: other.path().into(),
                other_classes: other.classes(),
            });
        }
        let members = members
            .into_iter()
            .zip(weights)
            .map(|((t, _), w)| (t, w))
            .collect();
        Ok(Ensemble { members, mode })
    }

    /// The same members with new weights (normalised here, as in [`Self::new`]).
    pub fn reweighted(self, weights: &[f32]) -> Result<Ensemble, TeacherError> {
        if weights.len() != self.members.len() {
            return Err(TeacherError::Ensemble(format!(
                "{} weights for {} teachers",
                weights.len(),
                self.members.len()
            )));
        }
        let members = self
            .members
            .into_iter()
            .zip(weights)
            .map(|((t, _), &w)| (t, w))
            .collect();
        Ensemble::new(members, self.mode)
    }

    /// The members and their normalised weights.
    pub fn members(&self) -> &[(Teacher, f32)] {
        &self.members
    }

    /// The normalised weights, in member order.
    pub fn weights(&self) -> Vec<f32> {
        self.members.iter().map(|(_, w)| *w).collect()
    }

    /// The combination mode.
    pub fn mode(&self) -> EnsembleMode {
        self.mode
    }

    /// The members' (common) class count.
    pub fn classes(&self) -> usize {
        self.members[0].0.classes()
    }

    /// Errors unless every member has `classes` classes (the dataset's).
    pub fn check_classes(&self, classes: usize) -> Result<(), TeacherError> {
        self.members
            .iter()
            .try_for_each(|(t, _)| t.check_classes(classes))
    }

    /// Each member's cached logits (see [`cached_logits`]), each member fed
    /// its own `normalization` metadata, or `default` where it has none;
    /// `progress(member, done, total)`.
    pub fn cached_logits(
        &self,
        dataset: &Dataset,
        indices: &[usize],
        default: Normalization,
        cache_dir: &Path,
        mut progress: impl FnMut(usize, usize, usize),
    ) -> Result<Vec<Logits>, TeacherError> {
        self.members
            .iter()
            .enumerate()
            .map(|(m, (t, _))| {
                let norm = t.normalization().unwrap_or(default);
                cached_logits(t, dataset, indices, norm, cache_dir, |d, n| {
                    progress(m, d, n)
                })
            })
            .collect()
    }

    /// The combined tempered distribution `[indices.len(), classes]` for the
    /// dataset indices of a batch, from per-member logits (member order).
    pub fn distribution_for(
        &self,
        logits: &[Logits],
        indices: &[usize],
        temperature: f32,
    ) -> Result<Vec<f32>, TeacherError> {
        if logits.len() != self.members.len() {
            return Err(TeacherError::Ensemble(format!(
                "{} logit sets for {} members",
                logits.len(),
                self.members.len()
            )));
        }
        let gathered = logits
            .iter()
            .map(|l| l.gather(indices))
            .collect::<Result<Vec<_>, _>>()?;
        let slices: Vec<&[f32]> = gathered.iter().map(Vec::as_slice).collect();
        combine(
            &slices,
            &self.weights(),
            self.classes(),
            temperature,
            self.mode,
        )
    }
}

/// Weights scaled to sum 1; errors if any is negative or not finite, or
/// Ensemble weights from each member's accuracy on held-out data:
/// proportional to its margin over chance (`1/classes`), so a member no
/// better than guessing gets weight 0 and the spread between good teachers
/// is not flattened by their shared baseline; normalised to sum 1. An error
/// if no member beats chance.
pub fn accuracy_weights(accuracies: &[f64], classes: usize) -> Result<Vec<f32>, TeacherError> {
    let chance = 1.0 / classes.max(1) as f64;
    if let Some(a) = accuracies.iter().find(|a| !(0.0..=1.0).contains(*a)) {
        return Err(TeacherError::Ensemble(format!(
            "accuracy {a} is not in [0, 1]"
        )));
    }
    let margins: Vec<f32> = accuracies
        .iter()
        .map(|&a| (a - chance).max(0.0) as f32)
        .collect();
    if margins.iter().all(|&m| m == 0.0) {
        return Err(TeacherError::Ensemble(format!(
            "no teacher beats chance ({:.1} %) on the validation split: {}",
            100.0 * chance,
            accuracies
                .iter()
                .map(|a| format!("{:.1} %", 100.0 * a))
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }
    normalize_weights(&margins)
}

/// all are zero, or there are none.
pub fn normalize_weights(weights: &[f32]) -> Result<Vec<f32>, TeacherError> {
    if weights.is_empty() {
        return Err(TeacherError::Ensemble("no teachers".into()));
    }
    if let Some(w) = weights.iter().find(|w| !w.is_finite() || **w < 0.0) {
        return Err(TeacherError::Ensemble(format!(
            "weight {w} is not a finite non-negative number"
        )));
    }
    let sum: f64 = weights.iter().map(|&w| f64::from(w)).sum();
    if sum == 0.0 {
        return Err(TeacherError::Ensemble("all weights are zero".into()));
    }
    Ok(weights
        .iter()
        .map(|&w| (f64::from(w) / sum) as f32)
        .collect())
}

/// Combines per-member logits (each `[n, classes]`) into the tempered
/// distribution `[n, classes]`. `weights` must already sum to 1.
pub fn combine(
    logits: &[&[f32]],
    weights: &[f32],
    classes: usize,
    temperature: f32,
    mode: EnsembleMode,
) -> Result<Vec<f32>, TeacherError> {
    if !(temperature.is_finite() && temperature > 0.0) {
        return Err(TeacherError::Ensemble(format!(
            "temperature {temperature} is not a positive number"
        )));
    }
    if logits.is_empty() || logits.len() != weights.len() || classes == 0 {
        return Err(TeacherError::Ensemble(format!(
            "{} logit sets, {} weights, {classes} classes",
            logits.len(),
            weights.len()
        )));
    }
    let len = logits[0].len();
    if !len.is_multiple_of(classes) || logits.iter().any(|l| l.len() != len) {
        return Err(TeacherError::Ensemble(format!(
            "logit sets of {:?} values do not share one [n, {classes}] shape",
            logits.iter().map(|l| l.len()).collect::<Vec<_>>()
        )));
    }
    let t = f64::from(temperature);
    let mut out = Vec::with_capacity(len);
    let mut acc = vec![0f64; classes];
    let mut row = vec![0f64; classes];
    for r in 0..len / classes {
        acc.fill(0.0);
        for (member, &w) in logits.iter().zip(weights) {
            if w == 0.0 {
                continue; // also keeps 0 · log 0 = NaN out of the geometric mean
            }
            let z = &member[r * classes..(r + 1) * classes];
            for (o, &v) in row.iter_mut().zip(z) {
                *o = f64::from(v) / t;
            }
            log_softmax_in_place(&mut row);
            let w = f64::from(w);
            for (a, &l) in acc.iter_mut().zip(&row) {
                *a += match mode {
                    EnsembleMode::Arithmetic => w * l.exp(),
                    EnsembleMode::Geometric => w * l,
                };
            }
        }
        if mode == EnsembleMode::Geometric {
            log_softmax_in_place(&mut acc);
            acc.iter_mut().for_each(|a| *a = a.exp());
        }
        out.extend(acc.iter().map(|&p| p as f32));
    }
    Ok(out)
}

/// `x ← log_softmax(x)`, stable for any finite values.
fn log_softmax_in_place(x: &mut [f64]) {
    let max = x.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let lse = max + x.iter().map(|v| (v - max).exp()).sum::<f64>().ln();
    x.iter_mut().for_each(|v| *v -= lse);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::teacher::testutil::{demo_path, linear, synthetic, TempDir};

    fn close(a: &[f32], b: &[f32]) {
        assert_eq!(a.len(), b.len());
        for (x, y) in a.iter().zip(b) {
            assert!((x - y).abs() < 1e-6, "{a:?} vs {b:?}");
        }
    }

    // Teacher 1 says [1/4, 3/4], teacher 2 says [3/4, 1/4] (at T = 1).
    const Z1: [f32; 2] = [0.0, 1.098_612_3]; // ln 3
    const Z2: [f32; 2] = [1.098_612_3, 0.0];

    #[test]
    fn arithmetic_mean_by_hand() {
        let w = normalize_weights(&[3.0, 1.0]).unwrap();
        assert_eq!(w, vec![0.75, 0.25]);
        let p = combine(&[&Z1, &Z2], &w, 2, 1.0, EnsembleMode::Arithmetic).unwrap();
        // 0.75·[.25, .75] + 0.25·[.75, .25]
        close(&p, &[0.375, 0.625]);
        // T = 2: each softmax becomes [1, √3]/(1+√3) and its mirror; equal
        // weights average them to uniform.
        let p = combine(&[&Z1, &Z2], &[0.5, 0.5], 2, 2.0, EnsembleMode::Arithmetic).unwrap();
        close(&p, &[0.5, 0.5]);
        let s3 = 3f32.sqrt();
        let p = combine(&[&Z1, &Z2], &[1.0, 0.0], 2, 2.0, EnsembleMode::Arithmetic).unwrap();
        close(&p, &[1.0 / (1.0 + s3), s3 / (1.0 + s3)]);
    }

    #[test]
    fn geometric_mean_by_hand() {
        // p ∝ [.25^.75·.75^.25, .75^.75·.25^.25] = [1, √3] up to a factor.
        let s3 = 3f32.sqrt();
        let p = combine(&[&Z1, &Z2], &[0.75, 0.25], 2, 1.0, EnsembleMode::Geometric).unwrap();
        close(&p, &[1.0 / (1.0 + s3), s3 / (1.0 + s3)]);
        // T = 2 halves the log-odds again: [1, 3^¼].
        let q = 3f32.powf(0.25);
        let p = combine(&[&Z1, &Z2], &[0.75, 0.25], 2, 2.0, EnsembleMode::Geometric).unwrap();
        close(&p, &[1.0 / (1.0 + q), q / (1.0 + q)]);
        // A member of weight 0 is left out, even with a -inf logit.
        let masked = [f32::NEG_INFINITY, 0.0];
        let p = combine(
            &[&Z1, &masked],
            &[1.0, 0.0],
            2,
            1.0,
            EnsembleMode::Geometric,
        )
        .unwrap();
        close(&p, &[0.25, 0.75]);
        // Two rows, huge logits: no overflow, rows sum to 1.
        let a = [1000.0, -1000.0, 0.0, 0.0];
        let b = [900.0, -900.0, 0.0, 0.0];
        for mode in [EnsembleMode::Arithmetic, EnsembleMode::Geometric] {
            let p = combine(&[&a, &b], &[0.5, 0.5], 2, 1.0, mode).unwrap();
            close(&p, &[1.0, 0.0, 0.5, 0.5]);
        }
    }

    #[test]
    fn accuracy_weights_follow_the_margin_over_chance() {
        let w = accuracy_weights(&[0.9, 0.5, 0.1], 10).unwrap();
        // Margins 0.8, 0.4 and 0: 2/3, 1/3, 0.
        assert!(
            (w[0] - 2.0 / 3.0).abs() < 1e-6 && (w[1] - 1.0 / 3.0).abs() < 1e-6,
            "{w:?}"
        );
        assert_eq!(w[2], 0.0);
        assert_eq!(accuracy_weights(&[0.7, 0.7], 10).unwrap(), [0.5, 0.5]);
        let e = accuracy_weights(&[0.1, 0.05], 10).unwrap_err().to_string();
        assert!(e.contains("chance") && e.contains("10.0 %"), "{e}");
        assert!(accuracy_weights(&[1.5], 10).is_err());
    }

    #[test]
    fn weight_and_temperature_errors() {
        for bad in [
            &[][..],
            &[1.0, -0.5],
            &[0.0, 0.0],
            &[f32::NAN, 1.0],
            &[f32::INFINITY],
        ] {
            let e = normalize_weights(bad).unwrap_err().to_string();
            assert!(e.starts_with("invalid ensemble:"), "{e}");
        }
        assert!(normalize_weights(&[0.0, 2.0]).unwrap() == vec![0.0, 1.0]);
        for t in [0.0, -1.0, f32::NAN] {
            assert!(combine(&[&Z1], &[1.0], 2, t, EnsembleMode::Arithmetic).is_err());
        }
        assert!(combine(
            &[&Z1, &[0.0; 4]],
            &[0.5, 0.5],
            2,
            1.0,
            EnsembleMode::Geometric
        )
        .is_err());
        assert_eq!(
            "geometric".parse::<EnsembleMode>().unwrap(),
            EnsembleMode::Geometric
        );
        assert!("median".parse::<EnsembleMode>().is_err());
    }

    #[test]
    fn members_must_agree_on_classes() {
        let dir = TempDir::new("ens-classes");
        let three =
            Teacher::load(&dir.write("three.onnx", &linear(3, None, 1, false, &[]))).unwrap();
        let demo = Teacher::load(&demo_path()).unwrap();
        let e = Ensemble::new(vec![(demo, 1.0), (three, 1.0)], EnsembleMode::Arithmetic)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("fashion_mlp.onnx has 10") && e.contains("three.onnx has 3"),
            "{e}"
        );
        let one = Teacher::load(&dir.write("one.onnx", &linear(3, None, 1, false, &[]))).unwrap();
        let e = Ensemble::new(vec![(one, -1.0)], EnsembleMode::Geometric).unwrap_err();
        assert!(e.to_string().contains("weight -1"), "{e}");
    }

    #[test]
    fn cached_member_logits_combine_per_batch() {
        let dir = TempDir::new("ens-cached");
        let ds = synthetic(40);
        let a = dir.write("a.onnx", &linear(3, None, 1, false, &[]));
        let b = dir.write(
            "b.onnx",
            &linear(
                3,
                Some(1),
                2,
                false,
                &[("normalization", "mean=0.5,std=0.5")],
            ),
        );
        let members = vec![
            (Teacher::load(&a).unwrap(), 2.0),
            (Teacher::load(&b).unwrap(), 6.0),
        ];
        let ens = Ensemble::new(members, EnsembleMode::Geometric).unwrap();
        assert_eq!((ens.classes(), ens.weights()), (3, vec![0.25, 0.75]));
        assert!(ens
            .check_classes(10)
            .unwrap_err()
            .to_string()
            .contains("a.onnx"));
        let indices: Vec<usize> = (0..40).collect();
        let mut seen = Vec::new();
        let norm = Normalization::FASHION_MNIST;
        let logits = ens
            .cached_logits(&ds, &indices, norm, dir.path(), |m, d, n| {
                seen.push((m, d, n))
            })
            .unwrap();
        assert_eq!(seen, vec![(0, 40, 40), (1, 40, 40)]);
        let batch = [7, 3, 39];
        let p = ens.distribution_for(&logits, &batch, 4.0).unwrap();
        // By hand: each member on its own normalisation, then combine.
        let direct: Vec<Vec<f32>> = ens
            .members()
            .iter()
            .map(|(t, _)| {
                let table = t.normalization().unwrap_or(norm).table();
                let x: Vec<f32> = batch
                    .iter()
                    .flat_map(|&i| ds.image(i).iter().map(|&p| table[usize::from(p)]))
                    .collect();
                t.logits(&x, batch.len()).unwrap()
            })
            .collect();
        let want = combine(&[&direct[0], &direct[1]], &[0.25, 0.75], 3, 4.0, ens.mode()).unwrap();
        close(&p, &want);
        for row in p.chunks(3) {
            assert!((row.iter().sum::<f32>() - 1.0).abs() < 1e-5);
        }
        assert!(ens.distribution_for(&logits[..1], &batch, 1.0).is_err());
        assert!(ens.distribution_for(&logits, &[40], 1.0).is_err());
    }
}
