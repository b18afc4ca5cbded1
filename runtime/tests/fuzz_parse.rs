//! Structure-aware fuzzing of `Model::parse` and `Session::run`.
//!
//! Small valid seed models (`tests/data/fuzz-seeds/`, written by
//! `scripts/gen_fuzz_seeds.py`, and `ort_qdq.onnx`, a QDQ model from ONNX
//! Runtime's quantizer, by `scripts/gen_ort_qdq.py`) are mutated: at the protobuf level (any
//! varint set to an extreme value, dims made huge or zero, a length varint
//! inflated or deflated at any nesting depth, two fields' tags swapped, wire
//! types and field numbers changed, fields deleted or duplicated), at the
//! graph level (a node input renamed to a later node's output so the graph
//! has a cycle or is not topologically sorted, nodes duplicated, deleted,
//! reordered or spliced in from another seed, op types and attributes
//! changed, the opset changed, graph outputs renamed) and at the byte level
//! (bit flips, byte sets, truncation, insertions, deletions, raw length
//! rewrites, random garbage).
//!
//! Every case must end in `Err` from `Model::parse`, or in a model whose
//! memory plan has no overlap and whose `Session::run` succeeds, writes every
//! output element, is deterministic and stays inside its arena: never a
//! panic, and never a case slower than [`STALL`]. The case sequence is fixed
//! (seeded), so a failure reproduces; failing inputs are written to
//! `$CARGO_TARGET_TMPDIR/fuzz-crashers/` so they can be kept as regression
//! files in `tests/data/fuzz-regressions/`, which `regressions_replay`
//! replays.
//!
//! `TINYKD_FUZZ_CASES` (default 60 000) and `TINYKD_FUZZ_SEED` change the
//! number of cases and the base seed for longer local fuzzing sessions.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::io::Write;
use std::panic::{self, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Once};
use std::time::{Duration, Instant};

use tinykd_runtime::{planner::find_overlap, Bindings, DType, Data, DataMut, Model, Session};

/// Cases run by `fuzz_mutated_models` unless `TINYKD_FUZZ_CASES` says otherwise.
const DEFAULT_CASES: usize = 60_000;
/// The floor on the number of cases.
const MIN_CASES: usize = 20_000;
/// A single parse + run slower than this is a stall (generous: the seeds run
/// in microseconds).
const STALL: Duration = Duration::from_secs(1);
/// A case still running after this long is an endless loop: the watchdog
/// saves the input and aborts the process.
const HANG: Duration = Duration::from_secs(20);
/// Default base seed of the case sequence.
const BASE_SEED: u64 = 0x7131_4b44_f022_5eed;
/// Models needing more arena + I/O bytes than this are parsed and checked
/// but not run (a valid model may legitimately be large).
const RUN_BYTES_LIMIT: usize = 8 << 20;
/// Models needing more multiply-accumulates than this are not run either.
const RUN_MACS_LIMIT: u64 = 10_000_000;
/// Bit pattern written into output buffers before a run; none may remain.
const SENTINEL: u32 = 0x7fa5_5a5a;
/// Arena guard bytes after the planned extent, checked after each run.
const GUARD: usize = 64;

// ---------------------------------------------------------------- RNG

/// SplitMix64: tiny, fast, and good enough to drive mutations.
#[derive(Clone)]
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        let mut r = Rng(seed);
        r.next();
        r
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (0 when `n == 0`).
    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }

    /// True with probability `num / den`.
    fn chance(&mut self, num: u64, den: u64) -> bool {
        self.next() % den < num
    }

    fn pick<'s, T>(&mut self, items: &'s [T]) -> &'s T {
        &items[self.below(items.len())]
    }

    /// A random element, `None` when there is none.
    fn pick_opt<'s, T>(&mut self, items: &'s [T]) -> Option<&'s T> {
        (!items.is_empty()).then(|| self.pick(items))
    }

    fn f32_in(&mut self, lo: f32, hi: f32) -> f32 {
        let unit = (self.next() >> 40) as f32 / (1u64 << 24) as f32;
        lo + (hi - lo) * unit
    }
}

/// The RNG seed of case `case` (independent of thread scheduling).
fn case_seed(base: u64, case: u64) -> u64 {
    let mut r = Rng::new(base ^ case.wrapping_mul(0xd6e8_feb8_6659_fd93));
    r.next()
}

// ---------------------------------------------------------------- protobuf tree

/// A decoded protobuf field. Length-delimited payloads that themselves decode
/// (and re-encode byte for byte) as a message are kept as a sub-tree, so a
/// mutation at any depth re-encodes with consistent enclosing lengths.
#[derive(Clone, Debug, PartialEq)]
struct Field {
    number: u64,
    /// Wire type written in the tag (may disagree with the payload after a
    /// mutation: that is the point).
    wire: u8,
    payload: Payload,
    /// Length written for a length-delimited payload instead of its real
    /// length (an inflated or deflated length).
    declared_len: Option<u64>,
}

#[derive(Clone, Debug, PartialEq)]
enum Payload {
    Varint(u64),
    Fixed64(u64),
    Fixed32(u32),
    Bytes(Vec<u8>),
    Msg(Vec<Field>),
}

const MAX_TREE_DEPTH: usize = 12;

fn read_varint(buf: &[u8], pos: &mut usize) -> Option<u64> {
    let mut v = 0u64;
    for i in 0..10 {
        let b = *buf.get(*pos)?;
        *pos += 1;
        v |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return Some(v);
        }
    }
    None
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn decode(buf: &[u8], depth: usize) -> Option<Vec<Field>> {
    let mut fields = Vec::new();
    let mut pos = 0;
    while pos < buf.len() {
        let tag = read_varint(buf, &mut pos)?;
        let number = tag >> 3;
        if number == 0 || number > u64::from(u32::MAX) {
            return None;
        }
        let wire = (tag & 7) as u8;
        let payload = match wire {
            0 => Payload::Varint(read_varint(buf, &mut pos)?),
            1 => {
                let b = buf.get(pos..pos + 8)?;
                pos += 8;
                Payload::Fixed64(u64::from_le_bytes(b.try_into().ok()?))
            }
            2 => {
                let len = usize::try_from(read_varint(buf, &mut pos)?).ok()?;
                let b = buf.get(pos..pos.checked_add(len)?)?;
                pos += len;
                match (depth < MAX_TREE_DEPTH && !b.is_empty())
                    .then(|| decode(b, depth + 1))
                    .flatten()
                {
                    Some(m) if encode(&m) == b => Payload::Msg(m),
                    _ => Payload::Bytes(b.to_vec()),
                }
            }
            5 => {
                let b = buf.get(pos..pos + 4)?;
                pos += 4;
                Payload::Fixed32(u32::from_le_bytes(b.try_into().ok()?))
            }
            _ => return None,
        };
        fields.push(Field {
            number,
            wire,
            payload,
            declared_len: None,
        });
    }
    Some(fields)
}

fn encode_into(fields: &[Field], out: &mut Vec<u8>) {
    for f in fields {
        put_varint(out, f.number.wrapping_shl(3) | u64::from(f.wire & 7));
        match &f.payload {
            Payload::Varint(v) => put_varint(out, *v),
            Payload::Fixed64(v) => out.extend_from_slice(&v.to_le_bytes()),
            Payload::Fixed32(v) => out.extend_from_slice(&v.to_le_bytes()),
            Payload::Bytes(b) => {
                put_varint(out, f.declared_len.unwrap_or(b.len() as u64));
                out.extend_from_slice(b);
            }
            Payload::Msg(m) => {
                let inner = encode(m);
                put_varint(out, f.declared_len.unwrap_or(inner.len() as u64));
                out.extend_from_slice(&inner);
            }
        }
    }
}

fn encode(fields: &[Field]) -> Vec<u8> {
    let mut out = Vec::new();
    encode_into(fields, &mut out);
    out
}

fn len_field(number: u64, bytes: &[u8]) -> Field {
    Field {
        number,
        wire: 2,
        payload: Payload::Bytes(bytes.to_vec()),
        declared_len: None,
    }
}

fn varint_field(number: u64, v: u64) -> Field {
    Field {
        number,
        wire: 0,
        payload: Payload::Varint(v),
        declared_len: None,
    }
}

/// Paths (index chains through nested messages) of every field matching `pred`.
fn paths(root: &[Field], pred: &dyn Fn(&Field, usize) -> bool) -> Vec<Vec<usize>> {
    fn walk(
        fields: &[Field],
        prefix: &mut Vec<usize>,
        out: &mut Vec<Vec<usize>>,
        pred: &dyn Fn(&Field, usize) -> bool,
    ) {
        for (i, f) in fields.iter().enumerate() {
            prefix.push(i);
            if pred(f, prefix.len() - 1) {
                out.push(prefix.clone());
            }
            if let Payload::Msg(m) = &f.payload {
                walk(m, prefix, out, pred);
            }
            prefix.pop();
        }
    }
    let mut out = Vec::new();
    walk(root, &mut Vec::new(), &mut out, pred);
    out
}

