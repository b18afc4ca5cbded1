//! The load-time QDQ fusion (`tinykd_runtime::fuse`) on small models
//! written here: each pattern is fused into its integer op, gives bit for
//! bit what the same graph written with QLinearConv / QLinearMatMul gives
//! (Conv, Gemm, MatMul), exactly what the literal DQ → float op → Q path
//! gives (max pooling, layout ops), or stays within one LSB of it (average
//! pooling, Add, biased Gemm); the cases the fusion must leave alone run
//! on the float path unchanged; and the arena shrinks.

// Same reason as the crate: `Error` is large by design.
#![allow(clippy::result_large_err)]

use tinykd_runtime::ops::Op;
use tinykd_runtime::planner::find_overlap;
use tinykd_runtime::{Bindings, DType, Data, DataMut, LoadOptions, Model, Session};

mod common;
use common::*;

// ---------------------------------------------------------------- writer

const F32: i64 = 1;
const U8: i64 = 2;
const I8: i64 = 3;
const I32: i64 = 6;
const I64: i64 = 7;

/// A graph under construction.
#[derive(Default)]
struct Graph {
    nodes: Vec<Vec<u8>>,
    initializers: Vec<Vec<u8>>,
    inputs: Vec<Vec<u8>>,
    outputs: Vec<Vec<u8>>,
}

impl Graph {
    fn input(mut self, name: &str, dtype: i64, dims: &[i64]) -> Self {
        self.inputs.push(value_info(name, dtype, dims));
        self
    }

    fn output(mut self, name: &str, dtype: i64, dims: &[i64]) -> Self {
        self.outputs.push(value_info(name, dtype, dims));
        self
    }

    fn init(mut self, name: &str, dtype: i64, dims: &[i64], raw: Vec<u8>) -> Self {
        let mut t = Vec::new();
        for &d in dims {
            field_varint(&mut t, 1, d);
        }
        field_varint(&mut t, 2, dtype);
        field_bytes(&mut t, 8, name.as_bytes());
        field_bytes(&mut t, 9, &raw);
        self.initializers.push(t);
        self
    }

    fn f32(self, name: &str, dims: &[i64], v: &[f32]) -> Self {
        let raw = v.iter().flat_map(|x| x.to_le_bytes()).collect();
        self.init(name, F32, dims, raw)
    }

    /// An 8-bit tensor (`dtype` I8 or U8) from values in its range.
    fn q8(self, name: &str, dtype: i64, dims: &[i64], v: &[i32]) -> Self {
        let raw = v.iter().map(|&x| x as u8).collect();
        self.init(name, dtype, dims, raw)
    }

    fn i32(self, name: &str, dims: &[i64], v: &[i32]) -> Self {
        let raw = v.iter().flat_map(|x| x.to_le_bytes()).collect();
        self.init(name, I32, dims, raw)
    }

    fn i64(self, name: &str, dims: &[i64], v: &[i64]) -> Self {
        let raw = v.iter().flat_map(|x| x.to_le_bytes()).collect();
        self.init(name, I64, dims, raw)
    }

    fn node(mut self, op: &str, inputs: &[&str], outputs: &[&str], attrs: &[Vec<u8>]) -> Self {
        let mut n = Vec::new();
        for i in inputs {
            field_bytes(&mut n, 1, i.as_bytes());
        }
        for o in outputs {
            field_bytes(&mut n, 2, o.as_bytes());
        }
        field_bytes(&mut n, 4, op.as_bytes());
        for a in attrs {
            field_bytes(&mut n, 5, a);
        }
        self.nodes.push(n);
        self
    }

    /// DequantizeLinear of `q` with parameters `p_s` / `p_z`, per axis
    /// when `axis` is given.
    fn dq(self, q: &str, p: &str, out: &str, axis: Option<i64>) -> Self {
        let (s, z) = (format!("{p}_s"), format!("{p}_z"));
        let attrs: Vec<Vec<u8>> = axis.map(|a| attr_int("axis", a)).into_iter().collect();
        self.node("DequantizeLinear", &[q, &s, &z], &[out], &attrs)
    }

    /// QuantizeLinear of `x` into `y` with `y_s` / `y_z`.
    fn q(self, x: &str, y: &str) -> Self {
        let (s, z) = (format!("{y}_s"), format!("{y}_z"));
        self.node("QuantizeLinear", &[x, &s, &z], &[y], &[])
    }

