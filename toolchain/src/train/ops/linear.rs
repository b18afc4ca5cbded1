//! Fully-connected layer `y = x·Wᵀ + b` (candle-nn's `Linear` layout, `W`
//! `[out, in]`) as a candle custom op, optionally with the ReLU fused in.
//! Forward is one GEMM accumulating onto rows pre-filled with the bias;
//! backward is one custom op that writes `g·W`, `gᵀ·x` and the column sums of
//! `g` straight into one fresh buffer, reading every operand through its
//! strides so that no transpose is ever copied, and skipping the gradients of
//! inputs that track none (a network's input). Large GEMMs are split in blocks
//! over candle's own CPU worker pool rather than gemm's rayon threads.

use super::cpu::Elem;
use candle_core::{bail, CpuStorage, CustomOp2, CustomOp3, DType, Layout, Result, Shape, Tensor};
use gemm::Parallelism;

/// `x·Wᵀ + b` for `x` `[.., K]`, `w` `[M, K]`, `b` `[M]` (f32 or f64, CPU).
pub fn linear(x: &Tensor, w: &Tensor, b: &Tensor) -> Result<Tensor> {
    apply(x, w, b, false)
}

/// `max(0, x·Wᵀ + b)`: [`linear`] followed by ReLU in the same op.
pub fn linear_relu(x: &Tensor, w: &Tensor, b: &Tensor) -> Result<Tensor> {
    apply(x, w, b, true)
}

fn apply(x: &Tensor, w: &Tensor, b: &Tensor, relu: bool) -> Result<Tensor> {
    let (m, k) = w.dims2()?;
    let dims = x.dims();
    let Some((&xk, lead)) = dims.split_last() else {
        bail!("linear: x must have at least one dimension")
    };
    if xk != k {
        bail!("linear: x has {xk} features, weight [{m}, {k}] expects {k}");
    }
    if b.dims() != [m] {
        bail!("linear: bias must be [{m}], got {:?}", b.shape());
    }
    if !x.device().is_cpu() || !w.device().is_cpu() || !b.device().is_cpu() {
        bail!("linear: tinykd's linear op is CPU-only");
    }
    let dt = x.dtype();
    if !matches!(dt, DType::F32 | DType::F64) || w.dtype() != dt || b.dtype() != dt {
        bail!(
            "linear: need f32 or f64 throughout, got {dt:?}, {:?}, {:?}",
            w.dtype(),
            b.dtype()
        );
    }
    let op = LinearOp { relu };
    if dims.len() == 2 {
        return x.apply_op3(w, b, op);
    }
    // Leading dimensions fold into rows, as in candle-nn; a contiguous reshape is free.
    let rows: usize = lead.iter().product();
    let y = x.reshape((rows, k))?.apply_op3(w, b, op)?;
    let mut out = lead.to_vec();
    out.push(m);
    y.reshape(out)
}

/// A strided matrix inside a storage slice; a vector is a one-row matrix.
#[derive(Clone, Copy)]
struct Mat<'a, T> {
    d: &'a [T],
    rows: usize,
    cols: usize,
    rs: usize,
    cs: usize,
}

impl<'a, T: Elem> Mat<'a, T> {
    /// Views a rank-1 or rank-2 layout, checking that every element lies in the slice.
    fn new(s: &'a CpuStorage, l: &Layout) -> Result<Self> {
        let d = T::slice(s)?;
        let (rows, cols, rs, cs) = match (l.dims(), l.stride()) {
            (&[c], &[sc]) => (1, c, 0, sc),
            (&[r, c], &[sr, sc]) => (r, c, sr, sc),
            (dims, _) => bail!("linear: expected a matrix, got shape {dims:?}"),
        };
        let off = l.start_offset();
        if rows > 0 && cols > 0 && off + (rows - 1) * rs + (cols - 1) * cs >= d.len() {
            bail!("linear: layout {l:?} runs past its storage");
        }
        Ok(Self {
            d: &d[off.min(d.len())..],
            rows,
            cols,
            rs,
            cs,
        })
    }

    fn t(self) -> Self {
        Self {
            rows: self.cols,
            cols: self.rows,
            rs: self.cs,
            cs: self.rs,
            ..self
        }
    }

    /// Rows `lo..hi` (with `lo < rows`).
    fn rows(self, lo: usize, hi: usize) -> Self {
        Self {
            d: &self.d[lo * self.rs..],
            rows: hi - lo,
            ..self
        }
    }

    /// Columns `lo..hi` (with `lo < cols`).
    fn cols(self, lo: usize, hi: usize) -> Self {
        Self {
            d: &self.d[lo * self.cs..],
            cols: hi - lo,
            ..self
        }
    }

    /// Row `r` as a slice, when its elements are adjacent.
    fn row(&self, r: usize) -> Option<&'a [T]> {
        (self.cs == 1).then(|| &self.d[r * self.rs..r * self.rs + self.cols])
    }

    fn at(&self, r: usize, c: usize) -> T {
        self.d[r * self.rs + c * self.cs]
    }
}

/// Which dimension of the output a parallel GEMM divides between threads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Split {
    Rows,
    Cols,
}

/// The output's row-major storage, shared by the threads of one GEMM.
#[derive(Clone, Copy)]
struct Dst<T>(*mut T);
// SAFETY: each thread writes a disjoint block of the output (see `matmul`).
unsafe impl<T: Send> Send for Dst<T> {}
unsafe impl<T: Send> Sync for Dst<T> {}

