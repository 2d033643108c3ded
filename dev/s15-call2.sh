#!/bin/bash
# dev/s15-call2.sh: session 15's third device call (not run: no device time left). With FM_NS=3 as the source
# default, carry .cudadev from `bash dev/s15-pack.sh ns4=-DFM_NS=4 lane0=-DFM_LANE_ARRIVE=0 ring=-DFM_LANE_ARRIVE=2
# red=-DFM_LANE_ARRIVE=3`: the new defaults through the fused GPU tests and racecheck / synccheck, and where the
# every-lane releases cost (ring / red variants). ~330 s; a cut call still leaves $OUT/summary.txt.
set -u
. dev/s15-lib.sh
# 1. correctness of the new defaults
t path timeout 40 ./test-cuda-path
t fwd-fused DMOE_PATH=fused timeout 100 ./test-cuda-forward
t graph-fused DMOE_PATH=fused timeout 40 ./test-cuda-graph
t resident DMOE_GPU_TEST_QUICK=1 timeout 60 ./test-cuda-resident
# 2. racecheck of the new defaults, 3. cost: new against ns4 / lane0 / ring / red, alternating, 4. more sanitizers
san rc-path racecheck 60 ./test-cuda-path --quick
VARIANTS=${VARIANTS:-ns4 lane0 ring red} ab
san sc-path synccheck 60 ./test-cuda-path --quick
san rc-resident racecheck 60 ./test-cuda-resident
SANENV=DMOE_TEST_VARIANT_FROM=4 san rc-fwd-b racecheck ${T_FWD:-150} ./test-cuda-forward
echo "all done $(date +%T)" >> $S
tar czf $OUT/s15b.tgz -C $OUT h && rm -rf $OUT/h
