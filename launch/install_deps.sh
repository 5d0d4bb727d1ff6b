#!/usr/bin/env bash
# Installs what aiayn needs from Debian's packages, only what is missing; quiet and fast when all is there.
# Used by launch/quickstart.sh and tests/run.sh. Needs root (or sudo) only when something is missing.
set -euo pipefail

packages=(
  build-essential cmake pkg-config ccache
  libopenmpi-dev openmpi-bin
  libhdf5-dev
  libspdlog-dev libfmt-dev
  libsentencepiece-dev
  libyaml-cpp-dev
  libcli11-dev
  nlohmann-json3-dev
  libprotobuf-c-dev protobuf-c-compiler libboost-dev
  libopenblas0-pthread libdnnl2
  zlib1g-dev
  libgtest-dev libgmock-dev
  iproute2  # tests/multihost: network-namespace hosts (ip, tc)
)

missing=()
for p in "${packages[@]}"; do
  status=$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)
  [[ "$status" == "install ok installed" ]] || missing+=("$p")
done
[[ ${#missing[@]} -eq 0 ]] && exit 0

echo "aiayn: installing missing packages: ${missing[*]}" >&2
sudo=""
if [[ $(id -u) -ne 0 ]]; then
  command -v sudo >/dev/null || { echo "aiayn: need root (or sudo) to install: ${missing[*]}" >&2; exit 1; }
  sudo="sudo"
fi
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -q >/dev/null
$sudo apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
echo "aiayn: packages installed" >&2
