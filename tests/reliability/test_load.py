#!/usr/bin/env python3
"""test_load.py - a seeded request mix against `tpllm serve` whose KV cache holds a fraction
of the demand (a scaled copy of "a 12 GB GPU serving more users than fit"), bounded in count
and time:

  short and long prompts, streaming or not, greedy and seeded-sampled, some streams cancelled
  mid-way by their client, at concurrency 16 for a fixed count, at tp = 1 and tp = 2.

Checks: no crash (the server answers /health throughout and stops with status 0); no lost or
duplicated request (every request gets exactly one answer, every stream exactly one
[DONE] or a cancellation, the server's counters add up); every greedy answer equals its solo
answer and every seeded answer its solo answer; preemptions happened; every rank's tracker
peak stays within the plan's budget. Prints the mix and the outcomes.

usage: .pydeps/bin/python tests/reliability/test_load.py [--requests 96] [--tp 1 2] [--seed S]
"""
import argparse
import collections
import concurrent.futures as cf
import json
import os
import random
import socket
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "server"))
from serverlib import Checks, Server, synth  # noqa: E402

WORDS = "the river runs past the old mill and the miller counts sacks of grain while rain falls".split()


def make_mix(rng, n):
    mix = []
    for i in range(n):
        long = rng.random() < 0.3
        prompt = " ".join(rng.choice(WORDS) for _ in range(rng.randint(40, 90) if long else rng.randint(3, 12)))
        greedy = rng.random() < 0.6
        req = {"prompt": f"{i}: {prompt}", "max_tokens": rng.randint(8, 48), "ignore_eos": True,
               "temperature": 0 if greedy else 0.9, "seed": 1000 + i}
        kind = rng.choice(["plain", "stream", "stream", "cancel"]) if not long or rng.random() < 0.8 else "plain"
        mix.append((kind, req))
    return mix


def sse(port, req, cancel_after=None, timeout=300):
    """Streamed completion over a raw socket: ('done', text) or ('cancelled', n_events)."""
    body = json.dumps({**req, "stream": True}).encode()
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: " +
              str(len(body)).encode() + b"\r\n\r\n" + body)
    buf, text, events, dones = b"", [], 0, 0
    try:
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            buf += chunk
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                line = line.strip()
                if line.startswith(b"data: [DONE]"):
                    dones += 1
                elif line.startswith(b"data: {"):
                    ev = json.loads(line[6:])
                    if ev.get("choices"):
                        text.append(ev["choices"][0]["text"])
                        events += 1
                        if cancel_after is not None and events >= cancel_after:
                            s.close()
                            return "cancelled", events
            if dones:
                break
    finally:
        s.close()
    if dones != 1:
        return "lost", dones
    return "done", "".join(text)


