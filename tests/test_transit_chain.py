"""Shifted subscripts (`T[s+1]`, `u[d-1]`) and inline sets (`s in 1..4`, `d in [3, 4]`) on index
families (docs/language.md, "Index families"): the transit-compartment example against its closed
form in both back ends, a fit that recovers the transit rate, neighbour coupling on a line of
districts against a hand-written numpy right-hand side, and every index error at its place."""
from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pytest
from scipy.integrate import solve_ivp

import nimm_dsl
from nimm_dsl.compiler.check import check_source

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "transit_chain.nimm"
TIMES = np.linspace(0.0, 90.0, 31)  # minutes: the chain empties within about an hour
# the example's values, its rates per hour converted to its clock's minutes
KTR, KA, CL, V, DOSE, STAGES = 56.8 / 60, 0.38 / 60, 17.2 / 60, 45.1, 20.0, 21


@pytest.fixture(scope="module")
def chain():
    return nimm_dsl.load(str(EXAMPLE))


def transit_amount(stage: int, t, dose=DOSE, ktr=KTR):
    """Amount in chain compartment `stage` after a bolus `dose` into the first at time 0."""
    return dose * (ktr * t) ** (stage - 1) / math.factorial(stage - 1) * np.exp(-ktr * t)


def test_the_chain_is_one_flow_per_stage(chain):
    assert [s.name for s in chain.ir.states] == [f"T[{s}]" for s in range(1, STAGES + 1)] + ["Aa", "Ac"]


@pytest.mark.parametrize("backend", ["casadi", "torch"])
def test_each_transit_compartment_follows_its_closed_form(chain, backend):
    res = chain.simulate(TIMES, backend=backend, rtol=1e-10, atol=1e-12)
    for stage in range(1, STAGES + 1):
        np.testing.assert_allclose(res[f"T[{stage}]"], transit_amount(stage, TIMES), rtol=1e-6, atol=1e-9,
                                   err_msg=f"T[{stage}] ({backend})")


