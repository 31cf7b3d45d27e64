"""Simulation speed: the CasADi back end against scipy LSODA on a hand-written numpy RHS.

Run from the repository root:  .venv/bin/python benchmarks/simulate_speed.py
Prints a markdown table: median wall time of repeated simulations (1000 output times,
rtol = atol = 1e-8), the speed-up, the compile time (IR -> CasADi functions) and first-call time
(integrator construction) separately, and each solver's largest error (relative to each state's
range) against a DOP853 solution at rtol = atol = 1e-13. The "raw CVODES" column is a bare
casadi integrator on the hand-written RHS (as SX) with the same options and output grid: the
floor for our back end, so the difference is what our wrapper costs.
"""
from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import casadi as ca
import numpy as np
from scipy.integrate import solve_ivp

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import nimm_dsl  # noqa: E402
from nimm_dsl.backends.casadi_backend import compile_casadi  # noqa: E402

REPEATS = 15
N_TIMES = 1000
TOL = 1e-8


# ---------------------------------------------------------------- hand-written references
def sir_rhs(_, y, beta=1.73, gamma=0.54):
    s, i, r = y
    infection = beta * s * i / (s + i + r)
    return [-infection, infection - gamma * i, gamma * i]


def hh_rhs(_, y, g_na=120.0, g_k=36.0, g_l=0.3, e_na=50.0, e_k=-77.0, e_l=-54.387, i_ext=10.0,
           exp=np.exp):
    v, m, h, n = y
    alpha_m = 0.1 * (v + 40) / (1 - exp(-(v + 40) / 10))
    beta_m = 4 * exp(-(v + 65) / 18)
    alpha_h = 0.07 * exp(-(v + 65) / 20)
    beta_h = 1 / (1 + exp(-(v + 35) / 10))
    alpha_n = 0.01 * (v + 55) / (1 - exp(-(v + 55) / 10))
    beta_n = 0.125 * exp(-(v + 65) / 80)
    i_ion = g_na * m ** 3 * h * (v - e_na) + g_k * n ** 4 * (v - e_k) + g_l * (v - e_l)
    return [i_ext - i_ion,
            alpha_m * (1 - m) - beta_m * m,
            alpha_h * (1 - h) - beta_h * h,
            alpha_n * (1 - n) - beta_n * n]


CASES = [
    # name, example file, horizon, reference RHS, initial state, state names
    ("SIR (flu_sir)", "flu_sir.nimm", 30.0, sir_rhs, [762.0, 1.0, 0.0], ["S", "I", "R"]),
    ("Hodgkin-Huxley", "hodgkin_huxley.nimm", 100.0, hh_rhs, [-65.0, 0.0529, 0.5961, 0.3177],
     ["V", "m", "h", "n"]),
]


def median_times(*fns) -> list[float]:
    """Median wall time of each function; the runs are interleaved so that load on a shared
    machine affects all of them alike."""
    samples = [[] for _ in fns]
    for _ in range(REPEATS):
        for fn, out in zip(fns, samples):
            t0 = time.perf_counter()
            fn()
            out.append(time.perf_counter() - t0)
    return [statistics.median(s) for s in samples]


def raw_cvodes(rhs, y0, times, integrator_options):
    """A bare casadi CVODES integrator on the hand-written RHS, outputs at times[1:]."""
    x = ca.SX.sym("x", len(y0))
    kwargs = {"exp": ca.exp} if "exp" in rhs.__code__.co_varnames else {}
    ode = ca.vertcat(*rhs(None, ca.vertsplit(x), **kwargs))
    opts = dict(abstol=TOL, reltol=TOL, **integrator_options)
    F = ca.integrator("F", "cvodes", {"x": x, "ode": ode}, float(times[0]), times[1:].tolist(), opts)
    return lambda: F(x0=y0)


def run_case(name, file, horizon, rhs, y0, states, **options):
    ir = nimm_dsl.load(ROOT / "examples" / file).ir
    times = np.linspace(0.0, horizon, N_TIMES)

    t0 = time.perf_counter()
    sim = compile_casadi(ir, **options)
    compile_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    res = sim.simulate(times, rtol=TOL, atol=TOL)  # builds and caches the integrator
    first_s = time.perf_counter() - t0
    ours = np.array([res[s] for s in states])

    lsoda = solve_ivp(rhs, (0.0, horizon), y0, method="LSODA", t_eval=times, rtol=TOL, atol=TOL)
    assert lsoda.success, lsoda.message
    exact = solve_ivp(rhs, (0.0, horizon), y0, method="DOP853", t_eval=times, rtol=1e-13, atol=1e-13)
    scale = np.max(np.abs(exact.y), axis=1, keepdims=True)

    def error(y):  # largest error relative to each state's range, against a very tight solution
        return float(np.max(np.abs(y - exact.y) / scale))

    raw = raw_cvodes(rhs, y0, times, options.get("integrator_options", {}))
    casadi_s, raw_s, scipy_s = median_times(
        lambda: sim.simulate(times, rtol=TOL, atol=TOL), raw,
        lambda: solve_ivp(rhs, (0.0, horizon), y0, method="LSODA", t_eval=times, rtol=TOL, atol=TOL))
    return dict(name=name, casadi=casadi_s, raw=raw_s, scipy=scipy_s, compile=compile_s,
                first=first_s, err=error(ours), err_scipy=error(lsoda.y))


# CVODES settings compared: the default (BDF, for stiff problems) and Adams (non-stiff problems)
VARIANTS = [("cvodes BDF", {}),
            ("cvodes Adams", {"integrator_options": {"linear_multistep_method": "adams"}})]


def main():
    rows = [dict(run_case(*case, **opts), variant=variant)
            for case in CASES for variant, opts in VARIANTS]
    print(f"Simulation speed, {N_TIMES} output times, rtol = atol = {TOL:g}, median of {REPEATS} "
          f"interleaved runs\n")
    print("| model | CasADi method | CasADi (ms) | raw CVODES (ms) | scipy LSODA (ms) | speed-up "
          "| compile (ms) | first call (ms) | error CasADi | error LSODA |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['name']} | {r['variant']} | {1e3 * r['casadi']:.2f} | {1e3 * r['raw']:.2f} | "
              f"{1e3 * r['scipy']:.2f} | "
              f"{r['scipy'] / r['casadi']:.1f}x | {1e3 * r['compile']:.1f} | {1e3 * r['first']:.1f} | "
              f"{r['err']:.1e} | {r['err_scipy']:.1e} |")


if __name__ == "__main__":
    main()
