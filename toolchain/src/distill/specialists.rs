//! Specialists with a dustbin class (Hinton, Vinyals & Dean 2015, §5).
//!
//! A generalist model is trained on all classes. Each specialist handles
//! one small set of classes that the generalist confuses, plus one dustbin
//! output for every other class. This module has the math only:
//! [`confusion_matrix`] and [`confusable_clusters`] pick the specialties,
//! [`Specialty`] maps labels and collapses distributions onto a
//! specialist's outputs, [`oversampled_indices`] builds a specialist's
//! training set, and at inference [`active_specialists`] picks the
//! specialists to run and [`combine`] merges their outputs with the
//! generalist's (§5.2).

use super::loss;
use crate::data::rng::Rng;
use crate::data::Batch;
use crate::teacher::Logits;
use crate::train::fit::{Objective, StudentPass};
use candle_core::Tensor;

/// Stream tag for [`oversampled_indices`], apart from other uses of a seed.
const STREAM_SPECIALIST: u64 = 0x5350_4543;

/// Bad inputs to the specialist math.
#[derive(Debug, thiserror::Error)]
pub enum SpecialistError {
    /// A slice's length does not fit the number of classes or outputs.
    #[error("{0}")]
    Length(String),
    /// A label or class index is not one of the classes.
    #[error("{0}")]
    OutOfRange(String),
    /// A specialty that is not two or more distinct classes with a non-empty dustbin.
    #[error("{0}")]
    Specialty(String),
    /// A probability that is negative or not finite.
    #[error("{0}")]
    Probability(String),
    /// One of the specialists given to [`combine`] (by position) is invalid.
    #[error("specialist {0}: {1}")]
    Specialist(usize, #[source] Box<SpecialistError>),
}

/// The `[classes, classes]` confusion matrix: rows are true classes, columns argmax predictions.
///
/// `logits` is row-major `[labels.len(), classes]` (probabilities work too).
pub fn confusion_matrix(
    logits: &[f32],
    labels: &[u32],
    classes: usize,
) -> Result<Vec<Vec<usize>>, SpecialistError> {
    if classes == 0 || logits.len() != labels.len() * classes {
        return Err(SpecialistError::Length(format!(
            "logits have {} values, expected {} labels x {classes} classes (at least one)",
            logits.len(),
            labels.len()
        )));
    }
    let mut confusion = vec![vec![0usize; classes]; classes];
    for (i, (row, &label)) in logits.chunks_exact(classes).zip(labels).enumerate() {
        let Some(counts) = confusion.get_mut(label as usize) else {
            return Err(SpecialistError::OutOfRange(format!(
                "label {label} of example {i} is out of range for {classes} classes"
            )));
        };
        counts[argmax(row)] += 1;
    }
    Ok(confusion)
}

/// The first index of the largest value (NaNs never win).
fn argmax(row: &[f32]) -> usize {
    let better = |best: usize, i: usize| row[i] > row[best] || row[best].is_nan();
    (0..row.len()).fold(0, |best, i| if better(best, i) { i } else { best })
}

/// Clusters of classes the model confuses with each other, most confused first.
///
/// A greedy agglomerative stand-in for Hinton et al.'s clustering of the
/// covariance of the generalist's predictions. With `s_ij = c_ij + c_ji`
/// (`i ≠ j`), it starts from singletons and repeatedly merges the two
/// clusters with the largest between-cluster confusion `Σ s_ij` whose merged
/// size is at most `max_size` and whose between-cluster confusion is
/// positive (ties: lowest class indices first). It returns the clusters of
/// two or more classes, sorted by internal confusion (descending; ties by
/// lowest class), at most `count` of them, each sorted ascending. The
/// matrix's size is its number of rows; missing entries count as 0.
pub fn confusable_clusters(
    confusion: &[Vec<usize>],
    max_size: usize,
    count: usize,
) -> Vec<Vec<usize>> {
    let n = confusion.len();
    let c = |i: usize, j: usize| confusion[i].get(j).map_or(0, |&v| v as u64);
    // `between[a][b]`: confusion between the clusters whose lowest classes
    // are `a` and `b` (a merge keeps the lower index).
    let s = |i: usize, j: usize| if i == j { 0 } else { c(i, j) + c(j, i) };
    let mut between: Vec<Vec<u64>> = (0..n).map(|i| (0..n).map(|j| s(i, j)).collect()).collect();
    let mut members: Vec<Vec<usize>> = (0..n).map(|i| vec![i]).collect();
    let mut internal = vec![0u64; n];
    loop {
        let mut best: Option<(usize, usize)> = None;
        for a in (0..n).filter(|&a| !members[a].is_empty()) {
            for b in (a + 1..n).filter(|&b| !members[b].is_empty()) {
                let fits = members[a].len() + members[b].len() <= max_size;
                if fits && between[a][b] > best.map_or(0, |(x, y)| between[x][y]) {
                    best = Some((a, b));
                }
            }
        }
        let Some((a, b)) = best else { break };
        internal[a] += internal[b] + between[a][b];
        let moved = std::mem::take(&mut members[b]);
        members[a].extend(moved);
        members[a].sort_unstable();
        let row_b = std::mem::replace(&mut between[b], vec![0; n]);
        for (k, add) in row_b.into_iter().enumerate() {
            between[a][k] += add;
            between[k][a] += add;
        }
        between[a][a] = 0;
    }
    let mut clusters: Vec<(u64, Vec<usize>)> = internal.into_iter().zip(members).collect();
    clusters.retain(|(_, m)| m.len() >= 2);
    clusters.sort_by(|x, y| y.0.cmp(&x.0).then_with(|| x.1.cmp(&y.1)));
    clusters.into_iter().take(count).map(|(_, m)| m).collect()
}

/// A specialist's classes among `total` classes; its outputs are these classes, then a dustbin.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Specialty {
    /// The special classes, in the order of the specialist's outputs.
    pub classes: Vec<usize>,
    /// The number of classes of the full problem.
    pub total: usize,
}

