"""The front end in one call: parse, build the symbol table, check names/structure and units.

Phases never raise for bad model text; each returns diagnostics. Later phases run even when
earlier ones found errors (so one run reports everything), but on the statements that parsed.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from ..grammar import ast as A
from ..grammar.parser import parse
from .diagnostics import Diagnostic, has_errors, sort_key
from .symbols import SymbolTable, build_symbol_table


@dataclass
class CheckedModel:
    """What the back ends consume: the tree, resolved symbols, units and the dependency graph."""

    source: str
    file: str
    program: A.Program
    table: SymbolTable
    names: "object"  # names.NameInfo: let order, dependency graph
    units: "object"  # unitcheck.UnitInfo: declared unit per symbol, inferred unit per expression
    diagnostics: list[Diagnostic] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not has_errors(self.diagnostics)


def check_source(source: str, file: str = "<model>") -> CheckedModel:
    from .names import check_names
    from .unitcheck import check_units

    program, diags = parse(source, file)
    table, d = build_symbol_table(program, file)
    diags += d
    names, d = check_names(program, table, file)
    diags += d
    units, d = check_units(program, table, file)
    diags += d
    # One diagnostic per (code, place): phases may meet the same fault from two sides.
    unique: dict[tuple, Diagnostic] = {}
    for x in diags:
        unique.setdefault((x.code, x.span, x.message), x)
    return CheckedModel(source, file, program, table, names, units, sorted(unique.values(), key=sort_key))
