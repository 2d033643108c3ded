#!/bin/bash
# gpu-bench.sh: one device call for the cuda backend: GPU tests, a
# compute-sanitizer pass on small shapes, and the benchmark against PyTorch.
#
#   bench/gpu-bench.sh [tests] [bench] [resident] [sanitize] [offload] [model]
#                                    (default: the first four, in that order)
#     offload: bench/offload-bench.c (GPU expert cache, Zipf routing, 25/50% of
#              the experts cached; DMOE_OFFLOAD_STEPS steps, default 100)
#     model:   dmoe synth of a small qwen3_moe directory, then dmoe bench --model
#              on it, whole and offloaded (--offload 8, also with --miss-policy auto)
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
  # offload-example needs the store (cJSON): copied when it was built
  cp build-cuda/bin/test-cuda-* build-cuda/bin/resident-bench build-cuda/bin/offload-bench build-cuda/bin/dmoe \
     "$DIR"/ && cp -P build-cuda/lib/libdmoe.so* "$DIR"/ || exit 1
  [ -x build-cuda/bin/offload-example ] && cp build-cuda/bin/offload-example "$DIR"/
  strip -g "$DIR"/test-cuda-* "$DIR"/resident-bench "$DIR"/offload-bench "$DIR"/dmoe "$DIR"/offload-example \
    "$DIR"/libdmoe.so.* 2>/dev/null
  for lib in $(ldd build-cuda/lib/libdmoe.so | awk '/=> \// && /cudart|cjson/ {print $3}'); do cp -L "$lib" "$DIR"/; done
  # statically linked tests are ~7 MB each: carry them compressed (the device's
  # working-tree limit is 64 MiB); the run unpacks bin.tgz when it finds one
  tar czf /tmp/dmoe-bin.tgz -C "$DIR" . && rm -rf "$DIR" && mkdir -p "$DIR" && mv /tmp/dmoe-bin.tgz "$DIR/bin.tgz"
  ls "$DIR"; du -sh "$DIR"
  exit 0
fi
OUT=${OUT:-$PWD/gpu-bench-out}
LOGS=$OUT/logs   # tarred into $OUT/logs.tgz at the end (the device returns at most 8 files)
mkdir -p "$LOGS"
STAGES=${*:-tests bench resident sanitize}
T_TESTS=${DMOE_T_TESTS:-300}
T_SAN=${DMOE_T_SAN:-120}
T_BENCH=${DMOE_T_BENCH:-300}

if [ -n "${DMOE_PREBUILT:-}" ] && [ -f "$DMOE_PREBUILT/bin.tgz" ]; then
  mkdir -p /tmp/dmoe-prebuilt && tar xzf "$DMOE_PREBUILT/bin.tgz" -C /tmp/dmoe-prebuilt || exit 1
  DMOE_PREBUILT=/tmp/dmoe-prebuilt
fi
if [ -n "${DMOE_PREBUILT:-}" ] && [ -x "$DMOE_PREBUILT/test-cuda-ops" ]; then
  BIN=$DMOE_PREBUILT
  LIB=$DMOE_PREBUILT
else
  cmake -S . -B build-cuda -G Ninja -DCMAKE_BUILD_TYPE=Release >"$LOGS/build.log" 2>&1 &&
    cmake --build build-cuda >>"$LOGS/build.log" 2>&1 || { tail -30 "$LOGS/build.log"; exit 1; }
  BIN=build-cuda/bin
  LIB=build-cuda/lib
fi
export LD_LIBRARY_PATH=$LIB:${LD_LIBRARY_PATH:-}
SUMMARY=""
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem --format=csv,noheader | tee "$LOGS/gpu.txt"

