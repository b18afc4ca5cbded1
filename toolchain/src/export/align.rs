//! Aligning initializer data in an encoded ONNX model.
//!
//! A model linked into flash is executed in place, so every initializer's
//! `raw_data` must start at a file offset that is a multiple of [`ALIGN`].
//! prost writes a message's fields in field-number order, so the bytes just
//! before an initializer's `raw_data` (field 9 of TensorProto) are, going
//! backwards: its `name` (8), `data_type` (2), `dims` (1), its own length
//! prefix, and then the end of the previous thing in GraphProto field order,
//! which is the previous initializer's `doc_string` (TensorProto field 12,
//! written after `raw_data`) or, for the first initializer, the graph `name`
//! (2) and the nodes (1), ending with the last node's `doc_string` (6).
//! These doc strings are the padding: every reader skips them, and growing
//! one moves everything after it. So:
//!
//! - pad slot 0 is the last node's `doc_string` (before the first initializer),
//! - pad slot `i + 1` is initializer `i`'s `doc_string` (before initializer `i + 1`).
//!
//! [`encode_aligned`] encodes, locates every `raw_data` with tinykd-runtime's
//! zero-copy parser (the parser the devices use), and grows each slot with
//! spaces by exactly the bytes needed (a slot going from empty to set adds
//! its 2-byte key and length too; a longer length prefix adds a byte). It
//! re-encodes until every offset is aligned: only a length prefix of an
//! enclosing message (the tensor, the node, the graph) growing by a byte can
//! undo a pass, which takes a further pass at most a few times. Nothing is
//! assembled by hand; [`check_alignment`] verifies the result with prost.

use super::ExportError;
use prost::Message;
use tinykd_runtime::proto::onnx::{GraphView, ModelView, TensorData, TensorView};
use tract_onnx::pb;

/// The alignment, in bytes, of every initializer's `raw_data` in the file.
pub const ALIGN: usize = 16;

/// Encoding passes before giving up (two are the norm).
const MAX_PASSES: usize = 32;

/// Where one initializer's `raw_data` lies in the file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct RawData {
    /// The initializer's name.
    pub name: String,
    /// Offset of the first byte of `raw_data` from the start of the file.
    pub offset: usize,
    /// Its length in bytes.
    pub len: usize,
}

fn decode_error(e: tinykd_runtime::proto::onnx::ProtoError) -> ExportError {
    ExportError::Decode {
        reason: tinykd_runtime::Error::from(e).to_string(),
    }
}

/// Every initializer with `raw_data`, in file order, with its offset.
/// Initializers with typed data (`float_data`, ...) or none are skipped.
pub(crate) fn raw_data_offsets(bytes: &[u8]) -> Result<Vec<RawData>, ExportError> {
    let model = ModelView::parse(bytes).map_err(decode_error)?;
    let graph = GraphView::parse(model.graph).map_err(decode_error)?;
    let mut out = Vec::new();
    for t in graph.initializers() {
        let view = TensorView::parse(t).map_err(decode_error)?;
        if let TensorData::Raw(raw) = view.data {
            // `raw` borrows from `bytes`, so this is its offset in the file.
            let offset = raw.as_ptr() as usize - bytes.as_ptr() as usize;
            out.push(RawData {
                name: view.name.to_string(),
                offset,
                len: raw.len(),
            });
        }
    }
    Ok(out)
}

/// Encoded size of a string field with a one-byte key (field number < 16).
fn string_field_len(len: usize) -> usize {
    match len {
        0 => 0, // proto3: an empty string is not written
        n => 1 + prost::encoding::encoded_len_varint(n as u64) + n,
    }
}

/// Appends spaces to `slot` so that its encoded field grows by `need` bytes
/// modulo [`ALIGN`] (`need` in 1..ALIGN); returns the growth in bytes.
fn pad(slot: &mut String, need: usize) -> usize {
    let before = string_field_len(slot.len());
    let mut add = 1;
    while (string_field_len(slot.len() + add) - before) % ALIGN != need {
        add += 1;
    }
    slot.extend(std::iter::repeat_n(' ', add));
    string_field_len(slot.len()) - before
}

/// Encodes `model` with prost, growing the padding doc strings (see the
/// module docs) until every initializer's `raw_data` is aligned.
pub(crate) fn encode_aligned(model: &mut pb::ModelProto) -> Result<Vec<u8>, ExportError> {
    let internal = |reason: &str| ExportError::Decode {
        reason: format!("alignment: {reason}"),
    };
    for _ in 0..MAX_PASSES {
        let bytes = model.encode_to_vec();
        let raws = raw_data_offsets(&bytes)?;
        if raws.iter().all(|r| r.offset % ALIGN == 0) {
            return Ok(bytes);
        }
        let graph = model
            .graph
            .as_mut()
            .ok_or_else(|| internal("the model has no graph"))?;
        // The slot before initializer `i` is initializer `i - 1`'s doc
        // string; the exporter only writes raw data, so `raws` lines up
        // with `graph.initializer`.
        if raws.len() != graph.initializer.len() {
            return Err(internal("an initializer without raw_data"));
        }
        let mut shift = 0;
        for (i, r) in raws.iter().enumerate() {
            let need = (ALIGN - (r.offset + shift) % ALIGN) % ALIGN;
            if need == 0 {
                continue;
            }
            let slot = match i {
                0 => {
                    &mut graph
                        .node
                        .last_mut()
                        .ok_or_else(|| internal("initializers but no node to pad"))?
                        .doc_string
                }
                _ => &mut graph.initializer[i - 1].doc_string,
            };
            shift += pad(slot, need);
        }
    }
    Err(internal("padding did not converge"))
}

