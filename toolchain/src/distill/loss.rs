//! Distillation losses, each built from candle ops so that autograd gives
//! their gradients. On a batch of student logits `[N, C]`: Hinton et al.'s
//! soft-target loss, logit matching (Buciluǎ et al.), decoupled KD (Zhao et
//! al.). On intermediate features: attention transfer (Zagoruyko &
//! Komodakis) and, for FitNets hints, [`logit_mse`]'s mean squared error on
//! any shape. On the relations between a batch's embeddings: RKD's distance
//! and angle losses (Park et al.).

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

/// Below this a squared norm or distance counts as zero: it keeps the
/// square roots and divisions below (and their gradients) finite.
const EPS: f64 = 1e-12;

/// Attention transfer (Zagoruyko & Komodakis, ICLR 2017), for one pair of
/// feature maps `[N, C, H, W]` with equal `H × W` (channels may differ):
/// each map becomes its spatial attention `Σ_c F_c² / C`, flattened and
/// L2-normalised per image, and the loss is the mean squared difference of
/// the two attentions over the batch and the positions.
pub fn attention_transfer(student: &Tensor, teacher: &Tensor) -> Result<Tensor> {
    let (ns, _, hs, ws) = student.dims4()?;
    let (nt, _, ht, wt) = teacher.dims4()?;
    if (ns, hs, ws) != (nt, ht, wt) {
        candle_core::bail!(
            "attention transfer needs maps of the same batch and size: student {ns}×{hs}×{ws}, teacher {nt}×{ht}×{wt}"
        );
    }
    let attention = |f: &Tensor| -> Result<Tensor> {
        let a = f.sqr()?.mean(1)?.flatten_from(1)?;
        // Clamped before the root: √ has no finite gradient at 0.
        let norm = a.sqr()?.sum_keepdim(1)?.clamp(EPS, f64::MAX)?.sqrt()?;
        a.broadcast_div(&norm)
    };
    (attention(student)? - attention(teacher)?)?
        .sqr()?
        .mean_all()
}

/// Smooth L1 (Huber with δ = 1): `x²/2` below 1 in magnitude, `|x| − 1/2` above.
fn smooth_l1(x: &Tensor) -> Result<Tensor> {
    let a = x.abs()?;
    let inside = a.clamp(0.0, 1.0)?;
    inside.sqr()?.affine(0.5, 0.0)? + (a - inside)?
}

/// The `[N, N]` Euclidean distances between the rows of `e` `[N, D]`, with
/// a zero diagonal whose gradient is zero (not the NaN of √0). From the
/// Gram matrix, `|a|² + |b|² − 2a·b`: memory `N²`, not the `N²·D` of the
/// differences.
fn pairwise_distances(e: &Tensor) -> Result<Tensor> {
    let n = e.dim(0)?;
    let gram = e.matmul(&e.t()?)?;
    let norms = e.sqr()?.sum_keepdim(1)?;
    let squared = norms
        .broadcast_add(&norms.t()?)?
        .sub(&gram.affine(2.0, 0.0)?)?
        .clamp(EPS, f64::MAX)?;
    let off_diagonal = Tensor::eye(n, e.dtype(), e.device())?.affine(-1.0, 1.0)?;
    squared.sqrt()? * off_diagonal
}

/// RKD's distance-wise loss (Park et al., CVPR 2019) on embeddings `[N, D]`
/// (the dimensions may differ): each set's pairwise distances divided by
/// their mean over the `N(N − 1)` pairs, then the smooth L1 of the
/// difference, averaged over the `N × N` entries.
pub fn rkd_distance(student: &Tensor, teacher: &Tensor) -> Result<Tensor> {
    let n = student.dim(0)?;
    if n < 2 || teacher.dim(0)? != n {
        candle_core::bail!("RKD needs the same batch of at least 2 embeddings on both sides");
    }
    let pairs = (n * (n - 1)) as f64;
    let relative = |e: &Tensor| -> Result<Tensor> {
        let d = pairwise_distances(e)?;
        let mean = d
            .sum_all()?
            .affine(1.0 / pairs, 0.0)?
            .clamp(EPS, f64::MAX)?;
        d.broadcast_div(&mean)
    };
    smooth_l1(&(relative(student)? - relative(teacher)?)?)?.mean_all()
}

