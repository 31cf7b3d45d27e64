"""Per-series params on the least-squares path (issue #15, target 2): each series fills its own
columns of the Jacobian; the optimum, the loss and the standard errors are those of an
independent scipy fit of the closed form and of the IPOPT path."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy.optimize import minimize

import nimm_dsl
from nimm_dsl.runtime.data import load_data
from nimm_dsl.runtime.fit.casadi_paths import LeastSquaresSolver, casadi_solver

MODEL = """model decay_series
time t [h] from 0
param k [1/h] = 0.3 in [0.01, 2] per series
param A0 [mg] = 5 in [0.1, 100]
param sig [mg] = 0.1 in [0.001, 10]
state A [mg] = A0
der(A) = -k * A
observe amount [mg] = A ~ normal(sigma = sig)
"""
RATES = {"a": 0.2, "b": 0.5, "c": 0.9}


def data() -> pd.DataFrame:
    rng = np.random.default_rng(4)
    rows = []
    for label, k in RATES.items():
        for t in np.arange(0.5, 6.01, 0.5):
            rows.append({"series": label, "t": t, "amount": 8 * np.exp(-k * t) + rng.normal(0, 0.1)})
    return pd.DataFrame(rows)


def reference(table: pd.DataFrame):
    """The Gaussian NLL of A0 exp(-k_s t), A0 and sigma shared, minimised by scipy."""
    labels = list(RATES)
    idx = table.series.map({s: i for i, s in enumerate(labels)}).to_numpy()
    t, y = table.t.to_numpy(), table.amount.to_numpy()

    def nll(z):
        A0, sig, k = z[0], z[1], z[2:]
        r = (A0 * np.exp(-k[idx] * t) - y) / sig
        return np.sum(0.5 * r ** 2 + np.log(sig) + 0.5 * np.log(2 * np.pi))

    best = minimize(nll, [5.0, 0.3, 0.3, 0.3, 0.3], method="Nelder-Mead",
                    options={"xatol": 1e-11, "fatol": 1e-13, "maxiter": 40000, "maxfev": 40000})
    return best.x, best.fun


def test_per_series_params_fit_on_the_least_squares_path_to_the_scipy_optimum():
    model = nimm_dsl.load_source(MODEL)
    table = data()
    assert isinstance(casadi_solver(model.ir, load_data(table, model.ir), 1e-8, 1e-8, 200), LeastSquaresSolver)
    fit = model.fit(table, progress=False)
    ref, ref_nll = reference(table)
    assert fit.loss == pytest.approx(ref_nll, rel=1e-7)
    assert fit.params["A0"] == pytest.approx(ref[0], rel=1e-5)
    assert fit.params["sig"] == pytest.approx(ref[1], rel=1e-5)
    assert list(fit.series_params["k"].values()) == pytest.approx(list(ref[2:]), rel=1e-5)


def _closed_form_information(table, A0, sig, k):
    """Fisher information in (A0, sig, k_a, k_b, k_c): J'J / sig^2 for the means, 2 n / sig^2
    for sigma (the Gauss-Newton matrix the fit reports by default)."""
    labels = list(RATES)
    idx = table.series.map({s: i for i, s in enumerate(labels)}).to_numpy()
    t = table.t.to_numpy()
    e = np.exp(-k[idx] * t)
    J = np.zeros((len(t), 5))
    J[:, 0] = e
    J[np.arange(len(t)), 2 + idx] = -A0 * t * e
    info = J.T @ J / sig ** 2
    info[1, 1] = 2 * len(t) / sig ** 2
    return info


def _nll_hessian(table, z):
    """Central differences of the closed-form NLL (an independent exact Hessian)."""
    labels = list(RATES)
    idx = table.series.map({s: i for i, s in enumerate(labels)}).to_numpy()
    t, y = table.t.to_numpy(), table.amount.to_numpy()

    def nll(z):
        r = (z[0] * np.exp(-z[2:][idx] * t) - y) / z[1]
        return np.sum(0.5 * r ** 2 + np.log(z[1]))

    h = 1e-4 * np.abs(z)
    H = np.zeros((5, 5))
    for i in range(5):
        for j in range(5):
            def at(a, b):
                w = z.copy()
                w[i] += a * h[i]
                w[j] += b * h[j]
                return nll(w)
            H[i, j] = (at(1, 1) - at(1, -1) - at(-1, 1) + at(-1, -1)) / (4 * h[i] * h[j])
    return H


def test_its_standard_errors_match_the_closed_form():
    model = nimm_dsl.load_source(MODEL)
    table = data()
    fast = model.fit(table, progress=False)
    z = np.r_[fast.params["A0"], fast.params["sig"], list(fast.series_params["k"].values())]
    for fit, matrix in ((fast, _closed_form_information(table, z[0], z[1], z[2:])),
                        (model.fit(table, progress=False, hessian="exact"), _nll_hessian(table, z))):
        se = np.sqrt(np.diag(np.linalg.inv(matrix)))
        assert fit.stderr["A0"] == pytest.approx(se[0], rel=1e-4)
        assert fit.stderr["sig"] == pytest.approx(se[1], rel=1e-4)
        assert list(fit.series_stderr["k"].values()) == pytest.approx(list(se[2:]), rel=1e-4)