/// The message that holds the field at `path` (the root for a top-level field).
fn parent_mut<'t>(root: &'t mut Vec<Field>, path: &[usize]) -> &'t mut Vec<Field> {
    let mut fields = root;
    for &i in &path[..path.len() - 1] {
        fields = match &mut fields[i].payload {
            Payload::Msg(m) => m,
            _ => unreachable!("paths only go through messages"),
        };
    }
    fields
}

fn field_mut<'t>(root: &'t mut Vec<Field>, path: &[usize]) -> &'t mut Field {
    let last = *path.last().expect("non-empty path");
    &mut parent_mut(root, path)[last]
}

/// Sub-message `number` (first occurrence) of `fields`.
fn sub_mut(fields: &mut [Field], number: u64) -> Option<&mut Vec<Field>> {
    fields
        .iter_mut()
        .find(|f| f.number == number && f.wire == 2)
        .and_then(|f| match &mut f.payload {
            Payload::Msg(m) => Some(m),
            _ => None,
        })
}

fn sub(fields: &[Field], number: u64) -> Option<&Vec<Field>> {
    fields
        .iter()
        .find(|f| f.number == number && f.wire == 2)
        .and_then(|f| match &f.payload {
            Payload::Msg(m) => Some(m),
            _ => None,
        })
}

/// The bytes of a length-delimited field whatever its decoded form.
fn bytes_of(f: &Field) -> Option<Vec<u8>> {
    match &f.payload {
        Payload::Bytes(b) => Some(b.clone()),
        Payload::Msg(m) => Some(encode(m)),
        _ => None,
    }
}

/// Strings (field `number`, wire type 2) of a message.
fn strings(fields: &[Field], number: u64) -> Vec<Vec<u8>> {
    fields
        .iter()
        .filter(|f| f.number == number && f.wire == 2)
        .filter_map(bytes_of)
        .collect()
}

/// Indices of the fields `number` (wire type 2) of a message.
fn indices(fields: &[Field], number: u64) -> Vec<usize> {
    fields
        .iter()
        .enumerate()
        .filter(|(_, f)| f.number == number && f.wire == 2)
        .map(|(i, _)| i)
        .collect()
}

fn set_bytes(f: &mut Field, bytes: &[u8]) {
    f.wire = 2;
    f.payload = Payload::Bytes(bytes.to_vec());
    f.declared_len = None;
}

// ---------------------------------------------------------------- ONNX field numbers

const MODEL_OPSET_IMPORT: u64 = 8;
const MODEL_GRAPH: u64 = 7;
const GRAPH_NODE: u64 = 1;
const GRAPH_INITIALIZER: u64 = 5;
const GRAPH_INPUT: u64 = 11;
const GRAPH_OUTPUT: u64 = 12;
const NODE_INPUT: u64 = 1;
const NODE_OUTPUT: u64 = 2;
const NODE_OP_TYPE: u64 = 4;
const NODE_ATTRIBUTE: u64 = 5;
const TENSOR_NAME: u64 = 8;
const VALUE_INFO_NAME: u64 = 1;
const ATTR_NAME: u64 = 1;

#[rustfmt::skip]
const OP_TYPES: &[&str] = &[
    "Add", "AveragePool", "BatchNormalization", "Clip", "Concat", "Constant", "Conv",
    "Div", "Dropout", "Flatten", "Gemm", "GlobalAveragePool", "HardSigmoid",
    "HardSwish", "Identity", "LeakyRelu", "LogSoftmax", "MatMul", "MaxPool", "Mul",
    "Pad", "Relu", "Reshape", "Sigmoid", "Softmax", "Squeeze", "Sub", "Tanh",
    "Transpose", "Unsqueeze", "QuantizeLinear", "DequantizeLinear", "QLinearConv",
    "QLinearMatMul", "ConvInteger", "MatMulInteger", "NoSuchOp", "",
];

#[rustfmt::skip]
const ATTR_NAMES: &[&str] = &[
    "axis", "axes", "perm", "pads", "strides", "kernel_shape", "dilations", "group",
    "transA", "transB", "alpha", "beta", "epsilon", "auto_pad", "ceil_mode",
    "count_include_pad", "allowzero", "min", "max", "mode", "value", "value_float",
    "value_floats", "value_int", "value_ints", "ratio", "spatial", "training_mode",
    "storage_order", "seed", "is_test", "momentum", "block_size", "output_dtype",
    "precision", "saturate", "bogus",
];

#[rustfmt::skip]
const ATTR_STRINGS: &[&str] = &[
    "NOTSET", "SAME_UPPER", "SAME_LOWER", "VALID", "constant", "reflect", "", "\u{ff}",
];

/// Varint values that sit on type and limit boundaries.
fn interesting_u64(rng: &mut Rng, old: u64) -> u64 {
    #[rustfmt::skip]
    const VALUES: &[u64] = &[
        0, 1, 2, 3, 4, 7, 8, 9, 16, 127, 128, 255, 256, 65_535, 65_536, (1 << 20) + 1,
        (1 << 24) + 1, 1 << 28, (1 << 28) + 1, (1 << 31) - 1, 1 << 31, (1 << 32) - 1,
        1 << 32, (1 << 32) + 1, 1 << 40, (1 << 53) + 1, (1 << 63) - 1, 1 << 63,
        u64::MAX, u64::MAX - 1, -3i64 as u64, -9i64 as u64,
    ];
    match rng.below(5) {
        0 => old.wrapping_add(1),
        1 => old.wrapping_sub(1),
        2 => rng.next() >> rng.below(64),
        _ => *rng.pick(VALUES),
    }
}

fn interesting_i64(rng: &mut Rng) -> i64 {
    #[rustfmt::skip]
    const VALUES: &[i64] = &[
        -9, -3, -2, -1, 0, 0, 1, 1, 2, 2, 3, 4, 5, 7, 8, 9, 1 << 20, 1 << 24, 1 << 31,
        i64::MAX, i64::MIN,
    ];
    *rng.pick(VALUES)
}

fn interesting_f32(rng: &mut Rng) -> f32 {
    #[rustfmt::skip]
    const VALUES: &[f32] = &[
        0.0, -0.0, 1.0, -1.0, 0.5, 6.0, 1e-5, 1e30, -1e30, f32::MAX, f32::MIN,
        f32::INFINITY, f32::NEG_INFINITY, f32::NAN,
    ];
    if rng.chance(1, 4) {
        rng.f32_in(-4.0, 4.0)
    } else {
        *rng.pick(VALUES)
    }
}

// ---------------------------------------------------------------- mutators

/// The decoded seeds, shared by every case.
struct Seeds {
    names: Vec<String>,
    bytes: Vec<Vec<u8>>,
    trees: Vec<Vec<Field>>,
}

fn seed_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/fuzz-seeds")
}

fn regression_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/fuzz-regressions")
}

fn onnx_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = match std::fs::read_dir(dir) {
        Ok(entries) => entries
            .map(|e| e.expect("readable directory entry").path())
            .filter(|p| p.extension().is_some_and(|e| e == "onnx"))
            .collect(),
        Err(_) => Vec::new(),
    };
    files.sort();
    files
}

fn load_seeds() -> Seeds {
    let files = onnx_files(&seed_dir());
    assert!(
        files.len() >= 6,
        "expected the seed models in {} (run scripts/gen_fuzz_seeds.py)",
        seed_dir().display()
    );
    let mut seeds = Seeds {
        names: Vec::new(),
        bytes: Vec::new(),
        trees: Vec::new(),
    };
    for path in files {
        let bytes = std::fs::read(&path).expect("readable seed");
        let tree = decode(&bytes, 0).expect("seed decodes as protobuf");
        assert_eq!(
            encode(&tree),
            bytes,
            "{}: the tree must re-encode byte for byte",
            path.display()
        );
        seeds
            .names
            .push(path.file_stem().unwrap().to_string_lossy().into_owned());
        seeds.bytes.push(bytes);
        seeds.trees.push(tree);
    }
    seeds
}

/// Every value name a graph defines: graph inputs, initializers, node outputs.
fn value_names(graph: &[Field]) -> Vec<Vec<u8>> {
    let mut names = Vec::new();
    for f in graph.iter().filter(|f| f.wire == 2) {
        let (Payload::Msg(m), n) = (&f.payload, f.number) else {
            continue;
        };
        match n {
            GRAPH_INPUT => names.extend(strings(m, VALUE_INFO_NAME)),
            GRAPH_INITIALIZER => names.extend(strings(m, TENSOR_NAME)),
            GRAPH_NODE => names.extend(strings(m, NODE_OUTPUT)),
            _ => {}
        }
    }
    names
}

