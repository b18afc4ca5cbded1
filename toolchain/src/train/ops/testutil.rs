//! Test and benchmark harness shared by the conv ops' tests: reference
//! comparison against candle, f64 finite differences, and timing.

use candle_core::{CpuStorage, CustomOp1, DType, Device, Layout, Result, Shape, Tensor, Var};
use std::time::Instant;

/// A convolution under test: `(x, w) → y`.
pub type Conv<'a> = &'a dyn Fn(&Tensor, &Tensor) -> Result<Tensor>;

/// Deterministic pseudo-random tensor with values in [-1, 1).
pub fn rand(dims: &[usize], seed: u64, dtype: DType) -> Result<Tensor> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let n: usize = dims.iter().product();
    let v: Vec<f64> = (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 11) as f64 / (1u64 << 52) as f64 - 1.0
        })
        .collect();
    Tensor::from_vec(v, dims, &Device::Cpu)?.to_dtype(dtype)
}

/// The values of `t` as f64, flattened.
pub fn values(t: &Tensor) -> Result<Vec<f64>> {
    t.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()
}

/// `max|a − b| / max|b|`, after checking the shapes agree.
pub fn rel_err(a: &Tensor, b: &Tensor) -> Result<f64> {
    assert_eq!(a.dims(), b.dims(), "shape mismatch");
    let (a, b) = (values(a)?, values(b)?);
    let scale = b.iter().fold(0f64, |m, v| m.max(v.abs())).max(1e-30);
    Ok(a.iter()
        .zip(&b)
        .fold(0f64, |m, (x, y)| m.max((x - y).abs()))
        / scale)
}

/// Asserts that `ours` matches `reference` in f32: output, and the gradients
/// of `sum(y · r)` for a random `r` with respect to both inputs, within `tol`.
pub fn check_vs_reference(
    ours: Conv,
    reference: Conv,
    xd: &[usize],
    wd: &[usize],
    seed: u64,
    tol: f64,
) -> Result<()> {
    let x = Var::from_tensor(&rand(xd, seed, DType::F32)?)?;
    let w = Var::from_tensor(&rand(wd, seed + 1, DType::F32)?)?;
    let (yo, yr) = (ours(&x, &w)?, reference(&x, &w)?);
    let e = rel_err(&yo, &yr)?;
    assert!(e < tol, "forward x{xd:?} w{wd:?}: rel err {e:e}");
    let r = rand(yr.dims(), seed + 2, DType::F32)?;
    let go = (yo * &r)?.sum_all()?.backward()?;
    let gr = (yr * &r)?.sum_all()?.backward()?;
    for (name, v) in [("x", &x), ("w", &w)] {
        let (a, b) = (
            go.get(v).expect("our grad"),
            gr.get(v).expect("candle grad"),
        );
        let e = rel_err(a, b)?;
        assert!(e < tol, "grad {name} x{xd:?} w{wd:?}: rel err {e:e}");
    }
    Ok(())
}

/// Asserts that the f64 gradients of `op` equal central finite differences of
/// `sum(op(x, w) · r)` for every element of `x` and `w`.
pub fn check_finite_diff(op: Conv, xd: &[usize], wd: &[usize], seed: u64) -> Result<()> {
    let x = Var::from_tensor(&rand(xd, seed, DType::F64)?)?;
    let w = Var::from_tensor(&rand(wd, seed + 1, DType::F64)?)?;
    let r = rand(op(&x, &w)?.dims(), seed + 2, DType::F64)?;
    let loss = |x: &Tensor, w: &Tensor| (op(x, w)? * &r)?.sum_all()?.to_scalar::<f64>();
    let grads = (op(&x, &w)? * &r)?.sum_all()?.backward()?;
    let eps = 1e-3;
    for (which, v) in [(0, &x), (1, &w)] {
        let analytic = values(grads.get(v).expect("gradient"))?;
        let base = values(v)?;
        for i in 0..base.len() {
            let shifted = |d: f64| {
                let mut b = base.clone();
                b[i] += d;
                Tensor::from_vec(b, v.dims(), &Device::Cpu)
            };
            let (p, m) = if which == 0 {
                (loss(&shifted(eps)?, &w)?, loss(&shifted(-eps)?, &w)?)
            } else {
                (loss(&x, &shifted(eps)?)?, loss(&x, &shifted(-eps)?)?)
            };
            // The loss is linear in each input, so only rounding separates the two.
            let num = (p - m) / (2.0 * eps);
            let diff = (num - analytic[i]).abs();
            assert!(
                diff <= 1e-9 * (1.0 + num.abs()),
                "input {which} elem {i}: fd {num} vs {}",
                analytic[i]
            );
        }
    }
    Ok(())
}

