"""The first 64 Fashion-MNIST test images as one normalized f32 batch,
models/demo/test64.npy ([64, 1, 28, 28], (pixel/255 − 0.286)/0.353 in f32,
the normalization the students' metadata records), and their labels in
models/demo/test64.json: the input of the cross-target equality test.

    .venv/bin/python scripts/gen_test64.py [/usr/share/datasets/fashion-mnist]
"""

import gzip
import json
import sys

import numpy as np

data = sys.argv[1] if len(sys.argv) > 1 else "/usr/share/datasets/fashion-mnist"
with gzip.open(f"{data}/t10k-images-idx3-ubyte.gz") as f:
    images = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 28, 28)[:64]
with gzip.open(f"{data}/t10k-labels-idx1-ubyte.gz") as f:
    labels = np.frombuffer(f.read(), np.uint8, offset=8)[:64]
mean, std = np.float32(0.286), np.float32(0.353)
x = ((images.astype(np.float32) / np.float32(255.0)) - mean) / std
np.save("models/demo/test64.npy", x.reshape(64, 1, 28, 28).astype("<f4"))
with open("models/demo/test64.json", "w") as f:
    json.dump({"images": "Fashion-MNIST t10k, first 64", "normalization": {"mean": 0.286, "std": 0.353},
               "labels": [int(v) for v in labels]}, f)
    f.write("\n")
