# tinykd — two commands matter: `make demo` and `make test`. Both run
# `make setup` first, which installs what the project needs (idempotent).

CARGO   ?= cargo
PYTHON  := .venv/bin/python
TINYKD  := target/release/tinykd
BUILD   := build
CONFORMANCE_DIR := $(BUILD)/onnx-node-tests
CROSSCHECK_DIR  := $(BUILD)/crosscheck
DEMO_MODEL      := models/demo/fashion_mlp.onnx
TEACHER         := models/teachers/cnn.onnx
DEMO_OUT        := $(BUILD)/demo
# One feature set for every build and test of tinykd, so `make test` and
# `make demo` share target/: teachers and `eval --engine ort` can run on
# ONNX Runtime, loaded at run time from the onnxruntime wheel in .venv.
FEATURES        := --features tinykd/ort

.PHONY: teacher results report report-methods bench cross-targets setup build test demo conformance run-conformance crosscheck-data fmt-check no-std firmware ops-doc size bench-train bench-peers train-parity clean

setup:
	@bash scripts/setup.sh

build: setup
	$(CARGO) build --release -p tinykd $(FEATURES)

# Test data generated from the installed onnx package (git-ignored).
crosscheck-data: setup
	@$(PYTHON) scripts/gen_conformance.py $(CONFORMANCE_DIR)
	@$(PYTHON) scripts/gen_crosscheck_models.py $(CROSSCHECK_DIR)

conformance: build crosscheck-data run-conformance

# Uses the binary `cargo test` or `make build` left in target/release.
run-conformance:
	$(TINYKD) conformance $(CONFORMANCE_DIR) --json --ops-doc $(BUILD)/ops.md > $(BUILD)/conformance.json || { cat $(BUILD)/conformance.json; exit 1; }
	@$(PYTHON) -c "import json; s = json.load(open('$(BUILD)/conformance.json')); print('conformance:', {k: s[k] for k in ('passed', 'failed', 'unsupported')}); assert s['failed'] == 0 and s['passed'] >= 150"

# The runtime must build with no allocator for both MCU targets.
no-std: setup
	$(CARGO) build --release -p tinykd-runtime --target thumbv7em-none-eabihf
	$(CARGO) build --release -p tinykd-runtime --target riscv32imac-unknown-none-elf

# The Cortex-M4 firmware runs the demo MLP under QEMU and must match the host.
firmware: setup
	cd targets/cortex-m4 && timeout 600 $(CARGO) run --release

# The shipped int8 student (and its f32 version) on 64 test images gives the
# same outputs on every target: host scalar and AVX2, aarch64, armv7,
# riscv64 (RVV at VLEN 128 and 256) under QEMU user mode, and the Cortex-M4
# (DSP) and riscv32 firmwares under QEMU system mode; plus the SIMD kernels'
# own tests on each Linux target and the Cortex-M4 kernel self-test.
cross-targets: setup
	$(CARGO) test --release -p tinykd-runtime --lib --target aarch64-unknown-linux-gnu kernels
	$(CARGO) test --release -p tinykd-runtime --lib --target armv7-unknown-linux-gnueabihf --features arm-neon kernels
	$(CARGO) test --release -p tinykd-runtime --lib --target riscv64gc-unknown-linux-gnu --features rvv kernels
	cd targets/cortex-m4 && timeout 600 $(CARGO) run --release --bin kernels
	$(PYTHON) scripts/cross_targets.py
	bash targets/android/run.sh --check

fmt-check:
	$(CARGO) fmt --all --check

# `cargo test` also builds target/release/tinykd (the CLI tests run it), so
# the conformance run reuses it instead of a second build with the
# non-dev feature set.
test: setup fmt-check crosscheck-data
	$(CARGO) test --release --workspace $(FEATURES)
	$(MAKE) --no-print-directory run-conformance no-std firmware cross-targets

