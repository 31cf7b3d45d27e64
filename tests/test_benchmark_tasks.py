"""The benchmark task suite in benchmarks/tasks/ (issue #10): task files in the TASKS.md §2 format,
their tables, the baseline models and the simulators that made the synthetic data."""
from __future__ import annotations

import importlib.util
import re
import tomllib
from pathlib import Path

import pytest

import nimm_dsl

TASKS_DIR = Path(__file__).resolve().parent.parent / "benchmarks" / "tasks"
TASK_FILES = sorted(TASKS_DIR.glob("*.toml"))
TASK_NAMES = [p.stem for p in TASK_FILES]
SYNTHETIC = {"epidemic", "oncology", "misspecified", "metapop"}
BASELINES = ["textbook", "neural", "hybrid"]
MODEL_FILES = sorted(TASKS_DIR.glob("models/*/*.nimm"))


def load_task(name: str) -> dict:
    return tomllib.loads((TASKS_DIR / f"{name}.toml").read_text())


def header(path: Path) -> list[str]:
    return path.read_text().splitlines()[0].split(",")


def tables_of(path: Path):
    """What `table(...)` reads in a baseline: the files its task provides, as `nimm evaluate` does."""
    from nimm_dsl.tasks import load_task as load_task_file

    task = load_task_file(TASKS_DIR / f"{path.parent.name}.toml", read_held_out=False)
    return task.table_access() if task.tables else None


def family(column: str) -> str:
    """`cases[3]` -> `cases`: an element's column belongs to its family's declaration."""
    return re.sub(r"\[[^\]]*\]$", "", column)


def declared(path: Path, keyword: str) -> list[str]:
    """Names declared by `keyword NAME` lines (the language is line-oriented)."""
    return re.findall(rf"^\s*{keyword}\s+([A-Za-z_]\w*)", path.read_text(), flags=re.M)


def test_the_suite_has_the_six_tasks():
    assert set(TASK_NAMES) == {"epidemic", "oncology", "misspecified", "lynx_hare", "flu_school", "metapop"}


@pytest.mark.parametrize("name", TASK_NAMES)
def test_task_file_has_the_tasks_md_keys(name):
    task = load_task(name)
    assert task["task"]["name"] == name
    assert len(task["task"]["description"].split()) >= 30
    assert isinstance(task["data"]["train"], str)
    assert isinstance(task["data"]["test"], str)
    for cf in task.get("counterfactual", []):
        assert set(cf) <= {"scenario", "description", "truth"}
        assert re.fullmatch(r"[A-Za-z_]\w*", cf["scenario"]) and cf["description"]
    assert task["evaluate"]["observes"]
    assert task["fit"]["backend"] in ("casadi", "torch")
    assert isinstance(task["fit"]["starts"], int) and isinstance(task["fit"]["seed"], int)
    if name in SYNTHETIC:  # each synthetic task has a counterfactual with a truth table
        assert any("truth" in cf for cf in task["counterfactual"])


@pytest.mark.parametrize("name", TASK_NAMES)
def test_tables_exist_and_hold_the_observed_columns(name):
    task = load_task(name)
    tables = [task["data"]["train"], task["data"]["test"]]
    tables += [cf["truth"] for cf in task.get("counterfactual", []) if "truth" in cf]
    train_columns = header(TASKS_DIR / task["data"]["train"])
    for rel in tables:
        path = TASKS_DIR / rel
        assert path.is_file(), rel
        columns = header(path)
        assert columns[0] == train_columns[0], f"{rel}: time column {columns[0]}"
        assert set(task["evaluate"]["observes"]) <= set(columns), rel
    test_columns = header(TASKS_DIR / task["data"]["test"])
    assert test_columns == train_columns
    # the test table continues the training series in time
    last_train = float((TASKS_DIR / task["data"]["train"]).read_text().split("\n")[-2].split(",")[0])
    first_test = float((TASKS_DIR / task["data"]["test"]).read_text().split("\n")[1].split(",")[0])
    assert first_test > last_train


