#!/usr/bin/env python3
"""Write the small, valid seed models the runtime's fuzz test mutates.

Usage:
    .venv/bin/python scripts/gen_fuzz_seeds.py OUT_DIR

Each seed is a few KB at most, so that random mutations mostly hit the
protobuf structure (names, dims, attributes, node lists) rather than weight
bytes. Together they cover every op family the runtime implements and both
tensor encodings (raw_data and the typed float_data / int64_data /
int32_data fields).
The weights come from a fixed numpy seed, so the files are reproducible
byte for byte for a given onnx version.

The files are checked into runtime/tests/data/fuzz-seeds/; regenerate them
with:
    .venv/bin/python scripts/gen_fuzz_seeds.py runtime/tests/data/fuzz-seeds
"""

from __future__ import annotations

import os
import sys

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

RNG = np.random.default_rng(20240611)


def weights(name: str, *shape: int, scale: float = 0.5) -> TensorProto:
    """A float32 initializer stored as raw_data."""
    data = (RNG.standard_normal(shape) * scale).astype(np.float32)
    return numpy_helper.from_array(data, name)


def ints(name: str, values: list[int]) -> TensorProto:
    """An int64 initializer stored as raw_data."""
    return numpy_helper.from_array(np.array(values, dtype=np.int64), name)


def f32_input(name: str, shape: list[int]) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def f32_output(name: str, shape: list[int] | None) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def model(graph: onnx.GraphProto, opset: int) -> onnx.ModelProto:
    m = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", opset)],
        producer_name="tinykd-fuzz-seeds",
        producer_version="1",
    )
    # Keep the IR version loadable by older onnx builds too.
    m.ir_version = 8
    onnx.checker.check_model(m, full_check=True)
    return m


def mlp() -> onnx.ModelProto:
    """Gemm + Relu + Gemm + Softmax."""
    nodes = [
        helper.make_node("Gemm", ["x", "w1", "b1"], ["h"], name="fc1", transB=1),
        helper.make_node("Relu", ["h"], ["hr"], name="relu"),
        helper.make_node("Gemm", ["hr", "w2", "b2"], ["logits"], name="fc2", alpha=0.5, beta=1.0),
        helper.make_node("Softmax", ["logits"], ["y"], name="softmax", axis=-1),
    ]
    inits = [weights("w1", 12, 8), weights("b1", 12), weights("w2", 12, 4), weights("b2", 4)]
    g = helper.make_graph(nodes, "mlp", [f32_input("x", [2, 8])], [f32_output("y", [2, 4])], inits)
    return model(g, 13)


