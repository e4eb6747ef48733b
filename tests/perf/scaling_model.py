#!/usr/bin/env python3
"""scaling_model.py - a performance model of tpllm's tensor parallelism (docs/scaling.md).

From a model shape and a hardware description it computes, per rank:
  - the weight bytes a decode step reads (tpllm's shard plan, parallel/shard.c, re-done here),
  - the KV-cache bytes a decode token reads at a given context,
  - the bytes and calls of the collectives per decode step and per prompt token, for three
    reduction schemes of the two row-parallel projections per layer:
      (a) all-gather of double partials (tpllm up to commit 817e5e8; on GPUs, NCCL, still),
      (b) reduce-scatter of double partials (an all-to-all + a sum in rank order) + all-gather
          of the float results (tpllm since 9c64224 on MPI, for reductions >= 64 KiB per rank),
      (c) a float ring all-reduce (what NCCL would do; its bits depend on the TP size),
  - expected decode tokens/s (batch 1 and aggregate at batch B) and a prompt tokens/s bound;
and prints it all as Markdown. The last section sets the model beside figures measured on
this project's 2-vCPU machine.

Standard library only:   python3 tests/perf/scaling_model.py [--gguf FILE ...] [--section NAME ...]
                          python3 tests/perf/scaling_model.py --check-plan build/tpllm

Every hardware figure is marked "measured" (with where) or "assumed" (vendor spec times an
assumed achievable fraction). Nothing here is a measurement of a GPU.
"""
import argparse
import math
import os
import struct
import sys
from dataclasses import dataclass, replace

# ---------------------------------------------------------------------------------------
# quantization: (values per block, bytes per block), as in GGML
QTYPES = {
    "F32": (1, 4), "F16": (1, 2), "BF16": (1, 2),
    "Q4_0": (32, 18), "Q4_1": (32, 20), "Q5_0": (32, 22), "Q5_1": (32, 24), "Q8_0": (32, 34),
    "Q2_K": (256, 84), "Q3_K": (256, 110), "Q4_K": (256, 144), "Q5_K": (256, 176), "Q6_K": (256, 210),
}
GGML_TYPE_NAMES = {0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 6: "Q5_0", 7: "Q5_1", 8: "Q8_0", 10: "Q2_K",
                   11: "Q3_K", 12: "Q4_K", 13: "Q5_K", 14: "Q6_K", 30: "BF16"}


def tbytes(qtype, rows, cols):
    """Bytes of a rows x cols slice (cols along the quantization blocks)."""
    blk, size = QTYPES[qtype]
    assert cols % blk == 0, (qtype, rows, cols)
    return rows * (cols // blk) * size


def block_of(qtype):
    return QTYPES[qtype][0]


LAYER_ROLES = ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down")


@dataclass
class Model:
    name: str
    n_embd: int
    n_layer: int
    n_head: int
    n_head_kv: int
    head_dim: int
    n_ff: int
    n_vocab: int
    layer_types: list            # per layer: {role: qtype}
    output_type: str             # LM head (token_embd's type when tied)
    tied: bool = False           # LM head = token_embd (Gemma)
    head_dim_v: int = 0
    qk_norm: bool = False
    post_norms: bool = False
    sliding_window: int = 0
    swa_period: int = 0
    kv_type: str = "F16"         # tpllm's default KV-cache type

    @property
    def hdv(self):
        return self.head_dim_v or self.head_dim

    def layer_is_swa(self, il):  # runtime/config.c, model_config_layer_is_swa
        return self.sliding_window > 0 and self.swa_period > 0 and il % self.swa_period < self.swa_period - 1

    def quant_label(self):
        kinds = sorted({t for lt in self.layer_types for t in lt.values()} | {self.output_type})
        return "/".join(kinds)


def uniform_model(name, n_embd, n_layer, n_head, n_head_kv, head_dim, n_ff, n_vocab, qtype, **kw):
    return Model(name=name, n_embd=n_embd, n_layer=n_layer, n_head=n_head, n_head_kv=n_head_kv, head_dim=head_dim,
                 n_ff=n_ff, n_vocab=n_vocab, layer_types=[{r: qtype for r in LAYER_ROLES} for _ in range(n_layer)],
                 output_type=qtype, **kw)


def llama3_70b(qtype):
    return uniform_model(f"Llama 3 70B {qtype}", 8192, 80, 64, 8, 128, 28672, 128256, qtype)


def llama_1b(qtype):
    return uniform_model(f"1B synthetic {qtype}", 2048, 16, 32, 8, 64, 5632, 32000, qtype)


# ---------------------------------------------------------------------------------------
# GGUF header reader (shape and per-tensor types; no tensor data is read)
def read_gguf(path):
    f = open(path, "rb")

    def rd(fmt):
        n = struct.calcsize(fmt)
        return struct.unpack("<" + fmt, f.read(n))

    def rstr():
        (n,) = rd("Q")
        return f.read(n).decode("utf-8", "replace")

    scalar = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}

    def rval(t):
        if t in scalar:
            return rd(scalar[t])[0]
        if t == 8:
            return rstr()
        if t == 9:
            (et,) = rd("I")
            (n,) = rd("Q")
            if et in scalar:  # skip numeric arrays without decoding them
                f.seek(n * struct.calcsize(scalar[et]), os.SEEK_CUR)
                return None
            items = [rval(et) for _ in range(n)]  # strings (the vocabulary): read past them
            return items if n < 64 else None
        raise ValueError(f"{path}: unknown GGUF value type {t}")

    if f.read(4) != b"GGUF":
        raise ValueError(f"{path}: not a GGUF file")
    (ver,) = rd("I")
    n_t, n_kv = rd("QQ")
    kv = {}
    for _ in range(n_kv):
        k = rstr()
        (t,) = rd("I")
        kv[k] = rval(t)
    tensors = {}
    for _ in range(n_t):
        name = rstr()
        (nd,) = rd("I")
        dims = rd("Q" * nd)
        (t,) = rd("I")
        rd("Q")
        tensors[name] = (dims, GGML_TYPE_NAMES.get(t, f"type{t}"))
    f.close()
    return kv, tensors