/// Attributes each op reads, so that most added attributes get past the
/// unknown-attribute check and reach the op's validation.
fn op_attributes(op_type: &[u8]) -> &'static [&'static str] {
    match op_type {
        b"Conv" | b"QLinearConv" | b"ConvInteger" => &[
            "auto_pad",
            "dilations",
            "group",
            "kernel_shape",
            "pads",
            "strides",
        ],
        b"MaxPool" | b"AveragePool" => &[
            "auto_pad",
            "ceil_mode",
            "count_include_pad",
            "dilations",
            "kernel_shape",
            "pads",
            "storage_order",
            "strides",
        ],
        b"Gemm" => &["alpha", "beta", "transA", "transB"],
        b"Softmax" | b"LogSoftmax" | b"Concat" | b"Flatten" => &["axis"],
        b"Transpose" => &["perm"],
        b"Squeeze" | b"Unsqueeze" => &["axes"],
        b"Reshape" => &["allowzero"],
        b"Pad" => &["mode", "pads", "value"],
        b"Clip" => &["min", "max"],
        b"LeakyRelu" => &["alpha"],
        b"HardSigmoid" => &["alpha", "beta"],
        b"BatchNormalization" => &["epsilon", "momentum", "spatial", "training_mode"],
        b"Dropout" => &["ratio", "is_test", "seed"],
        b"QuantizeLinear" => &[
            "axis",
            "block_size",
            "output_dtype",
            "precision",
            "saturate",
        ],
        b"DequantizeLinear" => &["axis", "block_size", "output_dtype"],
        b"Cast" => &["to", "saturate", "round_mode"],
        b"Constant" => &[
            "value",
            "value_float",
            "value_floats",
            "value_int",
            "value_ints",
        ],
        _ => ATTR_NAMES,
    }
}

/// The AttributeProto type (1 FLOAT, 2 INT, 3 STRING, 4 TENSOR, 6 FLOATS,
/// 7 INTS) an attribute name normally has.
fn attribute_type(name: &str, op_type: &[u8]) -> u64 {
    match name {
        "perm" | "pads" | "strides" | "kernel_shape" | "dilations" | "axes" | "value_ints" => 7,
        "alpha" | "beta" | "epsilon" | "min" | "max" | "ratio" | "momentum" | "value_float" => 1,
        "value" if op_type == b"Pad" => 1,
        "value" => 4,
        "auto_pad" | "mode" | "round_mode" => 3,
        "value_floats" => 6,
        _ => 2,
    }
}

/// A small integer list, biased to plausible axis / size values.
fn random_ints(rng: &mut Rng) -> Vec<i64> {
    let n = match rng.below(6) {
        0 => 0,
        1 => 1,
        2 => 2,
        3 => 4,
        _ => rng.below(9),
    };
    (0..n)
        .map(|_| {
            if rng.chance(3, 4) {
                rng.below(6) as i64 - 1
            } else {
                interesting_i64(rng)
            }
        })
        .collect()
}

/// A random attribute for a node of type `op_type`.
fn random_attribute(
    rng: &mut Rng,
    op_type: &[u8],
    graph: &[Field],
    donor: Option<&[Field]>,
) -> Field {
    let name = if rng.chance(4, 5) {
        *rng.pick(op_attributes(op_type))
    } else {
        *rng.pick(ATTR_NAMES)
    };
    let mut a = vec![len_field(ATTR_NAME, name.as_bytes())];
    let ty = if rng.chance(4, 5) {
        attribute_type(name, op_type)
    } else {
        *rng.pick(&[1, 2, 3, 4, 6, 7, 0])
    };
    // AttributeProto: f=2 (fixed32), i=3, s=4, t=5, floats=7, ints=8, type=20.
    match ty {
        2 => {
            let v = if rng.chance(2, 3) {
                rng.below(6) as i64 - 1
            } else {
                interesting_i64(rng)
            };
            a.push(varint_field(3, v as u64));
        }
        7 => {
            for v in random_ints(rng) {
                a.push(varint_field(8, v as u64));
            }
        }
        1 => a.push(Field {
            number: 2,
            wire: 5,
            payload: Payload::Fixed32(interesting_f32(rng).to_bits()),
            declared_len: None,
        }),
        3 => a.push(len_field(4, rng.pick(ATTR_STRINGS).as_bytes())),
        6 => {
            let mut packed = Vec::new();
            for _ in 0..rng.below(6) {
                packed.extend_from_slice(&interesting_f32(rng).to_le_bytes());
            }
            a.push(len_field(7, &packed));
        }
        4 => {
            // A tensor: one of the graph's (or a donor's) initializers.
            let pool = donor.unwrap_or(graph);
            let inits: Vec<&Field> = pool
                .iter()
                .filter(|f| f.number == GRAPH_INITIALIZER)
                .collect();
            if let Some(t) = rng.pick_opt(&inits) {
                let mut t = (*t).clone();
                t.number = 5;
                a.push(t);
            }
        }
        _ => a.push(varint_field(3, interesting_i64(rng) as u64)),
    }
    // Usually declare the type; an untyped attribute is inferred from the
    // field present.
    if ty != 0 && rng.chance(7, 8) {
        a.push(varint_field(20, ty));
    }
    Field {
        number: NODE_ATTRIBUTE,
        wire: 2,
        payload: Payload::Msg(a),
        declared_len: None,
    }
}

/// `dims` (field 1 varints) of a TensorProto.
fn tensor_dims(t: &[Field]) -> Vec<u64> {
    t.iter()
        .filter_map(|f| match (f.number, &f.payload) {
            (1, Payload::Varint(v)) => Some(*v),
            _ => None,
        })
        .collect()
}

/// Replaces a TensorProto's dims.
fn set_tensor_dims(t: &mut Vec<Field>, dims: &[u64]) {
    let at = t
        .iter()
        .position(|f| f.number == 1 && matches!(f.payload, Payload::Varint(_)))
        .unwrap_or(0);
    t.retain(|f| !(f.number == 1 && matches!(f.payload, Payload::Varint(_))));
    let at = at.min(t.len());
    for (k, &d) in dims.iter().enumerate() {
        t.insert(at + k, varint_field(1, d));
    }
}

/// Another shape with the same element count: dims reversed, merged, split
/// or with a 1 added or removed.
fn reshaped(rng: &mut Rng, dims: &[u64]) -> Vec<u64> {
    let mut d = dims.to_vec();
    match rng.below(5) {
        0 => d.reverse(),
        1 => d = vec![d.iter().fold(1u64, |a, &x| a.wrapping_mul(x))],
        2 => {
            let at = rng.below(d.len() + 1);
            d.insert(at, 1);
        }
        3 => {
            if let Some(i) = d.iter().position(|&x| x == 1) {
                d.remove(i);
            } else {
                let n = usize::from(!d.is_empty());
                d.rotate_left(n);
            }
        }
        _ => {
            if !d.is_empty() {
                let i = rng.below(d.len());
                let x = d[i];
                if let Some(f) = (2..=x.min(16)).filter(|f| x.is_multiple_of(*f)).min() {
                    d[i] = x / f;
                    d.insert(i + 1, f);
                }
            }
        }
    }
    d
}

/// Makes `dims` empty but huge: one dim (usually the first) 0, the others
/// (spatial ones more often than the channel) `huge` or left as they are.
fn empty_huge(rng: &mut Rng, dims: &mut Vec<u64>, huge: u64) {
    if dims.is_empty() {
        dims.push(0);
        return;
    }
    let zero = if rng.chance(1, 2) {
        0
    } else {
        rng.below(dims.len())
    };
    for (i, d) in dims.iter_mut().enumerate() {
        let p = if i >= 2 { 3 } else { 1 };
        if i == zero {
            *d = 0;
        } else if rng.chance(p, 4) {
            *d = if rng.chance(3, 4) {
                huge
            } else {
                interesting_u64(rng, *d) & 0xffff_ffff
            };
        }
    }
}

