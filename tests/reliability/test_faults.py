#!/usr/bin/env python3
"""test_faults.py - `tpllm serve` under rank faults and shutdown (bounded in time):

  1. a rank that stops answering (SIGSTOP of rank 1): /health turns 503 within a few
     seconds while the coordinator waits in a collective; with TPLLM_COMM_TIMEOUT=4 the
     job then ends, the log naming the rank that did not answer;
  2. kill -9 of rank 1 mid-generation: within 10 s the job is down, the streaming client
     gets an error or a closed connection (not a hang), and no tpllm process is left;
  3. SIGTERM to rank 0 with requests in flight: each client gets a complete answer or a
     final event (finish_reason "cancelled"), the server exits 0, no process is left.

Exit 0 when every check passed, 1 otherwise (77 without mpirun).
"""
import concurrent.futures as cf
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "server"))
from serverlib import Checks, Server, synth  # noqa: E402


def children_pids(root):
    """Every descendant of root (mpirun's ranks)."""
    out = subprocess.run(["ps", "-e", "-o", "pid=,ppid="], capture_output=True, text=True).stdout
    kids = {}
    for line in out.split("\n"):
        if line.strip():
            p, pp = map(int, line.split())
            kids.setdefault(pp, []).append(p)
    todo, seen = [root], []
    while todo:
        p = todo.pop()
        for k in kids.get(p, []):
            seen.append(k)
            todo.append(k)
    return seen


def tpllm_ranks(srv):
    """(rank 0 pid, [other rank pids]) of a server started under mpirun."""
    pids = [p for p in children_pids(srv.proc.pid)
            if os.path.exists(f"/proc/{p}/cmdline") and b"tpllm\x00serve" in open(f"/proc/{p}/cmdline", "rb").read()]
    return srv.rank0, [p for p in pids if p != srv.rank0]


def alive(pids):
    return [p for p in pids if os.path.exists(f"/proc/{p}") and
            open(f"/proc/{p}/stat").read().split()[2] != "Z"]


def stream_until_error(base, n, timeout):
    """Stream a long completion; ('done'|'error'|'closed'|'hang', tokens seen, seconds)."""
    body = json.dumps({"prompt": "The river runs", "max_tokens": n, "temperature": 0, "ignore_eos": True,
                       "stream": True}).encode()
    req = urllib.request.Request(base + "/v1/completions", data=body, headers={"Content-Type": "application/json"})
    t0, seen = time.time(), 0
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            for line in r:
                if line.startswith(b"data: [DONE]"):
                    return "done", seen, time.time() - t0
                if line.startswith(b"data: {"):
                    ev = json.loads(line[6:])
                    if "error" in ev:
                        return "error", seen, time.time() - t0
                    seen += 1
        return "closed", seen, time.time() - t0
    except (TimeoutError, socket.timeout):
        return "hang", seen, time.time() - t0
    except Exception:  # connection reset or refused: the job went down
        return "closed", seen, time.time() - t0


def main():
    if not shutil.which("mpirun"):
        print("skipped: no mpirun")
        return 77
    c = Checks()
    work = tempfile.mkdtemp(prefix="tpllm-faults-")
    # big enough that a 400-token stream lasts a few seconds on a CPU
    model = synth(os.path.join(work, "m.gguf"), "--arch", "llama", "--dim", "512", "--layers", "4", "--heads", "8",
                  "--kv-heads", "4", "--ff", "1536", "--vocab", "4000", "--type", "q8_0", "--seed", "5")

    # 1. a rank that stops answering
    srv = Server(model, np=2, env={"TPLLM_COMM_TIMEOUT": "4"})
    r0, others = tpllm_ranks(srv)
    c.ok(len(others) == 1, "two ranks found under mpirun", others)
    st, _ = srv.get("/health")
    c.ok(st == 200, "/health 200 before the fault")
    os.kill(others[0], signal.SIGSTOP)
    t0, st503 = time.time(), None
    while time.time() - t0 < 12:
        try:
            st, body = srv.get("/health", timeout=2)
        except Exception:
            break
        if st == 503:
            st503 = time.time() - t0
            break
        time.sleep(0.25)
    c.ok(st503 is not None and st503 < 8, f"/health is 503 {st503 and round(st503, 1)} s after rank 1 stopped answering")
    try:
        srv.proc.wait(30)
        down = True
    except subprocess.TimeoutExpired:
        down = False
    log = srv.text()
    c.ok(down and srv.proc.returncode != 0, f"the job ended by itself (status {srv.proc.returncode})")
    c.ok("rank 1" in log and ("did not complete within" in log or "not arrived" in log),
         "the log names rank 1 as the one that did not answer", log[-600:])
    for p in others:
        try:
            os.kill(p, signal.SIGCONT)
            os.kill(p, signal.SIGKILL)
        except ProcessLookupError:
            pass
    if not down:
        srv.stop()

    # 2. kill -9 of rank 1 mid-generation
    srv = Server(model, np=2)
    r0, others = tpllm_ranks(srv)
    with cf.ThreadPoolExecutor(1) as ex:
        fut = ex.submit(stream_until_error, srv.base, 2000, 60)
        time.sleep(1.5)
        t_kill = time.time()
        os.kill(others[0], signal.SIGKILL)
        how, seen, _ = fut.result(90)
    t_client = time.time() - t_kill
    c.ok(how in ("closed", "error") and seen > 0 and t_client < 10,
         f"kill -9 of rank 1: the streaming client got '{how}' after {seen} tokens, {t_client:.1f} s after the kill")
    try:
        srv.proc.wait(10 - min(t_client, 9))
        down = True
    except subprocess.TimeoutExpired:
        down = False
    t_down = time.time() - t_kill
    c.ok(down, f"kill -9 of rank 1: the job is down {t_down:.1f} s after the kill (bound 10 s)")
    time.sleep(0.5)
    left = alive([r0] + others)
    c.ok(not left, "kill -9 of rank 1: no tpllm process is left", left)
    if not down:
        os.killpg(srv.proc.pid, signal.SIGKILL)
    log = srv.text()
    c.ok("rank 1" in log or "exited on signal 9" in log or "process rank 1" in log,
         "kill -9 of rank 1: the log names the rank", log[-600:])

    # 3. SIGTERM to rank 0 with requests in flight
    srv = Server(model, np=2)
    r0, others = tpllm_ranks(srv)
    with cf.ThreadPoolExecutor(4) as ex:
        futs = [ex.submit(stream_until_error, srv.base, 300, 60) for _ in range(4)]
        time.sleep(1.5)
        t_term = time.time()
        os.kill(r0, signal.SIGTERM)
        res = [f.result(90) for f in futs]
    c.ok(all(h == "done" for h, _, _ in res),
         f"SIGTERM: every in-flight client got its final event ({[h for h, _, _ in res]})")
    try:
        srv.proc.wait(20)
        rc = srv.proc.returncode
    except subprocess.TimeoutExpired:
        rc = None
    c.ok(rc == 0, f"SIGTERM: the server exits 0 ({rc}) in {time.time() - t_term:.1f} s")
    time.sleep(0.5)
    left = alive([r0] + others)
    c.ok(not left, "SIGTERM: no tpllm process is left", left)
    if rc is None:
        os.killpg(srv.proc.pid, signal.SIGKILL)
    return c.finish()


if __name__ == "__main__":
    sys.exit(main())