def cnn() -> onnx.ModelProto:
    """Conv + BatchNormalization + Relu + MaxPool + AveragePool + Flatten + Gemm."""
    nodes = [
        helper.make_node("Conv", ["x", "cw", "cb"], ["c"], name="conv", pads=[1, 1, 1, 1], kernel_shape=[3, 3]),
        helper.make_node("BatchNormalization", ["c", "s", "bb", "m", "v"], ["n"], name="bn", epsilon=1e-3),
        helper.make_node("Relu", ["n"], ["r"], name="relu"),
        helper.make_node("MaxPool", ["r"], ["p1"], name="maxpool", kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node(
            "AveragePool", ["p1"], ["p2"], name="avgpool", kernel_shape=[2, 2], strides=[2, 2], pads=[0, 0, 1, 1], count_include_pad=1
        ),
        helper.make_node("Flatten", ["p2"], ["f"], name="flatten", axis=1),
        helper.make_node("Gemm", ["f", "gw", "gb"], ["y"], name="fc", transB=1),
    ]
    var = numpy_helper.from_array(RNG.uniform(0.5, 1.5, 3).astype(np.float32), "v")
    inits = [
        weights("cw", 3, 2, 3, 3),
        weights("cb", 3),
        weights("s", 3),
        weights("bb", 3),
        weights("m", 3),
        var,
        weights("gw", 5, 12),
        weights("gb", 5),
    ]
    g = helper.make_graph(nodes, "cnn", [f32_input("x", [1, 2, 8, 8])], [f32_output("y", [1, 5])], inits)
    return model(g, 13)


def depthwise() -> onnx.ModelProto:
    """Depthwise Conv + Clip (constant bounds) + GlobalAveragePool + Reshape."""
    nodes = [
        helper.make_node(
            "Conv", ["x", "dw"], ["d"], name="dwconv", group=4, kernel_shape=[3, 3], strides=[2, 2], auto_pad="SAME_UPPER"
        ),
        helper.make_node("Clip", ["d", "lo", "hi"], ["c"], name="relu6"),
        helper.make_node("GlobalAveragePool", ["c"], ["g"], name="gap"),
        helper.make_node("Reshape", ["g", "shape"], ["y"], name="reshape"),
    ]
    inits = [
        weights("dw", 4, 1, 3, 3),
        numpy_helper.from_array(np.array(0.0, dtype=np.float32), "lo"),
        numpy_helper.from_array(np.array(6.0, dtype=np.float32), "hi"),
        ints("shape", [1, -1]),
    ]
    g = helper.make_graph(nodes, "depthwise", [f32_input("x", [1, 4, 7, 7])], [f32_output("y", [1, 4])], inits)
    return model(g, 13)


def elementwise() -> onnx.ModelProto:
    """Broadcasting Add/Mul/Div/Sub, Transpose, Concat, Pad, Squeeze,
    Unsqueeze, LogSoftmax, over two graph inputs."""
    nodes = [
        helper.make_node("Add", ["a", "b"], ["s"], name="add"),  # [2,3,4] + [3,4]
        helper.make_node("Mul", ["s", "k"], ["p"], name="mul"),  # * [1,1,4]
        helper.make_node("Div", ["p", "d"], ["q"], name="div"),  # / [3,1]
        helper.make_node("Sub", ["q", "a"], ["t"], name="sub"),
        helper.make_node("Transpose", ["t"], ["tt"], name="transpose", perm=[0, 2, 1]),  # [2,4,3]
        helper.make_node("Transpose", ["a"], ["at"], name="transpose2", perm=[0, 2, 1]),
        helper.make_node("Concat", ["tt", "at"], ["cat"], name="concat", axis=2),  # [2,4,6]
        helper.make_node("Pad", ["cat", "pads", "pv"], ["pad"], name="pad", mode="constant"),  # [2,5,7]
        helper.make_node("Unsqueeze", ["pad", "ax0"], ["u"], name="unsqueeze"),  # [1,2,5,7]
        helper.make_node("Squeeze", ["u", "ax0"], ["sq"], name="squeeze"),  # [2,5,7]
        helper.make_node("LogSoftmax", ["sq"], ["y"], name="logsoftmax", axis=1),
    ]
    inits = [
        weights("k", 1, 1, 4),
        numpy_helper.from_array(RNG.uniform(1.0, 2.0, (3, 1)).astype(np.float32), "d"),
        ints("pads", [0, 1, 0, 0, 0, 1]),
        numpy_helper.from_array(np.array(0.25, dtype=np.float32), "pv"),
        ints("ax0", [0]),
    ]
    g = helper.make_graph(
        nodes,
        "elementwise",
        [f32_input("a", [2, 3, 4]), f32_input("b", [3, 4])],
        [f32_output("y", [2, 5, 7]), f32_output("cat", [2, 4, 6])],
        inits,
    )
    return model(g, 13)


def typed_fields() -> onnx.ModelProto:
    """Weights in float_data and a Reshape shape in int64_data (no raw_data)."""
    w = RNG.standard_normal((6, 5)).astype(np.float32) * 0.5
    b = RNG.standard_normal(6).astype(np.float32) * 0.5
    inits = [
        helper.make_tensor("w", TensorProto.FLOAT, [6, 5], w.flatten().tolist(), raw=False),
        helper.make_tensor("b", TensorProto.FLOAT, [6], b.flatten().tolist(), raw=False),
        helper.make_tensor("shape", TensorProto.INT64, [3], [1, 2, 3], raw=False),
        helper.make_tensor("axes", TensorProto.INT64, [1], [1], raw=False),
    ]
    nodes = [
        helper.make_node("Gemm", ["x", "w", "b"], ["h"], name="fc", transB=1),
        helper.make_node("Sigmoid", ["h"], ["s"], name="sigmoid"),
        helper.make_node("Reshape", ["s", "shape"], ["r"], name="reshape"),
        helper.make_node("MatMul", ["r", "m"], ["mm"], name="matmul"),
        helper.make_node("Tanh", ["mm"], ["y"], name="tanh"),
    ]
    inits.append(helper.make_tensor("m", TensorProto.FLOAT, [3, 2], (RNG.standard_normal(6) * 0.5).tolist(), raw=False))
    g = helper.make_graph(nodes, "typed", [f32_input("x", [1, 5])], [f32_output("y", [1, 2, 2])], inits)
    return model(g, 13)


def constant_node() -> onnx.ModelProto:
    """Constant nodes (tensor, value_float, value_ints) feeding Add, Mul,
    Reshape and Unsqueeze; plus LeakyRelu, HardSigmoid and HardSwish."""
    bias = numpy_helper.from_array((RNG.standard_normal((1, 6)) * 0.5).astype(np.float32), "bias_value")
    nodes = [
        helper.make_node("Constant", [], ["bias"], name="c_bias", value=bias),
        helper.make_node("Constant", [], ["scale"], name="c_scale", value_float=1.5),
        helper.make_node("Constant", [], ["shape"], name="c_shape", value_ints=[2, 3]),
        helper.make_node("Constant", [], ["axes"], name="c_axes", value=helper.make_tensor("ax", TensorProto.INT64, [1], [0])),
        helper.make_node("Add", ["x", "bias"], ["a"], name="add"),
        helper.make_node("Mul", ["a", "scale"], ["m"], name="mul"),
        helper.make_node("LeakyRelu", ["m"], ["l"], name="leaky", alpha=0.1),
        helper.make_node("HardSigmoid", ["l"], ["h"], name="hsig"),
        helper.make_node("HardSwish", ["h"], ["hs"], name="hswish"),
        helper.make_node("Reshape", ["hs", "shape"], ["r"], name="reshape"),
        helper.make_node("Unsqueeze", ["r", "axes"], ["y"], name="unsqueeze"),
    ]
    g = helper.make_graph(nodes, "constants", [f32_input("x", [1, 6])], [f32_output("y", [1, 2, 3])])
    return model(g, 14)


def legacy_opset() -> onnx.ModelProto:
    """Opset 9 forms: Pad / Clip / Unsqueeze / Squeeze attributes, Dropout,
    a 1-D Conv, MaxPool with strides, Identity, and a dynamic Clip-free MatMul."""
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], name="conv1d", kernel_shape=[3], dilations=[2]),  # [1,2,6]
        helper.make_node("Clip", ["c"], ["cl"], name="clip", min=-1.0, max=1.0),
        helper.make_node("Pad", ["cl"], ["p"], name="pad", pads=[0, 0, 1, 0, 0, 1], value=0.5),  # [1,2,8]
        helper.make_node("MaxPool", ["p"], ["mp"], name="maxpool", kernel_shape=[2], strides=[2]),  # [1,2,4]
        helper.make_node("Dropout", ["mp"], ["dr"], name="dropout", ratio=0.3),
        helper.make_node("Identity", ["dr"], ["id"], name="identity"),
        helper.make_node("Unsqueeze", ["id"], ["u"], name="unsqueeze", axes=[0]),  # [1,1,2,4]
        helper.make_node("Squeeze", ["u"], ["s"], name="squeeze", axes=[0, 1]),  # [2,4]
        helper.make_node("MatMul", ["s", "mw"], ["y"], name="matmul"),  # [2,3]
    ]
    inits = [weights("w", 2, 1, 3), weights("mw", 4, 3)]
    g = helper.make_graph(nodes, "legacy", [f32_input("x", [1, 1, 10])], [f32_output("y", [2, 3])], inits)
    return model(g, 9)


