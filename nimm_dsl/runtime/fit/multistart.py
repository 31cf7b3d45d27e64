"""The one multi-start loop every fitting path runs through.

A path (`casadi_paths.py`, `torch_path.py`) is a `StartSolver`: it solves from one start point and
reports the outcome, or raises `StartFailed`. The loop tries the requested starts (the defaults
first), records each one, and keeps the best. A start that fails does not fail the fit when
another succeeds; when every requested start fails, it tries `RESCUE_STARTS` more points inside
the bounds (a model that blows up at its defaults often runs elsewhere) and says so; when those
fail too, the fit fails with the most specific diagnosis found.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

import numpy as np

from ...compiler.ir import ModelIR, ParamIR
from ...errors import FitError, SimulationError
from ..data import Dataset
from ..interrupt import raise_if_interrupted
from .failures import Diagnosis, StartFailed, diagnose, find_problem
from .result import StartRecord, point_summary, start_line
from .starts import rescue_points

RESCUE_STARTS = 8
_NOT_YET = object()
# What a start may raise besides StartFailed: a solver's error is a failed start, never a crash.
START_ERRORS = (StartFailed, SimulationError, RuntimeError, ValueError, ArithmeticError)


@dataclass
class StartOutcome:
    """A start that produced an estimate: every param and const (declared units), the neural
    weights, the loss there, the optimiser's status in words and whether it converged."""

    values: dict
    weights: dict
    loss: float
    status: str
    converged: bool
    notes: list = field(default_factory=list)


class StartSolver:
    """A fitting path, as the loop sees it. Subclasses set the attributes and define `solve` and
    `curvature`; they may override `warm_start` and use `progress`."""

    ir: ModelIR
    train: Dataset
    est: list  # the estimated ParamIRs, in the order of a start point's entries
    simulator: object  # a compiled simulator (public `simulate`) for predictions and diagnosis
    rtol: float
    atol: float
    progress = None  # a text stream for the path's own progress bar, or None

    def solve(self, start: np.ndarray) -> StartOutcome:
        """Optimise from `start` (values of `est`); StartFailed when no estimate comes out."""
        raise NotImplementedError

    def curvature(self, outcome: StartOutcome) -> tuple[Optional[Callable], Optional[Callable]]:
        """(gradient, Hessian or None) of the training loss in the estimated params (natural
        units), at `outcome`'s weights."""
        raise NotImplementedError

    def gauss_newton(self, outcome: StartOutcome) -> Optional[Callable]:
        """The Gauss-Newton (Fisher information) approximation of the loss's Hessian in the
        estimated params (natural units), at `outcome`'s weights: x -> matrix, or None where the
        path has none (then the exact Hessian is used)."""
        return None

    def warm_start(self, points: np.ndarray, origins: list) -> tuple[np.ndarray, list, list[str]]:
        """The start points to use instead of the requested ones, and notes about them."""
        return points, origins, []


@dataclass
class MultiStart:
    best: StartOutcome
    records: list[StartRecord]
    warnings: list[str]


@dataclass
class _Failure:
    index: int  # into the records
    values: dict
    weights: Optional[dict]
    status: str
    diagnosis: Optional[Diagnosis] = None
    problem: object = None  # failures.find_problem at `values`, found once (see _explain)


def _one_line(e: Exception) -> str:
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    return lines[-1] if lines else type(e).__name__