/// Checks that `bytes` is an ONNX model (decoded with prost) whose every
/// initializer's `raw_data` starts at a file offset that is a multiple of
/// [`ALIGN`]. The offsets come from tinykd-runtime's zero-copy parser and
/// are cross-checked against prost's decoding (same names, same bytes).
pub fn check_alignment(bytes: &[u8]) -> Result<(), ExportError> {
    let model = pb::ModelProto::decode(bytes).map_err(|e| ExportError::Decode {
        reason: e.to_string(),
    })?;
    let graph = model.graph.ok_or_else(|| ExportError::Decode {
        reason: "the model has no graph".into(),
    })?;
    let raws = raw_data_offsets(bytes)?;
    let decoded: Vec<&pb::TensorProto> = graph
        .initializer
        .iter()
        .filter(|t| !t.raw_data.is_empty())
        .collect();
    let disagree = |what: String| ExportError::Decode {
        reason: format!("prost and the runtime's parser disagree: {what}"),
    };
    if decoded.len() != raws.len() {
        return Err(disagree(format!(
            "{} initializers with raw_data, {} found",
            decoded.len(),
            raws.len()
        )));
    }
    for (t, r) in decoded.iter().zip(&raws) {
        if t.name != r.name || t.raw_data != bytes[r.offset..r.offset + r.len] {
            return Err(disagree(format!("initializer `{}`", t.name)));
        }
        if r.offset % ALIGN != 0 {
            return Err(ExportError::Misaligned {
                tensor: r.name.clone(),
                offset: r.offset,
                align: ALIGN,
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tensor(name: &str, len: usize) -> pb::TensorProto {
        pb::TensorProto {
            name: name.into(),
            dims: vec![len as i64],
            data_type: pb::tensor_proto::DataType::Float as i32,
            raw_data: (0..len * 4).map(|i| i as u8).collect(),
            ..Default::default()
        }
    }

    fn model(sizes: &[usize]) -> pb::ModelProto {
        pb::ModelProto {
            ir_version: 8,
            graph: Some(pb::GraphProto {
                name: "g".into(),
                node: vec![pb::NodeProto {
                    op_type: "Relu".into(),
                    ..Default::default()
                }],
                initializer: sizes
                    .iter()
                    .enumerate()
                    .map(|(i, &n)| tensor(&format!("t{i}"), n))
                    .collect(),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn pad_grows_by_the_needed_amount() {
        for start in [0, 1, 5, 120, 126, 127, 128, 300] {
            for need in 1..ALIGN {
                let mut s = " ".repeat(start);
                let before = string_field_len(s.len());
                let grown = pad(&mut s, need);
                assert_eq!(grown, string_field_len(s.len()) - before);
                assert_eq!(grown % ALIGN, need, "start {start}, need {need}");
            }
        }
    }

    #[test]
    fn aligns_odd_sizes_including_varint_boundaries() {
        // Sizes around the 1- and 2-byte length-prefix limits (128, 16384 bytes).
        let sizes = [1, 3, 31, 32, 33, 4095, 4096, 4097, 7, 1];
        let mut m = model(&sizes);
        let unpadded = m.encode_to_vec();
        assert!(
            check_alignment(&unpadded).is_err(),
            "the test needs a misaligned start"
        );
        let bytes = encode_aligned(&mut m).unwrap();
        check_alignment(&bytes).unwrap();
        let raws = raw_data_offsets(&bytes).unwrap();
        assert_eq!(raws.len(), sizes.len());
        for (r, n) in raws.iter().zip(sizes) {
            assert_eq!(r.len, n * 4);
            assert_eq!(r.offset % ALIGN, 0, "{}", r.name);
        }
        // Padding is small: under 2·ALIGN per slot.
        assert!(bytes.len() < unpadded.len() + (sizes.len() + 1) * 2 * ALIGN);
    }

    #[test]
    fn misalignment_is_reported_with_the_tensor() {
        let mut m = model(&[2, 3]);
        let bytes = encode_aligned(&mut m).unwrap();
        // One byte more in front of everything misaligns every tensor.
        m.producer_name = "x".repeat(m.producer_name.len() + 1);
        let shifted = m.encode_to_vec();
        assert_ne!(shifted.len(), bytes.len());
        let err = check_alignment(&shifted).unwrap_err().to_string();
        assert!(
            err.contains("`t0`") && err.contains("multiple of 16"),
            "{err}"
        );
        assert!(check_alignment(b"\x08").is_err(), "a truncated model");
    }
}
