#!/bin/bash
# dev/staged-t8.sh: session 10's third device call (carry .cudadev, packed from main): where the staged path's
# qwen3 T=8 goes (nsys kernel trace of `dmoe bench`, no flush), the staged GEMM choice at T=8 under the bench's write
# flush (auto = swap-AB 16, stream, swap 32), and the resident-mode bench of the current kernel.
set -u
R=$PWD; OUT=${OUT:-$PWD/out}; mkdir -p $OUT/h
mkdir -p /tmp/b && tar xzf .cudadev/bin.tgz -C /tmp/b; export LD_LIBRARY_PATH=/tmp/b
NSYS=$(command -v nsys || ls /usr/local/cuda*/bin/nsys /opt/nvidia/nsight-systems/*/bin/nsys 2>/dev/null | head -1)
echo "nsys: ${NSYS:-none}" > $OUT/summary.txt
if [ -n "$NSYS" ]; then
  for p in staged fused; do
    DMOE_PATH=$p timeout 120 $NSYS profile -o /tmp/p_$p --force-overwrite true /tmp/b/dmoe bench --backend cuda \
      --preset qwen3-30b-a3b --tokens 8 --reps 20 > $OUT/h/nsys-$p.log 2>&1
    timeout 60 $NSYS stats --report cuda_gpu_trace --format csv /tmp/p_$p.nsys-rep > $OUT/h/trace-$p.csv 2>&1
    timeout 60 $NSYS stats --report cuda_gpu_kern_sum /tmp/p_$p.nsys-rep > $OUT/h/kern-$p.txt 2>&1
    echo "nsys $p rc=$?" >> $OUT/summary.txt
  done
fi
NCU=$(command -v ncu || ls /usr/local/cuda*/bin/ncu 2>/dev/null | head -1)
echo "ncu: ${NCU:-none}" >> $OUT/summary.txt
if [ -n "$NCU" ]; then  # per-kernel durations, each launch alone with caches flushed (ncu's default)
  for p in staged fused; do
    DMOE_PATH=$p timeout 150 $NCU --metrics gpu__time_duration.sum,dram__bytes_read.sum,dram__throughput.avg.pct_of_peak_sustained_elapsed \
      --launch-skip 40 --launch-count 12 /tmp/b/dmoe bench --backend cuda --preset qwen3-30b-a3b --tokens 8 --reps 5 \
      > $OUT/h/ncu-$p.txt 2>&1
    echo "ncu $p rc=$?" >> $OUT/summary.txt
  done
fi
timeout 60 /tmp/b/resident-bench 2048 768 128 8 --batches 10000 > $OUT/h/resident-bench.txt 2>&1
echo "resident rc=$?" >> $OUT/summary.txt
for v in "auto:" "stream:DMOE_CUDA_GEMM=stream" "swap32:DMOE_CUDA_SWAP_N=32"; do
  n=${v%%:*}; e=${v#*:}
  env $e DMOE_PRINT_CONFIG=1 DMOE_LIB=/tmp/b/libdmoe.so timeout 150 python3 bench/gpu_bench.py --out /tmp/gb_$n \
    --presets qwen3-30b-a3b --tokens 8 --clean 0 > $OUT/h/gb-$n.txt 2>&1
  echo "gb $n rc=$?" >> $OUT/summary.txt
done
cd $OUT && tar czf logs.tgz h; cat summary.txt; tail -8 h/resident-bench.txt; for f in h/gb-*.txt; do echo "== $f"; grep -E "experts|^qwen3|paths" $f | cut -c1-230; done
for p in staged fused; do echo "== kern $p"; grep -E "^ +[0-9]" h/kern-$p.txt 2>/dev/null | cut -c1-200 | head -12
  grep -E "^  [a-z_].*\(|gpu__time|dram__bytes|dram__through" h/ncu-$p.txt 2>/dev/null | sed -E 's/ +/ /g' | cut -c1-150 | head -48; done
