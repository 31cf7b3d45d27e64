"""Parameter uncertainty: the covariance and correlation of FIT.json against ordinary regression,
the report's strongly correlated pairs, profiles against closed forms and a non-identifiable
product, and prediction bands (coverage)."""
import json

import numpy as np
import pandas as pd
import pytest
import sympy as sp

from nimm_dsl.compiler.ir import InputIR, ModelIR, ObserveIR, ParamIR
from nimm_dsl.runtime.fit import fit, format_report
from nimm_dsl.runtime.fit.result import UNDETERMINED

from test_fit import decay_data, decay_model


def line_ir():
    """y = a * u + b, least squares: a static linear regression."""
    a, b, u = sp.symbols("a b u")
    return ModelIR("line", None, None, None, None, [],
                   [ParamIR("a", a, 1.0, -np.inf, np.inf, "1", True),
                    ParamIR("b", b, 0.0, -np.inf, np.inf, "1", True)],
                   [InputIR("u", u, (sp.Symbol("ua"), sp.Symbol("ub")), None, "step", "1")],
                   observes=[ObserveIR("y", sp.Symbol("y"), a * u + b, "1", "lsq")])


def line_data(x, intercept=-1.0, seed=3):
    rng = np.random.default_rng(seed)
    return pd.DataFrame({"u": x, "y": 2.5 * x + intercept + rng.standard_normal(x.size)})


def regression_covariance(data):
    X = np.c_[data["u"], np.ones(len(data))]
    coef, *_ = np.linalg.lstsq(X, data["y"], rcond=None)
    s2 = np.sum((X @ coef - data["y"]) ** 2) / (len(data) - 2)
    return s2 * np.linalg.inv(X.T @ X)


def test_covariance_and_correlation_match_ordinary_regression(tmp_path):
    data = line_data(np.linspace(0, 10, 15))
    res = fit(line_ir(), data, progress=False)
    cov = regression_covariance(data)
    names = ["a", "b"]
    for i, p in enumerate(names):
        for j, q in enumerate(names):
            assert res.covariance[p][q] == pytest.approx(cov[i, j], rel=1e-4)
            assert res.correlation[p][q] == pytest.approx(cov[i, j] / np.sqrt(cov[i, i] * cov[j, j]), rel=1e-4)
    doc = json.loads(res.save(tmp_path / "FIT.json").read_text())
    assert doc["covariance"]["a"]["b"] == pytest.approx(cov[0, 1], rel=1e-4)
    assert doc["correlation"]["b"]["b"] == pytest.approx(1.0)
    assert "strongly correlated" not in format_report(res)  # r(a, b) is about -0.87 here


def test_report_flags_strongly_correlated_pairs_by_name():
    # far from u = 0 slope and intercept trade off: r(a, b) = -0.993
    data = line_data(np.linspace(20, 30, 15), intercept=10.0)
    res = fit(line_ir(), data, progress=False)
    cov = regression_covariance(data)
    r = cov[0, 1] / np.sqrt(cov[0, 0] * cov[1, 1])
    assert r < -0.99
    assert res.correlation["a"]["b"] == pytest.approx(r, rel=1e-4)
    line = next(s for s in format_report(res).splitlines() if "strongly correlated" in s)
    assert "a and b" in line and f"{r:+.3f}" in line


def test_a_param_the_data_cannot_determine_has_no_covariance():
    k1, k2 = sp.symbols("k1 k2")
    ir = decay_model(sigma_param=False)
    ir.params = [ParamIR("k1", k1, 0.3, 0.01, 5, "1/h", True), ParamIR("k2", k2, 1.0, 0.1, 10, "1", True),
                 ir.params[1]]
    ir.derivatives = {"X": -k1 * k2 * sp.Symbol("X")}  # only the product k1*k2 is identifiable
    res = fit(ir, decay_data(), progress=False)
    assert res.labels["k1"] == [UNDETERMINED]
    assert res.covariance["k1"]["k1"] is None and res.covariance["X0"]["k2"] is None
    assert res.covariance["X0"]["X0"] == pytest.approx(res.stderr["X0"] ** 2)
    assert res.correlation["X0"]["X0"] == pytest.approx(1.0)
