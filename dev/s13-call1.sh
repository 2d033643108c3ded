#!/bin/bash
# dev/s13-call1.sh: session 13 first device call. (1) dev/racecheck-forms.cu (prebuilt .cudadev/rf): which
# shared-memory hand-offs racecheck models; (2) session 12's owed runs (dev/s12-call3.sh). carry .cudadev.
# .cudadev: `bash bench/gpu-bench.sh pack .cudadev`, THEN build rf and sf into it (pack empties the folder):
#   nvcc -std=c++17 -O3 -arch=sm_90a -I/usr/local/cuda/include/cccl dev/racecheck-forms.cu -o .cudadev/rf
#   nvcc -std=c++17 -O3 -gencode=arch=compute_90a,code=sm_90a dev/stream-floor.cu -o .cudadev/sf
set -u
OUT=${OUT:-$PWD/out}; mkdir -p $OUT/rf
CS=/usr/local/cuda/bin/compute-sanitizer
$CS --version > $OUT/rf/version.txt 2>&1
$CS --help 2>&1 | grep -i -A2 "racecheck" > $OUT/rf/help.txt
./.cudadev/rf > $OUT/rf/plain.txt 2>&1; echo "rf rc=$?" >> $OUT/rf/plain.txt
for f in racy sync ptx ptx_all aw cxx bulk named; do
  timeout 60 $CS --tool racecheck --racecheck-report all ./.cudadev/rf $f > $OUT/rf/rc-$f.txt 2>&1
  echo "$f rc=$? $(grep -c 'Error\|Warning\|hazard' $OUT/rf/rc-$f.txt) $(grep -E 'RACECHECK SUMMARY' $OUT/rf/rc-$f.txt)" >> $OUT/rf/summary.txt
done
timeout 60 $CS --tool synccheck ./.cudadev/rf > $OUT/rf/synccheck.txt 2>&1
cat $OUT/rf/plain.txt $OUT/rf/summary.txt; tail -3 $OUT/rf/synccheck.txt; cat $OUT/rf/help.txt | head -30
# the stream-only floor of a single-launch decode forward (dev/stream-floor.cu), qwen3 and olmoe shapes
( ./.cudadev/sf; ./.cudadev/sf 2048 1024 64 8 ) > $OUT/stream-floor.txt 2>&1; echo "sf rc=$?"; cat $OUT/stream-floor.txt
# the correction-bias clamp in route-token.cuh (+72 SASS instructions in the fused kernel): the library
# before it (.cudadev/old) against this one, decode cells without a bias, alternating, twice
mkdir -p /tmp/b && tar xzf .cudadev/bin.tgz -C /tmp/b
for rep in 1 2; do for v in old new; do
  lib=/tmp/b/libdmoe.so; [ $v = old ] && lib=$PWD/.cudadev/old/libdmoe.so
  mkdir -p /tmp/ab_$v$rep && LD_LIBRARY_PATH=/tmp/b timeout 60 python3 bench/gpu_bench.py --lib $lib --out /tmp/ab_$v$rep \
    --clean 0 --peers 0 --paths 0 --presets qwen3-30b-a3b,olmoe-1b-7b --tokens 1,2,4 > $OUT/ab-$v$rep.txt 2>&1
  echo "ab $v$rep rc=$?"; grep -E "^(qwen3|olmoe)" $OUT/ab-$v$rep.txt
done; done
bash dev/s12-call3.sh
# resident mode with today's kernel (qwen3-30b-a3b layer, 10,000 batches a T)
( cd /tmp/b && LD_LIBRARY_PATH=/tmp/b timeout 60 ./resident-bench 2048 768 128 8 --batches 10000 ) > $OUT/resident.txt 2>&1
echo "resident rc=$?"; tail -8 $OUT/resident.txt
# random CUDA shapes with the table plan on (it runs wherever the pairs fit 16384)
DMOE_CUDA_PLAN_TABLE=1 LD_LIBRARY_PATH=/tmp/b timeout 75 python3 bench/shape-sweep.py --dmoe /tmp/b/dmoe --backend cuda \
  --cuda-limits --paths auto,fused,staged --n 40 --seed 1313 --time-limit 55 > $OUT/sweep.txt 2>&1
echo "sweep rc=$?"; tail -6 $OUT/sweep.txt
# session 3's open question: is T=1 slower on a layer created for max_tokens 8192 than on one for 64?
mkdir -p /tmp/gp_mt && timeout 90 python3 bench/gpu_bench.py --lib /tmp/b/libdmoe.so --out /tmp/gp_mt --clean 0 --peers 0 \
  --presets qwen3-30b-a3b,olmoe-1b-7b --tokens 1,4,8192 > $OUT/maxt.txt 2>&1
echo "maxt rc=$?"; grep -v "^$" $OUT/maxt.txt | tail -14
