#!/usr/bin/env bash
# The main job on real data: Multi30k English->German with the small preset (3+3 layers, d 256), on the CPU
# (or a GPU when one is usable), then BLEU on test_2016 with beam 4.
#   launch/examples/multi30k.sh [DATA_DIR] [WORK_DIR] [RANKS]
# DATA_DIR holds train.{en,de}.gz, val.{en,de}.gz, test_2016_flickr.{en,de}.gz (default ../shared/data/multi30k).
# AIAYN_MAX_MINUTES bounds the training time (default 0: the preset's max_steps).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
src=${1:-$root/../shared/data/multi30k}
work=${2:-$root/runs/multi30k}
ranks=${3:-2}
minutes=${AIAYN_MAX_MINUTES:-0}
aiayn="$root/build/aiayn"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
[[ -f "$src/train.en.gz" ]] || { echo "multi30k: $src/train.en.gz not found (pass the data directory)" >&2; exit 1; }
"$root/launch/install_deps.sh"
"$root/launch/build.sh" --target aiayn

if [[ ! -f "$work/data/train.h5" ]]; then
  echo "==> preparing Multi30k (joint BPE, 8000 pieces)"
  "$aiayn" prepare --train-src "$src/train.en.gz" --train-tgt "$src/train.de.gz" \
    --valid-src "$src/val.en.gz" --valid-tgt "$src/val.de.gz" \
    --test-src "$src/test_2016_flickr.en.gz" --test-tgt "$src/test_2016_flickr.de.gz" \
    --vocab-size 8000 --out "$work/data"
fi

resume=(); [[ -f "$work/run/checkpoints/LATEST" ]] && resume=(--resume)
echo "==> training the small preset on $ranks rank(s)"
t0=$(date +%s)
"$root/launch/stoppable.sh" mpirun --oversubscribe -np "$ranks" "$aiayn" train --config "$root/launch/configs/small.yaml" \
  --set train.max_minutes="$minutes" --data "$work/data" --run-dir "$work/run" "${resume[@]}"
echo "trained in $(( $(date +%s) - t0 ))s"

echo "==> test_2016 BLEU (beam 4, length penalty 0.6) with the averaged checkpoint"
"$aiayn" eval --checkpoint "$work/run/averaged.h5" --data "$work/data/test.h5" --bleu | tee "$work/test_2016.json"
