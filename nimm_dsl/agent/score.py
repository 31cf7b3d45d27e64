"""Scoring one candidate on the training table: fit with a time-ordered validation hold-out,
validation scores, estimates, warnings, residual patterns and scenario runs (docs/agent.md).

`score_candidate(payload)` is a plain function of a JSON-able payload; the executor runs it in a
child process (`python -m nimm_dsl.agent.score`, the payload on standard input) so that a fit that
runs away is killed at its deadline. The payload names only the training table: held-out tables
never reach a candidate.
"""
from __future__ import annotations

import json
import math
import sys
import time
from typing import Optional

import numpy as np

from ..runtime.files import json_safe
from ..runtime.culprit import simulate as run_located  # a NaN names its model line

RESULT_MARKER = "NIMM-RESULT "  # the child's last line; anything a solver printed stays above it
MAX_TRAJECTORY_POINTS = 120


def score_candidate(payload: dict) -> dict:
    """{status, error, scores, params, stderr, warnings, residuals, scenarios, noise, seconds}.
    status: ok | check_failed | fit_failed | simulate_failed."""
    started = time.perf_counter()
    out = _score(payload)
    out["seconds"] = time.perf_counter() - started
    return out


def _score(payload: dict) -> dict:
    from ..api import load_source
    from ..errors import ModelError, NimmError

    from ..compiler.families import NO_TABLES, TableAccess

    tables = TableAccess.from_plain(payload.get("tables")) or NO_TABLES  # a candidate reads no file unless given
    try:
        model = load_source(payload["source"], payload.get("file", "<candidate>"), tables)
        ir = model.ir
    except ModelError as e:
        return {"status": "check_failed", "error": str(e)}
    if payload.get("noise"):  # the plausible-set comparison under another candidate's noise model
        try:
            model = load_source(_with_noise(payload["source"], model, payload["noise"]),
                                payload.get("file", "<candidate>"), tables)
            ir = model.ir
        except (ModelError, KeyError) as e:
            return {"status": "check_failed", "error": f"cannot use the reference noise model: {e}"}
    validation = float(payload.get("validation", 0.0))
    try:
        fitted = model.fit(payload["train"], backend=payload.get("backend", "casadi"),
                           starts=int(payload.get("starts", 1)), seed=int(payload.get("seed", 0)),
                           holdout=validation, progress=False)
    except NimmError as e:
        return {"status": "fit_failed", "error": str(e)}
    dataset = fitted.dataset
    observes = [o for o in (payload.get("observes") or dataset.observed_names) if o in dataset.observed_names]
    try:
        sim = model.compile(payload.get("backend", "casadi"))
        predictions = [_predict(sim, dataset, s, fitted) for s in dataset.series]
        scenarios = {name: _scenario_runs(sim, dataset, fitted, name)
                     for name in payload.get("scenarios", []) if name in ir.scenarios}
        lets = {entry["let"]: _let_shape(sim, dataset, fitted, entry, list(scenarios))
                for entry in payload.get("lets") or []}
    except NimmError as e:
        return {"status": "simulate_failed", "error": str(e)}
    train_part, valid_part = (dataset.split(validation) if validation > 0 else (dataset, None))
    n_train = [s.n_points for s in train_part.series]
    residuals = {o: residual_patterns(dataset, predictions, o, n_train) for o in observes}
    scale = {o: _scale(np.concatenate([s.observed[o] for s in train_part.series])) for o in observes}
    holdout_rmse = fitted.metrics.get("holdout_rmse") or {}
    train_rmse = fitted.metrics.get("rmse") or {}
    relative = [holdout_rmse[o] / scale[o] for o in observes if holdout_rmse.get(o) is not None]
    if valid_part is None or not relative:  # no hold-out: fall back on the training fit
        relative = [train_rmse[o] / scale[o] for o in observes if train_rmse.get(o) is not None]
    score = float(np.mean(relative)) if relative else math.inf
    out = {
        "status": "ok",
        "scores": {"validation": score, "validation_nll": fitted.metrics.get("holdout_loss"),
                   "validation_rmse": {o: holdout_rmse.get(o) for o in observes},
                   "train_rmse": {o: train_rmse.get(o) for o in observes}, "loss": fitted.loss,
                   "n_parameters": len(fitted.estimated) + sum(len(w) for w in fitted.weights.values())},
        "params": {n: fitted.params[n] for n in fitted.estimated},
        "stderr": {n: fitted.stderr.get(n) for n in fitted.estimated},
        "units": {n: fitted.units.get(n) for n in fitted.estimated},
        "labels": {n: list(fitted.labels[n]) for n in fitted.estimated if fitted.labels.get(n)},
        "warnings": list(fitted.warnings),
        "residuals": residuals,
        "noise": noise_spec(ir, fitted),
        "scenarios": scenarios,
        "lets": {k: v for k, v in lets.items() if v},
    }
    if payload.get("full_fit"):  # the delivered model: everything `nimm simulate --fit` needs
        out["fit_json"] = fitted.to_json()
    return out


