"""Fits that succeed or say why: solver output never reaches the terminal, a failing start is
diagnosed (quantity, time, fix), does not sink the fit when another start succeeds, infeasible
defaults are rescued from inside the bounds, and Torch fits that stop short say so."""
import json

import numpy as np
import pandas as pd
import pytest

import nimm_dsl
from nimm_dsl.cli import main
from nimm_dsl.errors import FitError
from nimm_dsl.runtime.fit import FORMAT_VERSION, fit, format_report, load_fit

# dX/dt = k X^2 blows up at t = 1 / (k X0): at the defaults (k = 1, X0 = 1) before the data end
BLOW = """
model blow "blows up at its defaults"
time t [day]
param k [1/day] = 1 in [{klo}, 2]
param X0 [1] = 1 in [{xlo}, 2]
state X [1] = X0 in [0, inf]
der(X) = k * X^2
observe y [1] = X ~ {noise}
"""


def blow_model(noise="normal(sigma = 0.1)", klo=0.01, xlo=0.5):
    return nimm_dsl.load_source(BLOW.format(noise=noise, klo=klo, xlo=xlo), "blow.nimm")


def blow_data(counts=False):
    t = np.linspace(0, 5, 11)
    y = 1.0 / (1.0 - 0.1 * t)  # k = 0.1, X0 = 1
    return pd.DataFrame({"t": t, "y": np.round(10 * y) if counts else y})


def write(tmp_path, model_text, frame):
    (tmp_path / "m.nimm").write_text(model_text)
    frame.to_csv(tmp_path / "d.csv", index=False)
    return str(tmp_path / "m.nimm"), str(tmp_path / "d.csv")


def assert_only_our_messages(err: str):
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines, "expected a message"
    assert all(line.startswith("nimm: ") for line in lines), err
    for internal in ("Traceback", "Function ", "Input ", "CVODE", "IDAS", "Ipopt", "casadi", ".cpp"):
        assert internal not in err, internal


# ---------------------------------------------------------------- nothing but our messages
@pytest.mark.slow
def test_a_fit_failing_everywhere_prints_one_diagnosis_and_no_solver_output(tmp_path, capfd):
    """IPOPT (poisson noise) on a model that blows up everywhere inside its bounds: CasADi used to
    dump every function's inputs on stderr; now one message names the cause and a fix."""
    model, data = write(tmp_path, BLOW.format(noise="poisson", klo=0.5, xlo=1), blow_data(counts=True))
    assert main(["fit", model, data]) == 1
    out, err = capfd.readouterr()
    assert out == ""
    assert_only_our_messages(err)
    # one diagnosis, after the line a non-interactive fit prints when it begins (issue #16, item 18)
    lines = err.strip().splitlines()
    assert len(lines) == 2 and lines[0].startswith("nimm: fitting blow to ")
    assert "failed from every starting point" in err
    assert "integration failed at t = 0.99" in err and "day" in err and "X = " in err  # time, state
    assert "Fix:" in err and "--starts" in err
    assert "Check the data units" not in err


@pytest.mark.slow
def test_a_rescued_fit_prints_the_report_and_our_warnings_only(tmp_path, capfd):
    model, data = write(tmp_path, BLOW.format(noise="poisson", klo=0.01, xlo=0.5), blow_data(counts=True))
    assert main(["fit", model, data, "--output", str(tmp_path / "FIT.json")]) == 0
    out, err = capfd.readouterr()
    assert out.startswith("fit of blow (casadi")
    assert "start 1 (defaults: k=1, X0=1): failed" in out and "start 2 (rescue" in out
    assert_only_our_messages(err)
    doc = json.loads((tmp_path / "FIT.json").read_text())
    assert doc["format_version"] == FORMAT_VERSION and doc["model"] == "blow"
    assert [s["ok"] for s in doc["starts"]] == [False, True]
    assert doc["starts"][0]["start"] == {"k": 1.0, "X0": 1.0} and doc["starts"][0]["params"] is None
    assert doc["starts"][1]["loss"] == pytest.approx(doc["loss"])


# ---------------------------------------------------------------- multi-start behaviour
def test_a_start_that_fails_among_ones_that_succeed_does_not_fail_the_fit():
    res = blow_model().fit(blow_data(), starts=3, progress=False)
    ok = [s.ok for s in res.starts]
    assert len(res.starts) == 3 and ok[0] is False and any(ok[1:])  # the defaults blow up
    assert res.params["k"] == pytest.approx(0.1, rel=1e-4) and res.params["X0"] == pytest.approx(1, rel=1e-4)
    failed = [w for w in res.warnings if "starting points failed" in w]
    assert len(failed) == 1 and f"{ok.count(False)} of 3" in failed[0]
    assert "integration failed at t = 0.99" in failed[0] and "`k` = 1" in failed[0]  # the culprit
    report = format_report(res)
    assert "starts (3):" in report and report.count("    start ") == 3
    assert res.starts[0].message and res.starts[0].params is None and res.starts[0].loss is None


def test_infeasible_defaults_are_rescued_from_inside_the_bounds_and_the_fit_says_so():
    """lognormal noise of a state that crosses zero at the defaults: the first bad quantity and
    time, the state leaving its domain, and a rescue start that fits."""
    text = """
model decline
time t [day]
param k [1/day] = 0.6 in [0.01, 1]
state X [1] = 1 in [0, inf]
der(X) = -k
observe y [1] = X ~ lognormal(sigma = 0.05)
"""
    t = np.arange(0, 4.5, 0.5)
    res = nimm_dsl.load_source(text).fit(pd.DataFrame({"t": t, "y": 1 - 0.1 * t}), progress=False)
    assert res.params["k"] == pytest.approx(0.1, rel=1e-3)
    origins = [(s.origin, s.ok) for s in res.starts]
    assert origins[0] == ("defaults", False) and origins[-1] == ("rescue", True)
    assert all(o == ("rescue", False) for o in origins[1:-1])  # rescue points until one works
    (note,) = [w for w in res.warnings if "could not start from its defaults" in w]
    assert "observe `y` is -0.2 at t = 2 day" in note and "lognormal" in note
    assert "state X leaves its domain [0, inf]: -0.2 is below its lower bound 0 at t = 2 day" in note
    assert f"continued from start {len(origins)}" in note and "Fix:" in note


