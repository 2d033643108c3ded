#!/bin/bash
# Not run yet (device time): a follow-up call should run it from the carry folder, OUT=$OUT ./sanitize.sh
# compute-sanitizer over the expert cache and store tests (small shapes)
export LD_LIBRARY_PATH=$PWD:${LD_LIBRARY_PATH:-}
export DMOE_GPU_TEST_QUICK=1
CS=$(command -v compute-sanitizer || echo /usr/local/cuda/bin/compute-sanitizer)
for tool in memcheck racecheck synccheck; do
  timeout 60 $CS --tool $tool --error-exitcode 9 ./test-cuda-expert-cache > "$OUT/san-$tool-cache.log" 2>&1
  echo "$tool test-cuda-expert-cache rc=$? $(grep -E 'ERROR SUMMARY|checks' "$OUT/san-$tool-cache.log" | tr '\n' ' ')"
done
timeout 60 $CS --tool memcheck --error-exitcode 9 ./test-cuda-store > "$OUT/san-memcheck-store.log" 2>&1
echo "memcheck test-cuda-store rc=$? $(grep -E 'ERROR SUMMARY|checks' "$OUT/san-memcheck-store.log" | tr '\n' ' ')"
