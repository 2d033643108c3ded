#!/bin/bash
# dev/s15-call.sh: session 15's second device call (carry .cudadev from dev/s15-pack.sh). 1: the decode cells of
# the source defaults (new) against old / lane0 / ns3 / ns2, REPS rounds alternating; 2: racecheck and synccheck of
# the fused kernel beyond test-cuda-path: the resident kernel and test-cuda-forward's routing variants (fused path).
set -u
OUT=${OUT:-$PWD/out}; mkdir -p $OUT/h
R=$PWD; B=/tmp/b; mkdir -p $B && tar xzf .cudadev/bin.tgz -C $B
for v in $(ls .cudadev/v 2>/dev/null); do n=${v%.so.gz}; mkdir -p /tmp/v/$n; gunzip -c .cudadev/v/$v > /tmp/v/$n/libdmoe.so; done
export LD_LIBRARY_PATH=$B
S=$OUT/summary.txt; CS=/usr/local/cuda/bin/compute-sanitizer
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader > $S
gp() { local tag=$1 lib=$2; shift 2; mkdir -p /tmp/gp_$tag
  env "$@" timeout 60 python3 bench/gpu_bench.py --lib $lib --out /tmp/gp_$tag --clean 0 --peers 0 --paths 0 \
    --presets qwen3-30b-a3b,olmoe-1b-7b --tokens 1,2,4,16 > $OUT/h/gp-$tag.txt 2>&1; echo "gp $tag rc=$? $(date +%T)" >> $S; }
for rep in $(seq ${REPS:-3}); do
  gp new$rep $B/libdmoe.so
  for v in ${VARIANTS:-lane0 ns3 old ns2}; do [ -f /tmp/v/$v/libdmoe.so ] && gp $v$rep /tmp/v/$v/libdmoe.so; done
done
( cd $OUT && python3 $R/dev/ab-table.py gp > $OUT/ab.txt 2>&1 ); cat $OUT/ab.txt >> $S
san() { local tag=$1 tool=$2 lim=$3; shift 3
  ( cd $B && env ${SANENV:-} DMOE_CUDA_SMS=8 DMOE_PATH=fused DMOE_GPU_TEST_QUICK=1 timeout $lim $CS --tool $tool \
      --error-exitcode 9 "$@" > $OUT/h/san-$tag.txt 2>&1; echo "san $tag rc=$? $(date +%T) $(grep -E 'checks' $OUT/h/san-$tag.txt | tail -1) $(grep -E 'SUMMARY' $OUT/h/san-$tag.txt | tail -1)" ) >> $S
  grep -E "Race reported|Error|Warning" $OUT/h/san-$tag.txt | sed 's/(const dmoe[^)]*)//g' | cut -c1-220 | sort | uniq -c | sort -rn | head -8 >> $S; }
san rc-resident racecheck ${T_RES:-110} ./test-cuda-resident
SANENV=DMOE_TEST_VARIANT_TO=4 san rc-fwd-a racecheck ${T_FWD:-130} ./test-cuda-forward
SANENV=DMOE_TEST_VARIANT_FROM=4 san rc-fwd-b racecheck ${T_FWD:-130} ./test-cuda-forward
san sc-resident synccheck 60 ./test-cuda-resident
san rc-graph racecheck 60 ./test-cuda-graph
echo "all done $(date +%T)" >> $S
cat $S
tar czf $OUT/s15.tgz -C $OUT h && rm -rf $OUT/h
