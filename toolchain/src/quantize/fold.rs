//! Folding inference-mode BatchNormalization into the Conv before it, so
//! that the int8 convolution carries the normalisation in its weights and
//! bias (one requantization instead of a float op between two).
//!
//! For a Conv with constant weight `W[c, …]` and bias `b[c]` (0 if absent)
//! feeding a BatchNormalization alone, with constant `γ, β, μ, σ²` and `ε`:
//! `s[c] = γ[c] / √(σ²[c] + ε)`, `W'[c, …] = W[c, …]·s[c]`,
//! `b'[c] = (b[c] − μ[c])·s[c] + β[c]`, computed in f64. The Conv then
//! writes the BatchNormalization's output and the BatchNormalization goes.

use super::QuantizeError;
use std::collections::HashMap;
use tract_onnx::pb;

/// Folds every foldable Conv → BatchNormalization pair of `g`; returns how many.
pub fn fold_batch_norms(g: &mut pb::GraphProto) -> Result<usize, QuantizeError> {
    let mut folded = 0;
    while let Some((conv, bn)) = next_pair(g) {
        fold_pair(g, conv, bn)?;
        folded += 1;
    }
    Ok(folded)
}

/// The first (Conv, BatchNormalization) pair that can be folded.
fn next_pair(g: &pb::GraphProto) -> Option<(usize, usize)> {
    let mut readers: HashMap<&str, usize> = HashMap::new();
    for n in &g.node {
        for i in n.input.iter().filter(|s| !s.is_empty()) {
            *readers.entry(i.as_str()).or_default() += 1;
        }
    }
    let is_output = |v: &str| g.output.iter().any(|o| o.name == v);
    let constant = |v: &str| {
        g.initializer
            .iter()
            .any(|t| t.name == v && t.data_type == pb::tensor_proto::DataType::Float as i32)
    };
    for (b, bn) in g.node.iter().enumerate() {
        if bn.op_type != "BatchNormalization" || bn.input.len() != 5 {
            continue;
        }
        let training = bn
            .attribute
            .iter()
            .any(|a| a.name == "training_mode" && a.i != 0);
        if training || bn.output.iter().skip(1).any(|o| !o.is_empty()) {
            continue;
        }
        if !bn.input[1..].iter().all(|v| constant(v)) {
            continue;
        }
        let x = &bn.input[0];
        if readers.get(x.as_str()) != Some(&1) || is_output(x) {
            continue;
        }
        let Some(c) = g
            .node
            .iter()
            .position(|n| n.op_type == "Conv" && n.output.first() == Some(x))
        else {
            continue;
        };
        let conv = &g.node[c];
        let weight_ok = conv.input.get(1).is_some_and(|w| constant(w));
        let bias_ok = conv
            .input
            .get(2)
            .is_none_or(|v| v.is_empty() || constant(v));
        if weight_ok && bias_ok {
            return Some((c, b));
        }
    }
    None
}

