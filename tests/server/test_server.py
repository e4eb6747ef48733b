#!/usr/bin/env python3
"""test_server.py - `tpllm serve` against real clients: the official `openai` Python client
(completions, chat, streaming, stop strings, logprobs, seeds), curl for Server-Sent Events,
prometheus_client's parser for /metrics; batch invariance (8 concurrent greedy requests
return what each returns alone and what `tpllm generate` prints); a KV cache of a few
sequences under 32 requests (all complete, preemptions > 0, tracker peak within the plan);
bad requests get their 4xx and the server keeps serving; a client that goes away is
cancelled. At tp = 1 and tp = 2 (mpirun). Exit 0 when every check passed, 1 otherwise, 77
when the Python clients are missing.

usage: .pydeps/bin/python tests/server/test_server.py [--tp 1 2] [--quick]
"""
import argparse
import concurrent.futures as cf
import json
import os
import socket
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from serverlib import Checks, Server, generate, synth  # noqa: E402

try:
    import openai
    from prometheus_client.parser import text_string_to_metric_families
except ImportError as err:  # the clients come from tests/requirements.txt (make pydeps)
    print(f"skipped: {err} (run make pydeps)")
    sys.exit(77)

PROMPTS = ["The capital of France is", "Once upon a time", "hello world", "In 1905 Einstein",
           "The quick brown fox", "def fibonacci(n):", "Water boils at", "My favourite colour is"]


def metrics(srv):
    st, text = srv.get("/metrics")
    fam = {}
    for f in text_string_to_metric_families(text):
        for s in f.samples:
            fam.setdefault(s.name, []).append(s)
    return st, fam


def value(fam, name, **labels):
    for s in fam.get(name, []):
        if all(s.labels.get(k) == v for k, v in labels.items()):
            return s.value
    return None


