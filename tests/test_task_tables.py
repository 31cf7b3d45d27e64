"""Tables a task provides to `table(...)` (TASKS.md §2, extended: [data] tables): a model scored on
the task, hand-written or proposed by the agent, reads them by their plain file names, and no
other file; held-out tables can never be listed."""
import numpy as np
import pandas as pd
import pytest

from nimm_dsl.agent.score import score_candidate
from nimm_dsl.llm.prompts import summarize_table
from nimm_dsl.tasks.evaluate import evaluate
from nimm_dsl.tasks.task import TaskError, load_task

MODEL = """model patches "two patches draining at their own tabulated rates"
time t [day]
index patch = 1..2
const k[p in patch] [1/day] = table("rates.csv", k)
param scale [1] = 1 in [0.1, 10]
state x[p in patch] [mg] = 10
der(x[p]) = -scale * k[p] * x[p]
observe y[p in patch] [mg] = x[p] ~ normal(sigma = 0.1 [mg])
"""
RATES = {"1": 0.1, "2": 0.3}
SCALE = 1.5


def write_task(root, tables='tables = ["data/rates.csv"]'):
    data = root / "data"
    data.mkdir()
    t = np.arange(0.0, 11.0)
    frame = {"t": t, **{f"y[{p}]": 10 * np.exp(-SCALE * k * t) for p, k in RATES.items()}}
    pd.DataFrame(frame).iloc[:8].to_csv(data / "train.csv", index=False)
    pd.DataFrame(frame).iloc[8:].to_csv(data / "test.csv", index=False)
    (data / "rates.csv").write_text("p,k\n" + "".join(f"{p},{k}\n" for p, k in RATES.items()))
    (root / "task.toml").write_text(f'[task]\nname = "patches"\n[data]\ntrain = "data/train.csv"\n'
                                    f'test = "data/test.csv"\n{tables}\n')
    return root / "task.toml"


def test_evaluate_reads_the_tasks_tables_for_a_model_kept_elsewhere(tmp_path):
    task = write_task(tmp_path)
    models = tmp_path / "models"
    models.mkdir()
    (models / "patches.nimm").write_text(MODEL)  # no rates.csv beside it
    report = evaluate(task, models / "patches.nimm")
    assert report.status == "ok", report.error
    assert report.fit["params"]["scale"] == pytest.approx(SCALE, rel=1e-5)  # noise-free data


def test_agent_candidates_read_only_the_provided_tables(tmp_path):
    task = load_task(write_task(tmp_path))
    access = task.table_access()
    assert access.allowed == frozenset({"rates.csv"})
    payload = {"source": MODEL, "file": "nodes/000.nimm", "train": str(task.train), "validation": 0.0,
               "tables": access.to_plain()}
    scored = score_candidate(payload)
    assert scored["status"] == "ok", scored.get("error")
    assert scored["params"]["scale"] == pytest.approx(SCALE, rel=1e-5)
    # without the task's tables a language model's text may read no file at all
    refused = score_candidate({**payload, "tables": None})
    assert refused["status"] == "check_failed" and "E354" in refused["error"]
    # and a provided table is the only one: the training table is not readable by its name
    other = score_candidate({**payload, "source": MODEL.replace('table("rates.csv", k)', 'table("train.csv", t)')})
    assert other["status"] == "check_failed" and "only files that the task provides: rates.csv" in other["error"]


def test_the_data_summary_shows_each_provided_table():
    from pathlib import Path
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        task = load_task(write_task(Path(tmp)))
        summary = summarize_table(task.train, task.tables)
    assert ('Provided table `rates.csv` (2 rows keyed by `p`: declare `index p = ...` with those members and '
            'read a column with `const NAME[i in p] [UNIT] = table("rates.csv", COLUMN)`)') in summary
    assert "p,k\n1,0.1\n2,0.3" in summary
    # a short training table is shown whole, so its last rows (where an epidemic peaks) are seen
    assert "All rows:" in summary and summary.count("\n7.0,") == 1


@pytest.mark.parametrize("tables, message", [
    ('tables = ["data/test.csv"]', "held-out file(s) `test.csv`"),
    ('tables = ["data/rates.csv", "rates.csv"]', "must all be in one folder"),
    ('tables = ["data/rates.txt"]', "must be CSV files"),
    ('tables = ["data/nowhere.csv"]', "[data] tables `data/nowhere.csv`: no such file"),
    ('tables = "data/rates.csv"', "must be a list of file names"),
    ('table = ["data/rates.csv"]', "[data] has an unknown key `table`"),
])
def test_task_tables_that_cannot_be_used_are_task_errors(tmp_path, tables, message):
    task = write_task(tmp_path, tables)
    (tmp_path / "rates.csv").write_text("p,k\n1,0.1\n")
    with pytest.raises(TaskError, match=None) as caught:
        load_task(task)
    assert message in str(caught.value)


