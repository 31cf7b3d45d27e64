"""Scoring any model on a task: check, fit on `train`, forecast `test`, simulate counterfactuals
(docs/tasks.md; the steps, statuses and REPORT.json keys of TASKS.md §3).

Metrics are computed here and nowhere else, so that `nimm evaluate`, the baseline table in
benchmarks/ and the agent's scores are one definition:

* rmse: root mean square of (model - data) over the non-missing data, in the observe's unit;
* skill (test only, dynamic tasks): 1 - rmse / rmse of carrying each series' last training value
  forward ("persistence"); 1 is perfect, 0 no better than persistence, negative worse;
* mean_abs_log_error (counterfactuals): mean |log(1 + max(model, 0)) - log(1 + max(truth, 0))|.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np

from ..diagnostics import Diagnostic, render_text
from ..errors import NimmError
from .task import Task, load_task
from ..runtime.culprit import simulate as run_located  # a NaN names its model line

STATUSES = ("ok", "check_failed", "fit_failed", "simulate_failed")


# ---------------------------------------------------------------- metrics (pure functions)
def rmse(model, data) -> tuple[Optional[float], int]:
    """(rmse over the pairs where data is present, number of pairs); (None, 0) when none."""
    model, data = np.asarray(model, float), np.asarray(data, float)
    keep = np.isfinite(data)
    n = int(keep.sum())
    if n == 0:
        return None, 0
    return float(np.sqrt(np.mean((model[keep] - data[keep]) ** 2))), n


def skill(model_rmse: Optional[float], persistence_rmse: Optional[float]) -> Optional[float]:
    """1 - rmse / rmse of persistence; None when either is missing or persistence is exact."""
    if model_rmse is None or persistence_rmse is None or persistence_rmse == 0:
        return None
    return 1.0 - model_rmse / persistence_rmse


def mean_abs_log_error(model, truth) -> tuple[Optional[float], int]:
    model, truth = np.asarray(model, float), np.asarray(truth, float)
    keep = np.isfinite(truth)
    n = int(keep.sum())
    if n == 0:
        return None, 0
    a = np.log1p(np.maximum(model[keep], 0.0))
    b = np.log1p(np.maximum(truth[keep], 0.0))
    return float(np.mean(np.abs(a - b))), n


def last_values(values: np.ndarray) -> Optional[float]:
    """The last non-missing value of a series (what persistence carries forward)."""
    present = np.flatnonzero(np.isfinite(values))
    return float(values[present[-1]]) if len(present) else None


# ---------------------------------------------------------------- the report
@dataclass
class EvaluationReport:
    task: str
    model: str
    status: str = "ok"
    check: dict = field(default_factory=lambda: {"errors": 0, "warnings": 0, "diagnostics": []})
    fit: Optional[dict] = None
    metrics: dict = field(default_factory=lambda: {"train": {}, "test": {}, "counterfactual": {}})
    error: Optional[str] = None
    backend: str = "casadi"
    seconds: float = 0.0
    plots: list = field(default_factory=list)
    plot_error: Optional[str] = None

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def to_json(self) -> dict:
        out = {"task": self.task, "model": self.model, "status": self.status, "check": self.check,
               "fit": self.fit, "metrics": self.metrics, "backend": self.backend,
               "seconds": round(self.seconds, 3)}
        if self.error is not None:
            out["error"] = self.error
        if self.plot_error is not None:
            out["plot_error"] = self.plot_error
        from ..runtime.files import json_safe

        return json_safe(out)

    def save(self, path) -> Path:
        from ..runtime.files import write_text_atomic

        return write_text_atomic(path, json.dumps(self.to_json(), indent=2, allow_nan=False) + "\n")

    def summary(self) -> str:
        """A few readable lines: status, fit, then one line per metric."""
        lines = [f"evaluate {self.task} with {self.model} ({self.backend}): {self.status}"]
        if self.error:
            lines += ["  " + line for line in self.error.splitlines()]
        if self.check["warnings"]:
            lines.append(f"  check: {self.check['warnings']} warning(s)")
        if self.fit is not None:
            lines.append(f"  fit: loss {self.fit['loss']:.6g} in {self.fit['seconds']:.1f} s"
                         + (f", {len(self.fit['warnings'])} warning(s)" if self.fit["warnings"] else ""))
        for part in ("train", "test"):
            for observe, m in self.metrics.get(part, {}).items():
                text = f"  {part:<6} {observe:<16} rmse {_number(m.get('rmse'))} (n {m['n']})"
                if "skill" in m:
                    text += f"  skill {_number(m['skill'])}"
                lines.append(text)
        for scenario, entry in self.metrics.get("counterfactual", {}).items():
            if "error" in entry:
                lines.append(f"  counterfactual {scenario}: {entry['error']}")
                continue
            if not entry:
                lines.append(f"  counterfactual {scenario}: simulated (no truth table to compare)")
            for observe, m in entry.items():
                lines.append(f"  counterfactual {scenario} {observe}: rmse {_number(m.get('rmse'))}, "
                             f"mean_abs_log_error {_number(m.get('mean_abs_log_error'))} (n {m['n']})")
        return "\n".join(lines)


def _number(value) -> str:
    return "n/a" if value is None else f"{value:.4g}"


class _Failed(Exception):
    """Stops the evaluation at a step; the report already says which and why."""


# ---------------------------------------------------------------- the steps
def evaluate(task, model, backend: Optional[str] = None, plot_dir=None,
             progress: bool = False) -> EvaluationReport:
    """Check, fit, forecast and counterfactuals of `model` (a path, model text's Model, or a
    `nimm_dsl.Model`) on `task` (a path or a Task). Never raises for a model that fails a step:
    the report's status says which step and why. TaskError for an unusable task."""
    started = time.perf_counter()
    task = task if isinstance(task, Task) else load_task(task)
    backend = backend or task.fit.backend
    report = EvaluationReport(task.name, "model", backend=backend)
    try:
        loaded = _check(task, model, report)
        fitted = _fit(task, loaded, report, backend, progress)
        _forecast(task, loaded, fitted, report, backend)
        _counterfactuals(task, loaded, fitted, report, backend)
        if plot_dir is not None:
            from .plots import plot_evaluation

            try:
                report.plots = [str(p) for p in plot_evaluation(task, loaded, fitted, report, backend,
                                                                Path(plot_dir))]
            except (NimmError, OSError, ValueError) as e:  # the scores stand without their figures
                report.plot_error = f"no plots: {e}"
    except _Failed:
        pass
    report.seconds = time.perf_counter() - started
    return report