impl Specialty {
    /// A checked specialty: at least two distinct classes below `total`, and not all of them.
    pub fn new(classes: Vec<usize>, total: usize) -> Result<Self, SpecialistError> {
        let specialty = Specialty { classes, total };
        specialty.check()?;
        Ok(specialty)
    }

    /// The checks of [`Specialty::new`], repeated where used since the fields are public.
    fn check(&self) -> Result<(), SpecialistError> {
        let (len, total) = (self.classes.len(), self.total);
        let bad = |why: String| Err(SpecialistError::Specialty(why));
        if len < 2 {
            return bad(format!("a specialty needs at least 2 classes, got {len}"));
        }
        let mut seen = vec![false; total];
        for &class in &self.classes {
            match seen.get_mut(class) {
                None => return bad(format!("class {class} is out of range for {total} classes")),
                Some(true) => return bad(format!("class {class} appears twice in the specialty")),
                Some(s) => *s = true,
            }
        }
        if len == total {
            return bad(format!(
                "a specialty over all {total} classes leaves an empty dustbin"
            ));
        }
        Ok(())
    }

    /// The number of outputs: the special classes plus the dustbin (the last).
    pub fn outputs(&self) -> usize {
        self.classes.len() + 1
    }

    /// Whether `class` is one of the special classes.
    pub fn contains(&self, class: usize) -> bool {
        self.classes.contains(&class)
    }

    /// The specialist's label for a full label: its position in `classes`, else the dustbin.
    pub fn label(&self, class: u32) -> u32 {
        let position = self.classes.iter().position(|&c| c == class as usize);
        position.unwrap_or(self.classes.len()) as u32
    }

    /// The specialist output of every class (`classes.len()` for the dustbin); needs [`Specialty::check`].
    fn groups(&self) -> Vec<usize> {
        let mut groups = vec![self.classes.len(); self.total];
        for (k, &class) in self.classes.iter().enumerate() {
            groups[class] = k;
        }
        groups
    }

    /// One `[total]` distribution collapsed to `[outputs]`: the special classes, then the rest summed.
    pub fn collapse(&self, probs: &[f32]) -> Result<Vec<f32>, SpecialistError> {
        self.collapse_rows(probs, self.total)
    }

