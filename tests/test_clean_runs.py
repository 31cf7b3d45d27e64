"""Clean means it runs (issue #9): what the checker accepts in dose amounts, set values, sigmas and
initial values lowers and runs in both back ends, or the checker refuses it with a code and a
hint. Values against closed forms; a hypothesis sweep over random clean variations of the
examples finds no internal error (a SimulationError with its message is a fine outcome)."""
from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import nimm_dsl
from nimm_dsl.errors import SimulationError

ROOT = Path(__file__).resolve().parents[1]
BACKENDS = ("casadi", "torch")
TIGHT = {"rtol": 1e-10, "atol": 1e-10}

RADIOTHERAPY = """model rt
time day [day]
param alpha [1/Gy] = 0.3 in [0.01, 1]
param r [1/day] = 0.2 in [0, 1]
const d [Gy] = 2
state V [mm^3] = 100 in [0, inf]
let sf [1] = exp(-alpha * d)
der(V) = r * V
observe vol [mm^3] = V ~ normal(sigma = 1)
dose rt: V *= sf at 1
"""


def rt_volume(t, alpha=0.3, r=0.2):
    """V = 100 e^(r t), times the surviving fraction exp(-2 alpha) from the dose at t = 1 on."""
    t = np.asarray(t, dtype=float)
    return 100 * np.exp(r * t) * np.where(t >= 1, np.exp(-2 * alpha), 1.0)


def errors(text):
    return [(d.code, d.span.line, d.span.column) for d in nimm_dsl.check(text) if d.is_error]


# ---------------------------------------------------------------- the reproductions
@pytest.mark.parametrize("backend", BACKENDS)
def test_a_let_in_a_dose_amount_is_evaluated_at_the_dose_time(backend):
    """It gave NaN after the dose in CasADi and `KeyError: no value for symbol sf` in Torch."""
    t = np.linspace(0, 3, 7)
    res = nimm_dsl.load_source(RADIOTHERAPY).compile(backend).simulate(t, **TIGHT)
    np.testing.assert_allclose(res["V"], rt_volume(t), rtol=1e-7)


@pytest.mark.parametrize("backend", ["casadi", pytest.param("torch", marks=pytest.mark.slow)])
def test_a_let_in_a_dose_amount_fits(backend):
    t = np.array([0, 0.5, 1, 1.5, 2, 3])
    data = pd.DataFrame({"day": t, "vol": rt_volume(t, alpha=0.5, r=0.1)})
    fit = nimm_dsl.load_source(RADIOTHERAPY).fit(data, backend=backend, progress=False)
    assert fit.params["alpha"] == pytest.approx(0.5, rel=1e-3)
    assert fit.params["r"] == pytest.approx(0.1, rel=1e-3)


@pytest.mark.parametrize("backend", BACKENDS)
def test_dose_amounts_see_the_current_state_earlier_doses_and_the_sets_in_force(backend):
    text = ("model m\ntime t [day]\nparam k [1/day] = 0.5 in [0, 1]\nparam f [1] = 0.5 in [0, 1]\n"
            "state A [mg] = 2 in [0, inf]\nder(A) = -k * A\nobserve y [mg] = A ~ normal(sigma = 1)\n"
            "dose grow: A += 0.5 * A at 1\n"      # A(1+) = 1.5 A(1-)
            "dose top: A += 1 [mg] + 0 * A at 1\n"  # then + 1, after `grow`
            "dose cut: A *= f at 2\n"             # f = 1 from t = 2 on (the set below)
            "set f = 2 * f from 2\n")
    t = np.array([0.0, 0.5, 1.0, 1.5, 2.0, 3.0])
    a1 = 1.5 * 2 * math.exp(-0.5) + 1
    expected = np.where(t < 1, 2 * np.exp(-0.5 * t), a1 * np.exp(-0.5 * (t - 1)))
    res = nimm_dsl.load_source(text).compile(backend).simulate(t, **TIGHT)
    np.testing.assert_allclose(res["A"], expected, rtol=1e-7)


