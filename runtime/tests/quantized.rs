//! Typed (int8/uint8/int32) tensors and the quantized ONNX ops, on small
//! models written here with a minimal ONNX protobuf writer: QuantizeLinear,
//! DequantizeLinear, QLinearConv, QLinearMatMul, ConvInteger and
//! MatMulInteger per tensor and per channel, typed graph inputs and outputs
//! through `run_typed`, typed intermediates between f32 graph I/O, the
//! layout ops on int8, and the cases rejected at load.

// Same reason as the crate: `Error` is large by design.
#![allow(clippy::result_large_err)]

use tinykd_runtime::planner::find_overlap;
use tinykd_runtime::{Data, DataMut, Error, Model, Session};

mod common;
use common::*;

// ---------------------------------------------------------------- writer

const F32: i64 = 1;
const U8: i64 = 2;
const I8: i64 = 3;
const I32: i64 = 6;
const I64: i64 = 7;
const FLOAT8E4M3FN: i64 = 17;

/// A tensor whose elements sit in the typed `int32_data` field (packed
/// varints), as int8/uint8/int32 tensors may be stored.
fn tensor_int32_data(name: &str, dtype: i64, dims: &[i64], values: &[i64]) -> Vec<u8> {
    let mut t = Vec::new();
    for &d in dims {
        field_varint(&mut t, 1, d);
    }
    field_varint(&mut t, 2, dtype);
    let mut packed = Vec::new();
    for &v in values {
        varint(&mut packed, v as u64);
    }
    field_bytes(&mut t, 5, &packed);
    field_bytes(&mut t, 8, name.as_bytes());
    t
}

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

    fn init(mut self, t: Vec<u8>) -> Self {
        self.initializers.push(t);
        self
    }

    fn f32(self, name: &str, dims: &[i64], v: &[f32]) -> Self {
        self.init(tensor(name, F32, dims, &le(v, f32::to_le_bytes)))
    }

    fn i8(self, name: &str, dims: &[i64], v: &[i8]) -> Self {
        self.init(tensor(name, I8, dims, &le(v, i8::to_le_bytes)))
    }

    fn u8(self, name: &str, dims: &[i64], v: &[u8]) -> Self {
        self.init(tensor(name, U8, dims, v))
    }

    fn i32(self, name: &str, dims: &[i64], v: &[i32]) -> Self {
        self.init(tensor(name, I32, dims, &le(v, i32::to_le_bytes)))
    }

    fn i64(self, name: &str, dims: &[i64], v: &[i64]) -> Self {
        self.init(tensor(name, I64, dims, &le(v, i64::to_le_bytes)))
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

    fn model(&self, opset: i64) -> Vec<u8> {
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
        field_varint(&mut opset_import, 2, opset);
        let mut m = Vec::new();
        field_varint(&mut m, 1, 8);
        field_bytes(&mut m, 8, &opset_import);
        field_bytes(&mut m, 7, &g);
        m
    }
}

// ---------------------------------------------------------------- running

/// Parses, checks the plan and runs with typed buffers, twice, in arenas of
/// two fill patterns (the outputs must not depend on them).
fn run(bytes: &[u8], inputs: &[Data<'_>], outputs: &mut [DataMut<'_>]) -> Result<(), Error> {
    let model = Model::parse(bytes)?;
    assert_eq!(find_overlap(&model), None, "plan overlaps");
    let mut first: Option<Vec<String>> = None;
    for fill in [0x00u8, 0xa5] {
        let mut arena = vec![fill; model.arena_size() + 16];
        let mut session = Session::new(&model, &mut arena)?;
        session.run_typed(inputs, outputs)?;
        let got: Vec<String> = outputs.iter().map(|o| format!("{o:?}")).collect();
        if let Some(f) = &first {
            assert_eq!(f, &got, "outputs depend on the arena's contents");
        }
        first = Some(got);
    }
    Ok(())
}

fn parse_err(bytes: &[u8]) -> Error {
    match Model::parse(bytes) {
        Ok(_) => panic!("model was accepted"),
        Err(e) => e,
    }
}

/// The node error's value name, for rejection tests.
fn err_value(e: &Error) -> String {
    match e {
        Error::Node { value, .. } | Error::DType { value, .. } => value.to_string(),
        other => panic!("not a node or type error: {other}"),
    }
}

// ---------------------------------------------------------------- references

/// Round half to even.
fn rint(v: f64) -> f64 {
    let f = v.floor();
    match v - f {
        d if d < 0.5 => f,
        d if d > 0.5 => f + 1.0,
        _ if f % 2.0 == 0.0 => f,
        _ => f + 1.0,
    }
}

