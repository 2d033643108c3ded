#!/bin/bash
# dev/s11-gemmsel.sh: session 11, which grouped GEMM at 64 < rows per expert (the 128x256-tile sm90 kernels,
# what AUTO runs there) vs the swap-AB kernels with 64 / 128 tokens per item, on small-expert layers where
# the tile count is a few waves (granite-3b-like GEMM1 at T=1024: 320 tiles on 132 SMs). Same library,
# DMOE_CUDA_GEMM / DMOE_CUDA_SWAP_N, alternating, twice; gpu_bench.py --peers 0 --paths 0. carry .cudadev.
set -u
OUT=${OUT:-$PWD/out}; mkdir -p $OUT/h
mkdir -p /tmp/b && tar xzf .cudadev/bin.tgz -C /tmp/b
export LD_LIBRARY_PATH=/tmp/b
SH=granite-3b=1536x512x40x8,gptoss-20b=2880x2880x32x4,dsv2-lite=2048x1408x64x6,qwen3-next=2048x512x512x10
P=granite-3b,dsv2-lite,qwen3-next,gptoss-20b,qwen3-30b-a3b,olmoe-1b-7b
gb() { local tag=$1; shift; mkdir -p /tmp/gb_$tag
  env "$@" timeout ${LIM:-70} python3 bench/gpu_bench.py --lib /tmp/b/libdmoe.so --out /tmp/gb_$tag --clean 0 \
    --peers 0 --paths 0 --shapes $SH --presets $P --tokens ${TOK:-256,512,1024,2048} > $OUT/h/gb-$tag.txt 2>&1
  echo "gb $tag rc=$?" >> $OUT/summary.txt; }
for n in 1 2; do
  gb auto$n DMOE_CUDA_GEMM=auto
  gb swap128_$n DMOE_CUDA_GEMM=swap DMOE_CUDA_SWAP_N=128
  gb swap64_$n DMOE_CUDA_GEMM=swap DMOE_CUDA_SWAP_N=64
done
cd $OUT && python3 $OLDPWD/dev/ab-table.py gb > table.txt
tar czf logs.tgz h 2>/dev/null; rm -rf h
cat summary.txt table.txt
