//! `Model::parse`: reads an ONNX file in place, validates the whole graph
//! (structure, types, static shapes, supported ops, bounds) and plans its
//! memory. Nothing is allocated; the tables live inline with fixed capacity.

use crate::error::{name, At, Error};
use crate::limits::{
    MAX_ELEMENTS, MAX_GRAPH_IO, MAX_METADATA, MAX_NODES, MAX_NODE_INPUTS, MAX_NODE_IO, MAX_VALUES,
};
use crate::ops::{self, NodeCtx, Op};
use crate::planner::{self, Plan};
use crate::proto::onnx::{
    Dim, GraphView, ModelView, NodeView, TensorData, TensorView, TypedWords, ValueInfoView,
};
use crate::tensor::{DType, Shape, MAX_RANK};
use crate::value::{ConstData, Value, ValueKind};
use heapless::Vec;

/// Marks an omitted optional input in the node I/O table.
pub(crate) const ABSENT: u16 = u16::MAX;

/// One node of the validated graph.
#[derive(Clone, Copy, Debug)]
pub struct Node<'a> {
    /// The node's name (may be empty).
    pub name: &'a str,
    /// Its ONNX op type.
    pub op_type: &'a str,
    /// The prepared operator.
    pub op: Op,
    pub(crate) io_start: u16,
    pub(crate) n_inputs: u8,
    /// The value the node writes (`None` when its output is unused).
    pub output: Option<u16>,
    /// Part of a QDQ pattern that the load-time rewrite ([`crate::fuse`])
    /// turned into an integer op: either that op (the node of the float
    /// op, now running e.g. [`Op::QLinearConv`] and writing the pattern's
    /// quantized output) or a DequantizeLinear/QuantizeLinear it absorbed
    /// (now [`Op::Nop`]).
    pub qdq_fused: bool,
}

/// A caller-supplied constant for a graph input: lets a model whose shape
/// inputs are graph inputs be loaded with fixed values.
#[derive(Clone, Copy, Debug)]
pub struct ConstInput<'b> {
    /// The graph input's name.
    pub name: &'b str,
    /// Element type of `data`.
    pub dtype: DType,
    /// Shape of `data`.
    pub shape: Shape,
    /// Little-endian elements.
    pub data: &'b [u8],
}

/// Values fixed at load time: symbolic dimensions and constant inputs.
#[derive(Clone, Copy, Debug, Default)]
pub struct Bindings<'b> {
    /// `(dim_param, size)`; unbound symbolic dims are 1.
    pub dims: &'b [(&'b str, usize)],
    /// Graph inputs replaced by constants.
    pub constants: &'b [ConstInput<'b>],
}

/// Load-time graph rewrites that [`Model::load_with`] can turn off; all on
/// by default ([`Model::parse`], [`Model::load`]). Turning one off never
/// changes what a model computes beyond rounding: it is for measuring and
/// debugging (e.g. comparing a QDQ model's integer execution with its
/// literal DequantizeLinear → float op → QuantizeLinear one).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LoadOptions {
    /// Run QDQ patterns with integer kernels ([`crate::fuse`]).
    pub fuse_qdq: bool,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions { fuse_qdq: true }
    }
}

/// A validated, planned model, borrowing its weights from the file bytes.
pub struct Model<'a> {
    ir_version: i64,
    opset: i64,
    // Options so that `Model::EMPTY` is all zero bytes (a `static` of it then
    // lands in .bss, not in flash-backed .data).
    producer: Option<(&'a str, &'a str)>,
    graph_name: Option<&'a str>,
    pub(crate) values: Vec<Value<'a>, MAX_VALUES>,
    pub(crate) nodes: Vec<Node<'a>, MAX_NODES>,
    pub(crate) io: Vec<u16, MAX_NODE_IO>,
    inputs: Vec<u16, MAX_GRAPH_IO>,
    pub(crate) outputs: Vec<u16, MAX_GRAPH_IO>,
    metadata: Vec<(&'a str, &'a str), MAX_METADATA>,
    plan: Plan,
}

fn too_large(what: &'static str, limit: usize) -> Error {
    Error::TooLarge { what, limit }
}

