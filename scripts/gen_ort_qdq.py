#!/usr/bin/env python3
"""Write the ONNX Runtime–quantized reference CNN the runtime's QDQ fusion
is checked against (`runtime/tests/ort_qdq.rs`).

Usage:
    .venv/bin/python scripts/gen_ort_qdq.py [OUT_DIR]

OUT_DIR defaults to runtime/tests/data/ort_qdq. It receives:

- cnn_f32.onnx: a small float CNN built with onnx.helper (Conv 3×3 → Relu →
  MaxPool → Conv 3×3 → Relu → GlobalAveragePool → Flatten → Gemm), input
  [N, 1, 28, 28] with a symbolic batch N, deterministic random weights;
- cnn_qdq.onnx: the same model quantized by
  `onnxruntime.quantization.quantize_static` in the QDQ format (per-channel
  int8 weights, int8 activations), calibrated (MinMax) on 64 seeded random
  images;
- inputs.npy: 100 test images, uint8 [100, 1, 28, 28]; the model's input is
  `pixel / 255` in float32 (stored as uint8 to keep the file small);
- ort_outputs.npy: ONNX Runtime's outputs on cnn_qdq.onnx for those
  inputs, float32 [100, 10] (default session options, so ORT fuses the QDQ
  pattern into its own integer kernels, which requantize in float).

With the default OUT_DIR it also writes cnn_qdq.onnx, less its node names
and value_info (which change nothing it computes), as
runtime/tests/data/fuzz-seeds/ort_qdq.onnx: a seed of the runtime's fuzz
test (a real quantizer's QDQ graph for the load-time fusion), within the
fuzz test's 4 KB limit on seeds.

Everything is seeded, so a rerun with the same onnx / onnxruntime versions
(scripts/requirements.txt) writes the same files.
"""

from __future__ import annotations

import os
import sys
import tempfile

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_static,
)

SEED = 20250107
CALIBRATION_IMAGES = 64
TEST_IMAGES = 100
C1, C2, CLASSES = 4, 8, 10


def float_cnn() -> onnx.ModelProto:
    rng = np.random.default_rng(SEED)

    def weights(name: str, *shape: int, fan_in: int) -> TensorProto:
        data = rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)
        return numpy_helper.from_array(data.astype(np.float32), name)

    def bias(name: str, n: int) -> TensorProto:
        return numpy_helper.from_array((rng.standard_normal(n) * 0.1).astype(np.float32), name)

    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("MaxPool", ["r1"], ["p1"], name="pool1", kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Conv", ["p1", "w2", "b2"], ["c2"], name="conv2", kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
        helper.make_node("GlobalAveragePool", ["r2"], ["g"], name="gap"),
        helper.make_node("Flatten", ["g"], ["f"], name="flatten", axis=1),
        helper.make_node("Gemm", ["f", "w3", "b3"], ["y"], name="fc", transB=1),
    ]
    inits = [
        weights("w1", C1, 1, 3, 3, fan_in=9),
        bias("b1", C1),
        weights("w2", C2, C1, 3, 3, fan_in=9 * C1),
        bias("b2", C2),
        weights("w3", CLASSES, C2, fan_in=C2),
        bias("b3", CLASSES),
    ]
    graph = helper.make_graph(
        nodes,
        "ort_qdq_cnn",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, 28, 28])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", CLASSES])],
        inits,
    )
    m = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", 13)],
        producer_name="tinykd-gen-ort-qdq",
        producer_version="1",
    )
    m.ir_version = 8
    onnx.checker.check_model(m, full_check=True)
    return m