/// One structure-aware mutation of a model tree. Returns its name (for
/// statistics), or `None` if it found nothing to mutate.
fn mutate_tree(rng: &mut Rng, tree: &mut Vec<Field>, seeds: &Seeds) -> Option<&'static str> {
    match rng.below(28) {
        // --- protobuf level, any depth
        0 | 1 => {
            // A varint anywhere set to a boundary value.
            let ps = paths(tree, &|f, _| matches!(f.payload, Payload::Varint(_)));
            let f = field_mut(tree, rng.pick_opt(&ps)?);
            if let Payload::Varint(v) = &mut f.payload {
                *v = interesting_u64(rng, *v);
            }
            Some("set-varint")
        }
        2 | 3 => {
            // A dims / dim_value varint (field 1, nested) made huge, zero, ...
            let ps = paths(tree, &|f, depth| {
                depth >= 2 && f.number == 1 && matches!(f.payload, Payload::Varint(_))
            });
            if ps.is_empty() {
                return None;
            }
            #[rustfmt::skip]
            const DIMS: &[u64] = &[
                0, 0, 1, 2, 3, 65_535, (1 << 31) - 1, 1 << 31, 1 << 32, 1 << 40, 1 << 14,
                1 << 28, u64::MAX,
            ];
            if let Payload::Varint(v) = &mut field_mut(tree, rng.pick_opt(&ps)?).payload {
                *v = if rng.chance(1, 3) {
                    rng.below(10) as u64
                } else {
                    *rng.pick(DIMS)
                };
            }
            Some("huge-dim")
        }
        4 | 5 => {
            // A length varint inflated (or deflated) at any depth; the
            // enclosing lengths stay consistent with what is written.
            let ps = paths(tree, &|f, _| {
                matches!(f.payload, Payload::Bytes(_) | Payload::Msg(_))
            });
            if ps.is_empty() {
                return None;
            }
            let f = field_mut(tree, rng.pick_opt(&ps)?);
            let real = bytes_of(f).map_or(0, |b| b.len() as u64);
            #[rustfmt::skip]
            const DELTAS: &[u64] = &[
                1, 2, 3, 8, 100, 4096, 1 << 31, 1 << 32, 1 << 62, u64::MAX >> 1,
            ];
            f.declared_len = Some(match rng.below(5) {
                0 if real > 0 => real - 1,
                1 => 0,
                2 => u64::MAX - rng.below(16) as u64,
                _ => real.wrapping_add(*rng.pick(DELTAS)),
            });
            Some("inflate-len")
        }
        6 | 7 => {
            // Two fields' tags (number and wire type) swapped; half the time
            // within one message.
            let ps = paths(tree, &|_, _| true);
            let a = rng.pick_opt(&ps)?.clone();
            let b = if rng.chance(1, 2) {
                let siblings = parent_mut(tree, &a).len();
                let mut b = a.clone();
                *b.last_mut().unwrap() = rng.below(siblings);
                b
            } else {
                rng.pick_opt(&ps)?.clone()
            };
            let fa = field_mut(tree, &a);
            let ta = (fa.number, fa.wire);
            let fb = field_mut(tree, &b);
            let tb = (fb.number, fb.wire);
            let only_number = rng.chance(1, 3);
            fb.number = ta.0;
            if !only_number {
                fb.wire = ta.1;
            }
            let fa = field_mut(tree, &a);
            fa.number = tb.0;
            if !only_number {
                fa.wire = tb.1;
            }
            Some("swap-tags")
        }
        8 => {
            // A wire type or field number changed.
            let ps = paths(tree, &|_, _| true);
            let f = field_mut(tree, rng.pick_opt(&ps)?);
            if rng.chance(1, 2) {
                f.wire = rng.below(8) as u8;
            } else {
                #[rustfmt::skip]
                const NUMBERS: &[u64] = &[
                    0, 1, 2, 3, 4, 5, 7, 8, 9, 11, 12, 13, 14, 15, 20, 21, 25, 1 << 29, 1 << 32,
                ];
                f.number = *rng.pick(NUMBERS);
            }
            Some("retag")
        }
        9 => {
            // A field deleted anywhere.
            let ps = paths(tree, &|_, _| true);
            let p = rng.pick_opt(&ps)?.clone();
            parent_mut(tree, &p).remove(*p.last().unwrap());
            Some("delete-field")
        }
        10 => {
            // A field duplicated next to itself or elsewhere in its message.
            let ps = paths(tree, &|_, _| true);
            let p = rng.pick_opt(&ps)?.clone();
            let parent = parent_mut(tree, &p);
            let f = parent[*p.last().unwrap()].clone();
            let at = rng.below(parent.len() + 1);
            parent.insert(at, f);
            Some("duplicate-field")
        }
        // --- graph level
        11 | 12 => {
            // A node input renamed to the output of the same or a later node:
            // a cycle, or a graph that is not topologically sorted.
            let graph = sub_mut(tree, MODEL_GRAPH)?;
            let nodes = indices(graph, GRAPH_NODE);
            if nodes.is_empty() {
                return None;
            }
            let i = rng.below(nodes.len());
            let j = i + rng.below(nodes.len() - i);
            let outputs = match &graph[nodes[j]].payload {
                Payload::Msg(m) => strings(m, NODE_OUTPUT),
                _ => return None,
            };
            let name = outputs.first()?.clone();
            let Payload::Msg(node) = &mut graph[nodes[i]].payload else {
                return None;
            };
            let ins = indices(node, NODE_INPUT);
            if ins.is_empty() {
                node.insert(0, len_field(NODE_INPUT, &name));
            } else {
                let k = *rng.pick(&ins);
                set_bytes(&mut node[k], &name);
            }
            Some("cycle")
        }
        13 => {
            // A node input or output renamed to any value, "" or an unknown name.
            let graph = sub_mut(tree, MODEL_GRAPH)?;
            let mut names = value_names(graph);
            names.push(Vec::new());
            names.push(b"no_such_value".to_vec());
            let nodes = indices(graph, GRAPH_NODE);
            if nodes.is_empty() {
                return None;
            }
            let n = *rng.pick(&nodes);
            let name = rng.pick(&names).clone();
            let Payload::Msg(node) = &mut graph[n].payload else {
                return None;
            };
            let which = if rng.chance(2, 3) {
                NODE_INPUT
            } else {
                NODE_OUTPUT
            };
            let slots = indices(node, which);
            if slots.is_empty() || rng.chance(1, 5) {
                node.push(len_field(which, &name));
            } else {
                let k = *rng.pick(&slots);
                set_bytes(&mut node[k], &name);
            }
            Some("rename-io")
        }
        14 => {
            // A node duplicated (same outputs, or a fresh output name).
            let graph = sub_mut(tree, MODEL_GRAPH)?;
            let nodes = indices(graph, GRAPH_NODE);
            if nodes.is_empty() {
                return None;
            }
            let mut node = graph[*rng.pick(&nodes)].clone();
            if rng.chance(1, 2) {
                if let Payload::Msg(m) = &mut node.payload {
                    for k in indices(m, NODE_OUTPUT) {
                        if let Some(mut b) = bytes_of(&m[k]) {
                            b.extend_from_slice(b"_dup");
                            set_bytes(&mut m[k], &b);
                        }
                    }
                }
            }
            let at = *rng.pick(&nodes) + usize::from(rng.chance(1, 2));
            graph.insert(at.min(graph.len()), node);
            Some("duplicate-node")
        }
        15 => {
            // A node deleted, or two nodes swapped.
            let graph = sub_mut(tree, MODEL_GRAPH)?;
            let nodes = indices(graph, GRAPH_NODE);
            if nodes.is_empty() {
                return None;
            }
            if rng.chance(1, 2) {
                graph.remove(*rng.pick(&nodes));
                Some("delete-node")
            } else {
                let (a, b) = (*rng.pick(&nodes), *rng.pick(&nodes));
                graph.swap(a, b);
                Some("swap-nodes")
            }
        }
        16 | 17 => {
            // A node's op type changed.
            let graph = sub_mut(tree, MODEL_GRAPH)?;
            let nodes = indices(graph, GRAPH_NODE);
            let n = *rng.pick_opt(&nodes)?;
            let op = rng.pick(OP_TYPES).as_bytes();
            let Payload::Msg(node) = &mut graph[n].payload else {
                return None;
            };
            match indices(node, NODE_OP_TYPE).first() {
                Some(&k) => set_bytes(&mut node[k], op),
                None => node.push(len_field(NODE_OP_TYPE, op)),
            }
            Some("op-type")
        }
        18 | 19 => {
            // An attribute added, replaced, or an existing INTS list edited.
            let donor = &seeds.trees[rng.below(seeds.trees.len())];
            let donor_graph = sub(donor, MODEL_GRAPH).cloned();
            let graph = sub_mut(tree, MODEL_GRAPH)?;
            let nodes = indices(graph, GRAPH_NODE);
            let n = *rng.pick_opt(&nodes)?;
            let Payload::Msg(node) = &graph[n].payload else {
                return None;
            };
            let op_type = strings(node, NODE_OP_TYPE).pop().unwrap_or_default();
            let attr = random_attribute(rng, &op_type, graph, donor_graph.as_deref());
            let Payload::Msg(node) = &mut graph[n].payload else {
                return None;
            };
            let attrs = indices(node, NODE_ATTRIBUTE);
            if rng.chance(1, 3) {
                // Edit one entry of an existing ints list (strides, pads, perm...).
                let k = *rng.pick_opt(&attrs)?;
                let Payload::Msg(a) = &mut node[k].payload else {
                    return None;
                };
                let ints: Vec<usize> = (0..a.len())
                    .filter(|&i| a[i].number == 8 && matches!(a[i].payload, Payload::Varint(_)))
                    .collect();
                match (rng.below(3), rng.pick_opt(&ints).copied()) {
                    (0, Some(i)) => {
                        a.remove(i);
                    }
                    (1, Some(i)) => {
                        let v = a[i].clone();
                        a.insert(i, v);
                    }
                    (_, Some(i)) => {
                        let v = if rng.chance(1, 2) {
                            rng.below(6) as i64 - 1
                        } else {
                            interesting_i64(rng)
                        };
                        a[i].payload = Payload::Varint(v as u64);
                    }
                    (_, None) => a.push(varint_field(8, interesting_i64(rng) as u64)),
                }
                return Some("edit-ints");
            }
            let new_name = match &attr.payload {
                Payload::Msg(m) => strings(m, ATTR_NAME),
                _ => Vec::new(),
            };
            let same = attrs.iter().copied().find(|&k| match &node[k].payload {
                Payload::Msg(m) => strings(m, ATTR_NAME) == new_name,
                _ => false,
            });
            match same {
                Some(k) if rng.chance(3, 4) => node[k] = attr,
                _ => node.push(attr),
            }
            Some("attribute")
        }
        20 => {
            // A node (with the initializers it reads) spliced in from another
            // seed, at a random position.
            let donor = &seeds.trees[rng.below(seeds.trees.len())];
            let donor_graph = sub(donor, MODEL_GRAPH)?;
            let donor_nodes = indices(donor_graph, GRAPH_NODE);
            let node = donor_graph[*rng.pick_opt(&donor_nodes)?].clone();
            let reads = match &node.payload {
                Payload::Msg(m) => strings(m, NODE_INPUT),
                _ => Vec::new(),
            };
            let graph = sub_mut(tree, MODEL_GRAPH)?;
            let defined = value_names(graph);
            for init in donor_graph.iter().filter(|f| f.number == GRAPH_INITIALIZER) {
                let Payload::Msg(t) = &init.payload else {
                    continue;
                };
                let name = strings(t, TENSOR_NAME);
                if name
                    .first()
                    .is_some_and(|n| reads.contains(n) && !defined.contains(n))
                {
                    graph.push(init.clone());
                }
            }
            let at = rng.below(graph.len() + 1);
            graph.insert(at, node);
            Some("splice-node")
        }
        26 => {
            // A node replicated into a long chain (each copy reads the one
            // before), up to and past the node and value limits, sometimes
            // feeding a graph output: parse, planning and running must stay
            // fast for the largest graphs the limits allow.
            let graph = sub_mut(tree, MODEL_GRAPH)?;
            let nodes = indices(graph, GRAPH_NODE);
            let n = *rng.pick_opt(&nodes)?;
            let Payload::Msg(node) = &graph[n].payload else {
                return None;
            };
            let mut prev = strings(node, NODE_OUTPUT).into_iter().next()?;
            let copies = *rng.pick(&[8, 60, 200, 250, 300, 520]);
            let mut chain = Vec::with_capacity(copies);
            for i in 0..copies {
                let mut copy = node.clone();
                let out = format!("{}_bu{i}", String::from_utf8_lossy(&prev)).into_bytes();
                if let Some(&k) = indices(&copy, NODE_INPUT).first() {
                    set_bytes(&mut copy[k], &prev);
                }
                for k in indices(&copy, NODE_OUTPUT).into_iter().take(1) {
                    set_bytes(&mut copy[k], &out);
                }
                copy.retain(|f| f.number != 3); // drop the node name
                chain.push(Field {
                    number: GRAPH_NODE,
                    wire: 2,
                    payload: Payload::Msg(copy),
                    declared_len: None,
                });
                prev = out;
            }
            graph.splice(n + 1..n + 1, chain);
            if rng.chance(1, 2) {
                let outs = indices(graph, GRAPH_OUTPUT);
                let k = *rng.pick_opt(&outs)?;
                graph[k].payload = Payload::Msg(vec![
                    len_field(VALUE_INFO_NAME, &prev),
                    len_field(2, &[0x0a, 0x02, 0x08, 0x01]), // tensor(float), no shape
                ]);
            }
            Some("blow-up")
        }
        24 | 25 => {
            // Empty tensors with huge dims: one dim (usually the batch) set
            // to 0 and others (usually spatial) to one huge value, on the
            // graph inputs and / or float initializers (whose data is
            // emptied). Element-count limits pass trivially, so this reaches
            // every size computation that multiplies a subset of the dims.
            #[rustfmt::skip]
            const HUGE: &[u64] = &[
                (1 << 32) - 1, 1 << 31, 65_535, 1 << 20, 1 << 16, 1 << 14, 1 << 13, 1 << 9,
            ];
            let huge = *rng.pick(HUGE);
            let graph = sub_mut(tree, MODEL_GRAPH)?;
            let mut changed = false;
            if rng.chance(2, 3) {
                for k in indices(graph, GRAPH_INPUT) {
                    let Payload::Msg(info) = &mut graph[k].payload else {
                        continue;
                    };
                    let ps = paths(info, &|f, depth| {
                        depth == 4 && f.number == 1 && matches!(f.payload, Payload::Varint(_))
                    });
                    let mut dims: Vec<u64> = ps
                        .iter()
                        .map(|p| match field_mut(info, p).payload {
                            Payload::Varint(v) => v,
                            _ => 0,
                        })
                        .collect();
                    empty_huge(rng, &mut dims, huge);
                    for (p, d) in ps.iter().zip(dims) {
                        field_mut(info, p).payload = Payload::Varint(d);
                    }
                    changed = true;
                }
            }
            if !changed || rng.chance(1, 2) {
                let all = rng.chance(1, 3);
                let floats: Vec<usize> = indices(graph, GRAPH_INITIALIZER)
                    .into_iter()
                    .filter(|&k| match &graph[k].payload {
                        Payload::Msg(t) => {
                            t.iter()
                                .any(|f| f.number == 2 && f.payload == Payload::Varint(1))
                                && (!all || tensor_dims(t).len() >= 2)
                        }
                        _ => false,
                    })
                    .collect();
                let chosen = if all {
                    floats
                } else {
                    vec![*rng.pick_opt(&floats)?]
                };
                for k in chosen {
                    let Payload::Msg(t) = &mut graph[k].payload else {
                        continue;
                    };
                    let mut dims = tensor_dims(t);
                    empty_huge(rng, &mut dims, huge);
                    set_tensor_dims(t, &dims);
                    t.retain(|f| !matches!(f.number, 4..=7 | 10 | 11));
                    for f in t.iter_mut().filter(|f| f.number == 9) {
                        set_bytes(f, &[]);
                    }
                }
            }
            Some("empty-huge")
        }
        22 | 23 => {
            // An initializer reshaped to another shape with the same element
            // count, or an int64 initializer (a Reshape shape, Pad pads,
            // Squeeze axes...) given new values.
            let graph = sub_mut(tree, MODEL_GRAPH)?;
            let inits = indices(graph, GRAPH_INITIALIZER);
            let k = *rng.pick_opt(&inits)?;
            let Payload::Msg(t) = &mut graph[k].payload else {
                return None;
            };
            let is_int64 = t
                .iter()
                .any(|f| f.number == 2 && f.payload == Payload::Varint(7));
            if !is_int64 || rng.chance(1, 4) {
                let dims = reshaped(rng, &tensor_dims(t));
                set_tensor_dims(t, &dims);
                return Some("reshape-init");
            }
            let values = random_ints(rng);
            let raw = t.iter().position(|f| f.number == 9 && f.wire == 2);
            let typed = t.iter().position(|f| f.number == 7 && f.wire == 2);
            match (raw, typed) {
                (Some(i), _) => {
                    let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
                    set_bytes(&mut t[i], &bytes);
                }
                (None, Some(i)) => {
                    let mut packed = Vec::new();
                    values
                        .iter()
                        .for_each(|&v| put_varint(&mut packed, v as u64));
                    set_bytes(&mut t[i], &packed);
                }
                (None, None) => return None,
            }
            let dims = if values.len() == 1 && rng.chance(1, 3) {
                Vec::new()
            } else {
                vec![values.len() as u64]
            };
            set_tensor_dims(t, &dims);
            Some("const-ints")
        }
        _ => {
            // Opset version changed, or a graph output renamed / duplicated /
            // deleted.
            if rng.chance(1, 2) {
                let imports = indices(tree, MODEL_OPSET_IMPORT);
                let k = *rng.pick_opt(&imports)?;
                let Payload::Msg(m) = &mut tree[k].payload else {
                    return None;
                };
                let version = match rng.below(4) {
                    0 => interesting_i64(rng) as u64,
                    _ => 1 + rng.below(28) as u64,
                };
                m.retain(|f| f.number != 2);
                m.push(varint_field(2, version));
                return Some("opset");
            }
            let graph = sub_mut(tree, MODEL_GRAPH)?;
            let names = value_names(graph);
            let outs = indices(graph, GRAPH_OUTPUT);
            let k = *rng.pick_opt(&outs)?;
            match rng.below(3) {
                0 => {
                    graph.remove(k);
                }
                1 => {
                    let dup = graph[k].clone();
                    graph.push(dup);
                }
                _ => {
                    let name = rng.pick(&names).clone();
                    let Payload::Msg(info) = &mut graph[k].payload else {
                        return None;
                    };
                    match indices(info, VALUE_INFO_NAME).first() {
                        Some(&i) => set_bytes(&mut info[i], &name),
                        None => info.push(len_field(VALUE_INFO_NAME, &name)),
                    }
                    if rng.chance(1, 2) {
                        info.retain(|f| f.number != 2); // drop the declared type/shape
                        info.push(len_field(2, &[0x0a, 0x02, 0x08, 0x01])); // tensor(float), no shape
                    }
                }
            }
            Some("graph-output")
        }
    }
}

