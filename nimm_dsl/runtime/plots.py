"""Figures for fits and scenarios (matplotlib, Agg back end, imported only when a plot is made)."""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

MAX_PANELS = 24  # per series: past it, hidden states are left out of a fit plot
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


def plot_fit(ir, dataset, fit_result=None, simulator=None, path=None, bands: Optional[float] = None,
             log: bool = False) -> str:
    """Data points against the fitted model (see `fit_figure`). Returns the path written.

    Also callable as `plot_fit(ir, fit_result, path)`: the data are then the fit's own
    (`fit_result.dataset`) and the simulator a CasADi one."""
    if hasattr(dataset, "params") and hasattr(dataset, "dataset"):  # plot_fit(ir, fit_result, path)
        dataset, fit_result, path = dataset.dataset, dataset, fit_result
    if dataset is None or fit_result is None or path is None:
        raise ValueError("plot_fit needs the data, the fit result and an output path")
    plt = _pyplot()
    return _save(plt, fit_figure(ir, dataset, fit_result, simulator, bands=bands, log=log), path)


def fit_figure(ir, dataset, fit_result, simulator=None, bands: Optional[float] = None, log: bool = False):
    """The fit as a matplotlib Figure: one panel per observed quantity, then one per hidden state,
    in a grid at most three panels wide (several series: one row of panels per series). Data as
    points, the model as a line simulated on a fine grid, `bands` (a level such as 0.95, from the
    fit's covariance; runtime/bands.py) as shading, the held-out end shaded grey, dose times as
    vertical lines and the baseline's set windows as spans. Static models get predicted-versus-
    observed panels. log: logarithmic value axes (for positive quantities)."""
    if simulator is None:
        from ..backends.casadi_backend import compile_casadi

        simulator = compile_casadi(ir)
    plt = _pyplot()
    params = dict(fit_result.params)
    weights = getattr(fit_result, "weights", None) or None
    series = dataset.series[:MAX_SERIES_PLOTTED]
    if dataset.static:
        return _static_fit_figure(plt, ir, dataset, params, weights, simulator)
    uncertainty = fit_uncertainty(ir, fit_result) if bands else None

    hidden = hidden_states(ir, dataset.observed_names)
    # a large family has hundreds of hidden states: past MAX_PANELS panels a series shows only
    # what the data observe (the figure says how many it left out)
    left_out = hidden if len(dataset.observed_names) + len(hidden) > MAX_PANELS else []
    columns = list(dataset.observed_names) + [h for h in hidden if h not in left_out]
    units = quantity_units(ir)
    # each series' panels wrap at three columns; several series: one block of rows each
    per_series, ncol = grid_shape(len(columns))
    nrow = per_series * len(series)
    place = lambda r, c: (r * per_series + c // ncol, c % ncol)  # noqa: E731
    fig, axes = plt.subplots(nrow, ncol, squeeze=False, figsize=(4.2 * ncol, 3.1 * nrow), layout="constrained")
    time_label = _label(ir.time_name, ir.time_unit)
    for r, s in enumerate(series):
        grid = np.linspace(s.times[0] if ir.t0 is None else ir.t0, s.times[-1], FINE_GRID)  # from the run's start
        grid = np.union1d(grid, s.times)  # exact values at the data times (dose jumps stay sharp)
        own = fit_result.params_for(s.label)
        res = simulator.simulate(grid, params=own, **s.run_options(), weights=weights)
        band = draw_bands(simulator, ir, uncertainty and uncertainty.with_values(own), grid, bands,
                          **s.run_options(), weights=weights)
        for c, name in enumerate(columns):
            ax = axes[place(r, c)[0]][place(r, c)[1]]
            window = interval_of(ir, name)
            if band and name in band and window is None:
                ax.fill_between(grid, *band[name], color="C0", alpha=0.2, lw=0,
                                label=_band_label(name, ir, bands))
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
                ax.set_ylabel(_label(name, units.get(name)))
            else:
                ax.set_ylabel(_label(name, units.get(name)) + " (hidden)")
            ax.set_xlabel(time_label)
            cut = getattr(fit_result, "holdout_after", {}).get(r)
            if cut is not None:  # the held-out end of the series, not used for fitting
                ax.axvspan(cut, s.times[-1], color="0.9", zorder=0, label="held out")
            mark_protocol(ax, ir, None, s.times[0], s.times[-1], s.doses)
            if log:
                _log_axis(ax)
            title = name if s.label is None else f"{name}, series {s.label}"
            ax.set_title(title, fontsize=9)
            if r == 0 and c == 0:
                ax.legend(fontsize=7)
    for r in range(len(series)):  # the empty places after each series' last panel
        for k in range(len(columns), per_series * ncol):
            axes[r * per_series + k // ncol][k % ncol].axis("off")
    more = len(dataset.series) - len(series)
    suptitle = f"{ir.name}: fit" + (f" (first {len(series)} of {len(dataset.series)} series)" if more > 0 else "")
    if left_out:
        suptitle += f" ({len(left_out)} hidden states not drawn)"
    fig.suptitle(suptitle)
    return fig


def interval_of(ir, name: str) -> Optional[float]:
    """The window of an observe that is a count over an interval (`integral(RATE, WINDOW)`;
    the longest when it has several), else None."""
    o = next((o for o in ir.observes if o.name == name), None)
    windows = [g.window for g in ir.integrals if o is not None and g.symbol in o.expr.free_symbols]
    return max(windows) if windows else None


def quantity_units(ir) -> dict:
    """The declared unit of every state, let and observe (and the time variable) by name."""
    units = {x.name: x.unit for x in (*ir.states, *ir.lets, *ir.observes)}
    if ir.time_name:
        units[ir.time_name] = ir.time_unit
    return units


def fit_uncertainty(ir, fit_result):
    """The fit's runtime/bands.Uncertainty, or None when it has no covariance (no bands drawn)."""
    from ..errors import FitError
    from .bands import Uncertainty

    try:
        return Uncertainty.from_fit(fit_result, ir)
    except FitError:  # nothing estimated, or no covariance: no bands, the rest of the plot stands
        return None


def draw_bands(simulator, ir, uncertainty, times, level, **options) -> Optional[dict]:
    """{name: (lo, hi)} for plotting (runtime/bands.py), or None without an uncertainty."""
    if uncertainty is None or not level:
        return None
    from .bands import BAND_DRAWS_FOR_PLOTS, bands

    return bands(simulator, ir, uncertainty, times, level=level, n_draws=BAND_DRAWS_FOR_PLOTS, **options)


def _band_label(name: str, ir, level: float) -> str:
    kind = "prediction interval" if name in {o.name for o in ir.observes} else "confidence band"
    return f"{level:.0%} {kind}"


def _log_axis(ax) -> None:
    """Logarithmic value axis where everything drawn is positive; a linear one otherwise."""
    values = [np.asarray(line.get_ydata(), dtype=float) for line in ax.get_lines() if line.get_gid() != "dose"]
    values = [v[np.isfinite(v)] for v in values if v.size]
    if values and all(np.all(v > 0) for v in values if v.size):
        ax.set_yscale("log")
        ax.yaxis.set_minor_formatter(_minor_log_labels(ax.yaxis))


def _minor_log_labels(axis):
    """Minor ticks of a log axis read as plain numbers (`2`, `30`, `0.5`) rather than `2x10^0`;
    matplotlib's own LogFormatter still decides which of them are labelled (short spans only)."""
    from matplotlib.ticker import Formatter, LogFormatter

    class MinorLogLabels(Formatter):
        def __init__(self):
            self.which = LogFormatter(minor_thresholds=(1, 0.4))
            self.which.set_axis(axis)

        def set_locs(self, locs):
            self.which.set_locs(locs)

        def __call__(self, value, pos=None):
            return f"{value:g}" if self.which(value, pos) else ""

    return MinorLogLabels()


def mark_protocol(ax, ir, scenario: Optional[str], t0: float, t1: float, table_doses: Optional[dict] = None) -> None:
    """Dose times as dotted vertical lines (gid "dose") and the set windows in force under
    `scenario` (None: the baseline's) as light spans (gid "set window"), within [t0, t1].
    table_doses: a data series' own doses ({name: (times, amounts)}, `Series.doses`), marked
    where a dose of that name from the data is in force."""
    in_force = ir.doses_for(scenario)
    from_table = {d.name for d in in_force if d.from_data}
    times = [t for d in in_force if not d.from_data for t in d.times]
    times += [t for name, (ts, _) in (table_doses or {}).items() if name in from_table for t in ts]
    dose_times = sorted({float(t) for t in times if t0 <= t <= t1})
    for k, t in enumerate(dose_times):
        ax.axvline(t, color="0.35", ls=":", lw=0.9, gid="dose", label="dose" if k == 0 else None)
    windows = sorted({(s.start if s.start is not None else t0, s.end if s.end is not None else t1)
                      for s in ir.sets if s.scenario in (None, scenario)
                      and (s.start is not None or s.end is not None)})
    for k, (a, b) in enumerate(windows):
        a, b = max(a, t0), min(b, t1)
        if a < b:
            ax.axvspan(a, b, color="C2", alpha=0.08, lw=0, zorder=0, gid="set window",
                       label="set window" if k == 0 else None)


def _static_fit_figure(plt, ir, dataset, params, weights, simulator):
    s = dataset.series[0]
    res = simulator.simulate(None, params=params, inputs=s.input_frame(), weights=weights)
    names = list(dataset.observed_names)
    units = {o.name: o.unit for o in ir.observes}
    nrow, ncol = grid_shape(len(names))
    fig, axes = plt.subplots(nrow, ncol, squeeze=False, figsize=(3.8 * ncol, 3.4 * nrow), layout="constrained")
    for k in range(len(names), nrow * ncol):
        axes[k // ncol][k % ncol].axis("off")
    for c, name in enumerate(names):
        ax = axes[c // ncol][c % ncol]
        y, pred = s.observed[name], np.asarray(res[name])
        ok = np.isfinite(y)
        ax.plot(y[ok], pred[ok], "o", ms=4, color="C1")
        lo, hi = np.nanmin(np.r_[y[ok], pred[ok]]), np.nanmax(np.r_[y[ok], pred[ok]])
        ax.plot([lo, hi], [lo, hi], "--", color="gray", lw=1)
        ax.set_xlabel("observed " + _label(name, units.get(name)))
        ax.set_ylabel("fitted " + _label(name, units.get(name)))
    fig.suptitle(f"{ir.name}: fitted against observed")
    return fig


def plot_scenario(baseline_result, scenario_result, path, names: Optional[Sequence[str]] = None,
                  title: Optional[str] = None, scenario: Optional[str] = None, **options) -> str:
    """Baseline against counterfactual (see `scenario_figure`; one run). Returns the path."""
    run = ScenarioRun(baseline_result, scenario_result, **{k: options.pop(k) for k in
                                                          ("baseline_band", "scenario_band", "data") if k in options})
    plt = _pyplot()
    return _save(plt, scenario_figure([run], names=names, title=title, scenario=scenario, **options), path)


@dataclass
class ScenarioRun:
    """One series of a scenario plot: the baseline and scenario results, their bands ({name:
    (lo, hi)}, optional) and the data to show as points (a data.Series, optional)."""

    baseline: object
    scenario: object = None
    baseline_band: Optional[dict] = None
    scenario_band: Optional[dict] = None
    data: object = None
    label: object = None


def scenario_figure(runs: Sequence[ScenarioRun], ir=None, names: Optional[Sequence[str]] = None,
                    states: bool = False, title: Optional[str] = None, scenario: Optional[str] = None,
                    log: bool = False):
    """Baseline against counterfactual as a matplotlib Figure: one column per quantity and one row
    (facet) per series. Quantities: `names`, else (with `ir`) the observes, plus the states when
    `states`; without `ir` every name of the result. An observe equal to a state is drawn once.
    Bands as shading, data as points, the scenario's set windows shaded and dose times marked."""
    plt = _pyplot()
    first = runs[0].baseline
    if scenario is None and runs[0].scenario is not None:
        scenario = getattr(runs[0].scenario, "scenario", None)
    if names:
        names = list(names)
    elif ir is not None:
        names = [o.name for o in ir.observes]
        if states:
            shown = {o.expr for o in ir.observes}
            names += [x.name for x in ir.states if x.symbol not in shown]
        names = [n for n in names if n in first] or list(first.names)
    else:
        names = list(first.names)
    units = getattr(first, "units", {}) or {}
    time_name, time_unit = _time_axis(first)
    if len(runs) == 1:
        nrow, ncol = grid_shape(len(names))
        place = lambda r, c: divmod(c, ncol)  # noqa: E731 - one series: wrap the panels
    elif len(names) == 1:
        nrow, ncol = grid_shape(len(runs))
        place = lambda r, c: divmod(r, ncol)  # noqa: E731 - one quantity: wrap the facets
    else:
        nrow, ncol = len(runs), len(names)
        place = lambda r, c: (r, c)  # noqa: E731 - a facet (row) per series
    fig, axes = plt.subplots(nrow, ncol, squeeze=False, figsize=(4.2 * ncol, 3.1 * nrow), layout="constrained")
    for k in range(len(names) * len(runs), nrow * ncol) if len(runs) == 1 or len(names) == 1 else ():
        axes[k // ncol][k % ncol].axis("off")
    label = scenario or "scenario"
    for r, run in enumerate(runs):
        for c, name in enumerate(names):
            ax = axes[place(r, c)[0]][place(r, c)[1]]
            t = run.baseline.times
            first_text = "baseline" if run.scenario is not None else "model"
            # a count over an interval holds over the interval that ends at each output time
            window = interval_of(ir, name) if ir is not None else None
            steps = {} if window is None else {"drawstyle": "steps-pre"}
            for result, band, color, text in ((run.baseline, run.baseline_band, "C0", first_text),
                                              (run.scenario, run.scenario_band, "C3", label)):
                if result is None:
                    continue
                if band and name in band:
                    ax.fill_between(result.times, *band[name], color=color, alpha=0.18, lw=0,
                                    **({} if window is None else {"step": "pre"}))
                ax.plot(result.times, np.asarray(result[name]).T, color=color,
                        ls="--" if result is run.scenario else "-", lw=1.6, label=text, **steps)
            if run.data is not None and name in getattr(run.data, "observed", {}):
                y = run.data.observed[name]
                ok = np.isfinite(y)
                if window is not None:
                    ax.hlines(y[ok], run.data.times[ok] - window, run.data.times[ok], color="k", lw=2.4,
                              alpha=0.7, label="data")
                else:
                    ax.plot(run.data.times[ok], y[ok], "o", color="k", ms=3.5, label="data")
            if ir is not None and t is not None and len(t):
                mark_protocol(ax, ir, scenario if run.scenario is not None else None, t[0], t[-1],
                              getattr(run.data, "doses", None))
            ax.set_ylabel(_label(name, units.get(name)))
            ax.set_xlabel(_label(time_name, time_unit))
            ax.set_title(name if run.label is None else f"{name}, series {run.label}", fontsize=9)
            if log:
                _log_axis(ax)
            if r == 0 and c == 0:
                ax.legend(fontsize=7)
    default_title = "simulation" if runs[0].scenario is None else f"baseline vs {label}"
    fig.suptitle(title or default_title)
    return fig


def grid_shape(n: int, max_columns: int = 3) -> tuple[int, int]:
    """(rows, columns) for n panels: at most `max_columns` wide, so each panel stays readable."""
    ncol = max(1, min(n, max_columns))
    return -(-n // ncol), ncol


def plot_profiles(fit_result, path) -> str:
    """`profile_figure` written to `path`; returns the path written."""
    return _save(_pyplot(), profile_figure(fit_result), path)


def profile_figure(fit_result):
    """One panel per profiled param: the rise of the loss over its minimum against the param's
    value, the 95% threshold as a dashed line, the estimate as a dotted one, and the interval's
    ends where the profile crosses the threshold. Returns the path written."""
    plt = _pyplot()
    profiles = fit_result.profiles
    nrow, ncol = grid_shape(len(profiles))
    fig, axes = plt.subplots(nrow, ncol, squeeze=False, figsize=(3.8 * ncol, 2.9 * nrow), layout="constrained")
    for k, (name, pr) in enumerate(profiles.items()):
        ax = axes[k // ncol][k % ncol]
        nll = np.asarray(pr["nll"], dtype=float)
        base = float(np.nanmin(nll))
        ax.plot(pr["values"], nll - base, "o-", color="C0", ms=3, lw=1.4)
        ax.axhline(pr["threshold"] - base, color="C3", ls="--", lw=1, label="95% threshold")
        ax.axvline(pr["estimate"], color="0.4", ls=":", lw=1, label="estimate")
        for end in pr["ci95"]:
            if end is not None:
                ax.axvline(end, color="C3", lw=0.8, alpha=0.6)
        ax.set_xlabel(_label(name, fit_result.units.get(name)))
        ax.set_ylabel("rise of the loss (negative log-likelihood)", fontsize=8)
        flat = pr.get("not_identifiable") or []
        ax.set_title(name + (f" (flat: {' and '.join(flat)})" if flat else ""), fontsize=9)
        if k == 0:
            ax.legend(fontsize=8)
    for k in range(len(profiles), nrow * ncol):
        axes[k // ncol][k % ncol].axis("off")
    fig.suptitle(f"{fit_result.model}: profile likelihood")
    return fig


def save_figure(fig, path) -> str:
    """Write a figure made here (`fit_figure`, `scenario_figure`); see `_save`."""
    return _save(_pyplot(), fig, path)


def _save(plt, fig, path) -> str:
    """Write the figure; a name without extension gets `.png` here, so the path we report is the
    file matplotlib writes. Returns that path."""
    path = os.fspath(path)
    if not os.path.splitext(path)[1]:
        path += ".png"
    import io

    from .files import write_bytes_atomic

    buffer = io.BytesIO()  # written whole or not at all: a failed write keeps the old plot
    try:
        fig.savefig(buffer, format=os.path.splitext(path)[1][1:].lower(), dpi=110)
    finally:
        plt.close(fig)
    write_bytes_atomic(path, buffer.getvalue())
    return path


def plot_formats() -> list[str]:
    """The file extensions a plot may have (matplotlib's formats)."""
    from matplotlib.backend_bases import FigureCanvasBase

    return sorted(FigureCanvasBase.get_supported_filetypes())


def _time_axis(result) -> tuple[str, Optional[str]]:
    name = getattr(result, "time_name", None) or "time"
    unit = (getattr(result, "units", {}) or {}).get(name)
    return name, unit
