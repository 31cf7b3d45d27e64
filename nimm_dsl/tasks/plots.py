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

    from ..runtime.plots import draw_bands, fit_uncertainty, mark_protocol

    uncertainty = fit_uncertainty(ir, fitted)
    series_list = dataset.series[:MAX_SERIES]
    fig, axes = plt.subplots(len(observes), len(series_list), squeeze=False,
                             figsize=(5.0 * len(series_list), 3.2 * len(observes)))
    for column, series in enumerate(series_list):
        fine = np.union1d(np.linspace(series.times[0], series.times[-1], FINE_POINTS), series.times)
        own = fitted.params_for(series.label)
        run = sim.simulate(fine, params=own, **series.run_options(), weights=fitted.weights or None)
        band = draw_bands(sim, ir, uncertainty and uncertainty.with_values(own), fine, BAND_LEVEL,
                          **series.run_options(), weights=fitted.weights or None, names=observes)
        in_train = series.rows <= n_train
        for row, observe in enumerate(observes):
            ax = axes[row][column]
            if (~in_train).any():
                ax.axvspan(series.times[~in_train][0], series.times[-1], color="0.92", lw=0,
                           label="test window")
            if band:
                ax.fill_between(fine, *band[observe], color="C0", alpha=0.18, lw=0,
                                label=f"{BAND_LEVEL:.0%} prediction interval")
            ax.plot(fine, run[observe], color="C0", label="fitted model")
            mark_protocol(ax, ir, None, fine[0], fine[-1])
            ax.plot(series.times[in_train], series.observed[observe][in_train], "o", ms=3.5,
                    color="k", label="train data")
            if (~in_train).any():
                ax.plot(series.times[~in_train], series.observed[observe][~in_train], "s", ms=3.5,
                        mfc="none", color="C3", label="test data")
            ax.set_xlabel(f"{ir.time_name} [{ir.time_unit}]")
            ax.set_ylabel(f"{observe} [{units.get(observe)}]")
            title = f"{observe}" + (f", series {series.label}" if series.label is not None else "")
            test = report.metrics.get("test", {}).get(observe, {})
            if test.get("rmse") is not None:
                title += f"  (test rmse {test['rmse']:.3g})"
            ax.set_title(title, fontsize=9)
    axes[0][0].legend(fontsize=7)
    fig.suptitle(f"{task.name}: {ir.name} fitted on train, forecast over test", fontsize=10)
    fig.tight_layout()
    save(fig, "fit_forecast.png")

    for cf in task.counterfactuals:
        if cf.scenario not in ir.scenarios or cf.truth is None:
            continue
        truth = load_data(cf.truth, ir, require_observed=False)
        shown = [o for o in observes if o in truth.observed_names]
        if not shown:
            continue
        series_list = truth.series[:MAX_SERIES]
        fig, axes = plt.subplots(len(shown), len(series_list), squeeze=False,
                                 figsize=(5.0 * len(series_list), 3.2 * len(shown)))
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
                ax = axes[row][column]
                ax.plot(series.times, series.observed[observe], "-", lw=3, color="0.75", label="truth")
                if band:
                    ax.fill_between(fine, *band[observe], color="C1", alpha=0.18, lw=0,
                                    label=f"{BAND_LEVEL:.0%} prediction interval")
                ax.plot(fine, under[observe], color="C1", label=f"model: {cf.scenario}")
                mark_protocol(ax, ir, cf.scenario, fine[0], fine[-1])
                ax.plot(fine, baseline[observe], "--", color="C0", label="model: factual")
                ax.set_xlabel(f"{ir.time_name} [{ir.time_unit}]")
                ax.set_ylabel(f"{observe} [{units.get(observe)}]")
                ax.set_title(observe + (f", series {series.label}" if series.label is not None else ""),
                             fontsize=9)
        axes[0][0].legend(fontsize=7)
        title = f"{task.name}: counterfactual `{cf.scenario}`" + (f" ({cf.description})" if cf.description else "")
        fig.suptitle(textwrap.fill(title, 55 * len(series_list)), fontsize=10)
        fig.tight_layout()
        save(fig, f"counterfactual_{cf.scenario}.png")
    return written


def _factual_options(dataset, label) -> dict:
    """The inputs and table doses of the training series `label` (else the first series)."""
    for series in dataset.series:
        if series.label == label:
            return series.run_options()
    return dataset.series[0].run_options() if dataset.series else {}
