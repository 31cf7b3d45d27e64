"""Simulation results shared by every back end."""
from __future__ import annotations

from typing import Mapping, Optional

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
