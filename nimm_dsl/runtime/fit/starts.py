"""Where fits start (defaults, then a Latin hypercube inside the bounds) and what the curvature of
the loss says about the estimates: standard errors, and the labels "at a bound", "not determined
by the data" and "poorly determined", worded once for the report and the warnings."""
from __future__ import annotations

import math
from typing import Callable, Mapping, Sequence

import numpy as np

from ...compiler.ir import ParamIR
from .result import AT_LOWER, AT_UPPER, NOT_AT_MINIMUM, POORLY_DETERMINED, UNDETERMINED

RESCUE_SEED_OFFSET = 7919  # rescue points come from their own hypercube, not a copy of the starts'


def param_scale(p: ParamIR) -> float:
    """A typical magnitude for a param, so optimisers see numbers near 1."""
    for v in (p.default, p.hi, p.lo):
        if np.isfinite(v) and v != 0:
            return abs(float(v))
    return 1.0


def _hypercube(params: Sequence[ParamIR], n: int, seed: int) -> np.ndarray:
    """(n, len(params)) Latin-hypercube points within the bounds: log-uniform for positive
    ranges spanning more than a decade; around the default, within a decade, for an open side."""
    from scipy.stats import qmc

    u = qmc.LatinHypercube(d=len(params), seed=seed).random(n)
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
    return points


def start_points(params: Sequence[ParamIR], starts: int, seed: int = 0) -> np.ndarray:
    """(starts, n) starting values: the defaults first, then a Latin hypercube within the bounds."""
    defaults = np.array([p.default for p in params], dtype=float)
    if starts <= 1 or not params:
        return defaults[None, :]
    return np.vstack([defaults, _hypercube(params, starts - 1, seed)])


def rescue_points(params: Sequence[ParamIR], n: int, seed: int = 0) -> np.ndarray:
    """(n, len(params)) further starting values inside the bounds, for when every requested
    start failed (e.g. the model blows up at its defaults)."""
    if not params:
        return np.zeros((0, 0))
    return _hypercube(params, n, seed + RESCUE_SEED_OFFSET)


def bound_side(p: ParamIR, value: float):
    """AT_LOWER or AT_UPPER when `value` sits on that finite bound of `p`, else None."""
    width = abs(p.hi - p.lo) if np.isfinite(p.hi - p.lo) else 0.0
    for label, b in ((AT_LOWER, p.lo), (AT_UPPER, p.hi)):
        if np.isfinite(b) and abs(value - b) <= 1e-6 * max(1.0, abs(b)) + 1e-9 * width:
            return label
    return None


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
                    n_obs: int, least_squares_only: bool) -> tuple[dict, list[list[str]], np.ndarray, list[list[str]]]:
    """Standard errors and their covariance matrix from the Hessian of the NLL (inverse observed
    information), the groups of params along which the loss is flat (the data cannot determine
    them) and the groups along which it still falls (negative curvature: a fit that stopped
    before a minimum, whatever the data); both have standard error None and NaN rows and
    columns in the covariance. With least squares only, the residual variance scales the covariance (the loss is
    then 0.5 * SSR, not a likelihood). A Hessian that is not finite gives no standard errors, no
    groups and an all-NaN covariance. The one place where curvature becomes uncertainty: the
    report, FIT.json's `covariance` and `correlation`, and the prediction bands all start here."""
    stderr = {name: None for name in names}
    cov_out = np.full((len(names), len(names)), np.nan)
    if len(names) == 0 or not np.all(np.isfinite(H)):
        return stderr, [], cov_out, []
    # relative to the params' own size, so that the test below does not depend on units
    D = np.diag(np.maximum(np.abs(values), 1e-12))
    eig, vec = np.linalg.eigh(D @ H @ D)
    top = max(float(np.max(np.abs(eig))), 1e-300)
    weak = eig <= 1e-9 * top
    groups, falling, weak_params = [], [], set()
    for k in np.flatnonzero(weak):
        involved = [j for j in np.argsort(-np.abs(vec[:, k]))[:3] if abs(vec[j, k]) > 0.3]
        (groups if eig[k] >= -1e-9 * top else falling).append([names[j] for j in involved])
        weak_params |= {j for j in range(len(names)) if abs(vec[j, k]) > 0.3}
    ok = ~weak
    cov = D @ ((vec[:, ok] / eig[ok]) @ vec[:, ok].T) @ D
    if least_squares_only:
        cov = cov * (2.0 * loss / max(n_obs - len(names), 1))
    for j, name in enumerate(names):
        var = cov[j, j]
        if j not in weak_params and np.isfinite(var) and var >= 0:
            stderr[name] = math.sqrt(var)
    determined = [j for j, name in enumerate(names) if stderr[name] is not None]
    cov_out[np.ix_(determined, determined)] = cov[np.ix_(determined, determined)]
    return stderr, groups, cov_out, falling


