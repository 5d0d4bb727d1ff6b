#!/usr/bin/env bash
# Decoding speed on a CPU: `aiayn translate` against CTranslate2 (float32, and int8 for reference) on the same
# sentences, the same model (exported with `aiayn export`), the same threads and beam. Not a test: it prints
#   engine  sentences/s  target tokens/s  (wall time of the whole command, start-up included)
# and the ratio aiayn / CTranslate2 float32. Target tokens are the SentencePiece tokens of each engine's output.
#
#   launch/bench_decode.sh [--checkpoint C] [--src FILE] [--sentences 1000] [--threads 2] [--beam 4]
#                          [--lenpen-ct2 0.5] [--python PY] [--repeat 3]
#
# Without --checkpoint it prepares the synthetic corpus and trains the tiny preset (300 steps, as the export test)
# in a temporary folder; without --src it decodes the last --sentences lines of that corpus' training source.
# Python: --python, else $AIAYN_PYTHON, else ~/.cache/aiayn-venv/bin/python, else python3 (needs ctranslate2 and
# sentencepiece). Each engine runs --repeat times; the best run counts (the machine may be shared).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
exe=${AIAYN_EXE:-$root/build/aiayn}
ckpt="" src="" n=1000 threads=2 beam=4 lenpen_ct2=0.5 repeat=3
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
  [[ -n "$src" ]] || src=$work/data/text/train.src
fi
[[ -n "$src" ]] || { echo "bench_decode.sh: --src is needed with --checkpoint" >&2; exit 2; }
tail -n "$n" "$src" >"$work/src.txt"
"$exe" export --checkpoint "$ckpt" --format ctranslate2 --out "$work/ct2" --python "$py" >/dev/null

# best wall seconds of $repeat runs of "$@" (stdout to $out)
best_of() {
  local out=$1; shift
  local best=""
  for _ in $(seq "$repeat"); do
    local t0 t1
    t0=$(date +%s.%N)
    "$@" <"$work/src.txt" >"$out" 2>>"$work/log"
    t1=$(date +%s.%N)
    best=$(awk -v a="$best" -v b="$(echo "$t1 - $t0" | bc)" 'BEGIN { print (a == "" || b < a) ? b : a }')
  done
  echo "$best"
}
tokens_of() {
  "$py" -c 'import sentencepiece, sys
sp = sentencepiece.SentencePieceProcessor(model_file=sys.argv[1])
print(sum(len(sp.encode(l.rstrip("\n"))) for l in open(sys.argv[2], encoding="utf-8")))' "$work/ct2/tokenizer.model" "$1"
}

t_aiayn=$(best_of "$work/hyp.aiayn" "$exe" translate --checkpoint "$ckpt" --device cpu --threads "$threads" --beam "$beam")
t_fp32=$(best_of "$work/hyp.fp32" "$py" "$root/launch/ct2_translate.py" --model "$work/ct2" --threads "$threads" \
  --beam "$beam" --lenpen "$lenpen_ct2" --compute-type float32)
t_int8=$(best_of "$work/hyp.int8" "$py" "$root/launch/ct2_translate.py" --model "$work/ct2" --threads "$threads" \
  --beam "$beam" --lenpen "$lenpen_ct2" --compute-type int8)

lines=$(wc -l <"$work/src.txt")
same=$(paste -d '\t' "$work/hyp.aiayn" "$work/hyp.fp32" | awk -F '\t' '$1 == $2' | wc -l)
echo "decoding $lines sentences, beam $beam, $threads threads, $(lscpu | sed -n 's/^Model name: *//p' | head -1)"
printf '%-22s %9s %12s %14s\n' engine seconds sentences/s "tgt tokens/s"
for e in aiayn:"$t_aiayn":hyp.aiayn ctranslate2-float32:"$t_fp32":hyp.fp32 ctranslate2-int8:"$t_int8":hyp.int8; do
  IFS=: read -r name secs file <<<"$e"
  toks=$(tokens_of "$work/$file")
  awk -v n="$name" -v s="$secs" -v l="$lines" -v t="$toks" 'BEGIN { printf "%-22s %9.2f %12.1f %14.1f\n", n, s, l / s, t / s }'
done
awk -v a="$t_aiayn" -v c="$t_fp32" 'BEGIN { printf "ratio aiayn / ctranslate2-float32 (sentences/s): %.2fx\n", c / a }'
echo "identical lines aiayn vs ctranslate2-float32: $same of $lines"
