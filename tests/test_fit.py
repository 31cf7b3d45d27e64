"""Fitting: the loss against scipy.stats, recovery of known params, real data against independent
scipy fits, both back ends agreeing, a hybrid model beating its mechanistic part, FIT.json."""
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import sympy as sp
from scipy import stats
from scipy.integrate import solve_ivp
from scipy.optimize import least_squares, minimize

import nimm_dsl
from nimm_dsl.compiler.ir import ModelIR, NeuralIR, ObserveIR, ParamIR, StateIR
from nimm_dsl.errors import DataError, FitError
from nimm_dsl.runtime.fit import (NUMPY_OPS, casadi_loss_ops, fit, format_report, load_fit, nll,
                                  observation_nll, torch_loss_ops)
from nimm_dsl.runtime.fit.result import AT_UPPER, UNDETERMINED

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"


# ---------------------------------------------------------------- the loss
Y = np.array([0.5, 2.0, 3.5, 7.0, 1.0])
F = np.array([0.8, 1.7, 4.0, 6.1, 1.4])


@pytest.mark.parametrize("noise, expected", [
    ("normal", -stats.norm.logpdf(Y, loc=F, scale=0.7).sum()),
    ("lognormal", -stats.lognorm.logpdf(Y, s=0.7, scale=F).sum()),
    ("poisson", -stats.poisson.logpmf(np.round(Y * 2), F * 2).sum()),
    ("lsq", 0.5 * np.sum((Y - F) ** 2)),
])
def test_nll_matches_scipy_in_every_array_library(noise, expected):
    import casadi as ca
    import torch

    y, f = (np.round(Y * 2), F * 2) if noise == "poisson" else (Y, F)
    assert observation_nll(noise, y, f, 0.7, NUMPY_OPS) == pytest.approx(expected, rel=1e-12)
    fc = ca.MX.sym("f", len(f))
    fn = ca.Function("nll", [fc], [observation_nll(noise, y, fc, 0.7, casadi_loss_ops())])
    assert float(fn(f)) == pytest.approx(expected, rel=1e-12)
    ft = torch.tensor(f, dtype=torch.float64)
    sig = torch.tensor(0.7, dtype=torch.float64)
    assert float(observation_nll(noise, y, ft, sig, torch_loss_ops())) == pytest.approx(expected, rel=1e-12)


def test_nll_of_a_model_on_data_sums_the_observed_points(tmp_path):
    model = nimm_dsl.load(EXAMPLES / "flu_sir.nimm")
    data = EXAMPLES / "data" / "influenza_england_1978_school.csv"
    frame = pd.read_csv(data)
    res = model.compile("casadi").simulate(frame["day"].to_numpy(float))
    expected = -stats.norm.logpdf(frame["in_bed"], loc=res["in_bed"], scale=10).sum()
    assert nll(model.ir, data) == pytest.approx(expected, rel=1e-8)
    # a missing value drops exactly its own term
    frame.loc[3, "in_bed"] = np.nan
    frame.to_csv(tmp_path / "gap.csv", index=False)
    keep = np.isfinite(frame["in_bed"])
    expected = -stats.norm.logpdf(frame["in_bed"][keep], loc=res["in_bed"][keep], scale=10).sum()
    assert nll(model.ir, tmp_path / "gap.csv") == pytest.approx(expected, rel=1e-8)


# ---------------------------------------------------------------- real data vs independent scipy fits
def test_flu_boarding_school_matches_an_independent_least_squares_fit():
    model = nimm_dsl.load(EXAMPLES / "flu_sir.nimm")
    data = pd.read_csv(EXAMPLES / "data" / "influenza_england_1978_school.csv")
    res = model.fit(EXAMPLES / "data" / "influenza_england_1978_school.csv", progress=False)
    t, y = data["day"].to_numpy(float), data["in_bed"].to_numpy(float)

    def residuals(theta):
        beta, gamma, i0 = theta
        rhs = lambda _, x: [-beta * x[0] * x[1] / 763, beta * x[0] * x[1] / 763 - gamma * x[1]]
        sol = solve_ivp(rhs, (t[0], t[-1]), [763 - i0, i0], t_eval=t, rtol=1e-10, atol=1e-10)
        return sol.y[1] - y

    ref = least_squares(residuals, [1.5, 0.5, 1.0], bounds=([0.1, 0.05, 0.1], [5, 2, 20]), xtol=1e-12)
    # normal noise with an estimated sigma: the same optimum as least squares, sigma = RMSE
    for name, value in zip(["beta", "gamma", "I0"], ref.x):
        assert res.params[name] == pytest.approx(value, rel=2e-3), name
    rmse = np.sqrt(np.mean(ref.fun ** 2))
    assert res.params["sigma"] == pytest.approx(rmse, rel=2e-3)
    assert res.metrics["rmse"]["in_bed"] == pytest.approx(rmse, rel=2e-3)
    assert 1.6 < res.params["beta"] < 1.9 and 0.4 < res.params["gamma"] < 0.6  # Stan: 1.73, 0.54
    assert all(res.stderr[n] is not None and 0 < res.stderr[n] < res.params[n] for n in res.estimated)
    assert any("`date`" in w and "`convalescent`" in w for w in res.warnings)  # ignored columns


