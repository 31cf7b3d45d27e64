"""Fitting params (and neural weights) to data: the loss, the CasADi and Torch fits, FIT.json.

The loss (LANGUAGE.md §7) is the negative log-likelihood of every observed (non-NaN) data point
of every series under its observe's noise model, plus the neural penalties:

    normal(sigma):    0.5 * ((y - f) / sigma)^2 + log(sigma) + 0.5 * log(2 pi)
    lognormal(sigma): 0.5 * ((log y - log f) / sigma)^2 + log(sigma) + log(y) + 0.5 * log(2 pi)
    poisson:          f - y * log(f) + lgamma(y + 1)
    least squares:    0.5 * (y - f)^2                         (an observe without `~`)
    neural penalty:   penalty * mean(output^2) over the data times of every series

It is written once (`observation_nll`, `dataset_nll`) against a tiny `LossOps` table, so numpy
(reference values and tests), CasADi and Torch compute the same numbers.

Back ends: "casadi" (default) is single shooting with IPOPT, gradients exact through CVODES.
Where the loss is a sum of squares in the dynamic params (normal/lognormal/least-squares observes,
sigmas that are params used nowhere else, no networks, one segment per series) it instead solves
the ODE with its forward sensitivities in one CVODES call and runs scipy's trust-region least
squares on that exact Jacobian, each sigma at its closed-form optimum: several times faster than
IPOPT with exact Hessians (benchmarks/README.md); pass `ipopt_options={...}` to force IPOPT.
"torch" (hybrid models) runs Adam then L-BFGS on transformed params and the network weights.
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Optional, Sequence

import numpy as np

from ..compiler.ir import ModelIR, ParamIR
from ..errors import DataError, FitError, SimulationError
from .data import Dataset, load_data

HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)
NOISE_KINDS = ("normal", "lognormal", "poisson", "lsq")


# ---------------------------------------------------------------- the loss, once for every back end
@dataclass(frozen=True)
class LossOps:
    """The few array operations the loss needs, spelled for one array library.

    const(np.ndarray) -> a backend constant; take(vector, index array) -> the selected entries
    as a vector the data constant combines with elementwise; log, sum: elementwise log, total."""

    const: Callable
    take: Callable
    log: Callable
    sum: Callable


NUMPY_OPS = LossOps(const=lambda a: np.asarray(a, dtype=float), take=lambda v, i: np.asarray(v)[i],
                    log=np.log, sum=np.sum)


def casadi_loss_ops() -> LossOps:
    import casadi as ca

    return LossOps(const=lambda a: ca.DM(np.asarray(a, dtype=float)),
                   take=lambda v, i: ca.vec(v)[[int(k) for k in i]],
                   log=ca.log, sum=lambda v: ca.sum1(ca.vec(v)))


def torch_loss_ops() -> LossOps:
    import torch

    return LossOps(const=lambda a: torch.as_tensor(np.asarray(a, dtype=float), dtype=torch.float64),
                   take=lambda v, i: v.reshape(-1)[torch.as_tensor(np.asarray(i), dtype=torch.long)],
                   log=torch.log, sum=torch.sum)


def observation_nll(noise: str, y: np.ndarray, pred, sigma, ops: LossOps = NUMPY_OPS):
    """NLL of data `y` (numpy, all finite) given predictions `pred` (same length, backend values).

    sigma: scalar (backend value or float) for normal/lognormal, ignored otherwise. Data-only
    constants are computed in numpy; the backend object is always the left operand."""
    y = np.asarray(y, dtype=float)
    n = y.size
    if n == 0:
        return 0.0
    if noise == "lsq":
        r = pred - ops.const(y)
        return 0.5 * ops.sum(r * r)
    if noise == "normal":
        r = (pred - ops.const(y)) / sigma
        return 0.5 * ops.sum(r * r) + n * ops.log(sigma) + n * HALF_LOG_2PI
    if noise == "lognormal":
        r = (ops.log(pred) - ops.const(np.log(y))) / sigma
        return 0.5 * ops.sum(r * r) + n * ops.log(sigma) + float(np.sum(np.log(y))) + n * HALF_LOG_2PI
    if noise == "poisson":
        from scipy.special import gammaln

        # Zero counts contribute just the rate: y*log(f) is 0 there even where f is 0 (an
        # epidemic's first day), and writing it out would give 0*log(0) = NaN.
        positive = np.flatnonzero(y > 0)
        loss = ops.sum(pred)
        if positive.size:
            loss = loss - ops.sum(ops.log(ops.take(pred, positive)) * ops.const(y[positive]))
        return loss + float(np.sum(gammaln(y + 1.0)))
    raise ValueError(f"unknown noise model {noise!r} (expected one of {', '.join(NOISE_KINDS)})")


def dataset_nll(ir: ModelIR, dataset: Dataset, predictions: Sequence[Mapping], sigmas: Mapping,
                ops: LossOps = NUMPY_OPS):
    """Sum of `observation_nll` over the observed points of every series.

    predictions[k][observe name]: backend vector over series k's times (static: its rows);
    sigmas[observe name]: backend scalar for normal/lognormal observes."""
    total = 0.0
    noise = {o.name: o.noise for o in ir.observes}
    for series, pred in zip(dataset.series, predictions):
        for name in dataset.observed_names:
            y = series.observed[name]
            idx = np.flatnonzero(np.isfinite(y))
            if idx.size == 0:
                continue
            total = total + observation_nll(noise[name], y[idx], ops.take(pred[name], idx),
                                            sigmas.get(name), ops)
    return total


def sigma_values(ir: ModelIR, param_values: Mapping, walk_ops, names: Sequence[str]) -> dict:
    """Evaluate each normal/lognormal sigma expression with a back end's `ir.Ops` table.

    param_values: {ParamIR.symbol: backend value} for every param and const."""
    from ..compiler.ir import walk

    out = {}
    for o in ir.observes:
        if o.name in names and o.noise in ("normal", "lognormal"):
            if o.sigma is None:
                raise FitError(f"observe `{o.name}`: {o.noise} noise without a sigma")
            try:
                out[o.name] = walk(o.sigma, param_values, walk_ops)
            except KeyError as e:
                raise FitError(f"observe `{o.name}`: its sigma may use only params and consts ({e})") from None
    return out


def rmse_by_observe(dataset: Dataset, predictions: Sequence[Mapping]) -> dict:
    out = {}
    for name in dataset.observed_names:
        sq, n = 0.0, 0
        for series, pred in zip(dataset.series, predictions):
            y = series.observed[name]
            ok = np.isfinite(y)
            sq += float(np.sum((np.asarray(pred[name], dtype=float)[ok] - y[ok]) ** 2))
            n += int(ok.sum())
        out[name] = math.sqrt(sq / n) if n else None
    return out


# ---------------------------------------------------------------- results
@dataclass
class FitResult:
    """What a fit found. `params`: every param and const (declared units), estimated ones fitted.
    `stderr`: approximate standard errors of the estimated params (None where the data cannot
    determine them). `weights`: {neural name: flat float64 vector}."""

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

    def to_json(self) -> dict:
        from .weights import weights_to_json

        return {
            "model": self.model,
            "backend": self.backend,
            "params": {k: float(v) for k, v in self.params.items()},
            "estimated": list(self.estimated),
            "units": dict(self.units),
            "loss": float(self.loss),
            "metrics": _jsonable(self.metrics),
            "stderr": {k: (None if v is None else float(v)) for k, v in self.stderr.items()},
            "weights": weights_to_json(self.weights),
            "n_observations": int(self.n_observations),
            "seconds": round(float(self.seconds), 3),
            "warnings": list(self.warnings),
        }

    def save(self, path) -> Path:
        """Write FIT.json (plain JSON, weights as lists; never pickle)."""
        path = Path(path)
        path.write_text(json.dumps(self.to_json(), indent=2, allow_nan=False) + "\n")
        return path


def _jsonable(x):
    if isinstance(x, dict):
        return {k: _jsonable(v) for k, v in x.items()}
    if x is None:
        return None
    if isinstance(x, (float, np.floating)):
        return float(x) if np.isfinite(x) else None
    return x


def load_fit(path) -> dict:
    """{"params": {name: float}, "weights": {name: np.ndarray}} from a FIT.json (FitError if unusable)."""
    from .weights import weights_from_fit_entry

    try:
        data = json.loads(Path(path).read_text())
    except OSError as e:
        raise FitError(f"{path}: cannot read the fit file ({e.strerror or e})") from None
    except ValueError as e:
        raise FitError(f"{path}: not a JSON fit file ({e})") from None
    params = data.get("params") if isinstance(data, dict) else None
    if not isinstance(params, dict):
        raise FitError(f"{path}: expected a JSON object with a \"params\" object")
    clean = {}
    for k, v in params.items():
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise FitError(f"{path}: params.{k} is not a finite number: {v!r}")
        clean[str(k)] = float(v)
    weights = {}
    if data.get("weights"):
        try:
            weights = weights_from_fit_entry(data["weights"], path)
        except DataError as e:
            raise FitError(str(e)) from None
    return {"params": clean, "weights": weights}


def format_report(result: FitResult) -> str:
    """A short human summary: params with standard errors and units, loss, RMSE per observe."""
    lines = [f"fit of {result.model} ({result.backend}, {result.n_observations} observations, "
             f"{result.seconds:.1f} s)", f"  loss (negative log-likelihood): {result.loss:.6g}"]
    for name in result.estimated:
        se = result.stderr.get(name)
        se_text = f" ± {se:.3g}" if se is not None else " (not determined)"
        unit = result.units.get(name) or ""
        lines.append(f"  {name:<12} = {result.params[name]:.6g}{se_text} {unit}".rstrip())
    for name, v in result.metrics.get("rmse", {}).items():
        if v is not None:
            lines.append(f"  rmse {name}: {v:.4g}")
    for name, v in (result.metrics.get("holdout_rmse") or {}).items():
        if v is not None:
            lines.append(f"  hold-out rmse {name}: {v:.4g}")
    for nname, w in result.weights.items():
        lines.append(f"  neural {nname}: {len(w)} weights")
    return "\n".join(lines)


# ---------------------------------------------------------------- starts, bounds, diagnostics
def _scale(p: ParamIR) -> float:
    """A typical magnitude for a param, so optimisers see numbers near 1."""
    for v in (p.default, p.hi, p.lo):
        if np.isfinite(v) and v != 0:
            return abs(float(v))
    return 1.0


def start_points(params: Sequence[ParamIR], starts: int, seed: int = 0) -> np.ndarray:
    """(starts, n) starting values: the defaults first, then a Latin hypercube within the bounds
    (log-uniform for positive ranges spanning more than a decade; around the default, within a
    decade, for an open side)."""
    n = len(params)
    defaults = np.array([p.default for p in params], dtype=float)
    if starts <= 1 or n == 0:
        return defaults[None, :]
    from scipy.stats import qmc

    u = qmc.LatinHypercube(d=n, seed=seed).random(starts - 1)
    points = np.empty_like(u)
    for j, p in enumerate(params):
        lo, hi, d = float(p.lo), float(p.hi), float(p.default)
        if not np.isfinite(lo) or not np.isfinite(hi):
            if d > 0 and (lo >= 0 or not np.isfinite(lo)):
                lo2, hi2 = (max(d / 10, lo) if np.isfinite(lo) else d / 10), min(d * 10, hi)
            else:
                width = max(1.0, abs(d))
                lo2, hi2 = max(d - width, lo), min(d + width, hi)
            lo, hi = lo2, hi2
        if lo > 0 and hi / lo > 10:
            points[:, j] = np.exp(np.log(lo) + u[:, j] * (np.log(hi) - np.log(lo)))
        else:
            points[:, j] = lo + u[:, j] * (hi - lo)
    return np.vstack([defaults, points])


def bound_warnings(params: Sequence[ParamIR], values: Mapping) -> list[str]:
    out = []
    for p in params:
        v = values[p.name]
        for side, b in (("lower", p.lo), ("upper", p.hi)):
            if np.isfinite(b) and abs(v - b) <= 1e-6 * max(1.0, abs(b)) + 1e-9 * abs(p.hi - p.lo if
                                                                                    np.isfinite(p.hi - p.lo) else 0):
                out.append(f"param `{p.name}` ended on its {side} bound {b:g} [{p.unit}]; the data may "
                           "prefer a value outside the declared range")
    return out


def finite_difference_hessian(grad: Callable[[np.ndarray], np.ndarray], x: np.ndarray,
                              scale: np.ndarray) -> np.ndarray:
    """Central differences of an exact gradient; symmetrised. Steps are relative to `scale`."""
    n = x.size
    H = np.empty((n, n))
    for i in range(n):
        h = 1e-5 * scale[i]
        e = np.zeros(n)
        e[i] = h
        H[:, i] = (np.asarray(grad(x + e)) - np.asarray(grad(x - e))) / (2 * h)
    return 0.5 * (H + H.T)


def standard_errors(H: np.ndarray, names: Sequence[str], values: np.ndarray, loss: float,
                    n_obs: int, least_squares_only: bool) -> tuple[dict, list[str]]:
    """Standard errors from the Hessian of the NLL (inverse observed information), and warnings
    for params the data cannot determine. With least squares only, the residual variance scales
    the covariance (the loss is then 0.5 * SSR, not a likelihood)."""
    stderr = {name: None for name in names}
    warnings = []
    if len(names) == 0:
        return stderr, warnings
    if not np.all(np.isfinite(H)):
        return stderr, ["the loss curvature could not be computed; no standard errors"]
    # relative to the params' own size, so that the test below does not depend on units
    D = np.diag(np.maximum(np.abs(values), 1e-12))
    Hs = D @ H @ D
    eig, vec = np.linalg.eigh(Hs)
    top = max(float(np.max(np.abs(eig))), 1e-300)
    weak = eig <= 1e-9 * top
    if np.any(weak):
        for k in np.flatnonzero(weak):
            involved = [names[j] for j in np.argsort(-np.abs(vec[:, k]))[:3] if abs(vec[:, k][j]) > 0.3]
            warnings.append("the data cannot determine " + ", ".join(f"`{n}`" for n in involved)
                            + " (singular or indefinite curvature of the loss)")
    ok = ~weak
    cov_s = (vec[:, ok] / eig[ok]) @ vec[:, ok].T
    cov = D @ cov_s @ D
    if least_squares_only:
        dof = max(n_obs - len(names), 1)
        cov = cov * (2.0 * loss / dof)
    weak_params = set()
    for k in np.flatnonzero(weak):
        weak_params |= {j for j in range(len(names)) if abs(vec[j, k]) > 0.3}
    for j, name in enumerate(names):
        var = cov[j, j]
        if j in weak_params or not np.isfinite(var) or var < 0:
            continue
        se = math.sqrt(var)
        stderr[name] = se
        if se > 10 * max(abs(values[j]), 1e-12):
            warnings.append(f"param `{name}` is poorly determined by the data (standard error "
                            f"{se:.3g} against a value of {values[j]:.3g})")
    return stderr, warnings


# ---------------------------------------------------------------- entry point
def fit(ir: ModelIR, data, backend: str = "casadi", starts: int = 1, holdout: float = 0.0,
        seed: int = 0, rtol: float = 1e-8, atol: float = 1e-8, max_iter: Optional[int] = None,
        progress: bool = True, file: Optional[str] = None, **options) -> FitResult:
    """Fit the estimated params (ParamIR.estimate) and neural weights of `ir` to `data` (a CSV
    path, a DataFrame or a Dataset). holdout: fraction of each series' last points kept out of
    the fit (validation; the Torch fit also stops early on it). See the module docstring."""
    t0 = time.perf_counter()
    if starts < 1:
        raise ValueError(f"starts must be at least 1, got {starts}")
    if not 0.0 <= holdout < 1.0:  # also refuses NaN
        raise ValueError(f"holdout must be in [0, 1), got {holdout}")
    from .binding import load_bound  # E601-E603 before any work starts (TASKS.md §5)

    dataset = load_bound(ir, data, file=file)
    if not dataset.observed_names:
        raise FitError(f"{dataset.file}: no observed column to fit")
    if dataset.n_observations == 0:
        raise FitError(f"{dataset.file}: every observed value is missing; nothing to fit")
    train, valid = dataset.split(holdout) if holdout > 0 else (dataset, None)
    if backend == "casadi":
        raw = _fit_casadi(ir, train, starts, seed, rtol, atol, max_iter or 500, progress, **options)
    elif backend == "torch":
        raw = _fit_torch(ir, train, valid, starts, seed, rtol, atol, max_iter, progress, **options)
    else:
        raise ValueError(f"unknown backend `{backend}`: choose casadi or torch")
    return _finish(ir, dataset, train, valid, raw, backend, rtol, atol, time.perf_counter() - t0)


@dataclass
class _RawFit:
    """What a back end hands back: fitted values and a gradient of the training loss."""

    values: dict  # every param and const, declared units
    weights: dict  # {neural name: np.ndarray}
    loss: float
    grad: Optional[Callable]  # natural-unit estimated params -> gradient of the loss (weights fixed)
    simulator: object
    warnings: list = field(default_factory=list)
    hessian: Optional[Callable] = None  # natural-unit Hessian of the loss in the estimated params


def _finish(ir, dataset, train, valid, raw: _RawFit, backend, rtol, atol, seconds) -> FitResult:
    est = [p for p in ir.params if p.estimate]
    names = [p.name for p in est]
    x = np.array([raw.values[n] for n in names], dtype=float)
    warnings = list(dataset.warnings) + list(raw.warnings) + bound_warnings(est, raw.values)
    if not names and not ir.neurals:
        warnings.append("nothing to estimate: the model has no `param` (only consts) and no neural "
                        "term; the loss is that of the declared values")
    stderr = {n: None for n in names}
    if raw.grad is not None and names:
        try:
            H = (raw.hessian(x) if raw.hessian is not None
                 else finite_difference_hessian(raw.grad, x, np.maximum(np.abs(x), 1e-8)))
            lsq_only = all(o.noise == "lsq" for o in ir.observes if o.name in train.observed_names)
            stderr, w = standard_errors(H, names, x, raw.loss, train.n_observations, lsq_only)
            warnings += w
        except (SimulationError, RuntimeError) as e:
            warnings.append(f"no standard errors: the loss curvature could not be computed ({e})")
    metrics = {"rmse": rmse_by_observe(train, _predict(raw.simulator, train, raw.values, raw.weights,
                                                        rtol, atol))}
    holdout_after = {}
    if valid is not None and valid.series:
        preds = _predict(raw.simulator, valid, raw.values, raw.weights, rtol, atol)
        metrics["holdout_rmse"] = rmse_by_observe(valid, preds)
        metrics["holdout_loss"] = float(_numpy_nll(ir, valid, preds, raw.values))
        holdout_after = {k: float((full.times[t.n_points - 1] + full.times[t.n_points]) / 2)
                         for k, (full, t) in enumerate(zip(dataset.series, train.series))
                         if t.times is not None and t.n_points < full.n_points}
    return FitResult(model=ir.name, backend=backend, params=dict(raw.values), loss=float(raw.loss),
                     metrics=metrics, stderr=stderr, warnings=_unique(warnings), weights=raw.weights,
                     units={p.name: p.unit for p in ir.params}, estimated=names,
                     n_observations=train.n_observations, seconds=seconds, dataset=dataset,
                     holdout_after=holdout_after)


def _unique(items):
    return list(dict.fromkeys(items))


def _predict(simulator, dataset: Dataset, values, weights, rtol, atol) -> list[dict]:
    """Numeric predictions of every observed quantity per series, with the given params."""
    out = []
    for s in dataset.series:
        if dataset.static:
            res = simulator.simulate(None, params=values, inputs=s.input_frame(), weights=weights or None)
        else:
            res = simulator.simulate(s.times, params=values, inputs=s.inputs or None, rtol=rtol,
                                     atol=atol, weights=weights or None)
        out.append({name: np.asarray(res[name], dtype=float) for name in dataset.observed_names})
    return out


def array_walk_ops(xp, const: Callable):
    """`ir.Ops` for an array module with numpy's names (numpy itself, or torch): for sigma
    expressions evaluated outside a compiled simulator."""
    from ..compiler.ir import Ops

    return Ops(const=const, add=lambda a, b: a + b, mul=lambda a, b: a * b, pow=lambda a, b: a ** b,
               funcs={"exp": xp.exp, "log": xp.log, "sin": xp.sin, "cos": xp.cos,
                      "tan": xp.tan, "tanh": xp.tanh, "abs": xp.abs, "sqrt": xp.sqrt,
                      "min": xp.minimum, "max": xp.maximum},
               where=lambda c, a, b: xp.where(c > 0.5, a, b) if not isinstance(c, bool) else (a if c else b),
               compare={"<": lambda a, b: (a < b) * 1.0, "<=": lambda a, b: (a <= b) * 1.0,
                        ">": lambda a, b: (a > b) * 1.0, ">=": lambda a, b: (a >= b) * 1.0,
                        "==": lambda a, b: (a == b) * 1.0, "!=": lambda a, b: (a != b) * 1.0},
               and_=lambda a, b: a * b, or_=lambda a, b: xp.maximum(a, b), not_=lambda a: 1.0 - a)


def _numpy_nll(ir, dataset, predictions, values) -> float:
    """The NLL in numpy (no neural penalty): hold-out loss and a cross-check of the back ends."""
    env = {p.symbol: float(values[p.name]) for p in ir.params}
    sigmas = sigma_values(ir, env, array_walk_ops(np, float), dataset.observed_names)
    return float(dataset_nll(ir, dataset, predictions, sigmas, NUMPY_OPS))


def nll(ir: ModelIR, data, params: Optional[Mapping] = None, weights=None, backend: str = "casadi",
        rtol: float = 1e-8, atol: float = 1e-8) -> float:
    """The negative log-likelihood of `data` at `params` (defaults elsewhere), neural penalties not
    included: what a fit minimises, for checks and profiles."""
    dataset = data if isinstance(data, Dataset) else load_data(data, ir)
    values = {p.name: p.default for p in ir.params}
    values.update(params or {})
    sim = _compile(ir, backend, rtol, atol)
    return _numpy_nll(ir, dataset, _predict(sim, dataset, values, weights, rtol, atol), values)


def _compile(ir, backend, rtol, atol):
    from ..backends import compile_ir

    return compile_ir(ir, backend, **({"rtol": rtol, "atol": atol} if backend == "casadi" else {}))


def _progress(total, desc, progress):
    import sys

    from tqdm import tqdm

    return tqdm(total=total, desc=desc, disable=not (progress and sys.stderr.isatty()), leave=False)


# ---------------------------------------------------------------- CasADi: single shooting + IPOPT
def _casadi_neural_outputs(ir: ModelIR):
    """A CasADi function (t, x, P, W) -> every neural call's output (one row per call site), and
    the neural name of each row: the penalty's "neural output along the trajectory"."""
    import casadi as ca
    import sympy as sp

    from ..backends.casadi_backend import CASADI_OPS
    from ..backends.neural import casadi_mlp
    from ..compiler.ir import walk

    calls = []
    for e in list(ir.derivatives.values()) + [l.expr for l in ir.lets] + [o.expr for o in ir.observes]:
        for c in sorted(e.atoms(sp.core.function.AppliedUndef), key=str):
            if c not in calls:
                calls.append(c)
    by_name = {n.name: n for n in ir.neurals}
    n_w = sum(n.n_weights for n in ir.neurals)
    offsets, k = {}, 0
    for n in ir.neurals:
        offsets[n.name] = slice(k, k + n.n_weights)
        k += n.n_weights
    t, x = ca.SX.sym("t"), ca.SX.sym("x", len(ir.states))
    P, W = ca.SX.sym("P", len(ir.runtime_symbols())), ca.SX.sym("W", n_w)
    env = {s: P[i] for i, s in enumerate(ir.runtime_symbols())}
    env.update({s.symbol: x[i] for i, s in enumerate(ir.states)})
    env[ir.time] = t

    def neural(name, args):
        return casadi_mlp(by_name[name], args, W[offsets[name]])

    memo: dict = {}
    for let in ir.lets:
        env[let.symbol] = walk(let.expr, env, CASADI_OPS, neural, memo)
    outs = [walk(c, env, CASADI_OPS, neural, memo) for c in calls]
    fn = ca.Function("neural_outputs", [t, x, P, W], [ca.vertcat(*outs)])
    return fn, [str(c.func) for c in calls]


