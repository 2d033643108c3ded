#!/bin/bash
# dev/s14-call1.sh: session 14's first device call, in priority order (run under a timeout; whatever it reached
# comes back in $OUT). The fused kernel's releases by every lane (FM_LANE_ARRIVE=1) and the pick word as shared
# atomics (FM_PICK_FORM=1): does racecheck come out clean, what does it cost. carry .cudadev, built here by:
#   cmake -S . -B build-cuda -G Ninja "-DCMAKE_CUDA_FLAGS=-DFM_LANE_ARRIVE=1 -DFM_PICK_FORM=1"   (the new forms: the
#       source defaults are the measured kernel; reset the cache with -DCMAKE_CUDA_FLAGS= afterwards)
#   bash bench/gpu-bench.sh pack .cudadev            (empties the folder first)
#   mkdir -p .cudadev/v; for each variant v in old (the source defaults), lane0 (-DFM_PICK_FORM=1 only),
#   and, each with the new forms as well: pick2 (-DFM_PICK_FORM=2), ns2 / ns3 (-DFM_NS=2 / 3), kc256 (-DFM_KC=256),
#   pfhint (-DFM_PREFETCH_HINT=1): a libdmoe.so built with CMAKE_CUDA_FLAGS, gzipped to .cudadev/v/<v>.so.gz
#   nvcc -std=c++17 -O3 -arch=sm_90a -I/usr/local/cuda/include/cccl dev/racecheck-forms.cu -o .cudadev/rf
set -u
OUT=${OUT:-$PWD/out}; mkdir -p $OUT/h $OUT/rf
R=$PWD; B=/tmp/b; mkdir -p $B && tar xzf .cudadev/bin.tgz -C $B
for v in $(ls .cudadev/v 2>/dev/null); do n=${v%.so.gz}; mkdir -p /tmp/v/$n; gunzip -c .cudadev/v/$v > /tmp/v/$n/libdmoe.so; done
export LD_LIBRARY_PATH=$B
S=$OUT/summary.txt
CS=/usr/local/cuda/bin/compute-sanitizer
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem --format=csv,noheader > $OUT/gpu.txt
# 1. racecheck's view of the new forms (bulk fill released by every lane; the pick word's three forms)
timeout 30 $R/.cudadev/rf > $OUT/rf/plain.txt 2>&1; echo "rf rc=$?" >> $OUT/rf/plain.txt
for f in bulk bulk_all ptx ptx_all flag_vol flag_atom flag_rel; do
  timeout 40 $CS --tool racecheck --racecheck-report all $R/.cudadev/rf $f > $OUT/rf/rc-$f.txt 2>&1
  echo "$f rc=$? $(grep -cE 'Error|Warning' $OUT/rf/rc-$f.txt) $(grep -E 'RACECHECK SUMMARY' $OUT/rf/rc-$f.txt)" >> $OUT/rf/summary.txt
done
cat $OUT/rf/plain.txt $OUT/rf/summary.txt >> $S
# 2. racecheck / synccheck on the fused kernel with the new defaults (grids for 8 SMs, as gpu-bench.sh sanitize)
san() { local tag=$1 tool=$2 lim=$3; shift 3
  ( cd $B && env ${SANENV:-} DMOE_CUDA_SMS=8 DMOE_PATH=fused DMOE_GPU_TEST_QUICK=1 timeout $lim $CS --tool $tool \
      --error-exitcode 9 "$@" > $OUT/h/san-$tag.txt 2>&1; echo "san $tag rc=$? $(date +%T) $(grep -E 'SUMMARY' $OUT/h/san-$tag.txt | tail -1)" ) >> $S
  grep -E "Race reported|Error|Warning" $OUT/h/san-$tag.txt | sed 's/(const dmoe[^)]*)//g' | cut -c1-220 | sort | uniq -c | sort -rn | head -8 >> $S; }
san rc-path racecheck 100 ./test-cuda-path --quick
# 3. cost: old / new / lane0 libraries on decode cells, alternating, twice
gp() { local tag=$1 lib=$2; shift 2; mkdir -p /tmp/gp_$tag
  env "$@" timeout 60 python3 bench/gpu_bench.py --lib $lib --out /tmp/gp_$tag --clean 0 --peers 0 --paths 0 \
    --presets qwen3-30b-a3b,olmoe-1b-7b --tokens 1,2,4,16 > $OUT/h/gp-$tag.txt 2>&1; echo "gp $tag rc=$? $(date +%T)" >> $S; }
# and the ring's depth under the bench's write flush (the in-flight bytes pin L2 lines, so dirty lines of the flush
# are written back while the weights stream): ns2 / ns3 (-DFM_NS), kc256 (-DFM_KC=256: 8 KB stages)
for rep in $(seq ${REPS:-2}); do
  gp old$rep /tmp/v/old/libdmoe.so; gp new$rep $B/libdmoe.so; [ $rep = 1 ] && [ -z "${MINI:-}" ] && gp lane0$rep /tmp/v/lane0/libdmoe.so
  for v in ${VARIANTS:-ns2 ns3 kc256 pfhint pick2}; do [ -f /tmp/v/$v/libdmoe.so ] && gp $v$rep /tmp/v/$v/libdmoe.so; done
done
( cd $OUT && python3 $R/dev/ab-table.py gp > $OUT/ab.txt 2>&1 ); cat $OUT/ab.txt >> $S
[ -n "${SHORT:-}" ] && { echo "short: done $(date +%T)" >> $S; exit 0; }
# 4. correctness of the fused kernel with the new defaults, then the resident mode (same code)
t() { local tag=$1; shift; ( cd $B && env "$@" > $OUT/h/t-$tag.txt 2>&1; echo "test $tag rc=$? $(date +%T)" ) >> $S
  grep -E "FAIL|checks" $OUT/h/t-$tag.txt | tail -4 >> $S; }
t path timeout 40 ./test-cuda-path
t fwd-fused DMOE_PATH=fused timeout 120 ./test-cuda-forward
t graph-fused DMOE_PATH=fused timeout 40 ./test-cuda-graph
t resident timeout 90 ./test-cuda-resident
san sc-path synccheck 90 ./test-cuda-path --quick
SANENV=DMOE_TEST_VARIANT_TO=4 san rc-fwd racecheck 120 ./test-cuda-forward
( cd $B && timeout 40 ./resident-bench 2048 768 128 8 --batches 10000 ) > $OUT/resident.txt 2>&1; echo "resident-bench rc=$?" >> $S
echo "all done $(date +%T)" >> $S
