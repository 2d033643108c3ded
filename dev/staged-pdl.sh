#!/bin/bash
# dev/staged-pdl.sh: session 10's fourth device call (carry .cudadev = this tree packed, .cudaold = the previous
# libdmoe.so.0.1.0 alone). The staged path's changes: the router's partial logits summed with 32 loads in flight,
# the combine with 8 pairs' loads in flight, the router letting the next kernel launch early, the swap-AB GEMMs
# launched with PDL (GEMM2 sends its first stages' weight boxes before waiting for GEMM1).
# GPU tests + compute-sanitizer on the staged kernels, ncu per-kernel times at qwen3 T=8, then old / new / old / new
# backend benches (write flush) on the cells the staged path runs.
set -u
R=$PWD; OUT=${OUT:-$PWD/out}; mkdir -p $OUT/h
mkdir -p /tmp/b /tmp/old && tar xzf .cudadev/bin.tgz -C /tmp/b && cp -a /tmp/b/. /tmp/old/ && cp .cudaold/libdmoe.so.0.1.0 /tmp/old/
# run 4 (first call): STAGES="tests sanitize", sanitizer specs synccheck / memcheck / racecheck staged test-cuda-ops,
# memcheck staged test-cuda-forward variants 0-5; run 5: racecheck staged test-cuda-forward (router, plan, combine)
OUT=$OUT/gb DMOE_PREBUILT=$R/.cudadev DMOE_T_TESTS=200 DMOE_T_SAN=170 DMOE_T_SAN_EACH=120 \
  DMOE_SAN_SPECS=${SPECS:-"racecheck:staged:test-cuda-forward:x:DMOE_TEST_VARIANT_TO=4"} \
  bash bench/gpu-bench.sh ${STAGES:-sanitize} > $OUT/tests.txt 2>&1
[ -z "${NONCU:-}" ] && for v in old b; do
  DMOE_PATH=staged LD_LIBRARY_PATH=/tmp/$v timeout 100 ncu --metrics gpu__time_duration.sum --launch-count 40 /tmp/$v/dmoe bench \
    --backend cuda --preset qwen3-30b-a3b --tokens 8 --reps 3 --warmup 1 > $OUT/h/ncu-$v.txt 2>&1
  echo "ncu $v rc=$?" >> $OUT/summary.txt
done
gb() { local v=$1 n=$2; shift 2; mkdir -p /tmp/gb_${v}_$n
  DMOE_LIB=/tmp/$v/libdmoe.so LD_LIBRARY_PATH=/tmp/$v timeout 200 python3 bench/gpu_bench.py --out /tmp/gb_${v}_$n --clean 0 "$@" \
    > $OUT/h/gb-$v-$n.txt 2>&1; echo "gb $v $n rc=$?" >> $OUT/summary.txt; }
gb old 1 --presets qwen3-30b-a3b,olmoe-1b-7b --tokens 8,16,128,2048
gb b 1 --presets qwen3-30b-a3b,olmoe-1b-7b --tokens 8,16,128,2048
gb old 2 --presets qwen3-30b-a3b,olmoe-1b-7b --tokens 8,16,128
gb b 2 --presets qwen3-30b-a3b,olmoe-1b-7b --tokens 8,16,128
gb b 3 --presets mixtral-8x7b,deepseek-v3 --tokens 1,4,16,128
cd $OUT && for f in h/gb-*.txt; do echo "== $f"; grep -E "^[a-z0-9-]+ +[0-9]+ |paths" $f | cut -c1-200; done > table.txt
for v in old b; do echo "== ncu $v" >> table.txt; grep -E "^  [a-zA-Z_].*\(|gpu__time" h/ncu-$v.txt | sed -E 's/ +/ /g; s/\(CUtensorMap.*//; s/\(router_params.*//; s/\(const T1.*//' | cut -c1-90 | paste - - | tail -8 >> table.txt; done
tar czf logs.tgz h gb 2>/dev/null; rm -rf h gb
cat summary.txt; grep -A40 "=== summary" tests.txt | head -40; cat table.txt
