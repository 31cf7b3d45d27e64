"""Peak memory and progress of a 1,000,000-row fit (issue #16, item 18).

Writes a two-state model (A -> B, first-order transfer and elimination; B observed with normal
noise) and a 1,000,000-row table simulated from it with known params, then runs `nimm fit` as a
child process with stderr to a pipe (not a terminal), as a batch job would. Reports the child's
peak resident memory (getrusage: the maximum RSS of the child, which is the whole fit), its wall
time, the fitted params against the true ones and the progress lines it printed.

    .venv/bin/python benchmarks/fit_memory.py [--rows 1000000] [--backend casadi]
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

MODEL = """model two_state "first-order absorption and elimination"
time t [h]
param ka [1/h] = 0.8 in [0.01, 10]
param ke [1/h] = 0.2 in [0.01, 10]
param sigma [mg] = 1 in [0.001, 100]
state A [mg] = 100 in [0, inf]
state B [mg] = 0 in [0, inf]
der(A) = -ka * A
der(B) = ka * A - ke * B
observe amount [mg] = B ~ normal(sigma = sigma)
"""
TRUE = {"ka": 1.2, "ke": 0.15, "sigma": 0.5}


def table(rows: int, path: Path, seed: int = 0) -> None:
    """B(t) in closed form (ka != ke) plus normal noise, t from 0 to 48 h."""
    ka, ke, sigma = TRUE["ka"], TRUE["ke"], TRUE["sigma"]
    t = np.linspace(0.0, 48.0, rows)
    b = 100 * ka / (ka - ke) * (np.exp(-ke * t) - np.exp(-ka * t))
    y = b + np.random.default_rng(seed).normal(0.0, sigma, rows)
    with open(path, "w") as f:
        f.write("t,amount\n")
        np.savetxt(f, np.column_stack([t, y]), delimiter=",", fmt="%.10g")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--backend", default="casadi")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "two_state.nimm").write_text(MODEL)
        table(args.rows, tmp / "data.csv")
        t0 = time.perf_counter()
        run = subprocess.run([sys.executable, "-m", "nimm_dsl.cli", "fit", str(tmp / "two_state.nimm"),
                              str(tmp / "data.csv"), "--backend", args.backend, "--output", str(tmp / "FIT.json")],
                             capture_output=True, text=True, env=dict(os.environ, XDG_CACHE_HOME=str(tmp)))
        wall = time.perf_counter() - t0
        peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024  # KiB on Linux
        fitted = json.loads((tmp / "FIT.json").read_text())["params"] if run.returncode == 0 else {}
    progress = [line for line in run.stderr.splitlines() if line.startswith("nimm: fitting")
                or "done," in line]
    print(f"| rows | back end | exit | wall | peak RSS | ka (true {TRUE['ka']}) | ke (true {TRUE['ke']}) "
          f"| sigma (true {TRUE['sigma']}) | progress lines |")
    print("|---:|---|---:|---:|---:|---:|---:|---:|---:|")
    print(f"| {args.rows:,} | {args.backend} | {run.returncode} | {wall:.0f} s | {peak_mb:,.0f} MB | "
          f"{fitted.get('ka', float('nan')):.4g} | {fitted.get('ke', float('nan')):.4g} | "
          f"{fitted.get('sigma', float('nan')):.4g} | {len(progress)} |")
    for line in progress:
        print(f"    {line}")
    if run.returncode != 0:
        print(run.stderr[-2000:])


if __name__ == "__main__":
    main()
