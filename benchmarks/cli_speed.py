"""Cold `nimm fit` against its floor (issue #15, target 5: a cold `nimm fit` costs <= 0.3 s more than
importing numpy, scipy and casadi in a fresh interpreter plus the same fit in-process).

Interleaved per repeat, each process with an empty cache directory: (a) a fresh interpreter
importing numpy, scipy and casadi; (b) a cold `nimm fit MODEL DATA` process. Then, in this
process after a warm-up, the same load + fit in-process (median); and (c) a fresh interpreter
importing also what the fit cannot do without (sympy: the IR; lark: the parser; scipy.optimize:
least squares), the floor for this set of tools. Wall and CPU time (user + system of the child)
are both shown: on a shared machine the CPU column is the steadier one. Last, which heavy packages
a cold fit has loaded when it ends.

Run: .venv/bin/python benchmarks/cli_speed.py [--repeats 9]
"""
from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CASES = [("flu_sir", ROOT / "examples/flu_sir.nimm", ROOT / "examples/data/influenza_england_1978_school.csv"),
         ("lotka_volterra", ROOT / "examples/lotka_volterra.nimm", ROOT / "examples/data/hudson_bay_lynx_hare.csv")]
NIMM = [sys.executable, "-m", "nimm_dsl.cli"]
HEAVY = ("torch", "pandas", "matplotlib", "pint", "scipy.stats")


def timed(cmd) -> tuple[float, float]:
    """(wall, CPU) seconds of one child process with an empty cache directory."""
    env = dict(os.environ, XDG_CACHE_HOME=tempfile.mkdtemp())
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd="/tmp")
    wall = time.perf_counter() - t
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def in_process(model_path, data_path, repeats) -> tuple[float, float]:
    import nimm_dsl

    nimm_dsl.load(model_path).fit(data_path, progress=False)  # warm-up: imports, parser tables
    walls, cpus = [], []
    for _ in range(repeats):
        t, c = time.perf_counter(), time.process_time()
        nimm_dsl.load(model_path).fit(data_path, progress=False)
        walls.append(time.perf_counter() - t)
        cpus.append(time.process_time() - c)
    return statistics.median(walls), statistics.median(cpus)


def loaded(model_path, data_path) -> str:
    """The heavy packages a cold `nimm fit` has loaded when it ends (what it must not load: torch,
    pandas, matplotlib, pint, scipy.stats)."""
    code = ("import sys; from nimm_dsl.cli import main; main(['fit', sys.argv[1], sys.argv[2]]); "
            f"print('loaded:', *[m for m in {HEAVY!r} if m in sys.modules])")
    env = dict(os.environ, XDG_CACHE_HOME=tempfile.mkdtemp())
    out = subprocess.run([sys.executable, "-c", code, str(model_path), str(data_path)], env=env,
                         capture_output=True, text=True, cwd="/tmp").stdout
    return ", ".join(out.strip().splitlines()[-1].split()[1:])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=9)
    args = ap.parse_args()
    bare_cmd = [sys.executable, "-c", "import numpy, scipy, casadi"]
    # what the fit cannot do without: the IR is sympy, the parser lark, least squares scipy.optimize
    floor_cmd = [sys.executable, "-c", "import numpy, scipy, casadi, sympy, scipy.optimize, lark"]
    rows = []
    for name, model, data in CASES:
        bare, floor, cold = [], [], []
        for _ in range(args.repeats):
            bare.append(timed(bare_cmd))
            floor.append(timed(floor_cmd))
            cold.append(timed(NIMM + ["fit", str(model), str(data)]))
        warm = in_process(model, data, args.repeats)
        med = [[statistics.median(v) for v in zip(*runs)] for runs in (bare, floor, cold)]
        rows.append((name, med[0], med[1], warm, med[2], loaded(model, data)))
    print(f"Cold `nimm fit` against its floor, median of {args.repeats} interleaved runs; "
          f"load average {os.getloadavg()[0]:.1f} (2 cores)\n")
    print("| model | import numpy+scipy+casadi | + sympy, scipy.optimize, lark | load + fit in-process | "
          "cold `nimm fit` | overhead | of which the imports | target <= 0.3 s (CPU) | heavy modules loaded |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, bare, floor, warm, cold, heavy in rows:
        over = [c - b - w for c, b, w in zip(cold, bare, warm)]
        deps = [f - b for f, b in zip(floor, bare)]
        met = "yes" if over[1] <= 0.3 else "NO"
        cell = lambda v, d=2: f"{v[0]:.{d}f} / {v[1]:.{d}f}"  # noqa: E731
        print(f"| {name} | {cell(bare)} | {cell(floor)} | {cell(warm, 3)} | {cell(cold)} | {cell(over)} | "
              f"{cell(deps)} | {met} | {heavy or 'none of ' + ', '.join(HEAVY)} |")
    print("\n(each cell: wall / CPU seconds)")


if __name__ == "__main__":
    main()
