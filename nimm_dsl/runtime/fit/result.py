"""What a fit found, its FIT.json form (schema: docs/fit-json.md) and its text report."""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np

from ...errors import DataError, FitError
from ..data import Dataset
from ..files import json_safe

FORMAT_VERSION = 1

# Labels of an estimated param (FitResult.labels), worded once for the report and the warnings.
AT_LOWER, AT_UPPER = "at its lower bound", "at its upper bound"
UNDETERMINED, POORLY_DETERMINED = "not determined by the data", "poorly determined"
NOT_AT_MINIMUM = "not at a minimum"  # the loss still falls along it: the fit stopped early
NOT_IDENTIFIABLE = "not identifiable from these data"  # a profile flat on a side
STRONG_CORRELATION = 0.95  # |r| above this is flagged in the report: the pair trade off


@dataclass
class StartRecord:
    """One start of a multi-start fit. `start`: the estimated params it began from; `params`:
    where it ended (None when it failed); `status`: the optimiser's outcome in words; `message`:
    why it failed (the diagnosis), else None; `origin`: "defaults", "latin hypercube", "rescue"
    (tried after every requested start failed) or "warm start"."""

    start: dict
    params: Optional[dict]
    loss: Optional[float]
    status: str
    origin: str
    ok: bool
    message: Optional[str] = None

    def to_json(self) -> dict:
        return {"start": _floats(self.start), "params": None if self.params is None else _floats(self.params),
                "loss": _finite_or_none(self.loss), "status": self.status, "ok": self.ok,
                "origin": self.origin, "message": self.message}


@dataclass
class FitResult:
    """What a fit found. `params`: every param and const (declared units), estimated ones fitted.
    `stderr`: approximate standard errors of the estimated params (None where the data cannot
    determine them). `labels`: {estimated param: [AT_LOWER | AT_UPPER | UNDETERMINED |
    NOT_AT_MINIMUM | POORLY_DETERMINED, ...]} (empty when the estimate is unremarkable). `weights`: {neural name:
    flat float64 vector}. `starts`: every start of the fit, in the order tried."""

    model: str
    backend: str
    params: dict
    loss: float
    metrics: dict
    stderr: dict
    warnings: list = field(default_factory=list)
    weights: dict = field(default_factory=dict)
    units: dict = field(default_factory=dict)
    estimated: list = field(default_factory=list)
    n_observations: int = 0
    seconds: float = 0.0
    dataset: Optional[Dataset] = field(default=None, repr=False)
    # series index -> where the held-out end of a series begins (midway between its last training
    # point and its first held-out point), for the plots
    holdout_after: dict = field(default_factory=dict)
    labels: dict = field(default_factory=dict)
    starts: list = field(default_factory=list)
    # {param: {param: number or None}} over the estimated params, in declared units (None where
    # the data cannot determine a param); neural weights are not included
    covariance: dict = field(default_factory=dict)
    correlation: dict = field(default_factory=dict)
    # {param: {"values", "nll", "ci95", "not_identifiable"}} after `profile` (runtime/fit/profile.py)
    profiles: dict = field(default_factory=dict)
    # per-series params: {param: {series label: value}} and their standard errors; `params` then
    # holds the mean over the series
    series_params: dict = field(default_factory=dict)
    series_stderr: dict = field(default_factory=dict)

    fingerprint: str = ""  # ModelIR.fingerprint() of the model fitted
    # how params that only set a negbinomial dispersion were estimated: "cox-reid" (adjusted
    # profile likelihood) or "ml"; None when the model has none (runtime/fit/dispersion.py)
    dispersion_estimator: Optional[str] = None

    def params_for(self, label) -> dict:
        """`params` for one data series: each per-series param at that series' fitted value."""
        return {**self.params, **{k: v[label] for k, v in self.series_params.items() if label in v}}

    def to_json(self) -> dict:
        from ..weights import weights_to_json

        return {
            "format_version": FORMAT_VERSION,
            "model": self.model,
            "fingerprint": self.fingerprint,
            "backend": self.backend,
            "params": _floats(self.params),
            "estimated": list(self.estimated),
            "units": dict(self.units),
            "loss": float(self.loss),
            "metrics": json_safe(self.metrics),
            "stderr": {k: _finite_or_none(v) for k, v in self.stderr.items()},
            "labels": {k: list(v) for k, v in self.labels.items()},
            "weights": weights_to_json(self.weights),
            "n_observations": int(self.n_observations),
            "seconds": round(float(self.seconds), 3),
            "covariance": _matrix_json(self.covariance),
            "correlation": _matrix_json(self.correlation),
            "starts": [s.to_json() for s in self.starts],
            "series_params": {k: _floats(v) for k, v in self.series_params.items()},
            "series_stderr": {k: {s: _finite_or_none(e) for s, e in v.items()}
                              for k, v in self.series_stderr.items()},
            "warnings": list(self.warnings),
        } | ({"dispersion_estimator": self.dispersion_estimator} if self.dispersion_estimator else {}) | ({"profiles": json_safe(self.profiles)} if self.profiles else {})

    def summary(self) -> str:
        """The text report `nimm fit` prints (`format_report`)."""
        return format_report(self)

    def __repr__(self) -> str:
        status = f", {len(self.warnings)} warning(s)" if self.warnings else ""
        return (f"<FitResult of {self.model} ({self.backend}): loss {self.loss:.6g}, "
                f"{len(self.estimated)} param(s) estimated{status}>")

    def _repr_html_(self) -> str:
        """The estimates as a table, for notebooks."""
        from html import escape

        rows = []
        for name in self.estimated:
            se = self.stderr.get(name)
            rows.append("<tr>" + "".join(f"<td>{escape(str(x))}</td>" for x in (
                name, f"{self.params[name]:.6g}", "" if se is None else f"{se:.3g}", self.units.get(name, ""),
                "; ".join(self.labels.get(name, [])))) + "</tr>")
        head = "".join(f"<th>{h}</th>" for h in ("param", "estimate", "std. error", "unit", "note"))
        return (f"<p>fit of <b>{escape(self.model)}</b> ({escape(self.backend)}), loss {self.loss:.6g}, "
                f"{self.n_observations} observations</p><table><tr>{head}</tr>{''.join(rows)}</table>")

    def save(self, path) -> Path:
        """Write FIT.json (plain JSON, weights as lists; never pickle), atomically: a failed write
        leaves the previous file whole."""
        from ..files import write_text_atomic

        return write_text_atomic(path, json.dumps(self.to_json(), indent=2, allow_nan=False) + "\n")


