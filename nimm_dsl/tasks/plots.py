"""Figures of an evaluation: the fit and its forecast with the test window shaded, and each
counterfactual against its truth and the factual (baseline) run. Matplotlib's Agg back end,
imported only when a plot is made."""
from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np

MAX_SERIES = 4  # columns of the grid; more series would be unreadable
FINE_POINTS = 300
BAND_LEVEL = 0.95  # the shaded band around the fitted model and each counterfactual


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def plot_evaluation(task, model, fitted, report, backend: str, directory: Path) -> list[Path]:
    """Writes DIR/fit_forecast.png and DIR/counterfactual_<scenario>.png; returns the paths."""
    import pandas as pd

    from ..runtime.data import load_data
    from ..runtime.files import write_bytes_atomic

    directory.mkdir(parents=True, exist_ok=True)
    ir = model.ir
    if ir.is_static:
        return []  # a static task's rows have no time axis to forecast along
    plt = _pyplot()
    sim = model.compile(backend)
    frames = [pd.read_csv(task.train, dtype=str, keep_default_na=False)]
    if task.test is not None:
        frames.append(pd.read_csv(task.test, dtype=str, keep_default_na=False))
    n_train = len(frames[0])
    dataset = load_data(pd.concat(frames, ignore_index=True), ir, file=str(task.train))
    from .evaluate import scored_observes

    observes = scored_observes(task, dataset)
    units = {o.name: o.unit for o in ir.observes}
    written = []

    def save(fig, name):
        import io

        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=110)
        plt.close(fig)
        written.append(write_bytes_atomic(directory / name, buffer.getvalue()))

    from ..runtime.plots import draw_bands, fit_uncertainty, interval_of, mark_protocol

    uncertainty = fit_uncertainty(ir, fitted)
    series_list = dataset.series[:MAX_SERIES]
    fig, axes, place = _panels(plt, len(observes), len(series_list))
    for column, series in enumerate(series_list):
        fine = np.union1d(np.linspace(series.times[0], series.times[-1], FINE_POINTS), series.times)
        own = fitted.params_for(series.label)
        run = sim.simulate(fine, params=own, **series.run_options(), weights=fitted.weights or None)
        band = draw_bands(sim, ir, uncertainty and uncertainty.with_values(own), fine, BAND_LEVEL,
                          **series.run_options(), weights=fitted.weights or None, names=observes)
        in_train = series.rows <= n_train
        for row, observe in enumerate(observes):
            ax = place(row, column)
            window = interval_of(ir, observe)
            if (~in_train).any():
                ax.axvspan(series.times[~in_train][0], series.times[-1], color="0.92", lw=0,
                           label="test window")
            if window is None:
                if band:
                    ax.fill_between(fine, *band[observe], color="C0", alpha=0.18, lw=0,
                                    label=f"{BAND_LEVEL:.0%} prediction interval")
                ax.plot(fine, run[observe], color="C0", label="fitted model")
            else:  # a count over an interval: the model's count held over each data interval
                at = np.searchsorted(fine, series.times)
                _interval_steps(ax, series.times, window, np.asarray(run[observe])[at],
                                band and [np.asarray(b)[at] for b in band[observe]], "C0", "fitted model")
            mark_protocol(ax, ir, None, fine[0], fine[-1], series.doses)
            _data(ax, series.times[in_train], series.observed[observe][in_train], window,
                  dict(marker="o", ms=3.5, color="k", label="train data"))
            if (~in_train).any():
                _data(ax, series.times[~in_train], series.observed[observe][~in_train], window,
                      dict(marker="s", ms=3.5, mfc="none", color="C3", label="test data"))
            ax.set_xlabel(f"{ir.time_name} [{ir.time_unit}]")
            ax.set_ylabel(f"{observe} [{units.get(observe)}]")
            title = f"{observe}" + (f", series {series.label}" if series.label is not None else "")
            test = report.metrics.get("test", {}).get(observe, {})
            if test.get("rmse") is not None:
                title += f"  (test rmse {test['rmse']:.3g})"
            ax.set_title(title, fontsize=9)
    axes[0][0].legend(fontsize=7)
    fig.suptitle(f"{task.name}: {ir.name} fitted on train, forecast over test", fontsize=10)
    save(fig, "fit_forecast.png")

    for cf in task.counterfactuals:
        if cf.scenario not in ir.scenarios or cf.truth is None:
            continue
        truth = load_data(cf.truth, ir, require_observed=False)
        shown = [o for o in observes if o in truth.observed_names]
        if not shown:
            continue
        series_list = truth.series[:MAX_SERIES]
        fig, axes, place = _panels(plt, len(shown), len(series_list))
        for column, series in enumerate(series_list):
            fine = np.union1d(np.linspace(series.times[0], series.times[-1], FINE_POINTS), series.times)
            factual = _factual_options(dataset, series.label)  # its inputs and table doses
            counterfactual = {**factual, "inputs": dict(series.inputs) or None}
            own = fitted.params_for(series.label)
            baseline = sim.simulate(fine, params=own, **factual, weights=fitted.weights or None)
            under = sim.simulate(fine, params=own, scenario=cf.scenario, **counterfactual,
                                 weights=fitted.weights or None)
            band = draw_bands(sim, ir, uncertainty and uncertainty.with_values(own), fine, BAND_LEVEL,
                              scenario=cf.scenario, **counterfactual, weights=fitted.weights or None,
                              names=shown)
            for row, observe in enumerate(shown):
                ax = place(row, column)
                window = interval_of(ir, observe)
                if window is None:
                    ax.plot(series.times, series.observed[observe], "-", lw=3, color="0.75", label="truth")
                    if band:
                        ax.fill_between(fine, *band[observe], color="C1", alpha=0.18, lw=0,
                                        label=f"{BAND_LEVEL:.0%} prediction interval")
                    ax.plot(fine, under[observe], color="C1", label=f"model: {cf.scenario}")
                    ax.plot(fine, baseline[observe], "--", color="C0", label="model: factual")
                else:  # counts over intervals: each held over the interval it counts
                    at = np.searchsorted(fine, series.times)
                    _interval_steps(ax, series.times, window, series.observed[observe], None, "0.75",
                                    "truth", lw=3)
                    _interval_steps(ax, series.times, window, np.asarray(under[observe])[at],
                                    band and [np.asarray(b)[at] for b in band[observe]], "C1",
                                    f"model: {cf.scenario}")
                    _interval_steps(ax, series.times, window, np.asarray(baseline[observe])[at], None, "C0",
                                    "model: factual", ls="--")
                mark_protocol(ax, ir, cf.scenario, fine[0], fine[-1], factual.get("doses"))
                ax.set_xlabel(f"{ir.time_name} [{ir.time_unit}]")
                ax.set_ylabel(f"{observe} [{units.get(observe)}]")
                ax.set_title(observe + (f", series {series.label}" if series.label is not None else ""),
                             fontsize=9)
        axes[0][0].legend(fontsize=7)
        title = f"{task.name}: counterfactual `{cf.scenario}`" + (f" ({cf.description})" if cf.description else "")
        fig.suptitle(textwrap.fill(title, 55 * axes.shape[1]), fontsize=10)
        save(fig, f"counterfactual_{cf.scenario}.png")
    return written