    /// Per-tensor parameters `name_s` / `name_z` of an 8-bit tensor.
    fn params(self, name: &str, dtype: i64, scale: f32, zero: i32) -> Self {
        self.f32(&format!("{name}_s"), &[], &[scale])
            .q8(&format!("{name}_z"), dtype, &[], &[zero])
    }

    fn model(&self) -> Vec<u8> {
        let mut g = Vec::new();
        for n in &self.nodes {
            field_bytes(&mut g, 1, n);
        }
        field_bytes(&mut g, 2, b"test");
        for t in &self.initializers {
            field_bytes(&mut g, 5, t);
        }
        for i in &self.inputs {
            field_bytes(&mut g, 11, i);
        }
        for o in &self.outputs {
            field_bytes(&mut g, 12, o);
        }
        let mut opset_import = Vec::new();
        field_bytes(&mut opset_import, 1, b"");
        field_varint(&mut opset_import, 2, 13);
        let mut m = Vec::new();
        field_varint(&mut m, 1, 8);
        field_bytes(&mut m, 8, &opset_import);
        field_bytes(&mut m, 7, &g);
        m
    }
}

// ---------------------------------------------------------------- running

/// Deterministic values (xorshift).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// `n` values in `lo..=hi`.
    fn ints(&mut self, n: usize, lo: i32, hi: i32) -> Vec<i32> {
        (0..n)
            .map(|_| lo + (self.next() % (hi - lo + 1) as u64) as i32)
            .collect()
    }
}

fn load(bytes: &[u8], fuse_qdq: bool) -> Box<Model<'_>> {
    let mut m = Box::new(Model::EMPTY);
    m.load_with(bytes, &Bindings::default(), LoadOptions { fuse_qdq })
        .unwrap();
    assert_eq!(find_overlap(&m), None, "plan overlaps");
    m
}

/// A typed graph input of `dtype` from values in its range.
enum Input {
    I8(Vec<i8>),
    U8(Vec<u8>),
}

impl Input {
    fn new(dtype: i64, v: &[i32]) -> Input {
        match dtype {
            I8 => Input::I8(v.iter().map(|&x| x as i8).collect()),
            _ => Input::U8(v.iter().map(|&x| x as u8).collect()),
        }
    }

    fn data(&self) -> Data<'_> {
        match self {
            Input::I8(v) => Data::I8(v),
            Input::U8(v) => Data::U8(v),
        }
    }
}

/// Runs a model with one 8-bit output, in an arena of garbage.
fn run(model: &Model<'_>, inputs: &[&Input]) -> Vec<i32> {
    let mut arena = vec![0xa5u8; model.arena_size() + 16];
    let mut session = Session::new(model, &mut arena).unwrap();
    let out = model.outputs().next().unwrap();
    let data: Vec<Data<'_>> = inputs.iter().map(|i| i.data()).collect();
    match out.dtype {
        DType::I8 => {
            let mut y = vec![0x55i8; out.len()];
            session
                .run_typed(&data, &mut [DataMut::I8(&mut y)])
                .unwrap();
            y.into_iter().map(i32::from).collect()
        }
        _ => {
            let mut y = vec![0x55u8; out.len()];
            session
                .run_typed(&data, &mut [DataMut::U8(&mut y)])
                .unwrap();
            y.into_iter().map(i32::from).collect()
        }
    }
}

/// (fraction identical, largest difference).
fn compare(a: &[i32], b: &[i32]) -> (f64, i32) {
    assert_eq!(a.len(), b.len());
    let same = a.iter().zip(b).filter(|(x, y)| x == y).count();
    let max = a.iter().zip(b).map(|(x, y)| (x - y).abs()).max();
    (same as f64 / a.len().max(1) as f64, max.unwrap_or(0))
}

