"""Diagnostics are data: a code, a span, a message and an optional hint.

The bottom layer of the package: it imports nothing from it (tests/test_layers.py).

Every phase returns a list of `Diagnostic`; `render_text` and `render_json` are the only places
that turn them into text, so the CLI, the Python API and the LLM repair loop all show the same thing.
"""
from __future__ import annotations

import difflib
import json
import re
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


@dataclass(frozen=True)
class Area:
    """A range of codes owned by one part of the system (docs/language.md §9)."""

    first: str  # e.g. "E100"; the range is first..last inclusive, same letter
    last: str
    name: str
    phase: str  # check | data | probe | task: what reports them

    def __contains__(self, code: str) -> bool:
        return (len(code) == 4 and code[0] == self.first[0]
                and self.first[1:] <= code[1:] <= self.last[1:] and code[1:].isdigit())


# Code ranges, reserved per area: a new code takes the next free number of its area's range.
AREAS: tuple[Area, ...] = (
    Area("E000", "E099", "internal", "check"),  # a bug of ours, never the model's fault
    Area("E100", "E199", "syntax", "check"),
    Area("E200", "E299", "names", "check"),
    Area("E300", "E349", "structure", "check"),
    Area("E350", "E399", "index families", "check"),  # reserved: indexed declarations
    Area("E400", "E499", "units", "check"),
    Area("E500", "E599", "values and options", "check"),
    Area("E600", "E699", "data binding", "data"),
    Area("W600", "W699", "data binding", "data"),
    Area("W700", "W799", "model warnings", "check"),
    Area("E800", "E899", "run-time probes", "probe"),
    Area("W800", "W899", "run-time probes", "probe"),
    Area("E900", "E999", "tasks", "task"),  # reserved: task files and evaluation (TASKS.md)
    Area("W900", "W999", "tasks", "task"),
)


def area_of(code: str) -> Optional[Area]:
    return next((a for a in AREAS if code in a), None)


def severity_of(code: str) -> str:
    """`W` codes are warnings (a model with only warnings runs); every other code is an error."""
    return "warning" if code.startswith("W") else "error"


