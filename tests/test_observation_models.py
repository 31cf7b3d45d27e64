"""Observation models of LANGUAGE.md §11 (issue #13): the clock origin `time ... from T0`,
negative binomial counts and a normal sigma that uses the observe's own prediction.

Likelihoods are checked against scipy.stats on a model with a closed form (exponential decay),
through both fitting paths' own loss graphs (CasADi and Torch) at the same params."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

import nimm_dsl
from nimm_dsl.cli import main
from nimm_dsl.errors import FitError
from nimm_dsl.runtime.binding import bind
from nimm_dsl.runtime.data import load_data
from nimm_dsl.runtime.fit.loss import casadi_loss_ops, observation_nll, stirling_lgamma, torch_loss_ops
from nimm_dsl.runtime.probe import probe

ROOT = Path(__file__).resolve().parents[1]

DECAY = """model decay
time t [h]{origin}
param k [1/h] = 0.3 in [0.01, 2]
param A0 [mg] = 100 in [1, 1000]
{extra}
state A [mg] = A0 in [0, inf]
der(A) = -k * A
observe y [mg] = A ~ {noise}
"""


def decay(noise="normal(sigma = 1)", origin="", extra=""):
    return nimm_dsl.load_source(DECAY.format(noise=noise, origin=origin, extra=extra), "decay.nimm")


def errors(text):
    return [(d.code, d.span.line, d.span.column) for d in nimm_dsl.check(text) if d.is_error]


def fit_path_losses(model, frame, values):
    """The training loss at `values` as the CasADi (IPOPT) and the Torch fitting paths compute it."""
    import casadi as ca
    import torch

    from nimm_dsl.runtime.fit.casadi_paths import casadi_problem
    from nimm_dsl.runtime.fit.torch_path import TorchObjective

    ir = model.ir
    data = load_data(frame, ir)
    est = [p for p in ir.params if p.estimate]
    x = np.array([values[p.name] for p in est])
    problem = casadi_problem(ir, data, 1e-10, 1e-10)
    loss = ca.Function("loss", [problem.xs, problem.w], [problem.loss])
    casadi_value = float(loss(x / problem.scale, np.zeros(0)))
    objective = TorchObjective(ir, model.compile("torch"), data, 1e-10, 1e-10)
    torch_value = float(objective(torch.tensor(x, dtype=torch.float64), {}))
    return casadi_value, torch_value


# ---------------------------------------------------------------- clock origin
def test_initial_values_hold_at_the_origin_and_a_dose_there_applies_in_both_back_ends():
    model = decay(origin=" from 0", extra="dose d: A += 50 at 0")
    times = np.array([2.0, 5.0])
    exact = 150 * np.exp(-0.3 * times)  # without `from 0` the run would start at t = 2
    for backend in ("casadi", "torch"):
        res = model.compile(backend).simulate(times)
        np.testing.assert_allclose(res["A"], exact, rtol=1e-6)
        assert res.warnings == []
    plain = decay(extra="dose d: A += 50 at 0").compile("casadi").simulate(times)
    assert plain["A"][0] == pytest.approx(100) and "not applied" in plain.warnings[0]


def test_the_origin_is_a_constant_time_in_the_time_unit():
    text = DECAY.format(noise="poisson", origin=" from 2 [day]", extra="")
    assert errors(text) == []
    assert nimm_dsl.load_source(text).ir.t0 == pytest.approx(48.0)
    assert errors(DECAY.format(noise="poisson", origin=" from 2 [mg]", extra="")) == [("E405", 2, 17)]
    assert ("E306", 2, 17) in errors(DECAY.format(noise="poisson", origin=" from k", extra=""))


@pytest.mark.slow
def test_data_before_the_origin_is_e607_and_later_data_fit_from_the_origin(tmp_path):
    model = decay(origin=" from 1", extra="dose d: A += 50 at 1")
    early = pd.DataFrame({"t": [0.5, 2, 3], "y": [1, 2, 3]})
    found = bind(model, early, command="fit")
    assert [(d.code, d.span.line) for d in found] == [("E607", 2)]
    assert "row 1" in found[0].message and "0.5" in found[0].message
    times = np.array([2.0, 3.0, 5.0, 8.0])
    frame = pd.DataFrame({"t": times, "y": 150 * np.exp(-0.3 * (times - 1))})
    assert load_data(frame, model.ir).warnings == []  # the dose at the origin applies: no warning
    for backend in ("casadi", "torch"):
        fit = model.fit(frame, backend=backend, progress=False)
        assert fit.params["k"] == pytest.approx(0.3, rel=1e-4)
        assert fit.params["A0"] == pytest.approx(100, rel=1e-4)


def test_simulate_honours_the_origin_and_refuses_times_before_it(tmp_path, capsys):
    f = tmp_path / "m.nimm"
    f.write_text(DECAY.format(noise="normal(sigma = 1)", origin=" from 0", extra="dose d: A += 50 at 0"))
    data = tmp_path / "d.csv"
    data.write_text("t\n2\n4\n")
    out = tmp_path / "out.csv"
    assert main(["simulate", str(f), "--data", str(data), "--output", str(out)]) == 0
    np.testing.assert_allclose(pd.read_csv(out)["A"], 150 * np.exp(-0.3 * np.array([2, 4])), rtol=1e-6)
    capsys.readouterr()
    assert main(["simulate", str(f), "--times", "-1:3:3"]) == 2
    assert "before the model's clock origin" in capsys.readouterr().err
    data.write_text("t\n-1\n4\n")
    assert main(["simulate", str(f), "--data", str(data)]) == 1
    assert "E607" in capsys.readouterr().err


# ---------------------------------------------------------------- negative binomial
def test_stirling_lgamma_matches_scipy():
    from scipy.special import gammaln

    x = np.array([1e-3, 0.1, 0.5, 1.0, 2.7, 10.0, 123.4, 1e5])
    np.testing.assert_allclose(stirling_lgamma(x, np.log), gammaln(x), rtol=1e-12, atol=1e-10)


def test_negbinomial_nll_matches_scipy_in_every_array_library_with_zero_counts():
    import casadi as ca
    import torch

    y = np.array([0, 3, 17, 250, 1, 0.0])
    mu = np.array([0.5, 2.5, 20, 180, 0.01, 3.0])
    k = 2.7
    exact = -stats.nbinom.logpmf(y, k, k / (k + mu)).sum()
    assert observation_nll("negbinomial", y, mu, k) == pytest.approx(exact, rel=1e-12)
    value = observation_nll("negbinomial", y, ca.DM(mu), ca.DM(k), casadi_loss_ops())
    assert float(ca.Function("f", [], [value])()["o0"]) == pytest.approx(exact, rel=1e-10)
    value = observation_nll("negbinomial", y, torch.tensor(mu), torch.tensor(k, dtype=torch.float64),
                            torch_loss_ops())
    assert float(value) == pytest.approx(exact, rel=1e-12)


def test_negbinomial_fit_losses_match_scipy_in_both_fit_paths():
    model = decay("negbinomial(dispersion = kd)", extra="param kd [1] = 5 in [0.1, 100]")
    times = np.arange(0.0, 10.0)
    counts = np.array([97, 80, 48, 47, 21, 30, 12, 0, 9, 3], dtype=float)
    frame = pd.DataFrame({"t": times, "y": counts})
    values = {"k": 0.27, "A0": 95.0, "kd": 7.5}
    mu = values["A0"] * np.exp(-values["k"] * times)
    exact = -stats.nbinom.logpmf(counts, 7.5, 7.5 / (7.5 + mu)).sum()
    for value in fit_path_losses(model, frame, values):
        assert value == pytest.approx(exact, rel=1e-7)


def test_negbinomial_checks_its_dispersion_and_needs_counts():
    text = DECAY.format(noise="negbinomial(dispersion = kd)", origin="", extra="param kd [1] = 5 in [0.1, 100]")
    assert errors(text) == []
    assert errors(text.replace("param kd [1]", "param kd [mg]")) == [("E405", 8, 47)]  # dimensionless
    assert [c for c, _, _ in errors(DECAY.format(noise="negbinomial", origin="", extra=""))] == ["E503"]
    assert [c for c, _, _ in errors(DECAY.format(noise="negbinomial(dispersion = -1)", origin="", extra=""))] == ["E503"]
    assert errors(DECAY.format(noise="negbinomial(dispersion = A / A0)", origin="", extra="")) == [("E306", 8, 47)]
    model = nimm_dsl.load_source(text)
    found = bind(model, pd.DataFrame({"t": [0, 1, 2], "y": [5, 2.5, 1]}), command="fit")
    assert [(d.code, d.span.line) for d in found] == [("E603", 8)]
    assert "2.5 is not a count" in found[0].message and "negbinomial" in found[0].message


# ---------------------------------------------------------------- error that depends on the prediction
COMBINED = "normal(sigma = a + b * y)"
COMBINED_PARAMS = "param a [mg] = 0.5 in [0.01, 10]\nparam b [1] = 0.1 in [0.001, 1]"


def test_a_normal_sigma_may_use_the_observes_own_name_with_the_observes_unit():
    text = DECAY.format(noise=COMBINED, origin="", extra=COMBINED_PARAMS)
    assert errors(text) == []
    assert [c for c, _, _ in errors(text.replace("param b [1]", "param b [1/h]"))] == ["E401"]
    lognormal = DECAY.format(noise="lognormal(sigma = 0.1 * y / (1 [mg]))", origin="", extra="")
    found = [d for d in nimm_dsl.check(lognormal) if d.is_error]
    assert [(d.code, d.span.line) for d in found] == [("E306", 8)] and "only a `normal` sigma" in found[0].message


def test_combined_error_nll_matches_scipy_in_both_fit_paths():
    model = decay(COMBINED, extra=COMBINED_PARAMS)
    times = np.array([0.0, 1, 2, 4, 6, 9])
    y = np.array([103.0, 71, 57, 31, 16.5, 7.2])
    values = {"k": 0.29, "A0": 98.0, "a": 0.4, "b": 0.08}
    f = values["A0"] * np.exp(-values["k"] * times)
    exact = -stats.norm.logpdf(y, f, values["a"] + values["b"] * f).sum()
    for value in fit_path_losses(model, pd.DataFrame({"t": times, "y": y}), values):
        assert value == pytest.approx(exact, rel=1e-8)


NEGATIVE_SIGMA = "param a [mg] = -5 in [-10, 10]\nparam b [1] = 0.1 in [0, 1]"
SIGMA_DATA = pd.DataFrame({"t": [0.0, 20.0, 30.0], "y": [100.0, 0.2, 0.01]})


def test_a_sigma_that_reaches_zero_is_w804_in_the_probe_and_a_clear_fit_error():
    model = decay(COMBINED, extra=NEGATIVE_SIGMA)
    found = probe(model)
    assert [(d.code, d.span.line) for d in found] == [("W804", 9)]
    assert "sigma" in found[0].message
    assert_sigma_failure_is_named(model, "casadi")


@pytest.mark.slow
def test_the_torch_fit_names_a_sigma_that_reaches_zero_instead_of_crashing():
    """A NaN loss used to reach torch's L-BFGS line search, which raised IndexError."""
    assert_sigma_failure_is_named(decay(COMBINED, extra=NEGATIVE_SIGMA), "torch")


