//! Zero-copy views of the ONNX messages the runtime reads (onnx.proto3
//! field numbers). A view keeps the message's bytes and decodes fields on
//! demand; nothing is copied and nothing is allocated.

use super::wire::{Field, Fields, PackedVarints, WireError};

/// A ModelProto / GraphProto / ... field that failed to decode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProtoError {
    /// The message being decoded, e.g. `"NodeProto"`.
    pub message: &'static str,
    /// What went wrong.
    pub error: WireError,
}

fn fields<'a>(
    message: &'static str,
    bytes: &'a [u8],
) -> impl Iterator<Item = Result<Field<'a>, ProtoError>> {
    Fields::new(bytes).map(move |f| f.map_err(|error| ProtoError { message, error }))
}

fn utf8(bytes: &[u8]) -> &str {
    // ONNX strings are UTF-8; an invalid name is shown as "<invalid utf-8>"
    // rather than failing, because names only label errors and match values.
    core::str::from_utf8(bytes).unwrap_or("<invalid utf-8>")
}

/// Iterator over every occurrence of one repeated length-delimited field.
#[derive(Clone, Debug)]
pub struct Repeated<'a> {
    fields: Fields<'a>,
    number: u32,
}

impl<'a> Iterator for Repeated<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        // Malformed fields were rejected when the view was created.
        for field in self.fields.by_ref() {
            if let Ok(Field::Len(n, bytes)) = field {
                if n == self.number {
                    return Some(bytes);
                }
            }
        }
        None
    }
}

fn repeated(bytes: &[u8], number: u32) -> Repeated<'_> {
    Repeated {
        fields: Fields::new(bytes),
        number,
    }
}

/// Checks that a whole message decodes, so later lazy reads cannot fail.
fn check(message: &'static str, bytes: &[u8]) -> Result<(), ProtoError> {
    fields(message, bytes).try_for_each(|f| f.map(|_| ()))
}

/// `ModelProto`.
#[derive(Clone, Copy, Debug)]
pub struct ModelView<'a> {
    /// `ir_version`.
    pub ir_version: i64,
    /// `producer_name`.
    pub producer_name: &'a str,
    /// `producer_version`.
    pub producer_version: &'a str,
    /// The `graph` field (empty if absent).
    pub graph: &'a [u8],
    /// Whether the model carries `functions` (local functions; unsupported).
    pub has_functions: bool,
    bytes: &'a [u8],
}

impl<'a> ModelView<'a> {
    /// Decodes the top level of a serialized ModelProto.
    pub fn parse(bytes: &'a [u8]) -> Result<Self, ProtoError> {
        let mut m = ModelView {
            ir_version: 0,
            producer_name: "",
            producer_version: "",
            graph: &[],
            has_functions: false,
            bytes,
        };
        for field in fields("ModelProto", bytes) {
            match field? {
                Field::Varint(1, v) => m.ir_version = v as i64,
                Field::Len(2, s) => m.producer_name = utf8(s),
                Field::Len(3, s) => m.producer_version = utf8(s),
                Field::Len(7, g) => m.graph = g,
                Field::Len(25, _) => m.has_functions = true,
                _ => {}
            }
        }
        Ok(m)
    }

    /// `opset_import` entries as (domain, version).
    pub fn opset_imports(&self) -> impl Iterator<Item = Result<(&'a str, i64), ProtoError>> + 'a {
        repeated(self.bytes, 8).map(|b| {
            let (mut domain, mut version) = ("", 0);
            for f in fields("OperatorSetIdProto", b) {
                match f? {
                    Field::Len(1, s) => domain = utf8(s),
                    Field::Varint(2, v) => version = v as i64,
                    _ => {}
                }
            }
            Ok((domain, version))
        })
    }

    /// `metadata_props` entries as (key, value).
    pub fn metadata_props(
        &self,
    ) -> impl Iterator<Item = Result<(&'a str, &'a str), ProtoError>> + 'a {
        repeated(self.bytes, 14).map(|b| {
            let (mut key, mut value) = ("", "");
            for f in fields("StringStringEntryProto", b) {
                match f? {
                    Field::Len(1, s) => key = utf8(s),
                    Field::Len(2, s) => value = utf8(s),
                    _ => {}
                }
            }
            Ok((key, value))
        })
    }
}

/// `GraphProto`.
#[derive(Clone, Copy, Debug)]
pub struct GraphView<'a> {
    /// `name`.
    pub name: &'a str,
    /// Whether the graph has `sparse_initializer`s (unsupported).
    pub has_sparse_initializers: bool,
    bytes: &'a [u8],
}

