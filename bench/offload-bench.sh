#!/bin/bash
# offload-bench.sh: one device call for the expert store's GPU half (issue 6):
# the GPU tests of the cache, the model loader and the pool (with the older
# GPU tests on small shapes beside them), then bench/offload-bench.c.
#
#   bench/offload-bench.sh pack DIR    here: build, then copy the tests, the
#                                      benchmark, libdmoe.so* and the shared
#                                      libraries they need into DIR (carried)
#   DIR/offload-bench.sh run [STEPS]   on the device, from DIR: logs to $OUT
#
# Phase 1 runs the tests side by side (correctness only); phase 2 runs the
# benchmark alone on the GPU. DMOE_T_TOTAL (default 200 s) bounds the whole.
set -u
if [ "${1:-}" = pack ]; then
  DIR=${2:?pack needs a folder}
  B=${BUILD:-build-cache}
  cmake --build "$B" --target dmoe_shared offload-bench test-cuda-expert-cache test-cuda-store \
    test-cuda-errors test-cuda-ops test-cuda-graph test-cuda-forward | tail -1 || exit 1
  rm -rf "$DIR" && mkdir -p "$DIR"
  cp "$B"/bin/test-cuda-* "$B"/bin/offload-bench "$DIR"/ && cp -P "$B"/lib/libdmoe.so* "$DIR"/
  for lib in $(ldd "$B"/lib/libdmoe.so | awk '/=> \// && /cudart|cjson/ {print $3}'); do cp -L "$lib" "$DIR"/; done
  strip --strip-debug "$DIR"/test-cuda-* "$DIR"/offload-bench "$DIR"/libdmoe.so.* 2>/dev/null
  cp "$0" "$DIR"/offload-bench.sh
  ls "$DIR"; du -sh "$DIR"
  exit 0
fi
[ "${1:-}" = run ] || { echo "usage: $0 pack DIR | run [STEPS]"; exit 2; }
STEPS=${2:-100}
OUT=${OUT:-$PWD/out}
mkdir -p "$OUT"
export LD_LIBRARY_PATH=$PWD:${LD_LIBRARY_PATH:-}
start=$(date +%s)
TOTAL=${DMOE_T_TOTAL:-200}
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem --format=csv,noheader | tee "$OUT/gpu.txt"
# phase 1: tests, side by side
pids=""
for t in test-cuda-expert-cache test-cuda-store; do
  timeout 90 ./$t >"$OUT/$t.log" 2>&1 &
  pids="$pids $!"
done
DMOE_CACHE_INSTALL=stream timeout 90 ./test-cuda-expert-cache >"$OUT/test-cuda-expert-cache-stream.log" 2>&1 &
pids="$pids $!"
for t in test-cuda-errors test-cuda-ops test-cuda-graph test-cuda-forward; do
  DMOE_GPU_TEST_QUICK=1 timeout 90 ./$t >"$OUT/$t-quick.log" 2>&1 &
  pids="$pids $!"
done
rcs=""
for p in $pids; do wait $p; rcs="$rcs $?"; done
echo "tests done after $(( $(date +%s) - start )) s, exit codes:$rcs"
for f in "$OUT"/test-*.log; do
  echo "== $(basename "$f"): $(grep -E 'checks' "$f" | tail -1)"
  grep -E "FAIL|FATAL" "$f" | head -8
done
# phase 2: the benchmark, alone
left=$(( TOTAL - ($(date +%s) - start) ))
if [ $left -gt 20 ]; then
  # installs by the copy kernel overlapped with the GEMM (default), then by the GEMM itself
  for mode in ${MODES:-copy stream}; do
    left=$(( TOTAL - ($(date +%s) - start) ))
    [ $left -lt 20 ] && { echo "offload-bench ($mode): not run (time)"; continue; }
    DMOE_CACHE_INSTALL=$mode timeout $left ./offload-bench "$STEPS" >"$OUT/offload-bench-$mode.txt" 2>&1
    echo "offload-bench ($mode installs) rc=$? after $(( $(date +%s) - start )) s"
    cat "$OUT/offload-bench-$mode.txt"
  done
else
  echo "offload-bench: not run (time)"
fi
