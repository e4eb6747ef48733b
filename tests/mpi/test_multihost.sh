#!/usr/bin/env bash
# test_multihost.sh - tpllm across hosts: three "hosts" made by cluster/localhosts.sh (network
# namespaces on a private bridge, ranks talking TCP, mpirun starting them through a launch
# agent as it would through ssh). Checks:
#   1. a synthetic model and (if present) Gemma 3 270M give, at tp = 2 and tp = 3 across
#      hosts, the same greedy tokens and the same seeded tokens (--temp 0.8 --seed 7) as at
#      tp = 1 on this machine;
#   2. the startup report shows a different host for every rank;
#   3. the job's TCP connections are all on 198.18.0.0/15 (between hosts, and between mpirun
#      and the node daemons) or on loopback, and no namespace has a route out;
#   4. `tpllm serve` across 2 hosts answers a completion request (rank 0's HTTP is on
#      127.0.0.1 inside h1's namespace) and stops on SIGTERM to rank 0;
#   5. a host whose link is cut in the middle of a long generation ends the whole job within
#      10 s (TPLLM_COMM_TIMEOUT=3), and the output names the lost rank and its host.
# Exit 77 (skipped) where the hosts cannot be made (not root, no ip/unshare/mpirun, the kernel
# refuses); 1 on any mismatch or failure.
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
bin=${TPLLM_BIN:-$root/build/tpllm}
gemma=${TPLLM_GEMMA:-$root/models/gemma-3-270m-q4_k_m.gguf}
lh=$root/cluster/localhosts.sh
command -v mpirun >/dev/null 2>&1 || { echo "skipped: no mpirun (install Open MPI)"; exit 77; }
[ -x "$bin" ] || { echo "FAIL: $bin is not built"; exit 1; }
py=$root/.pydeps/bin/python
[ -x "$py" ] || py=python3

if [ "$(id -u)" != 0 ]; then echo "skipped: the hosts are network namespaces, which need root"; exit 77; fi

