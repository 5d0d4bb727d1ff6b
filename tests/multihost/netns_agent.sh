#!/bin/sh
# Open MPI's launch agent for the namespace hosts of netns_hosts.sh, in place of ssh (plm_rsh_agent):
#   netns_agent.sh HOST COMMAND...
# HOST is a host-file entry, 10.231.7.k; the command (one string, as ssh would get it) runs on test host k:
# inside network namespace $AIAYN_NETNS-hk, in its own UTS namespace with host name $AIAYN_NETNS-hk.
set -eu
: "${AIAYN_NETNS:?netns_agent.sh: set AIAYN_NETNS to the NAME given to netns_hosts.sh up}"
host=$1
shift
case "$host" in
  10.231.7.[1-9]) k=${host##*.} ;;
  *) echo "netns_agent.sh: unknown test host '$host' (expected 10.231.7.1-9)" >&2; exit 255 ;;
esac
ns="$AIAYN_NETNS-h$k"
exec ip netns exec "$ns" unshare --uts /bin/sh -c 'hostname "$1" && eval "$2"' netns-agent "$ns" "$*"
