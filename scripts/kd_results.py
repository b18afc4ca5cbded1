"""Distillation results on full Fashion-MNIST (60k/10k), 3 seeds each:
the shipped teacher, and for each student scratch vs Hinton KD vs logit
matching vs KD on an unlabeled transfer set vs KD on fixed augmented views.
Every run is one `tinykd distill --json` (kept in build/results/ and reused
when present, so an interrupted run continues); the Markdown table goes into
docs/results.md, section "Distillation". This is what `make results` runs.

    python3 scripts/kd_results.py [--tinykd target/release/tinykd] [--seeds 0,1,2]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

TEACHER = "models/teachers/cnn.onnx"
SWEEP_STUDENT = "models/students/mlp-40.toml"
SWEEP_EPOCHS = 10
# (student spec, label, recipe, extra flags)
RUNS = [
    ("models/students/mlp-40.toml", "scratch", "models/recipes/scratch.toml", []),
    ("models/students/mlp-40.toml", "scratch + shifts/flips", "models/recipes/scratch.toml",
     ["--shift", "2", "--hflip", "0.5"]),
    ("models/students/mlp-40.toml", "Hinton KD (T=4, α=0.9)", "models/recipes/kd.toml", []),
    ("models/students/mlp-40.toml", "Hinton KD, the sweep's choice (T=1, α=0.9)", "models/recipes/kd.toml",
     ["--temperature", "1", "--alpha", "0.9"]),
    ("models/students/mlp-40.toml", "logit matching (MSE)", "models/recipes/mse.toml", []),
    ("models/students/mlp-40.toml", "KD, unlabeled transfer set", "models/recipes/unlabeled.toml", []),
    ("models/students/mlp-40.toml", "KD on 4 fixed augmented views", "models/recipes/views.toml",
     ["--epochs", "10"]),
    ("models/students/mlp-40.toml", "function matching (6 mixup views, T=1, no labels)",
     "models/recipes/function-matching.toml", []),
    ("models/students/ds-cnn.toml", "scratch", "models/recipes/scratch.toml", ["--epochs", "10"]),
    ("models/students/ds-cnn.toml", "Hinton KD (T=4, α=0.9)", "models/recipes/kd.toml", ["--epochs", "10"]),
    ("models/students/ds-cnn.toml", "logit matching (MSE)", "models/recipes/mse.toml", ["--epochs", "10"]),
    ("models/students/ds-cnn.toml", "KD, unlabeled transfer set", "models/recipes/unlabeled.toml",
     ["--epochs", "10"]),
]


def run(tinykd: str, args: list[str], out_json: str, only_existing: bool = False) -> dict | None:
    if os.path.exists(out_json) and os.path.getsize(out_json) > 0:
        with open(out_json) as f:
            return json.load(f)
    if only_existing:
        return None
    print("+", tinykd, " ".join(args), file=sys.stderr, flush=True)
    res = subprocess.run([tinykd, *args, "--json"], capture_output=True, text=True)
    if res.returncode != 0:
        raise SystemExit(f"failed: {' '.join(args)}\n{res.stderr}")
    tmp = out_json + ".tmp"
    with open(tmp, "w") as f:
        f.write(res.stdout)
    os.replace(tmp, out_json)
    return json.loads(res.stdout)


def slug(*parts: str) -> str:
    return "-".join("".join(c if c.isalnum() else "_" for c in p) for p in parts)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tinykd", default="target/release/tinykd")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--out", default="build/results")
    ap.add_argument("--doc", default="docs/results.md")
    ap.add_argument("--only-existing", action="store_true",
                    help="tabulate the runs already in --out; mark the others as pending")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    seeds = [int(s) for s in args.seeds.split(",")]

    teacher = run(args.tinykd, ["eval", TEACHER, "--engine", "tract"],
                  os.path.join(args.out, "teacher-eval.json"))
    assert teacher is not None
    inspect = json.loads(subprocess.run([args.tinykd, "inspect", TEACHER, "--json"],
                                        capture_output=True, text=True, check=True).stdout)
    t_params = inspect["parameters"]

    rows, scratch = [], {}
    for student, label, recipe, extra in RUNS:
        accs, secs, params, epochs = [], [], None, 0
        for seed in seeds:
            name = slug(os.path.basename(student), label, str(seed))
            out = os.path.join(args.out, name)
            r = run(args.tinykd, ["distill", "--teacher", TEACHER, "--student", student,
                                  "--recipe", recipe, "--seed", str(seed), *extra,
                                  "--out", out + ".onnx"], out + ".json", args.only_existing)
            if r is None:
                continue
            accs.append(100 * r["test"]["accuracy"])
            secs.extend(h["seconds"] for h in r["history"])
            params = r["parameters"]
            epochs = len(r["history"])
        if not accs:
            rows.append(f"| {os.path.basename(student)} | – | {label} | – | pending | – | – |")
            continue
        mean = statistics.mean(accs)
        std = statistics.stdev(accs) if len(accs) > 1 else 0.0
        if label == "scratch":
            scratch[student] = mean
        delta = mean - scratch.get(student, mean)
        n = "" if len(accs) == len(seeds) else f" ({len(accs)} of {len(seeds)} seeds)"
        rows.append(f"| {os.path.basename(student)} | {params:,} (1/{t_params / params:.0f}) | {label} "
                    f"| {epochs} | {mean:.2f} ± {std:.2f}{n} | {delta:+.2f} | {statistics.mean(secs):.1f} |")

    sweep = run(args.tinykd, ["sweep", "--teacher", TEACHER, "--student", SWEEP_STUDENT,
                              "--recipe", "models/recipes/kd.toml", "--epochs", str(SWEEP_EPOCHS),
                              "--out", os.path.join(args.out, "sweep-mlp-40.toml")],
                os.path.join(args.out, "sweep-mlp-40.json"), args.only_existing)
    if sweep is None:
        sweep_text = "Sweep: pending."
    else:
        b = sweep["best"]
        trials = ", ".join(f"T={t['temperature']:g} α={t['alpha']:g}: {100 * t['val_accuracy']:.2f}"
                           for t in sweep["trials"])
        sweep_text = (f"`tinykd sweep` ({os.path.basename(SWEEP_STUDENT)}, Hinton KD, {SWEEP_EPOCHS} epochs "
                      f"per trial, scored on the validation split) chose **T = {b['temperature']:g}, "
                      f"α = {b['alpha']:g}** ({100 * b['val_accuracy']:.2f} % validation). "
                      f"All trials (validation %): {trials}.")

    table = "\n".join([
        f"Teacher `{TEACHER}`: {t_params:,} parameters, test accuracy "
        f"{100 * teacher['accuracy']:.2f} % (`tinykd eval --engine tract`).",
        "",
        f"| student | parameters (of teacher) | method | epochs | test accuracy % (mean ± std, seeds {args.seeds}) "
        "| vs scratch (points) | s / epoch |",
        "| --- | ---: | --- | ---: | ---: | ---: | ---: |",
        *rows,
        "",
        sweep_text,
    ])
    print(table)
    write_section(args.doc, "Distillation", table)


def write_section(path: str, title: str, body: str) -> None:
    text = open(path).read() if os.path.exists(path) else "# Results\n"
    header = f"## {title}\n"
    intro = ("Regenerated by `make results` (`scripts/kd_results.py`): full Fashion-MNIST, "
             "55k training / 5k validation / 10k test images, one `tinykd distill` per cell and seed.\n\n")
    section = f"{header}\n{intro}{body}\n"
    start = text.find(header)
    if start < 0:
        text = text.rstrip() + "\n\n" + section
    else:
        end = text.find("\n## ", start + len(header))
        text = text[:start] + section + (text[end + 1:] if end >= 0 else "")
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


if __name__ == "__main__":
    main()
