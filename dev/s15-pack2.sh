#!/bin/bash
# dev/s15-pack2.sh: .cudadev for dev/s15-call2.sh: bin.tgz (the source defaults: FM_NS=3, every-lane releases, atomic
# pick word) and variant libraries: ns4 (session 14's ring depth), lane0 (lane-0 releases), ring (every lane on the
# ring's stages only), red (every lane on the reduction buffers only).
set -eu
cmake -S . -B build-cuda -G Ninja -DCMAKE_BUILD_TYPE=Release -DCMAKE_CUDA_FLAGS= > /dev/null
bash bench/gpu-bench.sh pack .cudadev
mkdir -p .cudadev/v
declare -A F=([ns4]="-DFM_NS=4" [lane0]="-DFM_LANE_ARRIVE=0" [ring]="-DFM_LANE_ARRIVE=2" [red]="-DFM_LANE_ARRIVE=3")
for v in "${!F[@]}"; do
  ( cmake -S . -B /tmp/bv-$v -G Ninja -DCMAKE_BUILD_TYPE=Release "-DCMAKE_CUDA_FLAGS=${F[$v]}" > /tmp/bv-$v.log 2>&1 &&
    cmake --build /tmp/bv-$v --target dmoe_shared -j 2 >> /tmp/bv-$v.log 2>&1 &&
    gzip -c /tmp/bv-$v/lib/libdmoe.so > .cudadev/v/$v.so.gz && echo "built $v" ) || echo "FAILED $v (see /tmp/bv-$v.log)" &
done
wait
du -sh .cudadev
