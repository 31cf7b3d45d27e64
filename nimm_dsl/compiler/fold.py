"""Constant folding: the one evaluator of constant expressions (docs/language.md §5, "Constants").

Every phase that needs the number an expression stands for asks `fold`: names.py (E504, bounds,
counts, the signs of sigmas and intervals), unitcheck.py (exact exponents, E501 windows, E502
bounds) and lower.py (defaults, bounds, event times), so they cannot disagree. The rules:

* A literal is exact: its decimal text as a Fraction (`0.1` is 1/10). `inf` is infinite. A literal
  beyond the float range (`1e999`) is an error, not a silent infinity.
* `+ - * /` of exact values stay exact; with a float operand (`pi`, a function value, a
  fractional power) the result is a float. `^` groups to the right (`2^3^2` is 2^9) and binds
  tighter than unary minus (`-2^2` is -4); that is the parser's tree, folded as it stands. An
  integer power of an exact value stays exact; every other power is a float.
* Built-in calls use their float forms (compiler/builtins.py); `pi` is math.pi.
* Comparisons, `and`, `or` and `not` give booleans, and a boolean is not a number: the fold of
  `(a > b) * 2` is None (not a constant), and E407 is the unit checker's to report.
* An operation without a finite real value raises `FoldError`, located at the operation:
  division by zero, a negative base to a fractional power (the back ends give NaN), a function
  outside its domain (`log(0)`, `sqrt(-1)`), a result beyond the float range from finite operands
  (`10^400`, `exp(1000)`), or no value at all (`inf - inf`). Errors anywhere in the tree are
  raised even when the whole is not constant (`x * (1/0)`, `x / 0`), so one fold finds them all.
* Unit annotations: with `unit_scale`, `5 [h]` is 5 times the scale of h (its value in base
  units); without it annotations are ignored, for callers that only compare or count.

Other names are looked up through `names` (a value, or None when the name is not a constant).
"""
from __future__ import annotations

import math
import operator
import sys
from fractions import Fraction
from functools import lru_cache
from typing import Callable, Optional, Union

from ..grammar import ast as A
from .builtins import BRANCHES, BUILTINS

Value = Union[Fraction, int, float, bool]  # an int: an index member's value (compiler/families.py)
Names = Callable[[str], Optional[Value]]
UnitScale = Callable[[A.UnitExpr], Optional[Fraction]]

FLOAT_MAX = sys.float_info.max
MAX_EXACT_BITS = 4096  # an exact power larger than this is computed as a float (and overflows)

_COMPARE = {"<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge,
            "==": operator.eq, "!=": operator.ne}


class FoldError(Exception):
    """A constant operation without a finite real value (E504), at `span`."""

    def __init__(self, span: A.Span, message: str, hint: Optional[str] = None):
        super().__init__(message)
        self.span, self.message, self.hint = span, message, hint


def fold(expr, names: Optional[Names] = None, unit_scale: Optional[UnitScale] = None,
         memo: Optional[dict] = None) -> Optional[Value]:
    """The value of `expr`, or None when it is not constant; raises FoldError (see the module
    docstring). Iterative: a 200-deep expression is no problem.

    `memo`: a dict kept by a caller that folds the same tree many times with other `names`
    (an index family's `exp(-abs(d - k) / 3)`, once per element): an operation's value is
    remembered per node and operand values, so `abs`, `/` and `exp` run once per distinct
    `d - k`. Keyed by node identity: the caller keeps the tree alive as long as the memo."""
    if isinstance(expr, A.Number):  # most values are one literal
        return _literal(expr, unit_scale)
    if memo is not None:
        return _fold_remembered(expr, names, unit_scale, memo)
    results: list = []
    for node, arity in _post_order(expr):
        if arity:
            args = results[-arity:]
            del results[-arity:]
        else:
            args = []
        results.append(_value(node, args, names, unit_scale))
    return results[0]


def _post_order(expr) -> list[tuple]:
    """(node, number of children) for every node of `expr`, children before their parent."""
    order: list[tuple] = []
    stack = [(expr, False)]
    while stack:
        node, expanded = stack.pop()
        children = _children(node)
        if children and not expanded:
            stack.append((node, True))
            stack.extend((child, False) for child in reversed(children))
        else:
            order.append((node, len(children)))
    return order