impl<'a> GraphView<'a> {
    /// Decodes a serialized GraphProto.
    pub fn parse(bytes: &'a [u8]) -> Result<Self, ProtoError> {
        check("GraphProto", bytes)?;
        let mut g = GraphView {
            name: "",
            has_sparse_initializers: false,
            bytes,
        };
        for field in Fields::new(bytes).flatten() {
            match field {
                Field::Len(2, s) => g.name = utf8(s),
                Field::Len(15, _) => g.has_sparse_initializers = true,
                _ => {}
            }
        }
        Ok(g)
    }

    /// `node` messages, in file order.
    pub fn nodes(&self) -> Repeated<'a> {
        repeated(self.bytes, 1)
    }
    /// `initializer` tensors.
    pub fn initializers(&self) -> Repeated<'a> {
        repeated(self.bytes, 5)
    }
    /// `input` value infos.
    pub fn inputs(&self) -> Repeated<'a> {
        repeated(self.bytes, 11)
    }
    /// `output` value infos.
    pub fn outputs(&self) -> Repeated<'a> {
        repeated(self.bytes, 12)
    }
    /// `value_info` entries (intermediate types; informative only).
    pub fn value_infos(&self) -> Repeated<'a> {
        repeated(self.bytes, 13)
    }
}

/// `NodeProto`.
#[derive(Clone, Copy, Debug)]
pub struct NodeView<'a> {
    /// `name` (may be empty).
    pub name: &'a str,
    /// `op_type`.
    pub op_type: &'a str,
    /// `domain` ("" and "ai.onnx" are the default domain).
    pub domain: &'a str,
    bytes: &'a [u8],
}

impl<'a> NodeView<'a> {
    /// Decodes a serialized NodeProto.
    pub fn parse(bytes: &'a [u8]) -> Result<Self, ProtoError> {
        let mut n = NodeView {
            name: "",
            op_type: "",
            domain: "",
            bytes,
        };
        for field in fields("NodeProto", bytes) {
            match field? {
                Field::Len(3, s) => n.name = utf8(s),
                Field::Len(4, s) => n.op_type = utf8(s),
                Field::Len(7, s) => n.domain = utf8(s),
                _ => {}
            }
        }
        Ok(n)
    }

    /// `input` names (an empty name is an omitted optional input).
    pub fn inputs(&self) -> impl Iterator<Item = &'a str> + 'a {
        repeated(self.bytes, 1).map(utf8)
    }
    /// `output` names.
    pub fn outputs(&self) -> impl Iterator<Item = &'a str> + 'a {
        repeated(self.bytes, 2).map(utf8)
    }
    /// `attribute` messages.
    pub fn attributes(&self) -> impl Iterator<Item = Result<AttributeView<'a>, ProtoError>> + 'a {
        repeated(self.bytes, 5).map(AttributeView::parse)
    }
}

/// Value of `AttributeProto.type`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttributeKind {
    /// FLOAT.
    Float,
    /// INT.
    Int,
    /// STRING.
    String,
    /// TENSOR.
    Tensor,
    /// FLOATS.
    Floats,
    /// INTS.
    Ints,
    /// Any other type (graphs, sparse tensors, strings lists, ...).
    Other(u64),
}

/// `AttributeProto`.
#[derive(Clone, Copy, Debug)]
pub struct AttributeView<'a> {
    /// `name`.
    pub name: &'a str,
    /// `type`, or inferred from the field present when `type` is missing.
    pub kind: AttributeKind,
    /// `f`.
    pub f: f32,
    /// `i`.
    pub i: i64,
    /// `s`.
    pub s: &'a [u8],
    /// `t`.
    pub t: &'a [u8],
    /// Whether `ref_attr_name` is set (only valid inside functions).
    pub is_reference: bool,
    bytes: &'a [u8],
}

impl<'a> AttributeView<'a> {
    /// Decodes a serialized AttributeProto.
    pub fn parse(bytes: &'a [u8]) -> Result<Self, ProtoError> {
        let mut a = AttributeView {
            name: "",
            kind: AttributeKind::Other(0),
            f: 0.0,
            i: 0,
            s: &[],
            t: &[],
            is_reference: false,
            bytes,
        };
        let mut declared = None;
        let mut seen = AttributeKind::Other(0);
        for field in fields("AttributeProto", bytes) {
            match field? {
                Field::Len(1, s) => a.name = utf8(s),
                Field::Fixed32(2, bits) => {
                    a.f = f32::from_bits(bits);
                    seen = AttributeKind::Float;
                }
                Field::Varint(3, v) => {
                    a.i = v as i64;
                    seen = AttributeKind::Int;
                }
                Field::Len(4, s) => {
                    a.s = s;
                    seen = AttributeKind::String;
                }
                Field::Len(5, t) => {
                    a.t = t;
                    seen = AttributeKind::Tensor;
                }
                Field::Len(7, _) | Field::Fixed32(7, _) => seen = AttributeKind::Floats,
                Field::Len(8, _) | Field::Varint(8, _) => seen = AttributeKind::Ints,
                Field::Varint(20, v) => declared = Some(v),
                Field::Len(21, _) => a.is_reference = true,
                _ => {}
            }
        }
        a.kind = match declared {
            Some(1) => AttributeKind::Float,
            Some(2) => AttributeKind::Int,
            Some(3) => AttributeKind::String,
            Some(4) => AttributeKind::Tensor,
            Some(6) => AttributeKind::Floats,
            Some(7) => AttributeKind::Ints,
            Some(other) => AttributeKind::Other(other),
            None => seen,
        };
        Ok(a)
    }

