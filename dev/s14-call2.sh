#!/bin/bash
# dev/s14-call2.sh: session 14's second device call: the GPU runs owed since session 13 on this library (every GPU
# test, test-cuda-ops with the table plan off, the sanitizers), from the .cudadev of dev/s14-call1.sh.
set -u
OUT=${OUT:-$PWD/out}; mkdir -p $OUT
R=$PWD; B=/tmp/b; mkdir -p $B && tar xzf .cudadev/bin.tgz -C $B
S=$OUT/summary.txt
( cd $B && DMOE_CUDA_PLAN_TABLE=0 LD_LIBRARY_PATH=$B timeout 60 ./test-cuda-ops > $OUT/ops-notable.txt 2>&1
  echo "ops table off rc=$? $(grep -E 'checks' $OUT/ops-notable.txt | tail -1)" ) >> $S
OUT=$OUT/gb DMOE_PREBUILT=$R/.cudadev DMOE_T_TESTS=${T_TESTS:-280} DMOE_T_SAN=${T_SAN:-220} DMOE_T_SAN_EACH=60 \
  bash bench/gpu-bench.sh tests sanitize > $OUT/tests.txt 2>&1
echo "gpu-bench rc=$?" >> $S; tail -40 $OUT/tests.txt >> $S
echo "all done $(date +%T)" >> $S
