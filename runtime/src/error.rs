//! The runtime's one error type. Errors own short copies of the names they
//! mention (no allocation), so they outlive the model bytes.

use crate::proto::onnx::ProtoError;
use crate::proto::wire::WireError;
use crate::tensor::DType;

/// A value, node or op name, truncated to fit without allocation.
pub type Name = heapless::String<48>;

/// Copies `s` into a [`Name`], cutting long names with an ellipsis.
pub fn name(s: &str) -> Name {
    let mut out = Name::new();
    if s.len() <= out.capacity() {
        let _ = out.push_str(s);
        return out;
    }
    let mut cut = out.capacity() - 3;
    while !s.is_char_boundary(cut) {
        cut -= 1;
    }
    let _ = out.push_str(&s[..cut]);
    let _ = out.push_str("...");
    out
}

/// Where in the graph an error was found: the node's name (or its index when
/// unnamed) and its op type.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct At {
    /// Node name, or `#<index>` for an unnamed node.
    pub node: Name,
    /// The node's `op_type`.
    pub op: Name,
}

impl At {
    /// Names node `index` (`node_name` may be empty) running `op`.
    pub fn node(index: usize, node_name: &str, op: &str) -> At {
        let node = if node_name.is_empty() {
            // Digit by digit rather than `write!`: loading a model must not
            // pull `core::fmt` into a firmware that never prints an error.
            let mut digits = [0u8; 20];
            let mut start = digits.len();
            let mut rest = index;
            loop {
                start -= 1;
                digits[start] = b'0' + (rest % 10) as u8;
                rest /= 10;
                if rest == 0 {
                    break;
                }
            }
            let mut n = Name::new();
            let _ = n.push('#');
            for &d in &digits[start..] {
                let _ = n.push(char::from(d));
            }
            n
        } else {
            name(node_name)
        };
        At { node, op: name(op) }
    }
}

impl core::fmt::Display for At {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "node '{}' ({})", self.node, self.op)
    }
}

/// Everything that can go wrong loading or running a model.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The bytes are not a well-formed protobuf message.
    #[error("malformed {message}: {reason}")]
    Proto {
        /// Which message failed to decode.
        message: &'static str,
        /// The wire-level problem.
        reason: WireErrorText,
    },
    /// The model has no graph, or the graph is empty of outputs.
    #[error("invalid model: {0}")]
    Model(&'static str),
    /// The model imports an opset this runtime does not implement.
    #[error("unsupported opset: domain '{domain}' version {version} ({reason})")]
    Opset {
        /// The opset domain ("" is ai.onnx).
        domain: Name,
        /// The imported version.
        version: i64,
        /// Why it is not accepted.
        reason: &'static str,
    },
    /// A node uses an op (or op version) the runtime does not implement.
    #[error("{at}: unsupported op{detail}")]
    UnsupportedOp {
        /// The node.
        at: At,
        /// Extra detail such as the domain or op version.
        detail: Name,
    },
    /// A node uses a valid ONNX feature the runtime does not implement.
    #[error("{at}: unsupported: {what}")]
    Unsupported {
        /// The node.
        at: At,
        /// The missing feature.
        what: &'static str,
    },
    /// A node's attribute is missing, malformed or has an invalid value.
    #[error("{at}: attribute '{attribute}': {reason}")]
    Attribute {
        /// The node.
        at: At,
        /// The attribute name.
        attribute: Name,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A node's input or output is wrong (count, type, shape, constness).
    #[error("{at}: {reason} (value '{value}')")]
    Node {
        /// The node.
        at: At,
        /// The value concerned (may be empty).
        value: Name,
        /// What is wrong.
        reason: &'static str,
    },
    /// A graph input, output, initializer or intermediate value is invalid.
    #[error("value '{value}': {reason}")]
    Value {
        /// The value's name.
        value: Name,
        /// What is wrong.
        reason: &'static str,
    },
    /// A value has an element type the runtime does not run.
    #[error("value '{value}': unsupported element type {dtype}")]
    DType {
        /// The value's name.
        value: Name,
        /// Its element type.
        dtype: DType,
    },
    /// The model exceeds one of the runtime's fixed capacities.
    #[error("model too large: more than {limit} {what}")]
    TooLarge {
        /// What overflowed (nodes, values, ...).
        what: &'static str,
        /// The capacity.
        limit: usize,
    },
    /// The arena handed to `Session::new` is smaller than `Model::arena_size()`.
    #[error("arena too small: {needed} bytes needed, {got} given")]
    ArenaTooSmall {
        /// Bytes needed.
        needed: usize,
        /// Bytes given.
        got: usize,
    },
    /// `run` was given the wrong number of inputs or outputs.
    #[error("expected {expected} {what}, got {got}")]
    Arity {
        /// "inputs" or "outputs".
        what: &'static str,
        /// How many the model has.
        expected: usize,
        /// How many were passed.
        got: usize,
    },
    /// An input or output buffer of `Session::run_typed` has the wrong
    /// element type.
    #[error("{what} {index} ('{value}'): expected {expected} elements, got {got} elements")]
    BufferType {
        /// "input" or "output".
        what: &'static str,
        /// Its position.
        index: usize,
        /// The graph value's name.
        value: Name,
        /// The value's element type.
        expected: DType,
        /// The buffer's.
        got: DType,
    },
    /// An input or output buffer has the wrong length.
    #[error("{what} {index} ('{value}'): expected {expected} elements, got {got}")]
    BufferLength {
        /// "input" or "output".
        what: &'static str,
        /// Its position.
        index: usize,
        /// The graph value's name.
        value: Name,
        /// Elements the model needs.
        expected: usize,
        /// Elements passed.
        got: usize,
    },
}

impl Error {
    /// Whether the model may be valid ONNX that uses something this runtime
    /// does not implement (as opposed to a malformed model or a misuse).
    pub fn is_unsupported(&self) -> bool {
        matches!(
            self,
            Error::UnsupportedOp { .. }
                | Error::Unsupported { .. }
                | Error::DType { .. }
                | Error::Opset { .. }
                | Error::TooLarge { .. }
        )
    }
}

/// [`WireError`] rendered for messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WireErrorText(pub WireError);

impl core::fmt::Display for WireErrorText {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self.0 {
            WireError::Truncated => {
                f.write_str("truncated field (length runs past the end of its message)")
            }
            WireError::VarintTooLong => f.write_str("varint longer than 10 bytes"),
            WireError::BadWireType(t) => write!(f, "unknown wire type {t}"),
            WireError::BadFieldNumber => f.write_str("field number 0"),
        }
    }
}

impl From<ProtoError> for Error {
    fn from(e: ProtoError) -> Self {
        Error::Proto {
            message: e.message,
            reason: WireErrorText(e.error),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unnamed_nodes_are_named_by_index() {
        assert_eq!(At::node(0, "", "Relu").node, "#0");
        assert_eq!(At::node(1234, "", "Relu").node, "#1234");
        let max = At::node(usize::MAX, "", "Relu").node;
        assert_eq!(max.as_str(), format!("#{}", usize::MAX));
        assert_eq!(At::node(7, "fc1", "Gemm").node, "fc1");
    }
}
