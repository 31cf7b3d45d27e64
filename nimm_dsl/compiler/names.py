"""Name resolution and structure checks (E201, E204, E205, E301-E307, E501, E503, E504, W701-W704).

Runs after `build_symbol_table` (which already reported E202/E203) and before the unit check.
Besides diagnostics it returns a `NameInfo`: the let evaluation order, the direct dependencies of
every declared symbol, the dynamics of every state and the set of names that can influence an
observation. Unit questions (E401-E407, E502, flows between different dimensions) are left to
`unitcheck`.

Choices where LANGUAGE.md is silent:
* An observe is an output: using its name inside any expression is E204 (use a `let` and observe
  the let). In positions restricted to constants (const values, defaults, initial values, event
  times) it is E306 like any other non-constant name.
* An input's default is a number like a param default: numbers and consts only (E306 otherwise).
* A state's initial value may call a neural term (its weights are fitted like params).
* `hidden = []` is rejected (E503): a neural term needs at least one hidden layer.
* A cycle among consts is reported like a cycle among lets (E304).
* A sigma or dispersion may use params and consts only (E306): it is one number per observe over
  the data; a `normal` sigma may also use the observe's own name (its prediction, LANGUAGE.md §11).
* A `set` whose target some initial value uses may use only what an initial value may (E306):
  the sets in force at the start take part in the initial values.
* A set target alone is not a use (W701): `set k = 0.2 from 3` on an otherwise unused `k` still
  warns. A name used only inside a scenario is used.
* E504 (compiler/fold.py) is checked here, on every expression: an operation on constants without
  a finite value, and an infinite declared value, amount or event time (`inf` is for bounds, and
  `set ... to inf` is the end of the run; an infinite sigma is E503 like any non-positive one).
"""
from __future__ import annotations

import heapq
import math
from dataclasses import dataclass, field, replace
from typing import Iterator, Optional, Union

from ..grammar import ast as A
from ..grammar.words import BUILTIN_CONSTANTS, OBSERVE_FUNCTIONS
from ..diagnostics import Diagnostic, did_you_mean
from .builtins import BUILTINS
from .fold import FoldError, Value, fold, fold_number, is_folded_number
from .symbols import SymbolTable

NEURAL_KINDS = ("mlp",)
NEURAL_OPTIONS = ("hidden", "activation", "init", "penalty")
ACTIVATIONS = ("tanh", "relu", "softplus", "sigmoid", "gelu")
NEURAL_INITS = ("zero", "random")
# Sizes beyond any real model: a count or a width this large is a typo or a hostile model, and
# would exhaust memory or time in the back ends (a million doses, a 10^10-weight network).
MAX_HINTS = 100  # did-you-mean hints per model; nobody reads the 101st
MAX_DOSE_TIMES = 100_000
MAX_NEURAL_WIDTH = 1024
MAX_NEURAL_LAYERS = 16
NOISE_OPTIONS: dict[str, tuple[str, ...]] = {"normal": ("sigma",), "lognormal": ("sigma",), "poisson": (),
                                              "negbinomial": ("dispersion",)}

# Kinds whose names may appear as values in an expression (neural only as a call).
VALUE_KINDS = frozenset({"time", "const", "param", "state", "input", "let", "neural"})
CONSTANT_KINDS = frozenset({"const"})
INITIAL_KINDS = frozenset({"param", "const", "input", "neural"})  # what an initial value may use
SIGMA_KINDS = frozenset({"param", "const"})  # a sigma is fixed over the data
SETTABLE_KINDS = frozenset({"param", "const", "input"})

Dynamics = Union[A.DerEq, A.FlowEq]


@dataclass
class NameInfo:
    """What later phases need from name resolution."""

    let_order: list[str] = field(default_factory=list)  # topological; lets on a cycle left out
    depends: dict[str, set[str]] = field(default_factory=dict)  # symbol -> model names used directly
    influences_observation: set[str] = field(default_factory=set)
    dynamics: dict[str, list[Dynamics]] = field(default_factory=dict)  # state -> der/flow lines
    used: set[str] = field(default_factory=set)  # names referenced in some expression


@dataclass(frozen=True)
class Position:
    """Where an expression sits: what it is called in messages and which kinds it may use."""

    what: str  # e.g. "the value of const `N`"
    allowed: frozenset[str] = VALUE_KINDS
    expected: str = ""  # e.g. "numbers and consts"; empty for unrestricted positions
    finite: bool = False  # a declared value, amount or event time: infinity is E504
    observe: Optional[str] = None  # the observe whose noise option this is
    own_prediction: bool = False  # the observe's own name stands for its prediction (a normal sigma)
    integral: bool = False  # `integral(RATE, WINDOW)` may appear (an observe's expression)
    dose: Optional[str] = None  # a table dose whose own name is the row's amount here


def iter_expr(expr: Optional[A.Expr], into_rows: bool = False) -> Iterator[A.Expr]:
    """Every node of an expression, parents before children, left to right (no recursion).
    into_rows: also the weights and entries of an A.KernelRow (its terms written out), which
    `resolve` checks on its own, sharing the entries between rows."""
    stack = [expr] if expr is not None else []
    while stack:
        node = stack.pop()
        yield node
        if isinstance(node, (A.BinOp, A.Compare, A.BoolOp)):
            stack.extend((node.right, node.left))
        elif isinstance(node, A.UnaryOp):
            stack.append(node.operand)
        elif isinstance(node, A.Call):
            stack.extend(reversed(node.args))
        elif isinstance(node, A.KernelRow) and into_rows:  # an expanded family sum: its terms, as written out
            stack.extend(reversed([x for term in zip(node.weights, node.entries) for x in term]))


