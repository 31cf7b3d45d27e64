"""Task files (docs/tasks.md; the format of TASKS.md §2): what a model is for, and its data.

A task is a TOML file read with the standard library. Relative paths are relative to the task
file. Loading checks that every table exists and that the held-out tables fit the training
table (same columns for `test`; a subset of them for a `truth` table), so that a broken task is
reported before any model is fitted. Loading never reads a table's values beyond its header:
the agent loads tasks too and must not look at held-out data (docs/agent.md).
"""
from __future__ import annotations

import csv
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from ..errors import NimmError


class TaskError(NimmError):
    """A task file that cannot be used as it is; the message names the file and the key."""


@dataclass(frozen=True)
class Counterfactual:
    scenario: str
    description: str
    truth: Optional[Path]  # held out: noise-free trajectory under the intervention


@dataclass(frozen=True)
class FitSettings:
    backend: str = "casadi"
    starts: int = 1
    seed: int = 0


@dataclass(frozen=True)
class Task:
    name: str
    description: str
    file: Path
    train: Path
    test: Optional[Path] = None
    counterfactuals: tuple[Counterfactual, ...] = ()
    observes: Optional[tuple[str, ...]] = None  # None: every observe with a data column
    fit: FitSettings = field(default_factory=FitSettings)
    tables: tuple[Path, ...] = ()  # files that a model's `table("NAME.csv", column)` may read

    @property
    def held_out_files(self) -> list[Path]:
        """The files the agent must never open."""
        return [p for p in [self.test, *(c.truth for c in self.counterfactuals)] if p is not None]

    def table_access(self):
        """What `table(...)` may read in any model scored on this task, hand-written or proposed
        by the agent: the files the task lists under [data] tables, by their plain names, and
        nothing else (compiler.families.TableAccess)."""
        from ..compiler.families import NO_TABLES, TableAccess

        if not self.tables:
            return NO_TABLES
        return TableAccess(self.tables[0].parent, frozenset(p.name for p in self.tables))


_TOP_KEYS = {"task", "data", "counterfactual", "evaluate", "fit"}
_FIT_KEYS = {"backend": str, "starts": int, "seed": int}


def load_task(path, read_held_out: bool = True) -> Task:
    """Read and validate a task file; raises TaskError. With read_held_out=False (the agent)
    the test and truth tables are neither opened nor checked beyond their existence."""
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise TaskError(f"{path}: cannot read the task file ({e.strerror or e})") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise TaskError(f"{path}: not a TOML task file ({e})") from None
    unknown = sorted(set(raw) - _TOP_KEYS)
    if unknown:
        raise TaskError(f"{path}: unknown table(s) {', '.join(f'[{k}]' for k in unknown)}; "
                        f"a task has [task], [data], [[counterfactual]], [evaluate] and [fit]")
    task = _table(raw, "task", path)
    name = _string(task, "name", path, "[task]")
    description = _string(task, "description", path, "[task]", default="")
    data = _table(raw, "data", path)
    unknown = sorted(set(data) - {"train", "test", "tables"})
    if unknown:
        raise TaskError(f"{path}: [data] has an unknown key `{unknown[0]}` (known: train, test, tables)")
    train = _existing(path, _string(data, "train", path, "[data]"), "[data] train")
    test_name = _string(data, "test", path, "[data]", default=None)
    test = _existing(path, test_name, "[data] test") if test_name is not None else None

    train_columns = table_columns(train)
    tables = _provided_tables(path, data)
    if test is not None and read_held_out:
        test_columns = table_columns(test)
        if set(test_columns) != set(train_columns):
            raise TaskError(f"{path}: [data] test `{test_name}` has columns {_listed(test_columns)} "
                            f"but train has {_listed(train_columns)}: a test table continues the "
                            "training series and has the same columns")

    counterfactuals = []
    entries = raw.get("counterfactual", [])
    if not isinstance(entries, list):
        raise TaskError(f"{path}: `counterfactual` must be an array of tables ([[counterfactual]])")
    seen = set()
    for i, entry in enumerate(entries, 1):
        where = f"[[counterfactual]] #{i}"
        if not isinstance(entry, dict):
            raise TaskError(f"{path}: {where} is not a table")
        scenario = _string(entry, "scenario", path, where)
        if scenario in seen:
            raise TaskError(f"{path}: {where}: scenario `{scenario}` is listed twice")
        seen.add(scenario)
        truth_name = _string(entry, "truth", path, where, default=None)
        truth = _existing(path, truth_name, f"{where} truth") if truth_name is not None else None
        if truth is not None and read_held_out:
            extra = [c for c in table_columns(truth) if c not in train_columns]
            if extra:
                raise TaskError(f"{path}: {where} truth `{truth_name}` has column(s) {_listed(extra)} "
                                f"that the training table does not have ({_listed(train_columns)}): a "
                                "truth table holds the time, observed quantities and inputs of train")
        counterfactuals.append(Counterfactual(scenario, _string(entry, "description", path, where,
                                                                 default=""), truth))

    observes = None
    evaluate = raw.get("evaluate", {})
    if not isinstance(evaluate, dict):
        raise TaskError(f"{path}: [evaluate] must be a table")
    if "observes" in evaluate:
        listed = evaluate["observes"]
        if not isinstance(listed, list) or not all(isinstance(o, str) for o in listed) or not listed:
            raise TaskError(f"{path}: [evaluate] observes must be a non-empty list of names")
        missing = [o for o in listed if o not in train_columns]
        if missing:
            raise TaskError(f"{path}: [evaluate] observes {_listed(missing)} have no column in the "
                            f"training table ({_listed(train_columns)})")
        observes = tuple(listed)

    fit = raw.get("fit", {})
    if not isinstance(fit, dict):
        raise TaskError(f"{path}: [fit] must be a table")
    settings = {}
    for key, value in fit.items():
        kind = _FIT_KEYS.get(key)
        if kind is None:
            raise TaskError(f"{path}: [fit] has an unknown key `{key}` (known: {', '.join(_FIT_KEYS)})")
        if not isinstance(value, kind) or isinstance(value, bool):
            raise TaskError(f"{path}: [fit] {key} must be a{'n integer' if kind is int else ' string'}")
        settings[key] = value
    from ..backends import BACKENDS

    if settings.get("backend", "casadi") not in BACKENDS:
        raise TaskError(f"{path}: [fit] backend `{settings['backend']}` is not one of {', '.join(BACKENDS)}")
    if settings.get("starts", 1) < 1:
        raise TaskError(f"{path}: [fit] starts must be at least 1")
    task = Task(name, description, path, train, test, tuple(counterfactuals), observes,
                FitSettings(**settings), tables)
    leaked = [p.name for p in tables if p in task.held_out_files]
    if leaked:
        raise TaskError(f"{path}: [data] tables lists held-out file(s) {_listed(leaked)}: a model "
                        "could read the data it is scored on")
    return task