/// Every length-delimited field's length varint in `buf`, at any depth:
/// `(varint start, varint end, length)`.
fn raw_len_sites(
    buf: &[u8],
    base: usize,
    depth: usize,
    out: &mut Vec<(usize, usize, u64)>,
) -> bool {
    let mut pos = 0;
    let mut sites = Vec::new();
    while pos < buf.len() {
        let Some(tag) = read_varint(buf, &mut pos) else {
            return false;
        };
        if tag >> 3 == 0 {
            return false;
        }
        match tag & 7 {
            0 => {
                if read_varint(buf, &mut pos).is_none() {
                    return false;
                }
            }
            1 => pos += 8,
            5 => pos += 4,
            2 => {
                let start = pos;
                let Some(len) = read_varint(buf, &mut pos) else {
                    return false;
                };
                let Some(end) = usize::try_from(len)
                    .ok()
                    .and_then(|l| pos.checked_add(l))
                    .filter(|&e| e <= buf.len())
                else {
                    return false;
                };
                sites.push((base + start, base + pos, len));
                if depth < MAX_TREE_DEPTH {
                    let _ = raw_len_sites(&buf[pos..end], base + pos, depth + 1, &mut sites);
                }
                pos = end;
            }
            _ => return false,
        }
        if pos > buf.len() {
            return false;
        }
    }
    out.extend(sites);
    true
}