    /// The whole serialized attribute.
    pub fn bytes(&self) -> &'a [u8] {
        self.bytes
    }

    /// The `ints` list (packed or not).
    pub fn ints(&self) -> impl Iterator<Item = i64> + 'a {
        Fields::new(self.bytes).flatten().flat_map(|f| {
            let (packed, single) = match f {
                Field::Len(8, b) => (b, None),
                Field::Varint(8, v) => (&[][..], Some(v as i64)),
                _ => (&[][..], None),
            };
            // A malformed packed list ends early; callers check the count.
            single.into_iter().chain(
                PackedVarints::new(packed)
                    .map_while(Result::ok)
                    .map(|v| v as i64),
            )
        })
    }

    /// The `floats` list (packed or not).
    pub fn floats(&self) -> impl Iterator<Item = f32> + 'a {
        Fields::new(self.bytes).flatten().flat_map(|f| {
            let (packed, single) = match f {
                Field::Len(7, b) => (b, None),
                Field::Fixed32(7, bits) => (&[][..], Some(f32::from_bits(bits))),
                _ => (&[][..], None),
            };
            single.into_iter().chain(
                packed
                    .chunks_exact(4)
                    .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])),
            )
        })
    }
}

/// `ValueInfoProto` restricted to tensor types.
#[derive(Clone, Copy, Debug)]
pub struct ValueInfoView<'a> {
    /// `name`.
    pub name: &'a str,
    /// `type.tensor_type.elem_type` (0 if absent).
    pub elem_type: i64,
    /// Whether the type is a tensor type at all.
    pub is_tensor: bool,
    /// Whether `tensor_type.shape` is present (absent = unknown rank).
    pub has_shape: bool,
    shape: &'a [u8],
}

/// One dimension of a `TensorShapeProto`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dim<'a> {
    /// A fixed size.
    Value(i64),
    /// A named symbolic size, bound at load time.
    Param(&'a str),
    /// Neither set: unknown.
    Unknown,
}

impl<'a> ValueInfoView<'a> {
    /// Decodes a serialized ValueInfoProto.
    pub fn parse(bytes: &'a [u8]) -> Result<Self, ProtoError> {
        let mut v = ValueInfoView {
            name: "",
            elem_type: 0,
            is_tensor: false,
            has_shape: false,
            shape: &[],
        };
        for field in fields("ValueInfoProto", bytes) {
            match field? {
                Field::Len(1, s) => v.name = utf8(s),
                Field::Len(2, ty) => {
                    for f in fields("TypeProto", ty) {
                        if let Field::Len(1, tensor) = f? {
                            v.is_tensor = true;
                            for f in fields("TypeProto.Tensor", tensor) {
                                match f? {
                                    Field::Varint(1, e) => v.elem_type = e as i64,
                                    Field::Len(2, shape) => {
                                        check("TensorShapeProto", shape)?;
                                        v.has_shape = true;
                                        v.shape = shape;
                                    }
                                    _ => {}
                                }
                            }
                        }
                    }
                }
                _ => {}
            }
        }
        Ok(v)
    }

    /// The dimensions of `tensor_type.shape`.
    pub fn dims(&self) -> impl Iterator<Item = Result<Dim<'a>, ProtoError>> + 'a {
        repeated(self.shape, 1).map(|d| {
            let mut dim = Dim::Unknown;
            for f in fields("TensorShapeProto.Dimension", d) {
                match f? {
                    Field::Varint(1, v) => dim = Dim::Value(v as i64),
                    Field::Len(2, s) => dim = Dim::Param(utf8(s)),
                    _ => {}
                }
            }
            Ok(dim)
        })
    }
}

/// Where a TensorProto keeps its elements.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TensorData<'a> {
    /// `raw_data`: little-endian elements, contiguous (maybe unaligned).
    Raw(&'a [u8]),
    /// A typed field (`float_data`, `int32_data`, `int64_data`, `double_data`,
    /// `uint64_data`): possibly split over several packed/unpacked fields.
    Typed {
        /// The field number holding the elements.
        field: u32,
        /// Bytes per element when packed as fixed-width, 0 for varints.
        width: u8,
        /// The whole message holding the field, to iterate its occurrences.
        message: &'a [u8],
    },
    /// No data at all (a zero-element tensor, or a missing payload).
    Empty,
}

