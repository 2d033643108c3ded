#!/bin/bash
# dev/s18-call.sh: session 18's short device call (what is owed, by priority), carrying .cudadev from
# `bash dev/s15-pack.sh lane0=-DFM_LANE_ARRIVE=0`: 1. the fused GPU tests and the full test-cuda-resident
# (orphan reaping, gate race); 2. gpu_bench.py with the torch peers at qwen3 / olmoe T=1, 16 (staged and fused
# columns); 3. the Python suite with torch + transformers; 4. racecheck of test-cuda-graph on the fused path if time
# is left. Each stage is skipped once LIMIT seconds have passed.
set -u
START=$(date +%s); LIMIT=${LIMIT:-360}
left() { echo $(( LIMIT - ($(date +%s) - START) )); }
. dev/s15-lib.sh
pybuild_bg
t resident timeout 100 ./test-cuda-resident
grep -E "orphan|one batch|destroy:|at once|reaped|SKIPPED|gate race" $OUT/h/t-resident.txt | cut -c1-250 >> $S
t path timeout 30 ./test-cuda-path
t fwd-fused DMOE_PATH=fused DMOE_GPU_TEST_QUICK=1 timeout 50 ./test-cuda-forward
t graph-fused DMOE_PATH=fused timeout 30 ./test-cuda-graph
if [ $(left) -gt 100 ]; then
  timeout $(( $(left) - 60 )) python3 bench/gpu_bench.py --lib $B/libdmoe.so --out $OUT/peers --clean 0 \
    --presets qwen3-30b-a3b,olmoe-1b-7b --tokens 1,16 > $OUT/h/peers.txt 2>&1; echo "peers rc=$? $(date +%T)" >> $S
  grep -E '^[a-z0-9-]+ +[0-9]+ |torch|best' $OUT/h/peers.txt | head -30 >> $S
fi
wait $PYB
L=$(( $(left) - 10 )); if [ $L -gt 20 ]; then
  [ $L -gt 60 ] && { san rc-graph racecheck $(( L - 5 )) ./test-cuda-graph & }
  PYTHONPATH=$PWD/python DMOE_TEST_BACKENDS=cpu-ref,cpu timeout $L python3 -m pytest -q -p no:cacheprovider \
    python/tests > $OUT/h/pytest.txt 2>&1; echo "pytest rc=$? $(tail -1 $OUT/h/pytest.txt)" >> $S
  grep -E "FAILED|Error" $OUT/h/pytest.txt | head -8 >> $S
fi
wait
echo "all done $(date +%T)" >> $S
cd $OUT && tar czf logs.tgz h peers 2>/dev/null; rm -rf $OUT/h $OUT/peers; cat $S
