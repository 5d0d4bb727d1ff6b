#!/usr/bin/env bash
# The GPU check (issues 8 and 15): one script for one short `run` call on a lent H100 (sm_90), planned to end
# within 6 minutes (budget CHECK_BUDGET_S = 355 s; about 3 minutes expected), so that a second, shorter call
# still fits the session's 15 minutes of device time with two machine starts.
#
#   tests/gpu/check.sh            on the GPU machine (needs gpu-bundle/ from tests/gpu/make_bundle.sh, carried)
#   tests/gpu/check.sh --dry-run  anywhere without a GPU: every stage that can run on the CPU does, with small
#                                 bench shapes; the GPU-only stages say "skipped: no GPU"; the tables still print
#
# Order (what matters most first; tests/gpu/README.md has the table with each stage's cap):
#   fail fast   (first ~30 s) the bundle loads (no unresolved library), `aiayn --version` names the CUDA driver,
#               runtime, cuBLASLt and NCCL versions, and a 2-step base bf16 bench runs; if not, it stops here
#               and says why (exit 1)
#   tests       cuda_ops_test, cuda_model_test: one process per test (4 at a time), so that one illegal address
#               cannot poison the context of later tests; a failing test is rerun once with
#               CUDA_LAUNCH_BLOCKING=1 (and under compute-sanitizer where the machine has it): the first failing
#               kernel is named in the table
#   headline    aiayn bench beside PyTorch eager + autocast (same shapes), bf16 base then big; aiayn's rows also
#               with Zipf-like token ids (--token-dist zipf) and base with an odd vocabulary (37001)
#   profile     aiayn bench --profile, base bf16: the per-op table (profile.txt)
#   train       prepare (synthetic corpus) and cpu-ref (tiny preset, CPU fp32, 300 steps) run in the background
#               from the start; cuda-fp32 (losses vs cpu-ref), cuda-bf16 (validation loss within 0.05 nats of
#               cpu-ref's), mpi-2 (2 ranks on the one GPU, host-staged MPI, buckets started in the backward
#               pass), nccl-1 (1 rank, NCCL, AIAYN_TEST_FORCE_OVERLAP=1: the two-GPU side-stream path, bit for
#               bit against cuda-fp32)
#   tail        the fp32 bench rows, only with the time left over (not in the plan)
# CHECK_ONLY="tests bench profile train tail" (any subset) picks groups; the fail-fast stage always runs.
# Save as you go, under $OUT (at most 8 files come back, none deeper than $OUT/a/b): results.jsonl (a JSON line
# per stage, bench row and profile, appended as each ends), progress.txt, summary.txt (the tables) and
# logs.tar.gz (every log so far: gtest output, runs' metrics and logs, commands with their timeouts) are
# rewritten after every stage, so a run cut off still leaves all it finished; profile.txt once the profile ran.
# Without $OUT: runs/gpu-check[-dry]/. The tables print last. Exit status 0 when no stage failed or timed out.
set -uo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
dry=0
[[ ${1:-} == --dry-run ]] && dry=1
cd "$root" || exit 1

# bf16 mixed precision against fp32 on the CPU: |valid_loss(bf16) - valid_loss(fp32)| at step 300 of the tiny
# preset, in nats (README: "The bf16 margin").
BF16_VALID_MARGIN=0.05
# CUDA fp32 against the CPU: relative loss difference at the logged steps up to 30.
FP32_LOSS_LIMIT=5e-3
FP32_LOSS_STEPS=30

if [[ -n ${OUT:-} ]]; then out=$OUT; else out=$root/runs/gpu-check$([[ $dry == 1 ]] && echo -dry); fi
mkdir -p "$out"
rm -f "$out"/{results.jsonl,progress.txt,summary.txt,logs.tar.gz,profile.txt}
work=$(mktemp -d "${TMPDIR:-/tmp}/aiayn-gpu-check.XXXXXX")
logs=$work/logs
mkdir -p "$logs" "$work/runs"
# The plan's caps (below) add up to 345 s; 10 s are kept for the tables and the archive. The dry run (2 shared
# cores, CPU only) gets four times each cap.
budget=${CHECK_BUDGET_S:-$([[ $dry == 1 ]] && echo 1400 || echo 355)}
scale=$([[ $dry == 1 ]] && echo 4 || echo 1)
reserve=10
only=${CHECK_ONLY:-}
t_start=$(date +%s)
results=$out/results.jsonl
: >"$results"

py=$(command -v python3 || true)
[[ -n $py ]] || { echo "check: python3 is needed (results, comparisons, tables)" >&2; exit 1; }
report() { "$py" "$root/tests/gpu/report.py" "$@"; }
bundle=$root/gpu-bundle
tiny=$root/launch/configs/tiny.yaml
elapsed() { echo $(( $(date +%s) - t_start )); }
want() { [[ -z $only || " $only " == *" $1 "* ]]; }