/// TFLite's single-rounding fixed-point requantization of `acc` by `real`,
/// written out independently of the runtime: frexp, a Q31 multiplier
/// rounded half away from zero, then one rounding of the product (ties up).
fn tflite_requant(acc: i32, real: f32) -> i64 {
    let bits = f64::from(real).to_bits();
    let exp = ((bits >> 52) & 0x7ff) as i64 - 1022;
    let q = f64::from_bits((bits & !(0x7ff << 52)) | (1022 << 52));
    let (mut m, mut shift) = ((q * (1u64 << 31) as f64).round() as i64, exp);
    if m == 1 << 31 {
        m /= 2;
        shift += 1;
    }
    // One rounding of acc · m · 2^shift / 2^31, ties towards +∞, in i128.
    let total = 31 - shift;
    let v = (i128::from(acc) * i128::from(m) + (1i128 << (total - 1))).div_euclid(1i128 << total);
    v as i64
}

/// The ONNX reference: `rint(acc · real + zero_point)` in f64, clamped.
fn float_requant(acc: i32, real: f32, zero_point: i32, lo: i32, hi: i32) -> i32 {
    (rint(f64::from(acc) * f64::from(real) + f64::from(zero_point)) as i32).clamp(lo, hi)
}

// ---------------------------------------------------------------- Quantize / Dequantize

#[test]
fn quantize_per_tensor_uint8_rounds_half_to_even_and_saturates() {
    let m = Graph::default()
        .input("x", F32, &[8])
        .f32("s", &[], &[2.0])
        .u8("zp", &[], &[128])
        .node("QuantizeLinear", &["x", "s", "zp"], &["y"], &[])
        .output("y", U8, &[8])
        .model(13);
    let x = [0.0, 2.0, 3.0, 1000.0, -254.0, -1000.0, 5.0, 7.0];
    let mut y = [0u8; 8];
    run(&m, &[Data::F32(&x)], &mut [DataMut::U8(&mut y)]).unwrap();
    // x / 2 = 0, 1, 1.5, 500, -127, -500, 2.5, 3.5 → 0, 1, 2, 500, -127,
    // -500, 2, 4, + 128, saturated.
    assert_eq!(y, [128, 129, 130, 255, 1, 0, 130, 132]);
}

#[test]
fn quantize_per_axis_int8() {
    let m = Graph::default()
        .input("x", F32, &[1, 3, 2])
        .f32("s", &[3], &[1.0, 2.0, 4.0])
        .i8("zp", &[3], &[0, 10, -10])
        .node(
            "QuantizeLinear",
            &["x", "s", "zp"],
            &["y"],
            &[attr_int("axis", 1)],
        )
        .output("y", I8, &[1, 3, 2])
        .model(13);
    let x = [1.5, -2.5, 3.0, 5.0, 10.0, -600.0];
    let mut y = [0i8; 6];
    run(&m, &[Data::F32(&x)], &mut [DataMut::I8(&mut y)]).unwrap();
    assert_eq!(y, [2, -2, 12, 12, -8, -128]);
}

#[test]
fn quantize_default_and_output_dtype() {
    // No zero point: uint8 with zero point 0.
    let m = Graph::default()
        .input("x", F32, &[3])
        .f32("s", &[], &[1.0])
        .node("QuantizeLinear", &["x", "s"], &["y"], &[])
        .output("y", U8, &[3])
        .model(13);
    let mut y = [9u8; 3];
    run(
        &m,
        &[Data::F32(&[-1.0, 0.4, 300.0])],
        &mut [DataMut::U8(&mut y)],
    )
    .unwrap();
    assert_eq!(y, [0, 0, 255]);
    // Opset 21: output_dtype = int8 without a zero point.
    let m = Graph::default()
        .input("x", F32, &[2])
        .f32("s", &[], &[1.0])
        .node(
            "QuantizeLinear",
            &["x", "s"],
            &["y"],
            &[attr_int("output_dtype", I8)],
        )
        .output("y", I8, &[2])
        .model(21);
    let mut y = [0i8; 2];
    run(&m, &[Data::F32(&[-1.5, 200.0])], &mut [DataMut::I8(&mut y)]).unwrap();
    assert_eq!(y, [-2, 127]);
}

#[test]
fn dequantize_uint8_int8_per_axis_and_int32() {
    let m = Graph::default()
        .input("x", U8, &[4])
        .f32("s", &[], &[2.0])
        .u8("zp", &[], &[128])
        .node("DequantizeLinear", &["x", "s", "zp"], &["y"], &[])
        .output("y", F32, &[4])
        .model(10);
    let mut y = [0f32; 4];
    run(
        &m,
        &[Data::U8(&[0, 3, 128, 255])],
        &mut [DataMut::F32(&mut y)],
    )
    .unwrap();
    assert_eq!(y, [-256.0, -250.0, 0.0, 254.0]);

    let m = Graph::default()
        .input("x", I8, &[1, 2, 2])
        .f32("s", &[2], &[0.5, 0.25])
        .i8("zp", &[2], &[1, -1])
        .node("DequantizeLinear", &["x", "s", "zp"], &["y"], &[])
        .output("y", F32, &[1, 2, 2])
        .model(19);
    let mut y = [9f32; 4];
    run(&m, &[Data::I8(&[1, 3, -1, 7])], &mut [DataMut::F32(&mut y)]).unwrap();
    assert_eq!(y, [0.0, 1.0, 0.0, 2.0]);

    let m = Graph::default()
        .input("x", I32, &[3])
        .f32("s", &[], &[0.5])
        .node("DequantizeLinear", &["x", "s"], &["y"], &[])
        .output("y", F32, &[3])
        .model(13);
    let mut y = [9f32; 3];
    run(
        &m,
        &[Data::I32(&[10, -4, i32::MAX])],
        &mut [DataMut::F32(&mut y)],
    )
    .unwrap();
    assert_eq!(y, [5.0, -2.0, i32::MAX as f32 * 0.5]);
}

