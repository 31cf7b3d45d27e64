"""Figures for fits and scenarios (matplotlib, Agg back end, imported only when a plot is made)."""
from __future__ import annotations

import os
from typing import Optional, Sequence

import numpy as np

MAX_SERIES_PLOTTED = 6  # more series would make an unreadable grid; the first ones are shown
FINE_GRID = 400


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _label(name: str, unit: Optional[str]) -> str:
    return f"{name} [{unit}]" if unit else name


def hidden_states(ir, observed_names: Sequence[str]) -> list[str]:
    """States that no observed quantity reports directly (`observe y = X` makes X visible)."""
    shown = {o.expr for o in ir.observes if o.name in observed_names}
    return [s.name for s in ir.reported_states if s.symbol not in shown]


def plot_fit(ir, dataset, fit_result=None, simulator=None, path=None) -> str:
    """Data points against the fitted model: per series (rows) one panel per observed quantity,
    then one per hidden state. The trajectory is simulated on a fine grid from each series' start.
    Static models get predicted-versus-observed panels. Returns the path written.

    Also callable as `plot_fit(ir, fit_result, path)`: the data are then the fit's own
    (`fit_result.dataset`) and the simulator a CasADi one."""
    if hasattr(dataset, "params") and hasattr(dataset, "dataset"):  # plot_fit(ir, fit_result, path)
        dataset, fit_result, path = dataset.dataset, dataset, fit_result
    if dataset is None or fit_result is None or path is None:
        raise ValueError("plot_fit needs the data, the fit result and an output path")
    if simulator is None:
        from ..backends.casadi_backend import compile_casadi

        simulator = compile_casadi(ir)
    plt = _pyplot()
    params = dict(fit_result.params)
    weights = getattr(fit_result, "weights", None) or None
    series = dataset.series[:MAX_SERIES_PLOTTED]
    obs_units = {o.name: o.unit for o in ir.observes}
    if dataset.static:
        return _plot_static_fit(plt, ir, dataset, params, weights, simulator, path)

    hidden = hidden_states(ir, dataset.observed_names)
    columns = list(dataset.observed_names) + hidden
    state_units = {s.name: s.unit for s in ir.states}
    fig, axes = plt.subplots(len(series), len(columns), squeeze=False,
                             figsize=(3.6 * len(columns), 2.8 * len(series)))
    time_label = _label(ir.time_name, ir.time_unit)
    for r, s in enumerate(series):
        grid = np.linspace(s.times[0] if ir.t0 is None else ir.t0, s.times[-1], FINE_GRID)  # from the run's start
        grid = np.union1d(grid, s.times)  # exact values at the data times (dose jumps stay sharp)
        res = simulator.simulate(grid, params=fit_result.params_for(s.label), **s.run_options(), weights=weights)
        for c, name in enumerate(columns):
            ax = axes[r][c]
            window = _interval(ir, name)
            if window is None or name not in s.observed:
                ax.plot(grid, res[name], color="C0", lw=1.6, label="fit")
            if name in s.observed:
                y = s.observed[name]
                ok = np.isfinite(y)
                if window is not None:  # a count over an interval: drawn over the interval it covers
                    at = np.searchsorted(grid, s.times[ok])
                    ax.hlines(np.asarray(res[name])[at], s.times[ok] - window, s.times[ok], color="C0", lw=1.6,
                              label="fit")
                    ax.hlines(y[ok], s.times[ok] - window, s.times[ok], color="C1", lw=2.4, alpha=0.7, label="data")
                else:
                    ax.plot(s.times[ok], y[ok], "o", color="C1", ms=4, label="data")
                ax.set_ylabel(_label(name, obs_units.get(name)))
            else:
                ax.set_ylabel(_label(name, state_units.get(name)) + " (hidden)")
            ax.set_xlabel(time_label)
            cut = getattr(fit_result, "holdout_after", {}).get(r)
            if cut is not None:  # the held-out end of the series, not used for fitting
                ax.axvspan(cut, s.times[-1], color="0.9", zorder=0,
                           label="held out" if r == 0 and c == 0 else None)
            title = name if s.label is None else f"{name} — series {s.label}"
            ax.set_title(title, fontsize=9)
            if r == 0 and c == 0:
                ax.legend(fontsize=8)
    more = len(dataset.series) - len(series)
    suptitle = f"{ir.name}: fit" + (f" (first {len(series)} of {len(dataset.series)} series)" if more > 0 else "")
    fig.suptitle(suptitle)
    fig.tight_layout()
    return _save(plt, fig, path)