    /// [`Specialty::collapse`] over row-major `[n, total]` rows, giving `[n, outputs]`.
    pub fn collapse_rows(&self, probs: &[f32], total: usize) -> Result<Vec<f32>, SpecialistError> {
        self.check()?;
        if total != self.total || !probs.len().is_multiple_of(total) {
            return Err(SpecialistError::Length(format!(
                "{} probabilities in rows of {total} do not fit a specialty over {} classes",
                probs.len(),
                self.total
            )));
        }
        let groups = self.groups();
        let mut out = Vec::with_capacity(probs.len() / total * self.outputs());
        for row in probs.chunks_exact(total) {
            let mut collapsed = vec![0f64; self.outputs()];
            for (&p, &g) in row.iter().zip(&groups) {
                collapsed[g] += f64::from(p);
            }
            out.extend(collapsed.into_iter().map(|p| p as f32));
        }
        Ok(out)
    }
}

/// The objective of [`combine`] as a function of the logits `z`, in f64.
struct Combination {
    /// The generalist's distribution `p_g`.
    generalist: Vec<f64>,
    /// Per specialist: the output of each class, and its distribution `p_m` over outputs.
    specialists: Vec<(Vec<usize>, Vec<f64>)>,
}

/// `KL(p ‖ q) = Σ p (ln p − ln q)` from `ln q`, skipping zero targets.
fn kl(p: &[f64], log_q: &[f64]) -> f64 {
    let term = |(&p, &lq): (&f64, &f64)| if p > 0.0 { p * (p.ln() - lq) } else { 0.0 };
    p.iter().zip(log_q).map(term).sum()
}

/// `ln softmax(z)`, stably.
fn log_softmax(z: &[f64]) -> Vec<f64> {
    let m = z.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let lse = m + z.iter().map(|&v| (v - m).exp()).sum::<f64>().ln();
    z.iter().map(|&v| v - lse).collect()
}

/// `ln r_k = ln Σ_{i: group i = k} q_i` for each of `count` groups, stably from `ln q`.
fn group_log_sums(log_q: &[f64], groups: &[usize], count: usize) -> Vec<f64> {
    let mut max = vec![f64::NEG_INFINITY; count];
    for (&lq, &g) in log_q.iter().zip(groups) {
        max[g] = max[g].max(lq);
    }
    let mut sum = vec![0f64; count];
    for (&lq, &g) in log_q.iter().zip(groups) {
        sum[g] += (lq - max[g]).exp();
    }
    max.iter().zip(&sum).map(|(&m, &s)| m + s.ln()).collect()
}

impl Combination {
    /// `F(z) = KL(p_g ‖ q) + Σ_m KL(p_m ‖ collapse_m(q))` with `q = softmax(z)`.
    fn objective(&self, z: &[f64]) -> f64 {
        let log_q = log_softmax(z);
        let term =
            |(groups, p): &(Vec<usize>, Vec<f64>)| kl(p, &group_log_sums(&log_q, groups, p.len()));
        kl(&self.generalist, &log_q) + self.specialists.iter().map(term).sum::<f64>()
    }

    /// `∂F/∂z` (the formula is in [`combine`]'s docs).
    fn gradient(&self, z: &[f64]) -> Vec<f64> {
        let log_q = log_softmax(z);
        let q: Vec<f64> = log_q.iter().map(|&l| l.exp()).collect();
        let mass: f64 = self.generalist.iter().sum();
        let pg = &self.generalist;
        let mut g: Vec<f64> = q.iter().zip(pg).map(|(q, p)| mass * q - p).collect();
        for (groups, p) in &self.specialists {
            let log_r = group_log_sums(&log_q, groups, p.len());
            let mass: f64 = p.iter().sum();
            for (i, &k) in groups.iter().enumerate() {
                // q_i p_k / r_k, computed as p_k exp(ln q_i − ln r_k).
                g[i] += mass * q[i] - p[k] * (log_q[i] - log_r[k]).exp();
            }
        }
        g
    }
}

/// A probability row as f64, checked: `expected` entries, each finite and non-negative.
fn probabilities(row: &[f32], expected: usize, what: &str) -> Result<Vec<f64>, SpecialistError> {
    if row.len() != expected {
        let why = format!("{what} have {} values, expected {expected}", row.len());
        return Err(SpecialistError::Length(why));
    }
    let check = |(i, &p): (usize, &f32)| match p.is_finite() && p >= 0.0 {
        true => Ok(f64::from(p)),
        false => Err(SpecialistError::Probability(format!(
            "{what}: probability {i} is {p}"
        ))),
    };
    row.iter().enumerate().map(check).collect()
}

