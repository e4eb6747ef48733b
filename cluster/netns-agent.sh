#!/bin/sh
# netns-agent.sh - Open MPI's launch agent (plm_rsh_agent) for the local multi-host harness
# of cluster/localhosts.sh. Where mpirun would run `ssh HOST COMMAND`, it runs
# `netns-agent.sh HOST COMMAND`, and this starts COMMAND (Open MPI's node daemon, orted, as
# one shell command line: what ssh hands to the remote shell) inside the network namespace
# tpllm-HOST, in a UTS namespace of its own whose host name is HOST (so gethostname() in the
# ranks says HOST), with a fresh environment as a login on another machine would have: PATH,
# HOME, LANG and nothing else, so what the ranks need must come through mpirun -x, as on a
# real cluster.
#
# usage (by mpirun, not by hand): netns-agent.sh h1 orted ARGS...
set -u
if [ $# -lt 2 ]; then
    echo "netns-agent.sh: usage: netns-agent.sh HOST COMMAND... (Open MPI runs it as its plm_rsh_agent)" >&2
    exit 255
fi
host=$1
shift
case $host in
h[1-9]) ;;
*)
    echo "netns-agent.sh: unknown host '$host': cluster/localhosts.sh names its hosts h1..h4" >&2
    exit 255
    ;;
esac
ns=tpllm-$host
if [ ! -e "/run/netns/$ns" ]; then
    echo "netns-agent.sh: host $host is not up (no network namespace $ns): run cluster/localhosts.sh up N" >&2
    exit 255
fi
# ssh joins its arguments with spaces and the remote shell parses the result: so does this.
exec ip netns exec "$ns" unshare --uts -- sh -c '
    hostname "$1" || exit 255
    shift
    exec env -i PATH="$PATH" HOME="${HOME:-/root}" LANG="${LANG:-C.UTF-8}" sh -c "$*"
' netns-agent "$host" "$*"