def test_the_absorbed_and_central_amounts_match_scipy_on_a_hand_written_chain(chain):
    n = STAGES

    def rhs(t, y):
        transit, absorbing, central = y[:n], y[n], y[n + 1]
        inflow = np.concatenate([[0.0], KTR * transit[:-1]])
        return np.concatenate([inflow - KTR * transit, [KTR * transit[-1] - KA * absorbing],
                               [KA * absorbing - CL / V * central]])

    times = np.array([0.0, 0.25, 0.5, 1, 2, 4, 8, 12, 24]) * 60
    y0 = np.zeros(n + 2)
    y0[0] = DOSE
    ref = solve_ivp(rhs, (0, times[-1]), y0, t_eval=times, method="LSODA", rtol=1e-11, atol=1e-13)
    res = chain.simulate(times, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(res["Aa"], ref.y[n], rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(res["Ac"], ref.y[n + 1], rtol=1e-6, atol=1e-9)


def test_a_fit_recovers_the_transit_rate_from_concentrations(chain, tmp_path):
    times = np.array([0.25, 0.5, 0.75, 1, 1.5, 2, 3, 4, 6, 8, 12, 24.0]) * 60
    truth = chain.simulate(times, params={"ktr": 30.0})["conc"]
    data = tmp_path / "conc.csv"
    data.write_text("t,conc\n" + "".join(f"{t},{float(c)!r}\n" for t, c in zip(times, truth)))
    # every param free: ka (0.38) and CL / V (0.381) are close (flip-flop kinetics), so only
    # the transit rate is asked for here
    assert chain.fit(str(data)).params["ktr"] == pytest.approx(30.0, rel=1e-4)
    # the disposition known, the transit rate alone
    known = re.sub(r"param (ka|CL|V)( +\[[^]]*\] *= *[0-9.]+) +in \[[^]]*\]", r"const \1\2",
                   EXAMPLE.read_text())
    assert known.count("const ") == 3
    fit = nimm_dsl.load_source(known).fit(str(data))
    assert fit.params["ktr"] == pytest.approx(30.0, rel=1e-6)


LINE = '''model line "decay and exchange with the neighbours on a line of districts"
time t [day]
index district = 1..8
const D [1/day] = 0.3
const k[d in district] [1/day] = 0.05
state u[d in district] [1] = ifelse(d == 4, 1, 0)
der(u[1]) = D * (u[2] - u[1]) - k[1] * u[1]
der(u[d in 2..7]) = D * (u[d-1] - 2 * u[d] + u[d+1]) - k[d] * u[d]
der(u[8]) = D * (u[7] - u[8]) - k[8] * u[8]
observe middle [1] = sum(j in 3..6, u[j])
observe ends [1] = sum(j in [1, 8], u[j])
scenario cut
  set k[d in [3, 4]] = 10 * k[d] from 2
end
'''


def line_reference(times, cut_from=None):
    n, D = 8, 0.3
    laplacian = -2 * np.eye(n) + np.eye(n, k=1) + np.eye(n, k=-1)
    laplacian[0, 0] = laplacian[-1, -1] = -1

    def solve(k, y0, a, b, at):
        sol = solve_ivp(lambda t, u: D * laplacian @ u - k * u, (a, b), y0, t_eval=at, method="LSODA",
                        rtol=1e-11, atol=1e-12)
        return sol.y

    y0 = np.where(np.arange(1, n + 1) == 4, 1.0, 0.0)
    k = np.full(n, 0.05)
    if cut_from is None:
        return solve(k, y0, times[0], times[-1], times)
    before = times[times < cut_from]
    first = solve(k, y0, times[0], cut_from, np.r_[before, cut_from])
    k[[2, 3]] *= 10
    after = times[times >= cut_from]
    second = solve(k, first[:, -1], cut_from, times[-1], after)
    return np.concatenate([first[:, :-1], second], axis=1)


@pytest.mark.parametrize("scenario", [None, "cut"])
def test_neighbour_coupling_and_inline_sums_match_a_numpy_reference(scenario):
    times = np.linspace(0.0, 6.0, 13)
    assert nimm_dsl.check(LINE) == []
    res = nimm_dsl.load_source(LINE).simulate(times, scenario=scenario, rtol=1e-10, atol=1e-12)
    ref = line_reference(times, cut_from=2.0 if scenario else None)
    got = np.array([res[f"u[{d}]"] for d in range(1, 9)])
    np.testing.assert_allclose(got, ref, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(res["middle"], ref[2:6].sum(axis=0), rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(res["ends"], ref[0] + ref[7], rtol=1e-6, atol=1e-9)


def test_both_back_ends_agree_on_the_line():
    model = nimm_dsl.load_source(LINE)
    times = np.linspace(0.0, 6.0, 7)
    a = model.simulate(times, backend="casadi", scenario="cut", rtol=1e-10, atol=1e-12)
    b = model.simulate(times, backend="torch", scenario="cut", rtol=1e-10, atol=1e-12)
    for name in a.names:
        np.testing.assert_allclose(a[name], b[name], rtol=1e-6, atol=1e-9, err_msg=name)


def test_an_inline_range_declares_a_family():
    text = LINE.replace("index district = 1..8\n", "").replace("d in district", "d in 1..8")
    model = nimm_dsl.load_source(text)
    assert [s.name for s in model.ir.states] == [f"u[{d}]" for d in range(1, 9)]


# A long chain: the errors below sit in one of its lines (8, or 11 for the observe).
CHAIN = '''model chain
time t [h]
index stage = 1..1000
index site = [gut, liver]
param ktr [1/h] = 1 in [0.1, 10]
state T[s in stage] [mg] = 0
state Q[n in site] [mg] = 0
flow T[s in 1..999] -> T[s+1] = ktr * T[s]
flow T[1000] -> = ktr * T[1000]
der(Q[n]) = -ktr * Q[n]
observe y [mg] = T[1000] + Q[gut] + Q[liver]
'''
FLOW = "flow T[s in 1..999] -> T[s+1] = ktr * T[s]"
OBSERVE = "observe y [mg] = T[1000] + Q[gut] + Q[liver]"


def test_the_long_chain_checks_clean():
    assert check_source(CHAIN).diagnostics == []


# (line of CHAIN, its replacement, code, the text the diagnostic points at)
ERRORS = [
    # the last stage has no next one: the line's range must exclude it
    (FLOW, "flow T[s in stage] -> T[s+1] = ktr * T[s]", "E352", "s+1"),
    (FLOW, "flow T[s] -> T[s+1] = ktr * T[s]", "E352", "s+1"),
    # a shift of a variable that the line does not bind
    (FLOW, "flow T[s in 1..999] -> T[r+1] = ktr * T[s]", "E352", "r"),
    # a shift of a variable over named members
    ("der(Q[n]) = -ktr * Q[n]", "der(Q[n]) = -ktr * Q[n+1]", "E352", "n+1"),
    # a shift inside a sum that leaves the index at its first term
    (OBSERVE, "observe y [mg] = sum(k in 2..1000, T[k-2]) + Q[gut] + Q[liver]", "E352", "k-2"),
    # inline sets whose members are not all members of the position's index
    (FLOW, "flow T[s in 0..999] -> T[s+1] = ktr * T[s]", "E353", "0..999"),
    (FLOW, "flow T[s in [1, 5, 1001]] -> T[s+1] = ktr * T[s]", "E353", "[1, 5, 1001]"),
    (OBSERVE, "observe y [mg] = T[1000] + sum(k in [gut, kidney], Q[k])", "E353", "k]"),
    # an inline set is written like an index: whole numbers, a non-empty range, no repeats
    (FLOW, "flow T[s in 1..999] -> T[s+1.5] = ktr * T[s]", "E100", "1.5"),
    (FLOW, "flow T[s in 999..1] -> T[s+1] = ktr * T[s]", "E100", "999..1"),
    (FLOW, "flow T[s in [1, 2, 1]] -> T[s+1] = ktr * T[s]", "E100", "1]]"),
]


@pytest.mark.parametrize("line, replacement, code, at", ERRORS, ids=[e[1] for e in ERRORS])
def test_an_index_error_is_reported_at_its_place(line, replacement, code, at):
    text = CHAIN.replace(line, replacement)
    line_no = text.splitlines().index(replacement) + 1
    found = [d for d in check_source(text).diagnostics if d.is_error]
    assert [(d.code, d.span.line, d.span.column) for d in found] == [(code, line_no, replacement.index(at) + 1)]
    whole = [d for d in check_source(text, whole=True).diagnostics if d.is_error]
    assert [(d.code, d.span.line, d.span.column) for d in whole] == [(code, line_no, replacement.index(at) + 1)]


def test_an_out_of_range_shift_names_the_element_and_the_range_to_use():
    text = CHAIN.replace(FLOW, "flow T[s in stage] -> T[s+1] = ktr * T[s]")
    diagnostics = check_source(text).diagnostics
    # the dropped line was the chain's only path to the observation: no warning says otherwise
    assert [d.code for d in diagnostics] == ["E352"]
    error = diagnostics[0]
    assert "s = 1000" in error.message and "T[1001]" in error.message
    assert "s in 1..999" in error.hint


def test_a_dose_on_an_inline_set_is_one_dose_per_listed_member():
    text = LINE.replace("scenario cut", "dose pulse: u[d in [2, 7]] += 0.5 at 1\nscenario cut")
    model = nimm_dsl.load_source(text)
    assert [(d.name, d.state) for d in model.ir.doses] == [("pulse[2]", "u[2]"), ("pulse[7]", "u[7]")]
    res = model.simulate(np.array([0.0, 1.0 - 1e-9, 1.0]), rtol=1e-10, atol=1e-12)
    jumps = [res[f"u[{d}]"][2] - res[f"u[{d}]"][1] for d in range(1, 9)]
    np.testing.assert_allclose(jumps, [0, 0.5, 0, 0, 0, 0, 0.5, 0], atol=1e-6)
