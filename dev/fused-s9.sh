#!/bin/bash
# dev/fused-s9.sh: session 9's device calls.
#   here:   bash dev/fused-s9.sh build   (harness variants into .cd9/; f_head, the kept kernel, is copied from
#                                         .cd8 when present) and bash bench/gpu-bench.sh pack .cudadev
#   device: bash dev/fused-s9.sh run     (carry .cd9 and .cudadev; logs under $OUT)
# Run 2 measured f_s9 (two counter sets + a parity word instead of the exit counter: the exit path 1.2 -> 0.3 us
# but route+arrival 3.0 -> 3.9 us, graph time +1..2.5 us; reverted), f_s9nc (no cooperative attribute: same
# time) and f_pf (prefetch issued inside the top-k rounds: tasks phase -3.9 us, select +1700 cycles).
# Run 3: f_pf2 = FM_PREFETCH_FIRST=1 (the publisher warp prefetches the first task once its pick is in).
set -u
if [ "${1:-}" = build ]; then
  mkdir -p .cd9 && cd dev || exit 1
  [ -x ../.cd8/f_head ] && cp ../.cd8/f_head ../.cd9/
  B="nvcc -std=c++17 -O3 -gencode=arch=compute_90a,code=sm_90a -I../include -I../src fused-01.cu ../src/status.c ../src/convert.c ../src/routing.c"
  $B -DFM_PREFETCH_FIRST=1 -o ../.cd9/f_pf2 & $B -DFM_PREFETCH_FIRST=1 -DFM_TRACE -o ../.cd9/t_pf2 &
  $B -DFM_PREFETCH_FIRST=0 -DFM_TRACE -o ../.cd9/t_head & wait; ls ../.cd9; exit 0
fi
R=$PWD; OUT=${OUT:-$PWD/out}; mkdir -p $OUT/h
cd .cd9 || exit 1
nvidia-smi --query-gpu=name,clocks.sm,clocks.mem --format=csv,noheader > $OUT/gpu.txt
r() { local n=$1; shift; timeout 90 "$@" > $OUT/h/$n.log 2>&1; echo "$n rc=$?" >> $OUT/summary.txt; }
if [ -z "${NOHARNESS:-}" ]; then
for rep in 1 2; do for b in ${BINS:-f_head f_pf2}; do
  [ -x $b ] || continue
  FM_FLUSH=1 FM_TOKENS=1,2,4,8 FM_REF_MAXT=1 r q_${b}_$rep ./$b
  FM_FLUSH=1 FM_TOKENS=1,2 FM_REF_MAXT=1 r o_${b}_$rep ./$b 2048 1024 64 8
done; done
FM_FLUSH=1 FM_TOKENS=1 FM_REF_MAXT=1 r qt_t_head ./t_head
FM_FLUSH=1 FM_TOKENS=1 FM_REF_MAXT=1 r qt_t_pf2 ./t_pf2
FM_TOKENS=1,2 FM_REF_MAXT=2 r shapes_pf2_mixtral ./f_pf2 4096 14336 8 2
FM_TOKENS=1,2 FM_REF_MAXT=2 r shapes_pf2_odd ./f_pf2 2880 1408 60 6 1 2816
FM_TOKENS=1,2 FM_REF_MAXT=2 r shapes_pf2_e192 ./f_pf2 512 256 192 12
FM_TOKENS=1,2 FM_REF_MAXT=2 r shapes_pf2_e4 ./f_pf2 256 128 4 4
cd $OUT/h && for f in q_* o_*; do echo "== $f"; grep -E "^ +[0-9]+ " $f | awk '{print $1, $3, $5, $7}'; done > $OUT/table.txt
for f in qt_* shapes_*; do echo "== $f"; grep -E "^ +[0-9]+ |trace|cycles|plan of|entry|FAIL|PASS" $f | cut -c1-220; done >> $OUT/table.txt
fi
cd $R
[ -z "${NOTESTS:-}" ] && OUT=$OUT/gb DMOE_PREBUILT=$R/.cudadev DMOE_T_TESTS=220 DMOE_T_SAN=150 DMOE_SAN_SPECS="racecheck:fused:test-cuda-path:--quick synccheck:fused:test-cuda-path:--quick memcheck:fused:test-cuda-forward:x:DMOE_TEST_VARIANT_FROM=8 synccheck:fused:test-cuda-resident:--quick" bash bench/gpu-bench.sh tests sanitize > $OUT/tests.txt 2>&1
if [ -z "${NOSWEEP:-}" ]; then
  mkdir -p /tmp/sw && tar xzf .cudadev/bin.tgz -C /tmp/sw
  LD_LIBRARY_PATH=/tmp/sw timeout 60 /tmp/sw/dmoe check --backend cuda --seed 1571729768 --hidden 1040 --ffn 24 --experts 674 \
    --topk 1 --shared 1 --shared-ffn 840 --no-renorm --tokens 4,16,17 --dtype bf16 > $OUT/sweep-repeat.txt 2>&1
  echo "sweep-repeat rc=$?" >> $OUT/summary.txt
  LD_LIBRARY_PATH=/tmp/sw timeout ${SWEEP_S:-280} python3 bench/shape-sweep.py --dmoe /tmp/sw/dmoe --backend cuda --cuda-limits \
    --paths ${SWEEP_PATHS:-auto,fused,staged} --n ${SWEEP_N:-60} --seed ${SWEEP_SEED:-9} --time-limit $(( ${SWEEP_S:-280} - 40 )) > $OUT/sweep.txt 2>&1
  echo "sweep rc=$?" >> $OUT/summary.txt
fi
cd $OUT && tar czf logs.tgz h gb 2>/dev/null; rm -rf h gb
cat table.txt summary.txt 2>/dev/null; tail -22 tests.txt 2>/dev/null; grep -E "FAIL|PASS" sweep-repeat.txt 2>/dev/null | cut -c1-200
grep -E "^FAIL|^summary|repeat" sweep.txt 2>/dev/null | head -30
