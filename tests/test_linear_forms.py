"""Long sums that share their terms run as one matrix-vector product (compiler/linear_forms.py):
the matrix found is the one the text means, and every back end path gives the values of a
hand-written vectorised reference (scipy), with constant matrices, matrices of consts, terms
outside the product, the compiled route, fits and scenarios."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy.integrate import solve_ivp

import nimm_dsl
from nimm_dsl.compiler.ir import Ops, walk
from nimm_dsl.compiler.linear_forms import MIN_TERMS

N = 10


def model_text(mixing: str, extra: str = "", n: int = N) -> str:
    """An SIR over n districts; `mixing` is the force of infection of district d."""
    return f'''model mix
time t [day]
unit person
index district = 1..{n}
const pop[d in district] [person] = 1000 * (1 + d / 10)
const C[d in district, k in district] [1] = exp(-abs(d - k) / 3)
param beta [1/day] = 0.6 in [0.01, 3]
param gamma [1/day] = 0.2 in [0.01, 1]
state S[d in district] [person] = pop[d] - ifelse(d == 1, 5 [person], 0 [person])
state I[d in district] [person] = ifelse(d == 1, 5, 0)
let force[d in district] [1/day] = {mixing}
flow S[d] -> I[d] = force[d] * S[d]
flow I[d] -> = gamma * I[d]
observe cases[d in district] [person/day] = force[d] * S[d]
{extra}'''


KERNEL_SUM = "beta * sum(k in district, exp(-abs(d - k) / 3) * I[k] / pop[k])"  # numbers in the matrix
CONST_SUM = "beta * sum(k in district, C[d, k] * I[k] / pop[k])"  # consts in the matrix
# S[d] / pop[d] / 50 belongs to row d only: it stays outside the product
REMAINDER_SUM = "beta * (sum(k in district, C[d, k] * I[k] / pop[k]) + S[d] / pop[d] / 50)"
TIMES = np.linspace(0, 60, 13)


def reference(beta=0.6, gamma=0.2, n=N, own=0.0, times=TIMES, cut=None, length=3.0):
    """scipy on the model written by hand; `own` weighs the row-only term S/pop; `cut` = (time,
    factor): beta is multiplied by factor from that time on; `length`: the kernel's scale."""
    d = np.arange(1, n + 1)
    pop = 1000 * (1 + d / 10)
    C = np.exp(-np.abs(d[:, None] - d[None, :]) / length)

    def rhs(t, y):
        S, I = y.reshape(2, n)
        b = beta * (cut[1] if cut is not None and t >= cut[0] else 1.0)
        infection = b * (C @ (I / pop) + own * S / pop) * S
        return np.concatenate([-infection, infection - gamma * I])

    y0 = np.concatenate([pop - np.where(d == 1, 5, 0), np.where(d == 1, 5.0, 0.0)])
    edges = [times[0], times[-1]] if cut is None else [times[0], cut[0], times[-1]]
    out, y = [], y0
    for a, b in zip(edges[:-1], edges[1:]):
        inside = times[(times >= a) & ((times < b) if b != times[-1] else (times <= b))]
        sol = solve_ivp(rhs, (a, b), y, method="LSODA", t_eval=np.unique(np.r_[inside, b]),
                        rtol=1e-11, atol=1e-10)
        out.append(sol.y[:, np.isin(sol.t, inside)])
        y = sol.y[:, -1]
    return np.concatenate(out, axis=1).reshape(2, n, -1)


def states(res, n=N):
    return np.array([[res[f"{f}[{d}]"] for d in range(1, n + 1)] for f in "SI"])