def _fold_remembered(expr, names: Optional[Names], unit_scale: Optional[UnitScale], memo: dict) -> Optional[Value]:
    """`fold` through the memo: the tree's order is walked once, and an operation runs once per
    node and distinct operands. Keys hold operand identities, not values (hashing a Fraction
    costs more than the operation it saves), so each distinct value is kept as one object, and
    the memo keeps the operands alive so that their identities cannot be reused. An error is not
    remembered: it is raised again, the same."""
    entry = memo.get(id(expr))
    if entry is None:
        entry = memo[id(expr)] = ([_step(node, arity) for node, arity in _post_order(expr)], expr)
    results: list = []
    for node, arity, leaf in entry[0]:
        if arity == _LITERAL:
            results.append(leaf)
            continue
        if arity == _NAME:
            results.append(names(leaf) if names is not None else None)
            continue
        if not arity:
            results.append(_value(node, [], names, unit_scale))
            continue
        args = results[-arity:]
        del results[-arity:]
        key = (id(node), *map(id, args))
        found = memo.get(key)
        if found is None:
            value = _value(node, args, names, unit_scale)
            # 2 == 2.0 == True, but 2/3 and 2.0/3 differ: the type is part of a value's identity;
            # a zero float keeps its own object (one zero's sign is never given to another)
            if not (isinstance(value, float) and value == 0):
                value = memo.setdefault((type(value), value), value)
            found = memo[key] = (value, args)
        results.append(found[0])
    return results[0]


_LITERAL, _NAME = -1, -2  # leaves `_fold_remembered` evaluates without `_value`


def _step(node, arity: int) -> tuple:
    """One step of a remembered walk: a literal without a unit keeps its value (the same for any
    `names` and `unit_scale`), a model name its text; anything else its arity."""
    if not arity and isinstance(node, A.Number) and node.unit is None:
        return node, _LITERAL, _literal(node, None)
    if not arity and isinstance(node, A.Name) and node.name not in ("pi", "inf"):
        return node, _NAME, node.name
    return node, arity, None


def fold_number(expr, names: Optional[Names] = None, unit_scale: Optional[UnitScale] = None) -> Optional[float]:
    """`fold` as a float, None for anything else (no value, a boolean, an error reported elsewhere)."""
    try:
        value = fold(expr, names, unit_scale)
    except FoldError:
        return None
    return None if value is None or isinstance(value, bool) else float(value)


def is_folded_number(e) -> bool:
    """A value folded into the tree (compiler/families.py `_number_node`): a number literal
    without a unit, negated, or a quotient of two with a nonzero denominator. It names nothing
    and has a value, so it has nothing for the name and unit checks to find."""
    if isinstance(e, A.UnaryOp) and e.op == "-":
        e = e.operand
    if isinstance(e, A.BinOp) and e.op == "/":
        return (isinstance(e.left, A.Number) and e.left.unit is None and isinstance(e.right, A.Number)
                and e.right.unit is None and e.right.value != 0)
    return isinstance(e, A.Number) and e.unit is None


def is_bare(expr) -> bool:
    """No model names and no unit annotations (numbers, `pi`, `inf`, operators, built-in calls):
    in a position with a declared unit such a value is a number in that unit (LANGUAGE.md §3)."""
    stack = [expr]
    while stack:
        node = stack.pop()
        if isinstance(node, A.Number):
            if node.unit is not None:
                return False
        elif isinstance(node, A.Name):
            if node.name not in ("pi", "inf"):
                return False
        elif isinstance(node, A.Call):
            if node.func.name not in BUILTINS:
                return False
            stack.extend(node.args)
        elif isinstance(node, (A.BinOp, A.Compare, A.BoolOp, A.UnaryOp)):
            stack.extend(_children(node))
        else:
            return False
    return True


# ---------------------------------------------------------------- one node
def _children(node) -> tuple:
    if isinstance(node, (A.BinOp, A.Compare, A.BoolOp)):
        return node.left, node.right
    if isinstance(node, A.UnaryOp):
        return (node.operand,)
    if isinstance(node, A.Call):
        return tuple(node.args)
    return ()


def _is_number(v) -> bool:
    return v is not None and not isinstance(v, bool)


