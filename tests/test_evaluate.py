"""`nimm evaluate` (docs/tasks.md): metrics against hand computations on small tables, the
statuses of failing models, task-file errors and the command's exit codes."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

import nimm_dsl
from nimm_dsl.cli import main
from nimm_dsl.tasks import TaskError, load_task
from nimm_dsl.tasks.evaluate import mean_abs_log_error, rmse, skill

# Nothing to estimate: every prediction is the closed form x(t) = 10 exp(-k t), so each metric can
# be computed by hand. `slower` halves k.
DECAY = """model decay
time t [day]
const k [1/day] = 0.5
state x [mg] = 10 in [0, inf]
der(x) = -k * x
observe y [mg] = x
scenario slower "half the rate"
  set k = 0.5 * k
end
"""


def x_true(t, k=0.5):
    return 10 * np.exp(-k * np.asarray(t, float))


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def decay_task(tmp_path, counterfactuals=None, test=True):
    write(tmp_path / "train.csv", "t,y\n0,10.5\n1,6\n2,3.5\n")
    if test:
        write(tmp_path / "test.csv", "t,y\n3,2\n4,1\n")
    write(tmp_path / "truth.csv", "t,y\n0,10\n2,6.5\n4,3.5\n")
    cf = counterfactuals if counterfactuals is not None else (
        '[[counterfactual]]\nscenario = "slower"\ndescription = "half k"\ntruth = "truth.csv"\n')
    write(tmp_path / "task.toml", f'[task]\nname = "decay"\ndescription = "a drug decays"\n'
                                  f'[data]\ntrain = "train.csv"\n' + ('test = "test.csv"\n' if test else "")
                                  + cf)
    write(tmp_path / "decay.nimm", DECAY)
    return tmp_path / "task.toml", tmp_path / "decay.nimm"


def test_metric_functions_by_hand():
    value, n = rmse([1, 2, 3, 99], [2, 2, 5, np.nan])
    assert n == 3 and value == pytest.approx(math.sqrt((1 + 0 + 4) / 3))
    assert skill(1.0, 4.0) == pytest.approx(0.75)
    assert skill(4.0, 4.0) == 0.0 and skill(8.0, 4.0) == -1.0
    assert skill(1.0, 0.0) is None and skill(None, 1.0) is None
    male, n = mean_abs_log_error([-5, 9, 99], [0, 19, np.nan])
    assert n == 2 and male == pytest.approx((0 + abs(math.log(10) - math.log(20))) / 2)


def test_train_test_and_counterfactual_metrics_match_hand_computations(tmp_path):
    task, model = decay_task(tmp_path)
    report = nimm_dsl.evaluate(task, model)
    assert report.status == "ok", report.error
    train = x_true([0, 1, 2])
    assert report.metrics["train"]["y"]["n"] == 3
    assert report.metrics["train"]["y"]["rmse"] == pytest.approx(
        math.sqrt(np.mean((train - [10.5, 6, 3.5]) ** 2)), rel=1e-6)
    test = x_true([3, 4])
    model_rmse = math.sqrt(np.mean((test - [2, 1]) ** 2))
    persistence_rmse = math.sqrt(np.mean((np.array([3.5, 3.5]) - [2, 1]) ** 2))  # last train value 3.5
    assert report.metrics["test"]["y"] == pytest.approx(
        {"rmse": model_rmse, "n": 2, "skill": 1 - model_rmse / persistence_rmse}, rel=1e-6)
    slower = x_true([0, 2, 4], k=0.25)
    truth = np.array([10, 6.5, 3.5])
    entry = report.metrics["counterfactual"]["slower"]["y"]
    assert entry["n"] == 3
    assert entry["rmse"] == pytest.approx(math.sqrt(np.mean((slower - truth) ** 2)), rel=1e-6)
    assert entry["mean_abs_log_error"] == pytest.approx(
        np.mean(np.abs(np.log1p(slower) - np.log1p(truth))), rel=1e-6)
    saved = json.loads(report.save(tmp_path / "report.json").read_text())
    assert {"task", "model", "status", "check", "fit", "metrics"} <= set(saved)
    assert set(saved["metrics"]) == {"train", "test", "counterfactual"}
    assert saved["check"] == {"errors": 0, "warnings": 0, "diagnostics": []}


def test_a_model_without_the_scenario_gets_scenario_missing_and_stays_ok(tmp_path):
    task, model = decay_task(tmp_path)
    write(model, DECAY.split("scenario")[0])
    report = nimm_dsl.evaluate(task, model)
    assert report.status == "ok"
    assert report.metrics["counterfactual"]["slower"] == {"error": "scenario missing"}


def test_a_model_that_does_not_check_is_check_failed_with_its_diagnostics(tmp_path):
    task, model = decay_task(tmp_path)
    write(model, DECAY.replace("der(x) = -k * x", "der(x) = -kk * x"))
    report = nimm_dsl.evaluate(task, model)
    assert report.status == "check_failed"
    codes = [(d["code"], d["line"]) for d in report.check["diagnostics"]]
    assert ("E201", 5) in codes and report.check["errors"] >= 1
    assert "kk" in report.error and report.fit is None


# x' = k x^2 from x0 = 1 blows up at t = 1/k: with k >= 1 every start fails before t = 1.
BLOW_UP = """model blow_up
time t [day]
param k [1/day] = 2 in [1, 3]
state x [1] = 1
der(x) = k * x^2
observe y [1] = x
"""


@pytest.mark.slow
def test_a_model_whose_fit_fails_is_fit_failed_with_the_reason(tmp_path):
    task, _ = decay_task(tmp_path, counterfactuals="")
    model = write(tmp_path / "blow_up.nimm", BLOW_UP)
    write(tmp_path / "train.csv", "t,y\n0,1\n1,2\n2,3\n")
    report = nimm_dsl.evaluate(task, model)
    assert report.status == "fit_failed"
    assert report.error and report.metrics["train"] == {}


def test_a_forecast_past_a_blow_up_is_simulate_failed(tmp_path):
    """The fit on t <= 1 finds k = 0.5 (blow-up at t = 2); the test asks for t = 3."""
    task, _ = decay_task(tmp_path, counterfactuals="")
    model = write(tmp_path / "blow_up.nimm", BLOW_UP.replace("in [1, 3]", "in [0.4, 0.6]")
                  .replace("= 2 in", "= 0.5 in"))
    t = np.array([0, 0.5, 1.0])
    write(tmp_path / "train.csv", "t,y\n" + "".join(f"{a},{1 / (1 - 0.5 * a)}\n" for a in t))
    write(tmp_path / "test.csv", "t,y\n3,1\n")
    report = nimm_dsl.evaluate(task, model)
    assert report.status == "simulate_failed"
    assert report.fit is not None and report.fit["params"]["k"] == pytest.approx(0.5, rel=1e-3)
    assert "t" in report.error


def test_a_counterfactual_that_meets_a_nan_names_the_model_line(tmp_path):
    """Halving k leaves sqrt(k * 1 day - 0.3) without a value: the report names the let's line."""
    task, model = decay_task(tmp_path)
    write(model, DECAY.replace("der(x) = -k * x", "let room [1] = sqrt(k * 1 [day] - 0.3)\n"
                                                   "der(x) = -k * x * room / 0.4472135954999579"))
    report = nimm_dsl.evaluate(task, model)
    assert report.status == "simulate_failed"
    assert report.error.startswith("counterfactual `slower`") and "let `room` (line 5)" in report.error
    assert "sqrt" in report.error