# The main job on the shipped teacher: distill (short recipe) → ONNX export
# → evaluation with the runtime the devices run → int8 quantization.
demo: build
	$(TINYKD) inspect $(TEACHER)
	$(TINYKD) distill --teacher $(TEACHER) --student models/students/mlp-40.toml \
		--recipe models/recipes/demo.toml --out $(DEMO_OUT)/student.onnx
	$(TINYKD) inspect $(DEMO_OUT)/student.onnx
	$(TINYKD) eval $(DEMO_OUT)/student.onnx --engine tinykd --confusion-png $(DEMO_OUT)/confusion.png
	$(TINYKD) infer $(DEMO_OUT)/student.onnx --input models/demo/sample_0.npy --output $(DEMO_OUT)/sample_0_logits.npy
	$(TINYKD) quantize $(DEMO_OUT)/student.onnx --method mse --out $(DEMO_OUT)/student.int8.onnx
	$(TINYKD) inspect $(DEMO_OUT)/student.int8.onnx
	$(TINYKD) run --target cortex-m4 --model $(DEMO_OUT)/student.int8.onnx --input models/demo/sample_0.npy

# Regenerates the shipped teacher, models/teachers/cnn.onnx (about 30
# minutes on 2 cores; all 60k training images, seed 0).
teacher: build
	$(TINYKD) train --arch models/teachers/cnn.toml --epochs 20 --shift 2 --hflip 0.5 \
		--weight-decay 0.05 --val 0 --seed 0 --out $(BUILD)/teacher/cnn.safetensors
	$(TINYKD) export $(BUILD)/teacher/cnn.safetensors --out $(TEACHER)

# The distillation table in docs/results.md: students × methods × 3 seeds
# (runs are kept in build/results/, so an interrupted run continues).
results: build
	python3 scripts/kd_results.py --tinykd $(TINYKD)

# The compression table and chart in docs/results.md (`tinykd report`: the
# DS-CNN student scratch / KD / int8 PTQ / QAT / pruned / f16, 3 seeds; runs
# are kept in build/report/, so an interrupted run continues).
report: build
	$(TINYKD) report --write-doc docs/results.md --plot docs/compression.png

# The distillation-methods table and chart in docs/results.md (`tinykd
# report --methods all`: scratch, Hinton, MSE, FitNets, AT, RKD, born-again,
# TA chain, mutual learning, weighted ensemble, specialists, cross-resolution
# on the DS-CNN student, 3 seeds, 5 epochs per stage on 10k training images;
# about 40 min on 2 cores; runs kept in build/report/methods/).
report-methods: build
	$(TINYKD) report --methods all --epochs 5 --limit 10000 --write-doc docs/results.md --plot docs/methods.png

# Inference latency, tinykd vs tract vs ONNX Runtime (1 thread, batch 1,
# interleaved), written to bench/results.{json,md,png}. The suite: Hinton's
# 784-800-800-10 MLP, the demo 784-128-10 MLP, the CNN teacher, the KD
# students (MLP 784-40-10, DS-CNN), each in f32 and int8 QDQ. Latency does
# not depend on the weights, so the MLPs are trained for one short epoch.
# Then the MCU instruction counts (Cortex-M4 DSP vs scalar, riscv32) under
# QEMU: bench/mcu.{md,json}; the Linux targets' instruction counts, SIMD vs
# scalar kernels, under QEMU user mode: bench/linux.{md,json}; the kernels'
# inner loops, SIMD vs scalar (criterion): bench/kernels.txt; and the
# runtime's code size on the Cortex-M4 for the demo MLP: bench/size.txt.
BENCH_DIR := $(BUILD)/bench
BENCH_MODELS := $(BENCH_DIR)/mlp-800.onnx $(BENCH_DIR)/mlp-800.int8.onnx \
	$(DEMO_MODEL) $(BENCH_DIR)/fashion_mlp.int8.onnx \
	$(TEACHER) $(BENCH_DIR)/cnn.int8.onnx \
	$(BENCH_DIR)/mlp-40.onnx $(BENCH_DIR)/mlp-40.int8.onnx \
	models/students/ds-cnn-kd.onnx models/students/ds-cnn-kd.int8.onnx
