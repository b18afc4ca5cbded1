#!/usr/bin/env bash
# Builds the static library for aarch64-linux-android, regenerates its C
# header, links the C demo against it and runs the demo under QEMU.
#
#   ./run.sh                      # the demo model; fails unless argmax = 9
#   ./run.sh MODEL.onnx INPUT.npy # another model (no expected answer)
#   ./run.sh --check              # as ./run.sh, but fail if include/tinykd.h
#                                 # was stale (for CI; it is rewritten too)
#
# There is no Android NDK here: the archive (no_std, it needs only memcpy,
# memset, memmove, memcmp and abort from the C library) is linked with
# Debian's glibc cross compiler into a static aarch64 Linux program, which
# qemu-aarch64 runs. Needs gcc-aarch64-linux-gnu, qemu-user, the rustup
# target aarch64-linux-android and, to regenerate the header, cbindgen
# (`cargo install cbindgen`); without it the committed header is used.
set -euo pipefail
cd "$(dirname "$0")"

check=0
if [[ ${1:-} == --check ]]; then
    check=1
    shift
fi
demo=0
if [[ $# -eq 0 ]]; then
    set -- ../../models/demo/fashion_mlp.onnx ../../models/demo/sample_0.npy
    demo=1
elif [[ $# -ne 2 ]]; then
    echo "usage: $0 [--check] [MODEL.onnx INPUT.npy]" >&2
    exit 2
fi

target=aarch64-linux-android
cargo build --release --target "$target"
lib=target/$target/release/libtinykd_android.a

header=include/tinykd.h
if command -v cbindgen >/dev/null; then
    if ((check)); then
        cbindgen --quiet --config cbindgen.toml --crate tinykd-android --output "$header" --verify ||
            { echo "$header was stale (cbindgen rewrote it): commit it" >&2; exit 1; }
    else
        cp "$header" "target/tinykd.h.old" 2>/dev/null || true
        cbindgen --quiet --config cbindgen.toml --crate tinykd-android --output "$header"
        cmp -s "$header" target/tinykd.h.old || echo "note: regenerated $header (commit it)"
    fi
else
    echo "note: cbindgen not found; using the committed $header" >&2
fi

aarch64-linux-gnu-gcc -std=c11 -O2 -Wall -Wextra -Werror -static -Iinclude \
    c/main.c "$lib" -o target/tinykd-demo

out=$(timeout 300 qemu-aarch64 target/tinykd-demo "$@")
echo "$out"
if ((demo)) && ! grep -qx 'argmax = 9' <<<"$out"; then
    echo "FAILED: expected argmax = 9 for the demo sample" >&2
    exit 1
fi