# Code -> one-line meaning: the one table of diagnostics (LANGUAGE.md §8, TASKS.md §5). The
# table in docs/language.md §9 shows the same meanings (tests/test_diagnostic_codes.py).
CODES: dict[str, str] = {
    "E000": "internal error in the checker (a bug: please report it with the model)",
    "E100": "syntax error: unexpected token or character, unclosed block or bracket",
    "E201": "undefined name",
    "E202": "duplicate declaration, or a model unit with a library unit's name",
    "E203": "a reserved word or built-in name declared as a name",
    "E204": "a name of the wrong kind here",
    "E205": "wrong number of arguments",
    "E301": "a state without dynamics (no der, no flow)",
    "E302": "a state with competing dynamics (two der lines, or der and flows)",
    "E303": "time missing where the model has dynamics, declared twice, or declared without states",
    "E304": "cyclic definition among lets",
    "E305": "model header missing, repeated or not first",
    "E306": "a value depends on what it may not",
    "E307": "a flow between states of different dimensions, from a state to itself, or with neither end",
    "E350": "unknown index",
    "E351": "wrong number of subscripts: a family without them, or a name that is not a family with some",
    "E352": "a subscript that is neither an index variable in scope nor a member of its index, or a shift (`s+1`) that leaves its index",
    "E353": "an index variable, subset or inline set over the wrong index, or a family line with too many elements",
    "E354": "a table file that may not or cannot be read, or table() outside a const family's value",
    "E355": "a table whose keys or values do not match the family's index",
    "E356": "an index variable bound twice",
    "E401": "mismatched dimensions between operands",
    "E402": "an equation's dimension disagrees with its state (per time unit)",
    "E403": "an argument that must be dimensionless is not",
    "E404": "an exponent that is dimensioned, or not constant on a dimensioned base",
    "E405": "a value whose dimension disagrees with its declared unit",
    "E406": "unknown unit",
    "E407": "a boolean used as a number, or a number as a condition",
    "E501": "invalid bounds (LO not below HI), or an empty set window",
    "E502": "a constant default or initial value outside its bounds",
    "E503": "an invalid option",
    "E504": "a constant without a finite value (division by zero, overflow, no real value, or infinite where a number is needed)",
    "E601": "the data table has no column for the model's time variable",
    "E602": "no column of the data table matches any observe",
    "E603": "data values impossible under an observe's noise model",
    "W604": "an observe without a data column",
    "W605": "data columns that match nothing in the model",
    "W606": "an observed quantity starts far from the first observation",
    "E607": "data times before the model's clock origin",
    "E608": "a data column that names an observed or input family but none of its elements",
    "E609": "an observed family with data columns for some of its elements but not all",
    "E611": "a dose column the model does not declare as a dose from the data",
    "E612": "a negative dose amount in the data table",
    "E613": "a dose time outside its series (after the series' last observation)",
    "W614": "a dose from the data without a column in the table",
    "W615": "a count over an interval whose window starts before the run (no clock origin)",
    "W701": "a declaration that nothing uses",
    "W702": "a state that can influence no observation",
    "W703": "an estimated param without bounds",
    "W704": "a param that can influence no observation",
    "W705": "a flow line repeated with the same rate for every member of an index that only one end names",
    "W706": "a sum whose terms do not use its index variable",
    "W707": "a set or dose target subscript that is no member and that nothing else on its line uses: the line acts on every member",
    "E801": "a state, let or observe becomes NaN or infinite in a probe simulation or a run",
    "E802": "the solver fails in a probe simulation",
    "W803": "a state leaves its declared domain in a probe simulation",
    "W804": "an observe leaves what its noise model allows in a probe simulation",
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
        return severity_of(self.code)

    @property
    def is_error(self) -> bool:
        return self.severity == "error"

    def __repr__(self) -> str:
        return f"<{self.severity} {self.code} at {self.file}:{self.span.line}:{self.span.column}: {self.message}>"

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


MAX_CLOSEST = 500  # candidates compared per hint (edit distance is costly; a model may hold 9,000 names)


def closest(name: str, candidates: Iterable[str]) -> Optional[str]:
    """The candidate closest to `name` by edit distance (or equal but for case), or None. Only
    names of about the same length can be close; of those, the first MAX_CLOSEST are compared."""
    candidates = set(candidates)
    if len(candidates) > MAX_CLOSEST:
        candidates = {c for c in candidates if abs(len(c) - len(name)) <= max(2, len(name) // 3)}
    candidates = sorted(candidates)[:MAX_CLOSEST]
    close = difflib.get_close_matches(name, candidates, n=1, cutoff=0.6)
    if not close:
        lowered = {c.lower(): c for c in candidates}
        if name.lower() in lowered:
            close = [lowered[name.lower()]]
    return close[0] if close else None


def did_you_mean(name: str, candidates: Iterable[str]) -> Optional[str]:
    """A 'did you mean `x`?' hint from edit distance, or None when nothing is close."""
    close = closest(name, candidates)
    return f"did you mean `{close}`?" if close else None


# Characters a terminal acts on instead of showing: C0 and C1 controls (escape sequences can set
# the title, clear the screen or fake output) and the bidirectional overrides that reorder what is
# shown ("Trojan source"). Model text, data and language-model replies are shown with these as
# visible escapes (`\x1b`, `\u202e`); tabs stay.
_INVISIBLE = re.compile("[\x00-\x08\x0a-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def visible(text: str, keep_lines: bool = False) -> str:
    """`text` with every control character a terminal would act on written as an escape (line
    breaks kept with `keep_lines`, for messages of several lines)."""
    if keep_lines:
        return "\n".join(visible(line) for line in text.split("\n"))
    return _INVISIBLE.sub(lambda m: repr(m.group())[1:-1], text)


def render_text(diagnostics: Iterable[Diagnostic], source: Optional[str] = None) -> str:
    """The human form: `file:line:col: error[CODE]: message`, the source line, carets, hint.
    Control characters of the model, the data or a reply are shown as escapes (`visible`)."""
    lines_of_source = source.splitlines() if source is not None else []
    out: list[str] = []
    for d in sorted(diagnostics, key=sort_key):
        out.append(visible(f"{d.file}:{d.span.line}:{d.span.column}: {d.severity}[{d.code}]: {d.message}"))
        if 1 <= d.span.line <= len(lines_of_source):
            raw = lines_of_source[d.span.line - 1].expandtabs(1)
            text = visible(raw[:200]) + ("…" if len(raw) > 200 else "")  # keep pathological lines readable
            start = len(visible(raw[:d.span.column - 1]))  # escapes widen the line: carets follow
            gutter = str(d.span.line)
            if d.span.end_line == d.span.line:
                width = max(1, len(visible(raw[d.span.column - 1:d.span.end_column - 1])))
            else:
                width = max(1, len(text) - start)
            width = max(1, min(width, len(text) - start + 1, 200))
            out.append(f"   {gutter} | {text}")
            out.append(f"   {' ' * len(gutter)} | {' ' * start}{'^' * width}")
        if d.hint:
            out.append(visible(f"   = hint: {d.hint}"))
    return "\n".join(out)


def render_json(diagnostics: Iterable[Diagnostic]) -> str:
    """The machine form of LANGUAGE.md §8: a JSON array of objects."""
    return json.dumps([d.to_dict() for d in sorted(diagnostics, key=sort_key)], indent=2)
