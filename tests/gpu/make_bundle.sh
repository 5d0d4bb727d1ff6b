#!/usr/bin/env bash
# Builds aiayn with CUDA (sm_90) and assembles gpu-bundle/: the binaries and every shared library they need
# that the GPU machine's image lacks, plus a relocatable copy of Debian's Open MPI 4.1 runtime (mpirun,
# its plugins, PMIx, help files, MCA params). tests/gpu/check.sh runs it on the lent GPU machine, which has
# CUDA 13, the driver, PyTorch and Python but none of Debian's libraries (Open MPI, HDF5, spdlog, fmt,
# SentencePiece, yaml-cpp, OpenBLAS).
#
#   tests/gpu/make_bundle.sh              build (build-gpu/, AIAYN_CUDA=ON; aiayn, cuda_ops_test, cuda_model_test)
#                                         then assemble gpu-bundle/
#   tests/gpu/make_bundle.sh --no-build   assemble from an existing build
#
# Left out on purpose: glibc (libc, libm, libpthread, libdl, librt, ld-linux, ...) and the CUDA toolkit and
# driver libraries (libcuda, libcudart, libcublas, libcublasLt, libnccl, libnvidia-*): the device's own are
# used. libstdc++ and libgcc_s go to lib/compat/, which tests/gpu/env.sh puts on the library path only when
# the device's own are missing or too old for the binaries.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
build=${AIAYN_BUILD_DIR:-$root/build-gpu}
[[ $build == /* ]] || build=$root/$build
out=$root/gpu-bundle
multiarch=/usr/lib/x86_64-linux-gnu
ompi_pkglib=$multiarch/openmpi/lib/openmpi3
pmix_root=$multiarch/pmix2

if [[ ${1:-} != --no-build ]]; then
  AIAYN_BUILD_DIR=$build AIAYN_CUDA=ON AIAYN_JOBS=${AIAYN_JOBS:-2} nice -n 10 "$root/launch/build.sh" \
    --target aiayn cuda_ops_test cuda_model_test
fi
tests=(cuda_ops_test cuda_model_test)
for f in "$build/aiayn" "${tests[@]/#/$build/tests/cuda/}"; do
  [[ -x $f ]] || { echo "make_bundle: $f is missing (build first, or drop --no-build)" >&2; exit 1; }
done
grep -q '^AIAYN_CUDA:STRING=ON$' "$build/CMakeCache.txt" || { echo "make_bundle: $build is not a CUDA build" >&2; exit 1; }
for p in /usr/bin/orterun "$ompi_pkglib" /usr/share/openmpi /etc/openmpi/openmpi-mca-params.conf "$pmix_root/lib/pmix"; do
  [[ -e $p ]] || { echo "make_bundle: $p is missing (Debian 12's openmpi-bin/libopenmpi3/libpmix2 expected)" >&2; exit 1; }
done

rm -rf "$out"
mkdir -p "$out"/{bin,lib/compat,lib/hwloc-plugins,ompi/lib/openmpi3,ompi/share,ompi/etc,pmix/lib/pmix,pmix/share}

# Sonames never bundled: glibc, the dynamic loader, the CUDA toolkit and driver.
is_system() {
  [[ $1 =~ ^(linux-vdso|linux-gate|ld-linux|libc\.so|libm\.so|libmvec\.so|libpthread\.so|libdl\.so|librt\.so|libresolv\.so|libutil\.so|libanl\.so|libnsl\.so|libBrokenLocale\.so|libcrypt\.so\.1|libcuda\.so|libcudart\.so|libcublas\.so|libcublasLt\.so|libnccl\.so|libnvidia-|libnvrtc) ]]
}
is_compat() { [[ $1 =~ ^(libstdc\+\+\.so|libgcc_s\.so) ]]; }
# Libraries of Open MPI plugins we leave out (with the plugins that need them): InfiniBand, UCX, libfabric,
# PSM; and OpenSHMEM's (liboshmem), which MPI programs never load. Debian's openmpi-mca-params.conf turns
# those transports off anyway; one node needs shared memory only.
heavy_re='^(libibverbs|librdmacm|libucp|libuct|libucs|libucm|libfabric|libpsm|libmlx|libefa|liboshmem)'

# copy_lib SONAME PATH: the real file (links followed) under the soname, in lib/ or lib/compat/.
copy_lib() {
  local name=$1 path=$2 dest=$out/lib
  is_compat "$name" && dest=$out/lib/compat
  [[ -e $dest/$name ]] && return 0
  cp -L "$path" "$dest/$name"
  chmod u+w "$dest/$name"
}
# deps FILE: "soname path" for every library ldd resolves for FILE (transitively), system ones dropped;
# fails on any "not found".
deps() {
  local l
  if ldd "$1" | grep -q 'not found'; then
    echo "make_bundle: unresolved libraries for $1:" >&2
    ldd "$1" | grep 'not found' >&2
    return 1
  fi
  ldd "$1" | awk '$2 == "=>" && $3 ~ /^\// {print $1, $3}' | while read -r name path; do
    is_system "$name" || echo "$name $path"
  done
}
bundle_deps_of() {
  local name path
  while read -r name path; do copy_lib "$name" "$path"; done < <(deps "$1")
}

# 1. The binaries: aiayn and the two CUDA test programs (ops against the CPU; the whole model against the CPU).
cp "$build/aiayn" "${tests[@]/#/$build/tests/cuda/}" "$out/bin/"
for b in aiayn "${tests[@]}"; do bundle_deps_of "$out/bin/$b"; done

# 2. OpenBLAS, loaded with dlopen at run time (kernels/cpu/blas.cpp), so invisible to ldd: the real file.
openblas=$(readlink -f "$multiarch/libopenblas.so.0")
copy_lib libopenblas.so.0 "$openblas"
bundle_deps_of "$openblas"

# 3. Open MPI's runtime: mpirun (orterun), plugins, help files, MCA params, default hostfile.
cp /usr/bin/orterun "$out/bin/orterun"
cp /usr/bin/orterun "$out/bin/mpirun"
bundle_deps_of /usr/bin/orterun
skipped_plugins=()
for so in "$ompi_pkglib"/*.so; do
  name=$(basename "$so")
  if ! ldd "$so" | awk '$2 == "=>" {print $1}' | grep -Eq "$heavy_re"; then
    cp "$so" "$out/ompi/lib/openmpi3/"
    bundle_deps_of "$so"
  else
    skipped_plugins+=("$name")
  fi
done
cp -r /usr/share/openmpi "$out/ompi/share/openmpi"
cp /etc/openmpi/openmpi-mca-params.conf "$out/ompi/etc/"
[[ -f /etc/openmpi/openmpi-default-hostfile ]] && cp /etc/openmpi/openmpi-default-hostfile "$out/ompi/etc/"
# PMIx (Open MPI's pmix ext3x plugin loads libpmix, which has plugins and help files of its own).
cp "$pmix_root"/lib/pmix/*.so "$out/pmix/lib/pmix/"
for so in "$out"/pmix/lib/pmix/*.so; do bundle_deps_of "$so"; done
cp -r "$pmix_root/share/pmix" "$out/pmix/share/pmix"
# hwloc looks for plugins in a built-in folder; env.sh points it at this empty one so that a different
# hwloc's plugins on the device are never loaded into ours.
echo "hwloc plugins: none bundled (HWLOC_PLUGINS_PATH points here)" >"$out/lib/hwloc-plugins/README"

# 4. The PyTorch baseline (../shared does not travel to the device).
cp "$root/../shared/bench/torch_baseline.py" "$out/torch_baseline.py"

# 5. A second pass over everything bundled: plugins' libraries may need more libraries.
for f in "$out"/lib/*.so* "$out"/lib/compat/*.so*; do bundle_deps_of "$f"; done

# 6. Strip symbols (debug info and symbol tables) from the copies; the build keeps its own.
strip --strip-unneeded "$out"/bin/aiayn "${tests[@]/#/$out/bin/}" "$out"/lib/*.so* "$out"/lib/compat/*.so* \
  "$out"/ompi/lib/openmpi3/*.so "$out"/pmix/lib/pmix/*.so 2>/dev/null || true

# 7. The libraries over 1 MiB travel xz-compressed (OpenBLAS alone is 36 MiB, 4 compressed): the working tree
# that goes to the device is limited to 64 MiB. tests/gpu/env.sh unpacks them once into a cache folder
# outside the bundle (so that the bundle keeps its size here too) and puts that folder on the library path.
for f in "$out"/lib/*.so* "$out"/lib/compat/*.so*; do
  [[ $f == *.xz ]] && continue
  if (( $(stat -c %s "$f") > 1048576 )); then xz -6 -T2 "$f"; fi
done
# So do aiayn and the test programs (15 MiB, 3 compressed); env.sh unpacks them into AIAYN_BUNDLE_BIN beside
# the libraries. mpirun/orterun stay as they are in bin/ (Open MPI's OPAL_BINDIR).
xz -6 -T2 "$out"/bin/aiayn "${tests[@]/#/$out/bin/}"

{
  echo "built: $(date -u +%Y-%m-%dT%H:%M:%SZ) on $(hostname) from $(git -C "$root" rev-parse --short HEAD)$(git -C "$root" diff --quiet HEAD || echo '+dirty')"
  echo "build dir: $build"
  echo "openblas: $openblas"
  echo "open mpi plugins left out (need InfiniBand/UCX/libfabric/PSM/OpenSHMEM): ${skipped_plugins[*]:-none}"
  echo "programs:"
  (cd "$out/bin" && find . -maxdepth 1 -type f -printf '%P %s\n' | sort | awk '{printf "  %-40s %9d bytes\n", $1, $2}')
  echo "libraries:"
  (cd "$out/lib" && find . -maxdepth 2 -type f -name '*.so*' -printf '%P %s\n' | sort | awk '{printf "  %-40s %9d bytes\n", $1, $2}')
} >"$out/MANIFEST.txt"

echo "gpu-bundle: $(du -sh "$out" | cut -f1) in $(find "$out" -type f | wc -l) files ($out)"
size_mib=$(du -sm "$out" | cut -f1)
if (( size_mib > 50 )); then echo "make_bundle: warning: bundle is ${size_mib} MiB (> 50)" >&2; fi