/// Float graph inputs and outputs around int8 intermediates: the f32 `run`
/// works unchanged, and Pad, MaxPool, Concat, Transpose, Flatten move int8
/// values exactly.
#[test]
fn int8_intermediates_between_float_graph_io() {
    let m = Graph::default()
        .input("x", F32, &[1, 1, 2, 2])
        .f32("s", &[], &[0.5])
        .i8("zp", &[], &[0])
        .i64("pads", &[8], &[0, 0, 1, 0, 0, 0, 0, 0])
        .i8("fill", &[], &[-7])
        .node("QuantizeLinear", &["x", "s", "zp"], &["q"], &[])
        .node("Pad", &["q", "pads", "fill"], &["p"], &[])
        .node(
            "MaxPool",
            &["p"],
            &["mp"],
            &[attr_ints("kernel_shape", &[2, 2])],
        )
        .node("Concat", &["mp", "mp"], &["c"], &[attr_int("axis", 1)])
        .node(
            "Transpose",
            &["c"],
            &["t"],
            &[attr_ints("perm", &[0, 1, 3, 2])],
        )
        .node("Flatten", &["t"], &["f"], &[])
        .node("DequantizeLinear", &["f", "s", "zp"], &["y"], &[])
        .output("y", F32, &[1, 4])
        .model(13);
    let model = Model::parse(&m).unwrap();
    assert_eq!(find_overlap(&model), None);
    let mut arena = vec![0u8; model.arena_size() + 16];
    let mut session = Session::new(&model, &mut arena).unwrap();
    let mut y = [0f32; 4];
    // q = rint(x / 0.5) = [0, 3, -1, 5]; padded with a row of -7 on top:
    // [-7, -7, 0, 3, -1, 5]; 2×2 max, stride 1: [3, 5]; concatenated: [3,
    // 5, 3, 5]; dequantized: × 0.5.
    session
        .run(&[&[0.2, 1.3, -0.7, 2.6]], &mut [&mut y])
        .unwrap();
    assert_eq!(y, [1.5, 2.5, 1.5, 2.5]);
}

// ---------------------------------------------------------------- QLinearMatMul

/// Naive int32 matrix product with zero points; `zb` one or per column.
fn naive_matmul(
    m: usize,
    k: usize,
    n: usize,
    a: &[i32],
    za: i32,
    b: &[i32],
    zb: &[i32],
) -> Vec<i32> {
    let mut y = vec![0; m * n];
    for i in 0..m {
        for j in 0..n {
            let z = if zb.len() == 1 { zb[0] } else { zb[j] };
            y[i * n + j] = (0..k)
                .map(|p| (a[i * k + p] - za) * (b[p * n + j] - z))
                .sum();
        }
    }
    y
}

#[test]
fn qlinear_matmul_per_column_uint8_int8() {
    let (m, k, n) = (2, 3, 4);
    let a: Vec<u8> = vec![0, 255, 17, 128, 3, 200];
    let b: Vec<i8> = vec![-128, 127, 5, -5, 0, 1, 99, -77, 33, -33, 64, -64];
    let (a_s, a_z) = (0.02f32, 130u8);
    let b_s = [0.01f32, 0.02, 0.005, 0.03];
    let b_z = [0i8, 3, -3, 1];
    let (y_s, y_z) = (0.05f32, 100u8);
    let g = Graph::default()
        .input("a", U8, &[2, 3])
        .input("b", I8, &[3, 4])
        .f32("a_s", &[], &[a_s])
        .u8("a_z", &[], &[a_z])
        .f32("b_s", &[4], &b_s)
        .i8("b_z", &[4], &b_z)
        .f32("y_s", &[], &[y_s])
        .u8("y_z", &[], &[y_z])
        .node(
            "QLinearMatMul",
            &["a", "a_s", "a_z", "b", "b_s", "b_z", "y_s", "y_z"],
            &["y"],
            &[],
        )
        .output("y", U8, &[2, 4]);
    let mut y = [0u8; 8];
    run(
        &g.model(21),
        &[Data::U8(&a), Data::I8(&b)],
        &mut [DataMut::U8(&mut y)],
    )
    .unwrap();
    let ai: Vec<i32> = a.iter().map(|&v| v.into()).collect();
    let bi: Vec<i32> = b.iter().map(|&v| v.into()).collect();
    let bz: Vec<i32> = b_z.iter().map(|&v| v.into()).collect();
    let acc = naive_matmul(m, k, n, &ai, a_z.into(), &bi, &bz);
    for (i, (&got, &acc)) in y.iter().zip(&acc).enumerate() {
        let real = a_s * b_s[i % n] / y_s;
        let want = (tflite_requant(acc, real) + i64::from(y_z)).clamp(0, 255);
        assert_eq!(i64::from(got), want, "element {i}");
        let spec = float_requant(acc, real, y_z.into(), 0, 255);
        assert!(
            (i32::from(got) - spec).abs() <= 1,
            "element {i}: {got} vs {spec}"
        );
    }
}

