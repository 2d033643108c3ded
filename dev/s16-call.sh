#!/bin/bash
# dev/s16-call.sh: session 16's device call. Carry .cudadev from `bash dev/s15-pack.sh ns4=-DFM_NS=4
# lane0=-DFM_LANE_ARRIVE=0 ring=-DFM_LANE_ARRIVE=2 red=-DFM_LANE_ARRIVE=3` built with FM_NS=3 as the source
# default. 1. the fused GPU tests on FM_NS=3; 2. racecheck of it; 3. the A/B (REPS rounds, alternating);
# 4. the Python suite with torch + transformers (from_hf against the transformers blocks; CPU libdmoe of
# its own), built while the GPU tests run; 5. more sanitizers. A cut call still leaves $OUT/summary.txt.
set -u
. dev/s15-lib.sh
pybuild_bg
t path timeout 40 ./test-cuda-path
t fwd-fused DMOE_PATH=fused timeout 100 ./test-cuda-forward
t graph-fused DMOE_PATH=fused timeout 40 ./test-cuda-graph
t resident DMOE_GPU_TEST_QUICK=1 timeout 60 ./test-cuda-resident
t fwd-rsm1 DMOE_PATH=fused DMOE_CUDA_ROUTER_STREAM_MAX=1 DMOE_GPU_TEST_QUICK=1 timeout 60 ./test-cuda-forward
san rc-path racecheck 60 ./test-cuda-path --quick
wait $PYB
VARIANTS=${VARIANTS:-ns4 lane0 ring red} ab
PYTHONPATH=$PWD/python DMOE_TEST_BACKENDS=cpu-ref,cpu timeout 120 python3 -m pytest -q -p no:cacheprovider \
  python/tests > $OUT/h/pytest.txt 2>&1; echo "pytest rc=$? $(tail -1 $OUT/h/pytest.txt)" >> $S
grep -E "FAILED|Error" $OUT/h/pytest.txt | head -6 >> $S
san sc-path synccheck 60 ./test-cuda-path --quick
san rc-resident racecheck 60 ./test-cuda-resident
SANENV=DMOE_TEST_VARIANT_FROM=4 san rc-fwd-b racecheck ${T_FWD:-150} ./test-cuda-forward
echo "all done $(date +%T)" >> $S
