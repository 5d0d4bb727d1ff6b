#!/usr/bin/env bash
# The main job end to end on an embedded default, for a newcomer on a fresh Debian machine:
# install what is missing, build, generate a synthetic corpus, train the tiny preset on 2 ranks (mpirun -np 2),
# average the last checkpoints, evaluate with BLEU, and translate a few sentences.
#   launch/quickstart.sh            (work files under runs/quickstart; AIAYN_QUICKSTART_DIR to change)
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
work=${AIAYN_QUICKSTART_DIR:-$root/runs/quickstart}
steps=${AIAYN_QUICKSTART_STEPS:-1000}
aiayn="$root/build/aiayn"
stage() { printf '\n==> %s\n' "$*"; }
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1

stage "1/6 installing missing packages (Debian)"
"$root/launch/install_deps.sh"

stage "2/6 building into $root/build"
start=$(date +%s)
"$root/launch/build.sh" --target aiayn
echo "built in $(( $(date +%s) - start ))s: $aiayn"

stage "3/6 preparing the synthetic corpus (a small artificial language pair with reordering and agreement)"
rm -rf "$work"
mkdir -p "$work"
"$aiayn" prepare --synthetic --seed 1 --out "$work/data"
echo "corpus: $work/data/{train,valid,test}.h5, tokenizer $work/data/tokenizer.model, text in $work/data/text/"

stage "4/6 training the tiny preset on 2 ranks for $steps steps (mpirun -np 2)"
t0=$(date +%s)
mpirun --oversubscribe -np 2 "$aiayn" train --config "$root/launch/configs/tiny.yaml" \
  --set train.max_steps="$steps" --set checkpoint.every_steps=100 --data "$work/data" --run-dir "$work/run"
echo "trained in $(( $(date +%s) - t0 ))s; run directory: $work/run (config.yaml, metrics.jsonl, log/, checkpoints/)"

stage "5/6 averaging the last 5 checkpoints"
"$aiayn" average --run-dir "$work/run" --last 5 --out "$work/run/averaged.h5"

stage "6/6 evaluating on the test set (beam 4, length penalty 0.6) and translating examples"
"$aiayn" eval --checkpoint "$work/run/averaged.h5" --data "$work/data/test.h5" --bleu | tee "$work/eval.json"
head -n 5 "$work/data/text/test.src" > "$work/examples.src"
"$aiayn" translate --checkpoint "$work/run/averaged.h5" < "$work/examples.src" > "$work/examples.hyp"
paste -d '\n' "$work/examples.src" "$work/examples.hyp" | awk 'NR % 2 == 1 { print "  source: " $0 } NR % 2 == 0 { print "  output: " $0 "\n" }'
bleu=$(sed -n 's/.*"bleu":\([0-9.]*\).*/\1/p' "$work/eval.json")
printf '\nBLEU on the synthetic test set: %.2f (results in %s/eval.json)\n' "$bleu" "$work"