@pytest.mark.slow
def test_a_fit_failing_everywhere_raises_the_most_specific_diagnosis():
    with pytest.raises(FitError) as info:
        blow_model(klo=0.5, xlo=1).fit(blow_data(), starts=2, progress=False)
    message = str(info.value)
    assert "2 requested starting points and 8 more inside the bounds" in message
    assert "start 1 (defaults: k=1, X0=1)" in message
    assert "integration failed at t = 0.99" in message and "too many steps" in message
    assert "every point tried inside the bounds (`k` in [0.5, 2], `X0` in [1, 2])" in message


# ---------------------------------------------------------------- Torch convergence
DECAY = """
model decay
time t [h]
param k [1/h] = 0.3 in [0.01, 5]
param X0 [mg] = 5 in [0.1, 100]
state X [mg] = X0 in [0, inf]
der(X) = -k * X
observe y [mg] = X ~ normal(sigma = 0.2)
"""


def decay_frame():
    t = np.linspace(0, 6, 12)
    return pd.DataFrame({"t": t, "y": 8 * np.exp(-0.5 * t) + 0.2 * np.random.default_rng(0).standard_normal(12)})


@pytest.mark.slow
def test_a_torch_fit_stopped_short_is_warned_and_a_converged_one_is_not():
    model = nimm_dsl.load_source(DECAY)
    short = model.fit(decay_frame(), backend="torch", max_iter=1, lbfgs_iter=1, progress=False)
    assert not short.starts[0].ok or "stopped before converging" in short.starts[0].status
    (warning,) = [w for w in short.warnings if "stopped before converging" in w]
    assert "gradient norm" in warning and "max_iter" in warning
    full = model.fit(decay_frame(), backend="torch", progress=False)
    assert full.starts[0].status == "converged"
    assert not any("converg" in w for w in full.warnings)
    reference = model.fit(decay_frame(), progress=False)
    assert full.params["k"] == pytest.approx(reference.params["k"], rel=1e-4)


# ---------------------------------------------------------------- FIT.json
def test_fit_json_versions(tmp_path):
    res = nimm_dsl.load_source(DECAY).fit(decay_frame(), progress=False)
    path = res.save(tmp_path / "FIT.json")
    doc = json.loads(path.read_text())
    assert doc["format_version"] == 1 and doc["model"] == "decay"
    assert doc["starts"] == [{"start": {"k": 0.3, "X0": 5.0}, "params": doc["params"],
                              "loss": doc["loss"], "status": doc["starts"][0]["status"], "ok": True,
                              "origin": "defaults", "message": None}]
    assert doc["starts"][0]["status"].startswith("converged")
    old = {k: v for k, v in doc.items() if k not in ("format_version", "starts", "labels")}
    (tmp_path / "old.json").write_text(json.dumps(old))  # a file from before version 1
    assert load_fit(tmp_path / "old.json")["params"] == pytest.approx(res.params)
    (tmp_path / "new.json").write_text(json.dumps(dict(doc, format_version=2)))
    with pytest.raises(FitError, match="format_version 2 is newer"):
        load_fit(tmp_path / "new.json")


def test_an_unknown_backend_is_an_error():
    with pytest.raises(ValueError, match="unknown backend `jax`"):
        fit(nimm_dsl.load_source(DECAY).ir, decay_frame(), backend="jax", progress=False)


# ---------------------------------------------------------------- compile once
def test_nimm_fit_with_a_plot_compiles_the_model_once(tmp_path, monkeypatch, capfd):
    from nimm_dsl.backends import casadi_backend

    built = []
    original = casadi_backend.CasadiSimulator.__init__

    def counting(self, *args, **kwargs):
        built.append(1)
        original(self, *args, **kwargs)

    monkeypatch.setattr(casadi_backend.CasadiSimulator, "__init__", counting)
    model, data = write(tmp_path, DECAY, decay_frame())
    assert main(["fit", model, data, "--plot", str(tmp_path / "fit.png")]) == 0
    assert (tmp_path / "fit.png").stat().st_size > 10_000
    assert len(built) == 1
    loaded = nimm_dsl.load_source(DECAY)
    assert loaded.compile("casadi") is loaded.compile("casadi")  # Model.simulate reuses it too
    assert loaded.compile("casadi", rtol=1e-6) is not loaded.compile("casadi")


def test_an_optimiser_failure_where_the_model_runs_is_told_in_words_with_the_bound_it_hit():
    from nimm_dsl.runtime.data import load_data
    from nimm_dsl.runtime.fit.failures import diagnose, ipopt_status_words

    model = nimm_dsl.load_source(DECAY)
    ir, data = model.ir, load_data(decay_frame(), model.ir)
    status = ipopt_status_words("Restoration_Failed")
    values = {"k": 5.0, "X0": 8.0}  # k on its upper bound
    d = diagnose(ir, model.compile(), data, [p for p in ir.params if p.estimate], values, None, status,
                 1e-8, 1e-8)
    assert not d.specific
    assert "no step lowered the loss" in d.cause and "finite loss" in d.cause
    assert "`k` is at its upper bound 5" in d.fix and "--starts" in d.fix
    assert "units" not in d.text()