def test_a_dense_sum_is_one_group_whose_matrix_is_the_kernel_the_text_writes():
    model = nimm_dsl.load_source(model_text(KERNEL_SUM))
    forms = model.ir.linear_forms()
    assert len(forms.groups) == 1
    group = forms.groups[0]
    assert group.shape == (N, N) and group.numeric
    # row r is force[r+1]'s sum; column j its term in I[k] / pop[k]: the entry is exp(-|d - k| / 3)
    column_district = [int(str(key[0]).strip("I[]")) for key in group.keys]
    row_district = {}
    for let in model.ir.lets:  # force[d] = beta * (its sum)
        (row,) = [forms.row_of[a][1] for a in let.expr.args if a in forms.row_of]
        row_district[row] = int(let.name.strip("force[]"))
    matrix = np.zeros((N, N))
    for r, j, number, _ in group.entries:
        matrix[row_district[r] - 1, column_district[j] - 1] = number
    d = np.arange(1, N + 1)
    np.testing.assert_allclose(matrix, np.exp(-np.abs(d[:, None] - d[None, :]) / 3), rtol=1e-15)
    assert all(not rest for rest in group.remainder)


def test_short_sums_and_sums_in_one_row_only_stay_scalar():
    short = model_text(KERNEL_SUM, n=MIN_TERMS - 1)
    assert nimm_dsl.load_source(short).ir.linear_forms().groups == []
    # one district's own long sum: nothing to share
    one_row = model_text("beta * I[d] / pop[d]", "observe total [person] = sum(k in district, I[k])\n")
    assert nimm_dsl.load_source(one_row).ir.linear_forms().groups == []


@pytest.mark.parametrize("mixing, own", [(KERNEL_SUM, 0.0), (CONST_SUM, 0.0), (REMAINDER_SUM, 1 / 50)])
def test_casadi_matches_the_vectorised_reference(mixing, own):
    model = nimm_dsl.load_source(model_text(mixing))
    group = model.ir.linear_forms().groups[0]
    assert group.numeric == (mixing == KERNEL_SUM)  # consts stay symbols: the matrix is an input
    assert any(group.remainder) == (own != 0)
    res = model.simulate(TIMES, rtol=1e-11, atol=1e-10)
    np.testing.assert_allclose(states(res), reference(own=own), rtol=1e-7, atol=1e-7)