def matrix_dict(names, matrix) -> dict:
    """{row name: {column name: number or None}}: a square matrix over `names`, NaN as None."""
    return {a: {b: _finite_or_none(matrix[i, j]) for j, b in enumerate(names)} for i, a in enumerate(names)}


def matrix_array(matrix: dict, names) -> np.ndarray:
    """The inverse of `matrix_dict`: a float array over `names` (NaN where missing or None)."""
    out = np.full((len(names), len(names)), np.nan)
    for i, a in enumerate(names):
        for j, b in enumerate(names):
            v = (matrix.get(a) or {}).get(b)
            if v is not None:
                out[i, j] = v
    return out


def _matrix_json(matrix: dict) -> dict:
    return {a: {b: _finite_or_none(v) for b, v in row.items()} for a, row in matrix.items()}


def strong_correlations(result: "FitResult", threshold: float = STRONG_CORRELATION) -> list[tuple[str, str, float]]:
    """(a, b, r) for every pair of estimated params with |r| > threshold, strongest first."""
    names = list(result.estimated)
    pairs = []
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            r = (result.correlation.get(a) or {}).get(b)
            if r is not None and abs(r) > threshold:
                pairs.append((a, b, float(r)))
    return sorted(pairs, key=lambda p: -abs(p[2]))


def _finite_or_none(v):
    return float(v) if v is not None and np.isfinite(v) else None


def _floats(d: dict) -> dict:
    return {k: float(v) for k, v in d.items()}


MAX_FIT_FILE_BYTES = 1 << 30  # weights of the largest allowed networks fit well within this


