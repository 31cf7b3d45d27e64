"""Torch thread count for small float64 work (issue #15, target 6: the CLI picks the count that
measures best; the library leaves torch's global state alone).

Each run is a fresh process (torch's thread pool is per process), interleaved over the settings:
a Torch fit of the hybrid Lotka-Volterra model (examples/lotka_volterra_neural.nimm on the Hudson
Bay table; --iters Adam steps then --iters L-BFGS steps, standard errors included) at 1 thread, 2 threads, torch's default, and the
count `nimm` picks (runtime/torch_threads.py, its measurement included in the time).

Run: .venv/bin/python benchmarks/torch_threads.py [--repeats 3] [--iters 100]
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CHILD = """
import sys, time
import torch
import nimm_dsl
setting, iters = sys.argv[1], int(sys.argv[2])
t = time.perf_counter()
if setting == "nimm":
    from nimm_dsl.runtime.torch_threads import use_best_torch_threads
    use_best_torch_threads()
elif setting != "default":
    torch.set_num_threads(int(setting))
model = nimm_dsl.load(sys.argv[3])
res = model.fit(sys.argv[4], backend="torch", max_iter=iters, lbfgs_iter=iters, progress=False)
print(torch.get_num_threads(), time.perf_counter() - t, res.loss)
"""


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--iters", type=int, default=100)
    args = ap.parse_args()
    settings = ["1", "2", "default", "nimm"]
    runs = {s: [] for s in settings}
    model = ROOT / "examples" / "lotka_volterra_neural.nimm"
    data = ROOT / "examples" / "data" / "hudson_bay_lynx_hare.csv"
    env = dict(os.environ, XDG_CACHE_HOME=tempfile.mkdtemp())
    env.pop("NIMM_TORCH_THREADS", None)
    loads = []
    for _ in range(args.repeats):
        for s in settings:
            out = subprocess.run([sys.executable, "-c", CHILD, s, str(args.iters), str(model), str(data)],
                                 capture_output=True, text=True, env=env, check=True).stdout.split()
            runs[s].append((int(out[0]), float(out[1]), float(out[2])))
            loads.append(os.getloadavg()[0])
            print(f"  run: {s} threads -> {out[0]} used, {float(out[1]):.2f} s", file=sys.stderr, flush=True)
    print(f"Torch fit of the hybrid Lotka-Volterra model ({args.iters} Adam + {args.iters} L-BFGS steps), one "
          f"process per run, median of {args.repeats} interleaved runs; load average "
          f"{min(loads):.1f}-{max(loads):.1f} on {os.cpu_count()} cores\n")
    print("| threads | threads used | fit (s) | time / 1 thread | final loss |")
    print("|---|---:|---:|---:|---:|")
    base = statistics.median(r[1] for r in runs["1"])
    for s in settings:
        used = sorted({r[0] for r in runs[s]})
        sec = statistics.median(r[1] for r in runs[s])
        label = {"default": "torch default", "nimm": "picked by `nimm` (measurement included)"}.get(s, s)
        print(f"| {label} | {', '.join(map(str, used))} | {sec:.2f} | {sec / base:.2f}x | "
              f"{statistics.median(r[2] for r in runs[s]):.4f} |")


if __name__ == "__main__":
    main()
