#!/usr/bin/env bash
# Makes (once) the Python environment the tests use for the field's own Python tools, and prints its
# interpreter: TensorBoard's event reader (tests of RUN/tensorboard), CTranslate2 and SentencePiece (tests of
# `aiayn export`). Packages come from PyPI into a venv, never into the system's Python: ${AIAYN_VENV:-$HOME/.cache/aiayn-venv}, reused when it already has them.
# Prints nothing and exits 1 when it cannot be made (no python3 venv module, no network); the tests that need
# it then skip with the reason, or fail under AIAYN_NO_SKIP=1.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv=${AIAYN_VENV:-$HOME/.cache/aiayn-venv}
requirements=$root/tests/requirements.txt
# What each requirement is imported as, to check the venv without asking PyPI.
imports="tensorboard, ctranslate2, sentencepiece"

if [[ -x "$venv/bin/python" ]] && "$venv/bin/python" -c "import $imports" 2>/dev/null; then
  echo "$venv/bin/python"
  exit 0
fi
if ! python3 -c "import venv, ensurepip" 2>/dev/null; then
  echo "aiayn: python3 with venv and ensurepip is needed for the TensorBoard test; installing python3-venv" >&2
  if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends python3-venv >/dev/null 2>&1 || true
  fi
fi
{
  python3 -m venv "$venv" &&
    "$venv/bin/pip" install -q --disable-pip-version-check -r "$requirements" &&
    "$venv/bin/python" -c "import $imports"
} >&2 || { echo "aiayn: could not make the Python environment $venv (see above)" >&2; exit 1; }
echo "$venv/bin/python"
