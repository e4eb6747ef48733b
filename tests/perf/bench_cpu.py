#!/usr/bin/env python3
"""tpllm beside llama.cpp's own llama-bench on this CPU, in one run: prompt processing
(pp300, pp2048), decode (tg128) and decode after a long prompt (tg128@d1024, tg128@d4096),
with every decode figure against its memory roofline (the bytes a step reads: the weights
plus the KV cache at that depth, over the bandwidth tests/perf/bwprobe measures here).

Usage (from the repository root; `make bench-cpu` does the setup and runs it):
    .pydeps/bin/python tests/perf/bench_cpu.py [--models q4_0 q8_0 q4_k gemma] [--tests pp300 tg128 ...]
        [--repeat 3] [--threads 2] [--tpllm build/tpllm] [--no-tp] [--simd LEVEL] [--json FILE]

Engines, each repeat a separate process, interleaved (repeat r of every engine before
repeat r + 1, so that a change in the machine's load touches all of them alike):
  llama-bench -m M -t T -p 300,2048 -n 128 -r 1 -o json        (and -p 0 -n 128 -d 1024,4096)
  tpllm bench -m M -t T -p 300,2048 -n 128 -d 0,1024,4096 -r 1 --json
  tests/mpi/mpirun.sh -np 2 tpllm bench ... -t T/2               (tp = 2 on the same cores)
Both tools run one warm-up before the timed repetition. Each cell is the median over the
repeats with [min-max]. Standard library only.
"""
import argparse, json, os, shlex, subprocess, sys, time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_generate import SHAPE  # the synthetic ~1B Llama of docs/benchmarks.md  # noqa: E402

WORKDIR = "/tmp/tpllm-bench"
SYNTH_CTX = 8192  # so that depth 4096 (+ 128 generated) fits the trained context
MODELS = {  # name: (file, synthetic type or None)
    "q4_0": (os.path.join(WORKDIR, "llama1b-q4_0.gguf"), "q4_0"),
    "q8_0": (os.path.join(WORKDIR, "llama1b-q8_0.gguf"), "q8_0"),
    "q4_k": (os.path.join(WORKDIR, "llama1b-q4_k.gguf"), "q4_k"),
    "gemma": (os.path.join(ROOT, "models", "gemma-3-270m-q4_k_m.gguf"), None),
}
N_GEN = 128
TESTS = ["pp300", "pp2048", "tg128", "tg128@d1024", "tg128@d4096"]
GOAL_SPEEDUP = 1.25  # prompt and depth rows: tpllm tp=1 at least this x llama-bench
GOAL_ROOFLINE = 95.0  # tg128: tpllm tp=1 at least this % of the roofline


def die(msg):
    print(f"bench_cpu: {msg}", file=sys.stderr)
    sys.exit(1)


def run(cmd, what):
    """Runs cmd; returns its stdout. A failure ends the script with the command and its stderr."""
    try:
        p = subprocess.run(cmd, capture_output=True, text=True)
    except OSError as ex:
        die(f"{what}: cannot run {cmd[0]}: {ex}")
    if p.returncode != 0:
        tail = "\n".join(p.stderr.strip().splitlines()[-15:])
        die(f"{what} failed (exit {p.returncode}):\n  {shlex.join(cmd)}\n{tail}")
    return p.stdout


def test_parts(t):
    """'tg128@d1024' -> ('tg', 1024); 'pp300' -> ('pp', 300); 'tg128' -> ('tg', 0)."""
    if t.startswith("pp"):
        return "pp", int(t[2:])
    return "tg", int(t.split("@d")[1]) if "@d" in t else 0


def machine():
    cpu, flags = "?", set()
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name") and cpu == "?":
                cpu = line.split(":", 1)[1].strip()
            elif line.startswith("flags") and not flags:
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    isa = [f for f in ("avx2", "avx512f", "avx512_vnni", "avx_vnni") if f in flags]
    return {"cpu": cpu, "cpus": os.cpu_count(), "flags": isa}


