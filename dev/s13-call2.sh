#!/bin/bash
# dev/s13-call2.sh: session 13's device call in priority order (run it under a timeout: whatever it reached
# comes back in $OUT; QUICK=1 REPS=1 for a short call). carry .cudadev, built here by:
#   bash bench/gpu-bench.sh pack .cudadev            (empties the folder first)
#   mkdir -p .cudadev/old && cp <the library before the bias clamp> .cudadev/old/libdmoe.so
#   nvcc -std=c++17 -O3 -arch=sm_90a -I/usr/local/cuda/include/cccl dev/racecheck-forms.cu -o .cudadev/rf
#   nvcc -std=c++17 -O3 -gencode=arch=compute_90a,code=sm_90a dev/stream-floor.cu -o .cudadev/sf
set -u
OUT=${OUT:-$PWD/out}; mkdir -p $OUT/h $OUT/rf
R=$PWD; B=/tmp/b; mkdir -p $B && tar xzf .cudadev/bin.tgz -C $B
export LD_LIBRARY_PATH=$B
S=$OUT/summary.txt
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem --format=csv,noheader > $OUT/gpu.txt
t() { local tag=$1; shift; ( cd $B && env "$@" > $OUT/h/t-$tag.txt 2>&1; echo "test $tag rc=$? $(date +%T)" ) >> $S
  grep -E "FAIL|checks" $OUT/h/t-$tag.txt | tail -4 >> $S; }
gp() { local tag=$1 lib=$2; shift 2; mkdir -p /tmp/gp_$tag
  env "$@" timeout 60 python3 bench/gpu_bench.py --lib $lib --out /tmp/gp_$tag --clean 0 --peers 0 --paths 0 \
    ${GPARGS:---shapes granite-3b=1536x512x40x8 --presets granite-3b,qwen3-30b-a3b,olmoe-1b-7b --tokens 128,256,1024} \
    > $OUT/h/gp-$tag.txt 2>&1; echo "gp $tag rc=$? $(date +%T)" >> $S; }
# 1. correctness of the new code: the table plan (ops, forward) and the bias clamp (forward's variants 11, 12)
t ops DMOE_CUDA_PLAN_TABLE=1 timeout 60 ./test-cuda-ops
t fwd DMOE_CUDA_PLAN_TABLE=1 DMOE_GPU_TEST_QUICK=${QUICK:-0} timeout 100 ./test-cuda-forward
# 2. the bias clamp's cost on decode cells without a bias: old / new library, alternating, twice
for rep in $(seq ${REPS:-2}); do GPARGS="--presets qwen3-30b-a3b,olmoe-1b-7b --tokens 1,2,4" gp old$rep $R/.cudadev/old/libdmoe.so
  GPARGS="--presets qwen3-30b-a3b,olmoe-1b-7b --tokens 1,2,4" gp new$rep $B/libdmoe.so; done
grep -HE "^(qwen3|olmoe)" $OUT/h/gp-old*.txt $OUT/h/gp-new*.txt >> $S
# 3. the stream-only floor of a decode forward
( $R/.cudadev/sf; $R/.cudadev/sf 2048 1024 64 8 ) > $OUT/stream-floor.txt 2>&1; echo "sf rc=$? $(date +%T)" >> $S
# 4. the table plan's speed: off / on, alternating
for rep in $(seq ${REPS:-2}); do gp notable$rep $B/libdmoe.so DMOE_CUDA_PLAN_TABLE=0; gp table$rep $B/libdmoe.so DMOE_CUDA_PLAN_TABLE=1; done
( cd $OUT && python3 $R/dev/ab-table.py gp > $OUT/table.txt 2>&1 )
# 5. which shared-memory hand-offs racecheck models
CS=/usr/local/cuda/bin/compute-sanitizer
$R/.cudadev/rf > $OUT/rf/plain.txt 2>&1; echo "rf rc=$?" >> $OUT/rf/plain.txt
for f in racy sync ptx ptx_all aw cxx bulk named; do
  timeout 40 $CS --tool racecheck --racecheck-report all $R/.cudadev/rf $f > $OUT/rf/rc-$f.txt 2>&1
  echo "$f rc=$? $(grep -cE 'Error|Warning' $OUT/rf/rc-$f.txt) $(grep -E 'RACECHECK SUMMARY' $OUT/rf/rc-$f.txt)" >> $OUT/rf/summary.txt
done
echo "rf done $(date +%T)" >> $S
# 6. the other GPU tests (default settings), resident mode, random shapes with the table plan on
t path timeout 40 ./test-cuda-path
t graph timeout 40 ./test-cuda-graph
( cd $B && timeout 40 ./resident-bench 2048 768 128 8 --batches 10000 ) > $OUT/resident.txt 2>&1; echo "resident rc=$?" >> $S
DMOE_CUDA_PLAN_TABLE=1 timeout 70 python3 bench/shape-sweep.py --dmoe $B/dmoe --backend cuda --cuda-limits \
  --paths auto,fused,staged --n 40 --seed 1313 --time-limit 50 > $OUT/sweep.txt 2>&1; echo "sweep rc=$?" >> $S
mkdir -p /tmp/gp_mt && timeout 60 python3 bench/gpu_bench.py --lib $B/libdmoe.so --out /tmp/gp_mt --clean 0 --peers 0 \
  --presets qwen3-30b-a3b,olmoe-1b-7b --tokens 1,4,8192 > $OUT/maxt.txt 2>&1; echo "maxt rc=$?" >> $S
echo "all done $(date +%T)" >> $S
