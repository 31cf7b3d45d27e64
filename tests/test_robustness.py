"""Adversarial inputs to the runtime and the `nimm` command: bad data, bad fit files, bad
arguments, models that blow up, go NaN or are stiff. Each must end in a clear message and the
right exit status (LANGUAGE.md §9), never in a traceback or a hang.

The CLI is run in-process through `main`, so an uncaught exception fails the test directly."""

import numpy as np
import pytest

import nimm_dsl
from nimm_dsl.cli import main
from nimm_dsl.errors import SimulationError

DECAY = """model decay
time t [day]
param k [1/day] = 0.5 in [0.01, 5]
state x [1] = 10 in [0, inf]
der(x) = -k * x
observe y [1] = x
"""

DOSED = """model dosed
time t [h]
param ke [1/h] = 0.2 in [0.01, 2]
state A [mg] = 0 in [0, inf]
dose d1: A += 100 at 2
der(A) = -ke * A
observe conc [mg] = A
"""

STATIC = """model mm
input conc [1]
param Vm [1] = 200 in [1, 1000]
param K [1] = 0.1 in [0.001, 10]
observe rate [1] = Vm * conc / (K + conc)
"""

# Robertson's chemical kinetics: the classic stiff test problem.
ROBERTSON = """model robertson
time t [s]
param k1 [1/s] = 0.04
param k2 [1/s] = 3e7
param k3 [1/s] = 1e4
state y1 [1] = 1
state y2 [1] = 0
state y3 [1] = 0
der(y1) = -k1*y1 + k3*y2*y3
der(y2) = k1*y1 - k3*y2*y3 - k2*y2^2
der(y3) = k2*y2^2
"""


@pytest.fixture
def files(tmp_path):
    (tmp_path / "decay.nimm").write_text(DECAY)
    (tmp_path / "static.nimm").write_text(STATIC)
    (tmp_path / "ok.csv").write_text("t,y\n0,10\n1,6.1\n2,3.7\n")
    return tmp_path


def nimm(capsys, *args):
    rc = main([str(a) for a in args])
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return rc, out, err


# ---------------------------------------------------------------- output paths
@pytest.mark.parametrize("target", ["missing_dir/out.csv", "a_dir"])
def test_simulate_output_to_unusable_path_is_a_usage_error(files, capsys, target):
    (files / "a_dir").mkdir()
    rc, _, err = nimm(capsys, "simulate", files / "decay.nimm", "--output", files / target)
    assert rc == 2 and "--output" in err and str(files / target) in err


def test_fit_output_and_plot_paths_are_checked_before_fitting(files, capsys):
    for option in ("--output", "--plot"):
        rc, out, err = nimm(capsys, "fit", files / "decay.nimm", files / "ok.csv",
                            option, files / "nowhere" / "fit.out")
        assert rc == 2 and option in err and "nowhere" in err
        assert out == ""  # refused before the fit ran


def test_plot_message_names_the_file_written(files, capsys):
    rc, _, err = nimm(capsys, "simulate", files / "decay.nimm", "--times", "0:5:6",
                      "--plot", files / "figure", "--output", files / "o.csv")
    assert rc == 0
    assert (files / "figure.png").is_file() and f"{files / 'figure.png'}" in err


# ---------------------------------------------------------------- --times and other arguments
@pytest.mark.parametrize("spec", ["0:1e400:5", "0:inf:3", "0:10:100000000"])
def test_times_out_of_range_is_a_usage_error(files, capsys, spec):
    rc, _, err = nimm(capsys, "simulate", files / "decay.nimm", "--times", spec)
    assert rc == 2 and "--times" in err and "RuntimeWarning" not in err


def test_times_on_a_static_model_is_a_usage_error(files, capsys):
    rc, _, err = nimm(capsys, "simulate", files / "static.nimm", "--times", "0:1:3")
    assert rc == 2 and "static" in err and "--data" in err


@pytest.mark.parametrize("option, value", [("--starts", "0"), ("--holdout", "1.5"),
                                           ("--holdout", "-1"), ("--holdout", "nan")])
