//! Max pooling, ReLU and global average pooling as candle custom ops whose
//! backward passes each take one pass over memory (candle's own backward for
//! these builds masks, upsamples and multiplies in several full passes).
//!
//! Max pooling records the argmax of every window (one byte each) during the
//! forward pass, so its backward only writes the input gradient. Ties go to
//! the first maximum in row-major window order, as TensorFlow and PyTorch do.

use super::cpu::{by_dtype, split, Elem};
use candle_core::backend::BackendStorage;
use candle_core::{bail, CpuStorage, CustomOp1, CustomOp2, DType, Layout, Result, Shape, Tensor};
use std::mem::MaybeUninit;
use std::ops::Range;
use std::sync::Mutex;

/// Elements of an elementwise pass per extra thread: below this handing work
/// to candle's pool costs about what it saves.
const PER_THREAD: usize = 1 << 17;

/// Element type of the pooling kernels: an [`Elem`] that can be compared.
trait Num: Elem + PartialOrd {
    /// Converts a constant to this type.
    fn of(v: f64) -> Self;
}

impl Num for f32 {
    fn of(v: f64) -> Self {
        v as f32
    }
}

impl Num for f64 {
    fn of(v: f64) -> Self {
        v
    }
}

/// Threads for a memory-bound pass over `elems` values split into `items` items.
fn threads(items: usize, elems: usize) -> usize {
    candle_core::utils::get_num_threads()
        .min(items)
        .min(elems.div_ceil(PER_THREAD))
        .max(1)
}

/// A new vector of `items · item_len` values, each range of items written by
/// `f` on one of `threads` workers. `f` must write every value of its slice:
/// skipping the zero fill saves a whole pass over memory when the allocator
/// hands back recycled pages.
fn filled<T: Copy + Send>(
    items: usize,
    item_len: usize,
    threads: usize,
    f: impl Fn(Range<usize>, &mut [MaybeUninit<T>]) + Sync,
) -> Vec<T> {
    let n = items * item_len;
    let mut v = Vec::with_capacity(n);
    split(
        &mut v.spare_capacity_mut()[..n],
        item_len,
        items,
        threads,
        f,
    );
    // SAFETY: `split` hands out all of `0..items`, and `f` initialises every value.
    unsafe { v.set_len(n) };
    v
}

/// Checks that `x` is an f32/f64 CPU tensor and makes it contiguous.
fn prepare(name: &str, x: &Tensor) -> Result<Tensor> {
    if !x.device().is_cpu() {
        bail!("{name}: tinykd's op is CPU-only");
    }
    if !matches!(x.dtype(), DType::F32 | DType::F64) {
        bail!("{name}: need f32 or f64, got {:?}", x.dtype());
    }
    x.contiguous()
}

/// Max pooling of `x` `[N, C, H, W]` with window = stride = `size` (floor output, f32 or f64, CPU).
pub fn max_pool2d(x: &Tensor, size: usize) -> Result<Tensor> {
    let (_, _, h, w) = x.dims4()?;
    if size == 0 || size > 15 || size > h || size > w {
        bail!("max_pool2d: window {size} must be 1..=15 and fit in {h}x{w}");
    }
    let x = prepare("max_pool2d", x)?;
    let op = MaxPool {
        k: size,
        record: x.track_op(),
        argmax: Mutex::new(Vec::new()),
    };
    x.apply_op1(op)
}

/// Max pooling from candle's own ops (window = stride = `size`, floor): the
/// reference the fast op is checked against. Not `Tensor::max_pool2d`,
/// whose backward in candle 0.11.1 scales the gradient by 1/size².
pub fn candle_max_pool2d(x: &Tensor, size: usize) -> Result<Tensor> {
    let (b, c, h, w) = x.dims4()?;
    if size == 0 || size > h || size > w {
        bail!("max_pool2d: window {size} must fit in {h}x{w}");
    }
    let (oh, ow) = (h / size, w / size);
    x.narrow(2, 0, oh * size)?
        .narrow(3, 0, ow * size)?
        .reshape((b, c, oh, size, ow, size))?
        .max(5)?
        .max(3)
}

