#!/usr/bin/env python3
"""How often tpllm's greedy continuation follows llama.cpp's, beside how often llama.cpp's
own evaluation modes follow each other (a report for docs/generation.md, not a test).

For each prompt: llama.cpp's 32 greedy tokens decoded token by token with standard
attention are the reference. Compared with it, by the number of leading tokens that are
identical:
  - llama.cpp token by token with flash attention,
  - llama.cpp batched: the first step at which evaluating the reference tokens as one
    batch ranks another token first (standard and flash attention),
  - tpllm generate (tp = 1 unless --np), greedy.

Usage (from the repository root, after `make build golden-deps`):
    .pydeps/bin/python tests/golden/greedy_agreement.py [--model M] [--tpllm build/tpllm] [--np 1]
"""
import argparse, os, subprocess, sys
import numpy as np
import llama_cpp

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PROMPTS = [
    "The capital of France is", "Once upon a time", "The best way to learn a language is",
    "In 1969, astronauts", "def fibonacci(n):", "The three primary colors are", "Water boils at",
    "My favourite recipe for bread", "The theory of relativity states that", "Here is a list of fruits:",
    "The quick brown fox", "To be or not to be", "The meeting is scheduled for", "Photosynthesis is the process",
    "import numpy as np\n", "The largest planet in the solar system", "Dear Sir or Madam,",
    "The stock market today", "A haiku about autumn:", "The recipe calls for two cups of",
]
N = 32


def prefix(a, b):
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def llama_greedy(llm, ids):
    llm.reset()
    llm.eval(ids)
    out = []
    for _ in range(N):
        t = int(np.argmax(np.array(llm.scores[llm.n_tokens - 1])))
        out.append(t)
        llm.eval([t])
    return out


def llama_batch_follow(llm, ids, ref):
    """Leading reference tokens that are also the argmax when ids + ref are one batch."""
    llm.reset()
    llm.eval(list(ids) + list(ref))
    sc = np.array(llm.scores[: len(ids) + len(ref)])
    am = [int(np.argmax(sc[len(ids) - 1 + k])) for k in range(len(ref))]
    return prefix(ref, am)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=os.path.join(ROOT, "models/gemma-3-270m-q4_k_m.gguf"))
    ap.add_argument("--tpllm", default=os.path.join(ROOT, "build/tpllm"))
    ap.add_argument("--np", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    kw = dict(model_path=a.model, n_ctx=512, n_batch=512, n_threads=a.threads, logits_all=True, verbose=False)
    std = llama_cpp.Llama(flash_attn=False, **kw)
    fa = llama_cpp.Llama(flash_attn=True, **kw)
    rows = []
    for p in PROMPTS:
        ids = std.tokenize(p.encode(), add_bos=True, special=False)
        ref = llama_greedy(std, ids)
        r_fa = prefix(ref, llama_greedy(fa, ids))
        r_b = llama_batch_follow(std, ids, ref)
        r_bfa = llama_batch_follow(fa, ids, ref)
        cmd = [os.path.join(ROOT, "tests/mpi/mpirun.sh"), "-np", str(a.np), a.tpllm, "generate", "-m", a.model, "-p", p,
               "-n", str(N), "--temp", "0", "--ignore-eos", "--show-tokens", "-q", "--threads", str(max(1, a.threads // a.np))]
        err = subprocess.run(cmd, capture_output=True, text=True, check=True).stderr
        got = [int(x) for x in err.split("\ntokens:")[1].split("\n")[0].split()]
        r_tp = prefix(ref, got)
        rows.append((p, r_fa, r_b, r_bfa, r_tp))
        print(f"| {p!r} | {r_fa} | {r_b} | {r_bfa} | {r_tp} |", flush=True)
    arr = np.array([r[1:] for r in rows])
    full = (arr == N).sum(axis=0)
    print(f"| all 32 identical (of {len(rows)}) | {full[0]} | {full[1]} | {full[2]} | {full[3]} |")
    print(f"| mean identical prefix | {arr[:,0].mean():.1f} | {arr[:,1].mean():.1f} | {arr[:,2].mean():.1f} | {arr[:,3].mean():.1f} |")


if __name__ == "__main__":
    sys.exit(main())