def test_fit_option_out_of_range_is_a_usage_error(files, capsys, option, value):
    rc, out, err = nimm(capsys, "fit", files / "decay.nimm", files / "ok.csv", option, value)
    assert rc == 2 and option in err and out == ""


def test_fit_api_rejects_a_negative_or_nan_holdout(files):
    model = nimm_dsl.load(files / "decay.nimm")
    for bad in (-0.5, float("nan")):
        with pytest.raises(ValueError, match="holdout"):
            model.fit(files / "ok.csv", holdout=bad, progress=False)


# ---------------------------------------------------------------- data tables
def test_simulate_data_with_header_only(files, capsys):
    (files / "header.csv").write_text("t,y\n")
    rc, _, err = nimm(capsys, "simulate", files / "decay.nimm", "--data", files / "header.csv")
    assert rc == 1 and "header.csv" in err and "no data rows" in err


def test_semicolon_separated_file_gets_a_hint(files, capsys):
    (files / "semi.csv").write_text("t;y\n0;10\n1;6\n")
    rc, _, err = nimm(capsys, "fit", files / "decay.nimm", files / "semi.csv")
    assert rc == 1 and "semi.csv" in err and "`;`" in err and "comma" in err


# ---------------------------------------------------------------- fits with nothing to do
def test_fit_with_nothing_to_estimate_says_so(files):
    model = nimm_dsl.load_source(DECAY.replace("param k [1/day] = 0.5 in [0.01, 5]",
                                               "const k [1/day] = 0.5"))
    result = model.fit(files / "ok.csv", progress=False)
    assert result.estimated == [] and np.isfinite(result.loss)
    assert any("nothing to estimate" in w for w in result.warnings)


# ---------------------------------------------------------------- numerical failures
NAN_LET = """model nanlet
time t [s]
state x [1] = 1
let y [1] = log(x - 2)
der(x) = -x / 1 [s]
"""

NAN_RHS = """model nanrhs
time t [s]
state x [1] = 1
der(x) = log(x - 2) / 1 [s]
"""


@pytest.mark.parametrize("backend", ["casadi", "torch"])
def test_nan_output_is_reported_with_name_and_time(backend):
    res = nimm_dsl.load_source(NAN_LET).compile(backend).simulate([0.0, 1.0, 2.0])
    assert np.isnan(res["y"]).all()
    assert any("`y`" in w and "t = 0" in w for w in res.warnings), res.warnings


def test_torch_nan_right_hand_side_names_state_and_time():
    sim = nimm_dsl.load_source(NAN_RHS).compile("torch")
    with pytest.raises(SimulationError) as e:
        sim.simulate([0.0, 1.0, 2.0])
    msg = str(e.value)
    assert "nan" not in msg.split("right-hand side")[0].lower()  # a real time, not `t = nan`
    assert "right-hand side" in msg and "x" in msg and "t = 0" in msg


@pytest.mark.slow
def test_stiff_model_cvodes_solves_it_and_torch_gives_up_quickly_with_advice():
    model = nimm_dsl.load_source(ROBERTSON)
    res = model.compile("casadi").simulate([0.0, 40.0, 1e5])
    # reference values of the Robertson problem (Hairer & Wanner) at t = 40
    assert res["y1"][1] == pytest.approx(0.7158, abs=1e-4)
    assert res["y1"][-1] + res["y2"][-1] + res["y3"][-1] == pytest.approx(1.0, abs=1e-6)
    sim = model.compile("torch", max_num_steps=2000)  # the step cap, not a clock, bounds the work
    with pytest.raises(SimulationError, match="stiff.*casadi"):
        sim.simulate([0.0, 1e5])


@pytest.mark.parametrize("backend", ["casadi", "torch"])
def test_doses_before_the_first_output_time_are_reported(backend):
    res = nimm_dsl.load_source(DOSED).compile(backend).simulate([5.0])
    assert res["A"][0] == 0.0  # a run starts at its first time (LANGUAGE.md §7)
    assert any("d1" in w and "t_start" in w for w in res.warnings), res.warnings
    later = nimm_dsl.load_source(DOSED).compile(backend).simulate([5.0], t_start=0.0)
    assert later["A"][0] == pytest.approx(100 * np.exp(-0.2 * 3), rel=1e-6)
    assert later.warnings == []