def basic(c, srv, model, tp, quick):
    cl = openai.OpenAI(base_url=srv.base + "/v1", api_key="none", max_retries=0, timeout=120)
    st, body = srv.get("/health")
    c.ok(st == 200 and json.loads(body)["status"] == "ok", f"tp={tp}: /health is 200 once loaded", body)
    models = cl.models.list()
    name = models.data[0].id
    c.ok(len(models.data) == 1, f"tp={tp}: /v1/models lists the model ({name})")

    # greedy completion = tpllm generate, text and tokens
    want_text, want_toks = generate(model, PROMPTS[0], 24, "--temp", "0", "--ignore-eos", np=tp)
    r = cl.completions.create(model=name, prompt=PROMPTS[0], max_tokens=24, temperature=0,
                              extra_body={"ignore_eos": True}, logprobs=3)
    c.ok(r.choices[0].text == want_text, f"tp={tp}: greedy completion equals `tpllm generate`",
         f"{r.choices[0].text!r} vs {want_text!r}")
    c.ok(r.usage.completion_tokens == 24 and r.choices[0].finish_reason == "length",
         f"tp={tp}: usage and finish_reason 'length'", r.usage)
    lp = r.choices[0].logprobs
    c.ok(lp is not None and len(lp.token_logprobs) == 24 and all(x <= 0 for x in lp.token_logprobs),
         f"tp={tp}: logprobs: 24 log-probabilities <= 0")
    # greedy: the chosen token is the most likely, so it leads its top_logprobs
    c.ok(lp is not None and all(1 <= len(t) <= 3 and abs(max(t.values()) - x) < 1e-6
                                for t, x in zip(lp.top_logprobs, lp.token_logprobs)),
         f"tp={tp}: top_logprobs: up to 3 alternatives per token, led by the greedy choice",
         [(t, x) for t, x in zip(lp.top_logprobs, lp.token_logprobs) if not (1 <= len(t) <= 3 and abs(max(t.values()) - x) < 1e-6)] if lp else None)

    # streaming gives the same text, then usage, then [DONE] (curl below)
    s = cl.completions.create(model=name, prompt=PROMPTS[0], max_tokens=24, temperature=0, stream=True,
                              extra_body={"ignore_eos": True}, stream_options={"include_usage": True})
    parts, usage, finish, n_tok_chunks = [], None, None, 0
    for ch in s:
        if ch.choices:
            parts.append(ch.choices[0].text)
            finish = ch.choices[0].finish_reason or finish
            n_tok_chunks += ch.choices[0].finish_reason is None
        if ch.usage:
            usage = ch.usage
    c.ok("".join(parts) == want_text and finish == "length" and usage and usage.completion_tokens == 24,
         f"tp={tp}: streamed completion: same text, finish_reason, usage chunk", ("".join(parts), finish, usage))
    c.ok(n_tok_chunks == 24, f"tp={tp}: one stream chunk per generated token (also tokens with no text yet)",
         n_tok_chunks)

    # stop strings: a piece of the greedy text ends it just before
    words = want_text.split()
    stop = words[len(words) // 2] if len(words) > 2 else None
    if stop:
        r = cl.completions.create(model=name, prompt=PROMPTS[0], max_tokens=24, temperature=0, stop=[stop],
                                  extra_body={"ignore_eos": True})
        c.ok(r.choices[0].finish_reason == "stop" and r.choices[0].text == want_text[:want_text.index(stop)],
             f"tp={tp}: stop string {stop!r} ends the text before it", r.choices[0].text)

    # seeded sampling: the same seed gives the same text, and what generate gives with the same filters
    kw = dict(model=name, prompt=PROMPTS[1], max_tokens=20, temperature=0.9, seed=1234, extra_body={"ignore_eos": True})
    a, b = cl.completions.create(**kw).choices[0].text, cl.completions.create(**kw).choices[0].text
    g, _ = generate(model, PROMPTS[1], 20, "--temp", "0.9", "--seed", "1234", "--top-k", "0", "--top-p", "1",
                    "--min-p", "0", "--repeat-last-n", "-1", "--ignore-eos", np=tp)
    c.ok(a == b == g, f"tp={tp}: seed 1234 at temperature 0.9: the same text twice and as `tpllm generate`",
         (a, b, g))

    # chat (the synthetic model has no template: the server was started with --chat-format chatml)
    want_chat, _ = generate(model, "Say hi", 12, "--temp", "0", "--chat", "--chat-format", "chatml", "--ignore-eos",
                            np=tp)
    r = cl.chat.completions.create(model=name, messages=[{"role": "user", "content": "Say hi"}], max_tokens=12,
                                   temperature=0, extra_body={"ignore_eos": True})
    c.ok(r.choices[0].message.content == want_chat and r.choices[0].message.role == "assistant",
         f"tp={tp}: chat completion equals `tpllm generate --chat`", (r.choices[0].message.content, want_chat))
    r = cl.chat.completions.create(model=name, messages=[{"role": "user", "content": "Say hi"}], max_tokens=6,
                                   temperature=0, logprobs=True, top_logprobs=2, extra_body={"ignore_eos": True})
    cont = r.choices[0].logprobs.content if r.choices[0].logprobs else []
    c.ok(len(cont) == 6 and all(len(x.top_logprobs) == 2 and abs(x.top_logprobs[0].logprob - x.logprob) < 1e-6 and
                                x.top_logprobs[0].logprob >= x.top_logprobs[1].logprob for x in cont),
         f"tp={tp}: chat logprobs with top_logprobs=2", (len(cont), [x for x in cont if not (len(x.top_logprobs) == 2 and abs(x.top_logprobs[0].logprob - x.logprob) < 1e-6 and x.top_logprobs[0].logprob >= x.top_logprobs[1].logprob)]))
    s = cl.chat.completions.create(model=name, messages=[{"role": "user", "content": "Say hi"}], max_tokens=12,
                                   temperature=0, stream=True, extra_body={"ignore_eos": True})
    text = "".join(ch.choices[0].delta.content or "" for ch in s if ch.choices)
    c.ok(text == want_chat, f"tp={tp}: streamed chat: the same text", text)

    # curl: the raw event stream
    out = subprocess.run(["curl", "-sN", "--max-time", "60", srv.base + "/v1/completions", "-H",
                          "Content-Type: application/json", "-d",
                          json.dumps({"prompt": PROMPTS[2], "max_tokens": 5, "temperature": 0, "stream": True})],
                         capture_output=True, text=True, timeout=90).stdout
    events = [l for l in out.split("\n") if l.startswith("data: ")]
    c.ok(len(events) >= 3 and events[-1] == "data: [DONE]" and all(json.loads(e[6:])["object"] == "text_completion"
                                                                 for e in events[:-1]),
         f"tp={tp}: curl sees SSE events ending in data: [DONE]", out[-300:])

    # batch invariance: 8 concurrent greedy requests = each alone = tpllm generate
    n_conc = 4 if quick else 8
    alone = [generate(model, p, 16, "--temp", "0", "--ignore-eos", np=tp)[0] for p in PROMPTS[:n_conc]]

    def one(p):
        return cl.completions.create(model=name, prompt=p, max_tokens=16, temperature=0,
                                     extra_body={"ignore_eos": True}).choices[0].text
    with cf.ThreadPoolExecutor(n_conc) as ex:
        got = list(ex.map(one, PROMPTS[:n_conc]))
    c.ok(got == alone, f"tp={tp}: {n_conc} concurrent greedy requests return what each returns alone",
         [(g, a) for g, a in zip(got, alone) if g != a])
    st, fam = metrics(srv)
    c.ok(st == 200 and value(fam, "tpllm_generation_tokens_total") >= 16 * n_conc,
         f"tp={tp}: /metrics parses (prometheus_client) and counts the tokens")
    ranks = {s.labels["rank"] for s in fam.get("tpllm_memory_used_bytes", [])}
    c.ok(ranks == {str(r) for r in range(tp)} and value(fam, "tpllm_memory_used_bytes", rank="0", owner="weights") > 0,
         f"tp={tp}: /metrics has every rank's memory by owner", sorted(ranks))
    for h in ("tpllm_time_to_first_token_seconds", "tpllm_inter_token_latency_seconds"):
        c.ok(value(fam, h + "_count") and value(fam, h + "_count") > 0, f"tp={tp}: {h} histogram observed")

    # a client that goes away: its sequence is cancelled
    before = value(fam, "tpllm_requests_cancelled_total")
    sk = socket.create_connection(("127.0.0.1", srv.port), timeout=30)
    body = json.dumps({"prompt": PROMPTS[3], "max_tokens": 1000, "temperature": 0, "stream": True,
                       "ignore_eos": True}).encode()
    sk.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: " +
               str(len(body)).encode() + b"\r\n\r\n" + body)
    sk.recv(4096)
    sk.close()
    t0, after = time.time(), before
    while time.time() - t0 < 30 and after == before:
        time.sleep(0.2)
        after = value(metrics(srv)[1], "tpllm_requests_cancelled_total")
    c.ok(after == before + 1, f"tp={tp}: a client that disconnects is cancelled", (before, after))
    return alone


