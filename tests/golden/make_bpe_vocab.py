#!/usr/bin/env python3
"""make_bpe_vocab.py - write the small vocab-only GGUF fixtures the tokenizer tests use.

Trains two tiny tokenizers on a corpus built from Python's standard-library docstrings and
tests/golden/strings.json, and writes them with the gguf package's GGUFWriter (llama.cpp's
own writer) as vocab-only files (no tensors; llama.cpp loads them with vocab_only=True):

  tests/fixtures/tok_bpe_qwen2.gguf   byte-level BPE ("gpt2"), tokenizer.ggml.pre = "qwen2"
  tests/fixtures/tok_bpe_llama3.gguf  the same vocabulary, pre = "llama-bpe" (llama3 regex,
                                      ignore_merges, add_bos)
  tests/fixtures/tok_bpe_gpt2.gguf    the same vocabulary, pre = "gpt-2" (GPT-2 regex)
  tests/fixtures/tok_bpe_default.gguf the same vocabulary, pre = "default" (llama.cpp's
                                      four-regex fallback)
  tests/fixtures/tok_spm.gguf         SentencePiece-style ("llama"): scores, <0xNN> byte
                                      fallback, add_space_prefix left at llama.cpp's default

Run with the project venv:  .pydeps/bin/python tests/golden/make_bpe_vocab.py
The output is deterministic for a given Python version (the docstrings are part of the
corpus); the committed fixtures are what the golden token ids were made from.
"""
import collections
import json
import os
import re
import sys

import gguf

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FIXTURES = os.path.join(ROOT, "tests", "fixtures")
N_MERGES_BPE = 3000
N_MERGES_SPM = 2500

# Token types (llama.cpp's llama_token_type).
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6


def corpus():
    import argparse, collections as c2, json as j2, os as o2, re as r2, string, textwrap, functools, itertools
    texts = []
    for mod in (argparse, c2, j2, o2, r2, string, textwrap, functools, itertools, str, dict, list, int, bytes):
        for name in sorted(dir(mod)):
            doc = getattr(getattr(mod, name, None), "__doc__", None)
            if isinstance(doc, str):
                texts.append(doc)
    with open(os.path.join(ROOT, "tests", "golden", "strings.json"), encoding="utf-8") as f:
        for s in json.load(f):
            if isinstance(s, str):
                texts.append(s)
    texts.append("def main():\n    for i in range(10):\n        print(i)\n" * 5)
    texts.append("int main(void) {\n    return 0;\n}\n" * 5)
    texts.append(" ".join(str(i * 7919 % 100003) for i in range(600)))  # digit merges
    return texts


def bytes_to_unicode():
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(bs, cs)}


def train(words, n_merges):
    """Plain BPE on a {tuple(symbols): count} table; ties broken by the pair's text."""
    words = {tuple(w): c for w, c in words.items()}
    merges = []
    for _ in range(n_merges):
        pairs = collections.Counter()
        for w, c in words.items():
            for a, b in zip(w, w[1:]):
                pairs[(a, b)] += c
        if not pairs:
            break
        best = max(pairs.items(), key=lambda kv: (kv[1], kv[0][0] + " " + kv[0][1]))[0]
        if pairs[best] < 2:
            break
        merges.append(best)
        joined = best[0] + best[1]
        nw = {}
        for w, c in words.items():
            if best[0] in w:
                out, i = [], 0
                while i < len(w):
                    if i + 1 < len(w) and w[i] == best[0] and w[i + 1] == best[1]:
                        out.append(joined)
                        i += 2
                    else:
                        out.append(w[i])
                        i += 1
                w = tuple(out)
            nw[w] = nw.get(w, 0) + c
        words = nw
    return merges


def add_hparams(w, arch):
    w.add_context_length(2048)
    w.add_embedding_length(64)
    w.add_block_count(1)
    w.add_feed_forward_length(128)
    w.add_head_count(4)
    w.add_head_count_kv(4)
    w.add_layer_norm_rms_eps(1e-6)
    w.add_rope_freq_base(10000.0)


def write(path, arch, fill):
    w = gguf.GGUFWriter(path, arch)
    w.add_name("tpllm tokenizer fixture")
    add_hparams(w, arch)
    fill(w)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    print(f"wrote {path} ({os.path.getsize(path)} bytes)")