def _lv_nll(theta, t, hare, lynx):
    a, b, c, d, h0, l0, sigma = theta
    rhs = lambda _, x: [a * x[0] - b * x[0] * x[1], -c * x[1] + d * x[0] * x[1]]
    sol = solve_ivp(rhs, (t[0], t[-1]), [h0, l0], t_eval=t, rtol=1e-10, atol=1e-10)
    if not sol.success or np.any(sol.y <= 0):
        return 1e10
    pred = np.log(sol.y)
    obs = np.log(np.vstack([hare, lynx]))
    return -np.sum(stats.norm.logpdf(obs, pred, sigma)) + np.sum(obs)


@pytest.mark.slow
def test_lynx_hare_lognormal_fit_matches_an_independent_scipy_fit():
    model = nimm_dsl.load(EXAMPLES / "lotka_volterra.nimm")
    data_path = EXAMPLES / "data" / "hudson_bay_lynx_hare.csv"
    data = pd.read_csv(data_path)
    res = model.fit(data_path, progress=False)
    t = data["year"].to_numpy(float)
    args = (t, data["hare"].to_numpy(float), data["lynx"].to_numpy(float))
    start = [0.55, 0.028, 0.80, 0.024, 30, 4, 0.25]
    ref = minimize(_lv_nll, start, args=args, method="Nelder-Mead",
                   options={"maxiter": 20000, "maxfev": 20000, "xatol": 1e-8, "fatol": 1e-10})
    assert res.loss == pytest.approx(ref.fun, abs=1e-3)
    assert res.loss <= ref.fun + 1e-6
    names = ["a", "b", "c", "d", "H0", "L0", "sigma"]
    for name, value in zip(names, ref.x):
        assert res.params[name] == pytest.approx(value, rel=1e-2), name
    # near the published Stan posterior means (a = 0.55, b = 0.028, c = 0.80, d = 0.024)
    for name, value in {"a": 0.55, "b": 0.028, "c": 0.80, "d": 0.024}.items():
        assert res.params[name] == pytest.approx(value, rel=0.1), name


# ---------------------------------------------------------------- synthetic recovery
@pytest.mark.slow
def test_two_compartment_pk_recovers_params_from_central_concentration_only():
    """Repeated IV doses; the peripheral compartment is hidden. Data simulated independently."""
    model = nimm_dsl.load(EXAMPLES / "pk_two_compartment.nimm")
    true = {"CL": 4.5, "V1": 58.4, "Q": 6.5, "V2": 38.4}
    times = np.r_[0.5, 1, 2, 4, 6, 8, 11.5, 24.5, 30, 36, 47.5, 60, 72, 84, 90, 95.5]

    def rhs(_, x):
        a1, a2 = x
        return [-(true["Q"] + true["CL"]) / true["V1"] * a1 + true["Q"] / true["V2"] * a2,
                true["Q"] / true["V1"] * a1 - true["Q"] / true["V2"] * a2]

    x, conc, edges = np.zeros(2), [], np.arange(0, 97, 12.0)
    for t0, t1 in zip(edges[:-1], edges[1:]):  # a 1000 mg bolus at the start of each 12 h interval
        x = x + [1000.0, 0.0]
        sample = times[(times >= t0) & (times < t1)]
        sol = solve_ivp(rhs, (t0, t1), x, t_eval=np.r_[sample, t1], rtol=1e-11, atol=1e-11)
        conc += list(sol.y[0, :-1] / true["V1"])
        x = sol.y[:, -1]
    rng = np.random.default_rng(1)
    y = np.array(conc) * (1 + 0.03 * rng.standard_normal(len(times)))
    # the series starts at the first dose (a row without a measurement), as LANGUAGE.md §7 says
    frame = pd.DataFrame({"t": np.r_[0.0, times], "conc": np.r_[np.nan, y]})
    res = model.fit(frame, progress=False)
    assert not any("not applied" in w for w in res.warnings)
    tolerance = {"CL": 0.03, "V1": 0.05, "Q": 0.15, "V2": 0.15}
    for name, rel in tolerance.items():
        assert res.params[name] == pytest.approx(true[name], rel=rel), name
        assert res.stderr[name] is not None
    late = model.fit(pd.DataFrame({"t": times, "conc": y}), progress=False, max_iter=3)
    assert any("dose(s) D" in w and "not applied" in w for w in late.warnings)


