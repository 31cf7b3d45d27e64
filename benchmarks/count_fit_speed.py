"""Count likelihoods through the least-squares machinery (issue #15, target 2: >= 3x faster than
scipy L-BFGS-B + LSODA on the same NLL from the same start, NLL within 1e-6 relative).

The boarding-school SIR (examples/flu_sir.nimm) with the bed counts under Poisson noise instead
of normal: our fit (least squares on Poisson deviance residuals with CVODES sensitivities), the
same model through IPOPT with exact Hessians (the previous path, `ipopt_options={}`), and a
hand-written scipy fit: `minimize(method="L-BFGS-B")` (finite-difference gradients, params scaled
by their start) of the Poisson
NLL, the ODE solved by `solve_ivp(method="LSODA")` on a hand-written right-hand side, from the
same start and within the same bounds. Every solver at rtol = atol = 1e-8. Our times are whole
`fit` calls (data binding and standard errors included), on a simulator compiled once, as the
agent does. Medians of interleaved runs.

Run: .venv/bin/python benchmarks/count_fit_speed.py [--repeats 5]
"""
from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.integrate import solve_ivp
from scipy.optimize import minimize
from scipy.special import gammaln

import nimm_dsl

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "examples" / "data" / "influenza_england_1978_school.csv"
N = 763.0


def poisson_sir() -> str:
    text = (ROOT / "examples" / "flu_sir.nimm").read_text()
    text = text.replace("~ normal(sigma = sigma)", "~ poisson")
    return "\n".join(line for line in text.splitlines() if not line.startswith("param sigma"))


def scipy_fit(table: pd.DataFrame, start, bounds):
    t, y = table["day"].to_numpy(float), table["in_bed"].to_numpy(float)
    const = float(np.sum(gammaln(y + 1)))

    def nll(theta):
        beta, gamma, I0 = theta
        sol = solve_ivp(lambda _, u: [-beta * u[0] * u[1] / N, beta * u[0] * u[1] / N - gamma * u[1]],
                        (t[0], t[-1]), [N - I0, I0], method="LSODA", t_eval=t, rtol=1e-8, atol=1e-8)
        f = sol.y[1]
        if not sol.success or np.any(f <= 0):
            return 1e10
        return float(np.sum(f - y * np.log(f))) + const

    # in params scaled by their start, as our fit does; the state starts at the first data time
    scale = np.asarray(start, dtype=float)
    res = minimize(lambda z: nll(z * scale), np.ones_like(scale), method="L-BFGS-B",
                   bounds=[(lo / s, hi / s) for (lo, hi), s in zip(bounds, scale)],
                   options={"ftol": 1e-15, "gtol": 1e-10, "eps": 1e-7, "maxfun": 20000})
    return res.fun


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    model = nimm_dsl.load_source(poisson_sir(), "flu_sir_poisson.nimm")
    sim = model.compile("casadi")
    table = pd.read_csv(DATA)
    est = [p for p in model.ir.params if p.estimate]
    start = [p.default for p in est]
    bounds = [(p.lo, p.hi) for p in est]
    runs = {"ours": [], "ipopt": [], "scipy": []}
    losses = {}
    model.fit(table, simulator=sim, progress=False)  # warm-up: first-call set-up of CasADi
    loads = []
    for _ in range(args.repeats):
        for name in runs:
            t = time.perf_counter()
            if name == "ours":
                losses[name] = model.fit(table, simulator=sim, progress=False).loss
            elif name == "ipopt":
                losses[name] = model.fit(table, simulator=sim, progress=False, ipopt_options={}).loss
            else:
                losses[name] = scipy_fit(table, start, bounds)
            runs[name].append(time.perf_counter() - t)
        loads.append(os.getloadavg()[0])
    med = {k: statistics.median(v) for k, v in runs.items()}
    print(f"SIR (flu_sir) with Poisson counts, 14 points, rtol = atol = 1e-8, median of {args.repeats} "
          f"interleaved runs; load average {min(loads):.1f}-{max(loads):.1f} (2 cores)\n")
    print("| fit | time (s) | final NLL | NLL vs scipy (relative) | scipy time / this |")
    print("|---|---:|---:|---:|---:|")
    labels = {"ours": "nimm_dsl: deviance least squares + CVODES sensitivities",
              "ipopt": "nimm_dsl: IPOPT, exact Hessians (the previous path)",
              "scipy": "scipy L-BFGS-B + LSODA (hand-written)"}
    for k in runs:
        rel = (losses[k] - losses["scipy"]) / abs(losses["scipy"])
        print(f"| {labels[k]} | {med[k]:.3f} | {losses[k]:.8f} | {rel:+.1e} | {med['scipy'] / med[k]:.1f}x |")


if __name__ == "__main__":
    main()
