"""Doses from the data table and per-series params (docs/language.md §4 "Doses from the data",
"Per-series params"): binding diagnostics E611-W614 at the dose line, simulations against closed
forms in both back ends, scenarios that replace or remove table doses, and fits against
independent scipy fits of the same likelihood on the shipped Indometacin and Phenobarb data."""
from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy.optimize import minimize

import nimm_dsl
from nimm_dsl.cli import main
from nimm_dsl.runtime.binding import bind
from nimm_dsl.runtime.fit import format_report

ROOT = Path(__file__).resolve().parents[1]

# lines:   1        2             3                                            4
PK = ("model pk\ntime t [h]\nparam k [1/h] = 0.2 in [0.01, 2] per series\nconst W [kg] = 2\n"
      # 5                            6
      "state A [mg] = 0 in [0, inf]\nder(A) = -k * A\n"
      # 7
      "observe amount [mg] = A ~ normal(sigma = 0.05)\n"
      # 8
      "dose iv [ug/kg]: A += iv * W at data\n"
      # 9                  10                                     11
      "scenario double\n  dose iv [ug/kg]: A += 2 * iv * W at data\nend\n"
      # 12             13           14                         15
      "scenario text\n  remove iv\n  dose once: A += 1 at 0\nend\n")


def pk():
    return nimm_dsl.load_source(PK, "pk.nimm")


def table(**extra):
    rows = {"series": ["a", "a", "a", "b", "b", "b"], "t": [0, 1, 3, 0, 2, 4],
            "iv": [1000, None, None, 500, 250, None], "amount": [None, 1.6, 1.1, None, 0.9, 0.6]}
    rows.update(extra)
    return pd.DataFrame(rows)


def located(diagnostics):
    return [(d.code, d.span.line, d.span.column) for d in diagnostics]


def closed_form(times, doses, k):
    """Amount after IV boluses [(time, mg)] with first-order elimination."""
    times = np.asarray(times, dtype=float)
    return sum(np.where(times >= td, a * np.exp(-k * (times - td)), 0.0) for td, a in doses)


# ---------------------------------------------------------------- binding
def test_a_table_with_dose_rows_binds_cleanly():
    assert bind(pk(), table()) == []


def test_a_measurement_on_a_dose_row_is_after_the_dose_for_W606():
    # 2 mg given and 2.0 measured at t = 0 of series a: no "starts far from the data"
    assert bind(pk(), table(amount=[2.0, 1.6, 1.1, 1.0, 0.9, 0.6])) == []
    assert [d.code for d in bind(pk(), table(amount=[9.0, 1.6, 1.1, 1.0, 0.9, 0.6]))] == ["W606"]


def test_a_negative_amount_is_E612_at_the_dose_line():
    found = bind(pk(), table(iv=[1000, None, None, -5, 250, None]))
    assert located(found) == [("E612", 8, 1)]
    assert "row 4" in found[0].message and "-5" in found[0].message


def test_a_dose_after_the_series_last_observation_is_E613():
    found = bind(pk(), table(iv=[1000, None, None, 500, 250, 100], amount=[None, 1.6, 1.1, None, 0.9, None]))
    assert located(found) == [("E613", 8, 1)]
    assert "series `b`" in found[0].message and "t = 4" in found[0].message


def test_a_dose_column_the_model_does_not_read_is_E611():
    # a conventional dose column beside the model's own dose column: at the model line
    found = bind(pk(), table(amt=[None, None, None, 100, None, None]))
    assert located(found) == [("E611", 1, 1)] and "`iv`" in found[0].message
    text = PK.replace("dose iv [ug/kg]: A += iv * W at data", "dose iv: A += 1 at 0")
    text = text.replace("  dose iv [ug/kg]: A += 2 * iv * W at data\n", "  dose iv: A += 2 at 0\n")
    model = nimm_dsl.load_source(text, "pk.nimm")
    # a model that times every dose itself: a `dose` column is only ignored (LANGUAGE.md §7)
    assert located(bind(model, table().rename(columns={"iv": "dose"}))) == [("W605", 1, 1)]
    # a column named after a dose the model text times itself: at that dose's line
    found = bind(model, table())
    assert located(found) == [("E611", 8, 1)]
    assert "timed in the model text" in found[0].message and "at data" in found[0].hint


