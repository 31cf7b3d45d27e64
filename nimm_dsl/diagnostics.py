"""Diagnostics are data: a code, a span, a message and an optional hint.

The bottom layer of the package: it imports nothing from it (tests/test_layers.py).

Every phase returns a list of `Diagnostic`; `render_text` and `render_json` are the only places
that turn them into text, so the CLI, the Python API and the LLM repair loop all show the same thing.
"""
from __future__ import annotations

import difflib
import json
from dataclasses import dataclass
from typing import Iterable, Optional


@dataclass(frozen=True)
class Span:
    """1-based line/column of the first character; end_column is one past the last character."""

    line: int
    column: int
    end_line: int
    end_column: int

    def to(self, other: "Span") -> "Span":
        """The span from the start of self to the end of other."""
        return Span(self.line, self.column, other.end_line, other.end_column)


# Code -> one-line meaning (LANGUAGE.md §8). The table is also rendered into docs/language.md.
CODES: dict[str, str] = {
    "E100": "syntax error: unexpected token or character, unclosed block or bracket",
    "E201": "undefined name",
    "E202": "duplicate declaration",
    "E203": "a reserved word or built-in name declared as a name",
    "E204": "a name of the wrong kind here",
    "E205": "wrong number of arguments",
    "E301": "a state without dynamics (no der, no flow)",
    "E302": "a state with competing dynamics (two der lines, or der and flows)",
    "E303": "time missing where the model has dynamics, or declared twice",
    "E304": "cyclic definition among lets",
    "E305": "model header missing, repeated or not first",
    "E306": "a value depends on what it may not",
    "E307": "a flow between states of different dimensions, from a state to itself, or with neither end",
    "E401": "mismatched dimensions between operands",
    "E402": "an equation's dimension disagrees with its state (per time unit)",
    "E403": "an argument that must be dimensionless is not",
    "E404": "an exponent that is dimensioned, or not constant on a dimensioned base",
    "E405": "a value whose dimension disagrees with its declared unit",
    "E406": "unknown unit",
    "E407": "a boolean used as a number, or a number as a condition",
    "E501": "invalid bounds (LO not below HI)",
    "E502": "a constant default or initial value outside its bounds",
    "E503": "an invalid option",
    "W701": "a declaration that nothing uses",
    "W702": "a state that can influence no observation",
    "W703": "an estimated param without bounds",
    "W704": "a param that can influence no observation",
}


@dataclass(frozen=True)
class Diagnostic:
    code: str
    span: Span
    message: str
    hint: Optional[str] = None
    file: str = "<model>"

    @property
    def severity(self) -> str:
        return "warning" if self.code.startswith("W") else "error"

    @property
    def is_error(self) -> bool:
        return self.severity == "error"

    def with_file(self, file: str) -> "Diagnostic":
        return Diagnostic(self.code, self.span, self.message, self.hint, file)

    def to_dict(self) -> dict:
        return {
            "file": self.file,
            "code": self.code,
            "severity": self.severity,
            "message": self.message,
            "line": self.span.line,
            "column": self.span.column,
            "end_line": self.span.end_line,
            "end_column": self.span.end_column,
            "hint": self.hint,
        }


def sort_key(d: Diagnostic):
    return (d.file, d.span.line, d.span.column, d.code)


def has_errors(diagnostics: Iterable[Diagnostic]) -> bool:
    return any(d.is_error for d in diagnostics)


def did_you_mean(name: str, candidates: Iterable[str]) -> Optional[str]:
    """A 'did you mean `x`?' hint from edit distance, or None when nothing is close."""
    close = difflib.get_close_matches(name, sorted(set(candidates)), n=1, cutoff=0.6)
    if not close:
        lowered = {c.lower(): c for c in candidates}
        if name.lower() in lowered:
            close = [lowered[name.lower()]]
    return f"did you mean `{close[0]}`?" if close else None


def render_text(diagnostics: Iterable[Diagnostic], source: Optional[str] = None) -> str:
    """The human form: `file:line:col: error[CODE]: message`, the source line, carets, hint."""
    lines_of_source = source.splitlines() if source is not None else []
    out: list[str] = []
    for d in sorted(diagnostics, key=sort_key):
        out.append(f"{d.file}:{d.span.line}:{d.span.column}: {d.severity}[{d.code}]: {d.message}")
        if 1 <= d.span.line <= len(lines_of_source):
            text = lines_of_source[d.span.line - 1].expandtabs(1)
            if len(text) > 200:  # keep pathological lines readable
                text = text[:200] + "…"
            gutter = str(d.span.line)
            if d.span.end_line == d.span.line:
                width = max(1, d.span.end_column - d.span.column)
            else:
                width = max(1, len(text) - d.span.column + 1)
            width = max(1, min(width, len(text) - d.span.column + 2, 200))
            out.append(f"   {gutter} | {text}")
            out.append(f"   {' ' * len(gutter)} | {' ' * (d.span.column - 1)}{'^' * width}")
        if d.hint:
            out.append(f"   = hint: {d.hint}")
    return "\n".join(out)


def render_json(diagnostics: Iterable[Diagnostic]) -> str:
    """The machine form of LANGUAGE.md §8: a JSON array of objects."""
    return json.dumps([d.to_dict() for d in sorted(diagnostics, key=sort_key)], indent=2)