def _value(node, args: list, names: Optional[Names], unit_scale: Optional[UnitScale]) -> Optional[Value]:
    if isinstance(node, A.Number):
        return _literal(node, unit_scale)
    if isinstance(node, A.Name):
        if node.name == "pi":
            return math.pi
        if node.name == "inf":
            return math.inf
        return names(node.name) if names is not None else None
    if isinstance(node, A.BinOp) and node.op == "/" and _is_number(args[1]) and args[1] == 0:
        raise FoldError(node.span, "division by zero", None)  # `x / 0` has no value whatever x is
    if any(a is None for a in args):
        return None
    if isinstance(node, A.UnaryOp):
        (v,) = args
        if node.op == "not":
            return (not v) if isinstance(v, bool) else None
        return -v if _is_number(v) else None
    if isinstance(node, A.BinOp):
        a, b = args
        return _arithmetic(node, a, b) if _is_number(a) and _is_number(b) else None
    if isinstance(node, A.Compare):
        a, b = args
        return _COMPARE[node.op](a, b) if _is_number(a) and _is_number(b) else None
    if isinstance(node, A.BoolOp):
        a, b = args
        if not (isinstance(a, bool) and isinstance(b, bool)):
            return None
        return (a and b) if node.op == "and" else (a or b)
    if isinstance(node, A.Call):
        row = BUILTINS.get(node.func.name)
        return None if row is None or len(args) != row.arity else _call(node, row, args)  # else E205
    return None


def _literal(node: A.Number, unit_scale: Optional[UnitScale]) -> Optional[Value]:
    if node.text == "inf":
        value: Value = math.inf
    elif math.isinf(node.value):
        raise FoldError(node.span, f"`{node.text}` is beyond the largest number a model can hold (about 1.8e308)",
                        "write `inf` for infinity, or a smaller number")
    else:
        value = _exact(node.text)
    if node.unit is not None and unit_scale is not None:
        scale = unit_scale(node.unit)
        if scale is None:
            return None  # an unknown unit: E406 is reported elsewhere
        value = value * scale
    return value


@lru_cache(maxsize=4096)
def _exact(text: str) -> Fraction:
    """A literal's exact value; remembered, as models repeat the same few (`0`, `1`, `0.1`)."""
    return Fraction(text)


def _show(v: Value) -> str:
    return f"{float(v):g}"


def _describe(node, operands) -> str:
    """`(-8)^0.333333`, `1e+300 * 1e+300`, `exp(1000)`: the operation with its folded operands."""
    if isinstance(node, A.Call):
        return f"`{node.func.name}({', '.join(map(_show, operands))})`"
    a, b = (f"({_show(x)})" if x < 0 else _show(x) for x in operands)
    return f"`{a} {node.op} {b}`" if node.op != "^" else f"`{a}^{b}`"


def _beyond_floats(x: Value) -> bool:
    """|x| > the largest float. For a Fraction the bit lengths settle it without comparing it with
    a float (which converts the float to a Fraction: most of the cost of folding index values)."""
    if isinstance(x, Fraction):
        if abs(x.numerator).bit_length() - x.denominator.bit_length() < 1023:  # |x| < 2^1023
            return False
    return abs(x) > FLOAT_MAX


def _finite(node, result: Value, *operands: Value) -> Value:
    """The result, or FoldError when it is no number (`inf - inf`) or outgrew the floats."""
    if isinstance(result, float) and math.isnan(result):
        raise FoldError(node.span, f"{_describe(node, operands)} has no value", None)
    if _beyond_floats(result) and not any(_beyond_floats(x) for x in operands):
        raise FoldError(node.span, f"{_describe(node, operands)} is beyond the largest number a model can hold "
                                   "(about 1.8e308)", "rescale the quantity, or use a larger unit")
    return result


def _arithmetic(node: A.BinOp, a, b) -> Value:
    op = node.op
    if op == "^":
        return _power(node, a, b)
    if op == "/":
        if b == 0:
            raise FoldError(node.span, "division by zero", None)
        return _finite(node, (Fraction(a) if type(a) is int else a) / b, a, b)  # an int / int is exact
    result = a + b if op == "+" else a - b if op == "-" else a * b
    return _finite(node, result, a, b)