def model_from_gguf(path):
    kv, tens = read_gguf(path)
    a = kv["general.architecture"]
    g = lambda k, d=None: kv.get(f"{a}.{k}", d)
    n_embd, n_layer, n_head = g("embedding_length"), g("block_count"), g("attention.head_count")
    n_kv = g("attention.head_count_kv", n_head)
    hd = g("attention.key_length", n_embd // n_head)
    hdv = g("attention.value_length", hd)
    n_ff = g("feed_forward_length")
    emb_dims, emb_type = tens["token_embd.weight"]
    tied = "output.weight" not in tens
    lt = [{r: tens[f"blk.{il}.{r}.weight"][1] for r in LAYER_ROLES} for il in range(n_layer)]
    m = Model(name=f"{kv.get('general.name', os.path.basename(path))} ({os.path.basename(path)})", n_embd=n_embd,
              n_layer=n_layer, n_head=n_head, n_head_kv=n_kv, head_dim=hd, head_dim_v=hdv if hdv != hd else 0,
              n_ff=n_ff, n_vocab=emb_dims[1], layer_types=lt,
              output_type=emb_type if tied else tens["output.weight"][1], tied=tied,
              qk_norm=f"blk.0.attn_q_norm.weight" in tens, post_norms="blk.0.post_ffw_norm.weight" in tens)
    if a == "gemma3":  # runtime/config.c: Gemma 3 has sliding-window layers, 5 of every 6
        m.sliding_window = g("attention.sliding_window", 0)
        m.swa_period = 6
    return m


# ---------------------------------------------------------------------------------------
# the shard plan (parallel/shard.c, the same arithmetic)
def lcm(a, b):
    return a // math.gcd(a, b) * b


def col_align(block):
    return lcm(block if block > 0 else 1, 64)


def split(n, tp, r):
    base, extra = divmod(n, tp)
    begin = r * base + min(r, extra)
    return begin, begin + base + (1 if r < extra else 0)


@dataclass
class Plan:
    tp: int
    q_heads: list
    kv_heads: list
    ff: list
    vocab: list


def shard_plan(m, tp):
    o_block = max(block_of(lt["attn_output"]) for lt in m.layer_types)
    down_block = max(block_of(lt["ffn_down"]) for lt in m.layer_types)
    group = m.n_head // m.n_head_kv
    blk = col_align(o_block)
    align = blk // math.gcd(blk, m.hdv)
    hu = min(lcm(group, align) if tp <= m.n_head_kv else align, m.n_head)
    fu = lcm(col_align(down_block), 256)
    n_h, n_f = -(-m.n_head // hu), -(-m.n_ff // fu)
    if tp > max(n_h, n_f) or tp > m.n_vocab:
        raise ValueError(f"tp {tp} cannot work for {m.name}")
    p = Plan(tp, [], [], [], [])
    for r in range(tp):
        hb, he = split(n_h, tp, r)
        q = (min(hb * hu, m.n_head), min(he * hu, m.n_head))
        p.q_heads.append(q)
        p.kv_heads.append((q[0] // group, (q[1] - 1) // group + 1) if q[1] > q[0] else (0, 0))
        fb, fe = split(n_f, tp, r)
        p.ff.append((min(fb * fu, m.n_ff), min(fe * fu, m.n_ff)))
        p.vocab.append(split(m.n_vocab, tp, r))
    return p


def n_of(rng):
    return rng[1] - rng[0]


@dataclass
class RankShare:
    weights_read: int     # bytes one decode step reads: everything the rank holds but token_embd (unless it
                          # is the tied LM head); equals the sum of `tpllm plan --tensors` for the rank
    params_layers: int    # weights of the layers (for the FLOP count of a prompt token)
    params_head: int      # LM-head weights
    nq: int
    nkv: int
    kv_per_pos: list      # KV bytes per cached position, per layer


def rank_share(m, plan, r):
    d, hd, hdv = m.n_embd, m.head_dim, m.hdv
    nq, nkv, nff, nv = n_of(plan.q_heads[r]), n_of(plan.kv_heads[r]), n_of(plan.ff[r]), n_of(plan.vocab[r])
    w = 0
    params = 0
    for lt in m.layer_types:
        w += tbytes(lt["attn_q"], nq * hd, d) + tbytes(lt["attn_k"], nkv * hd, d) + tbytes(lt["attn_v"], nkv * hdv, d)
        w += tbytes(lt["attn_output"], d, nq * hdv)
        w += tbytes(lt["ffn_gate"], nff, d) + tbytes(lt["ffn_up"], nff, d) + tbytes(lt["ffn_down"], d, nff)
        w += 4 * d * 2 + (4 * hd * 2 if m.qk_norm else 0) + (4 * d * 2 if m.post_norms else 0)  # replicated norms
        params += d * (nq * hd + nkv * hd + nkv * hdv) + d * nq * hdv + 3 * d * nff
    head = tbytes(m.output_type, nv, d)
    w += 4 * d + head  # output_norm + this rank's vocabulary rows of the LM head
    kvb = QTYPES[m.kv_type][1]
    kv = [nkv * (hd + hdv) * kvb for _ in range(m.n_layer)]
    return RankShare(weights_read=w, params_layers=params, params_head=nv * d, nq=nq, nkv=nkv,
                     kv_per_pos=kv)


def kv_read(m, share, ctx):
    """KV bytes one decode token reads on this rank at context ctx (sliding-window layers: the window)."""
    return sum(b * (min(ctx, m.sliding_window) if m.layer_is_swa(il) else ctx) for il, b in enumerate(share.kv_per_pos))


# ---------------------------------------------------------------------------------------
# collectives
SCHEMES = {
    "a": "(a) all-gather of double partials",
    "b": "(b) reduce-scatter f64 + all-gather f32",
    "c": "(c) float all-reduce (NCCL ring)",
    "mpi": "tpllm on MPI: (a) below 64 KiB per rank, else (b)",
}
RS_MIN_BYTES = 64 << 10  # runtime/forward.c: partials per rank from which the MPI path takes (b)
N_CAND = 64  # engine_opts_default: n_cand; each rank sends n_cand + 1 (id, value) pairs per logit row
STEP_HDR = 28  # struct step_hdr: 7 int32


def reduction(scheme, tp, n):
    """(bytes received per rank, bytes sent per rank, calls) for one row-parallel reduction of n values."""
    if tp == 1:
        return 0.0, 0.0, 0
    f = (tp - 1) / tp
    if scheme == "mpi":
        scheme = "b" if n * 8 >= RS_MIN_BYTES else "a"
    if scheme == "a":
        return (tp - 1) * n * 8.0, n * 8.0, 1
    if scheme == "b":
        return f * n * 8 + f * n * 4, f * n * 8 + f * n * 4, 2
    if scheme == "c":
        return 2 * f * n * 4, 2 * f * n * 4, 1
    raise ValueError(scheme)


@dataclass
class StepComm:
    recv_reduce: float   # bytes received per rank by the 2 x n_layer reductions
    recv_other: float    # step broadcasts + sampling candidates
    calls: int


def step_comm(m, scheme, tp, n_tok, n_rows):
    """Collectives of one step of n_tok tokens producing n_rows logit rows (engine.c + forward.c)."""
    if tp == 1:
        return StepComm(0.0, 0.0, 0)
    rb, _, calls = reduction(scheme, tp, n_tok * m.n_embd)
    red = 2 * m.n_layer * rb
    payload = n_tok * 20 + n_rows * 32 + n_rows * 4  # tokens/positions/slots, per-row targets and penalties
    cand = (tp - 1) * n_rows * (N_CAND + 1) * 8
    other = STEP_HDR + payload + cand + 4  # header, payload, candidates, need_full flag
    return StepComm(red, other, 2 * m.n_layer * calls + 4)


def logits_gather(m, tp, n_rows):
    """Bytes per rank of the full-vocabulary all-gather (only when a sampler needs every logit)."""
    nv_max = split(m.n_vocab, tp, 0)[1]
    return (tp - 1) * n_rows * nv_max * 4


# ---------------------------------------------------------------------------------------
# hardware
@dataclass
class Hardware:
    name: str
    mem_bw: float      # bytes/s one rank reads (achievable)
    flops: float       # FLOP/s one rank computes in a prompt matmul (achievable)
    link_bw: float     # bytes/s one rank receives over the link the TP group spans
    lat: float         # seconds per collective call
    source: str


# Assumed achievable fractions of vendor peaks (none of this is measured by the project).
FRAC_HBM, FRAC_NVLINK, FRAC_FLOPS = 0.80, 0.80, 0.50
NVLINK_GBS = 450.0 * FRAC_NVLINK  # NVLink 4 (H100/H200 SXM): 900 GB/s both directions = 450 per direction per GPU
IB_GBS = 45.0                     # NDR 400 Gb/s = 50 GB/s per direction, one NIC per GPU; ~45 achievable
LAT_NVLINK_US = 10.0              # one NCCL collective of <= ~1 MB among 8 GPUs of a node (assumed)
LAT_IB_US = 25.0                  # the same among 16 GPUs of 2 nodes (assumed)
BF16_TFLOPS = 989.0               # H100/H200 SXM dense BF16 tensor-core peak


def gpu(name, hbm_tbs, link_gbs, lat_us, link_note):
    return Hardware(
        name=name, mem_bw=hbm_tbs * 1e12 * FRAC_HBM, flops=BF16_TFLOPS * 1e12 * FRAC_FLOPS, link_bw=link_gbs * 1e9,
        lat=lat_us * 1e-6,
        source=(f"assumed: HBM {hbm_tbs} TB/s x {FRAC_HBM:.0%}; {BF16_TFLOPS:g} TFLOP/s BF16 x {FRAC_FLOPS:.0%}; "
                f"{link_note}; {lat_us:g} us per collective call"))


PRESETS = {
    "h100-nvlink": gpu("8x H100 SXM, NVLink (1 node)", 3.35, NVLINK_GBS, LAT_NVLINK_US,
                       f"NVLink 450 GB/s per direction x {FRAC_NVLINK:.0%}"),
    "h200-nvlink": gpu("8x H200 SXM, NVLink (1 node)", 4.8, NVLINK_GBS, LAT_NVLINK_US,
                       f"NVLink 450 GB/s per direction x {FRAC_NVLINK:.0%}"),
    "h100-ib": gpu("2 nodes x 8 H100 SXM, NDR IB", 3.35, IB_GBS, LAT_IB_US, "IB NDR 400 Gb/s per GPU, 45 GB/s"),
    "h200-ib": gpu("2 nodes x 8 H200 SXM, NDR IB", 4.8, IB_GBS, LAT_IB_US, "IB NDR 400 Gb/s per GPU, 45 GB/s"),
}

# This machine: 2 vCPUs of an AMD EPYC (Zen 3, KVM guest). All measured:
#  - read bandwidth: tests/perf/bwprobe (1 GiB, best of 5 passes) in this session: 17.5 GB/s with 1 thread,
#    29.4 GB/s with 2 (other probes that day: 23.8-32.0 with 2 threads; docs/benchmarks.md has 19.6 / 31.4);
#    the ranks of the node share it;
#  - prompt matmul: bench_kernels, batched 512 tokens (docs/benchmarks.md, "CPU kernels"), GFLOP/s;
#  - MPI over shared memory (vader, single copy off, as tests/mpi/mpirun.sh runs it) and over TCP between
#    the network namespaces of cluster/localhosts.sh: a latency per call and a bandwidth fitted to
#    comm_stress's and tests/perf/standalone/mpi_linkbench.c's figures (docs/scaling.md lists them).
HERE_BW = {1: 17.5e9, 2: 29.4e9}
HERE_BW2_RANGE = (23.8e9, 32.0e9)
HERE_GFLOPS = {"Q4_0": {1: 77.6, 2: 153.6}, "Q8_0": {1: 74.0, 2: 147.7}}
# (us per call, bytes/s received), fitted to comm_stress (tpllm's own communicator, 2 ranks) in this session:
# vader: all-gather of 2048 doubles 11.7 us, of 614400 doubles 1.70 ms; TCP between namespaces: 57 us, 5.6 ms
HERE_LINKS = {"vader": (5.0, 3.0e9), "tcp": (50.0, 0.9e9)}


def here(threads_per_rank, ranks, qtype, link="vader", bw2=None):
    bw2 = bw2 or HERE_BW[2]
    total = threads_per_rank * ranks
    if ranks == 1:
        bw = HERE_BW[1] if threads_per_rank == 1 else bw2
    else:
        bw = (bw2 if total >= 2 else HERE_BW[1]) / ranks
    lat_us, lbw = HERE_LINKS[link]
    return Hardware(name=f"this machine, tp={ranks} x {threads_per_rank} thread{'s' if threads_per_rank > 1 else ''}"
                         + (f", {link}" if ranks > 1 else ""),
                    mem_bw=bw, flops=HERE_GFLOPS[qtype][min(threads_per_rank, 2)] * 1e9, link_bw=lbw,
                    lat=lat_us * 1e-6, source="measured (bwprobe, bench_kernels, comm_stress + mpi_linkbench)")


# ---------------------------------------------------------------------------------------
# the model
@dataclass
class StepTime:
    weights: float
    kv: float
    link: float
    latency: float
    compute: float = 0.0

    @property
    def total(self):
        return max(self.weights + self.kv, self.compute) + self.link + self.latency


def worst_share(m, plan):
    """The rank that reads the most bytes sets the pace: every reduction waits for it."""
    shares = [rank_share(m, plan, r) for r in range(plan.tp)]
    return max(shares, key=lambda s: s.weights_read + sum(s.kv_per_pos))


def decode_step(m, hw, tp, scheme, batch, ctx):
    """One decode step of `batch` sequences at context ctx: weights once, KV per sequence, collectives."""
    s = worst_share(m, shard_plan(m, tp))
    c = step_comm(m, scheme, tp, batch, batch)
    return StepTime(weights=s.weights_read / hw.mem_bw, kv=batch * kv_read(m, s, ctx) / hw.mem_bw,
                    link=(c.recv_reduce + c.recv_other) / hw.link_bw, latency=c.calls * hw.lat,
                    compute=batch * 2 * (s.params_layers + s.params_head) / hw.flops)


def prompt_time(m, hw, tp, scheme, n_prompt, chunk=512):
    """(compute s, collective s) of one n_prompt-token prompt in steps of `chunk` tokens: 2 FLOP per weight
    per token plus attention over the tokens before it, the LM head for the last row only."""
    s = worst_share(m, shard_plan(m, tp))
    flop = 2 * s.params_layers * n_prompt + 2 * s.params_head
    for il in range(m.n_layer):
        for i in range(0, n_prompt, 64):  # QK and PV: 4 x heads x head_dim per (query, key) pair
            n = min(64, n_prompt - i)
            keys = i + n / 2
            if m.layer_is_swa(il):
                keys = min(keys, m.sliding_window)
            flop += 4 * s.nq * m.head_dim * keys * n
    comm_b, calls = 0.0, 0
    for i in range(0, n_prompt, chunk):
        c = step_comm(m, scheme, tp, min(chunk, n_prompt - i), 1)
        comm_b += c.recv_reduce + c.recv_other
        calls += c.calls
    return flop / hw.flops, comm_b / hw.link_bw + calls * hw.lat


def prompt_rate(m, hw, tp, scheme, n_prompt, chunk=512):
    tc, tl = prompt_time(m, hw, tp, scheme, n_prompt, chunk)
    return n_prompt / (tc + tl), tc, tl


def crossover_tokens(m, hw, tp):
    """Tokens per step from which (b) costs less link time than (a) (one reduction)."""
    for t in range(1, 4097):
        ra, _, ca = reduction("a", tp, t * m.n_embd)
        rb, _, cb = reduction("b", tp, t * m.n_embd)
        if rb / hw.link_bw + cb * hw.lat < ra / hw.link_bw + ca * hw.lat:
            return t
    return None


# ---------------------------------------------------------------------------------------
# output
def gib(b):
    return b / 2**30


def mib(b):
    return b / 2**20


def table(head, rows, align=None):
    out = ["| " + " | ".join(head) + " |"]
    align = align or ["---"] + ["---:"] * (len(head) - 1)
    out.append("| " + " | ".join(align) + " |")
    out += ["| " + " | ".join(str(x) for x in r) + " |" for r in rows]
    return "\n".join(out)


def size_str(b):
    return f"{gib(b):.2f} GiB" if b >= 2**30 else f"{mib(b):.1f} MiB"


GPU_CFG = [("tp=8, 8x H100 NVLink", "h100-nvlink", 8), ("tp=8, 8x H200 NVLink", "h200-nvlink", 8),
           ("tp=16, 2x8 H100 IB", "h100-ib", 16), ("tp=16, 2x8 H200 IB", "h200-ib", 16)]


def sec_summary(m, ctx):
    print(f"### Summary: {m.name}, decode tok/s, context {ctx}\n")
    print("Per sequence at batch 1, and aggregate at batch 32. tpllm on GPUs (NCCL) reduces with (a) today; "
          "(c) is not deterministic across TP sizes (why tpllm does not use it).\n")
    rows = []
    for label, key, tp in GPU_CFG:
        hw = PRESETS[key]
        s = worst_share(m, shard_plan(m, tp))
        rows.append([label, size_str(s.weights_read), size_str(kv_read(m, s, ctx))] +
                    [f"{1 / decode_step(m, hw, tp, sc, 1, ctx).total:.0f}" for sc in "abc"] +
                    [f"{32 / decode_step(m, hw, tp, sc, 32, ctx).total:,.0f}" for sc in "abc"])
    print(table(["config", "weights/rank", "KV read/token/rank", "(a) b=1", "(b) b=1", "(c) b=1", "(a) b=32",
                 "(b) b=32", "(c) b=32"], rows))
    print()


def sec_hardware():
    print("### Hardware descriptions (per rank)\n")
    rows = []
    for k, h in PRESETS.items():
        rows.append([f"`{k}`: {h.name}", f"{h.mem_bw / 1e12:.2f} TB/s", f"{h.flops / 1e12:.0f} TFLOP/s",
                     f"{h.link_bw / 1e9:.0f} GB/s", f"{h.lat * 1e6:g} us", h.source])
    for ranks, th, link in ((1, 2, "vader"), (2, 1, "vader"), (2, 1, "tcp")):
        h = here(th, ranks, "Q4_0", link)
        rows.append([h.name, f"{h.mem_bw / 1e9:.1f} GB/s", f"{h.flops / 1e9:.0f} GFLOP/s (Q4_0)",
                     f"{h.link_bw / 1e9:.1f} GB/s" if ranks > 1 else "-", f"{h.lat * 1e6:g} us" if ranks > 1 else "-",
                     h.source])
    print(table(["hardware", "memory read", "prompt matmul", "link, received", "latency/call", "source"], rows,
                ["---", "---:", "---:", "---:", "---:", "---"]))
    print()


def sec_weights(models, tps):
    rows = []
    for m in models:
        cells = [m.name]
        for tp in tps:
            try:
                s = worst_share(m, shard_plan(m, tp))
            except ValueError:
                cells.append("-")
                continue
            cells.append(f"{size_str(s.weights_read)} [{s.nkv} kv]")
        rows.append(cells)
    print(table(["model"] + [f"tp={t}" for t in tps], rows))
    print()


def sec_kv(models, tps, ctxs):
    rows = []
    for m in models:
        for ctx in ctxs:
            cells = [m.name, ctx]
            for tp in tps:
                try:
                    s = worst_share(m, shard_plan(m, tp))
                except ValueError:
                    cells.append("-")
                    continue
                cells.append(size_str(kv_read(m, s, ctx)))
            rows.append(cells)
    print(table(["model", "context"] + [f"tp={t}" for t in tps], rows))
    print()


def sec_comm(models, tps):
    rows = []
    for m in models:
        for tp in tps:
            for sc in "abc":
                d = step_comm(m, sc, tp, 1, 1)
                p = step_comm(m, sc, tp, 512, 1)
                rows.append([m.name, tp, SCHEMES[sc], f"{d.recv_reduce / 1e3:,.0f} kB", f"{d.recv_other / 1e3:.1f} kB",
                             d.calls, f"{p.recv_reduce / 512 / 1e3:,.0f} kB", p.calls])
            rows.append([m.name, tp, "full-vocabulary logits all-gather", f"{logits_gather(m, tp, 1) / 1e3:,.0f} kB",
                         "", 1, "", ""])
    print(table(["model", "tp", "scheme", "decode: reductions", "decode: rest of step", "decode calls",
                 "prompt: per token", "calls per 512-token step"], rows,
                ["---", "---:", "---"] + ["---:"] * 5))
    print()


def sec_decode(models, ctx, batches):
    rows = []
    for m in models:
        for label, key, tp in GPU_CFG:
            hw = PRESETS[key]
            for sc in "abc":
                st = decode_step(m, hw, tp, sc, 1, ctx)
                cells = [m.name, label, SCHEMES[sc], f"{(st.weights + st.kv) * 1e3:.2f}", f"{st.link * 1e3:.2f}",
                         f"{st.latency * 1e3:.2f}", f"**{1 / st.total:.0f}**"]
                cells += [f"{b / decode_step(m, hw, tp, sc, b, ctx).total:,.0f}" for b in batches]
                rows.append(cells)
    print(table(["model", "config", "scheme", "memory ms", "link ms", "latency ms", "b=1 tok/s"] +
                [f"b={b} agg" for b in batches], rows, ["---"] * 3 + ["---:"] * (4 + len(batches))))
    print()


def sec_crossover(m):
    rows = []
    for label, key, tp in GPU_CFG[1:3]:
        t = crossover_tokens(m, PRESETS[key], tp)
        rows.append([m.name, label, t, f"{t * m.n_embd * 8 / 1024:,.0f} KiB"])
    for qt in ("Q4_0",):
        small = llama_1b(qt)
        for link in ("vader", "tcp"):
            hw = here(1, 2, qt, link)
            t = crossover_tokens(small, hw, 2)
            rows.append([small.name, hw.name, t, f"{t * small.n_embd * 8 / 1024:,.0f} KiB"])
    print(table(["model", "hardware", "tokens per step", "partials per rank"], rows,
                ["---", "---", "---:", "---:"]))
    print()


def sec_pp(m, ctx, batches):
    rows = []
    for nv_key, ib_key in (("h100-nvlink", "h100-ib"), ("h200-nvlink", "h200-ib")):
        nv, ib = PRESETS[nv_key], PRESETS[ib_key]
        gpu_name = nv_key.split("-")[0].upper()
        half = replace(m, n_layer=m.n_layer // 2, layer_types=m.layer_types[: m.n_layer // 2])

        def hop(b):  # one activation (b x n_embd floats) to the next node
            return ib.lat + b * m.n_embd * 4 / ib.link_bw

        for sc in "ac":
            row8 = [gpu_name, SCHEMES[sc], "tp=8, one node", f"{1 / decode_step(m, nv, 8, sc, 1, ctx).total:.0f}"]
            row8 += [f"{b / decode_step(m, nv, 8, sc, b, ctx).total:,.0f}" for b in batches]
            row16 = [gpu_name, SCHEMES[sc], "tp=16, two nodes", f"{1 / decode_step(m, ib, 16, sc, 1, ctx).total:.0f}"]
            row16 += [f"{b / decode_step(m, ib, 16, sc, b, ctx).total:,.0f}" for b in batches]
            # pp = 2: a token passes both stages in turn; with two micro-batches of b/2 both stages are busy
            t1 = 2 * (decode_step(half, nv, 8, sc, 1, ctx).total + hop(1))
            rowpp = [gpu_name, SCHEMES[sc], "pp=2 x tp=8 (tpllm: none)", f"{1 / t1:.0f}"]
            rowpp += [f"{(b / 2) / (decode_step(half, nv, 8, sc, b // 2, ctx).total + hop(b // 2)):,.0f}" for b in batches]
            rows += [row8, row16, rowpp]
    print(table(["GPU", "scheme", "layout", "b=1 tok/s"] + [f"b={b} agg" for b in batches], rows,
                ["---"] * 3 + ["---:"] * (1 + len(batches))))
    print()


def sec_prompt(m, n_prompt):
    rows = []
    for label, key, tp in GPU_CFG:
        hw = PRESETS[key]
        for sc in "abc":
            r, tc, tl = prompt_rate(m, hw, tp, sc, n_prompt)
            rows.append([m.name, label, SCHEMES[sc], f"{tc * 1e3:.0f}", f"{tl * 1e3:.0f}", f"{r:,.0f}"])
    print(table(["model", "config", "scheme", "compute ms", "collectives ms", "prompt tok/s"], rows,
                ["---"] * 3 + ["---:"] * 3))
    print()


def sec_latency(m, ctx):
    rows = []
    for key, tp, lats in (("h200-nvlink", 8, (3, 5, 10, 20)), ("h200-ib", 16, (10, 25, 50))):
        for lat in lats:
            hw = replace(PRESETS[key], lat=lat * 1e-6)
            rows.append([PRESETS[key].name, tp, f"{lat} us"] +
                        [f"{1 / decode_step(m, hw, tp, sc, 1, ctx).total:.0f}" for sc in "abc"] +
                        [f"{32 / decode_step(m, hw, tp, sc, 32, ctx).total:,.0f}" for sc in "abc"])
    print(table(["hardware", "tp", "latency/call", "(a) b=1", "(b) b=1", "(c) b=1", "(a) b=32", "(b) b=32",
                 "(c) b=32"], rows, ["---"] + ["---:"] * 8))
    print()


KERNELS_PER_LAYER = 18  # forward.c, llama: norm, q, k, v, 2 x rope, kv_store, attention, o (f64), reduce, add,
                        # norm, gate, up, act, down (f64), reduce, add


def sec_kernel_floor(m, ctx):
    rows = []
    for key, tp in (("h200-nvlink", 8), ("h200-ib", 16)):
        hw = PRESETS[key]
        for us in (0, 2, 4):
            extra = KERNELS_PER_LAYER * m.n_layer * us * 1e-6
            rows.append([hw.name, tp, f"{us} us"] +
                        [f"{1 / (decode_step(m, hw, tp, sc, 1, ctx).total + extra):.0f}" for sc in "abc"])
    print(table(["hardware", "tp", "floor per kernel", "(a) b=1", "(b) b=1", "(c) b=1"], rows,
                ["---", "---:", "---:", "---:", "---:", "---:"]))
    print()


# Figures measured on this machine, 1B synthetic models (/tmp/tpllm-bench, `tpllm synth`).
#  "gen": docs/benchmarks.md "Generation" (tests/perf/bench_generate.py = tpllm generate, 305-token prompt, 64
#    tokens, best of 3; build 817e5e8 or earlier: scheme (a) everywhere and the old MPI polling). Its
#    "collectives ms/step" is rank 0's collective seconds of the whole run, prompt included, / 65 steps.
#  "coll": docs/benchmarks.md "Collectives" (tests/perf/bench_tp.py = tpllm bench -p 300 -n 128, median of 3;
#    decode after a 16-token prompt: mean context 80; collectives: decode steps only). "old" = 817e5e8.
#  "here": this session, build 6bcdc8d ("old": 817e5e8, `-n 64 -r 2` without -d; its bench has no collectives
#    figure), `tpllm bench -p 300 -n 64 -d 0,300 -r 2` (mean of 2 repeats; several runs side by side as
#    "a / b"); depth 0: mean context 48, depth 300: 332; collectives: decode steps only.
# fields: qtype, tp, threads per rank, source, scheme, prompt tokens, decode mean context, prompt tok/s,
#         decode tok/s, collectives ms/step, what the collectives figure covers ("run" or "decode")
MEASURED = [
    ("Q4_0", 1, 2, "gen", "a", 305, 337, 106.5, 53.87, None, ""),
    ("Q4_0", 2, 1, "gen", "a", 305, 337, 83.0, 54.28, 13.17, "run"),
    ("Q8_0", 1, 2, "gen", "a", 305, 337, 87.2, 37.65, None, ""),
    ("Q8_0", 2, 1, "gen", "a", 305, 337, 67.4, 37.78, 15.96, "run"),
    ("Q4_0", 1, 2, "coll, old", "a", 300, 80, 101.87, 50.43, None, ""),
    ("Q4_0", 2, 1, "coll, old", "a", 300, 80, 64.03, 49.99, None, ""),
    ("Q4_0", 1, 2, "coll", "mpi", 300, 80, 101.92, 51.29, None, ""),
    ("Q4_0", 2, 1, "coll", "mpi", 300, 80, 100.01, 51.21, 1.26, "decode"),
    ("Q4_0", 2, 1, "coll, gather", "a", 300, 80, 86.89, 50.42, 1.05, "decode"),
    ("Q4_0", 2, 1, "coll, TCP", "mpi", 300, 80, 100.82, 46.99, 2.50, "decode"),
    ("Q4_0", 2, 1, "coll, TCP, gather", "a", 300, 80, 99.67, 48.97, 1.90, "decode"),
    ("Q4_0", 1, 2, "here d=0, old", "a", 300, 48, 81.86, 50.98, None, ""),
    ("Q4_0", 2, 1, "here d=0, old (2 runs)", "a", 300, 48, "42.47 / 58.45", "48.20 / 45.49", None, ""),
    ("Q4_0", 1, 2, "here d=0", "mpi", 300, 48, 107.79, 56.12, None, ""),
    ("Q4_0", 1, 2, "here d=300", "mpi", 300, 332, None, 50.11, None, ""),
    ("Q4_0", 2, 1, "here d=0 (2 runs)", "mpi", 300, 48, "103.16 / 103.70", "51.93 / 44.95", "1.54 / 3.39", "decode"),
    ("Q4_0", 2, 1, "here d=300 (2 runs)", "mpi", 300, 332, None, "45.22 / 49.44", "1.86 / 1.01", "decode"),
    ("Q4_0", 2, 1, "here d=0, gather", "a", 300, 48, 101.60, 51.11, 1.03, "decode"),
    ("Q4_0", 2, 1, "here d=0, TCP, quiet", "mpi", 300, 48, 94.92, 50.96, 1.61, "decode"),
    ("Q4_0", 2, 1, "here d=0, TCP, load ~2 (2 runs)", "mpi", 300, 48, "81.92 / 64.09", "31.06 / 30.94", "13.00 / 7.98",
     "decode"),
    ("Q8_0", 1, 2, "here d=0", "mpi", 300, 48, 81.21, 34.24, None, ""),
    ("Q8_0", 1, 2, "here d=300", "mpi", 300, 332, None, 32.57, None, ""),
    ("Q8_0", 2, 1, "here d=0", "mpi", 300, 48, 83.39, 36.56, 0.88, "decode"),
    ("Q8_0", 2, 1, "here d=300", "mpi", 300, 332, None, 35.42, 0.90, "decode"),
]


def fmt(x, nd=1):
    if x is None:
        return ""
    return x if isinstance(x, str) else f"{x:.{nd}f}"


def mean_of(x):
    """A figure or "a / b" (several runs): their mean."""
    if isinstance(x, str):
        v = [float(t) for t in x.split("/")]
        return sum(v) / len(v)
    return x


def sec_check():
    rows = []
    for (qt, tp, th, src, sc, n_p, ctx, pp, dec, coll, what) in MEASURED:
        link = "tcp" if "tcp" in src.lower() else "vader"
        m = llama_1b(qt)
        hw = here(th, tp, qt, link)
        st = decode_step(m, hw, tp, sc, 1, ctx)
        lo = 1 / decode_step(m, here(th, tp, qt, link, HERE_BW2_RANGE[0]), tp, sc, 1, ctx).total
        hi = 1 / decode_step(m, here(th, tp, qt, link, HERE_BW2_RANGE[1]), tp, sc, 1, ctx).total
        mpp = prompt_rate(m, hw, tp, sc, n_p)[0]
        mcoll = st.link + st.latency
        if what == "run":  # the whole run's collectives over n_gen + 1 steps, as bench_generate.py reports
            mcoll = (prompt_time(m, hw, tp, sc, n_p)[1] + 64 * mcoll) / 65
        rows.append([m.name.replace(" synthetic", ""), f"tp={tp} x {th}", src,
                     f"{mpp:.0f}" if pp is not None else "", fmt(pp),
                     f"{1 / st.total:.1f} [{lo:.0f}-{hi:.0f}]", fmt(dec, 2),
                     f"{mean_of(dec) * st.total:.0%}" if dec is not None else "",
                     f"{mcoll * 1e3:.2f}" if tp > 1 else "", fmt(coll, 2)])
    print(table(["model", "layout", "measured by", "prompt: model", "prompt: measured", "decode: model [range]",
                 "decode: measured", "measured / model", "coll ms/step: model", "coll ms/step: measured"], rows,
                ["---", "---", "---"] + ["---:"] * 7))
    print()


def check_plan(tpllm, ggufs, tps=(1, 2, 3, 4)):
    """The script's per-rank weight bytes against `tpllm plan --tensors` (exact bytes, every rank)."""
    import subprocess
    print("## Check of the shard arithmetic against `tpllm plan --tensors`\n")
    rows, bad = [], 0
    for g in ggufs:
        m = model_from_gguf(g)
        for tp in tps:
            out = subprocess.run([tpllm, "plan", "-m", g, "--tp", str(tp), "--backend", "cpu", "--tensors"],
                                 capture_output=True, text=True).stdout
            got, r = {}, None
            for line in out.splitlines():
                if line.startswith("rank ") and line.rstrip().endswith("tensors:"):
                    r = int(line.split()[1])
                elif r is not None and line.startswith("  ") and not line.split()[0] == "tensor":
                    got[r] = got.get(r, 0) + int(line.split()[-1])
            p = shard_plan(m, tp)
            want = [rank_share(m, p, k).weights_read for k in range(tp)]
            have = [got.get(k) for k in range(tp)]
            ok = want == have
            bad += not ok
            rows.append([os.path.basename(g), tp, " ".join(str(x) for x in have), "same" if ok else
                         "DIFFERS: " + " ".join(str(x) for x in want)])
    print(table(["model", "tp", "tpllm plan: bytes per rank", "this script"], rows, ["---", "---:", "---", "---"]))
    print()
    return 1 if bad else 0


FILL_BLOCKS = {1: ("summary", "hardware", "weights", "kv", "comm", "decode", "crossover", "pp", "prompt", "latency",
                   "kernels"),
               2: ("check",)}


def fill(path, argv):
    """Replace what lies between '<!-- BEGIN scaling_model.py block N -->' and its END line in path."""
    import contextlib
    import io
    text = open(path).read()
    rest = [x for i, x in enumerate(argv) if x != "--fill" and (i == 0 or argv[i - 1] != "--fill")]
    for n, secs in FILL_BLOCKS.items():
        begin, end = f"<!-- BEGIN scaling_model.py block {n} -->", f"<!-- END scaling_model.py block {n} -->"
        if begin not in text or end not in text:
            print(f"scaling_model.py: {path} has no block {n} ({begin} ... {end})", file=sys.stderr)
            return 1
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf):
            main(rest + ["--section", *secs])
        i, j = text.index(begin) + len(begin), text.index(end)
        text = text[:i] + "\n" + buf.getvalue() + text[j:]
    open(path, "w").write(text)
    return 0


SECTIONS = ("summary", "hardware", "weights", "kv", "comm", "decode", "crossover", "pp", "prompt", "latency",
            "kernels", "check")


def main(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--gguf", nargs="*", default=None,
                    help="GGUF files whose shape and tensor types to add to the weight and KV tables (default: "
                         "models/gemma-3-270m-q4_k_m.gguf when present)")
    ap.add_argument("--section", nargs="*", choices=SECTIONS, default=list(SECTIONS))
    ap.add_argument("--ctx", type=int, default=4096, help="context of the 70B decode tables (default 4096)")
    ap.add_argument("--fill", metavar="MD",
                    help="instead of printing: rewrite the generated blocks of MD (docs/scaling.md) in place")
    ap.add_argument("--check-plan", metavar="TPLLM",
                    help="instead: compare the per-rank weight bytes with `TPLLM plan --tensors` on the GGUF files "
                         "(and the 1B models in /tmp/tpllm-bench when present); exit 1 on a difference")
    a = ap.parse_args(argv)
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    ggufs = a.gguf if a.gguf is not None else [p for p in [os.path.join(root, "models", "gemma-3-270m-q4_k_m.gguf")]
                                               if os.path.exists(p)]
    if a.check_plan:
        if a.gguf is None:
            ggufs += [p for p in ("/tmp/tpllm-bench/llama1b-q4_0.gguf", "/tmp/tpllm-bench/llama1b-q8_0.gguf")
                      if os.path.exists(p)]
        return check_plan(a.check_plan, ggufs)
    if a.fill:
        return fill(a.fill, argv)
    extra = [model_from_gguf(p) for p in ggufs]
    big = {q: llama3_70b(q) for q in ("Q4_0", "Q4_K", "Q8_0", "F16")}
    small = [llama_1b("Q4_0"), llama_1b("Q8_0")] + extra
    m70 = big["Q4_K"]
    ctx = a.ctx
    titles = {
        "summary": None,
        "hardware": None,
        "weights": "### Weight bytes per rank, read by every decode step (largest rank; its KV heads in brackets)",
        "kv": "### KV-cache bytes read per decode token, per rank (F16 cache)",
        "comm": "### Collective bytes received per rank, and calls",
        "decode": f"### Predicted decode, context {ctx}: ms per step at batch 1, tok/s per sequence, aggregate tok/s",
        "crossover": "### From how many tokens per step (b) beats (a)",
        "pp": f"### Two nodes: tp=16 against pp=2 x tp=8 ({m70.name}, context {ctx})",
        "prompt": f"### Prompt processing bound ({m70.name}, 2048-token prompt in steps of 512)",
        "latency": f"### Sensitivity to the assumed latency per collective call ({m70.name}, context {ctx})",
        "kernels": f"### Not in the model: a floor per GPU kernel ({m70.name}, batch 1, context {ctx})",
        "check": "### Check: the model beside figures measured on this machine (1B synthetic)",
    }
    print("<!-- generated by `python3 tests/perf/scaling_model.py`; edit the script, not this block -->\n")
    for s in a.section:
        if titles[s]:
            print(titles[s] + "\n")
        if s == "summary":
            sec_summary(m70, ctx)
        elif s == "hardware":
            sec_hardware()
        elif s == "weights":
            sec_weights(list(big.values()), (1, 8, 16))
            sec_weights(small, (1, 2, 4))
        elif s == "kv":
            sec_kv([m70], (1, 8, 16), (4096, 32768))
            sec_kv(small[:1] + extra, (1, 2, 4), (337, 4096))
        elif s == "comm":
            sec_comm([m70], (8, 16))
            sec_comm(small[:1], (2, 4))
        elif s == "decode":
            sec_decode([m70, big["F16"]], ctx, (8, 32, 128))
        elif s == "crossover":
            sec_crossover(m70)
        elif s == "pp":
            sec_pp(m70, ctx, (8, 32, 128))
        elif s == "prompt":
            sec_prompt(m70, 2048)
        elif s == "latency":
            sec_latency(m70, ctx)
        elif s == "kernels":
            sec_kernel_floor(m70, ctx)
        elif s == "check":
            sec_check()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
