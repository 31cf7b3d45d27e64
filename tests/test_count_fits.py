"""Poisson observes fitted by least squares on deviance residuals (issue #15, target 2): the same
optimum as an independent scipy fit of the closed-form NLL and as IPOPT, with exact curvature."""
import numpy as np
import pandas as pd
import pytest
from scipy.optimize import minimize
from scipy.special import gammaln

from nimm_dsl.runtime.data import load_data
from nimm_dsl.runtime.fit import fit
from nimm_dsl.runtime.fit.casadi_paths import LeastSquaresSolver, _deviance, casadi_problem, casadi_solver
from test_standard_errors import T, decay


def counts(scale, seed):
    rng = np.random.default_rng(seed)
    return pd.DataFrame({"t": T, "y": rng.poisson(scale * np.exp(-0.5 * T)).astype(float)})


def closed_form_nll(theta, y):
    f = theta[1] * np.exp(-theta[0] * T)
    if np.any(f <= 0):
        return np.inf
    return float(np.sum(f - y * np.log(f) + gammaln(y + 1)))


@pytest.mark.parametrize("scale,seed", [(40, 1), (3, 2)])  # (3, 2): many zero counts
def test_poisson_fit_by_deviance_least_squares_matches_scipy_and_ipopt(scale, seed):
    ir, table = decay("poisson"), counts(scale, seed)
    y = table["y"].to_numpy()
    if scale == 3:
        assert (y == 0).sum() >= 5
    train = load_data(table, ir)
    assert isinstance(casadi_solver(ir, train, 1e-8, 1e-8, 200), LeastSquaresSolver)
    ours = fit(ir, table, progress=False)
    ipopt = fit(ir, table, progress=False, ipopt_options={})
    ref = minimize(closed_form_nll, [0.3, 30.0], args=(y,), method="Nelder-Mead",
                   options={"xatol": 1e-12, "fatol": 1e-14, "maxiter": 20000})
    assert ours.loss == pytest.approx(ref.fun, rel=1e-8)
    assert ours.loss == pytest.approx(ipopt.loss, rel=1e-6)  # IPOPT stops at tol 1e-6
    assert ours.loss <= ipopt.loss + 1e-9
    assert [ours.params["k"], ours.params["X0"]] == pytest.approx(ref.x, rel=1e-5)


def test_deviance_residuals_square_to_the_poisson_nll_and_have_its_curvature():
    ir, table = decay("poisson"), counts(3, 2)
    train = load_data(table, ir)
    solver = casadi_solver(ir, train, 1e-10, 1e-10, 200)
    outcome = solver.solve(np.array([0.3, 30.0]))
    x = np.array([outcome.values["k"], outcome.values["X0"]])
    y = table["y"].to_numpy()
    blocks, _ = solver.problem.residuals(outcome.values)
    r = blocks[("poisson",)][0]
    saturated = float(np.sum(y - y * np.log(np.where(y > 0, y, 1.0)) + gammaln(y + 1)))
    assert 0.5 * r @ r + saturated == pytest.approx(closed_form_nll(x, y), rel=1e-10)
    grad, hessian = solver.curvature(outcome)
    exact = casadi_problem(ir, train, 1e-10, 1e-10).hessian()(x, np.zeros(0))
    assert hessian(x) == pytest.approx(exact, rel=1e-5)
    assert np.abs(grad(x) * x).max() < 1e-5


def test_deviance_residual_limits():
    f = np.array([2.0, 2.0, 0.0, 5.0, -1.0, -1e-12])
    y = np.array([2.0, 3.0, 0.0, 0.0, 1.0, 0.0])
    df = np.ones((6, 1))
    r, dr, _, fisher = _deviance(f, df, None, y)
    assert r[0] == 0 and dr[0, 0] == pytest.approx(1 / np.sqrt(2))  # f = y: the limit slope
    assert r[1] == pytest.approx(-np.sqrt(2 * (2 - 3 + 3 * np.log(1.5))))
    assert r[2] == 0 and dr[2, 0] == 0 and fisher[2, 0] == 0  # no rate, no count
    assert r[3] == pytest.approx(np.sqrt(10.0)) and fisher[3, 0] == pytest.approx(1 / np.sqrt(5))
    assert np.isnan(r[4])  # a positive count cannot come from a negative rate
    assert r[5] == 0 and dr[5, 0] == 0  # a zero count under a rate below 0 by rounding


