#!/bin/bash
# dev/s11-prof.sh: session 11, per-kernel times (ncu) of the staged path where the sweep of run 1 found it far
# from the floor: small experts at large T (granite-3b-like H=1536 F=512 E=40 K=8 at T=128 / 1024; qwen3 and
# olmoe at T=2048; gpt-oss-20b-like T=1024). carry .cudadev (bench/gpu-bench.sh pack).
set -u
OUT=${OUT:-$PWD/out}; mkdir -p $OUT/h
mkdir -p /tmp/b && tar xzf .cudadev/bin.tgz -C /tmp/b
export LD_LIBRARY_PATH=/tmp/b
M=gpu__time_duration.sum,dram__throughput.avg.pct_of_peak_sustained_elapsed,sm__pipe_tensor_op_hgmma_cycles_active.avg.pct_of_peak_sustained_active
prof() { local tag=$1; shift
  DMOE_PRINT_CONFIG=1 timeout 120 ncu --metrics $M -k regex:'router|route|plan|gemm|combine|swap' --launch-count ${COUNT:-16} /tmp/b/dmoe bench --backend cuda \
    --reps 1 --warmup 1 --bandwidth-gbs 3000 "$@" > $OUT/h/ncu-$tag.txt 2>&1; echo "ncu $tag rc=$?" >> $OUT/summary.txt
  echo "== $tag $*" >> $OUT/table.txt
  grep -E "^  [a-zA-Z_].*\(|gpu__time|dram__thr|hgmma" $OUT/h/ncu-$tag.txt | sed -E 's/ +/ /g; s/\(CUtensorMap.*//; s/\(router_params.*//; s/\(const T1.*//; s/\(grouped_params.*//' \
    | cut -c1-80 | paste - - - - >> $OUT/table.txt
  grep "dmoe:" $OUT/h/ncu-$tag.txt | sort -u | head -12 >> $OUT/table.txt
}
prof granite128 --hidden 1536 --ffn 512 --experts 40 --topk 8 --tokens 128
prof granite1024 --hidden 1536 --ffn 512 --experts 40 --topk 8 --tokens 1024
prof qwen3-2048 --preset qwen3-30b-a3b --tokens 2048
prof olmoe-2048 --preset olmoe-1b-7b --tokens 2048
prof gptoss-1024 --preset gpt-oss-20b --tokens 1024
# the same cells through the timed bench (graph us / us, write flush) for the totals
timeout 100 python3 bench/gpu_bench.py --lib /tmp/b/libdmoe.so --out $OUT --clean 0 --paths 0 --peers 0 --tokens 128,1024,2048 \
  --shapes granite-3b=1536x512x40x8,qwen3-30b-a3b=2048x768x128x8,olmoe-1b-7b=2048x1024x64x8 > $OUT/h/gb.txt 2>&1
grep -E "^[a-z0-9-]+ +[0-9]+ " $OUT/h/gb.txt >> $OUT/table.txt
cd $OUT && tar czf logs.tgz h && rm -rf h; cat summary.txt table.txt
