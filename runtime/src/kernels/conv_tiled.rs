//! Stride-1 convolution as a one-dimensional convolution over padded,
//! flattened planes: the Conv fast path of the SIMD paths.
//!
//! Each input channel of a group is copied once into a zero-bordered plane,
//! `hp × wp` (the input with its pads), rows laid end to end. Output
//! (oy, ox) reads tap (ky, kx) at flat position `oy·wp + ox + ky·dh·wp +
//! kx·dw`, the same offset for every output, so 16 consecutive flat
//! positions are two vector loads per tap with no border cases. Positions
//! whose column falls in the right pad are computed and dropped: a
//! `(wp − out_w)/wp` waste (2/16 on a padded 14-wide map, none for a 1×1
//! conv, whose plane is one long row). A tile keeps [`BLOCK`] output channels
//! × 16 positions in registers across every input channel and tap, where the
//! direct kernel's row axpy reloaded and stored its output row for each
//! (channel, tap) pair.
//!
//! The int8 conv (QLinearConv) runs the same loop on `x − zx` and `w − zw`
//! as floats where that is exact: when no output's `Σ |w − zw| · max|x −
//! zx|` reaches 2^24, every partial sum is an integer f32 represents
//! exactly, adds and FMAs included, so the int32 sum (and the requantized
//! output) is the integer reference's bit for bit, at float SIMD speed.
//!
//! The planes live in a stack buffer of [`BUFFER`] floats; a group with more
//! channels than fit is done in chunks of channels, the partial sums going
//! through the output. Strided convs, planes larger than the buffer and
//! kernels with more than [`MAX_TAPS`] taps are left to the direct kernel.
//! The inner loop runs over a table of the chunk's (channel, tap) read
//! offsets with the weights in the same order, so a 1×1 conv pays no
//! per-channel setup for its single tap.

use core::mem::MaybeUninit;
use core::ops::Range;

use super::generic::activation::Activation;
use super::generic::conv::ConvGeometry;
use super::lanes::F32x8;
use crate::quant::{FloatStage, OutputStage, QElem};

/// Floats in the stack buffer that holds the padded planes (80 KiB: 64
/// padded 14×14 planes, so a 64-channel int8 layer fits at once).
pub const BUFFER: usize = 20 * 1024;
/// Most taps (`kernel_h · kernel_w`) the tiled path takes.
pub const MAX_TAPS: usize = 64;
/// Most (channel, tap) pairs in one chunk: the offset table's length.
const MAX_PAIRS: usize = 1024;
/// Flat positions per tile: two vectors of eight.
const TILE: usize = 16;
/// Output channels per tile.
const BLOCK: usize = 4;

/// Where the padded planes of one geometry put things.
#[derive(Clone, Copy, Debug)]
struct Planes {
    /// Padded row width, the flat row stride.
    wp: usize,
    /// Padded plane height.
    hp: usize,
    /// Floats per channel: the plane plus a tile of zeros, so that every
    /// tap of the last tile reads inside the channel.
    stride: usize,
    /// Flat positions up to the last output: `(out_h − 1)·wp + out_w`.
    positions: usize,
    /// Channels per chunk of the buffer.
    chunk: usize,
    /// Number of taps.
    taps: usize,
    /// Flat offset of each (channel, tap) pair of a chunk from the chunk's
    /// start, `c·stride + ky·dh·wp + kx·dw`, in weight order.
    offsets: [u32; MAX_PAIRS],
}

impl Planes {
    /// The layout for `g`, or None where the geometry is not for this path.
    fn new(g: &ConvGeometry) -> Option<Self> {
        let taps = g.kernel_h * g.kernel_w;
        let cin_g = g.in_channels / g.groups.max(1);
        if (g.stride_h, g.stride_w) != (1, 1)
            || taps == 0
            || taps > MAX_TAPS
            || cin_g == 0
            || g.out_h == 0
            || g.out_w == 0
        {
            return None;
        }
        // With stride 1 the padded extent is exactly what the outputs read.
        let wp = g.out_w - 1 + g.dilation_w * (g.kernel_w - 1) + 1;
        let hp = g.out_h - 1 + g.dilation_h * (g.kernel_h - 1) + 1;
        let stride = hp.checked_mul(wp)?.checked_add(TILE)?;
        let chunk = (BUFFER / stride).min(MAX_PAIRS / taps).min(cin_g);
        if chunk == 0 || wp < g.pad_left || hp < g.pad_top {
            return None;
        }
        let mut offsets = [0; MAX_PAIRS];
        for (i, o) in offsets[..chunk * taps].iter_mut().enumerate() {
            let (c, t) = (i / taps, i % taps);
            let (ky, kx) = (t / g.kernel_w, t % g.kernel_w);
            // < chunk·stride ≤ BUFFER, so it fits u32.
            *o = (c * stride + ky * g.dilation_h * wp + kx * g.dilation_w) as u32;
        }
        Some(Planes {
            wp,
            hp,
            stride,
            positions: (g.out_h - 1) * wp + g.out_w,
            chunk,
            taps,
            offsets,
        })
    }

