"""The probe (TASKS.md §5, docs/language.md §9): one run per scenario at the defaults, in a child
process with a step cap and a time limit; what goes wrong is a diagnostic at the model line that
caused it (E801, E802, W803, W804)."""
from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

import nimm_dsl
from nimm_dsl.cli import main
from nimm_dsl.diagnostics import CODES
from nimm_dsl.runtime.probe import probe

ROOT = Path(__file__).resolve().parents[1]
HEAD = "model p\ntime t [day]\nparam k [1/day] = 0.5 in [0, 1]\n"  # lines 1-3


def run(body: str, **options):
    model = nimm_dsl.load_source(HEAD + body, "p.nimm")
    return probe(model, **options)


def codes_at(found):
    return [(d.code, d.span.line) for d in found]


def test_every_probe_code_is_registered():
    assert {"E801", "E802", "W803", "W804"} <= set(CODES)


@pytest.mark.slow
def test_a_let_that_takes_the_log_of_a_vanishing_state():
    found = run("state x [1] = 1\nder(x) = -k\nlet L [1] = log(x)\nobserve y [1] = L ~ normal(sigma = 1)\n")
    assert codes_at(found) == [("E801", 6)]
    assert "let `L` becomes NaN or inf at t = 2: log of 0" in found[0].message  # x = 1 - t/2
    assert found[0].file == "p.nimm"


@pytest.mark.slow
def test_a_dose_that_makes_a_state_nan_points_at_the_dose():
    found = run("state x [1] = 1 in [0, inf]\nder(x) = -k * x\n"
                "dose D: x *= sqrt(k * (1 [day]) - 1) at 2\nobserve y [1] = x ~ normal(sigma = 1)\n")
    assert codes_at(found) == [("E801", 6)]
    assert "after dose `D` at t = 2" in found[0].message and "sqrt of -0.5" in found[0].message


def test_an_initial_value_that_is_nan_points_at_the_state():
    found = run("state x [1] = log(k * (1 [day]) - 1)\nder(x) = -k * x\nobserve y [1] = x ~ normal(sigma = 1)\n")
    assert codes_at(found) == [("E801", 4)]
    assert "initial value of state `x`" in found[0].message and "log of -0.5" in found[0].message


@pytest.mark.slow
def test_a_right_hand_side_nan_is_traced_to_its_let_not_to_the_solver():
    # x = 1 - t (the sqrt term is 0 until x < 0.5): sqrt of a negative just after t = 0.5-ish
    found = run("state x [1] = 1\nlet r [1/day] = k * sqrt(x - 0.5)\nder(x) = -r - k\n"
                "observe y [1] = x ~ normal(sigma = 1)\n")
    assert codes_at(found) == [("E801", 5)]
    assert "let `r`" in found[0].message and "sqrt of -" in found[0].message
    t = float(found[0].message.split("t = ")[1].split(",")[0].split(":")[0])
    assert 0.6 < t < 0.75  # x reaches 0.5 at t = 0.689 (dx/dt = -k - k sqrt(x - 0.5))


@pytest.mark.slow
def test_a_flow_rate_nan_points_at_the_flow():
    # A falls by at least k per day and reaches 0.5 before t = 1: the sqrt of a negative follows
    found = run("unit cell\nstate A [cell] = 1 [cell]\nstate B [cell] = 0 [cell]\n"
                "flow A -> B = k * (1 [cell]) + k * A * sqrt(A / (1 [cell]) - 0.5)\nflow B -> = k * B\n"
                "observe y [cell] = B ~ normal(sigma = 1)\n")
    assert codes_at(found) == [("E801", 7)]
    assert "flow `A -> B`" in found[0].message and "sqrt of -" in found[0].message


@pytest.mark.slow
def test_a_blow_up_is_e802_with_the_time_reached_and_the_fastest_state():
    found = run("state x [1] = 1\nder(x) = k * x^2\nobserve y [1] = x ~ normal(sigma = 1)\n")
    assert codes_at(found) == [("E802", 4)]  # x = 1 / (1 - t/2): no finite value after t = 2
    assert "at t = 2 day" in found[0].message and "fastest-changing state is x" in found[0].message


@pytest.mark.slow
def test_the_step_cap_bounds_a_stiff_run():
    body = "state x [1] = 1\nder(x) = -1e6 * k * (x - cos(t / (1 [day])))\nobserve y [1] = x ~ normal(sigma = 1)\n"
    assert run(body) == []  # CVODES handles it with its default cap...
    capped = run(body, max_steps=5)
    assert codes_at(capped) == [("E802", 4)]  # ... and stops at a tiny one, naming the cap
    assert "max_num_steps = 5" in capped[0].message