def _provided_tables(path: Path, data: dict) -> tuple[Path, ...]:
    """[data] tables: CSV files beside each other that models read with `table("NAME.csv", col)`
    (district populations, a mixing matrix). One folder, so that a plain name means one file."""
    listed = data.get("tables", [])
    if not isinstance(listed, list) or not all(isinstance(t, str) and t.strip() for t in listed):
        raise TaskError(f"{path}: [data] tables must be a list of file names")
    not_csv = [name for name in listed if not name.lower().endswith(".csv")]
    if not_csv:
        raise TaskError(f"{path}: [data] tables must be CSV files (`.csv`): {_listed(not_csv)}")
    tables = tuple(_existing(path, name, "[data] tables") for name in listed)
    if len({p.parent for p in tables}) > 1:
        raise TaskError(f"{path}: [data] tables must all be in one folder (a model names them by "
                        f"their file name): {_listed(listed)}")
    names = [p.name for p in tables]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise TaskError(f"{path}: [data] tables lists {_listed(twice)} twice")
    for table in tables:
        table_columns(table)  # a header must be there: the agent shows it to the language model
    return tables


def table_columns(path: Path) -> list[str]:
    """The header of a CSV table (only the header is read)."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            header = next(csv.reader(handle), None)
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise TaskError(f"{path}: cannot read the table's header ({e})") from None
    if not header:
        raise TaskError(f"{path}: the table is empty (a CSV with a header line is expected)")
    return [c.strip() for c in header]


def _table(raw: dict, key: str, path: Path) -> dict:
    value = raw.get(key)
    if not isinstance(value, dict):
        raise TaskError(f"{path}: the [{key}] table is missing")
    return value


_REQUIRED = object()


def _string(table: dict, key: str, path: Path, where: str, default=_REQUIRED):
    if key not in table:
        if default is _REQUIRED:
            raise TaskError(f"{path}: {where} has no `{key}`")
        return default
    value = table[key]
    if not isinstance(value, str) or (default is _REQUIRED and not value.strip()):
        raise TaskError(f"{path}: {where} {key} must be a non-empty string")
    return value


def _existing(task_file: Path, name: str, where: str) -> Path:
    # absolute: the agent's fits run in other processes, on Dask possibly in another folder
    path = (Path(name) if Path(name).is_absolute() else task_file.parent / name).resolve()
    if not path.is_file():
        raise TaskError(f"{task_file}: {where} `{name}`: no such file ({path})")
    return path


def _listed(names) -> str:
    return ", ".join(f"`{n}`" for n in names) or "none"
