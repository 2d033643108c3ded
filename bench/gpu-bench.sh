#!/bin/bash
# gpu-bench.sh: one device call for the cuda backend: GPU tests, a
# compute-sanitizer pass on small shapes, and the benchmark against PyTorch.
#
#   bench/gpu-bench.sh [tests] [sanitize] [bench]     (default: all three)
#   bench/gpu-bench.sh pack [DIR]    here, before the call: build, then copy the
#                                    GPU tests, libdmoe.so* and the shared
#                                    libraries they need (cudart, cjson) into
#                                    DIR (default .cudadev, git-ignored) to
#                                    carry: the device then compiles nothing.
#
# Binaries: prebuilt ones in $DMOE_PREBUILT (a folder made by `pack`), else a
# fresh build in build-cuda. Logs, bench.json and bench.png go to $OUT (default
# ./gpu-bench-out). Stage time limits: DMOE_T_TESTS, DMOE_T_SAN, DMOE_T_BENCH
# (seconds). The last lines printed are the summary.
set -u
if [ "${1:-}" = pack ]; then
  DIR=${2:-.cudadev}
  cmake -S . -B build-cuda -G Ninja >/dev/null && cmake --build build-cuda | tail -1 || exit 1
  rm -rf "$DIR" && mkdir -p "$DIR"
  cp build-cuda/bin/test-cuda-* "$DIR"/ && cp -P build-cuda/lib/libdmoe.so* "$DIR"/
  for lib in $(ldd build-cuda/lib/libdmoe.so | awk '/=> \// && /cudart|cjson/ {print $3}'); do cp -L "$lib" "$DIR"/; done
  ls "$DIR"; du -sh "$DIR"
  exit 0
fi
OUT=${OUT:-$PWD/gpu-bench-out}
mkdir -p "$OUT"
STAGES=${*:-tests sanitize bench}
T_TESTS=${DMOE_T_TESTS:-300}
T_SAN=${DMOE_T_SAN:-120}
T_BENCH=${DMOE_T_BENCH:-300}

if [ -n "${DMOE_PREBUILT:-}" ] && [ -x "$DMOE_PREBUILT/test-cuda-ops" ]; then
  BIN=$DMOE_PREBUILT
  LIB=$DMOE_PREBUILT
else
  cmake -S . -B build-cuda -G Ninja -DCMAKE_BUILD_TYPE=Release >"$OUT/build.log" 2>&1 &&
    cmake --build build-cuda >>"$OUT/build.log" 2>&1 || { tail -30 "$OUT/build.log"; exit 1; }
  BIN=build-cuda/bin
  LIB=build-cuda/lib
fi
export LD_LIBRARY_PATH=$LIB:${LD_LIBRARY_PATH:-}
SUMMARY=""
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem --format=csv,noheader | tee "$OUT/gpu.txt"

for stage in $STAGES; do
  case $stage in
  tests)
    start=$(date +%s)
    # name[:path]: the forward and graph tests run again through the fused kernel
    for spec in test-cuda-errors test-cuda-ops test-cuda-forward test-cuda-graph \
                test-cuda-forward:fused test-cuda-graph:fused; do
      t=${spec%%:*}
      path=staged
      [ "$spec" != "$t" ] && path=${spec#*:}
      log="$OUT/$t-$path.log"
      left=$((T_TESTS - ($(date +%s) - start)))
      [ $left -lt 5 ] && { SUMMARY="$SUMMARY\n$spec: not run (time)"; continue; }
      DMOE_PATH=$path timeout $left "$BIN/$t" >"$log" 2>&1
      rc=$?
      grep -E "FAIL|FATAL|checks|SKIPPED" "$log" | tail -12
      SUMMARY="$SUMMARY\n$spec: rc=$rc $(grep -E 'checks' "$log" | tail -1)"
    done
    ;;
  sanitize)
    start=$(date +%s)
    for tool in memcheck racecheck; do
      left=$((T_SAN - ($(date +%s) - start)))
      [ $left -lt 10 ] && { SUMMARY="$SUMMARY\nsanitizer $tool: not run (time)"; continue; }
      DMOE_GPU_TEST_QUICK=1 timeout $left compute-sanitizer --tool $tool --error-exitcode 9 \
        "$BIN/test-cuda-forward" >"$OUT/san-$tool.log" 2>&1
      rc=$?
      SUMMARY="$SUMMARY\nsanitizer $tool (test-cuda-forward quick): rc=$rc $(grep -E 'ERROR SUMMARY|RACECHECK SUMMARY' "$OUT/san-$tool.log" | tail -1)"
    done
    ;;
  bench)
    DMOE_PRINT_CONFIG=1 DMOE_LIB=$LIB/libdmoe.so PYTHONUNBUFFERED=1 timeout $T_BENCH python3 bench/gpu_bench.py \
      --out "$OUT" --time-limit $((T_BENCH - 25)) 2>&1 | tee "$OUT/bench.txt" | tail -40
    SUMMARY="$SUMMARY\nbench: rc=${PIPESTATUS[0]}"
    mkdir -p "$OUT/fused"
    DMOE_PATH=fused DMOE_LIB=$LIB/libdmoe.so PYTHONUNBUFFERED=1 timeout ${DMOE_T_FUSED:-60} python3 bench/gpu_bench.py \
      --out "$OUT/fused" --tokens 1,16 --time-limit 40 2>&1 | tee "$OUT/bench-fused.txt" | tail -14
    SUMMARY="$SUMMARY\nbench fused (T=1,16): rc=${PIPESTATUS[0]}"
    ;;
  esac
done
echo "=== summary"
printf "$SUMMARY\n"