def test_a_probe_out_of_time_is_e802_at_the_model_line():
    found = run("state x [1] = 1\nder(x) = -k * x\nobserve y [1] = x ~ normal(sigma = 1)\n", timeout=0.01)
    assert codes_at(found) == [("E802", 1)]  # the child cannot even start in 10 ms: it is killed
    assert "did not finish within 0.01 s" in found[0].message


def test_a_log_of_a_state_that_decays_below_the_tolerance_is_found():
    """x = exp(-t/2) is 2e-9 at t = 40: the solver's x strays below 0 by up to its tolerance, and
    log(x) of the simulated state is NaN (what a fit over that range would meet)."""
    found = run("state x [1] = 1 in [0, inf]\nder(x) = -k * x\nobserve y [1] = log(x) ~ normal(sigma = 1)\n")
    assert codes_at(found) == [("E801", 6)] and "log of" in found[0].message


@pytest.mark.slow
def test_domain_and_noise_warnings():
    found = run("state x [1] = 1 in [0, inf]\nder(x) = -k\nobserve y [1] = x ~ lognormal(sigma = 1)\n")
    assert codes_at(found) == [("W803", 4), ("W804", 6)]
    assert "leaves its domain [0, inf] at t = 2.5" in found[0].message
    assert "observe `y` is 0 at t = 2" in found[1].message


def test_noise_is_judged_only_where_the_data_measure_the_observe():
    """An oral dose row at t = 0 has no concentration: the prediction 0 there, impossible under
    lognormal noise, costs the fit nothing; a measured 0-time value would."""
    body = ("state G [1] = 0 in [0, inf]\nstate x [1] = 0 in [0, inf]\nder(G) = -k * G\nder(x) = k * G - k * x\n"
            "observe y [1] = x ~ lognormal(sigma = 1)\ndose oral [1]: G += oral at data\n")
    dose_row = pd.DataFrame({"t": [0.0, 1.0, 2.0], "oral": [5.0, None, None], "y": [None, 1.2, 1.4]})
    assert run(body, data=dose_row) == []
    measured = dose_row.assign(y=[0.1, 1.2, 1.4])
    assert codes_at(run(body, data=measured)) == [("W804", 8)]


def test_scenarios_are_probed_and_named():
    found = run("state x [1] = 1 in [0, inf]\nder(x) = -0.01 * k * x\nobserve y [1] = log(x) ~ normal(sigma = 1)\n"
                "scenario wipe\n  dose D: x *= 0 at 5\nend\n")
    assert codes_at(found) == [("E801", 6)]
    assert "(scenario `wipe`)" in found[0].message and "t = 5" in found[0].message


@pytest.mark.slow
def test_the_probe_runs_over_the_data_time_range_with_its_inputs():
    body = ("input u [1] = 1\nstate x [1] = 1\nder(x) = -k * u\nlet L [1] = log(x)\n"
            "observe y [1] = L ~ normal(sigma = 1)\n")
    short = pd.DataFrame({"t": [0.0, 1.0, 1.5], "u": [1, 1, 1]})
    assert run(body, data=short) == []  # x = 1 - t/2 stays positive up to t = 1.5
    fast = pd.DataFrame({"t": [0.0, 1.0, 1.5], "u": [4, 4, 4]})
    found = run(body, data=fast)
    assert codes_at(found) == [("E801", 7)] and "t = 1:" in found[0].message  # x = 1 - 2t hits 0 at t = 0.5


@pytest.mark.slow
def test_check_probe_on_the_command_line(tmp_path, capsys):
    path = tmp_path / "p.nimm"
    path.write_text(HEAD + "state x [1] = 1\nder(x) = -k\nlet L [1] = log(x)\nobserve y [1] = L ~ normal(sigma = 1)\n")
    assert main(["check", str(path), "--probe"]) == 1
    assert f"{path}:6:1: error[E801]" in capsys.readouterr().out
    ok = tmp_path / "ok.nimm"
    ok.write_text(HEAD + "state x [1] = 1\nder(x) = -k * x\nobserve y [1] = x ~ normal(sigma = 1)\n")
    assert main(["check", str(ok), "--probe"]) == 0


@pytest.mark.slow
@pytest.mark.parametrize("example", sorted(p.name for p in (ROOT / "examples").glob("*.nimm")))
def test_the_examples_probe_clean(example):
    assert probe(nimm_dsl.load(ROOT / "examples" / example)) == []
