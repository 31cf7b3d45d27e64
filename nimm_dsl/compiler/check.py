"""The front end in one call: parse, build the symbol table, check names/structure and units.

Phases never raise for bad model text; each returns diagnostics. Later phases run even when
earlier ones found errors (so one run reports everything), but on the statements that parsed.
"""
from __future__ import annotations

import itertools
import math
import re
from dataclasses import replace
from pathlib import Path
from typing import Callable, Optional

from ..grammar import ast as A
from ..grammar.parser import parse
from ..diagnostics import Diagnostic, has_errors, sort_key
from .collector import collector_paused
from .families import FamilyInfo, TableAccess, expand_families
from .symbols import SymbolTable, build_symbol_table


class CheckedModel:
    """What the back ends consume: the tree, resolved symbols, units and the dependency graph.

    A model with index families is checked on a reduced expansion (compiler/families.py,
    `reduce`); `program`, `table`, `names` and `units` are those of the whole model, expanded on
    first use, so nothing after the checker sees the reduced one."""

    def __init__(self, source: str, file: str, program: A.Program, table: SymbolTable, names, units,
                 diagnostics: Optional[list[Diagnostic]] = None, families: Optional[FamilyInfo] = None,
                 tables: Optional[TableAccess] = None, whole: Optional[Callable[[], tuple]] = None):
        self.source = source
        self.file = file
        self.diagnostics = diagnostics if diagnostics is not None else []
        self.families = families if families is not None else FamilyInfo()
        self.tables = tables  # what `table(...)` could read: a re-check elsewhere reads the same
        self._parts = (program, table, names, units)
        self._whole = whole  # () -> (program, table, names, units, diagnostics) of the whole model
        self._whole_errors: list[Diagnostic] = []

    def _expanded(self) -> tuple:
        if self._whole is not None:
            whole, self._whole = self._whole, None
            with collector_paused():  # 10^5 new nodes for a dense family (compiler/collector.py)
                *self._parts, diagnostics = whole()
            seen = {(d.code, d.span.line) for d in self.diagnostics}
            self._whole_errors = [d for d in diagnostics if d.is_error and (d.code, d.span.line) not in seen]
        return self._parts

    @property
    def program(self) -> A.Program:
        return self._expanded()[0]

    @property
    def table(self) -> SymbolTable:
        return self._expanded()[1]

    @property
    def names(self):  # names.NameInfo: let order, dependency graph
        return self._expanded()[2]

    @property
    def units(self):  # unitcheck.UnitInfo: declared unit per symbol, inferred unit per expression
        return self._expanded()[3]

    def whole_model_errors(self) -> list[Diagnostic]:
        """Errors that only the whole model shows (none is known: the reduced check is meant to
        find them all; lowering refuses the model if one ever appears)."""
        self._expanded()
        return self._whole_errors

    @property
    def ok(self) -> bool:
        return not has_errors(self.diagnostics)


_WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_DECLARED = re.compile(r"^\s*(?:const|param|state|input|let|neural|observe|unit|time|dose|index)\s+([A-Za-z_][A-Za-z0-9_]*)")
# Diagnostics about a name that an unparsed statement may well define or use.
_FOLLOW_ON_USE = {"W701", "W702", "W704", "E301"}
# Whole-model reachability: any unparsed statement but these may have been an influence path.
_REACHABILITY = {"W702", "W704"}
_NO_INFLUENCE = ("model", "time", "unit", "param", "const", "input", "neural")


MAX_LISTED = 1000  # elements of one family line a diagnostic lists before it lists only the ends
_ELEMENT = re.compile(r"`([A-Za-z_][A-Za-z0-9_]*)\[([^\]`]*)\]`")


def _stood_for(element: re.Match, stands_for: dict) -> tuple[list[str], int]:
    """The element a diagnostic names (`R[child]`) and, in the reduced check, the elements it
    stands for (`R[adult]`, `R[senior]`: members the text does not name behave alike), listed up
    to MAX_LISTED (a large matrix family: its first and last), and how many there are."""
    options = [stands_for.get(m.strip(), [m.strip()]) for m in element.group(2).split(",")]
    count = math.prod(len(o) for o in options)
    listed = itertools.product(*options)
    if count > MAX_LISTED:
        listed = itertools.chain(itertools.islice(listed, 3), [[o[-1] for o in options]])
    return [f"{element.group(1)}[{','.join(p)}]" for p in listed], count


def member_order(families: FamilyInfo) -> Callable[[str], tuple]:
    """Sort key of element names in their indexes' member order (`R[child]` before `R[adult]`)."""
    positions: dict[str, dict[str, int]] = {}  # index -> member -> place, built once per index

    def key(element: str) -> tuple:
        name, _, rest = element.partition("[")
        indexes = families.families.get(name, [])
        places = []
        for i, member in enumerate(rest.rstrip("]").split(",")):
            index = indexes[i] if i < len(indexes) else None
            if index not in positions:
                positions[index] = {m: k for k, m in enumerate(families.indexes.get(index, []))}
            places.append(positions[index].get(member, len(positions[index])))
        return tuple(places)
    return key