/// Runs the QDQ graph fused and literally on `trials` random inputs of
/// `len` values of `dtype` (one graph input); returns the fused outputs,
/// the literal ones, and the fused model's fusion figures.
fn fused_and_literal(bytes: &[u8], dtype: i64, len: usize) -> (Vec<i32>, Vec<i32>, (usize, usize)) {
    let (fused, literal) = (load(bytes, true), load(bytes, false));
    assert_eq!(literal.qdq_fusion(), (0, 0));
    let (lo, hi) = if dtype == I8 { (-128, 127) } else { (0, 255) };
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let (mut a, mut b) = (Vec::new(), Vec::new());
    for _ in 0..8 {
        let x = Input::new(dtype, &rng.ints(len, lo, hi));
        a.extend(run(&fused, &[&x]));
        b.extend(run(&literal, &[&x]));
    }
    (a, b, fused.qdq_fusion())
}

// ---------------------------------------------------------------- Conv

#[derive(Clone, Copy, Debug, PartialEq)]
enum Act {
    None,
    Relu,
    Clip,
}

const CONV_X: [i64; 4] = [1, 3, 7, 7];
const CONV_Y: [i64; 4] = [1, 4, 4, 4];
const W_SCALES: [f32; 4] = [0.011, 0.02, 0.005, 0.015];

/// The weights, per-channel parameters and bias shared by both forms.
fn conv_params(g: Graph, dtype: i64, bias_scale: f32) -> Graph {
    let mut rng = Rng(77);
    let (xz, yz) = if dtype == I8 { (-5, 3) } else { (120, 100) };
    let bs: Vec<f32> = W_SCALES.iter().map(|&w| 0.05 * w * bias_scale).collect();
    g.params("x", dtype, 0.05, xz)
        .params("y", dtype, 0.4, yz)
        .q8("w", I8, &[4, 3, 3, 3], &rng.ints(108, -127, 127))
        .f32("w_s", &[4], &W_SCALES)
        .q8("w_z", I8, &[4], &[0, 3, -2, 1])
        .i32("b", &[4], &rng.ints(4, -3000, 3000))
        .f32("b_s", &[4], &bs)
        .i32("b_z", &[4], &[0; 4])
        .f32("lo", &[], &[0.0])
        .f32("hi", &[], &[6.0])
}

fn conv_attrs() -> Vec<Vec<u8>> {
    vec![
        attr_ints("pads", &[1, 1, 1, 1]),
        attr_ints("strides", &[2, 2]),
    ]
}

/// `act(float)` then Q into `y`, from `from`.
fn activation(g: Graph, act: Act, from: &str) -> Graph {
    match act {
        Act::None => g.q(from, "y"),
        Act::Relu => g.node("Relu", &[from], &["r"], &[]).q("r", "y"),
        Act::Clip => g.node("Clip", &[from, "lo", "hi"], &["r"], &[]).q("r", "y"),
    }
}

/// DQ(x) → Conv(·, DQ(w), DQ(b)) → act → Q.
fn conv_qdq(dtype: i64, act: Act, bias_scale: f32) -> Vec<u8> {
    let g = conv_params(Graph::default(), dtype, bias_scale)
        .input("xq", dtype, &CONV_X)
        .node("DequantizeLinear", &["xq", "x_s", "x_z"], &["xf"], &[])
        .dq("w", "w", "wf", Some(0))
        .dq("b", "b", "bf", Some(0))
        .node("Conv", &["xf", "wf", "bf"], &["c"], &conv_attrs());
    activation(g, act, "c").output("y", dtype, &CONV_Y).model()
}

/// The same with QLinearConv; the activation on DQ → act → Q after it.
fn conv_qlinear(dtype: i64, act: Act) -> Vec<u8> {
    let inputs = ["xq", "x_s", "x_z", "w", "w_s", "w_z", "y_s", "y_z", "b"];
    let g = conv_params(Graph::default(), dtype, 1.0)
        .input("xq", dtype, &CONV_X)
        .node("QLinearConv", &inputs, &["cq"], &conv_attrs());
    let g = match act {
        Act::None => g.node("Identity", &["cq"], &["y"], &[]),
        _ => activation(
            g.node("DequantizeLinear", &["cq", "y_s", "y_z"], &["cf"], &[]),
            act,
            "cf",
        ),
    };
    g.output("y", dtype, &CONV_Y).model()
}

