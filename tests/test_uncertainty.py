"""Parameter uncertainty: the covariance and correlation of FIT.json against ordinary regression,
the report's strongly correlated pairs, profiles against closed forms and a non-identifiable
product, and prediction bands (coverage)."""
import json

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import sympy as sp

import nimm_dsl
from nimm_dsl.backends import compile_ir
from nimm_dsl.compiler.ir import InputIR, ModelIR, ObserveIR, ParamIR, StateIR
from nimm_dsl.runtime.bands import Uncertainty, bands
from nimm_dsl.runtime.fit import fit, format_report, profile
from nimm_dsl.runtime.fit.result import UNDETERMINED

from test_fit import decay_data, decay_model, product_decay_model

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


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
    res = fit(product_decay_model(), decay_data(), progress=False)
    assert res.labels["k1"] == [UNDETERMINED]
    assert res.covariance["k1"]["k1"] is None and res.covariance["X0"]["k2"] is None
    assert res.covariance["X0"]["X0"] == pytest.approx(res.stderr["X0"] ** 2)
    assert res.correlation["X0"]["X0"] == pytest.approx(1.0)


# ---------------------------------------------------------------- profiles
def known_sigma_line_ir():
    """y = a * u + b ~ normal(sigma = 1): the profile of a is exactly (a - a_hat)^2 / (2 var_a)."""
    ir = line_ir()
    ir.observes = [ObserveIR("y", sp.Symbol("y"), ir.observes[0].expr, "1", "normal", sp.Float(1.0))]
    return ir


def test_profile_of_a_linear_model_is_the_closed_form_parabola():
    data = line_data(np.linspace(0, 10, 15))
    ir = known_sigma_line_ir()
    res = fit(ir, data, progress=False)
    prof = profile(ir, data, res, ["a"])["a"]
    X = np.c_[data["u"], np.ones(len(data))]
    coef, *_ = np.linalg.lstsq(X, data["y"], rcond=None)
    se_a = np.sqrt(np.linalg.inv(X.T @ X)[0, 0])  # sigma = 1
    values, nll = np.array(prof["values"]), np.array(prof["nll"])
    assert len(values) >= 9
    np.testing.assert_allclose(nll - res.loss, (values - coef[0]) ** 2 / (2 * se_a ** 2), atol=1e-6)
    lo, hi = prof["ci95"]
    # linear interpolation between the grid points of a parabola: within 0.5% of the width
    assert lo == pytest.approx(coef[0] - 1.959964 * se_a, abs=0.01 * se_a)
    assert hi == pytest.approx(coef[0] + 1.959964 * se_a, abs=0.01 * se_a)
    assert prof["not_identifiable"] == [] and res.profiles["a"] is prof
    assert "profile a" in format_report(res)


def test_least_squares_profile_interval_matches_the_standard_error():
    data = line_data(np.linspace(0, 10, 15))
    res = fit(line_ir(), data, progress=False)
    lo, hi = profile(line_ir(), data, res)["b"]["ci95"]
    se = res.stderr["b"]
    assert (hi - lo) / 2 == pytest.approx(1.96 * se, rel=0.01)


def product_ir():
    """dX/dt = -k1 k2 X, with wide bounds so that the profile stays flat."""
    return product_decay_model(k1_bounds=(1e-4, 1e4), k2_bounds=(1e-4, 1e4))


def test_profile_flags_a_product_of_two_params_as_not_identifiable(tmp_path):
    ir, data = product_ir(), decay_data()
    res = fit(ir, data, progress=False)
    profs = profile(ir, data, res, ["k1", "X0"])
    k1 = profs["k1"]
    assert k1["not_identifiable"] == ["lower", "upper"] and k1["ci95"] == [None, None]
    assert max(k1["values"]) / min(k1["values"]) > 100  # walked far out on both sides
    assert np.ptp(k1["nll"]) < 1e-3  # and stayed flat: k2 made up for k1
    assert profs["X0"]["not_identifiable"] == [] and None not in profs["X0"]["ci95"]
    report = format_report(res)
    line = next(s for s in report.splitlines() if "profile k1" in s)
    assert "not identifiable from these data" in line and "lower and upper" in line
    doc = json.loads(res.save(tmp_path / "FIT.json").read_text())
    assert doc["profiles"]["k1"]["ci95"] == [None, None]
    assert doc["profiles"]["X0"]["values"] == pytest.approx(profs["X0"]["values"])


