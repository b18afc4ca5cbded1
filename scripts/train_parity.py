"""Accuracy parity of tinykd's fast training ops with candle's own ops:
trains each benchmark model twice on full Fashion-MNIST with the same seed
(`tinykd train --kernels fast|candle`), and prints a Markdown table of test
accuracy and seconds per epoch. Usage (what `make train-parity` runs):

    python3 scripts/train_parity.py [--tinykd target/release/tinykd] [--out build/parity]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

RUNS = [("mlp", 5), ("ds", 3), ("cnn", 3)]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tinykd", default="target/release/tinykd")
    ap.add_argument("--out", default="build/parity")
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    rows = []
    for arch, epochs in RUNS:
        acc = {}
        for kernels in ("fast", "candle"):
            path = os.path.join(args.out, f"{arch}-{kernels}")
            if not os.path.exists(path + ".json"):
                cmd = [args.tinykd, "train", "--arch", arch, "--epochs", str(epochs),
                       "--kernels", kernels, "--seed", str(args.seed),
                       "--out", path + ".safetensors", "--json"]
                print("+", " ".join(cmd), file=sys.stderr)
                out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
                with open(path + ".json", "w") as f:
                    f.write(out)
            with open(path + ".json") as f:
                run = json.load(f)
            secs = sum(h["seconds"] for h in run["history"]) / len(run["history"])
            acc[kernels] = (100 * run["test"]["accuracy"], secs, run["model"])
        (fa, fs, name), (ca, cs, _) = acc["fast"], acc["candle"]
        rows.append(f"| {name} | {epochs} | {ca:.2f} | {fa:.2f} | {fa - ca:+.2f} | {cs:.1f} | {fs:.1f} | {cs / fs:.1f}x |")
    print("| model | epochs | test acc. candle ops (%) | test acc. fast ops (%) | difference (points) "
          "| s/epoch candle | s/epoch fast | speed-up |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