def assert_sigma_failure_is_named(model, backend):
    """Other starts may recover; the defaults' failure is named either way."""
    clear = r"the sigma of observe `y` is -4.97\d* where its prediction is 0.247\d* at t = 20 h"
    try:
        fit = model.fit(SIGMA_DATA, progress=False, max_iter=1, backend=backend)
    except FitError as e:
        assert re.search(clear, str(e))
    else:
        assert any(re.search(clear, w) for w in fit.warnings)


# ---------------------------------------------------------------- the shipped example
@pytest.mark.slow
def test_the_indometacin_example_fits_like_an_independent_scipy_fit_of_the_same_likelihood():
    """Pooled two-compartment fit with combined error; reference: a hand-written right-hand side
    integrated by scipy and minimised by scipy.optimize (log params)."""
    from scipy.integrate import solve_ivp
    from scipy.optimize import minimize

    data = pd.read_csv(ROOT / "examples" / "data" / "indometh.csv")
    grid = np.sort(data.t.unique())

    def nll(z):
        CL, V1, Q, V2, a, b = np.exp(z)
        rhs = lambda t, A: [-(CL + Q) / V1 * A[0] + Q / V2 * A[1], Q / V1 * A[0] - Q / V2 * A[1]]  # noqa: E731
        sol = solve_ivp(rhs, (0, grid[-1]), [25.0, 0.0], t_eval=grid, rtol=1e-11, atol=1e-12, method="LSODA")
        f = data.t.map(dict(zip(grid, sol.y[0] / V1))).to_numpy()
        return -stats.norm.logpdf(data.conc, f, a + b * f).sum()

    ref = minimize(nll, np.log([8, 9, 10, 15, 0.05, 0.1]), method="Nelder-Mead",
                   options=dict(xatol=1e-10, fatol=1e-12, maxiter=20000, maxfev=20000))
    ref = minimize(nll, ref.x, method="BFGS", options=dict(gtol=1e-8))
    model = nimm_dsl.load(ROOT / "examples" / "indometh_iv.nimm")
    fit = model.fit(ROOT / "examples" / "data" / "indometh.csv", progress=False)
    names = ["CL", "V1", "Q", "V2", "a", "b"]
    np.testing.assert_allclose([fit.params[n] for n in names], np.exp(ref.x), rtol=1e-3)
    assert fit.loss == pytest.approx(ref.fun, abs=1e-4)
    # the Torch path's loss at the reference optimum is the same likelihood
    reference = dict(zip(names, np.exp(ref.x)))
    _, torch_value = fit_path_losses(model, data, reference)
    assert torch_value == pytest.approx(ref.fun, abs=1e-5)


