"""The dispersion of negative binomial observes: the Cox–Reid adjusted profile likelihood.

The maximum-likelihood dispersion k of a negative binomial is biased upward in small samples
when the mean params are estimated from the same data: the fitted means follow the data, the
residual spread looks smaller than it is and k (variance mean + mean^2 / k) comes out too large.
On issue #13's SEIR study (15 weekly counts, beta and rho fitted) the median ML k was 1.51 times
the truth; with the means known it is 1.11. Cox and Reid (1987) adjust the profile likelihood of
such "nuisance-free" params by half the log-determinant of the mean params' information:

    APL(k) = loglik(y; mu, k) - 0.5 * log det(J' W(k) J),   J = d mu / d(mean params),
    W = diag(1 / (mu + mu^2 / k)) for negbinomial points (the Fisher weight of the mean),

which is what edgeR and DESeq2 use for negative binomial dispersions. On the SEIR study the
adjusted median is 1.27 k (docs/language.md §11).

A param is *dispersion-only* when it is estimated and appears in the dispersion of an observed
negbinomial observe and nowhere else (dynamics, lets, observes, initial values, doses, other
noise options); those are estimated by the adjusted profile, every other param by maximum
likelihood given them. The fit alternates: the mean params at fixed dispersion (any fitting path,
through the fast least-squares one where it applies), then the dispersion by maximising APL with
the means held (J by central differences of the predictions, in numpy: the same step for both
back ends), until the dispersion moves less than `TOLERANCE` (relative) or `MAX_ROUNDS` rounds.
Maximum likelihood (`dispersion="ml"`) runs the same alternation with the plain likelihood in
the dispersion step: it converges to the joint optimum quickly because the mean params and the
dispersion are orthogonal, and keeps the means on the fast path. The dispersion's standard error
comes from the curvature of APL (or the likelihood) at its maximum; in the covariance it is
uncorrelated with the mean params (the negative binomial's mean and dispersion are orthogonal:
their expected cross information is zero).
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Mapping, Optional, Sequence

import numpy as np

from ...compiler.ir import ModelIR, ParamIR
from ..data import Dataset
from .loss import numpy_nll, numpy_sigmas, predict

# how a fit estimates dispersion-only params (fit(..., dispersion=...), `nimm fit --dispersion`)
DISPERSION_ESTIMATORS = ("adjusted", "ml")
# ... and how FIT.json names the estimator used
ESTIMATOR_NAMES = {"adjusted": "cox-reid", "ml": "ml"}
TOLERANCE = 1e-6  # relative change of the dispersion that ends the alternation
MAX_ROUNDS = 8
STEP = 1e-4  # relative step of the central differences behind J
WIDEST = 1e10  # an unbounded dispersion is searched below this (k -> inf is the Poisson limit)


def dispersion_only(ir: ModelIR, train: Dataset) -> list[ParamIR]:
    """The estimated params that appear in the dispersion of an observed negbinomial observe and
    in nothing else the fit sees (see the module docstring); per-series params never are."""
    observed = set(train.observed_names)
    in_dispersion, elsewhere = set(), set()
    for o in ir.observes:
        elsewhere |= o.expr.free_symbols
        if o.sigma is not None:
            elsewhere |= o.sigma.free_symbols
        if o.dispersion is not None:
            (in_dispersion if o.noise == "negbinomial" and o.name in observed else elsewhere).update(
                o.dispersion.free_symbols)
    for expr in (list(ir.derivatives.values()) + [x.expr for x in ir.lets] + [s.init for s in ir.states]
                 + [s.expr for s in ir.sets] + [d.amount for d in ir.doses]
                 + [d.amount for sc in ir.scenarios.values() for d in sc.doses]):
        elsewhere |= expr.free_symbols
    return [p for p in ir.params if p.estimate and not p.per_series
            and p.symbol in in_dispersion and p.symbol not in elsewhere]


def hold(ir: ModelIR, values: Mapping, held: Sequence[str]) -> ModelIR:
    """`ir` with the params `held` fixed at `values` and every other estimated param starting
    from `values` (its default), inside its bounds."""
    params = [replace(p, estimate=False, default=float(values[p.name])) if p.name in held
              else replace(p, default=float(np.clip(values[p.name], p.lo, p.hi))) if p.estimate and p.name in values
              else p for p in ir.params]
    return replace(ir, params=params)


@dataclass
class AdjustedProfile:
    """APL of the dispersion params `names` with the mean params held: the data, the predictions
    `mu` and their Jacobian in the mean params, per series and observe. Evaluating it is numpy
    only (no simulation)."""

    ir: ModelIR
    train: Dataset
    values: dict  # every param at the current estimate
    names: list  # the dispersion-only params
    predictions: list  # per series {observe: mu}
    jacobians: list  # per series {observe: (n_times, n_mean) d mu / d mean params}
    adjusted: bool = True  # False: the plain profile likelihood (maximum likelihood for the dispersion)

    def nll(self, values: Mapping) -> float:
        """The negative log-likelihood at `values` with the predictions held."""
        return numpy_nll(self.ir, self.train, self.predictions, values)

    def information(self, values: Mapping) -> np.ndarray:
        """J' W J: the Fisher information of the mean params at the held predictions, every observed
        point weighted by its noise model's information on its mean (1 / variance; least squares
        as a unit-variance normal)."""
        names = self.train.observed_names
        noise = {o.name: o.noise for o in self.ir.observes}
        options = numpy_sigmas(self.ir, values, names)
        n_mean = next((J.shape[1] for jac in self.jacobians for J in jac.values()), 0)
        info = np.zeros((n_mean, n_mean))
        for series, pred, jac in zip(self.train.series, self.predictions, self.jacobians):
            for name in names:
                ok = np.isfinite(series.observed[name])
                mu, J = np.asarray(pred[name], dtype=float)[ok], jac[name][ok]
                w = _fisher_weight(noise[name], mu, options.get(name))
                info += J.T @ (w[:, None] * J)
        return info

    def __call__(self, values: Mapping) -> float:
        """-APL at `values` (the negative, for minimisers). Directions the data do not determine
        (a zero eigenvalue of J' W J) are left out of the determinant, so that a mean param the
        data cannot fix does not make the adjustment infinite."""
        nll = self.nll(values)
        if not self.adjusted:
            return nll
        with np.errstate(all="ignore"):
            info = self.information(values)
        if info.size == 0:
            return nll
        if not np.all(np.isfinite(info)):
            return np.inf
        eig = np.linalg.eigvalsh(info)
        kept = eig[eig > 1e-12 * max(float(eig.max()), 0.0)]
        return nll + 0.5 * float(np.sum(np.log(kept))) if kept.size else nll


def _fisher_weight(noise: str, mu: np.ndarray, option) -> np.ndarray:
    """The Fisher information per point on its mean: 1 / Var(y) for counts and normal errors."""
    with np.errstate(all="ignore"):
        if callable(option):  # a sigma that uses the observe's own prediction
            option = option(mu)
        if noise == "negbinomial":
            return 1.0 / (mu + mu ** 2 / option)
        if noise == "poisson":
            return 1.0 / mu
        if noise == "normal":
            return np.broadcast_to(1.0 / np.asarray(option, dtype=float) ** 2, mu.shape)
        if noise == "lognormal":
            return 1.0 / (np.asarray(option, dtype=float) * mu) ** 2
        return np.ones_like(mu)  # least squares


def adjusted_profile(ir: ModelIR, train: Dataset, simulator, values: Mapping, weights: Optional[Mapping],
                     mean: Sequence[ParamIR], names: Sequence[str], rtol: float, atol: float,
                     adjusted: bool = True) -> AdjustedProfile:
    """APL around the estimate `values`: predictions there and their central-difference
    Jacobian in the `mean` params (steps STEP relative, at least STEP of the param's scale).
    adjusted=False: the plain likelihood with the means held (no Jacobian needed)."""
    from .starts import param_scale

    values = dict(values)
    predictions = predict(simulator, train, values, weights, rtol, atol)
    columns = []
    for p in (mean if adjusted else []):
        h = STEP * max(abs(values[p.name]), STEP * param_scale(p))
        up = predict(simulator, train, dict(values, **{p.name: values[p.name] + h}), weights, rtol, atol)
        down = predict(simulator, train, dict(values, **{p.name: values[p.name] - h}), weights, rtol, atol)
        columns.append([{n: (u[n] - d[n]) / (2 * h) for n in u} for u, d in zip(up, down)])
    jacobians = [{n: np.stack([col[k][n] for col in columns], axis=1) if columns else np.zeros((len(pred[n]), 0))
                  for n in pred} for k, pred in enumerate(predictions)]
    return AdjustedProfile(ir, train, values, list(names), predictions, jacobians, adjusted)


def _search_bounds(p: ParamIR) -> tuple[float, float, bool]:
    """(lo, hi, in_logs): a positive param is searched in logs, below WIDEST when unbounded."""
    lo, hi = float(p.lo), min(float(p.hi), WIDEST)
    if lo >= 0:
        return np.log(max(lo, 1e-12)), np.log(hi), True
    return lo, hi, False


def maximise(profile: AdjustedProfile, params: Sequence[ParamIR]) -> dict:
    """The dispersion-only params maximising APL (in logs where positive), within their bounds:
    a bounded Brent search for one, L-BFGS-B for several."""
    from scipy.optimize import minimize, minimize_scalar

    bounds = [_search_bounds(p) for p in params]

    def at(z):
        return dict(profile.values, **{p.name: float(np.exp(v) if logs else v)
                                       for p, v, (_, _, logs) in zip(params, np.atleast_1d(z), bounds)})

    if len(params) == 1:
        lo, hi, _ = bounds[0]
        res = minimize_scalar(lambda z: profile(at(z)), bounds=(lo, hi), method="bounded",
                              options={"xatol": 1e-10})
        return {p: at(res.x)[p] for p in profile.names}
    z0 = [np.clip(np.log(profile.values[p.name]) if logs else profile.values[p.name], lo, hi)
          for p, (lo, hi, logs) in zip(params, bounds)]
    res = minimize(lambda z: profile(at(z)), z0, method="L-BFGS-B", bounds=[(lo, hi) for lo, hi, _ in bounds],
                   options={"ftol": 1e-15, "gtol": 1e-10})
    return {p: at(res.x)[p] for p in profile.names}


def curvature(profile: AdjustedProfile, names: Sequence[str]) -> np.ndarray:
    """The Hessian of -APL in the dispersion params (natural units) at `profile.values`, by
    central differences (steps 1e-3 relative): what their standard errors invert."""
    x = np.array([profile.values[n] for n in names], dtype=float)
    h = 1e-3 * np.maximum(np.abs(x), 1e-8)

    def f(z):
        return profile(dict(profile.values, **dict(zip(names, z))))

    n, f0 = x.size, f(x)
    H = np.empty((n, n))
    for i in range(n):
        for j in range(i, n):
            if i == j:
                e = np.zeros(n)
                e[i] = h[i]
                H[i, i] = (f(x + e) - 2 * f0 + f(x - e)) / h[i] ** 2
            else:
                ei, ej = np.zeros(n), np.zeros(n)
                ei[i], ej[j] = h[i], h[j]
                H[i, j] = H[j, i] = (f(x + ei + ej) - f(x + ei - ej) - f(x - ei + ej) + f(x - ei - ej)) / (4 * h[i] * h[j])
    return H
