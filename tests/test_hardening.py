"""Issue #16 (hardening): each defect found by the adversarial pass, reproduced with its original
input, and the behaviour that replaced it. Items 1, 4, 5, 14 and 15 are tested beside their code
(test_fresh_machine.py, test_llm_client.py, test_fit_failures.py, test_llm.py)."""
import numpy as np
import pytest

import nimm_dsl
from nimm_dsl.cli import main

DECAY = """model decay
time t [day]
param k [1/day] = 0.5 in [0, 2]
state x [1] = 1
der(x) = -k * x
observe y [1] = x ~ normal(sigma = 0.1)
"""


def errors(source: str) -> list[tuple[str, int]]:
    return [(d.code, d.span.line) for d in nimm_dsl.check(source) if d.is_error]


# ---------------------------------------------------------------- 10: dose counts, network sizes
@pytest.mark.parametrize("tail", ["every 1 times 1e308", "every 1 times 1e9", "every 0.00001 times 1e7"])
def test_dose_counts_beyond_the_limit_are_e503_at_check_time(tail):
    assert errors(DECAY + f"dose D: x += 1 at 0 {tail}\n") == [("E503", 7)]


def test_a_dose_count_at_the_limit_is_clean():
    assert errors(DECAY + "dose D: x += 1 at 0 every 1 times 100000\n") == []


# ---------------------------------------------------------------- 13: clean models that crashed later
def test_division_by_a_literal_zero_of_a_non_constant_is_e504():
    found = [(d.code, d.span.line, d.span.column, d.message)
             for d in nimm_dsl.check(DECAY.replace("-k * x", "-k * x / 0"))]
    assert found == [("E504", 5, 10, "division by zero")]


@pytest.mark.parametrize("hidden", ["[100000, 100000]", "[1e300]", "[" + ", ".join(["4"] * 17) + "]"])
def test_neural_sizes_beyond_the_limit_are_e503(hidden):
    model = DECAY.replace("der(x) = -k * x", f"neural f(a) [1/day] = mlp(hidden = {hidden})\nder(x) = -k * x + f(x)")
    assert set(errors(model)) == {("E503", 5)}


def _sets(n: int, scenarios: bool) -> str:
    """n set lines on k, the last from t = 1.99 with k = 2 (in one scenario, or one per scenario)."""
    if scenarios:
        return "".join(f"scenario s{i}\n  set k = {1 + i % 2} from {i / 100}\nend\n" for i in range(n))
    return "scenario s\n" + "".join(f"  set k = {1 + i % 2} from {i / 100}\n" for i in range(n)) + "end\n"


@pytest.mark.parametrize("scenarios", [pytest.param(False, marks=pytest.mark.slow, id="200 set lines"),
                                       pytest.param(True, id="200 scenarios")])
def test_two_hundred_set_lines_or_scenarios_lower_and_simulate(scenarios):
    model = nimm_dsl.load_source(DECAY + _sets(200, scenarios))  # sympy recursed past its limit
    last = "s199" if scenarios else "s"
    for backend in ("casadi", "torch"):
        x = model.simulate(np.array([0.0, 2.0, 2.5]), backend=backend, scenario=last).to_frame()["x"].to_numpy()
        assert x[2] / x[1] == pytest.approx(np.exp(-2.0 * 0.5), rel=1e-4)