@dataclass
class _CasadiProblem:
    """The training loss as a CasADi graph of the scaled estimated params `xs` (param = xs * scale)
    and all neural weights `w`, single shooting through the simulator's trajectory functions."""

    sim: object
    est: list
    scale: np.ndarray
    xs: object
    w: object
    loss: object

    def hessian(self) -> Callable:
        """(natural-unit params, weight vector) -> exact Hessian of the loss in the params."""
        import casadi as ca

        fn = ca.Function("loss_hessian", [self.xs, self.w], [ca.hessian(self.loss, self.xs)[0]])
        return lambda x, w: np.asarray(fn(x / self.scale, w), dtype=float) / np.outer(self.scale, self.scale)

    def gradient(self) -> Callable:
        import casadi as ca

        fn = ca.Function("loss_gradient", [self.xs, self.w], [ca.gradient(self.loss, self.xs)])
        return lambda x, w: np.asarray(fn(x / self.scale, w), dtype=float).ravel() / self.scale


def _casadi_problem(ir, train: Dataset, rtol, atol, sim=None) -> _CasadiProblem:
    import casadi as ca

    from ..backends.casadi_backend import CASADI_OPS, compile_casadi
    from ..backends.protocol import segment_tail

    sim = sim or compile_casadi(ir, rtol=rtol, atol=atol)
    est = [p for p in ir.params if p.estimate]
    scale = np.array([_scale(p) for p in est])
    xs = ca.MX.sym("x", len(est))
    w = ca.MX.sym("w", sim.n_weights)
    col = {p.name: j for j, p in enumerate(est)}
    p_full = ca.vertcat(*[xs[col[p.name]] * scale[col[p.name]] if p.estimate else ca.MX(p.default)
                          for p in ir.params]) if ir.params else ca.MX(0, 1)
    names = train.observed_names
    obs_row = {o.name: i for i, o in enumerate(ir.observes)}
    neural_fn, call_names = _casadi_neural_outputs(ir) if ir.neurals else (None, [])
    neural_sq = {n.name: 0 for n in ir.neurals}
    neural_count = {n.name: 0 for n in ir.neurals}
    predictions = []
    for s in train.series:
        if train.static:
            U = np.array([s.inputs[u.name] for u in ir.inputs]).reshape(len(ir.inputs), s.n_points)
            Y = sim._static.map(s.n_points)(U, p_full, w)[len(ir.lets):, :]  # rows: lets, observes
        else:
            proto = sim.protocol(s.times, inputs=s.inputs or None)
            Y, Z = sim.trajectory_function(proto, rtol, atol)(p_full, w)
            if neural_fn is not None:
                # the runtime vector per output time: fitted params, then that segment's flags/inputs
                tails = np.zeros((len(ir.runtime_symbols()) - len(ir.params), len(s.times)))
                for seg in proto.segments:
                    tails[:, seg.out_idx] = segment_tail(seg)[:, None]
                Pcols = ca.vertcat(ca.repmat(p_full, 1, len(s.times)), ca.DM(tails))
                outs = neural_fn.map(len(s.times))(ca.DM(s.times).T, Z[:len(ir.states), :], Pcols, w)
                for r, name in enumerate(call_names):
                    neural_sq[name] = neural_sq[name] + ca.sumsqr(outs[r, :])
                    neural_count[name] += len(s.times)
        predictions.append({n: Y[obs_row[n], :].T for n in names})

    # sigma expressions see only params and consts: an SX function of the param vector
    P_sx = ca.SX.sym("p", len(ir.params))
    sig = sigma_values(ir, {p.symbol: P_sx[i] for i, p in enumerate(ir.params)}, CASADI_OPS, names)
    sig_names = list(sig)
    sig_fn = ca.Function("sigmas", [P_sx], [ca.vertcat(*[sig[n] for n in sig_names])])
    sig_mx = sig_fn(p_full)
    sigmas = {n: sig_mx[i] for i, n in enumerate(sig_names)}

    loss = dataset_nll(ir, train, predictions, sigmas, casadi_loss_ops())
    for n in ir.neurals:
        if n.penalty and neural_count[n.name]:
            loss = loss + n.penalty * neural_sq[n.name] / neural_count[n.name]
    return _CasadiProblem(sim, est, scale, xs, w, loss)


