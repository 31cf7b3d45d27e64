"""A simulation that stops on NaN or inf names the model line that caused it (runtime/culprit.py):
the let, flow, `der` line, initial value or dose, a family's element and its line, the time and
the operation, in both back ends, through `Model.simulate` and `nimm simulate`."""
from __future__ import annotations

import math
import re

import numpy as np
import pytest

import nimm_dsl
from nimm_dsl.cli import main
from nimm_dsl.errors import SimulationError
from nimm_dsl.runtime import culprit

BACKENDS = ["casadi", "torch"]
TIMES = np.linspace(0, 5, 6)

ISSUE = """model m
time t [day]
param beta [1/day] = 0.5 in [0,1]
state I [1] = 5
let f [1/day] = beta * I / (I - 5)
der(I) = -f * I
observe y [1] = I
"""
HEAD = "model p\ntime t [day]\nparam k [1/day] = 0.5 in [0, 1]\n"  # lines 1-3


def family(force: str) -> str:
    """20 districts; district 3 starts at 6 person, where `force`'s divisor vanishes (line 7)."""
    return ("model fam\ntime t [day]\nunit person\nindex district = 1..20\nparam beta [1/day] = 0.5 in [0,1]\n"
            "state I[d in district] [person] = ifelse(d == 3, 6 [person], 5 [person])\n"
            f"let force[d in district] [1/day] = {force}\n"
            "der(I[d in district]) = -force[d] * I[d] / 100\nobserve y [person] = sum(d in district, I[d])\n")


def failure(text: str, backend: str, **run) -> SimulationError:
    model = nimm_dsl.load_source(text, "m.nimm")
    with pytest.raises(SimulationError) as caught:
        model.simulate(run.pop("times", TIMES), backend=backend, **run)
    return caught.value


def cause(error: SimulationError) -> str:
    """The sentence the culprit adds, and the time it names."""
    sentence = str(error).split("; the cause: ", 1)[1]
    return sentence


def time_named(error: SimulationError) -> float:
    return float(re.search(r"t = ([-+0-9.e]+) day", cause(error)).group(1))


def located_at(error: SimulationError) -> tuple:
    (d,) = error.diagnostics
    return d.code, d.span.line


@pytest.mark.parametrize("backend", BACKENDS)
def test_the_issue_model_names_the_let_that_divides_by_zero(backend):
    e = failure(ISSUE, backend)
    assert "let `f` (line 5) is inf at t = 0 day: division by zero (in `1/(I - 5)`)" in str(e)
    assert located_at(e) == ("E801", 5)
    assert e.diagnostics[0].message == str(e) and e.diagnostics[0].file == "m.nimm"
    assert "divisor reaches 0" in e.diagnostics[0].hint


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_nan_later_in_the_run_is_named_at_its_time(backend):
    # x = 1 at 0 and dx/dt = -k (1 + sqrt(x - 1/2)): x reaches 1/2, where the sqrt's argument
    # turns negative, at t* = (2/k) (v - ln(1 + v)) with v = sqrt(1/2)
    e = failure(HEAD + "state x [1] = 1\nlet r [1/day] = k * sqrt(x - 0.5)\nder(x) = -r - k\n"
                "observe y [1] = x\n", backend)
    v = math.sqrt(0.5)
    t_star = (2 / 0.5) * (v - math.log1p(v))
    assert located_at(e) == ("E801", 5)
    assert cause(e).startswith("let `r` (line 5)") and "sqrt of -" in cause(e)
    assert abs(time_named(e) - t_star) < 2e-3


