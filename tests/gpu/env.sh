# Sourced (bash): the environment that makes gpu-bundle/ (tests/gpu/make_bundle.sh) work where it lies,
# on a machine without Debian's libraries: the bundle's libraries first on the library path, then the CUDA
# libraries (libcudart, libcublas, libcublasLt, libnccl) of the machine itself, and Open MPI / PMIx told
# where their plugins, help files and MCA parameter file are (Open MPI's OPAL_* and PMIx's PMIX_* install
# directory variables override the paths compiled in, /usr/... on Debian).
#
#   AIAYN_BUNDLE=/path/to/gpu-bundle source tests/gpu/env.sh     (default: gpu-bundle/ in the repository)
#
# Sets AIAYN_BUNDLE, AIAYN_BUNDLE_LIBS (the unpacked .xz libraries), AIAYN_BUNDLE_BIN (the programs: aiayn,
# cuda_ops_test, cuda_model_test, mpirun), PATH, LD_LIBRARY_PATH, OPAL_*, PMIX_*, OMPI_MCA_*, PMIX_MCA_*,
# HWLOC_PLUGINS_PATH and prints what it could not find on stderr. AIAYN_CUDA_LIBDIRS lists the CUDA folders it put on the path.
_aiayn_here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
export AIAYN_BUNDLE=${AIAYN_BUNDLE:-$(cd "$_aiayn_here/../.." && pwd)/gpu-bundle}
_b=$AIAYN_BUNDLE

# CUDA runtime libraries of this machine: the toolkit's folders, then the pip wheels PyTorch brings.
AIAYN_CUDA_LIBDIRS=""
_aiayn_add_cuda_dir() { [[ -d $1 ]] && [[ ":$AIAYN_CUDA_LIBDIRS:" != *":$1:"* ]] && AIAYN_CUDA_LIBDIRS=${AIAYN_CUDA_LIBDIRS:+$AIAYN_CUDA_LIBDIRS:}$1; return 0; }
for _lib in libcudart.so.13 libcublas.so.13 libcublasLt.so.13 libnccl.so.2; do
  _found=""
  for _d in /usr/local/cuda/lib64 /usr/local/cuda/lib /usr/local/cuda/targets/x86_64-linux/lib \
            /usr/local/cuda-13*/lib64 /usr/local/cuda-13*/lib /usr/lib/x86_64-linux-gnu; do
    if [[ -e $_d/$_lib ]]; then _found=$_d; break; fi
  done
  if [[ -z $_found ]] && command -v python3 >/dev/null; then
    # nvidia-* wheels (nvidia-cublas, nvidia-cuda-runtime, nvidia-nccl-cu13): site-packages/nvidia/**/lib
    _found=$(python3 - "$_lib" 2>/dev/null <<'EOF'
import glob, os, site, sys
roots = site.getsitepackages() + [site.getusersitepackages()]
for r in roots:
    for p in glob.glob(os.path.join(r, "nvidia", "**", sys.argv[1]), recursive=True):
        print(os.path.dirname(p)); raise SystemExit
EOF
)
  fi
  if [[ -n $_found ]]; then _aiayn_add_cuda_dir "$_found"; else echo "env.sh: $_lib not found on this machine" >&2; fi
done
export AIAYN_CUDA_LIBDIRS