    /// Copies the input planes `x` (whole channels) into `buf` as
    /// `value(x)`, padded with zeros, and returns the filled part.
    #[inline(always)]
    fn fill<'b, T: Copy>(
        &self,
        g: &ConvGeometry,
        x: &[T],
        value: impl Fn(T) -> f32,
        buf: &'b mut [MaybeUninit<f32>],
    ) -> &'b [f32] {
        let plane_in = g.in_h * g.in_w;
        let channels = x.len() / plane_in.max(1);
        let buf = &mut buf[..channels * self.stride];
        buf.fill(MaybeUninit::new(0.0));
        // Rows and columns past the padded extent are never read.
        let rows = g.in_h.min(self.hp - g.pad_top);
        let cols = g.in_w.min(self.wp - g.pad_left);
        for (dst, plane) in buf
            .chunks_exact_mut(self.stride)
            .zip(x.chunks_exact(plane_in))
        {
            for (iy, row) in plane.chunks_exact(g.in_w).take(rows).enumerate() {
                let at = (iy + g.pad_top) * self.wp + g.pad_left;
                for (d, &v) in dst[at..at + cols].iter_mut().zip(row) {
                    *d = MaybeUninit::new(value(v));
                }
            }
        }
        // SAFETY: every element of `buf` was written by the fill above, and
        // MaybeUninit<f32> has f32's layout.
        unsafe { core::slice::from_raw_parts(buf.as_ptr().cast::<f32>(), buf.len()) }
    }
}

/// The runs of lanes of one tile that hold outputs, found once per tile
/// and shared by every output channel: (first lane, length, index of the
/// first output in the plane).
#[derive(Clone, Copy)]
struct Runs {
    count: usize,
    runs: [(u8, u8, u32); TILE],
}

impl Runs {
    /// The runs of tile q0.
    #[inline(always)]
    fn of(p: &Planes, out_w: usize, q0: usize) -> Self {
        let mut r = Runs {
            count: 0,
            runs: [(0, 0, 0); TILE],
        };
        let end = (q0 + TILE).min(p.positions);
        let mut q = q0;
        while q < end {
            let (oy, ox) = (q / p.wp, q % p.wp);
            if ox >= out_w {
                // A pad column: skip to the next row.
                q = (oy + 1) * p.wp;
                continue;
            }
            let run_end = end.min(oy * p.wp + out_w);
            // At most one run per lane, so `count` stays below TILE.
            r.runs[r.count] = (
                (q - q0) as u8,
                (run_end - q) as u8,
                (oy * out_w + ox) as u32,
            );
            r.count += 1;
            q = run_end;
        }
        r
    }

    /// (lanes, first output index) of each run.
    #[inline(always)]
    fn iter(&self) -> impl Iterator<Item = (Range<usize>, usize)> + '_ {
        self.runs[..self.count].iter().map(|&(start, len, i)| {
            let start = usize::from(start);
            (start..start + usize::from(len), i as usize)
        })
    }
}

/// Channels `[start, end)` as blocks (first channel, size): [`BLOCK`]
/// at a time, then one at a time.
fn blocks(start: usize, end: usize) -> impl Iterator<Item = (usize, usize)> {
    let full = start + (end - start) / BLOCK * BLOCK;
    (start..full)
        .step_by(BLOCK)
        .map(|c| (c, BLOCK))
        .chain((full..end).map(|c| (c, 1)))
}

