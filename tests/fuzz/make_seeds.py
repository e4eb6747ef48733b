#!/usr/bin/env python3
"""make_seeds.py - writes the fuzz seed corpus tests/fuzz/seeds/: small VALID GGUF files
made by the PyPI gguf package's GGUFWriter (llama.cpp's own writer, not ours), so that
the fuzzer and tests/unit/test_gguf.c start from files a reference implementation wrote.

Run once, from anywhere:  /work/main/.pydeps/bin/python tests/fuzz/make_seeds.py
Deterministic (fixed RNG seed). Every file stays under 64 KiB. The files are named
*.bin rather than *.gguf because the repository's .gitignore drops *.gguf.
"""
from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType as Q, GGUFValueType as VT, GGUFWriter, quants
from gguf.constants import GGML_QUANT_SIZES

OUT = Path(__file__).resolve().parent / "seeds"
LIMIT = 64 * 1024
rng = np.random.default_rng(20240601)


def write(name: str, w: GGUFWriter, path: Path) -> bytes:
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    data = path.read_bytes()
    assert len(data) < LIMIT, f"{name}: {len(data)} bytes, over the 64 KiB seed limit"
    return data


def make(name: str, build, arch: str = "llama", version: int | None = None) -> None:
    """build(w) fills a fresh writer; version patches the u32 at byte 4 (v2 and v3 share
    the little-endian layout: v3 only added big-endian files)."""
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d) / "seed.gguf"
        w = GGUFWriter(tmp, arch=arch)
        build(w)
        data = bytearray(write(name, w, tmp))
    if version is not None:
        data[4:8] = version.to_bytes(4, "little")
    (OUT / name).write_bytes(bytes(data))
    print(f"{name}: {len(data)} bytes")


