"""Data tables for fitting (LANGUAGE.md §7): read a CSV (or a DataFrame), match its columns to the
model, validate every value, and split the rows into independent series.

Row numbers in messages: "row R" is the 1-based data row, counting every line after the header
(blank lines included, so "row R" is always line R + 1 of a CSV file; the message gives both).
Missing values are empty cells or NaN/NA (any case).

Decisions beyond the language reference:
* poisson data must be non-negative; non-integer counts are allowed with a warning (the
  likelihood uses lgamma(y + 1), defined for any y >= 0).
* lognormal data must be strictly positive (log y is compared with log of the prediction).
* A time value must be present in every row of a dynamic model; within a series times strictly
  increase (a repeated or decreasing time is an error naming both rows).
* Static models have no time column; a `series` column there is ignored like any other unknown.
"""
from __future__ import annotations

import csv
import os
import sys
from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from ..diagnostics import did_you_mean
from ..compiler.ir import ModelIR
from ..errors import DataError
from ..grammar.words import SERIES_COLUMN as SERIES_COLUMN  # the one spelling, shared with the checker
_MISSING = {"", "nan", "na", "n/a", "null", "none"}


@dataclass
class Series:
    """One independent experiment: simulated from its first time with its own initial state.

    Dynamic models: `times` sorted; `observed[name]` aligned with `times` (NaN = not observed);
    `inputs[name] = (times, values)` for `protocol.build_protocol(..., inputs=...)`, rows where the
    input is missing left out. Static models: `times` is None, `observed[name]` and
    `inputs[name]` (a plain value array) are aligned with the table's rows.
    """

    label: Optional[str]
    times: Optional[np.ndarray]
    observed: dict[str, np.ndarray]
    inputs: dict
    rows: np.ndarray  # 1-based data row of each point (see module docstring)
    # table doses: {dose name: (times, amounts)} in the time unit and the dose's declared unit,
    # for `build_protocol(..., doses=...)`; rows without an amount left out
    doses: dict = field(default_factory=dict)

    def run_options(self) -> dict:
        """What a simulation of this series takes besides its times and params."""
        return {"inputs": self.inputs or None, "doses": self.doses or None}

    @property
    def n_points(self) -> int:
        return int(len(self.rows))

    def input_frame(self):
        """Static models: the inputs as a DataFrame, for `simulator.simulate(inputs=...)`."""
        import pandas as pd

        return pd.DataFrame({k: np.asarray(v) for k, v in self.inputs.items()})


@dataclass
class Dataset:
    file: str
    series: list[Series]
    observed_names: list[str]  # observes with a column in the table (model order)
    input_names: list[str]  # inputs with a column in the table (model order)
    ignored_columns: list[str]
    time_name: Optional[str]
    static: bool
    warnings: list[str] = field(default_factory=list)

    @property
    def n_observations(self) -> int:
        return int(sum(np.isfinite(s.observed[o]).sum() for s in self.series for o in s.observed))

    def split(self, holdout: float) -> tuple["Dataset", "Dataset"]:
        """Time-ordered hold-out: the last `holdout` fraction of each series' points (by time;
        by row for static models) go to the validation set. Every series keeps its first point
        in the training set so the validation part is simulated from the same start."""
        if not 0.0 <= holdout < 1.0:
            raise ValueError(f"holdout must be in [0, 1), got {holdout}")
        train, valid = [], []
        for s in self.series:
            n_valid = int(round(holdout * s.n_points))
            n_valid = min(n_valid, s.n_points - 1)
            cut = s.n_points - n_valid
            train.append(_take(s, slice(0, cut)))
            if n_valid:
                valid.append(_validation_part(s, cut))
        mk = lambda ss: Dataset(self.file, ss, self.observed_names, self.input_names,
                                self.ignored_columns, self.time_name, self.static, list(self.warnings))
        return mk(train), mk(valid)


def _take(s: Series, sl: slice) -> Series:
    return Series(s.label, None if s.times is None else s.times[sl],
                  {k: v[sl] for k, v in s.observed.items()},
                  s.inputs if s.times is not None else {k: v[sl] for k, v in s.inputs.items()},
                  s.rows[sl], s.doses)  # doses after the last kept time are never applied


def _validation_part(s: Series, cut: int) -> Series:
    """Validation points of a dynamic series still start at the series' first time (the initial
    state applies there); the training points before `cut` are kept with NaN observations."""
    if s.times is None:
        return _take(s, slice(cut, None))
    observed = {}
    for k, v in s.observed.items():
        masked = v.copy()
        masked[:cut] = np.nan
        observed[k] = masked
    return Series(s.label, s.times, observed, s.inputs, s.rows, s.doses)


