"""Simulation results shared by every back end."""
from __future__ import annotations

import math
from typing import Callable, Mapping, Optional

import numpy as np


class SimulationResult:
    """Values over time (or over the rows of an input table, for a static model).

    `res[name]` is a numpy array over `times` for every state, let and observe (batched Torch
    results: shape (B, T)). `names` keeps the order states, lets, observes; `units` maps each
    name (and the time variable) to its unit label; `warnings` lists domain and other notices.
    """

    def __init__(self, times, values: Mapping[str, np.ndarray], units: Optional[Mapping[str, str]] = None,
                 time_name: str = "time", warnings: Optional[list[str]] = None,
                 scenario: Optional[str] = None):
        self.times = np.asarray(times, dtype=float) if times is not None else None
        self._values = {k: np.asarray(v) for k, v in values.items()}
        self.names = list(self._values)
        self.units = dict(units or {})
        self.time_name = time_name
        self.warnings = list(warnings or [])
        self.scenario = scenario

    def __getitem__(self, name: str) -> np.ndarray:
        try:
            return self._values[name]
        except KeyError:
            raise KeyError(f"no result named `{name}`; available: {', '.join(self.names)}") from None

    def __contains__(self, name: str) -> bool:
        return name in self._values

    def __iter__(self):
        return iter(self.names)

    def to_frame(self):
        """A pandas DataFrame: the time column (named after the time variable), then every name.

        Batched results (B, T) become long format with a leading `batch` column."""
        import pandas as pd

        first = self._values[self.names[0]] if self.names else np.zeros(0)
        if first.ndim == 2:
            n_batch, n_t = first.shape
            cols = {"batch": np.repeat(np.arange(n_batch), n_t)}
            if self.times is not None:
                cols[self.time_name] = np.tile(self.times, n_batch)
            cols.update({k: v.reshape(-1) for k, v in self._values.items()})
            return pd.DataFrame(cols)
        cols = {} if self.times is None else {self.time_name: self.times}
        cols.update(self._values)
        return pd.DataFrame(cols)

    def __repr__(self) -> str:
        n = 0 if self.times is None else len(self.times)
        extra = f", {len(self.warnings)} warning(s)" if self.warnings else ""
        return f"<SimulationResult {n} times x {len(self.names)} values{extra}>"


    def _repr_html_(self) -> str:
        """The table (`to_frame`), for notebooks."""
        return self.to_frame()._repr_html_()


def nonfinite_warnings(times, values: Mapping[str, np.ndarray], time_name: str) -> list[str]:
    """One warning per quantity that is NaN or inf at some output time (values: (T,) or (B, T)),
    naming the first such time; the states are finite (back ends stop on non-finite states)."""
    out = []
    for name, v in values.items():
        bad = ~np.isfinite(np.asarray(v, dtype=float))
        if bad.ndim == 2:
            bad = bad.any(0)
        if bad.any():
            j = int(np.argmax(bad))
            out.append(f"`{name}` is NaN or inf at {time_name} = {times[j]:g} ({int(bad.sum())} of "
                       f"{bad.size} output times): a log or sqrt of a negative, or a division by zero?")
    return out


def _at(time_name: str, time_unit: Optional[str], t: float) -> str:
    return f"{time_name} = {t:.6g} {time_unit}" if time_unit else f"{time_name} = {t:.6g}"


