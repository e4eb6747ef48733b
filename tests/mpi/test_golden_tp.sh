#!/usr/bin/env bash
# test_golden_tp.sh - llama.cpp's golden outputs reproduced under tensor parallelism:
# 32 greedy tokens at tp = 2 for every golden model, and Gemma 3 270M's perplexity at
# tp = 1 and 2 within 1% of llama.cpp's (tests/golden/generation/*.json).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
bin=${TPLLM_BIN:-$root/build/tpllm}
py=$root/.pydeps/bin/python
[ -x "$py" ] || py=python3
gemma=${TPLLM_GEMMA:-$root/models/gemma-3-270m-q4_k_m.gguf}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
fail=0

field() { "$py" -c "import json,sys; g=json.load(open(sys.argv[1])); v=g$2; print(' '.join(map(str,v)) if isinstance(v,list) else v)" "$1"; }

for gold in "$root"/tests/golden/generation/*.json; do
    name=$(basename "$gold" .json)
    if [ "$name" = gemma3-270m ]; then
        [ -f "$gemma" ] || { echo "skip $name: $gemma absent (make models)"; continue; }
        model=$gemma
    else
        args=$("$py" -c "import json,sys; print(' '.join(json.load(open(sys.argv[1]))[sys.argv[2]]['synth']))" "$root/tests/golden/models.json" "$name")
        model=$work/$name.gguf
        # shellcheck disable=SC2086
        "$bin" synth $args -o "$model" >/dev/null
    fi
    prompt=$(field "$gold" "['prompt']")
    want=$(field "$gold" "['greedy']")
    "$here/mpirun.sh" -np 2 "$bin" generate -m "$model" -p "$prompt" -n 32 --temp 0 --threads 1 --ignore-eos --show-tokens \
        >"$work/out" 2>"$work/err" || { echo "FAIL: $name generate at tp=2"; cat "$work/err"; fail=1; continue; }
    got=$(sed -n 's/^tokens: //p' "$work/err")
    want_fa=$(field "$gold" "['greedy_fa']")
    bm=$(field "$gold" "['greedy_batch_margin']")
    bmfa=$(field "$gold" "['greedy_batch_margin_fa']")
    # required: the tokens up to the first step llama.cpp itself decides two ways (its flash
    # and standard paths token by token, or either of them evaluating the same tokens as one
    # batch); reported: how far tpllm follows llama.cpp in all
    if verdict=$("$py" - "$want" "$want_fa" "$got" "$bm" "$bmfa" <<'PY'
import sys
want, fa, got, bm, bmfa = (s.split() for s in sys.argv[1:6])
decided = next((i for i, (a, b, m, n) in enumerate(zip(want, fa, bm, bmfa)) if a != b or float(m) <= 0 or float(n) <= 0), len(want))
same = next((i for i, (a, b) in enumerate(zip(want, got)) if a != b), min(len(want), len(got)))
print(f"{same} of {len(want)} identical (required: the first {decided}, where llama.cpp agrees with itself)")
sys.exit(0 if same >= decided else 1)
PY
    ); then echo "ok: $name tp=2 greedy tokens vs llama.cpp: $verdict"; else
        echo "FAIL: $name tp=2 greedy tokens vs llama.cpp: $verdict"; echo " llama.cpp: $want"; echo " tpllm:     $got"; fail=1; fi
done

if [ -f "$gemma" ]; then
    gold=$root/tests/golden/generation/gemma3-270m.json
    want=$(field "$gold" "['perplexity']['ppl']")
    nctx=$(field "$gold" "['perplexity']['n_ctx']")
    for tp in 1 2; do
        "$here/mpirun.sh" -np $tp "$bin" perplexity -m "$gemma" -f "$root/tests/golden/ppl_text.txt" --ctx "$nctx" \
            --max-batch-tokens "$nctx" >"$work/ppl" 2>"$work/ppl.err" || { echo "FAIL: perplexity tp=$tp"; cat "$work/ppl.err"; fail=1; continue; }
        got=$(sed -n 's/^Final estimate: PPL = \([0-9.]*\).*/\1/p' "$work/ppl")
        if "$py" -c "import sys; a,b=float(sys.argv[1]),float(sys.argv[2]); print(f'perplexity tp=$tp: tpllm {a:.4f}, llama.cpp {b:.4f}, {100*(a-b)/b:+.3f}%'); sys.exit(0 if abs(a-b)/b < 0.01 else 1)" "$got" "$want"; then :; else
            echo "FAIL: perplexity at tp=$tp not within 1% of llama.cpp"; fail=1; fi
    done
fi
exit $fail
