//! Distillation losses on a batch of student logits `[N, C]`:
//! Hinton et al.'s soft-target loss, logit matching (Buciluǎ et al.), and
//! decoupled KD (Zhao et al.), each built from candle ops so that autograd
//! gives their gradients.

use candle_core::{DType, Result, Tensor, D};
use candle_nn::ops::{log_softmax, softmax_last_dim};

/// Hinton KD: `α·T²·KL(p_T^teacher ‖ p_T^student) + (1 − α)·CE(y, p_1^student)`,
/// averaged over the batch. `teacher` is the teacher's tempered
/// distribution `[N, C]` (rows sum to 1; for an ensemble, the combined
/// one). Without labels (`labels = None`, a transfer set) the CE term is
/// dropped and the KL term keeps its weight `α`.
pub fn hinton(
    student: &Tensor,
    teacher: &Tensor,
    labels: Option<&Tensor>,
    temperature: f64,
    alpha: f64,
) -> Result<Tensor> {
    let soft = kl_tempered(student, teacher, temperature)?
        .affine(alpha * temperature * temperature, 0.0)?;
    match labels {
        Some(y) if alpha < 1.0 => soft + cross_entropy(student, y)?.affine(1.0 - alpha, 0.0)?,
        _ => Ok(soft),
    }
}

/// `KL(teacher ‖ softmax(student / T))`, summed over classes, mean over the batch.
/// Terms where the teacher gives 0 contribute 0 (the `0·log 0 = 0` convention).
pub fn kl_tempered(student: &Tensor, teacher: &Tensor, temperature: f64) -> Result<Tensor> {
    let log_q = log_softmax(&student.affine(1.0 / temperature, 0.0)?, D::Minus1)?;
    // log p only where p > 0: clamp keeps log finite, and p·log p is 0 there anyway.
    let log_p = teacher.clamp(1e-30, 1.0)?.log()?;
    let n = student.dim(0)? as f64;
    (teacher * (log_p - log_q)?)?
        .sum_all()?
        .affine(1.0 / n, 0.0)
}

/// Cross-entropy of `student` logits against class indices `labels` `[N]` (u32).
pub fn cross_entropy(student: &Tensor, labels: &Tensor) -> Result<Tensor> {
    candle_nn::loss::cross_entropy(student, labels)
}

/// Logit matching: `mean((z_s − z_t)²)` over the batch and the classes.
pub fn logit_mse(student: &Tensor, teacher_logits: &Tensor) -> Result<Tensor> {
    (student - teacher_logits)?.sqr()?.mean_all()
}

/// Decoupled KD (Zhao et al., CVPR 2022): `α·TCKD + β·NCKD`, both scaled by
/// `T²`. TCKD is the KL between the binary (target, rest) distributions of
/// teacher and student; NCKD the KL between their distributions over the
/// non-target classes. Needs the true labels (or the teacher's argmax).
pub fn decoupled(
    student: &Tensor,
    teacher_logits: &Tensor,
    labels: &Tensor,
    temperature: f64,
    alpha: f64,
    beta: f64,
) -> Result<Tensor> {
    let (n, c) = student.dims2()?;
    let dtype = student.dtype();
    let target = candle_nn::encoding::one_hot(labels.clone(), c, 1f32, 0f32)?.to_dtype(dtype)?;
    let rest = target.affine(-1.0, 1.0)?;
    let t = 1.0 / temperature;
    let (ss, st) = (student.affine(t, 0.0)?, teacher_logits.affine(t, 0.0)?);
    // Log-probabilities of (target, rest), in log space so that a confident
    // teacher gives no log(0): log p_target = s_y − lse(s), log p_rest = lse(s
    // without y) − lse(s). The target is masked out with a large negative value.
    let mask = target.affine(-1e4, 0.0)?;
    let log_binary = |s: &Tensor| -> Result<Tensor> {
        let lse = s.log_sum_exp(1)?.unsqueeze(1)?;
        let sy = (s * &target)?.sum_keepdim(1)?;
        let rest = (s + &mask)?.log_sum_exp(1)?.unsqueeze(1)?;
        Tensor::cat(&[&sy, &rest], 1)?.broadcast_sub(&lse)
    };
    let (lbs, lbt) = (log_binary(&ss)?, log_binary(&st)?);
    let tckd = (lbt.exp()? * (&lbt - lbs)?)?
        .sum_all()?
        .affine(1.0 / n as f64, 0.0)?;
    // Distributions over the non-target classes.
    let ls = log_softmax(&(&ss + &mask)?, D::Minus1)?;
    let lt = log_softmax(&(&st + &mask)?, D::Minus1)?;
    let nt = (lt.exp()? * &rest)?;
    let nckd = (&nt * (lt - ls)?)?.sum_all()?.affine(1.0 / n as f64, 0.0)?;
    let scale = temperature * temperature;
    tckd.affine(alpha * scale, 0.0)? + nckd.affine(beta * scale, 0.0)?
}