# ---------------------------------------------------------------- CasADi: least squares with sensitivities
def _total_derivative(expr, x, S, S2, theta):
    """d expr / d theta along the trajectory: expr may use the states x, their sensitivities S
    (nx x n) and theta; S2 (nx*n x n, None for first order) holds dS/dtheta."""
    import casadi as ca

    d = ca.jacobian(expr, x) @ S + ca.jacobian(expr, theta)
    if S2 is not None:
        d = d + ca.jacobian(expr, ca.vec(S)) @ S2
    return d


class _Sensitivities:
    """Observes and their first (and second) derivatives in the dynamic params, from one plain
    CVODES solve of the ODE augmented with its sensitivity equations. For a few params this is
    several times cheaper than CasADi's integrator derivatives (no sensitivity machinery, no
    adjoints), which is what makes the least-squares fit fast."""

    def __init__(self, sim, columns: Sequence[int], order: int, rtol, atol):
        import casadi as ca

        t, x, P, W, ode = sim._ode
        nx, n = x.shape[0], len(columns)
        theta = ca.vertcat(*[P[c] for c in columns])
        S = ca.SX.sym("S", nx, n)
        S2 = ca.SX.sym("S2", nx * n, n) if order == 2 else None
        dS = _total_derivative(ode, x, S, None, theta)
        states, rates = [x, ca.vec(S)], [ode, ca.vec(dS)]
        if S2 is not None:
            states.append(ca.vec(S2))
            rates.append(ca.vec(_total_derivative(ca.vec(dS), x, S, S2, theta)))
        self.sim, self.order, self.nx, self.n, self.rtol, self.atol = sim, order, nx, n, rtol, atol
        self.dae = {"x": ca.vertcat(*states), "p": ca.vertcat(P, W), "t": t, "ode": ca.vertcat(*rates)}
        x0 = sim._init(t, P, W)  # SX in, SX out
        S0 = ca.jacobian(x0, theta)
        init = [x0, ca.vec(S0)] + ([ca.vec(ca.jacobian(ca.vec(S0), theta))] if S2 is not None else [])
        self.init = ca.Function("init_sens", [t, P], [ca.vertcat(*init)])
        a = ca.vertcat(*states)
        y = sim._outputs(t, x, P, W)[len(sim.ir.lets):]
        dy = _total_derivative(y, x, S, None, theta)
        outs = [y, ca.vec(dy)]
        if S2 is not None:
            outs.append(ca.vec(_total_derivative(ca.vec(dy), x, S, S2, theta)))
        self.outputs = ca.Function("outputs_sens", [t, a, P, W], [ca.vertcat(*outs)])
        self.n_obs = y.shape[0]
        self._integrators = {}

    def __call__(self, protocol, p: np.ndarray):
        """(y [n_obs x n_t], dy [n_t x n_obs x n], d2y [n_t x n_obs x n x n] or None) at the
        output times of a one-segment protocol without doses; p: values of ir.params."""
        import casadi as ca

        from ..backends.protocol import segment_tail

        seg = protocol.segments[0]
        times = protocol.output_times
        P = np.r_[p, segment_tail(seg)]
        a0 = np.asarray(self.init(seg.t0, P), dtype=float).ravel()
        later = times > seg.t0
        grid = np.unique(np.r_[times[later], seg.t1])
        A = np.repeat(a0[:, None], len(times), axis=1)
        if grid.size and seg.t1 > seg.t0:
            key = grid.tobytes() + np.float64(seg.t0).tobytes()
            F = self._integrators.get(key)
            if F is None:
                F = self._integrators[key] = ca.integrator(
                    "F_sens", self.sim.method, self.dae, float(seg.t0), grid.tolist(),
                    self.sim._integrator_opts(self.rtol, self.atol))
            X = np.asarray(F(x0=a0, p=P)["xf"], dtype=float)
            A[:, later] = X[:, np.searchsorted(grid, times[later])]
        if not np.all(np.isfinite(A)):
            raise RuntimeError("the simulation produced non-finite values")
        out = np.asarray(self.outputs.map(len(times))(ca.DM(times).T, A, P, np.zeros(0)), dtype=float)
        m, n = self.n_obs, self.n
        y = out[:m]
        dy = out[m:m + m * n].T.reshape(len(times), n, m).transpose(0, 2, 1)
        d2y = (out[m + m * n:].T.reshape(len(times), n, n, m).transpose(0, 3, 2, 1)
               if self.order == 2 else None)
        return y, dy, d2y


