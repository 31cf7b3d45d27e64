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
    doses involved), `state` ({state: value}: the last good state, or the first finite state
    where the right-hand side gave NaN or inf) and `state_time` (its time; `time` when None).
    The runtime, which can evaluate the model line by line, then `locate`s the error: the line
    that produced the NaN as a sentence of the message and as `diagnostics` (E801) on `source`."""

    def __init__(self, message: str, *, kind: str | None = None, time: float | None = None,
                 quantities=(), state: dict | None = None, state_time: float | None = None):
        super().__init__(message)
        self.kind, self.time = kind, time
        self.quantities = list(quantities)
        self.state = dict(state or {})
        self.state_time = time if state_time is None else state_time
        self.diagnostics: list = []
        self.source: str | None = None

    def locate(self, sentence: str, span, hint: str | None, file: str, source: str | None) -> None:
        """Add the model line that caused the failure: `sentence` ends the message, and an E801
        diagnostic with the whole message points at `span` of `source`."""
        from .diagnostics import Diagnostic

        self.args = (f"{self.args[0]}; {sentence}",)
        self.diagnostics = [Diagnostic("E801", span, str(self), hint, file)]
        self.source = source


class FitError(NimmError):
    """Fitting could not proceed or failed; the message says why."""
