"""Figures inspected as matplotlib objects: panel count and layout, axis labels with units, a
vertical line per dose time, a span per set window, one facet per series, bands as shading."""
import numpy as np
import pandas as pd
import pytest

import nimm_dsl
from nimm_dsl.runtime.data import load_data
from nimm_dsl.runtime.plots import ScenarioRun, fit_figure, grid_shape, scenario_figure

MODEL = """
model pk "an oral dose every 12 h"
time t [h]
param ka [1/h] = 1.2 in [0.1, 10]
param ke [1/h] = 0.25 in [0.01, 5]
param sigma [mg] = 0.3 in [0.01, 5]
param sigma_lost [mg/h] = 0.3 in [0.01, 5]
state G [mg] = 0 in [0, inf] "gut"
state A [mg] = 0 in [0, inf] "body"
let out [mg/h] = ke * A
der(G) = -ka * G
der(A) = ka * G - out
observe amount [mg] = A ~ normal(sigma = sigma)
observe lost [mg/h] = out ~ normal(sigma = sigma_lost)
dose D: G += 10 at 0 every 12 times 3
set ke = 0.5 * ke from 30 to 36
scenario blocked "elimination slowed from 6 h to 18 h"
  set ke = 0.1 * ke from 6 to 18
end
"""


@pytest.fixture(scope="module")
def fitted():
    model = nimm_dsl.load_source(MODEL, "pk.nimm")
    sim = model.compile()
    t = np.linspace(0, 36, 25)
    clean = sim.simulate(t)
    rng = np.random.default_rng(0)
    data = pd.DataFrame({"t": t, "amount": np.asarray(clean["amount"]) + 0.3 * rng.standard_normal(t.size),
                         "lost": np.asarray(clean["lost"]) + 0.3 * rng.standard_normal(t.size)})
    return model, sim, data, model.fit(data, progress=False)


def _shown(fig):
    return [ax for ax in fig.axes if ax.axison]


def _gid(ax, gid):
    return [a for a in (*ax.lines, *ax.patches) if a.get_gid() == gid]


def test_grid_keeps_panels_at_most_three_wide():
    assert [grid_shape(n) for n in (1, 2, 3, 4, 7)] == [(1, 1), (1, 2), (1, 3), (2, 3), (3, 3)]


@pytest.mark.slow
def test_fit_figure_panels_units_doses_windows_and_bands(fitted):
    model, sim, data, res = fitted
    fig = fit_figure(model.ir, res.dataset, res, sim, bands=0.95)
    axes = _shown(fig)
    # two observes and the hidden gut state, in a grid of one row of three
    assert [ax.get_title() for ax in axes] == ["amount", "lost", "G"]
    assert axes[0].get_subplotspec().get_gridspec().get_geometry() == (1, 3)
    assert [ax.get_ylabel() for ax in axes] == ["amount [mg]", "lost [mg/h]", "G [mg] (hidden)"]
    assert all(ax.get_xlabel() == "t [h]" for ax in axes)
    for ax in axes:
        assert sorted(line.get_xdata()[0] for line in _gid(ax, "dose")) == [0.0, 12.0, 24.0]
        (span,) = _gid(ax, "set window")  # the baseline's set window, not the scenario's
        xs = span.get_x(), span.get_x() + span.get_width()
        assert xs == pytest.approx((30.0, 36.0))
        assert len(ax.collections) == 1  # the band
    assert "95% prediction interval" in axes[0].get_legend_handles_labels()[1]
    import matplotlib.pyplot as plt

    plt.close(fig)


def test_log_axes_only_where_everything_is_positive(fitted):
    model, sim, data, res = fitted
    fig = fit_figure(model.ir, res.dataset, res, sim, log=True)
    scales = {ax.get_title(): ax.get_yscale() for ax in _shown(fig)}
    # the gut holds the dose from t = 0 on; the body starts empty (A(0) = 0), so it stays linear
    assert scales == {"amount": "linear", "lost": "linear", "G": "log"}
    import matplotlib.pyplot as plt

    plt.close(fig)


def test_log_axes_label_minor_ticks_as_plain_numbers_within_one_decade():
    """A log axis over less than a decade has at most one major tick, so its minor ticks carry the
    labels: they read `2`, `3000`, `0.4`, not matplotlib's `2x10^0`."""
    import matplotlib.pyplot as plt

    from nimm_dsl.runtime.plots import _log_axis

    for low, high, expected in [(3, 9, ["2", "3", "4", "6"]), (3000, 9000, ["2000", "3000", "4000", "6000"]),
                                (0.2, 0.7, ["0.2", "0.3", "0.4", "0.6"]), (3, 300, [])]:
        fig, ax = plt.subplots()
        ax.plot([0, 1], [low, high])
        _log_axis(ax)
        fig.canvas.draw()
        assert [t.get_text() for t in ax.get_yticklabels(minor=True) if t.get_text()] == expected
        plt.close(fig)