def commit():
    try:
        h = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                           check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", ROOT, "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True).stdout.strip()
        return h + (" (with uncommitted changes)" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "? (not a git checkout)"


def cpu_busy(seconds=1.0):
    """The fraction of CPU time not idle over a short sample (/proc/stat), or None."""
    def sample():
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
        return sum(v), v[3] + (v[4] if len(v) > 4 else 0)  # total, idle + iowait
    try:
        t0, i0 = sample()
        time.sleep(seconds)
        t1, i1 = sample()
    except (OSError, ValueError, IndexError):
        return None
    return 1 - (i1 - i0) / (t1 - t0) if t1 > t0 else None


def ensure_model(name, tpllm, need_ctx):
    path, synth_type = MODELS[name]
    if synth_type is None:
        if not os.path.exists(path):
            die(f"{path} is missing: run `make models` (it assembles the Gemma 3 270M file)")
        return path
    if os.path.exists(path):
        info = json.loads(run([tpllm, "inspect", path, "--json", "--top", "0"], f"tpllm inspect {path}"))
        ctx = info["hyperparameters"]["n_ctx_train"]
        if ctx >= need_ctx:
            return path
        print(f"(rewriting {path}: its trained context is {ctx}, the depth tests need {need_ctx}; same weights, "
              f"--ctx {SYNTH_CTX})", flush=True)
    else:
        print(f"(writing the synthetic model {path})", flush=True)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    shape = list(SHAPE)
    shape[shape.index("--ctx") + 1] = str(SYNTH_CTX)
    tmp = path + ".part"
    run([tpllm, "synth", *shape, "--type", synth_type, "-o", tmp], f"tpllm synth --type {synth_type}")
    os.replace(tmp, path)  # readers that have the old file mapped keep it
    return path


def llama_bin(args):
    if args.llama_bin:
        d = args.llama_bin
    else:
        print("(building or reusing llama.cpp: tests/perf/build_llamacpp.sh)", flush=True)
        p = subprocess.run([os.path.join(ROOT, "tests/perf/build_llamacpp.sh")], stdout=subprocess.PIPE, text=True)
        if p.returncode != 0:
            die("tests/perf/build_llamacpp.sh failed (its messages are above); it needs cmake, g++ and network "
                "access to download the llama-cpp-python sdist once")
        d = p.stdout.strip().splitlines()[-1]
    exe = os.path.join(d, "llama-bench")
    if not os.access(exe, os.X_OK):
        die(f"no llama-bench in {d}: run tests/perf/build_llamacpp.sh (or pass --llama-bin DIR)")
    return exe


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS), metavar="M",
                    help="models to run: " + " ".join(MODELS) + " (default all)")
    ap.add_argument("--tests", nargs="+", default=TESTS, choices=TESTS, metavar="T",
                    help="tests to run: " + " ".join(TESTS) + " (default all)")
    ap.add_argument("--repeat", type=int, default=3, help="separate runs of every engine, interleaved (default 3)")
    ap.add_argument("--threads", type=int, default=2, help="threads of llama-bench and tpllm tp=1; tp=2 gets "
                    "threads/2 per rank (default 2)")
    ap.add_argument("--tpllm", default=os.path.join(ROOT, "build", "tpllm"), help="the tpllm binary (default "
                    "build/tpllm)")
    ap.add_argument("--bwprobe", help="the bandwidth probe (default: tests/bwprobe beside --tpllm)")
    ap.add_argument("--llama-bin", help="folder with llama-bench (default: built by tests/perf/build_llamacpp.sh)")
    ap.add_argument("--no-tp", action="store_true", help="skip tpllm at tp=2")
    ap.add_argument("--simd", help="passed to tpllm as --simd (auto, avx2, avx512, ...)")
    ap.add_argument("--json", metavar="FILE", help="also save the raw results there")
    a = ap.parse_args()
    if a.repeat < 1 or a.repeat > 50:
        ap.error("--repeat expects 1..50")
    if a.threads < 1 or (not a.no_tp and a.threads < 2):
        ap.error("--threads expects >= 1 (>= 2 unless --no-tp: tp=2 runs threads/2 per rank)")
    tests = [t for t in TESTS if t in a.tests]
    if a.json and not os.path.isdir(os.path.dirname(os.path.abspath(a.json))):
        die(f"--json {a.json}: its folder does not exist; create it or pick another path")
    tpllm = os.path.abspath(a.tpllm)
    if not os.access(tpllm, os.X_OK):
        die(f"{a.tpllm} is not an executable: run `make build` (or pass --tpllm PATH)")
    probe = a.bwprobe or os.path.join(os.path.dirname(tpllm), "tests", "bwprobe")
    if not os.access(probe, os.X_OK):
        die(f"{probe} is missing: build it (cmake --build {os.path.dirname(tpllm)} --target bwprobe) or pass "
            "--bwprobe PATH")
    mpirun = os.path.join(ROOT, "tests", "mpi", "mpirun.sh")

    pp = [test_parts(t)[1] for t in tests if t.startswith("pp")]
    depths = [test_parts(t)[1] for t in tests if t.startswith("tg")]
    need_ctx = max([p + 1 for p in pp] + [max(d, 16) + N_GEN for d in depths] + [64])
    llama_bench = llama_bin(a)
    help_text = subprocess.run([llama_bench, "--help"], capture_output=True, text=True).stdout
    has_depth = "--n-depth" in help_text
    models = {m: ensure_model(m, tpllm, need_ctx) for m in a.models}

    mach = machine()
    load0 = os.getloadavg()
    print(f"machine: {mach['cpu']}, {mach['cpus']} CPUs, flags: {' '.join(mach['flags']) or 'none of avx2/avx512'}")
    print(f"commit: {commit()}; load average at start: {load0[0]:.2f} {load0[1]:.2f} {load0[2]:.2f}")
    busy = cpu_busy()
    if busy is not None:
        print(f"CPU busy before the runs (1 s sample, other processes): {100 * busy:.0f}%")
        if busy > 0.2:
            print("WARNING: other processes are using the CPUs, so these figures are not those of an idle machine "
                  "(llama.cpp's spinning threads lose most); run again when it is idle")
    probe_cmd = [probe, "-t", str(a.threads), "--json"]
    bw_start = json.loads(run(probe_cmd, "bwprobe"))  # bwprobe prints one JSON object or fails
    print(f"read bandwidth before the runs ({a.threads} threads, {bw_start['bytes'] / 2**30:.0f} GiB, best of "
          f"{bw_start['passes']} passes): {bw_start['best_gbs']:.1f} GB/s  [{shlex.join(probe_cmd)}]")
    if not has_depth and any(d > 0 for d in depths):
        print(f"NOTE: this llama-bench ({llama_bench}) has no -d/--n-depth: the depth rows have no llama.cpp figure")

    # the commands of one repeat, per model
    tp_threads = max(1, a.threads // 2)
    simd = ["--simd", a.simd] if a.simd else []
    pp_list = ",".join(map(str, pp)) or "0"
    has_tg0 = 0 in depths
    deep = [d for d in depths if d > 0]

    def commands(model):
        cmds = []  # (engine, argv)
        if pp or has_tg0:
            cmds.append(("llama", [llama_bench, "-m", model, "-t", str(a.threads), "-p", pp_list, "-n",
                                   str(N_GEN if has_tg0 else 0), "-r", "1", "-o", "json"]))
        if deep and has_depth:
            cmds.append(("llama", [llama_bench, "-m", model, "-t", str(a.threads), "-p", "0", "-n", str(N_GEN), "-d",
                                   ",".join(map(str, deep)), "-r", "1", "-o", "json"]))
        tp_args = ["bench", "-m", model, "-p", pp_list, "-n", str(N_GEN if depths else 0), "-d",
                   ",".join(map(str, depths or [0])), "-r", "1", "--json", *simd]
        cmds.append(("tp1", [tpllm, *tp_args, "-t", str(a.threads)]))
        if not a.no_tp:
            cmds.append(("tp2", [mpirun, "-np", "2", tpllm, *tp_args, "-t", str(tp_threads)]))
        return cmds

    print("\ncommands (each repeat of each engine is one of these processes):")
    for m in a.models:
        for _, c in commands(models[m]):
            print("  " + shlex.join(c))
    print(flush=True)

    # results[model][engine][test] = [tok/s per repeat]; extra: roofline bytes, collectives
    results = {m: {"llama": {}, "tp1": {}, "tp2": {}} for m in a.models}
    coll = {m: {} for m in a.models}
    step_bytes = {m: {} for m in a.models}
    raw = []
    t_start = time.time()
    for m in a.models:
        for r in range(a.repeat):
            for engine, cmd in commands(models[m]):
                print(f"[{time.time() - t_start:6.0f} s] {m} repeat {r + 1}/{a.repeat}: {engine}", flush=True)
                out = run(cmd, f"{engine} on {m}")
                try:
                    d = json.loads(out)
                except ValueError:
                    die(f"{engine} on {m} printed no JSON:\n  {shlex.join(cmd)}\n{out[-2000:]}")
                raw.append({"model": m, "repeat": r, "engine": engine, "cmd": cmd, "output": d})
                if engine == "llama":
                    for row in d:
                        name = f"pp{row['n_prompt']}" if row["n_prompt"] > 0 else \
                            f"tg{row['n_gen']}" + (f"@d{row['n_depth']}" if row.get("n_depth", 0) > 0 else "")
                        if name in tests:
                            results[m]["llama"].setdefault(name, []).append(row["avg_ts"])
                    continue
                for row in d["results"]:
                    name = row["test"].replace("@b1", "")
                    if name not in tests:
                        continue
                    results[m][engine].setdefault(name, []).append(row["tok_s"])
                    if engine == "tp2" and row.get("comm_ms_per_step") is not None:
                        coll[m].setdefault(name, []).append(row["comm_ms_per_step"])
                    if engine == "tp1" and name.startswith("tg"):
                        # the model's bytes per decode step at this depth (one rank holds them all)
                        step_bytes[m][name] = d["weights_bytes_rank0"] + row["kv_bytes_per_step_rank0"]
    load1 = os.getloadavg()
    # the probe again: the roofline uses the better of the two (a busy moment only lowers it)
    bw_end = json.loads(run(probe_cmd, "bwprobe"))
    bw = max(bw_start, bw_end, key=lambda b: b["best_gbs"])

    med = lambda v: sorted(v)[len(v) // 2]  # noqa: E731
    cell = lambda v: f"{med(v):.2f} [{min(v):.2f}–{max(v):.2f}]" if v else ""  # noqa: E731
    ratio = lambda v, base: f"{med(v) / med(base):.2f}x" if v and base else ""  # noqa: E731
    print()
    print(f"{a.repeat} interleaved runs per engine: median [min–max] tok/s; llama.cpp and tpllm tp=1 with "
          f"{a.threads} threads" + ("" if a.no_tp else f", tpllm tp=2 with {tp_threads} thread(s) per rank"))
    print(f"roofline: read bandwidth {bw['best_gbs']:.1f} GB/s (the better of the probe before the runs, "
          f"{bw_start['best_gbs']:.1f}, and after, {bw_end['best_gbs']:.1f}) / the bytes one decode step reads (weights + KV cache "
          "at that depth); % of it for each engine")
    print()
    head = ["model", "test", "llama-bench", "tpllm tp=1", "tp=1 / llama"]
    if not a.no_tp:
        head += ["tpllm tp=2", "tp=2 / llama", "tp=2 collectives ms/step"]
    head += ["roofline t/s", "llama % roof", "tp=1 % roof"] + ([] if a.no_tp else ["tp=2 % roof"]) + ["goal (tp=1)"]
    print("| " + " | ".join(head) + " |")
    print("| " + " | ".join(["---", "---"] + ["---:"] * (len(head) - 3) + ["---"]) + " |")
    goals = []
    for m in a.models:
        for t in tests:
            lv, v1, v2 = results[m]["llama"].get(t, []), results[m]["tp1"].get(t, []), results[m]["tp2"].get(t, [])
            row = [m, t, cell(lv) or ("(no -d)" if "@d" in t and not has_depth else ""), cell(v1), ratio(v1, lv)]
            if not a.no_tp:
                cv = coll[m].get(t, [])
                row += [cell(v2), ratio(v2, lv), f"{med(cv):.2f}" if cv else ""]
            roof = bw["best_gbs"] * 1e9 / step_bytes[m][t] if t in step_bytes[m] else 0
            pct = lambda v: f"{100 * med(v) / roof:.0f}%" if v and roof else ""  # noqa: E731
            row += [f"{roof:.1f}" if roof else "", pct(lv), pct(v1)] + ([] if a.no_tp else [pct(v2)])
            # the goal: tg128 against the roofline, the other rows against llama-bench
            if t == "tg128":
                have, want, unit = (100 * med(v1) / roof if v1 and roof else None), GOAL_ROOFLINE, "% roofline"
            else:
                have, want, unit = (med(v1) / med(lv) if v1 and lv else None), GOAL_SPEEDUP, "x llama-bench"
            if have is None:
                g = f">= {want:g}{unit}: no figure"
            elif have >= want:
                g = f">= {want:g}{unit}: met"
            else:
                g = f">= {want:g}{unit}: short by {100 * (1 - have / want):.0f}%"
            goals.append({"model": m, "test": t, "have": have, "want": want, "unit": unit})
            print("| " + " | ".join(row + [g]) + " |")
    print()
    print("goal: 'short by X%' means tpllm tp=1 is X% below the goal (have / goal = 1 - X/100)")
    print(f"load average at end: {load1[0]:.2f} {load1[1]:.2f} {load1[2]:.2f}; "
          f"{time.time() - t_start:.0f} s of runs")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"machine": mach, "commit": commit(), "load_start": load0, "load_end": load1,
                       "bandwidth": bw, "bandwidth_start": bw_start, "bandwidth_end": bw_end, "bandwidth_cmd": probe_cmd, "tests": tests, "repeat": a.repeat,
                       "threads": a.threads, "llama_bench_has_depth": has_depth, "results": results,
                       "collectives_ms_per_step": coll, "step_bytes": step_bytes, "goals": goals, "runs": raw},
                      f, indent=1)
        print(f"raw results: {a.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