/// One byte-level mutation.
fn mutate_bytes(rng: &mut Rng, bytes: &mut Vec<u8>) -> &'static str {
    if bytes.is_empty() {
        bytes.push(rng.next() as u8);
        return "insert-bytes";
    }
    match rng.below(9) {
        0 | 1 => {
            for _ in 0..1 + rng.below(4) {
                let i = rng.below(bytes.len());
                bytes[i] ^= 1 << rng.below(8);
            }
            "bit-flip"
        }
        2 => {
            const BYTES: &[u8] = &[0x00, 0x01, 0x7f, 0x80, 0xff, 0x08, 0x0a, 0x12, 0x3a, 0x42];
            for _ in 0..1 + rng.below(4) {
                let i = rng.below(bytes.len());
                bytes[i] = if rng.chance(1, 2) {
                    *rng.pick(BYTES)
                } else {
                    rng.next() as u8
                };
            }
            "set-bytes"
        }
        3 | 4 => {
            bytes.truncate(rng.below(bytes.len()));
            "truncate"
        }
        5 => {
            // A length varint rewritten in place, enclosing lengths untouched.
            let mut sites = Vec::new();
            raw_len_sites(bytes, 0, 0, &mut sites);
            if sites.is_empty() {
                bytes.truncate(rng.below(bytes.len()));
                return "truncate";
            }
            let (start, end, len) = *rng.pick(&sites);
            let new = interesting_u64(rng, len);
            let mut v = Vec::new();
            put_varint(&mut v, new);
            bytes.splice(start..end, v);
            "raw-len"
        }
        6 => {
            let at = rng.below(bytes.len() + 1);
            let n = 1 + rng.below(8);
            let insert: Vec<u8> = (0..n).map(|_| rng.next() as u8).collect();
            bytes.splice(at..at, insert);
            "insert-bytes"
        }
        7 => {
            let a = rng.below(bytes.len());
            let b = (a + 1 + rng.below(16)).min(bytes.len());
            if rng.chance(1, 2) {
                bytes.drain(a..b);
                "delete-bytes"
            } else {
                let chunk = bytes[a..b].to_vec();
                let at = rng.below(bytes.len() + 1);
                bytes.splice(at..at, chunk);
                "duplicate-bytes"
            }
        }
        _ => {
            if rng.chance(1, 8) {
                let n = rng.below(256);
                *bytes = (0..n).map(|_| rng.next() as u8).collect();
                "garbage"
            } else {
                let i = rng.below(bytes.len());
                bytes[i] = bytes[i].wrapping_add(1 + rng.below(3) as u8);
                "nudge-byte"
            }
        }
    }
}

/// Builds the input of case `case`: a seed with up to three tree mutations,
/// then (always when none applied) one or two byte-level mutations.
fn make_case(seeds: &Seeds, base: u64, case: u64) -> (usize, Vec<u8>, Vec<&'static str>) {
    let mut rng = Rng::new(case_seed(base, case));
    let seed = (case % seeds.trees.len() as u64) as usize;
    let mut applied = Vec::new();
    let mut tree = seeds.trees[seed].clone();
    let tree_mutations = match rng.below(20) {
        0..=3 => 0,
        4..=13 => 1,
        14..=17 => 2,
        _ => 3,
    };
    for _ in 0..tree_mutations {
        if let Some(m) = mutate_tree(&mut rng, &mut tree, seeds) {
            applied.push(m);
        }
    }
    let mut bytes = encode(&tree);
    if applied.is_empty() || rng.chance(1, 4) {
        for _ in 0..1 + usize::from(rng.chance(1, 4)) {
            applied.push(mutate_bytes(&mut rng, &mut bytes));
        }
    }
    (seed, bytes, applied)
}

// ---------------------------------------------------------------- running a case

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Outcome {
    /// `Model::parse` returned an error.
    Rejected,
    /// Parsed, planned and ran.
    Ran,
    /// Parsed and planned, but too large to run here.
    TooLargeToRun,
}

thread_local! {
    static IN_CASE: Cell<bool> = const { Cell::new(false) };
    static PANIC: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// Records panics inside fuzz cases quietly (the message and location are
/// reported with the failing input); other panics go to the default hook.
fn install_panic_hook() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let default = panic::take_hook();
        panic::set_hook(Box::new(move |info| {
            if IN_CASE.with(Cell::get) {
                let location = info
                    .location()
                    .map_or_else(String::new, |l| format!("{}:{}", l.file(), l.line()));
                let payload = info.payload();
                let message = payload
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| payload.downcast_ref::<String>().cloned())
                    .unwrap_or_default();
                // The innermost non-std frames, for panics inside core/std.
                let trace = std::backtrace::Backtrace::force_capture().to_string();
                let frames: Vec<&str> = trace
                    .lines()
                    .map(str::trim)
                    .filter(|l| {
                        l.starts_with("at ")
                            && !l.contains("/rustc/")
                            && !l.contains("/.cargo/")
                            && !l.contains("fuzz_parse.rs")
                    })
                    .map(|l| &l[3..])
                    .take(3)
                    .collect();
                let frame = if frames.is_empty() {
                    String::new()
                } else {
                    format!(" (in {})", frames.join(" < "))
                };
                PANIC.with(|p| {
                    *p.borrow_mut() = Some(format!("panic at {location}{frame}: {message}"))
                });
            } else {
                default(info);
            }
        }));
    });
}