/// Hinton et al. §5.2: the full distribution `q` that best agrees with the generalist and the specialists, for one image.
///
/// `generalist` is `p_g` over `[total]` classes; each specialist gives its
/// probabilities `p_m` over `[its classes, dustbin]`. It minimises
/// `F(z) = KL(p_g ‖ q) + Σ_m KL(p_m ‖ collapse_m(q))`, `q = softmax(z)`, by
/// gradient descent with a backtracking (Armijo) step, from `z = ln p_g`
/// (clamped at `ln 1e-12`), for at most `iterations` steps (~200 suffice).
/// With `k_m(i)` the output of class `i` in specialist `m`,
/// `r_mk = Σ_{i: k_m(i) = k} q_i` and `|p| = Σ p` (1 for distributions),
///
/// `∂F/∂z_i = |p_g| q_i − p_g,i + Σ_m q_i (|p_m| − p_m,k_m(i) / r_m,k_m(i))`.
///
/// `F` need not be convex in `z`, so `q` is a stationary point found from
/// the generalist's answer. With no specialists `q = p_g` (normalised).
pub fn combine(
    generalist: &[f32],
    specialists: &[(&Specialty, &[f32])],
    iterations: usize,
) -> Result<Vec<f32>, SpecialistError> {
    let total = generalist.len().max(1);
    let prepare = |(m, &(specialty, row)): (usize, &(&Specialty, &[f32]))| {
        let wrap = |e| SpecialistError::Specialist(m, Box::new(e));
        specialty.check().map_err(wrap)?;
        if specialty.total != total {
            let why = format!(
                "it covers {} classes, the generalist {total}",
                specialty.total
            );
            return Err(wrap(SpecialistError::Length(why)));
        }
        let p = probabilities(row, specialty.outputs(), "its probabilities").map_err(wrap)?;
        Ok((specialty.groups(), p))
    };
    let generalist = probabilities(generalist, total, "the generalist's probabilities")?;
    let specialists = specialists.iter().enumerate().map(prepare);
    let problem = Combination {
        generalist,
        specialists: specialists.collect::<Result<_, _>>()?,
    };
    let mut z: Vec<f64> = problem
        .generalist
        .iter()
        .map(|p| p.max(1e-12).ln())
        .collect();
    let (mut f, mut step) = (problem.objective(&z), 1.0f64);
    'descent: for _ in 0..iterations {
        let g = problem.gradient(&z);
        let gg: f64 = g.iter().map(|v| v * v).sum();
        if gg < 1e-24 {
            break;
        }
        loop {
            let trial: Vec<f64> = z.iter().zip(&g).map(|(z, g)| z - step * g).collect();
            let ft = problem.objective(&trial);
            if ft <= f - 1e-4 * step * gg {
                (z, f, step) = (trial, ft, (step * 2.0).min(64.0));
                break;
            }
            step *= 0.5;
            if step < 1e-12 {
                break 'descent;
            }
        }
    }
    let q = log_softmax(&z).into_iter().map(|l| l.exp() as f32);
    Ok(q.collect())
}

/// Indices of the specialties that include one of the generalist's `top_k` most probable classes.
pub fn active_specialists(
    generalist: &[f32],
    specialties: &[Specialty],
    top_k: usize,
) -> Vec<usize> {
    let mut top: Vec<usize> = (0..generalist.len()).collect();
    top.sort_by(|&a, &b| generalist[b].total_cmp(&generalist[a]).then(a.cmp(&b)));
    top.truncate(top_k);
    let active = |m: &usize| top.iter().any(|&c| specialties[*m].contains(c));
    (0..specialties.len()).filter(active).collect()
}

/// A specialist's training examples, sorted: every example of its classes, and as many others at random.
///
/// Hinton et al.: half of a specialist's training examples come from its
/// special subset and the rest are sampled from the remainder (all of the
/// remainder if it is smaller). The sample is fixed by `seed`.
pub fn oversampled_indices(labels: &[u32], specialty: &Specialty, seed: u64) -> Vec<usize> {
    let (mut special, mut others): (Vec<usize>, Vec<usize>) =
        (0..labels.len()).partition(|&i| specialty.contains(labels[i] as usize));
    Rng::derive(seed, &[STREAM_SPECIALIST]).shuffle(&mut others);
    others.truncate(special.len());
    special.extend(others);
    special.sort_unstable();
    special
}

