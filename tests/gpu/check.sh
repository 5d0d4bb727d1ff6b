#!/usr/bin/env bash
# The GPU check (issue 8): one script for one `run` call on a lent GPU machine, about 8 minutes.
#
#   tests/gpu/check.sh            on the GPU machine (needs gpu-bundle/ from tests/gpu/make_bundle.sh, carried)
#   tests/gpu/check.sh --dry-run  anywhere without a GPU: every stage that can run on the CPU does, with small
#                                 shapes; the CUDA stages report "skipped: no GPU"; the tables still print
#
# Stages, each under `timeout` and a global time budget (CHECK_BUDGET_S, default 480 s): a failed or timed
# out stage is reported and the script goes on.
#   env        nvidia-smi -L, the bundle's environment (tests/gpu/env.sh), unresolved libraries
#   ops        gpu-bundle/bin/cuda_ops_test: every CUDA op against the CPU reference
#   prepare    aiayn prepare --synthetic
#   cpu-ref    tiny preset, 30 steps on the CPU (the reference for the next stage's losses)
#   cuda-1     tiny preset on the GPU, 300 steps (losses at steps 10, 20, 30 compared with cpu-ref)
#   mpi-2      2 ranks on the one GPU, gradients host-staged through MPI (AIAYN_GRADIENT_COMM=mpi)
#   nccl-1     1 rank, gradients by NCCL
#   bench      aiayn bench (fp32; bf16 is asked for too and expected to be refused) beside the PyTorch
#              baseline in fp32 and bf16, base preset (800 x 32 x 32, vocab 37000) and big (400 x 32 x 32)
# Output: $OUT/gpu-check.tar.gz (every log, run metrics, bench JSON), $OUT/summary.txt (the tables),
# $OUT/results.jsonl (one JSON line per stage and per bench row). Without $OUT: runs/gpu-check[-dry]/.
# The tables print last.
set -uo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
dry=0
[[ ${1:-} == --dry-run ]] && dry=1
cd "$root" || exit 1

if [[ -n ${OUT:-} ]]; then out=$OUT; else out=$root/runs/gpu-check$([[ $dry == 1 ]] && echo -dry); fi
mkdir -p "$out"
work=$(mktemp -d "${TMPDIR:-/tmp}/aiayn-gpu-check.XXXXXX")
logs=$work/logs
mkdir -p "$logs"
budget=${CHECK_BUDGET_S:-480}
t_start=$(date +%s)
results=$logs/results.jsonl
: >"$results"

py=$(command -v python3 || true)
bundle=$root/gpu-bundle
tiny=$root/launch/configs/tiny.yaml

# ---------------------------------------------------------------------------------------------------------
# record NAME STATUS SECONDS DETAIL: one JSON line in results.jsonl (python3 does the quoting; a plain
# fallback without it).
record() {
  if [[ -n $py ]]; then
    "$py" -c 'import json,sys; print(json.dumps({"kind":"stage","stage":sys.argv[1],"status":sys.argv[2],"seconds":float(sys.argv[3]),"detail":sys.argv[4]}))' \
      "$1" "$2" "$3" "$4" >>"$results"
  else
    printf '{"kind":"stage","stage":"%s","status":"%s","seconds":%s,"detail":"%s"}\n' "$1" "$2" "$3" "${4//\"/\'}" >>"$results"
  fi
  printf '[check %4ds] %-22s %s  %s\n' "$(( $(date +%s) - t_start ))" "$1" "$2" "$4"
}
skip() { record "$1" "skipped: $2" 0 "${3:-}"; }

