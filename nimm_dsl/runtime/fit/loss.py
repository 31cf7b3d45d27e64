"""The fitting loss (LANGUAGE.md §7, docs/language.md §7), written once for every array library.

The loss is the negative log-likelihood of every observed (non-NaN) data point of every series
under its observe's noise model, plus the neural penalties:

    normal(sigma):    0.5 * ((y - f) / sigma)^2 + log(sigma) + 0.5 * log(2 pi)
    lognormal(sigma): 0.5 * ((log y - log f) / sigma)^2 + log(sigma) + log(y) + 0.5 * log(2 pi)
    poisson:          f - y * log(f) + lgamma(y + 1)
    negbinomial(k):   lgamma(k) - lgamma(y + k) + lgamma(y + 1) - k log k + (k + y) log(k + f) - y log f
                      (mean f, variance f + f^2 / k; scipy.stats.nbinom with n = k, p = k / (k + f))
    A normal sigma may use the observe's own prediction (`sigma = a + b * C_obs`): then it is
    one value per data point and the log term is the sum of their logs.
    least squares:    0.5 * (y - f)^2                         (an observe without `~`)
    neural penalty:   penalty * mean(output^2) over the data times of every series

`observation_nll` and `dataset_nll` are written against a tiny `LossOps` table, so numpy
(reference values, diagnosis, tests), CasADi and Torch compute the same numbers.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Mapping, Optional, Sequence

import numpy as np

from ...compiler.ir import ModelIR, Ops, walk
from ...errors import FitError
from ..data import Dataset
from ..series_params import series_values

HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)
NOISE_KINDS = ("normal", "lognormal", "poisson", "negbinomial", "lsq")


@dataclass(frozen=True)
class LossOps:
    """The few array operations the loss needs, spelled for one array library.

    const(np.ndarray) -> a backend constant; take(vector, index array) -> the selected entries
    as a vector the data constant combines with elementwise; log, sum: elementwise log, total."""

    const: Callable
    take: Callable
    log: Callable
    sum: Callable
    lgamma: Callable


def stirling_lgamma(x, log: Callable):
    """log Gamma(x) for x > 0 from elementary operations (CasADi has no lgamma): shift the
    argument to z = x + 6 and use Stirling's series to 1/z^7; the error is below 1e-10."""
    z = x + 6.0
    shift = log(x) + log(x + 1.0) + log(x + 2.0) + log(x + 3.0) + log(x + 4.0) + log(x + 5.0)
    inv = 1.0 / z
    inv2 = inv * inv
    series = inv * (1.0 / 12 - inv2 * (1.0 / 360 - inv2 * (1.0 / 1260 - inv2 / 1680)))
    return (z - 0.5) * log(z) - z + HALF_LOG_2PI + series - shift


def _numpy_lgamma(x):
    from scipy.special import gammaln

    return gammaln(x)


NUMPY_OPS = LossOps(const=lambda a: np.asarray(a, dtype=float), take=lambda v, i: np.asarray(v)[i],
                    log=np.log, sum=np.sum, lgamma=_numpy_lgamma)


def casadi_loss_ops() -> LossOps:
    import casadi as ca

    return LossOps(const=lambda a: ca.DM(np.asarray(a, dtype=float)),
                   take=lambda v, i: ca.vec(v)[[int(k) for k in i]],
                   log=ca.log, sum=lambda v: ca.sum1(ca.vec(v)), lgamma=lambda x: stirling_lgamma(x, ca.log))


def torch_loss_ops() -> LossOps:
    import torch

    return LossOps(const=lambda a: torch.as_tensor(np.asarray(a, dtype=float), dtype=torch.float64),
                   take=lambda v, i: v.reshape(-1)[torch.as_tensor(np.asarray(i), dtype=torch.long)],
                   log=torch.log, sum=torch.sum, lgamma=torch.lgamma)


def observation_nll(noise: str, y: np.ndarray, pred, sigma, ops: LossOps = NUMPY_OPS):
    """NLL of data `y` (numpy, all finite) given predictions `pred` (same length, backend values).

    sigma: the noise option (see `noise_values`): the sigma of normal/lognormal, the dispersion of
    negbinomial, ignored otherwise; a scalar (backend value or float), or a function of the
    predictions giving one value per point (a sigma that uses the observe's own name). Data-only
    constants are computed in numpy; the backend object is always the left operand."""
    y = np.asarray(y, dtype=float)
    n = y.size
    if n == 0:
        return 0.0
    if callable(sigma):
        sigma = sigma(pred)
        log_sigma = ops.sum(ops.log(sigma))
    elif sigma is not None:
        log_sigma = n * ops.log(sigma)
    if noise == "lsq":
        r = pred - ops.const(y)
        return 0.5 * ops.sum(r * r)
    if noise == "normal":
        r = (pred - ops.const(y)) / sigma
        return 0.5 * ops.sum(r * r) + log_sigma + n * HALF_LOG_2PI
    if noise == "lognormal":
        r = (ops.log(pred) - ops.const(np.log(y))) / sigma
        return 0.5 * ops.sum(r * r) + log_sigma + float(np.sum(np.log(y))) + n * HALF_LOG_2PI
    if noise == "poisson":
        from scipy.special import gammaln

        # Zero counts contribute just the rate: y*log(f) is 0 there even where f is 0 (an
        # epidemic's first day), and writing it out would give 0*log(0) = NaN.
        positive = np.flatnonzero(y > 0)
        loss = ops.sum(pred)
        if positive.size:
            loss = loss - ops.sum(ops.log(ops.take(pred, positive)) * ops.const(y[positive]))
        return loss + float(np.sum(gammaln(y + 1.0)))
    if noise == "negbinomial":
        from scipy.special import gammaln

        k = sigma
        # zero counts: the y terms vanish (y log f would be 0 * log 0 where f is 0)
        positive = np.flatnonzero(y > 0)
        loss = (n * (ops.lgamma(k) - k * ops.log(k)) + ops.sum(ops.log(pred + k) * (ops.const(y) + k))
                - ops.sum(ops.lgamma(ops.const(y) + k)))
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


