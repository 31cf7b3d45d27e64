"""Index families (issue #14) and lowering time (issue #15, target 4), side by side in one run.

A metapopulation SEIR over N districts, written in 17 lines whatever N, with dense mixing (every
district meets every other, contacts decaying with the distance between district numbers: N^2
terms). For N = 1, 10, 100 (and 1000 with --big): parse+check, lowering to the IR, CasADi
compile, and one simulation (101 outputs, rtol = atol = 1e-8, the compiled simulator reused) next
to scipy's LSODA on a hand-vectorised numpy right-hand side (a matrix-vector product) at the same
tolerances. Medians of --repeats runs for the simulations; check, lower and compile once per N.

    .venv/bin/python benchmarks/index_families.py [--repeats 5] [--big]
"""
from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
from scipy.integrate import solve_ivp

TIMES = np.linspace(0, 100, 101)


def model_text(n: int) -> str:
    return f'''model metapop "dense SEIR over {n} districts"
time t [day]
unit person
index district = 1..{n}
const pop[d in district] [person] = 1000 * (1 + d / 10)
param beta [1/day] = 0.6 in [0.01, 3]
param sigma [1/day] = 0.25 in [0.01, 1]
param gamma [1/day] = 0.2 in [0.01, 1]
state S[d in district] [person] = pop[d] - ifelse(d == 1, 5 [person], 0 [person])
state E[d in district] [person] = 0
state I[d in district] [person] = ifelse(d == 1, 5, 0)
state R[d in district] [person] = 0
let force[d in district] [1/day] = beta * sum(k in district, exp(-abs(d - k) / 3) * I[k] / pop[k])
flow S[d] -> E[d] = force[d] * S[d]
flow E[d] -> I[d] = sigma * E[d]
flow I[d] -> R[d] = gamma * I[d]
observe cases[d in district] [person/day] = sigma * E[d] ~ poisson
'''


def scipy_run(n: int) -> float:
    d = np.arange(1, n + 1)
    pop = 1000 * (1 + d / 10)
    kernel = np.exp(-np.abs(d[:, None] - d[None, :]) / 3)

    def rhs(t, y):
        S, E, I, R = y.reshape(4, n)
        infection = 0.6 * (kernel @ (I / pop)) * S
        return np.concatenate([-infection, infection - 0.25 * E, 0.25 * E - 0.2 * I, 0.2 * I])

    y0 = np.concatenate([pop - np.where(d == 1, 5, 0), np.zeros(n), np.where(d == 1, 5.0, 0.0), np.zeros(n)])
    start = time.perf_counter()
    solve_ivp(rhs, (0, 100), y0, method="LSODA", t_eval=TIMES, rtol=1e-8, atol=1e-8)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--big", action="store_true", help="also N = 1000 (10^6 mixing terms)")
    args = parser.parse_args()

    from nimm_dsl.backends import compile_ir
    from nimm_dsl.compiler.check import check_source
    from nimm_dsl.compiler.lower import lower

    check_source(model_text(2))  # build the parser's tables outside the timings
    print("| N | states | lines | check (s) | lower (s) | compile (s) | simulate (ms) | scipy LSODA, numpy RHS (ms) | ratio |")
    print("|---|---|---|---|---|---|---|---|---|")
    for n in [1, 10, 100] + ([1000] if args.big else []):
        text = model_text(n)
        t0 = time.perf_counter()
        checked = check_source(text)
        t1 = time.perf_counter()
        assert checked.ok, checked.diagnostics
        ir = lower(checked)
        t2 = time.perf_counter()
        sim = compile_ir(ir, "casadi")
        t3 = time.perf_counter()
        ours, theirs = [], []
        for _ in range(args.repeats):  # interleaved, so drift in the machine's load hits both
            start = time.perf_counter()
            sim.simulate(TIMES, rtol=1e-8, atol=1e-8)
            ours.append(time.perf_counter() - start)
            theirs.append(scipy_run(n))
        a, b = statistics.median(ours) * 1e3, statistics.median(theirs) * 1e3
        print(f"| {n} | {4 * n} | {len(text.strip().splitlines())} | {t1 - t0:.3f} | {t2 - t1:.3f} | {t3 - t2:.3f} "
              f"| {a:.1f} | {b:.1f} | {a / b:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