def _power(node: A.BinOp, a, b) -> Value:
    if a == 0 and b < 0:
        raise FoldError(node.span, "division by zero: 0 to a negative power")
    if isinstance(a, (int, Fraction)) and isinstance(b, (int, Fraction)) and b.denominator == 1:
        bits = max(a.numerator.bit_length(), a.denominator.bit_length())
        if abs(b.numerator) * bits <= MAX_EXACT_BITS:
            return _finite(node, Fraction(a) ** b.numerator, a, b)
    x, y = float(a), float(b)
    if x < 0 and math.isfinite(y) and not y.is_integer():
        raise FoldError(node.span, f"{_describe(node, (a, b))} has no real value: a negative number to a fractional power",
                        "take the power of the absolute value, or use an integer exponent")
    try:
        result = x ** y
    except OverflowError:
        result = math.inf
    return _finite(node, result, a, b)


def _call(node: A.Call, row, args: list) -> Optional[Value]:
    if row.units == BRANCHES:  # ifelse: a condition, then two numbers
        condition, a, b = args
        if not (isinstance(condition, bool) and _is_number(a) and _is_number(b)):
            return None
        return row.value(condition, a, b)
    if not all(_is_number(a) for a in args):
        return None
    try:
        result = row.value(*args)
    except OverflowError:
        result = math.inf
    except (ValueError, ZeroDivisionError):
        raise FoldError(node.span, f"{_describe(node, args)} has no real value", None)
    return _finite(node, result, *args)


# ---------------------------------------------------------------- declared values
class DeclaredValues:
    """The value of every const and param default in base units (a param counts at its default:
    where a fit starts), folded once each. The unit checker (E501 windows, E502 bounds, exact
    exponents) and lowering (defaults, bounds, event times) read the same object, so the numbers
    a model checks against are the numbers it runs with.

    `unit_of` gives a symbol's declared unit (None when unknown); `unit_scale` the scale of a
    unit annotation (None when unknown)."""

    def __init__(self, table, unit_of: Callable, unit_scale: UnitScale):
        self.table, self.unit_of, self.unit_scale = table, unit_of, unit_scale
        self._base: dict[str, Optional[Value]] = {}

    def base(self, name: str) -> Optional[Value]:
        """A const's value or a param's default in base units; None for other names, names
        on a cycle (E304) and values with an error of their own (E504 at their line)."""
        if name in self._base:
            return self._base[name]
        self._base[name] = None
        sym = self.table.symbols.get(name)
        value = None
        if sym is not None and sym.kind in ("const", "param"):
            unit = self.unit_of(sym)
            if unit is not None:
                try:
                    value = self.in_base(sym.decl.value, unit)
                except FoldError:
                    pass
        self._base[name] = value
        return value

    def in_base(self, expr, unit) -> Optional[Value]:
        """The value of `expr` written where `unit` is declared, in base units: a bare number
        is a number in `unit` (LANGUAGE.md §3); raises FoldError."""
        if is_bare(expr):
            value = fold(expr)
            return value * unit.scale if value is not None and not isinstance(value, bool) else None
        return fold(expr, self.base, self.unit_scale)

    def value_in(self, expr, unit) -> Optional[float]:
        """The value of a constant expression as a float in `unit`; None when it is not constant
        or has no value (names.py reports E504)."""
        try:
            if is_bare(expr):  # already a number in `unit`
                value, unit = fold(expr), None
            else:
                value = fold(expr, self.base, self.unit_scale)
        except FoldError:
            return None
        if value is None or isinstance(value, bool):
            return None
        return float(value) if unit is None else float(value / unit.scale)

    def exponent(self, expr) -> Optional[Fraction]:
        """The exact value of a dimensionless constant exponent (numbers and dimensionless consts,
        annotations converted: `(1 [h]) / (1 [day])` is 1/24), else None."""
        def const(name: str) -> Optional[Value]:
            sym = self.table.symbols.get(name)
            unit = self.unit_of(sym) if sym is not None and sym.kind == "const" else None
            return self.base(name) if unit is not None and unit.is_dimensionless else None
        try:
            value = fold(expr, const, self.unit_scale)
        except FoldError:
            return None
        return value if isinstance(value, Fraction) else None