# one harness at a time on this machine (its names are fixed); the jobs below close fd 9, so
# that no daemon they leave behind holds the lock
exec 9>"${TMPDIR:-/tmp}/tpllm-localhosts.lock"
if ! flock -w 900 9; then echo "FAIL: another test_multihost.sh has held the harness for 15 minutes"; exit 1; fi
work=$(mktemp -d)
# shellcheck disable=SC2317 # run by the trap
cleanup() {
    "$lh" down >/dev/null 2>&1
    rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 1' INT TERM

up_log=$work/up.log
timeout 120 "$lh" up 3 </dev/null >"$up_log" 2>&1 9>&-
rc=$?
if [ "$rc" = 77 ]; then
    echo "skipped: $(tail -n 1 "$up_log")"
    exit 77
elif [ "$rc" != 0 ]; then
    echo "FAIL: localhosts.sh up 3 exited $rc:"; cat "$up_log"; exit 1
fi
cat "$up_log"

fail=0
bad() { echo "FAIL: $*"; fail=1; }
prompt="The capital of France is"

"$bin" synth --arch llama --dim 256 --layers 2 --heads 6 --kv-heads 3 --head-dim 64 --ff 768 --vocab 1003 \
    --type q8_0 --seed 3 -o "$work/synth.gguf" >/dev/null || { echo "FAIL: synth"; exit 1; }
models=("$work/synth.gguf")
if [ -f "$gemma" ]; then models+=("$gemma"); else echo "note: $gemma absent (make models): Gemma case skipped"; fi

# run_gen NAME TP MODE MODEL SAMPLING...: MODE local (tp = 1 on this machine) or hosts
# (across the hosts); the token line goes to stdout, the log to $work/NAME.log
run_gen() {
    local name=$1 tp=$2 mode=$3 model=$4
    shift 4
    local cmd=("$bin" generate -m "$model" -p "$prompt" --show-tokens --ignore-eos -n 16 --threads 1 "$@")
    local log=$work/$name.log
    if [ "$mode" = local ]; then
        timeout 300 "$here/mpirun.sh" -np "$tp" "${cmd[@]}" </dev/null >"$work/$name.out" 2>"$log" 9>&-
    else
        timeout 300 "$lh" mpirun -np "$tp" "${cmd[@]}" </dev/null >"$work/$name.out" 2>"$log" 9>&-
    fi
    local rc=$?
    if [ "$rc" != 0 ]; then
        echo "FAIL: $name exited $rc:" >&2
        grep -v '^loading' "$log" | tail -n 20 >&2
        return 1
    fi
    grep '^tokens:' "$log" || { echo "FAIL: $name printed no tokens line" >&2; return 1; }
}

# check_hosts NAME TP: the startup report has TP rank lines, each on a different host h1..
check_hosts() {
    local log=$work/$1.log tp=$2 hosts n
    hosts=$(sed -n 's/^  rank \([0-9]*\)\/[0-9]* host \([^ ]*\) .*/\1:\2/p' "$log")
    n=$(printf '%s\n' "$hosts" | sed 's/.*://' | sort -u | grep -c '^h[0-9]')
    if [ "$n" != "$tp" ] || [ "$(printf '%s\n' "$hosts" | wc -l)" != "$tp" ]; then
        bad "$1: the startup report does not show $tp ranks on $tp different hosts: $(printf '%s ' $hosts)"
    else
        echo "$1: ranks on hosts $(printf '%s ' $hosts)"
    fi
}

# 1 + 2: tokens across hosts equal tokens at tp = 1
for m in "${models[@]}"; do
    mname=$(basename "$m" .gguf)
    for smp in greedy seeded; do
        if [ "$smp" = greedy ]; then opts=(--temp 0); else opts=(--temp 0.8 --seed 7); fi
        ref=$(run_gen "$mname.$smp.tp1" 1 local "$m" "${opts[@]}") || { fail=1; continue; }
        for tp in 2 3; do
            name=$mname.$smp.tp$tp
            toks=$(run_gen "$name" "$tp" hosts "$m" "${opts[@]}") || { fail=1; continue; }
            check_hosts "$name" "$tp"
            if [ "$toks" != "$ref" ]; then
                bad "$mname $smp (${opts[*]}): tp=$tp across hosts differs from tp=1"
                echo "  tp=1:  $ref"
                echo "  tp=$tp: $toks"
            fi
        done
        echo "$mname $smp (${opts[*]}): tp=1 local, tp=2 and tp=3 across hosts -> $ref"
    done
done

# 3: no route out of any namespace
for ns in tpllm-head tpllm-h1 tpllm-h2 tpllm-h3; do
    r=$(ip -n "$ns" route show default 2>&1)
    [ -z "$r" ] || bad "$ns has a default route: $r"
done

# 5 (and 3 while it runs): a long generation at tp = 3, host h3's link cut in the middle
"$bin" synth --arch llama --dim 512 --layers 4 --heads 8 --kv-heads 4 --ff 1536 --vocab 1003 --type q8_0 \
    --seed 9 -o "$work/long.gguf" >/dev/null || { echo "FAIL: synth"; exit 1; }
TPLLM_COMM_TIMEOUT=3 timeout 120 "$lh" mpirun -np 3 "$bin" generate -m "$work/long.gguf" -p "$prompt" -n 2000 \
    --ignore-eos --temp 0 --threads 1 </dev/null >"$work/cut.out" 2>"$work/cut.log" 9>&- &
job=$!
started=0
for _ in $(seq 1 600); do # the first generated text, within 60 s
    if [ -s "$work/cut.out" ]; then started=1; break; fi
    kill -0 "$job" 2>/dev/null || break
    sleep 0.1
done
if [ "$started" = 1 ]; then
    # every TCP connection of the job: on the harness's network or on loopback
    socks=""
    for ns in tpllm-head tpllm-h1 tpllm-h2 tpllm-h3; do
        socks+=$(ip netns exec "$ns" ss -Htn state established 2>/dev/null | awk -v ns="$ns" '{print ns, $3, $4}')$'\n'
    done
    off=$(printf '%s' "$socks" | awk 'NF == 3 && !(($2 ~ /^198\.1[89]\./ || $2 ~ /^127\./) && ($3 ~ /^198\.1[89]\./ || $3 ~ /^127\./))')
    across=$(printf '%s' "$socks" | awk 'NF == 3 && $1 != "tpllm-head" && $2 ~ /^198\.18\.0\.1[1-9]:/ && $3 ~ /^198\.18\.0\.1[1-9]:/' | wc -l)
    daemons=$(printf '%s' "$socks" | awk '$1 == "tpllm-head" && $2 ~ /^198\.18\.0\.10:/' | wc -l)
    if [ -n "$off" ]; then bad "connections off the harness's network: $off"; fi
    if [ "$across" -lt 2 ] || [ "$daemons" -lt 3 ]; then
        bad "expected rank-to-rank TCP between hosts and mpirun-to-daemon TCP on 198.18.0.0/15; saw:"$'\n'"$socks"
    else
        echo "network: $across rank-to-rank connections between hosts, $daemons from mpirun to the node daemons, all on 198.18.0.0/15 or loopback"
    fi
    t0=$(date +%s.%N)
    ip link set tpllm-v3 down
    wait "$job"
    rc=$?
    t1=$(date +%s.%N)
    dt=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f", b - a }')
    named=$(grep -o 'rank 2 on host h3' "$work/cut.log" | head -n 1)
    echo "link cut: host h3 (rank 2) cut off after $(wc -c <"$work/cut.out") bytes of text; the job ended $dt s later with status $rc"
    grep '^tpllm: rank' "$work/cut.log" | head -n 2 | sed 's/^/  /'
    if [ "$rc" = 0 ] || [ "$rc" = 124 ]; then bad "the job with a cut host exited $rc (0: it finished anyway; 124: it hung)"; fi
    if awk -v d="$dt" 'BEGIN { exit !(d > 10) }'; then bad "the job took $dt s (more than 10) to end after the cut"; fi
    [ -n "$named" ] || { bad "the output does not name the lost rank and host ('rank 2 on host h3'):"; grep -v '^loading' "$work/cut.log" | tail -n 15; }
else
    wait "$job"
    bad "the long generation never started (status $?):"
    grep -v '^loading' "$work/cut.log" | tail -n 15
fi

# 4: serve across 2 hosts (fresh hosts: h3's link is down and its daemon orphaned)
timeout 120 "$lh" up 3 </dev/null >/dev/null 2>&1 9>&- || { bad "localhosts.sh up 3 (again) failed"; exit 1; }
timeout 300 "$lh" mpirun -np 2 "$bin" serve -m "$work/synth.gguf" --port 0 --threads 1 \
    </dev/null >"$work/serve.out" 2>"$work/serve.log" 9>&- &
srv=$!
port="" pid=""
for _ in $(seq 1 600); do
    line=$(grep -m 1 'serving http://127.0.0.1:' "$work/serve.log" || true)
    if [ -n "$line" ]; then
        port=$(printf '%s' "$line" | sed -n 's/.*serving http:\/\/127\.0\.0\.1:\([0-9]*\).*/\1/p')
        pid=$(printf '%s' "$line" | sed -n 's/.*pid \([0-9]*\).*/\1/p')
        break
    fi
    kill -0 "$srv" 2>/dev/null || break
    sleep 0.1
done
if [ -z "$port" ] || [ -z "$pid" ]; then
    bad "tpllm serve across 2 hosts did not start:"
    grep -v '^loading' "$work/serve.log" | tail -n 15
    kill "$srv" 2>/dev/null
else
    check_hosts serve 2
    body='{"model": "synth", "prompt": "The capital of France is", "max_tokens": 8, "temperature": 0}'
    resp=$("$lh" exec h1 curl -s -m 60 -w '\n%{http_code}' -H 'Content-Type: application/json' \
        -d "$body" "http://127.0.0.1:$port/v1/completions")
    code=${resp##*$'\n'}
    json=${resp%$'\n'*}
    text=$(printf '%s' "$json" | "$py" -c 'import json, sys; print(json.load(sys.stdin)["choices"][0]["text"])' 2>/dev/null)
    if [ "$code" != 200 ] || [ -z "$text" ]; then
        bad "serve across 2 hosts: POST /v1/completions gave HTTP $code: $json"
    else
        echo "serve across 2 hosts (rank 0 in h1, HTTP on its 127.0.0.1:$port): completion $(printf '%q' "$text")"
    fi
    kill -TERM "$pid" 2>/dev/null
    rc=0
    for _ in $(seq 1 300); do kill -0 "$srv" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$srv" 2>/dev/null; then
        bad "serve did not stop within 30 s of SIGTERM to rank 0 (pid $pid)"
        kill "$srv" 2>/dev/null
    fi
    wait "$srv"
    rc=$?
    [ "$rc" = 0 ] || { bad "serve exited $rc after SIGTERM"; grep -v '^loading' "$work/serve.log" | tail -n 10; }
    [ "$rc" = 0 ] && echo "serve: SIGTERM to rank 0 (pid $pid) stopped the job, status 0"
fi

[ "$fail" = 0 ] && echo "multi-host: all checks passed" || echo "FAILED: see the FAIL lines above"
exit $fail
