#!/bin/bash
# dev/s12-call3.sh: session 12, dev/s12-call2.sh cut to the device time left: GPU tests (ops: the table plan and
# the workspace guard, swap64; forward; path; graph), the table plan off / on and AUTO against forced sm90 / swap64
# (one repetition each), ncu of the plan kernels. carry .cudadev.
set -u
OUT=${OUT:-$PWD/out}; mkdir -p $OUT/h
mkdir -p /tmp/b && tar xzf .cudadev/bin.tgz -C /tmp/b
export LD_LIBRARY_PATH=/tmp/b
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem --format=csv,noheader > $OUT/gpu.txt
t() { local tag=$1; shift; ( cd /tmp/b && env "$@" > $OUT/h/t-$tag.txt 2>&1; echo "test $tag rc=$?" ) >> $OUT/summary.txt
  grep -E "FAIL|checks" $OUT/h/t-$tag.txt | tail -4 >> $OUT/summary.txt; }
t ops DMOE_CUDA_PLAN_TABLE=1 timeout 60 ./test-cuda-ops
t fwd DMOE_CUDA_PLAN_TABLE=1 timeout 90 ./test-cuda-forward
t path timeout 40 ./test-cuda-path
t graph timeout 40 ./test-cuda-graph
gp() { local tag=$1; shift; mkdir -p /tmp/gp_$tag
  env "$@" timeout 45 python3 bench/gpu_bench.py --lib /tmp/b/libdmoe.so --out /tmp/gp_$tag --clean 0 \
    --peers 0 --paths 0 --shapes granite-3b=1536x512x40x8 --presets granite-3b,qwen3-30b-a3b,olmoe-1b-7b \
    --tokens ${TOK:-64,128,256,384,1024,2048} > $OUT/h/gp-$tag.txt 2>&1
  echo "gp $tag rc=$?" >> $OUT/summary.txt; }
gp notable DMOE_CUDA_PLAN_TABLE=0
gp table DMOE_CUDA_PLAN_TABLE=1
gp sm90 DMOE_CUDA_GEMM=sm90 DMOE_CUDA_PLAN_TABLE=1
cd $OUT && python3 $OLDPWD/dev/ab-table.py gp > table.txt
tar czf logs.tgz h 2>/dev/null; rm -rf h
cd - >/dev/null && COUNT=7 OUT=$OUT timeout 40 bash dev/s12-prof.sh > /dev/null 2>&1
cd $OUT && cat summary.txt table.txt prof/ncu.txt