def test_a_table_dose_without_a_column_is_W614():
    found = bind(pk(), table().drop(columns="iv"))
    assert located(found) == [("W614", 8, 1)]


def test_at_data_without_a_unit_is_located():
    found = nimm_dsl.check("model m\ntime t [h]\nstate A [mg] = 0\nder(A) = -A / 1 [h]\n"
                           "dose iv: A += iv at data\n")
    assert [(d.code, d.span.line, d.span.column) for d in found if d.is_error] == [("E201", 5, 21)]
    assert "[UNIT]" in found[0].hint


def test_the_table_amount_is_checked_in_its_declared_unit():
    found = nimm_dsl.check("model m\ntime t [h]\nstate A [mg] = 0\nder(A) = -A / 1 [h]\n"
                           "dose iv [ug/kg]: A += iv at data\n")
    assert [(d.code, d.span.line) for d in found] == [("E405", 5)]


# ---------------------------------------------------------------- simulation
@pytest.mark.parametrize("backend", ["casadi", "torch"])
def test_table_doses_and_scenarios_match_the_closed_form(backend):
    model, t = pk(), np.linspace(0, 6, 13)
    doses = {"iv": ([0.0, 2.0], [1000.0, 250.0])}  # ug/kg, times 2 kg -> 2 mg and 0.5 mg
    base = model.simulate(t, backend=backend, doses=doses)["A"]
    assert np.allclose(base, closed_form(t, [(0, 2.0), (2, 0.5)], 0.2), rtol=1e-6, atol=1e-9)
    double = model.simulate(t, backend=backend, doses=doses, scenario="double")["A"]
    assert np.allclose(double, 2 * base, rtol=1e-6, atol=1e-9)
    text = model.simulate(t, backend=backend, doses=doses, scenario="text")["A"]
    assert np.allclose(text, closed_form(t, [(0, 1.0)], 0.2), rtol=1e-6, atol=1e-9)


def test_an_unknown_table_dose_is_refused():
    with pytest.raises(ValueError, match="unknown table dose"):
        pk().simulate([0, 1], doses={"oral": ([0.0], [1.0])})


# ---------------------------------------------------------------- per-series fits
def _indometh():
    data = pd.read_csv(ROOT / "examples/data/indometh_doses.csv")
    return data[data.conc.notna()]


def _indometh_reference():
    """Lognormal NLL of C = 25 mg / V * exp(-k_s t), V and sigma shared, k per subject."""
    obs = _indometh()
    subjects = list(dict.fromkeys(obs.series))
    idx = obs.series.map({s: i for i, s in enumerate(subjects)}).to_numpy()
    t, y = obs.t.to_numpy(), obs.conc.to_numpy()

    def nll(z):
        V, sigma, k = np.exp(z[0]), np.exp(z[1]), np.exp(z[2:])
        r = (np.log(25 / V) - k[idx] * t - np.log(y)) / sigma
        return np.sum(0.5 * r ** 2 + np.log(sigma) + np.log(y) + 0.5 * np.log(2 * np.pi))

    z0 = np.r_[np.log(20), np.log(0.4), np.full(len(subjects), np.log(0.4))]
    best = minimize(nll, z0, method="BFGS", options={"gtol": 1e-10, "maxiter": 10000})
    return np.exp(best.x), best.fun, subjects


def test_a_per_series_rate_matches_scipy_and_the_other_params_stay_shared():
    data = table()  # two series, doses of 2 mg (a) and 1 + 0.5 mg (b), sigma fixed
    from nimm_dsl.runtime.data import load_data
    from nimm_dsl.runtime.fit.casadi_paths import LeastSquaresSolver, casadi_solver

    # table doses and per-series params take the least-squares path (issue #15, target 2)
    assert isinstance(casadi_solver(pk().ir, load_data(data, pk().ir), 1e-8, 1e-8, 200), LeastSquaresSolver)
    fit = pk().fit(data, progress=False)
    obs = data[data.amount.notna()]

    def sse(z):
        return sum(np.sum((closed_form(g.t, doses, k) - g.amount) ** 2)
                   for k, (_, g), doses in zip(z, obs.groupby("series"), ([(0, 2.0)], [(0, 1.0), (2, 0.5)])))

    ref = minimize(sse, [0.2, 0.2], method="Nelder-Mead", options={"xatol": 1e-12, "fatol": 1e-14}).x
    assert fit.series_params["k"] == pytest.approx({"a": ref[0], "b": ref[1]}, rel=1e-4)
    assert fit.estimated == ["k"] and fit.params["k"] == pytest.approx(ref.mean(), rel=1e-4)
    report = format_report(fit)
    assert "k per series" in report and "\n    a " in report and "\n    b " in report


