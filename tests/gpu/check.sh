#!/usr/bin/env bash
# The GPU check (issue 8): one script for one `run` call on a lent H200, about 5 minutes (budget 8).
#
#   tests/gpu/check.sh            on the GPU machine (needs gpu-bundle/ from tests/gpu/make_bundle.sh, carried)
#   tests/gpu/check.sh --dry-run  anywhere without a GPU: every stage that can run on the CPU does, with small
#                                 bench shapes; the GPU-only stages say "skipped: no GPU"; the tables still print
#
# Stages in the order of what matters most if time runs out, each under `timeout` and a global time budget
# (CHECK_BUDGET_S, default 480 s; each stage's limit is cut to what is left): a failed or timed-out stage is
# reported and the script goes on. CHECK_ONLY="tests train bench profile" (any subset) runs only those groups
# (env always runs), e.g. for a second, shorter call.
#   env          nvidia-smi, the bundle's environment (tests/gpu/env.sh), unresolved libraries, torch
#   tests        ops: cuda_ops_test (every CUDA op vs the CPU reference); model: cuda_model_test (the whole
#                model on CUDA vs the CPU: fp32 5 steps, bf16 30 steps, incremental decoding and beam search)
#   train        prepare (synthetic corpus); tiny preset, 300 steps, validation every 100:
#                cpu-ref (CPU fp32), cuda-fp32 (losses at steps 10..30 within 5e-3 of cpu-ref),
#                cuda-bf16 (validation loss within BF16_VALID_MARGIN = 0.05 nats of cpu-ref's at step 300),
#                mpi-2 (2 ranks on the GPU, gradients host-staged through MPI, small buckets started inside the
#                backward pass), nccl-1 (1 rank, NCCL, small buckets); both against cuda-fp32's losses
#   bench        aiayn bench beside torch_baseline.py, base (800 x 32 x 32, vocab 37000) and big (400 x 32 x 32):
#                bf16 rows first (the headline), then the profile, then the fp32 rows
#   profile      aiayn bench --profile, base bf16, 3 steps: the per-op table (profile.txt), its top rows
# Output: $OUT/summary.txt (the tables), $OUT/results.jsonl (one JSON line per stage, bench row and profile),
# $OUT/profile.txt, $OUT/gpu-check.tar.gz (every log, run metrics and logs, bench JSON, gtest XML).
# Without $OUT: runs/gpu-check[-dry]/. The tables print last. Exit status 0 when no stage failed or timed out.
set -uo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
dry=0
[[ ${1:-} == --dry-run ]] && dry=1
cd "$root" || exit 1

# bf16 mixed precision against fp32 on the CPU: |valid_loss(bf16) - valid_loss(fp32)| at step 300 of the tiny
# preset, in nats (0.05: perplexities within 5% of each other); every validation finite and the loss falling.
# tests/gpu/README.md ("The bf16 margin") says where 0.05 comes from.
BF16_VALID_MARGIN=0.05
# CUDA fp32 against the CPU: relative loss difference at the logged steps up to 30 (as in the first check).
FP32_LOSS_LIMIT=5e-3
FP32_LOSS_STEPS=30

if [[ -n ${OUT:-} ]]; then out=$OUT; else out=$root/runs/gpu-check$([[ $dry == 1 ]] && echo -dry); fi
mkdir -p "$out"
work=$(mktemp -d "${TMPDIR:-/tmp}/aiayn-gpu-check.XXXXXX")
logs=$work/logs
mkdir -p "$logs" "$work/runs"
budget=${CHECK_BUDGET_S:-480}
only=${CHECK_ONLY:-}
t_start=$(date +%s)
results=$logs/results.jsonl
: >"$results"

py=$(command -v python3 || true)
[[ -n $py ]] || { echo "check: python3 is needed (results, comparisons, tables)" >&2; exit 1; }
report() { "$py" "$root/tests/gpu/report.py" "$@"; }
bundle=$root/gpu-bundle
tiny=$root/launch/configs/tiny.yaml
elapsed() { echo $(( $(date +%s) - t_start )); }
want() { [[ -z $only || " $only " == *" $1 "* ]]; }