SET_MODEL = """model decay_set
time t [h]
param k [1/h] = 0.3 in [0.01, 5]
param X0 [1] = 30 in [0.1, 500]
state X [1] = X0
der(X) = -k * X
set k = 0.2 * k from 2 to 4
observe y [1] = X ~ poisson
"""


def test_set_window_fit_takes_the_least_squares_path_and_matches_the_closed_form():
    """Across `set` windows the sensitivities are carried from segment to segment: the fit
    reaches the optimum of the closed-form piecewise-exponential NLL, and IPOPT's."""
    import nimm_dsl

    model = nimm_dsl.load_source(SET_MODEL, "decay_set.nimm")
    table = counts(40, 3)
    y = table["y"].to_numpy()
    effective = np.where(T <= 2, T, np.where(T <= 4, 2 + 0.2 * (T - 2), 2.4 + (T - 4)))

    def nll(theta):
        f = theta[1] * np.exp(-theta[0] * effective)
        return np.inf if np.any(f <= 0) else float(np.sum(f - y * np.log(f) + gammaln(y + 1)))

    train = load_data(table, model.ir)
    solver = casadi_solver(model.ir, train, 1e-8, 1e-8, 200)
    assert isinstance(solver, LeastSquaresSolver)
    assert len(solver.problem.protocols[0].segments) == 3
    ours = model.fit(table, progress=False)
    ipopt = model.fit(table, progress=False, ipopt_options={})
    ref = minimize(nll, [0.3, 30.0], method="Nelder-Mead",
                   options={"xatol": 1e-12, "fatol": 1e-14, "maxiter": 20000})
    assert ours.loss == pytest.approx(ref.fun, rel=1e-8)
    assert ours.loss == pytest.approx(ipopt.loss, rel=1e-6)
    assert [ours.params["k"], ours.params["X0"]] == pytest.approx(ref.x, rel=1e-5)
    # Fisher information from the sensitivities across the windows, against the closed form
    f = ours.params["X0"] * np.exp(-ours.params["k"] * effective)
    J = np.column_stack([-effective * f, f / ours.params["X0"]])
    expected = np.sqrt(np.diag(np.linalg.inv(J.T @ (J / f[:, None]))))
    assert [ours.stderr["k"], ours.stderr["X0"]] == pytest.approx(expected, rel=1e-5)


DOSE_MODEL = """model pk_doses
time t [h]
param ka [1/h] = 1 in [0.05, 10]
param ke [1/h] = 0.2 in [0.01, 5]
param amt [mg] = 80 in [1, 1000]
state Ag [mg] = 0
state C [mg] = 0
der(Ag) = -ka * Ag
der(C) = ka * Ag - ke * C
dose D: Ag += amt at 0 every 12 times 3
observe y [mg] = C ~ poisson
"""


def test_doses_take_the_least_squares_path_with_sensitivities_across_the_jumps():
    """A dose whose amount is an estimated param: the sensitivities through the jumps agree with
    finite differences of the simulator's own dose handling, and the fit reaches IPOPT's optimum."""
    import nimm_dsl

    model = nimm_dsl.load_source(DOSE_MODEL, "pk_doses.nimm")
    sim = model.compile("casadi")
    times = np.linspace(0, 36, 25)
    truth = {"ka": 0.7, "ke": 0.15, "amt": 120.0}
    rng = np.random.default_rng(4)
    f_true = np.asarray(sim.simulate(times, params=truth)["y"], dtype=float)
    table = pd.DataFrame({"t": times, "y": rng.poisson(f_true).astype(float)})
    train = load_data(table, model.ir)
    solver = casadi_solver(model.ir, train, 1e-10, 1e-10, 200, sim)
    assert isinstance(solver, LeastSquaresSolver)
    p = np.array([0.9, 0.25, 100.0])
    y, dy, _ = solver.problem.first(solver.problem.protocols[0], p)
    for j in range(3):
        h = 1e-6 * p[j]
        up, down = p.copy(), p.copy()
        up[j] += h
        down[j] -= h
        fd = [np.asarray(sim.simulate(times, params=dict(zip(("ka", "ke", "amt"), q)), rtol=1e-12,
                                      atol=1e-12)["y"], dtype=float) for q in (up, down)]
        assert dy[:, 0, j] == pytest.approx((fd[0] - fd[1]) / (2 * h), rel=1e-4, abs=1e-6)
    ours = model.fit(table, progress=False)
    ipopt = model.fit(table, progress=False, ipopt_options={})
    assert ours.loss == pytest.approx(ipopt.loss, rel=1e-7)
    for name in truth:
        assert ours.params[name] == pytest.approx(ipopt.params[name], rel=1e-3)
