#!/bin/bash
# dev/s14-all.sh: both session-14 device calls in one (devices were scarce): dev/s14-call1.sh's racecheck probe and
# A/B (SHORT=1: without its own tests), then dev/s14-call2.sh's owed tests and sanitizers in the time left of LIMIT s.
set -u
OUT=${OUT:-$PWD/out}; LIMIT=${LIMIT:-560}; t0=$(date +%s)
OUT=$OUT/c1 SHORT=1 timeout 360 bash dev/s14-call1.sh
left=$((LIMIT - ($(date +%s) - t0) - 15))
echo "call1 took $(( $(date +%s) - t0 )) s, $left s left" > $OUT/time.txt
[ $left -gt 100 ] && OUT=$OUT/c2 T_TESTS=$((left * 55 / 100)) T_SAN=$((left * 40 / 100)) timeout $left bash dev/s14-call2.sh
cat $OUT/time.txt