#[test]
fn conv_matches_qlinearconv_bit_for_bit() {
    for dtype in [I8, U8] {
        for act in [Act::None, Act::Relu, Act::Clip] {
            let ctx = (dtype, act);
            let (qdq, qlinear) = (conv_qdq(dtype, act, 1.0), conv_qlinear(dtype, act));
            let (fused, reference) = (load(&qdq, true), load(&qlinear, true));
            // DQ x, DQ w, DQ b, Conv, Q: the Relu/Clip was folded into the
            // Conv before (a fused activation, counted as such).
            assert_eq!(fused.qdq_fusion(), (5, 1), "{ctx:?}");
            assert!(
                fused
                    .nodes()
                    .iter()
                    .any(|n| matches!(n.op, Op::QLinearConv(_))),
                "{ctx:?}"
            );
            assert_eq!(reference.qdq_fusion(), (0, 0), "{ctx:?}");
            let mut rng = Rng(5);
            let len = CONV_X.iter().product::<i64>() as usize;
            let (lo, hi) = if dtype == I8 { (-128, 127) } else { (0, 255) };
            let mut clamped = 0;
            for _ in 0..16 {
                let x = Input::new(dtype, &rng.ints(len, lo, hi));
                let (a, b) = (run(&fused, &[&x]), run(&reference, &[&x]));
                assert_eq!(a, b, "{ctx:?}");
                clamped += a
                    .iter()
                    .filter(|&&v| v == a.iter().copied().min().unwrap())
                    .count();
            }
            assert!(clamped > 0);
            // And within one LSB of the literal float path.
            let (fused_out, literal, _) = fused_and_literal(&qdq, dtype, len);
            let (same, max) = compare(&fused_out, &literal);
            println!(
                "conv {ctx:?} vs float path: {:.2} % identical, max {max}",
                same * 100.0
            );
            assert!(max <= 1 && same > 0.95, "{ctx:?}: {same} {max}");
        }
    }
}

#[test]
fn fused_conv_needs_a_smaller_arena() {
    let bytes = conv_qdq(I8, Act::Relu, 1.0);
    let (fused, literal) = (load(&bytes, true), load(&bytes, false));
    // No f32 x, weights, bias or Conv output: only the int8 tensors and the
    // requantization table.
    assert!(
        fused.arena_size() * 4 < literal.arena_size(),
        "{} vs {}",
        fused.arena_size(),
        literal.arena_size()
    );
    // The absorbed nodes run nothing and list no inputs.
    for n in fused.nodes().iter().filter(|n| n.op == Op::Nop) {
        assert_eq!(fused.node_inputs(n).count(), 0);
        assert!(n.output.is_none());
    }
}

// ---------------------------------------------------------------- fallbacks

#[test]
fn unmatched_patterns_stay_on_the_float_path() {
    let len = CONV_X.iter().product::<i64>() as usize;
    let check = |bytes: &[u8], why: &str| {
        let (a, b, fusion) = fused_and_literal(bytes, I8, len);
        assert_eq!(fusion, (0, 0), "{why}");
        assert_eq!(a, b, "{why}");
    };
    // A bias scale 1e-5 away from x_scale · w_scale.
    check(&conv_qdq(I8, Act::Relu, 1.00001), "bias scale");
    // A per-channel activation quantization.
    let bytes = conv_params(Graph::default(), I8, 1.0)
        .input("xq", I8, &CONV_X)
        .f32("xc_s", &[3], &[0.05, 0.06, 0.04])
        .q8("xc_z", I8, &[3], &[0, 1, 2])
        .node(
            "DequantizeLinear",
            &["xq", "xc_s", "xc_z"],
            &["xf"],
            &[attr_int("axis", 1)],
        )
        .dq("w", "w", "wf", Some(0))
        .dq("b", "b", "bf", Some(0))
        .node("Conv", &["xf", "wf", "bf"], &["c"], &conv_attrs())
        .q("c", "y")
        .output("y", I8, &CONV_Y)
        .model();
    check(&bytes, "per-channel x");
    // The Conv's float output is also a graph output.
    let bytes = conv_params(Graph::default(), I8, 1.0)
        .input("xq", I8, &CONV_X)
        .node("DequantizeLinear", &["xq", "x_s", "x_z"], &["xf"], &[])
        .dq("w", "w", "wf", Some(0))
        .node("Conv", &["xf", "wf"], &["c"], &conv_attrs())
        .q("c", "y")
        .output("y", I8, &CONV_Y)
        .output("c", F32, &CONV_Y)
        .model();
    let (fused, literal) = (load(&bytes, true), load(&bytes, false));
    assert_eq!(fused.qdq_fusion(), (0, 0), "float output read twice");
    assert_eq!(fused.arena_size(), literal.arena_size());
    // The weight is a run-time input.
    let bytes = conv_params(Graph::default(), I8, 1.0)
        .input("xq", I8, &CONV_X)
        .input("wq", I8, &[4, 3, 3, 3])
        .node("DequantizeLinear", &["xq", "x_s", "x_z"], &["xf"], &[])
        .node(
            "DequantizeLinear",
            &["wq", "w_s", "w_z"],
            &["wf"],
            &[attr_int("axis", 0)],
        )
        .node("Conv", &["xf", "wf"], &["c"], &conv_attrs())
        .q("c", "y")
        .output("y", I8, &CONV_Y)
        .model();
    let fused = load(&bytes, true);
    assert_eq!(fused.qdq_fusion(), (0, 0), "run-time weight");
}