def _least_squares_plan(ir: ModelIR, train: Dataset, sim):
    """When the loss is a sum of squares with nothing but sigmas besides: every observed observe
    least squares, normal or lognormal, each sigma either fixed (no estimated param) or one
    estimated param used nowhere else (then profiled out analytically), no networks, and every
    series one segment without doses. Returns (protocols, {observe: sigma param or float or
    None}) or None."""
    if ir.neurals or train.static or not train.series:
        return None
    est = {p.symbol: p for p in ir.params if p.estimate}
    used = set()
    for expr in (list(ir.derivatives.values()) + [l.expr for l in ir.lets] + [o.expr for o in ir.observes]
                 + [s.init for s in ir.states]):
        used |= expr.free_symbols
    sigma = {}
    for o in ir.observes:
        if o.name not in train.observed_names:
            continue
        if o.noise == "lsq":
            sigma[o.name] = None
        elif o.noise in ("normal", "lognormal") and o.sigma is not None:
            free = o.sigma.free_symbols & set(est)
            if not free:
                env = {p.symbol: float(p.default) for p in ir.params}
                sigma[o.name] = float(sigma_values(ir, env, array_walk_ops(np, float), [o.name])[o.name])
            elif o.sigma in est and o.sigma not in used:
                sigma[o.name] = est[o.sigma].name
            else:
                return None
        else:
            return None
    protocols = [sim.protocol(s.times, inputs=s.inputs or None) for s in train.series]
    if any(len(pr.segments) != 1 or pr.segments[0].doses for pr in protocols):
        return None
    return protocols, sigma


