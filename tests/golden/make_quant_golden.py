#!/usr/bin/env python3
"""make_quant_golden.py - golden (de)quantization data from the gguf package (llama.cpp's
own Python quantizer), which tests/unit/test_quant.c compares kernels/quant.c against.

Run:  .pydeps/bin/python tests/golden/make_quant_golden.py   (from the repository root)
Writes tests/golden/quant/<TYPE>.bin, one file per ggml type, little endian:

    char[4]  "TPQG"
    u32      version (1)
    u32      ggml type id
    u32      n_deq       elements of section A
    u32      n_q         elements of section B (0: gguf cannot quantize this type)
    section A: n_deq/block*type_size random block bytes (fp16 scale fields finite),
               then f32[n_deq] = gguf.quants.dequantize(those bytes)
    section B: f32[n_q] input values, then n_q/block*type_size bytes =
               gguf.quants.quantize(input)

and, when llama-cpp-python is installed, tests/golden/quant/<TYPE>.dot.bin: llama.cpp's own
CPU dot products (libggml-cpu's from_float of the vec_dot type, then vec_dot, called
through ctypes) of random weight rows with random activations:

    char[4]  "TPQD"
    u32      version (1), ggml type id, n_in, n_out, n_tok
    n_out rows of n_in/block*type_size weight bytes
    f32[n_tok][n_in] activations
    f32[n_tok][n_out] y = llama.cpp's result

The data comes from a fixed seed, so rerunning reproduces the files exactly (the .dot
files up to llama.cpp's float rounding on the machine that ran it).
"""
import ctypes
import os
import struct
import sys

import numpy as np
from gguf import GGMLQuantizationType as T
from gguf import quants
from gguf.constants import GGML_QUANT_SIZES

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "quant")

# Types with their byte offsets of fp16 scale fields inside a block (those get finite
# random values; every other byte is uniformly random), and whether gguf can quantize.
TYPES = {
    T.F32: ([], True),
    T.F16: ([], True),
    T.BF16: ([], True),
    T.Q4_0: ([0], True),
    T.Q4_1: ([0, 2], True),
    T.Q5_0: ([0], True),
    T.Q5_1: ([0, 2], True),
    T.Q8_0: ([0], True),
    T.Q2_K: ([80, 82], False),
    T.Q3_K: ([108], False),
    T.Q4_K: ([0, 2], False),
    T.Q5_K: ([0, 2], False),
    T.Q6_K: ([208], False),
}


def random_scales(rng, n):
    """fp16 scales spanning normals and subnormals, both signs."""
    mag = 10.0 ** rng.uniform(-7.5, 1.0, n)
    return (mag * rng.choice([-1.0, 1.0], n)).astype(np.float16)


def random_half_bits(rng, n, bf16):
    """Random 16-bit patterns of finite values, infinities, zeros and subnormals (no NaN:
    NaN payloads are not part of the contract)."""
    bits = rng.integers(0, 1 << 16, n, dtype=np.uint32).astype(np.uint16)
    exp_mask, mant_mask = (0x7F80, 0x007F) if bf16 else (0x7C00, 0x03FF)
    nan = ((bits & exp_mask) == exp_mask) & ((bits & mant_mask) != 0)
    bits[nan] &= np.uint16(~exp_mask & 0xFFFF)  # turn NaNs into subnormals
    bits[:4] = [0x0000, 0x8000, exp_mask, exp_mask | 0x8000]
    return bits


def section_a(rng, qt, n):
    block, tsize = GGML_QUANT_SIZES[qt]
    if qt == T.F32:
        vals = (rng.standard_normal(n) * 10.0 ** rng.uniform(-3, 3, n)).astype(np.float32)
        raw = vals.view(np.uint8)
    elif qt in (T.F16, T.BF16):
        raw = random_half_bits(rng, n, qt == T.BF16).view(np.uint8)
    else:
        nb = n // block
        raw = rng.integers(0, 256, (nb, tsize), dtype=np.uint32).astype(np.uint8)
        for off in TYPES[qt][0]:
            raw[:, off:off + 2] = random_scales(rng, nb).view(np.uint8).reshape(nb, 2)
        raw = raw.reshape(-1)
    deq = quants.dequantize(raw, qt).astype(np.float32).reshape(-1)
    assert deq.size == n
    return raw.tobytes(), deq


def quant_input(rng, qt, n):
    block = GGML_QUANT_SIZES[qt][0]
    if qt in (T.F16, T.BF16, T.F32):
        x = (rng.standard_normal(n) * 10.0 ** rng.uniform(-9, 5, n)).astype(np.float32)
        specials = np.array([0.0, -0.0, np.inf, -np.inf, np.nan, 65504.0, 65519.99, 65520.0,
                             1.0 + 2.0 ** -11, 1.0 + 3 * 2.0 ** -11, 2.0 ** -24, 2.0 ** -25,
                             3 * 2.0 ** -26, 1.0 + 2.0 ** -8, 1.0 + 3 * 2.0 ** -8, 6e-8],
                            dtype=np.float32)
        x[:specials.size] = specials
        if qt == T.F32:
            x[4] = 1.0  # keep NaN out of the byte comparison of the identity type
        return x
    nb = n // block
    x = rng.standard_normal((nb, block)) * 10.0 ** rng.uniform(-4, 2, (nb, 1))
    x[0] = 0.0                                      # all zero: d = 0
    x[1] = 0.75                                     # constant block
    x[2] = -np.abs(x[2])                            # all negative
    # many exact ties after scaling; + 0.0 turns -0.0 into +0.0, because for a block of
    # zeros starting with -0.0 gguf and ggml disagree on the sign of d (ggml's is -0.0)
    x[3] = np.round(x[3] * 4) / 4 + 0.0
    x[4, 5] = -np.max(np.abs(x[4])) * 1.5           # negative extreme
    return x.astype(np.float32).reshape(-1)


