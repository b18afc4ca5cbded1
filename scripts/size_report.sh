#!/usr/bin/env bash
# Builds the Cortex-M4 firmware (targets/cortex-m4) and prints its section
# sizes and how much of its .text the runtime accounts for.
#
# Needs the rustup component llvm-tools (`rustup component add llvm-tools`).
# Usage: scripts/size_report.sh [N]   (N: how many of the runtime's largest
# functions to list; default 10)
set -euo pipefail

top=${1:-10}
root=$(cd "$(dirname "$0")/.." && pwd)
fw="$root/targets/cortex-m4"

host=$(rustc -vV | sed -n 's/^host: //p')
tools="$(rustc --print sysroot)/lib/rustlib/$host/bin"
if [[ ! -x "$tools/llvm-size" ]]; then
    echo "size_report: $tools/llvm-size not found; run: rustup component add llvm-tools" >&2
    exit 1
fi

# Ask cargo where the ELF is, so CARGO_TARGET_DIR is honoured.
# The firmware itself (the crate also builds the `kernels` self-test).
elf=$(cd "$fw" && cargo build --release --quiet --bin tinykd-cortex-m4 --message-format=json-render-diagnostics |
    sed -n 's/.*"executable":"\([^"]*\/tinykd-cortex-m4\)".*/\1/p' | tail -n 1)
[[ -n "$elf" && -f "$elf" ]] || { echo "size_report: no firmware ELF from cargo" >&2; exit 1; }

echo "== sections ($(basename "$elf"), thumbv7em-none-eabihf) =="
"$tools/llvm-size" -A -d "$elf" | awk '
    $1 ~ /^\.(vector_table|text|rodata|data|bss|uninit)$/ {
        printf "%-14s %9d\n", $1, $2; s[$1] = $2
    }
    END {
        flash = s[".vector_table"] + s[".text"] + s[".rodata"] + s[".data"]
        ram = s[".data"] + s[".bss"] + s[".uninit"]
        printf "flash total    %9d  (.vector_table + .text + .rodata + .data)\n", flash
        printf "static RAM     %9d  (.data + .bss + .uninit; the stack comes on top)\n", ram
    }'
text=$("$tools/llvm-size" -A -d "$elf" | awk '$1 == ".text" { print $2 }')

# 1. By symbol: a function is the runtime's when its (v0-demangled) name
#    names tinykd_runtime, generic instances for its types included. Runtime
#    code that LTO inlined into the firmware's own functions counts as firmware.
echo
echo "== .text by symbol owner =="
"$tools/llvm-nm" --print-size --demangle --defined-only -t d "$elf" | awk -v text="$text" -v top="$top" '
    NF >= 4 && $3 ~ /^[tT]$/ {
        size = $2 + 0
        name = $0; sub(/^[^ ]+ [^ ]+ [^ ]+ /, "", name)
        if (name ~ /tinykd_runtime/) { owner = "runtime"; rt[name] += size }
        else if (name ~ /tinykd_cortex_m4/) owner = "firmware"
        else if (name ~ /(^|[^a-z_])libm::/) owner = "libm (runtime dep)"
        else if (name ~ /heapless/) owner = "heapless (runtime dep)"
        else if (name ~ /cortex_m/) owner = "cortex-m crates"
        else owner = "core, compiler-builtins"
        by[owner] += size; named += size
    }
    END {
        n = split("runtime|heapless (runtime dep)|libm (runtime dep)|core, compiler-builtins|cortex-m crates|firmware", order, "|")
        for (i = 1; i <= n; i++) printf "%-26s %8d  %5.1f%%\n", order[i], by[order[i]], 100 * by[order[i]] / text
        printf "%-26s %8d  %5.1f%%\n", "(no symbol: padding)", text - named, 100 * (text - named) / text
        printf "runtime .text share: %d of %d bytes (%.1f%%); with heapless + libm: %d (%.1f%%)\n",
            by["runtime"], text, 100 * by["runtime"] / text,
            by["runtime"] + by["heapless (runtime dep)"] + by["libm (runtime dep)"],
            100 * (by["runtime"] + by["heapless (runtime dep)"] + by["libm (runtime dep)"]) / text
        if (top > 0) {
            printf "largest runtime functions:\n"
            for (k = 0; k < top; k++) {
                best = ""; bs = -1
                for (f in rt) if (rt[f] > bs) { bs = rt[f]; best = f }
                if (best == "") break
                printf "  %7d  %s\n", bs, substr(best, 1, 110); delete rt[best]
            }
        }
    }'

# 2. By source line (inline-aware): each instruction is charged to the file
#    of its innermost DWARF line entry, so runtime code inlined into the
#    firmware counts as runtime, while core iterator/slice code inlined into
#    runtime kernels counts as core. The two methods bracket the runtime's size.
echo
echo "== .text by source file of each instruction (DWARF line table) =="
"$tools/llvm-objdump" -d -l -j .text "$elf" | awk -v text="$text" '
    /^; \// {
        path = $2
        if (path ~ /\/runtime\/src\//) cur = "runtime"
        else if (path ~ /\/targets\/cortex-m4\//) cur = "firmware"
        else if (path ~ /\/libm-/) cur = "libm (runtime dep)"
        else if (path ~ /\/heapless-/) cur = "heapless (runtime dep)"
        else if (path ~ /\/cortex-m/) cur = "cortex-m crates"
        else if (path ~ /\/library\//) cur = "core, compiler-builtins"
        else cur = "other"
        next
    }
    /^[0-9a-f]+ </ { cur = "(no line info)"; next }
    /^ +[0-9a-f]+:\t?/ {
        split($0, f, "\t"); raw = f[1]; sub(/^ +[0-9a-f]+: */, "", raw); gsub(/ /, "", raw)
        by[cur] += length(raw) / 2
    }
    END {
        n = split("runtime|heapless (runtime dep)|libm (runtime dep)|core, compiler-builtins|cortex-m crates|firmware|other|(no line info)", order, "|")
        for (i = 1; i <= n; i++) if (by[order[i]] > 0) printf "%-26s %8d  %5.1f%%\n", order[i], by[order[i]], 100 * by[order[i]] / text
    }'
