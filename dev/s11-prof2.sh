#!/bin/bash
# dev/s11-prof2.sh: session 11, every kernel of a staged forward (ncu --clock-control none, gpu__time_duration)
# where the staged path is far from the floor at large T. carry .cudadev.
set -u
OUT=${OUT:-$PWD/out}; mkdir -p $OUT/h
mkdir -p /tmp/b && tar xzf .cudadev/bin.tgz -C /tmp/b
export LD_LIBRARY_PATH=/tmp/b
prof() { local tag=$1; shift
  DMOE_PRINT_CONFIG=1 timeout 90 ncu --clock-control none --metrics gpu__time_duration.sum,dram__bytes_read.sum,dram__bytes_write.sum \
    --launch-skip ${SKIP:-12} --launch-count ${COUNT:-12} /tmp/b/dmoe bench --backend cuda --reps 2 --warmup 2 "$@" > $OUT/h/ncu-$tag.txt 2>&1
  echo "ncu $tag rc=$?" >> $OUT/summary.txt
  echo "== $tag $*" >> $OUT/ncu.txt
  grep -E "^  [a-zA-Z_].*\(|gpu__time|dram__bytes" $OUT/h/ncu-$tag.txt | sed -E 's/ +/ /g; s/\((router_params|const float|const int|int \*|CUtensorMap|grouped_params|const T1|const __nv).*//' \
    | cut -c1-70 | paste - - - - >> $OUT/ncu.txt
  grep "dmoe:" $OUT/h/ncu-$tag.txt | sort -u | head -6 >> $OUT/ncu.txt
}
prof granite128 --hidden 1536 --ffn 512 --experts 40 --topk 8 --tokens 128
prof granite1024 --hidden 1536 --ffn 512 --experts 40 --topk 8 --tokens 1024
prof granite4096 --hidden 1536 --ffn 512 --experts 40 --topk 8 --tokens 4096
prof olmoe1024 --preset olmoe-1b-7b --tokens 1024
prof olmoe4096 --preset olmoe-1b-7b --tokens 4096
prof qwen3-1024 --preset qwen3-30b-a3b --tokens 1024
prof qwen3-4096 --preset qwen3-30b-a3b --tokens 4096
prof gptoss4096 --hidden 2880 --ffn 2880 --experts 32 --topk 4 --tokens 4096
cd $OUT && tar czf logs.tgz h 2>/dev/null; rm -rf h
cat summary.txt ncu.txt