/// How many specialists, over how many classes each, and how many of the
/// generalist's top classes wake them (a recipe's `[specialists]` table).
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SpecialistConfig {
    /// At most this many specialists (the most confused clusters).
    pub count: usize,
    /// At most this many classes per specialist.
    pub max_size: usize,
    /// A specialist runs when one of its classes is among the generalist's
    /// `top_k` most probable.
    pub top_k: usize,
}

impl Default for SpecialistConfig {
    fn default() -> Self {
        Self {
            count: 2,
            max_size: 4,
            top_k: 1,
        }
    }
}

/// Specialist training: Hinton KD against the teacher's tempered
/// distribution collapsed onto the specialty (its classes, then the sum of
/// the rest as the dustbin). The batches carry the specialist's labels
/// ([`Specialty::label`]), so the trainer's accuracy is the specialist's.
pub struct SpecialistObjective<'a> {
    specialty: &'a Specialty,
    /// The teacher's logits over the transfer set, by dataset index.
    teacher: &'a Logits,
    temperature: f64,
    alpha: f64,
}

impl<'a> SpecialistObjective<'a> {
    /// Distills `teacher`'s logits, collapsed onto `specialty`, at `temperature`.
    pub fn new(
        specialty: &'a Specialty,
        teacher: &'a Logits,
        temperature: f64,
        alpha: f64,
    ) -> Self {
        Self {
            specialty,
            teacher,
            temperature,
            alpha,
        }
    }
}

impl Objective for SpecialistObjective<'_> {
    fn loss(&self, pass: &StudentPass, batch: &Batch) -> candle_core::Result<Tensor> {
        let msg = |e: &dyn std::fmt::Display| candle_core::Error::Msg(e.to_string());
        let total = self.specialty.total;
        let z = self.teacher.gather(&batch.indices).map_err(|e| msg(&e))?;
        let device = pass.logits.device();
        let p = loss::tempered(
            &Tensor::from_vec(z, (batch.len(), total), device)?,
            self.temperature,
        )?;
        let p = p.flatten_all()?.to_vec1::<f32>()?;
        let collapsed = self
            .specialty
            .collapse_rows(&p, total)
            .map_err(|e| msg(&e))?;
        let target = Tensor::from_vec(collapsed, (batch.len(), self.specialty.outputs()), device)?;
        let labels = batch
            .labels
            .as_ref()
            .map(|l| loss::label_tensor(l, device))
            .transpose()?;
        loss::hinton(
            &pass.logits,
            &target,
            labels.as_ref(),
            self.temperature,
            self.alpha,
        )
    }
}

/// Accuracy of the generalist alone and combined with its specialists.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct SystemScore {
    /// The generalist's top-1 accuracy.
    pub generalist: f64,
    /// The combination's top-1 accuracy.
    pub combined: f64,
    /// The generalist's accuracy on images of the specialists' classes.
    pub generalist_confused: f64,
    /// The combination's accuracy on those images.
    pub combined_confused: f64,
    /// Images whose true class is one of a specialist's.
    pub confused_images: usize,
    /// Mean number of specialists run per image.
    pub active_per_image: f64,
}

