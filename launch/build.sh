#!/usr/bin/env bash
# Configures (once) and builds aiayn in build/ (or $AIAYN_BUILD_DIR). Reuses an existing build directory.
# AIAYN_CUDA=AUTO|ON|OFF chooses the CUDA backend (AUTO: when nvcc is found).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
build=${AIAYN_BUILD_DIR:-$root/build}
jobs=${AIAYN_JOBS:-$(nproc)}
cuda=${AIAYN_CUDA:-AUTO}
if [[ ! -f "$build/CMakeCache.txt" ]] || ! grep -q "^AIAYN_CUDA:STRING=$cuda\$" "$build/CMakeCache.txt"; then
  cmake -S "$root" -B "$build" -DCMAKE_BUILD_TYPE=Release -DAIAYN_CUDA="$cuda" >/dev/null
fi
cmake --build "$build" -j "$jobs" "$@"