#[test]
fn qlinear_matmul_batched_int8_broadcasts_b() {
    let (m, k, n) = (2, 3, 2);
    let a: Vec<i8> = (0..12).map(|v| (v * 23 - 128) as i8).collect();
    let b: Vec<i8> = vec![1, -2, 3, -4, 5, -6];
    let g = Graph::default()
        .input("a", I8, &[2, 2, 3])
        .input("b", I8, &[3, 2])
        .f32("a_s", &[1], &[0.1])
        .i8("a_z", &[1], &[-3])
        .f32("b_s", &[1], &[0.2])
        .i8("b_z", &[1], &[0])
        .f32("y_s", &[1], &[0.3])
        .i8("y_z", &[1], &[5])
        .node(
            "QLinearMatMul",
            &["a", "a_s", "a_z", "b", "b_s", "b_z", "y_s", "y_z"],
            &["y"],
            &[],
        )
        .output("y", I8, &[2, 2, 2]);
    let mut y = [0i8; 8];
    run(
        &g.model(10),
        &[Data::I8(&a), Data::I8(&b)],
        &mut [DataMut::I8(&mut y)],
    )
    .unwrap();
    let real = 0.1f32 * 0.2 / 0.3;
    let bi: Vec<i32> = b.iter().map(|&v| v.into()).collect();
    for batch in 0..2 {
        let ai: Vec<i32> = a[batch * 6..][..6].iter().map(|&v| v.into()).collect();
        let acc = naive_matmul(m, k, n, &ai, -3, &bi, &[0]);
        for (j, &acc) in acc.iter().enumerate() {
            let want = (tflite_requant(acc, real) + 5).clamp(-128, 127);
            assert_eq!(
                i64::from(y[batch * 4 + j]),
                want,
                "batch {batch} element {j}"
            );
        }
    }
}

/// The fixed-point requantization rounds once, ties towards +∞ (TFLite's
/// single rounding), where the ONNX reference rounds half to even: they
/// differ on exact ties only. With a multiplier of 0.375 an accumulator of
/// 1 gives 0 on both (double rounding would give 1); with 0.5 the tie 0.5
/// goes to 1 here and to 0 in the reference. This pins both.
#[test]
fn fixed_point_requant_differs_from_the_float_reference_on_ties_only() {
    let run_with = |scale: f32| {
        let g = Graph::default()
            .input("a", I8, &[1, 1])
            .f32("a_s", &[], &[scale])
            .i8("z", &[], &[0])
            .i8("b", &[1, 1], &[1])
            .f32("one", &[], &[1.0])
            .node(
                "QLinearMatMul",
                &["a", "a_s", "z", "b", "one", "z", "one", "z"],
                &["y"],
                &[],
            )
            .output("y", I8, &[1, 1]);
        let mut y = [0i8; 1];
        run(&g.model(10), &[Data::I8(&[1])], &mut [DataMut::I8(&mut y)]).unwrap();
        y[0]
    };
    assert_eq!(float_requant(1, 0.375, 0, -128, 127), 0);
    assert_eq!(run_with(0.375), 0);
    assert_eq!(float_requant(1, 0.5, 0, -128, 127), 0);
    assert_eq!(run_with(0.5), 1);
}

// ---------------------------------------------------------------- QLinearConv / ConvInteger