/// The max-pool op; `argmax` holds each window's winner (`dy·k + dx`) once
/// the forward pass has run with `record` set.
struct MaxPool {
    k: usize,
    record: bool,
    argmax: Mutex<Vec<u8>>,
}

/// Pools one `h×w` plane into `y` (`oh×ow`), writing window indices to `idx`.
/// Selects rather than branches: on real data the comparisons are random.
#[inline(always)]
fn pool_plane<T: Num>(x: &[T], w: usize, k: usize, y: &mut [T], idx: &mut [u8]) {
    let ow = w / k;
    for (oy, (yr, ir)) in y
        .chunks_exact_mut(ow)
        .zip(idx.chunks_exact_mut(ow))
        .enumerate()
    {
        let rows = &x[oy * k * w..][..k * w];
        for (ox, (yv, iv)) in yr.iter_mut().zip(ir.iter_mut()).enumerate() {
            let (mut best, mut bi) = (rows[ox * k], 0u8);
            for dy in 0..k {
                let cell = &rows[dy * w + ox * k..][..k];
                for (dx, &v) in cell.iter().enumerate() {
                    let gt = v > best;
                    best = if gt { v } else { best };
                    bi = if gt { (dy * k + dx) as u8 } else { bi };
                }
            }
            (*yv, *iv) = (best, bi);
        }
    }
}

/// Writes the whole `h×w` input gradient of one plane: `g` at each window's
/// argmax, zero elsewhere (including rows and columns no window covers).
#[inline(always)]
fn unpool_plane<T: Num>(g: &[T], idx: &[u8], w: usize, k: usize, gx: &mut [MaybeUninit<T>]) {
    // A zero fill runs at memset speed; then one store per window.
    gx.fill(MaybeUninit::new(T::ZERO));
    let ow = w / k;
    for (oy, (gr, ir)) in g.chunks_exact(ow).zip(idx.chunks_exact(ow)).enumerate() {
        let rows = &mut gx[oy * k * w..][..k * w];
        for (ox, (&gv, &iv)) in gr.iter().zip(ir).enumerate() {
            let (dy, dx) = (iv as usize / k, iv as usize % k);
            rows[dy * w + ox * k + dx].write(gv);
        }
    }
}

/// Runs `f(k)` with `k` a literal for the common windows, so the kernels specialise.
#[inline(always)]
fn with_k<R>(k: usize, f: impl FnOnce(usize) -> R) -> R {
    match k {
        2 => f(2),
        3 => f(3),
        _ => f(k),
    }
}

impl CustomOp1 for MaxPool {
    fn name(&self) -> &'static str {
        "tinykd-max-pool2d"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let (n, c, h, w) = l.shape().dims4()?;
        let (k, planes) = (self.k, n * c);
        let (oh, ow) = (h / k, w / k);
        let (hw, ohw) = (h * w, oh * ow);
        let mut idx = vec![0u8; planes * ohw];
        let y = by_dtype!(s.dtype(), T => {
            let x = T::view(s, l)?;
            let mut y = vec![T::ZERO; planes * ohw];
            // Pair each plane's output with its argmax bytes and split the pairs.
            let mut pairs: Vec<(&mut [T], &mut [u8])> = y
                .chunks_exact_mut(ohw)
                .zip(idx.chunks_exact_mut(ohw))
                .collect();
            split(&mut pairs, 1, planes, threads(planes, planes * hw), |r, ps| {
                with_k(k, |k| {
                    for (p, (ys, is)) in r.clone().zip(ps.iter_mut()) {
                        pool_plane(&x[p * hw..][..hw], w, k, ys, is);
                    }
                })
            });
            T::wrap(y)
        });
        if self.record {
            *self.argmax.lock().expect("argmax lock") = idx;
        }
        Ok((y, Shape::from((n, c, oh, ow))))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let idx = self.argmax.lock().expect("argmax lock");
        if idx.is_empty() {
            bail!("max_pool2d: backward without a recorded forward");
        }
        let (_, _, h, w) = arg.dims4()?;
        let op = Unpool {
            k: self.k,
            h,
            w,
            idx: &idx,
        };
        Ok(Some(grad.contiguous()?.apply_op1_no_bwd(&op)?))
    }
}