fn value_err(value: &str, reason: &'static str) -> Error {
    Error::Value {
        value: name(value),
        reason,
    }
}

/// Validates a TensorProto (initializer or Constant attribute): supported
/// element type, static dims within limits, a payload that holds exactly
/// the declared number of elements, no external data.
pub fn check_tensor(t: &TensorView) -> Result<(DType, Shape), Error> {
    if t.is_external {
        return Err(value_err(
            t.name,
            "external data is not supported: save the model with its weights inside the file",
        ));
    }
    if t.is_segmented {
        return Err(value_err(t.name, "segmented tensors are not supported"));
    }
    let dtype = DType::from_onnx(t.data_type);
    if dtype.size() == 0 {
        return Err(Error::DType {
            value: name(t.name),
            dtype,
        });
    }
    let mut dims = [0usize; MAX_RANK];
    let mut rank = 0;
    for d in t.dims() {
        let d = d?;
        if rank == MAX_RANK {
            return Err(value_err(t.name, "rank above 8"));
        }
        dims[rank] = usize::try_from(d).map_err(|_| value_err(t.name, "negative dimension"))?;
        rank += 1;
    }
    let shape =
        Shape::new(&dims[..rank]).ok_or_else(|| value_err(t.name, "dimension too large"))?;
    let count = match shape.num_elements_within(MAX_ELEMENTS) {
        Some(n) => n,
        _ => return Err(value_err(t.name, "too many elements")),
    };
    match t.data {
        TensorData::Raw(raw) => {
            if Some(raw.len()) != count.checked_mul(dtype.size()) {
                return Err(value_err(
                    t.name,
                    "raw_data length does not match the dims and data type",
                ));
            }
        }
        TensorData::Typed {
            field,
            width,
            message,
        } => {
            let expected_field = match dtype {
                DType::F32 => 4,
                DType::I32 | DType::I8 | DType::U8 | DType::Bool | DType::F16 => 5,
                DType::I64 => 7,
                DType::F64 => 10,
                DType::Other(_) => 0,
            };
            if field != expected_field {
                return Err(value_err(
                    t.name,
                    "typed data field does not match the data type",
                ));
            }
            // The iterator is bounded by the message length, so this is cheap.
            let mut n = 0usize;
            for w in TypedWords::new(message, field, width) {
                w.map_err(|e| Error::Proto {
                    message: "TensorProto data",
                    reason: crate::error::WireErrorText(e),
                })?;
                n += 1;
            }
            if n != count {
                return Err(value_err(
                    t.name,
                    "number of typed elements does not match the dims",
                ));
            }
        }
        TensorData::Empty if count != 0 => return Err(value_err(t.name, "tensor has no data")),
        TensorData::Empty => {}
    }
    Ok((dtype, shape))
}

impl<'a> Model<'a> {
    /// Parses and validates an ONNX model; symbolic dims are bound to 1.
    pub fn parse(bytes: &'a [u8]) -> Result<Self, Error> {
        Self::parse_with(bytes, &Bindings::default())
    }

    /// Parses with symbolic dimensions and constant inputs bound by the caller.
    pub fn parse_with(bytes: &'a [u8], bindings: &Bindings<'a>) -> Result<Self, Error> {
        let mut model = Model::EMPTY;
        model.load(bytes, bindings)?;
        Ok(model)
    }