/// Naive NCHW convolution with zero points (zw one or per output channel),
/// stride 1, symmetric padding `pad`, `groups` groups.
#[allow(clippy::too_many_arguments)]
fn naive_conv(
    x: &[i32],
    (c, h, w): (usize, usize, usize),
    zx: i32,
    wt: &[i32],
    (m, kh, kw): (usize, usize, usize),
    zw: &[i32],
    pad: usize,
    groups: usize,
) -> (Vec<i32>, usize, usize) {
    let (oh, ow) = (h + 2 * pad + 1 - kh, w + 2 * pad + 1 - kw);
    let (cg, mg) = (c / groups, m / groups);
    let mut y = vec![0; m * oh * ow];
    for oc in 0..m {
        let z = if zw.len() == 1 { zw[0] } else { zw[oc] };
        let g = oc / mg;
        for oy in 0..oh {
            for ox in 0..ow {
                let mut s = 0;
                for ic in 0..cg {
                    for ky in 0..kh {
                        for kx in 0..kw {
                            let (iy, ix) = (
                                (oy + ky) as isize - pad as isize,
                                (ox + kx) as isize - pad as isize,
                            );
                            if iy < 0 || ix < 0 || iy >= h as isize || ix >= w as isize {
                                continue;
                            }
                            let xv = x[((g * cg + ic) * h + iy as usize) * w + ix as usize];
                            let wv = wt[((oc * cg + ic) * kh + ky) * kw + kx];
                            s += (xv - zx) * (wv - z);
                        }
                    }
                }
                y[(oc * oh + oy) * ow + ox] = s;
            }
        }
    }
    (y, oh, ow)
}

fn pattern_u8(n: usize, seed: u32) -> Vec<u8> {
    (0..n as u32)
        .map(|i| ((i * 97 + seed * 31) % 256) as u8)
        .collect()
}

fn pattern_i8(n: usize, seed: u32) -> Vec<i8> {
    pattern_u8(n, seed).into_iter().map(|v| v as i8).collect()
}

#[test]
fn qlinear_conv_per_channel_with_bias() {
    let x = pattern_u8(2 * 4 * 4, 1);
    let w = pattern_i8(3 * 2 * 3 * 3, 2);
    let w_s = [0.01f32, 0.002, 0.03];
    let w_z = [0i8, 0, 0];
    let bias = [1000i32, -2000, 7];
    let (x_s, x_z, y_s, y_z) = (0.05f32, 120u8, 0.4f32, 10u8);
    let g = Graph::default()
        .input("x", U8, &[1, 2, 4, 4])
        .f32("x_s", &[], &[x_s])
        .u8("x_z", &[], &[x_z])
        .i8("w", &[3, 2, 3, 3], &w)
        .f32("w_s", &[3], &w_s)
        .i8("w_z", &[3], &w_z)
        .f32("y_s", &[], &[y_s])
        .u8("y_z", &[], &[y_z])
        .i32("bias", &[3], &bias)
        .node(
            "QLinearConv",
            &["x", "x_s", "x_z", "w", "w_s", "w_z", "y_s", "y_z", "bias"],
            &["y"],
            &[attr_ints("pads", &[1, 1, 1, 1])],
        )
        .output("y", U8, &[1, 3, 4, 4]);
    let mut y = [0u8; 48];
    run(&g.model(10), &[Data::U8(&x)], &mut [DataMut::U8(&mut y)]).unwrap();
    let xi: Vec<i32> = x.iter().map(|&v| v.into()).collect();
    let wi: Vec<i32> = w.iter().map(|&v| v.into()).collect();
    let (acc, _, _) = naive_conv(&xi, (2, 4, 4), x_z.into(), &wi, (3, 3, 3), &[0], 1, 1);
    let mut off_by_one = 0;
    for (i, (&got, &acc)) in y.iter().zip(&acc).enumerate() {
        let c = i / 16;
        let acc = acc + bias[c];
        let real = x_s * w_s[c] / y_s;
        let want = (tflite_requant(acc, real) + i64::from(y_z)).clamp(0, 255);
        assert_eq!(i64::from(got), want, "element {i}");
        let spec = float_requant(acc, real, y_z.into(), 0, 255);
        assert!((i32::from(got) - spec).abs() <= 1);
        off_by_one += usize::from(i32::from(got) != spec);
    }
    assert!(
        off_by_one <= 4,
        "{off_by_one} outputs differ from the float reference"
    );
}

#[test]
fn qlinear_conv_depthwise_int8_per_tensor() {
    let x = pattern_i8(2 * 3 * 3, 3);
    let w = pattern_i8(2 * 2 * 2, 4);
    let g = Graph::default()
        .input("x", I8, &[1, 2, 3, 3])
        .input("w", I8, &[2, 1, 2, 2])
        .f32("x_s", &[], &[0.1])
        .i8("x_z", &[], &[-5])
        .f32("w_s", &[], &[0.01])
        .i8("w_z", &[], &[2])
        .f32("y_s", &[], &[0.2])
        .i8("y_z", &[], &[-1])
        .node(
            "QLinearConv",
            &["x", "x_s", "x_z", "w", "w_s", "w_z", "y_s", "y_z"],
            &["y"],
            &[attr_int("group", 2)],
        )
        .output("y", I8, &[1, 2, 2, 2]);
    let mut y = [0i8; 8];
    run(
        &g.model(10),
        &[Data::I8(&x), Data::I8(&w)],
        &mut [DataMut::I8(&mut y)],
    )
    .unwrap();
    let xi: Vec<i32> = x.iter().map(|&v| v.into()).collect();
    let wi: Vec<i32> = w.iter().map(|&v| v.into()).collect();
    let (acc, _, _) = naive_conv(&xi, (2, 3, 3), -5, &wi, (2, 2, 2), &[2], 0, 2);
    let real = 0.1f32 * 0.01 / 0.2;
    for (i, (&got, &acc)) in y.iter().zip(&acc).enumerate() {
        let want = (tflite_requant(acc, real) - 1).clamp(-128, 127);
        assert_eq!(i64::from(got), want, "element {i}");
    }
}

