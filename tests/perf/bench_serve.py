#!/usr/bin/env python3
"""Aggregate decode throughput of `tpllm serve` under 1, 4 and 16 concurrent streams, beside
the same build's prompt-processing speed (`tpllm generate` on a long prompt), at tp = 1 and 2,
on the synthetic 1B Llama of bench_generate.py. Also the scheduler's own share of the step
time (tpllm_scheduler_seconds_total against tpllm_forward_seconds_total). Prints a Markdown
table for docs/benchmarks.md.

On a CPU, batched decode is bound by the same matmul compute as a prompt, so the goal is
aggregate decode at 16 streams >= 80% of prompt tok/s, and the scheduler under 2%.

usage (repository root, after `make build pydeps`):
    .pydeps/bin/python tests/perf/bench_serve.py [--type q4_0] [--tp 1 2] [--conc 1 4 16] [--gen 64] [--repeat 2]
"""
import argparse
import concurrent.futures as cf
import json
import os
import re
import subprocess
import sys
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "server"))
from serverlib import BIN, MPIRUN, Server  # noqa: E402

SHAPE = ["--arch", "llama", "--dim", "2048", "--layers", "16", "--heads", "32", "--kv-heads", "8", "--ff", "5632",
         "--vocab", "32000", "--ctx", "2048", "--seed", "1"]
WORDS = ("the river runs past the old mill and the miller counts the sacks of grain " * 40).split()


def stream(base, prompt, n):
    """One streaming completion: (tokens, time of the first token, time of the last)."""
    body = json.dumps({"prompt": prompt, "max_tokens": n, "temperature": 0, "ignore_eos": True, "stream": True,
                       "stream_options": {"include_usage": True}}).encode()
    req = urllib.request.Request(base + "/v1/completions", data=body, headers={"Content-Type": "application/json"})
    first = last = None
    toks = 0
    with urllib.request.urlopen(req, timeout=600) as r:
        for line in r:
            if not line.startswith(b"data: {"):
                continue
            ev = json.loads(line[6:])
            if ev.get("usage"):
                toks = ev["usage"]["completion_tokens"]
            elif ev["choices"] and ev["choices"][0].get("finish_reason") is None:
                t = time.perf_counter()
                first = first or t
                last = t
    return toks, first, last


def metric(base, name):
    text = urllib.request.urlopen(base + "/metrics", timeout=30).read().decode()
    m = re.search(rf"^{name} (\S+)$", text, re.M)
    return float(m.group(1)) if m else 0.0


def prompt_speed(model, np, threads, words=200):
    cmd = [BIN, "generate", "-m", model, "-p", " ".join(WORDS[:words]), "-n", "4", "--temp", "0", "--threads",
           str(threads), "-q", "--ignore-eos"]
    if np > 1:
        cmd = [MPIRUN, "-np", str(np), *cmd]
    err = subprocess.run(cmd, capture_output=True, text=True, check=True).stderr
    m = re.search(r"prompt: (\d+) tokens in ([\d.]+) s", err)
    return int(m.group(1)) / float(m.group(2))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--type", default="q4_0")
    ap.add_argument("--tp", type=int, nargs="*", default=[1, 2])
    ap.add_argument("--conc", type=int, nargs="*", default=[1, 4, 16])
    ap.add_argument("--gen", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2, help="threads in all (divided among the ranks)")
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--workdir", default="/tmp/tpllm-bench")
    a = ap.parse_args()
    os.makedirs(a.workdir, exist_ok=True)
    model = os.path.join(a.workdir, f"llama1b-{a.type}.gguf")
    if not os.path.exists(model):
        subprocess.run([BIN, "synth", *SHAPE, "--type", a.type, "-o", model], check=True, capture_output=True)
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
    print(f"machine: {cpu}, {os.cpu_count()} CPUs; model: 1B llama {a.type.upper()}; {a.gen} tokens per stream, "
          f"prompts of ~12 tokens; best of {a.repeat}")
    print()
    print("| tp | streams | aggregate decode tok/s | per stream tok/s | vs prompt tok/s | scheduler share |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: |")
    for tp in a.tp:
        threads = max(1, a.threads // tp)
        pp = max(prompt_speed(model, tp, threads) for _ in range(a.repeat))
        srv = Server(model, np=tp, args=["--threads", str(threads), "--max-seqs", str(max(a.conc)), "--ctx", "512",
                                         "--max-queue", "1024"], timeout=300)
        try:
            stream(srv.base, "warm up", 4)
            for n in a.conc:
                best = None
                for _ in range(a.repeat):
                    s0, f0 = metric(srv.base, "tpllm_scheduler_seconds_total"), metric(srv.base, "tpllm_forward_seconds_total")
                    prompts = [" ".join(WORDS[i:i + 10]) + f" {i}" for i in range(n)]
                    t0 = time.perf_counter()
                    with cf.ThreadPoolExecutor(n) as ex:
                        res = list(ex.map(lambda p: stream(srv.base, p, a.gen), prompts))
                    t1 = time.perf_counter()
                    s1, f1 = metric(srv.base, "tpllm_scheduler_seconds_total"), metric(srv.base, "tpllm_forward_seconds_total")
                    if any(r[1] is None for r in res):
                        raise RuntimeError(f"a stream returned no tokens: {res}\n{srv.text()[-2000:]}")
                    toks = sum(r[0] for r in res)
                    # all generated tokens over the wall time (the ~12-token prompts are a small part)
                    agg = toks / (t1 - t0)
                    per = sum((r[0] - 1) / (r[2] - r[1]) for r in res if r[2] > r[1]) / n
                    share = (s1 - s0) / max(1e-9, (s1 - s0) + (f1 - f0))
                    if not best or agg > best[0]:
                        best = (agg, per, share)
                agg, per, share = best
                print(f"| {tp} | {n} | {agg:.1f} | {per:.1f} | {agg / pp:.2f}x of {pp:.1f} | {100 * share:.2f}% |")
                sys.stdout.flush()
        finally:
            srv.stop()


if __name__ == "__main__":
    sys.exit(main())