def test_static_tasks_score_independent_rows_without_skill(tmp_path):
    model = write(tmp_path / "line.nimm", "model line\ninput c [mM]\nparam a [1/mM] = 1 in [0, 10]\n"
                                          "observe y [1] = a * c\n")
    write(tmp_path / "train.csv", "c,y\n1,2\n2,4\n")
    write(tmp_path / "test.csv", "c,y\n3,7\n")
    write(tmp_path / "task.toml", '[task]\nname = "line"\n[data]\ntrain = "train.csv"\ntest = "test.csv"\n')
    report = nimm_dsl.evaluate(tmp_path / "task.toml", model)
    assert report.status == "ok", report.error
    assert report.fit["params"]["a"] == pytest.approx(2.0, rel=1e-5)
    assert report.metrics["test"]["y"] == pytest.approx({"rmse": 1.0, "n": 1}, rel=1e-5)


@pytest.mark.parametrize("change, message", [
    (lambda d: (d / "train.csv").unlink(), "no such file"),
    (lambda d: write(d / "test.csv", "t,y,z\n3,2,1\n"), "same columns"),
    (lambda d: write(d / "truth.csv", "t,w\n0,1\n"), "`w`"),
    (lambda d: write(d / "task.toml", (d / "task.toml").read_text() + "[fit]\nbackend = \"jax\"\n"), "jax"),
    (lambda d: write(d / "task.toml", "[task\n"), "not a TOML"),
])
def test_task_file_errors_name_the_problem(tmp_path, change, message):
    task, _ = decay_task(tmp_path)
    change(tmp_path)
    with pytest.raises(TaskError, match=message):
        load_task(task)


def test_the_command_exit_codes(tmp_path, capsys):
    task, model = decay_task(tmp_path)
    out = tmp_path / "report.json"
    assert main(["evaluate", str(task), str(model), "--output", str(out)]) == 0
    assert json.loads(out.read_text())["status"] == "ok"
    assert "counterfactual slower y" in capsys.readouterr().out
    write(model, "model broken\nthis is not a statement\n")
    assert main(["evaluate", str(task), str(model)]) == 1
    assert main(["evaluate", str(tmp_path / "missing.toml"), str(model)]) == 2
    assert main(["evaluate", str(task), str(tmp_path / "missing.nimm")]) == 2


def test_a_time_variable_not_named_like_the_table_is_check_failed_by_e601(tmp_path):
    task, model = decay_task(tmp_path)
    write(model, DECAY.replace("time t [day]", "time day [day]").replace("der(x) = -k * x", "der(x) = -k * x"))
    report = nimm_dsl.evaluate(task, model)
    assert report.status == "check_failed"
    assert [(d["code"], d["line"]) for d in report.check["diagnostics"] if d["code"] == "E601"] == [("E601", 2)]
    assert report.fit is None


def test_task_tables_are_absolute_paths_so_other_processes_find_them(tmp_path, monkeypatch):
    task, _ = decay_task(tmp_path)
    monkeypatch.chdir(tmp_path.parent)
    loaded = load_task(Path(tmp_path.name) / "task.toml")
    assert loaded.train.is_absolute() and loaded.train == (tmp_path / "train.csv").resolve()


def test_a_candidate_without_a_scored_observe_stops_at_binding_like_evaluate(tmp_path):
    from nimm_dsl.llm.pipeline import validate

    _, model = decay_task(tmp_path)
    stage, diagnostics = validate(DECAY, "m.nimm", data=str(tmp_path / "train.csv"), probe=False,
                                  observes=("y", "z"))
    assert stage == "bind"
    assert [(d.code, d.span.line) for d in diagnostics if d.is_error] == [("E602", 1)]
