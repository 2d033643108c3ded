#!/bin/bash
# dev/s15-call.sh: session 15's second device call (carry .cudadev from `bash dev/s15-pack.sh`). 1: the decode cells
# of the source defaults (new) against old / lane0 / ns3 / ns2, REPS rounds alternating; 2: racecheck and synccheck of
# the fused kernel beyond test-cuda-path: the resident kernel and test-cuda-forward's routing variants (fused path).
set -u
. dev/s15-lib.sh
VARIANTS=${VARIANTS:-lane0 ns3 old ns2} REPS=${REPS:-3} ab
san rc-resident racecheck ${T_RES:-110} ./test-cuda-resident
SANENV=DMOE_TEST_VARIANT_TO=4 san rc-fwd-a racecheck ${T_FWD:-130} ./test-cuda-forward
SANENV=DMOE_TEST_VARIANT_FROM=4 san rc-fwd-b racecheck ${T_FWD:-130} ./test-cuda-forward
san sc-resident synccheck 60 ./test-cuda-resident
san rc-graph racecheck 60 ./test-cuda-graph
echo "all done $(date +%T)" >> $S
cat $S
tar czf $OUT/s15.tgz -C $OUT h && rm -rf $OUT/h