def noise_spec(ir, fitted) -> dict:
    """Each observe's noise model with its fitted sigma: {observe: {"kind", "sigma"}} (plus
    "dispersion" for negbinomial); a value is None for poisson and least squares, or when it
    depends on the prediction."""
    import sympy as sp

    def fitted_value(expr):
        if isinstance(expr, sp.Symbol) and str(expr) in fitted.params:
            return float(fitted.params[str(expr)])
        return float(expr) if expr is not None and expr.is_number else None

    out = {}
    for o in ir.observes:
        spec = {"kind": o.noise, "sigma": None}
        if o.noise in ("normal", "lognormal") and o.sigma is not None:
            spec["sigma"] = fitted_value(o.sigma)
        elif o.noise == "negbinomial":
            spec["dispersion"] = fitted_value(o.dispersion)
        out[o.name] = spec
    return out


# params added when a candidate is refitted under another's noise
REFERENCE_SIGMA = "reference_sigma_"
REFERENCE_DISPERSION = "reference_dispersion_"


def _with_noise(source: str, model, noise: dict) -> str:
    """The model text with each observe's noise replaced by `noise[name]` ({"kind", "sigma"}): the
    reference candidate's noise model, its sigma estimated afresh from the reference's value. The
    text is built from the observe's own spans and re-checked like any model text."""
    lines = source.splitlines()
    added = []
    for decl in model.checked.program.statements:
        if type(decl).__name__ != "ObserveDecl" or decl.name.name not in noise:
            continue
        spec = noise[decl.name.name]
        if decl.span.line != decl.span.end_line:
            raise KeyError(f"observe `{decl.name.name}` spans several lines")
        row = decl.span.line - 1
        line = lines[row]
        end = decl.noise.span.column - 1 if decl.noise is not None else decl.span.end_column - 1
        head = line[:end].rstrip().rstrip("~").rstrip()
        kind = spec["kind"]
        if kind in ("normal", "lognormal"):
            unit = line[decl.unit.span.column - 1:decl.unit.span.end_column - 1] if kind == "normal" else "1"
            name = REFERENCE_SIGMA + decl.name.name
            value = spec.get("sigma") or 1.0
            added.append(f"param {name} [{unit}] = {value:.6g} in [{value / 1000:.6g}, {value * 1000:.6g}]")
            lines[row] = f"{head} ~ {kind}(sigma = {name})"
        elif kind == "negbinomial":
            name = REFERENCE_DISPERSION + decl.name.name
            value = spec.get("dispersion") or 10.0
            added.append(f"param {name} [1] = {value:.6g} in [{value / 1000:.6g}, {value * 1000:.6g}]")
            lines[row] = f"{head} ~ negbinomial(dispersion = {name})"
        elif kind == "poisson":
            lines[row] = f"{head} ~ poisson"
        else:
            lines[row] = head
    return "\n".join(lines + added) + "\n"


def _predict(sim, dataset, series, fitted) -> dict:
    if dataset.static:
        res = run_located(sim, None, params=fitted.params, inputs=series.input_frame(),
                           weights=fitted.weights or None)
    else:
        res = run_located(sim, series.times, params=fitted.params_for(series.label), **series.run_options(),
                           weights=fitted.weights or None)
    return {o: np.asarray(res[o], float) for o in dataset.observed_names}


def _scenario_runs(sim, dataset, fitted, scenario: str) -> dict:
    """The scenario over each series' time range with its own inputs (first series only: the
    plausible set compares shapes, not every series)."""
    series = dataset.series[0]
    if dataset.static:
        res = run_located(sim, None, params=fitted.params, scenario=scenario,
                           inputs=series.input_frame(), weights=fitted.weights or None)
        times = np.arange(series.n_points, dtype=float)
    else:
        times = np.linspace(series.times[0], series.times[-1], MAX_TRAJECTORY_POINTS)
        res = run_located(sim, times, params=fitted.params_for(series.label), scenario=scenario,
                           **series.run_options(), weights=fitted.weights or None)
    return {"times": times.tolist(),
            "values": {o: np.asarray(res[o], float).tolist() for o in dataset.observed_names}}


def _let_shape(sim, dataset, fitted, entry: dict, scenarios: list) -> Optional[dict]:
    """A let against the quantity that drives it (a growth rate against the substrate), along the
    fitted trajectories and under each scenario: what was learnt, and where the scenario takes
    the driver beyond what the data visited."""
    if dataset.static:
        return None
    let, driver = entry["let"], entry["driver"]

    def pairs(scenario=None):
        xs, ys = [], []
        for series in dataset.series:
            times = np.linspace(series.times[0], series.times[-1], MAX_TRAJECTORY_POINTS)
            res = run_located(sim, times, params=fitted.params_for(series.label), scenario=scenario,
                               **series.run_options(), weights=fitted.weights or None)
            try:
                xs.append(np.asarray(res[driver], float))
                ys.append(np.asarray(res[let], float))
            except KeyError:
                return None
        x, y = np.concatenate(xs), np.concatenate(ys)
        keep = np.isfinite(x) & np.isfinite(y)
        x, y = x[keep], y[keep]
        if len(x) == 0:
            return None
        order = np.argsort(x)
        pick = order[np.linspace(0, len(order) - 1, min(len(order), 40)).astype(int)]
        return {"driver_range": [float(x.min()), float(x.max())],
                "let_range": [float(y.min()), float(y.max())],
                "pairs": [[float(x[i]), float(y[i])] for i in pick]}

    data = pairs()
    if data is None:
        return None
    out = {"driver": driver, "data": data, "scenarios": {}}
    lo, hi = data["driver_range"]
    for name in scenarios:
        run = pairs(name)
        if run is not None:
            a, b = run["driver_range"]
            width = max(hi - lo, abs(hi), 1e-12)
            run["outside_data"] = bool(a < lo - 0.05 * width or b > hi + 0.05 * width)
            out["scenarios"][name] = run
    return out


