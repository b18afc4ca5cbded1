//! Op families (the `op-*` cargo features): an op whose family is compiled
//! in loads and runs; one whose family is left out fails to load with
//! `Error::UnsupportedOp` naming its node, and `supported_ops()` lists
//! exactly the compiled-in ops. A uint8 quantized tensor without the
//! `quant-u8` feature is an `Error::DType`. Meant to be run with subsets
//! too, e.g.
//! `cargo test -p tinykd-runtime --no-default-features --features op-gemm --test op_families`.

// Same reason as the crate: `Error` is large by design.
#![allow(clippy::result_large_err)]

use tinykd_runtime::ops::supported_ops;
use tinykd_runtime::{DType, Error, Model};

mod common;
use common::*;

const F32: i64 = 1;
const U8: i64 = 2;
const I8: i64 = 3;
const I32: i64 = 6;

/// A one-node model: `op` named "n" reads `inputs` (graph inputs first,
/// then initializers) and writes `y`.
struct Case {
    op: &'static str,
    enabled: bool,
    inputs: Vec<Vec<u8>>,
    initializers: Vec<Vec<u8>>,
    input_names: Vec<&'static str>,
    attrs: Vec<Vec<u8>>,
    output: Vec<u8>,
}

impl Case {
    fn new(op: &'static str, enabled: bool, x: (i64, &[i64]), y: (i64, &[i64])) -> Case {
        Case {
            op,
            enabled,
            inputs: vec![value_info("x", x.0, x.1)],
            initializers: Vec::new(),
            input_names: vec!["x"],
            attrs: Vec::new(),
            output: value_info("y", y.0, y.1),
        }
    }

    /// Another input `name`, an initializer (`tensor` is `Some`) or a
    /// second reference to an existing value.
    fn arg(mut self, name: &'static str, tensor: Option<Vec<u8>>) -> Case {
        self.initializers.extend(tensor);
        self.input_names.push(name);
        self
    }

    fn attr(mut self, a: Vec<u8>) -> Case {
        self.attrs.push(a);
        self
    }

    fn model(&self) -> Vec<u8> {
        let mut node = Vec::new();
        for i in &self.input_names {
            field_bytes(&mut node, 1, i.as_bytes());
        }
        field_bytes(&mut node, 2, b"y");
        field_bytes(&mut node, 3, b"n");
        field_bytes(&mut node, 4, self.op.as_bytes());
        for a in &self.attrs {
            field_bytes(&mut node, 5, a);
        }
        let mut g = Vec::new();
        field_bytes(&mut g, 1, &node);
        field_bytes(&mut g, 2, b"test");
        for t in &self.initializers {
            field_bytes(&mut g, 5, t);
        }
        for i in &self.inputs {
            field_bytes(&mut g, 11, i);
        }
        field_bytes(&mut g, 12, &self.output);
        let mut opset = Vec::new();
        field_bytes(&mut opset, 1, b"");
        field_varint(&mut opset, 2, 13);
        let mut m = Vec::new();
        field_varint(&mut m, 1, 8);
        field_bytes(&mut m, 8, &opset);
        field_bytes(&mut m, 7, &g);
        m
    }
}

fn f32s(v: &[f32]) -> Vec<u8> {
    le(v, f32::to_le_bytes)
}

