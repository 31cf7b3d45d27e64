"""The negative binomial dispersion (runtime/fit/dispersion.py, issue #13): the Cox–Reid adjusted
profile likelihood by default, maximum likelihood on request, and negbinomial means through the
least-squares path (issue #15 target 2).

References are independent: the exponential decay's closed-form mean, scipy.stats.nbinom and
scipy's optimisers on a hand-written objective."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from scipy.optimize import minimize, minimize_scalar

import nimm_dsl
from nimm_dsl.cli import main
from nimm_dsl.runtime.data import load_data
from nimm_dsl.runtime.fit.casadi_paths import LeastSquaresSolver, casadi_solver
from nimm_dsl.runtime.fit.dispersion import dispersion_only

DECAY = """model decay
time t [h]
param k [1/h] = 0.3 in [0.01, 2]
param A0 [mg] = 100 in [1, 1000]
{dispersion}
state A [mg] = A0 in [0, inf]
der(A) = -k * A
observe y [mg] = A ~ negbinomial(dispersion = kd)
"""
ESTIMATED = "param kd [1] = 5 in [0.1, 100]"
TIMES = np.arange(0.0, 10.0)
COUNTS = np.array([97, 80, 48, 47, 21, 30, 12, 0, 9, 3], dtype=float)
FRAME = pd.DataFrame({"t": TIMES, "y": COUNTS})


def decay(dispersion=ESTIMATED):
    return nimm_dsl.load_source(DECAY.format(dispersion=dispersion), "decay.nimm")


def mean(k, A0):
    return A0 * np.exp(-k * TIMES)


def nll(k, A0, kd):
    mu = mean(k, A0)
    return -stats.nbinom.logpmf(COUNTS, kd, kd / (kd + mu)).sum()


def test_the_adjusted_dispersion_is_the_cox_reid_profile_maximum_with_the_means_at_their_ml():
    """At the estimate, kd maximises l(y; mu, kd) - 0.5 log det(J' W J) with mu held (J by finite
    differences of the closed form, W = 1 / (mu + mu^2 / kd)), and (k, A0) maximise the
    likelihood at that kd: the fixed point of the alternation, checked with scipy."""
    fit = decay().fit(FRAME, progress=False)
    assert fit.dispersion_estimator == "cox-reid"
    k, A0, kd = (fit.params[n] for n in ("k", "A0", "kd"))
    mu, h = mean(k, A0), 1e-6
    J = np.stack([(mean(k + h, A0) - mean(k - h, A0)) / (2 * h), (mean(k, A0 + h) - mean(k, A0 - h)) / (2 * h)], 1)

    def minus_apl(log_kd):
        d = np.exp(log_kd)
        W = 1.0 / (mu + mu ** 2 / d)
        return -stats.nbinom.logpmf(COUNTS, d, d / (d + mu)).sum() + 0.5 * np.linalg.slogdet(J.T @ (W[:, None] * J))[1]

    best = minimize_scalar(minus_apl, bounds=(np.log(0.1), np.log(100)), method="bounded", options={"xatol": 1e-10})
    assert kd == pytest.approx(np.exp(best.x), rel=1e-4)
    means = minimize(lambda z: nll(z[0], z[1], kd), [0.3, 100.0], method="Nelder-Mead",
                     options={"xatol": 1e-9, "fatol": 1e-12, "maxiter": 5000})
    assert [k, A0] == pytest.approx(list(means.x), rel=1e-5)
    assert fit.loss == pytest.approx(nll(k, A0, kd), rel=1e-7)  # the ODE solved to rtol 1e-8
    # the adjustment lowers the dispersion estimate below maximum likelihood's
    assert kd < 0.95 * decay().fit(FRAME, progress=False, dispersion="ml").params["kd"]
    # the standard error of kd: the curvature of the adjusted profile (natural units)
    step = 1e-3 * kd
    curvature = (minus_apl(np.log(kd + step)) - 2 * minus_apl(np.log(kd)) + minus_apl(np.log(kd - step))) / step ** 2
    assert fit.stderr["kd"] == pytest.approx(curvature ** -0.5, rel=1e-3)


@pytest.mark.slow  # ~9 s: the Torch path refits the means each round
def test_both_back_ends_give_the_same_adjusted_estimates():
    model = decay()
    a = model.fit(FRAME, progress=False)
    b = model.fit(FRAME, backend="torch", progress=False)
    assert b.dispersion_estimator == "cox-reid"
    for name in ("k", "A0", "kd"):
        assert b.params[name] == pytest.approx(a.params[name], rel=1e-5), name


def test_dispersion_ml_is_the_plain_maximum_likelihood_optimum():
    fit = decay().fit(FRAME, progress=False, dispersion="ml")
    assert fit.dispersion_estimator == "ml"
    ref = minimize(lambda z: nll(*z), [0.3, 100.0, 5.0], method="Nelder-Mead",
                   options={"xatol": 1e-10, "fatol": 1e-12, "maxiter": 10000})
    assert [fit.params[n] for n in ("k", "A0", "kd")] == pytest.approx(list(ref.x), rel=1e-4)
    assert fit.loss == pytest.approx(ref.fun, rel=1e-8)


def test_a_fixed_dispersion_fits_through_least_squares_to_the_scipy_optimum():
    """negbinomial deviance residuals on the fast path: same optimum as scipy on the closed form."""
    model = decay("const kd [1] = 4")
    solver = casadi_solver(model.ir, load_data(FRAME, model.ir), 1e-8, 1e-8, None)
    assert isinstance(solver, LeastSquaresSolver)
    fit = model.fit(FRAME, progress=False)
    assert fit.dispersion_estimator is None  # nothing to estimate about the dispersion
    ref = minimize(lambda z: nll(z[0], z[1], 4.0), [0.3, 100.0], method="Nelder-Mead",
                   options={"xatol": 1e-10, "fatol": 1e-12, "maxiter": 5000})
    assert fit.loss == pytest.approx(ref.fun, rel=1e-9)
    assert [fit.params["k"], fit.params["A0"]] == pytest.approx(list(ref.x), rel=1e-5)
    # Fisher information of the means: sum over points of grad(mu) grad(mu)' / (mu + mu^2 / kd)
    k, A0 = fit.params["k"], fit.params["A0"]
    mu = mean(k, A0)
    J = np.stack([-TIMES * mu, mu / A0], 1)
    cov = np.linalg.inv(J.T @ (J / (mu + mu ** 2 / 4.0)[:, None]))
    assert [fit.stderr["k"], fit.stderr["A0"]] == pytest.approx(list(np.sqrt(np.diag(cov))), rel=1e-4)
    # the exact Hessian from second-order sensitivities of the deviance residuals: IPOPT's
    exact = model.fit(FRAME, progress=False, hessian="exact")
    ipopt = model.fit(FRAME, progress=False, hessian="exact", ipopt_options={})
    assert [exact.stderr["k"], exact.stderr["A0"]] == pytest.approx([ipopt.stderr["k"], ipopt.stderr["A0"]], rel=1e-4)


def test_only_params_used_nowhere_but_a_negbinomial_dispersion_are_adjusted():
    data = load_data(FRAME, decay().ir)
    assert [p.name for p in dispersion_only(decay().ir, data)] == ["kd"]
    # a dispersion param that also sets the initial value is a mean param: maximum likelihood
    elsewhere = nimm_dsl.load_source(DECAY.format(dispersion=ESTIMATED).replace("= A0 in", "= A0 * kd / 5 in"))
    assert dispersion_only(elsewhere.ir, load_data(FRAME, elsewhere.ir)) == []
    assert elsewhere.fit(FRAME, progress=False).dispersion_estimator is None


def test_nimm_fit_reports_the_dispersion_estimator_and_writes_it_to_fit_json(tmp_path, capsys):
    model, data = tmp_path / "decay.nimm", tmp_path / "counts.csv"
    model.write_text(DECAY.format(dispersion=ESTIMATED))
    FRAME.to_csv(data, index=False)
    found = {}
    for option in ("adjusted", "ml"):
        out = tmp_path / f"{option}.json"
        assert main(["fit", str(model), str(data), "--dispersion", option, "--output", str(out)]) == 0
        report = capsys.readouterr().out
        document = json.loads(out.read_text())
        found[option] = document["params"]["kd"]
        assert document["dispersion_estimator"] == {"adjusted": "cox-reid", "ml": "ml"}[option]
        assert ("Cox–Reid" in report) == (option == "adjusted")
    assert found["adjusted"] < found["ml"]


def test_integral_observes_fit_through_least_squares_to_the_ipopt_optimum_with_its_standard_errors():
    """Weekly negbinomial counts of an SEIR's reported incidence (integral observes) on the fast
    path: each integral's sensitivity is the difference of its accumulator's sensitivities; same
    optimum and exact-Hessian standard errors as IPOPT on the CasADi loss graph."""
    from test_observation_models import SEIR, WEEKS

    model = nimm_dsl.load_source(SEIR.replace("param k [1] = 10 in [0.1, 1000]", "const k [1] = 8"))
    counts = np.array([3, 16, 25, 80, 190, 310, 920, 1500, 3900, 4400, 6100, 3800, 2300, 1700, 700.0])
    table = pd.DataFrame({"t": WEEKS, "weekly": counts})
    assert isinstance(casadi_solver(model.ir, load_data(table, model.ir), 1e-8, 1e-8, None), LeastSquaresSolver)
    fast = model.fit(table, progress=False, hessian="exact")
    ipopt = model.fit(table, progress=False, hessian="exact", ipopt_options={})
    assert fast.loss == pytest.approx(ipopt.loss, rel=1e-8)
    for name in ("beta", "rho"):
        assert fast.params[name] == pytest.approx(ipopt.params[name], rel=1e-5)
        assert fast.stderr[name] == pytest.approx(ipopt.stderr[name], rel=1e-3)


def test_profiles_of_the_mean_params_hold_the_adjusted_dispersion():
    """Refitting kd by maximum likelihood along a mean param's profile would fall below the fit's
    own loss at its estimate (the adjusted kd is not the ML one); held, the estimate is the minimum."""
    from nimm_dsl.runtime.fit import profile

    model = decay()
    fit = model.fit(FRAME, progress=False)
    found = profile(model.ir, FRAME, fit, ["k"])["k"]
    assert min(found["nll"]) == pytest.approx(fit.loss, rel=1e-9)
    assert found["values"][int(np.argmin(found["nll"]))] == pytest.approx(fit.params["k"], rel=1e-9)
    assert found["ci95"][0] < fit.params["k"] < found["ci95"][1]


def test_a_mean_direction_the_data_cannot_determine_leaves_the_adjusted_dispersion_as_without_it():
    """A0 * c is all the data see: J' W J is singular, and the adjustment uses the directions the
    data determine, so kd is the one of the model with A0 alone."""
    redundant = nimm_dsl.load_source(DECAY.format(dispersion=ESTIMATED + "\nparam c [1] = 1 in [0.1, 10]")
                                     .replace("= A0 in", "= A0 * c in"))
    fit = redundant.fit(FRAME, progress=False)
    alone = decay().fit(FRAME, progress=False)
    assert fit.params["kd"] == pytest.approx(alone.params["kd"], rel=1e-5)
    assert fit.params["A0"] * fit.params["c"] == pytest.approx(alone.params["A0"], rel=1e-5)
    assert "not determined by the data" in fit.labels["c"]


def test_a_dispersion_at_its_upper_bound_says_that_poisson_would_do():
    """Counts no more spread than Poisson around the model drive k to its upper bound; a language
    model behind the agent read only "widen the bound" and kept the negative binomial."""
    exact = pd.DataFrame({"t": TIMES, "y": np.round(mean(0.3, 100.0))})  # no noise at all
    fitted = decay().fit(exact, progress=False)
    assert fitted.params["kd"] == pytest.approx(100.0)
    assert any("the dispersion `kd` ran to its upper bound" in w and "`~ poisson`" in w
               for w in fitted.warnings)
    overdispersed = decay().fit(FRAME, progress=False)  # k well inside its bounds: no such advice
    assert not any("ran to its upper bound" in w for w in overdispersed.warnings)
