#!/bin/bash
# dev/final-s10.sh: session 10's last device call (carry .cudadev, packed from main): test-cuda-forward with the
# back-to-back forwards on a created stream (PDL), on the default path and forced staged / fused, then staged against
# fused at T=2 and 4 with the new staged path (gpu_bench.py --clean 0) to re-check AUTO's T <= 4 rule.
set -u
OUT=${OUT:-$PWD/out}; mkdir -p $OUT/h /tmp/b /tmp/gbf && tar xzf .cudadev/bin.tgz -C /tmp/b; export LD_LIBRARY_PATH=/tmp/b
for p in default staged fused; do
  e=""; [ $p != default ] && e="DMOE_PATH=$p"
  env $e timeout 150 /tmp/b/test-cuda-forward > $OUT/h/fwd-$p.txt 2>&1; echo "forward $p rc=$? $(tail -1 $OUT/h/fwd-$p.txt)" >> $OUT/summary.txt
done
DMOE_LIB=/tmp/b/libdmoe.so timeout 150 python3 bench/gpu_bench.py --out /tmp/gbf --clean 0 --presets qwen3-30b-a3b,olmoe-1b-7b \
  --tokens 2,4 > $OUT/h/gb.txt 2>&1; echo "gb rc=$?" >> $OUT/summary.txt
cd $OUT && grep -E "^[a-z0-9-]+ +[0-9]+ |paths" h/gb.txt | cut -c1-200 > table.txt; grep -h "created stream" h/fwd-*.txt | head -5 >> table.txt
tar czf logs.tgz h; rm -rf h; cat summary.txt table.txt
