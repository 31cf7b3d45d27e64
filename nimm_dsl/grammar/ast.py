"""Typed syntax tree of a `.nimm` file.

Every node carries the source span of the text it came from, so any later phase can point a
diagnostic at the exact token. Nodes compare by identity (``eq=False``) so that phases can key
side tables (inferred units, resolved symbols) by node.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from fractions import Fraction
from typing import Optional, Union

from ..diagnostics import Span  # spans live with the diagnostics, at the bottom of the package


def node(cls):
    return dataclass(eq=False)(cls)


@node
class Ident:
    """A name as written, with its own span (used for declaration names and references)."""

    name: str
    span: Span


# ---------------------------------------------------------------- unit expressions
@node
class UnitName:
    name: str
    span: Span


@node
class UnitOne:
    """The dimensionless unit `[1]`."""

    span: Span


@node
class UnitMul:
    left: "UnitExpr"
    right: "UnitExpr"
    span: Span


@node
class UnitDiv:
    left: "UnitExpr"
    right: "UnitExpr"
    span: Span


@node
class UnitPow:
    base: "UnitExpr"
    exponent: Fraction  # exact: `m^(1/2)`, `s^-1`
    span: Span


UnitExpr = Union[UnitName, UnitOne, UnitMul, UnitDiv, UnitPow]


# ---------------------------------------------------------------- expressions
@node
class Number:
    value: float  # `inf` is float('inf')
    text: str
    unit: Optional[UnitExpr]  # `5 [day]`; None when the literal carries no annotation
    span: Span


@node
class Name:
    name: str
    span: Span


@node
class Call:
    func: Ident
    args: list["Expr"]
    span: Span


@node
class BinOp:
    op: str  # one of + - * / ^
    left: "Expr"
    right: "Expr"
    span: Span


@node
class UnaryOp:
    op: str  # '-' or 'not'
    operand: "Expr"
    span: Span


@node
class Compare:
    op: str  # < <= > >= == !=
    left: "Expr"
    right: "Expr"
    span: Span


@node
class BoolOp:
    op: str  # 'and' | 'or'
    left: "Expr"
    right: "Expr"
    span: Span


# ---------------------------------------------------------------- index families
@node
class Binder:
    """`d in district`: a variable ranging over an index (in a declaration, a target or `sum`).
    An inline set (`s in 1..4`, `d in [2, 5]`) has its members here, and `index` spells the set
    (`1..4`, `[2, 5]`) at the set's place."""

    var: Ident
    index: Ident
    span: Span
    members: Optional[list[str]] = None


@node
class Shift:
    """`s+1`, `d-1`: the member `offset` away from an index variable over whole numbers."""

    var: Ident
    offset: int
    span: Span


# A subscript: a Binder, a Shift, or an Ident that is a variable, a named member or digits (`3`).
Subscript = Union[Binder, Shift, Ident]


@node
class Element:
    """`S[d]`, `C[d, k]`, `I[3]`, `beta[d in treated]`: one element (or, with variables, each
    element) of a family; an expression or the target of der/flow/dose/set."""

    name: Ident
    subscripts: list[Subscript]
    span: Span


@node
class IndexSum:
    """`sum(k in district, EXPR)`."""

    binder: Binder
    body: "Expr"
    span: Span


@node
class KernelRow:
    """One element's `sum(k in I, K * V)` once expanded (compiler/families.py, the whole model
    only): the sum over the members of `weights[i] * entries[i]`. A weight is the part of a term
    that depends on the element (`exp(-abs(d - k) / 3)` folded to a number, or a const element
    `C[d, k]`); an entry is the part that does not (`I[k] / pop[k]`). `entries` is one tuple
    shared by every element of the line, so later phases check and lower it once, not once per
    element: a dense family line is N weights per element instead of N expanded terms."""

    weights: tuple
    entries: tuple
    span: Span


@node
class TableRef:
    """`table("districts.csv", pop)`: a const family's values from a CSV beside the model."""

    file: str
    column: Optional[Ident]
    span: Span


Expr = Union[Number, Name, Call, BinOp, UnaryOp, Compare, BoolOp, Element, IndexSum, TableRef, KernelRow]


# ---------------------------------------------------------------- option lists
@node
class ListValue:
    """`[16, 16]` in `mlp(hidden = [16, 16])`."""

    items: list[Expr]
    span: Span


@node
class Option:
    """`name = value` inside `mlp(...)`, `normal(...)` and friends."""

    name: Ident
    value: Union[Expr, ListValue]  # a bare word such as `tanh` is a Name
    span: Span


@node
class Noise:
    """`normal(sigma = 10 [person])`, `lognormal(sigma = s)`, `poisson`."""

    kind: Ident
    options: list[Option]
    span: Span


@node
class Bounds:
    lo: Expr
    hi: Expr
    span: Span


