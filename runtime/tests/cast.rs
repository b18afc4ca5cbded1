//! Cast: float16 weights widened by a load-time `Cast(to=FLOAT)` (the form
//! `tinykd quantize --weights f16` writes) run exactly as the float32 model
//! whose weights are those float16 values; constant Casts are staged once;
//! run-time Casts convert between the run-time types; the rest is rejected
//! as unsupported. Models are written here with a minimal ONNX writer.

// Same reason as the crate: `Error` is large by design.
#![allow(clippy::result_large_err)]

use tinykd_runtime::planner::{find_overlap, NONE};
use tinykd_runtime::{Data, DataMut, Error, Model, Session};

mod common;
use common::*;

// ---------------------------------------------------------------- writer

const F32: i64 = 1;
const I32: i64 = 6;
const I64: i64 = 7;
const F16: i64 = 10;
const BF16: i64 = 16;

/// A float16 tensor with its bits in `int32_data` (packed varints), as
/// ONNX allows instead of `raw_data`.
fn f16_int32_data(name: &str, dims: &[i64], bits: &[u16]) -> Vec<u8> {
    let mut t = Vec::new();
    for &d in dims {
        field_varint(&mut t, 1, d);
    }
    field_varint(&mut t, 2, F16);
    let mut packed = Vec::new();
    for &b in bits {
        varint(&mut packed, u64::from(b));
    }
    field_bytes(&mut t, 5, &packed);
    field_bytes(&mut t, 8, name.as_bytes());
    t
}

fn to(dtype: i64) -> Vec<u8> {
    attr_int("to", dtype)
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

    fn f16(self, name: &str, dims: &[i64], bits: &[u16]) -> Self {
        self.init(tensor(name, F16, dims, &le(bits, u16::to_le_bytes)))
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

// ---------------------------------------------------------------- helpers

/// A seeded xorshift generator.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// A finite float16 of moderate size (|x| in [2^-9, 64)), or a
    /// subnormal or zero now and then.
    fn f16(&mut self) -> u16 {
        let r = self.next();
        let sign = ((r & 1) as u16) << 15;
        let mantissa = ((r >> 1) & 0x3ff) as u16;
        let exponent = match (r >> 11) % 16 {
            0 => 0, // subnormal or zero
            e => 5 + e as u16,
        };
        sign | exponent << 10 | mantissa
    }
}

/// The value of finite binary16 `bits` by its definition, computed here in
/// f32 arithmetic (exact), independently of the runtime's decoder.
fn f16_value(bits: u16) -> f32 {
    let sign = if bits & 0x8000 != 0 { -1.0f32 } else { 1.0 };
    let e = i32::from((bits >> 10) & 0x1f);
    let m = f32::from(bits & 0x3ff);
    assert!(e < 31, "finite values only");
    let pow2 = |k: i32| 2f32.powi(k);
    if e == 0 {
        sign * m * pow2(-24)
    } else {
        sign * (1024.0 + m) * pow2(e - 25)
    }
}

fn run_f32(model: &Model<'_>, inputs: &[&[f32]], out_len: usize) -> Vec<f32> {
    assert_eq!(find_overlap(model), None, "plan overlaps");
    let mut out = vec![f32::NAN; out_len];
    let mut arena = vec![0xa5u8; model.arena_size() + 16];
    let mut session = Session::new(model, &mut arena).unwrap();
    session.run(inputs, &mut [&mut out]).unwrap();
    out
}

fn value_id(model: &Model<'_>, name: &str) -> usize {
    model.values().iter().position(|v| v.name == name).unwrap()
}

// ---------------------------------------------------------------- float16 weights

/// Gemm (weights and bias float16, the weights in `int32_data`) → Relu →
/// MatMul (float16) → Add (float16 bias): written once with float16
/// initializers behind `Cast(to=FLOAT)`, once with float32 initializers
/// holding the same values.
fn mlp(f16: bool, rng: &mut Rng) -> Vec<u8> {
    let w1: Vec<u16> = (0..6 * 8).map(|_| rng.f16()).collect();
    let b1: Vec<u16> = (0..6).map(|_| rng.f16()).collect();
    let w2: Vec<u16> = (0..6 * 3).map(|_| rng.f16()).collect();
    let b2: Vec<u16> = (0..3).map(|_| rng.f16()).collect();
    let g = Graph::default().input("x", F32, &[2, 8]);
    let g = if f16 {
        g.init(f16_int32_data("w1_h", &[6, 8], &w1))
            .f16("b1_h", &[6], &b1)
            .f16("w2_h", &[6, 3], &w2)
            .f16("b2_h", &[3], &b2)
            .node("Cast", &["w1_h"], &["w1"], &[to(F32)])
            .node("Cast", &["b1_h"], &["b1"], &[to(F32)])
            .node("Cast", &["w2_h"], &["w2"], &[to(F32)])
            .node("Cast", &["b2_h"], &["b2"], &[to(F32)])
    } else {
        let f = |bits: &[u16]| bits.iter().map(|&b| f16_value(b)).collect::<Vec<f32>>();
        g.f32("w1", &[6, 8], &f(&w1))
            .f32("b1", &[6], &f(&b1))
            .f32("w2", &[6, 3], &f(&w2))
            .f32("b2", &[3], &f(&b2))
    };
    g.node("Gemm", &["x", "w1", "b1"], &["h"], &[attr_int("transB", 1)])
        .node("Relu", &["h"], &["r"], &[])
        .node("MatMul", &["r", "w2"], &["m"], &[])
        .node("Add", &["m", "b2"], &["y"], &[])
        .output("y", F32, &[2, 3])
        .model(13)
}

#[test]
fn float16_weights_run_as_the_float32_model_with_those_values() {
    for seed in 1..=20u64 {
        let half = mlp(true, &mut Rng(seed * 0x9e37_79b9));
        let full = mlp(false, &mut Rng(seed * 0x9e37_79b9));
        let (half_model, full_model) = (Model::parse(&half).unwrap(), Model::parse(&full).unwrap());
        let mut rng = Rng(seed);
        let x: Vec<f32> = (0..16).map(|_| f16_value(rng.f16()) * 3.0).collect();
        let got = run_f32(&half_model, &[&x], 6);
        let want = run_f32(&full_model, &[&x], 6);
        assert!(
            got.iter().all(|v| v.is_finite()) && got.iter().any(|&v| v != 0.0),
            "{got:?}"
        );
        let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&got), bits(&want), "seed {seed}: {got:?} vs {want:?}");
    }
}