impl<T> Dst<T> {
    /// The block starting `offset` elements in.
    ///
    /// # Safety
    /// `offset` must lie inside the output.
    unsafe fn at(self, offset: usize) -> Self {
        // SAFETY: per the contract.
        Self(unsafe { self.0.add(offset) })
    }
}

/// How one GEMM uses the cores.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Threads {
    /// On the calling thread.
    One,
    /// Inside the gemm crate, on rayon's global pool (used only to measure against).
    #[cfg(test)]
    Rayon(usize),
    /// Split into this many blocks run on candle's CPU worker pool.
    Pool(usize),
}

/// Below this many FLOPs a GEMM stays on one thread: waking a worker and
/// packing the operands twice costs more than the second core gains.
const MIN_SPLIT_FLOPS: usize = 8_000_000;

/// Splits large GEMMs into one block per thread of candle's worker pool. That
/// pool, not rayon's, because candle's elementwise ops already keep its
/// workers warm, and a second pool's threads would spin against them on a
/// two-core machine.
fn plan(flops: usize) -> Threads {
    #[cfg(test)]
    match tests::FORCE.load(std::sync::atomic::Ordering::Relaxed) {
        1 => return Threads::One,
        2 => return Threads::Rayon(candle_core::utils::get_num_threads()),
        _ => {}
    }
    let threads = candle_core::utils::barrier_pool().n_workers() + 1;
    if threads > 1 && flops >= MIN_SPLIT_FLOPS {
        Threads::Pool(threads)
    } else {
        Threads::One
    }
}

/// `dst[m×n] (+)= a[m×k] · b[k×n]` with `dst` row-major (row stride `n`);
/// when split, threads take blocks of rows or columns of `dst` per `split`.
/// Without `accumulate` the GEMM never reads `dst` (gemm's alpha = 0 path),
/// so it may point at uninitialised memory.
///
/// # Safety
/// `dst` must be valid for m·n writes (and reads when `accumulate`), and
/// nothing else may access those elements during the call.
unsafe fn matmul<T: Elem>(
    dst: Dst<T>,
    accumulate: bool,
    a: Mat<T>,
    b: Mat<T>,
    split: Split,
    threads: Threads,
) {
    let (m, k, n) = (a.rows, a.cols, b.cols);
    assert!(b.rows == k, "matmul: shape mismatch");
    if m == 0 || n == 0 {
        return;
    }
    // The preferred dimension splits the weight between threads; when it is
    // too short to give each thread a block, the other one splits instead.
    let (split, len) = match split {
        Split::Rows if m < 32 && n >= 32 => (Split::Cols, n),
        Split::Cols if n < 32 && m >= 32 => (Split::Rows, m),
        Split::Rows => (Split::Rows, m),
        Split::Cols => (Split::Cols, n),
    };
    let ptr = dst;
    let pieces = match threads {
        Threads::Pool(p) => p.min(len.div_ceil(16)),
        _ => 1,
    };
    if pieces <= 1 {
        let par = match threads {
            #[cfg(test)]
            Threads::Rayon(t) => Parallelism::Rayon(t),
            _ => Parallelism::None,
        };
        // SAFETY: per this function's contract.
        unsafe { gemm_block(ptr, n, accumulate, a, b, par) };
        return;
    }
    // Block edges on multiples of 16, the microkernel's height, so only the last block is ragged.
    let step = len.div_ceil(pieces).next_multiple_of(16);
    candle_core::utils::barrier_pool().execute_chunked(pieces, |range| {
        for i in range {
            let (lo, hi) = (i * step, ((i + 1) * step).min(len));
            if lo >= hi {
                continue;
            }
            // SAFETY: blocks cover disjoint row (or column) ranges of `dst`,
            // each inside its m×n extent, and the pool call returns only
            // when every block is done.
            unsafe {
                match split {
                    Split::Rows => gemm_block(
                        ptr.at(lo * n),
                        n,
                        accumulate,
                        a.rows(lo, hi),
                        b,
                        Parallelism::None,
                    ),
                    Split::Cols => gemm_block(
                        ptr.at(lo),
                        n,
                        accumulate,
                        a,
                        b.cols(lo, hi),
                        Parallelism::None,
                    ),
                }
            }
        }
    });
}

/// One GEMM into the row-major block at `dst` with row stride `dst_rs`.
///
/// # Safety
/// `dst` must be valid for writes of `a.rows` rows of `b.cols` elements at
/// stride `dst_rs`, and no other thread may touch that block meanwhile.
unsafe fn gemm_block<T: Elem>(
    dst: Dst<T>,
    dst_rs: usize,
    accumulate: bool,
    a: Mat<T>,
    b: Mat<T>,
    par: Parallelism,
) {
    // SAFETY: `Mat` views were bounds-checked against their slices; `dst` per the contract.
    unsafe {
        gemm::gemm(
            a.rows,
            b.cols,
            a.cols,
            dst.0,
            1,
            dst_rs as isize,
            accumulate,
            a.d.as_ptr(),
            a.cs as isize,
            a.rs as isize,
            b.d.as_ptr(),
            b.cs as isize,
            b.rs as isize,
            T::ONE,
            T::ONE,
            false,
            false,
            false,
            par,
        )
    }
}

