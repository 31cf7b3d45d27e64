"""Fitting speed: Lotka-Volterra on the Hudson's Bay lynx and hare pelts (lognormal noise).

Compares `nimm_dsl` (CasADi: a sum-of-squares fit with exact sensitivities, sigma profiled out, exact
Hessian at the optimum for standard errors; all of `fit` is timed, data loading included) with a hand-written scipy
baseline (least_squares on the log residuals + solve_ivp, then the sigma that maximises the
likelihood) from the same starting point, and times the hybrid (neural) Lotka-Volterra fit with
the Torch back end. Prints a markdown table: wall time (median of the repeats) and final loss
(the same negative log-likelihood for both).

    .venv/bin/python benchmarks/fit_speed.py [--repeats 3] [--skip-hybrid]
"""
from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.integrate import solve_ivp
from scipy.optimize import least_squares

import nimm_dsl
from nimm_dsl.runtime.fit import fit

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "examples" / "data" / "hudson_bay_lynx_hare.csv"
START = [0.55, 0.028, 0.80, 0.024, 30.0, 4.0]  # the model file's defaults
LOWER = [0.1, 0.001, 0.1, 0.001, 1.0, 0.5]
UPPER = [2.0, 0.2, 2.0, 0.2, 100.0, 50.0]


def scipy_baseline(frame: pd.DataFrame) -> float:
    """Least squares on log values (the lognormal MLE for the dynamics), then the closed-form
    sigma; returns the negative log-likelihood, as nimm_dsl defines it."""
    t = frame["year"].to_numpy(float)
    obs = np.log(frame[["hare", "lynx"]].to_numpy(float).T)

    def residuals(theta):
        a, b, c, d, h0, l0 = theta
        rhs = lambda _, x: [a * x[0] - b * x[0] * x[1], -c * x[1] + d * x[0] * x[1]]  # noqa: E731
        sol = solve_ivp(rhs, (t[0], t[-1]), [h0, l0], t_eval=t, rtol=1e-8, atol=1e-8)
        if not sol.success or np.any(sol.y <= 0):
            return np.full(obs.size, 1e3)
        return (np.log(sol.y) - obs).ravel()

    res = least_squares(residuals, START, bounds=(LOWER, UPPER), x_scale="jac")
    n = obs.size
    sigma = np.sqrt(np.sum(res.fun ** 2) / n)
    return float(n * np.log(sigma) + 0.5 * n + np.sum(obs) + 0.5 * n * np.log(2 * np.pi))


def timed(fn, repeats: int):
    times, value = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        value = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), value


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip-hybrid", action="store_true")
    args = parser.parse_args(argv)

    frame = pd.read_csv(DATA)
    lv = nimm_dsl.load(ROOT / "examples" / "lotka_volterra.nimm").ir
    rows = []
    t_ours, ours = timed(lambda: fit(lv, DATA, progress=False), args.repeats)
    rows.append(("Lotka-Volterra, nimm_dsl (CasADi sensitivities + least squares)", t_ours, ours.loss))
    t_ref, ref_loss = timed(lambda: scipy_baseline(frame), args.repeats)
    rows.append(("Lotka-Volterra, scipy least_squares + solve_ivp", t_ref, ref_loss))
    if not args.skip_hybrid:
        hybrid = nimm_dsl.load(ROOT / "examples" / "lotka_volterra_neural.nimm").ir
        t_h, h = timed(lambda: fit(hybrid, DATA, backend="torch", progress=False), 1)
        rows.append(("hybrid Lotka-Volterra + MLP, nimm_dsl (Torch)", t_h, h.loss))

    print(f"| fit | wall time (s, median of {args.repeats}; hybrid: 1 run) | final loss (NLL) | time / ours |")
    print("|---|---:|---:|---:|")
    for name, seconds, loss in rows:
        print(f"| {name} | {seconds:.3f} | {loss:.6f} | {seconds / t_ours:.1f}x |")


if __name__ == "__main__":
    main()