def raw_tensor(w: GGUFWriter, name: str, qt: Q, rows: int, cols: int) -> None:
    """A tensor of type qt with random block bytes (shape [rows, cols] in numpy order)."""
    block, size = GGML_QUANT_SIZES[qt]
    assert cols % block == 0
    data = rng.integers(0, 256, size=(rows, cols // block * size), dtype=np.uint8)
    w.add_tensor(name, data, raw_dtype=qt)


def quant_tensor(w: GGUFWriter, name: str, qt: Q, rows: int, cols: int) -> None:
    """A tensor quantized by the package's own reference quantizer."""
    x = rng.standard_normal((rows, cols)).astype(np.float32)
    w.add_tensor(name, quants.quantize(x, qt), raw_dtype=qt)


def minimal(w: GGUFWriter) -> None:
    w.add_name("minimal")


def all_types(w: GGUFWriter) -> None:
    w.add_uint8("t.u8", 200)
    w.add_int8("t.i8", -100)
    w.add_uint16("t.u16", 60000)
    w.add_int16("t.i16", -30000)
    w.add_uint32("t.u32", 4000000000)
    w.add_int32("t.i32", -2000000000)
    w.add_float32("t.f32", 3.25)
    w.add_bool("t.bool_true", True)
    w.add_bool("t.bool_false", False)
    w.add_string("t.str", "héllo, gguf")
    w.add_uint64("t.u64", 18000000000000000000)
    w.add_int64("t.i64", -9000000000000000000)
    w.add_float64("t.f64", -1.0e300)
    w.add_key_value("t.arr_u8", [0, 1, 255], VT.ARRAY, VT.UINT8)
    w.add_key_value("t.arr_i8", [-128, 0, 127], VT.ARRAY, VT.INT8)
    w.add_key_value("t.arr_u16", [0, 65535], VT.ARRAY, VT.UINT16)
    w.add_key_value("t.arr_i16", [-32768, 32767], VT.ARRAY, VT.INT16)
    w.add_key_value("t.arr_u32", [1, 2, 3, 4294967295], VT.ARRAY, VT.UINT32)
    w.add_key_value("t.arr_i32", [-1, 7, -2147483648], VT.ARRAY, VT.INT32)
    w.add_key_value("t.arr_f32", [0.5, -1.5, 1e30], VT.ARRAY, VT.FLOAT32)
    w.add_key_value("t.arr_bool", [True, False, True], VT.ARRAY, VT.BOOL)
    w.add_key_value("t.arr_str", ["a", "", "ccc", "ünï"], VT.ARRAY, VT.STRING)
    w.add_key_value("t.arr_u64", [0, 18446744073709551615], VT.ARRAY, VT.UINT64)
    w.add_key_value("t.arr_i64", [-9223372036854775808, 5], VT.ARRAY, VT.INT64)
    w.add_key_value("t.arr_f64", [2.5, -0.125], VT.ARRAY, VT.FLOAT64)
    w.add_tensor("a.f32", rng.standard_normal((3, 5)).astype(np.float32))
    w.add_tensor("b.f16", rng.standard_normal((2, 8)).astype(np.float16))
    w.add_tensor("c.f32.vec", rng.standard_normal(8).astype(np.float32))


def quantized(w: GGUFWriter) -> None:
    w.add_uint32("general.file_type", 15)
    quant_tensor(w, "q4_0", Q.Q4_0, 4, 64)
    quant_tensor(w, "q8_0", Q.Q8_0, 3, 64)
    quant_tensor(w, "q5_0", Q.Q5_0, 2, 32)
    raw_tensor(w, "q4_k", Q.Q4_K, 2, 256)
    raw_tensor(w, "q6_k", Q.Q6_K, 2, 256)
    raw_tensor(w, "q2_k", Q.Q2_K, 1, 512)


def align256(w: GGUFWriter) -> None:
    w.add_custom_alignment(256)
    w.add_tensor("x", rng.standard_normal(7).astype(np.float32))
    w.add_tensor("y", rng.standard_normal((3, 3)).astype(np.float16))
    w.add_tensor("z", rng.standard_normal(100).astype(np.float32))


def align8(w: GGUFWriter) -> None:
    w.add_custom_alignment(8)
    w.add_tensor("x", rng.standard_normal(3).astype(np.float32))
    w.add_tensor("y", rng.standard_normal(5).astype(np.float16))


def vocab(w: GGUFWriter) -> None:
    toks = ["<unk>", "<s>", "</s>"] + [f"tok{i}" for i in range(250)] + ["▁the", "日本", "\n", "a b"]
    w.add_tokenizer_model("llama")
    w.add_token_list(toks)
    w.add_token_scores([float(-i) for i in range(len(toks))])
    w.add_token_types([1] * len(toks))
    w.add_token_merges(["t o", "to k", "▁ t"])
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_add_bos_token(True)


def unsupported(w: GGUFWriter) -> None:
    raw_tensor(w, "iq2_xxs", Q.IQ2_XXS, 1, 256)
    raw_tensor(w, "tq1_0", Q.TQ1_0, 1, 256)
    raw_tensor(w, "mxfp4", Q.MXFP4, 2, 32)
    raw_tensor(w, "iq4_nl", Q.IQ4_NL, 1, 64)
    w.add_tensor("i8", rng.integers(-128, 127, 16, dtype=np.int8))
    w.add_tensor("i32", rng.integers(-1000, 1000, 4, dtype=np.int32))
    w.add_tensor("f64", rng.standard_normal(4))
    w.add_tensor("bf16", rng.integers(0, 65535, 8, dtype=np.uint16).view(np.uint8).reshape(1, 16), raw_dtype=Q.BF16)


def shapes(w: GGUFWriter) -> None:
    w.add_tensor("one", np.ones(1, dtype=np.float32))
    w.add_tensor("d3", rng.standard_normal((2, 3, 4)).astype(np.float32))
    w.add_tensor("d4", rng.standard_normal((2, 1, 3, 4)).astype(np.float16))
    w.add_tensor("empty", np.zeros((0, 4), dtype=np.float32))


def llama_tiny(w: GGUFWriter) -> None:
    n_embd, n_ff, n_vocab, n_layer = 64, 128, 32, 2
    w.add_name("tiny llama")
    w.add_context_length(128)
    w.add_embedding_length(n_embd)
    w.add_block_count(n_layer)
    w.add_feed_forward_length(n_ff)
    w.add_head_count(4)
    w.add_head_count_kv(2)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_freq_base(10000.0)
    w.add_tokenizer_model("llama")
    w.add_token_list([f"t{i}" for i in range(n_vocab)])
    quant_tensor(w, "token_embd.weight", Q.Q8_0, n_vocab, n_embd)
    w.add_tensor("output_norm.weight", np.ones(n_embd, dtype=np.float32))
    for i in range(n_layer):
        w.add_tensor(f"blk.{i}.attn_norm.weight", np.ones(n_embd, dtype=np.float32))
        quant_tensor(w, f"blk.{i}.attn_q.weight", Q.Q8_0, n_embd, n_embd)
        quant_tensor(w, f"blk.{i}.attn_k.weight", Q.Q8_0, n_embd // 2, n_embd)
        quant_tensor(w, f"blk.{i}.attn_v.weight", Q.Q4_0, n_embd // 2, n_embd)
        quant_tensor(w, f"blk.{i}.attn_output.weight", Q.Q4_0, n_embd, n_embd)
        w.add_tensor(f"blk.{i}.ffn_norm.weight", np.ones(n_embd, dtype=np.float32))
        quant_tensor(w, f"blk.{i}.ffn_gate.weight", Q.Q4_0, n_ff, n_embd)
        quant_tensor(w, f"blk.{i}.ffn_up.weight", Q.Q4_0, n_ff, n_embd)
        quant_tensor(w, f"blk.{i}.ffn_down.weight", Q.Q4_0, n_embd, n_ff)


def main() -> int:
    OUT.mkdir(parents=True, exist_ok=True)
    make("minimal_v3.bin", minimal)
    make("minimal_v2.bin", minimal, version=2)
    make("all_types.bin", all_types, arch="test")
    make("all_types_v2.bin", all_types, arch="test", version=2)
    make("quantized.bin", quantized)
    make("align256.bin", align256)
    make("align8.bin", align8)
    make("vocab.bin", vocab)
    make("unsupported.bin", unsupported)
    make("shapes.bin", shapes)
    make("llama_tiny.bin", llama_tiny)
    return 0


if __name__ == "__main__":
    sys.exit(main())
