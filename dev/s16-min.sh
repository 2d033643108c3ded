#!/bin/bash
# dev/s16-min.sh: the shortest useful device call of session 16 (~2-3 min, for a nearly spent budget): the
# fused GPU tests on the source defaults in .cudadev/bin.tgz (FM_NS=3) and racecheck of test-cuda-path.
set -u
. dev/s15-lib.sh
t path timeout 30 ./test-cuda-path
t fwd-fused DMOE_PATH=fused DMOE_GPU_TEST_QUICK=1 timeout 50 ./test-cuda-forward
t graph-fused DMOE_PATH=fused timeout 30 ./test-cuda-graph
t resident DMOE_GPU_TEST_QUICK=1 timeout 40 ./test-cuda-resident
san rc-path racecheck 45 ./test-cuda-path --quick
echo "all done $(date +%T)" >> $S
