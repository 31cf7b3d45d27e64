"""The symbol table: every model-level name with its kind and declaring statement.

Built once from the syntax tree and shared by the name, structure and unit checks, and by the IR
builder. Duplicate (E202) and reserved (E203) names are reported here, once.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from ..grammar import ast as A
from ..diagnostics import Diagnostic
from ..grammar.words import COLUMN_KINDS, KEYWORDS, RESERVED, SERIES_COLUMN

@dataclass(eq=False)
class Symbol:
    name: str
    kind: str  # time | const | param | state | input | let | neural | observe | dose
    decl: object  # the declaring statement (an ast node)
    ident: A.Ident  # the name token in the declaration


@dataclass
class SymbolTable:
    symbols: dict[str, Symbol]
    doses: dict[str, A.DoseStmt]  # baseline (top-level) doses by name
    scenarios: dict[str, A.ScenarioBlock]
    units: dict[str, A.UnitDecl]  # the model's own units (a separate namespace)
    model: Optional[A.ModelDecl]
    time: Optional[A.TimeDecl]

    def kind(self, name: str) -> Optional[str]:
        s = self.symbols.get(name)
        return s.kind if s else None

    def of_kind(self, *kinds: str) -> list[Symbol]:
        return [s for s in self.symbols.values() if s.kind in kinds]


def build_symbol_table(program: A.Program, file: str = "<model>") -> tuple[SymbolTable, list[Diagnostic]]:
    diags: list[Diagnostic] = []
    table = SymbolTable({}, {}, {}, {}, None, None)

    def reserved(ident: A.Ident) -> bool:
        if ident.name in RESERVED:
            what = "keyword" if ident.name in KEYWORDS else "built-in name"
            diags.append(Diagnostic("E203", ident.span,
                                    f"`{ident.name}` is a reserved {what} and cannot be declared",
                                    "choose another name", file))
            return True
        return False

    def declare(ident: A.Ident, kind: str, decl) -> None:
        if reserved(ident):
            return
        if ident.name == SERIES_COLUMN and kind in COLUMN_KINDS:
            diags.append(Diagnostic("E203", ident.span,
                                    f"`{SERIES_COLUMN}` is reserved for the data column that separates "
                                    f"independent series, and cannot name {'the' if kind == 'time' else 'an'} {kind}",
                                    "choose another name", file))
            return
        prior = table.symbols.get(ident.name)
        if prior is not None:
            diags.append(Diagnostic(
                "E202", ident.span,
                f"`{ident.name}` is already declared as a {prior.kind} on line {prior.ident.span.line}",
                "rename one of them", file))
            return
        table.symbols[ident.name] = Symbol(ident.name, kind, decl, ident)

    def declare_apart(namespace: dict, what: str, stmt) -> None:
        """Units and scenarios have namespaces of their own."""
        if reserved(stmt.name):
            return
        prior = namespace.get(stmt.name.name)
        if prior is not None:
            diags.append(Diagnostic("E202", stmt.name.span,
                                    f"{what} `{stmt.name.name}` is already declared on line {prior.name.span.line}",
                                    None, file))
        else:
            namespace[stmt.name.name] = stmt

    for stmt in program.statements:
        if isinstance(stmt, A.ModelDecl):
            reserved(stmt.name)  # the model's name is a declaration too (§2)
            if table.model is None:
                table.model = stmt
        elif isinstance(stmt, A.TimeDecl):
            if table.time is None:
                table.time = stmt
                declare(stmt.name, "time", stmt)
        elif type(stmt) in A.DECLARATION_KINDS:
            declare(stmt.name, A.DECLARATION_KINDS[type(stmt)], stmt)
        elif isinstance(stmt, A.DoseStmt):
            declare(stmt.name, "dose", stmt)
            if stmt.name.name not in RESERVED:
                table.doses.setdefault(stmt.name.name, stmt)
        elif isinstance(stmt, A.UnitDecl):
            declare_apart(table.units, "unit", stmt)
        elif isinstance(stmt, A.ScenarioBlock):
            declare_apart(table.scenarios, "scenario", stmt)
            seen: dict[str, A.DoseStmt] = {}
            for inner in stmt.body:
                if isinstance(inner, A.DoseStmt):
                    reserved(inner.name)
                    if inner.name.name in seen:
                        diags.append(Diagnostic("E202", inner.name.span,
                                                f"dose `{inner.name.name}` appears twice in scenario `{stmt.name.name}`",
                                                None, file))
                    seen[inner.name.name] = inner
    return table, diags