# ---------------------------------------------------------------- bands
def test_prediction_interval_of_a_linear_model_matches_the_closed_form():
    data = line_data(np.linspace(0, 10, 15))
    ir = line_ir()
    res = fit(ir, data, progress=False)
    x0 = np.array([0.0, 5.0, 12.0])
    band = bands(compile_ir(ir, "casadi"), ir, Uncertainty.from_fit(res, ir), None, n_draws=4000,
                 inputs=pd.DataFrame({"u": x0}))
    X = np.c_[data["u"], np.ones(len(data))]
    coef, *_ = np.linalg.lstsq(X, data["y"], rcond=None)
    s2 = np.sum((X @ coef - data["y"]) ** 2) / (len(data) - 2)
    X0 = np.c_[x0, np.ones(3)]
    half = 1.959964 * np.sqrt(s2 * (1 + np.einsum("ij,jk,ik->i", X0, np.linalg.inv(X.T @ X), X0)))
    lo, hi = band["y"]
    np.testing.assert_allclose(lo, X0 @ coef - half, atol=0.06 * half.max())
    np.testing.assert_allclose(hi, X0 @ coef + half, atol=0.06 * half.max())


def test_confidence_band_of_a_state_matches_the_delta_method():
    ir, data = decay_model(), decay_data()
    res = fit(ir, data, progress=False)
    t = np.array([0.0, 2.0, 5.0])
    band = bands(compile_ir(ir, "casadi"), ir, Uncertainty.from_fit(res, ir), t, n_draws=2000)
    k, X0 = res.params["k"], res.params["X0"]
    x = X0 * np.exp(-k * t)
    grad = np.c_[-t * x, np.exp(-k * t)]  # d/dk, d/dX0
    cov = np.array([[res.covariance[a][b] for b in ("k", "X0")] for a in ("k", "X0")])
    half = 1.959964 * np.sqrt(np.einsum("ij,jk,ik->i", grad, cov, grad))
    lo, hi = band["X"]
    np.testing.assert_allclose(hi - lo, 2 * half, rtol=0.08)
    np.testing.assert_allclose((hi + lo) / 2, x, atol=0.1 * half.max())
    # the observe's interval adds the noise: wider than the state's band by about 2 * 1.96 * sigma
    ylo, yhi = band["y"]
    assert np.all(yhi - ylo > hi - lo)
    assert np.mean(yhi - ylo) == pytest.approx(2 * np.hypot(1.959964 * res.params["sig"], half).mean(), rel=0.1)


@pytest.mark.slow
def test_hudson_bay_prediction_intervals_contain_most_observations():
    model = nimm_dsl.load(EXAMPLES / "lotka_volterra.nimm")
    data = pd.read_csv(EXAMPLES / "data" / "hudson_bay_lynx_hare.csv")
    res = model.fit(data, progress=False)
    band = bands(model.compile(), model.ir, Uncertainty.from_fit(res, model.ir), data["year"].to_numpy())
    inside = [(data[n] >= band[n][0]) & (data[n] <= band[n][1]) for n in ("hare", "lynx")]
    assert np.mean(np.r_[inside[0], inside[1]]) >= 0.90


def two_compartment_ir():
    """A -> B -> out, only B observed (normal, sigma 0.3): A is hidden."""
    A, B, ka, ke = sp.symbols("A B ka ke")
    params = [ParamIR("ka", ka, 0.8, 0.01, 10, "1/h", True), ParamIR("ke", ke, 0.3, 0.01, 10, "1/h", True)]
    states = [StateIR("A", A, sp.Float(10.0), 0, np.inf, "mg"), StateIR("B", B, sp.Float(0.0), 0, np.inf, "mg")]
    return ModelIR("absorption", None, sp.Symbol("t"), "t", "h", states, params,
                   derivatives={"A": -ka * A, "B": ka * A - ke * B},
                   observes=[ObserveIR("y", sp.Symbol("y"), B, "mg", "normal", sp.Float(0.3))])


@pytest.mark.slow
def test_confidence_band_of_a_hidden_state_covers_the_truth_in_about_95_percent_of_replicates():
    ir = two_compartment_ir()
    sim = compile_ir(ir, "casadi")
    t = np.linspace(0, 8, 12)
    truth = sim.simulate(np.array([0.0, 1.0]), params={"ka": 0.8, "ke": 0.3})["A"][1]  # A at t = 1
    rng = np.random.default_rng(2024)
    clean = np.asarray(sim.simulate(t, params={"ka": 0.8, "ke": 0.3})["y"])
    covered, n = 0, 60
    for r in range(n):
        data = pd.DataFrame({"t": t, "y": clean + 0.3 * rng.standard_normal(t.size)})
        res = fit(ir, data, progress=False, simulator=sim)
        lo, hi = bands(sim, ir, Uncertainty.from_fit(res, ir), np.array([0.0, 1.0]), n_draws=200,
                       seed=r, names=["A"])["A"]
        covered += lo[1] <= truth <= hi[1]
    assert 0.88 <= covered / n <= 0.99