/// `gy [N, C, OH, OW] → gx [N, C, H, W]`, scattering to the recorded argmaxes.
struct Unpool<'a> {
    k: usize,
    h: usize,
    w: usize,
    idx: &'a [u8],
}

impl CustomOp1 for Unpool<'_> {
    fn name(&self) -> &'static str {
        "tinykd-max-pool2d-grad"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let (n, c, oh, ow) = l.shape().dims4()?;
        let (k, h, w) = (self.k, self.h, self.w);
        if (oh, ow) != (h / k, w / k) || self.idx.len() != n * c * oh * ow {
            bail!("max_pool2d grad: gradient shape {:?} mismatch", l.shape());
        }
        let (planes, hw, ohw) = (n * c, h * w, oh * ow);
        by_dtype!(s.dtype(), T => {
            let g = T::view(s, l)?;
            let gx = filled(planes, hw, threads(planes, planes * hw), |r, out| {
                with_k(k, |k| {
                    for (i, p) in r.clone().enumerate() {
                        let (gs, is) = (&g[p * ohw..][..ohw], &self.idx[p * ohw..][..ohw]);
                        unpool_plane(gs, is, w, k, &mut out[i * hw..][..hw]);
                    }
                })
            });
            Ok((T::wrap(gx), Shape::from((n, c, h, w))))
        })
    }
}

/// Elementwise `max(x, 0)` (f32 or f64, CPU); its gradient passes where `x > 0`.
pub fn relu(x: &Tensor) -> Result<Tensor> {
    prepare("relu", x)?.apply_op1(Relu)
}

/// The ReLU op.
struct Relu;

impl CustomOp1 for Relu {
    fn name(&self) -> &'static str {
        "tinykd-relu"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        by_dtype!(s.dtype(), T => {
            let x = T::view(s, l)?;
            let y = filled(x.len(), 1, threads(x.len(), x.len()), |r, out| {
                for (o, &v) in out.iter_mut().zip(&x[r]) {
                    o.write(if v > T::ZERO { v } else { T::ZERO });
                }
            });
            Ok((T::wrap(y), l.shape().clone()))
        })
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(arg.apply_op2_no_bwd(&grad.contiguous()?, &ReluGrad)?))
    }
}

/// `(x, gy) → gy` where `x > 0`, else 0.
struct ReluGrad;

impl CustomOp2 for ReluGrad {
    fn name(&self) -> &'static str {
        "tinykd-relu-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        by_dtype!(s1.dtype(), T => {
            let (x, g) = (T::view(s1, l1)?, T::view(s2, l2)?);
            if x.len() != g.len() {
                bail!("relu grad: {:?} vs {:?}", l1.shape(), l2.shape());
            }
            let gx = filled(x.len(), 1, threads(x.len(), x.len()), |r, out| {
                for ((o, &v), &gv) in out.iter_mut().zip(&x[r.clone()]).zip(&g[r]) {
                    o.write(if v > T::ZERO { gv } else { T::ZERO });
                }
            });
            Ok((T::wrap(gx), l1.shape().clone()))
        })
    }
}

/// Global average pooling `[N, C, H, W] → [N, C]` (f32 or f64, CPU).
pub fn global_avg_pool(x: &Tensor) -> Result<Tensor> {
    let (_, _, h, w) = x.dims4()?;
    if h * w == 0 {
        bail!("global_avg_pool: empty {h}x{w} planes");
    }
    prepare("global_avg_pool", x)?.apply_op1(Gap)
}

/// The global-average-pool op.
struct Gap;

