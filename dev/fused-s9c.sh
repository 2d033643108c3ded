#!/bin/bash
# dev/fused-s9c.sh: the owed device call for dev/s9-first-order.patch (git apply it, build f_fo into .cd9 with
# dev/fused-s9.sh build + nvcc -o .cd9/f_fo, pack .cudadev from the patched tree); session 9s short call (carry .cd9 and .cudadev): f_pf2 (kept, T=1 prefetch)
# against f_fo (first-appearance segments + prefetch up to 32 pairs), one repetition, then the GPU tests that
# exercise the fused plan (forward with DMOE_PATH=fused and default, graph, path, resident quick).
set -u
R=$PWD; OUT=${OUT:-$PWD/out}; mkdir -p $OUT/h
cd .cd9 || exit 1
r() { local n=$1; shift; timeout 60 "$@" > $OUT/h/$n.log 2>&1; echo "$n rc=$?" >> $OUT/summary.txt; }
for rep in 1 2; do for b in f_pf2 f_fo; do
  FM_FLUSH=1 FM_TOKENS=1,2,3,4,8 FM_REF_MAXT=4 r q_${b}_$rep ./$b
  FM_FLUSH=1 FM_TOKENS=1,2,4 FM_REF_MAXT=4 r o_${b}_$rep ./$b 2048 1024 64 8
done; done
FM_TOKENS=2,3,16 FM_REF_MAXT=16 r shapes_fo_mixtral ./f_fo 4096 14336 8 2
FM_TOKENS=2,5 FM_REF_MAXT=5 r shapes_fo_odd ./f_fo 2880 1408 60 6 1 2816
FM_TOKENS=2,8 FM_REF_MAXT=8 r shapes_fo_e4 ./f_fo 256 128 4 4
cd $OUT/h && for f in q_* o_*; do echo "== $f"; grep -E "^ +[0-9]+ " $f | awk '{print $1, $3, $5, $7}'; done > $OUT/table.txt
for f in shapes_*; do echo "== $f"; grep -E "^ +[0-9]+ |FAIL|PASS" $f | cut -c1-200; done >> $OUT/table.txt
cd $R; mkdir -p /tmp/b && tar xzf .cudadev/bin.tgz -C /tmp/b; export LD_LIBRARY_PATH=/tmp/b
t() { local n=$1; shift; timeout 100 env "$@" > $OUT/h/$n.log 2>&1; echo "$n rc=$? $(tail -1 $OUT/h/$n.log)" >> $OUT/summary.txt; }
t fwd_fused DMOE_PATH=fused /tmp/b/test-cuda-forward
t fwd_auto DMOE_GPU_TEST_QUICK=1 /tmp/b/test-cuda-forward
t path DMOE_GPU_TEST_QUICK=1 /tmp/b/test-cuda-path
t graph_fused DMOE_PATH=fused /tmp/b/test-cuda-graph
t resident DMOE_GPU_TEST_QUICK=1 /tmp/b/test-cuda-resident
cd $OUT && tar czf logs.tgz h 2>/dev/null; rm -rf h
cat table.txt summary.txt