K_SCALES = {T.Q2_K: [80, 82], T.Q3_K: [108], T.Q4_K: [0, 2], T.Q5_K: [0, 2], T.Q6_K: [208]}


def load_ggml_cpu():
    """libggml-cpu of the installed llama-cpp-python, initialised; None if absent."""
    try:
        import llama_cpp
    except ImportError:
        return None
    lib = os.path.join(os.path.dirname(llama_cpp.__file__), "lib")
    ctypes.CDLL(os.path.join(lib, "libggml-base.so"), mode=ctypes.RTLD_GLOBAL)
    cpu = ctypes.CDLL(os.path.join(lib, "libggml-cpu.so"), mode=ctypes.RTLD_GLOBAL)
    cpu.ggml_cpu_init()
    return cpu


class CpuTraits(ctypes.Structure):  # ggml-cpu.h: struct ggml_type_traits_cpu
    _fields_ = [("from_float", ctypes.c_void_p), ("vec_dot", ctypes.c_void_p),
                ("vec_dot_type", ctypes.c_int), ("nrows", ctypes.c_int64)]


FROM_FLOAT = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64)
VEC_DOT = ctypes.CFUNCTYPE(None, ctypes.c_int, ctypes.POINTER(ctypes.c_float), ctypes.c_size_t, ctypes.c_void_p,
                           ctypes.c_size_t, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)


def dot_golden(cpu, rng, qt, n_out=4, n_tok=2):
    n_in = 263 if qt in (T.F32, T.F16, T.BF16) else 512  # float rows: an odd length for the tails
    cpu.ggml_get_type_traits_cpu.restype = ctypes.POINTER(CpuTraits)
    tr = cpu.ggml_get_type_traits_cpu(int(qt)).contents
    vt = T(tr.vec_dot_type)
    block, tsize = GGML_QUANT_SIZES[qt]
    if qt in K_SCALES:  # random valid blocks, scales small enough to keep sums modest
        w = rng.integers(0, 256, (n_out, n_in // block, tsize), dtype=np.uint32).astype(np.uint8)
        for off in K_SCALES[qt]:
            w[:, :, off:off + 2] = rng.uniform(1e-3, 1e-2, (n_out, n_in // block, 1)).astype(np.float16).view(np.uint8)
        w = w.reshape(n_out, -1)
    else:
        wf = (rng.standard_normal((n_out, n_in)) * 10.0 ** rng.uniform(-2, 0, (n_out, 1))).astype(np.float32)
        w = np.ascontiguousarray(quants.quantize(wf, qt)).view(np.uint8).reshape(n_out, -1)
    w = np.ascontiguousarray(w)
    x = (rng.standard_normal((n_tok, n_in)) * 10.0 ** rng.uniform(-1, 1, (n_tok, 1))).astype(np.float32)
    from_float = FROM_FLOAT(cpu.ggml_get_type_traits_cpu(int(vt)).contents.from_float)
    vec_dot = VEC_DOT(tr.vec_dot)
    vb, vts = GGML_QUANT_SIZES[vt]
    y = np.zeros((n_tok, n_out), np.float32)
    for t in range(n_tok):
        xq = np.zeros(n_in // vb * vts + 64, np.uint8)
        xt = np.ascontiguousarray(x[t])
        from_float(xt.ctypes.data, xq.ctypes.data, n_in)
        for o in range(n_out):
            r = ctypes.c_float()
            vec_dot(n_in, ctypes.byref(r), 0, w[o].ctypes.data, 0, xq.ctypes.data, 0, 1)
            y[t, o] = r.value
    path = os.path.join(OUT, qt.name + ".dot.bin")
    with open(path, "wb") as f:
        f.write(b"TPQD" + struct.pack("<5I", 1, int(qt), n_in, n_out, n_tok))
        f.write(w.tobytes())
        f.write(x.astype("<f4").tobytes())
        f.write(y.astype("<f4").tobytes())
    print(f"{path}: {os.path.getsize(path)} bytes", file=sys.stderr)


def main():
    rng = np.random.default_rng(20240611)
    os.makedirs(OUT, exist_ok=True)
    for qt, (_, can_quant) in TYPES.items():
        block, tsize = GGML_QUANT_SIZES[qt]
        n_deq = 1024 if block == 256 else 512
        raw, deq = section_a(rng, qt, n_deq)
        assert len(raw) == n_deq // block * tsize
        n_q = 0
        x = qbytes = b""
        if can_quant:
            n_q = 512
            xv = quant_input(rng, qt, n_q)
            with np.errstate(over="ignore", invalid="ignore"):  # inf/NaN are intended
                q = quants.quantize(xv, qt)
            qbytes = np.ascontiguousarray(q).view(np.uint8).tobytes()
            assert len(qbytes) == n_q // block * tsize
            x = xv.tobytes()
        path = os.path.join(OUT, qt.name + ".bin")
        with open(path, "wb") as f:
            f.write(b"TPQG" + struct.pack("<4I", 1, int(qt), n_deq, n_q))
            f.write(raw)
            f.write(deq.astype("<f4").tobytes())
            f.write(x)
            f.write(qbytes)
        print(f"{path}: {os.path.getsize(path)} bytes", file=sys.stderr)

    cpu = load_ggml_cpu()
    if cpu is None:
        print("llama-cpp-python not installed: .dot.bin files left as they are", file=sys.stderr)
        return
    rng = np.random.default_rng(20240612)
    for qt in TYPES:
        dot_golden(cpu, rng, qt)


if __name__ == "__main__":
    main()