def fanout(opset: int) -> onnx.ModelProto:
    """One rank-4 input read directly by many shape-sensitive ops, each
    producing a graph output: mutating the input's dims reaches every op's
    size computations at once."""
    legacy = opset < 13
    nodes = [
        helper.make_node("Flatten", ["x"], ["flat"], name="flatten", axis=2),
        helper.make_node("Softmax", ["x"], ["soft"], name="softmax", axis=1),
        helper.make_node("LogSoftmax", ["x"], ["logsoft"], name="logsoftmax", axis=-1),
        helper.make_node("GlobalAveragePool", ["x"], ["gap"], name="gap"),
        helper.make_node("Concat", ["x", "x"], ["cat"], name="concat", axis=2),
        helper.make_node("BatchNormalization", ["x", "s", "bb", "m", "v"], ["bn"], name="bn"),
        helper.make_node("Transpose", ["x"], ["tr"], name="transpose", perm=[0, 3, 1, 2]),
        helper.make_node("MatMul", ["x", "mw"], ["mm"], name="matmul"),
        helper.make_node("MaxPool", ["x"], ["mp"], name="maxpool", kernel_shape=[2, 2]),
        helper.make_node("Mul", ["x", "x"], ["sq"], name="square"),
    ]
    if legacy:
        nodes.append(helper.make_node("Unsqueeze", ["x"], ["u"], name="unsqueeze", axes=[4]))
    else:
        nodes.append(helper.make_node("Unsqueeze", ["x", "ax"], ["u"], name="unsqueeze"))
    nodes.append(helper.make_node("GlobalAveragePool", ["u"], ["gap5"], name="gap5"))
    var = numpy_helper.from_array(RNG.uniform(0.5, 1.5, 2).astype(np.float32), "v")
    inits = [weights("s", 2), weights("bb", 2), weights("m", 2), var, weights("mw", 4, 3)]
    if not legacy:
        inits.append(ints("ax", [4]))
    outputs = [
        f32_output("flat", [2, 12]),
        f32_output("soft", [1, 2, 3, 4]),
        f32_output("logsoft", [1, 2, 3, 4]),
        f32_output("gap", [1, 2, 1, 1]),
        f32_output("cat", [1, 2, 6, 4]),
        f32_output("bn", [1, 2, 3, 4]),
        f32_output("tr", [1, 4, 2, 3]),
        f32_output("mm", [1, 2, 3, 3]),
        f32_output("mp", [1, 2, 2, 3]),
        f32_output("sq", [1, 2, 3, 4]),
        f32_output("gap5", [1, 2, 1, 1, 1]),
    ]
    g = helper.make_graph(nodes, f"fanout{opset}", [f32_input("x", [1, 2, 3, 4])], outputs, inits)
    return model(g, opset)


