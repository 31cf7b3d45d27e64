"""The per-run checks of results.py (domain and trough warnings): they run after every simulation,
so they look at each state's extremes first and compute details only for a state that needs them;
these tests pin what they report."""
import math
from types import SimpleNamespace

import numpy as np
import pytest

from nimm_dsl.backends.results import domain_warnings, trough_warnings


def state(name, lo=0.0, hi=math.inf, unit="person"):
    return SimpleNamespace(name=name, lo=lo, hi=hi, unit=unit)


TIMES = np.linspace(0.0, 10.0, 11)


def test_clean_run_has_no_domain_warning_and_slack_follows_the_tolerances():
    X = np.vstack([np.linspace(5, 0, 11), np.full(11, 0.5)])
    X[0, -1] = -5e-7  # within 10 (atol + rtol * max|x|) = 10 (1e-8 + 1e-8 * 5) of the bound
    assert domain_warnings(TIMES, X, [state("S"), state("p", 0, 1, "1")], 1e-8, 1e-8, "t", "day") == []
    X[0, -1] = -1e-3
    assert domain_warnings(TIMES, X, [state("S"), state("p", 0, 1, "1")], 1e-8, 1e-8, "t", "day") == [
        "state S leaves its domain [0, inf]: -0.001 person is below its lower bound 0 at t = 10 day"]


@pytest.mark.parametrize("batch", [0, 2])
def test_domain_warning_names_the_first_time_and_value_in_any_batch_member(batch):
    X = np.zeros((3, 2, 11))
    X[:, 1, :] = 0.5
    X[batch, 1, 4:] = 1.25  # above the upper bound from t = 4 on, in one member only
    X[batch, 1, 6] = 1.5
    out = domain_warnings(TIMES, X, [state("S"), state("p", 0, 1, "1")], 1e-8, 1e-8, "t", "day")
    assert out == ["state p leaves its domain [0, 1]: 1.25 is above its upper bound 1 at t = 4 day"]


def test_a_state_starting_at_its_bound_is_not_a_trough():
    R = np.linspace(0.0, 100.0, 11)  # starts at 0 and rises: never "came down"

    def rhs(idx, columns):
        raise AssertionError("no derivative is needed for a state that never came down")
    assert trough_warnings(TIMES, R[None, :], [state("R")], 1e-8, "t", "day", rhs) == []


def test_a_state_that_comes_down_to_its_bound_and_would_regrow_is_reported_once():
    I = np.r_[np.linspace(1.0, 100.0, 6), np.zeros(5)]  # high, then at 0 from t = 6 on
    I[6:] = 1e-10
    calls = []

    def rhs(idx, columns):  # dI/dt = 30 I: grows from any value above 0
        calls.append(list(idx))
        return 30.0 * columns

    out = trough_warnings(TIMES, I[None, :], [state("I")], 1e-8, "t", "day", rhs)
    assert calls == [[6, 7, 8, 9, 10]] * 2
    assert len(out) == 1 and out[0].startswith(
        "state I falls to its lower bound 0 within the absolute tolerance (atol = 1e-08 person) at t = 6 day")
