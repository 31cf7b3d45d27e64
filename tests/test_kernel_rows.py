"""Sums that become A.KernelRow in the whole expansion (compiler/families.py `_kernel_row`).

A family line's `sum(k in I, K(d, k) * V(k))` keeps, per element, only its weights K(d, k); the
entries V(k) are expanded, checked and lowered once for every element. What later phases see must
be what the terms written out give: the same IR, the same diagnostics, the same refusals.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import sympy as sp

import nimm_dsl
from nimm_dsl.compiler import families
from nimm_dsl.compiler.check import check_source
from nimm_dsl.compiler.ir import walk
from nimm_dsl.compiler.lower import lower
from nimm_dsl.errors import ModelError
from nimm_dsl.grammar import ast as A
from nimm_dsl.runtime.pointwise import NUMPY_OPS

TEMPLATE = """model kernels
time t [day]
unit person
index district = 1..{n}
const pop[d in district] [person] = 1000 * (1 + d / 10)
const C[d in district, k in district] [1] = exp(-abs(d - k) / 4)
const W[d in district, k in district] [1/person] = 0.001 / (1 + abs(d - k))
param beta [1/day] = 0.6 in [0.01, 3]
param gamma [1/day] = 0.2 in [0.01, 1]
state S[d in district] [person] = pop[d] - ifelse(d == 1, 5 [person], 0 [person])
state I[d in district] [person] = ifelse(d == 1, 5, 0)
neural g(x) [1] = mlp(hidden = [3], init = random)
let force[d in district] [1/day] = beta * sum(k in district, {kernel})
flow S[d] -> I[d] = force[d] * S[d]
flow I[d] -> = gamma * I[d]
observe cases[d in district] [person/day] = force[d] * S[d] ~ poisson
"""

KERNELS = [
    "exp(-abs(d - k) / 3) * I[k] / pop[k]",  # a folded kernel first
    "I[k] / pop[k] * exp(-abs(d - k) / 3)",  # the kernel last
    "C[d, k] * I[k] / pop[k]",  # an element of a const family
    "W[d, k] * I[k]",  # with a unit of its own
    "I[k] / pop[k] / (1 + abs(d - k))",  # divided by the kernel
    "exp(-abs(d - k) / 3) * C[d, k] * I[k] / pop[k] * 2",  # two weight factors around the entry
    "exp(-abs(d - k)) * (1 + g(I[k] / pop[k])) * I[k] / pop[k]",  # a neural term in the entry
    "exp(-abs(d - k)) * sum(j in district, exp(-abs(k - j)) * I[j] / pop[j])",  # a row inside an entry
]


def _without_rows(monkeypatch):
    monkeypatch.setattr(families, "KERNEL_ROW_MIN", 10**9)


def _rows(checked) -> list:
    found, stack = [], list(checked.program.statements)
    while stack:
        node = stack.pop()
        if isinstance(node, A.KernelRow):
            found.append(node)
            stack.extend(node.entries)
        elif isinstance(node, (list, tuple)):
            stack.extend(node)
        elif dataclasses.is_dataclass(node) and not isinstance(node, (A.Span, A.Ident)):
            stack.extend(getattr(node, f.name) for f in dataclasses.fields(node))
    return found


def _values(text: str) -> tuple[dict, list]:
    """Every derivative, let and observe evaluated at one point (states and params drawn once,
    a fixed stand-in for the neural term), with and without the back ends' matrix products;
    and the matrices of the linear forms found."""
    ir = lower(check_source(text))
    rng = np.random.default_rng(7)
    env = {p.symbol: p.default for p in ir.params} | {s.symbol: rng.uniform(1, 100) for s in ir.states}
    neural = lambda name, args: float(np.tanh(sum(args)))  # noqa: E731
    values: dict = {}
    for ops, linear in ((NUMPY_OPS, None), (dataclasses.replace(NUMPY_OPS, matvec=_dense_matvec), ir.linear_forms())):
        at, memo = dict(env), {}
        for x in ir.lets:  # in dependency order
            at[x.symbol] = float(walk(x.expr, at, ops, neural, memo, linear))
        for name, expr in [(s.name, ir.derivatives[s.name]) for s in ir.states] + [(o.name, o.expr) for o in ir.observes]:
            at[name] = float(walk(expr, at, ops, neural, memo, linear))
        for x in ir.lets:
            at[x.name] = at[x.symbol]
        for name in at:
            if isinstance(name, str):
                values.setdefault(name, []).append(at[name])
    matrices = [(g.shape, sorted((r, c, n) for r, c, n, syms in g.entries if not syms)) for g in ir.linear_forms().groups]
    return values, matrices


def _dense_matvec(group, vector, entries):
    m = np.zeros(group.shape)
    for k, (r, c, number, _) in enumerate(group.entries):
        m[r, c] = number if entries is None else entries[k]
    return list(m @ np.array(vector, dtype=float))


@pytest.mark.parametrize("n", [16, 21])  # from lowering's long-sum threshold
@pytest.mark.parametrize("kernel", KERNELS)
def test_a_kernel_row_has_the_values_of_its_terms_written_out(kernel, n, monkeypatch):
    text = TEMPLATE.format(n=n, kernel=kernel)
    rows = _rows(check_source(text))
    assert len(rows) >= n  # one per element of the line (and of an inner sum)
    assert len({id(r.entries) for r in rows if len(r.entries) == n}) <= 2  # shared, not one per element
    with_rows, with_matrices = _values(text)
    _without_rows(monkeypatch)
    assert not _rows(check_source(text))
    written_out, matrices = _values(text)
    for name, (term_by_term, product) in written_out.items():
        assert with_rows[name] == pytest.approx((term_by_term, term_by_term), rel=1e-12, abs=1e-300), name
        assert product == pytest.approx(term_by_term, rel=1e-12, abs=1e-300), name
    if not any(isinstance(x, A.Call) for r in rows for e in r.entries for x in _calls(e)):
        # the products the back ends compute: the same matrices as the terms written out give
        assert with_matrices == matrices


def _calls(e):
    stack = [e]
    while stack:
        node = stack.pop()
        yield node
        if dataclasses.is_dataclass(node) and not isinstance(node, (A.Span, A.Ident)):
            stack.extend(x for f in dataclasses.fields(node) for x in
                         (getattr(node, f.name) if isinstance(getattr(node, f.name), (list, tuple)) else [getattr(node, f.name)]))


def test_a_short_sum_and_a_sum_without_a_weight_are_written_out():
    short = TEMPLATE.format(n=15, kernel=KERNELS[0])  # normalised by sympy, as written
    assert not _rows(check_source(short))
    same_for_all = TEMPLATE.format(n=20, kernel="I[k] / pop[k]")  # nothing depends on d
    assert not _rows(check_source(same_for_all))
    param_kernel = TEMPLATE.format(n=20, kernel="exp(-abs(d - k) / (gamma * 1 [day])) * I[k]")
    assert not _rows(check_source(param_kernel))  # a weight with a param: linear_forms' second pass


def _whole(text: str) -> list:
    return [(d.code, d.span.line, d.span.column, d.message) for d in check_source(text, whole=True).diagnostics]


@pytest.mark.parametrize("kernel", [
    "exp(-abs(d - k) / 3) * I[k] / scale",  # an undefined name in the entries
    "exp(-abs(d - k) / 3) * I[k] / pop[k] / (d - k - 5)",  # a weight without a value at d - k = 5
    "W[d, k] * I[k] / pop[k]",  # the entries' unit does not fit the line (E405/E401 per element)
    "exp(-abs(d - k)) * (1 [day])^(k - 1) * I[k] / pop[k] / 1 [day]",  # entries of several units: E401
])
def test_a_fault_inside_a_kernel_row_is_reported_as_its_terms_written_out(kernel, monkeypatch):
    text = TEMPLATE.format(n=20, kernel=kernel)
    with_rows = _whole(text)
    assert any(d[0].startswith("E") for d in with_rows)
    _without_rows(monkeypatch)
    assert with_rows == _whole(text)


def test_a_weight_without_a_value_at_an_unnamed_member_is_refused_at_lowering():
    text = TEMPLATE.format(n=20, kernel="I[k] / pop[k] / (d - k - 5)")
    assert check_source(text).ok  # the reduced check does not hold d - k = 5
    with pytest.raises(ModelError) as error:
        nimm_dsl.load_source(text).ir
    assert [(d.code, d.span.line) for d in error.value.diagnostics] == [("E504", 13)]


def test_a_kernel_row_prints_as_its_terms_written_out(monkeypatch):
    text = TEMPLATE.format(n=20, kernel="exp(-abs(d - k) / 3) * I[k] / pop[k]")
    force = {x.name: x.expr for x in lower(check_source(text)).lets}
    printed = {name: (str(e), sp.latex(e)) for name, e in force.items()}
    assert printed["force[3]"][0].startswith("beta*(") and r"\beta \left(" in printed["force[3]"][1]
    _without_rows(monkeypatch)
    written_out = {x.name: (str(x.expr), sp.latex(x.expr)) for x in lower(check_source(text)).lets}
    assert printed == written_out


def test_an_integral_nested_in_a_kernel_row_is_refused_by_the_whole_check(monkeypatch):
    nested = "integral(sum(k in district, C[d, k] * integral(gamma * I[k], 7 [day])), 7 [day])"
    text = TEMPLATE.format(n=20, kernel="C[d, k] * I[k] / pop[k]").replace(
        "observe cases[d in district] [person/day] = force[d] * S[d]", f"observe cases[d in district] [person] = {nested}")
    with_rows = _whole(text)
    assert ("E204", 16) in [d[:2] for d in with_rows]  # the inner integral, as written out
    _without_rows(monkeypatch)
    assert with_rows == _whole(text)


@pytest.mark.parametrize("kernel", ["I[k] / pop[k] / (1 + abs(d - k))", "(d - k - 0.5) * I[k] / pop[k]"])
def test_fractional_and_negative_kernel_values_are_not_checked_once_per_term(kernel, monkeypatch):
    # a folded 1/3 or -1/2 is a small tree, not an A.Number: checking each of them again per
    # element made the names and units checks quadratic in N (6 s of a 14 s check at N = 300)
    from nimm_dsl.compiler import names, unitcheck
    counts = {"resolve": 0, "infer": 0}
    for module, cls, method in ((names, "_Checker", "resolve"), (unitcheck, "_UnitChecker", "infer")):
        original = getattr(getattr(module, cls), method)

        def counted(self, *args, _original=original, _method=method, **kwargs):
            counts[_method] += 1
            return _original(self, *args, **kwargs)
        monkeypatch.setattr(getattr(module, cls), method, counted)
    n = 40
    text = "".join(line for line in TEMPLATE.splitlines(keepends=True) if not line.startswith(("const C", "const W")))
    checked = check_source(text.format(n=n, kernel=kernel), whole=True)
    assert not [d for d in checked.diagnostics if d.is_error] and _rows(checked)
    # linear in n (the entries once, a few nodes per line); per weight it was 1900 and 5700 calls
    assert counts["resolve"] < 10 * n and counts["infer"] < 40 * n, counts