# ---------------------------------------------------------------- reading
def load_data(path_or_frame, ir: ModelIR, file: Optional[str] = None,
              require_observed: bool = True) -> Dataset:
    """Read and validate a data table for `ir`. Raises DataError naming file, column and row.

    require_observed=False accepts a table without any observed column (e.g. inputs only, for
    `nimm simulate --data`)."""
    table = read_table(path_or_frame, file)
    frame, file, columns, row_numbers, where = table.frame, table.file, table.columns, table.rows, table.where

    observe_names = [o.name for o in ir.observes]
    input_names = [u.name for u in ir.inputs]
    dose_names = [] if ir.is_static else ir.table_dose_names()
    used = set(observe_names) | set(input_names) | set(dose_names)
    if not ir.is_static:
        used |= {ir.time_name, SERIES_COLUMN}
    ignored = [c for c in columns if c not in used]
    present_obs = [o for o in observe_names if o in columns]
    if not present_obs and require_observed:
        msg = (f"{file}: no column matches an observation of the model; expected "
               f"{_names(observe_names)}" if observe_names else
               f"{file}: the model has no `observe` line, so there is nothing to fit")
        hints = [f"`{c}` ({h})" for c in ignored
                 if (h := did_you_mean(c, observe_names))]
        if hints:
            msg += "; found " + ", ".join(hints)
        raise DataError(msg)
    present_inputs = [u for u in input_names if u in columns]
    present_doses = [d for d in dose_names if d in columns]

    values = {c: _numeric_column(frame[c], c, where) for c in present_obs + present_inputs + present_doses}
    warnings: list[str] = []
    if ignored:
        warnings.append(f"{file}: ignored column(s) that match nothing in the model: "
                        + ", ".join(f"`{c}`" for c in ignored))
    _check_noise_domains(ir, values, present_obs, where, warnings)

    if ir.is_static:
        series = [_static_series(ir, values, present_obs, present_inputs, row_numbers, where)]
        return Dataset(file, series, present_obs, present_inputs, ignored, None, True, warnings)

    if ir.time_name not in columns:
        hint = did_you_mean(ir.time_name, columns)
        raise DataError(f"{file}: no time column `{ir.time_name}` (the model's time variable, in "
                        f"{ir.time_unit}); the columns are {_names(columns)}"
                        + (f"; {hint} (rename the column)" if hint else ""))
    times = _numeric_column(frame[ir.time_name], ir.time_name, where)
    for i in np.flatnonzero(~np.isfinite(times)):
        raise DataError(f"{file}: column `{ir.time_name}`, {where(i)}: the time is missing or not "
                        "finite (every row needs a time)")
    labels = (np.array([str(v).strip() for v in frame[SERIES_COLUMN]], dtype=object)
              if SERIES_COLUMN in columns else np.array([None] * len(row_numbers)))
    if SERIES_COLUMN in columns:
        for i in np.flatnonzero([_is_missing(v) for v in frame[SERIES_COLUMN]]):
            raise DataError(f"{file}: column `{SERIES_COLUMN}`, {where(i)}: the series label is missing")

    series = []
    for label in dict.fromkeys(labels):  # first-appearance order
        idx = np.flatnonzero(labels == label) if label is not None else np.arange(len(row_numbers))
        _check_increasing(times[idx], idx, ir.time_name, label, where,
                          ignored if SERIES_COLUMN not in columns else ())
        t = times[idx]
        observed = {o: values[o][idx] for o in present_obs}
        inputs, doses = _given(present_inputs, values, idx, t), _given(present_doses, values, idx, t)
        if observed and not any(np.isfinite(v).any() for v in observed.values()):
            what = f"series `{label}`" if label is not None else "the table"  # not "series `None`"
            warnings.append(f"{file}: {what} has no observed value; it does not affect the fit")
        series.append(Series(label, t, observed, inputs, row_numbers[idx], doses))
        # with a clock origin every series starts there, so doses before its first row apply
        early = [] if ir.t0 is not None else sorted({d.name for d in ir.doses for dt in d.times if dt < t[0]})
        if early:
            in_series = f"series `{label}`" if label is not None else "the data"
            warnings.append(f"{file}: {in_series} starts at {ir.time_name} = {t[0]:g}, after dose(s) "
                            f"{', '.join(early)}: a series is simulated from its first time, so earlier "
                            f"doses are not applied (add a row at the dosing start with empty observations)")
    return Dataset(file, series, present_obs, present_inputs, ignored, ir.time_name, False, warnings)


