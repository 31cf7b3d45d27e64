"""Search throughput (issue #15, target 7: >= 600 candidate fits per minute in one process on a
suite of 20 SIR/SEIR variants, and the slowest quarter no more than 3x the median).

The suite: SIR, SEIR and SIRS structures x normal (estimated sigma) or Poisson counts x with or
without a reporting fraction x with or without a `set` window (a lockdown from day 15 to 30),
the first 20 of these 24 variants. The data: one table simulated from an SEIR model with a
reporting fraction and the lockdown, Poisson-sampled (seed 0), 40 days. Each candidate is what
the agent does per node: load the text (parse, check, lower, compile) and fit it from its
defaults, in one process, one after another.

Run: .venv/bin/python benchmarks/search_throughput.py [--rounds 1]
"""
from __future__ import annotations

import argparse
import itertools
import os
import statistics
import time

import numpy as np
import pandas as pd

import nimm_dsl

STRUCTURES = {
    "SIR": ("state S [person] = N - I0\nstate I [person] = I0\nstate R [person] = 0 [person]\n"
            "flow S -> I = beta * S * I / N\nflow I -> R = gamma * I\n"),
    "SEIR": ("param sigma_e [1/day] = 0.5 in [0.05, 5]\n"
             "state S [person] = N - I0\nstate E [person] = 0 [person]\nstate I [person] = I0\n"
             "state R [person] = 0 [person]\n"
             "flow S -> E = beta * S * I / N\nflow E -> I = sigma_e * E\nflow I -> R = gamma * I\n"),
    "SIRS": ("param omega [1/day] = 0.02 in [0.001, 1]\n"
             "state S [person] = N - I0\nstate I [person] = I0\nstate R [person] = 0 [person]\n"
             "flow S -> I = beta * S * I / N\nflow I -> R = gamma * I\nflow R -> S = omega * R\n"),
}


def variant(structure: str, noise: str, reporting: bool, window: bool) -> str:
    lines = [f"model {structure.lower()}_{noise}{'_rho' if reporting else ''}{'_set' if window else ''}",
             "time day [day]", "unit person", "const N [person] = 10000",
             "param beta [1/day] = 0.5 in [0.05, 5]", "param gamma [1/day] = 0.2 in [0.02, 2]",
             "param I0 [person] = 5 in [0.1, 100]"]
    if reporting:
        lines.append("param rho [1] = 0.5 in [0.01, 1]")
    if noise == "normal":
        lines.append("param sd [person] = 10 in [0.1, 1000]")
    lines.append(STRUCTURES[structure].rstrip("\n"))
    if window:
        lines.append("set beta = 0.4 * beta from 15 to 30")
    tail = "~ normal(sigma = sd)" if noise == "normal" else "~ poisson"
    lines.append(f"observe cases [person] = {'rho * ' if reporting else ''}I {tail}")
    return "\n".join(lines) + "\n"


def suite() -> list[str]:
    combos = itertools.product(STRUCTURES, ("poisson", "normal"), (False, True), (False, True))
    return [variant(*c) for c in combos][:20]


def truth_table() -> pd.DataFrame:
    model = nimm_dsl.load_source(variant("SEIR", "poisson", True, True), "truth.nimm")
    days = np.arange(0.0, 41.0)
    res = model.simulate(days, params={"beta": 0.9, "gamma": 0.25, "I0": 8, "rho": 0.3, "sigma_e": 0.4})
    rng = np.random.default_rng(0)
    return pd.DataFrame({"day": days, "cases": rng.poisson(np.asarray(res["cases"], dtype=float)).astype(float)})


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=1)
    args = ap.parse_args()
    table, texts = truth_table(), suite()
    nimm_dsl.load_source(texts[0], "warm.nimm").fit(table, progress=False)  # imports, parser tables
    seconds = {k: [] for k in range(len(texts))}
    paths = {}
    t_all, cpu_all = time.perf_counter(), time.process_time()
    for _ in range(args.rounds):
        for k, text in enumerate(texts):
            t = time.perf_counter()
            model = nimm_dsl.load_source(text, f"candidate_{k}.nimm")
            res = model.fit(table, progress=False)
            seconds[k].append(time.perf_counter() - t)
            paths[k] = (model.name, res.loss)
    total, cpu = time.perf_counter() - t_all, time.process_time() - cpu_all
    per = sorted((statistics.median(v), k) for k, v in seconds.items())
    times = [s for s, _ in per]
    median = statistics.median(times)
    quarter = times[-max(1, len(times) // 4):]
    print(f"{len(texts)} SIR/SEIR/SIRS candidates x {args.rounds} round(s), one process; load average "
          f"{os.getloadavg()[0]:.1f} (2 cores)\n")
    print("| measure | value | target | met |")
    print("|---|---:|---:|---|")
    rate = len(texts) * args.rounds / total * 60
    print(f"| candidate fits per minute (wall) | {rate:.0f} | >= 600 | {'yes' if rate >= 600 else 'NO'} |")
    cpu_rate = len(texts) * args.rounds / cpu * 60
    print(f"| candidate fits per CPU minute of this process | {cpu_rate:.0f} | | |")
    print(f"| median candidate (s) | {median:.3f} | | |")
    worst = max(quarter) / median
    print(f"| slowest quarter: mean / median, max / median | {statistics.mean(quarter) / median:.1f}x, "
          f"{worst:.1f}x | <= 3x | {'yes' if worst <= 3 else 'NO'} |")
    print("\n| candidate | seconds | loss |")
    print("|---|---:|---:|")
    for s, k in per:
        print(f"| {paths[k][0]} | {s:.3f} | {paths[k][1]:.3f} |")


if __name__ == "__main__":
    main()
