"""Exceptions that carry user-facing messages (never shown as tracebacks by the CLI)."""
from __future__ import annotations


class NimmError(Exception):
    """Base class: the message is meant for the user as it is."""


class ModelError(NimmError):
    """The model text has errors; `.diagnostics` holds them (see nimm_dsl.diagnostics)."""

    def __init__(self, diagnostics, source: str | None = None):
        self.diagnostics = list(diagnostics)
        self.source = source
        from .diagnostics import render_text

        super().__init__(render_text([d for d in self.diagnostics if d.is_error], source))


class DataError(NimmError):
    """A data table is unusable; the message names the file, column and row."""


class SimulationError(NimmError):
    """Integration failed (blow-up, NaN, step-size collapse); the message says where and when.

    Back ends may add what a diagnostic needs to point at the model line: `kind` ("initial",
    "dose", "nonfinite" or "solver"), `time` (model time unit), `quantities` (the states or
    doses involved) and `state` ({state: value} at the last good time)."""

    def __init__(self, message: str, *, kind: str | None = None, time: float | None = None,
                 quantities=(), state: dict | None = None):
        super().__init__(message)
        self.kind, self.time = kind, time
        self.quantities = list(quantities)
        self.state = dict(state or {})


class FitError(NimmError):
    """Fitting could not proceed or failed; the message says why."""