def decay_model(sigma_param=True):
    """dX/dt = -k X, X(0) = X0; y = X ~ normal(sigma)."""
    k, X0, sig, X = sp.symbols("k X0 sig X")
    params = [ParamIR("k", k, 0.3, 0.01, 5, "1/h", True), ParamIR("X0", X0, 5, 0.1, 100, "mg", True)]
    if sigma_param:
        params.append(ParamIR("sig", sig, 1.0, 0.01, 10, "mg", True))
    obs = [ObserveIR("y", sp.Symbol("y"), X, "mg", "normal", sig if sigma_param else sp.Float(0.2))]
    states = [StateIR("X", X, X0, 0, np.inf, "mg")]
    return ModelIR("decay", None, sp.Symbol("t"), "t", "h", states, params, derivatives={"X": -k * X},
                   observes=obs)


def decay_data(seed=0, n=12):
    rng = np.random.default_rng(seed)
    t = np.linspace(0, 6, n)
    return pd.DataFrame({"t": t, "y": 8 * np.exp(-0.5 * t) + 0.2 * rng.standard_normal(n)})


@pytest.mark.slow
def test_torch_and_casadi_reach_the_same_optimum():
    ir, data = decay_model(), decay_data()
    a = fit(ir, data, backend="casadi", progress=False)
    b = fit(ir, data, backend="torch", progress=False)
    assert a.loss == pytest.approx(b.loss, abs=1e-5)
    for name in ("k", "X0", "sig"):
        assert a.params[name] == pytest.approx(b.params[name], rel=1e-3), name
        assert a.stderr[name] == pytest.approx(b.stderr[name], rel=1e-2), name
    # and both match a closed-form-model fit by scipy
    t, y = data["t"].to_numpy(), data["y"].to_numpy()
    ref = least_squares(lambda th: th[1] * np.exp(-th[0] * t) - y, [0.3, 5.0], xtol=1e-14)
    for backend_fit in (a, b):
        assert backend_fit.params["k"] == pytest.approx(ref.x[0], rel=1e-4)
        assert backend_fit.params["X0"] == pytest.approx(ref.x[1], rel=1e-4)


def test_static_model_fit_matches_linear_regression():
    a, b, u = sp.symbols("a b u")
    from nimm_dsl.compiler.ir import InputIR

    ir = ModelIR("line", None, None, None, None, [],
                 [ParamIR("a", a, 1.0, -np.inf, np.inf, "1", True), ParamIR("b", b, 0.0, -np.inf, np.inf, "1", True)],
                 [InputIR("u", u, (sp.Symbol("ua"), sp.Symbol("ub")), None, "step", "1")],
                 observes=[ObserveIR("y", sp.Symbol("y"), a * u + b, "1", "lsq")])
    rng = np.random.default_rng(3)
    x = np.linspace(0, 10, 15)
    y = 2.5 * x - 1 + rng.standard_normal(15)
    res = fit(ir, pd.DataFrame({"u": x, "y": y}), progress=False)
    slope, intercept = np.polyfit(x, y, 1)
    assert res.params["a"] == pytest.approx(slope, rel=1e-6)
    assert res.params["b"] == pytest.approx(intercept, rel=1e-6)
    # least squares: standard errors scaled by the residual variance, as in ordinary regression
    X = np.c_[x, np.ones_like(x)]
    s2 = np.sum((X @ [slope, intercept] - y) ** 2) / (15 - 2)
    se = np.sqrt(np.diag(s2 * np.linalg.inv(X.T @ X)))
    assert res.stderr["a"] == pytest.approx(se[0], rel=1e-4)
    assert res.stderr["b"] == pytest.approx(se[1], rel=1e-4)


# ---------------------------------------------------------------- warnings
def _report_line(report: str, name: str) -> str:
    return next(line for line in report.splitlines() if line.strip().startswith(f"{name} "))