class _LeastSquaresProblem:
    """NLL = sum over sigma groups g of S_g / (2 s_g^2) + n_g log s_g + const, S_g the sum of
    squared residuals (log residuals for lognormal); least squares: s_g = 1 without the log.
    With the sigmas fixed the dynamic params are a weighted least-squares problem (scipy's
    trust-region reflective with exact Jacobians); a sigma param then has its closed form."""

    def __init__(self, ir, train: Dataset, sim, protocols, sigma, rtol, atol):
        self.ir, self.train, self.sim, self.protocols, self.sigma = ir, train, sim, protocols, sigma
        self.est = [p for p in ir.params if p.estimate]
        sigma_params = {v for v in sigma.values() if isinstance(v, str)}
        self.dyn = [j for j, p in enumerate(self.est) if p.name not in sigma_params]
        self.sigma_est = [j for j, p in enumerate(self.est) if p.name in sigma_params]
        index = {p.name: i for i, p in enumerate(ir.params)}
        columns = [index[self.est[j].name] for j in self.dyn]
        self.rtol, self.atol, self.columns = rtol, atol, columns
        self.first = _Sensitivities(sim, columns, 1, rtol, atol)
        self.obs_row = {o.name: i for i, o in enumerate(ir.observes)}
        self.noise = {o.name: o.noise for o in ir.observes}
        self.groups = list(dict.fromkeys(self._group(n) for n in sigma))

    def _group(self, name):
        s = self.sigma[name]
        return ("lsq",) if s is None else (("param", s) if isinstance(s, str) else ("fixed", s))

    def residuals(self, values: Mapping, order: int = 1, sens: Optional[_Sensitivities] = None):
        """{group: (r, dr, d2r or None)} of the unweighted residuals, and predictions per series."""
        p = self.sim.param_vector(values)
        blocks = {g: ([], [], []) for g in self.groups}
        predictions = []
        for s, proto in zip(self.train.series, self.protocols):
            y, dy, d2y = (sens or self.first)(proto, p)
            predictions.append({n: y[self.obs_row[n]] for n in self.train.observed_names})
            for name in self.sigma:
                data = s.observed[name]
                idx = np.flatnonzero(np.isfinite(data))
                f, df = y[self.obs_row[name], idx], dy[idx, self.obs_row[name], :]
                d2f = d2y[idx, self.obs_row[name]] if d2y is not None else None
                if self.noise[name] == "lognormal":
                    r = np.log(f) - np.log(data[idx])
                    if d2f is not None:
                        d2f = d2f / f[:, None, None] - np.einsum("ij,ik->ijk", df, df) / (f ** 2)[:, None, None]
                    df = df / f[:, None]
                else:
                    r = f - data[idx]
                b = blocks[self._group(name)]
                b[0].append(r), b[1].append(df), b[2].append(d2f)
        out = {g: (np.concatenate(r), np.concatenate(dr), np.concatenate(d2r) if order == 2 else None)
               for g, (r, dr, d2r) in blocks.items()}
        return out, predictions

    def sigma_of(self, g, values):
        return 1.0 if g[0] == "lsq" else (values[g[1]] if g[0] == "param" else g[1])

    def nll(self, values, predictions) -> float:
        return _numpy_nll(self.ir, self.train, predictions, values)

    def hessian_and_gradient(self, values):
        """Exact NLL gradient and Hessian in the estimated params (natural units), from
        second-order sensitivities: sum_g (J'J + sum r d2r) / s^2 plus the sigma terms."""
        n_est = len(self.est)
        second = _Sensitivities(self.sim, self.columns, 2, self.rtol, self.atol)
        blocks, _ = self.residuals(values, order=2, sens=second)
        H, g_out = np.zeros((n_est, n_est)), np.zeros(n_est)
        dyn = np.array(self.dyn, dtype=int)
        for g, (r, J, d2r) in blocks.items():
            s = self.sigma_of(g, values)
            Hd = (J.T @ J + np.einsum("i,ijk->jk", r, d2r)) / s ** 2
            H[np.ix_(dyn, dyn)] += Hd
            g_out[dyn] += J.T @ r / s ** 2
            if g[0] == "param":
                k = [p.name for p in self.est].index(g[1])
                n, S = r.size, float(r @ r)
                H[dyn, k] += -2 * (J.T @ r) / s ** 3
                H[k, dyn] = H[dyn, k]
                H[k, k] += 3 * S / s ** 4 - n / s ** 2
                g_out[k] += -S / s ** 3 + n / s
        return g_out, H

    def solve(self, start: np.ndarray, max_nfev: int):
        """Weighted least squares in the dynamic params, then the closed-form sigmas; repeated
        while sigmas and params still move each other (never, with one sigma group)."""
        from scipy.optimize import least_squares

        values = {p.name: float(p.default) for p in self.ir.params}
        values.update({p.name: float(v) for p, v in zip(self.est, start)})
        dyn_params = [self.est[j] for j in self.dyn]
        scale = np.array([_scale(p) for p in dyn_params])
        lo = np.array([p.lo for p in dyn_params]) / scale
        hi = np.array([p.hi for p in dyn_params]) / scale
        cache = {}

        def evaluate(z):
            key = z.tobytes()
            if key not in cache:
                cache.clear()
                trial = dict(values, **{p.name: float(v) for p, v in zip(dyn_params, z * scale)})
                try:
                    blocks, _ = self.residuals(trial)
                except RuntimeError:
                    blocks = None
                cache[key] = blocks
            return cache[key]

        def weights():
            return {g: 1.0 / self.sigma_of(g, values) for g in self.groups}

        def fun(z):
            blocks = evaluate(z)
            if blocks is None:
                return np.full(self.train.n_observations, np.nan)
            w = weights()
            return np.concatenate([blocks[g][0] * w[g] for g in self.groups])

        def jac(z):
            blocks = evaluate(z)
            w = weights()
            return np.concatenate([blocks[g][1] * w[g] for g in self.groups]) * scale

        z = np.clip(np.array([values[p.name] for p in dyn_params]) / scale, lo, hi)
        previous, status = np.inf, 0
        for _ in range(50):
            res = least_squares(fun, z, jac=jac, bounds=(lo, hi), x_scale="jac", method="trf",
                                max_nfev=max_nfev)
            z, status = res.x, res.status
            values.update({p.name: float(v) for p, v in zip(dyn_params, z * scale)})
            blocks, predictions = self.residuals(values)
            for j in self.sigma_est:  # the sigma minimising S/(2 s^2) + n log s, within bounds
                p = self.est[j]
                r = blocks[("param", p.name)][0]
                values[p.name] = float(np.clip(np.sqrt(r @ r / r.size), p.lo, p.hi))
            loss = self.nll(values, predictions)
            if len(self.groups) == 1 or previous - loss <= 1e-10 * max(1.0, abs(loss)):
                break
            previous = loss
        return values, loss, status


