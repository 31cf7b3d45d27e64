"""Simulator of the `oncology` benchmark task: writes data/oncology_*.csv (deterministic).

True mechanism (a tumour xenograft, days since the start of the study):

    dV/dt = r * V * log(K / V) - kill * C * V      Gompertz growth, drug kill
    dC/dt = -ke * C                                 first-order elimination, half-life 1 day
    V(0) = V0 = 60 mm^3, C(0) = 0,  r = 0.06 /day, K = 3000 mm^3, kill = 0.08 L/(mg*day)
    chemotherapy  CHEMO: C += 5 mg/L on days 7, 14, 21, 28
    radiotherapy  RT:    V *= exp(-alpha * d - beta * d^2) on days 35-39, d = 2 Gy,
                         alpha = 0.12 /Gy, beta = alpha / 10 /Gy^2 (surviving fraction 0.754)
    measured volume = V * exp(0.1 * z), z ~ N(0, 1)   (lognormal, sigma = 0.1)

A value at a dose time is the value after the dose. Measurements every 2 days: train days 0-48,
test days 50-70 (one seeded generator). Counterfactuals (noise-free V, daily, days 0-70):
no_chemo (no CHEMO doses) and no_radio (no RT fractions).

Run: .venv/bin/python benchmarks/tasks/simulators/oncology.py [OUTDIR]  (default: ../data)
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from scipy.integrate import solve_ivp
sys.path.insert(0, str(Path(__file__).resolve().parent))  # the shared tables.py beside this file
from tables import table, write_tables  # noqa: E402

R, K, KILL, KE, V0 = 0.06, 3000.0, 0.08, np.log(2) / 1.0, 60.0
ALPHA, D_RT = 0.12, 2.0
BETA = ALPHA / 10
CHEMO_DAYS = [7.0, 14.0, 21.0, 28.0]
RT_DAYS = [35.0, 36.0, 37.0, 38.0, 39.0]
SIGMA = 0.1
SEED = 20260102
MEASURED = np.arange(0, 71, 2)
N_TRAIN = 25  # days 0-48
TRUTH_DAYS = np.arange(0, 71)


def rhs(t, y):
    V, C = y
    return [R * V * np.log(K / V) - KILL * C * V, -KE * C]


def volume(times: np.ndarray, chemo: bool, radio: bool) -> np.ndarray:
    """V at `times` (after any dose at that time), integrating between events."""
    events = sorted(set((CHEMO_DAYS if chemo else []) + (RT_DAYS if radio else [])))
    y = np.array([V0, 0.0])
    t = 0.0
    out = np.empty(len(times))
    for stop in events + [float(times[-1]) + 1.0]:
        # record the times before this event
        mask = (times >= t) & (times < stop)
        if stop > t:
            sol = solve_ivp(rhs, (t, stop), y, method="LSODA", rtol=1e-11, atol=1e-10,
                            dense_output=True)
            for j in np.nonzero(mask)[0]:
                out[j] = sol.sol(times[j])[0] if times[j] > t else y[0]
            y = sol.y[:, -1].copy()
            t = stop
        if chemo and stop in CHEMO_DAYS:
            y[1] += 5.0
        if radio and stop in RT_DAYS:
            y[0] *= np.exp(-ALPHA * D_RT - BETA * D_RT ** 2)
    return out


def build() -> dict[str, str]:
    """File name -> CSV text of every table of the task."""
    rng = np.random.default_rng(SEED)
    v = volume(MEASURED.astype(float), chemo=True, radio=True)
    measured = np.round(v * np.exp(SIGMA * rng.standard_normal(len(v))), 2)
    tr, te = slice(0, N_TRAIN), slice(N_TRAIN, None)
    out = {
        "oncology_train.csv": table({"day": MEASURED[tr], "volume": measured[tr]}),
        "oncology_test.csv": table({"day": MEASURED[te], "volume": measured[te]}),
    }
    for name, chemo, radio in [("no_chemo", False, True), ("no_radio", True, False)]:
        out[f"oncology_cf_{name}.csv"] = table(
            {"day": TRUTH_DAYS, "volume": volume(TRUTH_DAYS.astype(float), chemo, radio)})
    return out


if __name__ == "__main__":
    write_tables(build)
