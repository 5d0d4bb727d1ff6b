#!/usr/bin/env bash
# Several nodes with an MPI host file (one line per node: "node1 slots=8"). The data directory and the run
# directory must be on a filesystem every node sees (each rank reads its own share; rank 0 writes checkpoints,
# every rank reads them on resume).
#   launch/examples/multi_node.sh HOSTFILE DATA_DIR RUN_DIR [RANKS]
# NCCL picks the network itself; where it picks the wrong one, set for example
#   NCCL_SOCKET_IFNAME=eth0        the interface for bootstrap and socket transport
#   NCCL_IB_HCA=mlx5_0,mlx5_1      which InfiniBand adapters to use; NCCL_IB_DISABLE=1 to force sockets
#   NCCL_DEBUG=INFO                to see what it chose
# and pass them to every rank with mpirun -x.
set -euo pipefail
hosts=${1:?usage: $0 HOSTFILE DATA_DIR RUN_DIR [RANKS]}; data=${2:?}; run=${3:?}; ranks=${4:-16}
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
resume=(); [[ -f "$run/checkpoints/LATEST" ]] && resume=(--resume)
# launch/stoppable.sh: SIGTERM or SIGUSR1 to this script stops every rank at the next step with a checkpoint
# (status 75; run the script again to resume).
"$root/launch/stoppable.sh" mpirun -np "$ranks" --hostfile "$hosts" --bind-to none \
  -x NCCL_SOCKET_IFNAME -x NCCL_IB_HCA -x NCCL_IB_DISABLE -x NCCL_DEBUG -x LD_LIBRARY_PATH \
  "$root/build/aiayn" train --config "$root/launch/configs/big.yaml" --data "$data" --run-dir "$run" "${resume[@]}"