@dataclass
class Table:
    """A data table as read, before it is matched to a model: text cells, blank rows dropped."""

    file: str
    frame: dict  # column name -> object array of its cells (text, or a DataFrame's values)
    columns: list[str]
    rows: np.ndarray  # 1-based data row of each frame row (see the module docstring)
    where: "_RowNamer"

    def numbers(self, column: str) -> np.ndarray:
        """A column as floats (NaN where missing); DataError naming the file, column and row."""
        return _numeric_column(self.frame[column], column, self.where)


def _given(columns, values: dict, idx: np.ndarray, t: np.ndarray) -> dict:
    """{column: (times, values)} of one series' rows where the column has a value (inputs and
    table doses: an empty cell means nothing given at that time)."""
    out = {}
    for c in columns:
        v = values[c][idx]
        keep = np.isfinite(v)
        if keep.any():
            out[c] = (t[keep], v[keep])
    return out


def read_table(path_or_frame, file: Optional[str] = None) -> Table:
    """Read a CSV file (or take a DataFrame); DataError when it is unreadable or malformed."""
    columns, cells, file, has_lines = _read(path_or_frame, file)
    columns = [str(c).strip() for c in columns]
    if has_lines and all(c == "" for c in columns):
        raise DataError(f"{file}: the first line (the header) has no column names; a CSV table "
                        "starts with a line of names such as `t,y`")
    _check_duplicate_columns(columns, file)
    _check_separator(columns, file)
    # Blank lines are kept while reading so row numbers match the file; drop them now.
    n_rows = len(cells[0]) if cells else 0
    blank = np.ones(n_rows, dtype=bool)
    for col in cells:
        blank &= np.array([_is_missing(v) for v in col], dtype=bool)
    row_numbers = np.arange(1, n_rows + 1)[~blank]
    frame = {c: col[~blank] for c, col in zip(columns, cells)}
    return Table(file, frame, columns, row_numbers, _RowNamer(file, row_numbers, has_lines))


def open_local(path):
    """A data file opened for reading: a path on this machine only. Given a name, pandas would
    also fetch `http://`, `s3://` or `file://` URLs; `open` reads just that file."""
    return open(os.fspath(path), "rb")


def _read(path_or_frame, file) -> tuple[list, list[np.ndarray], str, bool]:
    """(header, one object array per column, file name, whether rows are lines of a file)."""
    pd = sys.modules.get("pandas")  # a DataFrame can only exist once pandas is loaded
    if pd is not None and isinstance(path_or_frame, pd.DataFrame):
        frame = path_or_frame.astype(object).where(path_or_frame.notna(), "")
        cells = [np.asarray(frame.iloc[:, j].to_numpy(), dtype=object) for j in range(frame.shape[1])]
        return list(frame.columns), cells, file or "<data>", False
    path = os.fspath(path_or_frame)
    file = file or path
    try:
        # the standard library's reader: loading pandas would cost a cold `nimm fit` ~0.2 s; a
        # local file only (pandas, given a name, would also fetch URLs)
        with open(path, newline="", encoding="utf-8-sig") as f:
            lines = list(csv.reader(f, skipinitialspace=True))
    except FileNotFoundError:
        raise DataError(f"{file}: cannot read the data file: no such file") from None
    except IsADirectoryError:
        raise DataError(f"{file}: cannot read the data file: it is a folder; give the CSV table inside it") from None
    except PermissionError:
        raise DataError(f"{file}: cannot read the data file: permission denied") from None
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{file}: cannot read the data file: {e}") from None
    except csv.Error as e:
        raise DataError(f"{file}: not a readable CSV table: {e}") from None
    while lines and not lines[0]:  # blank lines before the header
        lines.pop(0)
    if not lines:
        raise DataError(f"{file}: the data file is empty (a CSV with a header line is expected)")
    header, body = lines[0], lines[1:]
    for i, row in enumerate(body):
        if len(row) > len(header):
            raise DataError(f"{file}: not a readable CSV table: expected {len(header)} fields in line "
                            f"{i + 2}, saw {len(row)}")
    cells = [np.array([row[j] if j < len(row) else "" for row in body], dtype=object)
             for j in range(len(header))]
    return header, cells, file, True


def _check_duplicate_columns(columns, file):
    for c in dict.fromkeys(columns):
        if columns.count(c) > 1:
            raise DataError(f"{file}: column `{c}` appears more than once in the header")


