#!/usr/bin/env bash
# test_tp_greedy.sh - the same model at tp = 1, 2, 3, 4 gives the same greedy tokens, with
# either way of reducing the row-parallel partial sums (all-gather; reduce-scatter).
#
# Models: Gemma 3 270M (one KV head: replicated at every tp > 1) and synthetic models whose
# shapes force uneven and empty shards (5 heads; an FFN of 3 Q4_K blocks, so at tp = 4 one
# rank owns no FFN block; a Q4_K attn_output). The dumped logits must be the same bits as at
# tp = 1; a mismatch of tokens or logits fails the test (exit 1).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
bin=${TPLLM_BIN:-$root/build/tpllm}
py=$root/.pydeps/bin/python
gemma=${TPLLM_GEMMA:-$root/models/gemma-3-270m-q4_k_m.gguf}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
[ -x "$py" ] || py=python3

models=()
if [ -f "$gemma" ]; then models+=("$gemma"); else echo "note: $gemma absent (make models): Gemma case skipped"; fi
"$bin" synth --arch llama --dim 320 --layers 2 --heads 5 --kv-heads 5 --ff 864 --vocab 1000 --type q8_0 --seed 3 -o "$work/heads5.gguf"
"$bin" synth --arch llama --dim 256 --layers 2 --heads 4 --kv-heads 2 --head-dim 256 --ff 768 --vocab 1000 --type q4_k --seed 4 -o "$work/q4k.gguf"
"$bin" synth --arch qwen2 --dim 256 --layers 2 --heads 8 --kv-heads 2 --ff 544 --vocab 1000 --type q4_0 --seed 5 -o "$work/qwen2.gguf"
models+=("$work/heads5.gguf" "$work/q4k.gguf" "$work/qwen2.gguf")

fail=0
for m in "${models[@]}"; do
    name=$(basename "$m")
    ref=""
    # "Ns": tp = N with every reduction a reduce-scatter + all-gather (TPLLM_REDUCE=scatter;
    # by default only steps of 64 KiB of partials or more take that path): the same bits
    for tp in 1 2 3 4 2s 3s 4s; do
        log="$work/$name.$tp.log"
        np=${tp%s}
        mode=auto
        [ "$np" != "$tp" ] && mode=scatter
        if ! TPLLM_REDUCE=$mode timeout 600 "$here/mpirun.sh" -np "$np" "$bin" generate -m "$m" -p "The capital of France is" -n 32 \
            --temp 0 --threads 1 --show-tokens --ignore-eos --dump-logits "$work/$name.$tp.logits" \
            >"$work/$name.$tp.out" 2>"$log"; then
            echo "FAIL: $name at tp=$tp exited non-zero:"; cat "$log"; fail=1; continue
        fi
        toks=$(grep '^tokens:' "$log" || true)
        if [ -z "$toks" ]; then echo "FAIL: $name tp=$tp printed no tokens"; cat "$log"; fail=1; continue; fi
        if [ "$tp" = 1 ]; then
            ref=$toks
        elif [ "$toks" != "$ref" ]; then
            echo "FAIL: $name tp=$tp tokens differ from tp=1"; echo " tp=1: $ref"; echo " tp=$tp: $toks"; fail=1
        fi
        if [ "$tp" != 1 ]; then
            # the logits must be the same bits as at tp=1 (a different top-1 or any difference fails)
            if ! "$py" - "$work/$name.1.logits" "$work/$name.$tp.logits" "$name" "$tp" <<'PY'
import sys, array
a = array.array('f'); b = array.array('f')
a.frombytes(open(sys.argv[1], 'rb').read()); b.frombytes(open(sys.argv[2], 'rb').read())
if len(a) != len(b) or not a:
    print(f"FAIL: {sys.argv[3]} tp={sys.argv[4]}: {len(b)} logits, tp=1 has {len(a)}"); sys.exit(1)
d = max(abs(x - y) for x, y in zip(a, b))
n = sum(1 for x, y in zip(a, b) if x != y)
ia = max(range(len(a)), key=a.__getitem__); ib = max(range(len(b)), key=b.__getitem__)
same = a.tobytes() == b.tobytes()
print(f"{sys.argv[3]} tp={sys.argv[4]}: max |logit - logit(tp=1)| = {d:.3g}, {n} of {len(a)} differ, "
      f"top-1 {'same' if ia == ib else 'DIFFERENT'}")
if not same or ia != ib:
    print(f"FAIL: {sys.argv[3]} tp={sys.argv[4]}: logits are not the bits of tp=1"); sys.exit(1)
PY
            then fail=1; fi
        fi
    done
    echo "$name: tp=1..4 greedy tokens checked: $ref"
done
[ "$fail" = 0 ] && echo "all models: identical tokens and logits at tp=1..4" || echo "FAILED: see the FAIL lines above"
exit $fail
