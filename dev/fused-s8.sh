#!/bin/bash
# dev/fused-s8.sh: the measurement session 8 could not run (no GPU could be started).
#   here:   bash dev/fused-s8.sh build     (harness variants into .cd8/, then bench/gpu-bench.sh pack .cudadev
#                                           with FM_BTK_MAX set in src/cuda/fused-moe.cu if it is to be tested)
#   device: bash dev/fused-s8.sh run       (carry .cd8 and .cudadev; logs under $OUT)
# Variants: f_head = FM_BTK_MAX 0 (the kept kernel), f_bN = route_block for T <= N; t_b3 traced.
set -u
if [ "${1:-}" = build ]; then
  mkdir -p .cd8 && cd dev || exit 1
  B="nvcc -std=c++17 -O3 -gencode=arch=compute_90a,code=sm_90a -I../include -I../src fused-01.cu ../src/status.c ../src/convert.c ../src/routing.c"
  $B -o ../.cd8/f_head & $B -DFM_TRACE -o ../.cd8/t_head &
  for v in 1 2 3 5; do $B -DFM_BTK_MAX=$v -o ../.cd8/f_b$v & done
  $B -DFM_TRACE -DFM_BTK_MAX=3 -o ../.cd8/t_b3 & wait; ls ../.cd8; exit 0
fi
R=$PWD; OUT=${OUT:-$PWD/out}; mkdir -p $OUT/h; cd .cd8 || exit 1
nvidia-smi --query-gpu=name,clocks.sm,clocks.mem --format=csv,noheader > $OUT/gpu.txt
r() { local n=$1; shift; timeout 90 "$@" > $OUT/h/$n.log 2>&1; echo "$n rc=$?" >> $OUT/summary.txt; }
for rep in 1 2; do for b in ${BINS:-f_head f_b1 f_b2 f_b3 f_b5}; do
  FM_FLUSH=1 FM_TOKENS=1,2,3,4,8 FM_REF_MAXT=1 r q_${b}_$rep ./$b
  FM_FLUSH=1 FM_TOKENS=1,2,3,4 FM_REF_MAXT=1 r o_${b}_$rep ./$b 2048 1024 64 8
done; done
for b in t_head t_b3; do FM_FLUSH=1 FM_TOKENS=1,2,3 FM_REF_MAXT=1 r qt_$b ./$b; done
FM_TOKENS=1,2,3,5,40 FM_REF_MAXT=40 r shapes_mixtral ./f_b3 4096 14336 8 2   # route_block shapes:
FM_TOKENS=1,2,3,5 FM_REF_MAXT=5 r shapes_odd ./f_b3 2880 1408 60 6 1 2816   # E 8, 60, 192 (the limit)
FM_TOKENS=1,2,3 FM_REF_MAXT=3 r shapes_e192 ./f_b3 512 256 192 12           # and E=4 K=4 (falls back:
FM_TOKENS=1,2,3 FM_REF_MAXT=3 r shapes_e4 ./f_b3 256 128 4 4                # scratch too small)
cd $OUT/h && for f in q_* o_*; do echo "== $f"; grep -E "^ +[0-9]+ " $f | awk '{print $1, $3, $5, $7}'; done > $OUT/table.txt
for f in qt_* shapes_*; do echo "== $f"; grep -E "^ +[0-9]+ |trace|cycles|plan of|FAIL|PASS" $f | cut -c1-220; done >> $OUT/table.txt
cd $R
[ -z "${NOTESTS:-}" ] && OUT=$OUT/gb DMOE_PREBUILT=$R/.cudadev DMOE_T_TESTS=220 DMOE_T_SAN=150 DMOE_SAN_SPECS="racecheck:fused:test-cuda-path:--quick synccheck:fused:test-cuda-path:--quick memcheck:fused:test-cuda-forward:x:DMOE_TEST_VARIANT_FROM=8" bash bench/gpu-bench.sh tests sanitize > $OUT/tests.txt 2>&1
cd $OUT && tar czf logs.tgz h gb 2>/dev/null; rm -rf h gb
cat table.txt summary.txt; tail -30 tests.txt
