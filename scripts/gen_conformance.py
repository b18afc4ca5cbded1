#!/usr/bin/env python3
"""Write the ONNX node conformance cases of the installed onnx package to disk.

Usage:
    .venv/bin/python scripts/gen_conformance.py OUT_DIR [--force] [--list-ops]

The cases come from ``onnx.backend.test.case.node.collect_testcases()`` (the
same source onnx's own ``backend-test-tools generate-data`` uses) and are
written in the layout of onnx's ``onnx/backend/test/data/node`` directory:

    OUT_DIR/<case name>/model.onnx
    OUT_DIR/<case name>/test_data_set_0/input_K.pb    (TensorProto)
    OUT_DIR/<case name>/test_data_set_0/output_K.pb   (TensorProto)

Each .pb is a serialized TensorProto (``numpy_helper.from_array``) whose name
is the graph input/output name.  Only cases whose graph inputs and outputs are
all plain tensors are written; cases that use sequences, optionals, maps or
sparse tensors are skipped and counted (their names go to OUT_DIR/.skipped).

The pip wheel of onnx does not ship ``backend/test/data/node`` (only the model
test directories), so the cases are always generated, never copied.

The output is generated in a temporary sibling directory and renamed into
place, so OUT_DIR is either the complete old set or the complete new set.
``OUT_DIR/.stamp`` records the onnx/numpy versions and a hash of this script;
when it matches, the script exits at once without importing onnx.

--list-ops prints, for the (possibly just generated) OUT_DIR, every op type
used by the case models with the number of cases containing it, how many of
those are expanded-function cases, and the default-domain opset versions.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import importlib.metadata
import io
import os
import shutil
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from generated_dir import STAMP, check_replaceable, publish, read_stamp  # noqa: E402
import warnings



def stamp_text() -> str:
    with open(os.path.abspath(__file__), "rb") as f:
        script_hash = hashlib.sha256(f.read()).hexdigest()
    return (
        f"onnx {importlib.metadata.version('onnx')}\n"
        f"numpy {importlib.metadata.version('numpy')}\n"
        f"script-sha256 {script_hash}\n"
    )








def collect_cases() -> list:
    import onnx.backend.test.case.node as node_test

    # The case modules compute reference outputs at import time; they emit
    # many numpy RuntimeWarnings (inf/nan on purpose) and occasional prints.
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        try:
            return list(node_test.collect_testcases())
        except TypeError:  # older onnx: op_type is a required argument
            return list(node_test.collect_testcases(None))


def tensor_proto(value, name: str):
    from onnx import TensorProto, numpy_helper

    if isinstance(value, TensorProto):
        t = TensorProto()
        t.CopyFrom(value)
        t.name = name
        return t
    return numpy_helper.from_array(value, name)


def is_plain_tensor(value_info) -> bool:
    return value_info.type.WhichOneof("value") == "tensor_type"


def generate(out_dir: str, stamp: str) -> tuple[int, int, list[str]]:
    cases = collect_cases()
    parent = os.path.dirname(out_dir)
    os.makedirs(parent, exist_ok=True)
    tmp_dir = tempfile.mkdtemp(prefix=os.path.basename(out_dir) + ".tmp-", dir=parent)
    written = 0
    skipped: list[str] = []
    try:
        for case in sorted(cases, key=lambda c: c.name):
            if case.kind != "node" or case.model is None or not case.data_sets:
                skipped.append(case.name)
                continue
            graph = case.model.graph
            if not all(is_plain_tensor(v) for v in [*graph.input, *graph.output]):
                skipped.append(case.name)
                continue
            case_dir = os.path.join(tmp_dir, case.name)
            os.makedirs(case_dir)
            with open(os.path.join(case_dir, "model.onnx"), "wb") as f:
                f.write(case.model.SerializeToString())
            for i, (inputs, outputs) in enumerate(case.data_sets):
                if len(inputs) != len(graph.input) or len(outputs) != len(graph.output):
                    raise RuntimeError(
                        f"{case.name}: data set {i} does not match the graph's "
                        "inputs/outputs"
                    )
                ds_dir = os.path.join(case_dir, f"test_data_set_{i}")
                os.makedirs(ds_dir)
                for kind, values, infos in (
                    ("input", inputs, graph.input),
                    ("output", outputs, graph.output),
                ):
                    for j, (value, info) in enumerate(zip(values, infos)):
                        path = os.path.join(ds_dir, f"{kind}_{j}.pb")
                        with open(path, "wb") as f:
                            f.write(tensor_proto(value, info.name).SerializeToString())
            written += 1
        with open(os.path.join(tmp_dir, ".skipped"), "w", encoding="utf-8") as f:
            f.write("".join(name + "\n" for name in skipped))
        with open(os.path.join(tmp_dir, STAMP), "w", encoding="utf-8") as f:
            f.write(stamp)
        os.chmod(tmp_dir, 0o755)
        publish(tmp_dir, out_dir, stamp)
    except BaseException:
        shutil.rmtree(tmp_dir, ignore_errors=True)
        raise
    return written, len(skipped), skipped


def list_ops(out_dir: str) -> None:
    import onnx

    def walk(graph):
        for node in graph.node:
            yield node
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.GRAPH:
                    yield from walk(attr.g)
                elif attr.type == onnx.AttributeProto.GRAPHS:
                    for g in attr.graphs:
                        yield from walk(g)

    stats: dict[str, list] = {}
    for name in sorted(os.listdir(out_dir)):
        path = os.path.join(out_dir, name, "model.onnx")
        if not os.path.isfile(path):
            continue
        model = onnx.load(path)
        opsets = {
            imp.domain or "ai.onnx": imp.version for imp in model.opset_import
        }
        for op in sorted({(n.domain or "ai.onnx", n.op_type) for n in walk(model.graph)}):
            domain, op_type = op
            key = op_type if domain == "ai.onnx" else f"{domain}.{op_type}"
            s = stats.setdefault(key, [0, 0, set()])
            s[0] += 1
            s[1] += "_expanded" in name
            if domain in opsets:
                s[2].add(opsets[domain])
    print(f"{'op type':32} {'cases':>5} {'expanded':>8}  opsets")
    for key in sorted(stats):
        total, expanded, versions = stats[key]
        print(
            f"{key:32} {total:5d} {expanded:8d}  "
            + ",".join(str(v) for v in sorted(versions))
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", metavar="OUT_DIR")
    parser.add_argument("--force", action="store_true", help="regenerate even if up to date")
    parser.add_argument("--list-ops", action="store_true", help="print per-op case counts")
    args = parser.parse_args()
    out_dir = os.path.abspath(args.out_dir)

    stamp = stamp_text()
    if not args.force and read_stamp(out_dir) == stamp:
        n = sum(
            1 for e in os.scandir(out_dir) if e.is_dir() and not e.name.startswith(".")
        )
        print(f"gen_conformance: {out_dir} up to date ({n} cases, {stamp.splitlines()[0]})")
    else:
        check_replaceable(out_dir)
        written, n_skipped, _ = generate(out_dir, stamp)
        print(
            f"gen_conformance: wrote {written} cases to {out_dir}, skipped {n_skipped} "
            f"(non-tensor inputs/outputs) [{stamp.splitlines()[0]}]"
        )
    if args.list_ops:
        list_ops(out_dir)


if __name__ == "__main__":
    main()