# ---------------------------------------------------------------- counts over an interval
SEIR = """model seir_weekly "SEIR with weekly reported counts"
time t [day] from 0
unit person
const N [person] = 100000
const I0 [person] = 10
param beta [1/day] = 0.6 in [0.1, 3]
const sigma [1/day] = 0.2
const gamma [1/day] = 0.25
param rho [1] = 0.3 in [0.01, 1]
param k [1] = 10 in [0.1, 1000]
state S [person] = N - I0 in [0, inf]
state E [person] = 0 in [0, inf]
state I [person] = I0 in [0, inf]
state R [person] = 0 in [0, inf]
flow S -> E = beta * S * I / N
flow E -> I = sigma * E
flow I -> R = gamma * I
observe weekly [person] = integral(rho * sigma * E, 7 [day]) ~ negbinomial(dispersion = k)

scenario distancing "contacts reduced by 40% from day 35"
  set beta = 0.6 * beta from 35
end
"""
WEEKS = 7.0 * np.arange(1, 16)


def seir_reference(times, beta=0.6, rho=0.3, window=7.0, switch=None):
    """Weekly counts of the SEIR above, from a hand-written right-hand side with the cumulative
    reported incidence as a fifth variable, integrated by scipy (beta * 0.6 from `switch` on)."""
    from scipy.integrate import solve_ivp

    def rhs(t, y):
        S, E, I, R, C = y
        b = beta * (0.6 if switch is not None and t >= switch else 1.0)
        new = b * S * I / 1e5
        return [-new, new - 0.2 * E, 0.2 * E - 0.25 * I, 0.25 * I, rho * 0.2 * E]

    grid = np.unique(np.r_[0.0, times, np.maximum(times - window, 0.0)])
    stops = [0.0, switch, grid[-1]] if switch is not None else [0.0, grid[-1]]
    y0, cumulative = [1e5 - 10, 0, 10, 0, 0], {}
    for a, b in zip(stops[:-1], stops[1:]):
        inside = grid[(grid >= a) & (grid <= b)]
        sol = solve_ivp(rhs, (a, b), y0, t_eval=inside, rtol=1e-12, atol=1e-9, method="LSODA")
        cumulative.update(zip(inside, sol.y[4]))
        y0 = sol.y[:, -1]
    return np.array([cumulative[t] - cumulative[max(t - window, 0.0)] for t in times])


