#!/usr/bin/env python3
"""Train the demo Fashion-MNIST MLP in pure numpy and export it to ONNX.

Usage:
    .venv/bin/python scripts/make_demo_model.py OUT_DIR [--epochs N] [--data DIR]

Typically: .venv/bin/python scripts/make_demo_model.py models/demo

Writes
    OUT_DIR/fashion_mlp.onnx    784-128-10 MLP (Gemm, Relu, Gemm), opset 13,
                                input  `image`  float32 [N,784] (N symbolic),
                                output `logits` float32 [N,10],
                                metadata_props: labels, normalization, source
    OUT_DIR/sample_0.npy .. sample_3.npy
                                the first 4 test images, normalised, float32 [1,784]
    OUT_DIR/samples.json        their true labels (and the model's predictions),
                                and the test accuracy computed in numpy

Data: the gzip'd IDX files of Debian's dataset-fashion-mnist package in
/usr/share/datasets/fashion-mnist.  Pixels are scaled to [0,1] and then
normalised with mean 0.2860, std 0.3530.  Training: seed 0, He-normal init,
Adam (lr 1e-3 with cosine decay), mini-batches of 128, softmax cross-entropy,
float32 throughout.  The exported model is checked with onnx.checker and run
with onnxruntime on the full test set; its argmax must equal numpy's.

Deterministic: BLAS is pinned to one thread, so with the same numpy/OpenBLAS
on the same kind of CPU, running twice gives byte-identical files (other CPU
types may pick other SIMD kernels and differ in the last bits).  Not
incremental: it always retrains (about 10 s).
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import tempfile
import time

# Single-threaded BLAS: OpenBLAS's results depend on its thread count, so this
# keeps the output independent of how many cores the machine has (the run
# takes well under a minute either way).  Must be set before numpy loads.
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"

import numpy as np  # noqa: E402

DATA_DIR = "/usr/share/datasets/fashion-mnist"
MEAN, STD = 0.2860, 0.3530
LABELS = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]
SEED = 0
HIDDEN = 128
BATCH = 128
LR = 1e-3


def read_idx(path: str) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        data = f.read()
    magic = int.from_bytes(data[0:4], "big")
    if magic >> 8 != 0x08:  # unsigned byte data
        raise ValueError(f"{path}: unexpected IDX magic {magic:#x}")
    ndim = magic & 0xFF
    dims = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    arr = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    return arr.reshape(dims)


def load_split(data_dir: str, split: str) -> tuple[np.ndarray, np.ndarray]:
    images = read_idx(os.path.join(data_dir, f"{split}-images-idx3-ubyte.gz"))
    labels = read_idx(os.path.join(data_dir, f"{split}-labels-idx1-ubyte.gz"))
    x = images.reshape(len(images), -1).astype(np.float32) / np.float32(255.0)
    x = (x - np.float32(MEAN)) / np.float32(STD)
    return x.astype(np.float32), labels.astype(np.int64)


def forward(params, x):
    w1, b1, w2, b2 = params
    h = x @ w1.T + b1
    np.maximum(h, 0, out=h)
    return h @ w2.T + b2


def train(x, y, epochs: int, rng: np.random.Generator):
    f32 = np.float32
    w1 = (rng.standard_normal((HIDDEN, 784)) * np.sqrt(2.0 / 784)).astype(f32)
    b1 = np.zeros(HIDDEN, f32)
    w2 = (rng.standard_normal((10, HIDDEN)) * np.sqrt(2.0 / HIDDEN)).astype(f32)
    b2 = np.zeros(10, f32)
    params = [w1, b1, w2, b2]
    m = [np.zeros_like(p) for p in params]
    v = [np.zeros_like(p) for p in params]
    beta1, beta2, eps = 0.9, 0.999, 1e-8
    n = len(x)
    steps_per_epoch = (n + BATCH - 1) // BATCH
    total = epochs * steps_per_epoch
    t = 0
    for epoch in range(epochs):
        order = rng.permutation(n)
        loss_sum = 0.0
        for s in range(steps_per_epoch):
            idx = order[s * BATCH:(s + 1) * BATCH]
            xb, yb = x[idx], y[idx]
            bs = len(idx)
            # forward
            h_pre = xb @ w1.T + b1
            h = np.maximum(h_pre, 0)
            logits = h @ w2.T + b2
            logits -= logits.max(axis=1, keepdims=True)
            e = np.exp(logits)
            p = e / e.sum(axis=1, keepdims=True)
            loss_sum += float(-np.log(p[np.arange(bs), yb] + 1e-12).sum())
            # backward (mean cross-entropy)
            g = p
            g[np.arange(bs), yb] -= 1
            g /= f32(bs)
            gw2 = g.T @ h
            gb2 = g.sum(axis=0)
            gh = g @ w2
            gh[h_pre <= 0] = 0
            gw1 = gh.T @ xb
            gb1 = gh.sum(axis=0)
            # Adam with cosine-decayed step size
            t += 1
            lr = LR * 0.5 * (1 + np.cos(np.pi * (t - 1) / total))
            step = lr * np.sqrt(1 - beta2**t) / (1 - beta1**t)
            for prm, grad, mi, vi in zip(params, (gw1, gb1, gw2, gb2), m, v):
                mi *= f32(beta1)
                mi += f32(1 - beta1) * grad
                vi *= f32(beta2)
                vi += f32(1 - beta2) * grad * grad
                prm -= f32(step) * mi / (np.sqrt(vi) + f32(eps))
        print(f"  epoch {epoch + 1}/{epochs}: train loss {loss_sum / n:.4f}", flush=True)
    return params


def export_onnx(params):
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w1, b1, w2, b2 = params
    nodes = [
        helper.make_node("Gemm", ["image", "fc1.weight", "fc1.bias"], ["fc1"],
                         name="fc1", transB=1),
        helper.make_node("Relu", ["fc1"], ["relu1"], name="relu1"),
        helper.make_node("Gemm", ["relu1", "fc2.weight", "fc2.bias"], ["logits"],
                         name="fc2", transB=1),
    ]
    inits = [
        numpy_helper.from_array(w1, "fc1.weight"),
        numpy_helper.from_array(b1, "fc1.bias"),
        numpy_helper.from_array(w2, "fc2.weight"),
        numpy_helper.from_array(b2, "fc2.bias"),
    ]
    graph = helper.make_graph(
        nodes,
        "fashion_mlp",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 784])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])],
        initializer=inits,
        doc_string="Fashion-MNIST 784-128-10 MLP; input: normalised 28x28 image, "
                   "row-major, flattened",
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", 13)],
        producer_name="tinykd scripts/make_demo_model.py",
        ir_version=8,
    )
    helper.set_model_props(model, {
        "labels": ",".join(LABELS),
        "normalization": f"mean={MEAN:.4f},std={STD:.4f}",
        "source": f"scripts/make_demo_model.py (seed {SEED})",
    })
    onnx.checker.check_model(model, full_check=True)
    return model


def write_atomic(path: str, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(prefix=os.path.basename(path) + ".tmp-",
                               dir=os.path.dirname(path))
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def npy_bytes(arr: np.ndarray) -> bytes:
    import io

    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=False)
    return buf.getvalue()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", metavar="OUT_DIR")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--data", default=DATA_DIR, help=f"IDX directory (default {DATA_DIR})")
    args = parser.parse_args()
    start = time.perf_counter()

    x_train, y_train = load_split(args.data, "train")
    x_test, y_test = load_split(args.data, "t10k")
    print(f"make_demo_model: {len(x_train)} train / {len(x_test)} test images, "
          f"{args.epochs} epochs", flush=True)

    rng = np.random.default_rng(SEED)
    params = train(x_train, y_train, args.epochs, rng)

    logits = forward(params, x_test)
    pred_np = logits.argmax(axis=1)
    accuracy = float((pred_np == y_test).mean())

    model = export_onnx(params)
    model_bytes = model.SerializeToString()

    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    sess = ort.InferenceSession(model_bytes, so, providers=["CPUExecutionProvider"])
    (ort_logits,) = sess.run(["logits"], {"image": x_test})
    pred_ort = ort_logits.argmax(axis=1)
    mismatches = int((pred_ort != pred_np).sum())
    ort_accuracy = float((pred_ort == y_test).mean())
    max_diff = float(np.abs(ort_logits - logits).max())
    if mismatches:
        raise SystemExit(
            f"error: onnxruntime argmax differs from numpy on {mismatches} test images"
        )

    os.makedirs(args.out_dir, exist_ok=True)
    write_atomic(os.path.join(args.out_dir, "fashion_mlp.onnx"), model_bytes)
    samples = []
    for i in range(4):
        name = f"sample_{i}.npy"
        write_atomic(os.path.join(args.out_dir, name),
                     npy_bytes(np.ascontiguousarray(x_test[i:i + 1], dtype=np.float32)))
        samples.append({
            "file": name,
            "label": int(y_test[i]),
            "class": LABELS[int(y_test[i])],
            "predicted": int(pred_np[i]),
        })
    info = {
        "model": "fashion_mlp.onnx",
        "labels": LABELS,
        "normalization": {"mean": MEAN, "std": STD},
        "samples": samples,
        "test_accuracy": round(accuracy, 6),
        "test_images": len(y_test),
        "epochs": args.epochs,
        "seed": SEED,
    }
    write_atomic(os.path.join(args.out_dir, "samples.json"),
                 (json.dumps(info, indent=2) + "\n").encode())

    elapsed = time.perf_counter() - start
    print(f"make_demo_model: test accuracy numpy {accuracy:.4f}, onnxruntime "
          f"{ort_accuracy:.4f} (argmax identical on all {len(y_test)} images, "
          f"max |logit diff| {max_diff:.2e}); wrote {args.out_dir} in {elapsed:.1f}s")


if __name__ == "__main__":
    main()
