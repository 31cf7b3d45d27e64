"""The unit check (LANGUAGE.md §3, §6): infers the unit of every expression and reports E307
(flow ends of different dimensions), E401-E407 and E502.

Conventions the back ends rely on (recorded in `UnitInfo.expr_units`):
* `a + b`, `min`, `max`, `ifelse` take the unit of their first operand; the others are converted
  into it (same dimension, possibly another scale). After an E401 the result is unknown (None), so
  one mistake is reported once.
* A dimensionless argument of `exp`, `log`, ..., of a neural call, or a non-constant exponent, is
  meant after conversion to scale 1 (`[h/day]` -> a plain number); the result is `[1]`.
* A names-free value in a position with a known unit (`param k [1/day] = 1/7`) is a plain number in
  that unit: its top node carries the declared unit, its inner nodes their literal units ([1]).
* E502 folds a default or initial value when it uses only numbers, consts and params (params at
  their defaults: the fit starts there), converting units exactly (`fold.DeclaredValues`, which
  lowering reads too), and compares it, in the declared unit, with the bounds (inclusive).
Undefined names and names of the wrong kind are names.py's to report; here their unit is unknown
(None), and an unknown operand never causes a unit error.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Optional, Union

from ..grammar import ast as A
from ..grammar.words import BUILTIN_CONSTANTS
from ..diagnostics import Diagnostic
from ..grammar.words import OBSERVE_FUNCTIONS
from ..grammar.parser import MAX_UNIT_POWER  # beyond this a power of a unit is surely a mistake
from .builtins import BRANCHES, BUILTINS, DIMENSIONLESS, HALVES_EXPONENTS, KEEPS_UNIT, ONE_DIMENSION
from .fold import DeclaredValues, is_bare, is_folded_number
from .symbols import Symbol, SymbolTable
from .units import ONE, Unit, UnitError, UnitSystem, exact


@dataclass
class UnitInfo:
    system: UnitSystem
    declared: dict[str, Unit] = field(default_factory=dict)  # symbol -> declared (let: else inferred) unit
    expr_units: dict = field(default_factory=dict)  # expression node -> Unit, None for booleans/unknown
    time_unit: Optional[Unit] = None
    values: Optional[DeclaredValues] = None  # consts and param defaults, folded (also for lowering)


class _Bool:
    def __repr__(self):
        return "BOOL"


BOOL = _Bool()  # the type of comparisons and and/or/not
Ty = Union[Unit, _Bool, None]  # None: unknown (an error reported elsewhere)



def check_units(program: A.Program, table: SymbolTable, file: str = "<model>") -> tuple[UnitInfo, list[Diagnostic]]:
    checker = _UnitChecker(program, table, file)
    try:
        checker.run()
    except RecursionError:  # the parser's limits should prevent it; if not, never a silent "clean"
        stmt = checker.statement
        span = stmt.span if stmt is not None else A.Span(1, 1, 1, 2)
        checker.diags.append(Diagnostic("E100", span, "the model is nested too deeply to check its units here",
                                        "split long chains of lets or deeply nested expressions", file))
    return checker.info, checker.diags


class _UnitChecker:
    def __init__(self, program: A.Program, table: SymbolTable, file: str):
        self.program, self.table, self.file = program, table, file
        self.info = UnitInfo(UnitSystem())
        self.diags: list[Diagnostic] = []
        self.decl_units: dict[object, Optional[Unit]] = {}  # statement (nodes hash by identity) -> resolved unit
        self.let_units: dict[str, Ty] = {}
        self.lets_in_progress: set[str] = set()
        self.walked_lets: set[A.LetDecl] = set()
        self.info.values = DeclaredValues(table, lambda sym: self.decl_units.get(sym.decl), self.unit_scale)
        self.current_state: Optional[str] = None  # for the `gamma * I` hint
        self.table_dose: Optional[A.DoseStmt] = None  # whose own name is the row's amount
        self.statement = None  # the statement being checked, to locate a RecursionError
        self._entry_units: dict[int, tuple] = {}  # A.KernelRow entries inferred cleanly -> (entries, unit)

    # ------------------------------------------------------------ reporting
    def report(self, code: str, span: A.Span, message: str, hint: Optional[str] = None) -> None:
        self.diags.append(Diagnostic(code, span, message, hint, self.file))

    def unit_scale(self, expr: A.UnitExpr) -> Optional[Fraction]:
        """The scale of a unit annotation, for folding; None when it is unknown (E406 elsewhere)."""
        unit = self.info.system.try_resolve(expr)[0]
        return None if unit is None else unit.scale

    def value_in(self, expr: A.Expr, unit: Unit) -> Optional[float]:
        return self.info.values.value_in(expr, unit)

    def resolve(self, expr: Optional[A.UnitExpr]) -> Optional[Unit]:
        if expr is None:
            return None
        unit, errors = self.info.system.try_resolve(expr)
        for err in errors:
            self.report(err.code, err.span or expr.span, err.message, err.hint)
        return unit

    # ------------------------------------------------------------ driver
    def run(self) -> None:
        self.declare_model_units()
        statements = list(self.all_statements())
        for stmt in statements:
            if hasattr(stmt, "unit"):
                self.decl_units[stmt] = self.resolve(stmt.unit)
        if self.table.time is not None:
            self.info.time_unit = self.decl_units.get(self.table.time)
        for stmt in statements:
            self.statement = stmt
            self.check_statement(stmt)
        for sym in self.table.symbols.values():
            unit = self.let_unit(sym) if sym.kind == "let" else self.decl_units.get(sym.decl)
            if isinstance(unit, Unit) and sym.kind != "dose":
                self.info.declared[sym.name] = unit

    def all_statements(self):
        for stmt in self.program.statements:
            yield stmt
            if isinstance(stmt, A.ScenarioBlock):
                yield from stmt.body

    def declare_model_units(self) -> None:
        system = self.info.system
        pending: list[A.UnitDecl] = []
        for decl in self.table.units.values():
            if decl.value is None:
                try:
                    system.add_base(decl.name.name)
                except UnitError as err:
                    self.report(err.code, decl.name.span, err.message, err.hint)
            else:
                pending.append(decl)
        pending_names = {d.name.name for d in pending}
        progress = True
        while pending and progress:  # derived units may use each other in any order
            progress = False
            for decl in list(pending):
                number = decl.value
                unit, errors = (ONE, []) if number.unit is None else system.try_resolve(number.unit)
                if errors and all(err.name in pending_names for err in errors):
                    continue  # waits for another derived unit
                pending.remove(decl)
                pending_names.discard(decl.name.name)
                progress = True
                for err in errors:
                    self.report(err.code, err.span, err.message, err.hint)
                if unit is None:
                    continue
                self.info.expr_units[number] = unit
                factor = _literal_fraction(number) if math.isfinite(number.value) and number.value > 0 else None
                if factor is None:  # report, then go on with 1 so that uses of the unit check
                    self.report("E306", number.span, f"the factor of unit `{decl.name.name}` must be a positive, "
                                f"finite number, found {number.text}", None)
                    factor = Fraction(1)
                try:
                    system.add_derived(decl.name.name, factor, unit)
                except UnitError as err:
                    self.report(err.code, decl.name.span, err.message, err.hint)
        for decl in pending:
            self.report("E406", decl.name.span, f"unit `{decl.name.name}` is defined in terms of itself",
                        "define it from library units or base units")

    # ------------------------------------------------------------ names
    def symbol(self, name: str) -> Optional[Symbol]:
        return self.table.symbols.get(name)

    def symbol_unit(self, sym: Symbol) -> Ty:
        if sym.kind == "time":
            return self.info.time_unit
        if sym.kind == "let":
            return self.let_unit(sym)
        if sym.kind in ("const", "param", "state", "input", "observe"):
            return self.decl_units.get(sym.decl)
        return None  # neural without a call, dose: names.py reports E204

    def let_unit(self, sym: Symbol) -> Ty:
        decl: A.LetDecl = sym.decl
        if decl.unit is not None:
            return self.decl_units.get(decl)
        if sym.name in self.let_units:
            return self.let_units[sym.name]
        if sym.name in self.lets_in_progress:
            return None  # a cycle: E304 is names.py's
        self.lets_in_progress.add(sym.name)
        self.walked_lets.add(decl)
        unit = self.infer(decl.value)
        if isinstance(unit, Unit) and unit.is_dimensionless:
            unit = ONE  # `(1 [h]) / (1 [day])` is the number 1/24, not 1 [h/day]
        self.lets_in_progress.discard(sym.name)
        self.let_units[sym.name] = unit
        return unit

    # ------------------------------------------------------------ statements
    def check_statement(self, stmt) -> None:
        unit = self.decl_units.get(stmt)
        if isinstance(stmt, A.TimeDecl):
            self.check_time(stmt.origin, "from")
        elif isinstance(stmt, (A.ConstDecl, A.ParamDecl)):
            if self.check_value(stmt.value, unit, f"the value of `{stmt.name.name}`"):
                self.check_bounds(stmt, stmt.value, getattr(stmt, "bounds", None), unit)
        elif isinstance(stmt, A.StateDecl):
            if self.check_value(stmt.init, unit, f"the initial value of `{stmt.name.name}`"):
                self.check_bounds(stmt, stmt.init, stmt.bounds, unit)
        elif isinstance(stmt, A.InputDecl):
            if stmt.default is not None:
                self.check_value(stmt.default, unit, f"the default of `{stmt.name.name}`")
        elif isinstance(stmt, A.LetDecl):
            if stmt.unit is not None:
                self.check_value(stmt.value, unit, f"the value of `{stmt.name.name}`")
            elif stmt not in self.walked_lets:
                sym = self.symbol(stmt.name.name)
                if sym is not None and sym.decl is stmt:
                    self.let_unit(sym)
                else:
                    self.infer(stmt.value)
        elif isinstance(stmt, A.ObserveDecl):
            self.check_value(stmt.value, unit, f"the value of `{stmt.name.name}`")
            if stmt.noise is not None:
                self.check_noise(stmt, unit)
        elif isinstance(stmt, A.NeuralDecl):
            for option in stmt.options:
                if option.name.name == "penalty" and not isinstance(option.value, A.ListValue):
                    self.check_value(option.value, ONE, f"the penalty of neural `{stmt.name.name}`")
                else:
                    self.infer_option(option)
        elif isinstance(stmt, A.DerEq):
            self.check_der(stmt)
        elif isinstance(stmt, A.FlowEq):
            self.check_flow(stmt)
        elif isinstance(stmt, A.DoseStmt):
            self.check_dose(stmt)
        elif isinstance(stmt, A.SetStmt):
            self.check_set(stmt)

    def state_unit(self, ident: Optional[A.Ident]) -> Optional[Unit]:
        sym = self.symbol(ident.name) if ident is not None else None
        if sym is None or sym.kind != "state":
            return None
        return self.decl_units.get(sym.decl)

    def per_time(self, unit: Optional[Unit]) -> Optional[Unit]:
        if unit is None or self.info.time_unit is None:
            return None
        return unit / self.info.time_unit

    def check_der(self, stmt: A.DerEq) -> None:
        self.current_state = stmt.state.name
        actual = self.infer(stmt.value)
        self.current_state = None
        expected = self.per_time(self.state_unit(stmt.state))
        self.expect_number(stmt.value, actual)
        if isinstance(actual, Unit) and expected is not None and not actual.same_dims(expected):
            x = stmt.state.name
            self.report("E402", stmt.value.span,
                        f"der({x}) has unit {actual}, expected {expected} (the unit of {x} per time unit)",
                        self.fix_hint(expected, actual, stmt.value))

    def check_flow(self, stmt: A.FlowEq) -> None:
        source, target = self.state_unit(stmt.source), self.state_unit(stmt.target)
        ends_agree = True
        if source is not None and target is not None and not source.same_dims(target):
            ends_agree = False
            self.report("E307", stmt.source.span.to(stmt.target.span),
                        f"flow from `{stmt.source.name}` {source} to `{stmt.target.name}` {target}: "
                        "the ends have different dimensions",
                        "a flow moves one kind of quantity; convert with a rate in a let or use der()")
        end = stmt.source if source is not None else stmt.target
        self.current_state = end.name if end is not None else None
        actual = self.infer(stmt.rate)
        self.current_state = None
        expected = self.per_time(source if source is not None else target)
        self.expect_number(stmt.rate, actual)
        if ends_agree and isinstance(actual, Unit) and expected is not None and not actual.same_dims(expected):
            self.report("E402", stmt.rate.span,
                        f"the flow rate has unit {actual}, expected {expected} "
                        f"(the unit of `{end.name}` per time unit)",
                        self.fix_hint(expected, actual, stmt.rate))

    def check_dose(self, stmt: A.DoseStmt) -> None:
        target = self.state_unit(stmt.state)
        expected = ONE if stmt.op == "*=" else target
        self.table_dose = stmt if stmt.from_data else None
        if stmt.op == "*=" or target is not None:
            self.check_value(stmt.amount, expected, f"the amount of dose `{stmt.name.name}`")
        else:
            self.infer(stmt.amount)
        self.table_dose = None
        self.check_time(stmt.at, "at")
        self.check_time(stmt.every, "every")
        if stmt.times is not None:
            self.check_value(stmt.times, ONE, "the count after `times`")

    def check_set(self, stmt: A.SetStmt) -> None:
        sym = self.symbol(stmt.target.name)
        unit = self.decl_units.get(sym.decl) if sym and sym.kind in ("param", "const", "input") else None
        self.check_value(stmt.value, unit, f"the value set for `{stmt.target.name}`")
        self.check_time(stmt.start, "from")
        self.check_time(stmt.end, "to")
        time_unit = self.info.time_unit
        if stmt.start is not None and stmt.end is not None and time_unit is not None:
            start, end = self.value_in(stmt.start, time_unit), self.value_in(stmt.end, time_unit)
            if start is not None and end is not None and not start < end:  # from <= t < to: empty
                self.report("E501", stmt.start.span.to(stmt.end.span),
                            f"the window of `set {stmt.target.name}` is empty: expected `from` before `to`, "
                            f"found from {start:g} to {end:g} {time_unit}", "write the earlier time after `from`")

    def check_time(self, expr: Optional[A.Expr], keyword: str) -> None:
        if expr is not None:
            self.check_value(expr, self.info.time_unit, f"the time after `{keyword}`")

    def check_noise(self, stmt: A.ObserveDecl, unit: Optional[Unit]) -> None:
        kind = stmt.noise.kind.name
        for option in stmt.noise.options:
            if option.name.name == "sigma" and kind in ("normal", "lognormal") and not isinstance(option.value, A.ListValue):
                expected = unit if kind == "normal" else ONE
                self.check_value(option.value, expected, f"the sigma of `{stmt.name.name}`")
            elif option.name.name == "dispersion" and not isinstance(option.value, A.ListValue):
                self.check_value(option.value, ONE, f"the dispersion of `{stmt.name.name}`")
            else:
                self.infer_option(option)

    def infer_option(self, option: A.Option) -> None:
        items = option.value.items if isinstance(option.value, A.ListValue) else [option.value]
        for item in items:
            self.infer(item)

    def check_bounds(self, stmt, value: A.Expr, bounds: Optional[A.Bounds], unit: Optional[Unit]) -> None:
        if bounds is None:
            return
        name = stmt.name.name
        lo_ok = self.check_value(bounds.lo, unit, f"the lower bound of `{name}`")
        hi_ok = self.check_value(bounds.hi, unit, f"the upper bound of `{name}`")
        if unit is None or not (lo_ok and hi_ok):
            return
        v, lo, hi = (self.value_in(e, unit) for e in (value, bounds.lo, bounds.hi))
        if v is None or lo is None or hi is None or lo >= hi:  # lo >= hi is E501, names.py's
            return
        if not lo <= v <= hi:
            what = "initial value" if isinstance(stmt, A.StateDecl) else "default"
            self.report("E502", value.span,
                        f"the {what} of `{name}` is {v:g} {unit}, outside its bounds [{lo:g}, {hi:g}]",
                        "choose a value inside the bounds, or widen them")

    def check_value(self, expr: A.Expr, expected: Optional[Unit], what: str) -> bool:
        """A value in a position with a known unit: the bare-number rule, else E405 on dimensions.
        False when an error was reported."""
        ty = self.infer(expr)
        if not self.expect_number(expr, ty):
            return False
        if expected is None:
            return True
        if is_bare(expr):
            self.info.expr_units[expr] = expected
        elif isinstance(ty, Unit) and not ty.same_dims(expected):
            self.report("E405", expr.span, f"{what} has unit {ty}, expected {expected}",
                        self.fix_hint(expected, ty, expr))
            return False
        return True

    def expect_number(self, expr: A.Expr, ty: Ty) -> bool:
        if ty is BOOL:
            self.report("E407", expr.span, "a condition is used where a number is expected",
                        "use ifelse(CONDITION, A, B) to choose between numbers")
            return False
        return True

    def expect_condition(self, expr: A.Expr, ty: Ty) -> None:
        if isinstance(ty, Unit):
            self.report("E407", expr.span, f"a number {ty} is used where a condition is expected",
                        "compare it with something, e.g. `x > 0`")

    # ------------------------------------------------------------ expressions
    def infer(self, e) -> Ty:
        ty = self._infer(e)
        self.info.expr_units[e] = ty if isinstance(ty, Unit) else None
        return ty

    def _infer(self, e) -> Ty:
        if isinstance(e, A.Number):
            return ONE if e.unit is None else self.resolve(e.unit)
        if isinstance(e, A.Name):
            if self.table_dose is not None and e.name == self.table_dose.name.name:
                return self.decl_units.get(self.table_dose)  # the row's amount, in the dose's unit
            sym = self.symbol(e.name)
            if sym is not None:
                return self.symbol_unit(sym)
            return ONE if e.name in BUILTIN_CONSTANTS else None
        if isinstance(e, A.UnaryOp):
            ty = self.infer(e.operand)
            if e.op == "not":
                self.expect_condition(e.operand, ty)
                return BOOL
            return ty if self.expect_number(e.operand, ty) else None
        if isinstance(e, A.BoolOp):
            for side in (e.left, e.right):
                self.expect_condition(side, self.infer(side))
            return BOOL
        if isinstance(e, A.Compare):
            left, right = self.infer(e.left), self.infer(e.right)
            if self.expect_number(e.left, left) & self.expect_number(e.right, right):
                self.same_dimension(left, right, e.right, f"cannot compare {left} with {right}")
            return BOOL
        if isinstance(e, A.BinOp):
            return self.infer_binop(e)
        if isinstance(e, A.KernelRow):
            return self.infer_kernel_row(e)
        if isinstance(e, A.Call):
            return self.infer_call(e)
        if isinstance(e, A.ListValue):
            for item in e.items:
                self.infer(item)
        return None

    def numbers(self, *pairs) -> bool:
        """Both operands numeric (E407 otherwise); evaluates every check."""
        results = [self.expect_number(expr, ty) for expr, ty in pairs]
        return all(results)

    def same_dimension(self, left: Ty, right: Ty, right_expr: A.Expr, message: str) -> Ty:
        """The common unit (the left one), or None: unknown, or E401 reported (no cascade)."""
        if not (isinstance(left, Unit) and isinstance(right, Unit)):
            return None
        if not left.same_dims(right):
            self.report("E401", right_expr.span, message, self.fix_hint(left, right, right_expr))
            return None
        return left

    def infer_binop(self, e: A.BinOp) -> Ty:
        left, right = self.infer(e.left), self.infer(e.right)
        if not self.numbers((e.left, left), (e.right, right)):
            return None
        if e.op in "+-":
            if isinstance(left, Unit) and isinstance(right, Unit) and left.same_dims(right):
                return left  # as same_dimension, without printing a message for the error it is not
            message = (f"cannot add {left} and {right}" if e.op == "+"
                       else f"cannot subtract {right} from {left}")
            return self.same_dimension(left, right, e.right, message)
        if left is None or right is None:
            return None
        if e.op == "*":
            return left * right
        if e.op == "/":
            return left / right
        return self.infer_power(e, left, right)

    def infer_kernel_row(self, row: A.KernelRow) -> Ty:
        """The unit of an expanded sum's row: weight times entry, every term alike (the rule
        of `+`: E401 at the first term that differs). The shared entries are inferred once for
        all rows, unless that reported an error (then each row reports it, as written out)."""
        known = self._entry_units.get(id(row.entries))
        if known is not None:
            entry = known[1]
        else:
            before = len(self.diags)
            entry = self.common_unit(row.entries)
            if len(self.diags) == before:
                self._entry_units[id(row.entries)] = (row.entries, entry)  # holds the tuple: its id stays its own
        if all(is_folded_number(w) for w in row.weights):
            weight: Ty = ONE  # folded kernel values (negative and fractional ones too)
        else:
            weight = self.common_unit(row.weights)
        if not isinstance(weight, Unit) or not isinstance(entry, Unit):
            return None
        return weight * entry

    def common_unit(self, terms) -> Ty:
        """The unit that every one of `terms` has (E401 at the first that differs), or None."""
        first: Ty = None
        for k, term in enumerate(terms):
            ty = self.infer(term)
            if not self.expect_number(term, ty):
                return None
            if k == 0:
                first = ty
            elif isinstance(first, Unit) and isinstance(ty, Unit) and not first.same_dims(ty):
                return self.same_dimension(first, ty, term, f"cannot add {first} and {ty}")
        return first

    def infer_power(self, e: A.BinOp, base: Unit, exponent: Unit) -> Ty:
        if not exponent.is_dimensionless:
            self.report("E404", e.right.span, f"an exponent must be dimensionless, found {exponent}",
                        self.reference_hint(exponent, e.right))
            return None
        power = self.info.values.exponent(e.right)
        if base.is_dimensionless:
            if power is None or abs(power.numerator) > MAX_UNIT_POWER or power.denominator > MAX_UNIT_POWER:
                return ONE  # computed on the base converted to a plain number
            return base ** power
        if power is None:
            self.report("E404", e.right.span,
                        f"a base with unit {base} takes only a constant exponent",
                        "make the base dimensionless (divide by a reference scale) or the exponent a number")
            return None
        if abs(power.numerator) > MAX_UNIT_POWER or power.denominator > MAX_UNIT_POWER:
            self.report("E404", e.right.span, f"the exponent {power} is too large for a base with unit {base}",
                        "make the base dimensionless first")
            return None
        return base ** power

    def infer_call(self, e: A.Call) -> Ty:
        """A built-in call by its row's unit rule (compiler/builtins.py), or a neural call."""
        name = e.func.name
        if name in OBSERVE_FUNCTIONS:  # integral(RATE, WINDOW): unit(RATE) x the time unit
            if len(e.args) != 2 or self.info.time_unit is None:
                return None  # E205 and E204 are names.py's
            self.check_value(e.args[1], self.info.time_unit, f"the window of `{name}`")
            rate = self.infer(e.args[0])
            return rate * self.info.time_unit if isinstance(rate, Unit) else rate
        args = [self.infer(a) for a in e.args]
        row = BUILTINS.get(name)
        if row is not None:
            if len(args) != row.arity:
                return None  # E205 is names.py's
            if row.units == BRANCHES:
                self.expect_condition(e.args[0], args[0])
                if not self.numbers((e.args[1], args[1]), (e.args[2], args[2])):
                    return None
                return self.same_dimension(
                    args[1], args[2], e.args[2],
                    f"the branches of `{name}` have different dimensions: {args[1]} and {args[2]}")
            if not self.numbers(*zip(e.args, args)):
                return None
            if row.units == ONE_DIMENSION:
                return self.same_dimension(
                    args[0], args[1], e.args[1],
                    f"`{name}` needs arguments of one dimension, found {args[0]} and {args[1]}")
            if args[0] is None:
                return None
            if row.units == HALVES_EXPONENTS:
                return args[0].sqrt()
            if row.units == KEEPS_UNIT:
                return args[0]
            assert row.units == DIMENSIONLESS, row
            self.dimensionless_argument(e.args[0], args[0], f"the argument of `{name}`")
            return ONE
        sym = self.symbol(name)
        if sym is not None and sym.kind == "neural":
            for expr, ty in zip(e.args, args):
                if self.expect_number(expr, ty):
                    self.dimensionless_argument(expr, ty, f"an argument of neural `{name}`")
            return self.decl_units.get(sym.decl)
        return None  # calling a non-function: names.py's E204

    def dimensionless_argument(self, expr: A.Expr, ty: Ty, what: str) -> None:
        if isinstance(ty, Unit) and not ty.is_dimensionless:
            self.report("E403", expr.span, f"{what} must be dimensionless, found {ty}",
                        self.reference_hint(ty, expr))

    # ------------------------------------------------------------ hints
    def candidates(self, unit: Unit, kinds=("const", "param", "state")) -> list[str]:
        """Declared names with the dimension of `unit`, exact unit first, in kind order."""
        found = []
        for kind in kinds:
            for sym in self.table.of_kind(kind):
                u = self.decl_units.get(sym.decl)
                if isinstance(u, Unit) and u.same_dims(unit):
                    found.append((u != unit, sym.name))
        return [name for _, name in sorted(found, key=lambda x: x[0])]

    def reference_hint(self, unit: Unit, expr: A.Expr) -> str:
        own = expr.name if isinstance(expr, A.Name) else None
        names = [n for n in self.candidates(unit) if n != own]
        if names:
            return f"divide by a reference scale such as `{names[0]}`"
        return f"divide by a reference scale in {unit}"

    def fix_hint(self, expected: Ty, found: Ty, expr: A.Expr) -> Optional[str]:
        """`did you mean `gamma * I`?` when one declared factor would fix a bare name."""
        if not (isinstance(expected, Unit) and isinstance(found, Unit) and isinstance(expr, A.Name)):
            return None
        if "[" in expr.name:  # an element of an expanded family line: `I[child] / S[child]` misleads there
            return None
        missing = expected / found
        if missing.is_dimensionless:
            return None
        names = self.candidates(missing, ("state", "const", "param", "input"))
        if self.current_state in names:
            names.insert(0, self.current_state)
        if names:
            return f"did you mean `{expr.name} * {names[0]}`?"
        # `k / k` is just 1: never suggest dividing a name by itself
        inverse = [n for n in self.candidates(ONE / missing, ("state", "const", "param", "input")) if n != expr.name]
        return f"did you mean `{expr.name} / {inverse[0]}`?" if inverse else None


def _literal_fraction(number: A.Number) -> Fraction:
    """A literal's exact value from its text (`0.5` -> 1/2), not from the rounded float."""
    try:
        return Fraction(number.text)
    except (ValueError, ZeroDivisionError):
        return exact(number.value)