def make_bpe(texts):
    b2u = bytes_to_unicode()
    pat = re.compile(r"'(?:[sdmt]|ll|ve|re)| ?[^\W\d_]+|\d{1,3}| ?[^\s\w]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
    words = collections.Counter()
    for t in texts:
        for m in pat.findall(t):
            words["".join(b2u[b] for b in m.encode("utf-8"))] += 1
    merges = train({tuple(w): c for w, c in words.items()}, N_MERGES_BPE)
    tokens = [b2u[b] for b in range(256)]
    seen = set(tokens)
    for a, b in merges:
        if a + b not in seen:
            seen.add(a + b)
            tokens.append(a + b)
    # Merges that join unusual whitespace-like characters (U+0085 and U+00A0 are \s for
    # llama.cpp, U+180E and U+200B are not) with neighbouring punctuation: the token ids
    # then show on which side of a pre-tokenizer split each character falls.
    for ch in ("\u0085", "\u00a0", "\u180e", "\u200b", "\u3000", "\u2028", "\ufeff"):
        enc = [b2u[b] for b in ch.encode("utf-8")]
        acc = enc[0]
        for nxt in enc[1:]:
            merges.append((acc, nxt))
            acc += nxt
        merges.append((acc, "!"))
        merges.append(("!", acc))
    for a, b in merges:
        if a + b not in seen:
            seen.add(a + b)
            tokens.append(a + b)
    # Whole words the merges do not build: only pre-tokenizers with ignore_merges (llama3)
    # emit them as one token.
    for word in (" supercalifragilisticexpialidocious", " Ishmael", " Universe", "HELLO"):
        enc = "".join(b2u[b] for b in word.encode("utf-8"))
        if enc not in seen:
            seen.add(enc)
            tokens.append(enc)
    types = [NORMAL] * len(tokens)
    specials = [("<|endoftext|>", CONTROL), ("<|im_start|>", CONTROL), ("<|im_end|>", CONTROL),
                ("<|begin_of_text|>", CONTROL), ("<|eot_id|>", CONTROL), ("<tool_call>", USER_DEFINED),
                ("</tool_call>", USER_DEFINED)]
    ids = {}
    for text, ty in specials:
        ids[text] = len(tokens)
        tokens.append(text)
        types.append(ty)
    merge_strs = [a + " " + b for a, b in merges]

    def common(w):
        w.add_tokenizer_model("gpt2")
        w.add_token_list(tokens)
        w.add_token_types(types)
        w.add_token_merges(merge_strs)

    def qwen2(w):
        common(w)
        w.add_tokenizer_pre("qwen2")
        w.add_bos_token_id(ids["<|endoftext|>"])
        w.add_eos_token_id(ids["<|im_end|>"])
        w.add_eot_token_id(ids["<|im_end|>"])
        w.add_pad_token_id(ids["<|endoftext|>"])
        w.add_add_bos_token(False)

    def llama3(w):
        common(w)
        w.add_tokenizer_pre("llama-bpe")
        w.add_bos_token_id(ids["<|begin_of_text|>"])
        w.add_eos_token_id(ids["<|eot_id|>"])
        w.add_eot_token_id(ids["<|eot_id|>"])
        w.add_add_bos_token(True)

    def plain(pre):
        def fill(w):
            common(w)
            w.add_tokenizer_pre(pre)
            w.add_bos_token_id(ids["<|endoftext|>"])
            w.add_eos_token_id(ids["<|endoftext|>"])
            w.add_eot_token_id(ids["<|endoftext|>"])
        return fill

    write(os.path.join(FIXTURES, "tok_bpe_qwen2.gguf"), "qwen2", qwen2)
    write(os.path.join(FIXTURES, "tok_bpe_llama3.gguf"), "qwen2", llama3)
    write(os.path.join(FIXTURES, "tok_bpe_gpt2.gguf"), "qwen2", plain("gpt-2"))
    write(os.path.join(FIXTURES, "tok_bpe_default.gguf"), "qwen2", plain("default"))


def make_spm(texts):
    # SentencePiece style: ' ' is U+2581 and words carry it as a prefix; characters seen
    # fewer than 3 times get no piece of their own, so they fall back to <0xNN> bytes.
    words = collections.Counter()
    chars = collections.Counter()
    for t in texts:
        for m in re.findall(r"\s*\S+|\s+", t):
            m = m.replace(" ", "\u2581")
            if not m.startswith("\u2581"):
                m = "\u2581" + m
            words[m] += 1
            chars.update(m)
    merges = train({tuple(w): c for w, c in words.items()}, N_MERGES_SPM)
    tokens = ["<unk>", "<s>", "</s>"]
    types = [UNKNOWN, CONTROL, CONTROL]
    scores = [0.0, 0.0, 0.0]
    for b in range(256):
        tokens.append(f"<0x{b:02X}>")
        types.append(BYTE)
        scores.append(0.0)
    for text, ty in [("<start_of_turn>", CONTROL), ("<end_of_turn>", CONTROL), ("<unused0>", CONTROL),
                     ("<b>", USER_DEFINED), ("\n\n", USER_DEFINED), ("<reserved>", UNUSED)]:
        tokens.append(text)
        types.append(ty)
        scores.append(0.0)
    seen = set(tokens)
    for i, (a, b) in enumerate(merges):
        if a + b not in seen:
            seen.add(a + b)
            tokens.append(a + b)
            types.append(NORMAL)
            scores.append(-float(i))
    for ch, c in sorted(chars.items(), key=lambda kv: (-kv[1], kv[0])):
        if c >= 3 and ch not in seen:
            seen.add(ch)
            tokens.append(ch)
            types.append(NORMAL)
            scores.append(-1e6 - len(tokens))
    # Two pieces whose scores tie with a merge, to exercise the leftmost-first tie rule.
    for extra in ("\u2581the\u2581", "ing\u2581"):
        if extra not in seen:
            seen.add(extra)
            tokens.append(extra)
            types.append(NORMAL)
            scores.append(-5.0)

    def fill(w):
        w.add_tokenizer_model("llama")
        w.add_tokenizer_pre("default")
        w.add_token_list(tokens)
        w.add_token_scores(scores)
        w.add_token_types(types)
        w.add_bos_token_id(1)
        w.add_eos_token_id(2)
        w.add_unk_token_id(0)
        w.add_eot_token_id(tokens.index("<end_of_turn>"))

    write(os.path.join(FIXTURES, "tok_spm.gguf"), "llama", fill)


def main():
    os.makedirs(FIXTURES, exist_ok=True)
    texts = corpus()
    make_bpe(texts)
    make_spm(texts)
    return 0


if __name__ == "__main__":
    sys.exit(main())