def _check(task: Task, model, report: EvaluationReport):
    from ..api import Model, check, load_source, read_model_text
    from ..errors import ModelError

    if isinstance(model, Model):
        loaded, diagnostics, source = model, list(model.checked.diagnostics), model.checked.source
    else:
        file = str(model)
        try:
            source = read_model_text(model)
        except OSError as e:
            raise NimmError(f"{file}: cannot read the model ({e.strerror or e})") from None
        # a task that provides tables is where `table(...)` reads, for baselines and the agent's
        # models alike; otherwise the model's own folder (a hand-written model's CSVs beside it)
        tables = task.table_access() if task.tables else None
        diagnostics = check(source, file, tables)
        loaded = None
        if not any(d.is_error for d in diagnostics):
            loaded = load_source(source, file, tables)
    if loaded is not None:
        report.model = loaded.name
        try:
            loaded.ir  # lowering errors are model errors too
        except ModelError as e:
            diagnostics += e.diagnostics
            loaded = None
        else:
            diagnostics += _binding(task, loaded)
    report.check = {"errors": sum(d.is_error for d in diagnostics),
                    "warnings": sum(not d.is_error for d in diagnostics),
                    "diagnostics": [d.to_dict() for d in diagnostics]}
    if loaded is None or report.check["errors"]:
        report.status = "check_failed"
        report.error = render_text([d for d in diagnostics if d.is_error], source)
        raise _Failed
    return loaded


def _binding(task: Task, model) -> list[Diagnostic]:
    """What the data binding of TASKS.md §5 says about the model and the training table (as a
    fit would bind it), plus the observes the task scores that the model does not define."""
    from ..runtime.binding import bind, missing_observes

    return bind(model, str(task.train), command="fit") + missing_observes(model, task.observes)


def _fit(task: Task, model, report: EvaluationReport, backend: str, progress: bool):
    try:
        fitted = model.fit(str(task.train), backend=backend, starts=task.fit.starts,
                           seed=task.fit.seed, progress=progress)
    except NimmError as e:
        report.status, report.error = "fit_failed", str(e)
        raise _Failed from None
    report.fit = {"loss": fitted.loss, "params": {n: fitted.params[n] for n in fitted.estimated},
                  "stderr": {n: fitted.stderr.get(n) for n in fitted.estimated},
                  "seconds": fitted.seconds, "warnings": list(fitted.warnings)}
    if fitted.series_params:  # per-series params: each series' value and standard error
        report.fit.update(series_params=fitted.series_params, series_stderr=fitted.series_stderr)
    return fitted


def scored_observes(task: Task, dataset) -> list[str]:
    return list(task.observes) if task.observes else list(dataset.observed_names)


def _simulate_series(sim, dataset, series, fitted, scenario=None):
    if dataset.static:
        return run_located(sim, None, params=fitted.params, scenario=scenario,
                            inputs=series.input_frame(), weights=fitted.weights or None)
    return run_located(sim, series.times, params=fitted.params_for(series.label), scenario=scenario,
                        **series.run_options(), weights=fitted.weights or None)