def test_nimm_check_reads_tables_from_the_task(tmp_path):
    import subprocess
    import sys

    task = write_task(tmp_path)
    model = tmp_path / "patches.nimm"
    model.write_text(MODEL)
    alone = subprocess.run([sys.executable, "-m", "nimm_dsl.cli", "check", str(model)],
                           capture_output=True, text=True, timeout=120)
    assert alone.returncode == 1 and "E354" in alone.stdout  # not beside the model
    with_task = subprocess.run([sys.executable, "-m", "nimm_dsl.cli", "check", str(model), "--task", str(task)],
                               capture_output=True, text=True, timeout=120)
    assert with_task.returncode == 0, with_task.stdout + with_task.stderr
    missing = subprocess.run([sys.executable, "-m", "nimm_dsl.cli", "check", str(model), "--task",
                              str(tmp_path / "nowhere.toml")], capture_output=True, text=True, timeout=120)
    assert missing.returncode == 2 and "cannot read the task file" in missing.stderr


def test_evaluation_plots_wrap_a_family_into_a_grid_and_hold_interval_counts_over_their_week(tmp_path, monkeypatch):
    """Eight districts' panels are a grid at most three wide, not one tall column; an observe that
    counts over an interval (`integral(..., 7 [day])`) is drawn as steps over each week, the data
    as bars over the week they count."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    from matplotlib.figure import Figure

    drawn = []
    monkeypatch.setattr(Figure, "savefig", lambda fig, *a, **k: drawn.append(fig))
    weekly = MODEL.replace("index patch = 1..2", "index patch = 1..4").replace(
        "observe y[p in patch] [mg] = x[p] ~ normal(sigma = 0.1 [mg])",
        "observe y[p in patch] [mg] = integral(scale * k[p] * x[p], 7 [day]) ~ normal(sigma = 0.1 [mg])")
    data = tmp_path / "data"
    data.mkdir()
    rates = {"1": 0.1, "2": 0.3, "3": 0.05, "4": 0.2}
    (data / "rates.csv").write_text("p,k\n" + "".join(f"{p},{k}\n" for p, k in rates.items()))
    t = 7.0 * np.arange(1, 7)
    # the amount lost over the week ending at t: x(t - 7) - x(t)
    frame = {"t": t, **{f"y[{p}]": 10 * (np.exp(-SCALE * k * (t - 7)) - np.exp(-SCALE * k * t)) for p, k in rates.items()}}
    pd.DataFrame(frame).iloc[:4].to_csv(data / "train.csv", index=False)
    pd.DataFrame(frame).iloc[4:].to_csv(data / "test.csv", index=False)
    (tmp_path / "task.toml").write_text('[task]\nname = "weekly"\n[data]\ntrain = "data/train.csv"\n'
                                       'test = "data/test.csv"\ntables = ["data/rates.csv"]\n')
    (tmp_path / "weekly.nimm").write_text(weekly.replace("time t [day]", "time t [day] from 0"))
    report = evaluate(tmp_path / "task.toml", tmp_path / "weekly.nimm", plot_dir=tmp_path / "plots")
    assert report.status == "ok", report.error
    (fig,) = drawn
    shown = [ax for ax in fig.axes if ax.axison]
    assert [ax.get_title().split()[0] for ax in shown] == ["y[1]", "y[2]", "y[3]", "y[4]"]
    assert shown[0].get_subplotspec().get_gridspec().get_geometry() == (2, 3)
    for ax in shown:
        (steps,) = [line for line in ax.get_lines() if line.get_gid() == "interval"]
        assert steps.get_drawstyle() == "steps-pre"
        assert steps.get_xdata()[0] == pytest.approx(0.0)  # the first week's interval starts at 0
        bars = [c for c in ax.collections if type(c).__name__ == "LineCollection"]
        spans = {tuple(np.round(seg[:, 0], 6)) for c in bars for seg in c.get_segments()}
        assert spans == {(a - 7.0, a) for a in t}  # train and test bars, each over its own week


def test_the_probe_rechecks_a_model_with_the_tables_it_was_checked_with(tmp_path):
    """The probe re-reads the model text in a child process: it must read `table(...)` where the
    parent did (the task's provided files), not fail with an internal KeyError (found by trying
    the agent on the metapop task)."""
    from nimm_dsl.llm.pipeline import validate

    task = load_task(write_task(tmp_path))
    stage, diagnostics = validate(MODEL, "nodes/000.nimm", task.train, probe=True, tables=task.table_access())
    assert stage == "clean", [str(d) for d in diagnostics]
