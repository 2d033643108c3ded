#!/usr/bin/env bash
# Builds the safetensors fuzzer with clang (libFuzzer + ASan + UBSan) and runs
# it for SECONDS (default 60) over a copy of the seed corpus. Prints libFuzzer's
# execution count; exits non-zero on any crash. Usage: run-fuzz.sh [SECONDS] [BUILD_DIR]
set -euo pipefail
secs=${1:-60}
root=$(cd "$(dirname "$0")/../.." && pwd)
out=${2:-$root/build-fuzz}
mkdir -p "$out/corpus"
clang -g -O1 -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined \
  -I"$root/include" -I"$root/src" -D_GNU_SOURCE \
  "$root/tests/fuzz/fuzz-safetensors.c" "$root/src/store/safetensors.c" "$root/src/status.c" \
  -lcjson -o "$out/fuzz-safetensors"
cp -n "$root"/tests/fuzz/corpus/* "$out/corpus/" 2>/dev/null || true
"$out/fuzz-safetensors" -max_total_time="$secs" -max_len=4096 -print_final_stats=1 \
  "$out/corpus" 2>&1 | grep -E 'stat::number_of_executed_units|Done|ERROR|SUMMARY|crash' || true
test "${PIPESTATUS[0]}" -eq 0