/// The tempered distribution `softmax(z / T)` of logits `[N, C]`.
pub fn tempered(logits: &Tensor, temperature: f64) -> Result<Tensor> {
    softmax_last_dim(&logits.affine(1.0 / temperature, 0.0)?)
}

/// Labels `[N]` as the u32 tensor the losses take.
pub fn label_tensor(labels: &[u32], device: &candle_core::Device) -> Result<Tensor> {
    Tensor::from_slice(labels, labels.len(), device)?.to_dtype(DType::U32)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    fn t(v: &[f64], n: usize, c: usize) -> Tensor {
        Tensor::from_slice(v, (n, c), &Device::Cpu).unwrap()
    }

    fn softmax(z: &[f64], temp: f64) -> Vec<f64> {
        let m = z.iter().cloned().fold(f64::MIN, f64::max);
        let e: Vec<f64> = z.iter().map(|v| ((v - m) / temp).exp()).collect();
        let s: f64 = e.iter().sum();
        e.iter().map(|v| v / s).collect()
    }

    const ZS: [f64; 6] = [1.0, 2.0, 0.5, -1.0, 0.0, 3.0];
    const ZT: [f64; 6] = [2.0, 1.0, 0.0, 0.0, -2.0, 4.0];

    /// The same losses written out by hand, row by row.
    fn hand_hinton(temp: f64, alpha: f64, labels: &[usize]) -> f64 {
        let mut total = 0.0;
        for r in 0..2 {
            let (zs, zt) = (&ZS[r * 3..r * 3 + 3], &ZT[r * 3..r * 3 + 3]);
            let (q, p) = (softmax(zs, temp), softmax(zt, temp));
            let kl: f64 = p.iter().zip(&q).map(|(p, q)| p * (p / q).ln()).sum();
            let ce = -softmax(zs, 1.0)[labels[r]].ln();
            total += alpha * temp * temp * kl + (1.0 - alpha) * ce;
        }
        total / 2.0
    }

    #[test]
    fn hinton_matches_hand_computed_values() -> Result<()> {
        let labels = label_tensor(&[1, 2], &Device::Cpu)?;
        for (temp, alpha) in [(1.0, 0.5), (4.0, 0.9), (2.0, 0.0), (8.0, 1.0)] {
            let teacher = tempered(&t(&ZT, 2, 3), temp)?;
            let got =
                hinton(&t(&ZS, 2, 3), &teacher, Some(&labels), temp, alpha)?.to_scalar::<f64>()?;
            let want = hand_hinton(temp, alpha, &[1, 2]);
            assert!(
                (got - want).abs() < 1e-12,
                "T={temp} α={alpha}: {got} vs {want}"
            );
        }
        // Unlabeled: only the soft term, with weight α.
        let teacher = tempered(&t(&ZT, 2, 3), 4.0)?;
        let got = hinton(&t(&ZS, 2, 3), &teacher, None, 4.0, 0.9)?.to_scalar::<f64>()?;
        let kl = kl_tempered(&t(&ZS, 2, 3), &teacher, 4.0)?.to_scalar::<f64>()?;
        assert!((got - 0.9 * 16.0 * kl).abs() < 1e-12);
        Ok(())
    }

    #[test]
    fn kl_is_zero_for_equal_distributions_and_handles_zeros() -> Result<()> {
        let z = t(&ZS, 2, 3);
        let same = kl_tempered(&z, &tempered(&z, 3.0)?, 3.0)?.to_scalar::<f64>()?;
        assert!(same.abs() < 1e-12);
        let onehot = t(&[0.0, 1.0, 0.0, 0.0, 0.0, 1.0], 2, 3);
        let got = kl_tempered(&z, &onehot, 1.0)?.to_scalar::<f64>()?;
        let want = (-softmax(&ZS[..3], 1.0)[1].ln() - softmax(&ZS[3..], 1.0)[2].ln()) / 2.0;
        assert!((got - want).abs() < 1e-12, "{got} vs {want}");
        Ok(())
    }

    #[test]
    fn logit_mse_and_decoupled_values() -> Result<()> {
        let mse = logit_mse(&t(&ZS, 2, 3), &t(&ZT, 2, 3))?.to_scalar::<f64>()?;
        let want: f64 = ZS
            .iter()
            .zip(ZT)
            .map(|(a, b)| (a - b) * (a - b))
            .sum::<f64>()
            / 6.0;
        assert!((mse - want).abs() < 1e-12);
        // DKD with α = β = 1 is KD's KL split in two parts whose sum is
        // KL + (1 − p_t^target)·(…) in general; check against a hand value
        // of its definition for one row.
        let (temp, labels) = (2.0, [0usize]);
        let (zs, zt) = (&ZS[..3], &ZT[..3]);
        let (q, p) = (softmax(zs, temp), softmax(zt, temp));
        let (bq, bp) = ([q[0], 1.0 - q[0]], [p[0], 1.0 - p[0]]);
        let tckd: f64 = bp.iter().zip(bq).map(|(p, q)| p * (p / q).ln()).sum();
        let (rq, rp) = (softmax(&zs[1..], temp), softmax(&zt[1..], temp));
        let nckd: f64 = rp.iter().zip(&rq).map(|(p, q)| p * (p / q).ln()).sum();
        let want = temp * temp * (1.0 * tckd + 8.0 * nckd);
        let y = label_tensor(&[labels[0] as u32], &Device::Cpu)?;
        let got = decoupled(&t(zs, 1, 3), &t(zt, 1, 3), &y, temp, 1.0, 8.0)?.to_scalar::<f64>()?;
        assert!((got - want).abs() < 1e-9, "{got} vs {want}");
        Ok(())
    }

    #[test]
    fn gradients_match_finite_differences() -> Result<()> {
        let labels = label_tensor(&[1, 2], &Device::Cpu)?;
        let zt = t(&ZT, 2, 3);
        let teacher = tempered(&zt, 3.0)?;
        type LossFn<'a> = Box<dyn Fn(&Tensor) -> Result<Tensor> + 'a>;
        let losses: Vec<(&str, LossFn)> = vec![
            (
                "hinton",
                Box::new(|z| hinton(z, &teacher, Some(&labels), 3.0, 0.7)),
            ),
            ("mse", Box::new(|z| logit_mse(z, &zt))),
            (
                "dkd",
                Box::new(|z| decoupled(z, &zt, &labels, 3.0, 1.0, 4.0)),
            ),
        ];
        for (name, loss) in losses {
            let z = Var::from_tensor(&t(&ZS, 2, 3))?;
            let g = loss(&z)?.backward()?;
            let analytic = g.get(&z).unwrap().flatten_all()?.to_vec1::<f64>()?;
            let eps = 1e-6;
            for i in 0..6 {
                let at = |d: f64| -> Result<f64> {
                    let mut v = ZS.to_vec();
                    v[i] += d;
                    loss(&t(&v, 2, 3))?.to_scalar::<f64>()
                };
                let num = (at(eps)? - at(-eps)?) / (2.0 * eps);
                assert!(
                    (num - analytic[i]).abs() < 1e-6 * (1.0 + num.abs()),
                    "{name} d/dz[{i}]: fd {num} vs {}",
                    analytic[i]
                );
            }
        }
        Ok(())
    }
}