#[test]
fn shared_weight_dequantize_stays_while_read() {
    // Two Convs read one DQ(w): the first is fused; the second's output is
    // also a graph output, so it stays float and keeps the DQ alive.
    let bytes = conv_params(Graph::default(), I8, 1.0)
        .input("xq", I8, &CONV_X)
        .node("DequantizeLinear", &["xq", "x_s", "x_z"], &["xf"], &[])
        .dq("w", "w", "wf", Some(0))
        .node("Conv", &["xf", "wf"], &["c"], &conv_attrs())
        .q("c", "y")
        .node("Conv", &["xf", "wf"], &["c2"], &conv_attrs())
        .output("y", I8, &CONV_Y)
        .output("c2", F32, &CONV_Y)
        .model();
    let fused = load(&bytes, true);
    // Conv and Q only: DQ x and DQ w still feed the float Conv.
    assert_eq!(fused.qdq_fusion(), (2, 1));
    let dqs = fused
        .nodes()
        .iter()
        .filter(|n| n.op_type == "DequantizeLinear" && n.op != Op::Nop)
        .count();
    assert_eq!(dqs, 2);
    let literal = load(&bytes, false);
    let x = Input::new(I8, &Rng(3).ints(147, -128, 127));
    let mut arena_a = vec![0u8; fused.arena_size() + 16];
    let mut arena_b = vec![0u8; literal.arena_size() + 16];
    let (mut ya, mut yb) = ([0i8; 64], [0i8; 64]);
    let (mut ca, mut cb) = ([0f32; 64], [0f32; 64]);
    Session::new(&fused, &mut arena_a)
        .unwrap()
        .run_typed(
            &[x.data()],
            &mut [DataMut::I8(&mut ya), DataMut::F32(&mut ca)],
        )
        .unwrap();
    Session::new(&literal, &mut arena_b)
        .unwrap()
        .run_typed(
            &[x.data()],
            &mut [DataMut::I8(&mut yb), DataMut::F32(&mut cb)],
        )
        .unwrap();
    assert_eq!(ca, cb);
    let (a, b): (Vec<i32>, Vec<i32>) = (
        ya.iter().map(|&v| v.into()).collect(),
        yb.iter().map(|&v| v.into()).collect(),
    );
    assert!(compare(&a, &b).1 <= 1);
}

// ---------------------------------------------------------------- Gemm / MatMul

const B_SCALES: [f32; 5] = [0.02, 0.01, 0.03, 0.015, 0.025];

fn gemm_params(g: Graph) -> Graph {
    let mut rng = Rng(11);
    let bs: Vec<f32> = B_SCALES.iter().map(|&w| 0.1 * w).collect();
    let w = rng.ints(30, -127, 127);
    // The same weights stored [N, K] (for transB) and [K, N].
    let wt: Vec<i32> = (0..30).map(|i| w[(i % 5) * 6 + i / 5]).collect();
    g.params("a", I8, 0.1, 4)
        .params("y", I8, 0.3, -7)
        .q8("w", I8, &[5, 6], &w)
        .q8("wt", I8, &[6, 5], &wt)
        .f32("w_s", &[5], &B_SCALES)
        .q8("w_z", I8, &[5], &[0; 5])
        .f32("wt_s", &[5], &B_SCALES)
        .q8("wt_z", I8, &[5], &[0; 5])
        .i32("c", &[5], &rng.ints(5, -500, 500))
        .f32("c_s", &[5], &bs)
}

