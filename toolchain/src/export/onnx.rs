//! The ONNX writer: lowered steps become a `ModelProto` (tract's
//! prost-generated types), encoded with prost, initializers aligned.
//!
//! The file: ir_version 8, opset 13 (default domain only), graph named after
//! the spec, input `image` (float32, `[N, ...spec.input]`, `N` symbolic),
//! output `logits` (`[N, classes]`). No `value_info` for intermediate
//! values: tract 0.23 cannot unify their symbolic `N` with the concrete
//! batch its callers set on the input, and every consumer infers them.
//! Layer `i` becomes:
//!
//! | spec layer      | nodes (named)                                   | initializers                |
//! |-----------------|-------------------------------------------------|-----------------------------|
//! | `dense`         | `l{i}.dense`: Gemm(transB=1)                    | `l{i}.weight` `[out, in]`, `l{i}.bias` |
//! | `conv`          | `l{i}.conv`: Conv(kernel_shape, strides, pads, group=1) | `l{i}.weight` `[OC, C, K, K]`, `l{i}.bias` |
//! | `depthwise`     | `l{i}.depthwise`: Conv(..., group=C)            | `l{i}.weight` `[C, 1, K, K]`, `l{i}.bias` |
//! | `relu`          | `l{i}.relu`: Relu                               |                             |
//! | `max_pool`      | `l{i}.maxpool`: MaxPool(kernel_shape=strides=[k, k]) |                        |
//! | `avg_pool`      | `l{i}.avgpool`: AveragePool(kernel_shape=strides=[k, k]) |                   |
//! | `global_avg_pool` | `l{i}.gap`: GlobalAveragePool, `l{i}.flatten`: Flatten(axis=1) |           |
//! | `flatten`       | `l{i}.flatten`: Flatten(axis=1)                 |                             |
//!
//! Each node's output value has the node's name, except the last one's,
//! which is `logits`. Metadata props: `labels`, `normalization`,
//! `teacher_sha256`, `recipe` (those given) and `tinykd_spec` (the spec as
//! JSON). Alignment: see `align.rs`; [`check_alignment`] verifies a file.

use super::lower::{lower, Lowered, Op, Param};
use super::{ExportError, ExportMeta};
use crate::tensor_file::write_atomically;
use crate::train::model::ModelSpec;
use candle_core::Tensor;
use std::path::Path;
use tract_onnx::pb;

pub use super::align::{check_alignment, ALIGN};

/// The ONNX IR version written.
pub const IR_VERSION: i64 = 8;
/// The default-domain opset written.
pub const OPSET: i64 = 13;
/// The graph input's name.
pub const INPUT: &str = "image";
/// The graph output's name.
pub const OUTPUT: &str = "logits";
/// The symbolic batch dim.
pub const BATCH: &str = "N";

/// Exports `spec` with its `params` (`l{i}.weight` / `l{i}.bias`, as
/// [`Network`](crate::train::model::Network) names them) as an ONNX model;
/// returns the file's bytes, every initializer's `raw_data` aligned to [`ALIGN`].
pub fn export(
    spec: &ModelSpec,
    params: &[(String, Tensor)],
    meta: &ExportMeta,
) -> Result<Vec<u8>, ExportError> {
    let lowered = lower(spec, params)?;
    let metadata_props = metadata_props(spec, meta, lowered.classes)?;
    let mut model = pb::ModelProto {
        ir_version: IR_VERSION,
        opset_import: vec![pb::OperatorSetIdProto {
            domain: String::new(),
            version: OPSET,
        }],
        producer_name: meta.producer.clone(),
        producer_version: env!("CARGO_PKG_VERSION").into(),
        doc_string: meta.doc.clone(),
        graph: Some(graph(spec, lowered)),
        metadata_props,
        ..Default::default()
    };
    let bytes = super::align::encode_aligned(&mut model)?;
    check_alignment(&bytes)?;
    Ok(bytes)
}

/// Exports like [`export`] and writes the file atomically (temporary file
/// and rename): on any error no file, partial or not, is left at `path`.
pub fn write(
    path: &Path,
    spec: &ModelSpec,
    params: &[(String, Tensor)],
    meta: &ExportMeta,
) -> Result<(), ExportError> {
    let bytes = export(spec, params, meta)?;
    write_atomically(path, &bytes).map_err(|e| ExportError::Write {
        path: path.into(),
        reason: e.to_string(),
    })
}

