#!/usr/bin/env bash
# Runs a command (usually `mpirun ... aiayn train ...`) so that SIGTERM stops the training cleanly: SIGTERM and
# SIGUSR1 sent to this script reach the command as SIGUSR1, which Open MPI's mpirun forwards to every rank; the
# ranks agree at the next step, write a checkpoint and exit with status 75. (SIGTERM sent to mpirun itself
# kills the ranks within a second, before they can write one: Open MPI forwards only SIGUSR1/SIGUSR2 and a few
# others.) Exits with the command's status.
#   launch/stoppable.sh mpirun -np 8 build/aiayn train ...
set -uo pipefail
[[ $# -gt 0 ]] || { echo "usage: $0 COMMAND [ARGS...]" >&2; exit 2; }
"$@" &
child=$!
trap 'kill -USR1 "$child" 2>/dev/null' TERM USR1
status=0
while true; do   # a trapped signal interrupts wait: wait again until the command itself has exited
  if wait "$child"; then status=0; else status=$?; fi
  kill -0 "$child" 2>/dev/null || break
done
exit "$status"