def is_plain_number(expr: A.Expr) -> bool:
    """A number literal, possibly negated (`-inf`, `- 2`): what a bound may be."""
    while isinstance(expr, A.UnaryOp) and expr.op == "-":
        expr = expr.operand
    return isinstance(expr, A.Number) or (isinstance(expr, A.Name) and expr.name == "inf")


def _describe(expr: A.Expr) -> str:
    if isinstance(expr, A.Name):
        return f"name `{expr.name}`"
    if isinstance(expr, A.Call):
        return f"call of `{expr.func.name}`"
    return "an expression"


class _Checker:
    def __init__(self, program: A.Program, table: SymbolTable, file: str):
        self.program = program
        self.table = table
        self._names_of: dict[tuple, list[str]] = {}
        self.file = file
        self.diags: list[Diagnostic] = []
        self.info = NameInfo()
        # Extra influence edges (target -> names) from doses and sets, which are not declarations.
        self.event_influence: dict[str, set[str]] = {}
        self._const_cache: dict[str, Optional[float]] = {}
        self.rate_names: dict[int, set[str]] = {}  # id(der/flow line) -> names its rate uses
        self.initial_users: dict[str, str] = {}  # name -> a state whose initial value uses it
        self._position: Optional[dict[str, int]] = None  # declaration order (decl_index)
        self.set_lines: list[A.SetStmt] = []
        self.hints_left = MAX_HINTS
        self._value_names: Optional[list[str]] = None
        # A.KernelRow entries resolved without a diagnostic: (id, position) -> (entries, names)
        self._clean_entries: dict[tuple, tuple] = {}

    # ------------------------------------------------------------------ helpers
    def did_you_mean(self, name: str, candidates) -> Optional[str]:
        """A did-you-mean hint while the model's budget lasts: each hint compares against every
        candidate, so 9,000 undefined names among 9,000 lets took minutes."""
        if self.hints_left <= 0:
            return None
        self.hints_left -= 1
        return did_you_mean(name, candidates)

    def report(self, code: str, span: A.Span, message: str, hint: Optional[str] = None) -> None:
        self.diags.append(Diagnostic(code, span, message, hint, self.file))

    def kind_of(self, name: str) -> Optional[str]:
        return self.table.kind(name)

    def value_names(self) -> list[str]:
        if self._value_names is None:  # the table does not change while checking
            self._value_names = [n for n, s in self.table.symbols.items() if s.kind != "dose"] + sorted(BUILTIN_CONSTANTS)
        return self._value_names

    def const_value(self, name: str) -> Optional[Value]:
        """A const's value as written (units ignored: for signs, counts and E504); None for
        anything else, a const on a cycle (E304) or one whose value has an error of its own."""
        if name in self._const_cache:
            return self._const_cache[name]
        self._const_cache[name] = None
        sym = self.table.symbols.get(name)
        value = None
        if sym is not None and sym.kind == "const":
            try:
                value = fold(sym.decl.value, self.const_value)
            except FoldError:
                pass  # reported at the const's own line
        self._const_cache[name] = value
        return value

    def number(self, expr: Optional[A.Expr]) -> Optional[float]:
        """The float value of a constant expression (consts included), None when it has none."""
        return fold_number(expr, self.const_value)

    def check_constant(self, expr: A.Expr, pos: "Position") -> None:
        """E504: an operation on constants without a finite value anywhere in `expr` (consts
        count where only constants are allowed: elsewhere a `set` may change them), or an
        infinite value where a finite number is required."""
        try:
            value = fold(expr, self.const_value if pos.allowed == CONSTANT_KINDS else None)
        except FoldError as err:
            self.report("E504", err.span, err.message, err.hint)
            return
        if pos.finite and value is not None and not isinstance(value, bool) and math.isinf(value):
            self.report("E504", expr.span, f"{pos.what} is infinite; expected a finite number",
                        "`inf` is for bounds")

    def lookup_ident(self, ident: A.Ident, what: str, candidates: list[str]) -> Optional[str]:
        """The kind of a name in a target position (der, flow, dose, set), or E201."""
        kind = self.kind_of(ident.name)
        if kind is None:
            self.report("E201", ident.span, f"undefined name `{ident.name}` in {what}",
                        self.did_you_mean(ident.name, candidates))
        return kind

    # ------------------------------------------------------------------ expressions
    def resolve(self, expr: Optional[A.Expr], pos: Position) -> set[str]:
        """Check every name in `expr` for `pos`; return the model names it uses."""
        used: set[str] = set()
        literals = False  # no literal and no const lookups: nothing for E504 to find
        skip: set[int] = set()  # the window of an integral, resolved on its own
        for node in iter_expr(expr):
            if id(node) in skip:
                continue
            if isinstance(node, A.Call) and node.func.name in OBSERVE_FUNCTIONS:
                used |= self.resolve_integral(node, pos)
                if len(node.args) == 2:
                    skip |= {id(n) for n in iter_expr(node.args[1])}
                continue
            if isinstance(node, A.KernelRow):
                used |= self.resolve_kernel_row(node, pos)
                continue
            if isinstance(node, A.Name):
                if self.resolve_name(node, pos):
                    used.add(node.name)
                elif node.name in BUILTIN_CONSTANTS:
                    literals = True
            elif isinstance(node, A.Call):
                if self.resolve_call(node, pos):
                    used.add(node.func.name)
            elif isinstance(node, A.Number):
                literals = True
        if literals or (expr is not None and pos.allowed == CONSTANT_KINDS):
            self.check_constant(expr, pos)
        self.info.used |= used
        return used

    def resolve_kernel_row(self, row: A.KernelRow, pos: Position) -> set[str]:
        """An expanded sum's row: its weights (folded numbers have nothing to check), and its
        entries once for all the rows that share them, unless they gave a diagnostic (then each
        row reports its own, naming its element, as the terms written out would)."""
        used: set[str] = set()
        for weight in row.weights:  # a negative or fractional kernel value is a folded tree, not a Number
            if not is_folded_number(weight):
                used |= self.resolve(weight, pos)
        key = (id(row.entries), replace(pos, what=""))
        known = self._clean_entries.get(key)
        if known is not None:
            return used | known[1]
        before = len(self.diags)
        names: set[str] = set()
        for entry in row.entries:
            names |= self.resolve(entry, pos)
        if len(self.diags) == before:
            self._clean_entries[key] = (row.entries, names)  # holds the tuple: its id stays its own
        return used | names

    def resolve_integral(self, node: A.Call, pos: Position) -> set[str]:
        """`integral(RATE, WINDOW)`: only in an observe's expression, not nested, with a constant
        positive window (its rate is resolved with the rest of the expression)."""
        name = node.func.name
        if not pos.integral:
            self.report("E204", node.func.span, f"`{name}` is allowed only in an observe's expression, found it in {pos.what}",
                        "observe the interval count: `observe weekly [person] = integral(rate, 7 [day]) ~ ...`")
        self.check_arity(node, 2, f"`{name}`")
        if len(node.args) != 2:
            return set()
        nested = next((n for n in iter_expr(node.args[0], into_rows=True) if isinstance(n, A.Call) and n.func.name == name), None)
        if nested is not None:
            self.report("E204", nested.func.span, f"`{name}` inside the rate of another `{name}`",
                        "integrate the rate once")
        window = node.args[1]
        used = self.resolve(window, Position(f"the window of `{name}`", CONSTANT_KINDS, "numbers and consts", True))
        value = self.number(window)
        if value is not None and not 0 < value < math.inf:
            self.report("E503", window.span, f"the window of `{name}` must be a positive time, found {value:g}")
        return used

    def resolve_name(self, node: A.Name, pos: Position) -> bool:
        name = node.name
        if name in BUILTIN_CONSTANTS or name == "inf" or name == pos.dose:
            return False  # (a table dose's amount: a number of the data, like a literal)
        sym = self.table.symbols.get(name)
        if sym is None:
            if name in BUILTINS:
                self.report("E204", node.span, f"`{name}` is a built-in function, used here without arguments",
                            f"call it: `{name}(...)`")
            elif name in self.table.units:
                self.report("E201", node.span, f"undefined name `{name}` in {pos.what}: `{name}` is a unit, not a value",
                            f"attach the unit to a number: `1 [{name}]`")
            else:
                self.report("E201", node.span, f"undefined name `{name}` in {pos.what}",
                            self.did_you_mean(name, self.value_names()))
            return False
        if sym.kind == "neural":
            args = ", ".join(a.name for a in sym.decl.args)
            self.report("E204", node.span, f"neural `{name}` is a function and must be called, found it used as a value",
                        f"call it with {len(sym.decl.args)} argument(s): `{name}({args})`")
            return False
        if sym.kind == "dose":
            self.report("E204", node.span, f"`{name}` is a dose (an event), not a value usable in {pos.what}")
            return False
        if sym.kind == "observe" and name == pos.observe:
            if pos.own_prediction:
                return False  # the prediction, not a use of another declaration
            self.report("E306", node.span,
                        f"observe `{name}` inside {pos.what}: only a `normal` sigma may use the observe's "
                        "own prediction; this option may use only params and consts",
                        "for an error proportional to the prediction use `normal(sigma = b * "
                        f"{name})` or `lognormal(sigma = ...)`")
            return False
        if sym.kind == "observe" and not pos.expected:
            self.report("E204", node.span,
                        f"observe `{name}` is an output and cannot be used in expressions ({pos.what})",
                        "define the quantity as a `let` and observe the let")
            return False
        if sym.kind not in pos.allowed:
            self.report("E306", node.span, f"{pos.what} may use only {pos.expected}; found {sym.kind} `{name}`",
                        self.restricted_hint(pos, sym.kind))
        elif pos.allowed == SIGMA_KINDS and getattr(sym.decl, "per_series", False):
            self.report("E306", node.span, f"{pos.what} is one number shared by every data series; "
                        f"`{name}` is a per-series param", f"declare `{name}` without `per series`")
        return True

    def restricted_hint(self, pos: Position, kind: str) -> Optional[str]:
        if pos.allowed == CONSTANT_KINDS and kind == "param":
            return "make it a `const`, or write the number"
        if pos.allowed == SIGMA_KINDS:
            return "a sigma is fixed over the data: use params and consts (an estimated sigma is a `param`)"
        if kind in ("state", "let"):
            return "an initial value may use params, consts and inputs" if "param" in pos.allowed else None
        return None

    def resolve_call(self, node: A.Call, pos: Position) -> bool:
        name = node.func.name
        if name in BUILTINS:
            self.check_arity(node, BUILTINS[name].arity, f"built-in `{name}`")
            return False
        sym = self.table.symbols.get(name)
        if sym is None and name in BUILTIN_CONSTANTS:
            self.report("E204", node.func.span, f"`{name}` is a constant, not a function",
                        f"write `{name}` without parentheses")
            return False
        if sym is None:
            neural = [s.name for s in self.table.of_kind("neural")]
            self.report("E201", node.func.span, f"undefined function `{name}` in {pos.what}",
                        self.did_you_mean(name, neural + list(BUILTINS)))
            return False
        if sym.kind != "neural":
            self.report("E204", node.func.span,
                        f"`{name}` is a {sym.kind}, not a function; expected a built-in or neural function",
                        "remove the parentheses, or write `*` for a product")
            return False
        self.check_arity(node, len(sym.decl.args), f"neural `{name}`")
        if "neural" not in pos.allowed:
            self.report("E306", node.func.span, f"{pos.what} may use only {pos.expected}; found a call of neural `{name}`")
        return True

    def check_arity(self, node: A.Call, expected: int, what: str) -> None:
        found = len(node.args)
        if found != expected:
            self.report("E205", node.func.span,
                        f"{what} takes {expected} argument{'s' * (expected != 1)}, found {found}")

    def resolve_constant_time(self, expr: Optional[A.Expr], what: str, finite: bool = True) -> set[str]:
        return self.resolve(expr, Position(what, CONSTANT_KINDS, "numbers and consts", finite))

    def check_bounds(self, bounds: Optional[A.Bounds], owner: str) -> None:
        if bounds is None:
            return
        plain = True
        for side, expr in (("lower", bounds.lo), ("upper", bounds.hi)):
            if not is_plain_number(expr):
                plain = False
                offender = next((n for n in iter_expr(expr) if isinstance(n, (A.Name, A.Call))), expr)
                self.report("E306", offender.span,
                            f"the {side} bound of `{owner}` must be a plain number, found {_describe(offender)}",
                            "bounds are numbers in the declared unit; `inf` and `-inf` are allowed")
        if not plain:
            return
        (_, lo), (_, hi) = self.literal(bounds.lo), self.literal(bounds.hi)
        if lo is not None and hi is not None and not lo < hi:
            self.report("E501", bounds.span,
                        f"invalid bounds for `{owner}`: expected LO below HI, found [{lo:g}, {hi:g}]",
                        "write the smaller number first")

    def literal(self, expr: A.Expr) -> tuple[bool, Optional[float]]:
        """A bound, width or penalty as a float: (False, None) after reporting E504 (`1e999`:
        infinity is written `inf`), else (True, the value or None when it is not constant)."""
        try:
            value = fold(expr)
        except FoldError as err:
            self.report("E504", err.span, err.message, err.hint)
            return False, None
        return True, (None if value is None or isinstance(value, bool) else float(value))

    # ------------------------------------------------------------------ statements
    def run(self) -> tuple[NameInfo, list[Diagnostic]]:
        statements = self.program.statements
        depends = self.info.depends
        for name in self.table.symbols:
            depends[name] = set()
        states = [s.name for s in self.table.of_kind("state")]
        self.info.dynamics = {s: [] for s in states}

        self.check_header(statements)
        self.check_time(statements)
        for stmt in statements:
            self.check_statement(stmt)
        for stmt in statements:
            if isinstance(stmt, A.ScenarioBlock):
                for inner in stmt.body:
                    self.check_statement(inner, scenario=stmt)
        # A state's dependencies include the expressions of the dynamics that define it.
        for state, lines in self.info.dynamics.items():
            for line in lines:
                depends[state] |= self.rate_names[id(line)]
        self.check_dynamics()
        self.check_sets_of_initial_values()
        self.check_cycles()
        self.compute_influence()
        self.warn_unused()
        return self.info, self.diags

    def check_header(self, statements: list) -> None:
        headers = [s for s in statements if isinstance(s, A.ModelDecl)]
        if not headers:
            self.report("E305", A.Span(1, 1, 1, 2), "expected a `model NAME` header as the first statement, found none",
                        "start the file with `model my_model \"description\"`")
            return
        first = headers[0]
        if statements[0] is not first:
            self.report("E305", first.span, "the `model` header must be the first statement",
                        "move this line to the top of the file")
        for extra in headers[1:]:
            self.report("E305", extra.span,
                        f"`model` header repeated (first on line {first.span.line}); a file holds one model")

    def check_time(self, statements: list) -> None:
        times = [s for s in statements if isinstance(s, A.TimeDecl)]
        for extra in times[1:]:
            self.report("E303", extra.name.span,
                        f"`time` declared twice (first on line {times[0].span.line}); expected exactly one",
                        "remove this line")
        if times:
            if not any(isinstance(s, (A.StateDecl, A.DerEq, A.FlowEq)) for s in statements):
                # Nothing to integrate: the model is static (§4), and the solvers need a state.
                decl = times[0]
                unit = decl.unit.name if isinstance(decl.unit, A.UnitName) else "unit"
                self.report("E303", decl.name.span,
                            "`time` declared in a model without states; a model with no dynamics is static and has no `time`",
                            f"remove this line; to use time as a data column, declare `input {decl.name.name} [{unit}]`")
            return
        dynamic = self.first_dynamic_statement(statements)
        if dynamic is not None:
            span, what = dynamic
            self.report("E303", span, f"the model has {what} and needs a `time` declaration, found none",
                        "declare the time variable, e.g. `time t [day]`")

    def first_dynamic_statement(self, statements: list) -> Optional[tuple[A.Span, str]]:
        for stmt in statements:
            if isinstance(stmt, A.StateDecl):
                return stmt.name.span, f"state `{stmt.name.name}`"
            if isinstance(stmt, A.DerEq):
                return stmt.span, "a `der` equation"
            if isinstance(stmt, A.FlowEq):
                return stmt.span, "a `flow`"
            if isinstance(stmt, A.DoseStmt):
                return stmt.span, f"dose `{stmt.name.name}`"
            if isinstance(stmt, A.SetStmt):
                return stmt.span, f"a `set` of `{stmt.target.name}`"
            if isinstance(stmt, A.ScenarioBlock):
                for inner in stmt.body:
                    if isinstance(inner, (A.DoseStmt, A.SetStmt)):
                        return inner.span, f"a `{'dose' if isinstance(inner, A.DoseStmt) else 'set'}` in scenario `{stmt.name.name}`"
        return None

    def check_statement(self, stmt, scenario: Optional[A.ScenarioBlock] = None) -> None:
        depends = self.info.depends
        owns = lambda ident: self.table.symbols.get(ident.name) is not None and self.table.symbols[ident.name].decl is stmt

        if isinstance(stmt, A.TimeDecl):
            self.resolve_constant_time(stmt.origin, f"the clock origin (`from`) of `{stmt.name.name}`")
        elif isinstance(stmt, A.ConstDecl):
            used = self.resolve(stmt.value, Position(f"the value of const `{stmt.name.name}`", CONSTANT_KINDS, "numbers and consts", True))
            if owns(stmt.name):
                depends[stmt.name.name] = used
        elif isinstance(stmt, A.ParamDecl):
            used = self.resolve(stmt.value, Position(f"the default of param `{stmt.name.name}`", CONSTANT_KINDS, "numbers and consts", True))
            self.check_bounds(stmt.bounds, stmt.name.name)
            if owns(stmt.name):
                depends[stmt.name.name] = used
        elif isinstance(stmt, A.StateDecl):
            used = self.resolve(stmt.init, Position(f"the initial value of state `{stmt.name.name}`",
                                                    INITIAL_KINDS, "params, consts and inputs", True))
            for name in used:
                self.initial_users.setdefault(name, stmt.name.name)
            self.check_bounds(stmt.bounds, stmt.name.name)
            if owns(stmt.name):
                depends[stmt.name.name] = set(used)
        elif isinstance(stmt, A.InputDecl):
            used = self.resolve(stmt.default, Position(f"the default of input `{stmt.name.name}`", CONSTANT_KINDS, "numbers and consts", True))
            if owns(stmt.name):
                depends[stmt.name.name] = used
        elif isinstance(stmt, A.LetDecl):
            used = self.resolve(stmt.value, Position(f"let `{stmt.name.name}`"))
            if owns(stmt.name):
                depends[stmt.name.name] = used
        elif isinstance(stmt, A.ObserveDecl):
            used = self.resolve(stmt.value, Position(f"observe `{stmt.name.name}`", integral=True))
            used |= self.check_noise(stmt)
            if owns(stmt.name):
                depends[stmt.name.name] = used
        elif isinstance(stmt, A.NeuralDecl):
            self.check_neural(stmt)
        elif isinstance(stmt, A.UnitDecl):
            if stmt.value is not None and not isinstance(stmt.value, A.Number):
                self.report("E306", stmt.value.span, f"the value of unit `{stmt.name.name}` must be a number with a unit, e.g. `1000 [cell]`")
        elif isinstance(stmt, A.DerEq):
            self.rate_names[id(stmt)] = self.resolve(stmt.value, Position(f"der({stmt.state.name})"))
            kind = self.lookup_ident(stmt.state, "`der(...)`", self.names_of("state"))
            if kind == "state":
                self.info.dynamics[stmt.state.name].append(stmt)
            elif kind is not None:
                self.report("E204", stmt.state.span, f"`der` expects a state, found {kind} `{stmt.state.name}`",
                            f"declare `{stmt.state.name}` as a `state`" if kind in ("param", "let", "const") else None)
        elif isinstance(stmt, A.FlowEq):
            self.check_flow(stmt)
        elif isinstance(stmt, A.DoseStmt):
            self.check_dose(stmt, scenario)
        elif isinstance(stmt, A.SetStmt):
            self.check_set(stmt)
        elif isinstance(stmt, A.RemoveStmt):
            self.check_remove(stmt, scenario)

    def names_of(self, *kinds: str) -> list[str]:
        """The names of the symbols of these kinds, listed once per run: the der, flow, dose and
        set lines of a family model are thousands, and the symbols too."""
        if kinds not in self._names_of:
            self._names_of[kinds] = [s.name for s in self.table.of_kind(*kinds)]
        return self._names_of[kinds]

    def check_flow(self, stmt: A.FlowEq) -> None:
        ends = "".join(("" if stmt.source is None else stmt.source.name, " -> ", "" if stmt.target is None else stmt.target.name))
        self.rate_names[id(stmt)] = self.resolve(stmt.rate, Position(f"the rate of flow `{ends.strip()}`"))
        if stmt.source is None and stmt.target is None:
            self.report("E307", stmt.arrow_span, "a flow needs a source state, a target state or both; found neither",
                        "write `flow A -> B = RATE`, `flow -> B = RATE` or `flow A -> = RATE`")
            return
        if stmt.source is not None and stmt.target is not None and stmt.source.name == stmt.target.name:
            self.report("E307", stmt.target.span, f"a flow from state `{stmt.source.name}` to itself moves nothing",
                        "a flow needs two different states, or one end left out")
            if stmt.source.name in self.info.dynamics:  # it still touches the state: no E301 on top
                self.info.dynamics[stmt.source.name].append(stmt)
            return
        states = self.names_of("state")
        for end in (stmt.source, stmt.target):
            if end is None:
                continue
            kind = self.lookup_ident(end, "a flow", states)
            if kind == "state":
                self.info.dynamics[end.name].append(stmt)
            elif kind is not None:
                self.report("E204", end.span, f"a flow connects states, found {kind} `{end.name}`",
                            self.did_you_mean(end.name, states))

    def check_dose(self, stmt: A.DoseStmt, scenario: Optional[A.ScenarioBlock]) -> None:
        where = f"dose `{stmt.name.name}`"
        if isinstance(stmt.at, A.Name) and stmt.at.name == "data" and self.kind_of("data") is None:
            self.report("E201", stmt.at.span, f"`at data` in {where} needs the unit of the table's amounts",
                        f"write `dose {stmt.name.name} [UNIT]: ... at data`")
            return
        own = stmt.name.name if stmt.from_data else None
        used = self.resolve(stmt.amount, Position(f"the amount of {where}", finite=True, dose=own))
        if stmt.from_data and self.table.time is None:
            self.report("E303", stmt.span, f"{where} comes from the data table at times of the "
                        "model's clock, but the model declares no `time`")
        timing = set()
        for word, expr in (("at", stmt.at), ("every", stmt.every), ("times", stmt.times)):
            timing |= self.resolve_constant_time(expr, f"`{word}` of {where}")
        states = self.names_of("state")
        kind = self.lookup_ident(stmt.state, where, states)
        if kind is not None and kind != "state":
            self.report("E204", stmt.state.span, f"a dose changes a state, found {kind} `{stmt.state.name}`",
                        "use `set` to change a param, const or input" if kind in SETTABLE_KINDS else self.did_you_mean(stmt.state.name, states))
        elif kind == "state":
            self.event_influence.setdefault(stmt.state.name, set()).update(used | timing)
        if scenario is None and self.table.symbols.get(stmt.name.name) is not None \
                and self.table.symbols[stmt.name.name].decl is stmt:
            self.info.depends[stmt.name.name] = used | timing
        if stmt.times is not None:
            n = self.number(stmt.times)
            if n is not None and not math.isinf(n) and not (n >= 1 and n == int(n)):  # inf: E504
                self.report("E503", stmt.times.span, f"`times` of {where} must be a whole number of at least 1, found {n:g}")
            elif n is not None and not math.isinf(n) and n > MAX_DOSE_TIMES:
                self.report("E503", stmt.times.span,
                            f"`times` of {where} is {n:g}; at most {MAX_DOSE_TIMES:,} doses are supported",
                            "a dose this frequent is better written as a continuous input (an `input` or a rate in `der`)")
        if stmt.every is not None:
            dt = self.number(stmt.every)
            if dt is not None and not dt > 0:
                self.report("E503", stmt.every.span, f"`every` of {where} must be a positive interval, found {dt:g}")

    def check_set(self, stmt: A.SetStmt) -> None:
        target = stmt.target.name
        used = self.resolve(stmt.value, Position(f"the value of `set {target}`", finite=True))
        for word, expr in (("from", stmt.start), ("to", stmt.end)):  # `to inf` means to the end
            used |= self.resolve_constant_time(expr, f"`{word}` of `set {target}`", finite=False)
        settable = self.names_of(*SETTABLE_KINDS)
        kind = self.lookup_ident(stmt.target, "`set`", settable)
        if kind is not None and kind not in SETTABLE_KINDS:
            hint = {"state": "change a state with a `dose` (`+=` or `*=`)",
                    "let": "set the params or inputs the let is computed from"}.get(kind)
            self.report("E204", stmt.target.span, f"`set` expects a param, const or input, found {kind} `{target}`", hint)
        elif kind is not None:
            self.event_influence.setdefault(target, set()).update(used)
            self.set_lines.append(stmt)

    def check_remove(self, stmt: A.RemoveStmt, scenario: Optional[A.ScenarioBlock]) -> None:
        name = stmt.name.name
        if scenario is None:
            self.report("E204", stmt.span, f"`remove {name}` outside a scenario; `remove` drops a baseline dose inside a scenario",
                        "put it inside a `scenario NAME ... end` block")
            return
        if name in self.table.doses:
            return
        kind = self.kind_of(name)
        if kind is not None:
            self.report("E204", stmt.name.span, f"`remove` expects a baseline dose, found {kind} `{name}`")
        elif any(isinstance(s, A.DoseStmt) and s.name.name == name for s in scenario.body):
            self.report("E204", stmt.name.span,
                        f"`remove` expects a baseline dose, found `{name}`, a dose of this scenario only",
                        "delete the scenario's dose line instead")
        else:
            self.report("E201", stmt.name.span, f"undefined dose `{name}` in `remove`",
                        self.did_you_mean(name, list(self.table.doses)))

    def check_noise(self, stmt: A.ObserveDecl) -> set[str]:
        noise = stmt.noise
        if noise is None:
            return set()
        kind = noise.kind.name
        if kind not in NOISE_OPTIONS:
            self.report("E503", noise.kind.span, f"unknown noise model `{kind}`; expected normal, lognormal, poisson or negbinomial",
                        self.did_you_mean(kind, NOISE_OPTIONS))
            return set()
        allowed = NOISE_OPTIONS[kind]
        used: set[str] = set()
        seen: set[str] = set()
        for opt in noise.options:
            name = opt.name.name
            if name not in allowed:
                expected = f"only `{'`, `'.join(allowed)}`" if allowed else "no options"
                self.report("E503", opt.name.span, f"{kind} noise takes {expected}, found option `{name}`",
                            self.did_you_mean(name, allowed))
            elif name in seen:
                self.report("E503", opt.name.span, f"option `{name}` given twice")
            elif isinstance(opt.value, A.ListValue):
                self.report("E503", opt.value.span, f"`{name}` expects a value, found a list")
            else:
                seen.add(name)
                used |= self.resolve(opt.value, Position(f"the {name} of observe `{stmt.name.name}`",
                                                         SIGMA_KINDS, "params and consts",
                                                         observe=stmt.name.name,
                                                         own_prediction=kind == "normal"))
                sigma = self.number(opt.value)
                if sigma is not None and not 0 < sigma < math.inf:
                    self.report("E503", opt.value.span, f"`{name}` must be a positive number, found {sigma:g}")
        for name in allowed:
            if name not in seen:
                self.report("E503", noise.kind.span, f"{kind} noise needs a `{name}` option, found none",
                            f"write `{kind}({name} = ...)`")
        return used

    def check_neural(self, stmt: A.NeuralDecl) -> None:
        if not stmt.args:
            self.report("E205", stmt.name.span, f"neural `{stmt.name.name}` takes no arguments; expected at least one",
                        "a fitted constant is a `param`; a neural term is a function of dimensionless inputs")
        if stmt.kind.name not in NEURAL_KINDS:
            self.report("E503", stmt.kind.span, f"unknown neural network kind `{stmt.kind.name}`; expected `mlp`",
                        self.did_you_mean(stmt.kind.name, NEURAL_KINDS))
        seen: set[str] = set()
        for opt in stmt.options:
            name, value = opt.name.name, opt.value
            if name not in NEURAL_OPTIONS:
                self.report("E503", opt.name.span, f"unknown neural option `{name}`; expected one of {', '.join(NEURAL_OPTIONS)}",
                            self.did_you_mean(name, NEURAL_OPTIONS))
                continue
            if name in seen:
                self.report("E503", opt.name.span, f"neural option `{name}` given twice")
                continue
            seen.add(name)
            if name == "hidden":
                self.check_hidden(value)
            elif name in ("activation", "init"):
                choices = ACTIVATIONS if name == "activation" else NEURAL_INITS
                word = value.name if isinstance(value, A.Name) else None
                if word not in choices:
                    found = f"`{word}`" if word else _describe(value) if not isinstance(value, A.ListValue) else "a list"
                    self.report("E503", value.span, f"`{name}` expects one of {', '.join(choices)}; found {found}",
                                self.did_you_mean(word, choices) if word else None)
            elif name == "penalty":
                ok, number = (True, None) if isinstance(value, A.ListValue) else self.literal(value)
                if ok and (number is None or not number >= 0 or math.isinf(number)):
                    self.report("E503", value.span, "`penalty` expects a number >= 0, found "
                                + (f"{number:g}" if number is not None else "a non-numeric value"))

    def check_hidden(self, value) -> None:
        if not isinstance(value, A.ListValue):
            self.report("E503", value.span, "`hidden` expects a list of layer widths such as [16, 16], found a single value",
                        "write the widths in brackets: `hidden = [16]`")
            return
        if not value.items:
            self.report("E503", value.span, "`hidden` expects at least one layer width, found an empty list")
        if len(value.items) > MAX_NEURAL_LAYERS:
            self.report("E503", value.span, f"`hidden` has {len(value.items)} layers; at most {MAX_NEURAL_LAYERS} are supported")
        for item in value.items:
            ok, width = self.literal(item) if isinstance(item, (A.Number, A.UnaryOp)) else (True, None)
            if ok and (width is None or not math.isfinite(width) or width < 1 or width != int(width)):
                self.report("E503", item.span, "`hidden` widths must be positive whole numbers, found "
                            + (f"{width:g}" if width is not None else _describe(item)))
            elif ok and width > MAX_NEURAL_WIDTH:
                self.report("E503", item.span, f"`hidden` width {width:g} is beyond the supported {MAX_NEURAL_WIDTH}",
                            "a term of a mechanistic model needs a few dozen units per layer")

    # ------------------------------------------------------------------ whole-model checks
    def check_dynamics(self) -> None:
        for state, lines in self.info.dynamics.items():
            sym = self.table.symbols[state]
            ders = [x for x in lines if isinstance(x, A.DerEq)]
            flows = [x for x in lines if isinstance(x, A.FlowEq)]
            if not lines:
                self.report("E301", sym.ident.span, f"state `{state}` has no dynamics: expected a `der({state})` line or a flow, found neither",
                            f"add `der({state}) = ...` or a `flow` into or out of `{state}`")
            for extra in ders[1:]:
                self.report("E302", extra.state.span,
                            f"state `{state}` has a second `der` line (first on line {ders[0].span.line}); expected exactly one")
            if ders and flows:
                lines_text = ", ".join(str(f.span.line) for f in flows)
                self.report("E302", ders[0].state.span,
                            f"state `{state}` has both a `der` line and flows (line{'s' * (len(flows) > 1)} {lines_text}); expected one or the other",
                            "write the flows' rates into the der line, or drop the der line")

    def check_sets_of_initial_values(self) -> None:
        """E306: a `set` whose target an initial value uses takes part in that initial value (the
        sets in force at the start apply), so its value may use only what an initial value may."""
        for stmt in self.set_lines:
            state = self.initial_users.get(stmt.target.name)
            if state is None:
                continue
            for node in iter_expr(stmt.value):
                name = node.func.name if isinstance(node, A.Call) else node.name if isinstance(node, A.Name) else None
                kind = self.kind_of(name) if name is not None else None
                if kind is not None and kind not in INITIAL_KINDS:
                    self.report("E306", node.span,
                                f"`set {stmt.target.name}` changes the initial value of state `{state}`, so it may "
                                f"use only params, consts and inputs; found {kind} `{name}`",
                                "an initial value cannot depend on states, lets or time: set the target "
                                "from params, or set another param that only the equations use")

    def check_cycles(self) -> None:
        """E304 for each cycle among lets (and consts); the let order leaves cyclic lets out."""
        symbols = self.table.symbols
        nodes = [n for n, s in symbols.items() if s.kind in ("let", "const")]
        same_kind = {n: [d for d in sorted(self.info.depends.get(n, ()), key=self.decl_index)
                         if symbols.get(d) is not None and symbols[d].kind == symbols[n].kind]
                     for n in nodes}
        on_cycle: set[str] = set()
        for component in strongly_connected(nodes, same_kind):
            start = min(component, key=self.decl_index)
            if len(component) == 1 and start not in same_kind[start]:
                continue
            on_cycle |= set(component)
            path = cycle_through(start, set(component), same_kind)
            sym = symbols[start]
            self.report("E304", sym.ident.span, f"cyclic definition: {' -> '.join(path)}",
                        f"a {sym.kind} cannot depend on itself; break the cycle (a quantity that feeds back belongs in a `state`)")
        lets = [n for n in nodes if symbols[n].kind == "let" and n not in on_cycle]
        self.info.let_order = topological(lets, {n: [d for d in same_kind[n] if d not in on_cycle] for n in lets}, self.decl_index)

    def decl_index(self, name: str) -> tuple[int, int, int]:
        """Where `name` is declared; the elements of a family line share its place and keep
        their member order (not their names' alphabetical order: `lambda[child]` before
        `lambda[adult]` when the index says so)."""
        if self._position is None:
            self._position = {n: i for i, n in enumerate(self.table.symbols)}
        span = self.table.symbols[name].ident.span
        return span.line, span.column, self._position[name]

    def compute_influence(self) -> None:
        observes = [s.name for s in self.table.of_kind("observe")]
        edges = {n: set(d) for n, d in self.info.depends.items()}
        for target, names in self.event_influence.items():
            edges.setdefault(target, set()).update(names)
        reached: set[str] = set()
        stack = list(observes)
        while stack:
            for dep in edges.get(stack.pop(), ()):
                if dep not in reached:
                    reached.add(dep)
                    stack.append(dep)
        self.info.influences_observation = {n for n in reached if self.kind_of(n) != "observe"}

    def warn_unused(self) -> None:
        used = self.info.used
        has_observes = bool(self.table.of_kind("observe"))
        reaches = self.info.influences_observation
        for sym in self.table.symbols.values():
            span, name = sym.ident.span, sym.name
            if sym.kind in ("const", "param", "input", "let", "neural") and name not in used:
                self.report("W701", span, f"{sym.kind} `{name}` is declared but never used", "remove it, or use it")
            elif sym.kind == "param" and has_observes and name not in reaches:
                self.report("W704", span, f"param `{name}` can influence no observation, so data cannot estimate it",
                            "make it a `const`, or observe a quantity it affects")
            if sym.kind == "state" and has_observes and name not in reaches:
                self.report("W702", span, f"state `{name}` can influence no observation",
                            "observe it, or remove it if it is not needed")
            if sym.kind == "param" and isinstance(sym.decl, A.ParamDecl) and sym.decl.bounds is None:
                self.report("W703", span, f"estimated param `{name}` has no bounds",
                            f"add `in [LO, HI]` after its default")


