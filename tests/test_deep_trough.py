"""Small values (issue #9): an SIRS model whose infected count falls to ~1e-12 between waves.

CVODES used to stop with "integration failed at week = 104: the right-hand side gave NaN or inf":
the infected count strayed below 0 by its tolerance, grew negative once R > 1 and overflowed near
week 54, and the failure search (restarted pieces that passed) named the segment end. Now the
dynamics are evaluated inside the declared domains, a failure names the time CVODES reached, and
the references are scipy's LSODA and Radau at tight tolerances on a hand-written right-hand side.
"""
from __future__ import annotations

import numpy as np
import pytest
from scipy.integrate import solve_ivp

import nimm_dsl
from nimm_dsl.errors import SimulationError

N, BETA, GAMMA, OMEGA = 1e5, 1.5 * 7, 0.8 * 7, 7 / 365.25  # per week
WEEKS = np.arange(0, 105.0)


def sirs(domain: str = " in [0, inf]") -> nimm_dsl.Model:
    return nimm_dsl.load_source(f"""model sirs
time week [week]
unit person
const N [person] = 1e5
param beta [1/day] = 1.5 in [0.1, 5]
param gamma [1/day] = 0.8 in [0.1, 5]
param omega [1/year] = 1 in [0.1, 5]
state S [person] = N - 10 [person]{domain}
state I [person] = 10{domain}
state R [person] = 0{domain}
flow S -> I = beta * S * I / N
flow I -> R = gamma * I
flow R -> S = omega * R
observe cases [person] = I ~ normal(sigma = 10)
""", "sirs.nimm")


def rhs(_, y):
    S, I, R = y
    infection = BETA * S * I / N
    return [-infection + OMEGA * R, infection - GAMMA * I, GAMMA * I - OMEGA * R]


def scipy_reference(method: str) -> np.ndarray:
    """States (3, weeks) at rtol 1e-12, atol 1e-20: the trough (I ~ 1.6e-12) is resolved."""
    sol = solve_ivp(rhs, (0, 104), [N - 10, 10, 0], method=method, t_eval=WEEKS, rtol=1e-12, atol=1e-20)
    assert sol.success
    return sol.y


@pytest.fixture(scope="module")
def reference():
    y = scipy_reference("LSODA")
    assert 1e-13 < y[1].min() < 1e-11  # the trough really is that deep
    assert y[1, 60] > 800  # and a second wave follows it
    return y


@pytest.mark.slow
def test_the_lsoda_reference_agrees_with_radau(reference):
    np.testing.assert_allclose(scipy_reference("Radau"), reference, rtol=1e-6, atol=1e-15)


@pytest.mark.parametrize("backend", ["casadi", "torch"])
def test_default_tolerances_run_through_the_trough_and_say_it_is_not_resolved(backend, reference):
    res = sirs().compile(backend).simulate(WEEKS)
    # the first wave is right; the states stay in their domain (up to the tolerance)
    np.testing.assert_allclose(res["S"][:15], reference[0, :15], rtol=1e-6)
    assert min(res[name].min() for name in ("S", "I", "R")) > -100 * 1e-8  # atol = 1e-8
    # after the trough the run cannot follow a value below atol: it says so, naming the state
    trough = [w for w in res.warnings if "falls to its lower bound" in w]
    assert len(trough) == 1 and trough[0].startswith("state I") and "smaller atol" in trough[0]


def test_tight_tolerances_follow_the_trough_and_the_second_wave(reference):
    res = sirs().compile("casadi").simulate(WEEKS, rtol=1e-12, atol=1e-20)
    for i, name in enumerate(("S", "I", "R")):
        np.testing.assert_allclose(res[name], reference[i], rtol=1e-4, atol=1e-14, err_msg=name)
    assert not any("falls to its lower bound" in w for w in res.warnings)


@pytest.mark.slow
def test_torch_follows_the_second_wave_at_tight_tolerances(reference):
    res = sirs().compile("torch").simulate(WEEKS, rtol=1e-12, atol=1e-20)
    np.testing.assert_allclose(res["I"], reference[1], rtol=1e-4, atol=1e-14)


def test_back_ends_agree_on_the_trough_at_default_tolerances():
    a = sirs().compile("casadi").simulate(WEEKS)
    b = sirs().compile("torch").simulate(WEEKS)
    for name in ("S", "R"):
        np.testing.assert_allclose(a[name], b[name], rtol=1e-6)
    np.testing.assert_allclose(a["I"], b["I"], rtol=1e-5, atol=1e-6)


def test_without_domains_the_failure_names_the_real_time_and_cause():
    """The same model without `in [0, inf]`: the negative noise in I grows and overflows. The
    error must name a time inside the run (not its end, week 104) and the negative counts."""
    with pytest.raises(SimulationError) as err:
        sirs(domain="").compile("casadi").simulate(WEEKS)
    e = err.value
    assert e.time is not None and 40 < e.time < 70, str(e)
    assert f"integration failed at week = {e.time:g}"[:30] in str(e)
    assert "turned negative" in str(e) and "in [0, inf]" in str(e)
    assert e.state["I"] < 0