fn cases() -> Vec<Case> {
    let quant = cfg!(feature = "op-quant");
    vec![
        Case::new(
            "Relu",
            cfg!(feature = "op-activation"),
            (F32, &[1, 4]),
            (F32, &[1, 4]),
        ),
        Case::new(
            "Sigmoid",
            cfg!(feature = "op-sigmoid"),
            (F32, &[1, 4]),
            (F32, &[1, 4]),
        ),
        Case::new(
            "Softmax",
            cfg!(feature = "op-softmax"),
            (F32, &[1, 4]),
            (F32, &[1, 4]),
        ),
        Case::new(
            "Add",
            cfg!(feature = "op-elementwise"),
            (F32, &[1, 4]),
            (F32, &[1, 4]),
        )
        .arg("x", None),
        Case::new(
            "Flatten",
            cfg!(feature = "op-reshape"),
            (F32, &[1, 2, 2]),
            (F32, &[1, 4]),
        ),
        Case::new(
            "Transpose",
            cfg!(feature = "op-layout"),
            (F32, &[1, 4]),
            (F32, &[4, 1]),
        ),
        Case::new(
            "Cast",
            cfg!(feature = "op-cast"),
            (F32, &[1, 4]),
            (I32, &[1, 4]),
        )
        .attr(attr_int("to", I32)),
        Case::new(
            "Gemm",
            cfg!(feature = "op-gemm"),
            (F32, &[1, 4]),
            (F32, &[1, 2]),
        )
        .arg("w", Some(tensor("w", F32, &[4, 2], &f32s(&[0.5; 8])))),
        Case::new(
            "MaxPool",
            cfg!(feature = "op-pool"),
            (F32, &[1, 1, 2, 2]),
            (F32, &[1, 1, 1, 1]),
        )
        .attr(attr_ints("kernel_shape", &[2, 2])),
        Case::new(
            "Conv",
            cfg!(feature = "op-conv"),
            (F32, &[1, 1, 2, 2]),
            (F32, &[1, 1, 2, 2]),
        )
        .arg("w", Some(tensor("w", F32, &[1, 1, 1, 1], &f32s(&[2.0])))),
        Case::new("QuantizeLinear", quant, (F32, &[4]), (I8, &[4]))
            .arg("s", Some(tensor("s", F32, &[], &f32s(&[0.1]))))
            .arg("z", Some(tensor("z", I8, &[], &[3]))),
        Case::new(
            "MatMulInteger",
            cfg!(all(feature = "op-qoperator", feature = "op-gemm")),
            (I8, &[1, 2]),
            (I32, &[1, 2]),
        )
        .arg("b", Some(tensor("b", I8, &[2, 2], &[1, 2, 3, 4]))),
    ]
}

#[test]
fn an_op_loads_only_with_its_family() {
    let listed: Vec<&str> = supported_ops().collect();
    for case in cases() {
        assert_eq!(
            listed.contains(&case.op),
            case.enabled,
            "supported_ops() and the features disagree on {}",
            case.op
        );
        let bytes = case.model();
        let result = Model::parse(&bytes);
        match result {
            Ok(model) => {
                assert!(case.enabled, "{} loaded with its family left out", case.op);
                assert_eq!(model.outputs().len(), 1);
            }
            Err(Error::UnsupportedOp { at, .. }) if !case.enabled => {
                assert_eq!((at.node.as_str(), at.op.as_str()), ("n", case.op));
            }
            Err(e) => panic!("{}: {e}", case.op),
        };
    }
}

#[test]
fn uint8_quantization_needs_its_feature() {
    let zero_u8 = || Some(tensor("z", U8, &[], &[128]));
    let scale = || Some(tensor("s", F32, &[], &f32s(&[0.1])));
    let quantize = Case::new("QuantizeLinear", true, (F32, &[4]), (U8, &[4]))
        .arg("s", scale())
        .arg("z", zero_u8());
    let dequantize = Case::new("DequantizeLinear", true, (U8, &[4]), (F32, &[4]))
        .arg("s", scale())
        .arg("z", zero_u8());
    let want = if cfg!(feature = "quant-u8") {
        "loads"
    } else if cfg!(feature = "op-quant") {
        "uint8 rejected"
    } else {
        "unsupported op"
    };
    for case in [quantize, dequantize] {
        let bytes = case.model();
        let result = Model::parse(&bytes).map(|_| ());
        let got = match result {
            Ok(()) => "loads",
            Err(Error::DType {
                dtype: DType::U8, ..
            }) => "uint8 rejected",
            Err(Error::UnsupportedOp { .. }) => "unsupported op",
            Err(e) => panic!("{}: {e}", case.op),
        };
        assert_eq!(got, want, "{}", case.op);
    }
}