#[test]
fn conv_integer_per_channel_zero_points() {
    let x = pattern_u8(3 * 3, 5);
    let w = pattern_u8(2 * 2 * 2, 6);
    let g = Graph::default()
        .input("x", U8, &[1, 1, 3, 3])
        .u8("w", &[2, 1, 2, 2], &w)
        .u8("x_z", &[], &[1])
        .u8("w_z", &[2], &[0, 200])
        .node(
            "ConvInteger",
            &["x", "w", "x_z", "w_z"],
            &["y"],
            &[attr_ints("pads", &[1, 1, 1, 1])],
        )
        .output("y", I32, &[1, 2, 4, 4]);
    let mut y = [0i32; 32];
    run(&g.model(10), &[Data::U8(&x)], &mut [DataMut::I32(&mut y)]).unwrap();
    let xi: Vec<i32> = x.iter().map(|&v| v.into()).collect();
    let wi: Vec<i32> = w.iter().map(|&v| v.into()).collect();
    let (want, _, _) = naive_conv(&xi, (1, 3, 3), 1, &wi, (2, 2, 2), &[0, 200], 1, 1);
    assert_eq!(y.to_vec(), want);
}

#[test]
fn matmul_integer_int8_uint8_batched() {
    let a = pattern_i8(2 * 3 * 4, 7);
    let b = pattern_u8(4 * 2, 8);
    let g = Graph::default()
        .input("a", I8, &[2, 3, 4])
        .input("b", U8, &[4, 2])
        .i8("a_z", &[], &[-9])
        .u8("b_z", &[2], &[3, 250])
        .node("MatMulInteger", &["a", "b", "a_z", "b_z"], &["y"], &[])
        .output("y", I32, &[2, 3, 2]);
    let mut y = [0i32; 12];
    run(
        &g.model(10),
        &[Data::I8(&a), Data::U8(&b)],
        &mut [DataMut::I32(&mut y)],
    )
    .unwrap();
    let bi: Vec<i32> = b.iter().map(|&v| v.into()).collect();
    for batch in 0..2 {
        let ai: Vec<i32> = a[batch * 12..][..12].iter().map(|&v| v.into()).collect();
        let want = naive_matmul(3, 4, 2, &ai, -9, &bi, &[3, 250]);
        assert_eq!(y[batch * 6..][..6].to_vec(), want, "batch {batch}");
    }
}

// ---------------------------------------------------------------- typed buffers and staging

#[test]
fn typed_buffers_are_checked() {
    let m = Graph::default()
        .input("x", I8, &[2])
        .node("Identity", &["x"], &["y"], &[])
        .output("y", I8, &[2])
        .model(13);
    let model = Model::parse(&m).unwrap();
    let mut arena = vec![0u8; model.arena_size() + 16];
    let mut session = Session::new(&model, &mut arena).unwrap();
    let mut out = [0i8; 2];
    session
        .run_typed(&[Data::I8(&[-3, 4])], &mut [DataMut::I8(&mut out)])
        .unwrap();
    assert_eq!(out, [-3, 4]);
    // The float-only `run` names the non-f32 value.
    let mut f = [0f32; 2];
    match session.run(&[&[0.0, 0.0]], &mut [&mut f]) {
        Err(Error::DType { value, .. }) => assert_eq!(value.as_str(), "x"),
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        session.run_typed(&[Data::U8(&[1, 2])], &mut [DataMut::I8(&mut out)]),
        Err(Error::BufferType {
            what: "input",
            index: 0,
            ..
        })
    ));
    assert!(matches!(
        session.run_typed(&[Data::I8(&[1, 2])], &mut [DataMut::F32(&mut f)]),
        Err(Error::BufferType { what: "output", .. })
    ));
    assert!(matches!(
        session.run_typed(&[Data::I8(&[1])], &mut [DataMut::I8(&mut out)]),
        Err(Error::BufferLength { what: "input", .. })
    ));
    assert!(matches!(
        session.run_typed(&[], &mut [DataMut::I8(&mut out)]),
        Err(Error::Arity { .. })
    ));
}