def _scale(values: np.ndarray) -> float:
    values = values[np.isfinite(values)]
    if len(values) == 0:
        return 1.0
    spread = float(np.std(values))
    return spread if spread > 0 else max(float(np.mean(np.abs(values))), 1e-12)


def residual_patterns(dataset, predictions, observe: str, n_train: list[int]) -> dict:
    """What a modeler reads off a residual plot, as numbers: the bias in each third of the fitted
    time range and in the validation window (mean residual, data - model), and runs of
    same-sign residuals (few long runs = a systematic misfit, not noise)."""
    fitted_residuals, valid_residuals, fitted_times = [], [], []
    for series, predicted, cut in zip(dataset.series, predictions, n_train):
        r = series.observed[observe] - predicted[observe]
        fitted_residuals.append(r[:cut])
        valid_residuals.append(r[cut:])
        fitted_times.append(series.times[:cut] if series.times is not None else np.arange(cut, dtype=float))
    r = np.concatenate(fitted_residuals)
    t = np.concatenate(fitted_times)
    keep = np.isfinite(r)
    r, t = r[keep], t[keep]
    out: dict = {"n": int(len(r))}
    if len(r) == 0:
        return out
    rms = float(np.sqrt(np.mean(r ** 2))) or 1.0
    edges = np.quantile(t, [0, 1 / 3, 2 / 3, 1]) if len(t) >= 3 else None
    if edges is not None:
        windows = []
        for k, (lo, hi) in enumerate(zip(edges[:-1], edges[1:])):
            inside = (t >= lo) & ((t <= hi) if k == 2 else (t < hi))
            if inside.any():
                windows.append({"from": float(lo), "to": float(hi), "mean": float(np.mean(r[inside])),
                                "relative": float(np.mean(r[inside]) / rms)})
        out["bias_by_window"] = windows
    v = np.concatenate(valid_residuals) if valid_residuals else np.array([])
    v = v[np.isfinite(v)]
    if len(v):
        out["validation_bias"] = {"mean": float(np.mean(v)), "relative": float(np.mean(v) / rms), "n": int(len(v))}
    signs = np.sign(r[r != 0])
    if len(signs) >= 2:
        runs = 1 + int(np.sum(signs[1:] != signs[:-1]))
        n_pos, n_neg = int(np.sum(signs > 0)), int(np.sum(signs < 0))
        expected = 1 + 2 * n_pos * n_neg / len(signs) if n_pos and n_neg else None
        longest, current = 1, 1
        for a, b in zip(signs[:-1], signs[1:]):
            current = current + 1 if a == b else 1
            longest = max(longest, current)
        out["runs"] = {"count": runs, "expected_if_random": expected, "longest": longest}
    return out


def describe_residuals(observe: str, pattern: dict) -> str:
    """One line per observe for the reflection prompt."""
    parts = []
    windows = pattern.get("bias_by_window") or []
    if windows:
        parts.append("bias by time window (data - model, relative to the residual rms): "
                     + ", ".join(f"[{w['from']:.3g}, {w['to']:.3g}] {w['relative']:+.2f}" for w in windows))
    if "validation_bias" in pattern:
        parts.append(f"validation window bias {pattern['validation_bias']['relative']:+.2f}")
    runs = pattern.get("runs")
    if runs and runs.get("expected_if_random"):
        verdict = "systematic misfit" if runs["count"] < 0.6 * runs["expected_if_random"] else "noise-like"
        parts.append(f"{runs['count']} runs of same-sign residuals (about {runs['expected_if_random']:.1f} "
                     f"if random; longest {runs['longest']}): {verdict}")
    return f"{observe}: " + ("; ".join(parts) if parts else "too few points")


def main() -> int:
    """Child-process entry: a JSON payload on stdin, the result as the last line of stdout."""
    payload = json.loads(sys.stdin.read())
    try:
        result = score_candidate(payload)
    except Exception as e:  # noqa: BLE001 - an internal error is a node's status, never a hang
        result = {"status": "fit_failed", "error": f"internal error while scoring: {type(e).__name__}: {e}"}
    sys.stdout.write("\n" + RESULT_MARKER + json.dumps(json_safe(result), allow_nan=False) + "\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
