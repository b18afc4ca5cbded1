//! Fixed capacities. They bound the work `Model::parse` can be made to do by
//! a hostile file and size the model tables, which live inline (no heap).

/// Most nodes in a graph.
pub const MAX_NODES: usize = 256;
/// Most values (graph inputs, initializers, node outputs) in a graph.
pub const MAX_VALUES: usize = 512;
/// Most node input + output references in a graph, all nodes together.
pub const MAX_NODE_IO: usize = 1024;
/// Most inputs of one node (Concat is the widest).
pub const MAX_NODE_INPUTS: usize = 32;
/// Most graph inputs and most graph outputs.
pub const MAX_GRAPH_IO: usize = 16;
/// Most metadata_props entries kept (later ones are ignored).
pub const MAX_METADATA: usize = 16;
/// Most elements in one tensor (2^28 f32 = 1 GiB).
pub const MAX_ELEMENTS: usize = 1 << 28;
/// Most attributes read per node, and most protobuf fields scanned per message
/// list, so attribute look-ups stay linear.
pub const MAX_ATTRIBUTES: usize = 64;
