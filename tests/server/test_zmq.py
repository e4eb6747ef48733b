#!/usr/bin/env python3
"""test_zmq.py - the ZeroMQ front end of `tpllm serve --zmq` (docs/api.md, "ZeroMQ") with
pyzmq: a synthetic model served on 127.0.0.1 (HTTP on a free port, ZeroMQ on another free
port), checked against `tpllm generate`:

  - health answers ok once the model is loaded (bounded wait);
  - a greedy submit streams one token event per token, then a done whose usage counts them,
    and its token ids are `tpllm generate --temp 0 --ignore-eos`'s;
  - 4 submits at once from one DEALER each get the tokens they get alone;
  - a chat-less model refuses "messages"; a REQ-style envelope is answered in kind;
  - cancel ends a long job with finish_reason "cancelled";
  - malformed JSON, an unknown op, a missing id, a duplicate id, a bad field, a wrong model,
    an oversized message each get their error event (code and param) and the server keeps
    answering;
  - a client that goes away mid-job does not stop the others;
  - SIGTERM stops the server (bounded; SIGKILL after 20 s is a failure).

Exit status: 0 when every check passed, 1 otherwise, 77 when pyzmq is missing."""
import json
import os
import socket
import sys
import tempfile
import time

try:
    import zmq
except ImportError:
    print("skip: pyzmq is not installed (.pydeps/bin/pip install pyzmq)")
    sys.exit(77)

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import serverlib  # noqa: E402

PROMPT = "The quick brown fox"
N = 16


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Client:
    """A DEALER socket; every receive is bounded in time."""

    def __init__(self, ctx, endpoint, kind=zmq.DEALER):
        self.s = ctx.socket(kind)
        self.s.setsockopt(zmq.LINGER, 0)
        self.s.connect(endpoint)

    def send(self, msg):
        self.s.send(msg if isinstance(msg, bytes) else json.dumps(msg).encode())

    def recv(self, timeout=30.0):
        if not self.s.poll(int(timeout * 1000)):
            raise TimeoutError(f"no reply within {timeout} s")
        return json.loads(self.s.recv())

    def collect(self, ids, timeout=120.0):
        """Events of the jobs `ids` until each has its done/error: {id: (tokens, events, end)}."""
        out = {i: ([], [], None) for i in ids}
        left = set(ids)
        t_end = time.time() + timeout
        while left:
            r = self.recv(max(0.1, t_end - time.time()))
            i = r.get("id")
            if i not in out:
                raise RuntimeError(f"a reply for an unexpected id: {r}")
            toks, evs, _ = out[i]
            evs.append(r)
            if r["event"] == "token":
                toks.append(r["token"])
            else:
                out[i] = (toks, evs, r)
                left.discard(i)
        return out

    def close(self):
        self.s.close(0)


def metrics(srv):
    """The unlabelled samples of GET /metrics."""
    code, body = srv.get("/metrics")
    out = {}
    for ln in body.splitlines() if code == 200 else []:
        parts = ln.split()
        if len(parts) == 2 and not ln.startswith("#") and "{" not in parts[0]:
            out[parts[0]] = float(parts[1])
    return out


def wait_healthy(c, timeout=60.0):
    t_end = time.time() + timeout
    while time.time() < t_end:
        c.send({"op": "health"})
        try:
            r = c.recv(2.0)
        except TimeoutError:
            continue
        if r.get("event") == "health" and r.get("ok") is True:
            return True
        time.sleep(0.1)
    return False