def test_profile_figure_has_a_panel_per_param_with_the_threshold(tmp_path):
    import matplotlib.pyplot as plt

    from nimm_dsl.runtime.plots import plot_profiles, profile_figure

    ir, data = product_ir(), decay_data()
    res = fit(ir, data, progress=False)
    profile(ir, data, res)
    fig = profile_figure(res)
    axes = [ax for ax in fig.axes if ax.axison]
    assert [ax.get_title() for ax in axes] == ["k1 (flat: lower and upper)", "k2 (flat: lower and upper)", "X0"]
    assert [ax.get_xlabel() for ax in axes] == ["k1 [1/h]", "k2 [1]", "X0 [mg]"]
    for ax, name in zip(axes, ("k1", "k2", "X0")):
        horizontal = [line for line in ax.lines if line.get_linestyle() == "--"]
        assert len(horizontal) == 1 and horizontal[0].get_ydata()[0] == pytest.approx(1.920729, rel=1e-4)
    # X0's interval ends are drawn where the profile crosses the threshold
    ends = sorted(line.get_xdata()[0] for line in axes[2].lines if line.get_linestyle() == "-"
                  and len(line.get_xdata()) == 2)
    assert ends == pytest.approx(res.profiles["X0"]["ci95"])
    plt.close(fig)
    assert plot_profiles(res, tmp_path / "p.png").endswith("p.png")


@pytest.mark.slow
def test_cli_fit_with_profiles_then_a_scenario_with_bands(tmp_path, capsys):
    from nimm_dsl.cli import main

    model, data = str(EXAMPLES / "flu_sir.nimm"), str(EXAMPLES / "data" / "influenza_england_1978_school.csv")
    fit_json, fit_png = tmp_path / "FIT.json", tmp_path / "fit.png"
    assert main(["fit", model, data, "--output", str(fit_json), "--plot", str(fit_png), "--profile", "beta"]) == 0
    report = capsys.readouterr().out
    doc = json.loads(fit_json.read_text())
    lo, hi = doc["profiles"]["beta"]["ci95"]
    se, beta = doc["stderr"]["beta"], doc["params"]["beta"]
    assert lo < beta < hi and (hi - lo) / 2 == pytest.approx(1.96 * se, rel=0.1)
    assert "profile beta" in report and set(doc["correlation"]) == set(doc["estimated"])
    assert (tmp_path / "fit_profiles.png").stat().st_size > 10_000 and fit_png.stat().st_size > 10_000

    out, plot = tmp_path / "iso.csv", tmp_path / "iso.png"
    assert main(["simulate", model, "--fit", str(fit_json), "--bands", "0.95", "--scenario", "isolation",
                 "--data", data, "--output", str(out), "--plot", str(plot), "--draws", "100"]) == 0
    table = pd.read_csv(out)
    for name in ("S", "I", "R", "in_bed"):
        assert list(table.columns[table.columns.get_loc(name):][:3]) == [name, f"{name}_lo", f"{name}_hi"]
        assert np.all(table[f"{name}_lo"] <= table[name] + 1e-9) and np.all(table[name] <= table[f"{name}_hi"] + 1e-9)
    assert plot.stat().st_size > 10_000
    assert main(["simulate", model, "--bands", "0.95"]) == 2  # bands need a fit


def test_a_fit_file_without_a_usable_covariance_gives_no_bands():
    from nimm_dsl.errors import FitError

    ir = line_ir()
    doc = {"params": {"a": 2.0, "b": 1.0}, "estimated": ["a", "b"]}
    with pytest.raises(FitError, match="no `covariance`"):
        Uncertainty.from_fit(doc, ir)
    with pytest.raises(FitError, match="not a covariance matrix"):
        Uncertainty.from_fit(doc | {"covariance": {"a": {"a": 1.0, "b": 2.0}, "b": {"a": 2.0, "b": 1.0}}}, ir)
    with pytest.raises(FitError, match="not a matrix of numbers"):
        Uncertainty.from_fit(doc | {"covariance": {"a": {"a": "big"}}}, ir)