#[test]
fn gemm_and_matmul_match_qlinearmatmul_bit_for_bit() {
    // Gemm (transB = 1, per-channel on axis 0), MatMul (per column), and
    // QLinearMatMul on the transposed weights.
    let gemm = gemm_params(Graph::default())
        .input("aq", I8, &[3, 6])
        .dq("aq", "a", "af", None)
        .dq("w", "w", "wf", Some(0))
        .node("Gemm", &["af", "wf"], &["g"], &[attr_int("transB", 1)])
        .q("g", "y")
        .output("y", I8, &[3, 5])
        .model();
    let matmul = gemm_params(Graph::default())
        .input("aq", I8, &[3, 6])
        .dq("aq", "a", "af", None)
        .dq("wt", "wt", "wf", Some(1))
        .node("MatMul", &["af", "wf"], &["g"], &[])
        .q("g", "y")
        .output("y", I8, &[3, 5])
        .model();
    let inputs = ["aq", "a_s", "a_z", "wt", "wt_s", "wt_z", "y_s", "y_z"];
    let qlinear = gemm_params(Graph::default())
        .input("aq", I8, &[3, 6])
        .node("QLinearMatMul", &inputs, &["y"], &[])
        .output("y", I8, &[3, 5])
        .model();
    let (g, m, q) = (load(&gemm, true), load(&matmul, true), load(&qlinear, true));
    assert_eq!(g.qdq_fusion(), (4, 1));
    assert!(g.nodes().iter().any(|n| matches!(n.op, Op::QGemm(_))));
    assert_eq!(m.qdq_fusion(), (4, 1));
    assert!(m
        .nodes()
        .iter()
        .any(|n| matches!(n.op, Op::QLinearMatMul(_))));
    let mut rng = Rng(99);
    for _ in 0..32 {
        let a = Input::new(I8, &rng.ints(18, -128, 127));
        let want = run(&q, &[&a]);
        assert_eq!(run(&g, &[&a]), want);
        assert_eq!(run(&m, &[&a]), want);
    }
}

#[test]
fn gemm_with_bias_and_relu_within_one_lsb() {
    for trans_b in [true, false] {
        let (w, axis) = if trans_b { ("w", 0) } else { ("wt", 1) };
        let bytes = gemm_params(Graph::default())
            .input("aq", I8, &[3, 6])
            .dq("aq", "a", "af", None)
            .dq(w, w, "wf", Some(axis))
            .node(
                "DequantizeLinear",
                &["c", "c_s"],
                &["cf"],
                &[attr_int("axis", 0)],
            )
            .node(
                "Gemm",
                &["af", "wf", "cf"],
                &["g"],
                &[attr_int("transB", trans_b as i64)],
            )
            .node("Relu", &["g"], &["r"], &[])
            .q("r", "y")
            .output("y", I8, &[3, 5])
            .model();
        let (a, b, fusion) = fused_and_literal(&bytes, I8, 18);
        assert_eq!(fusion, (5, 1), "transB {trans_b}");
        let (same, max) = compare(&a, &b);
        println!(
            "gemm transB {trans_b} vs float path: {:.2} % identical, max {max}",
            same * 100.0
        );
        assert!(max <= 1 && same > 0.95, "transB {trans_b}: {same} {max}");
        assert!(a.iter().all(|&v| v >= -7), "Relu clamps at the zero point");
    }
}

// ---------------------------------------------------------------- pooling, layout, Add

