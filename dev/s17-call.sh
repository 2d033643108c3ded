#!/bin/bash
# dev/s17-call.sh: session 17's device call. Carry .cudadev from `bash dev/s15-pack.sh lane0=-DFM_LANE_ARRIVE=0`
# plus .cudadev/h/f_{new,lane0,trace,lane0trace}.gz (dev/fused-01.cu built with the source defaults, lane-0
# releases, each also with FM_TRACE). In order, each stage skipped once LIMIT seconds have passed:
#  1. the fused GPU tests on HEAD; 2. the A/B new / lane0 through gpu_bench.py (2 rounds);
#  3. the traced harness (qwen3 T=1, olmoe T=1) for both; 4. ncu stall reasons of both at qwen3 T=1;
#  5. gpu_bench.py with the torch peers (qwen3 / olmoe, T 1, 4, 16; staged and fused columns);
#  6. racecheck (fused path, in parallel parts) of test-cuda-forward's routing variants from 4 and of
#  test-cuda-graph, while the Python suite with torch + transformers and a random-shape sweep (new seed) run.
set -u
START=$(date +%s); LIMIT=${LIMIT:-480}
left() { echo $(( LIMIT - ($(date +%s) - START) )); }
. dev/s15-lib.sh
mkdir -p /tmp/h && for f in .cudadev/h/*.gz; do gunzip -c $f > /tmp/h/$(basename ${f%.gz}); chmod +x /tmp/h/$(basename ${f%.gz}); done
pybuild_bg
# 1
t path timeout 30 ./test-cuda-path
t fwd-fused DMOE_PATH=fused DMOE_GPU_TEST_QUICK=1 timeout 50 ./test-cuda-forward
t graph-fused DMOE_PATH=fused timeout 30 ./test-cuda-graph
t resident timeout 150 ./test-cuda-resident; grep -E "orphan|destroy:|at once|reaped|SKIPPED" $OUT/h/t-resident.txt | cut -c1-250 >> $S
# 2
REPS=2 VARIANTS=lane0 ab
# 3
for v in trace lane0trace; do
  FM_FLUSH=1 FM_TOKENS=1,4 FM_REF_MAXT=4 timeout 40 /tmp/h/f_$v > $OUT/h/hq-$v.txt 2>&1; echo "harness qwen3 $v rc=$? $(date +%T)" >> $S
  FM_FLUSH=1 FM_TOKENS=1 FM_REF_MAXT=1 timeout 40 /tmp/h/f_$v 2048 1024 64 8 > $OUT/h/ho-$v.txt 2>&1; echo "harness olmoe $v rc=$? $(date +%T)" >> $S
  grep -E '^ +[0-9]+ |trace|block 0|entry' $OUT/h/hq-$v.txt $OUT/h/ho-$v.txt | cut -c1-260 >> $S
done
# 4
NCU=/usr/local/cuda/bin/ncu; [ -x $NCU ] || NCU=ncu
for v in new lane0; do
  [ $(left) -gt 200 ] || break
  FM_TOKENS=1 FM_REF_MAXT=1 timeout 120 $NCU --clock-control none -k regex:fused_moe --launch-skip 20 --launch-count 1 \
    --section WarpStateStats --section SchedulerStats --section SourceCounters --section MemoryWorkloadAnalysis \
    --section SpeedOfLight -o $OUT/h/ncu-$v /tmp/h/f_$v > $OUT/h/ncu-$v.log 2>&1; echo "ncu $v rc=$? $(date +%T)" >> $S
  $NCU -i $OUT/h/ncu-$v.ncu-rep --page details > $OUT/h/ncu-$v-details.txt 2>&1
  $NCU -i $OUT/h/ncu-$v.ncu-rep --page source --csv --print-source sass > $OUT/h/ncu-$v-sass.csv 2>$OUT/h/ncu-$v-sass.err
  $NCU -i $OUT/h/ncu-$v.ncu-rep --page raw --csv > $OUT/h/ncu-$v-raw.csv 2>&1
  grep -iE 'Stall|Warp Cycles|Issued|Duration|Throughput' $OUT/h/ncu-$v-details.txt | head -40 >> $S
done
# 5
if [ $(left) -gt 150 ]; then
  timeout 150 python3 bench/gpu_bench.py --lib $B/libdmoe.so --out $OUT/peers --clean 0 --presets qwen3-30b-a3b,olmoe-1b-7b \
    --tokens 1,4,16 > $OUT/h/peers.txt 2>&1; echo "peers rc=$? $(date +%T)" >> $S
  grep -E '^[a-z0-9-]+ +[0-9]+ ' $OUT/h/peers.txt | head -20 >> $S
fi
# 6-8: racecheck in parallel parts (timing-insensitive work only from here): test-cuda-forward's routing
# variants from 4 on the fused path, and test-cuda-graph on it; meanwhile pytest and the shape sweep
R=$(( $(left) - 20 )); [ $R -gt 240 ] && R=240
if [ $R -gt 40 ]; then
  SANENV="DMOE_TEST_VARIANT_FROM=4 DMOE_TEST_VARIANT_TO=7" san rc-fwd-4 racecheck $R ./test-cuda-forward &
  SANENV="DMOE_TEST_VARIANT_FROM=7 DMOE_TEST_VARIANT_TO=8" san rc-fwd-7 racecheck $R ./test-cuda-forward &
  SANENV="DMOE_TEST_VARIANT_FROM=8 DMOE_TEST_VARIANT_TO=10" san rc-fwd-8 racecheck $R ./test-cuda-forward &
  SANENV="DMOE_TEST_VARIANT_FROM=10" san rc-fwd-10 racecheck $R ./test-cuda-forward &
  san rc-graph racecheck $R ./test-cuda-graph &
fi
wait $PYB
PYTHONPATH=$PWD/python DMOE_TEST_BACKENDS=cpu-ref,cpu timeout 150 python3 -m pytest -q -p no:cacheprovider \
  python/tests > $OUT/h/pytest.txt 2>&1; echo "pytest rc=$? $(tail -1 $OUT/h/pytest.txt)" >> $S
grep -E "FAILED|Error" $OUT/h/pytest.txt | head -8 >> $S
L=$(( $(left) - 30 )); if [ $L -gt 30 ]; then
  timeout $L python3 bench/shape-sweep.py --dmoe $B/dmoe --backend cuda --cuda-limits --paths auto,fused,staged --n 40 \
    --seed 1717 --time-limit $(( L - 20 )) > $OUT/h/sweep.txt 2>&1; echo "sweep rc=$? $(tail -1 $OUT/h/sweep.txt)" >> $S
  grep -E "FAIL" $OUT/h/sweep.txt | head -6 >> $S
fi
wait
echo "all done $(date +%T)" >> $S
rm -f $OUT/h/*.ncu-rep; cd $OUT && tar czf logs.tgz h ab.txt peers 2>/dev/null; rm -rf $OUT/h $OUT/peers; cat $S
