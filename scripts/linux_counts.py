"""Instructions per inference (and per MAC) of the runtime on the Linux cross
targets, counted under QEMU user mode: each target's SIMD kernels (aarch64
NEON, armv7 NEON, riscv64 RVV at VLEN 128 and 256) against its scalar
reference kernels (the runtime's `scalar` feature, same triple), as ratios
of instruction counts — emulated wall time means nothing. Writes
bench/linux.md and bench/linux.json. Part of `make bench`.

    .venv/bin/python scripts/linux_counts.py [--models A.onnx,B.onnx] \
        [--targets rpi-arm64,rpi-armv7,riscv64-vlen128,riscv64-vlen256] [--out-dir bench]

How it counts. QEMU 7.2 (Debian) ships no TCG plugin .so but its user-mode
binaries load plugins, so this script compiles a 40-line one (the C source
below, with the host `cc` cargo already needs for linking) into
build/linux-counts/: it adds 1 to a counter per executed guest instruction
(an inline add, no callback) and writes the total at exit. That runs at
hundreds of millions of guest instructions per second; the fallback, `--method trace`
(`-singlestep -d nochain,exec` logging one `Trace` line per instruction into
a named pipe, counted here), runs at ~0.4M per second and is only used when
the plugin cannot be built or loaded. The two agreed to 0.003% per inference
(the script checks that on one small run unless `--no-trace-check`).

Per inference: the app loads the model once, then runs `--repeat N`
inferences, so (count(--repeat 1+K) - count(--repeat 1)) / K removes the
process start-up, the dynamic loader and the model loading. K is chosen so
that the K inferences span >= 2e7 instructions (so that the up to ~3,000
instructions by which the app's start-up and exit vary from run to run,
probably formatting the measured time, weigh < 0.02%). Each count is taken
`--trials` times (2) and the minimum is used; the spread between the
trials' per-inference figures is in the JSON (< 0.03% so far) and a warning
is printed above 0.5%.
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import cross_targets  # noqa: E402  (build_linux and the QEMU runner prefixes)

ROOT = cross_targets.ROOT
INPUT = "models/demo/sample_0.npy"
DEFAULT_MODELS = [
    "models/students/ds-cnn-kd.int8.onnx",
    "models/students/ds-cnn-kd.onnx",
    "models/demo/fashion_mlp.onnx",
    "build/bench/mlp-40.int8.onnx",  # made by `make bench`; skipped with a note when absent
]
# Target name (as in cross_targets.LINUX) -> label in the table.
TARGETS = {
    "rpi-arm64": "aarch64",
    "rpi-armv7": "armv7",
    "riscv64-vlen128": "riscv64, VLEN 128",
    "riscv64-vlen256": "riscv64, VLEN 256",
}
ALIASES = {"aarch64": "rpi-arm64", "arm64": "rpi-arm64", "armv7": "rpi-armv7", "riscv64": "riscv64-vlen128"}
# The K inferences counted should span at least this many instructions.
SPAN = 20_000_000
MAX_K = 200
# The same for the (slow) singlestep trace.
TRACE_SPAN = 1_000_000
# A per-inference count whose trials differ by more than this is reported as unstable.
MAX_SPREAD = 0.005
PLUGIN_DIR = os.path.join(ROOT, "build", "linux-counts")

# The QEMU 7.2 TCG plugin API (plugin API version 1), declared here so that no
# QEMU headers are needed; the functions are exported by the qemu-* binaries.
# Single-threaded guests only (the counter is shared, the adds are not atomic).
PLUGIN_C = r"""
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#define EXPORT __attribute__((visibility("default")))
typedef uint64_t qemu_plugin_id_t;
typedef struct {
    const char *target_name;
    struct { int min, cur; } version;
    bool system_emulation;
    union { struct { int smp_vcpus, max_vcpus; } system; };
} qemu_info_t;
struct qemu_plugin_tb;
struct qemu_plugin_insn;
enum qemu_plugin_op { QEMU_PLUGIN_INLINE_ADD_U64 };
typedef void (*tb_trans_cb_t)(qemu_plugin_id_t, struct qemu_plugin_tb *);
typedef void (*udata_cb_t)(qemu_plugin_id_t, void *);
void qemu_plugin_register_vcpu_tb_trans_cb(qemu_plugin_id_t, tb_trans_cb_t);
size_t qemu_plugin_tb_n_insns(const struct qemu_plugin_tb *);
struct qemu_plugin_insn *qemu_plugin_tb_get_insn(const struct qemu_plugin_tb *, size_t);
void qemu_plugin_register_vcpu_insn_exec_inline(struct qemu_plugin_insn *, enum qemu_plugin_op, void *, uint64_t);
void qemu_plugin_register_atexit_cb(qemu_plugin_id_t, udata_cb_t, void *);

