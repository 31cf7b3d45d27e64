"""The event protocol of one simulation: segments between events, dose jumps, set flags, inputs.

Shared by every back end. A simulation from `t_start` to the last output time is cut into
segments at every dose time, set-window edge and input breakpoint inside (t_start, t_end].
Inside a segment the right-hand side is smooth: the set flags are constant and each input is
`a + b*t`. Event semantics (LANGUAGE.md §7):

* a segment covers t0 <= t < t1 (the last one also t1 = t_end); its `doses` are applied at t0,
  BEFORE the outputs at t0, so a value reported at a dose time is the value after the dose
  (doses at t_start apply before the first output). A dose or set edge at t_end gives a final
  segment of zero length (t0 == t1): nothing to integrate, only jumps and outputs.
* a set window covers from <= t < to; a flag is 1 on a segment when its set line is in force for
  the scenario and the whole segment lies inside the window.
* inputs: `step` holds the last data value (the first one before the data start); `linear`
  interpolates between data points and holds the end values outside. An input without data uses
  its default; without either, SimulationError names it.

How a back end runs a protocol (x: state vector):

    x = initial values, evaluated at t_start (the model's `from T0` when it has one) with runtime_vector(ir, params, segments[0])
    for seg in protocol.segments:
        for ev in seg.doses: x[ev.state_index] += amount  (or *= factor), amount evaluated with
                             runtime_vector(ir, params, seg) and t = seg.t0
        outputs at protocol.output_times[seg.out_idx]: integrate from seg.t0 (a time equal to
        seg.t0 takes x right after the doses); x at t1 carries over to the next segment
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Optional

import numpy as np

from ..diagnostics import did_you_mean
from ..compiler.ir import DoseIR, ModelIR
from ..errors import SimulationError


@dataclass(frozen=True)
class DoseEvent:
    """One expanded dose: `dose.op` ('+' or '*') of `dose.amount` into state `state_index` at `time`."""

    dose: DoseIR
    time: float
    state_index: int


@dataclass
class Segment:
    t0: float
    t1: float
    doses: list[DoseEvent]  # applied at t0 in model order, before the outputs at t0
    out_idx: np.ndarray  # indices into Protocol.output_times with t0 <= t < t1 (last segment: t <= t1)
    flags: np.ndarray  # 0/1 per ir.sets entry
    input_coef: np.ndarray  # shape (n_inputs, 2): u(t) = a + b*t on this segment
    # the table's amount per ir.table_dose_symbols() entry for the doses at t0 (0 where none)
    dose_amounts: np.ndarray = field(default_factory=lambda: np.zeros(0))


@dataclass
class Protocol:
    t_start: float
    output_times: np.ndarray
    segments: list[Segment]
    scenario: Optional[str] = None
    input_names: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    # scratch space for a back end's per-protocol data (e.g. its integrator plan)
    cache: dict = field(default_factory=dict, repr=False, compare=False)
    # a model with integrals (ir.IntegralIR) runs on the asked times plus each t - window:
    # `output_times` is that grid, `requested` the asked times' indices into it and `lags`
    # [n_integrals x n_requested] the indices of max(t - window, t_start). None without integrals.
    requested: Optional[np.ndarray] = None
    lags: Optional[np.ndarray] = None

    def integral_values(self, Q):
        """Each integral at the requested times, [n_integrals x n_requested], from its
        accumulator's values Q [n_integrals x n_output_times] (numpy, or a casadi/torch matrix
        indexed the same way)."""
        return Q[:, self.requested] - _take_rows(Q, self.lags)

    @property
    def t_end(self) -> float:
        return self.segments[-1].t1


def _take_rows(Q, idx: np.ndarray):
    """Q[k, idx[k, j]] as a [n_rows x n_cols] matrix."""
    rows = np.arange(idx.shape[0])[:, None]
    return Q[rows, idx]


# ---------------------------------------------------------------- inputs
@dataclass
class _InputSignal:
    """An input as a piecewise-linear (or step) function of time."""

    times: np.ndarray
    values: np.ndarray
    interp: str

    def breakpoints(self) -> np.ndarray:
        return self.times

    def coef(self, t0: float) -> tuple[float, float]:
        """(a, b) with u(t) = a + b*t on the piece that starts at t0."""
        times, values = self.times, self.values
        j = int(np.searchsorted(times, t0, side="right")) - 1  # last data point <= t0
        if j < 0:
            return float(values[0]), 0.0
        if self.interp == "step" or j >= len(times) - 1:
            return float(values[j]), 0.0
        slope = (values[j + 1] - values[j]) / (times[j + 1] - times[j])
        return float(values[j] - slope * times[j]), float(slope)


def _input_signals(ir: ModelIR, inputs: Optional[Mapping]) -> list[_InputSignal]:
    inputs = dict(inputs or {})
    known = {u.name for u in ir.inputs}
    unknown = sorted(set(inputs) - known)
    if unknown:
        raise ValueError(f"unknown input(s) {', '.join(unknown)}; the model declares: "
                         f"{', '.join(sorted(known)) or 'no inputs'}")
    signals = []
    for u in ir.inputs:
        data = inputs.get(u.name)
        times = values = None
        if data is not None:
            if np.isscalar(data):
                times, values = np.array([0.0]), np.array([float(data)])
            else:
                times, values = (np.asarray(a, dtype=float).ravel() for a in data)
                if times.shape != values.shape:
                    raise ValueError(f"input {u.name}: {len(times)} times but {len(values)} values")
                keep = np.isfinite(times) & np.isfinite(values)  # empty cells: no information
                times, values = times[keep], values[keep]
                order = np.argsort(times, kind="stable")
                times, values = times[order], values[order]
                if len(times) and np.any(np.diff(times) == 0):
                    # repeated time: keep the last value (a step at that instant)
                    last = np.r_[np.diff(times) != 0, True]
                    times, values = times[last], values[last]
        if times is None or len(times) == 0:
            if u.default is None:
                raise SimulationError(f"input `{u.name}` has no data and no default value; "
                                      f"give a column `{u.name}` or declare `input {u.name} [...] = DEFAULT`")
            times, values = np.array([0.0]), np.array([float(u.default)])
        signals.append(_InputSignal(times, values, u.interp))
    return signals


def inputs_from_table(ir: ModelIR, table, time_column: Optional[str] = None) -> dict:
    """{input name: (times, values)} from a pandas DataFrame or a dict of columns.

    Columns that are not inputs are ignored. For a dynamic model the time column is
    `time_column` (default: the model's time variable)."""
    time_column = time_column or ir.time_name
    columns = list(table.keys()) if not hasattr(table, "columns") else list(table.columns)
    if time_column not in columns:
        raise ValueError(f"the input table has no time column `{time_column}`")
    t = np.asarray(table[time_column], dtype=float)
    return {u.name: (t, np.asarray(table[u.name], dtype=float)) for u in ir.inputs if u.name in columns}


# ---------------------------------------------------------------- protocol
def check_scenario(ir: ModelIR, scenario: Optional[str]) -> None:
    if scenario is not None and scenario not in ir.scenarios:
        names = sorted(ir.scenarios)
        hint = did_you_mean(scenario, names)
        raise ValueError(f"unknown scenario `{scenario}`" + (f" ({hint})" if hint else "")
                         + f"; the model declares: {', '.join(names) or 'no scenarios'}")


def table_dose_events(dose: DoseIR, doses: Optional[Mapping]) -> list[tuple[float, float]]:
    """(time, amount) of a table dose in one series: `doses[name] = (times, amounts)` in the time
    unit and the dose's declared unit. Amounts of one dose at one instant add up."""
    times, amounts = (np.asarray(a, dtype=float).ravel() for a in (doses or {}).get(dose.name, ([], [])))
    if times.shape != amounts.shape:
        raise ValueError(f"dose {dose.name}: {len(times)} times but {len(amounts)} amounts")
    total: dict[float, float] = {}
    for t, a in zip(times, amounts):
        if np.isfinite(t) and np.isfinite(a):
            total[float(t)] = total.get(float(t), 0.0) + float(a)
    return sorted(total.items())


def build_protocol(ir: ModelIR, times, scenario: Optional[str] = None,
                   inputs: Optional[Mapping] = None, t_start: Optional[float] = None,
                   doses: Optional[Mapping] = None) -> Protocol:
    """Cut [t_start, times[-1]] into event segments (see the module docstring).

    times: sorted output times in the model's time unit. inputs: {name: (times, values)} or
    {name: constant}; a pandas DataFrame is accepted too (see `inputs_from_table`). doses: the
    table doses of this run, {dose name: (times, amounts)} (see `table_dose_events`)."""
    unknown = sorted(set(doses or {}) - set(ir.table_dose_names()))
    if unknown:
        raise ValueError(f"unknown table dose(s) {', '.join(unknown)}; the model's doses from the data: "
                         f"{', '.join(ir.table_dose_names()) or 'none'}")
    if ir.is_static:
        raise ValueError("a static model has no time protocol; simulate it over a table of inputs")
    check_scenario(ir, scenario)
    out = np.asarray(times, dtype=float).ravel()
    if out.size == 0:
        raise ValueError("no output times given")
    if not np.all(np.isfinite(out)):
        raise ValueError("output times must be finite numbers")
    if np.any(np.diff(out) < 0):
        raise ValueError("output times must be sorted in increasing order")
    implicit_start = t_start is None and ir.t0 is None
    if ir.t0 is not None:  # the model's clock origin (`time ... from T0`) wins over any other start
        if out[0] < ir.t0:
            raise ValueError(f"output time {ir.time_name} = {out[0]:g} is before the model's clock origin "
                             f"{ir.time_name} = {ir.t0:g} (`time {ir.time_name} ... from {ir.t0:g}`)")
        t_start = ir.t0
    t_start = float(out[0]) if t_start is None else float(t_start)
    if t_start > out[0]:
        raise ValueError(f"t_start = {t_start} is after the first output time {out[0]}")
    requested = lags = None
    if ir.integrals:  # add each t - window (cut at the start) to the grid
        starts = [np.maximum(out - i.window, t_start) for i in ir.integrals]
        grid = np.unique(np.concatenate([out, *starts]))
        requested = np.searchsorted(grid, out)
        lags = np.array([np.searchsorted(grid, s) for s in starts], dtype=int).reshape(len(starts), len(out))
        out = grid
    t_end = float(out[-1])
    if hasattr(inputs, "columns"):
        inputs = inputs_from_table(ir, inputs)
    signals = _input_signals(ir, inputs)

    events: list[DoseEvent] = []
    amount_slot = {sym: j for j, sym in enumerate(ir.table_dose_symbols())}
    amount_at: dict[float, np.ndarray] = {}  # dose instant -> the table amounts there
    for dose in ir.doses_for(scenario):
        k = ir.state_index(dose.state)
        if dose.from_data:
            for t, a in table_dose_events(dose, doses):
                if t_start <= t <= t_end:
                    events.append(DoseEvent(dose, t, k))
                    amount_at.setdefault(t, np.zeros(len(amount_slot)))[amount_slot[dose.amount_symbol]] = a
            continue
        events += [DoseEvent(dose, float(t), k) for t in dose.times if t_start <= t <= t_end]
    # model order within one instant; sort is stable
    events.sort(key=lambda e: e.time)
    warnings = []
    skipped = sorted({d.name for d in ir.doses_for(scenario)
                      if any(t < t_start for t in (d.times or [t for t, _ in table_dose_events(d, doses)]))})
    if skipped and implicit_start:
        warnings.append(f"dose(s) {', '.join(skipped)} come before the first output time "
                        f"{ir.time_name} = {t_start:g} and are not applied (a run starts at its first "
                        "time): start the output times earlier, or pass t_start")

    active_sets = ir.sets_for(scenario)
    edges = {e.time for e in events}
    for i in active_sets:
        s = ir.sets[i]
        edges.update(t for t in (s.start, s.end) if t is not None)
    for sig in signals:
        edges.update(sig.breakpoints().tolist())
    bounds = [t_start] + sorted(t for t in edges if t_start < t < t_end) + [t_end]
    if t_end in edges and t_end > t_start:  # an event at the end: a final zero-length segment
        bounds.append(t_end)

    segments = []
    n = len(bounds) - 1
    for j in range(n):
        t0, t1 = bounds[j], bounds[j + 1]
        last = j == n - 1
        lo = np.searchsorted(out, t0, side="left")
        hi = np.searchsorted(out, t1, side="right" if last else "left")
        flags = np.zeros(len(ir.sets))
        for i in active_sets:
            s = ir.sets[i]
            if (s.start is None or s.start <= t0) and (s.end is None or t0 < s.end):
                flags[i] = 1.0
        coef = np.array([sig.coef(t0) for sig in signals], dtype=float).reshape(len(signals), 2)
        doses = [e for e in events if e.time == t0]
        amounts = amount_at.get(t0, np.zeros(len(amount_slot))) if doses else np.zeros(len(amount_slot))
        segments.append(Segment(t0, t1, doses, np.arange(lo, hi), flags, coef, amounts))
    return Protocol(t_start, out, segments, scenario, [u.name for u in ir.inputs], warnings,
                    requested=requested, lags=lags)


def default_times(ir: ModelIR, n: int = 201) -> np.ndarray:
    """The output grid when neither the caller nor data give one: 100 time units, longer when
    events come later (`nimm simulate` without --times or --data, and the probe)."""
    events = [t for d in ir.doses for t in d.times]
    events += [t for s in ir.sets for t in (s.start, s.end) if t is not None]
    for sc in ir.scenarios.values():
        events += [t for d in sc.doses for t in d.times]
    start = ir.t0 if ir.t0 is not None else 0.0
    end = max([start + 100.0] + [t * 1.5 for t in events if t > start])
    return np.linspace(start, end, n)


# ---------------------------------------------------------------- runtime vectors
def param_vector(ir: ModelIR, params: Optional[Mapping] = None) -> np.ndarray:
    """Values of ir.params (params and consts, declaration order): defaults overridden by `params`."""
    params = dict(params or {})
    known = [p.name for p in ir.params]
    unknown = [k for k in params if k not in known]
    if unknown:
        hints = [did_you_mean(k, known) for k in unknown]
        named = ", ".join(f"`{k}`" + (f" ({h})" if h else "") for k, h in zip(unknown, hints))
        raise ValueError(f"unknown parameter(s) {named}; the model declares: {', '.join(known) or 'none'}")
    return np.array([float(params.get(p.name, p.default)) for p in ir.params], dtype=float)


def segment_tail(segment: Segment) -> np.ndarray:
    """The protocol-fixed part of the runtime vector: flags, (a, b) per input, table dose amounts."""
    return np.concatenate([segment.flags, segment.input_coef.ravel(), segment.dose_amounts])


def runtime_vector(ir: ModelIR, params: Optional[Mapping], segment: Segment) -> np.ndarray:
    """The full runtime parameter vector (order `ir.runtime_symbols()`) on one segment."""
    return np.concatenate([param_vector(ir, params), segment_tail(segment)])
