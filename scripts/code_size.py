#!/usr/bin/env python3
"""Code size of the runtime on a Cortex-M4F (targets/cortex-m4).

Builds the firmware with a model inside, with the given cargo features and
profile, and prints its section sizes and how much flash the runtime takes:

- flash code: .vector_table + .text + .init + .trap + .rodata + .data, less
  the model file (in .rodata) and the embedded test input and expected
  outputs, as the toolchain's `firmware_size` splits code from weights;
- runtime .text by symbol: functions whose demangled name names
  `tinykd_runtime` (generic instances for its types included; runtime code
  that LTO inlined into the firmware's own functions is not counted), and
  the libm/heapless functions it calls: a lower bound;
- runtime .text by source: each instruction is charged, through the DWARF
  inlining chain (llvm-symbolizer), to the innermost function whose source
  is the runtime's (or libm's, heapless's): runtime code inlined into the
  firmware counts, as does core code (slices, iterators, `Result`) inlined
  into the runtime's functions; out-of-line core functions do not;
- baseline: the flash code of `src/bin/baseline.rs`, the same firmware
  shell (start-up, semihosting output of integers and floats, panic and
  failure reports) without the runtime; the firmware's flash code less the
  baseline's is what linking the runtime adds, its read-only data (error
  messages, tables) and the core/compiler-builtins code only it uses
  included, plus the firmware's own code that calls it and prints its
  results: an upper bound.

Usage (from anywhere; builds in targets/cortex-m4/target):

    scripts/code_size.py --model build/bench/mlp-40.int8.onnx \\
        --profile release-size --no-default-features \\
        --features qemu,messages,op-gemm,op-activation,op-quant [--json]

Needs cargo with the thumbv7em-none-eabihf target, llvm-size, llvm-nm and
llvm-objdump (on PATH, or rustup's llvm-tools component), and
llvm-symbolizer for the by-source figures (skipped without it). Standard
library only.
"""

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FIRMWARE = ROOT / "targets" / "cortex-m4"
TRIPLE = "thumbv7em-none-eabihf"

# Sections the toolchain counts as flash (targets.rs `firmware_size`).
CODE_SECTIONS = (".vector_table", ".init", ".text", ".trap")
RODATA_SECTIONS = (".rodata", ".srodata")
DATA_SECTIONS = (".data", ".sdata")
RAM_SECTIONS = (".bss", ".sbss", ".uninit")


def tool(name):
    """Path of an LLVM binary tool: PATH first, then rustup's llvm-tools."""
    found = shutil.which(name)
    if found:
        return found
    sysroot = subprocess.run(
        ["rustc", "--print", "sysroot"], capture_output=True, text=True, check=True
    ).stdout.strip()
    host = re.search(
        r"^host: (\S+)",
        subprocess.run(["rustc", "-vV"], capture_output=True, text=True, check=True).stdout,
        re.M,
    ).group(1)
    candidate = Path(sysroot) / "lib" / "rustlib" / host / "bin" / name
    if candidate.is_file():
        return str(candidate)
    sys.exit(f"code_size: {name} not found (install LLVM, or: rustup component add llvm-tools)")


def build(binary, args, env):
    """Builds one binary of the firmware crate; returns (ELF path, build script OUT_DIR)."""
    cmd = [
        "cargo",
        "build",
        "--profile",
        args.profile,
        "--bin",
        binary,
        "--message-format=json-render-diagnostics",
    ]
    if args.no_default_features:
        cmd.append("--no-default-features")
    if args.features:
        cmd += ["--features", args.features]
    proc = subprocess.run(cmd, cwd=FIRMWARE, env=env, stdout=subprocess.PIPE, text=True)
    if proc.returncode != 0:
        sys.exit(f"code_size: `{' '.join(cmd)}` failed in {FIRMWARE}")
    elf = out_dir = None
    for line in proc.stdout.splitlines():
        try:
            msg = json.loads(line)
        except json.JSONDecodeError:
            continue
        if msg.get("reason") == "compiler-artifact" and msg.get("target", {}).get("name") == binary:
            elf = msg.get("executable") or elf
        # The firmware crate's own build script (not the runtime's, if any).
        if msg.get("reason") == "build-script-executed" and "tinykd-cortex-m4" in msg.get(
            "package_id", ""
        ):
            out_dir = msg.get("out_dir")
    if not elf or not Path(elf).is_file():
        sys.exit(f"code_size: cargo built no ELF for {binary}")
    return Path(elf), Path(out_dir) if out_dir else None


