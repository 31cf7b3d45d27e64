"""Index families (issue #14) and lowering time (issue #15, target 4), side by side in one run.

A metapopulation SEIR over N districts, written in 17-18 lines whatever N. Dense mixing: every
district meets every other, contacts decaying with the distance between district numbers (N^2
terms). Mean-field mixing (--mixing mean): each district mixes 80 % within itself and 20 % with
the prevalence of all districts together (one scalar let: N terms). For N = 1, 10, 100 (and
1000 with --big; dense mixing at N = 1000 holds 10^6 kernel values: one cold run of each step,
and no BDF run, whose dense 4000 x 4000 Jacobian would take minutes): check (parse + the reduced family expansion + the checker), expand (the whole expansion
and its symbol table, names and units, which check leaves to their first use), lower (the sympy
IR), CasADi compile (the matrix products found in the IR included) and their sum, text to
simulator (issue #14's "compiles in <= 0.5 s"), of the median of three runs, each from cold;
then one simulation (101 outputs, rtol = atol = 1e-8, the compiled simulator reused after a
first call that builds its integrator, timed apart; the default simulator's first call, from an
empty cache of compiled objects, too) with the default BDF method and with
method="adams", and on the compiled route (backends/compiled.py, its default method: GSL's
rkck handing over to CVODES BDF when stiff; the products in our own C), next to scipy's LSODA
on a hand-vectorised numpy right-hand side (a matrix-vector product) at the same tolerances,
medians of --repeats runs. "gcc (s)": building the compiled route from an empty cache (code
generation and gcc), reported apart: issue #15 leaves it out of #14's compile target.

    .venv/bin/python benchmarks/index_families.py [--repeats 5] [--big] [--mixing dense|mean] [--sizes 1000]
    .venv/bin/python benchmarks/index_families.py --fit 100     (a fit of one param, each method)
    .venv/bin/python benchmarks/index_families.py --accuracy 100
        (the compiled route's methods and LSODA over a sweep of tolerances, each run's error
        against DOP853 at 1e-13: time at equal accuracy)
    .venv/bin/python benchmarks/index_families.py --year 100
        (outputs at days 0 and 365 only: the compiled driver's stiffness test on a long segment)
    .venv/bin/python benchmarks/index_families.py --gcc mean:100,mean:1000,dense:100 [--jacobian]
        (what gcc takes against the compiled route's size: operations, the outputs' operations,
        static table numbers, code generation, then gcc's seconds and peak memory at -O0 and at
        -O2 whatever the size, and one segment's integration with each object; each model in a
        child process, built past the size limit; --jacobian generates the Jacobian whatever its
        nonzeros)
    .venv/bin/python benchmarks/index_families.py --tables
        (gcc -O2 on a static table of 10^4, 10^5 and 10^6 doubles alone, as the compiled route
        writes a product's matrix: seconds and peak memory)
    .venv/bin/python benchmarks/index_families.py --interpreted-bdf 1000 --mixing mean
        (why the interpreted BDF is slow on a full Jacobian: CasADi's CVODES as the back end
        builds it, then with GMRES and no preconditioner; construction, two runs, solver counters)
"""
from __future__ import annotations

import argparse
import gc
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np
from scipy.integrate import solve_ivp

TIMES = np.linspace(0, 100, 101)
os.environ["XDG_CACHE_HOME"] = tempfile.mkdtemp()  # the compiled route's build from an empty cache


FORCE = {
    "dense": "let force[d in district] [1/day] = beta * sum(k in district, exp(-abs(d - k) / 3) * I[k] / pop[k])",
    "mean": "let mean_prevalence [1] = sum(k in district, I[k]) / sum(k in district, pop[k])\n"
            "let force[d in district] [1/day] = beta * (0.8 * I[d] / pop[d] + 0.2 * mean_prevalence)",
}


def model_text(n: int, mixing: str = "dense") -> str:
    return f'''model metapop "{mixing} SEIR over {n} districts"
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
{FORCE[mixing]}
flow S[d] -> E[d] = force[d] * S[d]
flow E[d] -> I[d] = sigma * E[d]
flow I[d] -> R[d] = gamma * I[d]
observe cases[d in district] [person/day] = sigma * E[d] ~ poisson
'''


