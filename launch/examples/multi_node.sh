#!/usr/bin/env bash
# Several nodes with an MPI host file, one line per node ("node1 slots=8", or its address). The data directory
# and the run directory must be on a filesystem every node sees (each rank reads its own share; rank 0 writes
# checkpoints, every rank reads them on resume). Run it on one of the nodes (or a login node that reaches them
# all) with password-less ssh to every node:
#   launch/examples/multi_node.sh HOSTFILE DATA_DIR RUN_DIR [RANKS]
# The same launch is tested across network-namespace hosts by tests/multihost/ (README, "Several machines").
#
# Which network, set where the nodes have several (an address range or interface names, the same on every node):
#   AIAYN_NET=10.1.0.0/16      -> OMPI_MCA_btl_tcp_if_include and OMPI_MCA_oob_tcp_if_include: the network
#                                 for MPI's traffic (CPU gradients, statistics) and for Open MPI's own daemons
#   NCCL_SOCKET_IFNAME=eth0    the interface for NCCL's bootstrap and socket transport
#   NCCL_IB_HCA=mlx5_0,mlx5_1  which InfiniBand adapters to use; NCCL_IB_DISABLE=1 to force sockets
#   NCCL_DEBUG=INFO            to see what NCCL chose
# When a node fails, the job ends rather than hangs (README, "Several machines"): a node whose processes die is
# seen by Open MPI at once; a frozen rank or a node that vanishes, at train.comm_timeout_s (default 600 s) by
# aiayn's deadline on every collective, with a line naming the rank, step and operation. The OOB keepalive
# below lets Open MPI notice a node cut off from the network within 2 minutes, before that deadline, so mpirun
# itself does not wait for TCP to give up on it (net.ipv4.tcp_retries2: about 15 minutes by default). Then
# run this script again: it resumes from the last checkpoint, on the nodes of the (edited) host file.
set -euo pipefail
hosts=${1:?usage: $0 HOSTFILE DATA_DIR RUN_DIR [RANKS]}; data=${2:?}; run=${3:?}; ranks=${4:-16}
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
resume=(); [[ -f "$run/checkpoints/LATEST" ]] && resume=(--resume)
if [[ -n "${AIAYN_NET:-}" ]]; then
  export OMPI_MCA_btl_tcp_if_include=$AIAYN_NET OMPI_MCA_oob_tcp_if_include=$AIAYN_NET
fi
export OMPI_MCA_oob_tcp_keepalive_time=${OMPI_MCA_oob_tcp_keepalive_time:-60}
export OMPI_MCA_oob_tcp_keepalive_intvl=${OMPI_MCA_oob_tcp_keepalive_intvl:-10}
export OMPI_MCA_oob_tcp_keepalive_probes=${OMPI_MCA_oob_tcp_keepalive_probes:-6}
# launch/stoppable.sh: SIGTERM or SIGUSR1 to this script stops every rank at the next step with a checkpoint
# (status 75; run the script again to resume).
"$root/launch/stoppable.sh" mpirun -np "$ranks" --hostfile "$hosts" --bind-to none \
  -x NCCL_SOCKET_IFNAME -x NCCL_IB_HCA -x NCCL_IB_DISABLE -x NCCL_DEBUG -x LD_LIBRARY_PATH \
  "$root/build/aiayn" train --config "$root/launch/configs/big.yaml" --data "$data" --run-dir "$run" "${resume[@]}"
