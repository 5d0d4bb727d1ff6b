#!/usr/bin/env bash
# Decoding speed on a CPU: `aiayn translate` against CTranslate2 (float32, and int8 for reference) on the same
# sentences, the same model (exported with `aiayn export`), the same threads and beam. Not a test: it prints
#   engine  wall and CPU seconds, sentences/s, target tokens/s (the whole command, start-up included)
# and the ratio aiayn / CTranslate2 float32. Target tokens are the SentencePiece tokens of each engine's output.
# CTranslate2 gets all lines in one translate_batch call as one batch (--one-call --batch-size 0): its fastest
# setting here (1000 sentences, 2 threads: 2.2 s in one batch, 3.8 s in batches of 4096 tokens, 8.8 s of 64
# sentences).
#
#   launch/bench_decode.sh [--checkpoint C] [--src FILE] [--sentences 1000] [--threads 2] [--beam 4]
#                          [--lenpen-ct2 0.45] [--python PY] [--repeat 3] [--baseline-exe OTHER_AIAYN]
#
# Without --checkpoint it prepares the synthetic corpus and trains the tiny preset (300 steps, as the export test)
# in a temporary folder; without --src it decodes the last --sentences of that corpus' 1000 held-out sources
# (valid, then test).
# Python: --python, else $AIAYN_PYTHON, else ~/.cache/aiayn-venv/bin/python, else python3 (needs ctranslate2 and
# sentencepiece). Each engine runs --repeat times; the best run counts (the machine may be shared).
# --baseline-exe adds a row for another aiayn build (e.g. an older commit) on the same checkpoint.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
exe=${AIAYN_EXE:-$root/build/aiayn}
ckpt="" src="" n=1000 threads=2 beam=4 lenpen_ct2=0.45 repeat=3 baseline=""
py=${AIAYN_PYTHON:-}
[[ -z "$py" && -x "$HOME/.cache/aiayn-venv/bin/python" ]] && py=$HOME/.cache/aiayn-venv/bin/python
py=${py:-python3}
while [[ $# -gt 0 ]]; do
  case "$1" in
    --checkpoint) ckpt=$2; shift 2 ;;
    --src) src=$2; shift 2 ;;
    --sentences) n=$2; shift 2 ;;
    --threads) threads=$2; shift 2 ;;
    --beam) beam=$2; shift 2 ;;
    --lenpen-ct2) lenpen_ct2=$2; shift 2 ;;
    --python) py=$2; shift 2 ;;
    --repeat) repeat=$2; shift 2 ;;
    --baseline-exe) baseline=$2; shift 2 ;;
    *) echo "bench_decode.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
