"""The compiled route with matrix products (compiler/linear_forms.py): each product runs in the
driver's own C (backends/compiled.py, `ProductSplit`), not as CasADi's generic sparse kernel,
and the results are those of scipy on a hand-written numpy right-hand side and of the
interpreted path. Without a C toolchain the parity tests assert the fallback (same results)."""
from __future__ import annotations

import casadi as ca
import numpy as np
import pytest
from scipy.integrate import solve_ivp

import nimm_dsl
from nimm_dsl.errors import SimulationError
from nimm_dsl.backends import compiled
from nimm_dsl.backends.compiled import ProductSplit
from nimm_dsl.backends.casadi_backend import compile_casadi
from nimm_dsl.backends.protocol import segment_tail
from test_compiled import TOOLCHAIN, private_cache  # noqa: F401  (the fixture: a fresh cache per test)

N = 12
TIMES = np.linspace(0, 60, 13)
STIFF = 1e-4  # days: the relaxation time of Z, far below the output spacing


def model_text(n: int = N, stiff: bool = False, mixing: str = "C[d, k]") -> str:
    """Two products, one feeding the other: `force` (a numeric kernel, plus a term of its own
    row outside the product) and `felt` (a matrix of consts, or of `mixing`, times force).
    `stiff` adds Z, which relaxes to felt in STIFF days."""
    extra = (f"state Z[d in district] [1/day] = 0\n"
             f"der(Z[d]) = (felt[d] - Z[d]) / ({STIFF} [day])\n") if stiff else ""
    return f'''model products
time t [day]
unit person
index district = 1..{n}
const pop[d in district] [person] = 1000 * (1 + d / 10)
const C[d in district, k in district] [1] = 1 / (1 + abs(d - k))
const D[d in district, k in district] [1] = 2
param beta [1/day] = 0.6 in [0.01, 3]
param gamma [1/day] = 0.2 in [0.01, 1]
param mix [1] = 1 in [0.1, 10]
state S[d in district] [person] = pop[d] - ifelse(d == 1, 5 [person], 0 [person])
state I[d in district] [person] = ifelse(d == 1, 5, 0)
let force[d in district] [1/day] = beta * (sum(k in district, exp(-abs(d - k) / 3) * I[k] / pop[k]) + S[d] / pop[d] / 50)
let felt[d in district] [1/day] = sum(k in district, {mixing} * force[k]) / 4
flow S[d] -> I[d] = felt[d] * S[d]
flow I[d] -> = gamma * I[d]
{extra}'''


def numpy_rhs(n: int = N, stiff: bool = False, beta: float = 0.6, gamma: float = 0.2):
    d = np.arange(1, n + 1)
    pop = 1000 * (1 + d / 10)
    kernel = np.exp(-np.abs(d[:, None] - d[None, :]) / 3)
    C = 1 / (1 + np.abs(d[:, None] - d[None, :]))

    def rhs(t, y):
        S, I = y[:n], y[n:2 * n]
        felt = C @ (beta * (kernel @ (I / pop) + S / pop / 50)) / 4
        out = [-felt * S, felt * S - gamma * I]
        if stiff:
            out.append((felt - y[2 * n:]) / STIFF)
        return np.concatenate(out)

    y0 = np.concatenate([pop - np.where(d == 1, 5, 0), np.where(d == 1, 5.0, 0.0)] + [np.zeros(n)] * stiff)
    return rhs, y0


def reference(n: int = N, stiff: bool = False) -> np.ndarray:
    rhs, y0 = numpy_rhs(n, stiff)
    return solve_ivp(rhs, (0, TIMES[-1]), y0, t_eval=TIMES, method="Radau" if stiff else "DOP853",
                     rtol=1e-12, atol=1e-10).y


def states(res, n: int = N, families: str = "SI") -> np.ndarray:
    return np.array([res[f"{f}[{d}]"] for f in families for d in range(1, n + 1)])


def close(a, b, rel=1e-6) -> bool:
    scale = np.max(np.abs(b), axis=1, keepdims=True)
    return float(np.max(np.abs(a - b) / scale)) <= rel