def test_noise_quantiles_of_every_noise_model_match_scipy():
    from scipy import stats

    from nimm_dsl.runtime.bands import add_noise

    f, u = np.array([2.0, 8.0]), 0.9
    s, k, mu = sp.symbols("s k mu")
    obs = {"normal": ObserveIR("y", sp.Symbol("y"), mu, "1", "normal", s),
           "lognormal": ObserveIR("y", sp.Symbol("y"), mu, "1", "lognormal", s),
           "poisson": ObserveIR("y", sp.Symbol("y"), mu, "1", "poisson"),
           "negbinomial": ObserveIR("y", sp.Symbol("y"), mu, "1", "negbinomial", dispersion=k),
           "combined": ObserveIR("y", sp.Symbol("y"), mu, "1", "normal", s * sp.Symbol("y"))}
    expected = {"normal": stats.norm.ppf(u, f, 0.5), "lognormal": stats.lognorm.ppf(u, 0.5, scale=f),
                "poisson": stats.poisson.ppf(u, f), "negbinomial": stats.nbinom.ppf(u, 3.0, 3.0 / (3.0 + f)),
                "combined": stats.norm.ppf(u, f, 0.5 * f)}
    for kind, o in obs.items():
        ir = ModelIR("m", None, None, None, None, [], [ParamIR("s", s, 0.5, 0, np.inf, "1", True),
                                                       ParamIR("k", k, 3.0, 0, np.inf, "1", True)], observes=[o])
        got = add_noise(ir, "y", f, {"s": 0.5, "k": 3.0}, {}, u)
        np.testing.assert_allclose(got, expected[kind], rtol=1e-9, err_msg=kind)


def test_seir_example_fit_reports_correlations_and_profiles_that_agree_with_the_standard_errors(tmp_path):
    """Issue #17's done-when on the shipped SEIR example: Poisson counts simulated from it over 150
    days, fitted with the incubation and infectious periods fixed at the example's published
    values (incidence alone cannot separate them from beta). The report carries the correlation
    matrix and the profiles; each well-determined param's profile interval agrees with
    +- 1.96 SE within 10% of that half-width."""
    source = (Path(__file__).parent.parent / "examples" / "seir.nimm").read_text()
    truth = nimm_dsl.load_source(source)
    times = np.arange(0.0, 151.0)
    expected = np.asarray(truth.compile("casadi").simulate(times)["cases"], dtype=float)
    data = pd.DataFrame({"day": times, "cases": np.random.default_rng(1).poisson(expected)})
    fixed = (source.replace('param sigma [1/day]  = 1/5.2 in [0.05, 1]', 'const sigma [1/day]  = 1/5.2')
             .replace('param gamma [1/day]  = 0.2  in [0.05, 1]', 'const gamma [1/day]  = 0.2'))
    assert fixed.count("const") == source.count("const") + 2
    model = nimm_dsl.load_source(fixed)
    res = model.fit(data, progress=False)
    profs = profile(model.ir, data, res)
    assert set(res.correlation) == {"beta", "rho", "I0"}
    assert all(res.correlation[n][n] == pytest.approx(1.0) for n in res.correlation)
    for name in ("beta", "rho", "I0"):
        estimate, se = res.params[name], res.stderr[name]
        lo, hi = profs[name]["ci95"]
        assert profs[name]["not_identifiable"] == []
        assert lo == pytest.approx(estimate - 1.96 * se, abs=0.1 * 1.96 * se)
        assert hi == pytest.approx(estimate + 1.96 * se, abs=0.1 * 1.96 * se)
    assert res.params["beta"] == pytest.approx(0.44, rel=0.02) and res.params["rho"] == pytest.approx(0.15, rel=0.03)
    doc = json.loads(res.save(tmp_path / "FIT.json").read_text())
    assert set(doc["profiles"]) == {"beta", "rho", "I0"} and doc["correlation"]["beta"]["I0"] < -0.9
    # the same profiles computed in two worker processes at once
    parallel = profile(model.ir, data, res, workers=2)
    assert list(parallel) == ["beta", "rho", "I0"]
    for name in parallel:
        assert parallel[name]["values"] == pytest.approx(profs[name]["values"], rel=1e-12)
        assert parallel[name]["nll"] == pytest.approx(profs[name]["nll"], rel=1e-9)


def test_profiles_in_parallel_run_in_worker_processes_and_keep_the_order():
    import os

    from nimm_dsl.runtime.fit.profile import _each_in_parallel

    out = _each_in_parallel(["a", "b", "c"], lambda name: (name, os.getpid()), 2)
    assert list(out) == ["a", "b", "c"] and [v[0] for v in out.values()] == ["a", "b", "c"]
    assert os.getpid() not in {v[1] for v in out.values()}
    assert set(_each_in_parallel(["a", "b"], lambda name: os.getpid(), 1).values()) == {os.getpid()}
