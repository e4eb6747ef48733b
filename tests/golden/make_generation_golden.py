#!/usr/bin/env python3
"""Record llama.cpp's (llama-cpp-python) outputs that tpllm's generation is checked against.

For every model of models.json: the prompt's token ids, the last position's logits (top 64
and 256 fixed ids), 32 greedy tokens (and llama.cpp's margins for them when it evaluates
them as one batch, with either attention path), the argmax and top-2 margin at every position of a
256-token teacher-forced sequence, and (Gemma 3 270M) llama.cpp-style perplexity of
tests/golden/ppl_text.txt.

Usage (from the repository root, after `make build golden-deps`):
    .pydeps/bin/python tests/golden/make_generation_golden.py [--tpllm build/tpllm] [MODEL ...]
"""
import argparse, hashlib, json, math, os, subprocess, sys
import numpy as np
import llama_cpp

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
GOLD = os.path.join(ROOT, "tests", "golden")
PROMPTS = {
    "gemma3-270m": "The capital of France is",
    "default": "Once upon a time, in a small village by the sea,",
}
TF_TEXT = os.path.join(GOLD, "ppl_text.txt")


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for b in iter(lambda: f.read(1 << 20), b""):
            h.update(b)
    return h.hexdigest()


def model_path(name, spec, tpllm, workdir):
    if "path" in spec:
        return os.path.join(ROOT, spec["path"])
    out = os.path.join(workdir, name + ".gguf")
    subprocess.run([tpllm, "synth", *spec["synth"], "-o", out], check=True)
    return out


def greedy_and_tf(path, threads, flash, ids, tf):
    """llama.cpp's 32 greedy tokens after ids and its logits over the teacher-forced tf."""
    llm = llama_cpp.Llama(model_path=path, n_ctx=1024, n_batch=512, n_threads=threads, logits_all=True,
                          verbose=False, seed=0, flash_attn=flash)
    llm.eval(ids)
    greedy, margins = [], []
    row = np.array(llm.scores[len(ids) - 1])
    for _ in range(32):
        o = np.argsort(-row, kind="stable")[:2]
        greedy.append(int(o[0]))
        margins.append(float(row[o[0]] - row[o[1]]))
        llm.eval([int(o[0])])
        row = np.array(llm.scores[llm.n_tokens - 1])
    llm.reset()
    llm.eval(tf)
    return greedy, margins, np.array(llm.scores[: len(tf)], dtype=np.float32)


def batch_margins(path, threads, flash, ids, greedy):
    """llama.cpp's margin for each of its greedy tokens when the prompt and the greedy tokens
    are evaluated as one batch (prompt-processing kernels) instead of one token at a time:
    score of greedy[k] minus the best other score. A step where it is <= 0 is a step
    llama.cpp itself decides differently depending on how it batches: a numerical tie."""
    llm = llama_cpp.Llama(model_path=path, n_ctx=1024, n_batch=512, n_threads=threads, logits_all=True,
                          verbose=False, seed=0, flash_attn=flash)
    seq = list(ids) + list(greedy)
    llm.eval(seq)
    sc = np.array(llm.scores[: len(seq)], dtype=np.float32)
    out = []
    for k, tok in enumerate(greedy):
        row = sc[len(ids) - 1 + k].copy()
        best = row[tok]
        row[tok] = -np.inf
        out.append(float(best - row.max()))
    return out


