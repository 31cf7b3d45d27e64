"""Lowering folds unit scales so that every IR expression is in declared units."""
import math

import pytest
import sympy as sp

import nimm_dsl
from nimm_dsl.compiler.ir import Ops, walk


def evaluate(ir, expr, values):
    """Evaluate an IR expression with floats through the shared walker (no lambdify)."""
    import operator

    ops = Ops(
        const=float, add=operator.add, mul=operator.mul, pow=operator.pow,
        funcs={"exp": math.exp, "log": math.log, "sin": math.sin, "cos": math.cos, "tan": math.tan,
               "tanh": math.tanh, "abs": abs, "sqrt": math.sqrt, "min": min, "max": max},
        where=lambda c, a, b: a if c else b,
        compare={"<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge,
                 "==": operator.eq, "!=": operator.ne},
        and_=lambda a, b: a and b, or_=lambda a, b: a or b, not_=lambda a: not a,
    )
    env = {p.symbol: p.default for p in ir.params}
    env.update({s.flag: 0.0 for s in ir.sets})
    for u in ir.inputs:
        env[u.coef[0]], env[u.coef[1]] = (u.default or 0.0), 0.0
    env.update({sp.Symbol(k, real=True): v for k, v in values.items()})
    for let in ir.lets:
        env[let.symbol] = walk(let.expr, env, ops)
    return walk(expr, env, ops)


MIXED = """
model pk "clearance per hour, clock in days"
time t [day]
param CL [L/h] = 2 in [0.1, 10]
param V [L] = 10 in [1, 100]
state A [mg] = 100 in [0, inf]
let C [mg/L] = A / V
der(A) = -CL * C
observe C_ug [ug/L] = C ~ normal(sigma = 5)
dose D: A += 0.5 [g] at 12 [h] every 1 times 3
"""


def test_rates_and_observes_are_in_declared_units():
    ir = nimm_dsl.load_source(MIXED).ir
    # dA/dt in mg/day: 2 L/h * 24 h/day * 10 mg/L = 480 mg/day
    assert evaluate(ir, ir.derivatives["A"], {"A": 100.0, "t": 0.0}) == pytest.approx(-480.0, rel=1e-12)
    obs = ir.observes[0]
    assert evaluate(ir, obs.expr, {"A": 100.0}) == pytest.approx(10_000.0, rel=1e-12)  # ug/L
    assert float(obs.sigma) == 5.0  # bare sigma is in the observe's unit


def test_event_times_and_amounts_convert_to_model_units():
    ir = nimm_dsl.load_source(MIXED).ir
    (dose,) = ir.doses
    assert dose.times == pytest.approx([0.5, 1.5, 2.5])  # 12 h, then every 1 day
    assert float(dose.amount) == pytest.approx(500.0)  # 0.5 g into a state in mg


def test_set_lines_become_flagged_overrides_later_line_wins():
    src = """
model m
time t [day]
param k [1/day] = 1 in [0, 10]
state X [1] = 1
der(X) = -k * X
set k = 2 from 1 to 5
set k = 3 * k from 2 to 3
"""
    ir = nimm_dsl.load_source(src).ir
    f0, f1 = (s.flag for s in ir.sets)
    rate = lambda flags: -evaluate(ir, ir.derivatives["X"].xreplace(flags), {"X": 1.0, "t": 0.0})  # noqa: E731
    assert rate({f0: 0, f1: 0}) == pytest.approx(1.0)
    assert rate({f0: 1, f1: 0}) == pytest.approx(2.0)
    assert rate({f0: 1, f1: 1}) == pytest.approx(3.0)  # the later line wins; k means the baseline


def test_sqrt_of_area_and_latex():
    src = """
model m
time t [s]
const A [cm^2] = 4
state x [m] = 0
der(x) = sqrt(A) / 1 [s]
"""
    model = nimm_dsl.load_source(src)
    assert evaluate(model.ir, model.ir.derivatives["x"], {"x": 0.0, "t": 0.0}) == pytest.approx(0.02)
    latex = model.latex()
    assert r"\frac{\mathrm{d}x}{\mathrm{d}t} &= " in latex and latex.startswith(r"\begin{aligned}")


def test_latex_shows_baseline_equations_with_set_windows_and_doses_beside_them():
    latex = nimm_dsl.load_source(MIXED + "set CL = 2 * CL from 1 to 2\n").latex()
    assert "set#" not in latex and "cases" not in latex  # no flag switches in the equations
    assert r"\mathrm{CL} &\leftarrow 2 \mathrm{CL} && \text{baseline},\ 1 \le t < 2" in latex
    assert r"\text{dose D at } t \in \{0.5, 1.5, 2.5\}" in latex