# The bundle's large libraries and its programs (aiayn, the CUDA tests) travel as .xz (make_bundle.sh): unpack
# them once into a cache folder outside the bundle, keyed by the bundle's MANIFEST.txt, so the bundle itself
# never grows: libraries into AIAYN_BUNDLE_LIBS, programs into AIAYN_BUNDLE_BIN (an uncompressed bin/NAME in
# the bundle is used as it is).
_key=$(cksum <"$_b/MANIFEST.txt" 2>/dev/null | cut -d' ' -f1)
export AIAYN_BUNDLE_LIBS=${AIAYN_BUNDLE_CACHE:-${TMPDIR:-/tmp}/aiayn-gpu-bundle-$(id -u)}/${_key:-nokey}
export AIAYN_BUNDLE_BIN=$AIAYN_BUNDLE_LIBS/bin
for _x in "$_b"/lib/*.xz "$_b"/lib/compat/*.xz "$_b"/bin/*.xz; do
  [[ -e $_x ]] || continue
  case $_x in
    "$_b"/bin/*) _dst=$AIAYN_BUNDLE_BIN/$(basename "${_x%.xz}") ;;
    *) _rel=${_x#"$_b/lib/"}; _dst=$AIAYN_BUNDLE_LIBS/${_rel%.xz} ;;
  esac
  [[ -s $_dst ]] && continue
  mkdir -p "$(dirname "$_dst")"
  if command -v xz >/dev/null; then xz -dc "$_x" >"$_dst.tmp.$$"
  else python3 -c 'import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2], "wb"))' "$_x" "$_dst.tmp.$$"
  fi && chmod "$([[ $_x == "$_b"/bin/* ]] && echo 755 || echo 644)" "$_dst.tmp.$$" && mv -f "$_dst.tmp.$$" "$_dst" ||
    { rm -f "$_dst.tmp.$$"; echo "env.sh: could not unpack $_x" >&2; }
done
mkdir -p "$AIAYN_BUNDLE_LIBS/compat" "$AIAYN_BUNDLE_BIN"
for _x in "$_b"/bin/*; do  # programs shipped uncompressed win over the cache
  [[ -f $_x && -x $_x && $_x != *.xz ]] && ln -sf "$_x" "$AIAYN_BUNDLE_BIN/$(basename "$_x")"
done

_libs=$_b/lib:$AIAYN_BUNDLE_LIBS
export LD_LIBRARY_PATH=$_libs${AIAYN_CUDA_LIBDIRS:+:$AIAYN_CUDA_LIBDIRS}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
# libstdc++ / libgcc_s from the build machine only where this machine's own do not satisfy the binaries.
if [[ -x $AIAYN_BUNDLE_BIN/aiayn ]] && ldd "$AIAYN_BUNDLE_BIN/aiayn" 2>&1 | grep -Eq 'lib(stdc\+\+|gcc_s)[^ ]* => not found|GLIBCXX_[0-9.]+. not found|GCC_[0-9.]+. not found'; then
  export LD_LIBRARY_PATH=$_libs:$_b/lib/compat:$AIAYN_BUNDLE_LIBS/compat${LD_LIBRARY_PATH#"$_libs"}
  echo "env.sh: using the bundle's libstdc++/libgcc_s (lib/compat)" >&2
fi
export PATH=$AIAYN_BUNDLE_BIN:$_b/bin:$PATH

# Open MPI 4.1 (opal installdirs "env" component): every install folder, so nothing under /usr is looked at.
export OPAL_PREFIX=$_b/ompi OPAL_EXEC_PREFIX=$_b/ompi
export OPAL_BINDIR=$_b/bin OPAL_SBINDIR=$_b/bin OPAL_LIBEXECDIR=$_b/bin
export OPAL_LIBDIR=$_b/lib OPAL_PKGLIBDIR=$_b/ompi/lib/openmpi3
export OPAL_DATAROOTDIR=$_b/ompi/share OPAL_DATADIR=$_b/ompi/share OPAL_PKGDATADIR=$_b/ompi/share/openmpi
export OPAL_SYSCONFDIR=$_b/ompi/etc OPAL_LOCALSTATEDIR=$_b/ompi/var OPAL_SHAREDSTATEDIR=$_b/ompi/com
export OPAL_INCLUDEDIR=$_b/ompi/include OPAL_PKGINCLUDEDIR=$_b/ompi/include OPAL_MANDIR=$_b/ompi/man OPAL_INFODIR=$_b/ompi/info
export OMPI_MCA_mca_base_component_path=$_b/ompi/lib/openmpi3
export OMPI_MCA_mca_base_param_files=$_b/ompi/etc/openmpi-mca-params.conf
export OMPI_MCA_orte_default_hostfile=$_b/ompi/etc/openmpi-default-hostfile
# PMIx 4 (libpmix2), loaded by Open MPI's pmix ext3x plugin.
export PMIX_PREFIX=$_b/pmix PMIX_INSTALL_PREFIX=$_b/pmix PMIX_EXEC_PREFIX=$_b/pmix
export PMIX_LIBDIR=$_b/lib PMIX_PKGLIBDIR=$_b/pmix/lib/pmix
export PMIX_DATAROOTDIR=$_b/pmix/share PMIX_DATADIR=$_b/pmix/share PMIX_PKGDATADIR=$_b/pmix/share/pmix
export PMIX_SYSCONFDIR=$_b/pmix/etc PMIX_BINDIR=$_b/bin PMIX_SBINDIR=$_b/bin PMIX_LIBEXECDIR=$_b/bin
export PMIX_MCA_mca_base_component_path=$_b/pmix/lib/pmix
# hwloc: never the machine's own plugins (another hwloc version's) inside our libhwloc.
export HWLOC_PLUGINS_PATH=$_b/lib/hwloc-plugins
# The GPU machine runs commands as root.
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
unset _aiayn_here _b _lib _d _found _key _x _rel _dst _libs
unset -f _aiayn_add_cuda_dir