# record NAME STATUS SECONDS DETAIL: one JSON line in results.jsonl and one progress line.
record() {
  report record "$results" "$1" "$2" "$3" "$4"
  printf '[check %4ds] %-22s %s  %s\n' "$(elapsed)" "$1" "$2" "${4:0:300}"
}
skip() { record "$1" "skipped: $2" 0 "${3:-}"; }

# run_stage NAME MAX_SECONDS CMD...: runs CMD under timeout (capped by what is left of the budget, less 25 s
# kept for the tables and the archive), stdout to $logs/NAME.out, stderr to $logs/NAME.log.
# Sets stage_rc, stage_s, stage_status.
run_stage() {
  local name=$1 max=$2; shift 2
  local left=$(( budget - $(elapsed) - 25 ))
  local t=$(( max < left ? max : left ))
  stage_rc=-1 stage_s=0
  if (( t < 10 )); then stage_status="skipped: no time left"; return 1; fi
  echo "== [$(elapsed)s] $name: $* (timeout ${t}s)" >>"$logs/commands.txt"
  local t0; t0=$(date +%s.%N)
  timeout --kill-after=10 "$t" "$@" >"$logs/$name.out" 2>"$logs/$name.log"
  stage_rc=$?
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

# ---------------------------------------------------------------------------------------------------------
echo "aiayn GPU check ($([[ $dry == 1 ]] && echo dry run || echo GPU)); logs in $work, results to $out; budget ${budget}s${only:+; only: $only}"
if [[ $dry == 1 ]]; then
  # CPU only, even on a machine with a GPU (device=auto then picks the CPU); the cores here may be shared with
  # other work, where OpenMP's default spin-waiting costs a multiple of the run time.
  export CUDA_VISIBLE_DEVICES=""
  export OMP_WAIT_POLICY=passive
fi

# env: PyTorch, the GPU, the bundle, libraries.
# PyTorch: the first python3 that imports torch (the device's python3 does; here it may be Debian's /usr/bin/python3).
have_torch=0 torch_info="torch not importable" torch_py=""
for p in ${CHECK_TORCH_PYTHON:-} "$py" /usr/bin/python3; do
  [[ -x $p ]] || continue
  if t=$(timeout 90 "$p" -c 'import torch; print(torch.__version__, "cuda" if torch.cuda.is_available() else "no-cuda")' 2>>"$logs/torch.log"); then
    have_torch=1 torch_info="torch $t ($p)" torch_py=$p
    break
  fi
done
gpu=0
if [[ $dry == 0 ]] && command -v nvidia-smi >/dev/null && timeout 20 nvidia-smi -L >"$logs/nvidia-smi.txt" 2>&1 &&
   grep -q '^GPU' "$logs/nvidia-smi.txt"; then
  gpu=1
  timeout 20 nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm,power.draw,temperature.gpu \
    --format=csv >>"$logs/nvidia-smi.txt" 2>&1
  timeout 20 nvidia-smi >>"$logs/nvidia-smi.txt" 2>&1
  head -n 3 "$logs/nvidia-smi.txt"
fi
if [[ $dry == 0 && $gpu == 0 && $torch_info == *" cuda ("* ]]; then
  gpu=1  # no usable nvidia-smi, but PyTorch sees a GPU
  echo "check: nvidia-smi -L found no GPU, PyTorch does: going on" >&2
fi
no_gpu_msg=""
if [[ $dry == 0 && $gpu == 0 ]]; then
  no_gpu_msg="NO GPU FOUND (nvidia-smi -L, torch.cuda); "
  echo "check: no GPU found (nvidia-smi -L, torch); the CUDA stages fail; use --dry-run on a machine without one" >&2
fi
gpu_name=$(grep -m1 '^GPU 0' "$logs/nvidia-smi.txt" 2>/dev/null | sed 's/ (UUID.*//; s/^GPU 0: //')
bundle_ok=0
if [[ ! -e $bundle/bin/aiayn.xz && ! -x $bundle/bin/aiayn ]]; then
  skip env "no gpu-bundle/ (run tests/gpu/make_bundle.sh here and carry gpu-bundle)"
else
  # shellcheck source=tests/gpu/env.sh
  source "$root/tests/gpu/env.sh" 2>"$logs/env.log"
  bins=(aiayn cuda_ops_test cuda_model_test orterun)
  {
    echo "uname: $(uname -a)"; echo "glibc: $(ldd --version 2>&1 | head -n 1)"
    echo "LD_LIBRARY_PATH=$LD_LIBRARY_PATH"; echo "AIAYN_CUDA_LIBDIRS=$AIAYN_CUDA_LIBDIRS"
    env | grep -E '^(OPAL|PMIX|OMPI|HWLOC)_' | sort
    cat "$bundle/MANIFEST.txt"
    for b in "${bins[@]}"; do echo "--- ldd $b"; ldd "$AIAYN_BUNDLE_BIN/$b"; done
  } >>"$logs/env.log" 2>&1
  missing=$(for b in "${bins[@]}"; do
              if [[ -x $AIAYN_BUNDLE_BIN/$b ]]; then ldd "$AIAYN_BUNDLE_BIN/$b" 2>&1 | grep 'not found'; else echo "$b (not unpacked)"; fi
            done | sort -u | tr -s ' \t\n' ' ')
  version=$(timeout 20 "$AIAYN_BUNDLE_BIN/aiayn" --version 2>&1 | head -n 1)
  facts="$version; gpu=${gpu_name:-none}; cuda libs: ${AIAYN_CUDA_LIBDIRS:-none}; $torch_info"
  if [[ -z $missing && $version == aiayn* ]]; then
    bundle_ok=1
    record env "$([[ -z $no_gpu_msg ]] && echo ok || echo FAIL)" "$(elapsed)" "$no_gpu_msg$facts"
  else
    record env FAIL "$(elapsed)" "${no_gpu_msg}unresolved: ${missing:-none}; $facts"
  fi
fi

on_gpu=$(( dry == 0 && gpu == 1 && bundle_ok == 1 ))
device=$([[ $on_gpu == 1 ]] && echo cuda || echo cpu)
bin=${AIAYN_BUNDLE_BIN:-$bundle/bin}
aiayn=$bin/aiayn
nogpu=$([[ $dry == 1 ]] && echo "no GPU (dry run)" || echo "no GPU")

# ---------------------------------------------------------------------------------------------------------
# tests: the two gtest binaries. On the GPU every test must pass (a skip there means the test found no GPU);
# in a dry run each test skips itself, which still shows that the binary loads and runs.
gtest_stage() {
  local name=$1 prog=$2 max=$3
  if ! want tests; then return; fi
  if [[ $bundle_ok == 0 ]]; then skip "$name" "bundle unusable"; return; fi
  run_stage "$name" "$max" "$bin/$prog" --gtest_color=no --gtest_output="xml:$logs/$name.xml"
  local status=$stage_status detail
  detail=$(report gtest "$logs/$name.out")
  local passed=${detail#passed } skipped=${detail#*skipped }
  passed=${passed%%,*} skipped=${skipped%%[;,]*}
  if [[ $stage_rc == 0 && $on_gpu == 1 && ( $skipped != 0 || $passed == 0 ) ]]; then
    status="FAIL: skipped on the GPU"
  elif [[ $stage_rc == 0 && $on_gpu == 0 ]]; then
    status="skipped: $nogpu"
    detail="$detail (binary runs; each test skips itself)"
  elif [[ $stage_rc != 0 && $detail == *"no gtest summary"* ]]; then
    detail="$detail; $(tail_of "$name")"
  fi
  record "$name" "$status" "$stage_s" "$detail"
}
gtest_stage ops cuda_ops_test 90
gtest_stage model cuda_model_test 120

# ---------------------------------------------------------------------------------------------------------
# train: the tiny preset on the synthetic corpus.
data=$work/data
have_data=0
if want train; then
  if [[ $bundle_ok == 1 ]] && run_stage prepare 60 "$aiayn" prepare --synthetic --out "$data"; then
    record prepare ok "$stage_s" "$(grep -hE '^(train|total)' "$logs/prepare.log" "$logs/prepare.out" 2>/dev/null | head -n 1 | cut -c1-160)"
    have_data=1
  elif [[ $bundle_ok == 1 ]]; then record prepare "$stage_status" "$stage_s" "$(tail_of prepare)"
  else skip prepare "bundle unusable"
  fi
fi

# train_stage NAME MAX_S STEPS [VAR=VALUE... --] [--set key=value...]: aiayn train on the tiny preset.
# $launch (an array, possibly empty) goes in front of aiayn (mpirun). Validation every 100 steps, losses
# logged every 10, a checkpoint every 100.
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
# The bundled mpirun, shared memory only; -x passes on the variables that are set (AIAYN_GRADIENT_COMM is set by
# the `env` in front of it).
mpirun_cmd=("$bundle/bin/mpirun" --oversubscribe --allow-run-as-root --bind-to none --mca btl self,vader
            --mca btl_vader_single_copy_mechanism none -x AIAYN_GRADIENT_COMM)
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
# Small gradient buckets (0.125 MiB = 32768 floats; the tiny model has ~0.3 M parameters): several buckets,
# so that with 2 ranks some start inside the backward pass.
small_buckets=(--set train.bucket_mb=0.125)

if want train; then
  if [[ $have_data == 1 ]]; then
    train_stage cpu-ref 120 300 --set device=cpu --set precision=fp32
    record cpu-ref "$stage_status" "$stage_s" "$train_detail"
    cpu_ok=$([[ $stage_rc == 0 ]] && echo 1 || echo 0)

    if [[ $on_gpu == 1 ]]; then
      train_stage cuda-fp32 90 300 --set device=cuda --set precision=fp32
      record cuda-fp32 "$stage_status" "$stage_s" "$train_detail"
      fp32_ok=$([[ $stage_rc == 0 ]] && echo 1 || echo 0)
      [[ $fp32_ok == 1 && $cpu_ok == 1 ]] &&
        compare fp32-vs-cpu cpu-ref cuda-fp32 compare-losses "$FP32_LOSS_STEPS" "$FP32_LOSS_LIMIT"

      train_stage cuda-bf16 90 300 --set device=cuda --set precision=bf16
      record cuda-bf16 "$stage_status" "$stage_s" "$train_detail"
      [[ $stage_rc == 0 && $cpu_ok == 1 ]] && compare bf16-vs-cpu cpu-ref cuda-bf16 compare-valid "$BF16_VALID_MARGIN"
      ref=cuda-fp32 ref_ok=$fp32_ok dev_sets=(--set device=cuda --set precision=fp32)
    else
      skip cuda-fp32 "$nogpu"
      # device=auto falls back to the CPU, and precision=bf16 to fp32 (with a log line): the same commands and
      # the same comparison as on the GPU (which here must find the two runs identical).
      train_stage cuda-bf16 120 300 --set device=auto --set precision=bf16
      record cuda-bf16 "$([[ $stage_rc == 0 ]] && echo "ok (fp32 on the CPU)" || echo "$stage_status")" "$stage_s" "$train_detail"
      [[ $stage_rc == 0 && $cpu_ok == 1 ]] && compare bf16-vs-cpu cpu-ref cuda-bf16 compare-valid "$BF16_VALID_MARGIN"
      ref=cpu-ref ref_ok=$cpu_ok dev_sets=(--set device=cpu --set precision=fp32)
    fi

    # 2 ranks: on the GPU both on the one device, gradients copied to the host and all-reduced by MPI
    # (AIAYN_GRADIENT_COMM=mpi); in a dry run the same mpirun on the CPU.
    launch=("${mpirun_cmd[@]}" -np 2)
    train_stage mpi-2 90 100 AIAYN_GRADIENT_COMM=mpi -- "${dev_sets[@]}" "${small_buckets[@]}"
    launch=()
    status=$stage_status
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
    [[ $stage_rc == 0 && $ref_ok == 1 ]] && compare mpi2-vs-1 "$ref" mpi-2 compare-losses 100 "$FP32_LOSS_LIMIT"

    if [[ $on_gpu == 1 ]]; then
      # 1 rank, gradients by a NCCL communicator of one, in small buckets on the reducer's own stream. Under
      # mpirun: NCCL's id travels by MPI, so a plain process keeps the local communicator (no NCCL at all).
      # train.comm_timeout_s: a hung NCCL call ends the stage with its message inside the stage's time.
      launch=("${mpirun_cmd[@]}" -np 1)
      train_stage nccl-1 60 100 AIAYN_GRADIENT_COMM=nccl -- --set device=cuda --set precision=fp32 "${small_buckets[@]}" \
        --set train.comm_timeout_s=40
      launch=()
      status=$stage_status
      if [[ $stage_rc == 0 ]] && ! grep -q "1 rank(s), device cuda, gradients by nccl" "$work/runs/nccl-1/log/rank-0.log"; then
        status="FAIL: not '1 rank(s), device cuda, gradients by nccl'"
      fi
      record nccl-1 "$status" "$stage_s" "$train_detail; $(report buckets "$work/runs/nccl-1")"
      [[ $stage_rc == 0 && $fp32_ok == 1 ]] && compare nccl1-vs-fp32 cuda-fp32 nccl-1 compare-losses 100 "$FP32_LOSS_LIMIT"
    else
      skip nccl-1 "$nogpu"
    fi
  else
    for s in cpu-ref cuda-fp32 cuda-bf16 mpi-2 nccl-1; do skip "$s" "no corpus"; done
  fi
fi

# ---------------------------------------------------------------------------------------------------------
# bench: aiayn beside PyTorch, same shapes. Each row's JSON goes to results.jsonl under the row's name.
torch_dev=$([[ $on_gpu == 1 ]] && echo cuda || echo cpu)
# bench_row ROW DTYPE MAX_S CMD...: runs CMD (which prints one JSON line) and records it.
bench_row() {
  local row=$1 dtype=$2 max=$3; shift 3
  local name=bench-${row// /-}
  run_stage "$name" "$max" "$@"
  local detail=""
  [[ $stage_rc != 0 ]] && detail=$(tail_of "$name")
  printf '[check %4ds] %-22s ' "$(elapsed)" "bench $row"
  report bench "$results" "$row" "$stage_status" "$stage_s" "$detail" "$logs/$name.out" "$dtype" "$on_gpu"
}
skip_bench() {
  "$py" -c 'import json,sys; print(json.dumps({"kind":"bench","row":sys.argv[1],"status":"skipped: "+sys.argv[2],"seconds":0,"detail":""}))' \
    "$1" "$2" >>"$results"
  printf '[check %4ds] %-22s skipped: %s\n' "$(elapsed)" "bench $1" "$2"
}

# Shapes and steps: the real ones on the GPU; tiny ones on the CPU of a dry run.
declare -A sents=([base]=800 [big]=400)
len=32 vocab=37000
# Few enough steps that a row still finishes at several times the expected step time (bf16 base ~30-100 ms,
# fp32 ~0.3-0.5 s): a row that runs into its timeout reports nothing.
declare -A a_steps=([bf16]="--steps 20 --warmup-steps 3" [fp32]="--steps 8 --warmup-steps 2")
declare -A t_steps=([bf16]="--steps 20 --warmup-steps 3" [fp32]="--steps 8 --warmup-steps 2")
prof_steps="--steps 3 --warmup-steps 2"
if [[ $on_gpu == 0 ]]; then
  sents=([base]=4 [big]=2) len=8 vocab=1000
  a_steps=([bf16]="--steps 2 --warmup-steps 1" [fp32]="--steps 2 --warmup-steps 1")
  t_steps=([bf16]="--steps 2 --warmup-steps 1" [fp32]="--steps 2 --warmup-steps 1")
  prof_steps="--steps 2 --warmup-steps 1"
fi
# aiayn_dev DTYPE: on the GPU always cuda (never a silent fallback); in a dry run bf16 goes through device=auto,
# which computes fp32 on the CPU (the row says so).
aiayn_dev() { if [[ $on_gpu == 1 ]]; then echo cuda; elif [[ $1 == bf16 ]]; then echo auto; else echo cpu; fi; }
shape_of() { echo --sentences "${sents[$1]}" --src-len "$len" --tgt-len "$len"; }

aiayn_row() {  # aiayn_row PRESET DTYPE
  local preset=$1 dt=$2
  if ! want bench; then return; fi
  if [[ $bundle_ok == 0 ]]; then skip_bench "aiayn $preset $dt" "bundle unusable"; return; fi
  # shellcheck disable=SC2046
  bench_row "aiayn $preset $dt" "$dt" 90 "$aiayn" bench --config "$root/launch/configs/$preset.yaml" \
    --set "device=$(aiayn_dev "$dt")" --set "precision=$dt" --vocab "$vocab" $(shape_of "$preset") ${a_steps[$dt]}
}
torch_row() {  # torch_row PRESET DTYPE
  local preset=$1 dt=$2
  if ! want bench; then return; fi
  if [[ $have_torch == 0 ]]; then skip_bench "torch $preset $dt" "torch not importable"; return; fi
  if [[ ! -f $bundle/torch_baseline.py ]]; then skip_bench "torch $preset $dt" "no gpu-bundle/torch_baseline.py"; return; fi
  local tv=(); [[ $torch_dev == cpu ]] && tv=(--threads "$(nproc)")
  # shellcheck disable=SC2046
  bench_row "torch $preset $dt" "$dt" 90 env PYTHONUNBUFFERED=1 "$torch_py" "$bundle/torch_baseline.py" --preset "$preset" \
    --device "$torch_dev" --dtype "$dt" $(shape_of "$preset") ${t_steps[$dt]} "${tv[@]}"
}
profile_stage() {
  if ! want profile; then return; fi
  if [[ $bundle_ok == 0 ]]; then skip profile "bundle unusable"; return; fi
  # shellcheck disable=SC2046
  run_stage profile 60 "$aiayn" bench --config "$root/launch/configs/base.yaml" --set "device=$(aiayn_dev bf16)" \
    --set precision=bf16 --vocab "$vocab" $(shape_of base) $prof_steps --profile
  local status=$stage_status msg
  cp "$logs/profile.log" "$out/profile.txt" 2>/dev/null
  msg=$(report profile "$results" "$logs/profile.log" 5) || { [[ $status == ok ]] && status="FAIL: no per-op table"; }
  [[ $on_gpu == 0 && $status == ok ]] && msg="$msg [dry run: fp32 on the CPU]"
  [[ $stage_rc != 0 ]] && msg="$msg; $(tail_of profile)"
  record profile "$status" "$stage_s" "$(grep -E '^\{' "$logs/profile.out" | grep -o '"ms_per_step":[0-9.]*' | head -n 1) $msg"
}

# The headline first (bf16), then the profile, then fp32 (the slowest rows, and the least needed).
for preset in base big; do aiayn_row "$preset" bf16; torch_row "$preset" bf16; done
profile_stage
for preset in base big; do aiayn_row "$preset" fp32; torch_row "$preset" fp32; done

# ---------------------------------------------------------------------------------------------------------
# Tables, results, logs.
total=$(elapsed)
report table "$results" "$total" "$dry" >"$logs/summary.txt" 2>&1
cp "$logs/summary.txt" "$results" "$out/" 2>/dev/null
# Everything else in one archive (at most 8 files come back from the device): logs, run metrics and logs.
(cd "$work" && tar czf "$out/gpu-check.tar.gz" logs $(ls -d runs/*/metrics.jsonl runs/*/log runs/*/config.yaml 2>/dev/null)) 2>/dev/null
cat "$logs/summary.txt"
echo "(check: $total s; files in $out)"
rm -rf "$work"
# Exit 0 when every stage that ran is ok (skips allowed).
if grep -q '"status": "\(FAIL\|TIMEOUT\)' "$out/results.jsonl"; then exit 1; fi
exit 0
