#!/usr/bin/env bash
# test.sh: build dmoe and run every test, twice:
#   build/           Release, with the CUDA code when nvcc is found (compiled even
#                    without a GPU; GPU tests skip themselves there), ctest;
#   build-sanitize/  AddressSanitizer + UndefinedBehaviorSanitizer, CPU only
#                    (nvcc does not take -fsanitize; the GPU side gets
#                    compute-sanitizer instead), ctest.
#   python/      the Python package built in place (a CPU libdmoe of its own)
#                and its pytest suite, in a venv (build-pyvenv/) with numpy,
#                pytest and safetensors that this script makes when missing.
# Missing system packages (cmake, ninja, gcc, g++, python3, libcjson-dev) are
# installed with apt-get first; DMOE_NO_INSTALL=1 turns installing off.
# Environment: JOBS (build parallelism, default: all cores),
#              DMOE_SKIP_SANITIZE=1 (only the first build).
set -euo pipefail
cd "$(dirname "$0")"

# On a fresh Debian/Ubuntu machine, install what is missing (scripts/deps.sh).
. scripts/deps.sh
dmoe_deps_system
dmoe_deps_python "$PWD/build-pyvenv" ||
    echo "== test.sh: no Python test environment (the Python tests will be skipped)"
generator=()
if command -v ninja >/dev/null 2>&1; then generator=(-G Ninja); fi
jobs="${JOBS:-$(nproc)}"

echo "== test.sh: Release build (build/)"
cmake -S . -B build "${generator[@]}" -DCMAKE_BUILD_TYPE=Release
cmake --build build -j "$jobs"
(cd build && ctest --output-on-failure)

if python3 -c 'import numpy, pytest' 2>/dev/null; then
    echo "== test.sh: Python package (python/, built in place)"
    (cd python && DMOE_BUILD_JOBS="$jobs" python3 setup.py -q build_ext --inplace)
    PYTHONPATH="$PWD/python${PYTHONPATH:+:$PYTHONPATH}" DMOE_TEST_BACKENDS=cpu-ref,cpu \
        python3 -m pytest -q -p no:cacheprovider python/tests
else
    echo "== test.sh: SKIPPED the Python tests: python3 lacks numpy or pytest (pip install numpy pytest)"
fi

if [ "${DMOE_SKIP_SANITIZE:-0}" != 1 ]; then
    echo "== test.sh: ASan + UBSan build (build-sanitize/)"
    cmake -S . -B build-sanitize "${generator[@]}" -DCMAKE_BUILD_TYPE=RelWithDebInfo \
        -DDMOE_SANITIZE=ON -DDMOE_CUDA=OFF
    cmake --build build-sanitize -j "$jobs"
    (cd build-sanitize && ctest --output-on-failure)
fi
echo "== test.sh: all tests passed"
