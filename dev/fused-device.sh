#!/bin/bash
# dev/fused-device.sh: one device call for the fused kernel work (run from the
# carry folder, binaries prebuilt here: f_* harness variants of dev/fused-01.cu,
# test-cuda-forward/graph, libdmoe.so). Stages: harness, tests, race, bench.
# Logs under $OUT; the last lines are a summary.
set -u
OUT=${OUT:-$PWD/out}
mkdir -p "$OUT"
export LD_LIBRARY_PATH=$PWD:${LD_LIBRARY_PATH:-}
STAGES=${*:-harness tests race bench}
nvidia-smi --query-gpu=name,clocks.sm,clocks.mem,temperature.gpu --format=csv,noheader | tee "$OUT/gpu.txt"
run() { # name timeout cmd...
  local name=$1 t=$2; shift 2
  local s=$(date +%s%N)
  timeout $t "$@" > "$OUT/$name.log" 2>&1
  local rc=$?
  printf "%-28s rc=%d %dms\n" "$name" $rc $(( ($(date +%s%N) - s) / 1000000 )) | tee -a "$OUT/summary.txt"
}
for st in $STAGES; do case $st in
harness)
  run qwen_def_trace 60 ./f_def_trace
  [ -n "${OLD:-}" ] && FM_TOKENS=1,16 run qwen_old 40 ./f_old
  for v in ${VARIANTS-f_def f_kc1024 f_kc256ns8 f_noevict f_ns5nr3}; do
    FM_TOKENS=1,16 FM_REF_MAXT=1 run qwen_$v 40 ./$v
  done
  FM_TOKENS=1,16 run olmoe_def_trace 40 ./f_def_trace 2048 1024 64 8
  [ -n "${OLD:-}" ] && FM_TOKENS=1,16 FM_REF_MAXT=1 run olmoe_old 40 ./f_old 2048 1024 64 8
  [ -z "${SHORT:-}" ] && FM_TOKENS=1,3,16,64 FM_REF_MAXT=16 run odd_def_trace 60 ./f_def_trace 2880 1408 60 6 1 2816
  [ -z "${SHORT:-}" ] && FM_TOKENS=1,16 FM_REF_MAXT=1 run mixtral_def_trace 60 ./f_def_trace 4096 14336 8 2
  [ -n "${OLD:-}" ] && FM_TOKENS=1,16 FM_REF_MAXT=1 run mixtral_old 60 ./f_old 4096 14336 8 2
  ;;
tests)
  DMOE_PATH=fused run test-forward-fused 150 ./test-cuda-forward
  DMOE_PATH=fused run test-graph-fused 100 ./test-cuda-graph
  ;;
race)
  DMOE_PATH=fused DMOE_GPU_TEST_QUICK=1 run racecheck-fused 150 compute-sanitizer --tool racecheck --error-exitcode 9 ./test-cuda-forward
  ;;
bench)
  PYTHONUNBUFFERED=1 run bench 200 python3 ../bench/gpu_bench.py --lib $PWD/libdmoe.so --out "$OUT" \
    --presets ${PRESETS:-qwen3-30b-a3b,olmoe-1b-7b,mixtral-8x7b,deepseek-v3} --tokens 1,16 --time-limit 170
  ;;
esac; done
tar czf "$OUT/logs.tgz" -C "$OUT" $(cd "$OUT" && ls *.log) 2>/dev/null
echo "=== harness lines"
for f in "$OUT"/*.log; do
  case $f in *test-*|*race*|*bench*) continue;; esac
  echo "-- $(basename $f .log)"; grep -E "^ +[0-9]+ |trace|FAIL|rror|empty" "$f" | cut -c1-160
done
echo "=== tests"
grep -hE "checks|FAIL" "$OUT"/test-*.log 2>/dev/null | tail -8
grep -hE "SUMMARY" "$OUT"/racecheck*.log 2>/dev/null | tail -3
grep -hE "Race reported" "$OUT"/racecheck*.log 2>/dev/null | sed 's/(const dmoe[^)]*)//g' | cut -c1-200 | sort | uniq -c | head
grep -hE "paths|^qwen|^olmoe|^mixtral|^deepseek" "$OUT"/bench.log 2>/dev/null | tail -20
cat "$OUT/summary.txt"
rm -f "$OUT"/*.log