@pytest.mark.parametrize("name", TASK_NAMES)
def test_every_task_has_its_baselines(name):
    folder = TASKS_DIR / "models" / name
    expected = BASELINES + (["true"] if name in SYNTHETIC else [])
    assert sorted(p.stem for p in folder.glob("*.nimm")) == sorted(expected)


@pytest.mark.parametrize("path", MODEL_FILES, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_model_checks_clean(path):
    diagnostics = nimm_dsl.check(path.read_text(), str(path), tables_of(path))
    assert [f"{d.code} line {d.span.line}: {d.message}" if hasattr(d, "span") else str(d)
            for d in diagnostics] == []


@pytest.mark.parametrize("path", MODEL_FILES, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_model_fits_its_task(path):
    """Every counterfactual scenario is defined; the time variable, the observes and the inputs
    match the task's tables, so a truth table's input columns drive the model."""
    task = load_task(path.parent.name)
    model = nimm_dsl.load_source(path.read_text(), str(path), tables_of(path))
    scenarios = set(model.scenarios)
    for cf in task.get("counterfactual", []):
        assert cf["scenario"] in scenarios, f"scenario {cf['scenario']} missing"
    train_columns = header(TASKS_DIR / task["data"]["train"])
    assert declared(path, "time") == [train_columns[0]]
    observes = set(declared(path, "observe"))
    assert {family(o) for o in task["evaluate"]["observes"]} <= observes
    inputs = set(declared(path, "input"))
    for cf in task.get("counterfactual", []):
        if "truth" in cf:
            truth_columns = header(TASKS_DIR / cf["truth"])
            assert {family(c) for c in truth_columns[1:]} - observes <= inputs, cf["truth"]


def run_simulator(name: str) -> dict[str, str]:
    spec = importlib.util.spec_from_file_location(f"task_sim_{name}", TASKS_DIR / "simulators" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.build()


@pytest.mark.parametrize("name", TASK_NAMES)
def test_simulator_reproduces_the_shipped_tables(name):
    task = load_task(name)
    built = run_simulator(name)
    referenced = {Path(task["data"]["train"]).name, Path(task["data"]["test"]).name}
    referenced |= {Path(cf["truth"]).name for cf in task.get("counterfactual", []) if "truth" in cf}
    referenced |= {Path(t).name for t in task["data"].get("tables", [])}
    assert set(built) == referenced
    for file, text in built.items():
        assert (TASKS_DIR / "data" / file).read_text() == text, f"{file} differs from its simulator"


def test_no_stray_files_in_data():
    referenced = set()
    for name in TASK_NAMES:
        task = load_task(name)
        referenced |= {task["data"]["train"], task["data"]["test"]}
        referenced |= {cf["truth"] for cf in task.get("counterfactual", []) if "truth" in cf}
        referenced |= set(task["data"].get("tables", []))
    shipped = {f"data/{p.name}" for p in (TASKS_DIR / "data").iterdir()}
    assert shipped == referenced


def test_metapop_true_model_recovers_the_shared_params_from_district_counts():
    """Issue #14: a fit of the shared params to simulated district-level counts recovers them —
    the task's own training table (8 districts x 11 weekly Poisson counts, simulators/metapop.py),
    the districts' table read through the task's [data] tables, then both counterfactuals run."""
    from nimm_dsl.tasks import evaluate

    report = evaluate(TASKS_DIR / "metapop.toml", TASKS_DIR / "models" / "metapop" / "true.nimm")
    assert report.status == "ok", report.error
    truth = {"beta": 0.55, "travel": 0.04, "cut": 0.45, "rho": 0.25}
    for name, value in truth.items():
        assert report.fit["params"][name] == pytest.approx(value, rel=0.05), name
    # the intervention in a subset of districts: without closures districts 2, 5, 7 take off
    no_closure = report.metrics["counterfactual"]["no_closure"]
    assert all(no_closure[f"cases[{d}]"]["mean_abs_log_error"] < 0.05 for d in range(1, 9))