def newer_opset() -> onnx.ModelProto:
    """Opset 18 forms: Pad with axes and constant_value inputs, Clip with an
    omitted min, Reshape copying a dim (0) and inferring one (-1), Dropout
    with ratio and a bool training_mode input, Constant value_int /
    value_floats; plus model metadata, value_info, an initializer also listed
    as a graph input, and the explicit "ai.onnx" node domain."""
    nodes = [
        helper.make_node("Pad", ["x", "pads", "cv", "axes"], ["p"], name="pad", mode="constant"),  # [1,3,6,5]
        helper.make_node("Clip", ["p", "", "hi"], ["c"], name="clip"),
        helper.make_node("Reshape", ["c", "shape"], ["r"], name="reshape", allowzero=0),  # [1,90]
        helper.make_node("Dropout", ["r", "ratio", "train"], ["d"], name="dropout"),
        helper.make_node("Constant", [], ["k"], name="c_floats", value_floats=[0.5, -1.0, 2.0]),
        helper.make_node("Constant", [], ["n"], name="c_int", value_int=3),
        helper.make_node("Gemm", ["d", "w"], ["g"], name="fc", transB=1),  # [1,3]
        helper.make_node("Add", ["g", "k"], ["y"], name="add"),
    ]
    inits = [
        ints("pads", [1, 0, 1, 1]),
        numpy_helper.from_array(np.array(0.0, dtype=np.float32), "cv"),
        ints("axes", [2, 3]),
        numpy_helper.from_array(np.array(1.0, dtype=np.float32), "hi"),
        ints("shape", [0, -1]),
        numpy_helper.from_array(np.array(0.5, dtype=np.float32), "ratio"),
        numpy_helper.from_array(np.array(False), "train"),
        weights("w", 3, 90, scale=0.1),
    ]
    g = helper.make_graph(
        nodes,
        "newer",
        [f32_input("x", [1, 3, 4, 4]), f32_input("hi", [])],
        [f32_output("y", [1, 3])],
        inits,
        value_info=[f32_output("r", [1, 90])],
    )
    m = model(g, 18)
    m.graph.node[1].domain = "ai.onnx"  # the checker only knows the "" spelling
    helper.set_model_props(m, {"author": "tinykd", "purpose": "fuzz seed"})
    m.doc_string = "seed"
    return m


