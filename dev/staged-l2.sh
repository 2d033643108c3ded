#!/bin/bash
# dev/staged-l2.sh: session 10's sixth device call (carry .cudadev = a variant tree, .cudaold = a90e815's libdmoe.so.0.1.0):
# swap GEMM2 also asking L2 for the rest of its first item's weight block before its wait (measured slower, reverted: bench/cuda-notes.md, session 10).
# GPU tests that run the swap kernels (ops, graph, forward staged), then old / new / old / new backend benches.
set -u
R=$PWD; OUT=${OUT:-$PWD/out}; mkdir -p $OUT/h
mkdir -p /tmp/b /tmp/old && tar xzf .cudadev/bin.tgz -C /tmp/b && cp -a /tmp/b/. /tmp/old/ && cp .cudaold/libdmoe.so.0.1.0 /tmp/old/
for t in test-cuda-ops test-cuda-graph test-cuda-forward; do
  LD_LIBRARY_PATH=/tmp/b DMOE_PATH=staged timeout 120 /tmp/b/$t > $OUT/h/$t.txt 2>&1; echo "$t rc=$? $(tail -1 $OUT/h/$t.txt)" >> $OUT/summary.txt
done
gb() { local v=$1 n=$2; shift 2; mkdir -p /tmp/gb_${v}_$n
  DMOE_LIB=/tmp/$v/libdmoe.so LD_LIBRARY_PATH=/tmp/$v timeout 200 python3 bench/gpu_bench.py --out /tmp/gb_${v}_$n --clean 0 "$@" \
    > $OUT/h/gb-$v-$n.txt 2>&1; echo "gb $v $n rc=$?" >> $OUT/summary.txt; }
for n in 1 2; do for v in old b; do gb $v $n --presets qwen3-30b-a3b,olmoe-1b-7b --tokens 8,16,128 --paths 0; done; done
cd $OUT && for f in h/gb-*.txt; do echo "== $f"; grep -E "^[a-z0-9-]+ +[0-9]+ " $f | cut -c1-120; done > table.txt
tar czf logs.tgz h; rm -rf h; cat summary.txt table.txt
