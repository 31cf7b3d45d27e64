"""Standard errors: the Fisher information by default, the exact Hessian on request (issue #15).

The references are closed forms: for dX/dt = -k X, X(0) = X0 the prediction is f = X0 exp(-k t),
so df/dk = -t f and df/dX0 = f / X0, and the Fisher information of each noise model is a sum
over the data points written out below."""
import numpy as np
import pandas as pd
import pytest
import sympy as sp

from nimm_dsl.cli import main
from nimm_dsl.compiler.ir import ModelIR, ObserveIR, ParamIR, StateIR
from nimm_dsl.runtime.data import load_data
from nimm_dsl.runtime.fit import fit, information_matrix
from nimm_dsl.runtime.fit.casadi_paths import IpoptSolver, LeastSquaresSolver, casadi_problem, casadi_solver

T = np.linspace(0, 6, 15)


def decay(noise):
    """dX/dt = -k X, X(0) = X0, y = X under `noise` (normal/lognormal with an estimated sigma)."""
    k, X0, sig, X = sp.symbols("k X0 sig X")
    params = [ParamIR("k", k, 0.3, 0.01, 5, "1/h", True), ParamIR("X0", X0, 30, 0.1, 500, "1", True)]
    sigma = None
    if noise in ("normal", "lognormal"):
        params.append(ParamIR("sig", sig, 1.0, 0.001, 50, "1", True))
        sigma = sig
    obs = [ObserveIR("y", sp.Symbol("y"), X, "1", noise, sigma)]
    return ModelIR("decay", None, sp.Symbol("t"), "t", "h", [StateIR("X", X, X0, 0, np.inf, "1")], params,
                   derivatives={"X": -k * X}, observes=obs)


def data(noise, seed=1):
    rng = np.random.default_rng(seed)
    f = 40 * np.exp(-0.5 * T)
    y = {"normal": f + 1.5 * rng.standard_normal(T.size),
         "lognormal": f * np.exp(0.1 * rng.standard_normal(T.size)),
         "poisson": rng.poisson(f).astype(float)}[noise]
    return pd.DataFrame({"t": T, "y": y})


def closed_form_fisher(noise, p):
    """The expected information about (k, X0[, sig]) at params p, written out by hand."""
    f = p["X0"] * np.exp(-p["k"] * T)
    J = np.column_stack([-T * f, f / p["X0"]])  # df/d(k, X0)
    if noise == "poisson":
        return J.T @ (J / f[:, None])
    if noise == "lognormal":
        J = J / f[:, None]  # d log f
    info = np.zeros((3, 3))
    info[:2, :2] = J.T @ J / p["sig"] ** 2
    info[2, 2] = 2 * T.size / p["sig"] ** 2
    return info


def stderr_of(info):
    return np.sqrt(np.diag(np.linalg.inv(info)))


@pytest.mark.parametrize("noise", ["normal", "lognormal", "poisson"])
def test_default_standard_errors_are_the_inverse_fisher_information(noise):
    ir = decay(noise)
    res = fit(ir, data(noise), progress=False)
    names = [p.name for p in ir.params]
    expected = stderr_of(closed_form_fisher(noise, res.params))
    assert [res.stderr[n] for n in names] == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("noise", ["normal", "lognormal", "poisson"])
def test_least_squares_fisher_information_and_the_ipopt_fallback(noise):
    """The least-squares path's Fisher information is the closed form; IPOPT (networks, or on
    request) has no approximation yet, so `information_matrix` falls back to its exact Hessian."""
    ir = decay(noise)
    train = load_data(data(noise), ir)
    lsq = casadi_solver(ir, train, 1e-10, 1e-10, 200)
    ipopt = casadi_solver(ir, train, 1e-10, 1e-10, 200, ipopt_options={})
    assert isinstance(lsq, LeastSquaresSolver) and isinstance(ipopt, IpoptSolver)
    outcome = lsq.solve(np.array([p.default for p in ir.params]))
    x = np.array([outcome.values[p.name] for p in ir.params])
    expected = closed_form_fisher(noise, outcome.values)
    info = information_matrix(lsq, outcome, x)
    assert info == pytest.approx(expected, rel=1e-5, abs=1e-8 * np.abs(expected).max())
    exact = casadi_problem(ir, train, 1e-10, 1e-10).hessian()(x, np.zeros(0))
    assert information_matrix(ipopt, outcome, x) == pytest.approx(exact, rel=1e-6)


