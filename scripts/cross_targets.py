"""Cross-target equality (part of `make test`): the shipped int8 student and
its f32 version run on 64 Fashion-MNIST test images on every target —
host scalar, host SIMD (AVX2), aarch64 NEON, armv7 NEON, riscv64 RVV (VLEN
128 and 256), Cortex-M4 (DSP) and riscv32 — under QEMU where the target is
not this machine. The int8 model's outputs must be bit-identical to the host
scalar run everywhere; the f32 model's within 1e-5 relative.

The Linux targets write their outputs as .npy and are compared here; the
MCU firmwares embed the model and the images, compare against the host
scalar run made by their build script with the same runtime, and exit
non-zero on any difference.

    .venv/bin/python scripts/cross_targets.py [--only NAME[,NAME...]] [--out build/cross]
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
INT8 = "models/students/ds-cnn-kd.int8.onnx"
F32 = "models/students/ds-cnn-kd.onnx"
IMAGES = "models/demo/test64.npy"

# (name, crate folder, triple, cargo features, runner prefix)
LINUX = [
    ("host-scalar", "targets/rpi", "x86_64-unknown-linux-gnu", ["scalar"], []),
    ("host-simd", "targets/rpi", "x86_64-unknown-linux-gnu", [], []),
    ("rpi-arm64", "targets/rpi", "aarch64-unknown-linux-gnu", [], ["qemu-aarch64", "-L", "/usr/aarch64-linux-gnu"]),
    ("rpi-armv7", "targets/rpi", "armv7-unknown-linux-gnueabihf", [], ["qemu-arm", "-L", "/usr/arm-linux-gnueabihf"]),
    ("riscv64-vlen128", "targets/riscv64", "riscv64gc-unknown-linux-gnu", [],
     ["qemu-riscv64", "-cpu", "rv64,v=true,vlen=128,vext_spec=v1.0", "-L", "/usr/riscv64-linux-gnu"]),
    ("riscv64-vlen256", "targets/riscv64", "riscv64gc-unknown-linux-gnu", [],
     ["qemu-riscv64", "-cpu", "rv64,v=true,vlen=256,vext_spec=v1.0", "-L", "/usr/riscv64-linux-gnu"]),
]
FIRMWARE = [("cortex-m4", "targets/cortex-m4"), ("riscv32", "targets/riscv32")]


def sh(cmd: list[str], cwd: str = ROOT, env: dict | None = None, timeout: int = 1200) -> str:
    res = subprocess.run(cmd, cwd=cwd, env={**os.environ, **(env or {})}, capture_output=True,
                         text=True, timeout=timeout)
    if res.returncode != 0:
        raise SystemExit(f"cross-targets: `{' '.join(cmd)}` failed in {cwd}:\n{res.stdout}\n{res.stderr}")
    return res.stdout + res.stderr


def build_linux(folder: str, triple: str, features: list[str]) -> str:
    """Builds the app; returns the executable cargo reports."""
    target_dir = os.path.join(ROOT, folder, "target", "features-" + ("-".join(features) or "default"))
    cmd = ["cargo", "build", "--release", "--target", triple, "--message-format", "json-render-diagnostics",
           "--target-dir", target_dir]
    if features:
        cmd += ["--features", ",".join(features)]
    out = sh(cmd, cwd=os.path.join(ROOT, folder))
    exes = re.findall(r'"executable":"([^"]+)"', out)
    if not exes:
        raise SystemExit(f"cross-targets: no executable from {folder} for {triple}")
    return exes[-1]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--only", default="", help="comma-separated target names")
    ap.add_argument("--out", default="build/cross")
    a = ap.parse_args()
    only = set(filter(None, a.only.split(",")))
    os.makedirs(os.path.join(ROOT, a.out), exist_ok=True)
    failures = []
    rows = []
    reference: dict[str, np.ndarray] = {}
    for name, folder, triple, features, runner in LINUX:
        if only and name not in only and name != "host-scalar":
            continue
        t0 = time.time()
        exe = build_linux(folder, triple, features)
        for model in (INT8, F32):
            out = os.path.join(ROOT, a.out, f"{name}-{os.path.basename(model)}.npy")
            text = sh(runner + [exe, model, IMAGES, "--out", out])
            simd = re.search(r"^simd: (\S+)", text, re.M)
            y = np.load(out)
            key = os.path.basename(model)
            if name == "host-scalar":
                reference[key] = y
                rows.append((name, key, simd and simd.group(1), "reference"))
                continue
            ref = reference[key]
            if y.shape != ref.shape:
                failures.append(f"{name} {key}: shape {y.shape} vs {ref.shape}")
                continue
            if model == INT8:
                same = np.array_equal(y.view(np.uint32), ref.view(np.uint32))
                verdict = "bit-identical" if same else f"{int((y != ref).sum())} values differ"
                if not same:
                    failures.append(f"{name} {key}: {verdict}")
            else:
                rel = float(np.max(np.abs(y - ref) / np.maximum(np.abs(ref), 1.0)))
                verdict = f"max relative difference {rel:.2e}"
                if rel > 1e-5:
                    failures.append(f"{name} {key}: {verdict}")
            rows.append((name, key, simd and simd.group(1), verdict))
        print(f"cross-targets: {name} done in {time.time() - t0:.0f} s", file=sys.stderr, flush=True)
    for name, folder in FIRMWARE:
        if only and name not in only:
            continue
        for model in (INT8, F32):
            t0 = time.time()
            env = {"TINYKD_MODEL": os.path.join(ROOT, model), "TINYKD_INPUT": os.path.join(ROOT, IMAGES)}
            res = subprocess.run(["timeout", "1200", "cargo", "run", "--release"], cwd=os.path.join(ROOT, folder),
                                 env={**os.environ, **env}, capture_output=True, text=True)
            text = res.stdout + res.stderr
            line = re.search(r"^matches the host run on .*$", text, re.M)
            key = os.path.basename(model)
            if res.returncode != 0 or not line:
                failures.append(f"{name} {key}: firmware failed:\n{text[-2000:]}")
                continue
            rows.append((name, key, "firmware", line.group(0)))
            print(f"cross-targets: {name} {key} done in {time.time() - t0:.0f} s", file=sys.stderr, flush=True)
    for r in rows:
        print(f"{r[0]:<16} {r[1]:<22} {str(r[2]):<12} {r[3]}")
    if failures:
        print("\n".join(["cross-targets FAILED:"] + failures), file=sys.stderr)
        sys.exit(1)
    print(f"cross-targets: {len(rows)} runs agree with the host scalar reference")


if __name__ == "__main__":
    main()
