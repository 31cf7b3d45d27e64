"""Standard errors on a large model: the Fisher information against the exact Hessian (issue #15,
target 3: SE cost <= 30% of the fit on the 100-patch ring model).

A ring of P SIR patches, each coupled to its two neighbours (`m`), infection seeded in patch 1
(I0) and a trace (0.01) everywhere else; every patch's infectious count is observed at T times.
Both noise models are measured: normal (one estimated sigma) and Poisson (deviance residuals),
both on the least-squares path. Per
repeat, interleaved: one fit from the defaults (optimiser only), then the information matrix at
its optimum each way, exactly as `fit` computes it (`information_matrix`).

Run: .venv/bin/python benchmarks/se_speed.py [--patches 100] [--times 30] [--repeats 3]
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np
import pandas as pd

import nimm_dsl
from nimm_dsl.runtime.data import load_data
from nimm_dsl.runtime.fit.casadi_paths import casadi_solver
from nimm_dsl.runtime.fit.entry import information_matrix


def ring_model(P: int, noise: str) -> str:
    lines = [f"model ring_{P}", "time t [day]", "unit person", "const N [person] = 1000",
             "param beta [1/day] = 0.6 in [0.05, 5]", "param gamma [1/day] = 0.25 in [0.01, 2]",
             "param m [1] = 0.05 in [0, 1]", "param I0 [person] = 5 in [0.1, 100]"]
    if noise == "normal":
        lines.append("param sigma [person] = 5 in [0.01, 100]")
    for i in range(1, P + 1):
        seed = "I0" if i == 1 else "0.01 [person]"  # every patch positive: Poisson needs a rate
        lines += [f"state S{i} [person] = N - {seed}", f"state I{i} [person] = {seed}"]
    for i in range(1, P + 1):
        left, right = (i - 2) % P + 1, i % P + 1
        lines.append(f"let inf{i} [person/day] = beta * S{i} * (I{i} + m * (I{left} + I{right})) / N")
        lines.append(f"der(S{i}) = -inf{i}")
        lines.append(f"der(I{i}) = inf{i} - gamma * I{i}")
        tail = "~ normal(sigma = sigma)" if noise == "normal" else "~ poisson"
        lines.append(f"observe y{i} [person] = I{i} {tail}")
    return "\n".join(lines) + "\n"


TRUE = {"beta": 0.7, "gamma": 0.2, "m": 0.1, "I0": 3.0, "sigma": 3.0}


def ring_data(model, P: int, T: int, noise: str, seed=0) -> pd.DataFrame:
    times = np.linspace(0, 60, T)
    truth = {k: v for k, v in TRUE.items() if k in {p.name for p in model.ir.params}}
    res = model.simulate(times, params=truth)
    rng = np.random.default_rng(seed)
    table = {"t": times}
    for i in range(1, P + 1):
        f = np.asarray(res[f"y{i}"], dtype=float)
        table[f"y{i}"] = (f + TRUE["sigma"] * rng.standard_normal(T) if noise == "normal"
                          else rng.poisson(np.maximum(f, 0)).astype(float))
    return pd.DataFrame(table)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--patches", type=int, default=100)
    ap.add_argument("--times", type=int, default=30)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--noise", nargs="+", default=["normal", "poisson"])
    args = ap.parse_args()
    print(f"{args.patches}-patch SIR ring, {2 * args.patches} states, {args.times} times x {args.patches} "
          f"observed series, rtol = atol = 1e-8; median of {args.repeats} interleaved repeats; "
          f"load average {os.getloadavg()[0]:.1f}\n")
    print("| noise | path | params | set-up (s) | fit (s) | SE Fisher (s) | SE exact (s) | "
          "Fisher / fit | exact / fit | max relative SE difference |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|", flush=True)
    for noise in args.noise:
        t0 = time.perf_counter()
        model = nimm_dsl.load_source(ring_model(args.patches, noise), f"ring_{args.patches}.nimm")
        sim = model.compile("casadi")
        train = load_data(ring_data(model, args.patches, args.times, noise), model.ir)
        solver = casadi_solver(model.ir, train, 1e-8, 1e-8, None, sim)
        setup = time.perf_counter() - t0
        start = np.array([p.default for p in solver.est])
        fits, gn, exact, se = [], [], [], {}
        for _ in range(args.repeats):
            t = time.perf_counter()
            outcome = solver.solve(start)
            fits.append(time.perf_counter() - t)
            x = np.array([outcome.values[p.name] for p in solver.est])
            for kind, out in (("gauss-newton", gn), ("exact", exact)):
                t = time.perf_counter()
                H = information_matrix(solver, outcome, x, kind)
                out.append(time.perf_counter() - t)
                se[kind] = np.sqrt(np.diag(np.linalg.inv(H)))
        fit_s, gn_s, ex_s = (statistics.median(v) for v in (fits, gn, exact))
        spread = float(np.max(np.abs(se["gauss-newton"] / se["exact"] - 1)))
        print(f"| {noise} | {type(solver).__name__} | {len(solver.est)} | {setup:.2f} | {fit_s:.2f} | "
              f"{gn_s:.3f} | {ex_s:.2f} | {gn_s / fit_s:.0%} | {ex_s / fit_s:.0%} | {spread:.1e} |", flush=True)
    print(f"\nload average at the end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