"$py" -c 'import ctranslate2, sentencepiece' 2>/dev/null ||
  { echo "bench_decode.sh: $py cannot import ctranslate2 and sentencepiece (pip install them, or --python)" >&2; exit 1; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
export OMP_NUM_THREADS=$threads OMP_WAIT_POLICY=passive
if [[ -z "$ckpt" ]]; then
  echo "bench_decode.sh: training the tiny preset on the synthetic corpus in $work ..." >&2
  "$exe" prepare --synthetic --pairs 3000 --vocab-size 500 --out "$work/data" >/dev/null 2>&1
  "$exe" train --config "$root/launch/configs/tiny.yaml" --set train.max_steps=300 --set checkpoint.every_steps=100 \
    --set train.valid_every=0 --set device=cpu --set train.threads="$threads" --data "$work/data" \
    --run-dir "$work/run" >/dev/null 2>&1
  ckpt=$work/run/averaged.h5
  if [[ -z "$src" ]]; then  # the held-out sentences: 500 of valid, then 500 of test
    cat "$work/data/text/valid.src" "$work/data/text/test.src" >"$work/heldout.src"
    src=$work/heldout.src
  fi
fi
[[ -n "$src" ]] || { echo "bench_decode.sh: --src is needed with --checkpoint" >&2; exit 2; }
tail -n "$n" "$src" >"$work/src.txt"
"$exe" export --checkpoint "$ckpt" --format ctranslate2 --out "$work/ct2" --python "$py" >/dev/null

# "best_wall_seconds cpu_seconds_of_that_run" of $repeat runs of "$@" (stdout to $out). CPU seconds (user + sys,
# all threads) are steadier than wall time on a shared machine, where the wall time also counts the waits.
best_of() {
  local out=$1; shift
  local best="" best_cpu=""
  for _ in $(seq "$repeat"); do
    /usr/bin/time -f "%e %U %S" -o "$work/time" "$@" <"$work/src.txt" >"$out" 2>>"$work/log"
    read -r wall user sys <"$work/time"
    if [[ -z "$best" ]] || awk -v a="$wall" -v b="$best" 'BEGIN { exit !(a < b) }'; then
      best=$wall best_cpu=$(awk -v u="$user" -v s="$sys" 'BEGIN { print u + s }')
    fi
  done
  echo "$best $best_cpu"
}
tokens_of() {
  "$py" -c 'import sentencepiece, sys
sp = sentencepiece.SentencePieceProcessor(model_file=sys.argv[1])
print(sum(len(sp.encode(l.rstrip("\n"))) for l in open(sys.argv[2], encoding="utf-8")))' "$work/ct2/tokenizer.model" "$1"
}

engines=()
if [[ -n "$baseline" ]]; then
  t_base=$(best_of "$work/hyp.base" "$baseline" translate --checkpoint "$ckpt" --device cpu --threads "$threads" --beam "$beam")
  engines+=(aiayn-baseline:"$t_base":hyp.base)
fi
t_aiayn=$(best_of "$work/hyp.aiayn" "$exe" translate --checkpoint "$ckpt" --device cpu --threads "$threads" --beam "$beam")
t_fp32=$(best_of "$work/hyp.fp32" "$py" "$root/launch/ct2_translate.py" --model "$work/ct2" --threads "$threads" \
  --beam "$beam" --lenpen "$lenpen_ct2" --compute-type float32 --one-call --batch-size 0)
t_int8=$(best_of "$work/hyp.int8" "$py" "$root/launch/ct2_translate.py" --model "$work/ct2" --threads "$threads" \
  --beam "$beam" --lenpen "$lenpen_ct2" --compute-type int8 --one-call --batch-size 0)

lines=$(wc -l <"$work/src.txt")
same=$(paste -d '\t' "$work/hyp.aiayn" "$work/hyp.fp32" | awk -F '\t' '$1 == $2' | wc -l)
echo "decoding $lines sentences, beam $beam, $threads threads, $(lscpu | sed -n 's/^Model name: *//p' | head -1)"
echo "(best wall time of $repeat runs, start-up included; CPU = user + sys seconds of that run)"
printf '%-22s %8s %8s %12s %14s %16s\n' engine wall_s cpu_s sentences/s "tgt tokens/s" "sentences/cpu-s"
engines+=(aiayn:"$t_aiayn":hyp.aiayn ctranslate2-float32:"$t_fp32":hyp.fp32 ctranslate2-int8:"$t_int8":hyp.int8)
for e in "${engines[@]}"; do
  IFS=: read -r name times file <<<"$e"
  read -r secs cpu <<<"$times"
  toks=$(tokens_of "$work/$file")
  awk -v n="$name" -v s="$secs" -v c="$cpu" -v l="$lines" -v t="$toks" \
    'BEGIN { printf "%-22s %8.2f %8.2f %12.1f %14.1f %16.1f\n", n, s, c, l / s, t / s, l / c }'
done
read -r wa ca <<<"$t_aiayn"
read -r wc cc <<<"$t_fp32"
awk -v a="$wa" -v c="$wc" -v ac="$ca" -v cc="$cc" \
  'BEGIN { printf "ratio aiayn / ctranslate2-float32: %.2fx sentences/s (wall), %.2fx sentences per CPU second\n", c / a, cc / ac }'
echo "identical lines aiayn vs ctranslate2-float32 (length_penalty $lenpen_ct2): $same of $lines"
if [[ -n "$baseline" ]]; then
  echo "identical lines aiayn vs aiayn-baseline: $(paste -d '\t' "$work/hyp.aiayn" "$work/hyp.base" | awk -F '\t' '$1 == $2' | wc -l) of $lines"
fi
