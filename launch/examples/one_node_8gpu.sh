#!/usr/bin/env bash
# The paper's base model on one node with 8 GPUs: one rank per GPU (each rank picks its GPU by local rank),
# gradients all-reduced with NCCL. About 25000 source + 25000 target tokens per step globally (batch_tokens);
# max_tokens_per_rank caps one micro-batch per GPU (accumulation is derived).
#   launch/examples/one_node_8gpu.sh DATA_DIR RUN_DIR
set -euo pipefail
data=${1:?usage: $0 DATA_DIR RUN_DIR}; run=${2:?usage: $0 DATA_DIR RUN_DIR}
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
resume=(); [[ -f "$run/checkpoints/LATEST" ]] && resume=(--resume)   # a preempted run continues where it stopped
# launch/stoppable.sh: SIGTERM or SIGUSR1 to this script reaches every rank as SIGUSR1 (mpirun would kill the
# ranks on SIGTERM). Exit status 75: stopped after writing a checkpoint; run this script again to resume.
"$root/launch/stoppable.sh" mpirun -np 8 --bind-to none "$root/build/aiayn" train --config "$root/launch/configs/base.yaml" \
  --set train.max_tokens_per_rank=12500 --data "$data" --run-dir "$run" "${resume[@]}"