def test_exact_hessian_on_request_inverts_casadis_exact_hessian():
    ir = decay("normal")
    table = data("normal")
    res = fit(ir, table, progress=False, hessian="exact")
    x = np.array([res.params[p.name] for p in ir.params])
    exact = casadi_problem(ir, load_data(table, ir), 1e-8, 1e-8).hessian()(x, np.zeros(0))
    assert [res.stderr[p.name] for p in ir.params] == pytest.approx(stderr_of(exact), rel=1e-4)
    # the observed information is the expected one plus sum r d2f / sigma^2 (r = f - y)
    p = res.params
    f = p["X0"] * np.exp(-p["k"] * T)
    r = f - table["y"].to_numpy()
    observed = closed_form_fisher("normal", p)
    observed[:2, :2] += np.array([[np.sum(r * T ** 2 * f), np.sum(-r * T * f / p["X0"])],
                                  [np.sum(-r * T * f / p["X0"]), 0.0]]) / p["sig"] ** 2
    assert stderr_of(exact) == pytest.approx(stderr_of(observed), rel=1e-5)
    assert stderr_of(observed)[0] == pytest.approx(stderr_of(closed_form_fisher("normal", p))[0], rel=1e-2)
    assert stderr_of(observed)[0] != pytest.approx(stderr_of(closed_form_fisher("normal", p))[0], rel=1e-4)


def test_unknown_hessian_is_refused_before_fitting():
    with pytest.raises(ValueError, match="hessian must be one of gauss-newton, exact"):
        fit(decay("poisson"), data("poisson"), progress=False, hessian="bfgs")


def test_cli_hessian_flag_reaches_the_fit(tmp_path):
    model = tmp_path / "decay.nimm"
    model.write_text("""model decay
time t [h]
param k [1/h] = 0.3 in [0.01, 5]
param X0 [1] = 40 in [0.1, 500]
param sig [1] = 1 in [0.001, 50]
state X [1] = X0
der(X) = -k * X
observe y [1] = X ~ normal(sigma = sig)
""")
    table = tmp_path / "decay.csv"
    data("normal").to_csv(table, index=False)
    import json

    stderr = {}
    for kind in ("gauss-newton", "exact"):
        out = tmp_path / f"{kind}.json"
        assert main(["fit", str(model), str(table), "--hessian", kind, "--output", str(out)]) == 0
        stderr[kind] = [json.loads(out.read_text())["stderr"][n] for n in ("k", "X0", "sig")]
    fitted = json.loads((tmp_path / "exact.json").read_text())["params"]
    assert stderr["gauss-newton"] == pytest.approx(stderr_of(closed_form_fisher("normal", fitted)), rel=1e-5)
    assert stderr["exact"][0] != pytest.approx(stderr["gauss-newton"][0], rel=1e-4)
    assert main(["fit", str(model), str(table), "--hessian", "bfgs"]) == 2


def test_negative_curvature_is_a_fit_short_of_its_minimum_not_a_flat_direction():
    """A torch fit stopped early on a two-param decay had eigenvalues (-3.9, 38, 412) and was
    reported as `A0`, `k` "not determined by the data"; the data determine both."""
    from nimm_dsl.runtime.fit.result import NOT_AT_MINIMUM, UNDETERMINED
    from nimm_dsl.runtime.fit.starts import param_labels, standard_errors

    est = decay("lsq").params
    names, x = ["k", "X0"], np.array([0.5, 20.0])
    saddle = np.diag([-4.0, 9.0])  # falls along k
    stderr, flat, _, falling = standard_errors(saddle, names, x, 1.0, 15, False)
    assert (flat, falling) == ([], [["k"]]) and stderr["k"] is None and stderr["X0"] == pytest.approx(1 / 3)
    labels, warnings = param_labels(est, dict(zip(names, x)), stderr, flat, falling)
    assert labels == {"k": [NOT_AT_MINIMUM], "X0": []}
    assert len(warnings) == 1 and "still falls" in warnings[0] and UNDETERMINED not in warnings[0]
    flat_h = np.array([[1.0, 1.0], [1.0, 1.0]]) / np.outer(x, x)  # only k + X0 (scaled) is seen
    _, flat, _, falling = standard_errors(flat_h, names, x, 1.0, 15, False)
    assert sorted(flat[0]) == ["X0", "k"] and falling == []
