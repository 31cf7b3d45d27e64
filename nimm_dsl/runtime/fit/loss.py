"""The fitting loss (LANGUAGE.md §7, docs/language.md §7), written once for every array library.

The loss is the negative log-likelihood of every observed (non-NaN) data point of every series
under its observe's noise model, plus the neural penalties:

    normal(sigma):    0.5 * ((y - f) / sigma)^2 + log(sigma) + 0.5 * log(2 pi)
    lognormal(sigma): 0.5 * ((log y - log f) / sigma)^2 + log(sigma) + log(y) + 0.5 * log(2 pi)
    poisson:          f - y * log(f) + lgamma(y + 1)
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

HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)
NOISE_KINDS = ("normal", "lognormal", "poisson", "lsq")


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


def sigma_values(ir: ModelIR, param_values: Mapping, walk_ops: Ops, names: Sequence[str]) -> dict:
    """Evaluate each normal/lognormal sigma expression with a back end's `ir.Ops` table.

    param_values: {ParamIR.symbol: backend value} for every param and const."""
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
    """The sigma of every normal/lognormal observe in `names`, as floats, at param `values`."""
    env = {p.symbol: float(values[p.name]) for p in ir.params}
    with np.errstate(all="ignore"):
        return {k: float(v) for k, v in sigma_values(ir, env, array_walk_ops(np, float), names).items()}


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
            res = simulator.simulate(s.times, params=values, inputs=s.inputs or None, rtol=rtol,
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
