#!/usr/bin/env bash
# test_bench.sh - `tpllm bench`: the sweep runs at tp = 1 and 2, every figure is a positive
# tok/s with its stddev, decode rows carry a roofline, decode at a depth (-d) runs after a
# prompt of that length and counts its KV-cache bytes (exactly) in the roofline, tp = 2
# decode rows give the collectives' ms per step, --json parses, --csv has its header, and
# bad lists and a depth past the context are clear errors. Speeds are not asserted
# (shared machines are noisy).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
bin=${TPLLM_BIN:-$root/build/tpllm}
py=$root/.pydeps/bin/python
[ -x "$py" ] || py=python3
command -v mpirun >/dev/null 2>&1 || { echo "skipped: no mpirun"; exit 77; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
fail=0
"$bin" synth --arch llama --dim 256 --layers 2 --heads 4 --kv-heads 2 --ff 512 --vocab 1000 --type q4_0 --seed 4 \
    -o "$work/m.gguf" >/dev/null
for tp in 1 2; do
    if ! "$here/mpirun.sh" -np "$tp" "$bin" bench -m "$work/m.gguf" -p 32,128 -n 16 -b 1,3 -d 0,32 -r 2 --threads 1 --json \
        >"$work/b$tp.json" 2>"$work/b$tp.err"; then
        echo "FAIL: bench at tp=$tp"; cat "$work/b$tp.err"; fail=1; continue
    fi
    if "$py" - "$work/b$tp.json" "$tp" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
tp = int(sys.argv[2])
assert d["tp"] == tp, d["tp"]
assert d["kv_type"] == "f16" and d["host_ranks"] == tp and d["weights_bytes_rank0"] > 0, d
names = [r["test"] for r in d["results"]]
assert names == ["pp32", "pp128", "tg16@b1", "tg16@d32", "tg16@b3", "tg16@b3@d32"], names
by = {r["test"]: r for r in d["results"]}
for r in d["results"]:
    tg = r["test"].startswith("tg")
    assert r["tok_s"] > 0 and r["stddev"] >= 0 and r["repeat"] == 2, r
    assert (r["roofline_tok_s"] > 0) == tg, r
    # collectives: a figure for decode rows under tp > 1, null otherwise
    assert (r["comm_ms_per_step"] is not None) == (tg and tp > 1), r
    if r["comm_ms_per_step"] is not None:
        assert r["comm_ms_per_step"] > 0, r
    if not tg:
        assert r["depth"] == 0 and r["kv_bytes_per_step_rank0"] == 0, r
        continue
    # depth D: a D-token prompt (0: the short 16-token prompt); KV bytes of one step, the
    # mean over steps j = 1..n-1 of (prompt + j) positions x 2 layers x 2 (K, V) x the
    # rank's KV heads (2 / tp) x head_dim 64 x 2 bytes (f16)
    assert r["n_prompt"] == (r["depth"] or 16), r
    ctx = sum(r["n_prompt"] + j for j in range(1, r["n_gen"])) / (r["n_gen"] - 1)
    want = r["batch"] * ctx * 2 * 2 * (2 // tp) * 64 * 2
    assert abs(r["kv_bytes_per_step_rank0"] - want) < 1, (r, want)
    w = d["weights_bytes_rank0"]
    want_roof = r["batch"] * d["bandwidth_gbs"] * 1e9 / ((w + r["kv_bytes_per_step_rank0"]) * tp)
    assert abs(r["roofline_tok_s"] / want_roof - 1) < 0.01, (r, want_roof)
assert by["tg16@d32"]["depth"] == 32 and by["tg16@b3@d32"]["batch"] == 3, by
assert by["tg16@d32"]["roofline_tok_s"] < by["tg16@b1"]["roofline_tok_s"], by
print(f"tp={sys.argv[2]}: " + ", ".join(f"{r['test']} {r['tok_s']:.0f} tok/s" for r in d["results"]))
PY
    then :; else echo "FAIL: bench --json at tp=$tp"; cat "$work/b$tp.json"; fail=1; fi
done
"$bin" bench -m "$work/m.gguf" -p 16 -n 4 -r 1 --threads 1 --csv -q >"$work/b.csv" 2>/dev/null || { echo "FAIL: --csv"; fail=1; }
head -1 "$work/b.csv" | grep -q '^model,tp,backend,test,' || { echo "FAIL: csv header"; cat "$work/b.csv"; fail=1; }
"$bin" bench -m "$work/m.gguf" -p 16 -n 4 -r 1 --threads 1 -q >"$work/b.md" 2>/dev/null || { echo "FAIL: markdown"; fail=1; }
grep -q '| test | t/s | roofline t/s | collectives ms/step |' "$work/b.md" || { echo "FAIL: markdown table"; cat "$work/b.md"; fail=1; }
if "$bin" bench -m "$work/m.gguf" -b 0 >/dev/null 2>"$work/err"; then echo "FAIL: -b 0 accepted"; fail=1; fi
grep -q "integers in \[1, 1024\]" "$work/err" || { echo "FAIL: -b 0 message"; cat "$work/err"; fail=1; }
if "$bin" bench -m "$work/m.gguf" -p 1,x >/dev/null 2>"$work/err"; then echo "FAIL: -p 1,x accepted"; fail=1; fi
grep -q "comma-separated list" "$work/err" || { echo "FAIL: -p message"; cat "$work/err"; fail=1; }
if "$bin" bench -m "$work/m.gguf" -d 8,y >/dev/null 2>"$work/err"; then echo "FAIL: -d 8,y accepted"; fail=1; fi
grep -q "integers in \[0, 1048576\]" "$work/err" || { echo "FAIL: -d message"; cat "$work/err"; fail=1; }
# a depth past the model's trained context (2048): an error naming the lengths, before any test runs
if "$bin" bench -m "$work/m.gguf" -p 0 -n 4 -d 4096 -r 1 --threads 1 -q >/dev/null 2>"$work/err"; then
    echo "FAIL: -d 4096 accepted on a 2048-token model"; fail=1; fi
grep -q "needs sequences of 4100 tokens.*trained for 2048" "$work/err" || { echo "FAIL: -d past the context message"; cat "$work/err"; fail=1; }
# --plot: a PNG (gnuplot draws it; make deps installs gnuplot-nox)
if command -v gnuplot >/dev/null 2>&1; then
    "$bin" bench -m "$work/m.gguf" -p 16,32 -n 4 -b 1,2 -r 1 --threads 1 -q --plot "$work/b.png" >/dev/null 2>"$work/err" ||
        { echo "FAIL: --plot"; cat "$work/err"; fail=1; }
    head -c 8 "$work/b.png" 2>/dev/null | od -An -c | grep -q "P   N   G" || { echo "FAIL: --plot wrote no PNG"; fail=1; }
else
    echo "note: no gnuplot: --plot not checked"
fi

# bench serve: against a running tpllm serve (started here on a free port, ended by its pid)
"$bin" serve -m "$work/m.gguf" --port 0 --threads 1 --max-seqs 8 2>"$work/serve.err" &
spid=$!
port=""
for _ in $(seq 1 100); do
    port=$(sed -n 's/.*serving http:\/\/127.0.0.1:\([0-9]*\).*/\1/p' "$work/serve.err")
    [ -n "$port" ] && break
    kill -0 "$spid" 2>/dev/null || break
    sleep 0.2
done
if [ -z "$port" ]; then echo "FAIL: serve did not start"; cat "$work/serve.err"; fail=1; else
    if timeout 120 "$bin" bench serve --url "http://127.0.0.1:$port" --requests 24 --concurrency 6 --rate 40 \
        --max-tokens 16 --json >"$work/bs.json"; then
        "$py" - "$work/bs.json" <<'PY' || fail=1
import json, sys
d = json.load(open(sys.argv[1]))
ok = d["completed"] == 24 and d["errors"] == 0 and d["output_token_throughput"] > 0 and \
     0 < d["ttft_s"]["p50"] <= d["ttft_s"]["p99"] and d["tpot_s"]["p50"] > 0
print(("" if ok else "FAIL: ") + f"bench serve: {d['completed']}/24 completed, {d['output_token_throughput']:.0f} tok/s, "
      f"TTFT p50 {1e3 * d['ttft_s']['p50']:.1f} ms")
sys.exit(0 if ok else 1)
PY
    else echo "FAIL: bench serve"; cat "$work/bs.json"; fail=1; fi
    if "$bin" bench serve --url "http://127.0.0.1:1" --requests 2 >/dev/null 2>&1; then
        echo "FAIL: bench serve against a closed port reported success"; fail=1; fi
fi
kill -TERM "$spid" 2>/dev/null; wait "$spid" 2>/dev/null || true
if "$bin" bench serve --requests 2 >/dev/null 2>"$work/err"; then echo "FAIL: bench serve without --url"; fail=1; fi
grep -q -- "--url http://HOST:PORT" "$work/err" || { echo "FAIL: bench serve --url message"; cat "$work/err"; fail=1; }
[ "$fail" = 0 ] && echo "bench: sweeps at tp=1,2 with depths, json, csv, markdown, bench serve, errors checked"
exit $fail