def test_simulate_gives_each_series_its_fitted_value_and_doses(tmp_path, capsys):
    """`nimm simulate --fit --data --scenario`: every subject's counterfactual, from FIT.json."""
    model = tmp_path / "pk.nimm"
    model.write_text(PK)
    data = tmp_path / "pk.csv"
    table().to_csv(data, index=False)
    fit = tmp_path / "fit.json"
    fit.write_text(json.dumps({"params": {"k": 0.3}, "series_params": {"k": {"a": 0.1, "b": 0.5}}}))
    out = tmp_path / "out.csv"
    assert main(["simulate", str(model), "--fit", str(fit), "--data", str(data), "--scenario", "double",
                 "--output", str(out)]) == 0
    got = pd.read_csv(out)
    for label, k, doses in (("a", 0.1, [(0, 2.0)]), ("b", 0.5, [(0, 1.0), (2, 0.5)])):
        rows = got[got.series == label]
        assert np.allclose(rows.A, 2 * closed_form(rows.t, doses, k), rtol=1e-6)


def test_simulate_says_which_series_take_the_mean_of_a_per_series_param(tmp_path, capsys):
    model = tmp_path / "pk.nimm"
    model.write_text(PK)
    data = tmp_path / "pk.csv"
    table(series=["a", "a", "a", "c", "c", "c"]).to_csv(data, index=False)  # `c` was never fitted
    fit = tmp_path / "fit.json"
    fit.write_text(json.dumps({"params": {"k": 0.3}, "series_params": {"k": {"a": 0.1, "b": 0.5}}}))
    out = tmp_path / "out.csv"
    assert main(["simulate", str(model), "--fit", str(fit), "--data", str(data), "--output", str(out)]) == 0
    err = capsys.readouterr().err
    assert "series `c` of" in err and "no fitted value of `k`" in err and "series `a`" not in err
    rows = pd.read_csv(out).query("series == 'c'")
    assert np.allclose(rows.A, closed_form(rows.t, [(0, 1.0), (2, 0.5)], 0.3), rtol=1e-6)  # the mean


def test_simulate_without_the_table_says_that_no_table_dose_is_given(tmp_path, capsys):
    model = tmp_path / "pk.nimm"
    model.write_text(PK)
    assert main(["simulate", str(model), "--times", "0:2:3"]) == 0
    out, err = capsys.readouterr()
    assert "dose(s) `iv` come from a data table" in err and "--data" in err
    assert set(pd.read_csv(io.StringIO(out)).A) == {0.0}  # what the warning explains
    # a scenario that replaces the table dose by one timed in the text gives it: nothing to say
    assert main(["simulate", str(model), "--times", "0:2:3", "--scenario", "text"]) == 0
    assert "come from a data table" not in capsys.readouterr().err


@pytest.mark.slow
def test_indometh_per_subject_elimination_matches_scipy_within_1_percent():
    ref, ref_nll, subjects = _indometh_reference()
    model = nimm_dsl.load(ROOT / "examples/indometh_per_subject.nimm")
    fit = model.fit(ROOT / "examples/data/indometh_doses.csv", progress=False)
    assert fit.params["V"] == pytest.approx(ref[0], rel=0.01)
    assert fit.params["sigma"] == pytest.approx(ref[1], rel=0.01)
    assert list(fit.series_params["k"]) == [str(s) for s in subjects]
    assert np.allclose(list(fit.series_params["k"].values()), ref[2:], rtol=0.01)
    assert fit.loss == pytest.approx(ref_nll, rel=1e-4)
    assert all(se is not None and se > 0 for se in fit.series_stderr["k"].values())
    saved = fit.to_json()
    assert set(saved["series_params"]["k"]) == {str(s) for s in subjects}
    assert saved["params"]["k"] == pytest.approx(np.mean(ref[2:]), rel=0.01)


