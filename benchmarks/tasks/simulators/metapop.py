"""Simulator of the `metapop` benchmark task: writes data/metapop_*.csv (deterministic).

True mechanism (SEIR in eight districts that mix a little, days since the first cases):

    pop[d], closes[d] (1 for districts 2, 5 and 7): data/metapop_districts.csv, given to modelers
    I[1](0) = 10, every other compartment of district 1 and all of the others start susceptible
    met[d]      = (1 - travel) * I[d] / pop[d] + travel / 7 * sum over k != d of I[k] / pop[k]
    contact[d]  = 1 - (1 - cut) * closed(t) * closes[d]      cut = 0.45 (contacts kept while closed)
    infection_d = beta * contact[d] * met[d] * S[d]          beta = 0.55 per day, travel = 0.04
    dS/dt = -infection,  dE/dt = infection - sigma E,  dI/dt = sigma E - gamma I,  dR/dt = gamma I
    sigma = 1/3 per day (latent 3 days), gamma = 1/4 per day (infectious 4 days)
    reported cases in district d over the week ending on day t
        ~ Poisson(rho * integral from t - 7 to t of sigma * E[d]),   rho = 0.25

closed(t) is a step input (0 or 1) held from each row to the next: schools in the closing districts
close on day 35 in the observed history. The observation is the reported incidence integrated over
each week, exactly what `integral(rho * sigma * E[d], 7 [day]) ~ poisson` computes in
models/metapop/true.nimm.

Tables: train weeks ending on days 7-77, test days 84-112 (Poisson draws, one seeded generator);
cf_no_closure (closed = 0 throughout) and cf_earlier_closure (schools close on day 21), days 7-112,
noise-free expected counts; metapop_districts.csv (provided to models through [data] tables).

Run: .venv/bin/python benchmarks/tasks/simulators/metapop.py [OUTDIR]  (default: ../data)
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from scipy.integrate import solve_ivp
sys.path.insert(0, str(Path(__file__).resolve().parent))  # the shared tables.py beside this file
from tables import table, write_tables  # noqa: E402

POP = np.array([42000, 18000, 25000, 60000, 15000, 33000, 21000, 28000], dtype=float)
CLOSES = np.array([0, 1, 0, 0, 1, 0, 1, 0])
BETA, SIGMA, GAMMA, TRAVEL, CUT, RHO, SEED_I = 0.55, 1 / 3, 1 / 4, 0.04, 0.45, 0.25, 10.0
WEEKS = np.arange(7, 113, 7)
N_TRAIN = 11
SEED = 20261130
D = len(POP)


def closed_from(day: float) -> np.ndarray:
    return (WEEKS >= day).astype(int)


def expected_counts(closure_day: float) -> np.ndarray:
    """Noise-free reported counts per week (rows) and district (columns)."""

    def rhs(t, y, closed):
        S, E, I = y[:D], y[D:2 * D], y[2 * D:3 * D]
        share = I / POP
        met = (1 - TRAVEL) * share + TRAVEL / (D - 1) * (share.sum() - share)
        infection = BETA * (1 - (1 - CUT) * closed * CLOSES) * met * S
        return np.concatenate([-infection, infection - SIGMA * E, SIGMA * E - GAMMA * I,
                               GAMMA * I, RHO * SIGMA * E])  # the last D: cumulative reported

    y = np.zeros(5 * D)
    y[:D], y[0], y[2 * D] = POP, POP[0] - SEED_I, SEED_I
    grid = np.r_[0.0, WEEKS.astype(float)]
    cumulative = [y[4 * D:].copy()]
    for start, stop in zip(grid[:-1], grid[1:]):
        # the input holds its row's value from that row on (before the first row: the first row's)
        closed = float(start >= closure_day)
        sol = solve_ivp(rhs, (start, stop), y, args=(closed,), method="LSODA", rtol=1e-11, atol=1e-9)
        y = sol.y[:, -1]
        cumulative.append(y[4 * D:].copy())
    return np.diff(np.array(cumulative), axis=0)


def columns(counts: np.ndarray, closed: np.ndarray, rows: slice) -> dict:
    out = {"day": WEEKS[rows]}
    out.update({f"cases[{d + 1}]": counts[rows, d] for d in range(D)})
    out["closed"] = closed[rows]
    return out


def build() -> dict[str, str]:
    """File name -> CSV text of every table of the task."""
    rng = np.random.default_rng(SEED)
    observed = closed_from(35)
    counts = rng.poisson(expected_counts(35.0))
    tr, te, every = slice(0, N_TRAIN), slice(N_TRAIN, None), slice(None)
    out = {
        "metapop_districts.csv": table({"district": np.arange(1, D + 1), "pop": POP.astype(int), "closes": CLOSES}),
        "metapop_train.csv": table(columns(counts, observed, tr)),
        "metapop_test.csv": table(columns(counts, observed, te)),
    }
    for name, day in [("no_closure", np.inf), ("earlier_closure", 21.0)]:
        out[f"metapop_cf_{name}.csv"] = table(columns(expected_counts(day), closed_from(day), every))
    return out


if __name__ == "__main__":
    write_tables(build)