@pytest.mark.parametrize("backend,method", [("casadi", "rk"), ("torch", "rk4")])
def test_a_fixed_step_method_names_the_line_and_the_interval_it_failed_in(backend, method):
    # its last good state is the output time before the NaN (t = 0): the interval holds t*
    model = nimm_dsl.load_source(HEAD + "state x [1] = 1\nlet r [1/day] = k * sqrt(x - 0.5)\nder(x) = -r - k\n"
                                 "observe y [1] = x\n", "m.nimm")
    with pytest.raises(SimulationError) as caught:
        culprit.simulate(model.compile(backend, method=method), TIMES)
    assert located_at(caught.value) == ("E801", 5)
    assert cause(caught.value).startswith("let `r` (line 5) becomes NaN between t = 0 and 1 day, where the solver "
                                          "was heading: sqrt of -")


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_family_names_the_element_and_the_family_line(backend):
    e = failure(family("beta * sum(k in district, exp(-abs(d - k) / 3) * I[k]) / (I[d] - 6 [person])"), backend)
    assert located_at(e) == ("E801", 7)
    assert cause(e).startswith("let `force[3]` (line 7) is inf at t = 0 day: division by zero (in `1/(I[3] - 6)`)")


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_family_sum_of_quotients_names_the_first_element_and_the_term(backend):
    # every element's sum holds I[3] / (I[3] - 6): the first element in evaluation order is named,
    # with the term of district 3 inside its row
    e = failure(family("beta * sum(k in district, exp(-abs(d - k) / 3) * I[k] / (I[k] - 6 [person]))"), backend)
    assert located_at(e) == ("E801", 7)
    assert cause(e).startswith("let `force[1]` (line 7) is inf at t = 0 day: division by zero")
    assert "I[3] -" in cause(e)


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_scenario_failure_is_traced_with_the_scenario_in_force(backend):
    text = (HEAD + "param c [1] = 0 in [0, 2]\nstate x [1] = 1\nlet r [1/day] = k / (c - 1)\nder(x) = -r * x\n"
            "observe y [1] = x\nscenario s\n  set c = 1 from 2\nend\n")
    nimm_dsl.load_source(text).simulate(TIMES, backend=backend)  # the baseline runs
    e = failure(text, backend, scenario="s")
    assert located_at(e) == ("E801", 6)
    assert "let `r` (line 6) is inf at t = 2 day: division by zero (in `1/(c - 1)`)" in cause(e)


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_flow_rate_is_named_by_its_ends(backend):
    # A falls by at least k per day and reaches 1/2 before t = 1: the sqrt of a negative follows
    e = failure(HEAD + "unit cell\nstate A [cell] = 1 [cell]\nstate B [cell] = 0 [cell]\n"
                "flow A -> B = k * (1 [cell]) + k * A * sqrt(A / (1 [cell]) - 0.5)\nflow B -> = k * B\n"
                "observe y [cell] = B\n", backend)
    assert located_at(e) == ("E801", 7)
    assert cause(e).startswith("flow `A -> B` (line 7)") and "sqrt of -" in cause(e)
    assert 0.5 < time_named(e) < 1.0


@pytest.mark.parametrize("backend", BACKENDS)
def test_an_initial_value_and_a_dose_point_at_their_lines(backend):
    e = failure(HEAD + "state x [1] = log(k * (1 [day]) - 1)\nder(x) = -k * x\nobserve y [1] = x\n", backend)
    assert located_at(e) == ("E801", 4)
    assert cause(e) == "initial value `x` (line 4) is NaN at t = 0 day: log of -0.5 (in `log(k - 1)`)"
    e = failure(HEAD + "state x [1] = 1 in [0, inf]\nder(x) = -k * x\n"
                "dose D: x *= sqrt(k * (1 [day]) - 1) at 2\nobserve y [1] = x\n", backend)
    assert located_at(e) == ("E801", 6)
    assert cause(e) == "dose `D` (line 6) at t = 2 day: sqrt of -0.5 (in `sqrt(k - 1)`)"


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_blow_up_names_no_line(backend):
    # x = 1 / (1 - t/2): every quantity is finite until the solver stops; no line is to blame
    e = failure(HEAD + "state x [1] = 1\nder(x) = k * x^2\nobserve y [1] = x\n", backend)
    assert e.diagnostics == [] and "the cause" not in str(e)


def test_the_compiled_route_names_the_line_too():
    model = nimm_dsl.load_source(ISSUE, "m.nimm")
    with pytest.raises(SimulationError) as caught:
        culprit.simulate(model.compile("casadi", compiled=True), TIMES)
    assert located_at(caught.value) == ("E801", 5)
    assert "let `f` (line 5) is inf" in str(caught.value)


def test_a_failing_search_leaves_the_solvers_report(monkeypatch):
    def broken(*args, **kwargs):
        raise KeyError("a bug in the search")

    monkeypatch.setattr(culprit, "failure_culprit", broken)
    e = failure(ISSUE, "casadi")
    assert e.diagnostics == [] and str(e).startswith("integration failed at t = ")


@pytest.mark.parametrize("backend", BACKENDS)
def test_nimm_simulate_renders_the_line(tmp_path, capsys, backend):
    path = tmp_path / "m.nimm"
    path.write_text(ISSUE)
    assert main(["simulate", str(path), "--backend", backend]) == 1
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith(f"{path}:5:1: error[E801]: integration failed at t = ")
    assert err[0].endswith("the cause: let `f` (line 5) is inf at t = 0 day: division by zero (in `1/(I - 5)`)")
    assert err[1] == "   5 | let f [1/day] = beta * I / (I - 5)"
    assert err[2] == "     | " + "^" * len("let f [1/day] = beta * I / (I - 5)")
    assert err[3].startswith("   = hint: a divisor reaches 0")