@pytest.mark.slow
def test_indometh_torch_fit_agrees_with_casadi():
    model = nimm_dsl.load(ROOT / "examples/indometh_per_subject.nimm")
    data = ROOT / "examples/data/indometh_doses.csv"
    a = model.fit(data, backend="casadi", progress=False)
    b = model.fit(data, backend="torch", progress=False)
    assert b.loss == pytest.approx(a.loss, abs=1e-3)
    assert np.allclose(list(b.series_params["k"].values()), list(a.series_params["k"].values()), rtol=1e-3)


def _phenobarb_reference():
    """Normal NLL of the pooled one-compartment model, C = sum d_i / v exp(-cl/v (t - t_i))
    (weight cancels), by superposition of the table's boluses."""
    data = pd.read_csv(ROOT / "examples/data/phenobarb.csv")
    groups = [(g.t[g.iv.notna()].to_numpy(), g.iv[g.iv.notna()].to_numpy(),
               g.t[g.conc.notna()].to_numpy(), g.conc[g.conc.notna()].to_numpy())
              for _, g in data.groupby("series", sort=False)]

    def nll(z):
        cl, v, sigma = np.exp(z)
        total = 0.0
        for td, amt, to, y in groups:
            lag = to[:, None] - td[None, :]
            c = np.sum(np.where(lag >= 0, amt / v * np.exp(-cl / v * np.maximum(lag, 0)), 0.0), axis=1)
            total += np.sum(0.5 * ((c - y) / sigma) ** 2 + np.log(sigma) + 0.5 * np.log(2 * np.pi))
        return total

    best = minimize(nll, np.log([0.005, 1.0, 3.0]), method="Nelder-Mead",
                    options={"xatol": 1e-10, "fatol": 1e-10, "maxiter": 20000, "maxfev": 20000})
    return np.exp(best.x), best.fun, groups


@pytest.mark.slow
def test_phenobarb_59_subjects_match_scipy_within_1_percent_and_a_dose_counterfactual():
    ref, ref_nll, groups = _phenobarb_reference()
    model = nimm_dsl.load(ROOT / "examples/phenobarb.nimm")
    fit = model.fit(ROOT / "examples/data/phenobarb.csv", progress=False)
    for name, value in zip(("cl", "v", "sigma"), ref):
        assert fit.params[name] == pytest.approx(value, rel=0.01)
    assert fit.loss == pytest.approx(ref_nll, rel=1e-4)
    # every subject's counterfactual under doubled doses: twice its own baseline, and the closed form
    dataset = fit.dataset
    assert len(dataset.series) == 59
    for s, (td, amt, _, _) in zip(dataset.series, groups):
        base = model.simulate(s.times, params=fit.params, **s.run_options())["conc"]
        double = model.simulate(s.times, params=fit.params, scenario="double_dose", **s.run_options())["conc"]
        cl, v = fit.params["cl"], fit.params["v"]
        expected = closed_form(s.times, list(zip(td, amt / v)), cl / v)
        assert np.allclose(base, expected, rtol=1e-5, atol=1e-6)
        assert np.allclose(double, 2 * expected, rtol=1e-5, atol=1e-6)


def test_the_fit_plot_draws_each_series_with_its_own_value_and_doses(tmp_path):
    from nimm_dsl.runtime.binding import load_bound
    from nimm_dsl.runtime.fit import FitResult
    from nimm_dsl.runtime.plots import plot_fit

    model = pk()
    dataset = load_bound(model.ir, table())
    result = FitResult("pk", "casadi", {"k": 0.3}, 0.0, {}, {}, dataset=dataset,
                       series_params={"k": {"a": 0.1, "b": 0.5}})
    sim, seen = model.compile("casadi"), []

    class Recording:
        def simulate(self, times, **options):
            seen.append((options["params"]["k"], sorted(options["doses"])))
            return sim.simulate(times, **options)

    plot_fit(model.ir, dataset, result, Recording(), tmp_path / "fit.png")
    assert seen == [(0.1, ["iv"]), (0.5, ["iv"])]
    assert (tmp_path / "fit.png").stat().st_size > 0


