#!/bin/sh
# Cargo runner for a real board over ssh (see the commented `runner` lines in
# .cargo/config.toml): copies the binary and every argument that names an
# existing local file to a folder on the board, then runs the binary there
# with those arguments pointing at the copies. Files the program writes (e.g.
# `--out y.npy`) stay on the board, in that folder: fetch them with scp.
#
#   TINYKD_PI=pi@raspberrypi.local cargo run --release --target aarch64-unknown-linux-gnu -- \
#       ../../models/demo/fashion_mlp.onnx ../../models/demo/sample_0.npy
#
# TINYKD_PI: the board, as ssh names it (user@host, or a Host from
# ~/.ssh/config). TINYKD_PI_DIR: the folder on it (default /tmp/tinykd).
# Set up key-based login first (ssh-copy-id), or ssh asks for the password
# on every file.
set -eu
host=${TINYKD_PI:?set TINYKD_PI=user@host, the board to run on}
dir=${TINYKD_PI_DIR:-/tmp/tinykd}

# One argument, quoted for the remote shell.
quote() { printf "'%s'" "$(printf '%s' "$1" | sed "s/'/'\\\\''/g")"; }

bin=$1
shift
ssh "$host" "mkdir -p $(quote "$dir")"
scp -q "$bin" "$host:$dir/"
cmd="cd $(quote "$dir") && ./$(quote "$(basename "$bin")")"
for arg in "$@"; do
    if [ -f "$arg" ]; then
        scp -q "$arg" "$host:$dir/"
        arg=$(basename "$arg")
    fi
    cmd="$cmd $(quote "$arg")"
done
exec ssh "$host" "$cmd"
