#!/bin/bash
# dev/fused-s9.sh: session 9's device call.
#   here:   bash dev/fused-s9.sh build   (harness variants into .cd9/; the kept kernel's f_head comes from
#                                         .cd8 when present) and bash bench/gpu-bench.sh pack .cudadev
#   device: bash dev/fused-s9.sh run     (carry .cd8, .cd9, .cudadev; logs under $OUT)
# Variants: f_head = before session 9 (exit counter), f_s9 = two counter sets + parity (no exit wait),
# f_s9nc = the same launched without the cooperative attribute; t_s9 traced.
# Then the GPU tests + sanitizers and a random-shape sweep (bench/shape-sweep.py) on auto/fused/staged.
set -u
if [ "${1:-}" = build ]; then
  mkdir -p .cd9 && cd dev || exit 1
  B="nvcc -std=c++17 -O3 -gencode=arch=compute_90a,code=sm_90a -I../include -I../src fused-01.cu ../src/status.c ../src/convert.c ../src/routing.c"
  $B -o ../.cd9/f_s9 & $B -DFM_NONCOOP -o ../.cd9/f_s9nc & $B -DFM_TRACE -o ../.cd9/t_s9 & wait; ls ../.cd9; exit 0
fi
R=$PWD; OUT=${OUT:-$PWD/out}; mkdir -p $OUT/h
[ -x .cd8/f_head ] && cp .cd8/f_head .cd9/
cd .cd9 || exit 1
nvidia-smi --query-gpu=name,clocks.sm,clocks.mem --format=csv,noheader > $OUT/gpu.txt
r() { local n=$1; shift; timeout 90 "$@" > $OUT/h/$n.log 2>&1; echo "$n rc=$?" >> $OUT/summary.txt; }
if [ -z "${NOHARNESS:-}" ]; then
for rep in 1 2; do for b in ${BINS:-f_head f_s9 f_s9nc}; do
  [ -x $b ] || continue
  FM_FLUSH=1 FM_TOKENS=1,2,3,4,8 FM_REF_MAXT=1 r q_${b}_$rep ./$b
  FM_FLUSH=1 FM_TOKENS=1,2,4 FM_REF_MAXT=1 r o_${b}_$rep ./$b 2048 1024 64 8
done; done
FM_FLUSH=1 FM_TOKENS=1,2,4 FM_REF_MAXT=1 r qt_t_s9 ./t_s9
FM_TOKENS=1,2,3,5,40 FM_REF_MAXT=40 r shapes_mixtral ./f_s9 4096 14336 8 2
FM_TOKENS=1,2,3,5,64 FM_REF_MAXT=64 r shapes_odd ./f_s9 2880 1408 60 6 1 2816
FM_TOKENS=1,2,3,17 FM_REF_MAXT=17 r shapes_e192 ./f_s9 512 256 192 12
FM_TOKENS=1,2,3 FM_REF_MAXT=3 r shapes_e4 ./f_s9 256 128 4 4
cd $OUT/h && for f in q_* o_*; do echo "== $f"; grep -E "^ +[0-9]+ " $f | awk '{print $1, $3, $5, $7}'; done > $OUT/table.txt
for f in qt_* shapes_*; do echo "== $f"; grep -E "^ +[0-9]+ |trace|cycles|plan of|entry|FAIL|PASS" $f | cut -c1-220; done >> $OUT/table.txt
fi
cd $R
[ -z "${NOTESTS:-}" ] && OUT=$OUT/gb DMOE_PREBUILT=$R/.cudadev DMOE_T_TESTS=220 DMOE_T_SAN=150 DMOE_SAN_SPECS="racecheck:fused:test-cuda-path:--quick synccheck:fused:test-cuda-path:--quick memcheck:fused:test-cuda-forward:x:DMOE_TEST_VARIANT_FROM=8 synccheck:fused:test-cuda-resident:--quick" bash bench/gpu-bench.sh tests sanitize > $OUT/tests.txt 2>&1
if [ -z "${NOSWEEP:-}" ]; then
  mkdir -p /tmp/sw && tar xzf .cudadev/bin.tgz -C /tmp/sw
  LD_LIBRARY_PATH=/tmp/sw timeout ${SWEEP_S:-280} python3 bench/shape-sweep.py --dmoe /tmp/sw/dmoe --backend cuda --cuda-limits \
    --paths auto,fused,staged --n ${SWEEP_N:-60} --seed ${SWEEP_SEED:-9} --time-limit $(( ${SWEEP_S:-280} - 40 )) > $OUT/sweep.txt 2>&1
  echo "sweep rc=$?" >> $OUT/summary.txt
fi
cd $OUT && tar czf logs.tgz h gb 2>/dev/null; rm -rf h gb
cat table.txt summary.txt 2>/dev/null; tail -22 tests.txt 2>/dev/null; grep -E "^FAIL|^summary|repeat" sweep.txt 2>/dev/null | head -30