def test_the_probe_runs_a_table_dose_model_with_and_without_its_table():
    from nimm_dsl.runtime.probe import probe

    text = PK.replace("normal(sigma = 0.05)", "lognormal(sigma = 0.1)")
    model = nimm_dsl.load_source(text, "pk.nimm")
    # without a table nothing is dosed: a zero amount is no finding under lognormal noise
    assert probe(model) == []
    # with the table, the first series' doses are given and predictions are judged
    assert probe(model, table(amount=[2.0, 1.6, 1.1, 1.0, 0.9, 0.6])) == []
    assert [d.code for d in probe(model, table(iv=[None, None, 1000, 500, 250, None]))] == ["W804"]


def test_nimm_check_with_data_reports_dose_problems_as_located_json(tmp_path, capsys):
    model = tmp_path / "pk.nimm"
    model.write_text(PK)
    data = tmp_path / "pk.csv"
    table(iv=[1000, None, None, -5, 250, None]).to_csv(data, index=False)
    assert main(["check", "--format", "json", str(model), "--data", str(data)]) == 1
    found = json.loads(capsys.readouterr().out)
    assert [(d["code"], d["line"], d["column"], d["severity"]) for d in found] == [("E612", 8, 1, "error")]


def test_a_table_dose_needs_a_clock():
    found = nimm_dsl.check("model m\ninput x [mg] = 1\nlet y [mg] = 2 * x\ndose iv [mg]: y += iv at data\n")
    assert ("E303", 4) in [(d.code, d.span.line) for d in found]


def test_one_series_estimates_a_per_series_param_once_under_its_name():
    data = table().query("series == 'a'").drop(columns="series")
    fit = pk().fit(data, progress=False)
    assert fit.series_params == {} and fit.estimated == ["k"] and fit.stderr["k"] is not None


def test_a_sigma_may_not_use_a_per_series_param():
    """Refused by the checker (E306 at the name), not first at fit time: clean means it fits."""
    text = PK.replace("normal(sigma = 0.05)", "normal(sigma = 0.05 [mg] * k * 1 [h])")
    found = [(d.code, d.span.line, d.span.column) for d in nimm_dsl.check(text)]
    assert found == [("E306", 7, 54)]
    assert "per-series param" in nimm_dsl.check(text)[0].message


def _three_series():
    # series c comes first and is too short for a hold-out point (round(0.2 * 2) = 0), so the
    # validation set holds a and b only: its series are not the training set's
    extra = pd.DataFrame({"series": ["c", "c"], "t": [0, 1], "iv": [1000, None], "amount": [None, 1.8]})
    return pd.concat([extra, table()], ignore_index=True)


def test_a_hold_out_with_fewer_validation_series_keeps_each_series_value():
    fit = pk().fit(_three_series(), holdout=0.2, progress=False)
    assert list(fit.series_params["k"]) == ["c", "a", "b"]
    assert np.isfinite(fit.metrics["holdout_loss"])


@pytest.mark.slow
def test_the_torch_validation_loss_reads_each_series_own_value():
    import torch

    from nimm_dsl.runtime.binding import load_bound
    from nimm_dsl.runtime.fit.loss import numpy_nll, predict
    from nimm_dsl.runtime.fit.torch_path import TorchObjective
    from nimm_dsl.runtime.series_params import estimated_params

    model = pk()
    train, valid = load_bound(model.ir, _three_series()).split(0.2)
    assert [s.label for s in valid.series] == ["a", "b"]
    est = estimated_params(model.ir, train)
    values = {"k": 0.3, "W": 2.0, "k[c]": 0.9, "k[a]": 0.1, "k[b]": 0.5}
    objective = TorchObjective(model.ir, model.compile("torch"), valid, 1e-8, 1e-8, est)
    got = float(objective(torch.tensor([values[p.name] for p in est], dtype=torch.float64), {}))
    expected = numpy_nll(model.ir, valid, predict(model.compile("casadi"), valid, values, None, 1e-8, 1e-8), values)
    assert got == pytest.approx(expected, rel=1e-6)