#[test]
fn float16_weights_are_staged_once_and_counted_as_stored() {
    let bytes = mlp(true, &mut Rng(7));
    let model = Model::parse(&bytes).unwrap();
    // The Casts are folded: nothing of them runs.
    let casts = model.nodes().iter().filter(|n| n.op_type == "Cast");
    assert!(casts.clone().all(|n| n.op == tinykd_runtime::ops::Op::Nop));
    assert_eq!(casts.count(), 4);
    // Each widened weight has its own arena buffer; the float16 ones none.
    for (wide, stored) in [
        ("w1", "w1_h"),
        ("b1", "b1_h"),
        ("w2", "w2_h"),
        ("b2", "b2_h"),
    ] {
        assert_ne!(model.plan().offsets[value_id(&model, wide)], NONE, "{wide}");
        assert_eq!(
            model.plan().offsets[value_id(&model, stored)],
            NONE,
            "{stored}"
        );
    }
    // 48, 6, 18 and 3 float32 values, each rounded up to 16 bytes.
    let converted = 192 + 32 + 80 + 16;
    assert_eq!(model.plan().converted_constant_bytes, converted);
    assert_eq!(model.plan().staged_constant_bytes, converted);
    assert_eq!(model.parameters(), (48 + 6 + 18 + 3, 2 * (48 + 6 + 18 + 3)));
    // Load-time readers see the float32 values too.
    let w1 = &model.values()[value_id(&model, "w1")];
    let w1_h = &model.values()[value_id(&model, "w1_h")];
    for i in [0, 17, 47] {
        assert_eq!(w1.const_element(i), w1_h.const_element(i));
        assert!(w1.const_element(i).is_some());
    }
}

// ---------------------------------------------------------------- other casts

#[test]
fn run_time_cast_between_run_time_types() {
    // x (f32) → int32 → uint8 (low bits) → float32, and x → int32 as an output.
    let bytes = Graph::default()
        .input("x", F32, &[5])
        .node("Cast", &["x"], &["i"], &[to(I32)])
        .node("Cast", &["i"], &["u"], &[to(2)])
        .node("Cast", &["u"], &["f"], &[to(F32)])
        .node("Cast", &["f"], &["same"], &[to(F32)])
        .output("i", I32, &[5])
        .output("same", F32, &[5])
        .model(19);
    let model = Model::parse(&bytes).unwrap();
    assert_eq!(find_overlap(&model), None);
    let x = [2.9f32, -2.9, 300.0, -1.0, f32::NAN];
    let mut i = [0i32; 5];
    let mut f = [0f32; 5];
    let mut arena = vec![0u8; model.arena_size() + 16];
    let mut session = Session::new(&model, &mut arena).unwrap();
    session
        .run_typed(
            &[Data::F32(&x)],
            &mut [DataMut::I32(&mut i), DataMut::F32(&mut f)],
        )
        .unwrap();
    assert_eq!(i, [2, -2, 300, -1, 0]);
    assert_eq!(f, [2.0, 254.0, 44.0, 255.0, 0.0]);
}

