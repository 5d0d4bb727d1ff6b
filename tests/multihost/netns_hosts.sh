#!/usr/bin/env bash
# Test hosts on one machine: Linux network namespaces joined by a bridge, for tests/multihost/.
#
#   netns_hosts.sh check               exit 0 when hosts can be built here, else print the reason and exit 1
#   netns_hosts.sh up NAME N           namespaces NAME-sw (the switch: a bridge) and NAME-h1..NAME-hN; host k
#                                      has eth0 = 10.231.7.k/24 on that bridge and its own loopback, and gives
#                                      up on an unanswered TCP connection after net.ipv4.tcp_retries2=3 (seconds
#                                      here, instead of 15 minutes: see README, "Several machines")
#   netns_hosts.sh down NAME           kills every process inside NAME-* and deletes the namespaces
#   netns_hosts.sh reap                `down` for sets whose creating process (NAME = aiayn-mh<pid>) is gone
#
# Every device lives inside the namespaces (created there, never in the machine's own namespace), and the
# addresses are private to them: nothing here can send traffic anywhere but between these test hosts. Deleting a
# namespace deletes its devices. Needs root, `ip` (iproute2) and `unshare` (util-linux).
set -euo pipefail

subnet_prefix=10.231.7

die() { echo "netns_hosts.sh: $*" >&2; exit 1; }

namespaces_of() { ip netns list 2>/dev/null | awk '{print $1}' | grep -E "^$1-(sw|h[0-9]+)\$" || true; }

down() {
  local name=$1 ns pids
  for ns in $(namespaces_of "$name"); do
    # Processes keep a namespace alive after `ip netns del`: end the ones inside it first, by id.
    pids=$(ip netns pids "$ns" 2>/dev/null || true)
    [[ -n "$pids" ]] && kill -KILL $pids 2>/dev/null || true
  done
  for ns in $(namespaces_of "$name"); do ip netns del "$ns" 2>/dev/null || true; done
}

case "${1:-}" in
  check)
    [[ $(id -u) -eq 0 ]] || { echo "needs root (network namespaces)"; exit 1; }
    command -v ip >/dev/null || { echo "needs ip (iproute2)"; exit 1; }
    command -v unshare >/dev/null || { echo "needs unshare (util-linux)"; exit 1; }
    probe="aiayn-probe$$"
    if ! ip netns add "$probe" 2>/dev/null; then echo "cannot create a network namespace (ip netns add)"; exit 1; fi
    ok=1
    ip -n "$probe" link add br0 type bridge 2>/dev/null || { echo "cannot create a bridge in a namespace"; ok=0; }
    if [[ $ok == 1 ]] && ! ip -n "$probe" link add eth0 type veth peer name p0 2>/dev/null; then
      echo "cannot create a veth pair in a namespace"; ok=0
    fi
    ip netns del "$probe"
    [[ $ok == 1 ]]
    ;;
  up)
    name=${2:?NAME}; n=${3:?N}
    [[ "$n" -ge 1 && "$n" -le 9 ]] || die "N must be 1..9, got $n"
    down "$name"
    trap 'down "$name"' ERR
    ip netns add "$name-sw"
    ip -n "$name-sw" link add br0 type bridge
    ip -n "$name-sw" link set br0 up
    for k in $(seq 1 "$n"); do
      h="$name-h$k"
      ip netns add "$h"
      ip -n "$h" link set lo up
      ip netns exec "$h" sysctl -q -w net.ipv4.tcp_retries2=3
      ip -n "$h" link add eth0 type veth peer name "p$k" netns "$name-sw"
      ip -n "$h" addr add "$subnet_prefix.$k/24" dev eth0
      ip -n "$h" link set eth0 up
      ip -n "$name-sw" link set "p$k" master br0
      ip -n "$name-sw" link set "p$k" up
    done
    ;;
  down)
    down "${2:?NAME}"
    ;;
  reap)
    for ns in $(ip netns list 2>/dev/null | awk '{print $1}' | grep -E '^aiayn-mh[0-9]+-sw$' || true); do
      name=${ns%-sw}; pid=${name#aiayn-mh}
      kill -0 "$pid" 2>/dev/null || down "$name"
    done
    ;;
  *)
    sed -n '2,12p' "$0" >&2
    exit 2
    ;;
esac