@pytest.mark.parametrize("mixing", [KERNEL_SUM, CONST_SUM])
def test_torch_matches_the_vectorised_reference(mixing):
    model = nimm_dsl.load_source(model_text(mixing))
    res = model.simulate(TIMES, backend="torch", rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(states(res), reference(), rtol=1e-7, atol=1e-7)


def test_the_walker_gives_the_same_values_with_and_without_the_product():
    import casadi as ca

    from nimm_dsl.backends.casadi_backend import CASADI_OPS

    ir = nimm_dsl.load_source(model_text(REMAINDER_SUM)).ir
    rng = np.random.default_rng(1)
    env = {s: float(v) for s, v in zip([s.symbol for s in ir.states], rng.uniform(1, 100, len(ir.states)))}
    env.update({p.symbol: p.default for p in ir.params})
    plain = Ops(**{**CASADI_OPS.__dict__, "matvec": None})
    lets = [x.expr for x in ir.lets]
    with_product = [float(ca.evalf(v)) for v in _walk_all(lets, env, CASADI_OPS, ir.linear_forms())]
    term_by_term = [float(ca.evalf(v)) for v in _walk_all(lets, env, plain, ir.linear_forms())]
    np.testing.assert_allclose(with_product, term_by_term, rtol=1e-14)


def _walk_all(exprs, env, ops, linear):
    import casadi as ca

    memo = {}
    env = {k: ca.SX(v) for k, v in env.items()}
    return [walk(e, env, ops, memo=memo, linear=linear) for e in exprs]


def test_the_compiled_route_runs_the_product_in_c():
    from nimm_dsl.backends import compile_ir

    ir = nimm_dsl.load_source(model_text(CONST_SUM)).ir
    compiled = compile_ir(ir, "casadi", compiled=True)
    res = compiled.simulate(TIMES, rtol=1e-11, atol=1e-10)
    assert compiled.compiled_route.solver() is not None or _no_toolchain()
    np.testing.assert_allclose(states(res), reference(), rtol=1e-7, atol=1e-7)


def _no_toolchain() -> bool:
    from nimm_dsl.backends import compiled

    return compiled.toolchain(None) is None


def test_a_scenario_changes_a_param_outside_the_product_as_the_reference_says():
    text = model_text(CONST_SUM, "scenario distancing\n  set beta = 0.5 * beta from 20\nend\n")
    res = nimm_dsl.load_source(text).simulate(TIMES, scenario="distancing", rtol=1e-11, atol=1e-10)
    np.testing.assert_allclose(states(res), reference(cut=(20.0, 0.5)), rtol=1e-7, atol=1e-7)


@pytest.mark.parametrize("mixing", [KERNEL_SUM, CONST_SUM])
def test_a_fit_through_the_product_recovers_the_params(tmp_path, mixing):
    model = nimm_dsl.load_source(model_text(mixing))
    times = np.arange(0.0, 61.0, 3.0)
    truth = {"beta": 0.45, "gamma": 0.25}
    res = model.simulate(times, params=truth, rtol=1e-11, atol=1e-10)
    # the exact expected counts as data: the least-squares optimum is the truth
    data = tmp_path / "counts.csv"
    pd.DataFrame({"t": times, **{f"cases[{d}]": res[f"cases[{d}]"] for d in range(1, N + 1)}}).to_csv(data, index=False)
    fit = model.fit(str(data))
    assert fit.params["beta"] == pytest.approx(0.45, rel=1e-4)
    assert fit.params["gamma"] == pytest.approx(0.25, rel=1e-4)


def test_the_product_replaces_the_n_squared_scalar_operations():
    from nimm_dsl.backends import compile_ir
    from nimm_dsl.compiler.linear_forms import LinearForms

    n = 60
    with_product = nimm_dsl.load_source(model_text(KERNEL_SUM, n=n)).ir
    term_by_term = nimm_dsl.load_source(model_text(KERNEL_SUM, n=n)).ir
    term_by_term.__dict__["_linear_forms"] = LinearForms()  # what the back ends did before
    small = compile_ir(with_product, "casadi", compiled=False).rhs.n_instructions()
    large = compile_ir(term_by_term, "casadi", compiled=False).rhs.n_instructions()
    # term by term: a multiplication and an addition per (d, k); with it: a few per district
    assert large > 2 * n * n and small < n * n / 4


def test_torch_differentiates_through_a_matrix_of_consts():
    """What a Torch fit needs: gradients of the right-hand side through the product, w.r.t. the
    states, the params and the consts in the matrix, equal to finite differences."""
    import torch

    from nimm_dsl.backends.torch_backend import _record

    ir = nimm_dsl.load_source(model_text(CONST_SUM, n=MIN_TERMS)).ir
    assert ir.linear_forms().groups and not ir.linear_forms().groups[0].numeric
    inputs = [s.symbol for s in ir.states] + [p.symbol for p in ir.params]
    tape, out, _ = _record(ir, inputs, [ir.derivatives[s.name] for s in ir.states], torch.float64, "cpu")

    def rhs(x):
        regs = tape.run(list(x.unbind()), {}, {})
        return torch.stack([regs[r] for r in out])

    rng = np.random.default_rng(2)
    x = torch.tensor(rng.uniform(0.5, 2.0, len(inputs)), dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(rhs, (x,), eps=1e-6, atol=1e-7, rtol=1e-6)


def test_the_compiled_route_leaves_the_product_and_its_jacobian_block_out_of_the_generated_code():
    """One call in the right-hand side would be an N x N block of the Jacobian, each entry
    compiled (a dense 100-district model spent ~30 s in gcc that way): the compiled route
    computes the product in its own loop and generates no Jacobian for it, so what gcc
    compiles grows with N (tests/test_compiled_products.py has the rest)."""
    from nimm_dsl.backends import compile_ir
    from nimm_dsl.backends.compiled import rhs_size

    n = 30
    sim = compile_ir(nimm_dsl.load_source(model_text(KERNEL_SUM, n=n)).ir, "casadi")
    assert sim.rhs.n_instructions() < n * n and rhs_size(sim.compiled_route.rhs) < n * n


def test_torch_records_the_product_as_one_instruction_per_group():
    import torch

    from nimm_dsl.backends.torch_backend import _record
    from nimm_dsl.compiler.linear_forms import LinearForms

    n = 30

    def tape_length(with_product: bool) -> int:
        ir = nimm_dsl.load_source(model_text(KERNEL_SUM, n=n)).ir
        if not with_product:
            ir.__dict__["_linear_forms"] = LinearForms()
        inputs = [s.symbol for s in ir.states] + [p.symbol for p in ir.params]
        tape, _, _ = _record(ir, inputs, [ir.derivatives[s.name] for s in ir.states], torch.float64, "cpu")
        return len(tape.instrs)

    # term by term: a multiplication and an addition per (d, k); with it: a few per district
    assert tape_length(False) > 2 * n * n and tape_length(True) < n * n / 2


# an estimated length scale: the matrix entries are expressions of a param
PARAM_KERNEL_SUM = "beta * sum(k in district, exp(-abs(d - k) / L) * I[k] / pop[k])"
LENGTH = "param L [1] = 3 in [0.5, 10]\n"


def test_a_kernel_of_a_param_is_a_matrix_of_expressions_and_its_shared_factors_stay_in_the_vector():
    forms = nimm_dsl.load_source(model_text(PARAM_KERNEL_SUM, LENGTH)).ir.linear_forms()
    assert len(forms.groups) == 1
    group = forms.groups[0]
    assert group.shape == (N, N) and not group.numeric and len(group.entries) == N * N
    # 1 / pop[k] is the same in every row of column k: it belongs to the vector, not the matrix
    assert all(len(key) == 2 for key in group.keys)
    assert {str(f) for key in group.keys for f in key if "pop" in str(f)} == {f"1/pop[{k}]" for k in range(1, N + 1)}
    # the entries: exp(-|d - k| / L), one distinct expression per distance
    assert len({syms for _, _, _, syms in group.entries}) == N
    assert all(len(syms) == 1 and "L" in str(syms[0]) for _, _, _, syms in group.entries
               if not (syms == () or str(syms[0]) == "1"))


@pytest.mark.parametrize("backend", ["casadi", "torch", "compiled"])
def test_a_kernel_of_a_param_matches_the_reference_in_every_back_end(backend):
    from nimm_dsl.backends import compile_ir

    model = nimm_dsl.load_source(model_text(PARAM_KERNEL_SUM, LENGTH))
    tol = dict(rtol=1e-10, atol=1e-10)
    if backend == "compiled":
        sim = compile_ir(model.ir, "casadi", compiled=True)
        res = sim.simulate(TIMES, params={"L": 2.0}, **tol)
        assert sim.compiled_route.solver() is not None or _no_toolchain()
    else:
        res = model.simulate(TIMES, params={"L": 2.0}, backend=backend, **tol)
    np.testing.assert_allclose(states(res), reference(length=2.0), rtol=1e-6, atol=1e-6)


def test_a_fit_recovers_the_kernel_length_through_the_product(tmp_path):
    model = nimm_dsl.load_source(model_text(PARAM_KERNEL_SUM, LENGTH))
    times = np.arange(0.0, 61.0, 3.0)
    truth = {"beta": 0.45, "gamma": 0.25, "L": 1.7}
    res = model.simulate(times, params=truth, rtol=1e-11, atol=1e-10)
    data = tmp_path / "counts.csv"
    pd.DataFrame({"t": times, **{f"cases[{d}]": res[f"cases[{d}]"] for d in range(1, N + 1)}}).to_csv(data, index=False)
    fit = model.fit(str(data))
    for name, value in truth.items():
        assert fit.params[name] == pytest.approx(value, rel=1e-4)
