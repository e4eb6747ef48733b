#!/usr/bin/env bash
# test_errors.sh - user errors end the job quickly with a message that names the problem
# and the fix, and a non-zero exit: a TP size that cannot work, --tp different from the
# ranks, a missing or malformed model file, a model that does not fit --device-mem, bad
# flags. Also `tpllm verify` passes at tp = 2 against the one-rank reference.
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
bin=${TPLLM_BIN:-$root/build/tpllm}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
fail=0

# expect STATUS_NONZERO PATTERN -- command...: the command fails within 60 s and its
# output contains PATTERN
expect_fail() {
    local pattern=$1
    shift
    local start=$SECONDS out rc
    out=$(timeout 60 "$@" 2>&1)
    rc=$?
    if [ $rc -eq 0 ] || [ $rc -eq 124 ]; then
        echo "FAIL: expected a quick failure (rc $rc): $*"; echo "$out" | tail -5; fail=1; return
    fi
    if ! grep -q -- "$pattern" <<<"$out"; then
        echo "FAIL: message lacks '$pattern': $*"; echo "$out" | tail -5; fail=1; return
    fi
    echo "ok ($((SECONDS - start)) s, exit $rc): $(grep -m1 -- "$pattern" <<<"$out" | cut -c1-160)"
}

"$bin" synth --arch llama --dim 256 --layers 2 --heads 4 --kv-heads 1 --head-dim 64 --ff 512 --vocab 500 --type q4_k \
    --seed 9 -o "$work/m.gguf" >/dev/null || { echo "synth failed"; exit 1; }

# 4 heads moving in chunks of 4 (Q4_K attn_output, head_dim 64) and 2 FFN chunks: tp 3 cannot work
expect_fail "TP sizes that work: 1-2" "$here/mpirun.sh" -np 3 "$bin" generate -m "$work/m.gguf" -p hi -n 2
expect_fail "start it with mpirun -np 3" "$here/mpirun.sh" -np 2 "$bin" generate -m "$work/m.gguf" -p hi --tp 3
expect_fail "No such file" "$bin" generate -m "$work/absent.gguf" -p hi
head -c 3000 "$work/m.gguf" >"$work/trunc.gguf"
expect_fail "truncated" "$here/mpirun.sh" -np 2 "$bin" generate -m "$work/trunc.gguf" -p hi
expect_fail "does not fit" "$here/mpirun.sh" -np 2 "$bin" generate -m "$work/m.gguf" -p hi --device-mem 1MiB
expect_fail "expects an integer" "$bin" generate -m "$work/m.gguf" -p hi -t many
expect_fail "unknown or incomplete option" "$bin" generate -m "$work/m.gguf" -p hi --frobnicate
expect_fail "top_p must be in" "$bin" generate -m "$work/m.gguf" -p hi --top-p 1.5
expect_fail "--device-mem expects a size" "$bin" plan -m "$work/m.gguf" --device-mem lots

# an allocation that fails on one rank mid-generation ends the job in seconds, naming the
# rank, instead of leaving the others in a collective (TPLLM_FAULT: kernels/base.h)
expect_fail "rank 1: out of host memory" env TPLLM_FAULT=gather_full@1 "$here/mpirun.sh" -np 2 -x TPLLM_FAULT "$bin" \
    generate -m "$work/m.gguf" -p hi -n 4 --temp 1 --top-k 0 --min-p 0 --seed 1
expect_fail "rank 0: out of host memory" env TPLLM_FAULT=gather_full@0 "$here/mpirun.sh" -np 2 -x TPLLM_FAULT "$bin" \
    generate -m "$work/m.gguf" -p hi -n 4 --temp 1 --top-k 0 --min-p 0 --seed 1
expect_fail "rank 0: out of host memory for" env TPLLM_FAULT=sample_alloc "$here/mpirun.sh" -np 2 -x TPLLM_FAULT "$bin" \
    generate -m "$work/m.gguf" -p hi -n 4 --temp 0.8 --seed 1

# loading progress: rank 0 shows every rank's, to 100%
out=$("$here/mpirun.sh" -np 2 "$bin" generate -m "$work/m.gguf" -p hi -n 1 2>&1)
if grep -q "loading rank 1: 100%" <<<"$out" && grep -q "loading rank 0: 100%" <<<"$out"; then echo "ok: progress of every rank on rank 0"; else
    echo "FAIL: progress lines"; echo "$out" | head; fail=1; fi

out=$("$here/mpirun.sh" -np 2 "$bin" verify -m "$work/m.gguf" -q -n 8 2>&1)
if grep -q "PASS" <<<"$out"; then echo "ok: verify tp=2: $(grep -m1 'max |difference|' <<<"$out")"; else echo "FAIL: verify"; echo "$out" | tail; fail=1; fi
exit $fail