def product_decay_model(k1_bounds=(0.01, 5), k2_bounds=(0.1, 10)):
    """dX/dt = -k1 k2 X: only the product k1*k2 is identifiable from X."""
    k1, k2 = sp.symbols("k1 k2")
    ir = decay_model(sigma_param=False)
    ir.params = [ParamIR("k1", k1, 0.3, *k1_bounds, "1/h", True), ParamIR("k2", k2, 1.0, *k2_bounds, "1", True),
                 ir.params[1]]
    ir.derivatives = {"X": -k1 * k2 * sp.Symbol("X")}
    return ir


def test_at_a_bound_and_not_determined_are_different_labels_and_report_and_warnings_agree():
    ir = product_decay_model()
    res = fit(ir, decay_data(), progress=False)
    assert res.params["k1"] * res.params["k2"] == pytest.approx(0.5, rel=0.1)
    assert res.labels == {"k1": [UNDETERMINED], "k2": [UNDETERMINED]}
    assert res.stderr["k1"] is None and res.stderr["k2"] is None and res.stderr["X0"] is not None
    flat = [w for w in res.warnings if UNDETERMINED in w]
    assert len(flat) == 1 and "`k1`" in flat[0] and "`k2`" in flat[0]
    assert not any("bound" in w for w in res.warnings)
    report = format_report(res)
    for name in ("k1", "k2"):
        assert f"({UNDETERMINED})" in _report_line(report, name) and "±" not in _report_line(report, name)
    assert "(" not in _report_line(report, "X0")

    ir = decay_model(sigma_param=False)
    ir.params[0] = ParamIR("k", sp.Symbol("k"), 0.2, 0.01, 0.3, "1/h", True)  # true value 0.5
    res = fit(ir, decay_data(), progress=False)
    assert res.params["k"] == pytest.approx(0.3)
    assert res.labels == {"k": [AT_UPPER]}
    assert [w for w in res.warnings if "bound" in w] == [
        w for w in res.warnings if "`k` is at its upper bound 0.3 [1/h]" in w]
    assert not any(UNDETERMINED in w for w in res.warnings)
    line = _report_line(format_report(res), "k")
    assert f"({AT_UPPER})" in line and UNDETERMINED not in line


def test_bad_data_reaches_the_user_as_a_data_error(tmp_path):
    p = tmp_path / "bad.csv"
    p.write_text("t,y\n0,1\n1,oops\n")
    with pytest.raises(DataError, match=r"column `y`, row 2"):
        fit(decay_model(), p, progress=False)
    p.write_text("t,y\n0,\n1,\n")
    with pytest.raises(FitError, match="missing"):
        fit(decay_model(), p, progress=False)


# ---------------------------------------------------------------- FIT.json
def test_fit_json_round_trip(tmp_path):
    ir, data = decay_model(), decay_data()
    res = fit(ir, data, progress=False)
    path = res.save(tmp_path / "FIT.json")
    doc = json.loads(path.read_text())
    assert set(doc) >= {"params", "loss", "metrics", "stderr", "weights", "model", "warnings"}
    assert doc["metrics"]["rmse"]["y"] == pytest.approx(res.metrics["rmse"]["y"])
    restored = load_fit(path)
    assert restored["params"] == pytest.approx(res.params)
    (tmp_path / "broken.json").write_text('{"params": {"k": "fast"}}')
    with pytest.raises(FitError, match="params.k is not a finite number"):
        load_fit(tmp_path / "broken.json")
    with pytest.raises(FitError, match="cannot read"):
        load_fit(tmp_path / "missing.json")


# ---------------------------------------------------------------- hybrid model
def _rosenzweig_macarthur(t):
    """Prey with logistic growth and a saturating (Holling II) predator response."""
    r, K, a, h, e, m = 1.0, 60.0, 0.08, 0.25, 0.5, 0.5

    def rhs(_, x):
        H, L = x
        eat = a * H * L / (1 + a * h * H)
        return [r * H * (1 - H / K) - eat, e * eat - m * L]

    return solve_ivp(rhs, (t[0], t[-1]), [20.0, 5.0], t_eval=t, rtol=1e-10, atol=1e-10).y


