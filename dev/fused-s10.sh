#!/bin/bash
# dev/fused-s10.sh: session 10's device call (carry .cd9 and .cudadev).
#   here: harness binaries in .cd9 (f_pf2 = main's kernel; f_fo = branch s9-first-order: up to 32 pairs in
#         first-appearance order, T <= 5 prefetch, fm_w13_row; f_fo2 = the same without fm_w13_row (36d2d2c);
#         f_t10 = f_fo + the block grouping (P <= 192) in first-appearance order and the prefetch wherever the
#         warps before the publisher route T in as many rounds as all six (T = 1..5, 7..10, 13..15));
#         .cudadev packed (bench/gpu-bench.sh pack) from the f_t10 tree.
#   device: harness A/B (two repetitions, write flush), f_t10's shapes with the reference, the GPU tests of
#           the packed tree, then the backend bench with the PyTorch peers (qwen3, olmoe; T = 1, 2, 4, 8, 16).
set -u
R=$PWD; OUT=${OUT:-$PWD/out}; mkdir -p $OUT/h
nvidia-smi --query-gpu=name,clocks.sm,clocks.mem --format=csv,noheader > $OUT/gpu.txt
cd .cd9 || exit 1
r() { local n=$1; shift; timeout 60 "$@" > $OUT/h/$n.log 2>&1; echo "$n rc=$?" >> $OUT/summary.txt; }
for rep in 1 2; do for b in ${BINS:-f_pf2 f_fo f_fo2 f_t10}; do
  FM_FLUSH=1 FM_TOKENS=1,2,3,4,8,10,16 FM_REF_MAXT=1 r q_${b}_$rep ./$b
  FM_FLUSH=1 FM_TOKENS=1,2,4,8 FM_REF_MAXT=1 r o_${b}_$rep ./$b 2048 1024 64 8
done; done
FM_TOKENS=7,8,10,13 FM_REF_MAXT=13 r shapes_t10_qwen3 ./f_t10
FM_TOKENS=8 FM_REF_MAXT=8 r shapes_t10_olmoe ./f_t10 2048 1024 64 8
FM_TOKENS=8,10 FM_REF_MAXT=10 r shapes_t10_mixtral ./f_t10 4096 14336 8 2
FM_TOKENS=7,10 FM_REF_MAXT=10 r shapes_t10_odd ./f_t10 2880 1408 60 6 1 2816
FM_TOKENS=8,10 FM_REF_MAXT=10 r shapes_t10_e4 ./f_t10 256 128 4 4
FM_TOKENS=8,14 FM_REF_MAXT=14 r shapes_t10_e192 ./f_t10 512 256 192 12
cd $OUT/h && for f in q_* o_*; do echo "== $f"; grep -E "^ +[0-9]+ " $f | awk '{print $1, $3, $5, $7}'; done > $OUT/table.txt
for f in shapes_*; do echo "== $f"; grep -E "^ +[0-9]+ |FAIL|PASS" $f | cut -c1-160; done >> $OUT/table.txt
cd $R; mkdir -p /tmp/b && tar xzf .cudadev/bin.tgz -C /tmp/b; export LD_LIBRARY_PATH=/tmp/b
t() { local n=$1; shift; timeout 120 env "$@" > $OUT/h/$n.log 2>&1; echo "$n rc=$? $(tail -1 $OUT/h/$n.log)" >> $OUT/summary.txt; }
if [ -z "${NOTESTS:-}" ]; then
t fwd_fused DMOE_PATH=fused /tmp/b/test-cuda-forward
t fwd_auto /tmp/b/test-cuda-forward
t path /tmp/b/test-cuda-path
t graph_fused DMOE_PATH=fused /tmp/b/test-cuda-graph
t resident DMOE_GPU_TEST_QUICK=1 /tmp/b/test-cuda-resident
fi
if [ -z "${NOBENCH:-}" ]; then
  DMOE_PRINT_CONFIG=1 DMOE_LIB=/tmp/b/libdmoe.so PYTHONUNBUFFERED=1 timeout 300 python3 bench/gpu_bench.py --out $OUT \
    --presets qwen3-30b-a3b,olmoe-1b-7b --tokens 1,2,4,8,16 --clean 0 --time-limit 270 2>&1 | grep -v "^dmoe" > $OUT/bench.txt
  echo "bench rc=${PIPESTATUS[0]}" >> $OUT/summary.txt
fi
cd $OUT && tar czf logs.tgz h 2>/dev/null; rm -rf h
cat table.txt summary.txt bench.txt 2>/dev/null
