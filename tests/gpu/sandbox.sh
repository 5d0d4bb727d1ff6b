#!/usr/bin/env bash
# Runs a command with Debian's libraries out of sight, as on the GPU machine: a check of gpu-bundle/ without the
# device. Needs root and unshare(1) (a private mount namespace; nothing outside it changes).
#
#   tests/gpu/sandbox.sh                          tests/gpu/check.sh --dry-run inside, then the strace audit
#   tests/gpu/sandbox.sh CMD ARGS...              CMD inside (from the repository root)
#   SANDBOX_STRACE=0 tests/gpu/sandbox.sh         no strace audit
#
# Inside: /usr/lib/x86_64-linux-gnu (= /lib/x86_64-linux-gnu) holds only glibc, libstdc++/libgcc_s and the
# libraries of the shell tools the check uses (bash, coreutils, awk, sed, grep, tar, gzip, xz, python3 with the
# few compiled modules report.py and env.sh import, strace, mount); /etc/ld.so.cache is empty; /etc/openmpi and /usr/share/openmpi are empty; Debian's Open MPI
# and PMIx plugin folders (under the multiarch folder) are gone. /usr/local/cuda stays (the device has CUDA).
# /dev/shm is an empty read-only folder (the GPU machine need not have a writable /dev/shm): Open MPI must start
# with its shared-memory backing files in /tmp (check.sh's mpirun options).
# The audit (default command only) runs `aiayn prepare` and the bundled `mpirun -np 2 aiayn train` (CPU) under
# `strace -f` and lists every shared library, plugin or Open MPI/PMIx file opened from outside the bundle, its
# unpack cache, /usr/local/cuda and the kept multiarch folder: there should be none.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
[[ $(id -u) == 0 ]] || { echo "sandbox: needs root (unshare -m, bind mounts)" >&2; exit 2; }
[[ -e $root/gpu-bundle/MANIFEST.txt ]] || { echo "sandbox: no gpu-bundle/ (tests/gpu/make_bundle.sh first)" >&2; exit 2; }
multiarch=/usr/lib/x86_64-linux-gnu
sbx=$(mktemp -d "${TMPDIR:-/tmp}/aiayn-sandbox.XXXXXX")
trap 'rm -rf "$sbx"' EXIT
mkdir -p "$sbx/lib" "$sbx/empty"
: >"$sbx/ld.so.cache"

# The libraries to keep: glibc and the C++ runtime (every Linux image has them), and the tools' own.
keep=(ld-linux-x86-64.so.2 libc.so.6 libm.so.6 libmvec.so.1 libpthread.so.0 libdl.so.2 librt.so.1 libresolv.so.2
      libutil.so.1 libanl.so.1 libstdc++.so.6 libgcc_s.so.1)
tools=(bash sh env timeout date mktemp sed grep tr cut sort uniq head tail cat tar gzip xz cksum id dirname basename
       ls mkdir rm mv cp chmod ln stat nproc uname find tee wc hostname sleep readlink touch nice awk strace mount comm nl
       xargs kill)
