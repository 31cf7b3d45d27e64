"""The model line behind a simulation that stopped on NaN or inf.

A back end's SimulationError says when it failed and which states were involved, and carries the
state it last saw (the last good state, or the first finite state where the right-hand side gave
NaN or inf); it cannot name a line, since back ends sit below the runtime. Here the model is
evaluated once in numpy at that state (`pointwise.first_nonfinite`), then, when nothing is NaN
there yet, a little ahead along the derivative, where the solver was going. The first quantity
that is not finite is the culprit: the let, flow, `der` or observe line (a family's element and
its line), the initial value or the dose. `simulate` runs a simulator and `locate`s its failure;
the probe (E801) reports the same culprit. All of it runs only after a failure.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import numpy as np

from ..compiler.ir import ModelIR
from ..diagnostics import Span
from ..errors import SimulationError
from .pointwise import Culprit, Point, explain, first_nonfinite, point, with_states


@dataclass
class Found:
    """A failure's culprit and where the model was evaluated to find it."""

    culprit: Culprit
    t: float
    ahead: bool  # found a little ahead of the state the error carries, not at it


def point_at(ir: ModelIR, t: float, times=None, scenario: Optional[str] = None, inputs=None, doses=None,
             params=None, weights=None, t_start: Optional[float] = None) -> Point:
    """A pointwise.Point at time t with the flags and inputs of the run in force there."""
    from ..backends.protocol import build_protocol

    grid = np.unique(np.r_[np.asarray(times if times is not None else [], dtype=float), t])
    protocol = build_protocol(ir, grid, scenario=scenario, inputs=inputs, doses=doses, t_start=t_start)
    seg = next((s for s in protocol.segments if s.t0 <= t < s.t1), protocol.segments[-1])
    return point(ir, t, seg, params, _plain_weights(weights))


def failure_culprit(ir: ModelIR, error: SimulationError, times=None, scenario: Optional[str] = None,
                    inputs=None, doses=None, params=None, weights=None,
                    t_start: Optional[float] = None) -> Optional[Found]:
    """The quantity that became NaN or inf in the run that raised `error` (None when the error
    carries no state, or the model is finite there and just ahead: a blow-up, a stiff model)."""
    if error.kind is None or (not error.state and error.kind != "initial"):
        return None
    t = error.state_time if error.state_time is not None else float(np.asarray(times, dtype=float)[0])
    p = point_at(ir, t, times, scenario, inputs, doses, params, weights, t_start)
    if error.kind == "initial":
        for s in ir.states:
            v = p.value(s.init)
            if not math.isfinite(v):
                return Found(Culprit("initial value", s.name, s.span, v, explain(s.init, p)), t, False)
        return None
    x = np.array([error.state.get(s.name, 0.0) for s in ir.states], dtype=float)
    if error.kind == "dose":
        dose = next((d for d in ir.doses_for(scenario) if d.name == error.quantities[0]), None)
        if dose is None:
            return None
        q = with_states(p, x)
        v = q.value(dose.amount)
        why = explain(dose.amount, q) if not math.isfinite(v) else f"its amount is {v:g}"
        return Found(Culprit("dose", dose.name, dose.span, v, why), t, False)
    culprit = first_nonfinite(p, x)
    if culprit is not None:
        return Found(culprit, t, False)
    culprit = _nonfinite_ahead(ir, p, x)
    return Found(culprit, t, True) if culprit is not None else None


def _nonfinite_ahead(ir: ModelIR, p: Point, x) -> Optional[Culprit]:
    """The culprit just ahead of the last good state, where the solver's next steps went: the
    state moved along its derivative by growing amounts (the NaN is often one step further)."""
    q = with_states(p, x, clip=True)
    dx = np.array([q.value(ir.derivatives[s.name]) for s in ir.states])
    if not np.all(np.isfinite(dx)):
        return None
    scale = np.abs(x) + 1e-12
    for frac in (1e-6, 1e-4, 1e-2, 0.1, 0.5, 1.0, 2.0):
        dt = frac * np.min(scale / np.maximum(np.abs(dx), 1e-300))
        culprit = first_nonfinite(p, x + dt * dx)
        if culprit is not None:
            return culprit
    return None


def nan_hint(culprit: Culprit) -> Optional[str]:
    """What usually fixes the operation that failed."""
    why = culprit.why
    if why.startswith(("log of", "sqrt of")) or "to the power" in why:
        return "a state may reach 0 or below: guard the argument (`max(x, 1e-12 [unit])`) or check the state's dynamics"
    if why.startswith("division by zero"):
        return "a divisor reaches 0: add a small constant, or check that the quantity cannot vanish"
    return None


def at_time(ir: ModelIR, t: float) -> str:
    """`t = 2.5 day`: a time as the messages write it."""
    return f"{ir.time_name} = {t:.6g}" + (f" {ir.time_unit}" if ir.time_unit else "")


def locate(error: SimulationError, ir: ModelIR, times=None, scenario: Optional[str] = None, inputs=None,
           doses=None, params=None, weights=None, t_start: Optional[float] = None, **_solver_options) -> None:
    """Add the failure's culprit to `error` (SimulationError.locate), when one is found; the
    arguments are the run's, as given to `simulate`."""
    if ir.is_static or error.diagnostics:
        return
    try:
        found = failure_culprit(ir, error, times, scenario, inputs, doses, params, weights, t_start)
    except Exception:  # noqa: BLE001 - best effort on an error already being raised: the search
        # must never replace the solver's own report with a failure of its own
        return
    if found is None:
        return
    c = found.culprit
    line = f" (line {c.span.line})" if c.span is not None else ""
    if c.what == "dose":
        sentence = f"the cause: dose `{c.name}`{line} at {at_time(ir, found.t)}: {c.why}"
    elif found.ahead:  # a fixed-step method's last good state may be an output time before the failure
        later = error.time is not None and error.time - found.t > 1e-6 * max(1.0, abs(found.t))
        when = (f"between {ir.time_name} = {found.t:.6g} and {at_time(ir, error.time).split(' = ', 1)[1]}"
                if later else f"just after {at_time(ir, found.t)}")
        sentence = (f"the cause: {c.what} `{c.name}`{line} becomes {_nonfinite(c.value)} {when}, where the "
                    f"solver was heading: {c.why}")
    else:
        sentence = f"the cause: {c.what} `{c.name}`{line} is {_nonfinite(c.value)} at {at_time(ir, found.t)}: {c.why}"
    error.locate(sentence, c.span or ir.model_span or Span(1, 1, 1, 2), nan_hint(c), ir.file, ir.source)


def simulate(simulator, times=None, **run):
    """`simulator.simulate(times, **run)`; a SimulationError names the model line that caused it."""
    try:
        return simulator.simulate(times, **run)
    except SimulationError as error:
        locate(error, simulator.ir, times, **run)
        raise


def _nonfinite(v: float) -> str:
    return "NaN" if math.isnan(v) else f"{v:g}"


def _plain_weights(weights):
    """Neural weights as numpy arrays (a Torch run may pass tensors that require grad)."""
    if not weights:
        return None
    return {k: np.asarray(v.detach().cpu() if hasattr(v, "detach") else v, dtype=float) for k, v in weights.items()}