for stage in $STAGES; do
  case $stage in
  tests)
    start=$(date +%s)
    # every GPU test on the default path (DMOE_PATH unset: the heuristic), then
    # name:path: the forward and graph tests forced through each path (quick grid
    # unless DMOE_FORCED_QUICK=0)
    for spec in $(cd "$BIN" && ls test-cuda-*) test-cuda-forward:staged test-cuda-graph:staged \
                test-cuda-forward:fused test-cuda-graph:fused; do
      t=${spec%%:*}
      path=default
      [ "$spec" != "$t" ] && path=${spec#*:}
      log="$LOGS/$t-$path.log"
      left=$((T_TESTS - ($(date +%s) - start)))
      [ $left -lt 5 ] && { SUMMARY="$SUMMARY\n$spec: not run (time)"; continue; }
      if [ $path = default ]; then
        (unset DMOE_PATH; timeout $left "$BIN/$t" >"$log" 2>&1)
      else
        DMOE_PATH=$path DMOE_GPU_TEST_QUICK=${DMOE_FORCED_QUICK:-1} timeout $left "$BIN/$t" >"$log" 2>&1
      fi
      rc=$?
      grep -E "FAIL|FATAL|checks|SKIPPED" "$log" | tail -12
      SUMMARY="$SUMMARY\n$spec: rc=$rc $(grep -E 'checks' "$log" | tail -1)"
    done
    ;;
  sanitize)
    start=$(date +%s)
    # tool:path:test[:arg[:VAR=value,...]], quick grids; each run capped at DMOE_T_SAN_EACH seconds.
    # Fused kernel: test-cuda-path --quick runs only fused forwards (T=1, 37; two
    # shapes), test-cuda-resident the resident kernel, test-cuda-forward's first
    # routing variants the fused path (racecheck 0 hazards since session 15).
    # Staged kernels: test-cuda-ops covers the plan and the stream, mma,
    # swap-AB and 128x256 wgmma GEMMs; test-cuda-forward the router, the combine
    # and the whole path (in two parts of the routing variants for racecheck).
    specs=${DMOE_SAN_SPECS:-"racecheck:fused:test-cuda-path:--quick synccheck:fused:test-cuda-path:--quick
      memcheck:fused:test-cuda-path:--quick racecheck:fused:test-cuda-resident synccheck:fused:test-cuda-resident
      racecheck:fused:test-cuda-forward:x:DMOE_TEST_VARIANT_TO=4 memcheck:staged:test-cuda-expert-cache racecheck:staged:test-cuda-expert-cache
      memcheck:staged:test-cuda-ops racecheck:staged:test-cuda-ops memcheck:staged:test-cuda-forward
      racecheck:staged:test-cuda-forward:x:DMOE_TEST_VARIANT_TO=4
      racecheck:staged:test-cuda-forward:x:DMOE_TEST_VARIANT_FROM=4 synccheck:staged:test-cuda-forward"}
    for spec in $specs; do
      IFS=: read -r tool path tst arg envs <<<"$spec"
      [ "$arg" = x ] && arg=""   # a placeholder when only envs are given
      left=$((T_SAN - ($(date +%s) - start)))
      each=${DMOE_T_SAN_EACH:-120}
      [ $left -lt $each ] && each=$left
      [ $each -lt 10 ] && { SUMMARY="$SUMMARY\nsanitizer $spec: not run (time)"; continue; }
      log="$LOGS/san-$tool-$path-$tst${envs:+-${envs//[=,]/-}}.log"
      # racecheck's cost grows with the blocks launched: persistent grids sized for 8 SMs
      sms=""
      [ $tool = racecheck ] && sms=${DMOE_SAN_SMS:-8}
      env ${envs//,/ } DMOE_CUDA_SMS=$sms DMOE_PATH=$path DMOE_GPU_TEST_QUICK=1 timeout $each \
        compute-sanitizer --tool $tool --error-exitcode 9 "$BIN/$tst" $arg >"$log" 2>&1
      rc=$?
      SUMMARY="$SUMMARY\nsanitizer $tool $path ($tst $arg quick): rc=$rc $(grep -E 'ERROR SUMMARY|RACECHECK SUMMARY|SYNCCHECK SUMMARY' "$log" | tail -1)"
    done
    ;;
  bench)
    DMOE_PRINT_CONFIG=1 DMOE_LIB=$LIB/libdmoe.so PYTHONUNBUFFERED=1 timeout $T_BENCH python3 bench/gpu_bench.py \
      --out "$OUT" --tokens ${DMOE_BENCH_TOKENS:-1,4,16,128,512,2048,8192} --time-limit $((T_BENCH - 25)) 2>&1 |
      tee "$OUT/bench.txt" | grep -v "^dmoe" | tail -60
    SUMMARY="$SUMMARY\nbench: rc=${PIPESTATUS[0]}"
    ;;
  offload)
    timeout ${DMOE_T_OFFLOAD:-200} "$BIN/offload-bench" ${DMOE_OFFLOAD_STEPS:-100} >"$LOGS/offload-bench.txt" 2>&1
    SUMMARY="$SUMMARY\noffload-bench: rc=$?"
    grep -v "^dmoe" "$LOGS/offload-bench.txt" | tail -30
    ;;
  model)
    m=/tmp/dmoe-synth-qwen3
    rm -rf $m && "$BIN/dmoe" synth $m --arch qwen3_moe >"$LOGS/model.txt" 2>&1
    for args in "" "--offload 8" "--offload 8 --miss-policy auto"; do
      timeout 120 "$BIN/dmoe" bench --backend cuda --model $m --tokens 1,16 --reps 5 $args >>"$LOGS/model.txt" 2>&1
      SUMMARY="$SUMMARY\ndmoe bench --model $args: rc=$?"
    done
    for pol in gpu cpu auto; do  # examples/offload.c on its own synthetic model
      timeout 120 "$BIN/offload-example" "" 8 $pol >>"$LOGS/model.txt" 2>&1
      SUMMARY="$SUMMARY\noffload-example ($pol): rc=$?"
    done
    tail -20 "$LOGS/model.txt"
    ;;
  resident)
    # resident serving mode beside the graph-replayed fused forward (qwen3-30b-a3b layer)
    timeout ${DMOE_T_RESIDENT:-60} "$BIN/resident-bench" 2048 768 128 8 --batches 10000 >"$LOGS/resident-bench.txt" 2>&1
    SUMMARY="$SUMMARY\nresident-bench: rc=$?"
    tail -8 "$LOGS/resident-bench.txt"
    ;;
  esac
done
echo "=== summary"
printf "$SUMMARY\n" | tee "$LOGS/summary.txt"
tar czf "$OUT/logs.tgz" -C "$OUT" logs && rm -rf "$LOGS"