def _panels(plt, quantities: int, series: int):
    """A panel per quantity and series: one series wraps its quantities into a grid at most three
    wide (eight districts' counts would be one very tall column); several series get a column each."""
    from ..runtime.plots import grid_shape

    if series == 1:
        nrow, ncol = grid_shape(quantities)
    else:
        nrow, ncol = quantities, series
    fig, axes = plt.subplots(nrow, ncol, squeeze=False, figsize=(4.6 * ncol, 3.1 * nrow), layout="constrained")
    for k in range(quantities, nrow * ncol) if series == 1 else ():
        axes[k // ncol][k % ncol].axis("off")

    def place(row, column):
        return axes[divmod(row, ncol)] if series == 1 else axes[row][column]

    return fig, axes, place


def _interval_steps(ax, times, window, values, band, color, label, **style):
    """Counts over the intervals (t - window, t]: a step held over each interval (gid "interval"),
    with its prediction interval as a shaded step where there is one."""
    edges = np.r_[times[0] - window, times]
    held = np.r_[values[:1], values]
    if band:
        ax.fill_between(edges, np.r_[band[0][:1], band[0]], np.r_[band[1][:1], band[1]], step="pre",
                        color=color, alpha=0.18, lw=0, label=f"{BAND_LEVEL:.0%} prediction interval")
    ax.plot(edges, held, drawstyle="steps-pre", color=color, lw=style.pop("lw", 1.6), label=label,
            gid="interval", **style)


def _data(ax, times, values, window, style):
    """Data points; a count over an interval also as a bar over the interval it counts."""
    ok = np.isfinite(values)
    if window is not None:
        ax.hlines(values[ok], times[ok] - window, times[ok], color=style["color"], lw=2, alpha=0.6)
    ax.plot(times[ok], values[ok], ls="none", **style)


def _factual_options(dataset, label) -> dict:
    """The inputs and table doses of the training series `label` (else the first series)."""
    for series in dataset.series:
        if series.label == label:
            return series.run_options()
    return dataset.series[0].run_options() if dataset.series else {}