/// `TensorProto`.
#[derive(Clone, Copy, Debug)]
pub struct TensorView<'a> {
    /// `name`.
    pub name: &'a str,
    /// `data_type`.
    pub data_type: i64,
    /// `data_location == EXTERNAL` or `external_data` present.
    pub is_external: bool,
    /// Whether `segment` is set (chunked tensors are unsupported).
    pub is_segmented: bool,
    /// Where the elements are.
    pub data: TensorData<'a>,
    bytes: &'a [u8],
}

impl<'a> TensorView<'a> {
    /// Decodes a serialized TensorProto.
    pub fn parse(bytes: &'a [u8]) -> Result<Self, ProtoError> {
        let mut t = TensorView {
            name: "",
            data_type: 0,
            is_external: false,
            is_segmented: false,
            data: TensorData::Empty,
            bytes,
        };
        let mut typed_field = None;
        for field in fields("TensorProto", bytes) {
            match field? {
                Field::Varint(2, v) => t.data_type = v as i64,
                Field::Len(3, _) => t.is_segmented = true,
                Field::Len(8, s) => t.name = utf8(s),
                Field::Len(9, raw) => t.data = TensorData::Raw(raw),
                Field::Len(13, _) => t.is_external = true,
                Field::Varint(14, 1) => t.is_external = true,
                Field::Len(n @ (4 | 5 | 7 | 10 | 11), _)
                | Field::Fixed32(n @ 4, _)
                | Field::Varint(n @ (5 | 7 | 11), _)
                | Field::Fixed64(n @ 10, _) => typed_field = Some(n),
                _ => {}
            }
        }
        if let (TensorData::Empty, Some(field)) = (t.data, typed_field) {
            let width = match field {
                4 => 4,  // float_data: fixed32
                10 => 8, // double_data: fixed64
                _ => 0,  // int32_data / int64_data / uint64_data: varint
            };
            t.data = TensorData::Typed {
                field,
                width,
                message: bytes,
            };
        }
        Ok(t)
    }

    /// `dims`, packed or not.
    pub fn dims(&self) -> impl Iterator<Item = Result<i64, ProtoError>> + 'a {
        Fields::new(self.bytes).flatten().flat_map(|f| {
            let (packed, single) = match f {
                Field::Len(1, b) => (b, None),
                Field::Varint(1, v) => (&[][..], Some(v as i64)),
                _ => (&[][..], None),
            };
            single
                .into_iter()
                .map(Ok)
                .chain(PackedVarints::new(packed).map(|v| {
                    v.map(|v| v as i64).map_err(|error| ProtoError {
                        message: "TensorProto.dims",
                        error,
                    })
                }))
        })
    }
}

/// Iterator over the raw 32- or 64-bit words of a typed data field:
/// fixed-width fields yield their bits, varint fields their value.
#[derive(Clone, Debug)]
pub struct TypedWords<'a> {
    fields: Fields<'a>,
    number: u32,
    width: usize,
    packed: &'a [u8],
    pos: usize,
}

impl<'a> TypedWords<'a> {
    /// Iterates the elements of field `number` in `message`, packed as
    /// `width`-byte words (0 = varints).
    pub fn new(message: &'a [u8], number: u32, width: u8) -> Self {
        TypedWords {
            fields: Fields::new(message),
            number,
            width: usize::from(width),
            packed: &[],
            pos: 0,
        }
    }
}

impl Iterator for TypedWords<'_> {
    type Item = Result<u64, WireError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if self.pos < self.packed.len() {
                let w = self.width;
                if w == 0 {
                    let r = super::wire::read_varint(self.packed, &mut self.pos);
                    if r.is_err() {
                        self.pos = self.packed.len();
                    }
                    return Some(r);
                }
                let Some(b) = self.packed.get(self.pos..self.pos.saturating_add(w)) else {
                    self.pos = self.packed.len();
                    return Some(Err(WireError::Truncated));
                };
                self.pos += w;
                let mut word = [0u8; 8];
                word[..w].copy_from_slice(b);
                return Some(Ok(u64::from_le_bytes(word)));
            }
            match self.fields.next()? {
                Ok(Field::Len(n, b)) if n == self.number => {
                    self.packed = b;
                    self.pos = 0;
                }
                Ok(Field::Fixed32(n, v)) if n == self.number => return Some(Ok(u64::from(v))),
                Ok(Field::Fixed64(n, v)) | Ok(Field::Varint(n, v)) if n == self.number => {
                    return Some(Ok(v))
                }
                Ok(_) => {}
                Err(e) => return Some(Err(e)),
            }
        }
    }
}
