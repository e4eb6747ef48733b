#!/usr/bin/env python3
"""Decode and prompt speed of tpllm beside llama.cpp (llama-cpp-python) on the same model,
same threads, same run; and tpllm's tensor parallelism (mpirun -np 2, 1 thread per rank)
beside one rank with 2 threads. Prints a Markdown table for docs/benchmarks.md.

Usage (from the repository root, after `make build golden-deps`):
    .pydeps/bin/python tests/perf/bench_generate.py [--threads 2] [--types q4_0 q8_0]
"""
import argparse, os, re, subprocess, sys, time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SHAPE = ["--arch", "llama", "--dim", "2048", "--layers", "16", "--heads", "32", "--kv-heads", "8", "--ff", "5632",
         "--vocab", "32000", "--ctx", "2048", "--seed", "1"]
PROMPT_WORDS = ("the river runs past the old mill and the miller counts the sacks of grain " * 40).split()


def tpllm_run(tpllm, model, np, threads, n_prompt_words, n_gen):
    prompt = " ".join(PROMPT_WORDS[:n_prompt_words])
    cmd = [os.path.join(ROOT, "tests/mpi/mpirun.sh"), "-np", str(np), tpllm, "generate", "-m", model, "-p", prompt,
           "-n", str(n_gen), "--temp", "0", "--ignore-eos", "--threads", str(threads), "--quiet"]
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
    ap.add_argument("--repeat", type=int, default=2, help="runs per configuration; the best is reported")
    a = ap.parse_args()
    os.makedirs(a.workdir, exist_ok=True)
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
    print(f"machine: {cpu}, {os.cpu_count()} CPUs; threads {a.threads}; prompt {a.prompt_words} words, {a.gen} generated tokens")
    print()
    print("| model | engine | prompt tok/s | decode tok/s | collectives ms/step |")
    print("| --- | --- | ---: | ---: | ---: |")
    for t in a.types:
        model = os.path.join(a.workdir, f"llama1b-{t}.gguf")
        if not os.path.exists(model):
            subprocess.run([a.tpllm, "synth", *SHAPE, "--type", t, "-o", model], check=True, capture_output=True)
        best = lambda f: max((f() for _ in range(a.repeat)), key=lambda r: r["tg"])
        ref = best(lambda: llama_run(model, a.threads, a.prompt_words, a.gen))
        one = best(lambda: tpllm_run(a.tpllm, model, 1, a.threads, a.prompt_words, a.gen))
        two = best(lambda: tpllm_run(a.tpllm, model, 2, max(1, a.threads // 2), a.prompt_words, a.gen))
        print(f"| 1B llama {t.upper()} | llama.cpp ({a.threads} threads) | {ref['pp']:.1f} | {ref['tg']:.2f} | |")
        print(f"| 1B llama {t.upper()} | tpllm tp=1 ({a.threads} threads) | {one['pp']:.1f} ({one['pp']/ref['pp']:.2f}x) | "
              f"{one['tg']:.2f} ({one['tg']/ref['tg']:.2f}x) | |")
        print(f"| 1B llama {t.upper()} | tpllm tp=2 (1 thread per rank) | {two['pp']:.1f} ({two['pp']/one['pp']:.2f}x tp=1) | "
              f"{two['tg']:.2f} ({two['tg']/one['tg']:.2f}x tp=1) | {two['coll_ms']:.2f} |")
        sys.stdout.flush()


if __name__ == "__main__":
    sys.exit(main())
