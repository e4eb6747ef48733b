#!/usr/bin/env bash
# localhosts.sh - a few "hosts" on this machine, for running tpllm across hosts without a
# cluster: each host is a Linux network namespace with its own address on a private bridge,
# and Open MPI reaches it the way it reaches a real node (a launch agent in place of ssh,
# TCP between the ranks, TCP between mpirun and the node daemons).
#
# usage:
#   cluster/localhosts.sh up N              make hosts h1..hN (N = 2..4); replaces any already up
#   cluster/localhosts.sh down              remove everything `up` made (idempotent)
#   cluster/localhosts.sh status            the hosts that are up, their addresses and links
#   cluster/localhosts.sh mpirun ARGS...    mpirun across the hosts that are up (all of them,
#                                           one slot each, unless ARGS has --hostfile or --host), e.g.
#       cluster/localhosts.sh mpirun -np 3 build/tpllm generate -m M.gguf -p "Hello" -n 16
#   cluster/localhosts.sh exec HOST CMD...  run CMD inside HOST's namespace (e.g. curl rank 0's
#                                           server, which listens on 127.0.0.1 there)
#
# The network, all of it private to this machine:
#   tpllm-br0     a bridge in the root namespace with no address and no physical port
#   tpllm-hK      host K's network namespace: lo, and eth0 = 198.18.0.1K/15 (h1 = 198.18.0.11),
#                 one end of the veth pair tpllm-vK, whose other end is a port of the bridge
#   tpllm-head    the namespace mpirun runs in (the "head node"): lo and eth0 = 198.18.0.10/15,
#                 veth tpllm-v0
# 198.18.0.0/15 is reserved for benchmarking (RFC 2544). No namespace has a default route and
# the root namespace has no address on the bridge, so from inside only the other hosts and
# the own loopback can be reached, and nothing on this machine's real network can reach in;
# nothing is forwarded or translated (ip_forward and iptables are left alone), IPv6 is off
# on these interfaces, and mpirun is told to use only 198.18.0.0/15 for its own connections
# (oob) and for the ranks' (btl tcp), so the job's traffic stays on the bridge and loopback.
#
# Why mpirun runs in a namespace of its own: after an abort, Open MPI 4.1's mpirun waits for
# every node daemon to confirm, and a daemon behind a cut link never does; mpirun then waits
# for TCP to give up on that connection, about 15 minutes with the kernel's default
# net.ipv4.tcp_retries2 = 15. tcp_retries2 is a per-namespace setting: tpllm-head has 2
# (TCP gives up after about 1.4 s without an acknowledgement: retransmissions after 0.2,
# 0.4 and 0.8 s), the machine's own stays as it was. Measured here: a host cut off in the
# middle of a generation with TPLLM_COMM_TIMEOUT=3 ends the whole job in about 7 s (the
# ranks' timeout, 3.4 s, then mpirun's abort), against 15 minutes with the default. (On a real
# head node the same sysctl is the knob; see cluster/NETWORK.md.) The hosts keep the
# default: their failure detection is tpllm's collective timeout.
#
# Host names: each node daemon runs in its own UTS namespace named hK (cluster/netns-agent.sh),
# so gethostname() in a rank, and so tpllm's startup report, says h1, h2, ...
#
# Exit status: 0 done; 77 (`up`) when namespaces cannot be made here (not root, no `ip` or
# `unshare`, the kernel refuses), with the reason; 1 other errors; `mpirun` exits with
# mpirun's status.
#
# Environment: TPLLM_* variables set in the caller's environment are passed to the ranks
# (mpirun -x); the ranks otherwise get a fresh environment, as on another machine.
# TPLLM_LOCALHOSTS_SLOTS=K gives each host K slots (default 1: one rank per host).
set -u
here=$(cd "$(dirname "$0")" && pwd)
agent=$here/netns-agent.sh
BR=tpllm-br0
NET=198.18.0.0/15
PLEN=15
HEAD=tpllm-head
HEAD_ADDR=198.18.0.10
HEAD_TCP_RETRIES2=2
MAX_HOSTS=4

me=localhosts.sh
die() {
    echo "$me: $*" >&2
    exit 1
}
skip() {
    echo "$me: cannot make hosts here: $*" >&2
    exit 77
}
addr_of() { echo "198.18.0.1$1"; }

# the numbers K of the hosts that are up, ascending
hosts_up() {
    local k
    for k in $(seq 1 9); do [ -e "/run/netns/tpllm-h$k" ] && echo "$k"; done
    return 0
}

