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
    """Integration failed (blow-up, NaN, step-size collapse); the message says where and when."""


class FitError(NimmError):
    """Fitting could not proceed or failed; the message says why."""