/// Scores the generalist's logits `[n, total]` and, per image, its
/// combination ([`combine`]) with the specialists active for its `top_k`
/// classes; each specialist's logits are `[n, outputs]` for the same images.
pub fn score_system(
    generalist: &[f32],
    specialists: &[(Specialty, Vec<f32>)],
    labels: &[u32],
    top_k: usize,
) -> Result<SystemScore, SpecialistError> {
    let n = labels.len();
    let total = generalist.len().checked_div(n).unwrap_or(0);
    if total == 0 || generalist.len() != n * total {
        return Err(SpecialistError::Length(format!(
            "{} generalist logits for {n} labels",
            generalist.len()
        )));
    }
    for (m, (s, z)) in specialists.iter().enumerate() {
        if z.len() != n * s.outputs() {
            return Err(SpecialistError::Specialist(
                m,
                Box::new(SpecialistError::Length(format!(
                    "{} logits for {n} images of {} outputs",
                    z.len(),
                    s.outputs()
                ))),
            ));
        }
    }
    let specialties: Vec<Specialty> = specialists.iter().map(|(s, _)| s.clone()).collect();
    let (mut hits, mut hits_g, mut confused, mut hits_c, mut hits_gc, mut active) =
        (0usize, 0usize, 0usize, 0usize, 0usize, 0usize);
    for (i, &y) in labels.iter().enumerate() {
        let p_g = softmax(&generalist[i * total..(i + 1) * total]);
        let chosen = active_specialists(&p_g, &specialties, top_k);
        active += chosen.len();
        let rows: Vec<Vec<f32>> = chosen
            .iter()
            .map(|&m| {
                let o = specialties[m].outputs();
                softmax(&specialists[m].1[i * o..(i + 1) * o])
            })
            .collect();
        let pairs: Vec<(&Specialty, &[f32])> = chosen
            .iter()
            .zip(&rows)
            .map(|(&m, r)| (&specialties[m], r.as_slice()))
            .collect();
        let q = combine(&p_g, &pairs, 100)?;
        let (right, right_g) = (argmax(&q) == y as usize, argmax(&p_g) == y as usize);
        hits += right as usize;
        hits_g += right_g as usize;
        if specialties.iter().any(|s| s.contains(y as usize)) {
            confused += 1;
            hits_c += right as usize;
            hits_gc += right_g as usize;
        }
    }
    let frac = |a: usize, b: usize| a as f64 / b.max(1) as f64;
    Ok(SystemScore {
        generalist: frac(hits_g, n),
        combined: frac(hits, n),
        generalist_confused: frac(hits_gc, confused),
        combined_confused: frac(hits_c, confused),
        confused_images: confused,
        active_per_image: frac(active, n),
    })
}

