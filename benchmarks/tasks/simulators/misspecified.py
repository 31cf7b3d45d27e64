"""Simulator of the `misspecified` benchmark task: writes data/misspecified_*.csv (deterministic).

True mechanism (a continuous culture, a chemostat; hours since inoculation):

    mu(S) = mu_max * S / (Ks + S + S^2 / Ki)        Haldane (substrate-inhibited) growth, not Monod
    dX/dt = (mu(S) - D(t)) * X
    dS/dt = D(t) * (S_in - S) - mu(S) * X / Y
    mu_max = 0.5 /h, Ks = 0.3 g/L, Ki = 3 g/L, Y = 0.5 g/g, S_in = 10 g/L
    X(0) = 0.1 g/L, S(0) = S_in (the vessel is filled with feed medium, then inoculated)
    measured biomass   = X * exp(0.05 * z1), measured substrate = S * exp(0.05 * z2), z ~ N(0, 1)

D(t) = the `dilution` input [1/h], a step held from each row to the next: 0.05 on hours 0-29,
0.1 on hours 30-59, 0.2 from hour 60 on. The largest growth rate under Haldane kinetics is
mu_max / (1 + 2 sqrt(Ks / Ki)) = 0.306 /h at S = sqrt(Ks * Ki) = 0.95 g/L, so a dilution rate
above it washes the culture out; the training data reach it only through the inhibited start at
S = 10 g/L and the steady states of the three dilution rates.

Tables: measurements every 3 hours, train hours 0-90, test hours 93-120 (one seeded generator);
cf_high_dilution: D = 0.35 /h from hour 60 on, noise-free X and S every 3 hours, 0-120.

Run: .venv/bin/python benchmarks/tasks/simulators/misspecified.py [OUTDIR]  (default: ../data)
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from scipy.integrate import solve_ivp
sys.path.insert(0, str(Path(__file__).resolve().parent))  # the shared tables.py beside this file
from tables import table, write_tables  # noqa: E402

MU_MAX, KS, KI, YIELD, S_IN, X0 = 0.5, 0.3, 3.0, 0.5, 10.0, 0.1
SIGMA = 0.05
SEED = 20260103
HOURS = np.arange(0, 121, 3)
N_TRAIN = 31  # hours 0-90


def dilution_steps(late: float) -> list[tuple[float, float]]:
    """(from hour, dilution rate) steps."""
    return [(0.0, 0.05), (30.0, 0.1), (60.0, late)]


def dilution_at(times: np.ndarray, steps) -> np.ndarray:
    out = np.zeros(len(times))
    for start, d in steps:
        out[times >= start] = d
    return out


def rhs(t, y, D):
    X, S = y
    mu = MU_MAX * S / (KS + S + S ** 2 / KI)
    return [(mu - D) * X, D * (S_IN - S) - mu * X / YIELD]


def trajectory(times: np.ndarray, steps) -> np.ndarray:
    """(X, S) at `times`, integrating each constant-dilution window separately."""
    y = np.array([X0, S_IN])
    out = np.empty((len(times), 2))
    bounds = [s for s, _ in steps] + [float(times[-1]) + 1.0]
    for (start, d), stop in zip(steps, bounds[1:]):
        mask = (times >= start) & (times < stop)
        sol = solve_ivp(rhs, (start, stop), y, args=(d,), method="LSODA", rtol=1e-11, atol=1e-11,
                        dense_output=True)
        for j in np.nonzero(mask)[0]:
            out[j] = sol.sol(times[j]) if times[j] > start else y
        y = sol.y[:, -1]
    return out


def build() -> dict[str, str]:
    """File name -> CSV text of every table of the task."""
    rng = np.random.default_rng(SEED)
    steps = dilution_steps(0.2)
    xs = trajectory(HOURS.astype(float), steps)
    noisy = np.round(xs * np.exp(SIGMA * rng.standard_normal(xs.shape)), 4)
    D = dilution_at(HOURS, steps)
    tr, te = slice(0, N_TRAIN), slice(N_TRAIN, None)
    out = {}
    for part, sl in [("train", tr), ("test", te)]:
        out[f"misspecified_{part}.csv"] = table(
            {"hour": HOURS[sl], "biomass": noisy[sl, 0], "substrate": noisy[sl, 1], "dilution": D[sl]})
    cf_steps = dilution_steps(0.35)
    cf = trajectory(HOURS.astype(float), cf_steps)
    out["misspecified_cf_high_dilution.csv"] = table(
        {"hour": HOURS, "biomass": cf[:, 0], "substrate": cf[:, 1], "dilution": dilution_at(HOURS, cf_steps)})
    return out


if __name__ == "__main__":
    write_tables(build)
