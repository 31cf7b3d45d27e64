"""Profile likelihood: the loss along one param with the others refitted at each point.

Where the curvature at the estimate (standard errors, covariance) assumes the loss is a bowl, a
profile walks out from the estimate on each side and refits every other estimated param at each
fixed value, warm-started from the neighbouring point. The 95% interval is where the profile
stays within 1.92 (half the 95% quantile of chi-squared with one degree of freedom) of its
minimum; a side along which it never rises that far is "not identifiable from these data".
"""
from __future__ import annotations

from dataclasses import replace
from typing import Optional, Sequence

import numpy as np

from ...compiler.ir import ModelIR, ParamIR
from ...errors import FitError
from ..binding import load_bound
from .dispersion import ESTIMATOR_NAMES, dispersion_only, hold
from .loss import numpy_nll, predict
from .multistart import START_ERRORS, est_params
from .result import FitResult

THRESHOLD_95 = 1.920729410347062  # scipy.stats.chi2.ppf(0.95, 1) / 2
SE_STEP = 0.5  # with a standard error: steps of half of it (the 95% crossing sits near 1.96 of them)
SE_STEPS = 10  # ... out to 5 standard errors
FLAT_FACTOR = 1.6  # without one (a flat direction): geometric steps for a positive param
FLAT_STEPS = 8  # ... out to a factor 43 either way
PAST_THRESHOLD = 1.0  # stop a side once the profile is this far above the threshold


def profile(ir: ModelIR, data, result: FitResult, names: Optional[Sequence[str]] = None,
            backend: Optional[str] = None, holdout: float = 0.0, simulator=None, rtol: float = 1e-8,
            atol: float = 1e-8, max_iter: Optional[int] = None, workers: int = 1) -> dict:
    """{param: {"values", "nll", "ci95", "not_identifiable"}} for each of `names` (default: every
    estimated param) of the fit `result` of `ir` to `data` (the same data and hold-out fraction
    as the fit). Also stored in `result.profiles` (FIT.json `profiles`; docs/fit-json.md).
    Neural weights stay at their fitted values. workers > 1: the params' profiles run in that many
    worker processes at once (CasADi back end, where processes can be forked; each profile is a
    warm-started chain, so one param's points stay in one worker); the result is the same."""
    from .entry import PATHS

    backend = backend or result.backend
    est = {p.name: p for p in est_params(ir)}
    names = list(est) if names is None else list(names)
    unknown = [n for n in names if n not in est]
    if unknown:
        raise FitError(f"cannot profile {', '.join(f'`{n}`' for n in unknown)}: not an estimated param "
                       f"of `{ir.name}` (estimated: {', '.join(est) or 'none'})")
    dataset = load_bound(ir, data)
    train = dataset.split(holdout)[0] if holdout > 0 else dataset
    if simulator is None:
        from ...backends import compile_ir

        simulator = compile_ir(ir, backend, **({"rtol": rtol, "atol": atol} if backend == "casadi" else {}))
    options = {"weights": result.weights} if backend == "casadi" and ir.neurals else {}
    # a dispersion estimated by the adjusted profile (runtime/fit/dispersion.py) stays at its
    # estimate while the mean params are profiled: refitting it by maximum likelihood would
    # profile another estimate (its own profile refits the means, as any param's does)
    held = ([p.name for p in dispersion_only(ir, train)]
            if result.dispersion_estimator == ESTIMATOR_NAMES["adjusted"] else [])

    def refit(name: str, value: float, warm: dict) -> tuple[float, dict]:
        fixed = _fixed(hold(ir, result.params, held) if name not in held else ir, name, value, warm)
        solver = PATHS[backend](fixed, train, None, rtol, atol, max_iter, 0, simulator, **options)
        solver.progress = None
        if not solver.est:  # nothing left to refit
            values = {q.name: q.default for q in fixed.params}
            preds = predict(simulator, train, values, result.weights, rtol, atol)
            return numpy_nll(fixed, train, preds, values), values
        start = np.array([fixed.param(p.name).default for p in solver.est], dtype=float)
        outcome = solver.solve(start)
        return float(outcome.loss), outcome.values

    # least squares is not a likelihood (the loss is 0.5 * SSR): the threshold scales with the
    # residual variance, as the covariance does (starts.standard_errors)
    lsq_only = all(o.noise == "lsq" for o in ir.observes if o.name in train.observed_names)
    rise = THRESHOLD_95 * (2.0 * result.loss / max(train.n_observations - len(est), 1) if lsq_only else 1.0)
    out = _each_in_parallel(names, lambda name: _profile_one(est[name], result, refit, rise),
                            workers if backend == "casadi" else 1)
    result.profiles.update(out)
    return out