/// Adds tile `q0` of `B` output channels into `acc`. x: padded planes,
/// output b's starting `b·x_step` floats in (0 when all outputs read the
/// same planes, a plane's stride for depthwise); pairs: the (channel, tap)
/// offsets to sum over; w: the outputs' weights for those pairs, in the
/// same order, output b's at `b·w_step`.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn accumulate<V: F32x8, const B: usize>(
    p: &Planes,
    x: &[f32],
    x_step: usize,
    pairs: &[u32],
    w: &[f32],
    w_step: usize,
    q0: usize,
    acc: &mut [[V; 2]; B],
) {
    let channels = pairs.len().div_ceil(p.taps);
    assert!(q0 < p.positions && pairs.len() <= p.chunk * p.taps);
    assert!((B - 1) * x_step + channels * p.stride <= x.len());
    assert!((B - 1) * w_step + pairs.len() <= w.len());
    let xq = x[q0..].as_ptr();
    for (k, &off) in pairs.iter().enumerate() {
        if x_step == 0 {
            // SAFETY: q0 + off + 16 ≤ (c + 1)·stride for the pair's channel
            // c < channels (see `Planes::stride`), inside x (asserted above).
            let (x0, x1) = unsafe {
                let at = xq.add(off as usize);
                (V::load(at), V::load(at.add(8)))
            };
            for (b, acc) in acc.iter_mut().enumerate() {
                // SAFETY: b·w_step + k < w.len() (asserted above).
                let wv = V::splat(unsafe { *w.get_unchecked(b * w_step + k) });
                acc[0] = acc[0].mul_add(x0, wv);
                acc[1] = acc[1].mul_add(x1, wv);
            }
        } else {
            for (b, acc) in acc.iter_mut().enumerate() {
                // SAFETY: as above, b·x_step further on, which x holds.
                let (x0, x1) = unsafe {
                    let at = xq.add(b * x_step + off as usize);
                    (V::load(at), V::load(at.add(8)))
                };
                // SAFETY: b·w_step + k < w.len() (asserted above).
                let wv = V::splat(unsafe { *w.get_unchecked(b * w_step + k) });
                acc[0] = acc[0].mul_add(x0, wv);
                acc[1] = acc[1].mul_add(x1, wv);
            }
        }
    }
}

/// One chunk of input channels of the f32 conv against blocks of outputs.
struct Pass<'a> {
    planes: &'a Planes,
    /// First input channel of the chunk, within its group.
    c0: usize,
    /// Whether the chunk starts the sums (from the bias) and ends them
    /// (activation applied).
    first: bool,
    last: bool,
    out_w: usize,
    act: Activation,
}

impl Pass<'_> {
    /// [`Self::block_of`] for `b` ([`BLOCK`] or 1) output channels.
    #[allow(clippy::too_many_arguments)]
    #[inline(always)]
    fn block<V: F32x8>(
        &self,
        b: usize,
        x: &[f32],
        x_step: usize,
        channels: usize,
        w: &[f32],
        kernel_len: usize,
        bias: Option<&[f32]>,
        y: &mut [f32],
    ) {
        if b == BLOCK {
            self.block_of::<V, BLOCK>(x, x_step, channels, w, kernel_len, bias, y);
        } else {
            self.block_of::<V, 1>(x, x_step, channels, w, kernel_len, bias, y);
        }
    }

    /// `B` output channels over every tile: x, x_step as for [`accumulate`],
    /// `channels` planes summed into each output; w: the outputs' whole
    /// filters, `kernel_len` apart; bias: theirs; y: their output planes.
    #[allow(clippy::too_many_arguments)]
    #[inline(always)]
    fn block_of<V: F32x8, const B: usize>(
        &self,
        x: &[f32],
        x_step: usize,
        channels: usize,
        w: &[f32],
        kernel_len: usize,
        bias: Option<&[f32]>,
        y: &mut [f32],
    ) {
        let p = self.planes;
        let plane_out = y.len() / B;
        let pairs = &p.offsets[..channels * p.taps];
        let w = &w[self.c0 * p.taps..];
        for q0 in (0..p.positions).step_by(TILE) {
            let runs = Runs::of(p, self.out_w, q0);
            let mut acc = [[V::splat(0.0); 2]; B];
            for (b, acc) in acc.iter_mut().enumerate() {
                let mut start = [0.0; TILE];
                if self.first {
                    start = [bias.map_or(0.0, |bias| bias[b]); TILE];
                } else {
                    let yb = &y[b * plane_out..][..plane_out];
                    for (lanes, i) in runs.iter() {
                        start[lanes.clone()].copy_from_slice(&yb[i..i + lanes.len()]);
                    }
                }
                // SAFETY: `start` holds 16 floats.
                *acc = unsafe { [V::load(start.as_ptr()), V::load(start.as_ptr().add(8))] };
            }
            accumulate::<V, B>(p, x, x_step, pairs, w, kernel_len, q0, &mut acc);
            let relu = self.last && self.act == Activation::Relu;
            let act = if self.last && !relu {
                self.act
            } else {
                Activation::None
            };
            for (b, acc) in acc.iter().enumerate() {
                let acc = if relu { acc.map(V::relu) } else { *acc };
                let yb = &mut y[b * plane_out..][..plane_out];
                if p.wp == self.out_w && q0 + TILE <= p.positions {
                    // No pad columns (1×1 convs): the tile is 16 outputs in a row.
                    let at = &mut yb[q0..q0 + TILE];
                    // SAFETY: `at` holds 16 floats.
                    unsafe {
                        acc[0].store(at.as_mut_ptr());
                        acc[1].store(at.as_mut_ptr().add(8));
                    }
                    if act != Activation::None {
                        act.apply_slice(at);
                    }
                    continue;
                }
                let mut out = spill(acc);
                if act != Activation::None {
                    act.apply_slice(&mut out);
                }
                for (lanes, i) in runs.iter() {
                    copy_run::<V>(&out[lanes.clone()], &mut yb[i..i + lanes.len()]);
                }
            }
        }
    }
}