# ---------------------------------------------------------------------- graph helpers
def strongly_connected(nodes: list[str], edges: dict[str, list[str]]) -> list[list[str]]:
    """Tarjan's algorithm, iterative (let chains may be long)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    result: list[list[str]] = []
    for root in nodes:
        if root in index:
            continue
        work = [(root, iter(edges.get(root, ())))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(edges.get(child, ()))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                result.append(component)
    return result


def cycle_through(start: str, members: set[str], edges: dict[str, list[str]]) -> list[str]:
    """A shortest cycle start -> ... -> start inside one strongly connected component."""
    previous: dict[str, str] = {}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for child in edges.get(node, ()):
                if child not in members:
                    continue
                if child == start:
                    path = [node]
                    while path[-1] != start:
                        path.append(previous[path[-1]])
                    return path[::-1] + [start]
                if child not in previous:
                    previous[child] = node
                    following.append(child)
        frontier = following
    return [start, start]


def topological(nodes: list[str], deps: dict[str, list[str]], order_key) -> list[str]:
    """Dependencies first; among ready nodes, declaration order (Kahn's algorithm)."""
    waiting = {n: len(set(deps[n])) for n in nodes}
    dependents: dict[str, list[str]] = {n: [] for n in nodes}
    for n in nodes:
        for d in set(deps[n]):
            dependents[d].append(n)
    ready = [(order_key(n), n) for n in nodes if waiting[n] == 0]
    heapq.heapify(ready)
    order = []
    while ready:
        _, n = heapq.heappop(ready)
        order.append(n)
        for m in dependents[n]:
            waiting[m] -= 1
            if waiting[m] == 0:
                heapq.heappush(ready, (order_key(m), m))
    return order


def check_names(program: A.Program, table: SymbolTable, file: str = "<model>") -> tuple[NameInfo, list[Diagnostic]]:
    """Resolve every name and check the model's structure; see the module docstring."""
    return _Checker(program, table, file).run()