# run_stage NAME MAX_SECONDS CMD...: runs CMD under timeout (capped by what is left of the budget), stdout
# to $logs/NAME.out, stderr to $logs/NAME.log. Sets stage_rc, stage_s, stage_status.
run_stage() {
  local name=$1 max=$2; shift 2
  local left=$(( budget - ($(date +%s) - t_start) - 20 ))
  local t=$(( max < left ? max : left ))
  stage_rc=-1 stage_s=0
  if (( t < 10 )); then stage_status="skipped: no time left"; return 1; fi
  echo "== $name: $* (timeout ${t}s)" >>"$logs/commands.txt"
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
tail_of() { tail -n 3 "$logs/$1.log" 2>/dev/null | tr '\n' ' ' | cut -c1-300; }

# metrics_detail RUN_DIR: first and last logged loss, last tok/s, the "gradients by" part of the log.
metrics_detail() {
  local run=$1
  [[ -n $py && -f $run/metrics.jsonl ]] || { echo "no metrics.jsonl"; return; }
  "$py" - "$run" <<'EOF'
import json, re, sys, pathlib
run = pathlib.Path(sys.argv[1])
rows = [json.loads(l) for l in open(run / "metrics.jsonl") if l.strip()]
steps = [r for r in rows if "loss" in r]
val = [r for r in rows if "valid_loss" in r]
parts = []
if steps:
    parts.append(f"loss {steps[0]['loss']:.3f}@{steps[0]['step']} -> {steps[-1]['loss']:.3f}@{steps[-1]['step']}")
    parts.append(f"{steps[-1]['tok_s']:.0f} tgt tok/s")
    sk = sum(r.get("skipped", 0) for r in steps[-1:])
    if sk: parts.append(f"skipped {sk}")
if val: parts.append(f"valid_loss {val[-1]['valid_loss']:.3f}")
log = run / "log" / "rank-0.log"
if log.exists():
    m = re.search(r"aiayn train: (.*?), \d+ thread", log.read_text())
    if m: parts.append(m.group(1))
print("; ".join(parts) or "no steps logged")
EOF
}

# compare_losses REF_RUN RUN: max relative difference of the loss at the steps both logged.
compare_losses() {
  [[ -n $py ]] || { echo "no python3"; return 1; }
  "$py" - "$1" "$2" <<'EOF'
import json, sys
def losses(p):
    try: return {r["step"]: r["loss"] for r in map(json.loads, open(p + "/metrics.jsonl")) if "loss" in r}
    except OSError: return {}
a, b = losses(sys.argv[1]), losses(sys.argv[2])
common = sorted(set(a) & set(b))
if not common:
    print("no common logged steps"); sys.exit(1)
rel = max(abs(a[s] - b[s]) / max(abs(a[s]), 1e-12) for s in common)
print(f"loss vs CPU at steps {','.join(map(str, common))}: max rel diff {rel:.2e}")
sys.exit(0 if rel < 5e-3 else 1)
EOF
}

# ---------------------------------------------------------------------------------------------------------
echo "aiayn GPU check ($([[ $dry == 1 ]] && echo dry run || echo GPU)); logs in $work, results to $out; budget ${budget}s"

# env: the GPU, the bundle, libraries.
gpu=0
if command -v nvidia-smi >/dev/null && timeout 20 nvidia-smi -L >"$logs/nvidia-smi.txt" 2>&1 && grep -q '^GPU' "$logs/nvidia-smi.txt"; then
  gpu=1
  timeout 20 nvidia-smi >>"$logs/nvidia-smi.txt" 2>&1
  cat "$logs/nvidia-smi.txt" | head -n 3
fi
if [[ $dry == 0 && $gpu == 0 ]]; then
  echo "check: no GPU found (nvidia-smi -L); use --dry-run on a machine without one" >&2
fi
if [[ ! -x $bundle/bin/aiayn ]]; then
  skip env "no gpu-bundle/ (run tests/gpu/make_bundle.sh here and carry gpu-bundle)"
  bundle_ok=0
else
  # shellcheck source=tests/gpu/env.sh
  source "$root/tests/gpu/env.sh" 2>"$logs/env.log"
  {
    echo "uname: $(uname -a)"; echo "glibc: $(ldd --version 2>&1 | head -n 1)"
    echo "LD_LIBRARY_PATH=$LD_LIBRARY_PATH"; echo "AIAYN_CUDA_LIBDIRS=$AIAYN_CUDA_LIBDIRS"
    env | grep -E '^(OPAL|PMIX|OMPI|HWLOC)_' | sort
    cat "$bundle/MANIFEST.txt"
    for b in aiayn cuda_ops_test orterun; do echo "--- ldd $b"; ldd "$bundle/bin/$b"; done
  } >>"$logs/env.log" 2>&1
  missing=$(for b in aiayn cuda_ops_test orterun; do ldd "$bundle/bin/$b" 2>&1; done | grep -E 'not found' | sort -u | tr -s ' \t\n' ' ')
  version=$(timeout 20 "$bundle/bin/aiayn" --version 2>&1 | head -n 1)
  if [[ -z $missing && $version == aiayn* ]]; then
    record env ok 0 "$version; gpu=$gpu; cuda libs: ${AIAYN_CUDA_LIBDIRS:-none}"
    bundle_ok=1
  else
    record env FAIL 0 "$version; unresolved: ${missing:-none}; cuda libs: ${AIAYN_CUDA_LIBDIRS:-none}"
    bundle_ok=0
  fi
fi

on_gpu=$(( dry == 0 && gpu == 1 && bundle_ok == 1 ))
device=$([[ $on_gpu == 1 ]] && echo cuda || echo cpu)
aiayn=$bundle/bin/aiayn
nogpu_reason=$([[ $dry == 1 ]] && echo "no GPU (dry run)" || echo "no GPU")

# ops: the CUDA op tests against the CPU reference.
if [[ $bundle_ok == 0 ]]; then skip ops "bundle unusable"
elif [[ $on_gpu == 1 ]]; then
  run_stage ops 150 "$bundle/bin/cuda_ops_test" --gtest_color=no
  summary=$(grep -E '^\[  (PASSED|FAILED|SKIPPED) +\]' "$logs/ops.out" | tr -s ' \n' ' ')
  failed=$(grep -E '^\[  FAILED  \] [A-Za-z]' "$logs/ops.out" | grep -v 'listed below' | awk '{print $4}' | sort -u | head -n 20 | tr '\n' ' ')
  record ops "$stage_status" "$stage_s" "${summary:-no gtest summary} ${failed:+failed: $failed}$( [[ $stage_rc != 0 && -z $summary ]] && tail_of ops)"
else
  n=$(timeout 20 "$bundle/bin/cuda_ops_test" --gtest_list_tests 2>/dev/null | grep -c '^  ')
  skip ops "$nogpu_reason" "binary loads, $n tests listed"
fi

# prepare: the synthetic corpus (CPU).
data=$work/data
if [[ $bundle_ok == 1 ]] && run_stage prepare 90 "$aiayn" prepare --synthetic --out "$data"; then
  record prepare ok "$stage_s" "$(grep -E '^train' "$logs/prepare.log" "$logs/prepare.out" 2>/dev/null | head -n 1 | cut -d: -f2- | cut -c1-160)"
  have_data=1
else
  [[ $bundle_ok == 1 ]] && record prepare "$stage_status" "$stage_s" "$(tail_of prepare)" || skip prepare "bundle unusable"
  have_data=0
fi

# train_stage NAME MAX_S STEPS DEVICE [ENV=VAL...] -- [LAUNCHER...]: the tiny preset for STEPS steps.
train_stage() {
  local name=$1 max=$2 steps=$3 dev=$4; shift 4
  local envs=() launcher=()
  while [[ $# -gt 0 && $1 != -- ]]; do envs+=("$1"); shift; done
  [[ ${1:-} == -- ]] && shift
  launcher=("$@")
  local run=$work/runs/$name
  mkdir -p "$work/runs"
  run_stage "$name" "$max" env "${envs[@]}" "${launcher[@]}" "$aiayn" train --config "$tiny" --data "$data" \
    --run-dir "$run" --set "device=$dev" --set "train.max_steps=$steps" --set train.log_every=10 \
    --set train.valid_every=100 --set checkpoint.every_steps=100
  local rc=$?
  local detail; detail=$(metrics_detail "$run")
  [[ $rc != 0 ]] && detail="$detail; $(tail_of "$name")"
  record "$name" "$stage_status" "$stage_s" "$detail"
  return $rc
}
mpirun_cmd=("$bundle/bin/mpirun" --oversubscribe --allow-run-as-root --bind-to none --mca btl self,vader --mca btl_vader_single_copy_mechanism none
            -x LD_LIBRARY_PATH -x AIAYN_GRADIENT_COMM -x OMPI_ALLOW_RUN_AS_ROOT -x OMPI_ALLOW_RUN_AS_ROOT_CONFIRM)

if [[ $have_data == 1 ]]; then
  # The CPU reference, then the same steps (and more) on the GPU.
  train_stage cpu-ref 90 30 cpu -- || true
  if [[ $on_gpu == 1 ]]; then
    if train_stage cuda-1 90 300 cuda --; then
      cmp=$(compare_losses "$work/runs/cpu-ref" "$work/runs/cuda-1"); rc=$?
      record cuda-vs-cpu "$([[ $rc == 0 ]] && echo ok || echo FAIL)" 0 "$cmp (limit 5e-3)"
    fi
    train_stage mpi-2 120 200 cuda AIAYN_GRADIENT_COMM=mpi -- "${mpirun_cmd[@]}" -np 2 || true
    train_stage nccl-1 90 200 cuda -- || true
  else
    skip cuda-1 "$nogpu_reason"
    # The bundled mpirun still runs here, on the CPU.
    train_stage mpi-2 150 20 cpu AIAYN_GRADIENT_COMM=mpi -- "${mpirun_cmd[@]}" -np 2 || true
    skip nccl-1 "$nogpu_reason"
  fi
else
  for s in cpu-ref cuda-1 mpi-2 nccl-1; do skip "$s" "no corpus"; done
fi

# ---------------------------------------------------------------------------------------------------------
# bench: aiayn beside PyTorch. Each row's JSON goes to results.jsonl with the row's name.
have_torch=0
if [[ -n $py ]] && timeout 60 "$py" -c 'import torch' >/dev/null 2>&1; then have_torch=1; fi
torch_dev=$([[ $on_gpu == 1 ]] && echo cuda || echo cpu)
[[ $dry == 1 && $gpu == 1 ]] && torch_dev=cpu

# bench_row ROW MAX_S CMD...: runs CMD (which prints one JSON line), records it with the row name.
bench_row() {
  local row=$1 max=$2; shift 2
  local name=bench-${row// /-}
  run_stage "$name" "$max" "$@"
  local note=""
  # Dry run only: `aiayn bench` of a CUDA build calls cuda_synchronize() whatever the device (trainer/src/
  # bench.cpp), which fails on a machine without a usable GPU driver; time the CPU row with the CPU build.
  if [[ $dry == 1 && $stage_rc != 0 && $1 == "$aiayn" && -x $cpu_aiayn ]] &&
     grep -Eq 'driver version is insufficient|no CUDA-capable device' "$logs/$name.log"; then
    mv "$logs/$name.log" "$logs/$name.bundle.log"
    run_stage "$name" "$max" "$cpu_aiayn" "${@:2}"
    note=" [with ${cpu_aiayn#"$root/"}: the bundle's CUDA build needs a GPU driver here]"
  fi
  local line; line=$(grep -E '^\{' "$logs/$name.out" 2>/dev/null | tail -n 1)
  local status=$stage_status detail=""
  if [[ $stage_rc != 0 ]]; then
    detail=$(grep -v '^[[:space:]]*$' "$logs/$name.log" 2>/dev/null | tail -n 1 | cut -c1-200)
    if grep -q "bf16 is not implemented" "$logs/$name.log" 2>/dev/null; then status="refused"; fi
  fi
  detail=$detail$note
  if [[ -n $py ]]; then
    "$py" -c 'import json,sys
row, status, secs, detail, line = sys.argv[1:6]
d = {"kind": "bench", "row": row, "status": status, "seconds": float(secs), "detail": detail}
if line:
    try: d["result"] = json.loads(line)
    except ValueError: d["detail"] += " (unparsable JSON)"
print(json.dumps(d))' "$row" "$status" "$stage_s" "$detail" "$line" >>"$results"
  fi
  printf '[check %4ds] %-22s %s  %s\n' "$(( $(date +%s) - t_start ))" "bench $row" "$status" "${line:-$detail}"
}
skip_bench() {
  [[ -n $py ]] && "$py" -c 'import json,sys; print(json.dumps({"kind":"bench","row":sys.argv[1],"status":"skipped: "+sys.argv[2],"seconds":0,"detail":""}))' "$1" "$2" >>"$results"
  printf '[check %4ds] %-22s skipped: %s\n' "$(( $(date +%s) - t_start ))" "bench $1" "$2"
}

# A CPU-only build of aiayn, for the dry run's bench rows (see bench_row).
cpu_aiayn=${AIAYN_CPU_BIN:-$root/build/aiayn}
grep -qs '^AIAYN_CUDA:STRING=OFF$' "$(dirname "$cpu_aiayn")/CMakeCache.txt" || cpu_aiayn=""

# Shapes: the real ones on the GPU; tiny ones on the CPU of a dry run.
declare -A sents=([base]=800 [big]=400)
len=32; vocab=37000; a_steps=(--steps 10 --warmup-steps 2); t_steps=(--steps 10 --warmup-steps 3)
if [[ $on_gpu == 0 ]]; then
  sents=([base]=4 [big]=2); len=8; vocab=1000; a_steps=(--steps 2 --warmup-steps 1); t_steps=(--steps 2 --warmup-steps 1)
fi
for preset in base big; do
  B=${sents[$preset]}
  shape=(--sentences "$B" --src-len "$len" --tgt-len "$len")
  if [[ $bundle_ok == 1 ]]; then
    bench_row "aiayn $preset fp32" 120 "$aiayn" bench --config "$root/launch/configs/$preset.yaml" \
      --set "device=$device" --set precision=fp32 --vocab "$vocab" "${shape[@]}" "${a_steps[@]}"
    # bf16 is not implemented in aiayn yet: expected "refused" (a quick failure with a clear message).
    bench_row "aiayn $preset bf16" 60 "$aiayn" bench --config "$root/launch/configs/$preset.yaml" \
      --set "device=$device" --set precision=bf16 --vocab "$vocab" "${shape[@]}" "${a_steps[@]}"
  else
    skip_bench "aiayn $preset fp32" "bundle unusable"; skip_bench "aiayn $preset bf16" "bundle unusable"
  fi
  for dt in fp32 bf16; do
    if [[ $have_torch == 0 ]]; then skip_bench "torch $preset $dt" "torch not importable"; continue; fi
    if [[ ! -f $bundle/torch_baseline.py ]]; then skip_bench "torch $preset $dt" "no gpu-bundle/torch_baseline.py"; continue; fi
    tv=(); [[ $torch_dev == cpu ]] && tv=(--threads "$(nproc)")
    bench_row "torch $preset $dt" 120 env PYTHONUNBUFFERED=1 "$py" "$bundle/torch_baseline.py" --preset "$preset" \
      --device "$torch_dev" --dtype "$dt" "${shape[@]}" "${t_steps[@]}" "${tv[@]}"
  done
done

# ---------------------------------------------------------------------------------------------------------
# Tables, results, logs.
total=$(( $(date +%s) - t_start ))
table() {
  if [[ -z $py ]]; then cat "$results"; return; fi
  "$py" - "$results" "$total" "$dry" <<'EOF'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
total, dry = sys.argv[2], sys.argv[3] == "1"
PEAK = 989.0
print(f"\n== stages ({'dry run, CPU only' if dry else 'GPU'}; {total} s in all)")
print(f"{'stage':<12} | {'status':<24} | {'s':>6} | detail")
for r in rows:
    if r["kind"] == "stage":
        print(f"{r['stage']:<12} | {r['status'][:24]:<24} | {r['seconds']:>6.1f} | {r['detail'][:170]}")
bench = [r for r in rows if r["kind"] == "bench"]
def res(row):
    for r in bench:
        if r["row"] == row and "result" in r: return r["result"]
ok = lambda x: x is not None and x.get("tgt_tok_s")
print(f"\n== bench (tgt tokens per step: " + ", ".join(
    f"{p} {r['result']['sentences']}x{r['result']['tgt_len']}" for p in ("base", "big")
    for r in bench if r["row"] == f"aiayn {p} fp32" and "result" in r) + "; MFU against 989 TFLOP/s dense bf16)")
print(f"{'row':<17} | {'device':<6} | {'dtype':<5} | {'tgt tok/s':>10} | {'ms/step':>9} | {'TFLOP/s':>8} | {'MFU':>6} | {'vs torch same dtype':>19} | {'vs torch bf16':>13} | status")
for r in bench:
    sys_, preset, dtype = r["row"].split()
    x = r.get("result")
    if not ok(x):
        print(f"{r['row']:<17} | {'':<6} | {dtype:<5} | {'-':>10} | {'-':>9} | {'-':>8} | {'-':>6} | {'-':>19} | {'-':>13} | {r['status']} {r['detail'][:90]}")
        continue
    dev = x.get("device", "?")
    mfu = x.get("mfu")
    if mfu is None and str(dev).startswith("cuda"): mfu = x["tflops"] / PEAK
    mfu_s = f"{mfu*100:.1f}%" if mfu is not None else "-"
    same = res(f"torch {preset} {dtype}") if sys_ == "aiayn" else None
    bf = res(f"torch {preset} bf16") if sys_ == "aiayn" else None
    ratio = lambda t: f"{x['tgt_tok_s'] / t['tgt_tok_s']:.2f}x" if ok(t) else "-"
    print(f"{r['row']:<17} | {str(dev)[:6]:<6} | {dtype:<5} | {x['tgt_tok_s']:>10.0f} | {x['ms_per_step']:>9.2f} | {x['tflops']:>8.3f} | {mfu_s:>6} | {ratio(same):>19} | {ratio(bf):>13} | {r['status']}{(' ' + r['detail'][:110]) if r['detail'] else ''}")
EOF
}
table >"$logs/summary.txt" 2>&1
cp "$logs/summary.txt" "$results" "$out/" 2>/dev/null
# Everything else in one archive (at most 8 files come back from the device): logs, run metrics and logs.
(cd "$work" && tar czf "$out/gpu-check.tar.gz" logs $(cd "$work" && ls -d runs/*/metrics.jsonl runs/*/log runs/*/config.yaml 2>/dev/null)) 2>/dev/null
cat "$logs/summary.txt"
rm -rf "$work"
# Exit 0 when every stage that ran is ok (skips and the expected bf16 refusals allowed).
if grep -q '"status": "\(FAIL\|TIMEOUT\)' "$out/results.jsonl"; then exit 1; fi
exit 0