impl CustomOp1 for Gap {
    fn name(&self) -> &'static str {
        "tinykd-global-avg-pool"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let (n, c, h, w) = l.shape().dims4()?;
        let (planes, hw) = (n * c, h * w);
        by_dtype!(s.dtype(), T => {
            let x = T::view(s, l)?;
            let inv = T::of(1.0 / hw as f64);
            let mut y = vec![T::ZERO; planes];
            split(&mut y, 1, planes, threads(planes, planes * hw), |r, out| {
                for (o, p) in out.iter_mut().zip(r) {
                    *o = super::cpu::sum(&x[p * hw..][..hw]) * inv;
                }
            });
            Ok((T::wrap(y), Shape::from((n, c))))
        })
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        // Scale the small `[N, C]` gradient and hand back a broadcast view:
        // candle's gradient accumulation (`zeros + grad`) is then the one pass
        // that writes `[N, C, H, W]`, where a materialised gradient costs two.
        let (n, c, h, w) = arg.dims4()?;
        let g = (grad / (h * w) as f64)?.reshape((n, c, 1, 1))?;
        Ok(Some(g.broadcast_as((n, c, h, w))?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::ops::testutil::{median_ms, rand, rel_err};
    use candle_core::{Device, Var};

    /// Forward values and the gradient of `sum(op(x) · r)` for a random `r`.
    fn run(
        op: &dyn Fn(&Tensor) -> Result<Tensor>,
        x: &Var,
        r_seed: u64,
    ) -> Result<(Tensor, Tensor)> {
        let y = op(x)?;
        let r = rand(y.dims(), r_seed, y.dtype())?;
        let g = (&y * &r)?.sum_all()?.backward()?;
        Ok((y, g.get(x).expect("gradient").clone()))
    }

    /// Asserts that `ours` and `theirs` agree on values and gradients within
    /// 1e-6, after multiplying the reference gradient by `grad_scale`.
    fn check(
        ours: &dyn Fn(&Tensor) -> Result<Tensor>,
        theirs: &dyn Fn(&Tensor) -> Result<Tensor>,
        dims: &[usize],
        seed: u64,
        grad_scale: f64,
    ) -> Result<()> {
        let x = Var::from_tensor(&rand(dims, seed, DType::F32)?)?;
        let (yo, go) = run(ours, &x, seed + 1)?;
        let (yt, gt) = run(theirs, &x, seed + 1)?;
        let gt = (gt * grad_scale)?;
        let e = rel_err(&yo, &yt)?;
        assert!(e < 1e-6, "forward {dims:?}: rel err {e:e}");
        let e = rel_err(&go, &gt)?;
        assert!(e < 1e-6, "gradient {dims:?}: rel err {e:e}");
        Ok(())
    }

    /// Candle's max-pool backward upsamples the gradient back to `H×W` by a
    /// fractional scale, which misplaces it when `H` or `W` is not a multiple
    /// of the window; pooling the covered part of `x` gives its true gradient
    /// (up to the factor in [`CANDLE_MAX_POOL_GRAD`]).
    fn candle_max_pool(x: &Tensor, k: usize) -> Result<Tensor> {
        let (_, _, h, w) = x.dims4()?;
        x.narrow(2, 0, h / k * k)?
            .narrow(3, 0, w / k * k)?
            .max_pool2d(k)
    }

    /// Candle 0.11.1's max-pool backward multiplies the gradient by the mask's
    /// window average (`count / k²`) where it meant to divide by the tie count,
    /// so with a unique maximum it hands back `gy / k²`. Finite differences
    /// (below) confirm `gy` is right; candle's values times `k²` must match.
    /// If this starts failing after a candle upgrade, candle has been fixed.
    const CANDLE_MAX_POOL_GRAD: fn(usize) -> f64 = |k| (k * k) as f64;

    #[test]
    fn max_pool_matches_candle() -> Result<()> {
        let cases = [
            ([2, 3, 7, 9], 2),
            ([3, 2, 8, 6], 2),
            ([1, 4, 9, 11], 3),
            ([2, 3, 12, 9], 3),
            ([2, 2, 5, 5], 1),
            ([4, 16, 28, 28], 2),
        ];
        for (i, (dims, k)) in cases.into_iter().enumerate() {
            check(
                &|x| max_pool2d(x, k),
                &|x| candle_max_pool(x, k),
                &dims,
                10 * i as u64,
                CANDLE_MAX_POOL_GRAD(k),
            )?;
            // Pooling by reshape + max is the reference with the true gradient.
            check(
                &|x| max_pool2d(x, k),
                &|x| candle_max_pool2d(x, k),
                &dims,
                10 * i as u64 + 7,
                1.0,
            )?;
            if dims[2] % k == 0 && dims[3] % k == 0 {
                // Where the window tiles the plane, candle's own op is the reference.
                check(
                    &|x| max_pool2d(x, k),
                    &|x| x.max_pool2d(k),
                    &dims,
                    10 * i as u64 + 5,
                    CANDLE_MAX_POOL_GRAD(k),
                )?;
            }
        }
        Ok(())
    }

    #[test]
    fn max_pool_ties_go_to_first_max_f64() -> Result<()> {
        let v = [1.0, 3.0, 0.0, 0.0, 3.0, 2.0, 0.0, -1.0, 5.0, 5.0, 5.0, 5.0];
        let x = Var::from_tensor(&Tensor::from_vec(v.to_vec(), (1, 1, 3, 4), &Device::Cpu)?)?;
        let y = max_pool2d(&x, 2)?;
        assert_eq!(y.flatten_all()?.to_vec1::<f64>()?, [3.0, 0.0]);
        let g = (y * Tensor::new(&[[[[10.0, 20.0]]]], &Device::Cpu)?)?
            .sum_all()?
            .backward()?;
        let gx = g.get(&x).unwrap().flatten_all()?.to_vec1::<f64>()?;
        let want = [0.0, 10.0, 20.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0];
        assert_eq!(gx, want);
        Ok(())
    }

    #[test]
    fn relu_matches_candle() -> Result<()> {
        for (i, dims) in [&[7][..], &[3, 5, 7, 9], &[128, 10], &[4, 32, 28, 28]]
            .into_iter()
            .enumerate()
        {
            check(&relu, &|x| x.relu(), dims, 100 + i as u64, 1.0)?;
        }
        Ok(())
    }

    #[test]
    fn global_avg_pool_matches_candle() -> Result<()> {
        for (i, dims) in [[2, 3, 7, 9], [1, 1, 1, 1], [5, 32, 14, 14], [3, 4, 1, 5]]
            .into_iter()
            .enumerate()
        {
            check(
                &global_avg_pool,
                &|x| x.mean((2, 3)),
                &dims,
                200 + i as u64,
                1.0,
            )?;
        }
        Ok(())
    }

    /// Central differences of `sum(op(x) · r)` in f64 against the analytic gradient.
    fn finite_diff(op: &dyn Fn(&Tensor) -> Result<Tensor>, x0: Tensor, seed: u64) -> Result<()> {
        let x = Var::from_tensor(&x0)?;
        let r = rand(op(&x)?.dims(), seed, DType::F64)?;
        let loss = |x: &Tensor| (op(x)? * &r)?.sum_all()?.to_scalar::<f64>();
        let g = (op(&x)? * &r)?.sum_all()?.backward()?;
        let analytic = g.get(&x).unwrap().flatten_all()?.to_vec1::<f64>()?;
        let base = x0.flatten_all()?.to_vec1::<f64>()?;
        let eps = 1e-4;
        for i in 0..base.len() {
            let at = |d: f64| {
                let mut b = base.clone();
                b[i] += d;
                loss(&Tensor::from_vec(b, x0.dims(), &Device::Cpu)?)
            };
            let num = (at(eps)? - at(-eps)?) / (2.0 * eps);
            let diff = (num - analytic[i]).abs();
            assert!(
                diff <= 1e-9 * (1.0 + num.abs()),
                "elem {i}: fd {num} vs {}",
                analytic[i]
            );
        }
        Ok(())
    }

    #[test]
    fn gradients_match_finite_differences_f64() -> Result<()> {
        let x = rand(&[2, 3, 5, 4], 300, DType::F64)?;
        finite_diff(&global_avg_pool, x, 301)?;
        // Keep every value at least 0.1 from the kink at 0.
        let x = rand(&[3, 4, 5], 302, DType::F64)?;
        let x = (x.sign()? * (x.abs()? + 0.1)?)?;
        finite_diff(&relu, x.clone(), 303)?;
        finite_diff(
            &|x| max_pool2d(x, 2),
            rand(&[2, 2, 5, 7], 304, DType::F64)?,
            305,
        )
    }

    /// `cargo test --release -p tinykd --lib pool::tests::bench -- --ignored --nocapture`
    #[test]
    #[ignore]
    fn bench_vs_candle() -> Result<()> {
        type Op<'a> = &'a dyn Fn(&Tensor) -> Result<Tensor>;
        let fwd_bwd = |op: Op, x: &Var, r: &Tensor| -> Result<(f64, f64)> {
            let f = median_ms(10, || op(x).map(drop))?;
            let b = median_ms(10, || (op(x)? * r)?.sum_all()?.backward().map(drop))?;
            Ok((f, b))
        };
        let relu_pool = |x: &Tensor| max_pool2d(&relu(x)?, 2);
        let candle_relu_pool = |x: &Tensor| x.relu()?.max_pool2d(2);
        let cases: [(&str, Op, Op, [usize; 4]); 3] = [
            (
                "relu+maxpool2 [128,32,28,28]",
                &relu_pool,
                &candle_relu_pool,
                [128, 32, 28, 28],
            ),
            (
                "relu+maxpool2 [128,64,14,14]",
                &relu_pool,
                &candle_relu_pool,
                [128, 64, 14, 14],
            ),
            (
                "global avg pool [128,32,14,14]",
                &global_avg_pool,
                &|x| x.mean((2, 3)),
                [128, 32, 14, 14],
            ),
        ];
        for (label, ours, theirs, dims) in cases {
            let x = Var::from_tensor(&rand(&dims, 1, DType::F32)?)?;
            let r = rand(ours(&x)?.dims(), 2, DType::F32)?;
            // The loss `sum(y · r)` and its backward are the same for both.
            let y = Var::from_tensor(&ours(&x)?)?;
            let (lf, lb) = fwd_bwd(&|t| Ok(t.clone()), &y, &r)?;
            let (of, ob) = fwd_bwd(ours, &x, &r)?;
            let (cf, cb) = fwd_bwd(theirs, &x, &r)?;
            println!(
                "{label}: fwd ours {of:.2} ms / candle {cf:.2} ms ({:.1}x); fwd+bwd ours {ob:.2} ms / candle {cb:.2} ms ({:.1}x); \
                 both include loss {lf:.2}/{lb:.2} ms",
                cf / of,
                cb / ob
            );
        }
        // The backward kernels alone, without candle's gradient bookkeeping.
        let x = rand(&[128, 32, 28, 28], 1, DType::F32)?;
        let op = MaxPool {
            k: 2,
            record: true,
            argmax: Mutex::new(Vec::new()),
        };
        let gy = x.apply_op1_no_bwd(&op)?;
        let idx = op.argmax.lock().expect("argmax").clone();
        let unpool = Unpool {
            k: 2,
            h: 28,
            w: 28,
            idx: &idx,
        };
        let tu = median_ms(10, || gy.apply_op1_no_bwd(&unpool).map(drop))?;
        let tr = median_ms(10, || x.apply_op2_no_bwd(&x, &ReluGrad).map(drop))?;
        let tz = median_ms(10, || x.zeros_like()?.add(&x).map(drop))?;
        println!(
            "[128,32,28,28] kernels: max-pool grad {tu:.2} ms, relu grad {tr:.2} ms; \
             candle's per-node gradient accumulation (zeros_like + add) {tz:.2} ms"
        );
        Ok(())
    }
}