/// The 16 lanes of a tile as an array.
#[inline(always)]
fn spill<V: F32x8>(acc: [V; 2]) -> [f32; TILE] {
    let mut out = [0.0; TILE];
    // SAFETY: `out` holds 16 floats.
    unsafe {
        acc[0].store(out.as_mut_ptr());
        acc[1].store(out.as_mut_ptr().add(8));
    }
    out
}

/// `dst.copy_from_slice(src)` for the at most 16 floats of a run, without
/// the call into `memcpy` a variable-length copy becomes: two overlapping
/// vector moves from 8 floats up, a fixed-trip loop below.
#[inline(always)]
fn copy_run<V: F32x8>(src: &[f32], dst: &mut [f32]) {
    let len = src.len().min(dst.len());
    debug_assert!(len <= TILE);
    if len >= 8 {
        // SAFETY: 8 ≤ len, so [0, 8) and [len − 8, len) lie in both slices.
        unsafe {
            V::load(src.as_ptr()).store(dst.as_mut_ptr());
            V::load(src.as_ptr().add(len - 8)).store(dst.as_mut_ptr().add(len - 8));
        }
    } else {
        for j in 0..8 {
            if j < len {
                dst[j] = src[j];
            }
        }
    }
}

/// [`conv2d_f32`](super::generic::conv::conv2d_f32) on padded planes with
/// lanes `V`; returns false, having written nothing, where the geometry is
/// not for this path (strided, too large, no input channels).
#[inline(always)]
pub fn conv2d_f32<V: F32x8>(
    g: &ConvGeometry,
    x: &[f32],
    w: &[f32],
    bias: Option<&[f32]>,
    act: Activation,
    y: &mut [f32],
) -> bool {
    let Some(planes) = Planes::new(g) else {
        return false;
    };
    let plane_in = g.in_h * g.in_w;
    let plane_out = g.out_h * g.out_w;
    let cin_g = g.in_channels / g.groups;
    let cout_g = g.out_channels / g.groups;
    let kernel_len = cin_g * planes.taps;
    let mut buf = [MaybeUninit::<f32>::uninit(); BUFFER];
    let depthwise = cin_g == 1 && cout_g == 1;
    for n in 0..g.batch {
        let xn = &x[n * g.in_channels * plane_in..][..g.in_channels * plane_in];
        let yn = &mut y[n * g.out_channels * plane_out..][..g.out_channels * plane_out];
        if depthwise {
            // Channel c is group c: a chunk of planes is a chunk of groups,
            // and a block of outputs reads one plane each.
            let chunk = BUFFER / planes.stride;
            for c0 in (0..g.in_channels).step_by(chunk) {
                let c1 = (c0 + chunk).min(g.in_channels);
                let xb = planes.fill(g, &xn[c0 * plane_in..c1 * plane_in], |v| v, &mut buf);
                let pass = Pass {
                    planes: &planes,
                    c0: 0,
                    first: true,
                    last: true,
                    out_w: g.out_w,
                    act,
                };
                for (c, b) in blocks(c0, c1) {
                    let x = &xb[(c - c0) * planes.stride..];
                    let w = &w[c * planes.taps..][..b * planes.taps];
                    let bias = bias.map(|bias| &bias[c..c + b]);
                    let y = &mut yn[c * plane_out..][..b * plane_out];
                    pass.block::<V>(b, x, planes.stride, 1, w, planes.taps, bias, y);
                }
            }
            continue;
        }
        for group in 0..g.groups {
            let xg = &xn[group * cin_g * plane_in..][..cin_g * plane_in];
            for c0 in (0..cin_g).step_by(planes.chunk) {
                let c1 = (c0 + planes.chunk).min(cin_g);
                let xb = planes.fill(g, &xg[c0 * plane_in..c1 * plane_in], |v| v, &mut buf);
                let pass = Pass {
                    planes: &planes,
                    c0,
                    first: c0 == 0,
                    last: c1 == cin_g,
                    out_w: g.out_w,
                    act,
                };
                for (oc, b) in blocks(group * cout_g, (group + 1) * cout_g) {
                    let w = &w[oc * kernel_len..][..b * kernel_len];
                    let bias = bias.map(|bias| &bias[oc..oc + b]);
                    let y = &mut yn[oc * plane_out..][..b * plane_out];
                    pass.block::<V>(b, xb, 0, c1 - c0, w, kernel_len, bias, y);
                }
            }
        }
    }
    true
}