/// Parses `bytes` and, if that succeeds, checks the plan and runs the model
/// (three times, in two sessions) with random finite inputs. `Err` describes
/// a violated property.
fn check_model(bytes: &[u8], previous: &[u8], input_seed: u64) -> Result<Outcome, String> {
    let parsed = Model::parse(bytes);
    // `load` fills a model in place: over a previously loaded model it must
    // give exactly what a fresh parse gives, and leave the model empty on
    // error.
    let mut reused = Box::new(Model::EMPTY);
    let _ = reused.load(previous, &Bindings::default());
    let loaded = reused.load(bytes, &Bindings::default());
    let same = match (&parsed, &loaded) {
        (Err(a), Err(b)) => a == b && reused.values().is_empty() && reused.nodes().is_empty(),
        (Ok(m), Ok(())) => summary(m) == summary(&reused),
        _ => false,
    };
    if !same {
        return Err(format!(
            "Model::load over another model disagrees with Model::parse ({:?} vs {:?})",
            parsed.as_ref().err(),
            loaded.err()
        ));
    }
    drop(reused);
    let model = match parsed {
        Ok(m) => m,
        Err(e) => {
            // Formatting the error must not panic either.
            let _ = e.to_string();
            let _ = e.is_unsupported();
            return Ok(Outcome::Rejected);
        }
    };
    let _ = format!("{model:?}");
    let _ = model.parameters();
    let macs = model.macs();
    for node in model.nodes() {
        let _ = model.node_inputs(node).count();
    }
    if let Some((a, b)) = find_overlap(&model) {
        return Err(format!("memory plan overlaps values {a} and {b}"));
    }
    let plan = model.plan();
    if plan.lower_bound > model.arena_size() {
        return Err(format!(
            "arena {} below the plan's lower bound {}",
            model.arena_size(),
            plan.lower_bound
        ));
    }
    let in_lens: Vec<usize> = model.inputs().map(|v| v.len()).collect();
    let out_lens: Vec<usize> = model.outputs().map(|v| v.len()).collect();
    let io_bytes = in_lens
        .iter()
        .chain(&out_lens)
        .map(|n| n.saturating_mul(4))
        .fold(0usize, usize::saturating_add);
    if model.arena_size().saturating_add(io_bytes) > RUN_BYTES_LIMIT || macs > RUN_MACS_LIMIT {
        return Ok(Outcome::TooLargeToRun);
    }

    let mut rng = Rng::new(input_seed);
    let inputs: Vec<Vec<f32>> = in_lens
        .iter()
        .map(|&n| {
            (0..n)
                .map(|_| match rng.below(16) {
                    0 => 0.0,
                    1 => 1e6 * rng.f32_in(-1.0, 1.0),
                    2 => 1e-6 * rng.f32_in(-1.0, 1.0),
                    _ => rng.f32_in(-3.0, 3.0),
                })
                .collect()
        })
        .collect();
    if model
        .inputs()
        .chain(model.outputs())
        .any(|v| v.dtype != DType::F32)
    {
        return run_typed(&model, &inputs);
    }
    let input_refs: Vec<&[f32]> = inputs.iter().map(Vec::as_slice).collect();

    // Session A runs twice in an arena of one fill pattern, session B once
    // in an arena of another: every output must match bit for bit, so a
    // kernel that reads arena bytes nothing wrote is caught.
    let mut results = Vec::new();
    for (fill, runs) in [(0xa5u8, 2), (0xff, 1)] {
        let mut arena = vec![fill; model.arena_size() + 16 + GUARD];
        let skip = arena.as_ptr().align_offset(16);
        let end = skip + model.arena_size();
        {
            let mut session = Session::new(&model, &mut arena)
                .map_err(|e| format!("Session::new failed: {e}"))?;
            for _ in 0..runs {
                let mut outputs: Vec<Vec<f32>> = out_lens
                    .iter()
                    .map(|&n| vec![f32::from_bits(SENTINEL); n])
                    .collect();
                let mut output_refs: Vec<&mut [f32]> =
                    outputs.iter_mut().map(Vec::as_mut_slice).collect();
                session
                    .run(&input_refs, &mut output_refs)
                    .map_err(|e| format!("run failed: {e}"))?;
                for (k, out) in outputs.iter().enumerate() {
                    if let Some(i) = out.iter().position(|v| v.to_bits() == SENTINEL) {
                        return Err(format!(
                            "output {k} element {i} (of {}) was not written",
                            out.len()
                        ));
                    }
                }
                let bits: Vec<Vec<u32>> = outputs
                    .iter()
                    .map(|o| o.iter().map(|v| v.to_bits()).collect())
                    .collect();
                if results.first().is_some_and(|first| *first != bits) {
                    return Err(format!(
                        "outputs differ between runs (run {} in an arena filled with {fill:#x})",
                        results.len()
                    ));
                }
                results.push(bits);
            }
        }
        if arena[..skip]
            .iter()
            .chain(&arena[end..])
            .any(|&b| b != fill)
        {
            return Err("the session wrote outside its planned arena extent".into());
        }
    }
    Ok(Outcome::Ran)
}

/// A graph input or output buffer of any run-time element type.
enum Buffer {
    F32(Vec<f32>),
    I8(Vec<i8>),
    U8(Vec<u8>),
    I32(Vec<i32>),
}

impl Buffer {
    /// `n` elements of `dtype`, every byte `fill`.
    fn filled(dtype: DType, n: usize, fill: u8) -> Buffer {
        let word = u32::from_ne_bytes([fill; 4]);
        match dtype {
            DType::F32 => Buffer::F32(vec![f32::from_bits(word); n]),
            DType::I8 => Buffer::I8(vec![fill as i8; n]),
            DType::U8 => Buffer::U8(vec![fill; n]),
            _ => Buffer::I32(vec![word as i32; n]),
        }
    }

    /// `values` converted to `dtype` (integers scaled and saturated).
    fn from_f32(dtype: DType, values: &[f32]) -> Buffer {
        match dtype {
            DType::F32 => Buffer::F32(values.to_vec()),
            DType::I8 => Buffer::I8(values.iter().map(|&v| (v * 40.0) as i8).collect()),
            DType::U8 => Buffer::U8(values.iter().map(|&v| (v * 40.0 + 128.0) as u8).collect()),
            _ => Buffer::I32(values.iter().map(|&v| (v * 1000.0) as i32).collect()),
        }
    }

    fn data(&self) -> Data<'_> {
        match self {
            Buffer::F32(v) => Data::F32(v),
            Buffer::I8(v) => Data::I8(v),
            Buffer::U8(v) => Data::U8(v),
            Buffer::I32(v) => Data::I32(v),
        }
    }

    fn data_mut(&mut self) -> DataMut<'_> {
        match self {
            Buffer::F32(v) => DataMut::F32(v),
            Buffer::I8(v) => DataMut::I8(v),
            Buffer::U8(v) => DataMut::U8(v),
            Buffer::I32(v) => DataMut::I32(v),
        }
    }

    /// The elements' bits, to compare runs exactly.
    fn bits(&self) -> Vec<u32> {
        match self {
            Buffer::F32(v) => v.iter().map(|x| x.to_bits()).collect(),
            Buffer::I8(v) => v.iter().map(|&x| x as u8 as u32).collect(),
            Buffer::U8(v) => v.iter().map(|&x| x as u32).collect(),
            Buffer::I32(v) => v.iter().map(|&x| x as u32).collect(),
        }
    }
}

/// `check_model`'s run for a model with non-float32 graph inputs or
/// outputs, through `run_typed`: three runs in two arenas of different
/// fills, each with output buffers pre-filled with a different byte, must
/// agree bit for bit (so every output element was written and nothing read
/// an unwritten arena byte), and nothing may be written outside the arena.
fn run_typed(model: &Model<'_>, inputs: &[Vec<f32>]) -> Result<Outcome, String> {
    let inputs: Vec<Buffer> = model
        .inputs()
        .zip(inputs)
        .map(|(v, x)| Buffer::from_f32(v.dtype, x))
        .collect();
    let input_data: Vec<Data<'_>> = inputs.iter().map(Buffer::data).collect();
    let mut results: Vec<Vec<Vec<u32>>> = Vec::new();
    let mut prefill = [0x5au8, 0xc3, 0x3c].into_iter();
    for (fill, runs) in [(0xa5u8, 2), (0xff, 1)] {
        let mut arena = vec![fill; model.arena_size() + 16 + GUARD];
        let skip = arena.as_ptr().align_offset(16);
        let end = skip + model.arena_size();
        {
            let mut session =
                Session::new(model, &mut arena).map_err(|e| format!("Session::new failed: {e}"))?;
            for _ in 0..runs {
                let byte = prefill.next().unwrap_or(0);
                let mut outputs: Vec<Buffer> = model
                    .outputs()
                    .map(|v| Buffer::filled(v.dtype, v.len(), byte))
                    .collect();
                let mut output_data: Vec<DataMut<'_>> =
                    outputs.iter_mut().map(Buffer::data_mut).collect();
                session
                    .run_typed(&input_data, &mut output_data)
                    .map_err(|e| format!("run_typed failed: {e}"))?;
                let bits: Vec<Vec<u32>> = outputs.iter().map(Buffer::bits).collect();
                if results.first().is_some_and(|first| *first != bits) {
                    return Err(format!(
                        "typed outputs differ between runs (run {} in an arena filled with \
                         {fill:#x}): unwritten or nondeterministic",
                        results.len()
                    ));
                }
                results.push(bits);
            }
        }
        if arena[..skip]
            .iter()
            .chain(&arena[end..])
            .any(|&b| b != fill)
        {
            return Err("the session wrote outside its planned arena extent".into());
        }
    }
    Ok(Outcome::Ran)
}

/// Everything observable about a loaded model, to compare two loads.
fn summary(m: &Model<'_>) -> String {
    let names = |vs: Vec<&str>| vs.join(",");
    format!(
        "{m:?} {} {} {:?} {:?} {:?} {:?} {:?} {:?} {:?} [{}] [{}] {:?}",
        m.opset(),
        m.ir_version(),
        m.producer(),
        m.graph_name(),
        m.metadata(),
        m.values(),
        m.nodes(),
        &m.plan().offsets[..m.values().len()],
        m.macs(),
        names(m.inputs().map(|v| v.name).collect()),
        names(m.outputs().map(|v| v.name).collect()),
        m.parameters(),
    )
}

/// Runs one case with panics caught and the time measured. `previous` is
/// loaded into the reused model before the case (see [`check_model`]).
fn run_case(bytes: &[u8], previous: &[u8], input_seed: u64) -> (Result<Outcome, String>, Duration) {
    install_panic_hook();
    IN_CASE.with(|c| c.set(true));
    let start = Instant::now();
    let result = panic::catch_unwind(AssertUnwindSafe(|| {
        check_model(bytes, previous, input_seed)
    }));
    let elapsed = start.elapsed();
    IN_CASE.with(|c| c.set(false));
    let result = match result {
        Ok(r) => r,
        Err(_) => Err(PANIC
            .with(|p| p.borrow_mut().take())
            .unwrap_or_else(|| "panic".into())),
    };
    let result = match result {
        Ok(_) if elapsed > STALL => Err(format!("stall: parse + run took {elapsed:?}")),
        r => r,
    };
    (result, elapsed)
}