def test_integral_checks_where_it_is_and_its_window():
    assert errors(SEIR) == []
    line = 18
    observe = "observe weekly [person] = integral(rho * sigma * E, 7 [day]) ~ negbinomial(dispersion = k)"

    def with_observe(text):
        return errors(SEIR.replace(observe, text))

    assert with_observe(observe.replace("7 [day]", "0 [day]")) == [("E503", line, 53)]
    assert with_observe(observe.replace("7 [day]", "7 [person]")) == [("E405", line, 53)]
    assert with_observe(observe.replace("7 [day]", "beta"))[0][:2] == ("E306", line)
    assert with_observe(observe.replace(", 7 [day])", ")")) == [("E205", line, 27)]
    assert ("E204", line, 36) in with_observe(observe.replace("rho * sigma * E", "integral(E, 1 [day])"))
    assert with_observe(observe.replace("7 [day])", "7 [day]) / (1 [day])")) == [("E405", line, 27)]
    in_let = SEIR.replace(observe, observe + "\nlet total = integral(E, 7 [day])")
    assert [c for c, ln, _ in errors(in_let) if ln == line + 1][0] == "E204"
    in_sigma = SEIR.replace("~ negbinomial(dispersion = k)", "~ normal(sigma = integral(E, 1 [day]))")
    assert ("E204", line, 79) in errors(in_sigma)
    assert [c for c, _, _ in errors(SEIR.replace("param k [1]", "param integral [1]"))][0] == "E203"


