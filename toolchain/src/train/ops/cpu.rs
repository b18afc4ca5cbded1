//! CPU execution helpers shared by the training ops: the element trait and
//! storage access, dtype dispatch, the bias-gradient op, and splitting work
//! over candle's worker pool.

use candle_core::backend::BackendStorage;
use candle_core::{
    bail, CpuStorage, CustomOp1, CustomOp2, CustomOp3, DType, Layout, Result, Shape, Tensor,
};
use std::ops::Range;
use std::sync::Mutex;

/// Float element the training ops run on (f32 for training, f64 for gradient checks).
pub trait Elem:
    Copy
    + Send
    + Sync
    + Default
    + PartialOrd
    + 'static
    + std::ops::Add<Output = Self>
    + std::ops::Mul<Output = Self>
    + std::ops::AddAssign
{
    /// Additive identity.
    const ZERO: Self;
    /// Multiplicative identity.
    const ONE: Self;
    /// `self * a + b`, fused when `FMA` (only pass true inside an FMA-enabled function).
    fn madd<const FMA: bool>(self, a: Self, b: Self) -> Self;
    /// All of `storage`'s elements if it holds this type.
    fn slice(storage: &CpuStorage) -> Result<&[Self]>;
    /// The contiguous slice behind `layout` if `storage` holds this type.
    fn view<'a>(storage: &'a CpuStorage, layout: &Layout) -> Result<&'a [Self]> {
        let v = Self::slice(storage)?;
        match layout.contiguous_offsets() {
            Some((a, b)) => Ok(&v[a..b]),
            None => bail!("tinykd ops need contiguous inputs"),
        }
    }
    /// Wraps a vector as candle CPU storage.
    fn wrap(v: Vec<Self>) -> CpuStorage;
}

macro_rules! impl_elem {
    ($t:ty, $variant:ident) => {
        impl Elem for $t {
            const ZERO: Self = 0.0;
            const ONE: Self = 1.0;
            #[inline(always)]
            fn madd<const FMA: bool>(self, a: Self, b: Self) -> Self {
                // Without the fma target feature mul_add is a slow libm call.
                if FMA {
                    self.mul_add(a, b)
                } else {
                    self * a + b
                }
            }
            fn slice(storage: &CpuStorage) -> Result<&[Self]> {
                match storage {
                    CpuStorage::$variant(v) => Ok(v),
                    _ => bail!("expected {} storage", stringify!($t)),
                }
            }
            fn wrap(v: Vec<Self>) -> CpuStorage {
                CpuStorage::$variant(v)
            }
        }
    };
}
impl_elem!(f32, F32);
impl_elem!(f64, F64);

/// True when the running CPU has AVX2 and FMA, so the fused kernels may run.
pub fn has_fma() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Threads to use for `items` independent items costing about `flops` in all.
pub fn threads_for(items: usize, flops: usize) -> usize {
    // Below ~1 MFLOP handing work to another thread costs more than it saves.
    let by_work = (flops / 1_000_000).max(1);
    candle_core::utils::get_num_threads()
        .min(items)
        .min(by_work)
        .max(1)
}

/// Splits `0..items` into `threads` contiguous ranges, hands each its slice of
/// `out` (`item_len` values per item), and returns the per-range results in
/// order. Runs on candle's persistent worker pool: spawning threads costs
/// 40–400 µs on a small VM, and candle's own ops have just woken that pool.
pub fn split<T: Send, R: Send>(
    out: &mut [T],
    item_len: usize,
    items: usize,
    threads: usize,
    f: impl Fn(Range<usize>, &mut [T]) -> R + Sync,
) -> Vec<R> {
    let threads = threads.clamp(1, items.max(1));
    if threads == 1 {
        return vec![f(0..items, out)];
    }
    let per = items.div_ceil(threads);
    let mut jobs = Vec::with_capacity(threads);
    let (mut rest, mut start) = (out, 0);
    while start < items {
        let end = (start + per).min(items);
        let (mine, tail) = std::mem::take(&mut rest).split_at_mut((end - start) * item_len);
        rest = tail;
        jobs.push(Mutex::new(Some((start..end, mine))));
        start = end;
    }
    let results: Vec<Mutex<Option<R>>> = jobs.iter().map(|_| Mutex::new(None)).collect();
    candle_core::utils::barrier_pool().execute_chunked(jobs.len(), |range| {
        for j in range {
            let (r, o) = jobs[j]
                .lock()
                .expect("job lock")
                .take()
                .expect("job taken once");
            let v = f(r, o);
            *results[j].lock().expect("result lock") = Some(v);
        }
    });
    results
        .into_iter()
        .map(|m| m.into_inner().expect("result lock").expect("job ran"))
        .collect()
}

/// Runs `$body` with `$t` bound to the element type of `$dtype` (f32 or f64).
macro_rules! by_dtype {
    ($dtype:expr, $t:ident => $body:expr) => {
        match $dtype {
            candle_core::DType::F32 => {
                type $t = f32;
                $body
            }
            candle_core::DType::F64 => {
                type $t = f64;
                $body
            }
            dt => candle_core::bail!("tinykd conv ops: unsupported dtype {dt:?}"),
        }
    };
}
pub(crate) use by_dtype;