def main():
    ck = serverlib.Checks()
    tmp = tempfile.mkdtemp(prefix="tpllm-zmq-")
    model = serverlib.synth(os.path.join(tmp, "m.gguf"), "--arch", "llama", "--dim", "256", "--layers", "2",
                            "--heads", "4", "--kv-heads", "2", "--ff", "512", "--vocab", "1000", "--type", "q8_0",
                            "--seed", "3")
    _, want = serverlib.generate(model, PROMPT, N, "--temp", "0", "--ignore-eos")
    prompts = ["Hello world", "Once upon a time", "1 2 3 4", "zmq"]
    alone = [serverlib.generate(model, p, 12, "--temp", "0", "--ignore-eos")[1] for p in prompts]
    if not ck.ok(len(want) == N and all(len(a) == 12 for a in alone), "tpllm generate gives the reference tokens",
                 f"{len(want)} tokens"):
        return ck.finish()

    endpoint = f"tcp://127.0.0.1:{free_port()}"
    srv = serverlib.Server(model, args=["--zmq", endpoint])
    ctx = zmq.Context()
    c = Client(ctx, endpoint)
    try:
        if not ck.ok(wait_healthy(c), "health answers ok within 60 s"):
            return ck.finish()

        # greedy, against tpllm generate
        c.send({"op": "submit", "id": "g1", "prompt": PROMPT, "temperature": 0, "max_tokens": N, "ignore_eos": True,
                "logprobs": 3})
        toks, evs, end = c.collect(["g1"])["g1"]
        ck.ok(len(toks) == N, f"the greedy submit streams {N} token events", len(toks))
        ck.ok(toks == want, "its token ids equal tpllm generate's", f"{toks} vs {want}")
        ck.ok(all(isinstance(e.get("text"), str) for e in evs[:-1]), "every token event has a text")
        ck.ok(all(isinstance(e.get("logprob"), float) and e["logprob"] <= 0 for e in evs[:-1]),
              "logprobs asked: every token event has its logprob", evs[0])
        tops = [e.get("top_logprobs") for e in evs[:-1]]
        ck.ok(all(isinstance(t, list) and 1 <= len(t) <= 3 and t[0].get("token") == e["token"]
                  and abs(t[0].get("logprob", 1) - e["logprob"]) < 1e-5 and isinstance(t[0].get("text"), str)
                  and all(t[i]["logprob"] >= t[i + 1]["logprob"] for i in range(len(t) - 1))
                  for t, e in zip(tops, evs)),
              "logprobs 3: every token event has its 3 alternatives, the greedy token first", tops[:1])
        ck.ok(end["event"] == "done" and end["finish_reason"] == "length", "it ends with done, finish_reason length",
              end)
        u = end.get("usage", {})
        ck.ok(u.get("completion_tokens") == N and u.get("prompt_tokens", 0) > 0
              and u.get("total_tokens") == u.get("prompt_tokens", 0) + N, "done's usage counts the tokens", u)
        t = end.get("timing", {})
        ck.ok(all(isinstance(t.get(k), (int, float)) and t[k] >= 0 for k in ("queue_s", "first_token_s", "total_s")),
              "done has its timings", t)

        # the same without logprobs: no logprob field
        c.send({"op": "submit", "id": "g2", "prompt": PROMPT, "temperature": 0, "max_tokens": 4, "ignore_eos": True})
        toks, evs, end = c.collect(["g2"])["g2"]
        ck.ok(toks == want[:4] and not any("logprob" in e or "top_logprobs" in e for e in evs),
              "without logprobs: the same tokens, no logprob field", evs[:1])

        # 4 at once from one DEALER
        for i, p in enumerate(prompts):
            c.send({"op": "submit", "id": f"c{i}", "prompt": p, "temperature": 0, "max_tokens": 12,
                    "ignore_eos": True})
        got = c.collect([f"c{i}" for i in range(4)])
        for i in range(4):
            toks, _, end = got[f"c{i}"]
            ck.ok(toks == alone[i] and end["event"] == "done", f"concurrent submit c{i} gets its tokens alone",
                  f"{toks} vs {alone[i]} ({end})")

        # cancel
        c.send({"op": "submit", "id": "long", "prompt": PROMPT, "temperature": 0, "max_tokens": 1000,
                "ignore_eos": True})
        first = c.recv()
        ck.ok(first.get("id") == "long" and first.get("event") == "token", "the long job streams", first)
        c.send({"op": "cancel", "id": "long"})
        toks, _, end = c.collect(["long"])["long"]
        ck.ok(end["event"] == "done" and end.get("finish_reason") == "cancelled" and len(toks) + 1 < 1000,
              "cancel ends it with finish_reason cancelled", f"{end} after {len(toks) + 1} tokens")
        c.send({"op": "cancel", "id": "long"})
        r = c.recv()
        ck.ok(r.get("event") == "error" and r.get("code") == 404 and r.get("param") == "id",
              "cancelling a job that has ended: 404", r)

        # errors: code and param, and the server keeps answering
        bad = [
            (b"{not json", 400, None, "malformed JSON"),
            (b"[1, 2]", 400, None, "a message that is not an object"),
            ({"op": "frobnicate", "id": "x"}, 400, "op", "an unknown op"),
            ({"id": "x", "prompt": "hi"}, 400, "op", "no op"),
            ({"op": "submit", "prompt": "hi"}, 400, "id", "a submit without id"),
            ({"op": "submit", "id": "x" * 65, "prompt": "hi"}, 400, "id", "an id over 64 bytes"),
            ({"op": "submit", "id": "b1", "prompt": "hi", "temperature": 5}, 400, "temperature", "temperature 5"),
            ({"op": "submit", "id": "b2", "prompt": "hi", "max_tokens": "many"}, 400, "max_tokens",
             "max_tokens as a string"),
            ({"op": "submit", "id": "b3", "prompt": "hi", "model": "no-such-model"}, 404, "model", "a wrong model"),
            ({"op": "submit", "id": "b4"}, 400, "prompt", "neither prompt nor messages"),
            ({"op": "submit", "id": "b5", "prompt": "hi", "messages": []}, 400, "messages",
             "both prompt and messages"),
            ({"op": "submit", "id": "b6", "messages": [{"role": "user", "content": "hi"}]}, 400, "messages",
             "a chat request to a model without a chat template"),
            ({"op": "submit", "id": "b7", "prompt": "hi", "n": 3}, 400, "n", "n 3"),
            (b'{"op": "submit", "id": "b8", "id": "b9", "prompt": "hi"}', 400, None, "a duplicate key"),
            (json.dumps({"op": "submit", "id": "big", "prompt": "x" * (1 << 20)}).encode(), 400, None,
             "a message over 1 MiB"),
        ]
        for msg, code, param, what in bad:
            c.send(msg)
            try:
                r = c.recv()
            except TimeoutError as e:
                ck.ok(False, f"{what}: an error event", e)
                continue
            ck.ok(r.get("event") == "error" and r.get("code") == code and r.get("param") == param
                  and isinstance(r.get("message"), str) and r["message"],
                  f"{what}: error {code} (param {param})", r)
        c.s.send_multipart([b"two", b"frames"])
        r = c.recv()
        ck.ok(r.get("event") == "error" and r.get("code") == 400, "a message of two frames: error 400", r)

        # a duplicate id while the first is in flight
        c.send({"op": "submit", "id": "dup", "prompt": PROMPT, "temperature": 0, "max_tokens": 200,
                "ignore_eos": True})
        c.send({"op": "submit", "id": "dup", "prompt": PROMPT, "max_tokens": 2})
        dup_err, n_tok, end = None, 0, None
        t_end = time.time() + 60
        while end is None and time.time() < t_end:
            r = c.recv()
            if r.get("event") == "error" and dup_err is None:
                dup_err = r
            elif r.get("event") == "token":
                n_tok += 1
            else:
                end = r
        ck.ok(dup_err is not None and dup_err.get("code") == 400 and dup_err.get("param") == "id",
              "a second submit with an id in flight: error 400 (param id)", dup_err)
        ck.ok(end is not None and end.get("event") == "done" and n_tok == 200, "and the first one runs to its end",
              f"{n_tok} tokens, {end}")

        # REQ-style envelope: [empty, payload] answered as [empty, reply]
        c.s.send_multipart([b"", json.dumps({"op": "health", "id": "h"}).encode()])
        if c.s.poll(10000):
            frames = c.s.recv_multipart()
            ok = len(frames) == 2 and frames[0] == b"" and json.loads(frames[1]).get("ok") is True
            ck.ok(ok, "an [empty, payload] message is answered with [empty, reply]", frames)
        else:
            ck.ok(False, "an [empty, payload] message is answered")
        req = Client(ctx, endpoint, zmq.REQ)
        req.send({"op": "health"})
        r = req.recv(10)
        ck.ok(r.get("event") == "health" and r.get("ok") is True, "a REQ socket gets its health answer", r)
        req.close()

        # a client that goes away with jobs in flight; the others go on
        gone = Client(ctx, endpoint)
        for i in range(3):
            gone.send({"op": "submit", "id": f"z{i}", "prompt": PROMPT, "max_tokens": 1000, "ignore_eos": True,
                       "temperature": 0})
        gone.recv()
        gone.close()
        time.sleep(0.3)
        c.send({"op": "submit", "id": "after", "prompt": PROMPT, "temperature": 0, "max_tokens": N,
                "ignore_eos": True})
        toks, _, end = c.collect(["after"])["after"]
        ck.ok(toks == want and end["event"] == "done", "after a client went away the server still serves", end)
        t_end = time.time() + 30
        m = {}
        while time.time() < t_end:  # its jobs are cancelled when their next token finds no one to go to
            m = metrics(srv)
            if m.get("tpllm_requests_running") == 0 and m.get("tpllm_requests_waiting") == 0:
                break
            time.sleep(0.2)
        ck.ok(m.get("tpllm_requests_running") == 0 and m.get("tpllm_requests_waiting") == 0
              and m.get("tpllm_requests_cancelled_total", 0) >= 4,
              "the gone client's jobs were cancelled (nothing left running)",
              {k: v for k, v in m.items() if k.startswith("tpllm_requests")})
        c.send({"op": "health"})
        r = c.recv()
        ck.ok(r.get("ok") is True, "health is still ok at the end", r)
    except (TimeoutError, RuntimeError, KeyError, ValueError) as e:
        ck.ok(False, "the ZeroMQ exchange", repr(e))
    finally:
        c.close()
        ctx.term()
        try:
            status = srv.stop(20)
            ck.ok(status == 0, "SIGTERM stops the server with status 0", status)
        except RuntimeError as e:
            ck.ok(False, "SIGTERM stops the server within 20 s", e)
        if ck.failed:
            print(srv.text()[-3000:])
    return ck.finish()


if __name__ == "__main__":
    sys.exit(main())