def _likewise(d: Diagnostic, names: list[str], count: int) -> Diagnostic:
    """A family line's diagnostic that holds for several of its elements names them, so that
    `state R[child] can influence no observation` does not read as a fault of one age group.
    `count`: how many elements `names` stands for when it lists only some."""
    others = [n for n in dict.fromkeys(names) if f"`{n}`" not in d.message]
    if not others:
        return d
    more = max(len(others), count - 1)
    if more == len(others) <= 3:
        listing = f"`{others[0]}`" if more == 1 else (", ".join(f"`{n}`" for n in others[:-1]) + f" and `{others[-1]}`")
    else:
        listing = f"`{others[0]}`, `{others[1]}`, ..., `{others[-1]}`: {more} more elements"
    return replace(d, message=f"{d.message} (likewise {listing})")


def _first_word(text: str) -> str:
    match = _WORD.match(text.lstrip())
    return match.group() if match else ""


def _without_follow_on(diags: list[Diagnostic], source: str, unparsed: list[A.Span]) -> list[Diagnostic]:
    """Drop what only follows from statements that did not parse (`unparsed`, whole statements).

    Such a statement is left out of the tree, so the names it declares look undefined, the names
    it uses look unused, and whatever reached an observation through it looks unobservable:
    reporting those too would send a reader (or an LLM) after faults that are not there. The
    E100 itself says what to fix.
    """
    if not unparsed:
        return diags
    lines = source.splitlines()
    failed = ["\n".join(lines[s.line - 1:s.end_line]) for s in unparsed]
    used = {w for text in failed for w in _WORD.findall(text)}
    declared = {m.group(1) for text in failed if (m := _DECLARED.match(text))}
    header_failed = any(_first_word(text) == "model" for text in failed)
    dynamics_failed = any(_first_word(text) in ("state", "der", "flow") for text in failed)
    paths_failed = any(_first_word(text) not in _NO_INFLUENCE for text in failed)

    def subject(d: Diagnostic) -> str:
        if d.span.line != d.span.end_line or not 1 <= d.span.line <= len(lines):
            return ""
        return lines[d.span.line - 1][d.span.column - 1:d.span.end_column - 1]

    kept = []
    for d in diags:
        if d.code in _FOLLOW_ON_USE and subject(d) in used:
            continue
        if d.code in _REACHABILITY and paths_failed:
            continue
        if d.code in ("E201", "E350") and subject(d) in declared:
            continue
        if d.code == "E305" and header_failed and "found none" in d.message:
            continue
        if d.code == "E303" and dynamics_failed and "without states" in d.message:
            continue
        kept.append(d)
    return kept


def default_tables(file: str) -> TableAccess:
    """`table(...)` reads beside the model file; model text without a file reads nothing."""
    path = Path(file)
    try:
        return TableAccess(path.parent if path.is_file() else None)
    except (OSError, ValueError):
        return TableAccess(None)


def _phases(program: A.Program, file: str, tables: TableAccess, reduce: bool) -> tuple:
    from .names import check_names
    from .unitcheck import check_units

    program, diags, families = expand_families(program, file, tables, reduce)
    table, d = build_symbol_table(program, file)
    diags += d
    names, d = check_names(program, table, file)
    diags += d
    units, d = check_units(program, table, file)
    diags += d
    return program, table, names, units, diags, families


def check_source(source: str, file: str = "<model>", tables: Optional[TableAccess] = None,
                 whole: bool = False) -> CheckedModel:
    """`tables`: which files `table(...)` may read (default: any CSV beside `file`). `whole`:
    check every element of every family, not the reduced expansion (as slow as the indexes are
    large; tests/test_family_check.py compares the two)."""
    if source.startswith("\ufeff"):  # a UTF-8 byte-order mark is not part of the model
        source = " " + source[1:]
    parsed, diags = parse(source, file)
    tables = tables if tables is not None else default_tables(file)
    # with families, check the reduced expansion: its size does not grow with the indexes
    reduce = not whole and any(isinstance(s, A.IndexDecl) for s in parsed.statements)
    program, table, names, units, d, families = _phases(parsed, file, tables, reduce)
    diags += d
    # One diagnostic per (code, place): phases may meet the same fault from two sides.
    # A family line's elements share its span: one diagnostic per line and code, not one per
    # element (the whole expansion would repeat a fault of the line for each of its N elements).
    unique: dict[tuple, Diagnostic] = {}
    elements: dict[tuple, tuple] = {}  # per family-line key: the elements its diagnostics name
    for x in _without_follow_on(diags, source, program.unparsed):
        if families.follows_from_failure(x):
            continue
        key = (x.code, x.span) if x.span.line in families.lines else (x.code, x.span, x.message)
        unique.setdefault(key, x)
        named = _ELEMENT.search(x.message) if x.span.line in families.lines else None
        if named:
            listed, count = _stood_for(named, families.stands_for)
            names, most = elements.get(key, ([], 0))
            elements[key] = (names + listed, max(most, count))
    for key, (names, count) in elements.items():
        unique[key] = _likewise(unique[key], sorted(dict.fromkeys(names), key=member_order(families)), count)

    def whole() -> tuple:
        program, table, names, units, diagnostics, _ = _phases(parsed, file, tables, False)
        return program, table, names, units, diagnostics

    return CheckedModel(source, file, program, table, names, units, sorted(unique.values(), key=sort_key),
                        families, tables, whole if reduce else None)