def run_mix(c, model, tp, mix, solo, workers=16):
    srv = Server(model, np=tp, args=["--kv-blocks", "24", "--max-seqs", "16", "--device-mem", "64MiB",
                                     "--max-queue", "512"])
    try:
        def one(item):
            idx, (kind, req) = item
            if kind == "plain":
                st, body = srv.post("/v1/completions", json.dumps(req), timeout=300)
                if st != 200:
                    return idx, "error", f"{st} {body[:100]}"
                return idx, "done", json.loads(body)["choices"][0]["text"]
            if kind == "cancel":
                return (idx, *sse(srv.port, req, cancel_after=3))
            return (idx, *sse(srv.port, req))

        t0 = time.time()
        with cf.ThreadPoolExecutor(workers) as ex:
            res = list(ex.map(one, enumerate(mix)))
        dt = time.time() - t0
        outcome = collections.Counter(r[1] for r in res)
        print(f"tp={tp}: {len(mix)} requests in {dt:.1f} s at concurrency {workers}: {dict(outcome)}")
        c.ok(len(res) == len(mix) and outcome["lost"] == 0 and outcome["error"] == 0,
             f"tp={tp}: every request got exactly one answer (no lost, no error)", [r for r in res if r[1] in ("lost", "error")][:3])
        want_cancel = sum(1 for k, _ in mix if k == "cancel")
        c.ok(outcome["cancelled"] == want_cancel, f"tp={tp}: the {want_cancel} clients that left were let go")
        bad = [(i, r[2], solo[i]) for i, r in enumerate(res) if r[1] == "done" and r[2] != solo[i]]
        c.ok(not bad, f"tp={tp}: every completed answer equals its solo answer (greedy and seeded)", bad[:2])
        # the counters add up once the cancelled ones are reaped
        t1 = time.time()
        while time.time() - t1 < 30:
            st, text = srv.get("/metrics")
            m = {l.split()[0]: float(l.split()[1]) for l in text.split("\n") if l and not l.startswith("#") and
                 "{" not in l.split()[0]}
            if m.get("tpllm_requests_running") == 0 and m.get("tpllm_requests_waiting") == 0:
                break
            time.sleep(0.5)
        c.ok(m["tpllm_requests_finished_total"] == m["tpllm_requests_submitted_total"] >= len(mix),
             f"tp={tp}: submitted = finished ({m['tpllm_requests_submitted_total']:.0f})")
        # a client that leaves just as its (short) request ends finds it finished, not cancelled
        c.ok(0 < m["tpllm_requests_cancelled_total"] <= want_cancel, f"tp={tp}: cancellations counted "
             f"({m['tpllm_requests_cancelled_total']:.0f} of the {want_cancel} that left; the rest had finished)")
        c.ok(m["tpllm_preemptions_total"] > 0, f"tp={tp}: preemptions under the 24-block cache "
             f"({m['tpllm_preemptions_total']:.0f})")
        for r in range(tp):
            peak = [l for l in text.split("\n") if l.startswith(f'tpllm_memory_total_peak_bytes{{rank="{r}"}}')]
            budget = [l for l in text.split("\n") if l.startswith(f'tpllm_memory_budget_bytes{{rank="{r}"}}')]
            p, b = float(peak[0].split()[-1]), float(budget[0].split()[-1])
            c.ok(p <= b, f"tp={tp}: rank {r} tracker peak {p / 2**20:.1f} MiB within the plan's {b / 2**20:.1f} MiB")
        st, _ = srv.get("/health")
        c.ok(st == 200, f"tp={tp}: /health 200 after the load")
    finally:
        c.ok(srv.stop() == 0, f"tp={tp}: the server stops on SIGTERM with status 0")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=96)
    ap.add_argument("--tp", type=int, nargs="*", default=[1, 2])
    ap.add_argument("--seed", type=int, default=int(os.environ.get("TPLLM_TEST_SEED", "7")))
    a = ap.parse_args()
    print(f"seed {a.seed} (TPLLM_TEST_SEED to change)")
    c = Checks()
    work = tempfile.mkdtemp(prefix="tpllm-load-")
    model = synth(os.path.join(work, "m.gguf"), "--arch", "llama", "--dim", "256", "--layers", "2", "--heads", "4",
                  "--kv-heads", "2", "--ff", "512", "--vocab", "1003", "--type", "q8_0", "--seed", "11")
    mix = make_mix(random.Random(a.seed), a.requests)
    print("mix:", dict(collections.Counter(k for k, _ in mix)), "greedy:",
          sum(1 for _, r in mix if r["temperature"] == 0), "of", len(mix))
    # solo answers: one at a time on a server with room for everything
    srv = Server(model)
    try:
        solo = []
        for kind, req in mix:
            st, body = srv.post("/v1/completions", json.dumps(req))
            solo.append(json.loads(body)["choices"][0]["text"] if st == 200 else None)
    finally:
        srv.stop()
    c.ok(all(s is not None for s in solo), "solo answers for the whole mix")
    for tp in a.tp:
        run_mix(c, model, tp, mix, solo)
    return c.finish()


if __name__ == "__main__":
    sys.exit(main())
