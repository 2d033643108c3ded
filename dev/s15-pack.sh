#!/bin/bash
# dev/s15-pack.sh [name=FLAGS ...]: builds .cudadev for dev/s15-call.sh / dev/s15-call2.sh: bin.tgz (the source
# defaults) and a libdmoe.so per variant, built with CMAKE_CUDA_FLAGS=FLAGS, gzipped to .cudadev/v/<name>.so.gz.
# Call 2's set is the default: old (session 14's forms), lane0 (lane-0 releases), ns3 / ns2 (3 / 2 ring stages);
# call 3's: bash dev/s15-pack.sh ns4=-DFM_NS=4 lane0=-DFM_LANE_ARRIVE=0 ring=-DFM_LANE_ARRIVE=2 red=-DFM_LANE_ARRIVE=3
# (with FM_NS=3 as the source default).
set -eu
[ $# -gt 0 ] || set -- "old=-DFM_LANE_ARRIVE=0 -DFM_PICK_FORM=0" lane0=-DFM_LANE_ARRIVE=0 ns3=-DFM_NS=3 ns2=-DFM_NS=2
cmake -S . -B build-cuda -G Ninja -DCMAKE_BUILD_TYPE=Release -DCMAKE_CUDA_FLAGS= > /dev/null
bash bench/gpu-bench.sh pack .cudadev
mkdir -p .cudadev/v
for spec in "$@"; do
  v=${spec%%=*} flags=${spec#*=}
  ( cmake -S . -B /tmp/bv-$v -G Ninja -DCMAKE_BUILD_TYPE=Release "-DCMAKE_CUDA_FLAGS=$flags" > /tmp/bv-$v.log 2>&1 &&
    cmake --build /tmp/bv-$v --target dmoe_shared -j 2 >> /tmp/bv-$v.log 2>&1 &&
    gzip -c /tmp/bv-$v/lib/libdmoe.so > .cudadev/v/$v.so.gz && echo "built $v" ) || echo "FAILED $v (see /tmp/bv-$v.log)" &
done
wait
du -sh .cudadev
