#!/bin/bash
# dev/s12-prof.sh: session 12, per-kernel times (ncu --clock-control none) of a staged forward with the
# switch VAR off / on (default DMOE_CUDA_PLAN_TABLE; the first run measured DMOE_CUDA_ROUTE_PLAN, the
# route kernel's plan of dev/patches/s12-route-plan.patch). carry .cudadev.
set -u
OUT=${OUT:-$PWD/out}; mkdir -p $OUT/h; OUT0=$OUT; OUT=$OUT/prof; mkdir -p $OUT/h
mkdir -p /tmp/b && tar xzf .cudadev/bin.tgz -C /tmp/b
export LD_LIBRARY_PATH=/tmp/b
prof() { local tag=$1; shift
  env "$@" DMOE_PRINT_CONFIG=1 timeout 90 ncu --clock-control none --metrics gpu__time_duration.sum \
    --launch-skip ${SKIP:-14} --launch-count ${COUNT:-7} /tmp/b/dmoe bench --backend cuda --reps 2 --warmup 2 \
    --hidden 1536 --ffn 512 --experts 40 --topk 8 --tokens $T > $OUT/h/ncu-$tag.txt 2>&1
  echo "ncu $tag rc=$?" >> $OUT/summary.txt
  echo "== $tag T=$T $*" >> $OUT/ncu.txt
  grep -E "^  [a-zA-Z_].*\(|gpu__time" $OUT/h/ncu-$tag.txt | sed -E 's/ +/ /g; s/\((router_params|const float|const int|int \*|CUtensorMap|grouped_params|const T1|const __nv).*//' \
    | cut -c1-70 | paste - - >> $OUT/ncu.txt
  grep "dmoe cuda: T=" $OUT/h/ncu-$tag.txt | sort -u | head -2 >> $OUT/ncu.txt
}
for T in 256 1024; do
  T=$T prof off$T ${VAR:-DMOE_CUDA_PLAN_TABLE}=0
  T=$T prof on$T ${VAR:-DMOE_CUDA_PLAN_TABLE}=1
done
cd $OUT && tar czf ../prof-logs.tgz h 2>/dev/null; rm -rf h
cat summary.txt ncu.txt