def _fit_least_squares(ir, train, sim, plan, starts, seed, rtol, atol, max_iter, progress) -> _RawFit:
    """The sum-of-squares fit (see `_least_squares_plan`) from each start; keeps the best."""
    problem = _LeastSquaresProblem(ir, train, sim, *plan, rtol, atol)
    est = problem.est
    best, failures = None, []
    starts_at = start_points(est, starts, seed)
    bar = _progress(len(starts_at), f"fitting {ir.name}", progress)
    for k, start in enumerate(starts_at):
        try:
            values, loss, status = problem.solve(start, max_iter)
        except (RuntimeError, ValueError) as e:
            failures.append(f"start {k + 1}: {str(e).splitlines()[-1]}")
        else:
            if np.isfinite(loss) and (best is None or loss < best[1]):
                best = (values, loss, status)
        bar.update()
    bar.close()
    if best is None:
        raise FitError(f"the fit of {ir.name} failed from every starting point: " + "; ".join(failures[:3])
                       + ". Check the data units, the params' defaults and bounds")
    values, loss, status = best
    notes = [] if status > 0 else ["the optimiser stopped before converging (evaluation limit); "
                                   "the estimates may be rough"]
    if failures and starts > 1:
        notes.append(f"{len(failures)} of {len(starts_at)} starting points failed")

    def at(x):
        return dict(values, **{p.name: float(v) for p, v in zip(est, x)})

    # exact first and second derivatives, once, at the optimum (standard errors)
    return _RawFit(values, {}, loss, lambda x: problem.hessian_and_gradient(at(x))[0], sim, notes,
                   lambda x: problem.hessian_and_gradient(at(x))[1])