def _lv_ir(neural: bool):
    H, L, a, b, c, d = sp.symbols("H L a b c d")
    params = [ParamIR("a", a, 0.8, 0.05, 3, "1/year", True), ParamIR("b", b, 0.08, 0.001, 1, "1", True),
              ParamIR("c", c, 0.5, 0.05, 3, "1/year", True), ParamIR("d", d, 0.04, 0.001, 1, "1", True)]
    dH = a * H - b * H * L
    neurals = []
    if neural:
        f = sp.Function("resid")
        neurals = [NeuralIR("resid", f, 2, [8], "tanh", "zero", 1e-3, "1/year")]
        dH = dH + f(H / 50, L / 50) * H
    states = [StateIR("H", H, sp.Integer(20), 0, np.inf, "1"), StateIR("L", L, sp.Integer(5), 0, np.inf, "1")]
    obs = [ObserveIR("hare", sp.Symbol("hare"), H, "1", "lognormal", sp.Float(0.05)),
           ObserveIR("lynx", sp.Symbol("lynx"), L, "1", "lognormal", sp.Float(0.05))]
    return ModelIR("lv_hybrid" if neural else "lv", None, sp.Symbol("t"), "t", "year", states, params,
                   derivatives={"H": dH, "L": -c * L + d * H * L}, observes=obs, neurals=neurals)


@pytest.mark.slow
def test_hybrid_model_beats_its_mechanistic_part_on_a_held_out_segment(tmp_path):
    t = np.linspace(0, 16, 33)
    H, L = _rosenzweig_macarthur(t)
    rng = np.random.default_rng(0)
    data = pd.DataFrame({"t": t, "hare": H * np.exp(0.05 * rng.standard_normal(t.size)),
                         "lynx": L * np.exp(0.05 * rng.standard_normal(t.size))})
    plain = fit(_lv_ir(False), data, holdout=0.25, progress=False)
    hybrid = fit(_lv_ir(True), data, backend="torch", holdout=0.25, progress=False, max_iter=60,
                 lbfgs_iter=30)
    assert hybrid.weights["resid"].shape == (_lv_ir(True).neurals[0].n_weights,)
    assert np.any(hybrid.weights["resid"] != 0)
    assert hybrid.loss < plain.loss  # training data
    assert hybrid.metrics["holdout_loss"] < plain.metrics["holdout_loss"]
    # 33 points, a quarter held out: the last 8, so training ends at t[24] and the hold-out
    # is marked from midway to t[25]
    assert plain.holdout_after == hybrid.holdout_after == {0: pytest.approx((t[24] + t[25]) / 2)}
    from nimm_dsl.runtime.plots import plot_fit

    assert plot_fit(_lv_ir(True), hybrid, tmp_path / "hybrid.png").endswith("hybrid.png")


# ---------------------------------------------------------------- plots
@pytest.mark.slow
def test_fit_and_scenario_plots_are_written(tmp_path):
    from nimm_dsl.runtime.plots import hidden_states, plot_fit, plot_scenario

    model = nimm_dsl.load(EXAMPLES / "flu_sir.nimm")
    res = model.fit(EXAMPLES / "data" / "influenza_england_1978_school.csv", progress=False)
    assert hidden_states(model.ir, ["in_bed"]) == ["S", "R"]  # I is observed directly
    out = plot_fit(model.ir, res, tmp_path / "fit.png")  # the CLI's short form
    assert Path(out).stat().st_size > 10_000
    sim = model.compile("casadi")
    times = np.linspace(0, 14, 30)
    base = sim.simulate(times, params=res.params)
    alt = sim.simulate(times, params=res.params, scenario="isolation")
    out = plot_scenario(base, alt, tmp_path / "scenario.png", names=["I", "in_bed"])
    assert Path(out).stat().st_size > 10_000


def test_least_squares_fit_curvature_matches_casadi_exact_hessian():
    """The fast sum-of-squares path (augmented sensitivity ODE) gives the same Hessian as CasADi
    differentiating CVODES twice, and a gradient near zero at its optimum."""
    from nimm_dsl.runtime.data import load_data
    from nimm_dsl.runtime.fit.casadi_paths import LeastSquaresSolver, casadi_problem, casadi_solver

    ir = decay_model()
    data = load_data(decay_data(), ir)
    solver = casadi_solver(ir, data, 1e-10, 1e-10, 200)
    assert isinstance(solver, LeastSquaresSolver)
    outcome = solver.solve(np.array([p.default for p in ir.params]))
    grad, hessian = solver.curvature(outcome)
    x = np.array([outcome.values[n] for n in ("k", "X0", "sig")])
    exact = casadi_problem(ir, data, 1e-10, 1e-10).hessian()(x, np.zeros(0))
    assert hessian(x) == pytest.approx(exact, rel=1e-5, abs=1e-6 * np.abs(exact).max())
    assert np.abs(grad(x) * x).max() < 1e-4