fn fold_pair(g: &mut pb::GraphProto, c: usize, b: usize) -> Result<(), QuantizeError> {
    let bn = g.node[b].clone();
    let conv = g.node[c].clone();
    let eps = bn
        .attribute
        .iter()
        .find(|a| a.name == "epsilon")
        .map_or(1e-5, |a| f64::from(a.f));
    let get = |name: &str| -> Result<Vec<f32>, QuantizeError> {
        let t = g
            .initializer
            .iter()
            .find(|t| t.name == name)
            .ok_or_else(|| QuantizeError::Graph(format!("initializer '{name}' not found")))?;
        super::qdq::float_values(t)
    };
    let (gamma, beta, mean, var) = (
        get(&bn.input[1])?,
        get(&bn.input[2])?,
        get(&bn.input[3])?,
        get(&bn.input[4])?,
    );
    let w_name = &conv.input[1];
    let w = get(w_name)?;
    let w_dims = g
        .initializer
        .iter()
        .find(|t| &t.name == w_name)
        .map(|t| t.dims.clone())
        .unwrap_or_default();
    let channels = w_dims.first().copied().unwrap_or(0).max(0) as usize;
    let node = |what: &str| {
        format!(
            "BatchNormalization '{}' after Conv '{}': {what}",
            bn.name, conv.name
        )
    };
    if [&gamma, &beta, &mean, &var]
        .iter()
        .any(|v| v.len() != channels)
        || channels == 0
    {
        return Err(QuantizeError::Graph(node(&format!(
            "its parameters do not have the Conv's {channels} output channels"
        ))));
    }
    let bias = match conv.input.get(2).filter(|v| !v.is_empty()) {
        Some(name) => get(name)?,
        None => vec![0.0; channels],
    };
    let per_channel = w.len() / channels;
    let mut new_w = Vec::with_capacity(w.len());
    let mut new_b = Vec::with_capacity(channels);
    for ch in 0..channels {
        let var_eps = f64::from(var[ch]) + eps;
        if var_eps <= 0.0 || !var_eps.is_finite() {
            return Err(QuantizeError::Graph(node(&format!(
                "channel {ch} has variance + epsilon {var_eps}, not positive"
            ))));
        }
        let s = f64::from(gamma[ch]) / var_eps.sqrt();
        new_w.extend(
            w[ch * per_channel..(ch + 1) * per_channel]
                .iter()
                .map(|&v| (f64::from(v) * s) as f32),
        );
        new_b.push(((f64::from(bias[ch]) - f64::from(mean[ch])) * s + f64::from(beta[ch])) as f32);
    }
    let mut names = super::Names::new(g);
    let w_new_name = names.fresh(&format!("{w_name}_bn_folded"));
    let b_new_name = names.fresh(&format!("{}_bn_folded_bias", conv.name));
    g.initializer
        .push(f32_initializer(&w_new_name, &w_dims, &new_w));
    g.initializer
        .push(f32_initializer(&b_new_name, &[channels as i64], &new_b));
    let conv = &mut g.node[c];
    conv.input.truncate(2);
    conv.input[1] = w_new_name;
    conv.input.push(b_new_name);
    conv.output[0] = bn.output[0].clone();
    g.node.remove(b);
    drop_unused_initializers(g);
    Ok(())
}

/// Removes initializers no node reads any more (the replaced weights and
/// the BatchNormalization's parameters), and their graph-input entries.
fn drop_unused_initializers(g: &mut pb::GraphProto) {
    let used: std::collections::HashSet<String> = g
        .node
        .iter()
        .flat_map(|n| n.input.iter().cloned())
        .chain(g.output.iter().map(|o| o.name.clone()))
        .collect();
    let dropped: Vec<String> = g
        .initializer
        .iter()
        .filter(|t| !used.contains(&t.name))
        .map(|t| t.name.clone())
        .collect();
    g.initializer.retain(|t| used.contains(&t.name));
    g.input.retain(|i| !dropped.contains(&i.name));
}