// ---------------------------------------------------------------- tests

fn env_u64(key: &str) -> Option<u64> {
    let v = std::env::var(key).ok()?;
    let v = v.trim();
    match v.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => v.parse().ok(),
    }
}

fn crasher_dir() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join("fuzz-crashers")
}

fn save_crasher(name: &str, bytes: &[u8]) -> PathBuf {
    let dir = crasher_dir();
    std::fs::create_dir_all(&dir).expect("create the crasher directory");
    let path = dir.join(format!("{name}.onnx"));
    std::fs::write(&path, bytes).expect("write the crasher");
    path
}

/// Shared progress of the worker threads, for the hang watchdog.
struct Slot {
    /// The case being run, or `u64::MAX` when idle.
    case: AtomicU64,
    /// When it started, in milliseconds since `epoch`.
    started_ms: AtomicU64,
}

#[test]
fn seeds_parse_and_run() {
    let seeds = load_seeds();
    for (name, bytes) in seeds.names.iter().zip(&seeds.bytes) {
        assert!(
            bytes.len() <= 4096,
            "seed {name} is {} bytes: keep seeds small",
            bytes.len()
        );
        let model =
            Model::parse(bytes).unwrap_or_else(|e| panic!("seed {name} does not parse: {e}"));
        assert!(
            model.inputs().len() >= 1 && model.outputs().len() >= 1,
            "seed {name}"
        );
        let (result, _) = run_case(bytes, &seeds.bytes[0], 1);
        assert_eq!(result, Ok(Outcome::Ran), "seed {name}");
    }
}

#[test]
fn fuzz_mutated_models() {
    let seeds = Arc::new(load_seeds());
    let cases = env_u64("TINYKD_FUZZ_CASES").map_or(DEFAULT_CASES, |n| n as usize);
    let base = env_u64("TINYKD_FUZZ_SEED").unwrap_or(BASE_SEED);
    if let Some(case) = env_u64("TINYKD_FUZZ_DUMP") {
        // Writes one case's input (to inspect or replay it) and stops.
        let (seed, bytes, applied) = make_case(&seeds, base, case);
        let path = save_crasher(&format!("case-{}-{case}", seeds.names[seed]), &bytes);
        eprintln!(
            "fuzz case {case} ({applied:?}) written to {}",
            path.display()
        );
        return;
    }
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .clamp(1, 8);
    let epoch = Instant::now();
    let slots: Arc<Vec<Slot>> = Arc::new(
        (0..threads)
            .map(|_| Slot {
                case: AtomicU64::new(u64::MAX),
                started_ms: AtomicU64::new(0),
            })
            .collect(),
    );
    let done = Arc::new(AtomicU64::new(0));

    // Watchdog: a case stuck far beyond the stall threshold is an endless
    // loop; save its input (cases are deterministic) and abort.
    let watchdog = {
        let (slots, seeds, done) = (Arc::clone(&slots), Arc::clone(&seeds), Arc::clone(&done));
        std::thread::spawn(move || {
            while done.load(Ordering::Relaxed) == 0 {
                std::thread::sleep(Duration::from_millis(100));
                let now = epoch.elapsed().as_millis() as u64;
                for slot in slots.iter() {
                    let case = slot.case.load(Ordering::Relaxed);
                    if case != u64::MAX
                        && now.saturating_sub(slot.started_ms.load(Ordering::Relaxed))
                            > HANG.as_millis() as u64
                    {
                        let (seed, bytes, applied) = make_case(&seeds, base, case);
                        let path =
                            save_crasher(&format!("hang-{}-{case}", seeds.names[seed]), &bytes);
                        // Straight to stderr: the test harness's captured
                        // output is lost when the process aborts.
                        let _ = writeln!(
                            std::io::stderr(),
                            "fuzz case {case} ({applied:?}) hangs: input saved to {}",
                            path.display()
                        );
                        std::process::abort();
                    }
                }
            }
        })
    };

    let start = Instant::now();
    let results: Vec<_> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|t| {
                let (seeds, slots) = (&seeds, &slots);
                scope.spawn(move || {
                    let mut counts = BTreeMap::<&'static str, [u64; 3]>::new();
                    let mut outcomes = [0u64; 3];
                    let mut failures = Vec::new();
                    let mut slowest = (Duration::ZERO, 0u64);
                    let slot = &slots[t];
                    for case in (t as u64..cases as u64).step_by(threads) {
                        let (seed, bytes, applied) = make_case(seeds, base, case);
                        slot.started_ms
                            .store(epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
                        slot.case.store(case, Ordering::Relaxed);
                        let previous = &seeds.bytes[(seed + 1) % seeds.bytes.len()];
                        let (result, elapsed) = run_case(&bytes, previous, case);
                        slot.case.store(u64::MAX, Ordering::Relaxed);
                        slowest = slowest.max((elapsed, case));
                        match result {
                            Ok(outcome) => {
                                let k = outcome as usize;
                                outcomes[k] += 1;
                                for m in &applied {
                                    counts.entry(m).or_default()[k] += 1;
                                }
                            }
                            Err(why) => failures.push((case, seed, bytes, applied, why)),
                        }
                    }
                    (outcomes, counts, failures, slowest)
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| w.join().expect("fuzz worker"))
            .collect()
    });
    done.store(1, Ordering::Relaxed);
    watchdog.join().expect("watchdog");
    let wall = start.elapsed();

    let mut outcomes = [0u64; 3];
    let mut counts = BTreeMap::<&'static str, [u64; 3]>::new();
    let mut failures = Vec::new();
    let mut slowest = (Duration::ZERO, 0u64);
    for (o, c, f, s) in results {
        (0..3).for_each(|k| outcomes[k] += o[k]);
        for (m, v) in c {
            let e = counts.entry(m).or_default();
            (0..3).for_each(|k| e[k] += v[k]);
        }
        failures.extend(f);
        slowest = slowest.max(s);
    }
    let total = outcomes.iter().sum::<u64>() + failures.len() as u64;
    let ok = outcomes[Outcome::Ran as usize] + outcomes[Outcome::TooLargeToRun as usize];
    eprintln!(
        "fuzz_parse: {total} cases ({} seeds, base seed {base:#x}, {threads} threads) in {wall:.2?}: \
         {ok} parsed OK ({:.1}%: {} ran, {} too large to run), {} rejected, {} failed; slowest case {:.2?} (#{})",
        seeds.names.len(),
        100.0 * ok as f64 / total.max(1) as f64,
        outcomes[Outcome::Ran as usize],
        outcomes[Outcome::TooLargeToRun as usize],
        outcomes[Outcome::Rejected as usize],
        failures.len(),
        slowest.0,
        slowest.1,
    );
    for (m, [rejected, ran, large]) in &counts {
        eprintln!("  {m:>16}: {rejected:>6} rejected, {ran:>6} ran, {large:>4} too large to run");
    }

    // Report each distinct failure (by message) with its first inputs.
    let mut by_reason = BTreeMap::<String, Vec<u64>>::new();
    for (case, seed, bytes, applied, why) in &failures {
        let cases = by_reason.entry(why.clone()).or_default();
        if cases.len() < 3 {
            let path = save_crasher(&format!("{}-{case}", seeds.names[*seed]), bytes);
            eprintln!(
                "FAILED case {case} (seed {}, {applied:?}): {why}\n  input: {}",
                seeds.names[*seed],
                path.display()
            );
        }
        cases.push(*case);
    }
    assert!(
        failures.is_empty(),
        "{} fuzz cases failed ({} distinct reasons), see above",
        failures.len(),
        by_reason.len()
    );
    assert!(
        total as usize >= MIN_CASES.min(cases),
        "ran {total} cases, fewer than {MIN_CASES}"
    );
    assert!(cases >= MIN_CASES || std::env::var_os("TINYKD_FUZZ_CASES").is_some());
    assert!(
        ok > 0,
        "no mutated model parsed: the mutations are too destructive to exercise Session::run"
    );
}

#[test]
fn regressions_replay() {
    let previous = load_seeds().bytes.swap_remove(0);
    // TINYKD_FUZZ_REPLAY=<dir or file> replays other inputs (e.g. crashers).
    let files = match std::env::var_os("TINYKD_FUZZ_REPLAY").map(PathBuf::from) {
        Some(p) if p.is_dir() => onnx_files(&p),
        Some(p) => vec![p],
        None => {
            let files = onnx_files(&regression_dir());
            assert!(
                !files.is_empty(),
                "no files in {}",
                regression_dir().display()
            );
            files
        }
    };
    for path in &files {
        let bytes = std::fs::read(path).expect("readable regression file");
        let (result, elapsed) = run_case(&bytes, &previous, 7);
        if let Err(why) = result {
            panic!("{}: {why} (after {elapsed:?})", path.display());
        }
    }
    eprintln!("fuzz_parse: replayed {} regression files", files.len());
}