def _check_separator(columns, file):
    # A header that is one column holding `;` or tabs: a table saved with another separator.
    if len(columns) == 1:
        sep = next((c for c in (";", "\t") if c in columns[0]), None)
        if sep is not None:
            shown = "`;`" if sep == ";" else "tabs"
            raise DataError(f"{file}: the header `{columns[0]}` is one column: the table seems separated "
                            f"by {shown}; save it with commas as the separator (CSV)")


class _RowNamer:
    """Formats the place of a table row for messages (see the module docstring)."""

    def __init__(self, file, row_numbers, has_lines):
        self.file, self.rows, self.has_lines = file, row_numbers, has_lines

    def __call__(self, i: int) -> str:
        r = int(self.rows[i])
        return f"row {r} (line {r + 1})" if self.has_lines else f"row {r}"


def _is_missing(v) -> bool:
    if v is None:
        return True
    if isinstance(v, float):
        return np.isnan(v)
    return isinstance(v, str) and v.strip().lower() in _MISSING


def _numeric_column(col, name, where) -> np.ndarray:
    out = np.empty(len(col))
    for i, v in enumerate(col):
        if _is_missing(v):
            out[i] = np.nan
            continue
        if isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool):
            out[i] = float(v)
            continue
        try:
            out[i] = float(str(v).strip())
        except ValueError:
            raise DataError(f"{where.file}: column `{name}`, {where(i)}: `{v}` is not a number") from None
        if np.isinf(out[i]):
            raise DataError(f"{where.file}: column `{name}`, {where(i)}: `{v}` is not a finite number")
    return out


def _check_noise_domains(ir, values, present_obs, where, warnings):
    for o in ir.observes:
        if o.name not in present_obs:
            continue
        v = values[o.name]
        if o.noise == "lognormal":
            bad = np.flatnonzero(np.isfinite(v) & (v <= 0))
            if bad.size:
                i = bad[0]
                raise DataError(f"{where.file}: column `{o.name}`, {where(i)}: {v[i]:g} is not positive, "
                                "but lognormal noise needs values > 0 (leave the cell empty if unobserved)")
        elif o.noise in ("poisson", "negbinomial"):
            bad = np.flatnonzero(np.isfinite(v) & (v < 0))
            if bad.size:
                i = bad[0]
                raise DataError(f"{where.file}: column `{o.name}`, {where(i)}: {v[i]:g} is negative, "
                                f"but {o.noise} noise models counts >= 0")
            frac = np.flatnonzero(np.isfinite(v) & (v != np.round(v)))
            if frac.size:
                warnings.append(f"{where.file}: column `{o.name}`: {frac.size} non-integer count(s) "
                                f"under {o.noise} noise, first at {where(frac[0])}")


def _check_increasing(t, idx, time_name, label, where, ignored=()):
    """ignored: the table's unmatched columns when it has no `series` column, one of which may
    be meant to tell subjects apart (`subject`, `id`)."""
    steps = np.diff(t)
    bad = np.flatnonzero(steps <= 0)
    if not bad.size:
        return
    k = bad[0]
    what = "repeats" if steps[k] == 0 else "is earlier than"
    in_series = f" in series `{label}`" if label is not None else ""
    restart = (f"; if the table holds several subjects or experiments, name the column that tells them "
               f"apart `{SERIES_COLUMN}` (the table has no `{SERIES_COLUMN}` column; ignored: {_names(ignored)})"
               if ignored else "")
    raise DataError(f"{where.file}: column `{time_name}`, {where(idx[k + 1])}: time {t[k + 1]:g} {what} "
                    f"the time {t[k]:g} at {where(idx[k])}{in_series}; times must increase within a series"
                    + restart)


def _static_series(ir, values, present_obs, present_inputs, row_numbers, where) -> Series:
    n = len(row_numbers)
    inputs = {}
    for u in ir.inputs:
        if u.name in present_inputs:
            v = values[u.name].copy()
            gaps = np.flatnonzero(~np.isfinite(v))
            if gaps.size:
                if u.default is None:
                    raise DataError(f"{where.file}: column `{u.name}`, {where(gaps[0])}: the input is "
                                    "missing and has no default value")
                v[gaps] = u.default
            inputs[u.name] = v
        elif u.default is not None:
            inputs[u.name] = np.full(n, float(u.default))
        else:
            raise DataError(f"{where.file}: no column `{u.name}` for the input `{u.name}`, which has no "
                            "default value")
    observed = {o: values[o] for o in present_obs}
    return Series(None, None, observed, inputs, row_numbers)


def _names(names) -> str:
    return ", ".join(f"`{n}`" for n in names) if names else "(none)"