def _fit_casadi(ir, train: Dataset, starts, seed, rtol, atol, max_iter, progress,
                ipopt_options: Optional[dict] = None, train_weights: bool = True,
                weights: Optional[Mapping] = None) -> _RawFit:
    """IPOPT from each start point; keeps the best. train_weights=False holds the neural weights
    at `weights` (default: their initial values) and fits the params only."""
    import casadi as ca

    from ..backends.casadi_backend import compile_casadi

    sim = compile_casadi(ir, rtol=rtol, atol=atol)
    plan = _least_squares_plan(ir, train, sim) if ipopt_options is None else None
    if plan is not None:
        return _fit_least_squares(ir, train, sim, plan, starts, seed, rtol, atol, max_iter, progress)
    prob = _casadi_problem(ir, train, rtol, atol, sim)
    sim, est, scale, xs, w = prob.sim, prob.est, prob.scale, prob.xs, prob.w
    w0 = sim.weight_vector(weights)
    n_free_w = sim.n_weights if train_weights else 0
    # The exact Hessian (second-order sensitivities through CVODES) is cheap for a few params and
    # makes IPOPT take sensible first steps; with network weights L-BFGS is the affordable choice.
    exact = n_free_w == 0
    opts = {"ipopt.print_level": 0, "ipopt.sb": "yes", "print_time": False, "show_eval_warnings": False,
            "ipopt.hessian_approximation": "exact" if exact else "limited-memory",
            "ipopt.max_iter": int(max_iter), "ipopt.tol": 1e-6,
            # integration error limits how small the gradient can get: accept a stalled optimum
            "ipopt.acceptable_tol": 1e-4, "ipopt.acceptable_iter": 5}
    opts.update(ipopt_options or {})
    if train_weights:
        nlp = {"x": ca.vertcat(xs, w), "f": prob.loss}
    else:
        nlp = {"x": xs, "p": w, "f": prob.loss}
    solver = ca.nlpsol("fit", "ipopt", nlp, opts)
    lbx = np.r_[[p.lo for p in est] / scale, np.full(n_free_w, -np.inf)]
    ubx = np.r_[[p.hi for p in est] / scale, np.full(n_free_w, np.inf)]

    best, notes, failures = None, [], []
    starts_at = start_points(est, starts, seed)
    bar = _progress(len(starts_at), f"fitting {ir.name}", progress)
    for k, start in enumerate(starts_at):
        x0 = np.clip(start / scale, lbx[:len(est)], ubx[:len(est)])
        try:
            if train_weights:
                sol = solver(x0=np.r_[x0, w0], lbx=lbx, ubx=ubx)
            else:
                sol = solver(x0=x0, lbx=lbx, ubx=ubx, p=w0)
        except RuntimeError as e:
            failures.append(f"start {k + 1}: {str(e).splitlines()[-1]}")
            bar.update()
            continue
        stats = solver.stats()
        f = float(sol["f"])
        status = stats.get("return_status", "")
        if not np.isfinite(f) or status in ("Invalid_Number_Detected", "Error_In_Step_Computation",
                                            "Restoration_Failed", "Infeasible_Problem_Detected"):
            failures.append(f"start {k + 1}: IPOPT {status}")
        elif best is None or f < best[0]:
            best = (f, np.asarray(sol["x"], dtype=float).ravel(), status)
        bar.update()
    bar.close()
    if best is None:
        raise FitError(f"the fit of {ir.name} failed from every starting point: " + "; ".join(failures[:3])
                       + (" ..." if len(failures) > 3 else "")
                       + ". Check the data units, the params' defaults and bounds")
    f, z_opt, status = best
    if status not in ("Solve_Succeeded", "Solved_To_Acceptable_Level"):
        notes.append(f"the optimiser stopped before converging ({status}); the estimates may be rough")
    if failures and starts > 1:
        notes.append(f"{len(failures)} of {len(starts_at)} starting points failed")
    x_opt = z_opt[:len(est)]
    w_opt = z_opt[len(est):] if train_weights else w0
    values = {p.name: float(p.default) for p in ir.params}
    values.update({p.name: float(x_opt[j] * scale[j]) for j, p in enumerate(est)})
    weights_out = {n.name: np.array(w_opt[sim.weight_slices[n.name]]) for n in ir.neurals}
    grad, hess = prob.gradient(), prob.hessian()
    return _RawFit(values, weights_out, f, lambda x: grad(x, w_opt), sim, notes,
                   lambda x: hess(x, w_opt))


# ---------------------------------------------------------------- Torch: Adam then L-BFGS
class _BoundTransform:
    """Unconstrained variables u <-> params within their bounds, smoothly:
    two finite bounds: a sigmoid (in log space for positive ranges wider than a decade);
    one finite bound: a softplus away from it; none: a plain scale."""

    def __init__(self, params: Sequence[ParamIR]):
        self.params = list(params)
        self.scale = np.array([_scale(p) for p in params])

    @staticmethod
    def _log_range(p):
        return np.isfinite(p.lo) and np.isfinite(p.hi) and p.lo > 0 and p.hi / p.lo > 10

    def to_params(self, u):
        import torch

        out = []
        for j, p in enumerate(self.params):
            uj = u[..., j]
            if np.isfinite(p.lo) and np.isfinite(p.hi):
                if self._log_range(p):
                    lo, hi = math.log(p.lo), math.log(p.hi)
                    out.append(torch.exp(lo + (hi - lo) * torch.sigmoid(uj)))
                else:
                    out.append(p.lo + (p.hi - p.lo) * torch.sigmoid(uj))
            elif np.isfinite(p.lo):
                out.append(p.lo + self.scale[j] * torch.nn.functional.softplus(uj))
            elif np.isfinite(p.hi):
                out.append(p.hi - self.scale[j] * torch.nn.functional.softplus(uj))
            else:
                out.append(self.scale[j] * uj)
        return torch.stack(out, dim=-1) if out else u

    def to_unconstrained(self, x: np.ndarray) -> np.ndarray:
        u = np.empty(len(self.params))
        for j, p in enumerate(self.params):
            if np.isfinite(p.lo) and np.isfinite(p.hi):
                if self._log_range(p):
                    f = (math.log(x[j]) - math.log(p.lo)) / (math.log(p.hi) - math.log(p.lo))
                else:
                    f = (x[j] - p.lo) / (p.hi - p.lo)
                f = min(max(f, 1e-6), 1 - 1e-6)
                u[j] = math.log(f / (1 - f))
            elif np.isfinite(p.lo) or np.isfinite(p.hi):
                d = max(abs(x[j] - (p.lo if np.isfinite(p.lo) else p.hi)) / self.scale[j], 1e-6)
                u[j] = d + math.log(-math.expm1(-d))  # inverse softplus, overflow-free
            else:
                u[j] = x[j] / self.scale[j]
        return u


class _TorchObjective:
    """The training loss of a subset of series as a function of (params, weights), in torch."""

    def __init__(self, ir, sim, dataset: Dataset, rtol, atol):
        import torch

        self.ir, self.sim, self.dataset = ir, sim, dataset
        self.rtol, self.atol = rtol, atol
        self.est_index = [i for i, p in enumerate(ir.params) if p.estimate]
        self.fixed = torch.tensor([p.default for p in ir.params], dtype=torch.float64)
        self.protocols = (None if dataset.static else
                          [build_protocol_for(ir, s) for s in dataset.series])
        self.ops = torch_loss_ops()
        self.walk_ops = array_walk_ops(torch, lambda v: torch.tensor(float(v), dtype=torch.float64))

    def param_row(self, x):
        """(1, n_params): estimated params from x, consts fixed."""
        import torch

        row = self.fixed.clone()
        if self.est_index:
            row = row.index_put((torch.tensor(self.est_index),), x)
        return row.unsqueeze(0)

    def __call__(self, x, weights: Mapping, subset: Optional[Sequence[int]] = None, rtol=None):
        from dataclasses import replace

        from ..backends.torch_backend import NEURAL_KEY

        rtol = self.rtol if rtol is None else rtol
        subset = range(len(self.dataset.series)) if subset is None else subset
        P = self.param_row(x)
        preds, series = [], []
        sq = {n.name: 0.0 for n in self.ir.neurals}
        count = {n.name: 0 for n in self.ir.neurals}
        for k in subset:
            s = self.dataset.series[k]
            series.append(s)
            if self.dataset.static:
                inputs = {u: self.ops.const(v) for u, v in s.inputs.items()}
                out = self.sim.static_outputs(inputs, P, weights)
            else:
                out = self.sim.trajectory(self.protocols[k], P, weights, rtol, self.atol)
                for n in self.ir.neurals:
                    values = out[NEURAL_KEY.format(n.name)]
                    sq[n.name] = sq[n.name] + (values ** 2).sum()
                    count[n.name] += values.numel()
            preds.append({name: out[name][0] for name in self.dataset.observed_names})
        env = {p.symbol: P[0, i] for i, p in enumerate(self.ir.params)}
        sigmas = sigma_values(self.ir, env, self.walk_ops, self.dataset.observed_names)
        total = dataset_nll(self.ir, replace(self.dataset, series=series), preds, sigmas, self.ops)
        for n in self.ir.neurals:
            if n.penalty and count[n.name]:
                total = total + n.penalty * sq[n.name] / count[n.name]
        return total


