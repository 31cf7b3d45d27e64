"""Simulator of the `epidemic` benchmark task: writes data/epidemic_*.csv (deterministic).

True mechanism (SEIR in a closed town, days since the first case was seeded):

    N = 20000 people, I(0) = 5, E(0) = 0, R(0) = 0, S(0) = N - I(0)
    mixing(t)  = 1 - (1 - contact) * lockdown(t)      contact = 0.35 during the lockdown
    infection  = mixing * beta * S * I / N            beta  = 0.6 per day  (R0 = beta / gamma = 2.4)
    dS/dt = -infection
    dE/dt =  infection - sigma * E                    sigma = 1/3 per day  (latent period 3 days)
    dI/dt =  sigma * E - gamma * I                    gamma = 1/4 per day  (infectious period 4 days)
    dR/dt =  gamma * I
    reported cases on day d ~ Poisson(rho * sigma * E(d) * 1 day),  rho = 0.3

lockdown(t) is a step input (0 or 1), held from each day's row to the next: 1 on days 30-54 in the
observed history. The observation is the instantaneous reported-incidence rate times one day, the
same definition as `observe cases [person] = rho * sigma * E * 1 [day] ~ poisson` in
models/epidemic/true.nimm, so the true model is exactly right.

Tables: train days 0-69, test days 70-99 (Poisson draws, one seeded generator);
cf_no_intervention (lockdown = 0 throughout) and cf_earlier_intervention (lockdown on days 20-44),
days 0-99, noise-free expected reported cases.

Run: .venv/bin/python benchmarks/tasks/simulators/epidemic.py [OUTDIR]  (default: ../data)
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from scipy.integrate import solve_ivp
sys.path.insert(0, str(Path(__file__).resolve().parent))  # the shared tables.py beside this file
from tables import table, write_tables  # noqa: E402

N, BETA, SIGMA, GAMMA, RHO, I0, CONTACT = 50000.0, 0.6, 1 / 3, 1 / 4, 0.3, 5.0, 0.35
DAYS = np.arange(0, 120)
N_TRAIN = 90
SEED = 20260101


def lockdown_days(first: int, last: int) -> np.ndarray:
    return ((DAYS >= first) & (DAYS <= last)).astype(int)


def expected_cases(lockdown: np.ndarray) -> np.ndarray:
    """Noise-free reported cases rho * sigma * E(d) * 1 day at every day d of DAYS."""

    def rhs(t, y, u):
        S, E, I, R = y
        infection = (1 - (1 - CONTACT) * u) * BETA * S * I / N
        return [-infection, infection - SIGMA * E, SIGMA * E - GAMMA * I, GAMMA * I]

    # the input is constant between its changes: integrate each constant window in one go
    changes = [0] + [d for d in DAYS[1:] if lockdown[d] != lockdown[d - 1]] + [int(DAYS[-1]) + 1]
    y = np.array([N - I0, 0.0, I0, 0.0])
    E = []
    for start, stop in zip(changes, changes[1:]):
        days = DAYS[(DAYS >= start) & (DAYS < stop)].astype(float)
        sol = solve_ivp(rhs, (start, stop), y, args=(lockdown[start],), method="LSODA",
                        t_eval=np.append(days, stop), rtol=1e-10, atol=1e-10)
        E.extend(sol.y[1, :-1])
        y = sol.y[:, -1]
    return RHO * SIGMA * np.array(E) * 1.0


def build() -> dict[str, str]:
    """File name -> CSV text of every table of the task."""
    rng = np.random.default_rng(SEED)
    observed_lockdown = lockdown_days(30, 54)
    mean = expected_cases(observed_lockdown)
    cases = rng.poisson(mean)
    tr, te = slice(0, N_TRAIN), slice(N_TRAIN, None)
    out = {
        "epidemic_train.csv": table({"day": DAYS[tr], "cases": cases[tr], "lockdown": observed_lockdown[tr]}),
        "epidemic_test.csv": table({"day": DAYS[te], "cases": cases[te], "lockdown": observed_lockdown[te]}),
    }
    for name, lock in [("no_intervention", np.zeros_like(DAYS)), ("earlier_intervention", lockdown_days(20, 44))]:
        out[f"epidemic_cf_{name}.csv"] = table(
            {"day": DAYS, "cases": expected_cases(lock), "lockdown": lock})
    return out


if __name__ == "__main__":
    write_tables(build)
