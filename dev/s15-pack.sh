#!/bin/bash
# dev/s15-pack.sh: builds .cudadev for dev/s15-call.sh: bin.tgz (the source defaults: every-lane releases, atomic
# pick word) and variant libraries in .cudadev/v/<v>.so.gz: old (session 14's defaults: lane-0 releases, volatile
# pick word), lane0 (lane-0 releases only), ns3 / ns2 (ring of 3 / 2 stages).
set -eu
cmake -S . -B build-cuda -G Ninja -DCMAKE_BUILD_TYPE=Release -DCMAKE_CUDA_FLAGS= > /dev/null
bash bench/gpu-bench.sh pack .cudadev
mkdir -p .cudadev/v
declare -A F=([old]="-DFM_LANE_ARRIVE=0 -DFM_PICK_FORM=0" [lane0]="-DFM_LANE_ARRIVE=0" [ns3]="-DFM_NS=3" [ns2]="-DFM_NS=2")
for v in "${!F[@]}"; do
  ( cmake -S . -B /tmp/bv-$v -G Ninja -DCMAKE_BUILD_TYPE=Release "-DCMAKE_CUDA_FLAGS=${F[$v]}" > /tmp/bv-$v.log 2>&1 &&
    cmake --build /tmp/bv-$v --target dmoe_shared -j 2 >> /tmp/bv-$v.log 2>&1 &&
    gzip -c /tmp/bv-$v/lib/libdmoe.so > .cudadev/v/$v.so.gz && echo "built $v" ) || echo "FAILED $v (see /tmp/bv-$v.log)" &
done
wait
du -sh .cudadev