def correlation(cov: np.ndarray) -> np.ndarray:
    """The correlation matrix of a covariance matrix (NaN where a variance is NaN or zero)."""
    sd = np.sqrt(np.diag(cov))
    with np.errstate(all="ignore"):
        r = cov / np.outer(sd, sd)
    return np.where(np.isfinite(r), np.clip(r, -1.0, 1.0), np.nan)


def param_labels(est: Sequence[ParamIR], values: Mapping, stderr: Mapping,
                 flat_groups: Sequence[Sequence[str]],
                 falling_groups: Sequence[Sequence[str]] = ()) -> tuple[dict, list[str]]:
    """({param: [label, ...]}, warnings) with the same words in both, for every estimated param:
    on a bound (the data may want a value outside the declared range), on a flat direction of
    the loss (not determined), on a direction where it still falls (not at a minimum), or with
    a standard error ten times its value (poorly determined)."""
    labels = {p.name: [] for p in est}
    warnings = []
    for p in est:
        side = bound_side(p, values[p.name])
        if side is not None:
            labels[p.name].append(side)
            bound = p.lo if side == AT_LOWER else p.hi
            warnings.append(f"param `{p.name}` is {side} {bound:g} [{p.unit}]: the data may prefer a "
                            "value outside the declared range; widen the bound if such values are plausible")
    for group in flat_groups:
        for name in group:
            if UNDETERMINED not in labels[name]:
                labels[name].append(UNDETERMINED)
        if len(group) == 1:
            warnings.append(f"param `{group[0]}` is {UNDETERMINED} (the loss is flat in it): fix it "
                            "as a `const`, or add data that depend on it")
        else:
            named = ", ".join(f"`{n}`" for n in group)
            warnings.append(f"params {named} are {UNDETERMINED}: the loss is flat along a combination "
                            "of them, so only that combination is estimated; fix all but one as `const`")
    for group in falling_groups:
        for name in group:
            if NOT_AT_MINIMUM not in labels[name]:
                labels[name].append(NOT_AT_MINIMUM)
        named = ", ".join(f"`{n}`" for n in group)
        warnings.append(f"{'param' if len(group) == 1 else 'params'} {named}: {NOT_AT_MINIMUM}, the loss still "
                        "falls along " + ("it" if len(group) == 1 else "a combination of them")
                        + ", so there is no standard error; let the fit run longer (`--max-iter`, "
                        "`--lbfgs-iter`) or start elsewhere (`--starts`)")
    for p in est:
        se, v = stderr.get(p.name), values[p.name]
        if se is not None and se > 10 * max(abs(v), 1e-12) and UNDETERMINED not in labels[p.name]:
            labels[p.name].append(POORLY_DETERMINED)
            warnings.append(f"param `{p.name}` is {POORLY_DETERMINED} by the data (standard error "
                            f"{se:.3g} against a value of {v:.3g})")
    return labels, warnings
