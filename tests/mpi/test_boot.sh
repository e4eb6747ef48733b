#!/usr/bin/env bash
# test_boot.sh - one boot path: whatever --backend says (auto, the default, or an explicit
# name), the memory plan is computed and enforced, and at tp > 1 the ranks' communicator is
# set up and named in the startup report. Shown on the CPU here; on a GPU machine auto and
# cuda run the same lines of launcher/boot.c (create_backend, then plan_memory, then the
# device communicator). Also --simd: every level this CPU has is accepted and reported, a
# level it lacks is a clear error. A mismatch fails (exit 1); without mpirun: skipped (77).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
bin=${TPLLM_BIN:-$root/build/tpllm}
command -v mpirun >/dev/null 2>&1 || { echo "skipped: no mpirun (install Open MPI)"; exit 77; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
fail=0
bad() { echo "FAIL: $*"; fail=1; }

"$bin" synth --arch llama --dim 256 --layers 2 --heads 4 --kv-heads 2 --ff 512 --vocab 1000 --type q4_0 --seed 2 \
    -o "$work/m.gguf" >/dev/null

backends=(auto cpu)
[ -n "${TPLLM_TEST_CUDA:-}" ] && backends+=(cuda)
for be in "${backends[@]}"; do
    # the plan runs: a budget far too small is refused before anything is loaded
    if "$here/mpirun.sh" -np 2 "$bin" generate -m "$work/m.gguf" -p hi -n 2 --temp 0 --threads 1 --backend "$be" \
        --device-mem 64KiB >"$work/out" 2>"$work/err"; then
        bad "--backend $be with --device-mem 64KiB ran: the memory plan was skipped"
    elif ! grep -q "does not fit" "$work/err"; then
        bad "--backend $be with --device-mem 64KiB failed without the planner's message:"; cat "$work/err"
    else
        echo "--backend $be: the memory plan refuses a 64 KiB budget: $(grep -m1 'does not fit' "$work/err" | cut -c1-120)"
    fi
    # ... and sizes the KV cache of a normal run, whose report names the communicator
    if ! "$here/mpirun.sh" -np 2 "$bin" generate -m "$work/m.gguf" -p hi -n 2 --temp 0 --threads 1 --backend "$be" \
        --device-mem 256MiB --kv-blocks 1000000 >"$work/out" 2>"$work/err"; then
        bad "--backend $be run failed:"; cat "$work/err"; continue
    fi
    grep -q "does not fit the budget; using" "$work/err" || bad "--backend $be: --kv-blocks beyond the budget was not capped by the plan"
    n=$(grep -c "^  rank [01]/2 .*| mpi" "$work/err" || true)
    [ "$n" = 2 ] || { bad "--backend $be: the report does not show both ranks on the MPI communicator:"; cat "$work/err"; }
    sed -n 's/^tpllm.*]: //p' "$work/err" | head -1 | sed "s/^/--backend $be: /"
done

# --simd: each level up to the CPU's best runs and is named; one above is refused
levels=(scalar)
grep -q ' avx2 ' /proc/cpuinfo && grep -q ' fma ' /proc/cpuinfo && grep -q ' f16c ' /proc/cpuinfo && levels+=(avx2)
has512=0
for f in avx512f avx512bw avx512vl avx512_vnni; do grep -q " $f " /proc/cpuinfo || has512=1; done
[ "$has512" = 0 ] && levels+=(avx512)
ref=""
for lv in "${levels[@]}" auto; do
    if ! "$bin" generate -m "$work/m.gguf" -p "hello world" -n 8 --temp 0 --threads 1 --simd "$lv" --show-tokens \
        >"$work/out" 2>"$work/err"; then
        bad "--simd $lv failed:"; cat "$work/err"; continue
    fi
    want=$lv; [ "$lv" = auto ] && want="(scalar|avx2)"
    grep -Eq "cpu: $want \((forced|auto); cpu has " "$work/err" || { bad "--simd $lv: the report does not name the level:"; grep rank "$work/err"; }
    toks=$(grep '^tokens:' "$work/err")
    [ -z "$ref" ] && ref=$toks
    [ "$toks" = "$ref" ] || bad "--simd $lv gives other tokens: $toks vs $ref"
done
echo "--simd ${levels[*]} auto: $ref"
if [ "$has512" = 1 ]; then
    if "$bin" generate -m "$work/m.gguf" -p hi -n 1 --simd avx512 >"$work/out" 2>"$work/err"; then
        bad "--simd avx512 ran on a CPU without AVX-512"
    else
        grep -q "supports at most" "$work/err" || { bad "--simd avx512: unclear error:"; cat "$work/err"; }
        echo "--simd avx512 on this CPU: $(grep -m1 'supports at most' "$work/err")"
    fi
fi
if "$bin" generate -m "$work/m.gguf" -p hi -n 1 --simd sse9 >"$work/out" 2>"$work/err"; then bad "--simd sse9 accepted"; fi
grep -q "must be auto, scalar, avx2 or avx512" "$work/err" || bad "--simd sse9: unclear error"
if TPLLM_SIMD=bogus "$bin" generate -m "$work/m.gguf" -p hi -n 1 >"$work/out" 2>"$work/err"; then bad "TPLLM_SIMD=bogus accepted"; fi
grep -q "TPLLM_SIMD='bogus'" "$work/err" || { bad "TPLLM_SIMD=bogus: unclear error:"; cat "$work/err"; }
[ "$fail" = 0 ] && echo "boot: plan and communicator set up for every backend choice; --simd checked"
exit $fail