@pytest.mark.parametrize("fill", [0.0, 1.1])  # every matrix stored dense; every one by compressed rows
def test_products_in_our_c_match_scipy_and_the_interpreted_path(monkeypatch, fill):
    monkeypatch.setattr(compiled, "DENSE_FILL", fill)
    ir = nimm_dsl.load_source(model_text()).ir
    groups = ir.linear_forms().groups
    assert len(groups) == 2 and sorted(g.numeric for g in groups) == [False, True]
    assert any(any(rest) for rest in (g.remainder for g in groups))  # S / pop / 50 stays outside
    fast = compile_casadi(ir, compiled=True)
    a = fast.simulate(TIMES, rtol=1e-11, atol=1e-10)
    assert (fast.compiled_route.solver() is not None) == TOOLCHAIN
    assert [p.dense for p in fast.compiled_route.rhs.products] == [fill == 0.0] * 2
    b = compile_casadi(ir, compiled=False).simulate(TIMES, rtol=1e-11, atol=1e-10)
    ref = reference()
    assert close(states(a), ref) and close(states(b), ref)
    assert close(states(a), states(b))
    for name in (f"force[{d}]" for d in range(1, N + 1)):  # the outputs (CasADi's product) agree too
        assert np.max(np.abs(a[name] - b[name])) <= 1e-6 * np.max(np.abs(b[name]))


