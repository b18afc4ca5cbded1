#!/usr/bin/env python3
"""Write small f32 ONNX models (seeded random weights) for cross-checking the
tinykd runtime against tract and onnxruntime.

Usage:
    .venv/bin/python scripts/gen_crosscheck_models.py OUT_DIR [--seed N] [--force]

For every model NAME in MODELS this writes

    OUT_DIR/NAME.onnx                           the model
    OUT_DIR/NAME/model.onnx                     the same bytes
    OUT_DIR/NAME/test_data_set_0/input_K.pb     seeded standard-normal inputs
    OUT_DIR/NAME/test_data_set_0/output_K.pb    onnxruntime's outputs

(the reference case uses the layout of onnx's backend/test/data/node; every
.pb is a TensorProto named after the graph input/output).  References are
computed with onnxruntime's CPUExecutionProvider with all graph optimizations
disabled and one thread.

Models (ir_version 8, opset 13 unless noted; all tensors float32):
  mlp         x[1,784] -> Gemm(784->128,transB) -> Relu -> Gemm(128->10,transB)
              -> Softmax(axis=1) -> y[1,10]
  mlp_matmul  the same weights as mlp, built from MatMul + Add, with
              LeakyRelu(alpha=0.1) between the layers instead of Relu,
              then Softmax(axis=1) -> y[1,10]
  cnn         x[1,1,28,28] -> Conv(1->8,3x3,pads 1) -> BatchNormalization
              -> Relu -> MaxPool(2,s2) -> Conv(8->16,3x3) -> Relu
              -> AveragePool(2,s2) -> Flatten -> Gemm(576->10,transB) -> y[1,10]
  dscnn       (opset 14) x[1,1,28,28] -> Conv(1->16,3x3,s2,pads 1) -> Clip(0,6)
              -> depthwise Conv(16 groups,3x3,pads 1) -> HardSwish
              -> Conv 1x1 (16->32) -> Relu -> GlobalAveragePool
              -> Reshape([0,-1]) -> Gemm(32->10,transB) -> y[1,10]
  ops_mix     x[2,3,4,5], z[1,3,1,5] -> Add -> Mul [5] -> Sub scalar
              -> Div [3,1,1] -> Transpose(0,2,3,1) -> Pad(constant 0.5,
              pads with negative entries) -> Sigmoid -> Tanh -> HardSigmoid
              -> Unsqueeze/Squeeze round trip -> Concat(self,self,axis=1)
              -> LogSoftmax(axis=-1) -> y[2,14,5,4]

Output is generated in a temporary sibling directory and renamed into place.
OUT_DIR/.stamp holds a hash of this script, the seed and the onnx /
onnxruntime / numpy versions; when it matches the script exits at once.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import os
import shutil
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from generated_dir import STAMP, check_replaceable, publish, read_stamp  # noqa: E402

IR_VERSION = 8


def stamp_text(seed: int) -> str:
    with open(os.path.abspath(__file__), "rb") as f:
        script_hash = hashlib.sha256(f.read()).hexdigest()
    versions = " ".join(
        f"{p}={importlib.metadata.version(p)}" for p in ("onnx", "onnxruntime", "numpy")
    )
    return f"script-sha256 {script_hash}\nseed {seed}\n{versions}\n"








# --------------------------------------------------------------------------
# model builders

def _builders():
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    F32 = TensorProto.FLOAT

    class Graph:
        def __init__(self, rng):
            self.rng = rng
            self.nodes = []
            self.inits = []
            self.n = 0

        def init(self, name, array):
            self.inits.append(numpy_helper.from_array(np.asarray(array), name))
            return name

        def weight(self, name, shape, fan_in):
            w = self.rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)
            return self.init(name, w.astype(np.float32))

        def bias(self, name, n):
            return self.init(name, (0.1 * self.rng.standard_normal(n)).astype(np.float32))

        def op(self, op_type, inputs, **attrs):
            self.n += 1
            out = f"{op_type.lower()}_{self.n}"
            self.nodes.append(
                helper.make_node(op_type, inputs, [out], name=f"{op_type}_{self.n}", **attrs)
            )
            return out

        def model(self, name, inputs, last, out_shape, opset, doc):
            # The graph output is the last node's output, renamed to `y`.
            assert self.nodes[-1].output[0] == last
            self.nodes[-1].output[0] = "y"
            graph = helper.make_graph(
                self.nodes,
                name,
                [helper.make_tensor_value_info(n, F32, s) for n, s in inputs],
                [helper.make_tensor_value_info("y", F32, out_shape)],
                initializer=self.inits,
                doc_string=doc,
            )
            return helper.make_model(
                graph,
                opset_imports=[helper.make_opsetid("", opset)],
                producer_name="tinykd scripts/gen_crosscheck_models.py",
                ir_version=IR_VERSION,
            )

    def mlp_weights(seed):
        rng = np.random.default_rng([seed, 1])
        w1 = (rng.standard_normal((128, 784)) * np.sqrt(2.0 / 784)).astype(np.float32)
        b1 = (0.1 * rng.standard_normal(128)).astype(np.float32)
        w2 = (rng.standard_normal((10, 128)) * np.sqrt(2.0 / 128)).astype(np.float32)
        b2 = (0.1 * rng.standard_normal(10)).astype(np.float32)
        return w1, b1, w2, b2

    def mlp(seed):
        w1, b1, w2, b2 = mlp_weights(seed)
        g = Graph(None)
        h = g.op("Gemm", ["x", g.init("fc1.weight", w1), g.init("fc1.bias", b1)], transB=1)
        h = g.op("Relu", [h])
        h = g.op("Gemm", [h, g.init("fc2.weight", w2), g.init("fc2.bias", b2)], transB=1)
        y = g.op("Softmax", [h], axis=1)
        return g.model("mlp", [("x", [1, 784])], y, [1, 10], 13,
                       "784-128-10 MLP: Gemm, Relu, Gemm, Softmax")

    def mlp_matmul(seed):
        w1, b1, w2, b2 = mlp_weights(seed)
        g = Graph(None)
        h = g.op("MatMul", ["x", g.init("fc1.weight_t", np.ascontiguousarray(w1.T))])
        h = g.op("Add", [h, g.init("fc1.bias", b1)])
        h = g.op("LeakyRelu", [h], alpha=0.1)
        h = g.op("MatMul", [h, g.init("fc2.weight_t", np.ascontiguousarray(w2.T))])
        h = g.op("Add", [h, g.init("fc2.bias", b2)])
        y = g.op("Softmax", [h], axis=1)
        return g.model("mlp_matmul", [("x", [1, 784])], y, [1, 10], 13,
                       "mlp's weights as MatMul+Add, LeakyRelu(0.1) between layers")

    def cnn(seed):
        rng = np.random.default_rng([seed, 2])
        g = Graph(rng)
        h = g.op("Conv", ["x", g.weight("conv1.weight", (8, 1, 3, 3), 9),
                          g.bias("conv1.bias", 8)],
                 kernel_shape=[3, 3], pads=[1, 1, 1, 1])
        scale = rng.uniform(0.5, 1.5, 8).astype(np.float32)
        shift = (0.2 * rng.standard_normal(8)).astype(np.float32)
        mean = (0.3 * rng.standard_normal(8)).astype(np.float32)
        var = rng.uniform(0.5, 2.0, 8).astype(np.float32)
        h = g.op("BatchNormalization",
                 [h, g.init("bn1.scale", scale), g.init("bn1.bias", shift),
                  g.init("bn1.mean", mean), g.init("bn1.var", var)],
                 epsilon=1e-5)
        h = g.op("Relu", [h])
        h = g.op("MaxPool", [h], kernel_shape=[2, 2], strides=[2, 2])
        h = g.op("Conv", [h, g.weight("conv2.weight", (16, 8, 3, 3), 72),
                          g.bias("conv2.bias", 16)],
                 kernel_shape=[3, 3], strides=[1, 1])
        h = g.op("Relu", [h])
        h = g.op("AveragePool", [h], kernel_shape=[2, 2], strides=[2, 2])
        h = g.op("Flatten", [h], axis=1)
        y = g.op("Gemm", [h, g.weight("fc.weight", (10, 16 * 6 * 6), 576),
                          g.bias("fc.bias", 10)], transB=1)
        return g.model("cnn", [("x", [1, 1, 28, 28])], y, [1, 10], 13,
                       "Conv-BN-Relu-MaxPool-Conv-Relu-AveragePool-Flatten-Gemm")

    def dscnn(seed):
        rng = np.random.default_rng([seed, 3])
        g = Graph(rng)
        h = g.op("Conv", ["x", g.weight("conv1.weight", (16, 1, 3, 3), 9),
                          g.bias("conv1.bias", 16)],
                 kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])
        h = g.op("Clip", [h, g.init("clip.min", np.array(0.0, np.float32)),
                          g.init("clip.max", np.array(6.0, np.float32))])
        h = g.op("Conv", [h, g.weight("dw.weight", (16, 1, 3, 3), 9),
                          g.bias("dw.bias", 16)],
                 kernel_shape=[3, 3], pads=[1, 1, 1, 1], group=16)
        h = g.op("HardSwish", [h])
        h = g.op("Conv", [h, g.weight("pw.weight", (32, 16, 1, 1), 16),
                          g.bias("pw.bias", 32)], kernel_shape=[1, 1])
        h = g.op("Relu", [h])
        h = g.op("GlobalAveragePool", [h])
        h = g.op("Reshape", [h, g.init("reshape.shape", np.array([0, -1], np.int64))])
        y = g.op("Gemm", [h, g.weight("fc.weight", (10, 32), 32),
                          g.bias("fc.bias", 10)], transB=1)
        return g.model("dscnn", [("x", [1, 1, 28, 28])], y, [1, 10], 14,
                       "depthwise-separable block: Conv-Clip-DWConv-HardSwish-PWConv-"
                       "Relu-GlobalAveragePool-Reshape-Gemm")

    def ops_mix(seed):
        rng = np.random.default_rng([seed, 4])
        g = Graph(rng)
        h = g.op("Add", ["x", "z"])
        h = g.op("Mul", [h, g.init("mul.c", rng.uniform(-2, 2, 5).astype(np.float32))])
        h = g.op("Sub", [h, g.init("sub.c", np.array(0.25, np.float32))])
        d = rng.uniform(0.5, 2.0, (3, 1, 1)) * np.array([1, -1, 1]).reshape(3, 1, 1)
        h = g.op("Div", [h, g.init("div.c", d.astype(np.float32))])
        h = g.op("Transpose", [h], perm=[0, 2, 3, 1])  # [2,4,5,3]
        # begins (N,H,W,C) then ends: [2, 4+1+2, 5-1+1, 3+2-1] = [2,7,5,4]
        pads = np.array([0, 1, -1, 2, 0, 2, 1, -1], np.int64)
        h = g.op("Pad", [h, g.init("pad.pads", pads),
                         g.init("pad.value", np.array(0.5, np.float32))], mode="constant")
        h = g.op("Sigmoid", [h])
        h = g.op("Tanh", [h])
        h = g.op("HardSigmoid", [h], alpha=2.0, beta=-0.3)  # hits both clamps
        h = g.op("Unsqueeze", [h, g.init("unsqueeze.axes", np.array([1, -1], np.int64))])
        h = g.op("Squeeze", [h, g.init("squeeze.axes", np.array([-1, 1], np.int64))])
        h = g.op("Concat", [h, h], axis=1)
        y = g.op("LogSoftmax", [h], axis=-1)
        return g.model("ops_mix", [("x", [2, 3, 4, 5]), ("z", [1, 3, 1, 5])], y,
                       [2, 14, 5, 4], 13, "elementwise/layout op mix")

    def torch_flatten(seed):
        # What torch.onnx.export writes for `x.view(x.size(0), -1)` with a
        # dynamic batch: the reshape target is computed from Shape at run time.
        rng = np.random.default_rng([seed, 5])
        g = Graph(rng)
        h = g.op("Conv", ["x", g.weight("conv.weight", (4, 8, 3, 3), 72),
                          g.bias("conv.bias", 4)], kernel_shape=[3, 3], pads=[1, 1, 1, 1])
        h = g.op("Relu", [h])
        shape = g.op("Shape", [h])
        n = g.op("Gather", [shape, g.init("gather.index", np.array(0, np.int64))], axis=0)
        n = g.op("Unsqueeze", [n, g.init("unsqueeze.axes", np.array([0], np.int64))])
        target = g.op("Concat", [n, g.init("minus_one", np.array([-1], np.int64))], axis=0)
        h = g.op("Reshape", [h, target])
        y = g.op("Gemm", [h, g.weight("fc.weight", (10, 64), 64), g.bias("fc.bias", 10)],
                 transB=1)
        return g.model("torch_flatten", [("x", ["N", 8, 4, 4])], y, ["N", 10], 13,
                       "Conv-Relu then a Shape/Gather/Unsqueeze/Concat-computed Reshape, "
                       "as PyTorch exports a dynamic-batch flatten")

    def shape_math(seed):
        # Reshape target computed with Slice, Gather, Mul, Sub, Cast and Concat
        # on the input's shape (the arithmetic exporters emit for flattens).
        rng = np.random.default_rng([seed, 6])
        g = Graph(rng)
        i64 = lambda *v: np.array(v, np.int64)  # noqa: E731
        shape = g.op("Shape", ["x"])
        tail = g.op("Slice", [shape, g.init("s.starts", i64(1)), g.init("s.ends", i64(4)),
                              g.init("s.axes", i64(0))])
        c = g.op("Gather", [tail, g.init("g.c", np.array(0, np.int64))], axis=0)
        hw = g.op("Mul", [g.op("Gather", [tail, g.init("g.h", np.array(1, np.int64))], axis=0),
                          g.op("Gather", [tail, g.init("g.w", np.array(-1, np.int64))], axis=0)])
        features = g.op("Mul", [c, hw])
        features = g.op("Sub", [g.op("Add", [features, g.init("one", np.array(1, np.int64))]),
                                g.init("one_b", np.array(1, np.int64))])
        features = g.op("Unsqueeze", [features, g.init("u.axes", i64(0))])
        n = g.op("Unsqueeze", [g.op("Gather", [shape, g.init("g.n", np.array(0, np.int64))],
                                    axis=0), g.init("u.axes_n", i64(0))])
        target = g.op("Cast", [g.op("Concat", [n, features], axis=0)], to=7)
        h = g.op("Reshape", ["x", target])
        y = g.op("Gemm", [h, g.weight("fc.weight", (10, 24), 24), g.bias("fc.bias", 10)],
                 transB=1)
        return g.model("shape_math", [("x", ["N", 2, 3, 4])], y, ["N", 10], 13,
                       "Shape/Slice/Gather/Mul/Add/Sub/Unsqueeze/Concat/Cast-computed Reshape")

    return {"mlp": mlp, "mlp_matmul": mlp_matmul, "cnn": cnn, "dscnn": dscnn,
            "ops_mix": ops_mix, "torch_flatten": torch_flatten, "shape_math": shape_math}


def generate(out_dir: str, seed: int, stamp: str) -> list[str]:
    import numpy as np
    import onnx
    import onnxruntime as ort
    from onnx import numpy_helper

    parent = os.path.dirname(out_dir)
    os.makedirs(parent, exist_ok=True)
    tmp_dir = tempfile.mkdtemp(prefix=os.path.basename(out_dir) + ".tmp-", dir=parent)
    lines = []
    try:
        for idx, (name, build) in enumerate(_builders().items()):
            model = build(seed)
            onnx.checker.check_model(model, full_check=True)
            data = model.SerializeToString()
            with open(os.path.join(tmp_dir, f"{name}.onnx"), "wb") as f:
                f.write(data)
            ds_dir = os.path.join(tmp_dir, name, "test_data_set_0")
            os.makedirs(ds_dir)
            with open(os.path.join(tmp_dir, name, "model.onnx"), "wb") as f:
                f.write(data)

            rng = np.random.default_rng([seed, 1000 + idx])
            feeds = {}
            for k, vi in enumerate(model.graph.input):
                # A symbolic dim (dynamic batch) gets 3 in the reference data.
                shape = [d.dim_value if d.HasField("dim_value") else 3
                         for d in vi.type.tensor_type.shape.dim]
                arr = rng.standard_normal(shape).astype(np.float32)
                feeds[vi.name] = arr
                with open(os.path.join(ds_dir, f"input_{k}.pb"), "wb") as f:
                    f.write(numpy_helper.from_array(arr, vi.name).SerializeToString())

            so = ort.SessionOptions()
            so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
            so.intra_op_num_threads = 1
            so.inter_op_num_threads = 1
            sess = ort.InferenceSession(data, so, providers=["CPUExecutionProvider"])
            outs = sess.run(None, feeds)
            for k, (vi, arr) in enumerate(zip(model.graph.output, outs)):
                assert arr.dtype == np.float32, (name, arr.dtype)
                with open(os.path.join(ds_dir, f"output_{k}.pb"), "wb") as f:
                    f.write(numpy_helper.from_array(arr, vi.name).SerializeToString())
            ops = ",".join(dict.fromkeys(n.op_type for n in model.graph.node))
            lines.append(
                f"  {name:11} opset {model.opset_import[0].version} "
                f"out {list(outs[0].shape)} ops {ops}"
            )
        with open(os.path.join(tmp_dir, STAMP), "w", encoding="utf-8") as f:
            f.write(stamp)
        os.chmod(tmp_dir, 0o755)
        publish(tmp_dir, out_dir, stamp)
    except BaseException:
        shutil.rmtree(tmp_dir, ignore_errors=True)
        raise
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", metavar="OUT_DIR")
    parser.add_argument("--seed", type=int, default=0, help="weight/input seed (default 0)")
    parser.add_argument("--force", action="store_true", help="regenerate even if up to date")
    args = parser.parse_args()
    out_dir = os.path.abspath(args.out_dir)

    stamp = stamp_text(args.seed)
    if not args.force and read_stamp(out_dir) == stamp:
        print(f"gen_crosscheck_models: {out_dir} up to date")
        return
    check_replaceable(out_dir)
    lines = generate(out_dir, args.seed, stamp)
    print(f"gen_crosscheck_models: wrote {len(lines)} models to {out_dir} (seed {args.seed})")
    for line in lines:
        print(line)


if __name__ == "__main__":
    main()
