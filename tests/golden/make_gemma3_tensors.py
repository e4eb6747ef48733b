#!/usr/bin/env python3
"""make_gemma3_tensors.py - writes tests/golden/gemma3_tensors.tsv: the tensor table of
Gemma 3 270M Q4_K_M as the PyPI gguf package's GGUFReader (llama.cpp's reference reader,
not ours) reports it. tests/unit/test_gguf.c compares every row with what gguf_open finds.

Run once:  /work/main/.pydeps/bin/python tests/golden/make_gemma3_tensors.py [model.gguf]
(default: $TPLLM_GEMMA, else models/gemma-3-270m-q4_k_m.gguf under the source tree).

Columns (tab-separated, one tensor per line, in file order):
  name | ggml type id | dims in GGUF order (ne[0],ne[1],..., comma-separated) |
  absolute byte offset of the data in the file | data bytes
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

from gguf import GGUFReader

ROOT = Path(__file__).resolve().parents[2]


def main() -> int:
    model = Path(sys.argv[1] if len(sys.argv) > 1 else
                 os.environ.get("TPLLM_GEMMA", ROOT / "models" / "gemma-3-270m-q4_k_m.gguf"))
    r = GGUFReader(model)
    out = ROOT / "tests" / "golden" / "gemma3_tensors.tsv"
    with open(out, "w", encoding="utf-8") as f:
        f.write(f"# {model.name}: {len(r.tensors)} tensors, alignment {r.alignment}, "
                f"data section at byte {r.data_offset} (GGUFReader, gguf {version()})\n")
        for t in r.tensors:
            dims = ",".join(str(int(d)) for d in t.shape.tolist())
            f.write(f"{t.name}\t{int(t.tensor_type)}\t{dims}\t{int(t.data_offset)}\t{int(t.n_bytes)}\n")
    print(f"wrote {out} ({len(r.tensors)} tensors)")
    return 0


def version() -> str:
    from importlib.metadata import version as v
    return v("gguf")


if __name__ == "__main__":
    sys.exit(main())