def test_the_generated_right_hand_side_holds_no_casadi_product():
    """The products leave the CasADi functions: no call node in them, our loops in the source,
    and a size (what gcc's time grows with) linear in the districts, not quadratic."""
    n = 30
    sim = compile_casadi(nimm_dsl.load_source(model_text(n)).ir, compiled=False)
    rhs = compile_casadi(nimm_dsl.load_source(model_text(n)).ir, compiled=True).compiled_route.rhs
    # force's numeric kernel first (felt's vector is force), then felt's consts
    assert [(p.n_rows, p.n_cols, p.dense, p.values is None) for p in rhs.products] == [(n, n, True, False),
                                                                                       (n, n, True, True)]
    for f in compiled._functions(rhs):  # noqa: SLF001
        assert ca.OP_CALL not in [f.instruction_id(k) for k in range(f.n_instructions())], f.name()
    assert ca.OP_CALL in [sim.rhs.instruction_id(k) for k in range(sim.rhs.n_instructions())]
    source = compiled.c_source(rhs, sim._outputs)  # noqa: SLF001
    generated, source = source.model, source.driver
    assert source.count("nimm_dense_product(") == 3  # its definition and one call per product
    assert "static const double nimm_m" in source and "wk->entries + " in source
    assert "nimm_jac" not in generated and "int nimm_jac(" not in source  # no generated Jacobian
    # no null check per element (most of gcc's time): every pointer the driver passes is set
    assert "]? arg[" not in generated and "if (res[" not in generated and "=arg[1][" in generated
    # the consts' matrix C is gathered from a table, not n^2 generated assignments (the / 4
    # stays outside the product: the family's sum is one kernel row, which sympy does not
    # multiply out)
    assert rhs.gather is not None and set(rhs.gather[1]) == {1.0} and "nimm_entry_at" in source
    tables = compiled.table_entries(rhs)  # force's kernel; an index and a factor per entry of C
    assert tables == 3 * n * n
    operations = compiled.rhs_size(rhs) - -(-tables // compiled.TABLE_ENTRIES_PER_OPERATION)
    assert operations < 25 * n < n * n


def test_the_stiff_hand_over_works_without_a_generated_jacobian():
    """Z relaxes in 1e-4 days: an explicit pair would need ~10^5 steps per output, so rkck hands
    each segment to CVODES BDF, whose Jacobian is now CVODES's difference quotients."""
    ir = nimm_dsl.load_source(model_text(stiff=True)).ir
    fast = compile_casadi(ir, compiled=True)
    ref = reference(stiff=True)
    res = fast.simulate(TIMES, rtol=1e-10, atol=1e-10)
    assert close(states(res, families="SIZ"), ref)
    solver = fast.compiled_route.solver()
    if not TOOLCHAIN:
        assert solver is None
        return
    (segment,) = fast.protocol(TIMES).segments
    pw = np.concatenate((fast.param_vector(), segment_tail(segment), fast.weight_vector()))
    for method in ("rkck", "bdf"):  # 2000 steps per output at most: rkck alone could not
        x = solver.integrate(0.0, TIMES[1:], ref[:, 0], pw, 1e-10, 1e-10, 2000, method)
        assert x is not None and close(x.T, ref[:, 1:]), method
        assert (solver.handed_over is not None) == (method == "rkck")  # rkck did hand over


def benchmark():
    """benchmarks/index_families.py: the metapopulation SEIR and its numpy reference."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
    import index_families

    return index_families


def test_a_full_jacobian_without_products_is_left_to_difference_quotients(monkeypatch):
    """Mean-field mixing: every S[d] reads the prevalence of all districts, one scalar sum (no
    product), so the Jacobian is N x N all the same; above MAX_JACOBIAN_NNZ it is not generated
    and the results still match scipy (BDF included, on difference quotients)."""
    n = 20
    monkeypatch.setattr(compiled, "MAX_JACOBIAN_NNZ", 4 * n)  # the 20 x 20 block is above it
    bench = benchmark()
    ir = nimm_dsl.load_source(bench.model_text(n, "mean")).ir
    fast = compile_casadi(ir, compiled=True)
    rhs = fast.compiled_route.rhs
    assert not rhs.products and not compiled.generates_jacobian(rhs)
    assert "nimm_jac" not in compiled.c_source(rhs, fast._outputs).model  # noqa: SLF001
    _, ref = bench.scipy_run(n, "mean", 1e-12, 1e-12, "DOP853", result=True)
    res = fast.simulate(bench.TIMES, rtol=1e-10, atol=1e-10)
    assert close(states(res, n, "SEIR"), ref)
    solver = fast.compiled_route.solver()
    assert (solver is not None) == TOOLCHAIN
    if solver is not None:
        (segment,) = fast.protocol(bench.TIMES).segments
        pw = np.concatenate((fast.param_vector(), segment_tail(segment), fast.weight_vector()))
        x = solver.integrate(0.0, bench.TIMES[1:], ref[:, 0], pw, 1e-10, 1e-10, 20000, "bdf")
        assert x is not None and close(x.T, ref[:, 1:], rel=1e-5)
    monkeypatch.setattr(compiled, "MAX_JACOBIAN_NNZ", 10 ** 6)
    assert compiled.generates_jacobian(rhs)  # the same model below the limit: generated


def test_the_dense_100_district_model_compiles_within_the_size_limit():
    """What the adaptive route decides on: the dense model of benchmarks/index_families.py at
    N = 100 (26,402 scalar operations once expanded) is now small enough to compile, at -O2."""
    sim = compile_casadi(nimm_dsl.load_source(benchmark().model_text(100)).ir)
    rhs = sim.compiled_route.rhs
    assert [(p.n_rows, p.n_cols, p.dense, p.values is not None) for p in rhs.products] == [(100, 100, True, True)]
    assert compiled.optimisation(compiled.rhs_size(rhs, sim._outputs)) == compiled.OPTIMISED  # noqa: SLF001


def test_a_product_only_the_outputs_read_stays_out_of_the_right_hand_side():
    text = model_text() + ("let crowding[d in district] [1] = sum(k in district, exp(-abs(d - k) / 2) * I[k]) / (1000 [person])\n"
                           "observe crowd[d in district] [1] = crowding[d]\n")
    ir = nimm_dsl.load_source(text).ir
    assert len(ir.linear_forms().groups) == 3
    fast = compile_casadi(ir, compiled=True)
    assert len(fast.compiled_route.rhs.products) == 2  # force's and felt's
    a = fast.simulate(TIMES, rtol=1e-11, atol=1e-10)
    b = compile_casadi(ir, compiled=False).simulate(TIMES, rtol=1e-11, atol=1e-10)
    assert close(states(a), reference())
    d = np.arange(1, N + 1)
    expected = np.exp(-np.abs(d[:, None] - d[None, :]) / 2) @ reference()[N:] / 1000
    assert close(np.array([a[f"crowd[{k}]"] for k in d]), expected)
    assert close(np.array([b[f"crowd[{k}]"] for k in d]), expected)


def halved_from(cut: float) -> np.ndarray:
    """The reference with felt halved from `cut` on (felt is linear in beta)."""
    before, y0 = numpy_rhs()
    after, _ = numpy_rhs(beta=0.6 * 0.5)
    first = solve_ivp(before, (0, cut), y0, method="DOP853", rtol=1e-12, atol=1e-10, dense_output=True)
    second = solve_ivp(after, (cut, TIMES[-1]), first.y[:, -1], t_eval=TIMES[TIMES > cut], method="DOP853",
                       rtol=1e-12, atol=1e-10)
    return np.concatenate([first.sol(TIMES[TIMES <= cut]), second.y], axis=1)


def test_a_scenario_changing_a_param_of_a_products_row_reaches_the_compiled_route():
    text = model_text(mixing="mix * C[d, k]") + "scenario apart\n  set mix = 0.5 * mix from 2\nend\n"
    ir = nimm_dsl.load_source(text).ir
    fast = compile_casadi(ir, compiled=True)
    a = fast.simulate(TIMES, scenario="apart", rtol=1e-11, atol=1e-10)
    assert (fast.compiled_route.solver() is not None) == TOOLCHAIN and len(fast.compiled_route.rhs.products) == 2
    b = compile_casadi(ir, compiled=False).simulate(TIMES, scenario="apart", rtol=1e-11, atol=1e-10)
    ref = halved_from(2.0)  # early: the epidemic is over by day 10
    assert close(states(a), ref) and close(states(b), ref)
    assert not close(states(a), reference(), rel=1e-3)  # the scenario changed the course


def test_matrix_entries_of_several_symbols_are_generated_and_read_the_run_s_params():
    """`mix * C[d, k] * D[d, k] / 2`: no gather table (a product of symbols), so CasADi
    generates nimm_entries, evaluated at the start of each segment with that run's params."""
    ir = nimm_dsl.load_source(model_text(mixing="mix * C[d, k] * D[d, k] / 2")).ir
    fast = compile_casadi(ir, compiled=True)
    rhs = fast.compiled_route.rhs
    assert rhs.gather is None and rhs.entries.numel() == N * N
    assert "nimm_entry_at" not in compiled.c_source(rhs, fast._outputs).driver  # noqa: SLF001
    a = fast.simulate(TIMES, params={"mix": 0.5}, rtol=1e-11, atol=1e-10)
    assert (fast.compiled_route.solver() is not None) == TOOLCHAIN
    rhs_half, y0 = numpy_rhs(beta=0.6 * 0.5)
    ref = solve_ivp(rhs_half, (0, TIMES[-1]), y0, t_eval=TIMES, method="DOP853", rtol=1e-12, atol=1e-10).y
    assert close(states(a), ref)
    assert close(states(fast.simulate(TIMES, rtol=1e-11, atol=1e-10)), reference())  # mix back at 1


HYBRID = '''model hybrid
time t [day]
index patch = 1..10
param r [1/day] = 0.3 in [0, 1]
state N[p in patch] [1] = 0.05 * p
neural g(x) [1/day] = mlp(hidden = [4], init = random)
let crowd[p in patch] [1] = sum(k in patch, exp(-abs(p - k) / 2) * N[k]) / 3
der(N[p]) = r * N[p] * (1 - crowd[p]) + g(crowd[p]) * N[p]
observe y[p in patch] [1] = N[p]
observe grown[p in patch] [1] = integral(r * N[p] * (1 - crowd[p]), 2 [day])
'''


def test_a_neural_term_and_an_integral_beside_a_product_on_the_compiled_route():
    """The second walk meets the neural calls again (shared weights, elementwise) without
    changing what the simulator records of them; an integral's outputs read the product."""
    ir = nimm_dsl.load_source(HYBRID).ir
    assert len(ir.linear_forms().groups) == 1
    times = np.linspace(0, 10, 11)
    fast = compile_casadi(ir, compiled=True)
    names = list(fast.neural_call_names)
    a = fast.simulate(times, rtol=1e-11, atol=1e-11)
    assert (fast.compiled_route.solver() is not None) == TOOLCHAIN and len(fast.compiled_route.rhs.products) == 1
    assert fast.neural_call_names == names and len(names) == 10
    b = compile_casadi(ir, compiled=False).simulate(times, rtol=1e-11, atol=1e-11)
    for name in [f"{f}[{p}]" for f in ("N", "y", "grown") for p in range(1, 11)]:
        assert np.max(np.abs(a[name] - b[name])) <= 1e-6 * np.max(np.abs(b[name])), name


def test_a_nan_in_a_vector_reaches_only_the_rows_that_read_its_column_in_either_storage(monkeypatch):
    """A matrix whose first rows hold no entry in the last column (stored dense, those places
    are zeros): the last vector entry is NaN (sqrt of a negative state) and only the rows with
    an entry there, which no derivative reads, are NaN, as in CasADi's sparse product and in
    compressed rows; a stored zero times NaN must not turn the others NaN and fail the run."""
    from nimm_dsl.backends.casadi_backend import _casadi_matvec
    from nimm_dsl.compiler.linear_forms import LinearGroup

    n, read = 8, 4  # rows < read hold entries in columns < read only
    M = np.array([[1 / (1 + abs(r - c)) if r >= read or c < read else 0.0 for c in range(n)] for r in range(n)])
    group = LinearGroup(0, [None] * n, [(c,) for c in range(n)],
                        [(r, c, M[r, c], ()) for r in range(n) for c in range(n) if M[r, c]], [[] for _ in range(n)])
    t, x, pw = ca.SX.sym("t"), ca.SX.sym("x", n), ca.SX.sym("pw", 1)
    vector = [ca.sqrt(x[j]) for j in range(n)]

    def ode(rows):  # the rows that read the NaN column are read by no derivative
        return ca.vertcat(*[rows[i] / 10 if i < read else ca.SX(0) for i in range(n)])

    x0 = np.r_[np.linspace(1, 2, n - 1), -1.0]
    times = np.linspace(0, 1, 6)
    interpreted = ca.integrator("F", "cvodes", {"x": x, "p": pw, "ode": ode(_casadi_matvec(group, vector, None))},
                                0.0, times[1:], {"abstol": 1e-12, "reltol": 1e-12})
    expected = np.asarray(interpreted(x0=x0, p=0.0)["xf"]).T
    assert np.all(np.isfinite(expected))
    outputs = ca.Function("out", [t, x, ca.SX.sym("P", 1), ca.SX.sym("W", 0)], [x])
    for fill in (0.0, 1.1):  # dense, then compressed rows
        monkeypatch.setattr(compiled, "DENSE_FILL", fill)
        split = ProductSplit()
        rhs = split.rhs(t, x, pw, ode(split.matvec(group, vector, None)))
        (product,) = rhs.products
        assert product.dense == (fill == 0.0) and (product.present is not None) == product.dense
        solver = compiled.build(rhs, outputs)
        if solver is None:
            assert not TOOLCHAIN
            continue
        for method in ("rkck", "bdf"):
            got = solver.integrate(0.0, times[1:], x0, np.zeros(1), 1e-11, 1e-11, 10000, method)
            assert got is not None, (fill, method)
            assert np.max(np.abs(got - expected)) <= 1e-8, (fill, method)


def test_a_nan_inside_a_product_is_reported_as_on_the_interpreted_route(monkeypatch):
    """Q[3] reaches 0 at t = 2 and every row reads log(Q[3]) through the product: both storages
    give the diagnostic of the interpreted route, naming the model's states and the time."""
    text = model_text().replace("I[k] / pop[k])", "I[k] / pop[k] * log(Q[k]))") + (
        "state Q[d in district] [1] = ifelse(d == 3, 2, 10)\n"
        "der(Q[d]) = -1 [1/day]\n")
    ir = nimm_dsl.load_source(text).ir
    assert len(ir.linear_forms().groups) == 2
    times = np.linspace(0, 4, 9)
    with pytest.raises(SimulationError) as interpreted:
        compile_casadi(ir, compiled=False).simulate(times, rtol=1e-8, atol=1e-8)
    assert interpreted.value.kind == "nonfinite" and interpreted.value.time == pytest.approx(2.0, abs=0.01)
    assert interpreted.value.quantities == ["Q[3]"]  # the state that reaches the log's pole
    for fill in (0.0, 1.1):
        monkeypatch.setattr(compiled, "DENSE_FILL", fill)
        fast = compile_casadi(ir, compiled=True)
        with pytest.raises(SimulationError) as got:
            fast.simulate(times, rtol=1e-8, atol=1e-8)
        assert (fast.compiled_route.solver() is not None) == TOOLCHAIN
        assert str(got.value) == str(interpreted.value)
        assert (got.value.kind, got.value.time, got.value.quantities) == (
            interpreted.value.kind, interpreted.value.time, interpreted.value.quantities)


def test_a_model_whose_tables_are_too_large_for_gcc_stays_interpreted(monkeypatch):
    """The static tables count towards the size limit (a dense 1000 x 1000 table alone is
    2.5 s of gcc): with a table made as costly as an operation per entry, the model below, whose
    operations alone fit under the limit, goes over it with its tables, stays on the interpreted
    route (the fallback says why) and simulates as scipy does."""
    monkeypatch.setattr(compiled, "TABLE_ENTRIES_PER_OPERATION", 1)
    ir = nimm_dsl.load_source(model_text()).ir
    fast = compile_casadi(ir, compiled=True)  # compiles on its first simulation
    rhs = fast.compiled_route.rhs
    tables = compiled.table_entries(rhs)
    # force's kernel (N^2 numbers) and the consts' matrix C (an index and a factor per entry)
    assert tables == N * N + 2 * N * N
    operations = compiled.rhs_size(rhs, fast._outputs) - tables  # noqa: SLF001
    assert operations > 0
    monkeypatch.setattr(compiled, "MAX_RHS_SIZE", operations + tables // 2)
    with pytest.warns(compiled.CompiledFallback, match=f"{operations + tables} operations"):
        res = fast.simulate(TIMES, rtol=1e-11, atol=1e-10)
    assert fast.compiled_route.solver() is None
    assert close(states(res), reference())


def test_a_model_above_the_optimised_size_is_compiled_without_optimisation(monkeypatch):
    """gcc -O2 grows faster than the model (26 s for the mean-field model at N = 1000), -O0 about
    linearly (2.3 s): between MAX_OPTIMISED_SIZE and MAX_RHS_SIZE the model is compiled at -O0,
    and simulates as scipy does."""
    flags = []
    compile_with = compiled._compile  # noqa: SLF001

    def recording(tools, optimise, *args):
        flags.append(optimise)
        return compile_with(tools, optimise, *args)

    monkeypatch.setattr(compiled, "_compile", recording)
    ir = nimm_dsl.load_source(model_text()).ir
    fast = compile_casadi(ir, compiled=True)
    size = compiled.rhs_size(fast.compiled_route.rhs, fast._outputs)  # noqa: SLF001
    assert compiled.optimisation(size) == compiled.OPTIMISED
    monkeypatch.setattr(compiled, "MAX_OPTIMISED_SIZE", size - 1)
    res = fast.simulate(TIMES, rtol=1e-11, atol=1e-10)
    assert (fast.compiled_route.solver() is not None) == TOOLCHAIN
    assert flags == ([compiled.UNOPTIMISED] if TOOLCHAIN else [])
    assert close(states(res), reference())


def test_the_mean_field_model_at_1000_districts_is_within_the_size_limit():
    """benchmarks/index_families.py --mixing mean at N = 1000 (35,010 operations with its outputs):
    compiled at -O0 (gcc 2.3 s; -O2 would take 26 s), not left to the interpreted BDF (~20 s a run)."""
    sim = compile_casadi(nimm_dsl.load_source(benchmark().model_text(1000, "mean")).ir)
    rhs = sim.compiled_route.rhs
    assert not rhs.products and not compiled.generates_jacobian(rhs)
    size = compiled.rhs_size(rhs, sim._outputs)  # noqa: SLF001
    assert compiled.MAX_OPTIMISED_SIZE < size <= compiled.MAX_RHS_SIZE


def test_the_adaptive_route_compiles_at_once_where_the_jacobian_is_large(monkeypatch):
    """The interpreted BDF forms and factorises the Jacobian: on the mean-field model at N = 1000
    (2 x 10^6 nonzeros) 12 s to construct and 26 s a run against ~3 s of gcc once, so above
    COMPILE_AT_ONCE_NNZ the adaptive route compiles before the first run; below it the first
    run is interpreted (and no gcc waits for a model simulated once)."""
    n = 20
    bench = benchmark()
    ir = nimm_dsl.load_source(bench.model_text(n, "mean")).ir
    _, ref = bench.scipy_run(n, "mean", 1e-12, 1e-12, "DOP853", result=True)
    for limit, at_once in ((10 ** 6, False), (4 * n, True)):  # the Jacobian: 2 N^2 + ... nonzeros
        monkeypatch.setattr(compiled, "COMPILE_AT_ONCE_NNZ", limit)
        compiled.forget_loaded()
        sim = compile_casadi(ir)  # adaptive
        assert sim.compiled_route.rhs.jacobian_nnz > 2 * n * n
        res = sim.simulate(bench.TIMES, rtol=1e-10, atol=1e-10)
        assert close(states(res, n, "SEIR"), ref)
        assert (sim.compiled_route.interpreted_seconds > 0) == (not at_once or not TOOLCHAIN)
        assert (sim.compiled_route.solver() is not None) == (at_once and TOOLCHAIN)