bench: build
	@mkdir -p $(BENCH_DIR)
	@[ -f $(BENCH_DIR)/mlp-800.onnx ] || $(TINYKD) train --arch mlp --epochs 1 --limit 5000 --out $(BENCH_DIR)/mlp-800.onnx
	@[ -f $(BENCH_DIR)/mlp-40.onnx ] || $(TINYKD) train --arch models/students/mlp-40.toml --epochs 1 --limit 5000 --out $(BENCH_DIR)/mlp-40.onnx
	@for m in $(BENCH_DIR)/mlp-800 $(BENCH_DIR)/mlp-40; do \
		[ -f $$m.int8.onnx ] || $(TINYKD) quantize $$m.onnx --calib-size 200 --eval-limit 0 --out $$m.int8.onnx || exit 1; done
	@[ -f $(BENCH_DIR)/fashion_mlp.int8.onnx ] || $(TINYKD) quantize $(DEMO_MODEL) --calib-size 200 --eval-limit 0 --out $(BENCH_DIR)/fashion_mlp.int8.onnx
	@[ -f $(BENCH_DIR)/cnn.int8.onnx ] || $(TINYKD) quantize $(TEACHER) --calib-size 100 --eval-limit 0 --out $(BENCH_DIR)/cnn.int8.onnx
	$(TINYKD) bench $(BENCH_MODELS) --iters 300 --out-dir bench --summary README.md
	$(PYTHON) scripts/mcu_counts.py $(DEMO_MODEL) $(BENCH_DIR)/mlp-40.int8.onnx \
		models/students/ds-cnn-kd.int8.onnx models/students/ds-cnn-kd.onnx
	$(PYTHON) scripts/linux_counts.py --out-dir bench
	$(CARGO) bench -p tinykd-runtime --features std --bench kernels -- \
		--warm-up-time 0.3 --measurement-time 0.7 | \
		awk '/^(n=|conv\/)/ { if ($$0 ~ /time:/) print; else id = $$1; next } id && /^ +time:/ { sub(/^ +/, ""); print id "  " $$0; id = "" }' \
		> bench/kernels.txt.tmp
	mv bench/kernels.txt.tmp bench/kernels.txt
	$(PYTHON) scripts/code_size.py $(SIZE_MLP) > bench/size.txt.tmp
	mv bench/size.txt.tmp bench/size.txt

# Regenerates docs/ops.md from the conformance run.
ops-doc: conformance
	cp $(BUILD)/ops.md docs/ops.md

# Runtime code on the Cortex-M4 for the demo MLP, built as a product would
# be: opt-level z, only the model's op families (`tinykd build` picks them
# the same way). All ops at opt-level 3 for comparison: see bench/size.txt.
SIZE_MLP := --model $(DEMO_MODEL) --profile release-size --no-default-features \
	--features qemu,messages,op-gemm,op-activation
size: setup
	$(PYTHON) scripts/code_size.py $(SIZE_MLP)

# Optional peer for the training benchmark (never part of `make test`):
# TensorFlow-CPU in its own venv, so bench-train measures it in the same run.
bench-peers:
	@test -x .venv-peers/bin/python || python3 -m venv .venv-peers
	@.venv-peers/bin/pip install -q --disable-pip-version-check -r scripts/requirements-peers.txt
	@echo "bench-peers: TensorFlow-CPU ready in .venv-peers"

# Training throughput, side by side with TensorFlow when bench-peers ran.
bench-train: build
	$(TINYKD) bench-train --write-doc docs/results.md

# Same seed, fast ops vs candle's: full Fashion-MNIST runs (~15 min on 2 cores).
train-parity: build
	python3 scripts/train_parity.py --tinykd $(TINYKD) --out $(BUILD)/parity

clean:
	$(CARGO) clean
	rm -rf $(BUILD)
