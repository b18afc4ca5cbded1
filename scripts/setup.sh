#!/usr/bin/env bash
# Installs everything tinykd needs on a fresh Debian machine. Idempotent: each
# step checks what is already there, so a second run takes seconds.
set -euo pipefail
cd "$(dirname "$0")/.."

DEB_PACKAGES=(
  qemu-user qemu-system-arm qemu-system-misc
  gcc-aarch64-linux-gnu libc6-dev-arm64-cross
  gcc-arm-linux-gnueabihf libc6-dev-armhf-cross
  gcc-riscv64-linux-gnu libc6-dev-riscv64-cross
  dataset-fashion-mnist python3-venv
  fonts-dejavu-core
)
RUST_TARGETS=(
  aarch64-unknown-linux-gnu armv7-unknown-linux-gnueabihf riscv64gc-unknown-linux-gnu
  thumbv7em-none-eabihf riscv32imac-unknown-none-elf aarch64-linux-android
)
PY_REQUIREMENTS=scripts/requirements.txt

sudo_if_needed() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

missing=()
for p in "${DEB_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing Debian packages: ${missing[*]}"
  sudo_if_needed apt-get update -qq
  sudo_if_needed env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

# rust-toolchain.toml pins the toolchain and lists the targets; rustup installs
# them on first use, but doing it here keeps the first cargo call predictable.
installed=$(rustup target list --installed)
for t in "${RUST_TARGETS[@]}"; do
  if ! grep -qx "$t" <<<"$installed"; then
    echo "setup: rustup target add $t"
    timeout 900 rustup target add "$t"
  fi
done
rustup component list --installed | grep -q '^rustfmt' || rustup component add rustfmt clippy

# cbindgen writes the Android target's C header (targets/android/include/tinykd.h).
if ! command -v cbindgen >/dev/null; then
  echo "setup: cargo install cbindgen"
  timeout 1800 cargo install --quiet --locked cbindgen --version 0.29.4
fi

stamp=.venv/.requirements.stamp
if [ ! -x .venv/bin/python ] || ! cmp -s "$PY_REQUIREMENTS" "$stamp"; then
  echo "setup: creating .venv with $(tr '\n' ' ' < "$PY_REQUIREMENTS")"
  python3 -m venv .venv
  .venv/bin/pip install -q --disable-pip-version-check -r "$PY_REQUIREMENTS"
  cp "$PY_REQUIREMENTS" "$stamp"
fi
echo "setup: ok"
