"""Per-series params through the least-squares machinery (issue #15, target 2: >= 3x faster than
scipy L-BFGS-B + LSODA on the same NLL from the same start, reaching the same optimum).

Indometacin in six volunteers after a 25 mg IV bolus (examples/data/indometh_doses.csv, the
concentrations only): a one-compartment model with the volume V and the log-scale error sigma
shared and the elimination rate k per subject (examples/indometh_per_subject.nimm with the dose
written as a fixed bolus at 0 instead of read from the table). Our `fit` (least squares on log
residuals with CVODES sensitivities, each subject's sensitivities in its own columns; data binding
and standard errors included, on a simulator compiled once), the same model through IPOPT with
exact Hessians (`ipopt_options={}`, the path per-series params had before), and a hand-written
scipy fit: `minimize(method="L-BFGS-B")` of the lognormal NLL with finite-difference gradients, one
`solve_ivp(method="LSODA")` per subject on a hand-written right-hand side, params scaled by their
start, the same start and bounds. Every solver at rtol = atol = 1e-8. Medians of interleaved runs.

Doses read from the data table (`dose iv [ug/kg]: A += iv * wt at data`): phenobarbital in 59
neonates (examples/phenobarb.nimm as shipped: clearance, volume and sigma shared, each infant's
doses and birth weight from its rows), our fit against IPOPT and against scipy L-BFGS-B with, per
infant, LSODA from dose to dose (the state jumps by the dose at each dose row).

Run: .venv/bin/python benchmarks/series_fit_speed.py [--repeats 5]
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

import nimm_dsl

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "examples" / "data" / "indometh_doses.csv"


def model_text() -> str:
    text = (ROOT / "examples" / "indometh_per_subject.nimm").read_text()
    text = text.replace("time t [h]", "time t [h] from 0")
    text = text.replace("dose iv [mg]: A += iv at data", "dose iv: A += 25 [mg] at 0")
    return text.split("scenario")[0]


def scipy_fit(table: pd.DataFrame, start, bounds):
    """start/bounds: V, sigma, then k per subject."""
    subjects = list(dict.fromkeys(table.series))
    groups = [(g.t.to_numpy(float), g.conc.to_numpy(float)) for _, g in table.groupby("series", sort=False)]

    def nll(theta):
        V, sigma, ks = theta[0], theta[1], theta[2:]
        total = 0.0
        for k, (t, y) in zip(ks, groups):
            sol = solve_ivp(lambda _, a: [-k * a[0]], (0.0, t[-1]), [25.0], method="LSODA", t_eval=t,
                            rtol=1e-8, atol=1e-8)
            f = sol.y[0] / V
            if not sol.success or np.any(f <= 0):
                return 1e10
            r = (np.log(f) - np.log(y)) / sigma
            total += float(np.sum(0.5 * r ** 2 + np.log(sigma) + np.log(y) + 0.5 * np.log(2 * np.pi)))
        return total

    scale = np.asarray(start, dtype=float)
    res = minimize(lambda z: nll(z * scale), np.ones_like(scale), method="L-BFGS-B",
                   bounds=[(lo / s, hi / s) for (lo, hi), s in zip(bounds, scale)],
                   options={"ftol": 1e-15, "gtol": 1e-10, "eps": 1e-7, "maxfun": 50000})
    assert len(subjects) == len(groups)
    return res.fun


PHENO = ROOT / "examples" / "data" / "phenobarb.csv"


def scipy_phenobarb(table: pd.DataFrame, start, bounds):
    """Normal NLL of conc = A / (v wt), dA/dt = -cl / v A, A += iv wt at each dose row."""
    infants = []
    for _, g in table.groupby("series", sort=False):
        wt = float(g.wt.iloc[0])
        doses = [(float(t), float(a) * wt) for t, a in zip(g.t, g.iv) if np.isfinite(a)]
        obs = g[g.conc.notna()]
        infants.append((wt, doses, obs.t.to_numpy(float), obs.conc.to_numpy(float)))

    def nll(theta):
        cl, v, sigma = theta
        total = 0.0
        for wt, doses, t_obs, y in infants:
            pred, amount, t_prev = np.empty(len(t_obs)), 0.0, doses[0][0]
            edges = [d[0] for d in doses] + [np.inf]
            for (t_dose, a), t_next in zip(doses, edges[1:]):
                if t_dose > t_prev:  # to this dose
                    amount = solve_ivp(lambda _, x: [-cl / v * x[0]], (t_prev, t_dose), [amount],
                                       method="LSODA", rtol=1e-8, atol=1e-8).y[0, -1]
                amount += a
                inside = (t_obs >= t_dose) & (t_obs < t_next)
                if inside.any():
                    sol = solve_ivp(lambda _, x: [-cl / v * x[0]], (t_dose, t_obs[inside][-1]), [amount],
                                    method="LSODA", t_eval=t_obs[inside], rtol=1e-8, atol=1e-8)
                    pred[inside] = sol.y[0]
                t_prev = t_dose
            r = (pred / (v * wt) - y) / sigma
            total += float(np.sum(0.5 * r ** 2 + np.log(sigma) + 0.5 * np.log(2 * np.pi)))
        return total

    scale = np.asarray(start, dtype=float)
    res = minimize(lambda z: nll(z * scale), np.ones_like(scale), method="L-BFGS-B",
                   bounds=[(lo / s, hi / s) for (lo, hi), s in zip(bounds, scale)],
                   options={"ftol": 1e-15, "gtol": 1e-10, "eps": 1e-7, "maxfun": 50000})
    return res.fun


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    table = pd.read_csv(DATA)
    table = table[table.conc.notna()][["series", "t", "conc"]].reset_index(drop=True)
    model = nimm_dsl.load_source(model_text())
    n_subjects = table.series.nunique()
    params = {p.name: p for p in model.ir.params}
    start = [params["V"].default, params["sigma"].default] + [params["k"].default] * n_subjects
    bounds = ([(params["V"].lo, params["V"].hi), (params["sigma"].lo, params["sigma"].hi)]
              + [(params["k"].lo, params["k"].hi)] * n_subjects)
    print(f"load average {os.getloadavg()[0]:.1f}, {args.repeats} interleaved repeats, {n_subjects} subjects")
    print("| fit | ours (s) | IPOPT path (s) | scipy L-BFGS-B + LSODA (s) | speed-up vs scipy | vs IPOPT "
          "| NLL ours | NLL scipy | relative difference |")
    print("|---|---|---|---|---|---|---|---|---|")
    compare("Indometh, k per subject", model, table, lambda: scipy_fit(table, start, bounds), args.repeats)

    pheno = nimm_dsl.load(ROOT / "examples" / "phenobarb.nimm")
    pheno_table = pd.read_csv(PHENO)
    params = [pheno.ir.param(n) for n in ("cl", "v", "sigma")]
    start, bounds = [p.default for p in params], [(p.lo, p.hi) for p in params]
    compare("phenobarbital, 59 infants, table doses", pheno, PHENO,
            lambda: scipy_phenobarb(pheno_table, start, bounds), args.repeats)


def compare(label: str, model, data, scipy_peer, repeats: int) -> None:
    """Our fit, the IPOPT path and the scipy peer, interleaved (drift in the machine's load hits
    all three); one table row of medians."""
    sim = model.compile("casadi")
    times = ([], [], [])
    for _ in range(repeats):
        t0 = time.perf_counter()
        ours = model.fit(data, progress=False, simulator=sim)
        t1 = time.perf_counter()
        ipopt = model.fit(data, progress=False, simulator=sim, ipopt_options={})
        t2 = time.perf_counter()
        ref = scipy_peer()
        t3 = time.perf_counter()
        for column, seconds in zip(times, (t1 - t0, t2 - t1, t3 - t2)):
            column.append(seconds)
    ours_m, ipopt_m, scipy_m = (statistics.median(x) for x in times)
    print(f"| {label} | {ours_m:.3f} | {ipopt_m:.3f} | {scipy_m:.3f} | {scipy_m / ours_m:.1f}x "
          f"| {ipopt_m / ours_m:.1f}x | {ours.loss:.8f} | {ref:.8f} | {abs(ours.loss - ref) / abs(ref):.1e} |")
    assert abs(ipopt.loss - ours.loss) <= 1e-6 * abs(ours.loss)


if __name__ == "__main__":
    main()
