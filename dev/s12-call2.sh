#!/bin/bash
# dev/s12-call2.sh: session 12, the wave-fill rule (heuristics.cu: swap-AB with 64 rows an item at
# 64 < m <= 128 when the 128x256 tiles fill their last wave badly). GPU tests (ops: swap64 case and the
# plan workspace guard; forward; path), then auto / DMOE_CUDA_GEMM=sm90 / swap64 alternating, twice,
# on shapes on both sides of the rule; the table plan (plan.cu) off / on. carry .cudadev.
set -u
OUT=${OUT:-$PWD/out}; mkdir -p $OUT/h
mkdir -p /tmp/b && tar xzf .cudadev/bin.tgz -C /tmp/b
export LD_LIBRARY_PATH=/tmp/b
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem --format=csv,noheader > $OUT/gpu.txt
t() { local tag=$1; shift; ( cd /tmp/b && env "$@" > $OUT/h/t-$tag.txt 2>&1; echo "test $tag rc=$?" ) >> $OUT/summary.txt
  grep -E "FAIL|checks" $OUT/h/t-$tag.txt | tail -4 >> $OUT/summary.txt; }
t ops timeout 90 ./test-cuda-ops
t fwd timeout 200 ./test-cuda-forward
t path timeout 60 ./test-cuda-path
t graph timeout 60 ./test-cuda-graph
for s in "1536 512 40 8 256" "1024 512 36 8 256" "2048 512 80 8 640"; do set -- $s
  DMOE_PRINT_CONFIG=1 /tmp/b/dmoe bench --backend cuda --reps 2 --warmup 1 --hidden $1 --ffn $2 --experts $3 --topk $4 --tokens $5 2>&1 | grep "dmoe cuda: T=" | head -1 >> $OUT/summary.txt
done
SH=granite-3b=1536x512x40x8,e36=1024x512x36x8,e80=2048x512x80x8,e24=4096x512x24x4,e16=4096x1024x16x2
P=granite-3b,e36,e80,e24,e16,olmoe-1b-7b,gptoss-20b
SH=$SH,gptoss-20b=2880x2880x32x4
gb() { local tag=$1; shift; mkdir -p /tmp/gb_$tag
  env "$@" timeout ${LIM:-70} python3 bench/gpu_bench.py --lib /tmp/b/libdmoe.so --out /tmp/gb_$tag --clean 0 \
    --peers 0 --paths 0 --shapes $SH --presets $P --tokens ${TOK:-256,320,384,512,640} > $OUT/h/gb-$tag.txt 2>&1
  echo "gb $tag rc=$?" >> $OUT/summary.txt; }
for n in 1 2; do
  gb auto$n DMOE_CUDA_GEMM=auto
  gb sm90_$n DMOE_CUDA_GEMM=sm90
  gb swap64_$n DMOE_CUDA_GEMM=swap DMOE_CUDA_SWAP_N=64
done
# the table plan (plan.cu) off / on, staged, T = 64..2048 on the presets
P2=granite-3b,dsv2-lite,qwen3-next,qwen3-30b-a3b,olmoe-1b-7b,gptoss-20b
SH2=granite-3b=1536x512x40x8,gptoss-20b=2880x2880x32x4,dsv2-lite=2048x1408x64x6,qwen3-next=2048x512x512x10
gp() { local tag=$1; shift; mkdir -p /tmp/gp_$tag
  env "$@" timeout ${LIM:-70} python3 bench/gpu_bench.py --lib /tmp/b/libdmoe.so --out /tmp/gp_$tag --clean 0 \
    --peers 0 --paths 0 --shapes $SH2 --presets $P2 --tokens 64,128,256,512,1024,2048 > $OUT/h/gp-$tag.txt 2>&1
  echo "gp $tag rc=$?" >> $OUT/summary.txt; }
for n in 1 2; do
  gp notable$n DMOE_CUDA_PLAN_TABLE=0
  gp table$n DMOE_CUDA_PLAN_TABLE=1
done
cd $OUT && python3 $OLDPWD/dev/ab-table.py gb gp > table.txt
tar czf logs.tgz h 2>/dev/null; rm -rf h
cd - >/dev/null && OUT=$OUT bash dev/s12-prof.sh > /dev/null 2>&1
cd $OUT && cat summary.txt table.txt prof/ncu.txt