pyexe=$(python3 -c 'import sys; print(sys.executable)' 2>/dev/null || true)
files=()
for t in "${tools[@]}"; do p=$(command -v "$t" || true); [[ -n $p && -f $p ]] && files+=("$(readlink -f "$p")"); done
[[ -n $pyexe ]] && files+=("$(readlink -f "$pyexe")")
[[ -n $pyexe ]] && while IFS= read -r so; do files+=("$so"); done < <(
  python3 -c 'import sysconfig, glob, os
d = os.path.join(sysconfig.get_path("platstdlib"), "lib-dynload")
mods = "math _json _lzma _struct binascii select _posixsubprocess fcntl _datetime _bisect _heapq _random array _sha512 _opcode".split()
print("\n".join(p for m in mods for p in glob.glob(os.path.join(d, m + ".*so"))))')
for f in "${files[@]}"; do
  ldd "$f" 2>/dev/null | awk '$2 == "=>" && $3 ~ /^\// {print $3} $1 ~ /^\// {print $1}'
done | sort -u | while read -r lib; do
  case $(readlink -f "$lib") in "$multiarch"/*|/usr/lib64/*) basename "$lib";; esac
done >"$sbx/tool-libs.txt"
mapfile -t tool_libs <"$sbx/tool-libs.txt"
for name in "${keep[@]}" "${tool_libs[@]}"; do
  [[ -e $multiarch/$name ]] && cp -L "$multiarch/$name" "$sbx/lib/$name"
done
echo "sandbox: $multiarch replaced by $(ls "$sbx/lib" | wc -l) libraries: $(ls "$sbx/lib" | tr '\n' ' ')"

cmd=("$@")
audit=0
if [[ ${#cmd[@]} == 0 ]]; then
  cmd=(tests/gpu/check.sh --dry-run)
  [[ ${SANDBOX_STRACE:-1} == 1 ]] && command -v strace >/dev/null && audit=1
fi

# Inside the namespace: the mounts, then the command, then (default) the audit.
inner=$(cat <<'EOF'
set -euo pipefail
mount --make-rprivate /
mount --bind "$SBX/lib" /usr/lib/x86_64-linux-gnu
mount --bind "$SBX/ld.so.cache" /etc/ld.so.cache
for d in /etc/openmpi /usr/share/openmpi /usr/share/pmix; do [[ -d $d ]] && mount --bind "$SBX/empty" "$d"; done
if [[ -d /dev/shm ]]; then mount --bind "$SBX/empty" /dev/shm && mount -o remount,bind,ro /dev/shm; fi
touch /dev/shm/probe 2>/dev/null && { echo "sandbox: /dev/shm still writable" >&2; exit 3; }
cd "$ROOT"
ls /usr/lib/x86_64-linux-gnu/openmpi /usr/lib/x86_64-linux-gnu/pmix2 >/dev/null 2>&1 && { echo "sandbox: Open MPI still visible" >&2; exit 3; }
rc=0
"$@" || rc=$?
if [[ $AUDIT == 1 ]]; then
  export OMP_WAIT_POLICY=passive CUDA_VISIBLE_DEVICES=""
  source tests/gpu/env.sh 2>/dev/null
  d=$SBX/audit; mkdir -p "$d"
  strace -f -qq -e trace=openat,open,execve -o "$d/prepare.trace" "$AIAYN_BUNDLE_BIN/aiayn" prepare --synthetic --pairs 2000 --out "$d/data" >/dev/null 2>&1 || echo "sandbox: audit prepare failed" >&2
  strace -f -qq -e trace=openat,open,execve -o "$d/train.trace" env PMIX_MCA_gds=hash AIAYN_GRADIENT_COMM=mpi "$AIAYN_BUNDLE/bin/mpirun" --oversubscribe --allow-run-as-root \
    --bind-to none --mca btl self,vader,tcp --mca btl_vader_backing_directory "${TMPDIR:-/tmp}" --mca btl_vader_single_copy_mechanism none \
    --mca btl_tcp_if_include lo --mca oob_tcp_if_include lo -x LD_LIBRARY_PATH -x AIAYN_GRADIENT_COMM \
    -x OMP_WAIT_POLICY -x CUDA_VISIBLE_DEVICES -x OMPI_ALLOW_RUN_AS_ROOT -x OMPI_ALLOW_RUN_AS_ROOT_CONFIRM -np 2 \
    "$AIAYN_BUNDLE_BIN/aiayn" train --config launch/configs/tiny.yaml --data "$d/data" --run-dir "$d/run" --set device=cpu \
    --set train.max_steps=5 --set train.log_every=1 --set train.valid_every=0 --set checkpoint.every_steps=0 \
    --set train.bucket_mb=0.125 >"$d/train.log" 2>&1 || { echo "sandbox: audit mpirun training failed:" >&2; tail -n 5 "$d/train.log" >&2; rc=1; }
  grep -h 'gradient all-reduce\|aiayn train:' "$d/run/log/rank-0.log" 2>/dev/null | sed 's/^/sandbox: audit: /'
  # Files successfully opened (not ENOENT) that are libraries, plugins or Open MPI/PMIx data, by where they lie.
  grep -h -E 'open(at)?\(.*= [0-9]+$' "$d"/*.trace | sed -E 's/.*open(at)?\((AT_FDCWD, )?"([^"]*)".*/\3/' | sort -u >"$d/opened.txt"
  grep -E '\.so(\.|$)|/openmpi|/pmix|/hwloc|mca' "$d/opened.txt" >"$d/libs.txt" || true
  # Allowed besides the bundle: CUDA, glibc and the C++ runtime (through /lib or /usr/lib), Open MPI's and PMIx's
  # session folders (${TMPDIR:-/tmp}/ompi.*), /proc, /sys, /dev.
  outside=$(grep -v -E "^($AIAYN_BUNDLE|$AIAYN_BUNDLE_LIBS|/usr/local/cuda|(/usr)?/lib/x86_64-linux-gnu/(libc|libm|libmvec|libpthread|libdl|librt|libresolv|libutil|libanl|libstdc\+\+|libgcc_s)\.so|/etc/ld\.so\.cache|${TMPDIR:-/tmp}/ompi\.|/proc/|/sys/|/dev/)" "$d/libs.txt" || true)
  n_bundle=$(grep -c -E "^($AIAYN_BUNDLE|$AIAYN_BUNDLE_LIBS)" "$d/libs.txt" || true)
  echo "sandbox: audit: $n_bundle libraries/plugins/data files opened from the bundle or its cache"
  if [[ -n $outside ]]; then echo "sandbox: audit: opened from elsewhere:"; sed 's/^/  /' <<<"$outside"; rc=1
  else echo "sandbox: audit: nothing else opened (glibc and the C++ runtime aside)"; fi
fi
exit $rc
EOF
)
SBX=$sbx ROOT=$root AUDIT=$audit unshare -m bash -c "$inner" sandbox "${cmd[@]}"