def scipy_run(n: int, mixing: str = "dense", rtol: float = 1e-8, atol: float = 1e-8, method: str = "LSODA",
              result: bool = False, times=TIMES):
    """Seconds of one LSODA run (with `result`: also its states at `times`)."""
    d = np.arange(1, n + 1)
    pop = 1000 * (1 + d / 10)
    kernel = np.exp(-np.abs(d[:, None] - d[None, :]) / 3)

    def prevalence(I):
        if mixing == "dense":
            return kernel @ (I / pop)
        return 0.8 * I / pop + 0.2 * I.sum() / pop.sum()

    def rhs(t, y):
        S, E, I, R = y.reshape(4, n)
        infection = 0.6 * prevalence(I) * S
        return np.concatenate([-infection, infection - 0.25 * E, 0.25 * E - 0.2 * I, 0.2 * I])

    y0 = np.concatenate([pop - np.where(d == 1, 5, 0), np.zeros(n), np.where(d == 1, 5.0, 0.0), np.zeros(n)])
    start = time.perf_counter()
    sol = solve_ivp(rhs, (times[0], times[-1]), y0, method=method, t_eval=times, rtol=rtol, atol=atol)
    seconds = time.perf_counter() - start
    return (seconds, sol.y) if result else seconds


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--big", action="store_true", help="also N = 1000 (dense: one cold run, no BDF)")
    parser.add_argument("--mixing", choices=sorted(FORCE), default="dense")
    parser.add_argument("--sizes", default=None, help="the N to run, comma-separated (default 1,10,100)")
    parser.add_argument("--fit", type=int, metavar="N", default=None,
                        help="instead: time a fit of beta to N districts' counts, Adams and BDF")
    parser.add_argument("--accuracy", type=int, metavar="N", default=None,
                        help="instead: time at equal accuracy, compiled methods and LSODA")
    parser.add_argument("--year", type=int, metavar="N", default=None,
                        help="instead: one year with outputs at its ends only, compiled and LSODA")
    parser.add_argument("--gcc", metavar="MIXING:N,...", default=None,
                        help="instead: gcc time and memory against the compiled route's size")
    parser.add_argument("--jacobian", action="store_true", help="with --gcc: generate the Jacobian always")
    parser.add_argument("--tables", action="store_true", help="instead: gcc on static tables alone")
    parser.add_argument("--interpreted-bdf", type=int, metavar="N", default=None,
                        help="instead: the interpreted BDF's costs, direct and Krylov linear solves")
    parser.add_argument("--gcc-one", metavar="MIXING:N", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.gcc_one:
        mixing, n = args.gcc_one.split(":")
        gcc_row(int(n), mixing, args.jacobian)
        return
    if args.tables:
        table_timing()
        return
    if args.interpreted_bdf:
        interpreted_bdf(args.interpreted_bdf, args.mixing)
        return
    if args.gcc:
        print("| model | N | Jacobian | operations | of which tables | of which outputs | flag chosen "
              "| code generation (s) | gcc -O0 (s) | its peak memory (MB) | gcc -O2 (s) | its peak memory (MB) "
              "| integrate, -O0 (ms) | integrate, -O2 (ms) |")
        print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|", flush=True)
        for item in args.gcc.split(","):  # a child each: its gcc's peak memory is its own
            subprocess.run([sys.executable, __file__, "--gcc-one", item] + ["--jacobian"] * args.jacobian, check=True)
        return
    if args.year:
        one_year(args.year, args.mixing, args.repeats)
        return
    if args.fit:
        fit_timing(args.fit, args.mixing)
        return
    if args.accuracy:
        accuracy(args.accuracy, args.mixing, args.repeats)
        return

    from nimm_dsl.backends import compile_ir, compiled
    from nimm_dsl.compiler.check import check_source

    check_source(model_text(2))  # build the parser's tables outside the timings
    print(f"{args.mixing} mixing")
    print("| N | states | lines | check (s) | expand (s) | lower (s) | compile (s) | text to simulator (s) "
          "| first simulate, Adams (s) | first simulate, default (s) | simulate, BDF (ms) "
          "| simulate, Adams (ms) | simulate, compiled (ms) | scipy LSODA, numpy RHS (ms) | ratio BDF | ratio Adams "
          "| ratio compiled | gcc (s) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    sizes = [int(x) for x in args.sizes.split(",")] if args.sizes else [1, 10, 100] + ([1000] if args.big else [])
    for n in sizes:
        text = model_text(n, args.mixing)
        runs = ir = sim = sim_adams = fast = None  # the previous N's models: no timing walks them
        gc.collect()
        # dense mixing at N = 1000: 10^6 kernel values, one cold run of each step; BDF's dense
        # 4000 x 4000 Jacobian is not tried (LSODA's own is one too: it picks Adams here)
        huge = n >= 1000 and args.mixing == "dense"
        runs = [text_to_simulator(text) for _ in range(1 if huge else 3)]  # each from cold: the median
        (t0, t1, t_expand, t2, t3), ir, sim = sorted(runs, key=lambda run: run[0][-1] - run[0][0])[len(runs) // 2]
        sim_adams = compile_ir(ir, "casadi", method="adams")
        start = time.perf_counter()
        sim_adams.simulate(TIMES, rtol=1e-8, atol=1e-8)
        first = time.perf_counter() - start
        first_default = math.nan
        if not huge:
            fresh_cache(compiled)
            start = time.perf_counter()
            sim.simulate(TIMES, rtol=1e-8, atol=1e-8)  # the default simulator (BDF, adaptive route)
            first_default = time.perf_counter() - start
        fresh_cache(compiled)
        fast = compile_ir(ir, "casadi", compiled=True)
        start = time.perf_counter()
        built = fast.compiled_route.solver() is not None
        gcc = time.perf_counter() - start
        bdf, adm, com, theirs = [], [], [], []
        for _ in range(min(args.repeats, 2) if huge else args.repeats):  # interleaved: load drift hits all
            for simulator, times in ((sim, bdf), (sim_adams, adm), (fast, com)):
                if huge and (simulator is sim or (simulator is fast and not built)):
                    continue  # BDF's dense Jacobian (the compiled route falls back to it)
                start = time.perf_counter()
                simulator.simulate(TIMES, rtol=1e-8, atol=1e-8)
                times.append(time.perf_counter() - start)
            theirs.append(scipy_run(n, args.mixing))
        a, c, f, b = (statistics.median(x) * 1e3 if x else math.nan for x in (bdf, adm, com, theirs))
        size = compiled.rhs_size(fast.compiled_route.rhs, fast._outputs)  # noqa: SLF001
        gcc_text = f"{gcc:.2f} ({compiled.optimisation(size)})" if built else f"not built (size {size})"
        print(f"| {n} | {4 * n} | {len(text.strip().splitlines())} | {t1 - t0:.3f} | {t_expand - t1:.3f} | {t2 - t_expand:.3f} "
              f"| {t3 - t2:.3f} | {t3 - t0:.3f} "
              f"| {first:.2f} | {first_default:.2f} | {a:.1f} | {c:.1f} | {f:.1f} | {b:.1f} | {a / b:.2f}x | {c / b:.2f}x | {f / b:.2f}x "
              f"| {gcc_text} |", flush=True)


def fresh_cache(compiled) -> None:
    """An empty cache of compiled objects, as for a new user (the next build runs gcc)."""
    os.environ["XDG_CACHE_HOME"] = tempfile.mkdtemp()
    compiled.forget_loaded()


def text_to_simulator(text: str) -> tuple:
    """(times after each step, the IR, the CasADi simulator), every step from cold: a new
    check, sympy's cache emptied (sympy.core.cache.clear_cache, its public API)."""
    from sympy.core.cache import clear_cache

    from nimm_dsl.backends import compile_ir
    from nimm_dsl.compiler.check import check_source
    from nimm_dsl.compiler.lower import lower

    clear_cache()
    t0 = time.perf_counter()
    checked = check_source(text)
    t1 = time.perf_counter()
    assert checked.ok, checked.diagnostics
    checked.program  # the whole expansion, built on first use
    t_expand = time.perf_counter()
    ir = lower(checked)
    t2 = time.perf_counter()
    sim = compile_ir(ir, "casadi")
    t3 = time.perf_counter()
    return (t0, t1, t_expand, t2, t3), ir, sim


def fit_timing(n: int, mixing: str) -> None:
    """One estimated param (beta; sigma and gamma made consts) fitted to rounded expected counts
    of every district every 5 days, data binding and standard errors included, with each method."""
    import pandas as pd

    import nimm_dsl

    text = model_text(n, mixing)
    for name in ("sigma", "gamma"):
        line = next(x for x in text.splitlines() if x.startswith(f"param {name} "))
        text = text.replace(line, line.replace("param", "const").split(" in ")[0])
    model = nimm_dsl.load_source(text)
    times = np.arange(0.0, 101.0, 5.0)
    res = model.simulate(times, params={"beta": 0.5})
    data = pd.DataFrame({"t": times, **{f"cases[{d}]": np.round(res[f"cases[{d}]"]) for d in range(1, n + 1)}})
    print(f"{mixing} mixing, N = {n}: a fit of beta (truth 0.5)")
    print("| method | fit (s) | beta | stderr |")
    print("|---|---|---|---|")
    for method in ("adams", "cvodes"):
        sim = model.compile("casadi", method=method)
        start = time.perf_counter()
        fit = model.fit(data, progress=False, simulator=sim)
        seconds = time.perf_counter() - start
        label = "Adams" if method == "adams" else "BDF"
        print(f"| {label} | {seconds:.1f} | {fit.params['beta']:.5f} | {fit.stderr['beta']:.2g} |", flush=True)


TOLERANCES = [1e-6, 1e-7, 1e-8, 1e-9, 1e-10]
ERROR_LEVELS = [1e-4, 1e-5, 1e-6, 1e-7]


def accuracy(n: int, mixing: str, repeats: int) -> None:
    """Each compiled method and LSODA at each tolerance (median of `repeats` interleaved runs)
    and its error (the largest over states, relative to each state's range) against DOP853 at
    1e-13; then, per error level, each solver's fastest run that reaches it."""
    import nimm_dsl
    from nimm_dsl.backends import compile_ir, compiled

    _, ref = scipy_run(n, mixing, 1e-13, 1e-13, "DOP853", result=True)
    scale = np.max(np.abs(ref), axis=1, keepdims=True)
    ir = nimm_dsl.load_source(model_text(n, mixing)).ir
    fast = compile_ir(ir, "casadi", compiled=True)
    assert fast.compiled_route.solver() is not None, "no compiled route"
    names = [f"{f}[{d}]" for f in "SEIR" for d in range(1, n + 1)]
    runs = {}  # solver -> [(seconds, error)]

    def ours(method, tol):
        compiled.DEFAULT_METHOD = method
        start = time.perf_counter()
        res = fast.simulate(TIMES, rtol=tol, atol=tol)
        return time.perf_counter() - start, np.array([res[k] for k in names])

    default = compiled.DEFAULT_METHOD
    print(f"{mixing} mixing, N = {n}: time (ms) and error at each tolerance")
    print("| rtol = atol | " + " | ".join(["compiled rkck", "compiled rk8pd", "compiled adams", "compiled bdf",
                                           "scipy LSODA"]) + " |")
    print("|---|---|---|---|---|---|")
    try:
        for tol in TOLERANCES:
            solvers = {"compiled rkck": lambda: ours("rkck", tol), "compiled rk8pd": lambda: ours("rk8pd", tol),
                       "compiled adams": lambda: ours("adams", tol),
                       "compiled bdf": lambda: ours("bdf", tol),
                       "scipy LSODA": lambda: scipy_run(n, mixing, tol, tol, result=True)}
            times, errors = {k: [] for k in solvers}, {}
            for _ in range(repeats):  # interleaved, so drift in the machine's load hits all
                for label, run in solvers.items():
                    seconds, y = run()
                    times[label].append(seconds)
                    errors[label] = float(np.max(np.abs(y - ref) / scale))
            cells = []
            for label in solvers:
                runs.setdefault(label, []).append((statistics.median(times[label]), errors[label]))
                cells.append(f"{statistics.median(times[label]) * 1e3:.1f} ({errors[label]:.1e})")
            print(f"| {tol:.0e} | " + " | ".join(cells) + " |", flush=True)
    finally:
        compiled.DEFAULT_METHOD = default
    print("\nat equal accuracy: the fastest run reaching each error level (ms)")
    print("| error <= | " + " | ".join(runs) + " | ratio compiled rkck / LSODA |")
    print("|---|" + "---|" * (len(runs) + 1))
    for level in ERROR_LEVELS:
        best = {k: min((s for s, e in v if e <= level), default=None) for k, v in runs.items()}
        ratio = (f"{best['compiled rkck'] / best['scipy LSODA']:.2f}x"
                 if best["compiled rkck"] and best["scipy LSODA"] else "")
        print(f"| {level:.0e} | " + " | ".join("-" if s is None else f"{s * 1e3:.1f}" for s in best.values())
              + f" | {ratio} |")


def gcc_row(n: int, mixing: str, jacobian: bool) -> None:
    """One row of --gcc: the model's compiled route built from an empty cache at -O0 and at -O2
    whatever its size, then its integration of one segment (101 outputs, rtol = atol = 1e-8) with
    each object, medians of 7 interleaved runs."""
    import resource

    import nimm_dsl
    from nimm_dsl.backends import compile_ir, compiled
    from nimm_dsl.backends.protocol import segment_tail

    compiled.MAX_RHS_SIZE = 10 ** 9
    if jacobian:
        compiled.MAX_JACOBIAN_NNZ = 10 ** 9
    sim = compile_ir(nimm_dsl.load_source(model_text(n, mixing)).ir, "casadi", compiled=True)
    rhs = sim.compiled_route.rhs
    size, tables = compiled.rhs_size(rhs, sim._outputs), compiled.table_entries(rhs)  # noqa: SLF001
    chosen = compiled.optimisation(size)
    start = time.perf_counter()
    compiled.c_source(rhs, sim._outputs)  # noqa: SLF001  (the code generation alone)
    generate = time.perf_counter() - start
    solvers, cells = {}, []
    for flag in (compiled.UNOPTIMISED, compiled.OPTIMISED):  # -O0 first: the peak memory grows
        compiled.MAX_OPTIMISED_SIZE = 10 ** 9 if flag == compiled.OPTIMISED else -1
        start = time.perf_counter()
        solvers[flag] = compiled.build(rhs, sim._outputs)  # noqa: SLF001
        assert solvers[flag] is not None, "not built"
        cells += [f"{time.perf_counter() - start - generate:.2f}",
                  f"{resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024:.0f}"]
    res = sim.simulate(TIMES[:2], rtol=1e-8, atol=1e-8)
    x0 = np.array([res[s.name][0] for s in sim.ir.states])
    (segment,) = sim.protocol(TIMES).segments
    pw = np.concatenate((sim.param_vector(), segment_tail(segment), sim.weight_vector()))
    runs = {flag: [] for flag in solvers}
    for _ in range(7):
        for flag, solver in solvers.items():
            start = time.perf_counter()
            assert solver.integrate(0.0, TIMES[1:], x0, pw, 1e-8, 1e-8, 100000) is not None
            runs[flag].append(time.perf_counter() - start)
    print(f"| {mixing} | {n} | {'yes' if compiled.generates_jacobian(rhs) else 'no'} | {size} "
          f"| {-(-tables // compiled.TABLE_ENTRIES_PER_OPERATION)} ({tables} numbers) "
          f"| {sim._outputs.n_instructions()} | {chosen} | {generate:.2f} | "  # noqa: SLF001
          + " | ".join(cells) + " | "
          + " | ".join(f"{statistics.median(runs[flag]) * 1e3:.1f}" for flag in solvers) + " |", flush=True)


def table_timing() -> None:
    """gcc -O2 on one static table of n doubles (hexadecimal literals, as compiled._c_array writes
    them) and a function reading it; the peak memory of that gcc alone (a child process each)."""
    from nimm_dsl.backends import compiled

    print("| numbers | gcc -O2 (s) | gcc peak memory (MB) |")
    print("|---|---|---|")
    rng = np.random.default_rng(1)
    for n in (10 ** 4, 10 ** 5, 10 ** 6):
        with tempfile.TemporaryDirectory() as work:
            src = os.path.join(work, "table.c")
            with open(src, "w") as f:
                f.write(compiled._c_array("double", "m", map(compiled._c_double, rng.random(n))))  # noqa: SLF001
                f.write("double get(int i) { return m[i]; }\n")
            command = [sys.executable, "-c", "import resource, subprocess, sys, time; t = time.perf_counter(); "
                       "subprocess.run(sys.argv[1:], check=True); "
                       "print(time.perf_counter() - t, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)",
                       "cc", "-O2", "-shared", "-fPIC", "-o", os.path.join(work, "t.so"), src]
            seconds, kb = subprocess.run(command, check=True, capture_output=True, text=True).stdout.split()
        print(f"| {n} | {float(seconds):.2f} | {int(kb) / 1024:.0f} |", flush=True)


def interpreted_bdf(n: int, mixing: str) -> None:
    """The interpreted BDF (CasADi's CVODES with the model's ODE as the back end builds it, its
    default direct linear solver) against GMRES without a preconditioner (Newton-Krylov on
    Jacobian-vector products: no Jacobian is formed or factorised), one segment of 101 outputs at
    rtol = atol = 1e-8: construction, two runs, CVODES's counters and CasADi's timers."""
    import casadi as ca

    import nimm_dsl
    from nimm_dsl.backends import compile_ir
    from nimm_dsl.backends.protocol import segment_tail

    sim = compile_ir(nimm_dsl.load_source(model_text(n, mixing)).ir, "casadi", compiled=False)
    t, x, P, W, ode = sim._ode  # noqa: SLF001
    print(f"{mixing} mixing, N = {n}: Jacobian nonzeros {ca.jacobian_sparsity(ode, x).nnz()}, "
          f"right-hand side {sim.rhs.n_instructions()} instructions")
    (segment,) = sim.protocol(TIMES).segments
    p = np.concatenate((sim.param_vector(), segment_tail(segment), sim.weight_vector()))
    res = sim.simulate(TIMES[:2], rtol=1e-8, atol=1e-8)
    x0 = np.array([res[s.name][0] for s in sim.ir.states])
    print("| linear solves | construct (s) | first run (s) | second run (s) | steps | linear set-ups "
          "| Newton iterations | Jacobian evaluations (s) | right-hand side (s) | largest difference |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    reference = None
    for label, options in (("direct (default)", {}),
                           ("GMRES, no preconditioner", {"newton_scheme": "gmres", "use_preconditioner": False})):
        start = time.perf_counter()
        F = ca.integrator("F", "cvodes", {"x": x, "p": ca.vertcat(P, W), "t": t, "ode": ode}, 0.0,
                          TIMES[1:].tolist(), dict(abstol=1e-8, reltol=1e-8, show_eval_warnings=False, **options))
        built = time.perf_counter()
        xf = np.asarray(F(x0=x0, p=p)["xf"])
        first = time.perf_counter()
        F(x0=x0, p=p)
        second = time.perf_counter()
        reference = xf if reference is None else reference
        st = F.stats()
        print(f"| {label} | {built - start:.1f} | {first - built:.2f} | {second - first:.2f} | {st['nsteps']} "
              f"| {st['nlinsetups']} | {st['nniters']} | {st.get('t_wall_jacF', 0.0):.2f} "
              f"| {st.get('t_wall_daeF', 0.0):.3f} | {float(np.max(np.abs(xf - reference))):.2g} |", flush=True)


def one_year(n: int, mixing: str, repeats: int) -> None:
    """Days 0 and 365 only: thousands of explicit steps between two outputs, the case where the
    compiled driver's step budget used to hand a non-stiff segment over to BDF (its "bdf" method
    beside it stands for that) and now tests for stiffness first (compiled_driver.c)."""
    import nimm_dsl
    from nimm_dsl.backends import compile_ir, compiled

    fast = compile_ir(nimm_dsl.load_source(model_text(n, mixing)).ir, "casadi", compiled=True)
    assert fast.compiled_route.solver() is not None, "no compiled route"
    times = np.array([0.0, 365.0])
    default, found = compiled.DEFAULT_METHOD, {"compiled rkck": [], "compiled bdf": [], "scipy LSODA": []}
    try:
        for _ in range(repeats):  # interleaved
            for label, method in (("compiled rkck", "rkck"), ("compiled bdf", "bdf")):
                compiled.DEFAULT_METHOD = method
                start = time.perf_counter()
                fast.simulate(times, rtol=1e-8, atol=1e-8)
                found[label].append(time.perf_counter() - start)
            found["scipy LSODA"].append(scipy_run(n, mixing, times=times))
    finally:
        compiled.DEFAULT_METHOD = default
    print(f"{mixing} mixing, N = {n}, outputs at days 0 and 365 (ms)")
    print("| " + " | ".join(found) + " |")
    print("|---|---|---|")
    print("| " + " | ".join(f"{statistics.median(v) * 1e3:.1f}" for v in found.values()) + " |")


if __name__ == "__main__":
    main()