def test_scenario_figure_shows_observes_shades_the_window_and_facets_series(fitted):
    model, sim, data, res = fitted
    t = np.linspace(0, 36, 73)
    two = pd.concat([data.assign(series="a"), data.assign(series="b")], ignore_index=True)
    dataset = load_data(two, model.ir)
    runs = [ScenarioRun(sim.simulate(t, params=res.params), sim.simulate(t, params=res.params, scenario="blocked"),
                        data=s, label=s.label) for s in dataset.series]
    fig = scenario_figure(runs, model.ir, scenario="blocked")
    axes = _shown(fig)
    assert axes[0].get_subplotspec().get_gridspec().get_geometry() == (2, 2)  # a row per series
    assert [ax.get_title() for ax in axes] == ["amount, series a", "lost, series a",
                                               "amount, series b", "lost, series b"]
    for ax in axes:
        windows = sorted((p.get_x(), p.get_x() + p.get_width()) for p in _gid(ax, "set window"))
        assert windows == [pytest.approx((6.0, 18.0)), pytest.approx((30.0, 36.0))]
        assert len(_gid(ax, "dose")) == 3
        assert "data" in ax.get_legend_handles_labels()[1] or ax is not axes[0]
        assert sum(1 for line in ax.lines if line.get_marker() == "o") == 1  # the data points
    one = scenario_figure(runs, model.ir, names=["amount"])  # one quantity: the facets wrap
    assert one.axes[0].get_subplotspec().get_gridspec().get_geometry() == (1, 2)
    assert [ax.get_title() for ax in _shown(one)] == ["amount, series a", "amount, series b"]
    import matplotlib.pyplot as plt

    plt.close(one)
    fig2 = scenario_figure(runs[:1], model.ir, states=True)
    # A is `amount` already: only the gut is added
    assert [ax.get_title() for ax in _shown(fig2)] == ["amount, series a", "lost, series a", "G, series a"]
    plt.close(fig)
    plt.close(fig2)


def test_evaluation_figures_shade_the_prediction_interval_and_mark_doses(tmp_path, monkeypatch):
    from matplotlib.figure import Figure

    from nimm_dsl.tasks import evaluate, load_task

    (tmp_path / "decay.nimm").write_text(
        "model decay\ntime t [day]\nparam k [1/day] = 0.4 in [0.01, 5]\nparam s [mg] = 0.5 in [0.01, 10]\n"
        "state x [mg] = 10 in [0, inf]\nder(x) = -k * x\nobserve y [mg] = x ~ normal(sigma = s)\n"
        "dose D: x += 5 at 2\nscenario slower \"half the rate\"\n  set k = 0.5 * k from 1 to 3\nend\n")
    (tmp_path / "train.csv").write_text("t,y\n0,10.3\n1,6.2\n2,8.6\n3,5.5\n")
    (tmp_path / "test.csv").write_text("t,y\n4,3.1\n5,2.2\n")
    (tmp_path / "truth.csv").write_text("t,y\n0,10\n2,13\n4,7\n")
    (tmp_path / "task.toml").write_text(
        '[task]\nname = "decay"\ndescription = "a drug decays"\n[data]\ntrain = "train.csv"\ntest = "test.csv"\n'
        '[[counterfactual]]\nscenario = "slower"\ndescription = "half k"\ntruth = "truth.csv"\n')
    figures = []
    original = Figure.savefig
    monkeypatch.setattr(Figure, "savefig", lambda fig, *a, **k: (figures.append(fig), original(fig, *a, **k))[1])
    report = evaluate(load_task(tmp_path / "task.toml"), tmp_path / "decay.nimm", plot_dir=tmp_path / "plots")
    assert report.ok and len(figures) == 2
    for fig, window in zip(figures, ([], [(1.0, 3.0)])):
        (ax,) = [a for a in fig.axes if a.axison]
        assert [line.get_xdata()[0] for line in ax.lines if line.get_gid() == "dose"] == [2.0]
        assert [(p.get_x(), p.get_x() + p.get_width()) for p in ax.patches if p.get_gid() == "set window"] == window
        assert "95% prediction interval" in ax.get_legend_handles_labels()[1]