/// Forward op on `(x [N, K], w [M, K], b [M])`.
struct LinearOp {
    relu: bool,
}

fn forward<T: Elem>(x: Mat<T>, w: Mat<T>, b: Mat<T>, relu: bool) -> Vec<T> {
    let (n, m) = (x.rows, w.rows);
    // Rows start as the bias and the GEMM accumulates onto them: no extra pass.
    let bias: Vec<T> = (0..m).map(|j| b.at(0, j)).collect();
    let mut y = Vec::with_capacity(n * m);
    for _ in 0..n {
        y.extend_from_slice(&bias);
    }
    let threads = plan(2 * n * m * x.cols);
    // SAFETY: `y` holds the n·m initialised elements the GEMM reads and writes.
    unsafe { matmul(Dst(y.as_mut_ptr()), true, x, w.t(), Split::Cols, threads) };
    if relu {
        // A select, not a branch: half the signs are random, so a branch mispredicts.
        for v in &mut y {
            *v = if *v > T::ZERO { *v } else { T::ZERO };
        }
    }
    y
}

impl CustomOp3 for LinearOp {
    fn name(&self) -> &'static str {
        if self.relu {
            "tinykd-linear-relu"
        } else {
            "tinykd-linear"
        }
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        ws: &CpuStorage,
        wl: &Layout,
        bs: &CpuStorage,
        bl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (n, m) = (xl.dims()[0], wl.dims()[0]);
        let out = match xs {
            CpuStorage::F32(_) => f32::wrap(forward::<f32>(
                Mat::new(xs, xl)?,
                Mat::new(ws, wl)?,
                Mat::new(bs, bl)?,
                self.relu,
            )),
            CpuStorage::F64(_) => f64::wrap(forward::<f64>(
                Mat::new(xs, xl)?,
                Mat::new(ws, wl)?,
                Mat::new(bs, bl)?,
                self.relu,
            )),
            _ => bail!("linear: f32 or f64 only"),
        };
        Ok((out, Shape::from((n, m))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        b: &Tensor,
        y: &Tensor,
        g: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let need = [x.track_op(), w.track_op(), b.track_op()];
        if need == [false; 3] {
            return Ok((None, None, None));
        }
        let g = if self.relu {
            g.apply_op2_no_bwd(y, &ReluMask)?
        } else {
            g.clone()
        };
        let (n, k) = x.dims2()?;
        let m = w.dims2()?.0;
        let all = g.apply_op3_no_bwd(x, w, &LinearBwd { need })?;
        // The op wrote [grad_x | grad_w | grad_b], each only when needed.
        let mut at = 0;
        let mut take = |on: bool, dims: &[usize]| -> Result<Option<Tensor>> {
            if !on {
                return Ok(None);
            }
            let len: usize = dims.iter().product();
            let t = all.narrow(0, at, len)?.reshape(dims)?;
            at += len;
            Ok(Some(t))
        };
        Ok((
            take(need[0], &[n, k])?,
            take(need[1], &[m, k])?,
            take(need[2], &[m])?,
        ))
    }
}

/// `g · (y > 0)`: the incoming gradient masked by the ReLU's active outputs.
struct ReluMask;

fn relu_mask<T: Elem>(g: Mat<T>, y: Mat<T>) -> Vec<T> {
    let mut out = Vec::with_capacity(g.rows * g.cols);
    for r in 0..g.rows {
        match (g.row(r), y.row(r)) {
            (Some(gr), Some(yr)) => {
                out.extend(
                    gr.iter()
                        .zip(yr)
                        .map(|(&g, &y)| if y > T::ZERO { g } else { T::ZERO }),
                )
            }
            _ => out.extend((0..g.cols).map(|c| {
                if y.at(r, c) > T::ZERO {
                    g.at(r, c)
                } else {
                    T::ZERO
                }
            })),
        }
    }
    out
}

impl CustomOp2 for ReluMask {
    fn name(&self) -> &'static str {
        "tinykd-relu-mask"
    }

    fn cpu_fwd(
        &self,
        gs: &CpuStorage,
        gl: &Layout,
        ys: &CpuStorage,
        yl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let out = match gs {
            CpuStorage::F32(_) => f32::wrap(relu_mask::<f32>(Mat::new(gs, gl)?, Mat::new(ys, yl)?)),
            CpuStorage::F64(_) => f64::wrap(relu_mask::<f64>(Mat::new(gs, gl)?, Mat::new(ys, yl)?)),
            _ => bail!("linear: f32 or f64 only"),
        };
        Ok((out, gl.shape().clone()))
    }
}

/// Backward op on `(g [N, M], x [N, K], w [M, K])`; `need` says which of
/// grad_x, grad_w, grad_b to write.
struct LinearBwd {
    need: [bool; 3],
}