def test_neural_terms_in_initial_values_and_dose_amounts_agree_between_back_ends():
    text = ("model m\ntime t [day]\nparam k [1/day] = 0.5 in [0, 1]\n"
            "neural g(z) [1] = mlp(hidden = [3], init = random)\n"
            "state A [mg] = 2 [mg] * (1 + g(1)) in [0, inf]\nder(A) = -k * A\n"
            "dose D: A *= 1 + g(A / (1 [mg])) at 1\nobserve y [mg] = A ~ normal(sigma = 1)\n")
    t = np.linspace(0, 2, 5)
    model = nimm_dsl.load_source(text)
    a, b = (model.compile(backend).simulate(t, **TIGHT)["A"] for backend in BACKENDS)
    np.testing.assert_allclose(a, b, rtol=1e-8)
    assert a[0] != pytest.approx(2.0)  # the random network moved the start


def test_a_state_in_a_sigma_is_refused_with_a_hint():
    """It checked clean and failed at fit time with `no value for symbol C`."""
    text = ("model m\ntime t [h]\nparam k [1/h] = 0.2 in [0, 1]\nparam a [mg/L] = 0.1 in [0.01, 1]\n"
            "param b [1] = 0.1 in [0.01, 1]\nstate C [mg/L] = 10 in [0, inf]\nder(C) = -k * C\n"
            "observe y [mg/L] = C ~ normal(sigma = a + b * C)\n")
    found = [d for d in nimm_dsl.check(text) if d.is_error]
    assert [(d.code, d.span.line, d.span.column) for d in found] == [("E306", 8, 47)]
    assert "params and consts" in found[0].message and "state `C`" in found[0].message
    assert "fixed over the data" in found[0].hint
    # LANGUAGE.md §11: a normal sigma may use the observe's own name (its prediction)
    assert [d for d in nimm_dsl.check(text.replace("a + b * C", "a + b * y")) if d.is_error] == []
    for what in ("t * 1 [mg/L/h]", "k * 1 [mg*h/L]"):  # time refused; a param is fine
        sigma = text.replace("a + b * C", what)
        assert [c for c, _, _ in errors(sigma)] == (["E306"] if what.startswith("t") else [])


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_let_in_a_set_value_means_its_baseline(backend):
    """`let kk = 2 * k` with `set k = kk` reached kk through itself (a KeyError in both back ends)."""
    text = ("model m\ntime t [day]\nparam k [1/day] = 0.25 in [0, 1]\nstate A [1] = 1\n"
            "let kk [1/day] = 2 * k\nder(A) = -kk * A\nset k = kk from 2\nobserve y [1] = A ~ normal(sigma = 1)\n")
    t = np.array([0.0, 1.0, 2.0, 3.0, 4.0])
    res = nimm_dsl.load_source(text).compile(backend).simulate(t, **TIGHT)
    # rate 0.5 until t = 2, then kk = 2 * (2 k) = 1
    expected = np.where(t < 2, np.exp(-0.5 * t), np.exp(-1.0) * np.exp(-1.0 * (t - 2)))
    np.testing.assert_allclose(res["A"], expected, rtol=1e-7)


def test_a_set_that_reaches_an_initial_value_may_use_only_what_it_may():
    text = ("model m\ntime t [day]\nparam k [1/day] = 0.25 in [0, 1]\nparam A0 [mg] = 1 in [0, 10]\n"
            "state A [mg] = A0\nlet c [mg] = 2 * A\nder(A) = -k * A\nobserve y [mg] = A ~ normal(sigma = 1)\n"
            "scenario s\n  set A0 = c\nend\n")
    found = [d for d in nimm_dsl.check(text) if d.is_error]
    assert [(d.code, d.span.line) for d in found] == [("E306", 10)]
    assert "initial value of state `A`" in found[0].message and "let `c`" in found[0].message
    assert errors(text.replace("set A0 = c", "set A0 = 2 * A0")) == []


# ---------------------------------------------------------------- random clean variations
EXAMPLES = {p.stem: p.read_text() for p in sorted((ROOT / "examples").glob("*.nimm"))}
DECLARED = re.compile(r"^(state|param|const|input|let)\s+(\w+)(\[\w+ in \w+\])?\s*\[(?![^\]]* in )([^\]]*)\]", re.M)
TIME = re.compile(r"^time\s+(\w+)\s*\[([^\]]*)\]", re.M)
DYNAMIC = sorted(name for name, text in EXAMPLES.items() if TIME.search(text))
HORIZON = 2.0  # time units: short runs