def domain_warnings(times, X: np.ndarray, states, rtol: float, atol: float, time_name: str,
                    time_unit: Optional[str] = None) -> list[str]:
    """One warning per state outside its declared domain [lo, hi] at some output time, beyond
    what the solver's tolerances allow; X: states (n_states, T) or (B, n_states, T)."""
    X = np.asarray(X, dtype=float)
    Xb = X.reshape(-1, *X.shape[-2:])
    if Xb.size == 0:
        return []
    # per state extremes first: on every clean run (nearly all of them) nothing else is computed
    rows = Xb[0] if len(Xb) == 1 else np.moveaxis(Xb, 1, 0).reshape(Xb.shape[1], -1)
    low, high = rows.min(axis=1), rows.max(axis=1)
    if len(states) <= 16:  # a few states: plain floats cost less than numpy's per-call overhead
        outside = []
        for i, (s, a, b) in enumerate(zip(states, low.tolist(), high.tolist())):
            slack = 10 * (atol + rtol * max(-a, b))
            if a < s.lo - slack or b > s.hi + slack:
                outside.append(i)
        if not outside:
            return []
    slack = 10 * (atol + rtol * np.maximum(-low, high))  # 10 (atol + rtol max |x|): low <= high
    lo = np.array([s.lo for s in states]) - slack
    hi = np.array([s.hi for s in states]) + slack
    out = []
    for i in np.flatnonzero((low < lo) | (high > hi)):
        s = states[i]
        outside = ((Xb[:, i, :] < lo[i]) | (Xb[:, i, :] > hi[i])).any(axis=0)
        j = int(np.argmax(outside))
        column = Xb[:, i, j]
        v = column[(column < lo[i]) | (column > hi[i])][0]
        side = f"below its lower bound {s.lo:g}" if v < s.lo else f"above its upper bound {s.hi:g}"
        unit = f" {s.unit}" if s.unit and s.unit != "1" else ""  # "-0.2 is below", not "-0.2 1 is"
        out.append(f"state {s.name} leaves its domain [{s.lo:g}, {s.hi:g}]: {v:.6g}{unit} is {side} "
                   f"at {_at(time_name, time_unit, times[j])}")
    return out


TROUGH_DEPTH = 1e6  # a state "came down" to its bound when it was this many atol above it before
REGROWTH = math.log(1e6)  # growth (rate x remaining time) that would make a trough value visible


def trough_warnings(times, X: np.ndarray, states, atol: float, time_name: str,
                    time_unit: Optional[str], rhs: Callable) -> list[str]:
    """Warnings for a state that falls to its lower bound within the absolute tolerance and
    would grow again from any value above it (an infection between epidemic waves).

    Values below atol are not resolved: the solver cannot tell 1e-12 from 0 or from -1e-9, and
    the exact solution may regrow from a value the simulation rounded away (a second wave that
    never comes, or comes at the wrong time). X: states (n_states, T). rhs(idx, columns) gives the
    derivatives (n_states, len(idx)) at times[idx] for the given state columns."""
    X = np.asarray(X, dtype=float)
    times = np.asarray(times, dtype=float)
    out = []
    # only states that come within 10 atol of their lower bound somewhere are looked at closely
    # (fmin ignores NaN; a bound of -inf is never near)
    lowest = np.fmin.reduce(X, axis=1, initial=np.inf) - np.array([s.lo for s in states])
    for i in np.flatnonzero(lowest <= 10 * atol):
        s = states[i]
        # first, cheaply: far above the bound at some time, and near it at a later time?
        first_high = int(np.argmax(X[i] > s.lo + TROUGH_DEPTH * atol))
        if X[i, first_high] <= s.lo + TROUGH_DEPTH * atol or first_high + 1 == X.shape[1] \
                or X[i, first_high + 1:].min() > s.lo + 10 * atol:
            continue
        above = X[i] - s.lo
        high = above > TROUGH_DEPTH * atol
        if not high.any() or not (np.abs(above[int(np.argmax(high)) + 1:]) <= 10 * atol).any():
            continue  # never near the bound after having been far above it (a state starting at 0)
        came_down = np.maximum.accumulate(np.concatenate(([0.0], above[:-1]))) > TROUGH_DEPTH * atol
        idx = np.flatnonzero((np.abs(above) <= 10 * atol) & came_down)
        if idx.size == 0:
            continue
        columns = X[:, idx].copy()
        columns[i] = s.lo + atol
        low = np.asarray(rhs(idx, columns), dtype=float)[i]
        columns[i] = s.lo + 2 * atol
        rate = (np.asarray(rhs(idx, columns), dtype=float)[i] - low) / atol  # d(dx_i/dt)/dx_i
        grows = np.flatnonzero(rate * (times[-1] - times[idx]) > REGROWTH)
        if grows.size:
            k = idx[grows[0]]
            out.append(f"state {s.name} falls to its lower bound {s.lo:g} within the absolute tolerance "
                       f"(atol = {atol:g} {s.unit}) at {_at(time_name, time_unit, times[k])} and would grow "
                       f"again from any value above it (rate {rate[grows[0]]:.3g} per {time_unit or 'time unit'}): "
                       f"the exact solution may regrow from a value below atol that this run does not "
                       f"resolve; pass a smaller atol (e.g. 1e-14) to follow it")
    return out
