#!/bin/bash
# dev/s15-call2.sh: session 15's third device call (carry .cudadev from dev/s15-pack2.sh): the new defaults (FM_NS=3)
# through the fused GPU tests and racecheck / synccheck, and where the every-lane releases cost (ring / red variants).
set -u
OUT=${OUT:-$PWD/out}; mkdir -p $OUT/h
R=$PWD; B=/tmp/b; mkdir -p $B && tar xzf .cudadev/bin.tgz -C $B
for v in $(ls .cudadev/v 2>/dev/null); do n=${v%.so.gz}; mkdir -p /tmp/v/$n; gunzip -c .cudadev/v/$v > /tmp/v/$n/libdmoe.so; done
export LD_LIBRARY_PATH=$B
S=$OUT/summary.txt; CS=/usr/local/cuda/bin/compute-sanitizer
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader > $S
t() { local tag=$1; shift; ( cd $B && env "$@" > $OUT/h/t-$tag.txt 2>&1; echo "test $tag rc=$? $(date +%T) $(grep -E 'checks' $OUT/h/t-$tag.txt | tail -1)" ) >> $S
  grep -E "FAIL" $OUT/h/t-$tag.txt | head -4 >> $S; }
san() { local tag=$1 tool=$2 lim=$3; shift 3
  ( cd $B && env ${SANENV:-} DMOE_CUDA_SMS=8 DMOE_PATH=fused DMOE_GPU_TEST_QUICK=1 timeout $lim $CS --tool $tool \
      --error-exitcode 9 "$@" > $OUT/h/san-$tag.txt 2>&1; echo "san $tag rc=$? $(date +%T) $(grep -E 'checks' $OUT/h/san-$tag.txt | tail -1) $(grep -E 'SUMMARY' $OUT/h/san-$tag.txt | tail -1) races $(grep -c 'Race reported' $OUT/h/san-$tag.txt)" ) >> $S
  grep -E "Race reported|Error|Warning" $OUT/h/san-$tag.txt | sed 's/(const dmoe[^)]*)//g' | cut -c1-220 | sort | uniq -c | sort -rn | head -6 >> $S; }
# 1. correctness of the new defaults
t path timeout 40 ./test-cuda-path
t fwd-fused DMOE_PATH=fused timeout 100 ./test-cuda-forward
t graph-fused DMOE_PATH=fused timeout 40 ./test-cuda-graph
t resident DMOE_GPU_TEST_QUICK=1 timeout 60 ./test-cuda-resident
# 2. racecheck / synccheck of the new defaults
san rc-path racecheck 60 ./test-cuda-path --quick
# 3. cost: new (FM_NS=3) against ns4 / lane0 / ring / red, alternating
gp() { local tag=$1 lib=$2; shift 2; mkdir -p /tmp/gp_$tag
  env "$@" timeout 60 python3 bench/gpu_bench.py --lib $lib --out /tmp/gp_$tag --clean 0 --peers 0 --paths 0 \
    --presets qwen3-30b-a3b,olmoe-1b-7b --tokens 1,2,4,16 > $OUT/h/gp-$tag.txt 2>&1; echo "gp $tag rc=$? $(date +%T)" >> $S; }
for rep in $(seq ${REPS:-2}); do
  gp new$rep $B/libdmoe.so
  for v in ${VARIANTS:-ns4 lane0 ring red}; do [ -f /tmp/v/$v/libdmoe.so ] && gp $v$rep /tmp/v/$v/libdmoe.so; done
done
( cd $OUT && python3 $R/dev/ab-table.py gp > $OUT/ab.txt 2>&1 ); cat $OUT/ab.txt >> $S
san sc-path synccheck 60 ./test-cuda-path --quick
san rc-resident racecheck 60 ./test-cuda-resident
# 4. the rest of racecheck on test-cuda-forward's routing variants (fused), in the time left
SANENV=DMOE_TEST_VARIANT_FROM=4 san rc-fwd-b racecheck ${T_FWD:-150} ./test-cuda-forward
echo "all done $(date +%T)" >> $S
tar czf $OUT/s15b.tgz -C $OUT h && rm -rf $OUT/h
