#!/bin/bash
# dev/s14-all.sh: both session-14 device calls in one (devices were scarce): dev/s14-call1.sh's racecheck probe and
# A/B (SHORT=1: without its own tests), then dev/s14-call2.sh's owed tests and sanitizers in the time left of LIMIT s.
set -u
OUT=${OUT:-$PWD/out}; LIMIT=${LIMIT:-560}; t0=$(date +%s)
# a step killed by an outer timeout leaves its inner timeout's child running (a new process group): kill those
reap() { pkill -f compute-sanitizer; pkill -f gpu_bench.py; pkill -f "/tmp/b/test-cuda"; sleep 1; }
OUT=$OUT/c1 SHORT=1 timeout 360 bash dev/s14-call1.sh; reap
left=$((LIMIT - ($(date +%s) - t0) - 20))
echo "call1 took $(( $(date +%s) - t0 )) s, $left s left" > $OUT/time.txt
# call2: test-cuda-ops with the table off (up to 60 s) first, then the tests and the sanitizers in what is left
[ $left -gt 160 ] && OUT=$OUT/c2 T_TESTS=$(((left - 60) * 55 / 100)) T_SAN=$(((left - 60) * 40 / 100)) \
  timeout $left bash dev/s14-call2.sh
reap
# the device returns only a few files: the summaries on stdout, everything else in one archive
cat $OUT/time.txt $OUT/c1/summary.txt $OUT/c2/summary.txt 2>/dev/null
tar czf $OUT/s14.tgz -C $OUT c1 c2 time.txt 2>/dev/null && rm -rf $OUT/c1 $OUT/c2
