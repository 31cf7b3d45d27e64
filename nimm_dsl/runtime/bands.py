"""Uncertainty bands around a simulation from a fit's covariance (`nimm simulate --bands`).

Params are drawn from a normal distribution around the fitted values with the fit's covariance
(FIT.json `covariance`; draws outside the declared bounds are drawn again), the model is
simulated at each draw, and the band is the central `level` quantile range over the draws:

* states and lets: a confidence band (parameter uncertainty only);
* observes: a prediction interval (parameter uncertainty plus a draw from the observe's noise
  model at each draw's params: normal, lognormal, Poisson, negative binomial; least squares uses
  the fit's RMSE of that observe, corrected for the number of estimated params).

Params the data cannot determine (no covariance) stay at their fitted values, and so do the
neural weights; a draw whose simulation fails is left out.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Mapping, Optional

import numpy as np

from ..compiler.ir import ModelIR
from ..errors import FitError, SimulationError
from .fit.loss import numpy_sigmas
from .fit.result import matrix_array

DEFAULT_DRAWS = 300
BAND_DRAWS_FOR_PLOTS = 200  # enough for shading; plots simulate on a fine grid
REDRAWS = 20  # rounds of drawing again for draws outside the bounds before clipping them


@dataclass
class Uncertainty:
    """What bands need from a fit: the fitted params, the covariance over `names` (the estimated
    params it covers), and per-observe residual scale for least-squares observes."""

    params: dict
    names: list
    covariance: np.ndarray
    lsq_scale: dict

    @classmethod
    def from_fit(cls, fit, ir: ModelIR) -> "Uncertainty":
        """From a FitResult or a FIT.json document (a dict as read from the file)."""
        doc = fit.to_json() if hasattr(fit, "to_json") else fit
        params, cov_doc = doc.get("params") or {}, doc.get("covariance")
        if not isinstance(cov_doc, dict) or not cov_doc:
            raise FitError("the fit file has no `covariance` (written before covariances were saved, or "
                           "nothing was estimated): refit to get bands")
        names = [n for n in cov_doc if n in params]
        try:
            cov = matrix_array(cov_doc, names)
        except (TypeError, ValueError, AttributeError):
            raise FitError("the fit file's `covariance` is not a matrix of numbers") from None
        keep = [j for j in range(len(names)) if np.isfinite(cov[j, j])]  # determined params only
        names = [names[j] for j in keep]
        cov = cov[np.ix_(keep, keep)]
        if cov.size and not (np.all(np.isfinite(cov)) and np.allclose(cov, cov.T, rtol=1e-6, atol=0)
                             and np.linalg.eigvalsh(cov).min() >= -1e-9 * np.abs(cov).max()):
            raise FitError("the fit file's `covariance` is not a covariance matrix (finite, symmetric, "
                           "positive semi-definite)")
        n_obs, p = int(doc.get("n_observations") or 0), len(doc.get("estimated") or names)
        rmse = (doc.get("metrics") or {}).get("rmse") or {}
        correction = np.sqrt(n_obs / (n_obs - p)) if n_obs > p else 1.0
        lsq = {o.name: float(rmse[o.name]) * correction for o in ir.observes
               if o.noise == "lsq" and isinstance(rmse.get(o.name), (int, float))}
        return cls({k: float(v) for k, v in params.items()}, names, cov, lsq)

    def with_values(self, values: Mapping) -> "Uncertainty":
        """The same uncertainty around other values of params it does not cover: a series' own
        values of per-series params (the fit's `params` hold their mean over the series)."""
        return replace(self, params={**self.params, **{k: float(v) for k, v in values.items()}})

    def draws(self, ir: ModelIR, n: int, seed: int = 0) -> list[dict]:
        """`n` param dicts (every param and const): the fitted values with the covariance's params
        drawn around them, inside their declared bounds."""
        rng = np.random.default_rng(seed)
        base = {p.name: self.params.get(p.name, p.default) for p in ir.params}
        if not self.names:
            return [dict(base) for _ in range(n)]
        mean = np.array([base[k] for k in self.names])
        lo = np.array([ir.param(k).lo for k in self.names])
        hi = np.array([ir.param(k).hi for k in self.names])
        x = rng.multivariate_normal(mean, self.covariance, size=n, method="eigh")
        for _ in range(REDRAWS):
            bad = np.flatnonzero(((x < lo) | (x > hi)).any(axis=1))
            if bad.size == 0:
                break
            x[bad] = rng.multivariate_normal(mean, self.covariance, size=bad.size, method="eigh")
        x = np.clip(x, lo, hi)
        return [base | dict(zip(self.names, map(float, row))) for row in x]


def add_noise(ir: ModelIR, name: str, values: np.ndarray, params: Mapping, lsq_scale: Mapping,
              u: float) -> np.ndarray:
    """Observe `name` around its predicted `values` at the quantile `u` (in (0, 1)) of its noise
    model at `params`. One `u` per parameter draw for every time: each time's quantiles are
    those of independent noise, and the band's edges come out smooth instead of jagged."""
    from scipy.stats import nbinom, norm, poisson

    obs = next(o for o in ir.observes if o.name == name)
    f = np.asarray(values, dtype=float)
    if obs.noise in ("poisson", "negbinomial"):
        mean = np.clip(np.nan_to_num(f, nan=0.0), 0, None)
        if obs.noise == "poisson":
            return poisson.ppf(u, mean)
        k = numpy_sigmas(ir, params, [name])[name]  # the dispersion: variance mean + mean^2 / k
        return nbinom.ppf(u, k, k / (k + mean))
    z = float(norm.ppf(u))
    if obs.noise == "lsq":
        return f + lsq_scale.get(name, 0.0) * z
    sigma = numpy_sigmas(ir, params, [name])[name]
    with np.errstate(all="ignore"):
        if callable(sigma):  # a sigma that uses the observe's own prediction (combined error)
            sigma = np.asarray(sigma(f), dtype=float)
        return f * np.exp(sigma * z) if obs.noise == "lognormal" else f + sigma * z


def bands(simulator, ir: ModelIR, uncertainty: Uncertainty, times, level: float = 0.95,
          n_draws: int = DEFAULT_DRAWS, seed: int = 0, names=None, **simulate_options) -> dict:
    """{name: (lo, hi)} arrays over `times` for every state, let and observe (or `names`): see the
    module docstring. simulate_options go to `simulator.simulate` (scenario, inputs, weights,
    rtol, atol)."""
    if not 0 < level < 1:
        raise ValueError(f"the band level must be between 0 and 1, got {level}")
    rng = np.random.default_rng(seed + 1)
    observes = {o.name for o in ir.observes}
    inputs = {u.name for u in ir.inputs}  # a static result repeats its inputs: no band for them
    samples: dict[str, list] = {}
    for params in uncertainty.draws(ir, n_draws, seed):
        try:
            res = simulator.simulate(times, params=params, **simulate_options)
        except (SimulationError, ValueError, ArithmeticError, RuntimeError):
            continue  # a draw the model cannot run (the band is over the draws that ran)
        for name in names or [n for n in res.names if n not in inputs]:
            v = np.asarray(res[name], dtype=float)
            if name in observes:
                v = add_noise(ir, name, v, params, uncertainty.lsq_scale, rng.uniform(1e-12, 1 - 1e-12))
            samples.setdefault(name, []).append(v)
    if not samples:
        raise FitError("no parameter draw could be simulated; no bands")
    q = [(1 - level) / 2, (1 + level) / 2]
    out = {}
    for name, vs in samples.items():
        lo, hi = np.nanquantile(np.vstack(vs), q, axis=0)
        out[name] = (lo, hi)
    return out


def with_bands(frame, band: Mapping, columns: Optional[list] = None):
    """`frame` with NAME_lo and NAME_hi right after each column NAME that has a band."""
    import pandas as pd

    cols = {}
    for c in frame.columns:
        cols[c] = frame[c].to_numpy()
        if c in band and (columns is None or c in columns):
            cols[f"{c}_lo"], cols[f"{c}_hi"] = band[c]
    return pd.DataFrame(cols)