#[test]
fn typed_field_int8_weights_are_staged() {
    // int8 weights in int32_data (varints) cannot be read in place: they
    // are decoded into the arena once, by Session::new.
    let m = Graph::default()
        .input("x", I8, &[1, 2])
        .init(tensor_int32_data("w", I8, &[2, 2], &[-1, 2, 3, -128]))
        .i8("z", &[], &[0])
        .f32("s", &[], &[1.0])
        .node(
            "QLinearMatMul",
            &["x", "s", "z", "w", "s", "z", "s", "z"],
            &["y"],
            &[],
        )
        .output("y", I8, &[1, 2])
        .model(10);
    let model = Model::parse(&m).unwrap();
    let w = model.values().iter().position(|v| v.name == "w").unwrap();
    assert_ne!(model.plan().offsets[w], tinykd_runtime::planner::NONE);
    // 4 bytes of int8 weights, and the f32 scale if its raw bytes happen
    // to be misaligned in the file, each rounded up to 16.
    assert!([16, 32].contains(&model.plan().staged_constant_bytes));
    assert_eq!(model.plan().requant_bytes, 16);
    let mut y = [0i8; 2];
    run(&m, &[Data::I8(&[1, 1])], &mut [DataMut::I8(&mut y)]).unwrap();
    assert_eq!(y, [2, -126]);
}

// ---------------------------------------------------------------- rejections

fn quantize_model(scale: &[f32], zp: Vec<u8>, opset: i64, attrs: &[Vec<u8>]) -> Vec<u8> {
    let n = scale.len() as i64;
    let dims: &[i64] = if n == 1 { &[] } else { &[n] };
    Graph::default()
        .input("x", F32, &[1, 3])
        .f32("s", dims, scale)
        .init(zp)
        .node("QuantizeLinear", &["x", "s", "zp"], &["y"], attrs)
        .output("y", U8, &[1, 3])
        .model(opset)
}

#[test]
fn bad_scales_and_zero_points_are_rejected_naming_the_value() {
    for bad in [0.0, -1.0, f32::NAN, f32::INFINITY] {
        let m = quantize_model(&[bad], tensor("zp", U8, &[], &[0]), 13, &[]);
        let e = parse_err(&m);
        assert_eq!(err_value(&e), "s", "{bad}: {e}");
        assert!(!e.is_unsupported());
    }
    // A uint8 zero point of 300 (possible in the int32_data field).
    let m = quantize_model(&[1.0], tensor_int32_data("zp", U8, &[], &[300]), 13, &[]);
    let e = parse_err(&m);
    assert_eq!(err_value(&e), "zp", "{e}");
    // Per-axis length mismatch (3 channels, 2 scales).
    let m = quantize_model(&[1.0, 2.0], tensor("zp", U8, &[2], &[0, 0]), 13, &[]);
    assert_eq!(err_value(&parse_err(&m)), "s");
    // Zero point shape differs from the scale's.
    let m = quantize_model(&[1.0], tensor("zp", U8, &[3], &[0, 0, 0]), 13, &[]);
    assert_eq!(err_value(&parse_err(&m)), "zp");
    // Per-axis scales before opset 13.
    let m = quantize_model(&[1.0, 1.0, 1.0], tensor("zp", U8, &[3], &[0; 3]), 10, &[]);
    assert_eq!(err_value(&parse_err(&m)), "s");
}

#[test]
fn unsupported_quantization_features_are_reported_as_such() {
    // float8 zero point: the element type itself is not supported.
    let m = quantize_model(&[1.0], tensor("zp", FLOAT8E4M3FN, &[], &[0]), 19, &[]);
    let e = parse_err(&m);
    assert!(
        matches!(e, Error::DType { .. }) && e.is_unsupported(),
        "{e}"
    );
    // A float8 graph input of DequantizeLinear.
    let m = Graph::default()
        .input("x", FLOAT8E4M3FN, &[3])
        .f32("s", &[], &[1.0])
        .node("DequantizeLinear", &["x", "s"], &["y"], &[])
        .output("y", F32, &[3])
        .model(19);
    assert!(matches!(parse_err(&m), Error::DType { .. }));
    // Blocked quantization.
    let m = quantize_model(
        &[1.0],
        tensor("zp", U8, &[], &[0]),
        21,
        &[attr_int("block_size", 2)],
    );
    assert!(matches!(parse_err(&m), Error::Unsupported { .. }));
    // int16 output requested through output_dtype.
    let m = Graph::default()
        .input("x", F32, &[3])
        .f32("s", &[], &[1.0])
        .node(
            "QuantizeLinear",
            &["x", "s"],
            &["y"],
            &[attr_int("output_dtype", 5)],
        )
        .output("y", U8, &[3])
        .model(21);
    assert!(parse_err(&m).is_unsupported());
    // A run-time scale of QLinearMatMul.
    let m = Graph::default()
        .input("a", I8, &[1, 1])
        .input("a_s", F32, &[])
        .i8("z", &[], &[0])
        .f32("s", &[], &[1.0])
        .node(
            "QLinearMatMul",
            &["a", "a_s", "z", "a", "s", "z", "s", "z"],
            &["y"],
            &[],
        )
        .output("y", I8, &[1, 1])
        .model(10);
    assert!(matches!(parse_err(&m), Error::Unsupported { .. }));
    // Per-row a zero point of MatMulInteger.
    let m = Graph::default()
        .input("a", U8, &[2, 2])
        .u8("b", &[2, 2], &[1, 2, 3, 4])
        .u8("a_z", &[2], &[1, 2])
        .node("MatMulInteger", &["a", "b", "a_z"], &["y"], &[])
        .output("y", I32, &[2, 2])
        .model(10);
    assert!(matches!(parse_err(&m), Error::Unsupported { .. }));
}