def sections(elf):
    """{section name: size} from `llvm-size -A`."""
    out = subprocess.run(
        [tool("llvm-size"), "-A", "-d", str(elf)], capture_output=True, text=True, check=True
    ).stdout
    sizes = {}
    for line in out.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0].startswith(".") and parts[1].isdigit():
            sizes[parts[0]] = int(parts[1])
    return sizes


def embedded_values(out_dir, name):
    """Bytes of an f32 array that build.rs generated (input.rs, expected.rs)."""
    if out_dir is None or not (out_dir / name).is_file():
        return 0
    return 4 * (out_dir / name).read_text().count("f32::from_bits(")


def flash(sizes, model_bytes, data_bytes):
    """(flash code, model bytes found in .rodata) as targets.rs computes them,
    less `data_bytes` of embedded test data."""
    code = sum(sizes.get(s, 0) for s in CODE_SECTIONS + DATA_SECTIONS)
    rodata = sum(sizes.get(s, 0) for s in RODATA_SECTIONS)
    weights = min(model_bytes, rodata)
    return code + rodata - weights - data_bytes, weights


def owner(name):
    """Which crate a (v0-demangled) symbol belongs to."""
    if "tinykd_runtime" in name:
        return "runtime"
    if "tinykd_cortex_m4" in name or name == "main":
        return "firmware"
    if re.search(r"(^|[^a-z_])libm::", name):
        return "libm"
    if "heapless" in name:
        return "heapless"
    if "cortex_m" in name:
        return "cortex-m"
    return "core, compiler-builtins"


