#!/usr/bin/env python3
"""Tensor parallelism on one CPU box: tp = 2 x 1 thread beside tp = 1 x 2 threads, and the
share of a decode step spent in collectives, for one or more tpllm builds and reduction
schemes (issue 14's figures; docs/benchmarks.md, "Collectives").

    .pydeps/bin/python tests/perf/bench_tp.py [--model M] [--tpllm LABEL=PATH ...]
        [--reduce auto gather] [--repeat 3] [--netns] [--json FILE]

Every configuration runs `tpllm bench -p P -n N --json` as its own process; repeat r of every
configuration runs before repeat r + 1 (interleaved); cells give the median and the range.
--netns also runs tp = 2 across two "hosts" of cluster/localhosts.sh (network namespaces,
TCP between them; needs root): the harness is brought up and down by this script.
"""
import argparse, json, os, statistics, subprocess, sys, time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def run_bench(cmd, env):
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=1800)
    if p.returncode != 0:
        sys.exit(f"bench_tp: {' '.join(cmd)} failed ({p.returncode}):\n{p.stderr[-2000:]}")
    line = [l for l in p.stdout.splitlines() if l.startswith("{")]
    if not line:
        sys.exit(f"bench_tp: no JSON from {' '.join(cmd)}:\n{p.stdout[-1000:]}\n{p.stderr[-1000:]}")
    return json.loads(line[-1])


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="/tmp/tpllm-bench/llama1b-q4_0.gguf")
    ap.add_argument("--tpllm", nargs="*", default=[f"this={os.path.join(ROOT, 'build', 'tpllm')}"],
                    help="LABEL=PATH of the builds to compare (default: this=build/tpllm)")
    ap.add_argument("--reduce", nargs="*", default=["auto"], help="TPLLM_REDUCE values to run tp=2 with")
    ap.add_argument("--prompt", type=int, default=300)
    ap.add_argument("--gen", type=int, default=128)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--netns", action="store_true", help="also tp=2 across two network namespaces (root)")
    ap.add_argument("--json", help="also write the raw results here")
    a = ap.parse_args()
    if not os.path.isfile(a.model):
        sys.exit(f"bench_tp: model {a.model} not found (tests/perf/bench_cpu.py or `tpllm synth` writes it; "
                 "see docs/bench.md)")
    builds = []
    for spec in a.tpllm:
        label, _, path = spec.partition("=")
        if not path:
            label, path = os.path.basename(os.path.dirname(os.path.dirname(spec))) or "tpllm", spec
        if not os.access(path, os.X_OK):
            sys.exit(f"bench_tp: {path} is not an executable tpllm (build it: make build)")
        builds.append((label, path))
    common = ["bench", "-m", a.model, "-p", str(a.prompt), "-n", str(a.gen), "-r", "1", "--json"]
    configs = []  # (name, cmd, env)
    for label, path in builds:
        configs.append((f"{label} tp=1 x 2 threads", [path] + common + ["-t", "2"], {}))
        for mode in a.reduce:
            configs.append((f"{label} tp=2 x 1 thread, reduce={mode}",
                            [os.path.join(ROOT, "tests/mpi/mpirun.sh"), "-np", "2", path] + common + ["-t", "1"],
                            {"TPLLM_REDUCE": mode}))
            if a.netns:
                configs.append((f"{label} tp=2 x 1 thread over TCP (2 netns hosts), reduce={mode}",
                                [os.path.join(ROOT, "cluster/localhosts.sh"), "mpirun", "-np", "2", path] + common +
                                ["-t", "1"], {"TPLLM_REDUCE": mode}))
    harness = os.path.join(ROOT, "cluster/localhosts.sh")
    if a.netns:
        up = subprocess.run([harness, "up", "2"], capture_output=True, text=True)
        if up.returncode != 0:
            sys.exit(f"bench_tp: cluster/localhosts.sh up 2 failed ({up.returncode}): {up.stderr.strip()}")
    res = {c[0]: {"pp": [], "tg": [], "comm": []} for c in configs}
    print(f"model {a.model}; pp{a.prompt}, tg{a.gen}; {a.repeat} interleaved repeats; load average "
          f"{os.getloadavg()[0]:.2f} at start", flush=True)
    try:
        for r in range(a.repeat):
            for name, cmd, extra in configs:
                env = dict(os.environ, **extra)
                t0 = time.time()
                out = run_bench(cmd, env)
                pp = next(x for x in out["results"] if x["n_gen"] <= 1)
                tg = next(x for x in out["results"] if x["n_gen"] > 1)
                res[name]["pp"].append(pp["tok_s"])
                res[name]["tg"].append(tg["tok_s"])
                res[name]["comm"].append(tg.get("comm_ms_per_step") or 0.0)
                print(f"  [{r + 1}/{a.repeat}] {name}: pp {pp['tok_s']:.1f}, tg {tg['tok_s']:.2f} tok/s "
                      f"({time.time() - t0:.0f} s)", flush=True)
    finally:
        if a.netns:
            subprocess.run([harness, "down"], capture_output=True)
    print(f"load average {os.getloadavg()[0]:.2f} at end\n")

    def cell(v):
        return f"{statistics.median(v):.2f} [{min(v):.2f}-{max(v):.2f}]"

    print("| configuration | prompt tok/s | vs tp=1 | decode tok/s | vs tp=1 | collectives ms/step | % of a decode step |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    base = {}
    for name, _, _ in configs:
        v = res[name]
        label = name.split(" tp=")[0]
        if " tp=1 " in name:
            base[label] = v
            print(f"| {name} | {cell(v['pp'])} | | {cell(v['tg'])} | | | |")
            continue
        b = base[label]
        pp_x = statistics.median(v["pp"]) / statistics.median(b["pp"])
        tg_x = statistics.median(v["tg"]) / statistics.median(b["tg"])
        comm = statistics.median(v["comm"])
        share = comm / (1000.0 / statistics.median(v["tg"])) * 100
        print(f"| {name} | {cell(v['pp'])} | {pp_x:.2f}x | {cell(v['tg'])} | {tg_x:.2f}x | {comm:.2f} | {share:.0f}% |")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"model": a.model, "results": res}, f, indent=1)


if __name__ == "__main__":
    main()