/// RKD's angle-wise loss on embeddings `[N, D]`: for every triplet (i, j, k)
/// the cosine of the angle at j between `e_i − e_j` and `e_k − e_j` (0 where
/// a difference is zero), then the smooth L1 of the difference, averaged
/// over the `N³` triplets.
pub fn rkd_angle(student: &Tensor, teacher: &Tensor) -> Result<Tensor> {
    let n = student.dim(0)?;
    if n < 2 || teacher.dim(0)? != n {
        candle_core::bail!("RKD needs the same batch of at least 2 embeddings on both sides");
    }
    let cosines = |e: &Tensor| -> Result<Tensor> {
        // diff[j, i] = e_i − e_j, normalised: [N, N, D].
        let diff = e.unsqueeze(0)?.broadcast_sub(&e.unsqueeze(1)?)?;
        // Clamped before the root (√ has no finite gradient at 0); a zero
        // difference (i = j) stays a zero vector.
        let norm = diff.sqr()?.sum_keepdim(2)?.clamp(EPS, f64::MAX)?.sqrt()?;
        let unit = diff.broadcast_div(&norm)?;
        // [j, i, k] = <unit[j, i], unit[j, k]>.
        unit.matmul(&unit.transpose(1, 2)?)
    };
    smooth_l1(&(cosines(student)? - cosines(teacher)?)?)?.mean_all()
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

    /// Hand-written attention maps: Σ_c f² / C per position, L2-normalised.
    fn hand_attention(f: &[f64], c: usize, hw: usize) -> Vec<f64> {
        let a: Vec<f64> = (0..hw)
            .map(|p| (0..c).map(|ch| f[ch * hw + p].powi(2)).sum::<f64>() / c as f64)
            .collect();
        let norm = a.iter().map(|v| v * v).sum::<f64>().sqrt();
        a.iter().map(|v| v / norm).collect()
    }

    /// A deterministic batch of values in [-1, 1).
    fn values(n: usize, seed: u64) -> Vec<f64> {
        let mut s = seed | 1;
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                (s >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0
            })
            .collect()
    }

    fn smooth_l1_hand(x: f64) -> f64 {
        if x.abs() < 1.0 {
            0.5 * x * x
        } else {
            x.abs() - 0.5
        }
    }

    fn hand_distances(e: &[f64], n: usize, d: usize) -> Vec<f64> {
        let mut out = vec![0.0; n * n];
        for i in 0..n {
            for j in 0..n {
                if i != j {
                    out[i * n + j] = (0..d)
                        .map(|k| (e[i * d + k] - e[j * d + k]).powi(2))
                        .sum::<f64>()
                        .sqrt();
                }
            }
        }
        let mean = out.iter().sum::<f64>() / (n * (n - 1)) as f64;
        out.iter().map(|v| v / mean).collect()
    }

    fn hand_angles(e: &[f64], n: usize, d: usize) -> Vec<f64> {
        let unit = |i: usize, j: usize| -> Vec<f64> {
            let v: Vec<f64> = (0..d).map(|k| e[i * d + k] - e[j * d + k]).collect();
            let norm = v.iter().map(|x| x * x).sum::<f64>().sqrt();
            v.iter()
                .map(|x| if norm > 0.0 { x / norm } else { 0.0 })
                .collect()
        };
        let mut out = Vec::new();
        for j in 0..n {
            for i in 0..n {
                for k in 0..n {
                    let (a, b) = (unit(i, j), unit(k, j));
                    out.push(a.iter().zip(&b).map(|(x, y)| x * y).sum());
                }
            }
        }
        out
    }

    #[test]
    fn feature_and_relation_losses_match_hand_computed_values() -> Result<()> {
        let dev = Device::Cpu;
        // Attention transfer: 2 images, student 3 channels, teacher 2, 2×2 maps.
        let (fs, ft) = (values(2 * 3 * 4, 1), values(2 * 2 * 4, 2));
        let s = Tensor::from_slice(&fs, (2, 3, 2, 2), &dev)?;
        let t = Tensor::from_slice(&ft, (2, 2, 2, 2), &dev)?;
        let got = attention_transfer(&s, &t)?.to_scalar::<f64>()?;
        let mut want = 0.0;
        for img in 0..2 {
            let a = hand_attention(&fs[img * 12..][..12], 3, 4);
            let b = hand_attention(&ft[img * 8..][..8], 2, 4);
            want += a.iter().zip(&b).map(|(x, y)| (x - y).powi(2)).sum::<f64>();
        }
        want /= 8.0;
        assert!((got - want).abs() < 1e-12, "AT {got} vs {want}");
        let other = Tensor::zeros((2, 2, 3, 3), DType::F64, &dev)?;
        assert!(attention_transfer(&s, &other).is_err());

        // RKD on 4 embeddings: student 3-dimensional, teacher 5.
        let (es, et) = (values(4 * 3, 3), values(4 * 5, 4));
        let s = Tensor::from_slice(&es, (4, 3), &dev)?;
        let t = Tensor::from_slice(&et, (4, 5), &dev)?;
        let (ds, dt) = (hand_distances(&es, 4, 3), hand_distances(&et, 4, 5));
        let want: f64 = ds
            .iter()
            .zip(&dt)
            .map(|(a, b)| smooth_l1_hand(a - b))
            .sum::<f64>()
            / 16.0;
        let got = rkd_distance(&s, &t)?.to_scalar::<f64>()?;
        assert!((got - want).abs() < 1e-12, "RKD-D {got} vs {want}");
        let (as_, at) = (hand_angles(&es, 4, 3), hand_angles(&et, 4, 5));
        let want: f64 = as_
            .iter()
            .zip(&at)
            .map(|(a, b)| smooth_l1_hand(a - b))
            .sum::<f64>()
            / 64.0;
        let got = rkd_angle(&s, &t)?.to_scalar::<f64>()?;
        assert!((got - want).abs() < 1e-12, "RKD-A {got} vs {want}");
        // Invariances: scaling the teacher's embedding changes neither loss.
        let scaled = t.affine(7.0, 0.0)?;
        for (name, f) in [
            (
                "distance",
                rkd_distance as fn(&Tensor, &Tensor) -> Result<Tensor>,
            ),
            ("angle", rkd_angle),
        ] {
            let (a, b) = (
                f(&s, &t)?.to_scalar::<f64>()?,
                f(&s, &scaled)?.to_scalar::<f64>()?,
            );
            assert!((a - b).abs() < 1e-12, "{name}: {a} vs {b}");
            assert!(
                f(&s, &s)?.to_scalar::<f64>()?.abs() < 1e-12,
                "{name} of equal embeddings"
            );
        }
        // Smooth L1 on both sides of 1.
        let x = Tensor::from_slice(&[-3.0f64, -0.5, 0.0, 0.25, 2.0], 5, &dev)?;
        assert_eq!(
            smooth_l1(&x)?.to_vec1::<f64>()?,
            [2.5, 0.125, 0.0, 0.03125, 1.5]
        );
        Ok(())
    }

    #[test]
    fn feature_and_relation_gradients_match_finite_differences() -> Result<()> {
        let dev = Device::Cpu;
        type LossFn = fn(&Tensor, &Tensor) -> Result<Tensor>;
        let cases: [(&str, LossFn, &[usize], &[usize]); 3] = [
            (
                "attention",
                attention_transfer,
                &[2, 3, 2, 2],
                &[2, 2, 2, 2],
            ),
            ("rkd distance", rkd_distance, &[4, 3], &[4, 5]),
            ("rkd angle", rkd_angle, &[4, 3], &[4, 5]),
        ];
        for (name, loss, s_shape, t_shape) in cases {
            let s_len: usize = s_shape.iter().product();
            let t_len: usize = t_shape.iter().product();
            let (sv, tv) = (values(s_len, 11), values(t_len, 12));
            let teacher = Tensor::from_slice(&tv, t_shape, &dev)?;
            let s = Var::from_tensor(&Tensor::from_slice(&sv, s_shape, &dev)?)?;
            let g = loss(&s, &teacher)?.backward()?;
            let analytic = g.get(&s).unwrap().flatten_all()?.to_vec1::<f64>()?;
            let eps = 1e-6;
            for i in 0..s_len {
                let at = |d: f64| -> Result<f64> {
                    let mut v = sv.clone();
                    v[i] += d;
                    loss(&Tensor::from_slice(&v, s_shape, &dev)?, &teacher)?.to_scalar::<f64>()
                };
                let num = (at(eps)? - at(-eps)?) / (2.0 * eps);
                assert!(
                    (num - analytic[i]).abs() < 1e-6 * (1.0 + num.abs()),
                    "{name} d/ds[{i}]: fd {num} vs {}",
                    analytic[i]
                );
            }
        }
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
