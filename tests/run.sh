#!/usr/bin/env bash
# The one test command: installs what is missing, builds in build/ (reused when present), runs every test.
#   tests/run.sh                 all tests (labels cpu, mpi, cuda, integration)
#   tests/run.sh -L cpu          ctest arguments pass through
# CUDA tests skip (with a message) where no GPU is usable. Exits non-zero on any failure.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
"$root/launch/install_deps.sh"
export CCACHE_DIR=${CCACHE_DIR:-$HOME/.cache/aiayn-ccache}
export CCACHE_MAXSIZE=${CCACHE_MAXSIZE:-5G}
start=$(date +%s)
"$root/launch/build.sh"
echo "aiayn: build took $(( $(date +%s) - start ))s" >&2
# The field's own Python tools (TensorBoard's reader) in a venv; tests that need them skip without it.
if [[ -z "${AIAYN_PYTHON:-}" ]]; then
  AIAYN_PYTHON=$("$root/tests/python_env.sh") || AIAYN_PYTHON=""
  export AIAYN_PYTHON
fi
cd "${AIAYN_BUILD_DIR:-$root/build}"
# Open MPI refuses root and more ranks than cores unless told; tests run as root in CI.
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_rmaps_base_oversubscribe=1
ctest --output-on-failure --timeout 900 "$@"