fn backward<T: Elem>(g: Mat<T>, x: Mat<T>, w: Mat<T>, need: [bool; 3]) -> Vec<T> {
    let (n, m, k) = (g.rows, g.cols, x.cols);
    let lens = [
        if need[0] { n * k } else { 0 },
        if need[1] { m * k } else { 0 },
        if need[2] { m } else { 0 },
    ];
    let total = lens.iter().sum();
    // Left uninitialised: the GEMMs overwrite without reading, so zeroing
    // megabytes first would be a wasted pass.
    let mut out = Vec::<T>::with_capacity(total);
    let base = Dst(out.as_mut_ptr());
    let threads = plan(2 * n * m * k);
    // SAFETY: the three regions [0, n·k), [n·k, n·k + m·k) and the bias tail
    // are disjoint and inside the capacity; together they cover all `total`
    // elements, each written exactly once before `set_len`.
    unsafe {
        if need[0] {
            matmul(base, false, g, w, Split::Cols, threads);
        }
        if need[1] {
            matmul(base.at(lens[0]), false, g.t(), x, Split::Rows, threads);
        }
        if need[2] {
            let sums = col_sums(g);
            std::ptr::copy_nonoverlapping(sums.as_ptr(), base.at(lens[0] + lens[1]).0, m);
        }
        out.set_len(total);
    }
    out
}

/// `Σ_i g[i, j]` for every column `j`.
fn col_sums<T: Elem>(g: Mat<T>) -> Vec<T> {
    let mut out = vec![T::ZERO; g.cols];
    for r in 0..g.rows {
        match g.row(r) {
            Some(row) => {
                for (o, &v) in out.iter_mut().zip(row) {
                    *o += v;
                }
            }
            None => {
                for (c, o) in out.iter_mut().enumerate() {
                    *o += g.at(r, c);
                }
            }
        }
    }
    out
}

