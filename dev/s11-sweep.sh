#!/bin/bash
# dev/s11-sweep.sh: session 11's first device call (carry .cudadev = this tree packed by
# `bash bench/gpu-bench.sh pack .cudadev`).
#  1. GPU tests of the swap-AB GEMMs (test-cuda-ops) and the staged forward (quick grid).
#  2. A/B of the swap kernels' weight boxes with / without L2::evict_first (DMOE_CUDA_L2_HINT=1 / 0, same
#     library, alternating, two repetitions): the staged path on qwen3 / olmoe T = 2..512, gpu_bench.py without
#     the torch peers, write flush.
#  3. Layer shapes beyond the presets (gpu_bench.py --shapes, torch peers, both paths at T <= 64).
set -u
R=$PWD; OUT=${OUT:-$PWD/out}; mkdir -p $OUT/h
mkdir -p /tmp/b && tar xzf .cudadev/bin.tgz -C /tmp/b
export LD_LIBRARY_PATH=/tmp/b
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem --format=csv,noheader > $OUT/gpu.txt
( cd /tmp/b && timeout 60 ./test-cuda-ops > $OUT/h/ops.txt 2>&1; echo "ops rc=$?" ) >> $OUT/summary.txt
( cd /tmp/b && DMOE_PATH=staged DMOE_GPU_TEST_QUICK=1 timeout 60 ./test-cuda-forward > $OUT/h/fwd.txt 2>&1
  echo "fwd staged rc=$?" ) >> $OUT/summary.txt
gb() { local tag=$1 lim=$2; shift 2; mkdir -p /tmp/gb_$tag
  timeout $lim python3 bench/gpu_bench.py --lib /tmp/b/libdmoe.so --out /tmp/gb_$tag --clean 0 "$@" \
    > $OUT/h/gb-$tag.txt 2>&1; echo "gb $tag rc=$?" >> $OUT/summary.txt; }
if [ -z "${NOAB:-}" ]; then
  for n in 1 2; do for h in 0 1; do
    DMOE_PATH=staged DMOE_CUDA_L2_HINT=$h gb hint${h}_$n 90 --peers 0 --paths 0 \
      --presets qwen3-30b-a3b,olmoe-1b-7b --tokens 2,4,8,16,128,512
  done; done
  DMOE_PATH=staged DMOE_CUDA_L2_HINT=0 gb big_hint0 80 --peers 0 --paths 0 --presets mixtral-8x7b,deepseek-v3 --tokens 16,128
  DMOE_PATH=staged DMOE_CUDA_L2_HINT=1 gb big_hint1 80 --peers 0 --paths 0 --presets mixtral-8x7b,deepseek-v3 --tokens 16,128
fi
[ -z "${NOSWEEP:-}" ] && gb sweep ${SWEEP_S:-260} --time-limit ${SWEEP_LIMIT:-230} --tokens 1,4,16,128,1024 \
  --shapes ${SHAPES:-gptoss-20b=2880x2880x32x4,dsv2-lite=2048x1408x64x6,qwen2-57b=3584x2560x64x8,phi35-moe=4096x6400x16x2,granite-3b=1536x512x40x8,qwen3-next=2048x512x512x10,odd-small=1000x200x60x6}
cd $OUT && for f in h/gb-*.txt; do echo "== $f"; grep -E "^[a-z0-9-]+ +[0-9]+ |paths|ERROR" $f | cut -c1-200; done > table.txt
tar czf logs.tgz h 2>/dev/null; rm -rf h
cat summary.txt; cat table.txt