def run_starts(solver: StartSolver, points: np.ndarray, origins: Sequence[str], seed: int,
               progress=None, rescue: bool = True) -> MultiStart:
    """Solve from every point (rows: values of `solver.est`); see the module docstring.
    progress: a text stream for a progress bar, or None."""
    ir, est = solver.ir, list(solver.est)
    defaults = {p.name: float(p.default) for p in ir.params}
    records: list[StartRecord] = []
    outcomes: list[StartOutcome] = []
    failures: list[_Failure] = []

    def attempt(x0: np.ndarray, origin: str) -> bool:
        start = {p.name: float(v) for p, v in zip(est, x0)}
        try:
            out = solver.solve(np.asarray(x0, dtype=float))
            raise_if_interrupted()  # a solver may have caught Ctrl-C and returned
            if not np.isfinite(out.loss):
                raise StartFailed("failed: the loss is not finite at the point reached", out.values, out.weights)
        except START_ERRORS as e:
            raise_if_interrupted()  # ... or turned it into its own error
            status = e.status if isinstance(e, StartFailed) else f"failed: {_one_line(e)}"
            point = e.point if isinstance(e, StartFailed) and e.point else dict(defaults, **start)
            if not all(np.isfinite(v) for v in point.values()):  # an optimiser step went NaN: diagnose
                point = dict(defaults, **start)                   # where the start began instead
            weights = e.weights if isinstance(e, StartFailed) else None
            failures.append(_Failure(len(records), point, weights, status, problem=_NOT_YET))
            records.append(StartRecord(start, None, None, status, origin, False))
            return False
        outcomes.append(out)
        records.append(StartRecord(start, {p.name: out.values[p.name] for p in est}, float(out.loss),
                                   out.status, origin, True))
        return True

    bar = progress_bar(len(points), f"fitting {ir.name}", progress)
    for x0, origin in zip(points, origins):
        attempt(x0, origin)
        bar.update()
    bar.close()
    n_requested = len(records)
    rescued = None
    if not outcomes and rescue and est:
        for x0 in rescue_points(est, RESCUE_STARTS, seed):
            if attempt(x0, "rescue"):
                rescued = len(records)
                break

    best = min(outcomes, key=lambda o: o.loss) if outcomes else None
    reference = None if best is None else best.values
    warnings = []
    if best is None:
        # each diagnosis re-simulates a failing run, which is slow: stop at the first that finds a cause
        shown = None
        for f in failures:
            _explain(solver, f, None)
            if f.diagnosis.specific:
                shown = f
                break
        shown = shown or failures[0]
        _explain(solver, shown, None, culprits=True)
        tried = (f"{n_requested} requested starting point{'s' * (n_requested > 1)}"
                 + (f" and {len(records) - n_requested} more inside the bounds" if len(records) > n_requested else ""))
        everywhere = ""
        if len(records) > n_requested:
            bounds = ", ".join(f"`{p.name}` in [{p.lo:g}, {p.hi:g}]" for p in est)
            everywhere = (f" The model failed at every point tried inside the bounds ({bounds}): check "
                          "that they admit a valid model, and the equations")
        raise FitError(f"the fit of {ir.name} failed from every starting point ({tried}). "
                       f"{_failure_line(shown, records)}: {shown.diagnosis.text()}.{everywhere}")
    if failures:
        first = failures[0]
        _explain(solver, first, reference, culprits=True)
        records[first.index].message = first.diagnosis.text()
    if rescued is not None:
        what = ("its defaults" if n_requested == 1
                else f"any of the {n_requested} requested starting points, the first being its defaults")
        warnings.append(f"the fit could not start from {what} ({point_summary(records[0].start)}): "
                        f"{first.diagnosis.cause}. It tried other starting points inside the bounds and "
                        f"continued from start {rescued} ({point_summary(records[rescued - 1].start)}). "
                        f"Fix: set the defaults to values where the model runs; {first.diagnosis.fix}")
    elif failures:
        warnings.append(f"{len(failures)} of {len(records)} starting points failed; the first, "
                        f"{_failure_line(first, records)}: {first.diagnosis.text()}")
    if not best.converged:
        warnings.append(f"the best start {best.status}; the estimates may be rough (allow more "
                        "iterations: `--max-iter`, `max_iter` in the API; or try more starting points: "
                        "`--starts`)")
    return MultiStart(best, records, warnings)


def _failure_line(f: _Failure, records: Sequence[StartRecord]) -> str:
    return start_line(f.index + 1, records[f.index])


def _explain(solver: StartSolver, f: _Failure, reference, culprits: bool = False) -> None:
    """Diagnose a failed start (once; again with `culprits` to name the params that break it)."""
    if f.problem is _NOT_YET:
        f.problem = find_problem(solver.ir, solver.simulator, solver.train, f.values, f.weights,
                                 solver.rtol, solver.atol)
    if f.diagnosis is None or culprits:
        f.diagnosis = diagnose(solver.ir, solver.simulator, solver.train, solver.est, f.values, f.weights,
                               f.status, solver.rtol, solver.atol, reference=reference,
                               find_culprits=culprits, problem=f.problem)


def progress_bar(total, desc, stream):
    """A bar on a terminal; elsewhere (a log, a pipe) a line every PROGRESS_EVERY seconds."""
    if stream is not None and not stream.isatty():
        from ..progress import ProgressLines

        return ProgressLines(total, desc, stream)
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, file=stream, leave=False, disable=stream is None)


def start_origins(n: int) -> list[str]:
    return ["defaults"] + ["latin hypercube"] * (n - 1)


def est_params(ir: ModelIR) -> list[ParamIR]:
    return [p for p in ir.params if p.estimate]