impl CustomOp3 for LinearBwd {
    fn name(&self) -> &'static str {
        "tinykd-linear-bwd"
    }

    fn cpu_fwd(
        &self,
        gs: &CpuStorage,
        gl: &Layout,
        xs: &CpuStorage,
        xl: &Layout,
        ws: &CpuStorage,
        wl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let out = match gs {
            CpuStorage::F32(_) => f32::wrap(backward::<f32>(
                Mat::new(gs, gl)?,
                Mat::new(xs, xl)?,
                Mat::new(ws, wl)?,
                self.need,
            )),
            CpuStorage::F64(_) => f64::wrap(backward::<f64>(
                Mat::new(gs, gl)?,
                Mat::new(xs, xl)?,
                Mat::new(ws, wl)?,
                self.need,
            )),
            _ => bail!("linear: f32 or f64 only"),
        };
        let len = match &out {
            CpuStorage::F32(v) => v.len(),
            CpuStorage::F64(v) => v.len(),
            _ => unreachable!("built as f32 or f64 above"),
        };
        Ok((out, Shape::from(len)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::ops::testutil::{median_ms_after, rand, rel_err, values};
    use candle_core::{Device, Var};
    use candle_nn::Module;
    use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
    use std::time::Instant;

    /// Overrides `plan` for the benchmarks: 0 as planned, 1 one thread, 2 gemm's rayon threads.
    pub(super) static FORCE: AtomicU8 = AtomicU8::new(0);

    fn reference(x: &Tensor, w: &Tensor, b: &Tensor, relu: bool) -> Result<Tensor> {
        let y = candle_nn::Linear::new(w.clone(), Some(b.clone())).forward(x)?;
        if relu {
            y.relu()
        } else {
            Ok(y)
        }
    }

    fn ours(x: &Tensor, w: &Tensor, b: &Tensor, relu: bool) -> Result<Tensor> {
        if relu {
            linear_relu(x, w, b)
        } else {
            linear(x, w, b)
        }
    }

    /// A scalar loss whose gradient depends on `y` itself, not only on `r`.
    fn loss(y: &Tensor, r: &Tensor) -> Result<Tensor> {
        ((y * r)? + (y.sqr()? * 0.5)?)?.sum_all()
    }

    /// Odd sizes, the edge case 1, and batch sizes either side of 128.
    fn shapes() -> Vec<(usize, usize, usize)> {
        let ns = [1, 2, 7, 64, 127, 128, 130];
        let ks = [1, 3, 17, 65, 257];
        let ms = [1, 5, 31, 129];
        let mut out = Vec::new();
        let mut i = 0;
        for &n in &ns {
            for &k in &ks {
                for &m in &ms {
                    // Every third combination keeps the test quick but covers each size.
                    if i % 3 == 0 || n == 1 || k == 1 || m == 1 {
                        out.push((n, k, m));
                    }
                    i += 1;
                }
            }
        }
        // Large enough (≥ MIN_SPLIT_FLOPS) that every GEMM is split between threads.
        out.push((130, 257, 129));
        out
    }

    /// Checks forward within 1e-5 and the gradients of x, w, b within 1e-4 against candle-nn.
    fn check_vs_candle(n: usize, k: usize, m: usize, seed: u64, relu: bool) -> Result<()> {
        let x = Var::from_tensor(&rand(&[n, k], seed, DType::F32)?)?;
        let w = Var::from_tensor(&rand(&[m, k], seed + 1, DType::F32)?)?;
        let b = Var::from_tensor(&rand(&[m], seed + 2, DType::F32)?)?;
        let yo = ours(&x, &w, &b, relu)?;
        let yr = reference(&x, &w, &b, relu)?;
        let e = rel_err(&yo, &yr)?;
        assert!(
            e < 1e-5,
            "forward n{n} k{k} m{m} relu {relu}: rel err {e:e}"
        );
        let r = rand(&[n, m], seed + 3, DType::F32)?;
        let go = loss(&yo, &r)?.backward()?;
        let gr = loss(&yr, &r)?.backward()?;
        for (name, v) in [("x", &x), ("w", &w), ("b", &b)] {
            let (a, c) = (
                go.get(v).expect("our grad"),
                gr.get(v).expect("candle grad"),
            );
            let e = rel_err(a, c)?;
            assert!(
                e < 1e-4,
                "grad {name} n{n} k{k} m{m} relu {relu}: rel err {e:e}"
            );
        }
        Ok(())
    }

    #[test]
    fn matches_candle_nn_linear() -> Result<()> {
        for (i, (n, k, m)) in shapes().into_iter().enumerate() {
            check_vs_candle(n, k, m, 10 * i as u64, false)?;
        }
        Ok(())
    }

    #[test]
    fn relu_matches_candle_nn_linear_then_relu() -> Result<()> {
        for (i, (n, k, m)) in shapes().into_iter().enumerate() {
            check_vs_candle(n, k, m, 10 * i as u64 + 5, true)?;
        }
        Ok(())
    }

    /// Central differences of an f64 loss, one element of `v` at a time.
    fn finite_diff(v: &Tensor, f: &dyn Fn(&Tensor) -> Result<f64>, eps: f64) -> Result<Vec<f64>> {
        let base = values(v)?;
        (0..base.len())
            .map(|i| {
                let at = |d: f64| -> Result<f64> {
                    let mut p = base.clone();
                    p[i] += d;
                    f(&Tensor::from_vec(p, v.dims(), &Device::Cpu)?)
                };
                Ok((at(eps)? - at(-eps)?) / (2.0 * eps))
            })
            .collect()
    }

    /// Our f32 gradients against central differences of candle's f64 reference
    /// (1e-3), and our f64 gradients against differences of our f64 op (1e-8).
    fn check_finite_diff(relu: bool) -> Result<()> {
        let (n, k, m) = (3, 4, 2);
        let x64 = rand(&[n, k], 7, DType::F64)?;
        let w64 = rand(&[m, k], 8, DType::F64)?;
        let b64 = rand(&[m], 9, DType::F64)?;
        let r64 = rand(&[n, m], 10, DType::F64)?;
        let scalar = |x: &Tensor, w: &Tensor, b: &Tensor, ours_op: bool| -> Result<f64> {
            let y = if ours_op {
                ours(x, w, b, relu)?
            } else {
                reference(x, w, b, relu)?
            };
            loss(&y, &r64)?.to_scalar::<f64>()
        };
        for (dtype, ours_fd, tol) in [(DType::F32, false, 1e-3), (DType::F64, true, 1e-8)] {
            let x = Var::from_tensor(&x64.to_dtype(dtype)?)?;
            let w = Var::from_tensor(&w64.to_dtype(dtype)?)?;
            let b = Var::from_tensor(&b64.to_dtype(dtype)?)?;
            let grads = loss(&ours(&x, &w, &b, relu)?, &r64.to_dtype(dtype)?)?.backward()?;
            let eps = 1e-5;
            let fds = [
                finite_diff(&x64, &|t| scalar(t, &w64, &b64, ours_fd), eps)?,
                finite_diff(&w64, &|t| scalar(&x64, t, &b64, ours_fd), eps)?,
                finite_diff(&b64, &|t| scalar(&x64, &w64, t, ours_fd), eps)?,
            ];
            for ((name, v), fd) in [("x", &x), ("w", &w), ("b", &b)].into_iter().zip(fds) {
                let g = values(grads.get(v).expect("gradient"))?;
                assert_eq!(g.len(), fd.len());
                for (i, (a, f)) in g.iter().zip(&fd).enumerate() {
                    assert!(
                        (a - f).abs() <= tol * (1.0 + f.abs()),
                        "{dtype:?} relu {relu} grad {name}[{i}]: ours {a} vs fd {f}"
                    );
                }
            }
        }
        Ok(())
    }

    #[test]
    fn gradients_match_finite_differences() -> Result<()> {
        check_finite_diff(false)
    }

    #[test]
    fn relu_gradients_match_finite_differences() -> Result<()> {
        check_finite_diff(true)
    }

    /// Transposed views, a broadcast (stride-0) gradient, 1-D and 3-D inputs.
    #[test]
    fn strided_and_batched_inputs() -> Result<()> {
        let (n, k, m) = (9, 13, 6);
        let xt = Var::from_tensor(&rand(&[k, n], 1, DType::F32)?)?;
        let wt = Var::from_tensor(&rand(&[k, m], 2, DType::F32)?)?;
        let b = Var::from_tensor(&rand(&[2 * m], 3, DType::F32)?)?;
        // Every operand is a strided view: x and w transposed, b every other element.
        let (x, w) = (xt.t()?, wt.t()?);
        let bs = b.reshape((m, 2))?.narrow(1, 0, 1)?.squeeze(1)?;
        assert!(!x.is_contiguous() && !w.is_contiguous() && !bs.is_contiguous());
        let (yo, yr) = (linear(&x, &w, &bs)?, reference(&x, &w, &bs, false)?);
        assert!(rel_err(&yo, &yr)? < 1e-5);
        // sum_all's backward hands down a broadcast gradient with zero strides.
        let (go, gr) = (yo.sum_all()?.backward()?, yr.sum_all()?.backward()?);
        for v in [&xt, &wt, &b] {
            let e = rel_err(go.get(v).expect("ours"), gr.get(v).expect("candle"))?;
            assert!(e < 1e-5, "strided grad: rel err {e:e}");
        }

        let w = rand(&[m, k], 4, DType::F32)?;
        let b = rand(&[m], 5, DType::F32)?;
        for dims in [vec![k], vec![2, 3, k], vec![2, 1, 4, k]] {
            let x = rand(&dims, 6, DType::F32)?;
            // candle-nn's Linear takes no 1-D input, so the reference runs on rows.
            let rows = x.reshape(((), k))?;
            let mut ydims = dims.clone();
            *ydims.last_mut().expect("rank ≥ 1") = m;
            let yr = reference(&rows, &w, &b, false)?.reshape(ydims)?;
            let yo = linear(&x, &w, &b)?;
            assert!(rel_err(&yo, &yr)? < 1e-5, "x {dims:?}");
        }
        Ok(())
    }

    /// An input without a gradient gets none; a weight used twice sums both uses.
    #[test]
    fn skips_untracked_inputs_and_accumulates_shared_weights() -> Result<()> {
        let x = rand(&[5, 7], 1, DType::F32)?;
        let w = Var::from_tensor(&rand(&[7, 7], 2, DType::F32)?)?;
        let b = Var::from_tensor(&rand(&[7], 3, DType::F32)?)?;
        let r = rand(&[5, 7], 4, DType::F32)?;
        let yo = linear_relu(&linear(&x, &w, &b)?, &w, &b)?;
        let lin = candle_nn::Linear::new(w.as_tensor().clone(), Some(b.as_tensor().clone()));
        let yr = lin.forward(&lin.forward(&x)?)?.relu()?;
        assert!(rel_err(&yo, &yr)? < 1e-5);
        let (go, gr) = (loss(&yo, &r)?.backward()?, loss(&yr, &r)?.backward()?);
        assert!(go.get(&x).is_none(), "x tracks no gradient");
        for v in [&w, &b] {
            let e = rel_err(go.get(v).expect("ours"), gr.get(v).expect("candle"))?;
            assert!(e < 1e-4, "shared grad: rel err {e:e}");
        }
        Ok(())
    }

    /// Every threading and split of the GEMM, on odd shapes and strided
    /// operands, against a naive triple loop.
    #[test]
    fn matmul_blocks_match_naive() -> Result<()> {
        for (i, &(m, k, n)) in [
            (1, 1, 1),
            (5, 3, 70),
            (70, 9, 5),
            (33, 17, 100),
            (100, 40, 47),
        ]
        .iter()
        .enumerate()
        {
            let a = rand(&[k, m], i as u64, DType::F64)?
                .flatten_all()?
                .to_vec1::<f64>()?;
            let b = rand(&[k, n], 7 + i as u64, DType::F64)?
                .flatten_all()?
                .to_vec1::<f64>()?;
            // `a` is stored transposed, so the GEMM reads it column by column.
            let am = Mat {
                d: &a[..],
                rows: m,
                cols: k,
                rs: 1,
                cs: m,
            };
            let bm = Mat {
                d: &b[..],
                rows: k,
                cols: n,
                rs: n,
                cs: 1,
            };
            let naive: Vec<f64> = (0..m * n)
                .map(|ij| {
                    1.0 + (0..k)
                        .map(|l| am.at(ij / n, l) * bm.at(l, ij % n))
                        .sum::<f64>()
                })
                .collect();
            for threads in [
                Threads::One,
                Threads::Rayon(2),
                Threads::Pool(2),
                Threads::Pool(3),
            ] {
                for split in [Split::Rows, Split::Cols] {
                    let mut dst = vec![1.0; m * n];
                    // SAFETY: `dst` is exactly the initialised m·n output.
                    unsafe { matmul(Dst(dst.as_mut_ptr()), true, am, bm, split, threads) };
                    let e = dst
                        .iter()
                        .zip(&naive)
                        .fold(0f64, |e, (a, b)| e.max((a - b).abs()));
                    assert!(e < 1e-12, "m{m} k{k} n{n} {threads:?} {split:?}: err {e:e}");
                }
            }
        }
        Ok(())
    }

    /// With no input features the output is the bias and only the bias learns.
    #[test]
    fn zero_features() -> Result<()> {
        let x = Var::from_tensor(&Tensor::zeros((3, 0), DType::F32, &Device::Cpu)?)?;
        let w = Var::from_tensor(&Tensor::zeros((2, 0), DType::F32, &Device::Cpu)?)?;
        let b = Var::from_tensor(&rand(&[2], 1, DType::F32)?)?;
        let y = linear(&x, &w, &b)?;
        assert_eq!(values(&y)?, values(&b.broadcast_as((3, 2))?)?);
        let grads = y.sum_all()?.backward()?;
        assert_eq!(values(grads.get(&b).expect("grad b"))?, vec![3.0, 3.0]);
        assert_eq!(grads.get(&w).expect("grad w").dims(), [2, 0]);
        Ok(())
    }

    #[test]
    fn rejects_bad_arguments() -> Result<()> {
        let x = rand(&[4, 3], 1, DType::F32)?;
        let w = rand(&[2, 3], 2, DType::F32)?;
        let b = rand(&[2], 3, DType::F32)?;
        assert!(linear(&x, &w.t()?, &b).is_err(), "k mismatch");
        assert!(
            linear(&x, &w, &rand(&[3], 4, DType::F32)?).is_err(),
            "bias size"
        );
        assert!(
            linear(&x.to_dtype(DType::F64)?, &w, &b).is_err(),
            "dtype mix"
        );
        assert!(linear(
            &x.to_dtype(DType::BF16)?,
            &w.to_dtype(DType::BF16)?,
            &b.to_dtype(DType::BF16)?
        )
        .is_err());
        assert!(
            linear(&Tensor::new(1f32, &Device::Cpu)?, &w, &b).is_err(),
            "scalar x"
        );
        Ok(())
    }

    /// Median wall time in ms of `reps` runs of `f`, after two warm-up runs.
    fn median_ms(reps: usize, f: impl FnMut() -> Result<()>) -> Result<f64> {
        median_ms_after(2, reps, f)
    }

    /// Stops glibc from handing freed megabyte buffers back to the kernel, so
    /// that every training step does not page-fault its gradients in afresh.
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    fn keep_freed_memory() {
        extern "C" {
            fn mallopt(param: i32, value: i32) -> i32;
        }
        const M_TRIM_THRESHOLD: i32 = -1;
        const M_MMAP_THRESHOLD: i32 = -3;
        // SAFETY: mallopt only changes allocator thresholds; both values are in range.
        let ok = unsafe {
            mallopt(M_TRIM_THRESHOLD, 1 << 30) == 1 && mallopt(M_MMAP_THRESHOLD, 64 << 20) == 1
        };
        assert!(ok, "mallopt refused");
    }

    /// Forward and forward+backward of the 784-800-800-10 MLP's three layers at
    /// batch 128 (ReLU after the first two, gradients for W and b, not for the
    /// input): candle-nn's Linear against this op, with candle's ReLU or the
    /// fused one, and the fused one with every GEMM on one thread or on gemm's
    /// own rayon threads. Medians of 21, round-robin in one run.
    /// `cargo test --release -p tinykd --lib train::ops::linear::tests::bench_mlp -- --ignored --nocapture`;
    /// with `LINEAR_BENCH_MALLOPT=1` glibc keeps freed memory (see `keep_freed_memory`).
    #[test]
    #[ignore = "benchmark"]
    fn bench_mlp_layers() -> Result<()> {
        #[cfg(all(target_os = "linux", target_env = "gnu"))]
        if std::env::var_os("LINEAR_BENCH_MALLOPT").is_some() {
            keep_freed_memory();
        }
        let sizes = [784, 800, 800, 10];
        let batch = 128;
        let x = rand(&[batch, sizes[0]], 1, DType::F32)?;
        let params: Vec<(Var, Var)> = (0..3)
            .map(|i| {
                let w = rand(&[sizes[i + 1], sizes[i]], 2 + i as u64, DType::F32)?;
                let b = rand(&[sizes[i + 1]], 9 + i as u64, DType::F32)?;
                Ok((Var::from_tensor(&(w * 0.05)?)?, Var::from_tensor(&b)?))
            })
            .collect::<Result<_>>()?;
        let r = rand(&[batch, 10], 20, DType::F32)?;
        type Layer<'a> = &'a dyn Fn(&Tensor, &Tensor, &Tensor, bool) -> Result<Tensor>;
        let candle: Layer = &|x, w, b, relu| reference(x, w, b, relu);
        let op: Layer = &|x, w, b, relu| {
            let y = linear(x, w, b)?;
            if relu {
                y.relu()
            } else {
                Ok(y)
            }
        };
        let fused: Layer = &|x, w, b, relu| ours(x, w, b, relu);
        let fwd = |layer: Layer| -> Result<Tensor> {
            let mut h = x.clone();
            for (i, (w, b)) in params.iter().enumerate() {
                h = layer(&h, w, b, i < 2)?;
            }
            Ok(h)
        };
        let flops = 2.0 * batch as f64 * (784.0 * 800.0 + 800.0 * 800.0 + 800.0 * 10.0);
        // grad_w for every layer, grad_x for the two that are not the input.
        let bwd_flops = flops + 2.0 * batch as f64 * (800.0 * 800.0 + 800.0 * 10.0);
        // (name, layer, `FORCE` value)
        let variants = [
            ("candle-nn Linear", candle, 0),
            ("linear + relu", op, 0),
            ("linear_relu", fused, 0),
            ("linear_relu 1 thr", fused, 1),
            ("linear_relu rayon", fused, 2),
        ];
        let step = |layer: Layer, force: u8| -> Result<(f64, f64)> {
            FORCE.store(force, Ordering::Relaxed);
            let t = Instant::now();
            fwd(layer)?;
            let f = t.elapsed().as_secs_f64() * 1e3;
            let t = Instant::now();
            (fwd(layer)? * &r)?.sum_all()?.backward()?;
            let fb = t.elapsed().as_secs_f64() * 1e3;
            FORCE.store(0, Ordering::Relaxed);
            Ok((f, fb))
        };
        for _ in 0..2 {
            for &(_, layer, force) in &variants {
                step(layer, force)?;
            }
        }
        // Round-robin over the variants so that drift in machine load hits them alike.
        let mut times = vec![(Vec::new(), Vec::new()); variants.len()];
        for _ in 0..21 {
            for (&(_, layer, force), (tf, tfb)) in variants.iter().zip(times.iter_mut()) {
                let (f, fb) = step(layer, force)?;
                tf.push(f);
                tfb.push(fb);
            }
        }
        let median = |v: &mut Vec<f64>| {
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        };
        let rows: Vec<(&str, f64, f64)> = variants
            .iter()
            .zip(times.iter_mut())
            .map(|(&(name, _, _), (tf, tfb))| (name, median(tf), median(tfb)))
            .collect();
        let (_, cf, cfb) = rows[0];
        for (name, f, fb) in rows {
            println!(
                "{name:>17}: fwd {f:6.2} ms ({:5.1} GFLOP/s, {:.2}x candle), fwd+bwd {fb:6.2} ms \
                 ({:5.1} GFLOP/s, {:.2}x candle)",
                flops / f / 1e6,
                cf / f,
                (flops + bwd_flops) / fb / 1e6,
                cfb / fb
            );
        }
        Ok(())
    }

    /// GFLOP/s of the MLP's GEMMs on one thread, on two rayon threads inside
    /// gemm, and split over candle's pool in 2 or 4 blocks; then the same with
    /// a spinning thread keeping the other core busy.
    #[test]
    #[ignore = "benchmark"]
    fn bench_gemms() -> Result<()> {
        let n = 128;
        let v = |len: usize, seed: u64| -> Result<Vec<f32>> {
            rand(&[len], seed, DType::F32)?.to_vec1::<f32>()
        };
        fn mat(d: &[f32], rows: usize, cols: usize) -> Mat<'_, f32> {
            Mat {
                d,
                rows,
                cols,
                rs: cols,
                cs: 1,
            }
        }
        fn mm(
            dst: &mut [f32],
            acc: bool,
            a: Mat<f32>,
            b: Mat<f32>,
            split: Split,
            t: Threads,
        ) -> Result<()> {
            assert_eq!(dst.len(), a.rows * b.cols);
            // SAFETY: `dst` is exactly the initialised m·n output.
            unsafe { matmul(Dst(dst.as_mut_ptr()), acc, a, b, split, t) };
            Ok(())
        }
        let options = [
            ("1 thread", Threads::One),
            ("rayon 2", Threads::Rayon(2)),
            ("pool 2", Threads::Pool(2)),
            ("pool 4", Threads::Pool(4)),
        ];
        let stop = AtomicBool::new(false);
        for busy in [false, true] {
            std::thread::scope(|s| -> Result<()> {
                if busy {
                    s.spawn(|| {
                        while !stop.load(Ordering::Relaxed) {
                            std::hint::spin_loop();
                        }
                    });
                }
                for (k, m) in [(784usize, 800usize), (800, 800), (800, 10)] {
                    let (x, w, g) = (v(n * k, 1)?, v(m * k, 2)?, v(n * m, 3)?);
                    let (xm, wm, gm) = (mat(&x, n, k), mat(&w, m, k), mat(&g, n, m));
                    let (mut y, mut gx, mut gw) =
                        (vec![0f32; n * m], vec![0f32; n * k], vec![0f32; m * k]);
                    let gflops = |ms: f64| 2.0 * (n * m * k) as f64 / ms / 1e6;
                    for (name, t) in options {
                        let tf = median_ms(31, || mm(&mut y, true, xm, wm.t(), Split::Cols, t))?;
                        let tx = median_ms(31, || mm(&mut gx, false, gm, wm, Split::Cols, t))?;
                        let tw = median_ms(31, || mm(&mut gw, false, gm.t(), xm, Split::Rows, t))?;
                        println!(
                            "busy {busy:5} k{k:3} m{m:3} {name:>8}: x·Wᵀ {tf:.3} ms {:5.1} GF/s | g·W {tx:.3} ms {:5.1} | gᵀ·x {tw:.3} ms {:5.1}",
                            gflops(tf), gflops(tx), gflops(tw)
                        );
                    }
                }
                stop.store(true, Ordering::Relaxed);
                Ok(())
            })?;
        }
        Ok(())
    }

    /// Latency of an empty call to candle's worker pool after the caller was
    /// away for a while: once its worker stops spinning and parks, waking it
    /// costs what splitting a GEMM would save.
    #[test]
    #[ignore = "benchmark"]
    fn bench_pool_wake() -> Result<()> {
        let pool = candle_core::utils::barrier_pool();
        println!(
            "candle pool workers besides the caller: {}",
            pool.n_workers()
        );
        for gap_us in [0u64, 100, 1000, 1500, 2000, 3000, 5000] {
            let mut t = Vec::new();
            pool.execute_chunked(2, |r| {
                std::hint::black_box(r);
            });
            for _ in 0..51 {
                std::thread::sleep(std::time::Duration::from_micros(gap_us));
                let s = Instant::now();
                pool.execute_chunked(2, |r| {
                    std::hint::black_box(r);
                });
                t.push(s.elapsed().as_secs_f64() * 1e6);
            }
            t.sort_by(f64::total_cmp);
            println!(
                "idle {gap_us:4} us before the call: median {:6.1} us, p90 {:6.1} us, max {:6.1} us",
                t[25], t[45], t[50]
            );
        }
        Ok(())
    }
}