# ---------------------------------------------------------------- statements
@node
class IndexDecl:
    """`index district = 1..12` (members "1".."12") or `index age = [child, adult]`."""

    name: Ident
    members: list[str]
    numeric: bool  # members are whole numbers: an index variable then has a value
    doc: Optional[str]
    span: Span


@node
class ModelDecl:
    name: Ident
    doc: Optional[str]
    span: Span


@node
class TimeDecl:
    name: Ident
    unit: UnitExpr
    span: Span
    origin: Optional["Expr"] = None  # `from T0`: initial values hold at T0 (LANGUAGE.md §11)


@node
class UnitDecl:
    """`unit person` (new base dimension) or `unit kcell = 1000 [cell]` (derived)."""

    name: Ident
    value: Optional[Number]  # the factor, with its unit annotation; None for a base unit
    doc: Optional[str]
    span: Span


@node
class ConstDecl:
    name: Ident
    unit: UnitExpr
    value: Expr
    doc: Optional[str]
    span: Span
    family: Optional[list[Binder]] = None  # `[d in district]`: one element per member


@node
class ParamDecl:
    name: Ident
    unit: UnitExpr
    value: Expr
    bounds: Optional[Bounds]
    doc: Optional[str]
    span: Span
    family: Optional[list[Binder]] = None  # `[d in district]`: one element per member
    per_series: bool = False  # `per series`: one value per data series, estimated separately


@node
class StateDecl:
    name: Ident
    unit: UnitExpr
    init: Expr
    bounds: Optional[Bounds]
    doc: Optional[str]
    span: Span
    family: Optional[list[Binder]] = None  # `[d in district]`: one element per member


@node
class InputDecl:
    name: Ident
    unit: UnitExpr
    default: Optional[Expr]
    interp: str  # 'step' | 'linear'
    doc: Optional[str]
    span: Span
    family: Optional[list[Binder]] = None  # `[d in district]`: one input (data column) per member


@node
class LetDecl:
    name: Ident
    unit: Optional[UnitExpr]
    value: Expr
    doc: Optional[str]
    span: Span
    family: Optional[list[Binder]] = None  # `[d in district]`: one element per member


@node
class NeuralDecl:
    name: Ident
    args: list[Ident]
    unit: UnitExpr
    kind: Ident  # `mlp`
    options: list[Option]
    span: Span


@node
class DerEq:
    state: Ident
    value: Expr
    span: Span


@node
class FlowEq:
    source: Optional[Ident]
    target: Optional[Ident]
    rate: Expr
    arrow_span: Span  # for E307 "neither end"
    span: Span


@node
class ObserveDecl:
    name: Ident
    unit: UnitExpr
    value: Expr
    noise: Optional[Noise]  # None: least squares
    span: Span
    family: Optional[list[Binder]] = None  # `[d in district]`: one element per member


@node
class DoseStmt:
    name: Ident
    state: Ident
    op: str  # '+=' | '*='
    amount: Expr
    at: Expr
    every: Optional[Expr]
    times: Optional[Expr]
    span: Span
    # `dose NAME [UNIT]: ... at data`: the table's column NAME gives times and amounts (in
    # `unit`); `at`, `every`, `times` are then None and NAME inside `amount` is the row's amount
    unit: Optional[UnitExpr] = None

    @property
    def from_data(self) -> bool:
        return self.unit is not None


@node
class SetStmt:
    target: Ident
    value: Expr
    start: Optional[Expr]  # `from`
    end: Optional[Expr]  # `to`
    span: Span


@node
class RemoveStmt:
    name: Ident
    span: Span


@node
class ScenarioBlock:
    name: Ident
    doc: Optional[str]
    body: list[Union[DoseStmt, SetStmt, RemoveStmt]]
    span: Span  # the header line
    end_span: Optional[Span]  # the `end` line; None when the block was never closed (E100)


Statement = Union[
    ModelDecl, IndexDecl, TimeDecl, UnitDecl, ConstDecl, ParamDecl, StateDecl, InputDecl, LetDecl,
    NeuralDecl, DerEq, FlowEq, ObserveDecl, DoseStmt, SetStmt, ScenarioBlock,
    RemoveStmt,  # only valid inside a scenario; at top level the checker reports it
]

# Statements that introduce a model-level name (and the `kind` the checker gives it).
DECLARATION_KINDS = {
    TimeDecl: "time",
    ConstDecl: "const",
    ParamDecl: "param",
    StateDecl: "state",
    InputDecl: "input",
    LetDecl: "let",
    NeuralDecl: "neural",
    ObserveDecl: "observe",
}


@node
class Program:
    """A parsed file: the statements that parsed, in source order (scenario blocks nested), and
    the spans of those that did not (E100), so the checker can tell what their absence implies."""

    statements: list[Statement] = field(default_factory=list)
    unparsed: list[Span] = field(default_factory=list)