def _interval(ir, name: str) -> Optional[float]:
    """The window of an observe that is a count over an interval (`integral(RATE, WINDOW)`;
    the longest when it has several), else None."""
    o = next((o for o in ir.observes if o.name == name), None)
    windows = [g.window for g in ir.integrals if o is not None and g.symbol in o.expr.free_symbols]
    return max(windows) if windows else None


def _plot_static_fit(plt, ir, dataset, params, weights, simulator, path) -> str:
    s = dataset.series[0]
    res = simulator.simulate(None, params=params, inputs=s.input_frame(), weights=weights)
    names = list(dataset.observed_names)
    units = {o.name: o.unit for o in ir.observes}
    fig, axes = plt.subplots(1, len(names), squeeze=False, figsize=(3.8 * len(names), 3.4))
    for c, name in enumerate(names):
        ax = axes[0][c]
        y, pred = s.observed[name], np.asarray(res[name])
        ok = np.isfinite(y)
        ax.plot(y[ok], pred[ok], "o", ms=4, color="C1")
        lo, hi = np.nanmin(np.r_[y[ok], pred[ok]]), np.nanmax(np.r_[y[ok], pred[ok]])
        ax.plot([lo, hi], [lo, hi], "--", color="gray", lw=1)
        ax.set_xlabel("observed " + _label(name, units.get(name)))
        ax.set_ylabel("fitted " + _label(name, units.get(name)))
    fig.suptitle(f"{ir.name}: fitted against observed")
    fig.tight_layout()
    return _save(plt, fig, path)


def plot_scenario(baseline_result, scenario_result, path, names: Optional[Sequence[str]] = None,
                  title: Optional[str] = None, scenario: Optional[str] = None) -> str:
    """Baseline against counterfactual, one panel per name (default: every name of the result:
    states, lets, observes). scenario_result None plots the baseline alone. Returns the path."""
    plt = _pyplot()
    names = list(names) if names else list(baseline_result.names)
    units = getattr(baseline_result, "units", {}) or {}
    time_name, time_unit = _time_axis(baseline_result)
    if scenario is None and scenario_result is not None:
        scenario = getattr(scenario_result, "scenario", None)
    n = len(names)
    ncol = min(n, 3)
    nrow = -(-n // ncol)
    fig, axes = plt.subplots(nrow, ncol, squeeze=False, figsize=(3.8 * ncol, 2.9 * nrow))
    for k, name in enumerate(names):
        ax = axes[k // ncol][k % ncol]
        ax.plot(baseline_result.times, np.asarray(baseline_result[name]).T, color="C0", label="baseline")
        if scenario_result is not None:
            ax.plot(scenario_result.times, np.asarray(scenario_result[name]).T, color="C3", ls="--",
                    label=scenario or "scenario")
        ax.set_ylabel(_label(name, units.get(name)))
        ax.set_xlabel(_label(time_name, time_unit))
        if k == 0 and scenario_result is not None:
            handles, labels = ax.get_legend_handles_labels()
            ax.legend(handles[:1] + handles[-1:], labels[:1] + labels[-1:], fontsize=8)
    for k in range(n, nrow * ncol):
        axes[k // ncol][k % ncol].axis("off")
    default_title = "simulation" if scenario_result is None else f"baseline vs {scenario or 'scenario'}"
    fig.suptitle(title or default_title)
    fig.tight_layout()
    return _save(plt, fig, path)


def _save(plt, fig, path) -> str:
    """Write the figure; a name without extension gets `.png` here, so the path we report is the
    file matplotlib writes. Returns that path."""
    path = os.fspath(path)
    if not os.path.splitext(path)[1]:
        path += ".png"
    try:
        fig.savefig(path, dpi=110)
    finally:
        plt.close(fig)
    return path


def _time_axis(result) -> tuple[str, Optional[str]]:
    name = getattr(result, "time_name", None) or "time"
    unit = (getattr(result, "units", {}) or {}).get(name)
    return name, unit