def sigma_values(ir: ModelIR, param_values: Mapping, walk_ops: Ops, names: Sequence[str],
                 per_point: Optional[Callable] = None) -> dict:
    """Evaluate each observe's noise option (the sigma of normal/lognormal, the dispersion of
    negbinomial) with a back end's `ir.Ops` table.

    param_values: {ParamIR.symbol: backend value} for every param and const. An option that uses
    the observe's own name becomes a function of the predictions (one value per point):
    `per_point(observe, expr)` builds it where the back end needs its own (CasADi), else the
    expression is walked with the predictions in place of the observe's symbol."""
    out = {}
    for o in ir.observes:
        expr = noise_option(o)
        if o.name not in names or o.noise not in NOISE_OPTION:
            continue
        if expr is None:
            raise FitError(f"observe `{o.name}`: {o.noise} noise without a {NOISE_OPTION[o.noise]}")
        if o.symbol in expr.free_symbols:
            out[o.name] = (per_point(o, expr) if per_point is not None else
                           lambda pred, expr=expr, o=o: walk(expr, {**param_values, o.symbol: pred}, walk_ops, memo={}))
            continue
        try:
            out[o.name] = walk(expr, param_values, walk_ops)
        except KeyError as e:
            raise FitError(f"observe `{o.name}`: its {NOISE_OPTION[o.noise]} may use only params and consts ({e})") from None
    return out


NOISE_OPTION = {"normal": "sigma", "lognormal": "sigma", "negbinomial": "dispersion"}  # noise -> its option


def noise_option(o) -> Optional[object]:
    """The expression of an observe's noise option (sigma or dispersion), None without one."""
    return o.dispersion if o.noise == "negbinomial" else o.sigma


def array_walk_ops(xp, const: Callable) -> Ops:
    """`ir.Ops` for an array module with numpy's names (numpy itself, or torch): for sigma
    expressions evaluated outside a compiled simulator."""
    return Ops(const=const, add=lambda a, b: a + b, mul=lambda a, b: a * b, pow=lambda a, b: a ** b,
               funcs={"exp": xp.exp, "log": xp.log, "sin": xp.sin, "cos": xp.cos,
                      "tan": xp.tan, "tanh": xp.tanh, "abs": xp.abs, "sqrt": xp.sqrt,
                      "min": xp.minimum, "max": xp.maximum},
               where=lambda c, a, b: xp.where(c > 0.5, a, b) if not isinstance(c, bool) else (a if c else b),
               compare={"<": lambda a, b: (a < b) * 1.0, "<=": lambda a, b: (a <= b) * 1.0,
                        ">": lambda a, b: (a > b) * 1.0, ">=": lambda a, b: (a >= b) * 1.0,
                        "==": lambda a, b: (a == b) * 1.0, "!=": lambda a, b: (a != b) * 1.0},
               and_=lambda a, b: a * b, or_=lambda a, b: xp.maximum(a, b), not_=lambda a: 1.0 - a)


def numpy_sigmas(ir: ModelIR, values: Mapping, names: Sequence[str]) -> dict:
    """The noise option of every observe in `names` at param `values`: a float, or a function of
    the predictions where it uses the observe's own name."""
    env = {p.symbol: float(values[p.name]) for p in ir.params}
    with np.errstate(all="ignore"):
        return {k: v if callable(v) else float(v)
                for k, v in sigma_values(ir, env, array_walk_ops(np, float), names).items()}


def numpy_nll(ir: ModelIR, dataset: Dataset, predictions: Sequence[Mapping], values: Mapping) -> float:
    """The NLL in numpy (no neural penalty): hold-out loss and a cross-check of the back ends."""
    sigmas = numpy_sigmas(ir, values, dataset.observed_names)
    with np.errstate(all="ignore"):  # a non-finite loss is the caller's to report
        return float(dataset_nll(ir, dataset, predictions, sigmas, NUMPY_OPS))


def predict(simulator, dataset: Dataset, values: Mapping, weights: Optional[Mapping], rtol: float,
            atol: float) -> list[dict]:
    """Numeric predictions of every observed quantity per series, through a simulator's public
    `simulate` (either back end)."""
    out = []
    for s in dataset.series:
        if dataset.static:
            res = simulator.simulate(None, params=values, inputs=s.input_frame(), weights=weights or None)
        else:
            res = simulator.simulate(s.times, params=series_values(simulator.ir, values, s), **s.run_options(), rtol=rtol,
                                     atol=atol, weights=weights or None)
        out.append({name: np.asarray(res[name], dtype=float) for name in dataset.observed_names})
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