# save: the tables and every log so far, under $OUT (after every stage: a run cut off keeps what it finished).
save() {
  report table "$results" "$(elapsed)" "$dry" >"$out/summary.txt" 2>&1
  (cd "$work" && tar czf "$out/logs.tar.gz.tmp" logs $(ls -d runs/*/metrics.jsonl runs/*/log runs/*/config.yaml 2>/dev/null) \
     && mv -f "$out/logs.tar.gz.tmp" "$out/logs.tar.gz") 2>/dev/null
}
# record NAME STATUS SECONDS DETAIL: one JSON line in results.jsonl, one progress line, then save.
record() {
  report record "$results" "$1" "$2" "$3" "$4"
  printf '[check %4ds] %-22s %s  %s\n' "$(elapsed)" "$1" "$2" "${4:0:300}" | tee -a "$out/progress.txt"
  save
}
skip() { record "$1" "skipped: $2" 0 "${3:-}"; }

# cap_of MAX: the stage's limit, MAX (times the dry run's scale) cut to what is left of the budget.
cap_of() {
  local max=$(( $1 * scale )) left=$(( budget - $(elapsed) - reserve ))
  echo $(( max < left ? max : left ))
}
# run_stage NAME MAX_SECONDS CMD...: runs CMD under timeout (cap_of), stdout to $logs/NAME.out, stderr to
# $logs/NAME.log. Sets stage_rc, stage_s, stage_status.
run_stage() {
  local name=$1 t; t=$(cap_of "$2"); shift 2
  stage_rc=-1 stage_s=0
  if (( t < 5 )); then stage_status="skipped: no time left"; return 1; fi
  echo "== [$(elapsed)s] $name: $* (timeout ${t}s)" >>"$logs/commands.txt"
  local t0; t0=$(date +%s.%N)
  # In the background and waited for, so that a TERM to the check (cut off) reaches the stage at once (on_term).
  timeout --kill-after=5 "$t" "$@" >"$logs/$name.out" 2>"$logs/$name.log" &
  stage_pid=$!
  wait "$stage_pid"
  stage_rc=$? stage_pid=""
  stage_s=$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN{printf "%.1f", b-a}')
  case $stage_rc in
    0) stage_status=ok ;;
    124|137) stage_status="TIMEOUT after ${t}s" ;;
    *) stage_status="FAIL rc=$stage_rc" ;;
  esac
  [[ $stage_rc == 0 ]]
}
# tail_of NAME: why stage NAME failed: aiayn's last "aiayn: error: ..." line, else a Python exception line, a C++
# "what():" or a gtest failure, else the last 3 lines of its output.
tail_of() {
  local f=("$logs/$1.log" "$logs/$1.out") line="" re
  for re in 'aiayn: error:' '^[A-Za-z_.]*(Error|Exception)(:|$)' 'what\(\)|terminate called|Segmentation|Aborted|Killed' \
            '^\[  FAILED  \]' '[Ee]rror'; do
    line=$(grep -hE "$re" "${f[@]}" 2>/dev/null | tail -n 1)
    [[ -n $line ]] && break
  done
  [[ -n $line ]] || line=$(grep -hv '^[[:space:]]*$' "${f[@]}" 2>/dev/null | tail -n 3 | tr '\n' ' ')
  cut -c1-300 <<<"$line" | tr -s ' \t'
}
finish() {  # the tables, the last save, the exit status (0: no stage failed or timed out)
  local total; total=$(elapsed)
  record total "$1" "$total" "whole check, budget ${budget}s${2:+; $2}"
  report table "$results" "$total" "$dry" >"$out/summary.txt" 2>&1
  save
  cat "$out/summary.txt"
  echo "(check: $total s; files in $out: $(cd "$out" && ls | tr '\n' ' '))"
  [[ -n ${torch_pid:-} ]] && kill "$torch_pid" 2>/dev/null
  [[ -n ${bg_pid:-} ]] && kill "$bg_pid" 2>/dev/null && wait "$bg_pid" 2>/dev/null
  rm -rf "$work"
  if grep -q '"status": "\(FAIL\|TIMEOUT\)' "$results"; then exit 1; fi
  exit 0
}

# Cut off (TERM, INT): the running stage and the background jobs end, the tables are saved, exit 124.
stage_pid="" torch_pid="" bg_pid=""
on_term() {
  trap - TERM INT
  local p
  for p in "$stage_pid" "$torch_pid" "$bg_pid"; do [[ -n $p ]] && kill "$p" 2>/dev/null; done
  report record "$results" total "TIMEOUT: cut off" "$(elapsed)" "the check was stopped from outside after $(elapsed) s" 2>/dev/null
  save
  echo "check: cut off after $(elapsed) s; what finished is in $out" >&2
  exit 124
}
trap on_term TERM INT

# ---------------------------------------------------------------------------------------------------------
echo "aiayn GPU check ($([[ $dry == 1 ]] && echo dry run || echo GPU)); logs in $work, results to $out; budget ${budget}s${only:+; only: $only}"
if [[ $dry == 1 ]]; then
  # CPU only, even on a machine with a GPU (device=auto then picks the CPU); the cores here may be shared with
  # other work, where OpenMP's default spin-waiting costs a multiple of the run time.
  export CUDA_VISIBLE_DEVICES=""
  export OMP_WAIT_POLICY=passive
fi

# PyTorch, found in the background (importing torch takes seconds): the first python3 that imports it, in its
# own environment (before env.sh touches LD_LIBRARY_PATH).
(
  for p in ${CHECK_TORCH_PYTHON:-} "$py" /usr/bin/python3; do
    [[ -x $p ]] || continue
    if t=$(timeout 60 "$p" -c 'import torch; print(torch.__version__, "cuda" if torch.cuda.is_available() else "no-cuda", torch.version.cuda)' 2>>"$logs/torch.log"); then
      echo "$p $t" >"$work/torch.txt"; exit 0
    fi
  done
) &
torch_pid=$!

gpu=0
if [[ $dry == 0 ]] && command -v nvidia-smi >/dev/null && timeout 20 nvidia-smi -L >"$logs/nvidia-smi.txt" 2>&1 &&
   grep -q '^GPU' "$logs/nvidia-smi.txt"; then
  gpu=1
  timeout 10 nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm,power.draw,temperature.gpu \
    --format=csv >>"$logs/nvidia-smi.txt" 2>&1
  head -n 3 "$logs/nvidia-smi.txt"
fi
gpu_name=$(grep -m1 '^GPU 0' "$logs/nvidia-smi.txt" 2>/dev/null | sed 's/ (UUID.*//; s/^GPU 0: //')
driver=$(sed -n 's/.*, \([0-9][0-9.]*\), [0-9]* MiB.*/\1/p' "$logs/nvidia-smi.txt" 2>/dev/null | head -n 1)
sanitizer=$(command -v compute-sanitizer || ls /usr/local/cuda*/bin/compute-sanitizer 2>/dev/null | head -n 1 || true)

# The environment before env.sh: PyTorch's rows run in it (PyTorch brings its own CUDA libraries).
pre_vars=$(compgen -e | sort)
orig_path=$PATH orig_ld=${LD_LIBRARY_PATH-__unset__}
bundle_ok=0 facts=""
if [[ ! -e $bundle/bin/aiayn.xz && ! -x $bundle/bin/aiayn ]]; then
  record env FAIL 0 "no gpu-bundle/ (run tests/gpu/make_bundle.sh here and carry gpu-bundle)"
  finish FAIL "stopped: no bundle"
fi
# shellcheck source=tests/gpu/env.sh
source "$root/tests/gpu/env.sh" 2>"$logs/env.log"
torch_env=(env)
for v in $(comm -13 <(echo "$pre_vars") <(compgen -e | sort)); do torch_env+=(-u "$v"); done
if [[ $orig_ld == __unset__ ]]; then torch_env+=(-u LD_LIBRARY_PATH); else torch_env+=(LD_LIBRARY_PATH="$orig_ld"); fi
torch_env+=(PATH="$orig_path")
bins=(aiayn cuda_ops_test cuda_model_test orterun)
{
  echo "uname: $(uname -a)"; echo "glibc: $(ldd --version 2>&1 | head -n 1)"; echo "nproc: $(nproc)"
  echo "LD_LIBRARY_PATH=$LD_LIBRARY_PATH"; echo "AIAYN_CUDA_LIBDIRS=$AIAYN_CUDA_LIBDIRS"; echo "compute-sanitizer: ${sanitizer:-none}"
  env | grep -E '^(OPAL|PMIX|OMPI|HWLOC)_' | sort
  cat "$bundle/MANIFEST.txt"
  for b in "${bins[@]}"; do echo "--- ldd $b"; ldd "$AIAYN_BUNDLE_BIN/$b"; done
} >>"$logs/env.log" 2>&1
missing=$(for b in "${bins[@]}"; do
            if [[ -x $AIAYN_BUNDLE_BIN/$b ]]; then ldd "$AIAYN_BUNDLE_BIN/$b" 2>&1 | grep 'not found'; else echo "$b (not unpacked)"; fi
          done | sort -u | tr -s ' \t\n' ' ')
version=$(timeout 20 "$AIAYN_BUNDLE_BIN/aiayn" --version 2>&1 | head -n 1)
facts="$version; gpu: ${gpu_name:-none}${driver:+, driver $driver}; cuda libs: ${AIAYN_CUDA_LIBDIRS:-none}"
if [[ -n $missing || $version != aiayn* ]]; then
  record env FAIL "$(elapsed)" "unresolved: ${missing:-none}; $facts; $(tail -n 2 "$logs/env.log" | tr '\n' ' ')"
  finish FAIL "stopped: the bundle does not load"
fi
[[ $dry == 0 && $gpu == 0 ]] && facts="$facts; nvidia-smi -L found no GPU (the fail-fast bench decides)"
bundle_ok=1
record env ok "$(elapsed)" "$facts"

on_gpu=$(( dry == 0 ))
device=$([[ $on_gpu == 1 ]] && echo cuda || echo cpu)
bin=$AIAYN_BUNDLE_BIN
aiayn=$bin/aiayn
nogpu=$([[ $dry == 1 ]] && echo "no GPU (dry run)" || echo "no GPU")

# Shapes and steps: the real ones on the GPU; tiny ones on the CPU of a dry run.
declare -A sents=([base]=800 [big]=400)
len=32 vocab=37000 odd_vocab=37001
steps_bf16="--steps 20 --warmup-steps 3" steps_fp32="--steps 8 --warmup-steps 2" prof_steps="--steps 3 --warmup-steps 2"
if [[ $on_gpu == 0 ]]; then
  sents=([base]=4 [big]=2) len=8 vocab=1000 odd_vocab=1001
  steps_bf16="--steps 2 --warmup-steps 1" steps_fp32="--steps 2 --warmup-steps 1" prof_steps="--steps 2 --warmup-steps 1"
fi
# aiayn_dev DTYPE: on the GPU always cuda (never a silent fallback); in a dry run bf16 goes through device=auto,
# which computes fp32 on the CPU (the row says so).
aiayn_dev() { if [[ $on_gpu == 1 ]]; then echo cuda; elif [[ $1 == bf16 ]]; then echo auto; else echo cpu; fi; }
shape_of() { echo --sentences "${sents[$1]}" --src-len "$len" --tgt-len "$len"; }
aiayn_bench() {  # aiayn_bench PRESET DTYPE ARGS...: the bench command line
  local preset=$1 dt=$2; shift 2
  # shellcheck disable=SC2046
  echo "$aiayn" bench --config "$root/launch/configs/$preset.yaml" --set "device=$(aiayn_dev "$dt")" --set "precision=$dt" \
    $(shape_of "$preset") "$@"
}

# ---------------------------------------------------------------------------------------------------------
# Fail fast: 2 steps of the base bf16 bench (CUDA, cuBLASLt, the bf16 kernels, Adam on the real shapes).
# shellcheck disable=SC2046
if run_stage failfast 25 $(aiayn_bench base bf16 --vocab "$vocab" --steps 2 --warmup-steps 1); then
  record failfast ok "$stage_s" "$(grep -m1 '^{' "$logs/failfast.out" | cut -c1-250)"
else
  record failfast "$stage_status" "$stage_s" "$(tail_of failfast)"
  finish FAIL "stopped: the 2-step base bf16 bench failed"
fi

# The training corpus and the CPU reference, in the background from here (CPU only, half the cores), while
# the GPU runs the tests and benches. Results are recorded when the train stages need them.
data=$work/data
cpu_threads=$(( $(nproc) / 2 )); (( cpu_threads < 1 )) && cpu_threads=1
bg_pid=""
if want train; then
  t_prep=$(cap_of 45) t_cpu=$(cap_of 150)
  (
    child=""
    trap '[[ -n $child ]] && kill "$child" 2>/dev/null; exit 143' TERM
    # bg_step NAME TIMEOUT CMD...: one step, its exit status and seconds in $work/NAME.rc.
    bg_step() {
      local name=$1 t=$2 t0; shift 2
      echo "== [$(elapsed)s] $name (background): $* (timeout ${t}s)" >>"$logs/commands.txt"
      t0=$(date +%s)
      timeout --kill-after=5 "$t" "$@" >"$logs/$name.out" 2>"$logs/$name.log" &
      child=$!
      wait "$child"
      echo "$? $(( $(date +%s) - t0 ))" >"$work/$name.rc"
      child=""
      [[ $(cut -d' ' -f1 "$work/$name.rc") == 0 ]]
    }
    bg_step prepare "$t_prep" "$aiayn" prepare --synthetic --out "$data" || exit 0
    bg_step cpu-ref "$t_cpu" "$aiayn" train --config "$tiny" --data "$data" --run-dir "$work/runs/cpu-ref" \
      --set train.max_steps=300 --set train.log_every=10 --set train.valid_every=100 --set checkpoint.every_steps=100 \
      --set device=cpu --set precision=fp32 --set "train.threads=$cpu_threads"
  ) &
  bg_pid=$!
fi

# ---------------------------------------------------------------------------------------------------------
# tests: one process per test, PAR at a time. On the GPU every test must pass (a skip there means the test found
# no GPU); in a dry run each test skips itself, which still shows that the binary loads and runs.
par=$([[ $on_gpu == 1 ]] && echo 4 || echo 2)
# first_kernel FILE: the first failing kernel a rerun names (compute-sanitizer's "at KERNEL", or aiayn's
# "CUDA launch of KERNEL failed", which CUDA_LAUNCH_BLOCKING=1 turns into the kernel's own error).
first_kernel() {
  local k
  k=$(grep -m1 -A3 -E '^========= (Invalid|Program hit|Error|Uninitialized|Race)' "$1" 2>/dev/null |
      sed -n 's/^=========[[:space:]]*at \(0x[0-9a-f]* in \)\{0,1\}\(.*\)$/\2/p' | head -n 1 | sed 's/+0x[0-9a-f]* in .*//; s/ in \/.*//' | cut -c1-120)
  [[ -z $k ]] && k=$(grep -m1 -oE 'CUDA launch of [A-Za-z0-9_:<>, ]+ failed: [^(]*' "$1" 2>/dev/null | cut -c1-160)
  echo "$k"
}
gtest_stage() {
  local name=$1 prog=$2 max=$3
  if ! want tests; then return; fi
  local dir=$logs/$name t i=0 list
  mkdir -p "$dir"
  t=$(cap_of "$max")
  if (( t < 5 )); then skip "$name" "no time left"; return; fi
  # Full test names from --gtest_list_tests ("Suite." lines, then indented test names; parameter comments cut).
  list=$(timeout 20 "$bin/$prog" --gtest_list_tests 2>"$dir/list.log" |
         awk '/^[^ ]/ {s=$1} /^  / {print s $1}')
  if [[ -z $list ]]; then record "$name" "FAIL: no test list" 0 "$(head -c 300 "$dir/list.log")"; return; fi
  echo "== [$(elapsed)s] $name: $(wc -l <<<"$list") tests of $prog, $par at a time (stage timeout ${t}s)" >>"$logs/commands.txt"
  local t0; t0=$(date +%s.%N)
  local deadline=$(( $(date +%s) + t ))
  # shellcheck disable=SC2016
  nl -w1 -s' ' <<<"$list" | DEADLINE=$deadline PROG=$bin/$prog DIR=$dir xargs -d '\n' -P "$par" -I{} bash -c '
    read -r i test <<<"$1"
    left=$(( DEADLINE - $(date +%s) ))
    if (( left < 2 )); then echo "not run: no time left" >"$DIR/$i.out"; echo 125 >"$DIR/$i.rc"; exit 0; fi
    echo "$test" >"$DIR/$i.name"
    timeout --kill-after=3 "$left" "$PROG" --gtest_color=no --gtest_filter="$test" >"$DIR/$i.out" 2>&1
    echo $? >"$DIR/$i.rc"' _ {}
  stage_s=$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN{printf "%.1f", b-a}')
  local passed=0 failed=() skipped=0 notrun=0 timedout=0 reason=""
  for f in "$dir"/*.rc; do
    i=$(basename "$f" .rc)
    local rc; rc=$(cat "$f"); local tn; tn=$(cat "$dir/$i.name" 2>/dev/null || echo "?")
    if [[ $rc == 125 ]]; then notrun=$((notrun + 1)); continue; fi
    if [[ $rc == 124 || $rc == 137 ]]; then timedout=$((timedout + 1)); failed+=("$tn(timeout)"); continue; fi
    if grep -q '^\[  SKIPPED \]' "$dir/$i.out"; then
      skipped=$((skipped + 1))
      [[ -z $reason ]] && reason=$(grep -m1 -o 'no GPU: .*' "$dir/$i.out" | cut -c1-120)
    elif [[ $rc == 0 ]] && grep -q '^\[       OK \]' "$dir/$i.out"; then passed=$((passed + 1))
    else failed+=("$tn(rc=$rc)")
    fi
  done
  local detail="passed $passed, failed ${#failed[@]}, skipped $skipped${notrun:+, not run $notrun}"
  detail=${detail/, not run 0/}
  local status=ok kernel=""
  if (( ${#failed[@]} > 0 )); then
    status="FAIL: ${#failed[@]} test(s)"
    detail="$detail; failed: ${failed[*]:0:8}"
    # The first failing test again, alone: synchronous launches, then compute-sanitizer (where present).
    local first=${failed[0]%(*}
    local tr; tr=$(cap_of 40)
    if (( tr >= 5 )); then
      CUDA_LAUNCH_BLOCKING=1 timeout --kill-after=3 "$tr" "$bin/$prog" --gtest_color=no --gtest_filter="$first" \
        >"$dir/rerun-blocking.out" 2>&1
      local rrc=$?
      kernel=$(first_kernel "$dir/rerun-blocking.out")
      detail="$detail; rerun with CUDA_LAUNCH_BLOCKING=1: rc=$rrc"
      tr=$(cap_of 60)
      if [[ -n $sanitizer && $tr -ge 10 ]]; then
        timeout --kill-after=3 "$tr" "$sanitizer" --tool memcheck --print-limit 5 "$bin/$prog" --gtest_color=no \
          --gtest_filter="$first" >"$dir/rerun-sanitizer.out" 2>&1
        local k2; k2=$(first_kernel "$dir/rerun-sanitizer.out")
        detail="$detail; compute-sanitizer: $(grep -m1 -oE 'ERROR SUMMARY: [0-9]+ errors?' "$dir/rerun-sanitizer.out" || echo 'no summary')"
        [[ -n $k2 ]] && kernel=$k2
      elif [[ -z $sanitizer ]]; then detail="$detail; no compute-sanitizer here"
      fi
      detail="$detail; first failing kernel: ${kernel:-not named}"
    fi
  elif [[ $on_gpu == 1 && ( $skipped != 0 || $passed == 0 ) ]]; then
    status="FAIL: skipped on the GPU"
    detail="$detail; $reason"
  elif [[ $on_gpu == 0 ]]; then
    status="skipped: $nogpu"
    detail="$detail (each process ran; each test skipped itself)"
  fi
  (( notrun > 0 )) && [[ $status == ok ]] && status="TIMEOUT: $notrun test(s) not run"
  (( timedout > 0 )) && status="TIMEOUT: ${#failed[@]} test(s) failed or timed out"
  record "$name" "$status" "$stage_s" "$detail"
}
gtest_stage ops cuda_ops_test 45
gtest_stage model cuda_model_test 30

# ---------------------------------------------------------------------------------------------------------
# The headline: aiayn beside PyTorch, bf16, same shapes. Each row's JSON goes to results.jsonl under its name.
torch_py="" torch_info="torch not importable"
have_torch() {
  if [[ -n $torch_pid ]]; then wait "$torch_pid" 2>/dev/null; torch_pid=""; fi
  if [[ -s $work/torch.txt && -z $torch_py ]]; then
    read -r torch_py torch_info <"$work/torch.txt"
    torch_info="torch $torch_info ($torch_py)"
  fi
  [[ -n $torch_py ]]
}
torch_dev=$([[ $on_gpu == 1 ]] && echo cuda || echo cpu)
# bench_row ROW DTYPE MAX_S CMD...: runs CMD (which prints one JSON line) and records it.
bench_row() {
  local row=$1 dtype=$2 max=$3; shift 3
  local name=bench-${row// /-}
  run_stage "$name" "$max" "$@"
  local detail=""
  [[ $stage_rc != 0 ]] && detail=$(tail_of "$name")
  printf '[check %4ds] %-22s ' "$(elapsed)" "bench $row" | tee -a "$out/progress.txt"
  report bench "$results" "$row" "$stage_status" "$stage_s" "$detail" "$logs/$name.out" "$dtype" "$on_gpu" |
    tee -a "$out/progress.txt"
  save
}
skip_bench() {
  printf '[check %4ds] %-22s ' "$(elapsed)" "bench $1" | tee -a "$out/progress.txt"
  report bench "$results" "$1" "skipped: $2" 0 "" /dev/null "$(cut -d' ' -f3 <<<"$1")" "$on_gpu" | tee -a "$out/progress.txt"
}
aiayn_row() {  # aiayn_row PRESET DTYPE MAX_S [zipf|v<VOCAB>]
  local preset=$1 dt=$2 max=$3 variant=${4:-} extra=(--vocab "$vocab")
  local row="aiayn $preset $dt${variant:+ $variant}"
  if ! want bench; then return; fi
  case $variant in
    zipf) extra+=(--token-dist zipf) ;;
    v*) extra=(--vocab "${variant#v}") ;;
  esac
  local steps=$steps_bf16; [[ $dt == fp32 ]] && steps=$steps_fp32
  # shellcheck disable=SC2046,SC2086
  bench_row "$row" "$dt" "$max" $(aiayn_bench "$preset" "$dt" "${extra[@]}" $steps)
}
torch_row() {  # torch_row PRESET DTYPE MAX_S: torch_baseline.py (eager; autocast for bf16) in PyTorch's own environment
  local preset=$1 dt=$2 max=$3
  if ! want bench; then return; fi
  if ! have_torch; then skip_bench "torch $preset $dt" "torch not importable ($(tail -n 1 "$logs/torch.log" 2>/dev/null | cut -c1-100))"; return; fi
  if [[ ! -f $bundle/torch_baseline.py ]]; then skip_bench "torch $preset $dt" "no gpu-bundle/torch_baseline.py"; return; fi
  local tv=() steps=$steps_bf16
  [[ $torch_dev == cpu ]] && tv=(--threads "$(( $(nproc) > 1 ? $(nproc) / 2 : 1 ))")
  [[ $dt == fp32 ]] && steps=$steps_fp32
  # shellcheck disable=SC2046,SC2086
  bench_row "torch $preset $dt" "$dt" "$max" "${torch_env[@]}" PYTHONUNBUFFERED=1 "$torch_py" "$bundle/torch_baseline.py" \
    --preset "$preset" --device "$torch_dev" --dtype "$dt" $(shape_of "$preset") $steps "${tv[@]}"
}
aiayn_row base bf16 15
torch_row base bf16 25
aiayn_row big bf16 20
torch_row big bf16 30
aiayn_row base bf16 12 zipf
aiayn_row big bf16 15 zipf
aiayn_row base bf16 12 "v$odd_vocab"

# ---------------------------------------------------------------------------------------------------------
if want profile; then
  # shellcheck disable=SC2046
  run_stage profile 15 $(aiayn_bench base bf16 --vocab "$vocab" $prof_steps --profile)
  status=$stage_status
  cp "$logs/profile.log" "$out/profile.txt" 2>/dev/null
  msg=$(report profile "$results" "$logs/profile.log" 5) || { [[ $status == ok ]] && status="FAIL: no per-op table"; }
  [[ $on_gpu == 0 && $status == ok ]] && msg="$msg [dry run: fp32 on the CPU]"
  [[ $stage_rc != 0 ]] && msg="$msg; $(tail_of profile)"
  record profile "$status" "$stage_s" "$(grep -E '^\{' "$logs/profile.out" | grep -o '"ms_per_step":[0-9.]*' | head -n 1) $msg"
fi

# ---------------------------------------------------------------------------------------------------------
# train: the tiny preset on the synthetic corpus.
# train_stage NAME MAX_S STEPS [VAR=VALUE... --] [--set key=value...]: aiayn train on the tiny preset. $launch
# (an array, possibly empty) goes in front of aiayn (mpirun). Validation every 100 steps, losses every 10.
launch=()
train_stage() {
  local name=$1 max=$2 steps=$3; shift 3
  local envs=()
  if [[ " $* " == *" -- "* ]]; then while [[ $1 != -- ]]; do envs+=("$1"); shift; done; shift; fi
  local run=$work/runs/$name
  run_stage "$name" "$max" env "${envs[@]}" "${launch[@]}" "$aiayn" train --config "$tiny" --data "$data" \
    --run-dir "$run" --set "train.max_steps=$steps" --set train.log_every=10 --set train.valid_every=100 \
    --set checkpoint.every_steps=100 "$@"
  local rc=$?
  train_detail=$(report metrics "$run")
  [[ $rc != 0 ]] && train_detail="$train_detail; $(tail_of "$name")"
  return $rc
}
# The bundled mpirun. Shared memory (vader) with its backing files in /tmp, not /dev/shm (which the GPU machine
# need not have), and TCP on the loopback beside it, which Open MPI uses where vader cannot start; PMIx keeps
# its data store in its own memory (gds hash) rather than in shared-memory segments.
tmp_dir=${TMPDIR:-/tmp}
mpirun_cmd=(env PMIX_MCA_gds=hash "$bundle/bin/mpirun" --oversubscribe --allow-run-as-root --bind-to none
            --mca btl self,vader,tcp --mca btl_vader_backing_directory "$tmp_dir" --mca btl_vader_single_copy_mechanism none
            --mca btl_tcp_if_include lo --mca oob_tcp_if_include lo --mca orte_tmpdir_base "$tmp_dir"
            -x PMIX_MCA_gds -x AIAYN_GRADIENT_COMM -x AIAYN_TEST_FORCE_OVERLAP)
for v in LD_LIBRARY_PATH OMP_WAIT_POLICY CUDA_VISIBLE_DEVICES OMPI_ALLOW_RUN_AS_ROOT OMPI_ALLOW_RUN_AS_ROOT_CONFIRM; do
  [[ -n ${!v+set} ]] && mpirun_cmd+=(-x "$v")
done
# compare STAGE REF RUN KIND ARGS...: a comparison as its own result line (ok or FAIL).
compare() {
  local stage=$1 ref=$2 run=$3 kind=$4; shift 4
  local msg rc
  msg=$(report "$kind" "$work/runs/$ref" "$work/runs/$run" "$@"); rc=$?
  record "$stage" "$([[ $rc == 0 ]] && echo ok || echo FAIL)" 0 "$run vs $ref: $msg"
}
# Small gradient buckets (0.125 MiB = 32768 floats; the tiny model has ~0.3 M parameters): ~10 buckets.
small_buckets=(--set train.bucket_mb=0.125)
# wait_bg NAME: waits for the background job's NAME step; records it once; sets bg_ok.
declare -A bg_recorded=()
wait_bg() {
  local name=$1 rc_file=$work/$1.rc
  while [[ ! -f $rc_file ]] && kill -0 "$bg_pid" 2>/dev/null; do sleep 0.5; done
  bg_ok=0
  if [[ ! -f $rc_file ]]; then
    [[ -z ${bg_recorded[$name]:-} ]] && record "$name" "skipped: not run" 0 "$(tail_of prepare)"
    bg_recorded[$name]=1; return
  fi
  local rc s; read -r rc s <"$rc_file"
  [[ $rc == 0 ]] && bg_ok=1
  if [[ -z ${bg_recorded[$name]:-} ]]; then
    local st; case $rc in 0) st=ok ;; 124|137) st="TIMEOUT" ;; *) st="FAIL rc=$rc" ;; esac
    local d
    if [[ $name == prepare ]]; then
      d=$(grep -hE '^(train|total)' "$logs/prepare.log" "$logs/prepare.out" 2>/dev/null | head -n 1 | cut -c1-160)
    else
      d="$(report metrics "$work/runs/$name"); background, ${cpu_threads} threads"
    fi
    [[ $rc != 0 ]] && d="$d; $(tail_of "$name")"
    record "$name" "$st" "$s" "$d"
    bg_recorded[$name]=1
  fi
}

if want train; then
  wait_bg prepare
  if [[ $bg_ok == 1 ]]; then
    if [[ $on_gpu == 1 ]]; then
      # train.shards=1 (one share per step, as nccl-1 needs for its overlap): nccl-1's bit-for-bit reference.
      train_stage cuda-fp32 25 300 --set device=cuda --set precision=fp32 --set train.shards=1
      record cuda-fp32 "$stage_status" "$stage_s" "$train_detail"
      fp32_ok=$([[ $stage_rc == 0 ]] && echo 1 || echo 0)
      train_stage cuda-bf16 25 300 --set device=cuda --set precision=bf16
      record cuda-bf16 "$stage_status" "$stage_s" "$train_detail"
      bf16_ok=$([[ $stage_rc == 0 ]] && echo 1 || echo 0)
      ref=cuda-fp32 ref_ok=$fp32_ok dev_sets=(--set device=cuda --set precision=fp32)
    else
      skip cuda-fp32 "$nogpu"
      # device=auto falls back to the CPU, and precision=bf16 to fp32 (with a log line): the same commands and
      # the same comparison as on the GPU (which here must find the two runs identical).
      train_stage cuda-bf16 30 300 --set device=auto --set precision=bf16 --set "train.threads=$cpu_threads"
      record cuda-bf16 "$([[ $stage_rc == 0 ]] && echo "ok (fp32 on the CPU)" || echo "$stage_status")" "$stage_s" "$train_detail"
      bf16_ok=$([[ $stage_rc == 0 ]] && echo 1 || echo 0) fp32_ok=0
      ref=cpu-ref ref_ok=0 dev_sets=(--set device=cpu --set precision=fp32)
    fi

    # 2 ranks: on the GPU both on the one device, gradients copied to the host and all-reduced by MPI
    # (AIAYN_GRADIENT_COMM=mpi); in a dry run the same mpirun on the CPU.
    launch=("${mpirun_cmd[@]}" -np 2)
    train_stage mpi-2 25 100 AIAYN_GRADIENT_COMM=mpi -- "${dev_sets[@]}" "${small_buckets[@]}" --set train.threads=1
    launch=()
    status=$stage_status mpi_rc=$stage_rc
    buckets=$(report buckets "$work/runs/mpi-2")
    if [[ $stage_rc == 0 ]]; then
      want_by=$([[ $on_gpu == 1 ]] && echo "gradients by mpi (host-staged)" || echo "gradients by mpi")
      early=$(sed -n 's/.*, \([0-9]*\) started during the backward pass.*/\1/p' <<<"$buckets")
      n_buckets=$(sed -n 's/.*all-reduce: \([0-9]*\) bucket.*/\1/p' <<<"$buckets")
      if ! grep -q "2 rank(s), device $device, $want_by" "$work/runs/mpi-2/log/rank-0.log"; then
        status="FAIL: not '2 rank(s), device $device, $want_by'"
      elif [[ -z $early || ${n_buckets:-0} -lt 2 || $early -lt 1 ]]; then
        status="FAIL: no bucket started during the backward pass"
      fi
    fi
    record mpi-2 "$status" "$stage_s" "$train_detail; $buckets"

    if [[ $on_gpu == 1 ]]; then
      # 1 rank under mpirun (NCCL's id travels by MPI), gradients by a NCCL communicator of one, and
      # AIAYN_TEST_FORCE_OVERLAP=1: every bucket starts from the backward pass on the reducer's own stream, as
      # with two GPUs. A sum over one rank is the identity: the run must equal cuda-fp32 bit for bit.
      launch=("${mpirun_cmd[@]}" -np 1)
      train_stage nccl-1 20 100 AIAYN_GRADIENT_COMM=nccl AIAYN_TEST_FORCE_OVERLAP=1 -- --set device=cuda \
        --set precision=fp32 --set train.shards=1 "${small_buckets[@]}" --set train.comm_timeout_s=15
      launch=()
      status=$stage_status
      buckets=$(report buckets "$work/runs/nccl-1")
      if [[ $stage_rc == 0 ]]; then
        early=$(sed -n 's/.*, \([0-9]*\) started during the backward pass.*/\1/p' <<<"$buckets")
        n_buckets=$(sed -n 's/.*all-reduce: \([0-9]*\) bucket.*/\1/p' <<<"$buckets")
        if ! grep -q "1 rank(s), device cuda, gradients by nccl" "$work/runs/nccl-1/log/rank-0.log"; then
          status="FAIL: not '1 rank(s), device cuda, gradients by nccl'"
        elif [[ ${n_buckets:-0} -lt 2 || ${early:-0} != "${n_buckets:-x}" ]]; then
          status="FAIL: not every bucket started during the backward pass"
        fi
      fi
      record nccl-1 "$status" "$stage_s" "$train_detail; $buckets"
      [[ $stage_rc == 0 && $fp32_ok == 1 ]] && compare nccl1-vs-fp32 cuda-fp32 nccl-1 compare-identical 100
    else
      skip nccl-1 "$nogpu"
    fi

    # The CPU reference (background): the comparisons that need it.
    wait_bg cpu-ref
    cpu_ok=$bg_ok
    if [[ $cpu_ok == 1 ]]; then
      [[ ${fp32_ok:-0} == 1 ]] && compare fp32-vs-cpu cpu-ref cuda-fp32 compare-losses "$FP32_LOSS_STEPS" "$FP32_LOSS_LIMIT"
      [[ ${bf16_ok:-0} == 1 ]] && compare bf16-vs-cpu cpu-ref cuda-bf16 compare-valid "$BF16_VALID_MARGIN"
      [[ $on_gpu == 0 ]] && ref_ok=1
    fi
    [[ $mpi_rc == 0 && $ref_ok == 1 ]] && compare mpi2-vs-1 "$ref" mpi-2 compare-losses 100 "$FP32_LOSS_LIMIT"
  else
    for s in cpu-ref cuda-fp32 cuda-bf16 mpi-2 nccl-1; do skip "$s" "no corpus"; done
  fi
fi

# ---------------------------------------------------------------------------------------------------------
# The tail, outside the plan: fp32 rows with whatever time is left (a row that would not fit is skipped).
if want tail; then
  aiayn_row base fp32 20
  torch_row base fp32 30
fi

finish "$(grep -q '"status": "\(FAIL\|TIMEOUT\)' "$results" && echo FAIL || echo ok)"