#[test]
fn qlinear_conv_checks_its_parameters() {
    let conv = |w_s: &[f32], w_z: &[i8], y_z: Vec<u8>, bias: Option<&[i32]>| {
        let n = w_s.len() as i64;
        let mut g = Graph::default()
            .input("x", U8, &[1, 1, 2, 2])
            .f32("x_s", &[], &[0.1])
            .u8("x_z", &[], &[0])
            .i8("w", &[3, 1, 1, 1], &[1, 2, 3])
            .f32("w_s", &[n], w_s)
            .i8("w_z", &[w_z.len() as i64], w_z)
            .f32("y_s", &[], &[0.1])
            .init(y_z);
        let mut inputs = vec!["x", "x_s", "x_z", "w", "w_s", "w_z", "y_s", "y_z"];
        if let Some(b) = bias {
            g = g.i32("b", &[b.len() as i64], b);
            inputs.push("b");
        }
        g.node("QLinearConv", &inputs, &["y"], &[])
            .output("y", U8, &[1, 3, 2, 2])
            .model(10)
    };
    let y_z = || tensor("y_z", U8, &[], &[0]);
    assert!(Model::parse(&conv(&[0.1; 3], &[0; 3], y_z(), Some(&[1, 2, 3]))).is_ok());
    // Per-channel scale length ≠ output channels.
    assert_eq!(
        err_value(&parse_err(&conv(&[0.1; 2], &[0; 2], y_z(), None))),
        "w_s"
    );
    // A negative weight scale.
    assert_eq!(
        err_value(&parse_err(&conv(&[0.1, -0.1, 0.1], &[0; 3], y_z(), None))),
        "w_s"
    );
    // Zero point type differs from the output's declared one is fine, but
    // the zero point's shape must match the scale's.
    assert_eq!(
        err_value(&parse_err(&conv(&[0.1; 3], &[0], y_z(), None))),
        "w_z"
    );
    // Bias of the wrong length.
    assert_eq!(
        err_value(&parse_err(&conv(&[0.1; 3], &[0; 3], y_z(), Some(&[1])))),
        "b"
    );
    // A multiplier of 2^30 or more cannot be requantized in int32.
    let huge = conv(&[1e12; 3], &[0; 3], y_z(), None);
    assert_eq!(err_value(&parse_err(&huge)), "w_s");
}

/// The quantized fuzz seed (all six quantized ops, typed graph inputs and
/// outputs, typed-field zero points) against outputs of the ONNX reference
/// evaluator (`onnx.reference`, the model evaluated at opset 19, whose
/// QuantizeLinear/DequantizeLinear are the same here), bit for bit (the
/// float literals are the shortest forms of the reference's f32 values).
#[test]
fn quantized_seed_matches_the_onnx_reference() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/fuzz-seeds/quantized.onnx"
    );
    let bytes = std::fs::read(path).unwrap();
    let x: Vec<f32> = (0..32)
        .map(|i| ((i * 7) % 23) as f32 / 11.0 - 1.0)
        .collect();
    let t: Vec<i8> = (0..6).map(|i| ((i * 37) % 256 - 128) as i8).collect();
    let (mut y, mut ci, mut y2, mut tp) = ([0f32; 4], [0i32; 32], [0f32; 4], [0i8; 8]);
    run(
        &bytes,
        &[Data::F32(&x), Data::I8(&t)],
        &mut [
            DataMut::F32(&mut y),
            DataMut::I32(&mut ci),
            DataMut::F32(&mut y2),
            DataMut::I8(&mut tp),
        ],
    )
    .unwrap();
    assert_eq!(y, [-3.600_000_1, -4.4, -4.700_000_3, -2.7]);
    assert_eq!(
        ci,
        [
            10109, -8004, 28, 8058, -10263, -2231, 5799, -12522, -4492, 3540, 11115, -6751, 1281,
            9064, -9010, -1227, 305, -124, -28, 70, -151, -55, 43, -178, -80, 16, 315, -107, -11,
            80, -134, -43
        ]
    );
    assert_eq!(y2, [-7.216_000_6, -8.704, -9.454, -5.442_000_4]);
    assert_eq!(tp, [-5, -5, -128, -17, -91, 20, -54, 57]);
}
