"""Fits that fail say why: solver output kept off the terminal, and a failing start diagnosed.

IPOPT and SUNDIALS write from C straight to the process's file descriptors 1 and 2, and CasADi's
Python module writes through sys.stdout and sys.stderr (on a failed call it dumps the inputs of
every function on the call stack); `native_output_captured` catches both while a fit runs.

A start that fails is re-simulated at the point where it failed (`diagnose`): the first
non-finite state, let or observe and its time, a state leaving its domain, a sigma that is not
positive, a param on a bound, or else the optimiser's status in words; and a fix (more starts,
tighter bounds on a named param, a positive domain).
"""
from __future__ import annotations

import contextlib
import ctypes
import io
import os
import sys
import tempfile
import warnings
from dataclasses import dataclass
from typing import Mapping, Optional, Sequence

import numpy as np

from ...compiler.ir import ModelIR, ParamIR
from ...errors import SimulationError
from ..data import Dataset
from ..series_params import series_values
from .loss import numpy_sigmas, observation_nll, predict
from .starts import bound_side

MORE_STARTS = 8  # the number suggested in "--starts N"


# ---------------------------------------------------------------- solver output off the terminal
def _flush_c_streams() -> None:
    try:
        ctypes.CDLL(None).fflush(None)  # C stdio buffers (IPOPT's printf) of the whole process
    except (OSError, AttributeError):  # no C library to ask: nothing buffered we could flush
        pass


@contextlib.contextmanager
def native_output_captured():
    """For the duration, send file descriptors 1 and 2 (C code: IPOPT, SUNDIALS) to a temporary
    file, and Python's sys.stdout and sys.stderr (where CasADi's Python module writes its
    messages) and warnings to memory; yields a text stream onto the real stderr, for progress
    bars. The captured text is dropped: the user needs the diagnosis, not the solver's dump."""
    terminal = sys.stderr
    sys.stdout.flush()
    sys.stderr.flush()
    _flush_c_streams()
    with contextlib.ExitStack() as stack:
        stack.enter_context(warnings.catch_warnings(record=True))
        try:
            saved = {fd: os.dup(fd) for fd in (1, 2)}
        except OSError:  # a descriptor is closed: no terminal to protect at that level
            saved = {}
        if saved:
            sink = stack.enter_context(tempfile.TemporaryFile())
            terminal = stack.enter_context(os.fdopen(os.dup(saved[2]), "w", buffering=1))
            stack.callback(_restore, saved)
            for fd in saved:
                os.dup2(sink.fileno(), fd)
        stack.enter_context(contextlib.redirect_stdout(io.StringIO()))
        stack.enter_context(contextlib.redirect_stderr(io.StringIO()))
        yield terminal


def _restore(saved: dict) -> None:
    _flush_c_streams()
    for fd, copy in saved.items():
        os.dup2(copy, fd)
        os.close(copy)


# ---------------------------------------------------------------- the optimiser's status in words
IPOPT_STATUS = {
    "Solve_Succeeded": "converged",
    "Solved_To_Acceptable_Level": "converged (to the acceptable tolerance)",
    "Search_Direction_Becomes_Too_Small": "converged as far as the integration accuracy allows",
    "Feasible_Point_Found": "converged",
    "Maximum_Iterations_Exceeded": "stopped at the iteration limit before converging",
    "Maximum_CpuTime_Exceeded": "stopped at the time limit before converging",
    "Maximum_WallTime_Exceeded": "stopped at the time limit before converging",
    "Invalid_Number_Detected": "failed: the loss or its derivatives became NaN or inf",
    "Restoration_Failed": "failed: no step lowered the loss (NaN or inf near the point reached?)",
    "Error_In_Step_Computation": "failed: the Newton step could not be computed",
    "Diverging_Iterates": "failed: a param ran off to infinity (give it finite bounds)",
    "Infeasible_Problem_Detected": "failed: the bounds cannot be met",
    "Not_Enough_Degrees_Of_Freedom": "failed: nothing to estimate",
    "User_Requested_Stop": "stopped on request",
}
IPOPT_CONVERGED = {"Solve_Succeeded", "Solved_To_Acceptable_Level", "Search_Direction_Becomes_Too_Small",
                   "Feasible_Point_Found"}
IPOPT_USABLE = IPOPT_CONVERGED | {"Maximum_Iterations_Exceeded", "Maximum_CpuTime_Exceeded",
                                  "Maximum_WallTime_Exceeded", "User_Requested_Stop"}


def ipopt_status_words(status: str) -> str:
    return IPOPT_STATUS.get(status, f"failed: IPOPT returned {status or 'no status'}")


# ---------------------------------------------------------------- diagnosis at a failing point
@dataclass
class Diagnosis:
    """Why a start failed (`cause`), what to do (`fix`), and whether a cause in the model was
    found (`specific`; otherwise only the optimiser's status is known)."""

    cause: str
    fix: str
    specific: bool

    def text(self) -> str:
        return f"{self.cause}. Fix: {self.fix}"


