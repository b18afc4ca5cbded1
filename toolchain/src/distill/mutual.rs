//! Deep mutual learning (Zhang et al., CVPR 2018): a cohort of students
//! trained together from scratch, no pretrained teacher. On every batch
//! each student's loss is Hinton's with the mean of its peers' tempered
//! distributions as the soft target (the mean KL to each peer differs
//! from the KL to their mean by a constant, so the gradients are DML's),
//! the peers' outputs held fixed. All students step on the same batches,
//! one after the other as in DML's algorithm: each learns from its peers'
//! predictions after the peers before it have stepped (a simultaneous
//! update lets two students swap places instead of meeting).

use super::loss;
use crate::data::Dataset;
use crate::train::fit::{EpochStats, FitError, Progress, Trainer};
use candle_core::Tensor;
use std::sync::Arc;

/// One epoch of every trainer of the cohort over the first trainer's
/// batches; `alpha` weighs the peers' soft term against the labels'
/// cross-entropy at `temperature`. Returns each trainer's epoch.
pub fn mutual_epoch(
    cohort: &mut [Trainer],
    (data, indices): (&Arc<Dataset>, &[usize]),
    temperature: f64,
    alpha: f64,
    mut progress: impl FnMut(Progress),
) -> Result<Vec<EpochStats>, FitError> {
    if cohort.len() < 2 {
        return Err(FitError::Config(
            "mutual learning needs at least two students".into(),
        ));
    }
    let (batches, first) = cohort[0].begin_epoch(data, indices)?;
    let epoch = first.epoch();
    let mut runs = vec![first];
    for t in &cohort[1..] {
        if t.epochs_done() != epoch {
            return Err(FitError::Config(format!(
                "the cohort's students are at epochs {epoch} and {}",
                t.epochs_done()
            )));
        }
        runs.push(t.start_epoch(batches.len()));
    }
    for (i, batch) in batches.enumerate() {
        let labels = batch
            .labels
            .as_ref()
            .ok_or_else(|| FitError::Config("mutual learning needs labels".into()))?;
        let labels = loss::label_tensor(labels, &candle_core::Device::Cpu)?;
        let mut logits = Vec::with_capacity(cohort.len());
        for (t, run) in cohort.iter_mut().zip(runs.iter_mut()) {
            t.set_step(run, i);
            logits.push(t.forward(&batch, &[], epoch)?.logits);
        }
        let mut probs = logits
            .iter()
            .map(|z| loss::tempered(&z.detach(), temperature))
            .collect::<candle_core::Result<Vec<_>>>()?;
        for (k, (t, run)) in cohort.iter_mut().zip(runs.iter_mut()).enumerate() {
            let peers: Vec<&Tensor> = (0..probs.len())
                .filter(|&j| j != k)
                .map(|j| &probs[j])
                .collect();
            let target = mean(&peers)?;
            let l = loss::hinton(&logits[k], &target, Some(&labels), temperature, alpha)?;
            t.step(run, &batch, &logits[k], &l)?;
            // The later students learn from this one as it now predicts.
            if k + 1 < probs.len() {
                let z = t.forward(&batch, &[], epoch)?.logits.detach();
                probs[k] = loss::tempered(&z, temperature)?;
            }
        }
        progress(runs[0].progress(i + 1));
    }
    Ok(cohort
        .iter_mut()
        .zip(runs)
        .map(|(t, run)| t.end_epoch(run))
        .collect())
}

/// The element-wise mean of equally shaped tensors.
fn mean(ts: &[&Tensor]) -> candle_core::Result<Tensor> {
    let mut sum = ts[0].clone();
    for t in &ts[1..] {
        sum = (sum + *t)?;
    }
    sum.affine(1.0 / ts.len() as f64, 0.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::fit::tests::{config, tiny_data, tiny_mlp};
    use crate::train::fit::{FitConfig, OptimizerKind};

    fn cohort(alpha_seed: u64) -> Vec<Trainer> {
        (0..2)
            .map(|k| {
                let cfg = FitConfig {
                    seed: alpha_seed + k,
                    ..config(OptimizerKind::Adamw)
                };
                Trainer::new(tiny_mlp(), cfg).unwrap()
            })
            .collect()
    }

    /// Each student's class probabilities on the whole set.
    fn probabilities(t: &Trainer, data: &Arc<Dataset>) -> Vec<f32> {
        let norm = crate::data::Normalization::default();
        let pixels: Vec<f32> = (0..data.len())
            .flat_map(|i| data.image(i).iter().map(|&p| norm.apply(p)))
            .collect();
        let x = Tensor::from_vec(pixels, (data.len(), 64), &candle_core::Device::Cpu).unwrap();
        let z = t.network().forward(&x).unwrap();
        loss::tempered(&z, 1.0)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap()
    }

    #[test]
    fn a_cohort_learns_together_and_agrees() {
        let data = tiny_data();
        let idx: Vec<usize> = (0..data.len()).collect();
        let mut students = cohort(5);
        for _ in 0..3 {
            let stats = mutual_epoch(&mut students, (&data, &idx), 1.0, 0.5, |_| {}).unwrap();
            assert_eq!(stats.len(), 2);
        }
        for t in &students {
            assert_eq!(t.epochs_done(), 3);
            assert!(t.evaluate(&data, &idx).unwrap().accuracy > 0.6);
        }
        // Peers' soft targets alone (α = 1, no labels' term): students
        // that start apart come to predict alike (mean total-variation
        // distance between their predictions).
        let apart = |s: &[Trainer]| {
            let (a, b) = (probabilities(&s[0], &data), probabilities(&s[1], &data));
            a.iter().zip(&b).map(|(x, y)| (x - y).abs()).sum::<f32>() / (2 * data.len()) as f32
        };
        let mut peers = cohort(11);
        let before = apart(&peers);
        for _ in 0..3 {
            mutual_epoch(&mut peers, (&data, &idx), 1.0, 1.0, |_| {}).unwrap();
        }
        let after = apart(&peers);
        assert!(after < 0.5 * before, "{before} → {after}");
        assert!(mutual_epoch(&mut peers[..1], (&data, &idx), 1.0, 0.5, |_| {}).is_err());
    }
}
