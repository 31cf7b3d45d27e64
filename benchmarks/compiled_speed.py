"""Issue #15 target 1: the compiled route against the interpreted CasADi path, scipy LSODA and
numbalsoda, at equal accuracy.

Run from the repository root:  .venv/bin/python benchmarks/compiled_speed.py
(numbalsoda is optional: `.venv/bin/pip install numbalsoda`, which needs gfortran to build.)

SIR and Hodgkin-Huxley (examples/), 1000 output times. For every tolerance of a sweep each
solver runs REPEATS times, interleaved with the others so that load on a shared machine affects
them alike; its error is the largest error relative to each state's range against DOP853 at
rtol = atol = 1e-12. "compiled, bare solver" is the same compiled object called directly for
the one segment (no protocol, outputs or result), as the peers are called. "compiled" uses the
default method (compiled.DEFAULT_METHOD: a GSL explicit Runge-Kutta pair, CVODES BDF when stiff);
"compiled <method>" each other method of the driver (GSL rkf45, rkck, rk8pd; CVODES Adams, BDF
throughout), which is how the default was chosen. "compiled, stopping at every output" is the
default method built so that every step stops at the next output time (the driver before it
learnt to step freely where a step spans several outputs), for the record of that change.
"At equal accuracy" compares, for an error level, each solver's fastest run that reaches it. Our
routes are timed through `simulate` (protocol, outputs, result), the peers as bare solver calls
on hand-written right-hand sides. Compile time (code generation
+ gcc, empty cache) and a cached load are reported separately.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from scipy.integrate import solve_ivp

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ["XDG_CACHE_HOME"] = tempfile.mkdtemp()  # the compile time is measured from an empty cache

import nimm_dsl  # noqa: E402
from nimm_dsl.backends import compiled as compiled_route  # noqa: E402
from nimm_dsl.backends.casadi_backend import compile_casadi  # noqa: E402
from nimm_dsl.backends.protocol import segment_tail  # noqa: E402
from simulate_speed import hh_rhs, sir_rhs  # noqa: E402  (the same hand-written references)

N_TIMES = 1000
TOLERANCES = [1e-6, 1e-7, 1e-8, 1e-9, 1e-10]
ERROR_LEVELS = [1e-4, 1e-5, 1e-6]

CASES = [
    # name, example file, horizon, reference RHS, initial state, state names
    ("SIR", "flu_sir.nimm", 30.0, sir_rhs, [762.0, 1.0, 0.0], ["S", "I", "R"]),
    ("Hodgkin-Huxley", "hodgkin_huxley.nimm", 100.0, hh_rhs, [-65.0, 0.0529, 0.5961, 0.3177],
     ["V", "m", "h", "n"]),
]


def numbalsoda_solvers():
    """numbalsoda callables per case name, or None with the reason it is unavailable."""
    try:
        import numba as nb
        from numbalsoda import lsoda, lsoda_sig
    except ImportError as err:
        return None, f"numbalsoda not installed ({err})"

    @nb.cfunc(lsoda_sig)
    def sir(t, u, du, p):
        infection = 1.73 * u[0] * u[1] / (u[0] + u[1] + u[2])
        du[0] = -infection
        du[1] = infection - 0.54 * u[1]
        du[2] = 0.54 * u[1]

    @nb.cfunc(lsoda_sig)
    def hh(t, u, du, p):
        v, m, h, n = u[0], u[1], u[2], u[3]
        alpha_m = 0.1 * (v + 40) / (1 - np.exp(-(v + 40) / 10))
        beta_m = 4 * np.exp(-(v + 65) / 18)
        alpha_h = 0.07 * np.exp(-(v + 65) / 20)
        beta_h = 1 / (1 + np.exp(-(v + 35) / 10))
        alpha_n = 0.01 * (v + 55) / (1 - np.exp(-(v + 55) / 10))
        beta_n = 0.125 * np.exp(-(v + 65) / 80)
        i_ion = 120.0 * m ** 3 * h * (v - 50.0) + 36.0 * n ** 4 * (v + 77.0) + 0.3 * (v + 54.387)
        du[0] = 10.0 - i_ion
        du[1] = alpha_m * (1 - m) - beta_m * m
        du[2] = alpha_h * (1 - h) - beta_h * h
        du[3] = alpha_n * (1 - n) - beta_n * n

    data = np.zeros(1)

    def make(fn):
        address = fn.address
        return lambda y0, times, tol: lsoda(address, np.asarray(y0, float), times, data=data,
                                             rtol=tol, atol=tol)[0].T
    return {"SIR": make(sir), "Hodgkin-Huxley": make(hh)}, None


def median_times(fns, repeats) -> list[float]:
    samples = [[] for _ in fns]
    order = np.random.default_rng(0)
    for _ in range(repeats):
        # a new order each round: a solver run right after a given other one (numbalsoda, LSODA)
        # was measured 0.1 ms slower on SIR, so no solver keeps the same predecessor
        for k in order.permutation(len(fns)):
            t0 = time.perf_counter()
            fns[k]()
            samples[k].append(time.perf_counter() - t0)
    return [statistics.median(s) for s in samples]


def run_case(name, file, horizon, rhs, y0, states, peers, repeats):
    ir = nimm_dsl.load(ROOT / "examples" / file).ir
    times = np.linspace(0.0, horizon, N_TIMES)
    t0 = time.perf_counter()
    fast = compile_casadi(ir, compiled=True)
    fast.simulate(times[:2])  # code generation + gcc + load
    compile_s = time.perf_counter() - t0
    compiled_route.forget_loaded()  # as a fresh process: load from the disk cache
    t0 = time.perf_counter()
    compile_casadi(ir, compiled=True).simulate(times[:2])
    cached_s = time.perf_counter() - t0
    slow = compile_casadi(ir, compiled=False)
    flags = compiled_route.FLAGS
    compiled_route.FLAGS = (*flags, "-DNIMM_FREE_SPAN=1000000000")  # never step past an output
    try:
        stopping = compile_casadi(ir, compiled=True)
        stopping.simulate(times[:2])  # builds and keeps its own object
    finally:
        compiled_route.FLAGS = flags

    exact = solve_ivp(rhs, (0.0, horizon), y0, method="DOP853", t_eval=times, rtol=1e-12, atol=1e-12).y
    scale = np.max(np.abs(exact), axis=1, keepdims=True)

    def error(y):
        return float(np.max(np.abs(np.asarray(y) - exact) / scale))

    def ours(sim, tol):
        def run():
            res = sim.simulate(times, rtol=tol, atol=tol)
            return np.array([res[s] for s in states])
        return run

    def with_method(method):  # the compiled route with another method than the default, for the choice
        def make(tol):
            run = ours(fast, tol)

            def timed():
                compiled_route.DEFAULT_METHOD = method
                try:
                    return run()
                finally:
                    compiled_route.DEFAULT_METHOD = default
            return timed
        return make

    # the compiled solver called bare, as the peers are: one segment from the initial state
    solver = fast.compiled_route.solver()
    (segment,) = fast.protocol(times).segments
    pw = np.concatenate((fast.param_vector(), segment_tail(segment), fast.weight_vector()))

    def bare(tol):
        return lambda: solver.integrate(0.0, times[1:], np.asarray(y0, float), pw, tol, tol, 20000).T

    default = compiled_route.DEFAULT_METHOD
    solvers = {"compiled": lambda tol: ours(fast, tol),
               "compiled, bare solver": lambda tol: lambda: np.c_[np.asarray(y0, float), bare(tol)()],
               "compiled, stopping at every output": lambda tol: ours(stopping, tol),
               **{f"compiled {m}": with_method(m) for m in compiled_route.METHODS
                  if m != default},
               "CasADi interpreted": lambda tol: ours(slow, tol),
               "scipy LSODA": lambda tol: lambda: solve_ivp(rhs, (0.0, horizon), y0, method="LSODA",
                                                             t_eval=times, rtol=tol, atol=tol).y}
    if peers:
        solvers["numbalsoda"] = lambda tol: lambda: peers[name](y0, times, tol)
    rows = []
    for tol in TOLERANCES:
        fns = {k: make(tol) for k, make in solvers.items()}
        for fn in fns.values():
            fn()  # warm: integrator construction, JIT
        medians = median_times(list(fns.values()), repeats)
        for (k, fn), t in zip(fns.items(), medians):
            rows.append(dict(case=name, solver=k, tol=tol, time=t, err=error(fn())))
    return rows, compile_s, cached_s


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=15)
    args = ap.parse_args()
    peers, why = numbalsoda_solvers()
    if why:
        print(f"numbalsoda column missing: {why}\n")
    print(f"{N_TIMES} output times, median of {args.repeats} interleaved runs per tolerance; "
          f"load average at start {os.getloadavg()[0]:.1f}\n")
    all_rows, builds = [], []
    for case in CASES:
        rows, compile_s, cached_s = run_case(*case, peers, args.repeats)
        all_rows += rows
        builds.append((case[0], compile_s, cached_s))

    solvers = list(dict.fromkeys(r["solver"] for r in all_rows))
    print("Tolerance sweep: time (ms) / error against DOP853\n")
    print("| model | rtol = atol | " + " | ".join(solvers) + " |")
    print("|---|---:|" + "---:|" * len(solvers))
    for case in CASES:
        for tol in TOLERANCES:
            cells = [next(f"{1e3 * r['time']:.3f} / {r['err']:.1e}" for r in all_rows
                          if r["case"] == case[0] and r["solver"] == s and r["tol"] == tol) for s in solvers]
            print(f"| {case[0]} | {tol:g} | " + " | ".join(cells) + " |")

    print("\nAt equal accuracy: fastest run reaching each error level (ms), and the ratios\n")
    peer_cols = [s for s in ("numbalsoda", "scipy LSODA", "CasADi interpreted", "compiled, bare solver",
                             "compiled, stopping at every output") if s in solvers]
    peer_cols += [s for s in solvers if s.startswith("compiled ")]  # the other methods
    print("| model | error <= | compiled | " + " | ".join(peer_cols) + " | "
          + " | ".join(f"compiled / {p}" for p in peer_cols) + " |")
    print("|---|---:|---:|" + "---:|" * (2 * len(peer_cols)))
    for case in CASES:
        for level in ERROR_LEVELS:
            best = {}
            for s in solvers:
                ok = [r["time"] for r in all_rows if r["case"] == case[0] and r["solver"] == s and r["err"] <= level]
                best[s] = min(ok) if ok else None
            cells = ["-" if best[s] is None else f"{1e3 * best[s]:.3f}" for s in ["compiled"] + peer_cols]
            ratios = ["-" if best["compiled"] is None or best[p] is None else f"{best['compiled'] / best[p]:.2f}"
                      for p in peer_cols]
            print(f"| {case[0]} | {level:g} | " + " | ".join(cells + ratios) + " |")

    print("\nFirst simulation of a freshly compiled simulator (compile_casadi + code generation + "
          "gcc -O2 + load), with an empty cache and from the cache\n")
    print("| model | empty cache (s) | from the cache (ms) |")
    print("|---|---:|---:|")
    for name, compile_s, cached_s in builds:
        print(f"| {name} | {compile_s:.3f} | {1e3 * cached_s:.1f} |")


if __name__ == "__main__":
    main()
