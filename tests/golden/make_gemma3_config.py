#!/usr/bin/env python3
"""make_gemma3_config.py - writes tests/golden/gemma3_config.json: the model config tpllm must
read from Gemma 3 270M Q4_K_M, computed from the metadata as the PyPI gguf package
(llama.cpp's reference reader, not tpllm's) reports it, with llama.cpp's loader rules for
gemma3 (llama-model.cpp) applied here in Python:

  head_dim = gemma3.attention.key_length (default n_embd / n_head), value width likewise
  n_rot = rope.dimension_count (default head_dim); rope_base = rope.freq_base (default 10000)
  sliding-window layers: il % 6 < 5; local rope base 10000; embedding scale sqrt(n_embd)
  attention scale 1/sqrt(head_dim) (1/sqrt(n_embd/n_head) for the 62-layer 27B)
  tied output when output.weight is absent; n_vocab = len(tokenizer.ggml.tokens)
  eot id: tokenizer.ggml.eot_token_id, else -1 (the tokenizer finds <end_of_turn> itself)

tests/unit/test_config.c compares every field with what model_config_load returns.

Run once:  /work/main/.pydeps/bin/python tests/golden/make_gemma3_config.py [model.gguf]
(default: $TPLLM_GEMMA, else models/gemma-3-270m-q4_k_m.gguf under the source tree).
"""
import importlib.metadata
import json
import math
import os
import sys
from pathlib import Path

from gguf import GGUFReader

ROOT = Path(__file__).resolve().parents[2]


def main() -> int:
    model = Path(sys.argv[1] if len(sys.argv) > 1 else
                 os.environ.get("TPLLM_GEMMA", ROOT / "models" / "gemma-3-270m-q4_k_m.gguf"))
    r = GGUFReader(model)

    def kv(key, default=None):
        f = r.fields.get(key)
        return default if f is None else f.contents()

    arch = kv("general.architecture")
    assert arch == "gemma3", arch
    a = lambda s, d=None: kv(f"{arch}.{s}", d)  # noqa: E731
    n_embd, n_head = int(a("embedding_length")), int(a("attention.head_count"))
    n_layer = int(a("block_count"))
    head_dim = int(a("attention.key_length", n_embd // n_head))
    names = {t.name for t in r.tensors}
    out = {
        "_source": f"{model.name} read with gguf {importlib.metadata.version('gguf')}",
        "arch_name": arch,
        "name": kv("general.name", ""),
        "n_embd": n_embd,
        "n_layer": n_layer,
        "n_head": n_head,
        "n_head_kv": int(a("attention.head_count_kv", n_head)),
        "head_dim": head_dim,
        "head_dim_v": int(a("attention.value_length", head_dim)),
        "n_ff": int(a("feed_forward_length")),
        "n_vocab": len(r.fields["tokenizer.ggml.tokens"].data),
        "n_ctx_train": int(a("context_length")),
        "norm_eps": float(a("attention.layer_norm_rms_epsilon")),
        "rope_base": float(a("rope.freq_base", 10000.0)),
        "rope_base_local": 10000.0,
        "n_rot": int(a("rope.dimension_count", head_dim)),
        "rope_scaling": a("rope.scaling.type", "none"),
        "rope_scale": float(a("rope.scaling.factor", 1.0)),
        "sliding_window": int(a("attention.sliding_window")),
        "swa_period": 6,
        "swa_layers": [il for il in range(n_layer) if il % 6 < 5],
        "tied_embeddings": "output.weight" not in names,
        "has_qkv_bias": False,
        "has_qk_norm": "blk.0.attn_q_norm.weight" in names,
        "has_post_norms": "blk.0.post_attention_norm.weight" in names,
        "norm_offset": 0.0,
        "embd_scale": math.sqrt(n_embd),
        "attn_scale": 1.0 / math.sqrt(n_embd // n_head if n_layer == 62 else head_dim),
        "act": "gelu_tanh",
        "rope_mode": "neox",
        "bos_id": int(kv("tokenizer.ggml.bos_token_id", -1)),
        "eos_id": int(kv("tokenizer.ggml.eos_token_id", -1)),
        "eot_id": int(kv("tokenizer.ggml.eot_token_id", -1)),
        "pad_id": int(kv("tokenizer.ggml.padding_token_id", -1)),
        "unk_id": int(kv("tokenizer.ggml.unknown_token_id", -1)),
        "add_bos": bool(kv("tokenizer.ggml.add_bos_token", True)),
        "add_eos": bool(kv("tokenizer.ggml.add_eos_token", False)),
        "attn_k_shape": [int(x) for x in next(t.shape for t in r.tensors if t.name == "blk.0.attn_k.weight")],
        "attn_q_shape": [int(x) for x in next(t.shape for t in r.tensors if t.name == "blk.0.attn_q.weight")],
    }
    dst = ROOT / "tests" / "golden" / "gemma3_config.json"
    dst.write_text(json.dumps(out, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {dst}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