_JOB = None  # the function the forked workers run (a closure cannot be sent; forked, it is inherited)


def _run_job(name):
    return _JOB(name)


def _each_in_parallel(names: list, job, workers: int) -> dict:
    """{name: job(name)}, in up to `workers` forked processes when there is more than one name.
    Only param names go to the workers and plain lists and numbers come back."""
    global _JOB
    import multiprocessing

    if workers <= 1 or len(names) <= 1 or "fork" not in multiprocessing.get_all_start_methods():
        return {name: job(name) for name in names}
    from concurrent.futures import ProcessPoolExecutor

    _JOB = job
    try:
        with ProcessPoolExecutor(min(workers, len(names)), mp_context=multiprocessing.get_context("fork")) as pool:
            return dict(zip(names, pool.map(_run_job, names)))
    finally:
        _JOB = None


def _fixed(ir: ModelIR, name: str, value: float, warm: dict) -> ModelIR:
    """`ir` with `name` held at `value` and the other estimated params starting from `warm`."""
    params = [replace(p, estimate=False, default=float(value)) if p.name == name
              else replace(p, default=float(np.clip(warm[p.name], p.lo, p.hi))) if p.estimate else p
              for p in ir.params]
    return replace(ir, params=params)


def _side_points(p: ParamIR, estimate: float, se: Optional[float], direction: int):
    """The fixed values along one side, nearest first, stopping at the declared bound."""
    bound = p.lo if direction < 0 else p.hi
    previous = estimate
    for k in range(1, (SE_STEPS if se else FLAT_STEPS) + 1):
        if se:
            v = estimate + direction * k * SE_STEP * se
        elif estimate > 0 and p.lo >= 0:
            v = estimate * FLAT_FACTOR ** (direction * k)
        else:
            v = estimate + direction * k * 0.5 * max(abs(estimate), 1.0)
        v = float(min(max(v, p.lo), p.hi))
        if v == previous:
            return
        yield v
        previous = v
        if v == bound:
            return


def _profile_one(p: ParamIR, result: FitResult, refit, rise: float) -> dict:
    estimate = float(result.params[p.name])
    se = result.stderr.get(p.name)
    points = {estimate: float(result.loss)}
    for direction in (-1, 1):
        warm = dict(result.params)
        for v in _side_points(p, estimate, se, direction):
            try:
                loss, warm = refit(p.name, v, warm)
            except START_ERRORS:  # a point where the refit fails is left out of the profile
                continue
            if not np.isfinite(loss):
                continue
            points[v] = loss
            if loss - result.loss > rise * (1 + PAST_THRESHOLD / THRESHOLD_95):
                break
    values = np.array(sorted(points))
    nll = np.array([points[v] for v in values])
    best = float(np.min(nll))  # a refit may find a lower loss than the fit itself
    # each side walks outward from the estimate, which belongs to both
    below, above = values <= estimate, values >= estimate
    lo = _crossing(values[below][::-1], nll[below][::-1], best + rise)
    hi = _crossing(values[above], nll[above], best + rise)
    sides = [side for side, c in (("lower", lo), ("upper", hi)) if c is None]
    return {"values": values.tolist(), "nll": nll.tolist(), "ci95": [lo, hi],
            "not_identifiable": sides, "estimate": estimate, "threshold": best + rise}


def _crossing(values: np.ndarray, nll: np.ndarray, level: float) -> Optional[float]:
    """Where the profile (ordered outward from the estimate) first reaches `level`, linearly
    interpolated; None when it never does."""
    for k in range(1, len(values)):
        if nll[k] >= level > nll[k - 1]:
            f = (level - nll[k - 1]) / (nll[k] - nll[k - 1])
            return float(values[k - 1] + f * (values[k] - values[k - 1]))
    return None
