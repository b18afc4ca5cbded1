"""Training throughput of TensorFlow-CPU / Keras on the shapes `tinykd
bench-train` measures: batch 128, forward + cross-entropy + backward + Adam
step inside one tf.function (what model.fit does), random data, 2 intra-op
threads. Prints one JSON object: {model: {"images_per_s": ..., "step_ms": ...}}.

Usage: .venv-peers/bin/python scripts/bench_train_tf.py [--steps N] [--models mlp,cnn,ds]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def build(name: str):
    from tensorflow import keras
    from tensorflow.keras import layers

    if name == "mlp":
        return keras.Sequential([
            keras.Input((784,)),
            layers.Dense(800, activation="relu"),
            layers.Dense(800, activation="relu"),
            layers.Dense(10),
        ]), (784,)
    if name == "cnn":
        return keras.Sequential([
            keras.Input((28, 28, 1)),
            layers.Conv2D(32, 3, padding="same", activation="relu"),
            layers.MaxPooling2D(2),
            layers.Conv2D(64, 3, padding="same", activation="relu"),
            layers.MaxPooling2D(2),
            layers.Flatten(),
            layers.Dense(128, activation="relu"),
            layers.Dense(10),
        ]), (28, 28, 1)
    if name == "ds":
        return keras.Sequential([
            keras.Input((28, 28, 1)),
            layers.Conv2D(16, 3, strides=2, padding="same", activation="relu"),
            layers.DepthwiseConv2D(3, padding="same", activation="relu"),
            layers.Conv2D(32, 1, activation="relu"),
            layers.GlobalAveragePooling2D(),
            layers.Dense(10),
        ]), (28, 28, 1)
    raise SystemExit(f"unknown model {name}")


def measure(name: str, steps: int, batch: int) -> dict:
    import numpy as np
    import tensorflow as tf

    model, shape = build(name)
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
    ap.add_argument("--models", default="mlp,cnn,ds")
    args = ap.parse_args()
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(2)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    out = {m: measure(m, args.steps, args.batch) for m in args.models.split(",")}
    out["version"] = tf.__version__
    json.dump(out, sys.stdout)
    print()


if __name__ == "__main__":
    main()
