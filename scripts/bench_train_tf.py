"""Training throughput of TensorFlow-CPU / Keras on the shapes `tinykd
bench-train` measures: batch 128, forward + cross-entropy + backward + Adam
step inside one tf.function (what model.fit does), random data, 2 intra-op
threads. Prints one JSON object: {model: {"images_per_s": ..., "step_ms": ...}}.

Usage: .venv-peers/bin/python scripts/bench_train_tf.py --specs SPECS.json [--steps N]
(`tinykd bench-train` passes the specs of the models it measured on stdin.)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def build(spec: dict):
    """A Keras model from a tinykd ModelSpec (as JSON): the same layers in
    NHWC, each conv/dense followed by a ReLU taking it as its activation (as a
    Keras user writes it; oneDNN fuses it either way)."""
    from tensorflow import keras
    from tensorflow.keras import layers

    shape = tuple(spec["input"])
    if len(shape) == 3:
        shape = (shape[1], shape[2], shape[0])
    out = [keras.Input(shape)]
    specs = spec["layers"]
    for i, l in enumerate(specs):
        t = l["type"]
        act = "relu" if i + 1 < len(specs) and specs[i + 1]["type"] == "relu" else None
        if t in ("conv", "depthwise"):
            k, s, p = l["kernel"], l.get("stride", 1), l.get("padding", 0)
            if p:
                out.append(layers.ZeroPadding2D(p))
            if t == "conv":
                out.append(layers.Conv2D(l["filters"], k, strides=s, activation=act))
            else:
                out.append(layers.DepthwiseConv2D(k, strides=s, activation=act))
        elif t == "dense":
            out.append(layers.Dense(l["units"], activation=act))
        elif t == "max_pool":
            out.append(layers.MaxPooling2D(l["size"]))
        elif t == "global_avg_pool":
            out.append(layers.GlobalAveragePooling2D())
        elif t == "flatten":
            out.append(layers.Flatten())
        elif t == "relu":
            if i == 0 or specs[i - 1]["type"] not in ("conv", "depthwise", "dense"):
                out.append(layers.ReLU())
        else:
            raise SystemExit(f"unknown layer type {t}")
    return keras.Sequential(out), shape


def measure(spec: dict, steps: int, batch: int) -> dict:
    import numpy as np
    import tensorflow as tf

    model, shape = build(spec)
    opt = tf.keras.optimizers.Adam(1e-3)
    loss_fn = tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    rng = np.random.default_rng(0)
    x = tf.constant(rng.standard_normal((batch, *shape)).astype("float32"))
    y = tf.constant(rng.integers(0, 10, batch).astype("int32"))

    @tf.function
    def step():
        with tf.GradientTape() as tape:
            loss = loss_fn(y, model(x, training=True))
        grads = tape.gradient(loss, model.trainable_variables)
        opt.apply_gradients(zip(grads, model.trainable_variables))
        return loss

    for _ in range(3):
        step().numpy()
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        step().numpy()
        times.append(time.perf_counter() - t)
    med = statistics.median(times)
    return {"images_per_s": batch / med, "step_ms": med * 1e3}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--specs", required=True,
                    help="JSON file ('-' = stdin): {key: tinykd ModelSpec}")
    args = ap.parse_args()
    specs = json.load(sys.stdin if args.specs == "-" else open(args.specs))
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(2)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    out = {k: measure(v, args.steps, args.batch) for k, v in specs.items()}
    out["version"] = tf.__version__
    json.dump(out, sys.stdout)
    print()


if __name__ == "__main__":
    main()