def build_protocol_for(ir, series):
    from ..backends.protocol import build_protocol

    return build_protocol(ir, series.times, inputs=series.inputs or None)


def _fit_torch(ir, train, valid, starts, seed, rtol, atol, max_iter, progress, lr: float = 0.05,
               weight_lr: float = 0.01, lbfgs_iter: int = 50, batch_series: int = 8,
               validate_every: int = 10, patience: int = 5, adam_rtol: float = 1e-5,
               lbfgs_rtol: Optional[float] = None, warm_start: bool = True) -> _RawFit:
    """Adam (mini-batches of series; early stopping on the hold-out) then L-BFGS (all series).

    A hybrid model whose networks all start at zero (`init = zero`) starts as its mechanistic
    part: with warm_start its params are first fitted alone by CasADi (seconds), so the slow
    stochastic phase is spent on what the networks add."""
    import torch

    from ..backends.torch_backend import compile_torch

    torch.manual_seed(seed)
    sim = compile_torch(ir)
    est = [p for p in ir.params if p.estimate]
    transform = _BoundTransform(est)
    objective = _TorchObjective(ir, sim, train, rtol, atol)
    validation = _TorchObjective(ir, sim, valid, rtol, atol) if valid is not None and valid.series else None
    epochs = max_iter if max_iter is not None else (30 if ir.neurals else 50)
    # the search phases need no tighter solves than these; the final loss uses `rtol`
    # (hybrid models: the networks' own error dwarfs a 1e-6 solve; mechanistic ones get `rtol`)
    if lbfgs_rtol is None:
        lbfgs_rtol = 1e-6 if ir.neurals else rtol
    adam_rtol, lbfgs_rtol = max(rtol, adam_rtol), max(rtol, lbfgs_rtol)
    rng = np.random.default_rng(seed)
    n_series = len(train.series)
    notes: list[str] = []

    def run_start(x0):
        u = torch.tensor(transform.to_unconstrained(x0), dtype=torch.float64, requires_grad=True)
        W = {n.name: torch.tensor(n.initial_weights(seed), dtype=torch.float64, requires_grad=True)
             for n in ir.neurals}
        groups = [{"params": [u], "lr": lr}]
        if W:
            groups.append({"params": list(W.values()), "lr": weight_lr})
        adam = torch.optim.Adam(groups)
        best_val, best_state, stale = math.inf, None, 0
        bar = _progress(epochs, f"fitting {ir.name} (adam)", progress)
        for epoch in range(epochs):
            order = rng.permutation(n_series)
            for b in range(0, n_series, batch_series):
                adam.zero_grad()
                loss = objective(transform.to_params(u), W, order[b:b + batch_series], rtol=adam_rtol)
                loss.backward()
                adam.step()
            bar.update()
            bar.set_postfix(loss=f"{float(loss.detach()):.4g}")
            if validation is not None and (epoch + 1) % validate_every == 0:
                with torch.no_grad():
                    v = float(validation(transform.to_params(u), W, rtol=adam_rtol))
                if v < best_val - 1e-9 * abs(best_val):
                    best_val, stale = v, 0
                    best_state = (u.detach().clone(), {k: w.detach().clone() for k, w in W.items()})
                else:
                    stale += 1
                    if stale >= patience:
                        break
        bar.close()
        if best_state is not None:
            with torch.no_grad():
                u.copy_(best_state[0])
                for k, w in W.items():
                    w.copy_(best_state[1][k])
        # L-BFGS on every series with the full tolerance; kept only if the hold-out agrees
        variables = [u, *W.values()]
        saved = [v.detach().clone() for v in variables]
        lbfgs = torch.optim.LBFGS(variables, lr=1.0, max_iter=lbfgs_iter, line_search_fn="strong_wolfe",
                                  tolerance_grad=1e-9, tolerance_change=1e-12, history_size=20)

        def closure():
            lbfgs.zero_grad()
            value = objective(transform.to_params(u), W, rtol=lbfgs_rtol)
            value.backward()
            return value

        try:
            lbfgs.step(closure)
        except SimulationError as e:
            notes.append(f"L-BFGS stopped early: {e}")
            with torch.no_grad():
                for v, old in zip(variables, saved):
                    v.copy_(old)
        if validation is not None:
            with torch.no_grad():
                v = float(validation(transform.to_params(u), W))
                if v > best_val and best_state is not None:
                    for var, old in zip(variables, saved):
                        var.copy_(old)
        with torch.no_grad():
            final = float(objective(transform.to_params(u), W))
        x = transform.to_params(u).detach().numpy().astype(float)
        return final, x, {k: w.detach().numpy().astype(float).copy() for k, w in W.items()}

    points = start_points(est, starts, seed)
    if warm_start and ir.neurals and all(n.init == "zero" for n in ir.neurals):
        pre = _fit_casadi(ir, train, starts, seed, rtol, atol, 200, False, train_weights=False)
        points = np.array([[pre.values[p.name] for p in est]])
        notes += [f"mechanistic warm start: {m}" for m in pre.warnings]
    best, failures = None, []
    for k, x0 in enumerate(points):
        try:
            result = run_start(x0)
        except SimulationError as e:
            failures.append(f"start {k + 1}: {e}")
            continue
        if np.isfinite(result[0]) and (best is None or result[0] < best[0]):
            best = result
    if best is None:
        raise FitError(f"the fit of {ir.name} failed from every starting point: " + "; ".join(failures[:2]))
    if failures:
        notes.append(f"{len(failures)} starting point(s) failed")
    loss, x, weights = best
    values = {p.name: float(p.default) for p in ir.params}
    values.update({p.name: float(x[j]) for j, p in enumerate(est)})

    def grad(x_natural):
        xt = torch.tensor(x_natural, dtype=torch.float64, requires_grad=True)
        Wt = {k: torch.tensor(w) for k, w in weights.items()}
        value = objective(xt, Wt)
        (g,) = torch.autograd.grad(value, xt)
        return g.numpy()

    # Both back ends compute the same loss; CasADi's exact Hessian is far cheaper than
    # differentiating the Torch solver twice, so the standard errors come from there.
    hessian = None
    try:
        prob = _casadi_problem(ir, train, rtol, atol)
        w_vec = prob.sim.weight_vector(weights)
        exact = prob.hessian()
        hessian = lambda x: exact(x, w_vec)  # noqa: E731
    except (ImportError, RuntimeError) as e:
        notes.append(f"standard errors from finite differences (CasADi unavailable: {e})")
    return _RawFit(values, weights, loss, grad, sim, notes, hessian)