def load_fit(path) -> dict:
    """{"params": {name: float}, "weights": {name: np.ndarray}, "model": str or None,
    "fingerprint": str or None, "document": the whole JSON object} from a FIT.json (FitError if
    unusable). Files without "format_version" (written before version 1) read the same way.
    `params_for_model` then checks that the file belongs to a model."""
    from ..weights import weights_from_fit_entry

    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_FIT_FILE_BYTES + 1)
    except OSError as e:
        raise FitError(f"{path}: cannot read the fit file ({e.strerror or e})") from None
    if len(raw) > MAX_FIT_FILE_BYTES:
        raise FitError(f"{path}: the fit file is larger than {MAX_FIT_FILE_BYTES >> 20} MB")
    try:
        data = json.loads(raw)
    except RecursionError:  # hostile nesting: Python's decoder recurses per level
        raise FitError(f"{path}: not a fit file (JSON nested too deeply)") from None
    except ValueError as e:  # also undecodable bytes and integers beyond Python's digit limit
        raise FitError(f"{path}: not a JSON fit file ({e})") from None
    params = data.get("params") if isinstance(data, dict) else None
    if not isinstance(params, dict):
        raise FitError(f"{path}: expected a JSON object with a \"params\" object")
    version = data.get("format_version", FORMAT_VERSION)
    if not isinstance(version, int) or isinstance(version, bool) or version > FORMAT_VERSION:
        raise FitError(f"{path}: FIT.json format_version {_short(version)} is newer than this nimm_dsl "
                       f"reads ({FORMAT_VERSION}); update nimm_dsl")
    clean = {}
    for k, v in params.items():
        number = _finite_number(v)
        if number is None:
            raise FitError(f"{path}: params.{k} is not a finite number: {_short(v)}")
        clean[str(k)] = number
    weights = {}
    if data.get("weights"):
        try:
            weights = weights_from_fit_entry(data["weights"], path)
        except DataError as e:
            raise FitError(str(e)) from None
    series = {}
    for k, by_label in (data.get("series_params") or {}).items():
        if not isinstance(by_label, dict) or any(_finite_number(v) is None for v in by_label.values()):
            raise FitError(f"{path}: series_params.{_short(k)} is not an object of finite numbers")
        series[str(k)] = {str(s): _finite_number(v) for s, v in by_label.items()}
    model, fingerprint = data.get("model"), data.get("fingerprint")
    # the rest (covariance, rmse, ...) for `--bands` (runtime/bands.py reads what it needs)
    return {"params": clean, "weights": weights, "model": model if isinstance(model, str) else None,
            "fingerprint": fingerprint if isinstance(fingerprint, str) and fingerprint else None,
            "series_params": series,
            "document": data}