def images(seed: int, n: int) -> np.ndarray:
    """uint8 [n, 1, 28, 28]: smooth blobs plus noise, so the activations
    cover their ranges unevenly, as real images do."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:28, 0:28].astype(np.float32)
    out = np.empty((n, 1, 28, 28), dtype=np.uint8)
    for i in range(n):
        img = np.zeros((28, 28), dtype=np.float32)
        for _ in range(rng.integers(1, 4)):
            cy, cx = rng.uniform(4, 24, 2)
            r = rng.uniform(2, 7)
            img += np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r * r))
        img = img / max(img.max(), 1e-6) * 220 + rng.uniform(0, 35, (28, 28))
        out[i, 0] = np.clip(np.round(img), 0, 255).astype(np.uint8)
    return out


def to_input(u8: np.ndarray) -> np.ndarray:
    """The model's float input: `pixel / 255` in float32 (one correctly
    rounded division per element, which the Rust test repeats exactly)."""
    return u8.astype(np.float32) / np.float32(255.0)


class Reader(CalibrationDataReader):
    def __init__(self, data: np.ndarray):
        self.items = iter([{"x": to_input(data[i : i + 1])} for i in range(len(data))])

    def get_next(self):
        return next(self.items, None)


def run(path: str, u8: np.ndarray, optimize: bool) -> np.ndarray:
    opts = ort.SessionOptions()
    if not optimize:
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
    return np.concatenate([sess.run(None, {"x": to_input(u8[i : i + 1])})[0] for i in range(len(u8))])


def main() -> int:
    if len(sys.argv) > 2:
        print(__doc__, file=sys.stderr)
        return 2
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    default_dir = os.path.join(root, "runtime/tests/data/ort_qdq")
    out_dir = sys.argv[1] if len(sys.argv) == 2 else default_dir
    os.makedirs(out_dir, exist_ok=True)

    f32 = float_cnn()
    f32_path = os.path.join(out_dir, "cnn_f32.onnx")
    onnx.save(f32, f32_path)

    qdq_path = os.path.join(out_dir, "cnn_qdq.onnx")
    with tempfile.TemporaryDirectory() as tmp:
        # quantize_static writes intermediate files; keep them out of OUT_DIR.
        tmp_out = os.path.join(tmp, "cnn_qdq.onnx")
        quantize_static(
            f32_path,
            tmp_out,
            Reader(images(SEED + 1, CALIBRATION_IMAGES)),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax,
        )
        qdq = onnx.load(tmp_out)
    qdq.producer_name = "tinykd-gen-ort-qdq / onnxruntime.quantization"
    qdq.producer_version = ort.__version__
    onnx.checker.check_model(qdq, full_check=True)
    onnx.save(qdq, qdq_path)
    if os.path.abspath(out_dir) == default_dir:
        seed = onnx.ModelProto()
        seed.CopyFrom(qdq)
        for n in seed.graph.node:
            n.name = ""
        del seed.graph.value_info[:]
        seed_path = os.path.join(root, "runtime/tests/data/fuzz-seeds/ort_qdq.onnx")
        onnx.save(seed, seed_path)
        print(f"{seed_path}: fuzz seed, {os.path.getsize(seed_path)} bytes")

    test = images(SEED + 2, TEST_IMAGES)
    np.save(os.path.join(out_dir, "inputs.npy"), test)
    ort_out = run(qdq_path, test, optimize=True).astype(np.float32)
    np.save(os.path.join(out_dir, "ort_outputs.npy"), ort_out)

    # Informational: how far ORT's fused integer kernels are from its own
    # unfused (DQ → float op → Q) execution, and from the float model, in
    # LSBs of the final output scale.
    last_dq = [n for n in qdq.graph.node if n.op_type == "DequantizeLinear" and n.output[0] == "y"]
    scale = None
    if last_dq:
        inits = {t.name: numpy_helper.to_array(t) for t in qdq.graph.initializer}
        scale = float(inits[last_dq[0].input[1]])
    plain = run(qdq_path, test, optimize=False)
    ref = run(f32_path, test, optimize=True)
    ops: dict[str, int] = {}
    for n in qdq.graph.node:
        ops[n.op_type] = ops.get(n.op_type, 0) + 1
    print(f"{qdq_path}: {os.path.getsize(qdq_path)} bytes, nodes {ops}")
    if scale is not None:
        lsb = np.abs(ort_out - plain) / scale
        print(
            f"ORT fused vs ORT unfused: {np.mean(lsb < 0.5) * 100:.2f} % identical, max {lsb.max():.2f} LSB"
        )
        print(f"ORT fused vs float model: max {np.abs(ort_out - ref).max() / scale:.2f} LSB (scale {scale})")
        print(f"argmax agreement with float: {np.mean(ort_out.argmax(1) == ref.argmax(1)) * 100:.0f} %")
    for name in ["cnn_f32.onnx", "inputs.npy", "ort_outputs.npy"]:
        p = os.path.join(out_dir, name)
        print(f"{p}: {os.path.getsize(p)} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