def test_integral_is_exact_in_both_back_ends_and_cut_at_the_start():
    model = nimm_dsl.load_source(SEIR)
    reference = seir_reference(WEEKS)
    late = nimm_dsl.load_source(SEIR.replace(" from 0\n", "\n"))  # starts at its first time
    for backend in ("casadi", "torch"):
        res = model.compile(backend).simulate(WEEKS)
        np.testing.assert_allclose(res["weekly"], reference, rtol=1e-6)
        assert not any("accumulator" in name for name in res.names)
        # without an origin the run starts at day 7: the first window is cut to nothing
        cut = late.compile(backend).simulate([7.0, 10.0])["weekly"]
        assert cut[0] == 0.0 and 0 < cut[1] < reference[0]
        # output times closer than the window: overlapping windows, each exact
        daily = model.compile(backend).simulate(np.arange(60.0, 71.0))["weekly"]
        np.testing.assert_allclose(daily, seir_reference(np.arange(60.0, 71.0)), rtol=1e-6)


def test_integral_follows_a_scenario_in_both_back_ends():
    model = nimm_dsl.load_source(SEIR)
    reference = seir_reference(WEEKS, switch=35.0)
    for backend in ("casadi", "torch"):
        res = model.compile(backend).simulate(WEEKS, scenario="distancing")
        np.testing.assert_allclose(res["weekly"], reference, rtol=1e-6)


def test_integral_losses_match_scipy_in_both_fit_paths():
    model = nimm_dsl.load_source(SEIR)
    counts = np.array([3, 16, 25, 80, 190, 310, 920, 1500, 3900, 4400, 6100, 3800, 2300, 1700, 700.0])
    values = {"beta": 0.58, "rho": 0.33, "k": 8.0}
    mean = seir_reference(WEEKS, beta=0.58, rho=0.33)
    exact = -stats.nbinom.logpmf(counts, 8.0, 8.0 / (8.0 + mean)).sum()
    for value in fit_path_losses(model, pd.DataFrame({"t": WEEKS, "weekly": counts}), values):
        assert value == pytest.approx(exact, rel=1e-7)


def test_simulate_writes_the_integral_observe_and_not_its_accumulator(tmp_path):
    f = tmp_path / "seir.nimm"
    f.write_text(SEIR)
    out = tmp_path / "out.csv"
    assert main(["simulate", str(f), "--times", "7:105:15", "--scenario", "distancing", "--output", str(out)]) == 0
    table = pd.read_csv(out)
    assert list(table.columns) == ["t", "S", "E", "I", "R", "weekly"]
    shown = nimm_dsl.load_source(SEIR).equations()
    assert "weekly = integral(E*rho*sigma, 7 day)" in shown and "accumulator" not in shown  # window with its unit
    np.testing.assert_allclose(table["weekly"], seir_reference(WEEKS, switch=35.0), rtol=1e-6)