class StartFailed(Exception):
    """A start that produced no usable estimate. `status`: the optimiser's outcome in words;
    `point`: the param values where it failed (every param and const; None: the start point);
    `weights`: the neural weights there."""

    def __init__(self, status: str, point: Optional[Mapping] = None, weights: Optional[Mapping] = None):
        super().__init__(status)
        self.status = status
        self.point = None if point is None else dict(point)
        self.weights = weights


@dataclass
class _Problem:
    """A quantity gone wrong at a point: what (`what`), where in time (`t`), for the fix."""

    what: str
    t: float
    kind: str  # "integration", "value", "noise", "sigma", "domain"
    name: str


def _when(ir: ModelIR, dataset: Dataset, k: int, t: float, row=None) -> str:
    series = dataset.series[k]
    where = "" if series.label is None or len(dataset.series) == 1 else f" in series `{series.label}`"
    if dataset.static:
        return f"at data row {row}{where}"
    unit = f" {ir.time_unit}" if ir.time_unit else ""
    return f"at {ir.time_name} = {t:.6g}{unit}{where}"


_NEEDS = {"lognormal": "a positive prediction", "poisson": "a non-negative rate (positive where a count is)",
          "negbinomial": "a non-negative mean (positive where a count is)",
          "normal": "a finite prediction", "lsq": "a finite prediction"}


def find_problem(ir: ModelIR, simulator, dataset: Dataset, values: Mapping, weights, rtol, atol):
    """The earliest thing that goes wrong when the model runs at `values` (a failed integration, a
    non-finite let or observe, a prediction its noise model cannot take, a sigma that is not
    positive), with the first state that leaves its domain before it; else that state alone;
    else None."""
    try:
        sigmas = numpy_sigmas(ir, values, dataset.observed_names)
    except (ValueError, ArithmeticError):
        sigmas = {}
    for name, s in sigmas.items():
        if not callable(s) and not (np.isfinite(s) and s > 0):
            return _Problem(f"the sigma of observe `{name}` is {s:.6g} at this point, where its noise "
                            "model needs a positive value", -np.inf, "sigma", name)
    found: list[_Problem] = []
    domain: Optional[_Problem] = None
    noise = {o.name: o.noise for o in ir.observes}
    for k, series in enumerate(dataset.series):
        try:
            res = _simulate(simulator, dataset, k, values, weights, rtol, atol)
        except SimulationError as e:
            found.append(_Problem(str(e), -np.inf, "integration", ""))
            break
        times = res.times if res.times is not None else np.zeros(series.n_points)
        for w in res.warnings:
            state = next((s.name for s in ir.states if w.startswith(f"state {s.name} leaves its domain")), None)
            if state is not None and domain is None:
                domain = _Problem(w, -np.inf, "domain", state)
        for name in res.names:  # never a state: a back end stops when a state is not finite
            v = np.asarray(res[name], dtype=float)
            bad = ~np.isfinite(v)
            if bad.any():
                j = int(np.argmax(bad))
                found.append(_Problem(f"`{name}` becomes {v[j]:g} {_when(ir, dataset, k, times[j], series.rows[j])}"
                                      " (a log or sqrt of a negative, or a division by zero?)",
                                      float(times[j]), "value", name))
        for name in dataset.observed_names:
            y, f = series.observed[name], np.asarray(res[name], dtype=float)
            with np.errstate(all="ignore"):
                for j in np.flatnonzero(np.isfinite(y) & np.isfinite(f)):
                    sigma = sigmas.get(name)
                    if callable(sigma) and not float(np.atleast_1d(sigma(f[j:j + 1]))[0]) > 0:  # a sigma of the prediction
                        found.append(_Problem(
                            f"the sigma of observe `{name}` is {float(np.atleast_1d(sigma(f[j:j + 1]))[0]):.6g} where its prediction "
                            f"is {f[j]:.6g} {_when(ir, dataset, k, times[j], series.rows[j])}; a normal sigma must "
                            "stay positive at every predicted value (e.g. `a + b * NAME` with a > 0, b >= 0)",
                            float(times[j]), "sigma", name))
                        break
                    if not np.isfinite(observation_nll(noise[name], y[j:j + 1], f[j:j + 1], sigma)):
                        found.append(_Problem(
                            f"observe `{name}` is {f[j]:.6g} {_when(ir, dataset, k, times[j], series.rows[j])}, "
                            f"where its {noise[name]} noise needs {_NEEDS[noise[name]]}",
                            float(times[j]), "noise", name))
                        break
    if not found:
        return domain
    first = min(found, key=lambda p: p.t)
    if domain is not None and first.kind in ("value", "noise"):
        return _Problem(f"{first.what}; {domain.what}", first.t, "domain", domain.name)
    return first


