//! Test teachers written with tract's ONNX protobuf types (no Python), a
//! synthetic dataset and temporary folders.

use crate::data::Dataset;
use prost::Message;
use std::path::{Path, PathBuf};
use tract_onnx::pb;
use tract_onnx::pb::tensor_shape_proto::{dimension, Dimension};

/// The shipped demo teacher: a 784-128-10 MLP, input `image` [N, 784].
pub fn demo_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/demo/fashion_mlp.onnx")
}

/// A folder under the system temp dir, removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(name: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!(
            "tinykd-teacher-{name}-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    /// Writes `bytes` to `name` inside the folder and returns its path.
    pub fn write(&self, name: &str, bytes: &[u8]) -> PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, bytes).unwrap();
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `n` 28×28 images of deterministic pseudo-random pixels, labels `i % 10`.
pub fn synthetic(n: usize) -> Dataset {
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let images = (0..n * 784)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 56) as u8
        })
        .collect();
    let labels = (0..n).map(|i| (i % 10) as u8).collect();
    let names = (0..10).map(|c| format!("c{c}")).collect();
    Dataset::new(images, labels, 28, 28, names).unwrap()
}

fn dim(d: Option<usize>) -> Dimension {
    Dimension {
        value: Some(match d {
            Some(v) => dimension::Value::DimValue(v as i64),
            None => dimension::Value::DimParam("N".into()),
        }),
        ..Default::default()
    }
}

fn value_info(name: &str, dims: &[Option<usize>]) -> pb::ValueInfoProto {
    pb::ValueInfoProto {
        name: name.into(),
        r#type: Some(pb::TypeProto {
            value: Some(pb::type_proto::Value::TensorType(pb::type_proto::Tensor {
                elem_type: pb::tensor_proto::DataType::Float as i32,
                shape: Some(pb::TensorShapeProto {
                    dim: dims.iter().map(|&d| dim(d)).collect(),
                }),
            })),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn node(op: &str, inputs: &[&str], output: &str) -> pb::NodeProto {
    pb::NodeProto {
        op_type: op.into(),
        name: output.into(),
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: vec![output.into()],
        ..Default::default()
    }
}

fn model(graph: pb::GraphProto, metadata: &[(&str, &str)]) -> Vec<u8> {
    pb::ModelProto {
        ir_version: 8,
        opset_import: vec![pb::OperatorSetIdProto {
            domain: String::new(),
            version: 13,
        }],
        producer_name: "tinykd teacher tests".into(),
        graph: Some(graph),
        metadata_props: metadata
            .iter()
            .map(|(k, v)| pb::StringStringEntryProto {
                key: k.to_string(),
                value: v.to_string(),
            })
            .collect(),
        ..Default::default()
    }
    .encode_to_vec()
}

/// The demo teacher taking `pixels` `[batch, 1, 28, 28]` (`None`: symbolic
/// `N`) through a Flatten in front: the same logits as the demo.
pub fn demo_rank4(batch: Option<usize>) -> Vec<u8> {
    let bytes = std::fs::read(demo_path()).unwrap();
    let mut m = pb::ModelProto::decode(&bytes[..]).unwrap();
    let g = m.graph.as_mut().unwrap();
    let pos = g.input.iter().position(|i| i.name == "image").unwrap();
    g.input[pos] = value_info("pixels", &[batch, Some(1), Some(28), Some(28)]);
    let mut flatten = node("Flatten", &["pixels"], "image");
    flatten.attribute.push(pb::AttributeProto {
        name: "axis".into(),
        r#type: pb::attribute_proto::AttributeType::Int as i32,
        i: 1,
        ..Default::default()
    });
    g.node.insert(0, flatten);
    let out = g.output[0].name.clone();
    g.output[0] = value_info(&out, &[batch, Some(10)]);
    m.encode_to_vec()
}

/// A linear classifier `x [batch, 784] → y [batch, classes]` with weights
/// derived from `seed`; `unsqueeze` makes the output `[batch, 1, classes]`.
pub fn linear(
    classes: usize,
    batch: Option<usize>,
    seed: u32,
    unsqueeze: bool,
    metadata: &[(&str, &str)],
) -> Vec<u8> {
    let w: Vec<f32> = (0..784 * classes as u32)
        .map(|i| (((i * 7 + seed * 13) % 17) as f32 - 8.0) * 0.002)
        .collect();
    let b: Vec<f32> = (0..classes).map(|c| c as f32 * 0.1).collect();
    let float = |name: &str, dims: Vec<i64>, data: Vec<f32>| pb::TensorProto {
        name: name.into(),
        dims,
        data_type: pb::tensor_proto::DataType::Float as i32,
        float_data: data,
        ..Default::default()
    };
    let mut graph = pb::GraphProto {
        name: "linear".into(),
        node: vec![node("Gemm", &["x", "W", "B"], "y")],
        initializer: vec![
            float("W", vec![784, classes as i64], w),
            float("B", vec![classes as i64], b),
        ],
        input: vec![value_info("x", &[batch, Some(784)])],
        output: vec![value_info("y", &[batch, Some(classes)])],
        ..Default::default()
    };
    if unsqueeze {
        graph.node.push(node("Unsqueeze", &["y", "axes"], "z"));
        graph.initializer.push(pb::TensorProto {
            name: "axes".into(),
            dims: vec![1],
            data_type: pb::tensor_proto::DataType::Int64 as i32,
            int64_data: vec![1],
            ..Default::default()
        });
        graph.output = vec![value_info("z", &[batch, Some(1), Some(classes)])];
    }
    model(graph, metadata)
}
