#!/bin/bash
# dev/fused-s10b.sh: session 10's second device call (carry .cd9 and .cudadev): main with the first-appearance
# segments (f_main, SASS identical to f_fo of dev/fused-s10.sh) against f_pf2 (session 9's kernel), three
# repetitions at T <= 4; the GPU tests and compute-sanitizer on the packed tree (the fused kernel at T=3, where the
# new grouping and prefetch run); the backend bench with the PyTorch peers.
# Here first: (cd dev && nvcc -std=c++17 -O3 -gencode=arch=compute_90a,code=sm_90a -I../include -I../src fused-01.cu
#   ../src/status.c ../src/convert.c ../src/routing.c -o ../.cd9/f_main), the same from a checkout of 936a753 into
#   .cd9/f_pf2, and bash bench/gpu-bench.sh pack .cudadev.
set -u
R=$PWD; OUT=${OUT:-$PWD/out}; mkdir -p $OUT/h
nvidia-smi --query-gpu=name,clocks.sm,clocks.mem --format=csv,noheader > $OUT/gpu.txt
cd .cd9 || exit 1
r() { local n=$1; shift; timeout 60 "$@" > $OUT/h/$n.log 2>&1; echo "$n rc=$?" >> $OUT/summary.txt; }
for rep in 1 2 3; do for b in f_pf2 f_main; do
  FM_FLUSH=1 FM_TOKENS=1,2,3,4 FM_REF_MAXT=1 r q_${b}_$rep ./$b
  FM_FLUSH=1 FM_TOKENS=1,2,4 FM_REF_MAXT=1 r o_${b}_$rep ./$b 2048 1024 64 8
done; done
cd $OUT/h && for f in q_* o_*; do echo "== $f"; grep -E "^ +[0-9]+ " $f | awk '{print $1, $3, $5, $7}'; done > $OUT/table.txt
cd $R
OUT=$OUT/gb DMOE_PREBUILT=$R/.cudadev DMOE_T_TESTS=200 DMOE_T_SAN=200 DMOE_T_SAN_EACH=100 DMOE_SAN_SPECS="racecheck:fused:test-cuda-forward:x:DMOE_TEST_VARIANT_TO=3 synccheck:fused:test-cuda-forward:x:DMOE_TEST_VARIANT_TO=6 memcheck:fused:test-cuda-forward:x:DMOE_TEST_VARIANT_TO=6 racecheck:fused:test-cuda-path:--quick" \
  DMOE_BENCH_TOKENS=1,2,4,8,16 DMOE_T_BENCH=200 bash bench/gpu-bench.sh tests sanitize > $OUT/tests.txt 2>&1
DMOE_PRINT_CONFIG=1 DMOE_LIB=/tmp/dmoe-prebuilt/libdmoe.so LD_LIBRARY_PATH=/tmp/dmoe-prebuilt PYTHONUNBUFFERED=1 timeout 200 \
  python3 bench/gpu_bench.py --out $OUT --presets qwen3-30b-a3b,olmoe-1b-7b --tokens 1,2,4,8,16 --clean 0 --time-limit 170 2>&1 |
  grep -v "^dmoe" > $OUT/bench.txt
echo "bench rc=${PIPESTATUS[0]}" >> $OUT/summary.txt
cd $OUT && tar czf logs.tgz h gb 2>/dev/null; rm -rf h gb
cat table.txt summary.txt; tail -32 tests.txt; cat bench.txt
