#!/usr/bin/env python3
"""make_tokenizer_golden.py - llama.cpp's tokenizations of tests/golden/strings.json.

For every model below and every test string, records what llama.cpp (through the PyPI
package llama-cpp-python, vocab_only=True) produces, into tests/golden/tokenizer/<name>.json:

  ts  Llama.tokenize(text, add_bos=True,  special=False)
  tt  Llama.tokenize(text, add_bos=True,  special=True)
  ff  Llama.tokenize(text, add_bos=False, special=False)
  dt  llama_detokenize(ts, remove_special=False, unparse_special=False)   (hex)
  dr  llama_detokenize(tt, remove_special=True,  unparse_special=True)    (hex)

and per model: n_vocab, bos/eos/eot ids, add_bos/add_eos, the end-of-generation ids, every
token attribute that is not NORMAL, an FNV-1a hash over all llama_token_to_piece outputs
(special = true and false; each piece hashed as u32 little-endian length then bytes) and a
sample of pieces for diagnosing a hash mismatch.

strings.json holds strings, or {"hex": "..."} for byte strings that are not valid UTF-8.

Run: .pydeps/bin/python tests/golden/make_tokenizer_golden.py   (TPLLM_GEMMA overrides the
Gemma 3 path; a model file that is missing is skipped with a message.)
"""
import ctypes
import json
import os
import random
import sys

import llama_cpp

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OUT = os.path.join(ROOT, "tests", "golden", "tokenizer")

MODELS = [
    ("gemma3", os.environ.get("TPLLM_GEMMA", os.path.join(ROOT, "models", "gemma-3-270m-q4_k_m.gguf"))),
    ("bpe_qwen2", os.path.join(ROOT, "tests", "fixtures", "tok_bpe_qwen2.gguf")),
    ("bpe_llama3", os.path.join(ROOT, "tests", "fixtures", "tok_bpe_llama3.gguf")),
    ("bpe_gpt2", os.path.join(ROOT, "tests", "fixtures", "tok_bpe_gpt2.gguf")),
    ("bpe_default", os.path.join(ROOT, "tests", "fixtures", "tok_bpe_default.gguf")),
    ("spm", os.path.join(ROOT, "tests", "fixtures", "tok_spm.gguf")),
]

ATTR_NORMAL = 1 << 2


def load_strings():
    with open(os.path.join(ROOT, "tests", "golden", "strings.json"), encoding="utf-8") as f:
        raw = json.load(f)
    return [bytes.fromhex(s["hex"]) if isinstance(s, dict) else s.encode("utf-8") for s in raw]


def fnv1a(h, data):
    for b in data:
        h ^= b
        h = (h * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return h


def piece(vocab, tok, special):
    buf = ctypes.create_string_buffer(256)
    n = llama_cpp.llama_token_to_piece(vocab, tok, buf, 256, 0, special)
    if n < 0:
        buf = ctypes.create_string_buffer(-n)
        n = llama_cpp.llama_token_to_piece(vocab, tok, buf, -n, 0, special)
    return buf.raw[:n]


def detokenize(vocab, toks, remove_special, unparse_special):
    arr = (llama_cpp.llama_token * max(1, len(toks)))(*toks)
    cap = 64 + 64 * len(toks)
    buf = ctypes.create_string_buffer(cap)
    n = llama_cpp.llama_detokenize(vocab, arr, len(toks), buf, cap, remove_special, unparse_special)
    if n < 0:
        cap = -n
        buf = ctypes.create_string_buffer(cap)
        n = llama_cpp.llama_detokenize(vocab, arr, len(toks), buf, cap, remove_special, unparse_special)
    return buf.raw[:n]


def golden(name, path, strings):
    m = llama_cpp.Llama(model_path=path, vocab_only=True, verbose=False)
    vocab = m._model.vocab
    n_vocab = llama_cpp.llama_vocab_n_tokens(vocab)
    doc = {
        "model": name,
        "file": os.path.relpath(path, ROOT) if path.startswith(ROOT) else os.path.basename(path),
        "generator": "llama-cpp-python " + llama_cpp.__version__,
        "n_vocab": n_vocab,
        "bos": llama_cpp.llama_vocab_bos(vocab),
        "eos": llama_cpp.llama_vocab_eos(vocab),
        "eot": llama_cpp.llama_vocab_eot(vocab),
        "add_bos": bool(llama_cpp.llama_vocab_get_add_bos(vocab)),
        "add_eos": bool(llama_cpp.llama_vocab_get_add_eos(vocab)),
    }
    doc["eog"] = [i for i in range(n_vocab) if llama_cpp.llama_vocab_is_eog(vocab, i)]
    doc["attrs"] = [[i, a] for i in range(n_vocab) for a in [llama_cpp.llama_vocab_get_attr(vocab, i)]
                    if a != ATTR_NORMAL]
    hs = hp = 0xCBF29CE484222325
    for i in range(n_vocab):
        ps, pp = piece(vocab, i, True), piece(vocab, i, False)
        hs = fnv1a(fnv1a(hs, len(ps).to_bytes(4, "little")), ps)
        hp = fnv1a(fnv1a(hp, len(pp).to_bytes(4, "little")), pp)
    doc["pieces_fnv"] = {"special": f"{hs:016x}", "plain": f"{hp:016x}"}
    rng = random.Random(7)
    sample = sorted(set(rng.sample(range(n_vocab), min(n_vocab, 400))) | set(range(min(n_vocab, 300))))
    doc["pieces_sample"] = [[i, piece(vocab, i, True).hex(), piece(vocab, i, False).hex()] for i in sample]
    cases = []
    for k, s in enumerate(strings):
        ts = m.tokenize(s, add_bos=True, special=False)
        tt = m.tokenize(s, add_bos=True, special=True)
        ff = m.tokenize(s, add_bos=False, special=False)
        cases.append({"i": k, "ts": ts, "tt": tt, "ff": ff,
                      "dt": detokenize(vocab, ts, False, False).hex(),
                      "dr": detokenize(vocab, tt, True, True).hex()})
    doc["cases"] = cases
    out = os.path.join(OUT, name + ".json")
    with open(out, "w", encoding="utf-8") as f:
        # one case per line: compact, and diffs stay readable
        head = {k: v for k, v in doc.items() if k != "cases"}
        f.write(json.dumps(head, separators=(",", ":"))[:-1] + ',"cases":[\n')
        f.write(",\n".join(json.dumps(c, separators=(",", ":")) for c in cases))
        f.write("\n]}\n")
    print(f"{name}: {len(cases)} strings, {n_vocab} tokens -> {os.path.relpath(out, ROOT)}")


def main():
    os.makedirs(OUT, exist_ok=True)
    strings = load_strings()
    for name, path in MODELS:
        if not os.path.exists(path):
            print(f"{name}: {path} not found, skipped (run tests/golden/make_bpe_vocab.py, or set TPLLM_GEMMA)")
            continue
        golden(name, path, strings)
    return 0


if __name__ == "__main__":
    sys.exit(main())
