"""The `nimm` command: exit codes, text and JSON diagnostics, simulate output."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from nimm_dsl.cli import main

ROOT = Path(__file__).resolve().parents[1]

THREE_FAULTS = """model sir
time t [day]
unit person
const N [person] = 100
param beta [1/day] = 0.3 in [0, 1]
param gamma [1/day] = 0.1 in [0, 1]
state S [person] = 99
state I [person] = 1
state R [person] = 0
der(S) = -beta * S * I / N
der(I) = beta * S * I / N - gamma
observe cases [person] = I + R + S
observe x [person] = gama * I * 1 [day]
"""


def run(args, tmp_path):
    return subprocess.run([sys.executable, "-m", "nimm_dsl.cli", *args], capture_output=True,
                          text=True, cwd=tmp_path)


def test_three_faults_three_diagnostics_in_one_run(tmp_path):
    f = tmp_path / "sir.nimm"
    f.write_text(THREE_FAULTS)
    p = run(["check", "--format", "json", str(f)], tmp_path)
    assert p.returncode == 1
    diags = {d["code"]: d for d in json.loads(p.stdout)}
    assert {"E201", "E401", "E301"} <= set(diags)
    assert (diags["E201"]["line"], diags["E201"]["column"]) == (13, 22)
    assert "gamma" in diags["E201"]["hint"]
    assert (diags["E401"]["line"], diags["E401"]["column"]) == (11, 29)
    assert (diags["E301"]["line"], diags["E301"]["column"]) == (9, 7)
    for d in diags.values():
        assert set(d) == {"file", "code", "severity", "message", "line", "column", "end_line",
                          "end_column", "hint"}
        assert d["file"] == str(f) and d["severity"] == "error"


def test_text_format_shows_source_line_and_caret(tmp_path, capsys):
    f = tmp_path / "sir.nimm"
    f.write_text(THREE_FAULTS)
    assert main(["check", str(f)]) == 1
    out = capsys.readouterr().out
    assert f"{f}:13:22: error[E201]:" in out
    assert "   13 | observe x [person] = gama * I * 1 [day]" in out
    assert "      |                      ^^^^" in out
    assert "= hint: did you mean `gamma`?" in out


def test_clean_file_exits_zero_and_bad_usage_two(tmp_path):
    f = tmp_path / "ok.nimm"
    f.write_text("model ok\ntime t [s]\nstate x [1] = 1\nder(x) = -x / 1 [s]\n")
    assert run(["check", str(f)], tmp_path).returncode == 0
    missing = run(["check", str(tmp_path / "nope.nimm")], tmp_path)
    assert missing.returncode == 2 and "cannot read" in missing.stderr
    assert run(["check"], tmp_path).returncode == 2
    assert run(["frobnicate"], tmp_path).returncode == 2


def test_binary_garbage_is_a_diagnostic_not_a_traceback(tmp_path):
    f = tmp_path / "junk.nimm"
    f.write_bytes(bytes(range(256)) * 40)
    p = run(["check", str(f)], tmp_path)
    assert p.returncode == 1
    assert "Traceback" not in p.stderr and "error[E100]" in p.stdout


@pytest.mark.slow
def test_simulate_writes_csv_with_time_states_lets_observes(tmp_path):
    f = tmp_path / "decay.nimm"
    f.write_text("model decay\ntime t [h]\nparam k [1/h] = 0.5 in [0, 2]\nstate x [mg] = 8 in [0, inf]\n"
                 "let half [mg] = x / 2\nder(x) = -k * x\nobserve y [mg] = x\n")
    out = tmp_path / "out.csv"
    p = run(["simulate", str(f), "--times", "0:4:5", "--output", str(out)], tmp_path)
    assert p.returncode == 0, p.stderr
    import pandas as pd

    table = pd.read_csv(out)
    assert list(table.columns) == ["t", "x", "half", "y"]
    assert table["x"].to_numpy() == pytest.approx(8 * __import__("numpy").exp(-0.5 * table["t"].to_numpy()), rel=1e-6)
    bad = run(["simulate", str(f), "--times", "0:4"], tmp_path)
    assert bad.returncode == 2 and "T0:T1:N" in bad.stderr
    unknown = run(["simulate", str(f), "--scenario", "nope"], tmp_path)
    assert unknown.returncode == 2 and "unknown scenario" in unknown.stderr


def test_model_errors_from_simulate_go_to_stderr_as_diagnostics(tmp_path):
    f = tmp_path / "bad.nimm"
    f.write_text(THREE_FAULTS)
    p = run(["simulate", str(f)], tmp_path)
    assert p.returncode == 1 and "error[E201]" in p.stderr and "Traceback" not in p.stderr


@pytest.mark.slow
def test_fit_then_simulate_the_fitted_model_under_a_scenario(tmp_path):
    model = ROOT / "examples" / "flu_sir.nimm"
    data = ROOT / "examples" / "data" / "influenza_england_1978_school.csv"
    fit_json, png = tmp_path / "fit.json", tmp_path / "fit.png"
    p = run(["fit", str(model), str(data), "--output", str(fit_json), "--plot", str(png)], tmp_path)
    assert p.returncode == 0, p.stderr
    assert "beta" in p.stdout and png.stat().st_size > 10_000
    fitted = json.loads(fit_json.read_text())
    assert {"params", "loss", "metrics"} <= set(fitted) and "in_bed" in fitted["metrics"]["rmse"]
    out, scenario_png = tmp_path / "sim.csv", tmp_path / "scenario.png"
    p = run(["simulate", str(model), "--fit", str(fit_json), "--data", str(data), "--scenario",
             "isolation", "--output", str(out), "--plot", str(scenario_png)], tmp_path)
    assert p.returncode == 0, p.stderr
    import numpy as np
    import pandas as pd

    import nimm_dsl

    table = pd.read_csv(out)
    source = pd.read_csv(data)
    assert table["day"].tolist() == source["day"].astype(float).tolist()
    direct = nimm_dsl.load(model).compile("casadi").simulate(
        source["day"].to_numpy(float), params=fitted["params"], scenario="isolation")
    # to the solver's tolerance: either process may take the compiled route (a cached object)
    assert np.allclose(table["I"], direct["I"], rtol=1e-6)
    assert scenario_png.stat().st_size > 10_000


@pytest.mark.slow
def test_static_model_simulates_over_its_input_table(tmp_path):
    model = ROOT / "examples" / "michaelis_menten.nimm"
    data = ROOT / "examples" / "data" / "puromycin_treated.csv"
    p = run(["simulate", str(model), "--data", str(data)], tmp_path)
    assert p.returncode == 0, p.stderr
    lines = p.stdout.strip().splitlines()
    assert len(lines) == 1 + len(data.read_text().strip().splitlines()) - 1


@pytest.mark.slow
def test_negative_time_range_and_a_fit_of_another_model(tmp_path):
    f = tmp_path / "decay.nimm"
    f.write_text("model decay\ntime t [h]\nparam k [1/h] = 0.5 in [0, 2]\nstate x [mg] = 8 in [0, inf]\n"
                 "der(x) = -k * x\nobserve y [mg] = x\n")
    p = run(["simulate", str(f), "--times", "-2:2:3"], tmp_path)
    assert p.returncode == 0, p.stderr
    assert p.stdout.splitlines()[1].startswith("-2.0,8.0")
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"params": {"beta": 1.0}, "loss": 0.0, "metrics": {"rmse": {}}}))
    p = run(["simulate", str(f), "--fit", str(other)], tmp_path)
    assert p.returncode == 1 and str(other) in p.stderr and "`beta`" not in p.stderr and "beta" in p.stderr


def test_fit_iteration_limits_reach_the_optimisers(tmp_path, capsys, monkeypatch):
    """--max-iter reaches the fit (and its profiles), --lbfgs-iter the Torch fit, each on its own;
    the advice of a fit that stops early names the flag; --lbfgs-iter is refused for CasADi."""
    import nimm_dsl.api
    from nimm_dsl.runtime.fit import torch_path

    model = tmp_path / "decay.nimm"
    model.write_text("model decay\ntime t [h]\nparam k [1/h] = 0.5 in [0.01, 2]\nstate x [mg] = 8\n"
                     "der(x) = -k * x\nobserve y [mg] = x\n")
    data = tmp_path / "d.csv"
    data.write_text("t,y\n" + "".join(f"{t},{8 * np.exp(-0.2 * t):.6f}\n" for t in range(0, 10)))
    seen = []
    fit, solver = nimm_dsl.api.Model.fit, torch_path.TorchSolver.__init__
    monkeypatch.setattr(nimm_dsl.api.Model, "fit", lambda self, *a, **k: seen.append(("fit", k)) or fit(self, *a, **k))
    monkeypatch.setattr(torch_path.TorchSolver, "__init__",
                        lambda self, *a, **k: seen.append(("torch", k)) or solver(self, *a, **k))
    assert main(["fit", str(model), str(data), "--max-iter", "7"]) == 0
    assert seen[-1][1]["max_iter"] == 7 and "lbfgs_iter" not in seen[-1][1]
    out = tmp_path / "fit.json"
    assert main(["fit", str(model), str(data), "--backend", "torch", "--lbfgs-iter", "1", "--max-iter", "1",
                 "--output", str(out)]) == 0
    assert seen[-1][0] == "torch" and seen[-1][1]["lbfgs_iter"] == 1
    assert [k["max_iter"] for name, k in seen if name == "fit"][-1] == 1
    warning = " ".join(json.loads(out.read_text())["warnings"])
    assert "stopped before converging" in warning and "--max-iter" in warning
    assert main(["fit", str(model), str(data), "--lbfgs-iter", "3"]) == 2
    assert "Torch fit" in capsys.readouterr().err