def _forecast(task: Task, model, fitted, report: EvaluationReport, backend: str) -> None:
    """Train and test metrics from one simulation per series over train + test times."""
    import pandas as pd

    from ..runtime.data import load_data

    frames = [pd.read_csv(task.train, dtype=str, keep_default_na=False)]
    if task.test is not None:
        frames.append(pd.read_csv(task.test, dtype=str, keep_default_na=False))
    n_train = len(frames[0])
    ir = model.ir
    sim = model.compile(backend)
    try:
        if ir.is_static:  # independent rows: train and test are separate sets
            parts = [("train", load_data(task.train, ir))]
            if task.test is not None:
                parts.append(("test", load_data(task.test, ir)))
            for part, dataset in parts:
                series = dataset.series[0]
                result = _simulate_series(sim, dataset, series, fitted)
                for observe in scored_observes(task, dataset):
                    value, n = rmse(result[observe], series.observed[observe])
                    report.metrics[part][observe] = {"rmse": value, "n": n}
            return
        combined = pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]
        dataset = load_data(combined, ir, file=f"{task.train.name} + {task.test.name}"
                            if task.test is not None else str(task.train))
        pairs: dict = {(part, o): ([], [], []) for part in ("train", "test")
                       for o in scored_observes(task, dataset)}
        for series in dataset.series:
            result = _simulate_series(sim, dataset, series, fitted)
            in_train = series.rows <= n_train
            for observe in scored_observes(task, dataset):
                predicted = np.asarray(result[observe], float)
                observed = series.observed[observe]
                carried = last_values(observed[in_train])
                for part, mask in (("train", in_train), ("test", ~in_train)):
                    model_values, data_values, persistence = pairs[(part, observe)]
                    model_values.append(predicted[mask])
                    data_values.append(observed[mask])
                    persistence.append(np.full(mask.sum(), np.nan if carried is None else carried))
    except NimmError as e:
        report.status, report.error = "simulate_failed", str(e)
        raise _Failed from None
    for (part, observe), (model_values, data_values, persistence) in pairs.items():
        if part == "test" and task.test is None:
            continue
        predicted, observed = np.concatenate(model_values), np.concatenate(data_values)
        value, n = rmse(predicted, observed)
        entry = {"rmse": value, "n": n}
        if part == "test":
            carried = np.concatenate(persistence)
            usable = np.isfinite(carried)
            entry["skill"] = skill(rmse(predicted[usable], observed[usable])[0],
                                   rmse(carried[usable], observed[usable])[0])
        report.metrics[part][observe] = entry


def _counterfactuals(task: Task, model, fitted, report: EvaluationReport, backend: str) -> None:
    from ..runtime.data import load_data

    ir = model.ir
    sim = model.compile(backend)
    train_observes = scored_observes(task, load_data(task.train, ir))
    for cf in task.counterfactuals:
        if cf.scenario not in ir.scenarios:
            report.metrics["counterfactual"][cf.scenario] = {"error": "scenario missing"}
            continue
        entry: dict = {}
        try:
            if cf.truth is None:  # nothing to compare: the scenario must still run
                run_located(sim, None if ir.is_static else _default_times(ir, task), params=fitted.params,
                             scenario=cf.scenario, weights=fitted.weights or None)
            else:
                truth = load_data(cf.truth, ir, require_observed=False)
                collected: dict = {o: ([], []) for o in train_observes if o in truth.observed_names}
                for series in truth.series:
                    result = _simulate_series(sim, truth, series, fitted, cf.scenario)
                    for observe, (model_values, truth_values) in collected.items():
                        model_values.append(np.asarray(result[observe], float))
                        truth_values.append(series.observed[observe])
                for observe, (model_values, truth_values) in collected.items():
                    predicted, actual = np.concatenate(model_values), np.concatenate(truth_values)
                    value, n = rmse(predicted, actual)
                    male, _ = mean_abs_log_error(predicted, actual)
                    entry[observe] = {"rmse": value, "mean_abs_log_error": male, "n": n}
        except NimmError as e:
            report.status = "simulate_failed"
            report.error = f"counterfactual `{cf.scenario}`: {e}"
            raise _Failed from None
        report.metrics["counterfactual"][cf.scenario] = entry


def _default_times(ir, task: Task) -> np.ndarray:
    """The training table's time range (a counterfactual without truth is simulated over it)."""
    import pandas as pd

    times = pd.to_numeric(pd.read_csv(task.train)[ir.time_name], errors="coerce").dropna()
    return np.linspace(float(times.min()), float(times.max()), 50)
