# scripts/deps.sh: sourced by run.sh and test.sh, so that on a fresh Debian or
# Ubuntu machine those two commands install what they need themselves.
#   dmoe_deps_system         cmake (>= 3.24), ninja, gcc/g++, python3, libcjson-dev
#   dmoe_deps_python DIR     a venv in DIR with numpy, pytest and safetensors for the
#                            Python tests and the store's reference-writer test, first
#                            on PATH (torch and transformers are optional: their tests skip)
# Nothing is installed when it is already there; DMOE_NO_INSTALL=1 installs nothing.

dmoe__sudo() {
    if [ "$(id -u)" != 0 ] && command -v sudo >/dev/null 2>&1; then sudo "$@"; else "$@"; fi
}

dmoe__apt() {
    if [ "${DMOE_NO_INSTALL:-0}" = 1 ] || ! command -v apt-get >/dev/null 2>&1; then
        echo "== deps: missing $* (install them; DMOE_NO_INSTALL is set or there is no apt-get)" >&2
        return 1
    fi
    echo "== deps: installing $*"
    dmoe__sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive dmoe__sudo apt-get install -y -qq --no-install-recommends "$@"
}

dmoe_deps_system() {
    # nvcc is often installed but not on PATH.
    if ! command -v nvcc >/dev/null 2>&1 && [ -x /usr/local/cuda/bin/nvcc ]; then
        export PATH="/usr/local/cuda/bin:$PATH"
    fi
    local missing=()
    command -v cmake >/dev/null 2>&1 || missing+=(cmake)
    command -v ninja >/dev/null 2>&1 || missing+=(ninja-build)
    command -v gcc >/dev/null 2>&1 || missing+=(gcc)
    command -v g++ >/dev/null 2>&1 || missing+=(g++)          # nvcc's host compiler
    command -v python3 >/dev/null 2>&1 || missing+=(python3)
    [ -e /usr/include/cjson/cJSON.h ] || missing+=(libcjson-dev) # safetensors store
    if [ "${#missing[@]}" -gt 0 ]; then dmoe__apt "${missing[@]}" || return 1; fi
    local v
    v="$(cmake --version | head -n1 | awk '{print $3}')"
    if [ "$(printf '%s\n' 3.24 "$v" | sort -V | head -n1)" != 3.24 ]; then
        echo "== deps: cmake $v is older than 3.24; installing a newer one with pip"
        python3 -m pip install -q --user "cmake>=3.24" && export PATH="$HOME/.local/bin:$PATH"
    fi
}

dmoe_deps_python() {
    local dir="$1"
    if [ ! -x "$dir/bin/python3" ] || ! "$dir/bin/python3" -c 'import numpy, pytest, safetensors' 2>/dev/null; then
        if [ "${DMOE_NO_INSTALL:-0}" = 1 ]; then return 1; fi
        python3 -c 'import venv, ensurepip' 2>/dev/null || dmoe__apt python3-venv || return 1
        echo "== deps: Python test environment in $dir"
        python3 -m venv "$dir" &&
            "$dir/bin/pip" install -q numpy pytest safetensors "setuptools>=70.1" wheel || return 1
    fi
    export PATH="$dir/bin:$PATH"
}