/// Median wall time in ms of `reps` runs of `f`, after one warm-up run.
pub fn median_ms(reps: usize, f: impl FnMut() -> Result<()>) -> Result<f64> {
    median_ms_after(1, reps, f)
}

/// Median wall time in ms of `reps` runs of `f`, after `warmups` warm-up runs.
pub fn median_ms_after(
    warmups: usize,
    reps: usize,
    mut f: impl FnMut() -> Result<()>,
) -> Result<f64> {
    for _ in 0..warmups {
        f()?;
    }
    let mut t = Vec::with_capacity(reps);
    for _ in 0..reps {
        let start = Instant::now();
        f()?;
        t.push(start.elapsed().as_secs_f64() * 1e3);
    }
    t.sort_by(f64::total_cmp);
    Ok(t[reps / 2])
}

/// `sum(y · r)` whose backward hands `r` straight back, so that timing a
/// layer's forward + backward does not time candle's broadcast-mul backward.
#[derive(Clone)]
struct DotLoss(Tensor, std::sync::Arc<Vec<f32>>);

impl CustomOp1 for DotLoss {
    fn name(&self) -> &'static str {
        "dot-loss"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let (CpuStorage::F32(y), (a, b)) = (s, l.contiguous_offsets().expect("contiguous")) else {
            candle_core::bail!("dot-loss: f32 only")
        };
        let v: f32 = y[a..b].iter().zip(self.1.iter()).map(|(y, r)| y * r).sum();
        Ok((CpuStorage::F32(vec![v]), Shape::from(())))
    }

    fn bwd(&self, _arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        assert_eq!(grad.to_scalar::<f32>()?, 1.0, "dot-loss must be the root");
        Ok(Some(self.0.clone()))
    }
}

/// Prints forward and forward+backward medians (10 runs) of `ours` against
/// `reference`; `x_grad` says whether `x` needs a gradient (it does not for
/// a network's first layer). `flops` is one forward pass's FLOP count.
pub fn bench_pair(
    label: &str,
    ours: Conv,
    reference: Conv,
    xd: &[usize],
    wd: &[usize],
    x_grad: bool,
    flops: f64,
) -> Result<()> {
    let w = Var::from_tensor(&rand(wd, 1, DType::F32)?)?;
    let x0 = rand(xd, 2, DType::F32)?;
    let x = if x_grad {
        Var::from_tensor(&x0)?.as_tensor().clone()
    } else {
        x0
    };
    let r = rand(ours(&x, &w)?.dims(), 3, DType::F32)?;
    let loss = DotLoss(
        r.clone(),
        std::sync::Arc::new(r.flatten_all()?.to_vec1::<f32>()?),
    );
    let mut row = Vec::new();
    for op in [ours, reference] {
        let fwd = median_ms(10, || op(&x, &w).map(drop))?;
        let both = median_ms(10, || {
            op(&x, &w)?.apply_op1(loss.clone())?.backward().map(drop)
        })?;
        row.push((fwd, both));
    }
    // What the loss and candle's gradient bookkeeping for `y` cost on their own.
    let y = Var::from_tensor(&ours(&x, &w)?)?;
    let overhead = median_ms(10, || y.apply_op1(loss.clone())?.backward().map(drop))?;
    let ((of, ob), (cf, cb)) = (row[0], row[1]);
    let all_flops = if x_grad { 3.0 * flops } else { 2.0 * flops };
    println!(
        "{label}: fwd ours {of:.2} ms / candle {cf:.2} ms ({:.1}x); fwd+bwd ours {ob:.2} ms / candle {cb:.2} ms ({:.1}x); \
         ours {:.1} GFLOP/s fwd, {:.1} GFLOP/s fwd+bwd; fwd+bwd includes {overhead:.2} ms of loss + candle grad bookkeeping",
        cf / of,
        cb / ob,
        flops / of / 1e6,
        all_flops / ob / 1e6,
    );
    Ok(())
}