EXPORT int qemu_plugin_version = 1;
static uint64_t insns;
static char out[4096];

/* At translation: an inline +1 before each instruction of the block (exact
   even when a block is left part-way, unlike one add per block). */
static void on_translate(qemu_plugin_id_t id, struct qemu_plugin_tb *tb) {
    size_t n = qemu_plugin_tb_n_insns(tb);
    for (size_t i = 0; i < n; i++)
        qemu_plugin_register_vcpu_insn_exec_inline(qemu_plugin_tb_get_insn(tb, i),
                                                   QEMU_PLUGIN_INLINE_ADD_U64, &insns, 1);
}

static void on_exit(qemu_plugin_id_t id, void *p) {
    FILE *f = fopen(out, "w");
    if (f) {
        fprintf(f, "%llu\n", (unsigned long long)insns);
        fclose(f);
    }
}

/* -plugin FILE.so,out=PATH: the count goes to PATH when the guest exits. */
EXPORT int qemu_plugin_install(qemu_plugin_id_t id, const qemu_info_t *info, int argc, char **argv) {
    for (int i = 0; i < argc; i++)
        if (strncmp(argv[i], "out=", 4) == 0)
            snprintf(out, sizeof out, "%s", argv[i] + 4);
    if (!out[0])
        return -1;
    qemu_plugin_register_vcpu_tb_trans_cb(id, on_translate);
    qemu_plugin_register_atexit_cb(id, on_exit, NULL);
    return 0;
}
"""


def log(msg: str) -> None:
    print(f"linux_counts: {msg}", file=sys.stderr, flush=True)


def build_plugin() -> str:
    """Compiles the counting plugin (again only when its source changed)."""
    os.makedirs(PLUGIN_DIR, exist_ok=True)
    tag = hashlib.sha256(PLUGIN_C.encode()).hexdigest()[:12]
    so = os.path.join(PLUGIN_DIR, f"insn_count-{tag}.so")
    if not os.path.exists(so):
        src = os.path.join(PLUGIN_DIR, "insn_count.c")
        with open(src, "w") as f:
            f.write(PLUGIN_C)
        cc = os.environ.get("CC", "cc")
        res = subprocess.run([cc, "-shared", "-fPIC", "-O2", "-fvisibility=hidden", "-o", so + ".tmp", src],
                             capture_output=True, text=True, timeout=120)
        if res.returncode != 0:
            raise RuntimeError(f"{cc} failed on {src}:\n{res.stderr}")
        os.replace(so + ".tmp", so)
    return so


class Counter:
    """Runs the app under a QEMU runner prefix; returns (instructions, stdout)."""

    def __init__(self, method: str, timeout: int):
        self.method = method
        self.timeout = timeout
        self.tmp = tempfile.mkdtemp(prefix="linux-counts-")
        self.plugin = build_plugin() if method == "plugin" else None
        if self.plugin and "," in self.plugin + self.tmp:
            raise RuntimeError("a comma in the plugin's path would split QEMU's -plugin argument")

    def count(self, runner: list[str], exe: str, model: str, repeat: int, method: str | None = None) -> tuple[int, str]:
        method = method or self.method
        args = [exe, model, os.path.join(ROOT, INPUT), "--repeat", str(repeat)]
        if method == "plugin":
            out = os.path.join(self.tmp, "count.txt")
            if os.path.exists(out):
                os.unlink(out)
            text = self._run(runner + ["-plugin", f"{self.plugin},out={out}"] + args)
            try:
                with open(out) as f:
                    return int(f.read()), text
            except (OSError, ValueError) as e:
                raise RuntimeError(f"the counting plugin wrote no count ({e}); QEMU said:\n{text[-2000:]}")
        return self._count_trace(runner, args)

    def _run(self, cmd: list[str]) -> str:
        res = subprocess.run(["timeout", "-k", "5", str(self.timeout)] + cmd, cwd=ROOT, capture_output=True,
                             text=True, timeout=self.timeout + 30)
        text = res.stdout + res.stderr
        if res.returncode != 0:
            raise RuntimeError(f"`{' '.join(cmd)}` exited with {res.returncode}"
                               f"{' (timed out)' if res.returncode == 124 else ''}:\n{text[-3000:]}")
        return text

    def _count_trace(self, runner: list[str], args: list[str]) -> tuple[int, str]:
        """One `Trace` log line per executed instruction, read from a named pipe."""
        fifo = os.path.join(self.tmp, "trace.fifo")
        if os.path.exists(fifo):
            os.unlink(fifo)
        os.mkfifo(fifo)
        result: dict = {}

        def reader() -> None:
            n, tail = 0, b"\n"
            try:
                with open(fifo, "rb", buffering=0) as f:
                    try:
                        fcntl.fcntl(f.fileno(), 1031, 1 << 20)  # F_SETPIPE_SZ: fewer, larger reads
                    except OSError:
                        pass
                    while chunk := f.read(1 << 20):
                        # A line starts after "\n"; the 5 bytes kept from the previous
                        # chunk catch a "\nTrace" split across two reads.
                        n += (tail + chunk[:5]).count(b"\nTrace") + chunk.count(b"\nTrace")
                        tail = chunk[-5:]
                result["n"] = n
            except BaseException as e:  # reported below
                result["error"] = e

        t = threading.Thread(target=reader, daemon=True)
        t.start()
        try:
            text = self._run(runner[:1] + ["-singlestep", "-d", "nochain,exec", "-D", fifo] + runner[1:] + args)
        finally:
            # If QEMU never opened the pipe, the reader still blocks in open(): release it.
            try:
                os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
            except OSError:
                pass
            t.join(60)
        if "n" not in result:
            raise RuntimeError(f"counting the trace failed: {result.get('error', 'reader did not finish')}")
        return result["n"], text


def model_macs(path: str) -> int:
    """Multiply-accumulates of one inference (batch 1): Conv: output elements x
    in_channels/group x kernel area; Gemm/MatMul: output elements x K."""
    import onnx
    from onnx import shape_inference

    m = onnx.load(path)
    for vi in m.graph.input:  # symbolic dims (the batch) -> 1
        for d in vi.type.tensor_type.shape.dim:
            if not d.HasField("dim_value"):
                d.dim_value = 1
    m = shape_inference.infer_shapes(m)
    shapes: dict[str, list[int]] = {}
    for vi in list(m.graph.input) + list(m.graph.value_info) + list(m.graph.output):
        t = vi.type.tensor_type
        if t.HasField("shape"):
            shapes[vi.name] = [d.dim_value for d in t.shape.dim]
    for init in m.graph.initializer:
        shapes[init.name] = list(init.dims)
    total = 0
    for n in m.graph.node:
        if n.op_type == "Conv":
            w, y = shapes[n.input[1]], shapes[n.output[0]]  # w: [M, C/group, kh, kw]
            total += math.prod(y) * math.prod(w[1:])
        elif n.op_type in ("Gemm", "MatMul"):
            a, y = shapes[n.input[0]], shapes[n.output[0]]
            trans_a = n.op_type == "Gemm" and any(at.name == "transA" and at.i for at in n.attribute)
            total += math.prod(y) * (a[0] if trans_a else a[-1])
        elif n.op_type in ("ConvTranspose", "QLinearConv", "ConvInteger", "QLinearMatMul", "MatMulInteger"):
            raise NotImplementedError(f"MACs of {n.op_type}")
    return total


def per_inference(counter: Counter, runner: list[str], exe: str, model: str, trials: int,
                  method: str | None = None, span: int = SPAN) -> dict:
    """(count(1+K) - count(1)) / K, minimum counts over the trials."""
    method = method or counter.method

    def count(repeat: int) -> tuple[int, str]:
        return counter.count(runner, exe, model, repeat, method=method)

    c1, text = count(1)
    c2, _ = count(2)
    estimate = max(c2 - c1, 1)
    k = min(MAX_K, max(1, math.ceil(span / estimate)))
    ones, many = [c1], [c2 if k == 1 else count(1 + k)[0]]
    for _ in range(trials - 1):
        ones.append(count(1)[0])
        many.append(count(1 + k)[0])
    per_trial = [(b - a) / k for a, b in zip(ones, many)]
    per = (min(many) - min(ones)) / k
    spread = (max(per_trial) - min(per_trial)) / per if per > 0 else float("inf")
    simd = re.search(r"^simd: (\S+)", text, re.M)
    app_macs = re.search(r"(\d+) MACs", text)
    argmax = re.search(r"^argmax = (\d+)", text, re.M)
    return {
        "instructions": round(per),
        "k": k,
        "trials": trials,
        "per_trial": [round(p) for p in per_trial],
        "spread": spread,
        "startup_and_load": min(ones) - round(per),
        "simd": simd.group(1) if simd else None,
        "app_macs": int(app_macs.group(1)) if app_macs else None,
        "argmax": int(argmax.group(1)) if argmax else None,
    }


def trace_check(counter: Counter, runner: list[str], exe: str, model: str, plugin_per: int) -> dict:
    """The plugin's per-inference count against the singlestep trace's, on one small run
    (the trace counts ~0.4M instructions per second: K inferences of ~1M instructions)."""
    t0 = time.time()
    res = per_inference(counter, runner, exe, model, 2, method="trace", span=TRACE_SPAN)
    rel = abs(res["instructions"] - plugin_per) / plugin_per
    return {"model": os.path.relpath(model, ROOT), "exe": os.path.relpath(exe, ROOT), "plugin": plugin_per,
            "trace": res["instructions"], "k": res["k"], "relative_difference": rel,
            "seconds": round(time.time() - t0, 1)}


def qemu_version() -> str:
    try:
        out = subprocess.run(["qemu-aarch64", "--version"], capture_output=True, text=True, timeout=10).stdout
        return out.splitlines()[0].strip()
    except (OSError, IndexError, subprocess.SubprocessError):
        return "QEMU (version unknown)"


def split_list(values: list[str] | None) -> list[str]:
    return [v for arg in values or [] for v in arg.split(",") if v]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", help=f"ONNX models (comma- or space-separated; default: {', '.join(DEFAULT_MODELS)})")
    ap.add_argument("--targets", nargs="+", help=f"targets (default: all of {', '.join(TARGETS)}; "
                    f"aliases {', '.join(ALIASES)})")
    ap.add_argument("--out-dir", default="bench", help="where linux.md and linux.json go (default bench)")
    ap.add_argument("--method", choices=["auto", "plugin", "trace"], default="auto",
                    help="plugin: the counting TCG plugin; trace: singlestep exec log (slow); "
                         "auto (default): the plugin, the trace if the plugin cannot be built")
    ap.add_argument("--trials", type=int, default=2, help="counts taken per figure, minimum used (default 2)")
    ap.add_argument("--timeout", type=int, default=600, help="seconds per QEMU run (default 600)")
    ap.add_argument("--no-trace-check", action="store_true",
                    help="skip checking the plugin against the singlestep trace on one small run")
    a = ap.parse_args()
    t_start = time.time()

    targets = []
    for t in split_list(a.targets) or list(TARGETS):
        t = ALIASES.get(t, t)
        if t not in TARGETS:
            ap.error(f"unknown target {t!r}; choose from {', '.join(list(TARGETS) + list(ALIASES))}")
        targets.append(t)
    models, skipped = [], []
    for m in split_list(a.models) or DEFAULT_MODELS:
        path = m if os.path.isabs(m) else os.path.join(ROOT, m)
        if os.path.exists(path):
            models.append(path)
        elif a.models:
            ap.error(f"{m}: no such file")
        else:
            skipped.append(f"{m} (absent; `make bench` makes it)")
            log(f"skipping {m}: absent (`make bench` makes it)")

    method = a.method
    if method in ("auto", "plugin"):
        try:
            counter = Counter("plugin", a.timeout)
            method = "plugin"
        except (RuntimeError, OSError, subprocess.SubprocessError) as e:
            if a.method == "plugin":
                raise SystemExit(f"linux_counts: cannot build the counting plugin: {e}")
            log(f"cannot build the counting plugin ({e}); counting the singlestep trace instead (slow)")
            method = "trace"
    if method == "trace":
        counter = Counter("trace", a.timeout)

    macs = {}
    for m in models:
        try:
            macs[m] = model_macs(m)
        except Exception as e:  # noqa: BLE001 — the app's own figure is used instead
            log(f"{os.path.relpath(m, ROOT)}: MACs not computed from the ONNX file ({e}); using the app's")
            macs[m] = None

    linux = {name: rest for name, *rest in cross_targets.LINUX}
    rows, check = [], None
    built: dict[tuple, str] = {}
    for tname in targets:
        folder, triple, features, runner = linux[tname]
        t0 = time.time()
        if method == "trace":
            log("counting the singlestep trace: slow (~0.4M instructions per second), K = 1")
        builds = {}
        for variant, feats in (("simd", features), ("scalar", features + ["scalar"])):
            key = (folder, triple, tuple(feats))
            if key not in built:  # the two riscv64 VLENs run the same binaries
                log(f"building {folder} for {triple} ({','.join(feats) or 'default features'})")
                built[key] = cross_targets.build_linux(folder, triple, feats)
            builds[variant] = built[key]
        for m in models:
            name = os.path.basename(m)
            r = {"model": name, "path": os.path.relpath(m, ROOT), "target": TARGETS[tname], "target_name": tname,
                 "runner": " ".join(runner)}
            for variant, exe in builds.items():
                try:
                    if method == "plugin" and a.method == "auto" and not rows and variant == "simd":
                        # First run: if the plugin builds but this QEMU will not load it
                        # and the trace works, count the trace instead.
                        try:
                            counter.count(runner, exe, m, 1)
                        except RuntimeError as e:
                            counter.count(runner, exe, m, 1, method="trace")
                            log(f"the counting plugin failed ({e}); counting the singlestep trace instead (slow)")
                            method = counter.method = "trace"
                    res = per_inference(counter, runner, exe, m, a.trials,
                                        span=SPAN if method == "plugin" else 1)
                except RuntimeError as e:
                    raise SystemExit(f"linux_counts: {name} on {tname} ({variant}): {e}")
                r[variant] = res
                if res["spread"] > MAX_SPREAD:
                    log(f"WARNING: {name} on {tname} ({variant}): trials differ by {res['spread']:.2%} "
                        f"({res['per_trial']})")
            if r["scalar"]["simd"] != "scalar":
                raise SystemExit(f"linux_counts: the scalar build of {tname} reports simd: {r['scalar']['simd']}")
            if r["simd"]["argmax"] != r["scalar"]["argmax"]:
                log(f"WARNING: {name} on {tname}: argmax {r['simd']['argmax']} (SIMD) vs "
                    f"{r['scalar']['argmax']} (scalar)")
            r["simd_path"] = r["simd"]["simd"]
            r["macs"] = macs[m] if macs[m] is not None else r["simd"]["app_macs"]
            r["app_macs"] = r["simd"]["app_macs"]
            if macs[m] is not None and r["app_macs"] is not None and r["app_macs"] != macs[m]:
                log(f"WARNING: {name}: {macs[m]} MACs from the ONNX file, the app says {r['app_macs']}")
            for variant in ("simd", "scalar"):
                r[variant]["per_mac"] = r[variant]["instructions"] / r["macs"] if r["macs"] else None
            r["ratio"] = r["simd"]["instructions"] / r["scalar"]["instructions"]
            rows.append(r)
            log(f"{name} on {TARGETS[tname]}: {r['simd']['instructions']:,} ({r['simd_path']}) vs "
                f"{r['scalar']['instructions']:,} (scalar) instructions per inference, ratio {r['ratio']:.3f}")
        log(f"{tname} done in {time.time() - t0:.0f} s")
        if method == "plugin" and check is None and not a.no_trace_check and rows:
            # The smallest SIMD run on the first target: a few seconds of tracing.
            small = min((r for r in rows if r["target_name"] == tname), key=lambda r: r["simd"]["instructions"])
            check = trace_check(counter, runner, builds["simd"], os.path.join(ROOT, small["path"]),
                                small["simd"]["instructions"])
            log(f"trace check ({small['model']} on {tname}): plugin {check['plugin']:,} vs trace "
                f"{check['trace']:,} per inference ({check['relative_difference']:.4%})")
            if check["relative_difference"] > 0.001:
                log("WARNING: the plugin and the singlestep trace disagree by more than 0.1%")

    shutil.rmtree(counter.tmp, ignore_errors=True)
    write(a.out_dir, rows, skipped, method, check, time.time() - t_start)
    log(f"done in {time.time() - t_start:.0f} s")


def write(out_dir: str, rows: list[dict], skipped: list[str], method: str, check: dict | None, seconds: float) -> None:
    out_dir = out_dir if os.path.isabs(out_dir) else os.path.join(ROOT, out_dir)
    os.makedirs(out_dir, exist_ok=True)
    qemu = qemu_version()
    version = re.search(r"version (\S+)", qemu)
    qemu_short = f"QEMU {version.group(1)}" if version else "QEMU"
    how = ("a small TCG plugin (C source in the script, compiled into build/linux-counts/) adding 1 per "
           "executed guest instruction"
           if method == "plugin" else
           "`-singlestep -d nochain,exec`, one logged line per executed guest instruction")
    data = {"qemu": qemu, "method": method, "input": INPUT, "span": SPAN, "seconds": round(seconds, 1),
            "trace_check": check, "skipped": skipped, "rows": rows}
    with open(os.path.join(out_dir, "linux.json.tmp"), "w") as f:
        json.dump(data, f, indent=2)
    os.replace(os.path.join(out_dir, "linux.json.tmp"), os.path.join(out_dir, "linux.json"))

    lines = [
        "# Linux targets: instruction counts, SIMD vs scalar", "",
        "Regenerated by `make bench` (`scripts/linux_counts.py`): one inference of `models/demo/sample_0.npy` "
        "by the Linux app (`targets/rpi`, `targets/riscv64`), guest instructions counted under "
        f"{qemu_short} user mode with {how}. Per inference = (count(`--repeat 1+K`) − "
        "count(`--repeat 1`)) / K, which leaves out start-up, the dynamic loader and model loading; "
        + (f"K is chosen so that the K inferences span ≥ {SPAN:,} instructions, "
           if method == "plugin" else "K = 1, ")
        + "and each count is the minimum of `--trials` runs (details per row in `linux.json`). "
        "SIMD is each app's default build (aarch64 NEON; armv7 `neon`, the runtime's inline-asm NEON "
        "loops; riscv64 `rvv`, RVV 1.0 inline asm, run at VLEN 128 and 256); scalar is the same triple "
        "with the runtime's `scalar` feature (its reference kernels; LLVM may still auto-vectorize them "
        "on aarch64 and on armv7, which is built with `+neon`; riscv64gc has no V for LLVM). "
        "Instructions are not cycles: a vector instruction does more work and costs more, so the ratio "
        "is an instruction-count ratio, not a speed-up. Emulated wall time means nothing and is not shown.",
        "",
    ]
    if check:
        lines += [f"Check: on {check['model']} the plugin's per-inference count and a singlestep exec trace's "
                  f"differ by {check['relative_difference']:.3%}.", ""]
    if skipped:
        lines += ["Skipped: " + "; ".join(skipped) + ".", ""]
    lines += ["| model | MACs | target | SIMD path | instructions/inference, SIMD | scalar | per MAC, SIMD | "
              "per MAC, scalar | SIMD / scalar |",
              "| --- | ---: | --- | --- | ---: | ---: | ---: | ---: | ---: |"]

    def per_mac(x: float | None) -> str:
        return "—" if x is None else f"{x:.2f}"

    for r in rows:
        lines.append(f"| {r['model']} | {r['macs']:,} | {r['target']} | {r['simd_path']} | "
                     f"{r['simd']['instructions']:,} | {r['scalar']['instructions']:,} | "
                     f"{per_mac(r['simd']['per_mac'])} | {per_mac(r['scalar']['per_mac'])} | {r['ratio']:.3f} |")
    with open(os.path.join(out_dir, "linux.md.tmp"), "w") as f:
        f.write("\n".join(lines) + "\n")
    os.replace(os.path.join(out_dir, "linux.md.tmp"), os.path.join(out_dir, "linux.md"))
    print("\n".join(lines[-len(rows) - 2:]))


if __name__ == "__main__":
    main()