# processes still inside namespace $1 (left by a job that was killed): TERM, then KILL
kill_inside() {
    local ns=$1 pids
    pids=$(ip netns pids "$ns" 2>/dev/null | tr '\n' ' ')
    [ -n "${pids// /}" ] || return 0
    # shellcheck disable=SC2086 # a list of pids
    kill -TERM $pids 2>/dev/null
    for _ in 1 2 3 4 5 6 7 8 9 10; do
        pids=$(ip netns pids "$ns" 2>/dev/null | tr '\n' ' ')
        [ -n "${pids// /}" ] || return 0
        sleep 0.2
    done
    # shellcheck disable=SC2086
    kill -KILL $pids 2>/dev/null
    return 0
}

# every namespace of the harness: the head, then the hosts; index K = its veth tpllm-vK
all_ns() {
    echo "0 $HEAD"
    local k
    for k in $(seq 1 9); do echo "$k tpllm-h$k"; done
}

do_down() {
    local k ns
    while read -r k ns; do
        if [ -e "/run/netns/$ns" ]; then
            kill_inside "$ns"
            ip netns del "$ns" 2>/dev/null || echo "$me: warning: could not remove namespace $ns" >&2
        fi
        # deleting a namespace deletes its veth pair; a half-made pair may remain
        ip link show "tpllm-v$k" >/dev/null 2>&1 && ip link del "tpllm-v$k" 2>/dev/null
        ip link show "tpllm-p$k" >/dev/null 2>&1 && ip link del "tpllm-p$k" 2>/dev/null
    done < <(all_ns)
    if ip link show "$BR" >/dev/null 2>&1; then
        ip link del "$BR" 2>/dev/null || echo "$me: warning: could not remove the bridge $BR" >&2
    fi
    return 0
}

# make_ns K NS ADDR: namespace NS with lo and eth0 = ADDR, joined to the bridge by tpllm-vK
make_ns() {
    local k=$1 ns=$2 addr=$3 err
    if ! err=$(ip netns add "$ns" 2>&1); then
        do_down
        skip "the kernel refuses a network namespace ($ns): $err"
    fi
    if ! err=$(ip link add "tpllm-v$k" type veth peer name "tpllm-p$k" 2>&1); then
        do_down
        skip "the kernel refuses a veth pair: $err"
    fi
    sysctl -q -w "net.ipv6.conf.tpllm-v$k.disable_ipv6=1" >/dev/null 2>&1 || true
    if ! err=$({ ip link set "tpllm-p$k" netns "$ns" &&
        ip -n "$ns" link set "tpllm-p$k" name eth0 &&
        ip -n "$ns" link set lo up &&
        ip -n "$ns" addr add "$addr/$PLEN" dev eth0 &&
        ip -n "$ns" link set eth0 up &&
        ip link set "tpllm-v$k" master "$BR" &&
        ip link set "tpllm-v$k" up; } 2>&1); then
        do_down
        skip "cannot configure the interfaces of $ns: $err"
    fi
    ip netns exec "$ns" sysctl -q -w net.ipv6.conf.eth0.disable_ipv6=1 >/dev/null 2>&1 || true
}

# Fails (after removing what it made) with exit 77 on what the machine does not allow.
do_up() {
    local n=${1:-}
    case $n in
    [2-4]) ;;
    *) die "usage: $me up N, with N = 2..$MAX_HOSTS hosts" ;;
    esac
    [ "$(id -u)" = 0 ] || skip "network namespaces need root (this is uid $(id -u)); run as root or with sudo"
    command -v ip >/dev/null 2>&1 || skip "no 'ip' command (apt-get install iproute2)"
    command -v unshare >/dev/null 2>&1 || skip "no 'unshare' command (apt-get install util-linux)"
    command -v mpirun >/dev/null 2>&1 || skip "no mpirun (apt-get install openmpi-bin)"
    do_down
    local err
    if ! err=$(ip link add "$BR" type bridge 2>&1); then
        do_down
        skip "the kernel refuses a bridge: $err"
    fi
    # no address and no physical port; IPv6 off so that it sends nothing of its own
    sysctl -q -w "net.ipv6.conf.$BR.disable_ipv6=1" >/dev/null 2>&1 || true
    ip link set "$BR" up || {
        do_down
        skip "cannot bring the bridge $BR up"
    }
    make_ns 0 "$HEAD" "$HEAD_ADDR"
    if ! err=$(ip netns exec "$HEAD" sysctl -q -w "net.ipv4.tcp_retries2=$HEAD_TCP_RETRIES2" 2>&1); then
        echo "$me: warning: cannot set tcp_retries2 in $HEAD ($err): mpirun may wait minutes for a host whose link is cut" >&2
    fi
    local k
    for k in $(seq 1 "$n"); do make_ns "$k" "tpllm-h$k" "$(addr_of "$k")"; done
    # the links come up within a moment (carrier on both ends of every veth)
    local ok ns
    for _ in $(seq 1 50); do
        ok=1
        for ns in "$HEAD" $(for k in $(seq 1 "$n"); do echo "tpllm-h$k"; done); do
            ip -n "$ns" link show eth0 2>/dev/null | grep -q 'LOWER_UP' || ok=0
        done
        [ "$ok" = 1 ] && break
        sleep 0.1
    done
    [ "$ok" = 1 ] || echo "$me: warning: not every link reports carrier yet" >&2
    echo "$me: $n hosts up on bridge $BR ($NET, no route out):"
    echo "  head  netns $HEAD  $HEAD_ADDR  (veth tpllm-v0; mpirun runs here)"
    for k in $(seq 1 "$n"); do echo "  h$k    netns tpllm-h$k  $(addr_of "$k")  (veth tpllm-v$k)"; done
    echo "run: $0 mpirun -np $n build/tpllm generate -m MODEL.gguf -p \"...\"; remove: $0 down"
}