def _simulate(simulator, dataset: Dataset, k: int, values, weights, rtol, atol):
    s = dataset.series[k]
    if dataset.static:
        return simulator.simulate(None, params=values, inputs=s.input_frame(), weights=weights or None)
    return simulator.simulate(s.times, params=series_values(simulator.ir, values, s), **s.run_options(), rtol=rtol, atol=atol,
                              weights=weights or None)


def _runs(ir, simulator, dataset, values, weights, rtol, atol) -> bool:
    """Whether the model runs at `values` with a finite loss."""
    from .loss import numpy_nll

    try:
        preds = predict(simulator, dataset, values, weights, rtol, atol)
    except (SimulationError, ValueError, RuntimeError):
        return False
    return bool(np.isfinite(numpy_nll(ir, dataset, preds, values)))


def _center(p: ParamIR) -> Optional[float]:
    if not (np.isfinite(p.lo) and np.isfinite(p.hi)):
        return None
    if p.lo > 0 and p.hi / p.lo > 10:
        return float(np.sqrt(p.lo * p.hi))
    return 0.5 * (p.lo + p.hi)


def _culprits(ir, simulator, dataset, est: Sequence[ParamIR], values: Mapping, weights, rtol, atol,
              reference: Optional[Mapping]) -> list[tuple[ParamIR, float]]:
    """The params that, changed alone (to their value in `reference`, else the middle of their
    range), make the model run: the ones whose bounds to tighten."""
    out = []
    for p in est[:12]:  # each try is one simulation; a long list would say little anyway
        alt = reference.get(p.name) if reference else _center(p)
        if alt is None or not np.isfinite(alt) or np.isclose(alt, values[p.name], rtol=1e-3):
            continue
        if _runs(ir, simulator, dataset, dict(values, **{p.name: float(alt)}), weights, rtol, atol):
            out.append((p, float(alt)))
    return out


_UNKNOWN = object()


def diagnose(ir: ModelIR, simulator, dataset: Dataset, est: Sequence[ParamIR], values: Mapping,
             weights, status: str, rtol: float, atol: float, reference: Optional[Mapping] = None,
             find_culprits: bool = True, problem=_UNKNOWN) -> Diagnosis:
    """Why a start that ended (or failed) at param `values` gave no usable estimate.

    status: the optimiser's outcome in words; reference: param values where the model is known
    to run (a successful start), to name the params that break it; find_culprits: try changing
    each param alone to find them (one simulation per param); problem: `find_problem` at these
    values, when already known."""
    if problem is _UNKNOWN:
        problem = find_problem(ir, simulator, dataset, values, weights, rtol, atol)
    at_bounds = [f"`{p.name}` is {side} {p.lo if 'lower' in side else p.hi:g}"
                 for p in est if (side := bound_side(p, values[p.name])) is not None]
    bound_note = f" ({', '.join(at_bounds)})" if at_bounds else ""
    starts_fix = f"try more starting points (`--starts {MORE_STARTS}`)"
    if problem is None:
        fix = starts_fix
        if at_bounds:
            fix = (f"the search ended on a bound ({', '.join(at_bounds)}): widen it if values beyond are "
                   f"plausible, or {starts_fix}")
        elif "iteration limit" in status:
            fix = f"allow more iterations (`--max-iter`, `max_iter` in the API), or {starts_fix}"
        return Diagnosis(f"the optimiser {status.removeprefix('failed: ')}, although the model runs with a "
                         "finite loss at the point reached", fix, False)
    cause = f"{problem.what}{bound_note}"
    if problem.kind == "sigma":
        fix = "give the params in that sigma a positive lower bound"
    elif problem.kind == "domain":
        fix = (f"keep `{problem.name}` in its domain: write its outflows proportional to it (a rate times "
               f"`{problem.name}`), so that it cannot cross its bound; or {starts_fix}")
    elif problem.kind == "noise":
        fix = (f"keep what `{problem.name}` reads positive (states declared `in [0, inf]` with outflows "
               f"proportional to them), or choose a noise model that allows such values; or {starts_fix}")
    else:
        culprits = (_culprits(ir, simulator, dataset, est, values, weights, rtol, atol, reference)
                    if find_culprits else [])
        if culprits:
            named = " and ".join(f"`{p.name}` = {values[p.name]:.4g} (it runs with `{p.name}` = {alt:.4g})"
                                 for p, alt in culprits)
            bounds = ", ".join(f"`{p.name}` in [{p.lo:g}, {p.hi:g}]" for p, _ in culprits)
            fix = (f"{named} breaks the model: tighten the bounds (now {bounds}) to values where the model "
                   f"is valid, or {starts_fix}")
        else:
            fix = f"tighten the bounds of the params to values where the model is valid, or {starts_fix}"
    return Diagnosis(cause, fix, True)