def record(name, path, threads):
    llm = llama_cpp.Llama(model_path=path, n_ctx=1024, n_batch=512, n_threads=threads, logits_all=True,
                          verbose=False, seed=0)
    n_vocab = llm.n_vocab()
    prompt = PROMPTS.get(name, PROMPTS["default"])
    ids = llm.tokenize(prompt.encode(), add_bos=True, special=False)
    llm.reset()
    llm.eval(ids)
    last = np.array(llm.scores[len(ids) - 1], dtype=np.float32)
    top = np.argsort(-last, kind="stable")[:64]
    rng = np.random.default_rng(1234)
    probe = np.sort(rng.choice(n_vocab, size=min(256, n_vocab), replace=False))
    # greedy continuation: argmax, ties to the lowest id (np.argmax)
    greedy = []
    tok = int(np.argmax(last))
    for _ in range(32):
        greedy.append(tok)
        llm.eval([tok])
        tok = int(np.argmax(np.array(llm.scores[llm.n_tokens - 1])))
    # teacher forcing over 256 tokens of a fixed text
    text = open(TF_TEXT, encoding="utf-8").read()
    tf = llm.tokenize(text.encode(), add_bos=True, special=False)[:256]
    llm.reset()
    llm.eval(tf)
    sc = np.array(llm.scores[: len(tf)], dtype=np.float32)
    order = np.argsort(-sc, axis=1, kind="stable")[:, :2]
    tf_argmax = order[:, 0].tolist()
    tf_margin = (sc[np.arange(len(tf)), order[:, 0]] - sc[np.arange(len(tf)), order[:, 1]]).tolist()
    # llama.cpp's own numerical spread: its flash-attention path on the same inputs. Where
    # its two paths disagree on the top token, the top token is a numerical tie.
    g_fa, _, sc_fa = greedy_and_tf(path, threads, True, ids, tf)
    _, g_margin, _ = greedy_and_tf(path, threads, False, ids, tf)
    tf_noise = np.abs(sc_fa - sc).max(axis=1).tolist()
    tf_argmax_fa = np.argmax(sc_fa, axis=1).tolist()
    return {
        "greedy_batch_margin": batch_margins(path, threads, False, ids, greedy),
        "greedy_batch_margin_fa": batch_margins(path, threads, True, ids, greedy),
        "greedy_fa": g_fa, "greedy_margin": g_margin, "tf_noise": tf_noise, "tf_argmax_fa": tf_argmax_fa,
        "model": name, "sha256": sha256(path), "n_vocab": n_vocab, "prompt": prompt, "prompt_ids": ids,
        "last_top_ids": top.tolist(), "last_top_logits": last[top].tolist(),
        "last_probe_ids": probe.tolist(), "last_probe_logits": last[probe].tolist(),
        "greedy": greedy, "tf_ids": tf, "tf_argmax": tf_argmax, "tf_margin": tf_margin,
        "llama_cpp_python": llama_cpp.__version__,
    }


def perplexity(path, n_ctx, threads):
    """llama.cpp's perplexity tool: chunks of n_ctx tokens, the first token of each chunk
    replaced by BOS, scoring the second half of every chunk."""
    llm = llama_cpp.Llama(model_path=path, n_ctx=n_ctx, n_batch=n_ctx, n_threads=threads, logits_all=True, verbose=False)
    text = open(TF_TEXT, encoding="utf-8").read()
    toks = llm.tokenize(text.encode(), add_bos=True, special=False)
    n_chunk = len(toks) // n_ctx
    first = n_ctx // 2
    nll, count = 0.0, 0
    for c in range(n_chunk):
        batch = list(toks[c * n_ctx:(c + 1) * n_ctx])
        batch[0] = llm.token_bos()
        llm.reset()
        llm.eval(batch)
        sc = np.array(llm.scores[:n_ctx], dtype=np.float64)
        for j in range(first, n_ctx - 1):
            row = sc[j]
            m = row.max()
            lse = m + math.log(np.exp(row - m).sum())
            nll += lse - row[toks[c * n_ctx + j + 1]]
            count += 1
    return {"n_ctx": n_ctx, "n_chunks": n_chunk, "n_tokens": len(toks), "ppl": math.exp(nll / count), "count": count}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tpllm", default=os.path.join(ROOT, "build", "tpllm"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--workdir", default="/tmp/tpllm-golden")
    ap.add_argument("models", nargs="*")
    a = ap.parse_args()
    os.makedirs(a.workdir, exist_ok=True)
    spec = json.load(open(os.path.join(GOLD, "models.json")))
    names = a.models or [k for k in spec if not k.startswith("_")]
    for name in names:
        path = model_path(name, spec[name], a.tpllm, a.workdir)
        res = record(name, path, a.threads)
        if name == "gemma3-270m":
            res["perplexity"] = perplexity(path, 256, a.threads)
        out = os.path.join(GOLD, "generation", name + ".json")
        with open(out, "w") as f:
            json.dump(res, f)
        print(f"{name}: greedy {res['greedy'][:8]}... ppl {res.get('perplexity', {}).get('ppl')} -> {out}")


if __name__ == "__main__":
    sys.exit(main())