#[test]
fn constant_casts_fold_to_staged_constants() {
    // A float32 initializer cast to int32 and used at run time; an int64
    // initializer cast to float32 (exact) added to the input.
    let bytes = Graph::default()
        .input("x", F32, &[3])
        .f32("c", &[3], &[1.5, -7.9, 1e10])
        .init(tensor(
            "k",
            I64,
            &[3],
            &le(&[1i64, -2, 1 << 40], i64::to_le_bytes),
        ))
        .node("Cast", &["c"], &["ci"], &[to(I32)])
        .node("Cast", &["k"], &["kf"], &[to(F32)])
        .node("Add", &["x", "kf"], &["y"], &[])
        .output("ci", I32, &[3])
        .output("y", F32, &[3])
        .model(13);
    let model = Model::parse(&bytes).unwrap();
    assert_eq!(model.plan().converted_constant_bytes, 32);
    let mut ci = [0i32; 3];
    let mut y = [0f32; 3];
    let mut arena = vec![0u8; model.arena_size() + 16];
    let mut session = Session::new(&model, &mut arena).unwrap();
    session
        .run_typed(
            &[Data::F32(&[0.5, 0.5, 0.0])],
            &mut [DataMut::I32(&mut ci), DataMut::F32(&mut y)],
        )
        .unwrap();
    assert_eq!(ci, [1, -7, i32::MAX]);
    assert_eq!(y, [1.5, -1.5, (1u64 << 40) as f32]);
}

fn parse_err(bytes: &[u8]) -> Error {
    match Model::parse(bytes) {
        Ok(_) => panic!("model was accepted"),
        Err(e) => e,
    }
}

#[test]
fn unsupported_casts_are_reported_as_such() {
    // To float16 at run time: not a run-time type.
    let e = parse_err(
        &Graph::default()
            .input("x", F32, &[2])
            .node("Cast", &["x"], &["h"], &[to(F16)])
            .node("Cast", &["h"], &["y"], &[to(F32)])
            .output("y", F32, &[2])
            .model(13),
    );
    assert!(e.is_unsupported(), "{e}");
    assert!(
        e.to_string().contains("'h'") && e.to_string().contains("float16"),
        "{e}"
    );
    // A bfloat16 constant: a source type Cast does not read.
    let e = parse_err(
        &Graph::default()
            .input("x", F32, &[2])
            .init(tensor("b", BF16, &[2], &[0, 0x3f, 0, 0x40]))
            .node("Cast", &["b"], &["bf"], &[to(F32)])
            .node("Add", &["x", "bf"], &["y"], &[])
            .output("y", F32, &[2])
            .model(13),
    );
    assert!(e.is_unsupported(), "{e}");
    // Cast-1 (opset 5) takes `to` as a string: not implemented.
    let e = parse_err(
        &Graph::default()
            .input("x", F32, &[2])
            .node("Cast", &["x"], &["y"], &[to(F32)])
            .output("y", F32, &[2])
            .model(5),
    );
    assert!(matches!(e, Error::UnsupportedOp { .. }), "{e}");
    // `saturate` exists from Cast-19 on; `to` is required.
    let e = parse_err(
        &Graph::default()
            .input("x", F32, &[2])
            .node("Cast", &["x"], &["y"], &[to(I32), attr_int("saturate", 0)])
            .output("y", I32, &[2])
            .model(13),
    );
    assert!(e.is_unsupported(), "{e}");
    let e = parse_err(
        &Graph::default()
            .input("x", F32, &[2])
            .node("Cast", &["x"], &["y"], &[])
            .output("y", F32, &[2])
            .model(13),
    );
    assert!(matches!(e, Error::Attribute { .. }), "{e}");
    assert!(Model::parse(
        &Graph::default()
            .input("x", F32, &[2])
            .node("Cast", &["x"], &["y"], &[to(I32), attr_int("saturate", 0)])
            .output("y", I32, &[2])
            .model(19),
    )
    .is_ok());
}