/// `softmax(z)` of one row, in f64 internally.
fn softmax(z: &[f32]) -> Vec<f32> {
    let z: Vec<f64> = z.iter().map(|&v| f64::from(v)).collect();
    log_softmax(&z).iter().map(|l| l.exp() as f32).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_specialist_learns_its_classes_and_the_dustbin_from_a_known_teacher() {
        use crate::data::Dataset;
        use crate::train::fit::tests::{config, tiny_data, tiny_mlp};
        use crate::train::fit::{OptimizerKind, Trainer};
        use crate::train::model::Layer;
        let data = tiny_data();
        let n = data.len();
        // A teacher that knows the answer: logit 4 on the true class.
        let mut z = vec![0f32; n * 3];
        for (i, &y) in data.labels.iter().enumerate() {
            z[i * 3 + y as usize] = 4.0;
        }
        let teacher = Logits::new(z, 3, (0..n).collect(), false).unwrap();
        let specialty = Specialty::new(vec![1, 0], 3).unwrap();
        let labels: Vec<u8> = data
            .labels
            .iter()
            .map(|&y| specialty.label(y as u32) as u8)
            .collect();
        let names = ["b", "a", "dustbin"].map(String::from).to_vec();
        let special = std::sync::Arc::new(
            Dataset::new(data.images.clone(), labels, data.rows, data.cols, names).unwrap(),
        );
        let mut spec = tiny_mlp();
        *spec.layers.last_mut().unwrap() = Layer::Dense {
            units: specialty.outputs(),
        };
        // No shifts: on these 8×8 images the class is the brightness,
        // which a shift's black border changes.
        let cfg = crate::train::fit::FitConfig {
            epochs: 8,
            augment: Default::default(),
            ..config(OptimizerKind::Adamw)
        };
        let mut t = Trainer::new(spec, cfg).unwrap();
        let all: Vec<u32> = data.labels.iter().map(|&y| y as u32).collect();
        let picked = oversampled_indices(&all, &specialty, 3);
        let objective = SpecialistObjective::new(&specialty, &teacher, 2.0, 0.5);
        for _ in 0..8 {
            t.train_epoch(&special, &picked, &objective, |_| {})
                .unwrap();
        }
        let idx: Vec<usize> = (0..n).collect();
        let eval = t.evaluate(&special, &idx).unwrap();
        assert!(eval.accuracy > 0.8, "accuracy {}", eval.accuracy);
    }

    /// Asserts that `r` failed with a message containing `needle`.
    fn fails<T: std::fmt::Debug>(r: Result<T, SpecialistError>, needle: &str) {
        let message = r.expect_err("expected an error").to_string();
        assert!(message.contains(needle), "{message:?} lacks {needle:?}");
    }

    fn sp(classes: &[usize], total: usize) -> Specialty {
        Specialty::new(classes.to_vec(), total).unwrap()
    }

    #[test]
    fn confusion_matrix_counts_argmax_and_rejects_bad_input() {
        let logits = [2.0, 1.0, 0.0, 0.0, 3.0, 1.0, 0.1, 0.2, 0.0, 0.0, 0.0, 5.0];
        let m = confusion_matrix(&logits, &[0, 1, 0, 1], 3).unwrap();
        assert_eq!(m, [[1, 1, 0], [0, 1, 1], [0, 0, 0]]);
        let (short, bad) = (&[0, 1, 0], &[0, 1, 3, 1]);
        fails(confusion_matrix(&logits, short, 3), "12 values, expected 3");
        fails(confusion_matrix(&logits, bad, 3), "label 3 of example 2");
        fails(confusion_matrix(&[], &[], 0), "at least one");
    }

    #[test]
    fn clusters_group_confused_classes_within_limits() {
        // {0, 2, 4} confused with each other, {1, 5} too, a little 4 → 1, 3 clean.
        let mut c = vec![vec![0; 6]; 6];
        (0..6).for_each(|i| c[i][i] = 50);
        let (rows, cols) = ([0, 2, 0, 4, 2, 1, 5, 4], [2, 0, 4, 2, 4, 5, 1, 1]);
        let counts = [5, 4, 3, 6, 2, 4, 3, 1];
        (0..8).for_each(|k| c[rows[k]][cols[k]] = counts[k]);
        assert_eq!(confusable_clusters(&c, 3, 10), [vec![0, 2, 4], vec![1, 5]]);
        assert_eq!(confusable_clusters(&c, 2, 10), [[0, 2], [1, 5]]);
        assert_eq!(confusable_clusters(&c, 3, 1), [[0, 2, 4]]);
        assert!(confusable_clusters(&c, 1, 10).is_empty());
        let diagonal = |i: usize| (0..4).map(|j| usize::from(i == j)).collect();
        assert!(confusable_clusters(&(0..4).map(diagonal).collect::<Vec<_>>(), 4, 9).is_empty());
        // Equal confusion: the lowest indices merge and come first.
        let mut tie = vec![vec![0; 4]; 4];
        (tie[2][3], tie[0][1]) = (2, 2);
        assert_eq!(confusable_clusters(&tie, 2, 10), [[0, 1], [2, 3]]);
    }

    #[test]
    fn specialty_maps_labels_and_collapses() {
        let s = sp(&[3, 1], 5);
        assert!(s.outputs() == 3 && s.contains(3) && !s.contains(0));
        let labels: Vec<u32> = (0..5).map(|c| s.label(c)).collect();
        assert_eq!(labels, [2, 1, 2, 0, 2]);
        let p = s.collapse(&[0.1, 0.2, 0.3, 0.25, 0.15]).unwrap();
        let near = |(p, e): (&f32, f32)| (p - e).abs() < 1e-6;
        assert!(p.iter().zip([0.25, 0.2, 0.55]).all(near), "{p:?}");
        assert!((p.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        assert_eq!(s.collapse_rows(&[0.2; 10], 5).unwrap().len(), 6);
        fails(s.collapse_rows(&[0.2; 9], 5), "9 probabilities in rows");
        fails(s.collapse(&[0.25; 4]), "4 probabilities");
        fails(Specialty::new(vec![1], 5), "at least 2 classes, got 1");
        fails(Specialty::new(vec![1, 1], 5), "class 1 appears twice");
        fails(Specialty::new(vec![1, 5], 5), "class 5 is out of range");
        fails(Specialty::new(vec![0, 2, 1], 3), "empty dustbin");
    }

    fn softmax(z: &[f64]) -> Vec<f64> {
        log_softmax(z).iter().map(|l| l.exp()).collect()
    }

    fn random(n: usize, seed: u64) -> Vec<f64> {
        let mut rng = Rng::derive(seed, &[1]);
        let mut uniform = || f64::from(rng.unit_f32()) * 4.0 - 2.0;
        (0..n).map(|_| uniform()).collect()
    }

    fn ln(p: &[f32]) -> Vec<f64> {
        p.iter().map(|&p| f64::from(p).ln()).collect()
    }

    #[test]
    fn combine_without_specialists_returns_generalist() {
        let pg = [0.5, 0.3, 0.15, 0.05];
        let q = combine(&pg, &[], 200).unwrap();
        let near = |(p, q): (&f32, &f32)| (p - q).abs() < 1e-5;
        assert!(pg.iter().zip(&q).all(near), "{q:?}");
    }

    #[test]
    fn combine_follows_a_confident_specialist_to_a_stationary_point() {
        let (pg, s) = ([0.4, 0.35, 0.15, 0.1], sp(&[0, 1], 4));
        let ps: &[f32] = &[0.05, 0.94, 0.01];
        let q = combine(&pg, &[(&s, ps)], 200).unwrap();
        assert_eq!(argmax(&q), 1, "{q:?}");
        assert!((q.iter().sum::<f32>() - 1.0).abs() < 1e-5);
        let specialists = vec![(s.groups(), softmax(&ln(ps)))];
        let problem = Combination {
            generalist: softmax(&ln(&pg)),
            specialists,
        };
        assert!(problem.objective(&ln(&q)) < problem.objective(&ln(&pg)) - 0.1);
        let g = problem.gradient(&ln(&q));
        let norm = g.iter().map(|g| g * g).sum::<f64>().sqrt();
        assert!(norm < 1e-4, "gradient norm {norm}");
    }

    #[test]
    fn combine_gradient_matches_finite_differences() {
        let (a, b) = (sp(&[4, 1], 6), sp(&[1, 2, 5], 6));
        let specialists = vec![
            (a.groups(), softmax(&random(3, 2))),
            (b.groups(), softmax(&random(4, 3))),
        ];
        let problem = Combination {
            generalist: softmax(&random(6, 1)),
            specialists,
        };
        let (z, h) = (random(6, 4), 1e-5);
        let g = problem.gradient(&z);
        for i in 0..6 {
            let (mut up, mut down) = (z.clone(), z.clone());
            (up[i], down[i]) = (z[i] + h, z[i] - h);
            let fd = (problem.objective(&up) - problem.objective(&down)) / (2.0 * h);
            let tolerance = 1e-4 * g[i].abs().max(1e-3);
            assert!((fd - g[i]).abs() <= tolerance, "{i}: {fd} vs {}", g[i]);
        }
    }

    #[test]
    fn combine_rejects_bad_specialists() {
        let (s, pg, ps) = (sp(&[0, 1], 4), [0.25f32; 4], [0.2f32, 0.3, 0.5]);
        let r = combine(&pg, &[(&s, &[0.5, 0.5])], 9);
        fails(r, "specialist 0: its probabilities have 2");
        let r = combine(&pg, &[(&s, &[0.5, 0.5, f32::NAN])], 9);
        fails(r, "probability 2 is NaN");
        let r = combine(&pg[..3], &[(&s, &ps)], 9);
        fails(r, "covers 4 classes, the generalist 3");
        let bad = Specialty {
            classes: vec![0, 7],
            total: 4,
        };
        let r = combine(&pg, &[(&s, &ps), (&bad, &ps)], 9);
        fails(r, "specialist 1: class 7");
        fails(combine(&[], &[], 9), "the generalist's probabilities");
    }

    #[test]
    fn active_specialists_follow_the_top_classes() {
        let specs = [sp(&[0, 1], 5), sp(&[2, 3], 5)];
        let pg = [0.05, 0.1, 0.5, 0.05, 0.3];
        assert_eq!(active_specialists(&pg, &specs, 1), [1]);
        assert_eq!(active_specialists(&pg, &specs, 2), [1]);
        assert_eq!(active_specialists(&pg, &specs, 3), [0, 1]);
        assert!(active_specialists(&pg, &specs, 0).is_empty());
    }

    #[test]
    fn oversampling_takes_all_special_and_as_many_others() {
        let labels: Vec<u32> = (0..100).map(|i| i % 10).collect();
        let s = sp(&[2, 7], 10);
        let picked = oversampled_indices(&labels, &s, 42);
        assert_eq!(picked, oversampled_indices(&labels, &s, 42));
        assert_ne!(picked, oversampled_indices(&labels, &s, 43));
        assert_eq!(picked.len(), 40);
        assert!(picked.windows(2).all(|w| w[0] < w[1]));
        let special: Vec<usize> = (2..100).step_by(5).collect();
        assert_eq!(special.len(), 20);
        assert!(special.iter().all(|i| picked.contains(i)));
        // Fewer others than special examples: all of them.
        let few = oversampled_indices(&[2, 7, 2, 0, 7], &s, 1);
        assert_eq!(few, [0, 1, 2, 3, 4]);
    }
}
