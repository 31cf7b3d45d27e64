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
               "tables": {"folder": str(access.folder), "names": sorted(access.allowed)}}
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