def bad_requests(c, srv, tp):
    cases = [
        ("broken JSON", b'{"prompt": "hi", ', 400),
        ("wrong type", json.dumps({"prompt": "hi", "max_tokens": "ten"}), 400),
        ("negative max_tokens", json.dumps({"prompt": "hi", "max_tokens": -5}), 400),
        ("huge max_tokens", json.dumps({"prompt": "hi", "max_tokens": 10 ** 9}), 400),
        ("temperature out of range", json.dumps({"prompt": "hi", "temperature": 7}), 400),
        ("n > 1", json.dumps({"prompt": "hi", "n": 3}), 400),
        ("no prompt", json.dumps({"max_tokens": 3}), 400),
        ("unknown model", json.dumps({"model": "gpt-17", "prompt": "hi"}), 404),
        ("oversized body", json.dumps({"prompt": "x" * (3 << 20)}), 413),
    ]
    for what, body, want in cases:
        st, text = srv.post("/v1/completions", body)
        try:
            err = json.loads(text)["error"]
            shaped = bool(err["message"]) and "type" in err
        except (ValueError, KeyError, TypeError):
            shaped = False
        c.ok(st == want and shaped, f"tp={tp}: {what} -> {want} with an OpenAI error body", (st, text[:200]))
    st, _ = srv.get("/v1/nowhere")
    c.ok(st == 404, f"tp={tp}: unknown route -> 404")
    st, body = srv.post("/v1/completions", json.dumps({"prompt": "hi", "max_tokens": 2, "temperature": 0}))
    c.ok(st == 200, f"tp={tp}: the server keeps serving after bad requests", body[:200])