/// What the int8 conv's blocks share. (A struct with `#[inline(always)]`
/// methods rather than a closure: closures do not inherit the caller's
/// `#[target_feature]`, so the lanes' intrinsics would not inline.)
struct Int8Block<'a, W, Y: QElem> {
    planes: &'a Planes,
    out_w: usize,
    kernel_len: usize,
    w: &'a [W],
    zw: &'a [W],
    /// 1 for one zero point per output channel, 0 for one in all.
    zw_step: usize,
    out: &'a OutputStage<'a, Y>,
}

impl<W: QElem, Y: QElem> Int8Block<'_, W, Y> {
    /// Output channels `[oc, oc + b)` (b is 1 or [`BLOCK`]) reading planes
    /// x (x_step apart, as for [`accumulate`]) over `pairs`, into their
    /// output planes y; wf holds their weights as floats.
    #[allow(clippy::too_many_arguments)]
    #[inline(always)]
    fn run<V: F32x8>(
        &self,
        oc: usize,
        b: usize,
        x: &[f32],
        x_step: usize,
        pairs: &[u32],
        wf: &mut [f32],
        y: &mut [Y],
    ) {
        let k_len = self.kernel_len;
        let filters = &self.w[oc * k_len..][..b * k_len];
        for (j, (dst, filter)) in wf
            .chunks_exact_mut(k_len)
            .zip(filters.chunks_exact(k_len))
            .enumerate()
        {
            let z = self.zw[(oc + j) * self.zw_step].to_i32();
            for (d, &v) in dst.iter_mut().zip(filter) {
                *d = (v.to_i32() - z) as f32;
            }
        }
        let plane_out = y.len() / b;
        let mut stages = [None; BLOCK];
        for (j, s) in stages[..b].iter_mut().enumerate() {
            *s = self.out.float_channel(oc + j);
        }
        for q0 in (0..self.planes.positions).step_by(TILE) {
            let runs = Runs::of(self.planes, self.out_w, q0);
            if b == BLOCK {
                let mut acc = [[V::splat(0.0); 2]; BLOCK];
                accumulate::<V, BLOCK>(self.planes, x, x_step, pairs, wf, k_len, q0, &mut acc);
                for (j, acc) in acc.into_iter().enumerate() {
                    let plane = &mut y[j * plane_out..][..plane_out];
                    self.emit(oc + j, stages[j], &runs, acc, plane);
                }
            } else {
                let mut acc = [[V::splat(0.0); 2]; 1];
                accumulate::<V, 1>(self.planes, x, x_step, pairs, wf, k_len, q0, &mut acc);
                self.emit(oc, stages[0], &runs, acc[0], y);
            }
        }
    }

    /// Requantizes the sums of a tile of output channel oc into its plane,
    /// by its f64 stage where it has one (vectorized; the same results).
    #[inline(always)]
    fn emit<V: F32x8>(
        &self,
        oc: usize,
        stage: Option<FloatStage>,
        runs: &Runs,
        acc: [V; 2],
        plane: &mut [Y],
    ) {
        let sums = spill(acc);
        // All 16 lanes in one fixed-length loop (the pad-column lanes are
        // dropped below). The sums are integers below 2^24 in magnitude.
        let mut values = [Y::default(); TILE];
        if let Some(stage) = stage {
            for (v, &s) in values.iter_mut().zip(&sums) {
                *v = Y::from_i32_saturating(stage.finish(s));
            }
        } else {
            for (v, &s) in values.iter_mut().zip(&sums) {
                *v = self.out.finish(s as i32, oc);
            }
        }
        for (lanes, i) in runs.iter() {
            for (o, &v) in plane[i..i + lanes.len()].iter_mut().zip(&values[lanes]) {
                *o = v;
            }
        }
    }
}

/// Magnitude below which integer-valued f32 sums are exact.
const EXACT: u64 = 1 << 24;