def declared(text):
    """[(kind, name, unit)] of the declarations that write their unit."""
    # a family's first element stands for it (the examples' indexes start at 1)
    return [(m.group(1), m.group(2) + ("[1]" if m.group(3) else ""), m.group(4)) for m in DECLARED.finditer(text)]


@st.composite
def clean_variations(draw):
    """An example with one line added or changed that uses some quantity X (as X / (1 [its unit]),
    dimensionless) in a dose amount, a set value, a sigma or an initial value."""
    name = draw(st.sampled_from(DYNAMIC))
    text = EXAMPLES[name]
    decls = declared(text)
    time_name, time_unit = TIME.search(text).groups()
    quantities = [(n, u) for _, n, u in decls] + [(time_name, time_unit)]
    x, unit = draw(st.sampled_from(quantities))
    scaled = f"tanh({x} / (1 [{unit}]))"
    at = draw(st.sampled_from([0, 0.5, 1]))
    states = [(n, u) for k, n, u in decls if k == "state"]
    kind = draw(st.sampled_from(["dose_mul", "dose_add", "set", "sigma", "init"]))
    if kind in ("dose_mul", "dose_add") and states:
        s, s_unit = draw(st.sampled_from(states))
        amount = (f"*= 1 + 0.1 * {scaled}" if kind == "dose_mul"
                  else f"+= 0.01 * abs({scaled}) * (1 [{s_unit}])")
        text += f"dose fuzz: {s} {amount} at {at}\n"
    elif kind == "set":
        targets = [n for k, n, _ in decls if k in ("param", "const")]
        assume(targets)
        p = draw(st.sampled_from(targets))
        text += f"set {p} = {p} * (1 + 0.1 * {scaled}) from {at}\n"
    elif kind == "sigma":
        assume("sigma = " in text)
        text = re.sub(r"sigma = ([^)]*)\)", lambda m: f"sigma = ({m.group(1)}) * (1 + 0.1 * {scaled}))", text,
                      count=1)
    else:
        assume(states)
        s, s_unit = draw(st.sampled_from(states))

        def scale_init(m):  # a bare number takes the state's unit only while it stays bare
            init = m.group(2) if re.search(r"[A-Za-z\[]", m.group(2)) else f"{m.group(2)} [{s_unit}]"
            return f"{m.group(1)}({init}) * (1 + 0.1 * {scaled}){m.group(3)}"

        text = re.sub(rf"^(state\s+{s}\s*\[[^\]]*\]\s*=\s*)([^\n#]*?)(\s+in\s+\[|\s*#|\s*\"|$)",
                      scale_init, text, count=1, flags=re.M)
    return name, kind, text


def runs_or_says_why(text):
    """Checker-clean text compiles and simulates in both back ends; a SimulationError is a fine
    outcome (its message names the time), anything else is an internal error."""
    model = nimm_dsl.load_source(text)
    for backend in BACKENDS:
        sim = model.compile(backend)
        try:
            res = sim.simulate(np.linspace(0, HORIZON, 5))
        except SimulationError as e:
            assert str(e)
            continue
        assert res.times is not None and all(len(res[n]) == 5 for n in res.names)


@pytest.mark.slow
@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@pytest.mark.slow
@given(clean_variations())
def test_random_clean_variations_of_the_examples_run_in_both_back_ends(case):
    name, kind, text = case
    clean = not any(d.is_error for d in nimm_dsl.check(text))
    if not clean:  # refused: with a code the table knows, at a line of the text
        assert all(d.span.line <= text.count("\n") + 1 for d in nimm_dsl.check(text))
        return
    runs_or_says_why(text)


@pytest.mark.parametrize("name", DYNAMIC)
def test_each_example_runs_with_a_dose_that_uses_its_first_let_or_state(name):
    text = EXAMPLES[name]
    decls = [(k, n, u) for k, n, u in declared(text)]
    state, state_unit = next((n, u) for k, n, u in decls if k == "state")
    x, unit = next(((n, u) for k, n, u in decls if k == "let"), (state, state_unit))
    variation = text + f"dose fuzz: {state} *= 1 + 0.1 * tanh({x} / (1 [{unit}])) at 1\n"
    assert errors(variation) == []
    runs_or_says_why(variation)