#[test]
fn max_pool_and_layout_ops_are_exact() {
    let bytes = Graph::default()
        .input("xq", I8, &[1, 2, 4, 6])
        .params("x", I8, 0.1, 3)
        .params("p", I8, 0.1, 3)
        .params("t", I8, 0.1, 3)
        .params("y", I8, 0.1, 3)
        .i64("shape", &[2], &[2, -1])
        .dq("xq", "x", "xf", None)
        .node(
            "MaxPool",
            &["xf"],
            &["pf"],
            &[
                attr_ints("kernel_shape", &[2, 3]),
                attr_ints("strides", &[1, 2]),
                attr_ints("pads", &[1, 0, 0, 1]),
            ],
        )
        .q("pf", "p")
        .dq("p", "p", "pf2", None)
        .node(
            "Transpose",
            &["pf2"],
            &["tf"],
            &[attr_ints("perm", &[0, 3, 1, 2])],
        )
        .q("tf", "t")
        .dq("t", "t", "tf2", None)
        .node("Reshape", &["tf2", "shape"], &["yf"], &[])
        .q("yf", "y")
        .output("y", I8, &[2, 12])
        .model();
    let (a, b, fusion) = fused_and_literal(&bytes, I8, 48);
    // Every node: 3 × (DQ, op, Q).
    assert_eq!(fusion, (9, 3));
    assert_eq!(a, b);
    // Different parameters around the MaxPool: not a layout op any more.
    let bytes = Graph::default()
        .input("xq", I8, &[1, 2, 4, 6])
        .params("x", I8, 0.1, 3)
        .params("y", I8, 0.2, 3)
        .dq("xq", "x", "xf", None)
        .node(
            "MaxPool",
            &["xf"],
            &["yf"],
            &[attr_ints("kernel_shape", &[2, 2])],
        )
        .q("yf", "y")
        .output("y", I8, &[1, 2, 3, 5])
        .model();
    let (a, b, fusion) = fused_and_literal(&bytes, I8, 48);
    assert_eq!(fusion, (0, 0));
    assert_eq!(a, b);
}

#[test]
fn average_pools_within_one_lsb() {
    let pool = |attrs: &[Vec<u8>], op: &str, out: &[i64]| {
        Graph::default()
            .input("xq", U8, &[1, 3, 5, 6])
            .params("x", U8, 0.05, 128)
            .params("y", U8, 0.03, 100)
            .dq("xq", "x", "xf", None)
            .node(op, &["xf"], &["yf"], attrs)
            .q("yf", "y")
            .output("y", U8, out)
            .model()
    };
    let k3 = || attr_ints("kernel_shape", &[3, 3]);
    let cases = [
        (pool(&[k3()], "AveragePool", &[1, 3, 3, 4]), true),
        (
            pool(
                &[
                    k3(),
                    attr_ints("pads", &[1, 1, 1, 1]),
                    attr_int("count_include_pad", 1),
                ],
                "AveragePool",
                &[1, 3, 5, 6],
            ),
            true,
        ),
        // Padding not counted: windows differ in size, stays float.
        (
            pool(
                &[k3(), attr_ints("pads", &[1, 1, 1, 1])],
                "AveragePool",
                &[1, 3, 5, 6],
            ),
            false,
        ),
        (pool(&[], "GlobalAveragePool", &[1, 3, 1, 1]), true),
    ];
    for (i, (bytes, fuses)) in cases.iter().enumerate() {
        let (a, b, fusion) = fused_and_literal(bytes, U8, 90);
        let want = if *fuses { (3, 1) } else { (0, 0) };
        assert_eq!(fusion, want, "case {i}");
        let (same, max) = compare(&a, &b);
        println!(
            "average pool case {i} vs float path: {:.2} % identical, max {max}",
            same * 100.0
        );
        assert!(max <= 1 && same > 0.95, "case {i}: {same} {max}");
    }
}

#[test]
fn add_with_broadcast_within_one_lsb() {
    let mut rng = Rng(21);
    let bytes = Graph::default()
        .input("aq", I8, &[1, 4, 3, 3])
        .params("a", I8, 0.07, -3)
        .params("b", I8, 0.02, 10)
        .params("y", I8, 0.09, 1)
        .q8("b", I8, &[1, 4, 1, 1], &rng.ints(4, -128, 127))
        .dq("aq", "a", "af", None)
        .dq("b", "b", "bf", None)
        .node("Add", &["af", "bf"], &["yf"], &[])
        .q("yf", "y")
        .output("y", I8, &[1, 4, 3, 3])
        .model();
    let (a, b, fusion) = fused_and_literal(&bytes, I8, 36);
    assert_eq!(fusion, (4, 1));
    let (same, max) = compare(&a, &b);
    println!(
        "add vs float path: {:.2} % identical, max {max}",
        same * 100.0
    );
    assert!(max <= 1 && same > 0.95, "{same} {max}");
}
