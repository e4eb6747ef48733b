#!/usr/bin/env python3
"""Decode and prompt speed of tpllm beside llama.cpp (llama-cpp-python) on the same model,
same threads, same run; and tpllm's tensor parallelism (mpirun -np 2, 1 thread per rank)
beside one rank with 2 threads. Prints a Markdown table for docs/benchmarks.md.

Usage (from the repository root, after `make build golden-deps`):
    .pydeps/bin/python tests/perf/bench_generate.py [--threads 2] [--types q4_0 q8_0] [--simd auto avx2 avx512]

--simd runs tpllm (tp=1) at each listed SIMD level side by side (every level gives the same
bits; they differ in speed), so that `auto` can be checked to be the fastest. The runs of all
configurations are interleaved (repeat r of every configuration before repeat r + 1), and
each cell gives the median with the range over the repeats.
"""
import argparse, os, re, subprocess, sys, time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SHAPE = ["--arch", "llama", "--dim", "2048", "--layers", "16", "--heads", "32", "--kv-heads", "8", "--ff", "5632",
         "--vocab", "32000", "--ctx", "2048", "--seed", "1"]
PROMPT_WORDS = ("the river runs past the old mill and the miller counts the sacks of grain " * 40).split()


def tpllm_run(tpllm, model, np, threads, n_prompt_words, n_gen, simd="auto"):
    prompt = " ".join(PROMPT_WORDS[:n_prompt_words])
    cmd = [os.path.join(ROOT, "tests/mpi/mpirun.sh"), "-np", str(np), tpllm, "generate", "-m", model, "-p", prompt,
           "-n", str(n_gen), "--temp", "0", "--ignore-eos", "--threads", str(threads), "--quiet", "--simd", simd]
    err = subprocess.run(cmd, capture_output=True, text=True, check=True).stderr
    m = re.search(r"prompt: (\d+) tokens in ([\d.]+) s .*generation: (\d+) tokens in ([\d.]+) s", err)
    coll = re.search(r"collectives on rank 0: ([\d.]+) s in (\d+) calls, ([\d.]+) ms per step", err)
    return {"pp": int(m.group(1)) / float(m.group(2)), "tg": int(m.group(3)) / float(m.group(4)),
            "n_prompt": int(m.group(1)), "coll_ms": float(coll.group(3)) if coll else 0.0}


def llama_run(model, threads, n_prompt_words, n_gen):
    import llama_cpp
    llm = llama_cpp.Llama(model_path=model, n_ctx=2048, n_batch=512, n_threads=threads, n_threads_batch=threads,
                          verbose=False)
    toks = llm.tokenize(" ".join(PROMPT_WORDS[:n_prompt_words]).encode(), add_bos=True)
    t0 = time.perf_counter()
    llm.eval(toks)
    t1 = time.perf_counter()
    tok = 100  # decode speed does not depend on which token is fed
    for _ in range(n_gen):
        llm.eval([tok])
    t2 = time.perf_counter()
    return {"pp": len(toks) / (t1 - t0), "tg": n_gen / (t2 - t1), "n_prompt": len(toks)}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tpllm", default=os.path.join(ROOT, "build", "tpllm"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--types", nargs="*", default=["q4_0", "q8_0"])
    ap.add_argument("--prompt-words", type=int, default=200)
    ap.add_argument("--gen", type=int, default=64)
    ap.add_argument("--workdir", default="/tmp/tpllm-bench")
    ap.add_argument("--repeat", type=int, default=3, help="runs per configuration (median and range reported)")
    ap.add_argument("--simd", nargs="*", default=["auto"], help="tpllm SIMD levels to run at tp=1")
    ap.add_argument("--no-llama", action="store_true", help="skip llama.cpp (llama-cpp-python not installed)")
    ap.add_argument("--no-tp", action="store_true", help="skip the tp=2 row")
    a = ap.parse_args()
    os.makedirs(a.workdir, exist_ok=True)
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
    flags = next((l for l in open("/proc/cpuinfo") if l.startswith("flags")), "")
    isa = "AVX-512 (F/BW/VL/VNNI)" if all(f" {x} " in flags for x in ("avx512f", "avx512bw", "avx512vl", "avx512_vnni")) \
        else "AVX2" if " avx2 " in flags else "no AVX2"
    print(f"machine: {cpu}, {os.cpu_count()} CPUs, {isa}; threads {a.threads}; prompt {a.prompt_words} words, "
          f"{a.gen} generated tokens; {a.repeat} interleaved runs per row: median [min-max]")
    print()
    print("| model | engine | prompt tok/s | decode tok/s | collectives ms/step |")
    print("| --- | --- | ---: | ---: | ---: |")
    cell = lambda v: f"{sorted(v)[len(v) // 2]:.1f} [{min(v):.1f}-{max(v):.1f}]"
    med = lambda v: sorted(v)[len(v) // 2]
    for t in a.types:
        model = os.path.join(a.workdir, f"llama1b-{t}.gguf")
        if not os.path.exists(model):
            subprocess.run([a.tpllm, "synth", *SHAPE, "--type", t, "-o", model], check=True, capture_output=True)
        configs = []
        if not a.no_llama:
            configs.append((f"llama.cpp ({a.threads} threads)", lambda: llama_run(model, a.threads, a.prompt_words, a.gen)))
        for lv in a.simd:
            configs.append((f"tpllm tp=1 --simd {lv} ({a.threads} threads)",
                            lambda lv=lv: tpllm_run(a.tpllm, model, 1, a.threads, a.prompt_words, a.gen, lv)))
        if not a.no_tp:
            configs.append(("tpllm tp=2 (1 thread per rank)",
                            lambda: tpllm_run(a.tpllm, model, 2, max(1, a.threads // 2), a.prompt_words, a.gen)))
        res = {name: [] for name, _ in configs}
        for _ in range(a.repeat):
            for name, f in configs:
                res[name].append(f())
        base = res[configs[0][0]]
        bpp, btg = med([r["pp"] for r in base]), med([r["tg"] for r in base])
        for i, (name, _) in enumerate(configs):
            pp, tg = [r["pp"] for r in res[name]], [r["tg"] for r in res[name]]
            rel = "" if i == 0 else f" ({med(pp) / bpp:.2f}x)"
            relt = "" if i == 0 else f" ({med(tg) / btg:.2f}x)"
            coll = f"{med([r.get('coll_ms', 0.0) for r in res[name]]):.2f}" if "tp=2" in name else ""
            print(f"| 1B llama {t.upper()} | {name} | {cell(pp)}{rel} | {cell(tg)}{relt} | {coll} |")
        print(f"(ratios against the first row: {configs[0][0]})")
        sys.stdout.flush()


if __name__ == "__main__":
    sys.exit(main())
