#!/usr/bin/env python3
"""check_llamacpp_loads.py - show that llama.cpp (through llama-cpp-python) opens GGUF files
written by `tpllm synth`: print the metadata llama.cpp read, tokenize a prompt, evaluate it,
print the top logits of the last position and a few greedy tokens.

usage: check_llamacpp_loads.py MODEL.gguf [MODEL.gguf ...] [--prompt TEXT] [--top K] [--gen N]

Exit status: 0 when every model loaded and produced finite logits, 1 otherwise, 77 when
llama-cpp-python is not installed (the CTest "skipped" code).
"""
import argparse
import math
import sys


def check(path, prompt, top, gen):
    import llama_cpp
    import numpy as np

    llm = llama_cpp.Llama(model_path=path, n_ctx=256, n_batch=64, logits_all=False, verbose=False, seed=0)
    md = llm.metadata
    arch = md.get("general.architecture", "?")
    print(f"== {path}")
    print(f"llama.cpp metadata: {len(md)} keys")
    for k in sorted(md):
        if k.startswith(arch + ".") or k in ("general.architecture", "general.name", "general.file_type",
                                             "tokenizer.ggml.model", "tokenizer.ggml.bos_token_id",
                                             "tokenizer.ggml.eos_token_id"):
            print(f"  {k} = {md[k]}")
    print(f"n_vocab {llm.n_vocab()}  n_embd {llm.n_embd()}")
    toks = llm.tokenize(prompt.encode(), add_bos=True)
    pieces = [llm.detokenize([t]).decode("utf-8", "replace") for t in toks]
    print(f"prompt {prompt!r} -> {len(toks)} tokens {toks}")
    print(f"  pieces {pieces}")
    n_vocab = llm.n_vocab()

    def last_logits():
        # llama.cpp's own output row for the last evaluated position (Llama.scores is only
        # filled in some llama-cpp-python versions).
        p = llama_cpp.llama_get_logits_ith(llm.ctx, -1)
        return np.ctypeslib.as_array(p, shape=(n_vocab,)).astype(np.float64)

    llm.eval(toks)
    logits = last_logits()
    finite = bool(np.all(np.isfinite(logits)))
    print(f"last-position logits: mean {logits.mean():.4f} std {logits.std():.4f} finite {finite}")
    order = np.argsort(-logits, kind="stable")[:top]
    for i in order:
        piece = llm.detokenize([int(i)]).decode("utf-8", "replace")
        print(f"  {int(i):6d} {piece!r:16} {logits[i]:9.4f}")
    out = []
    for _ in range(gen):
        t = int(np.argmax(last_logits()))
        out.append(t)
        llm.eval([t])
    print(f"greedy continuation ids {out}")
    print(f"  text {llm.detokenize(out).decode('utf-8', 'replace')!r}")
    return finite and len(toks) > 1 and not math.isnan(float(logits.max()))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("models", nargs="+")
    ap.add_argument("--prompt", default="The river runs past the old mill")
    ap.add_argument("--top", type=int, default=5)
    ap.add_argument("--gen", type=int, default=4)
    a = ap.parse_args()
    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        print("llama-cpp-python is not installed: pip install llama-cpp-python", file=sys.stderr)
        return 77
    ok = True
    for m in a.models:
        ok = check(m, a.prompt, a.top, a.gen) and ok
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
