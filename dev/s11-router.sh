#!/bin/bash
# dev/s11-router.sh: session 11, the streaming router's token split (t_splits). carry .cudadev (this tree,
# bench/gpu-bench.sh pack) and .cudaold (libdmoe.so of 4d77181, before the split).
#  1. GPU tests with the new router: forward (full grid: T = 127 / 1000 stream the router with t_splits > 1),
#     path, graph, resident, ops.
#  2. A/B old / new library, alternating, twice: gpu_bench.py --peers 0 --paths 0 (staged at T >= 64), write flush.
#  3. The stream / mma threshold: new library at T = 2048 / 4096 with DMOE_CUDA_ROUTER_STREAM_MAX=8192.
#  4. ncu (--clock-control none) of the router kernels (the CLI links libdmoe statically: the 'old' rows
#     ran the new router too), granite-3b-like T = 1024, qwen3 T = 1024.
set -u
OUT=${OUT:-$PWD/out}; mkdir -p $OUT/h
mkdir -p /tmp/b /tmp/o && tar xzf .cudadev/bin.tgz -C /tmp/b && cp /tmp/b/lib*.so* /tmp/o/ && cp -P .cudaold/libdmoe.so* /tmp/o/
export LD_LIBRARY_PATH=/tmp/b
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem --format=csv,noheader > $OUT/gpu.txt
t() { local tag=$1 lim=$2; shift 2; ( cd /tmp/b && env "$@" > $OUT/h/t-$tag.txt 2>&1; echo "test $tag rc=$?" ) >> $OUT/summary.txt
  tail -3 $OUT/h/t-$tag.txt >> $OUT/summary.txt; }
t fwd 200 timeout 200 ./test-cuda-forward
t path 60 timeout 60 ./test-cuda-path
t graph 60 timeout 60 ./test-cuda-graph
t resident 90 timeout 90 ./test-cuda-resident
t ops 60 timeout 60 ./test-cuda-ops
SH=granite-3b=1536x512x40x8,gptoss-20b=2880x2880x32x4
P=granite-3b,gptoss-20b,qwen3-30b-a3b,olmoe-1b-7b
gb() { local tag=$1 lib=$2; shift 2; mkdir -p /tmp/gb_$tag
  LD_LIBRARY_PATH=$(dirname $lib) timeout ${LIM:-80} python3 bench/gpu_bench.py --lib $lib --out /tmp/gb_$tag --clean 0 \
    --peers 0 --paths 0 --shapes $SH --presets $P "$@" > $OUT/h/gb-$tag.txt 2>&1; echo "gb $tag rc=$?" >> $OUT/summary.txt; }
for n in 1 2; do
  gb old$n /tmp/o/libdmoe.so --tokens 64,128,256,512,1024
  gb new$n /tmp/b/libdmoe.so --tokens 64,128,256,512,1024
done
for n in 1 2; do
  gb big_mma$n /tmp/b/libdmoe.so --tokens 1536,2048,4096
  DMOE_CUDA_ROUTER_STREAM_MAX=8192 gb big_stream$n /tmp/b/libdmoe.so --tokens 1536,2048,4096
done
M=gpu__time_duration.sum
prof() { local tag=$1 lib=$2; shift 2
  LD_LIBRARY_PATH=$(dirname $lib):/tmp/b timeout 60 ncu --clock-control none --metrics $M -k regex:'router|route|plan' --launch-count 8 \
    /tmp/b/dmoe bench --backend cuda --reps 1 --warmup 1 "$@" > $OUT/h/ncu-$tag.txt 2>&1; echo "ncu $tag rc=$?" >> $OUT/summary.txt
  echo "== $tag $*" >> $OUT/ncu.txt
  grep -E "^  [a-zA-Z_].*\(|gpu__time" $OUT/h/ncu-$tag.txt | sed -E 's/ +/ /g; s/\(router_params.*//' | cut -c1-90 | paste - - >> $OUT/ncu.txt
}
for L in old:/tmp/o/libdmoe.so new:/tmp/b/libdmoe.so; do
  prof granite1024-${L%%:*} ${L#*:} --hidden 1536 --ffn 512 --experts 40 --topk 8 --tokens 1024
  prof qwen3-1024-${L%%:*} ${L#*:} --preset qwen3-30b-a3b --tokens 1024
  prof qwen3-2048s-${L%%:*} ${L#*:} --preset qwen3-30b-a3b --tokens 2048
done
DMOE_CUDA_ROUTER_STREAM_MAX=8192 prof qwen3-2048-stream /tmp/b/libdmoe.so --preset qwen3-30b-a3b --tokens 2048
cd $OUT && for f in h/gb-*.txt; do echo "== $f"; grep -E "^[a-z0-9-]+ +[0-9]+ |ERROR|Traceback" $f | cut -c1-160; done > table.txt
tar czf logs.tgz h 2>/dev/null; rm -rf h
cat summary.txt; cat table.txt; cat ncu.txt