fn f32_initializer(name: &str, dims: &[i64], v: &[f32]) -> pb::TensorProto {
    pb::TensorProto {
        dims: dims.to_vec(),
        data_type: pb::tensor_proto::DataType::Float as i32,
        name: name.into(),
        raw_data: v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::run_tinykd;
    use crate::tensor_file::HostTensor;
    use prost::Message;
    use std::path::Path;

    fn attr_ints(name: &str, v: &[i64]) -> pb::AttributeProto {
        pb::AttributeProto {
            name: name.into(),
            r#type: pb::attribute_proto::AttributeType::Ints as i32,
            ints: v.to_vec(),
            ..Default::default()
        }
    }

    fn value(name: &str, dims: &[i64]) -> pb::ValueInfoProto {
        use pb::tensor_shape_proto::{dimension::Value, Dimension};
        pb::ValueInfoProto {
            name: name.into(),
            r#type: Some(pb::TypeProto {
                denotation: String::new(),
                value: Some(pb::type_proto::Value::TensorType(pb::type_proto::Tensor {
                    elem_type: pb::tensor_proto::DataType::Float as i32,
                    shape: Some(pb::TensorShapeProto {
                        dim: dims
                            .iter()
                            .map(|&d| Dimension {
                                denotation: String::new(),
                                value: Some(Value::DimValue(d)),
                            })
                            .collect(),
                    }),
                })),
            }),
            doc_string: String::new(),
        }
    }

    /// x[1,2,5,5] → Conv(3 out, 3×3, pad 1, bias) → BN → Relu → y.
    fn conv_bn_model(with_bias: bool) -> pb::ModelProto {
        let vals = |n: usize, k: f32| {
            (0..n)
                .map(|i| (i as f32 * 0.37 + k).sin())
                .collect::<Vec<_>>()
        };
        let mut conv_inputs = vec!["x".to_string(), "w".to_string()];
        let mut init = vec![f32_initializer("w", &[3, 2, 3, 3], &vals(54, 0.1))];
        if with_bias {
            conv_inputs.push("b".into());
            init.push(f32_initializer("b", &[3], &vals(3, 0.7)));
        }
        init.push(f32_initializer("gamma", &[3], &[1.5, -0.5, 0.8]));
        init.push(f32_initializer("beta", &[3], &[0.1, 0.2, -0.3]));
        init.push(f32_initializer("mean", &[3], &[0.05, -0.4, 0.3]));
        init.push(f32_initializer("var", &[3], &[0.9, 2.5, 0.01]));
        let g = pb::GraphProto {
            name: "conv_bn".into(),
            node: vec![
                pb::NodeProto {
                    input: conv_inputs,
                    output: vec!["c".into()],
                    name: "conv".into(),
                    op_type: "Conv".into(),
                    attribute: vec![
                        attr_ints("kernel_shape", &[3, 3]),
                        attr_ints("pads", &[1, 1, 1, 1]),
                    ],
                    ..Default::default()
                },
                pb::NodeProto {
                    input: ["c", "gamma", "beta", "mean", "var"]
                        .map(String::from)
                        .to_vec(),
                    output: vec!["n".into()],
                    name: "bn".into(),
                    op_type: "BatchNormalization".into(),
                    ..Default::default()
                },
                pb::NodeProto {
                    input: vec!["n".into()],
                    output: vec!["y".into()],
                    name: "relu".into(),
                    op_type: "Relu".into(),
                    ..Default::default()
                },
            ],
            initializer: init,
            input: vec![value("x", &[1, 2, 5, 5])],
            output: vec![value("y", &[1, 3, 5, 5])],
            ..Default::default()
        };
        pb::ModelProto {
            ir_version: 8,
            opset_import: vec![pb::OperatorSetIdProto {
                domain: String::new(),
                version: 13,
            }],
            graph: Some(g),
            ..Default::default()
        }
    }

    fn run(m: &pb::ModelProto) -> Vec<f32> {
        let x: Vec<f32> = (0..50).map(|i| (i as f32 * 0.61).cos()).collect();
        let input = HostTensor::f32("x", vec![1, 2, 5, 5], x);
        let out = run_tinykd(Path::new("conv_bn.onnx"), &m.encode_to_vec(), &[input]).unwrap();
        out[0].as_f32().unwrap().to_vec()
    }

    #[test]
    fn folded_conv_computes_what_conv_then_batch_norm_did() {
        for with_bias in [true, false] {
            let mut m = conv_bn_model(with_bias);
            let want = run(&m);
            let n = fold_batch_norms(m.graph.as_mut().unwrap()).unwrap();
            assert_eq!(n, 1);
            let g = m.graph.as_ref().unwrap();
            assert!(g.node.iter().all(|n| n.op_type != "BatchNormalization"));
            assert_eq!(g.node[0].output[0], "n");
            for name in ["gamma", "beta", "mean", "var", "w"] {
                assert!(
                    g.initializer.iter().all(|t| t.name != name),
                    "{name} left behind"
                );
            }
            let got = run(&m);
            for (a, b) in got.iter().zip(&want) {
                assert!((a - b).abs() <= 1e-5 * b.abs().max(1.0), "{a} vs {b}");
            }
        }
    }

    #[test]
    fn batch_norm_with_another_reader_or_mismatched_channels_is_handled() {
        // A second reader of the Conv output: nothing is folded.
        let mut m = conv_bn_model(true);
        let g = m.graph.as_mut().unwrap();
        g.output.push(value("c", &[1, 3, 5, 5]));
        assert_eq!(fold_batch_norms(g).unwrap(), 0);
        // Parameters for 2 channels on a 3-channel Conv: a clear error.
        let mut m = conv_bn_model(true);
        let g = m.graph.as_mut().unwrap();
        let gamma = g
            .initializer
            .iter_mut()
            .find(|t| t.name == "gamma")
            .unwrap();
        *gamma = f32_initializer("gamma", &[2], &[1.0, 1.0]);
        let e = fold_batch_norms(g).unwrap_err().to_string();
        assert!(e.contains("'bn'") && e.contains("3 output channels"), "{e}");
    }
}
