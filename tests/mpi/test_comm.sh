#!/usr/bin/env bash
# test_comm.sh - the MPI communicator across ranks: correctness at 1-4 ranks, then fail-fast
# when a rank dies (the runtime ends the job) or hangs (the others time out and abort).
#
# Run by CTest (label mpi) with TPLLM_BINARY_DIR set; by hand:
#   TPLLM_BINARY_DIR=build bash tests/mpi/test_comm.sh
# Exits 77 (skipped) without mpirun. Prints how long the failure cases took.
set -u
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
mpirun_sh="$here/mpirun.sh"
if ! command -v mpirun >/dev/null 2>&1; then
    echo "test_comm.sh: SKIP: mpirun not found (apt-get install openmpi-bin)"
    exit 77
fi
bin=
for d in "${TPLLM_BINARY_DIR:-}" "${TPLLM_BINARY_DIR:-}/tests" "$here/../../build" "$here/../../build/tests"; do
    if [ -n "$d" ] && [ -x "$d/comm_stress" ]; then bin="$d/comm_stress"; break; fi
done
if [ -z "$bin" ]; then
    echo "test_comm.sh: FAIL: comm_stress not found under TPLLM_BINARY_DIR='${TPLLM_BINARY_DIR:-}' (or its tests/):" \
        "build it with 'cmake --build BUILD --target comm_stress'" >&2
    exit 1
fi
limit=30 # seconds any failure case may take before we call it a hang
failures=0
fail() {
    echo "test_comm.sh: FAIL: $*" >&2
    failures=$((failures + 1))
}
now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.2f", b - a }'; }
log=$(mktemp "${TMPDIR:-/tmp}/tpllm-test-comm.XXXXXX")
trap 'rm -f "$log"' EXIT

# 1. Correctness and latency figures at 1..4 ranks (oversubscribed on small machines).
for np in 1 2 3 4; do
    start=$(now)
    timeout 300 "$mpirun_sh" -np "$np" "$bin" >"$log" 2>&1
    rc=$?
    t=$(elapsed "$start")
    grep -E '^(latency|comm_stress: (PASS|FAIL|[0-9]+ ranks?,))' "$log" | sed "s/^/  [np=$np] /"
    if [ "$rc" -ne 0 ] || ! grep -q "comm_stress: PASS ($np rank" "$log"; then
        fail "comm_stress at $np ranks: exit $rc after $t s; its output:"
        cat "$log" >&2
    else
        echo "ok: comm_stress at $np ranks ($t s)"
    fi
done

# 2. A rank exits abruptly (_exit(3), no MPI_Finalize) before a collective: Open MPI's
#    runtime must kill the job and name the process; the collective timeout (20 s) is a
#    backstop that must not be what ends it.
np=3 victim=1
start=$(now)
timeout "$limit" "$mpirun_sh" -np "$np" "$bin" --die-rank "$victim" --timeout 20 >"$log" 2>&1
rc=$?
t=$(elapsed "$start")
if [ "$rc" -eq 0 ] || [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
    fail "dead rank: the job ended with exit $rc after $t s (want non-zero, within $limit s)"
    cat "$log" >&2
elif ! grep -Eq "Process name: \[\[[0-9]+,[0-9]+\],$victim\]|process rank $victim |rank $victim .*failed" "$log"; then
    fail "dead rank: the job ended (exit $rc, $t s) but no message names rank $victim:"
    cat "$log" >&2
else
    echo "ok: rank $victim of $np died; the job ended by itself in $t s with exit $rc, naming it"
fi

# 3. A rank hangs (sleeps forever) instead of joining: the others must time out after 2 s,
#    name themselves and the missing rank, and abort the job.
np=3 victim=2
start=$(now)
timeout "$limit" "$mpirun_sh" -np "$np" "$bin" --hang-rank "$victim" --timeout 2 >"$log" 2>&1
rc=$?
t=$(elapsed "$start")
if [ "$rc" -eq 0 ] || [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
    fail "hung rank: the job ended with exit $rc after $t s (want non-zero, within $limit s)"
    cat "$log" >&2
elif ! grep -Eq "^tpllm: rank [0-9]+ \(host [^)]*\) failed: rank [0-9]+ on host .* did not complete within 2 s .*not arrived \(no answer\): rank $victim on host" "$log"; then
    fail "hung rank: the job ended (exit $rc, $t s) but no surviving rank reported the timeout naming rank $victim:"
    cat "$log" >&2
elif grep -Eq "^tpllm: rank $victim " "$log"; then
    fail "hung rank: rank $victim itself reported a failure, it was supposed to be asleep:"
    cat "$log" >&2
else
    echo "ok: rank $victim of $np hung; the others timed out and the job ended in $t s with exit $rc"
    grep -E '^tpllm: rank' "$log" | head -n 1 | sed 's/^/  /'
fi

# 4. The hung rank is rank 0 (the coordinator): the same must hold.
np=2 victim=0
start=$(now)
timeout "$limit" "$mpirun_sh" -np "$np" "$bin" --hang-rank "$victim" --timeout 2 >"$log" 2>&1
rc=$?
t=$(elapsed "$start")
if [ "$rc" -eq 0 ] || [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ] ||
    ! grep -Eq "not arrived \(no answer\): rank 0 on host" "$log"; then
    fail "hung rank 0: exit $rc after $t s; its output:"
    cat "$log" >&2
else
    echo "ok: rank 0 of $np hung; rank 1 timed out and the job ended in $t s with exit $rc"
fi

# 5. Sizes that differ between ranks (a bug in the caller): MPI's error must come back as a
#    status with MPI's text (MPI_ERRORS_RETURN), and the job must stop.
np=3
start=$(now)
timeout "$limit" "$mpirun_sh" -np "$np" "$bin" --mismatch --timeout 5 >"$log" 2>&1
rc=$?
t=$(elapsed "$start")
if [ "$rc" -eq 0 ] || [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ] ||
    ! grep -Eq "^tpllm: rank [12] \(host [^)]*\) failed: .*MPI_ERR_TRUNCATE" "$log"; then
    fail "mismatched broadcast: exit $rc after $t s; its output:"
    cat "$log" >&2
else
    echo "ok: a mismatched broadcast came back as MPI_ERR_TRUNCATE and the job ended in $t s with exit $rc"
fi

if [ "$failures" -ne 0 ]; then
    echo "test_comm.sh: $failures check(s) failed" >&2
    exit 1
fi
echo "test_comm.sh: all checks passed"