def keyed(c, model):
    srv = Server(model, args=["--api-key", "sekrit", "--chat-format", "chatml"])
    try:
        st, _ = srv.get("/health")
        c.ok(st == 200, "--api-key: /health needs no key")
        st, text = srv.post("/v1/completions", json.dumps({"prompt": "hi", "max_tokens": 2}))
        c.ok(st == 401, "--api-key: no key -> 401", text[:200])
        st, _ = srv.post("/v1/completions", json.dumps({"prompt": "hi", "max_tokens": 2}),
                         headers={"Authorization": "Bearer wrong"})
        c.ok(st == 401, "--api-key: wrong key -> 401")
        st, _ = srv.get("/metrics")
        c.ok(st == 401, "--api-key: /metrics needs the key")
        cl = openai.OpenAI(base_url=srv.base + "/v1", api_key="sekrit", max_retries=0, timeout=60)
        r = cl.completions.create(model=cl.models.list().data[0].id, prompt="hi", max_tokens=3, temperature=0)
        c.ok(r.usage.completion_tokens >= 1, "--api-key: the openai client with the key is served")
    finally:
        c.ok(srv.stop() == 0, "--api-key server stops on SIGTERM with status 0")


def pressure(c, model, tp, n_req):
    """A cache of 12 blocks (192 tokens) for 8 sequences of ~70 tokens each: preemption."""
    srv = Server(model, np=tp, args=["--kv-blocks", "12", "--max-seqs", "8", "--chat-format", "chatml",
                                     "--device-mem", "48MiB"])
    try:
        cl = openai.OpenAI(base_url=srv.base + "/v1", api_key="none", max_retries=0, timeout=300)
        name = cl.models.list().data[0].id
        prompts = [f"{PROMPTS[i % len(PROMPTS)]} {i}" for i in range(n_req)]

        def one(p):
            return cl.completions.create(model=name, prompt=p, max_tokens=60, temperature=0,
                                         extra_body={"ignore_eos": True}).choices[0].text
        with cf.ThreadPoolExecutor(n_req) as ex:
            got = list(ex.map(one, prompts))
        alone = {}
        for p in prompts[:6]:
            alone[p] = one(p)  # one at a time: nothing to preempt
        c.ok(all(g for g in got), f"tp={tp}: {n_req} requests on a 12-block cache all complete")
        c.ok(all(got[i] == alone[p] for i, p in enumerate(prompts[:6])),
             f"tp={tp}: preempted and recomputed requests return what they return alone")
        st, fam = metrics(srv)
        pre = value(fam, "tpllm_preemptions_total")
        c.ok(pre and pre > 0, f"tp={tp}: preemptions happened ({pre})")
        c.ok(value(fam, "tpllm_kv_blocks_total") == 12, f"tp={tp}: /metrics shows the 12 blocks in force")
        for r in range(tp):
            peak = value(fam, "tpllm_memory_total_peak_bytes", rank=str(r))
            budget = value(fam, "tpllm_memory_budget_bytes", rank=str(r))
            c.ok(peak is not None and budget and peak <= budget,
                 f"tp={tp}: rank {r} tracker peak {peak:.0f} within the plan's budget {budget:.0f}")
    finally:
        c.ok(srv.stop() == 0, f"tp={tp}: the server stops on SIGTERM with status 0")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tp", type=int, nargs="*", default=[1, 2])
    ap.add_argument("--quick", action="store_true", help="fewer concurrent requests")
    a = ap.parse_args()
    c = Checks()
    work = tempfile.mkdtemp(prefix="tpllm-server-test-")
    model = synth(os.path.join(work, "m.gguf"), "--arch", "llama", "--dim", "256", "--layers", "2", "--heads", "4",
                  "--kv-heads", "2", "--ff", "512", "--vocab", "1003", "--type", "q8_0", "--seed", "11")
    results = {}
    for tp in a.tp:
        srv = Server(model, np=tp, args=["--chat-format", "chatml", "--max-seqs", "8"])
        try:
            results[tp] = basic(c, srv, model, tp, a.quick)
            bad_requests(c, srv, tp)
        finally:
            c.ok(srv.stop() == 0, f"tp={tp}: the server stops on SIGTERM with status 0")
        pressure(c, model, tp, 16 if a.quick else 32)
    if len(results) > 1:
        vals = list(results.values())
        c.ok(all(v == vals[0] for v in vals), f"greedy texts are the same at tp={list(results)}")
    keyed(c, model)
    return c.finish()


if __name__ == "__main__":
    sys.exit(main())