/// [`conv2d_i8_requant`](super::generic::conv_i8::conv2d_i8_requant) on
/// padded planes in exact f32 arithmetic (see the module notes); returns
/// false, having written nothing, where the geometry is not for this path
/// or a sum could reach 2^24 (or a group's channels do not fit the buffer at
/// once: int8 outputs cannot carry partial sums).
#[allow(clippy::too_many_arguments)]
#[inline(always)]
pub fn conv2d_i8_requant<V: F32x8, X: QElem, W: QElem, Y: QElem>(
    g: &ConvGeometry,
    x: &[X],
    zx: X,
    w: &[W],
    zw: &[W],
    out: &OutputStage<'_, Y>,
    y: &mut [Y],
) -> bool {
    let Some(planes) = Planes::new(g) else {
        return false;
    };
    let cin_g = g.in_channels / g.groups;
    let cout_g = g.out_channels / g.groups;
    let kernel_len = cin_g * planes.taps;
    let depthwise = cin_g == 1 && cout_g == 1;
    if planes.chunk < cin_g || !(zw.len() == 1 || zw.len() == g.out_channels) {
        return false;
    }
    let zx = zx.to_i32();
    let x_max = (zx - X::MIN).max(X::MAX - zx) as u64;
    for (oc, filter) in w.chunks_exact(kernel_len).take(g.out_channels).enumerate() {
        let z = zw[if zw.len() == 1 { 0 } else { oc }].to_i32();
        let l1: u64 = filter
            .iter()
            .map(|&v| (v.to_i32() - z).unsigned_abs() as u64)
            .sum();
        if l1 * x_max >= EXACT {
            return false;
        }
    }
    let plane_in = g.in_h * g.in_w;
    let plane_out = g.out_h * g.out_w;
    let mut buf = [MaybeUninit::<f32>::uninit(); BUFFER];
    let mut wf = [0.0f32; BLOCK * MAX_PAIRS];
    let zw_step = (zw.len() > 1) as usize;
    let block = Int8Block {
        planes: &planes,
        out_w: g.out_w,
        kernel_len,
        w,
        zw,
        zw_step,
        out,
    };
    for n in 0..g.batch {
        let xn = &x[n * g.in_channels * plane_in..][..g.in_channels * plane_in];
        let yn = &mut y[n * g.out_channels * plane_out..][..g.out_channels * plane_out];
        let value = |v: X| (v.to_i32() - zx) as f32;
        if depthwise {
            let chunk = BUFFER / planes.stride;
            for c0 in (0..g.in_channels).step_by(chunk) {
                let c1 = (c0 + chunk).min(g.in_channels);
                let xb = planes.fill(g, &xn[c0 * plane_in..c1 * plane_in], value, &mut buf);
                for (c, b) in blocks(c0, c1) {
                    let x = &xb[(c - c0) * planes.stride..];
                    let pairs = &planes.offsets[..planes.taps];
                    let y = &mut yn[c * plane_out..][..b * plane_out];
                    block.run::<V>(c, b, x, planes.stride, pairs, &mut wf, y);
                }
            }
            continue;
        }
        for group in 0..g.groups {
            let xg = &xn[group * cin_g * plane_in..][..cin_g * plane_in];
            let xb = planes.fill(g, xg, value, &mut buf);
            let pairs = &planes.offsets[..kernel_len];
            for (oc, b) in blocks(group * cout_g, (group + 1) * cout_g) {
                let y = &mut yn[oc * plane_out..][..b * plane_out];
                block.run::<V>(oc, b, xb, 0, pairs, &mut wf, y);
            }
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::super::generic::conv::conv2d_f32 as direct;
    use super::super::lanes::Scalar;
    use super::*;
    use proptest::prelude::*;

    /// Deterministic values in [-1, 1).
    fn fill(seed: u64, n: usize) -> Vec<f32> {
        super::super::check::fill_f32(seed, n)
    }

    /// The tiled kernel with lanes `V` equals the direct kernel within
    /// float rounding; returns whether the tiled path took the geometry.
    fn check(
        g: &ConvGeometry,
        run: impl Fn(&ConvGeometry, &[f32], &[f32], Option<&[f32]>, Activation, &mut [f32]) -> bool,
        act: Activation,
        seed: u64,
    ) -> bool {
        let cin_g = g.in_channels / g.groups;
        let x = fill(seed, g.batch * g.in_channels * g.in_h * g.in_w);
        let w = fill(
            seed ^ 0xabcdef,
            g.out_channels * cin_g * g.kernel_h * g.kernel_w,
        );
        let bias = fill(seed ^ 0x1234, g.out_channels);
        let len = g.batch * g.out_channels * g.out_h * g.out_w;
        let (mut want, mut got) = (vec![f32::NAN; len], vec![f32::NAN; len]);
        direct(g, &x, &w, Some(&bias), act, &mut want);
        if !run(g, &x, &w, Some(&bias), act, &mut got) {
            return false;
        }
        let depth = (cin_g * g.kernel_h * g.kernel_w) as f32;
        for (i, (a, b)) in got.iter().zip(&want).enumerate() {
            assert!(
                (a - b).abs() <= 1e-5 * depth.max(1.0),
                "{g:?} at {i}: {a} vs {b}"
            );
        }
        true
    }

    fn geometry(
        c: [usize; 3],
        hw: [usize; 2],
        k: [usize; 2],
        d: [usize; 2],
        pads: [usize; 4],
    ) -> ConvGeometry {
        let [groups, cin_g, cout_g] = c;
        let span = [d[0] * (k[0] - 1) + 1, d[1] * (k[1] - 1) + 1];
        ConvGeometry {
            batch: 2,
            in_channels: groups * cin_g,
            in_h: hw[0],
            in_w: hw[1],
            out_channels: groups * cout_g,
            out_h: (hw[0] + pads[0] + pads[2]).saturating_sub(span[0] - 1),
            out_w: (hw[1] + pads[1] + pads[3]).saturating_sub(span[1] - 1),
            kernel_h: k[0],
            kernel_w: k[1],
            stride_h: 1,
            stride_w: 1,
            dilation_h: d[0],
            dilation_w: d[1],
            pad_top: pads[0],
            pad_left: pads[1],
            groups,
        }
    }

    #[test]
    fn model_shapes_match_the_direct_kernel() {
        let lanes =
            |g: &ConvGeometry, x: &[f32], w: &[f32], b: Option<&[f32]>, a, y: &mut [f32]| {
                conv2d_f32::<Scalar>(g, x, w, b, a, y)
            };
        // The DS-CNN student's and the CNN teacher's convs, then chunked
        // channels (64 planes of 30×30 do not fit the buffer at once).
        let shapes = [
            geometry([1, 1, 32], [28, 28], [3, 3], [1, 1], [1; 4]),
            geometry([32, 1, 1], [14, 14], [3, 3], [1, 1], [1; 4]),
            geometry([1, 32, 64], [14, 14], [1, 1], [1, 1], [0; 4]),
            geometry([1, 64, 128], [7, 7], [1, 1], [1, 1], [0; 4]),
            geometry([1, 64, 128], [14, 14], [3, 3], [1, 1], [1; 4]),
            geometry([1, 64, 6], [28, 28], [3, 3], [1, 1], [1; 4]),
        ];
        for (i, g) in shapes.iter().enumerate() {
            assert!(check(g, lanes, Activation::Relu, i as u64));
            // The paths with a lane type (AVX2, NEON) must take these shapes.
            let took = check(
                g,
                super::super::conv2d_f32_tiled,
                Activation::Relu,
                i as u64,
            );
            let has_lanes = cfg!(any(target_arch = "x86_64", target_arch = "aarch64"))
                && super::super::simd_path() != "scalar";
            assert_eq!(took, has_lanes, "{g:?}");
        }
    }

    #[test]
    fn channels_go_in_blocks_of_four_then_one_by_one() {
        let got: Vec<_> = blocks(3, 13).collect();
        assert_eq!(got, [(3, 4), (7, 4), (11, 1), (12, 1)]);
        assert_eq!(blocks(5, 5).count(), 0);
        assert_eq!(blocks(0, 4).collect::<Vec<_>>(), [(0, 4)]);
    }

    #[test]
    fn strided_and_oversized_geometries_are_left_to_the_direct_kernel() {
        let mut g = geometry([1, 2, 2], [8, 8], [3, 3], [1, 1], [1; 4]);
        g.stride_w = 2;
        g.out_w = 4;
        assert!(Planes::new(&g).is_none());
        let big = geometry([1, 1, 1], [200, 200], [3, 3], [1, 1], [1; 4]);
        assert!(Planes::new(&big).is_none());
        let wide = geometry([1, 1, 1], [16, 16], [9, 9], [1, 1], [4; 4]);
        assert!(Planes::new(&wide).is_none());
        // 1×1 over 2,000 channels: chunks of at most MAX_PAIRS channels.
        let deep = geometry([1, 2000, 1], [2, 2], [1, 1], [1, 1], [0; 4]);
        assert_eq!(
            Planes::new(&deep).map(|p| p.chunk),
            Some(MAX_PAIRS.min(BUFFER / 20))
        );
    }

    /// The int8 tiled kernel (lanes `Scalar`, and this build's SIMD path)
    /// against the direct integer kernel, bit for bit; returns whether the
    /// tiled path took the geometry.
    fn check_i8<X: QElem, W: QElem, Y: QElem>(
        g: &ConvGeometry,
        seed: u64,
        per_channel: bool,
    ) -> bool {
        use crate::quant::Requant;
        let q = |seed: u64, n: usize| -> Vec<i32> {
            super::super::check::fill_i8(seed, n)
                .iter()
                .map(|&v| i32::from(v))
                .collect()
        };
        let cin_g = g.in_channels / g.groups;
        let x: Vec<X> = q(seed, g.batch * g.in_channels * g.in_h * g.in_w)
            .iter()
            .map(|&v| X::from_i32_saturating(v - 128 + X::MAX))
            .collect();
        let w: Vec<W> = q(seed ^ 7, g.out_channels * cin_g * g.kernel_h * g.kernel_w)
            .iter()
            .map(|&v| W::from_i32_saturating(v / 2))
            .collect();
        let zx = X::from_i32_saturating(X::MIN + 77);
        let zw: Vec<W> = (0..if per_channel { g.out_channels } else { 1 })
            .map(|c| W::from_i32_saturating(c as i32 % 5))
            .collect();
        let bias = q(seed ^ 9, g.out_channels)
            .iter()
            .map(|&v| v * 100)
            .collect::<Vec<_>>();
        let requant: Vec<Requant> = (0..g.out_channels)
            .map(|c| Requant::from_scale(0.0007 * (1.0 + c as f64 / 7.0)).unwrap())
            .collect();
        let out = OutputStage {
            bias: Some(&bias),
            ..OutputStage::new(&requant, Y::from_i32_saturating(3))
        };
        let len = g.batch * g.out_channels * g.out_h * g.out_w;
        let mut want = vec![Y::default(); len];
        crate::kernels::generic::conv_i8::conv2d_i8_requant(g, &x, zx, &w, &zw, &out, &mut want);
        let mut got = vec![Y::default(); len];
        let took = conv2d_i8_requant::<Scalar, X, W, Y>(g, &x, zx, &w, &zw, &out, &mut got);
        if took {
            assert!(got == want, "{g:?}");
        }
        let mut simd = vec![Y::default(); len];
        if super::super::conv2d_i8_requant_tiled(g, &x, zx, &w, &zw, &out, &mut simd) {
            assert!(simd == want, "{g:?} (SIMD)");
        }
        took
    }

    #[test]
    fn int8_model_shapes_match_the_direct_kernel_bit_for_bit() {
        let shapes = [
            geometry([1, 1, 32], [28, 28], [3, 3], [1, 1], [1; 4]),
            geometry([32, 1, 1], [14, 14], [3, 3], [1, 1], [1; 4]),
            geometry([1, 32, 64], [14, 14], [1, 1], [1, 1], [0; 4]),
            geometry([1, 64, 128], [7, 7], [1, 1], [1, 1], [0; 4]),
            geometry([1, 64, 12], [14, 14], [3, 3], [1, 1], [1; 4]),
        ];
        for (i, g) in shapes.iter().enumerate() {
            assert!(check_i8::<i8, i8, i8>(g, i as u64, true), "{g:?} not taken");
            assert!(
                check_i8::<u8, u8, u8>(g, i as u64, false),
                "{g:?} not taken"
            );
        }
    }

    #[test]
    fn int8_sums_that_could_reach_2_pow_24_are_left_to_the_direct_kernel() {
        // 64·9 taps of |w − zw| = 255 against |x − zx| ≤ 204 can sum past 2^24.
        let g = geometry([1, 64, 4], [14, 14], [3, 3], [1, 1], [1; 4]);
        let n = 64 * 9 * 4;
        let (x, w, zw) = (vec![0i8; 64 * 196 * 2], vec![127i8; n], [-128i8]);
        let requant = [crate::quant::Requant::from_scale(1e-6).unwrap()];
        let out = OutputStage::new(&requant, 0i8);
        let mut y = vec![0i8; 2 * 4 * 196];
        assert!(!conv2d_i8_requant::<Scalar, i8, i8, i8>(
            &g, &x, -77, &w, &zw, &out, &mut y
        ));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn matches_the_direct_kernel(
            c in [1usize..=3, 1usize..=6, 1usize..=9], h in 1usize..=12, w in 1usize..=12,
            k in [1usize..=3, 1usize..=3], d in [1usize..=2, 1usize..=2],
            pads in [0usize..=2, 0usize..=2, 0usize..=2, 0usize..=2],
            a in 0usize..3, seed in any::<u64>(),
        ) {
            let g = geometry(c, [h, w], k, d, pads);
            prop_assume!(g.out_h > 0 && g.out_w > 0);
            let act = [Activation::None, Activation::Relu, Activation::Sigmoid][a];
            let lanes = |g: &ConvGeometry, x: &[f32], w: &[f32], b: Option<&[f32]>, a, y: &mut [f32]| {
                conv2d_f32::<Scalar>(g, x, w, b, a, y)
            };
            prop_assert!(check(&g, lanes, act, seed));
            check(&g, super::super::conv2d_f32_tiled, act, seed);
            check_i8::<i8, i8, i8>(&g, seed, a == 0);
            check_i8::<u8, i8, u8>(&g, seed, a == 1);
        }
    }
}