def _finite_number(v) -> Optional[float]:
    """A JSON number as a finite float, else None (a 401-digit integer does not fit a float)."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    try:
        number = float(v)
    except OverflowError:
        return None
    return number if math.isfinite(number) else None


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def params_for_model(restored: dict, ir, path, reuse: bool = False) -> tuple[dict, dict, list[str]]:
    """The params and weights of a loaded fit (`load_fit`) for simulating `ir`, and notes for the
    user; FitError when the file does not belong to this model: another model's name, another
    structure (ModelIR.fingerprint: a model edited since the fit), a param the model lacks, an
    estimated param missing, a const with another value, a value outside the param's bounds, or
    a neural term without weights (it would run untrained). With `reuse` (a deliberate reuse of
    another model's fit) the name and structure may differ, and the model's own consts are kept."""
    params, weights = dict(restored["params"]), dict(restored.get("weights") or {})
    notes: list[str] = []
    flag = " (to reuse it deliberately, pass --reuse-fit)"
    model, fingerprint = restored.get("model"), restored.get("fingerprint")
    if not reuse and model is not None and model != ir.name:
        raise FitError(f"{path}: this fit is of model `{_short(model)[1:-1]}`, not `{ir.name}`{flag}")
    if not reuse and fingerprint is not None and fingerprint != ir.fingerprint():
        raise FitError(f"{path}: this fit is of another version of `{ir.name}` (its states, params, "
                       f"observes or equations have changed since){flag}")
    declared = {p.name: p for p in ir.params}
    unknown = sorted(set(params) - set(declared))
    if unknown:
        raise FitError(f"{path}: params {', '.join(unknown)} are not in model `{ir.name}` "
                       f"(is this the fit of another model?)")
    missing = [p.name for p in ir.params if p.estimate and p.name not in params]
    if missing:
        raise FitError(f"{path}: no value for the estimated param(s) {', '.join(missing)} of `{ir.name}`")
    for name, value in list(params.items()):
        p = declared[name]
        if not p.estimate:
            if value != p.default and not reuse:
                raise FitError(f"{path}: const `{name}` is {value:g} in the fit file but {p.default:g} in the "
                               f"model; a fit does not change consts (edit the model, or refit){flag}")
            if value != p.default:
                notes.append(f"const `{name}` keeps the model's value {p.default:g} (the fit file has {value:g})")
            del params[name]
        elif not p.lo <= value <= p.hi:
            raise FitError(f"{path}: `{name}` = {value:g} is outside its bounds [{p.lo:g}, {p.hi:g}] in the model")
    untrained = [n.name for n in ir.neurals if n.name not in weights]
    if untrained:
        raise FitError(f"{path}: no weights for the neural term(s) {', '.join(untrained)}: "
                       "the network would run untrained; use the FIT.json its fit wrote")
    extra = sorted(set(weights) - {n.name for n in ir.neurals})
    if extra:
        raise FitError(f"{path}: weights for {', '.join(extra)}, which model `{ir.name}` does not declare")
    for n in ir.neurals:
        if np.asarray(weights[n.name]).size != n.n_weights:
            raise FitError(f"{path}: neural `{n.name}` has {np.asarray(weights[n.name]).size} weights in the fit "
                           f"file but {n.n_weights} in the model")
    return params, weights, notes


def point_summary(values: dict, limit: int = 4) -> str:
    """`beta=1.5, gamma=0.5, ...`: a start point in one short phrase."""
    items = [f"{k}={v:.4g}" for k, v in values.items()]
    return ", ".join(items[:limit]) + (", ..." if len(items) > limit else "")


def start_line(k: int, s: StartRecord) -> str:
    where = "defaults" if s.origin == "defaults" else s.origin
    head = f"start {k} ({where}: {point_summary(s.start)})" if s.start else f"start {k} ({where})"
    loss = f", loss {s.loss:.6g}" if s.loss is not None and np.isfinite(s.loss) else ""
    return f"{head}: {s.status}{loss}"


DISPERSION_WORDS = {"cox-reid": "Cox–Reid adjusted profile likelihood (less biased in small samples; "
                               "--dispersion ml for maximum likelihood)",
                    "ml": "maximum likelihood"}


def format_report(result: FitResult) -> str:
    """A short human summary: params with standard errors, units and labels, loss, RMSE per
    observe, and one line per start when there were several."""
    lines = [f"fit of {result.model} ({result.backend}, {result.n_observations} observations, "
             f"{result.seconds:.1f} s)", f"  loss (negative log-likelihood): {result.loss:.6g}"]
    if result.dispersion_estimator:
        lines.append("  dispersion: " + DISPERSION_WORDS.get(result.dispersion_estimator, result.dispersion_estimator))
    for name in result.estimated:
        se = result.stderr.get(name)
        se_text = f" ± {se:.3g}" if se is not None else ""
        unit = result.units.get(name) or ""
        labels = result.labels.get(name) or []
        label_text = f"  ({'; '.join(labels)})" if labels else ""
        if name in result.series_params:
            lines.append(f"  {name} per series [{unit}] (mean {result.params[name]:.6g}):")
            for label, v in result.series_params[name].items():
                se = result.series_stderr.get(name, {}).get(label)
                se_text = f" ± {se:.3g}" if se is not None else ""
                lines.append(f"    {label:<10} = {v:.6g}{se_text}")
            continue
        lines.append(f"  {name:<12} = {result.params[name]:.6g}{se_text} {unit}".rstrip() + label_text)
    pairs = strong_correlations(result)
    if pairs:
        lines.append(f"  strongly correlated (|r| > {STRONG_CORRELATION}): "
                     + "; ".join(f"{a} and {b} (r = {r:+.3f})" for a, b, r in pairs))
    lines += profile_lines(result.profiles, result.units)
    for name, v in result.metrics.get("rmse", {}).items():
        if v is not None:
            lines.append(f"  rmse {name}: {v:.4g}")
    for name, v in (result.metrics.get("holdout_rmse") or {}).items():
        if v is not None:
            lines.append(f"  hold-out rmse {name}: {v:.4g}")
    for nname, w in result.weights.items():
        lines.append(f"  neural {nname}: {len(w)} weights")
    if len(result.starts) > 1:
        lines.append(f"  starts ({len(result.starts)}):")
        lines += [f"    {start_line(k + 1, s)}" for k, s in enumerate(result.starts)]
    return "\n".join(lines)


def profile_lines(profiles: dict, units: dict) -> list[str]:
    """The report's lines about profiles (runtime/fit/profile.py): the 95% interval, and the
    side(s) along which the profile stays flat ("?" for that end of the interval)."""
    lines = []
    for name, pr in profiles.items():
        lo, hi = pr["ci95"]
        unit = units.get(name) or ""
        ends = ", ".join("?" if v is None else f"{v:.4g}" for v in (lo, hi))
        flat = pr.get("not_identifiable") or []
        note = f"  ({NOT_IDENTIFIABLE}: flat on the {' and '.join(flat)} side)" if flat else ""
        lines.append(f"  profile {name:<12} 95% interval [{ends}] {unit}".rstrip() + note)
    return lines
