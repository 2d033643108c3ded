#!/bin/bash
# dev/s12-call1.sh: session 12: the route kernel's plan (router.cu PLAN 1 / 2).
#  1. GPU tests: forward (full grid: T = 127 takes PLAN 1, T = 1100 the mma logits + PLAN 2), ops (plan
#     leaves its histogram zero), path, graph, expert-cache, resident.
#  2. A/B in one library: DMOE_CUDA_ROUTE_PLAN=0 (plan.cu's kernels) / 1, alternating, twice;
#     gpu_bench.py --peers 0 --paths 0 (staged at T >= 64). carry .cudadev.
set -u
OUT=${OUT:-$PWD/out}; mkdir -p $OUT/h
mkdir -p /tmp/b && tar xzf .cudadev/bin.tgz -C /tmp/b
export LD_LIBRARY_PATH=/tmp/b
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem --format=csv,noheader > $OUT/gpu.txt
t() { local tag=$1; shift; ( cd /tmp/b && env "$@" > $OUT/h/t-$tag.txt 2>&1; echo "test $tag rc=$?" ) >> $OUT/summary.txt
  grep -E "FAIL|checks" $OUT/h/t-$tag.txt | tail -4 >> $OUT/summary.txt; }
t ops timeout 60 ./test-cuda-ops
t fwd timeout 200 ./test-cuda-forward
t path timeout 60 ./test-cuda-path
t graph timeout 60 ./test-cuda-graph
t cache timeout 60 ./test-cuda-expert-cache
t resident timeout 90 ./test-cuda-resident
t fwd-noplan DMOE_CUDA_ROUTE_PLAN=0 DMOE_GPU_TEST_QUICK=1 timeout 60 ./test-cuda-forward
DMOE_PRINT_CONFIG=1 /tmp/b/dmoe bench --backend cuda --reps 2 --warmup 1 --preset qwen3-30b-a3b --tokens 2048 2>&1 | grep "dmoe cuda" | head -2 >> $OUT/summary.txt
DMOE_PRINT_CONFIG=1 /tmp/b/dmoe bench --backend cuda --reps 2 --warmup 1 --preset qwen3-30b-a3b --tokens 128 2>&1 | grep "dmoe cuda" | head -2 >> $OUT/summary.txt
SH=granite-3b=1536x512x40x8,gptoss-20b=2880x2880x32x4,dsv2-lite=2048x1408x64x6,qwen3-next=2048x512x512x10
P=granite-3b,dsv2-lite,qwen3-next,gptoss-20b,qwen3-30b-a3b,olmoe-1b-7b
gb() { local tag=$1; shift; mkdir -p /tmp/gb_$tag
  env "$@" timeout ${LIM:-70} python3 bench/gpu_bench.py --lib /tmp/b/libdmoe.so --out /tmp/gb_$tag --clean 0 \
    --peers 0 --paths 0 --shapes $SH --presets $P --tokens ${TOK:-64,128,256,512,1024,2048,4096} > $OUT/h/gb-$tag.txt 2>&1
  echo "gb $tag rc=$?" >> $OUT/summary.txt; }
for n in 1 2; do
  gb noplan$n DMOE_CUDA_ROUTE_PLAN=0
  gb plan$n DMOE_CUDA_ROUTE_PLAN=1
done
cd $OUT && python3 $OLDPWD/dev/ab-table.py gb > table.txt
tar czf logs.tgz h 2>/dev/null; rm -rf h
cat summary.txt table.txt
