#!/usr/bin/env python3
"""gguf_dump_json.py - print a GGUF file as JSON, as the PyPI gguf package (llama.cpp's own
Python reader and dequantizer, not tpllm's code) reads it. Used by tests/unit/test_gguf_writer.c
and tests/unit/test_inspect.c as the reference for what tpllm wrote.

usage: gguf_dump_json.py FILE [--values N] [--max-array N]

Output: {"version", "alignment", "data_offset",
         "kv": {key: {"type": "UINT32" | ... | "ARRAY", "elem": elem type and "n": length (arrays),
                      "value": ... (null for arrays longer than --max-array)}},
         "tensors": [{"name", "type" (ggml name), "type_id", "shape" (ne order), "offset" (absolute),
                      "n_bytes", "values": first N dequantized values as floats (N = --values)}]}
Floats are written with repr precision, so float32 values round-trip exactly.
"""
import argparse
import json
import sys

import numpy as np
from gguf import GGUFReader, GGUFValueType, dequantize


def value(field, max_array):
    t = field.types[0]
    if t == GGUFValueType.ARRAY:
        n = len(field.data)
        out = {"type": "ARRAY", "elem": field.types[1].name if len(field.types) > 1 else "UINT8", "n": n,
               "value": None}
        if max_array < 0 or n <= max_array:
            out["value"] = [x if isinstance(x, str) else (float(x) if isinstance(x, float) else x)
                            for x in field.contents()]
        return out
    v = field.contents()
    if isinstance(v, (np.floating, float)):
        v = float(v)
    elif isinstance(v, (np.integer,)):
        v = int(v)
    elif isinstance(v, (np.bool_,)):
        v = bool(v)
    return {"type": t.name, "value": v}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("file")
    ap.add_argument("--values", type=int, default=0)
    ap.add_argument("--max-array", type=int, default=-1, help="leave out the values of longer arrays")
    a = ap.parse_args()
    r = GGUFReader(a.file)
    out = {"version": int(r.fields["GGUF.version"].contents()), "alignment": int(r.alignment),
           "data_offset": int(r.data_offset), "kv": {}, "tensors": []}
    for k, f in r.fields.items():
        if k.startswith("GGUF."):
            continue
        out["kv"][k] = value(f, a.max_array)
    for t in r.tensors:
        d = {"name": t.name, "type": t.tensor_type.name, "type_id": int(t.tensor_type),
             "shape": [int(x) for x in t.shape], "offset": int(t.data_offset), "n_bytes": int(t.n_bytes)}
        if a.values > 0:
            x = np.asarray(dequantize(t.data, t.tensor_type), dtype=np.float32).reshape(-1)[: a.values]
            d["values"] = [float(v) for v in x]
        out["tensors"].append(d)
    json.dump(out, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