def quantized() -> onnx.ModelProto:
    """The quantized ops and typed tensors: float input quantized to uint8,
    QLinearConv (per-channel int8 weights, int32 bias), uint8 MaxPool and
    Flatten, QLinearMatMul, DequantizeLinear back to float; ConvInteger and
    MatMulInteger with an int32 output and an int32 DequantizeLinear; an
    int8 graph input through Transpose and Pad to an int8 graph output.
    Some zero points sit in the typed int32_data field."""

    def q(name: str, dtype, values, shape=None) -> TensorProto:
        a = np.array(values, dtype=dtype)
        return numpy_helper.from_array(a if shape is None else a.reshape(shape), name)

    def typed(name: str, elem: int, dims: list[int], values: list[int]) -> TensorProto:
        return helper.make_tensor(name, elem, dims, values, raw=False)

    nodes = [
        helper.make_node("QuantizeLinear", ["x", "xs", "xz"], ["xq"], name="quant"),
        helper.make_node(
            "QLinearConv",
            ["xq", "xs", "xz", "w", "ws", "wz", "cs", "cz", "bias"],
            ["c"],
            name="qconv",
            pads=[1, 1, 1, 1],
        ),  # [1,3,4,4] uint8
        helper.make_node("MaxPool", ["c"], ["p"], name="pool", kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Flatten", ["p"], ["f"], name="flatten"),  # [1,12]
        helper.make_node(
            "QLinearMatMul", ["f", "cs", "cz", "b", "bs", "bz", "ms", "mz"], ["m"], name="qmatmul"
        ),  # [1,4] uint8
        helper.make_node("DequantizeLinear", ["m", "ms", "mz"], ["y"], name="dequant"),
        helper.make_node("ConvInteger", ["xq", "w2", "xz", "w2z"], ["ci"], name="convint"),
        helper.make_node("MatMulInteger", ["f", "b", "cz", "bz"], ["mi"], name="matmulint"),
        helper.make_node("DequantizeLinear", ["mi", "s32"], ["y2"], name="dequant32"),
        helper.make_node("Transpose", ["t"], ["tt"], name="transpose", perm=[1, 0]),
        helper.make_node("Pad", ["tt", "tpads", "tfill"], ["tp"], name="pad"),  # [4,2] int8
    ]
    wq = np.clip(np.round(RNG.standard_normal((3, 2, 3, 3)) * 40), -127, 127)
    inits = [
        q("xs", np.float32, 0.02),
        q("xz", np.uint8, 128),
        q("w", np.int8, wq),
        q("ws", np.float32, [0.01, 0.02, 0.005]),
        typed("wz", TensorProto.INT8, [3], [0, 0, 0]),
        q("cs", np.float32, 0.05),
        q("cz", np.uint8, 10),
        q("bias", np.int32, [100, -200, 50]),
        q("b", np.uint8, RNG.integers(0, 256, (12, 4))),
        q("bs", np.float32, 0.01),
        typed("bz", TensorProto.UINT8, [], [120]),
        q("ms", np.float32, 0.1),
        q("mz", np.uint8, 128),
        q("w2", np.uint8, [[[[3]], [[250]]], [[[0]], [[7]]]]),
        q("w2z", np.uint8, [1, 2]),
        q("s32", np.float32, 0.001),
        ints("tpads", [1, 0, 0, 0]),
        q("tfill", np.int8, -5),
    ]
    g = helper.make_graph(
        nodes,
        "quantized",
        [f32_input("x", [1, 2, 4, 4]), helper.make_tensor_value_info("t", TensorProto.INT8, [2, 3])],
        [
            f32_output("y", [1, 4]),
            helper.make_tensor_value_info("ci", TensorProto.INT32, [1, 2, 4, 4]),
            f32_output("y2", [1, 4]),
            helper.make_tensor_value_info("tp", TensorProto.INT8, [4, 2]),
        ],
        inits,
    )
    return model(g, 13)


def cast() -> onnx.ModelProto:
    """float16 weights behind Cast(to=FLOAT) (raw_data and int32_data), run-time
    Casts float32 -> int32 -> float32, and an int64 initializer cast to float32."""
    rng = np.random.default_rng(20261127)

    def half(name: str, *shape: int) -> TensorProto:
        return numpy_helper.from_array((rng.standard_normal(shape) * 0.5).astype(np.float16), name)

    b1 = (rng.standard_normal(6) * 0.5).astype(np.float16)
    # make_tensor stores FLOAT16 values as their bits in int32_data.
    b1_typed = helper.make_tensor("b1_h", TensorProto.FLOAT16, [6], b1.astype(np.float32).tolist())
    to_float = TensorProto.FLOAT
    nodes = [
        helper.make_node("Cast", ["w1_h"], ["w1"], name="w1_cast", to=to_float),
        helper.make_node("Cast", ["b1_h"], ["b1"], name="b1_cast", to=to_float),
        helper.make_node("Gemm", ["x", "w1", "b1"], ["h"], name="fc1", transB=1),
        helper.make_node("Relu", ["h"], ["r"], name="relu"),
        helper.make_node("Cast", ["r"], ["ri"], name="to_int", to=TensorProto.INT32),
        helper.make_node("Cast", ["ri"], ["rf"], name="to_float", to=to_float),
        helper.make_node("Cast", ["w2_h"], ["w2"], name="w2_cast", to=to_float),
        helper.make_node("MatMul", ["rf", "w2"], ["m"], name="fc2"),
        helper.make_node("Cast", ["k"], ["kf"], name="k_cast", to=to_float),
        helper.make_node("Add", ["m", "kf"], ["y"], name="add"),
    ]
    inits = [half("w1_h", 6, 8), b1_typed, half("w2_h", 6, 4), ints("k", [1, -2, 3, -4])]
    g = helper.make_graph(nodes, "cast", [f32_input("x", [2, 8])], [f32_output("y", [2, 4])], inits)
    return model(g, 13)


SEEDS = {
    "mlp": mlp,
    "cnn": cnn,
    "depthwise": depthwise,
    "elementwise": elementwise,
    "typed_fields": typed_fields,
    "constant_node": constant_node,
    "legacy_opset": legacy_opset,
    "fanout11": lambda: fanout(11),
    "fanout13": lambda: fanout(13),
    "newer_opset": newer_opset,
    "quantized": quantized,
    "cast": cast,
}


def main() -> int:
    if len(sys.argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    out_dir = sys.argv[1]
    os.makedirs(out_dir, exist_ok=True)
    for name, build in SEEDS.items():
        m = build()
        data = m.SerializeToString()
        path = os.path.join(out_dir, f"{name}.onnx")
        with open(path, "wb") as f:
            f.write(data)
        print(f"{path}: {len(data)} bytes, {len(m.graph.node)} nodes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