/// The metadata props, after checking each field.
fn metadata_props(
    spec: &ModelSpec,
    meta: &ExportMeta,
    classes: usize,
) -> Result<Vec<pb::StringStringEntryProto>, ExportError> {
    let bad = |field, reason: String| ExportError::Meta { field, reason };
    let mut props = Vec::new();
    let mut prop = |key: &str, value: String| {
        props.push(pb::StringStringEntryProto {
            key: key.into(),
            value,
        })
    };
    if !meta.labels.is_empty() {
        if meta.labels.len() != classes {
            return Err(bad(
                "labels",
                format!("{} labels for {classes} classes", meta.labels.len()),
            ));
        }
        if let Some(l) = meta.labels.iter().find(|l| l.contains(',')) {
            return Err(bad("labels", format!("label '{l}' contains a comma")));
        }
        prop("labels", meta.labels.join(","));
    }
    if !meta.normalization.is_empty() {
        let well_formed = meta.normalization.split(',').all(|kv| {
            kv.split_once('=')
                .is_some_and(|(k, v)| !k.trim().is_empty() && v.trim().parse::<f32>().is_ok())
        });
        if !well_formed {
            return Err(bad(
                "normalization",
                format!(
                    "'{}' is not `key=number` pairs like `mean=0.2860,std=0.3530`",
                    meta.normalization
                ),
            ));
        }
        prop("normalization", meta.normalization.clone());
    }
    if let Some(sha) = &meta.teacher_sha256 {
        if sha.len() != 64 || !sha.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(bad(
                "teacher_sha256",
                format!("'{sha}' is not 64 hex digits"),
            ));
        }
        prop("teacher_sha256", sha.to_ascii_lowercase());
    }
    if let Some(recipe) = &meta.recipe {
        prop("recipe", recipe.clone());
    }
    let json = serde_json::to_string(spec).map_err(|e| bad("tinykd_spec", e.to_string()))?;
    prop("tinykd_spec", json);
    Ok(props)
}

/// The graph of a lowered spec.
fn graph(spec: &ModelSpec, lowered: Lowered) -> pb::GraphProto {
    let mut g = pb::GraphProto {
        name: spec.name.clone(),
        input: vec![value_info(INPUT, &spec.input)],
        output: vec![value_info(OUTPUT, &[lowered.classes])],
        ..Default::default()
    };
    let mut current = INPUT.to_string();
    let last = lowered.steps.len() - 1;
    for (k, step) in lowered.steps.into_iter().enumerate() {
        let i = step.layer;
        // (node kind, op type, extra inputs, attributes) per node of the step.
        let mut nodes: Vec<(&str, &str, Vec<String>, Vec<pb::AttributeProto>)> = Vec::new();
        match step.op {
            Op::Dense { weight, bias } => {
                let inputs = vec![weight.name.clone(), bias.name.clone()];
                nodes.push(("dense", "Gemm", inputs, vec![int("transB", 1)]));
                g.initializer
                    .extend([initializer(weight), initializer(bias)]);
            }
            Op::Conv {
                weight,
                bias,
                kernel,
                stride,
                padding,
                groups,
            } => {
                let inputs = vec![weight.name.clone(), bias.name.clone()];
                let kind = if groups == 1 { "conv" } else { "depthwise" };
                let attrs = vec![
                    ints("kernel_shape", &[kernel, kernel]),
                    ints("strides", &[stride, stride]),
                    ints("pads", &[padding; 4]),
                    ints("dilations", &[1, 1]),
                    int("group", groups as i64),
                ];
                nodes.push((kind, "Conv", inputs, attrs));
                g.initializer
                    .extend([initializer(weight), initializer(bias)]);
            }
            Op::Relu => nodes.push(("relu", "Relu", vec![], vec![])),
            Op::MaxPool { size } => {
                let attrs = vec![
                    ints("kernel_shape", &[size, size]),
                    ints("strides", &[size, size]),
                ];
                nodes.push(("maxpool", "MaxPool", vec![], attrs));
            }
            Op::AvgPool { size } => {
                let attrs = vec![
                    ints("kernel_shape", &[size, size]),
                    ints("strides", &[size, size]),
                ];
                nodes.push(("avgpool", "AveragePool", vec![], attrs));
            }
            Op::GlobalAvgPool => {
                nodes.push(("gap", "GlobalAveragePool", vec![], vec![]));
                nodes.push(("flatten", "Flatten", vec![], vec![int("axis", 1)]));
            }
            Op::Flatten => nodes.push(("flatten", "Flatten", vec![], vec![int("axis", 1)])),
        }
        let count = nodes.len();
        for (j, (kind, op_type, extra, attribute)) in nodes.into_iter().enumerate() {
            let name = format!("l{i}.{kind}");
            let is_output = k == last && j + 1 == count;
            let output = if is_output {
                OUTPUT.into()
            } else {
                name.clone()
            };
            let mut input = vec![std::mem::replace(&mut current, output.clone())];
            input.extend(extra);
            g.node.push(pb::NodeProto {
                input,
                output: vec![output],
                name,
                op_type: op_type.into(),
                attribute,
                ..Default::default()
            });
        }
    }
    g
}

/// A float32 initializer holding `p` as little-endian `raw_data`.
fn initializer(p: Param) -> pb::TensorProto {
    pb::TensorProto {
        dims: p.dims.iter().map(|&d| d as i64).collect(),
        data_type: pb::tensor_proto::DataType::Float as i32,
        name: p.name,
        raw_data: p.data.iter().flat_map(|v| v.to_le_bytes()).collect(),
        ..Default::default()
    }
}