@pytest.mark.slow
def test_weekly_negative_binomial_counts_recover_the_seir_and_beat_the_instantaneous_poisson_model():
    """Issue #13's study: 20 seeded data sets of 15 weekly counts, negative binomial around the
    reported weekly incidence (beta 0.6/day, rho 0.3, k 10). The integral model is fitted to all
    15 weeks (recovery), and to the first 10 next to the instantaneous-rate Poisson model that
    modelers wrote before (`rho * sigma * E * 7 [day] ~ poisson`); both are scored on the
    held-out last 5 weeks by their own likelihoods. Fits start away from the truth (beta 0.5,
    rho 0.5, k 5; one start each) and run at rtol 1e-6 to keep the 60 fits cheap.

    k: estimated by the Cox–Reid adjusted profile likelihood (the default; runtime/fit/dispersion.py).
    Maximum likelihood, with beta and rho fitted from the same 15 points, gives a median of 1.51 k
    on these data sets (the small-sample bias; 1.11 k with the means known); the adjusted
    profile gives 1.27 k, inside the issue's 30%."""
    from scipy.stats import nbinom, poisson

    truth = {"beta": 0.6, "rho": 0.3, "k": 10.0}
    start = (SEIR.replace("beta [1/day] = 0.6", "beta [1/day] = 0.5").replace("rho [1] = 0.3", "rho [1] = 0.5")
             .replace("k [1] = 10", "k [1] = 5"))
    integral_model = nimm_dsl.load_source(start)
    instantaneous = nimm_dsl.load_source(start.replace(
        "integral(rho * sigma * E, 7 [day]) ~ negbinomial(dispersion = k)", "rho * sigma * E * 7 [day] ~ poisson")
        .replace("param k [1] = 5 in [0.1, 1000]\n", ""))
    fast = dict(progress=False, rtol=1e-6, atol=1e-6)
    sim_nb, sim_po = integral_model.compile("casadi"), instantaneous.compile("casadi")
    mean = sim_nb.simulate(WEEKS, params=truth)["weekly"]
    estimates, wins = [], 0
    for seed in range(20):
        rng = np.random.default_rng(seed)
        counts = rng.negative_binomial(truth["k"], truth["k"] / (truth["k"] + mean)).astype(float)
        table = pd.DataFrame({"t": WEEKS, "weekly": counts})
        full = integral_model.fit(table, simulator=sim_nb, **fast)
        estimates.append([full.params[n] for n in ("beta", "rho", "k")])
        nb = integral_model.fit(table.iloc[:10], simulator=sim_nb, **fast).params
        po = instantaneous.fit(table.iloc[:10], simulator=sim_po, **fast).params
        held_out = counts[10:]
        m_nb = sim_nb.simulate(WEEKS, params=nb)["weekly"][10:]
        m_po = sim_po.simulate(WEEKS, params=po)["weekly"][10:]
        nll_nb = -nbinom.logpmf(held_out, nb["k"], nb["k"] / (nb["k"] + m_nb)).sum()
        nll_po = -poisson.logpmf(held_out, m_po).sum()
        wins += nll_nb < nll_po
    beta, rho, k = np.median(np.array(estimates), axis=0)
    assert beta == pytest.approx(truth["beta"], rel=0.10)
    assert rho == pytest.approx(truth["rho"], rel=0.10)
    assert k == pytest.approx(truth["k"], rel=0.30)
    assert wins >= 15


def test_scenario_plots_draw_interval_counts_as_steps_over_their_week():
    """Weekly counts are drawn held over the week that ends at each output time (steps), baseline
    and scenario alike, and the data as a bar over their week; a state stays a curve."""
    from matplotlib.collections import LineCollection

    from nimm_dsl.runtime.data import Series
    from nimm_dsl.runtime.plots import ScenarioRun, scenario_figure

    model = nimm_dsl.load_source(SEIR)
    sim = model.compile("casadi")
    base, under = sim.simulate(WEEKS), sim.simulate(WEEKS, scenario="distancing")
    data = Series(None, WEEKS, {"weekly": np.asarray(base["weekly"], float)}, {}, np.arange(len(WEEKS)))
    fig = scenario_figure([ScenarioRun(base, under, None, None, data, None)], model.ir, states=True,
                          scenario="distancing")
    weekly, exposed = (next(a for a in fig.axes if a.get_title() == n) for n in ("weekly", "E"))
    assert [ln.get_drawstyle() for ln in weekly.get_lines()] == ["steps-pre", "steps-pre"]
    assert [ln.get_drawstyle() for ln in exposed.get_lines()] == ["default", "default"]
    (bars,) = [c for c in weekly.collections if isinstance(c, LineCollection)]
    first = bars.get_segments()[0]
    assert first[0][0] == pytest.approx(0.0) and first[1][0] == pytest.approx(7.0)