    /// A model with no graph, to be filled in place by [`Model::load`]. As a
    /// `const` it can initialise a `static`, so a microcontroller never holds
    /// the model's fixed-capacity tables on its stack.
    pub const EMPTY: Model<'a> = Model {
        ir_version: 0,
        opset: 0,
        producer: None,
        graph_name: None,
        values: Vec::new(),
        nodes: Vec::new(),
        io: Vec::new(),
        inputs: Vec::new(),
        outputs: Vec::new(),
        metadata: Vec::new(),
        plan: Plan::EMPTY,
    };

    /// Parses `bytes` into `self`, in place (nothing large is moved). On
    /// error `self` is left empty.
    pub fn load(&mut self, bytes: &'a [u8], bindings: &Bindings<'a>) -> Result<(), Error> {
        self.load_with(bytes, bindings, LoadOptions::default())
    }

    /// As [`Model::load`], with some load-time rewrites turned off.
    pub fn load_with(
        &mut self,
        bytes: &'a [u8],
        bindings: &Bindings<'a>,
        options: LoadOptions,
    ) -> Result<(), Error> {
        self.clear();
        let result = self.load_graph(bytes, bindings, options);
        if result.is_err() {
            self.clear();
        }
        result
    }

    fn clear(&mut self) {
        self.ir_version = 0;
        self.opset = 0;
        self.producer = None;
        self.graph_name = None;
        self.values.clear();
        self.nodes.clear();
        self.io.clear();
        self.inputs.clear();
        self.outputs.clear();
        self.metadata.clear();
        self.plan.clear();
    }

    fn load_graph(
        &mut self,
        bytes: &'a [u8],
        bindings: &Bindings<'a>,
        options: LoadOptions,
    ) -> Result<(), Error> {
        let view = ModelView::parse(bytes)?;
        let mut opset = None;
        for entry in view.opset_imports() {
            let (domain, version) = entry?;
            if domain.is_empty() || domain == "ai.onnx" {
                opset = Some(version);
            }
        }
        // A model whose nodes all live in other domains may import no
        // default opset; its nodes are then rejected one by one.
        let opset = opset.unwrap_or(0);
        if !(0..=ops::MAX_OPSET).contains(&opset) {
            return Err(Error::Opset {
                domain: name("ai.onnx"),
                version: opset,
                reason: "outside the range this runtime knows (1..=28)",
            });
        }
        if view.graph.is_empty() {
            return Err(Error::Model("the model has no graph"));
        }
        let graph = GraphView::parse(view.graph)?;
        if graph.has_sparse_initializers {
            return Err(Error::Model("sparse initializers are not supported"));
        }
        self.ir_version = view.ir_version;
        self.opset = opset;
        self.producer = Some((view.producer_name, view.producer_version));
        self.graph_name = Some(graph.name);
        for entry in view.metadata_props().take(MAX_METADATA) {
            let _ = self.metadata.push(entry?);
        }
        self.read_initializers(&graph)?;
        self.read_inputs(&graph, bindings)?;
        self.read_nodes(&graph)?;
        self.read_outputs(&graph)?;
        #[cfg(any(feature = "op-activation", feature = "op-sigmoid"))]
        self.fuse_activations();
        // Without `op-quant` no DequantizeLinear loads: nothing to rewrite.
        if options.fuse_qdq {
            #[cfg(feature = "op-quant")]
            self.fuse_qdq();
        }
        planner::plan_into(self)
    }

    fn find(&self, value: &str) -> Option<usize> {
        self.values.iter().position(|v| v.name == value)
    }

    fn add_value(&mut self, value: Value<'a>) -> Result<u16, Error> {
        if value.name.is_empty() {
            return Err(Error::Model("a value has an empty name"));
        }
        if self.find(value.name).is_some() {
            return Err(value_err(
                value.name,
                "defined more than once (initializer, input or node output)",
            ));
        }
        let index = self.values.len() as u16;
        self.values
            .push(value)
            .map_err(|_| too_large("values", MAX_VALUES))?;
        Ok(index)
    }

    fn read_initializers(&mut self, graph: &GraphView<'a>) -> Result<(), Error> {
        for bytes in graph.initializers() {
            let t = TensorView::parse(bytes)?;
            let (dtype, shape) = check_tensor(&t)?;
            self.add_value(Value {
                name: t.name,
                dtype,
                shape,
                kind: ValueKind::Constant(ConstData::Tensor(t.data)),
            })?;
        }
        Ok(())
    }

    fn read_inputs(&mut self, graph: &GraphView<'a>, bindings: &Bindings<'a>) -> Result<(), Error> {
        for bytes in graph.inputs() {
            let info = ValueInfoView::parse(bytes)?;
            // IR ≥ 4 may list initializers as inputs (overridable defaults);
            // they stay constants here.
            if self.find(info.name).is_some() {
                continue;
            }
            if !info.is_tensor {
                return Err(value_err(
                    info.name,
                    "graph input is not a tensor (sequences/maps are not supported)",
                ));
            }
            let dtype = DType::from_onnx(info.elem_type);
            if let Some(c) = bindings.constants.iter().find(|c| c.name == info.name) {
                let n = c.shape.num_elements_within(MAX_ELEMENTS);
                if n.and_then(|n| n.checked_mul(c.dtype.size())) != Some(c.data.len())
                    || c.dtype.size() == 0
                {
                    return Err(value_err(
                        info.name,
                        "bound constant's data does not match its shape and type",
                    ));
                }
                let kind = ValueKind::Constant(ConstData::Tensor(TensorData::Raw(c.data)));
                self.add_value(Value {
                    name: info.name,
                    dtype: c.dtype,
                    shape: c.shape,
                    kind,
                })?;
                continue;
            }
            if !dtype.is_run_time() {
                return Err(Error::DType {
                    value: name(info.name),
                    dtype,
                });
            }
            if !info.has_shape {
                return Err(value_err(
                    info.name,
                    "graph input has no shape (unknown rank)",
                ));
            }
            let mut dims = [0usize; MAX_RANK];
            let mut rank = 0;
            for d in info.dims() {
                if rank == MAX_RANK {
                    return Err(value_err(info.name, "rank above 8"));
                }
                dims[rank] = match d? {
                    Dim::Value(v) => usize::try_from(v)
                        .map_err(|_| value_err(info.name, "negative dimension"))?,
                    Dim::Param(p) => bindings
                        .dims
                        .iter()
                        .find(|(n, _)| *n == p)
                        .map_or(1, |&(_, v)| v),
                    Dim::Unknown => 1,
                };
                rank += 1;
            }
            let shape = Shape::new(&dims[..rank])
                .filter(|s| s.num_elements_within(MAX_ELEMENTS).is_some())
                .ok_or_else(|| value_err(info.name, "too many elements"))?;
            let slot = self.inputs.len() as u16;
            let index = self.add_value(Value {
                name: info.name,
                dtype,
                shape,
                kind: ValueKind::Input(slot),
            })?;
            self.inputs
                .push(index)
                .map_err(|_| too_large("graph inputs", MAX_GRAPH_IO))?;
        }
        Ok(())
    }

    fn read_nodes(&mut self, graph: &GraphView<'a>) -> Result<(), Error> {
        for (index, bytes) in graph.nodes().enumerate() {
            if index >= MAX_NODES {
                return Err(too_large("nodes", MAX_NODES));
            }
            let node = NodeView::parse(bytes)?;
            let at = || At::node(index, node.name, node.op_type);
            if !(node.domain.is_empty() || node.domain == "ai.onnx") {
                return Err(Error::UnsupportedOp {
                    at: at(),
                    detail: name(" (custom domain)"),
                });
            }
            let io_start = self.io.len();
            let mut inputs: Vec<Option<&Value<'a>>, MAX_NODE_INPUTS> = Vec::new();
            let mut input_ids: Vec<u16, MAX_NODE_INPUTS> = Vec::new();
            for input in node.inputs() {
                let id = if input.is_empty() {
                    ABSENT
                } else {
                    // Nodes are topologically sorted in ONNX, so every input is
                    // already known; this also rejects cycles.
                    self.find(input).ok_or_else(|| Error::Node {
                        at: at(),
                        value: name(input),
                        reason: "input is not an initializer, graph input or earlier node's output (graph not topologically sorted, or a cycle)",
                    })? as u16
                };
                input_ids
                    .push(id)
                    .map_err(|_| too_large("inputs on one node", MAX_NODE_INPUTS))?;
            }
            // Trailing omitted optional inputs count as absent.
            while input_ids.last() == Some(&ABSENT) {
                input_ids.pop();
            }
            for &id in &input_ids {
                let _ = inputs.push(self.values.get(usize::from(id)));
            }
            let mut used = [false; 8];
            let mut n_outputs = 0;
            let mut first_output = "";
            for (i, out) in node.outputs().enumerate() {
                if i >= used.len() {
                    return Err(Error::Node {
                        at: at(),
                        value: name(out),
                        reason: "too many outputs",
                    });
                }
                used[i] = !out.is_empty();
                if i == 0 {
                    first_output = out;
                }
                n_outputs += 1;
            }
            let ctx = NodeCtx {
                index,
                node,
                version: 0,
                inputs: &inputs,
                outputs: n_outputs,
                output_used: &used[..n_outputs],
            };
            let (op, out) = ops::prepare(&ctx, self.opset)?;
            drop(inputs);
            for &id in &input_ids {
                self.io
                    .push(id)
                    .map_err(|_| too_large("node inputs", MAX_NODE_IO))?;
            }
            let output = if first_output.is_empty() {
                None
            } else {
                let kind = match out.constant {
                    Some(c) => ValueKind::Constant(c),
                    None => ValueKind::Computed(index as u16),
                };
                Some(self.add_value(Value {
                    name: first_output,
                    dtype: out.dtype,
                    shape: out.shape,
                    kind,
                })?)
            };
            let node = Node {
                name: node.name,
                op_type: node.op_type,
                op,
                io_start: io_start as u16,
                n_inputs: input_ids.len() as u8,
                output,
                qdq_fused: false,
            };
            self.nodes
                .push(node)
                .map_err(|_| too_large("nodes", MAX_NODES))?;
        }
        Ok(())
    }

    fn read_outputs(&mut self, graph: &GraphView<'a>) -> Result<(), Error> {
        for bytes in graph.outputs() {
            let info = ValueInfoView::parse(bytes)?;
            let index = self.find(info.name).ok_or_else(|| {
                value_err(
                    info.name,
                    "graph output is not produced by any node, input or initializer",
                )
            })?;
            let value = &self.values[index];
            if !value.dtype.is_run_time() {
                return Err(Error::DType {
                    value: name(info.name),
                    dtype: value.dtype,
                });
            }
            if info.has_shape {
                let mut rank = 0;
                for (i, d) in info.dims().enumerate() {
                    if let Dim::Value(v) = d? {
                        if i >= value.shape.rank() || v != value.shape.dim(i) as i64 {
                            return Err(value_err(
                                info.name,
                                "declared output shape differs from the inferred shape",
                            ));
                        }
                    }
                    rank += 1;
                }
                if rank != value.shape.rank() {
                    return Err(value_err(
                        info.name,
                        "declared output rank differs from the inferred rank",
                    ));
                }
            }
            self.outputs
                .push(index as u16)
                .map_err(|_| too_large("graph outputs", MAX_GRAPH_IO))?;
        }
        if self.outputs.is_empty() {
            return Err(Error::Model("the graph has no outputs"));
        }
        Ok(())
    }

    /// Folds an activation into the Conv/Gemm feeding it when nothing else
    /// reads the Conv/Gemm result.
    #[cfg(any(feature = "op-activation", feature = "op-sigmoid"))]
    fn fuse_activations(&mut self) {
        let mut readers = [0u16; MAX_VALUES];
        for &id in &self.io {
            if let Some(r) = readers.get_mut(usize::from(id)) {
                *r = r.saturating_add(1);
            }
        }
        for &id in &self.outputs {
            readers[usize::from(id)] = u16::MAX;
        }
        for j in 0..self.nodes.len() {
            let Op::Unary(act) = self.nodes[j].op else {
                continue;
            };
            let Some(&input) = self.io.get(usize::from(self.nodes[j].io_start)) else {
                continue;
            };
            let ValueKind::Computed(producer) = self.values[usize::from(input)].kind else {
                continue;
            };
            if readers[usize::from(input)] != 1 {
                continue;
            }
            let producer = usize::from(producer);
            let Some(slot) = self.nodes[producer].op.fused_activation_mut() else {
                continue;
            };
            *slot = act;
            let fused_output = self.nodes[j].output;
            self.nodes[producer].output = fused_output;
            if let Some(out) = fused_output {
                self.values[usize::from(out)].kind = ValueKind::Computed(producer as u16);
            }
            self.nodes[j].op = Op::Nop;
            self.nodes[j].output = None;
            self.values[usize::from(input)].kind = ValueKind::Computed(u16::MAX);
        }
    }

    /// Default-domain opset the model imports.
    pub fn opset(&self) -> i64 {
        self.opset
    }
    /// ONNX IR version.
    pub fn ir_version(&self) -> i64 {
        self.ir_version
    }
    /// `(producer_name, producer_version)`.
    pub fn producer(&self) -> (&'a str, &'a str) {
        self.producer.unwrap_or(("", ""))
    }
    /// The graph's name.
    pub fn graph_name(&self) -> &'a str {
        self.graph_name.unwrap_or("")
    }
    /// All values (inputs, constants, intermediates).
    pub fn values(&self) -> &[Value<'a>] {
        &self.values
    }
    /// The nodes, in execution order (fused activations and absorbed QDQ
    /// nodes remain as `Nop`; after a QDQ rewrite a `Nop` lists no inputs).
    pub fn nodes(&self) -> &[Node<'a>] {
        &self.nodes
    }
    /// What the QDQ rewrite did: `(nodes fused, integer ops they became)`,
    /// e.g. `(12, 3)` for three DequantizeLinear → Conv → QuantizeLinear
    /// patterns with their weight and bias DequantizeLinears (see
    /// [`Node::qdq_fused`]).
    pub fn qdq_fusion(&self) -> (usize, usize) {
        let fused = self.nodes.iter().filter(|n| n.qdq_fused);
        let ops = fused.clone().filter(|n| n.op != Op::Nop).count();
        (fused.count(), ops)
    }
    /// Value ids of node `node`'s inputs (`None` for omitted optional inputs).
    pub fn node_inputs(&self, node: &Node<'a>) -> impl Iterator<Item = Option<u16>> + '_ {
        let start = usize::from(node.io_start);
        self.io[start..start + usize::from(node.n_inputs)]
            .iter()
            .map(|&i| (i != ABSENT).then_some(i))
    }
    /// The run-time graph inputs, in `Session::run` order.
    pub fn inputs(&self) -> impl ExactSizeIterator<Item = &Value<'a>> + '_ {
        self.inputs.iter().map(|&i| &self.values[usize::from(i)])
    }
    /// The graph outputs, in `Session::run` order.
    pub fn outputs(&self) -> impl ExactSizeIterator<Item = &Value<'a>> + '_ {
        self.outputs.iter().map(|&i| &self.values[usize::from(i)])
    }
    pub(crate) fn output_ids(&self) -> &[u16] {
        &self.outputs
    }
    /// `metadata_props` (the first 16).
    pub fn metadata(&self) -> &[(&'a str, &'a str)] {
        &self.metadata
    }
    /// The memory plan.
    pub fn plan(&self) -> &Plan {
        &self.plan
    }
    pub(crate) fn plan_mut(&mut self) -> &mut Plan {
        &mut self.plan
    }
    /// Bytes of 16-byte-aligned arena `Session::new` needs (add 15 if the
    /// buffer's alignment is unknown).
    pub fn arena_size(&self) -> usize {
        self.plan.arena_size
    }
    /// Multiply-accumulates per inference.
    pub fn macs(&self) -> u64 {
        self.nodes
            .iter()
            .map(|n| {
                n.output
                    .map_or(0, |o| n.op.macs(&self.values[usize::from(o)].shape))
            })
            .sum()
    }
    /// Elements and bytes held in constants (weights), as the file stores
    /// them: a float16 weight counts 2 bytes per element, and the float32
    /// copy a load-time `Cast` makes of it (staged in the arena, see
    /// [`Plan::converted_constant_bytes`]) is not counted again.
    pub fn parameters(&self) -> (usize, usize) {
        self.values
            .iter()
            .filter(|v| v.constant().is_some_and(|c| !c.is_converted()))
            .fold((0, 0), |(n, b), v| {
                (n + v.len(), b + v.len() * v.dtype.size())
            })
    }
}

impl core::fmt::Debug for Model<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Model")
            .field("opset", &self.opset)
            .field("nodes", &self.nodes.len())
            .field("values", &self.values.len())
            .field("arena_size", &self.plan.arena_size)
            .finish()
    }
}