/// A float32 value of shape `[N, ...dims]`.
fn value_info(name: &str, dims: &[usize]) -> pb::ValueInfoProto {
    use pb::tensor_shape_proto::{dimension::Value, Dimension};
    let dim = |value| Dimension {
        denotation: String::new(),
        value: Some(value),
    };
    let mut shape = vec![dim(Value::DimParam(BATCH.into()))];
    shape.extend(dims.iter().map(|&d| dim(Value::DimValue(d as i64))));
    pb::ValueInfoProto {
        name: name.into(),
        r#type: Some(pb::TypeProto {
            denotation: String::new(),
            value: Some(pb::type_proto::Value::TensorType(pb::type_proto::Tensor {
                elem_type: pb::tensor_proto::DataType::Float as i32,
                shape: Some(pb::TensorShapeProto { dim: shape }),
            })),
        }),
        doc_string: String::new(),
    }
}

fn int(name: &str, i: i64) -> pb::AttributeProto {
    pb::AttributeProto {
        name: name.into(),
        r#type: pb::attribute_proto::AttributeType::Int as i32,
        i,
        ..Default::default()
    }
}

fn ints(name: &str, values: &[usize]) -> pb::AttributeProto {
    pb::AttributeProto {
        name: name.into(),
        r#type: pb::attribute_proto::AttributeType::Ints as i32,
        ints: values.iter().map(|&v| v as i64).collect(),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::model::Layer;
    use candle_core::{DType, Device};
    use prost::Message;

    fn spec() -> ModelSpec {
        ModelSpec {
            name: "tiny-cnn".into(),
            input: vec![1, 6, 6],
            layers: vec![
                Layer::Conv {
                    filters: 3,
                    kernel: 3,
                    stride: 1,
                    padding: 1,
                },
                Layer::Relu,
                Layer::GlobalAvgPool,
                Layer::Dense { units: 2 },
            ],
        }
    }

    fn params() -> Vec<(String, Tensor)> {
        let t = |dims: &[usize]| Tensor::ones(dims, DType::F32, &Device::Cpu).unwrap();
        vec![
            ("l0.weight".into(), t(&[3, 1, 3, 3])),
            ("l0.bias".into(), t(&[3])),
            ("l3.weight".into(), t(&[2, 3])),
            ("l3.bias".into(), t(&[2])),
        ]
    }

    #[test]
    fn graph_has_named_nodes_shapes_and_props() {
        let meta = ExportMeta {
            labels: vec!["cat".into(), "dog".into()],
            normalization: ExportMeta::normalization(0.286, 0.353),
            teacher_sha256: Some("AB".repeat(32)),
            recipe: Some("T=4".into()),
            ..Default::default()
        };
        let bytes = export(&spec(), &params(), &meta).unwrap();
        let m = pb::ModelProto::decode(bytes.as_slice()).unwrap();
        assert_eq!((m.ir_version, m.opset_import[0].version), (8, 13));
        let g = m.graph.unwrap();
        let nodes: Vec<_> = g
            .node
            .iter()
            .map(|n| format!("{}:{}>{}", n.name, n.op_type, n.output[0]))
            .collect();
        assert_eq!(
            nodes,
            [
                "l0.conv:Conv>l0.conv",
                "l1.relu:Relu>l1.relu",
                "l2.gap:GlobalAveragePool>l2.gap",
                "l2.flatten:Flatten>l2.flatten",
                "l3.dense:Gemm>logits"
            ]
        );
        assert_eq!(g.node[4].input, ["l2.flatten", "l3.weight", "l3.bias"]);
        assert!(g.value_info.is_empty());
        assert_eq!(g.input[0].name, "image");
        assert_eq!(g.output[0].name, "logits");
        let props: Vec<_> = m
            .metadata_props
            .iter()
            .map(|p| format!("{}={}", p.key, p.value))
            .collect();
        assert_eq!(props[0], "labels=cat,dog");
        assert_eq!(props[1], "normalization=mean=0.2860,std=0.3530");
        assert_eq!(props[2], format!("teacher_sha256={}", "ab".repeat(32)));
        assert_eq!(props[3], "recipe=T=4");
        let spec_json = props[4].strip_prefix("tinykd_spec=").unwrap();
        assert_eq!(
            serde_json::from_str::<ModelSpec>(spec_json).unwrap(),
            spec()
        );
    }

    #[test]
    fn bad_metadata_is_named() {
        let cases = [
            (
                ExportMeta {
                    labels: vec!["a".into()],
                    ..Default::default()
                },
                "labels",
            ),
            (
                ExportMeta {
                    labels: vec!["a,b".into(), "c".into()],
                    ..Default::default()
                },
                "comma",
            ),
            (
                ExportMeta {
                    normalization: "mean 0.5".into(),
                    ..Default::default()
                },
                "normalization",
            ),
            (
                ExportMeta {
                    teacher_sha256: Some("xyz".into()),
                    ..Default::default()
                },
                "teacher_sha256",
            ),
        ];
        for (meta, needle) in cases {
            let err = export(&spec(), &params(), &meta).unwrap_err().to_string();
            assert!(err.contains(needle), "{err}");
        }
    }
}