TABLE_DOSES = """
model iv "a bolus per subject, from the table"
time t [h]
param k [1/h] = 0.3 in [0.01, 5]
state A [mg] = 0 in [0, inf]
der(A) = -k * A
observe amount [mg] = A ~ lognormal(sigma = 0.1)
dose iv [mg]: A += iv at data
scenario none "no dose"
  remove iv
end
"""


def test_figures_mark_each_series_own_doses_from_the_table():
    model = nimm_dsl.load_source(TABLE_DOSES, "iv.nimm")
    sim = model.compile()
    table = pd.DataFrame({"series": [1, 1, 1, 1, 2, 2, 2, 2],
                          "t": [0, 1, 2, 4, 0, 3, 4, 6],
                          "iv": [10, np.nan, 5, np.nan, np.nan, 8, np.nan, np.nan],
                          "amount": [np.nan, 7.4, 10.5, 6.3, np.nan, 8.0, 5.9, 3.3]})
    res = model.fit(table, progress=False)
    import matplotlib.pyplot as plt

    fig = fit_figure(model.ir, res.dataset, res, sim)
    marked = {ax.get_title(): sorted(line.get_xdata()[0] for line in _gid(ax, "dose")) for ax in _shown(fig)}
    assert marked == {"amount, series 1": [0.0, 2.0], "amount, series 2": [3.0]}
    plt.close(fig)
    t = np.linspace(0, 6, 13)
    runs = [ScenarioRun(sim.simulate(t, params=res.params, **s.run_options()),
                        sim.simulate(t, params=res.params, scenario="none", **s.run_options()), data=s, label=s.label)
            for s in res.dataset.series]
    for scenario, expected in ((None, [3.0]), ("none", [])):  # a removed table dose is not marked
        fig = scenario_figure(runs if scenario else [ScenarioRun(runs[1].baseline, data=runs[1].data)],
                              model.ir, scenario=scenario)
        assert [sorted(line.get_xdata()[0] for line in _gid(ax, "dose")) for ax in _shown(fig)][-1] == expected
        plt.close(fig)


WIDE = """
model wide "two compartments and two hidden ones per subject"
time t [h]
param k [1/h] = 0.3 in [0.01, 3]
state A [mg] = 10
state B [mg] = 0
state C [mg] = 0
state D [mg] = 0
flow A -> B = k * A
flow B -> C = k * B
flow C -> D = k * C
observe a [mg] = A ~ normal(sigma = 0.1 [mg])
observe b [mg] = B ~ normal(sigma = 0.1 [mg])
"""


def test_several_series_wrap_their_panels_at_three_columns():
    import matplotlib.pyplot as plt

    model = nimm_dsl.load_source(WIDE, "wide.nimm")
    t = np.linspace(0, 10, 6)
    clean = model.simulate(t)
    table = pd.DataFrame({"series": [1] * 6 + [2] * 6, "t": np.r_[t, t],
                          "a": np.r_[clean["a"], clean["a"]], "b": np.r_[clean["b"], clean["b"]]})
    res = model.fit(table, progress=False)
    fig = fit_figure(model.ir, res.dataset, res, model.compile())
    grid = fig.axes[0].get_gridspec()
    assert (grid.nrows, grid.ncols) == (4, 3)  # 4 panels per series (a, b, hidden C, D): 2 rows each
    titles = [ax.get_title() for ax in _shown(fig)]
    assert titles == [f"{q}, series {s}" for s in (1, 2) for q in ("a", "b", "C", "D")]
    plt.close(fig)


def test_a_large_family_fit_plot_leaves_its_hidden_states_out_and_says_so():
    import matplotlib.pyplot as plt

    text = """model many "thirty hidden compartments"
time t [h]
index n = 1..30
param k [1/h] = 0.3 in [0.01, 3]
state X[i in n] [mg] = i
der(X[i]) = -k * X[i]
observe total [mg] = sum(i in n, X[i]) ~ normal(sigma = 0.1 [mg])
"""
    model = nimm_dsl.load_source(text, "many.nimm")
    t = np.linspace(0, 5, 6)
    res = model.fit(pd.DataFrame({"t": t, "total": model.simulate(t)["total"]}), progress=False)
    fig = fit_figure(model.ir, res.dataset, res, model.compile())
    assert [ax.get_title() for ax in _shown(fig)] == ["total"]
    assert "30 hidden states not drawn" in fig.get_suptitle()
    plt.close(fig)