def symbols(elf, top):
    """.text bytes per owner, and the runtime's largest functions."""
    out = subprocess.run(
        [tool("llvm-nm"), "--print-size", "--demangle", "--defined-only", "-t", "d", str(elf)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    by_owner, runtime_fns = {}, {}
    for line in out.splitlines():
        parts = line.split(" ", 3)
        if len(parts) < 4:
            continue
        size, kind, name = int(parts[1]), parts[2], parts[3]
        who = owner(name)
        if kind in "tT":
            by_owner[who] = by_owner.get(who, 0) + size
            if who == "runtime":
                runtime_fns[name] = runtime_fns.get(name, 0) + size
    largest = sorted(runtime_fns.items(), key=lambda kv: -kv[1])[:top]
    return by_owner, largest


def source_owner(path):
    """Which crate a source file belongs to (None: core, builtins, ...)."""
    for marker, who in (
        ("/runtime/src/", "runtime"),
        ("/targets/cortex-m4/", "firmware"),
        ("/libm-", "libm"),
        ("/heapless-", "heapless"),
        ("/cortex-m", "cortex-m"),
    ):
        if marker in path:
            return who
    return None


def by_source(elf):
    """.text bytes per owner, charged through each instruction's inlining chain."""
    symbolizer = shutil.which("llvm-symbolizer")
    if not symbolizer:
        return None
    dump = subprocess.run(
        [tool("llvm-objdump"), "-d", "-j", ".text", str(elf)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    insns = []
    for line in dump.splitlines():
        m = re.match(r"\s+([0-9a-f]+):\s+((?:[0-9a-f]{2,8} )+)", line)
        if m:
            insns.append((m.group(1), len(m.group(2).replace(" ", "")) // 2))
    out = subprocess.run(
        [symbolizer, f"--obj={elf}", "--inlines", "--output-style=JSON"],
        input="\n".join("0x" + a for a, _ in insns),
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    owners = {}
    for (_, size), line in zip(insns, out.splitlines()):
        frames = json.loads(line).get("Symbol") or []
        who = next(
            (w for w in (source_owner(f.get("FileName", "")) for f in frames) if w),
            "core, compiler-builtins",
        )
        owners[who] = owners.get(who, 0) + size
    return owners


def find(path):
    """`path` as given (from the current folder), else from the repository root."""
    p = Path(path)
    return p.resolve() if p.exists() or p.is_absolute() else (ROOT / p).resolve()


def measure(args):
    model = find(args.model)
    env = dict(os.environ)
    env["TINYKD_MODEL"] = str(model)
    env["TINYKD_INPUT"] = str(find(args.input))
    model_bytes = model.stat().st_size

    elf, out_dir = build("tinykd-cortex-m4", args, env)
    sizes = sections(elf)
    input_bytes = embedded_values(out_dir, "input.rs")
    expected_bytes = embedded_values(out_dir, "expected.rs")
    code, weights = flash(sizes, model_bytes, input_bytes + expected_bytes)
    by_owner, largest = symbols(elf, args.top)
    runtime_text = by_owner.get("runtime", 0)
    deps_text = by_owner.get("libm", 0) + by_owner.get("heapless", 0)

    result = {
        "model": str(model),
        "model_bytes": model_bytes,
        "profile": args.profile,
        "features": ("" if args.no_default_features else "default,") + (args.features or ""),
        "elf": str(elf),
        "sections": sizes,
        "weights_in_rodata": weights,
        "test_data_bytes": input_bytes + expected_bytes,
        "flash_code": code,
        "ram_static": sum(sizes.get(s, 0) for s in RAM_SECTIONS + DATA_SECTIONS),
        "text_by_owner": by_owner,
        "runtime_text": runtime_text,
        "runtime_deps_text": deps_text,
        "largest_runtime_functions": [{"name": n, "bytes": s} for n, s in largest],
    }
    if not args.no_dwarf:
        result["text_by_source"] = by_source(elf)
    if not args.no_baseline:
        base_elf, base_out = build("baseline", args, env)
        base_sizes = sections(base_elf)
        base_code, _ = flash(base_sizes, 0, embedded_values(base_out, "input.rs"))
        result["baseline_elf"] = str(base_elf)
        result["baseline_sections"] = base_sizes
        result["baseline_flash_code"] = base_code
        result["runtime_flash_code"] = code - base_code
    return result


def report(r):
    def row(label, value, note=""):
        print(f"{label:<34} {value:>9,}  {note}".rstrip())

    rel = os.path.relpath(r["model"], ROOT)
    print(f"firmware: targets/cortex-m4, {TRIPLE}, profile {r['profile']}, features {r['features']}")
    print(f"model:    {rel} ({r['model_bytes']:,} bytes)")
    print()
    print(f"{'section':<34} {'bytes':>9}")
    s = r["sections"]
    for name in CODE_SECTIONS + RODATA_SECTIONS + DATA_SECTIONS + RAM_SECTIONS:
        if name in s and (s[name] or name in (".text", ".rodata", ".data", ".bss")):
            note = ""
            if name == ".rodata":
                note = f"(model {r['weights_in_rodata']:,}, test input/outputs {r['test_data_bytes']:,})"
            row(name, s[name], note)
    print()
    row("flash code", r["flash_code"], "(flash less model and test data)")
    row("  runtime .text, by symbol", r["runtime_text"], "(functions naming tinykd_runtime)")
    row("  + libm, heapless .text", r["runtime_deps_text"])
    for who in ("core, compiler-builtins", "cortex-m", "firmware"):
        row(f"  {who} .text", r["text_by_owner"].get(who, 0))
    src = r.get("text_by_source")
    if src:
        row("  runtime .text, by source", src.get("runtime", 0), "(DWARF inlining chains)")
        row("  + libm, heapless .text", src.get("libm", 0) + src.get("heapless", 0))
        row("  firmware .text, by source", src.get("firmware", 0))
    if "baseline_flash_code" in r:
        row("baseline flash code", r["baseline_flash_code"], "(src/bin/baseline.rs: the shell, no runtime)")
        row("runtime flash code", r["runtime_flash_code"], "(flash code less baseline)")
    print(f"static RAM {r['ram_static']:,} bytes (.data + .bss + .uninit; stack on top)")
    if r["largest_runtime_functions"]:
        print()
        print("largest runtime functions:")
        for f in r["largest_runtime_functions"]:
            print(f"  {f['bytes']:7,}  {f['name'][:110]}")


def main():
    parser = argparse.ArgumentParser(
        description="Cortex-M4 firmware code size: sections, runtime share, baseline.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n\n", 1)[1],
    )
    parser.add_argument(
        "--model", default=str(ROOT / "models/demo/fashion_mlp.onnx"), help="ONNX model to embed"
    )
    parser.add_argument(
        "--input",
        default=str(ROOT / "models/demo/sample_0.npy"),
        help="f32 .npy input to embed (its values are not counted as code)",
    )
    parser.add_argument("--features", default="", help="firmware cargo features, comma separated")
    parser.add_argument(
        "--no-default-features",
        action="store_true",
        help="turn the firmware's default features (qemu, messages, all-ops) off",
    )
    parser.add_argument(
        "--profile", default="release", help="cargo profile: release (opt-level 3) or release-size (z)"
    )
    parser.add_argument("--no-baseline", action="store_true", help="skip the baseline build")
    parser.add_argument(
        "--no-dwarf", action="store_true", help="skip the by-source attribution (llvm-symbolizer)"
    )
    parser.add_argument("--top", type=int, default=10, help="largest runtime functions to list")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args()
    result = measure(args)
    if args.json:
        json.dump(result, sys.stdout, indent=2)
        print()
    else:
        report(result)


if __name__ == "__main__":
    main()
