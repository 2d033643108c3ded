#!/usr/bin/env bash
# run.sh: build dmoe, check every available backend against the cpu-ref
# oracle, then benchmark one Qwen3-30B-A3B MoE layer on the default backend
# (the GPU when there is one, else the CPU). Without a GPU the layer is shrunk
# 4x (32 of its 128 experts, 302 MB of bf16 weights) to fit a small machine.
# Extra arguments go to `dmoe bench` (e.g. ./run.sh --tokens 1,16,128,512).
set -euo pipefail
cd "$(dirname "$0")"

# On a fresh Debian/Ubuntu machine, install what is missing (scripts/deps.sh).
. scripts/deps.sh
dmoe_deps_system
generator=()
if command -v ninja >/dev/null 2>&1; then generator=(-G Ninja); fi

cmake -S . -B build "${generator[@]}" -DCMAKE_BUILD_TYPE=Release
cmake --build build -j "${JOBS:-$(nproc)}"

build/bin/dmoe info
build/bin/dmoe check
scale=4
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then scale=1; fi
build/bin/dmoe bench --preset qwen3-30b-a3b --scale "$scale" "$@"
