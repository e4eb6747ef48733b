#!/usr/bin/env bash
# comm_check.sh - the device communicators across ranks on a GPU machine: tests/perf/comm_stress_cuda.c
# (sums against an fp64 reference, same bits on every rank, all-gather, broadcast from every root,
# host buffers, latency figures) at 1 and 2 ranks, then a hung rank that the others must time out on.
#
# usage: TPLLM_BINARY_DIR=build-cuda bash tests/gpu/comm_check.sh
#   TPLLM_BINARY_DIR   build folder holding tests/comm_stress_cuda (configured with -DTPLLM_CUDA=ON)
#   TPLLM_MPIRUN       launcher command, word-split (default: tests/mpi/mpirun.sh when mpirun exists,
#                      else orterun with the same flags, as on the GPU machine's extracted Open MPI)
#   OUT                folder for the logs (default: a temporary folder, removed at the end)
# On one GPU the 2-rank runs exercise the host-staged fallback (ranks share the GPU: a warning,
# then "mpi host-staged (GPU shared)"); with two GPUs or more they run NCCL, and a NCCL-only pass
# and a NCCL hang case are added. Exits 0 when every check passes, 1 on a failure, 77 (skipped)
# without a GPU, an MPI launcher or a CUDA build.
set -u
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
bin=
for d in "${TPLLM_BINARY_DIR:-}/tests" "${TPLLM_BINARY_DIR:-}" "$root/build/tests"; do
    if [ -n "$d" ] && [ -x "$d/comm_stress_cuda" ]; then bin="$d/comm_stress_cuda"; break; fi
done
if [ -z "$bin" ]; then
    echo "comm_check.sh: FAIL: comm_stress_cuda not found under TPLLM_BINARY_DIR='${TPLLM_BINARY_DIR:-}':" \
        "configure with -DTPLLM_CUDA=ON and build the target comm_stress_cuda" >&2
    exit 1
fi
if [ -n "${TPLLM_MPIRUN:-}" ]; then
    read -r -a launch <<<"$TPLLM_MPIRUN"
elif command -v mpirun >/dev/null 2>&1; then
    launch=("$root/tests/mpi/mpirun.sh")
elif command -v orterun >/dev/null 2>&1; then
    launch=(orterun --oversubscribe --bind-to none --mca btl self,vader --mca btl_vader_single_copy_mechanism none)
    if [ "$(id -u)" = 0 ]; then
        launch+=(--allow-run-as-root)
        export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
    fi
else
    echo "comm_check.sh: SKIP: no mpirun or orterun (see ../shared/device/README.md for Open MPI on the GPU machine)"
    exit 77
fi
gpus=0
if command -v nvidia-smi >/dev/null 2>&1; then gpus=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU ' || true); fi
if [ "$gpus" -eq 0 ]; then
    echo "comm_check.sh: SKIP: no GPU (nvidia-smi -L lists none)"
    exit 77
fi
if [ -n "${OUT:-}" ]; then
    logs="$OUT/comm_check"
    mkdir -p "$logs"
else
    logs=$(mktemp -d "${TMPDIR:-/tmp}/tpllm-comm-check.XXXXXX")
    trap 'rm -rf "$logs"' EXIT
fi
echo "comm_check.sh: $gpus GPU(s); $bin; launcher: ${launch[*]}; logs in $logs"
limit=300 # seconds a correctness run may take
failures=0
fail() {
    echo "comm_check.sh: FAIL: $*" >&2
    failures=$((failures + 1))
}
now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.2f", b - a }'; }

# run NAME NP WANT_TRANSPORT ARGS...: a correctness pass that must print PASS and the transport.
run() {
    local name=$1 np=$2 want=$3
    shift 3
    local log="$logs/$name.log" start rc t
    start=$(now)
    timeout "$limit" "${launch[@]}" -np "$np" "$bin" "$@" >"$log" 2>&1
    rc=$?
    t=$(elapsed "$start")
    grep -E '^(latency|all-reduce|tpllm: warning|comm_stress_cuda: (PASS|FAIL|[0-9]+ rank))' "$log" | sed "s/^/  [$name] /"
    if [ "$rc" -eq 77 ]; then
        fail "$name: comm_stress_cuda skipped (exit 77): $(grep -m1 skipped "$log")"
    elif [ "$rc" -ne 0 ] || ! grep -q "comm_stress_cuda: PASS ($np rank" "$log"; then
        fail "$name: exit $rc after $t s; its output:"
        cat "$log" >&2
    elif ! grep -q "transport $want" "$log"; then
        fail "$name: passed but on the wrong transport (want '$want'):"
        grep -m2 'transport ' "$log" >&2
    else
        echo "ok: $name ($np rank(s), $want, $t s)"
    fi
}

# hang NAME NP TRANSPORT VICTIM: the victim sleeps; the others must time out after 3 s, name it, and
# end the job (comm_abort) well within 60 s.
hang() {
    local name=$1 np=$2 transport=$3 victim=$4
    local log="$logs/$name.log" start rc t
    start=$(now)
    timeout 60 "${launch[@]}" -np "$np" "$bin" --transport "$transport" --hang-rank "$victim" --timeout 3 >"$log" 2>&1
    rc=$?
    t=$(elapsed "$start")
    if [ "$rc" -eq 0 ] || [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
        fail "$name: the job ended with exit $rc after $t s (want non-zero, within 60 s):"
        cat "$log" >&2
    elif ! grep -Eq "^tpllm: rank [0-9]+ \(host [^)]*\) failed: .*did not complete within 3 s .*not arrived \(no answer\): rank $victim on host" "$log"; then
        fail "$name: the job ended (exit $rc, $t s) but no rank reported the timeout naming rank $victim:"
        cat "$log" >&2
    else
        echo "ok: $name: rank $victim hung; the others timed out and the job ended in $t s with exit $rc"
        grep -E '^tpllm: rank' "$log" | head -n 1 | sed 's/^/  /'
    fi
}

run nccl_np1 1 "nccl " --transport device
run staged_np2 2 "mpi host-staged (requested)" --transport staged
if [ "$gpus" -ge 2 ]; then
    run device_np2 2 "nccl " --transport device
    run nccl_np2 2 "nccl " --transport nccl
    hang hang_nccl_np2 2 nccl 1
else
    run device_np2 2 "mpi host-staged (GPU shared)" --transport device
    if ! grep -q "tpllm: warning: ranks 0 and 1 share GPU .*host-staged MPI collectives" "$logs/device_np2.log"; then
        fail "device_np2: no warning on rank 0 that ranks 0 and 1 share a GPU"
    fi
fi
hang hang_device_np2 2 device 1

if [ "$failures" -ne 0 ]; then
    echo "comm_check.sh: $failures check(s) failed" >&2
    exit 1
fi
echo "comm_check.sh: all checks passed"