do_status() {
    local ks k state
    ks=$(hosts_up)
    if [ -z "$ks" ]; then
        echo "no hosts up ($me up N makes them)"
        return 1
    fi
    echo "bridge $BR: $(ip -o link show "$BR" 2>/dev/null | grep -o 'state [A-Z]*' || echo missing)"
    echo "  head  netns $HEAD  $(ip -n "$HEAD" -4 -o addr show dev eth0 2>/dev/null | awk '{print $4}')  tcp_retries2 $(ip netns exec "$HEAD" sysctl -n net.ipv4.tcp_retries2 2>/dev/null)"
    for k in $ks; do
        state=$(ip -o link show "tpllm-v$k" 2>/dev/null | grep -o 'state [A-Z]*' || echo 'no veth')
        echo "  h$k    netns tpllm-h$k  $(ip -n "tpllm-h$k" -4 -o addr show dev eth0 2>/dev/null | awk '{print $4}')  veth tpllm-v$k $state  processes: $(ip netns pids "tpllm-h$k" 2>/dev/null | wc -l)"
    done
    return 0
}

do_mpirun() {
    local ks k hosts="" slots=${TPLLM_LOCALHOSTS_SLOTS:-1}
    ks=$(hosts_up)
    [ -n "$ks" ] || die "no hosts up: run '$0 up N' first"
    case $slots in
    [1-9]) ;;
    *) die "TPLLM_LOCALHOSTS_SLOTS must be 1..9, got '$slots'" ;;
    esac
    for k in $ks; do hosts="${hosts:+$hosts,}h$k:$slots"; done
    # the hosts that are up, unless the command names its own (a hostfile of h1.. lines)
    local flags=() a
    for a in "$@"; do
        case $a in
        --hostfile | -hostfile | --machinefile | -machinefile | --host | -host | -H | --default-hostfile) hosts="" ;;
        esac
    done
    [ -n "$hosts" ] && flags+=(--host "$hosts")
    # shellcheck disable=SC2054 # tcp,self is one argument
    flags+=(
        --mca plm_rsh_agent "$agent"      # "ssh HOST" becomes "enter namespace tpllm-HOST"
        --mca plm_rsh_no_tree_spawn 1     # every daemon is started from here
        --mca oob_tcp_if_include "$NET"   # mpirun <-> daemons: the bridge only
        --mca btl tcp,self                # ranks <-> ranks: TCP, as between real hosts
        --mca btl_tcp_if_include "$NET"
        --mca pml ob1                     # no UCX/OFI probing of devices beyond these
        --bind-to none                    # every "host" is this machine's CPUs: do not pile ranks on core 0
    )
    if [ "$(id -u)" = 0 ]; then
        flags+=(--allow-run-as-root)
        export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
    fi
    local v
    for v in $(compgen -e); do
        case $v in TPLLM_LOCALHOSTS_*) ;; TPLLM_*) flags+=(-x "$v") ;; esac
    done
    [ -e "/run/netns/$HEAD" ] || die "the head namespace $HEAD is missing: run '$0 up N' again"
    exec ip netns exec "$HEAD" mpirun "${flags[@]}" "$@"
}

do_exec() {
    [ $# -ge 2 ] || die "usage: $me exec HOST CMD... (HOST: head, h1, h2, ...)"
    local ns=tpllm-$1
    shift
    [ -e "/run/netns/$ns" ] || die "host '${ns#tpllm-}' is not up"
    exec ip netns exec "$ns" "$@"
}

cmd=${1:-}
[ $# -gt 0 ] && shift
case $cmd in
up) do_up "$@" ;;
down)
    [ "$(id -u)" = 0 ] || die "removing namespaces needs root"
    do_down
    echo "$me: down"
    ;;
status) do_status ;;
mpirun) do_mpirun "$@" ;;
exec) do_exec "$@" ;;
*)
    sed -n '2,/^set -u/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//' >&2
    exit 2
    ;;
esac