/// `gy [B, C, OH, OW] → gb [C]`: the gradient of a per-channel bias.
pub struct BiasGrad;

impl CustomOp1 for BiasGrad {
    fn name(&self) -> &'static str {
        "tinykd-bias-grad"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let (b, c) = (l.dims()[0], l.dims()[1]);
        let n = (l.shape().elem_count() / (b * c).max(1)).max(1);
        by_dtype!(s.dtype(), T => {
            let mut gb = vec![T::ZERO; c];
            for (i, row) in T::view(s, l)?.chunks_exact(n).enumerate() {
                gb[i % c] += sum(row);
            }
            Ok((T::wrap(gb), Shape::from(c)))
        })
    }
}

/// Sum with sixteen partial sums, so the loop vectorises without fast-math.
#[inline(always)]
pub fn sum<T: Elem>(v: &[T]) -> T {
    let mut acc = [T::ZERO; 16];
    let mut it = v.chunks_exact(16);
    for c in &mut it {
        acc.iter_mut().zip(c).for_each(|(a, x)| *a += *x);
    }
    it.remainder().iter().for_each(|x| acc[0] += *x);
    acc.iter().fold(T::ZERO, |a, x| a + *x)
}

/// Sums per-thread partial results elementwise (empty input gives `len` zeros).
pub fn sum_parts<T: Elem>(parts: Vec<Vec<T>>, len: usize) -> Vec<T> {
    let mut parts = parts.into_iter();
    let mut total = parts.next().unwrap_or_else(|| vec![T::ZERO; len]);
    for part in parts {
        total.iter_mut().zip(part).for_each(|(a, p)| *a += p);
    }
    total
}

/// `(storage, layout)` of one op argument.
pub type Arg<'a> = (&'a CpuStorage, &'a Layout);

/// Gradients of a conv op's inputs `(x, w, bias)`, each `None` where that
/// input is not tracked (or absent).
pub type Grads = (Option<Tensor>, Option<Tensor>, Option<Tensor>);

/// The CPU kernels of a conv op; [`KernelOp`] wraps one as the candle custom
/// ops with and without a fused bias, with their backward passes.
pub trait ConvKernel: Send + Sync + 'static {
    /// Op names without and with a fused bias.
    fn names(&self) -> (&'static str, &'static str);
    /// `(x, w, bias) → y`.
    fn forward(&self, x: Arg, w: Arg, bias: Option<Arg>) -> Result<(CpuStorage, Shape)>;
    /// The gradients from the inputs, the output `y` and its gradient `gy`.
    fn grads(
        &self,
        x: &Tensor,
        w: &Tensor,
        bias: Option<&Tensor>,
        y: &Tensor,
        gy: &Tensor,
    ) -> Result<Grads>;
}

/// A [`ConvKernel`] as a two-input op (no bias) or three-input op (fused bias).
pub struct KernelOp<K>(pub K);

impl<K: ConvKernel> CustomOp2 for KernelOp<K> {
    fn name(&self) -> &'static str {
        self.0.names().0
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        self.0.forward((s1, l1), (s2, l2), None)
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        res: &Tensor,
        gy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (gx, gw, _) = self.0.grads(x, w, None, res, gy)?;
        Ok((gx, gw))
    }
}

impl<K: ConvKernel> CustomOp3 for KernelOp<K> {
    fn name(&self) -> &'static str {
        self.0.names().1
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        self.0.forward((s1, l1), (s2, l2), Some((s3, l3)))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        bias: &Tensor,
        res: &Tensor,
        gy: &Tensor,
    ) -> Result<Grads> {
        self.0.grads(x, w, Some(bias), res, gy)
    }
}

/// Checks what every conv op here needs (CPU, f32 or f64 alike, a bias of
/// `channels` values), makes the inputs contiguous and applies `op`, as a
/// two-input op or, with a bias, a three-input one.
pub fn apply_conv<O>(
    name: &str,
    x: &Tensor,
    w: &Tensor,
    bias: Option<&Tensor>,
    channels: usize,
    op: O,
) -> Result<Tensor>
where
    O: CustomOp2 + CustomOp3 + Send + Sync + 'static,
{
    if !x.device().is_cpu() || !w.device().is_cpu() {
        bail!("{name}: tinykd's op is CPU-only");
    }
    if x.dtype() != w.dtype() || !matches!(x.dtype(), DType::F32 | DType::F64) {
        bail!(
            "{name}: need f32 or f64 for both, got {:?} and {:?}",
            x.dtype(),
            w.dtype()
        );
    }
    let (x, w) = (x.contiguous()?, w.contiguous()?);
    match bias {
        None => x.apply_op2(&w, op),
        Some(b) if b.dims() == [channels] && b.dtype() == x.dtype() => {
            x.apply_op3(&w, &b.contiguous()?, op)
        }
        Some(b) => bail!(
            "{name}: bias must be [{channels}] {:?}, got {:?} {:?}",
            x.dtype(),
            b.shape(),
            b.dtype()
        ),
    }
}
