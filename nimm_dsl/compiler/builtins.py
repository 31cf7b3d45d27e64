"""The built-in functions (docs/language.md §5, LANGUAGE.md §6): one row per function.

Every phase reads this table: names.py the arity (E205), unitcheck.py the unit rule (E401,
E403), fold.py the float form (constant folding), lower.py the sympy form, and each back end
implements the `ir.Ops.funcs` entry named in `op` (tests/test_builtins.py runs every row through
both back ends and the fitter's numpy walk). Adding a function is a row here, its name in
grammar/words.py (the reserved words), and an `op` in each back end if it needs a new one.

The sympy form takes the sympy module as its first argument: `nimm check` never imports sympy.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional

# Unit rules (docs/language.md §4, "Dimension rules").
DIMENSIONLESS = "dimensionless"  # the argument is dimensionless; so is the result
KEEPS_UNIT = "keeps unit"  # the result has the argument's unit
HALVES_EXPONENTS = "halves exponents"  # sqrt: [m^2] -> [m]
ONE_DIMENSION = "one dimension"  # every argument has one dimension; the result has the first one's unit
BRANCHES = "branches"  # a condition, then two numbers of one dimension (the result's)


@dataclass(frozen=True)
class Builtin:
    name: str
    arity: int
    units: str  # one of the unit rules above
    value: Callable  # the float form, for constant folding; Python numbers in, a number out
    sympy: Callable  # (sympy module, *arguments) -> sympy expression, for lowering
    op: Optional[str]  # the `ir.Ops.funcs` entry back ends need; None: lowered to other operations


BUILTINS: dict[str, Builtin] = {b.name: b for b in (
    Builtin("exp", 1, DIMENSIONLESS, math.exp, lambda sp, x: sp.exp(x), "exp"),
    Builtin("log", 1, DIMENSIONLESS, math.log, lambda sp, x: sp.log(x), "log"),
    Builtin("log10", 1, DIMENSIONLESS, math.log10, lambda sp, x: sp.log(x) / sp.log(10), None),
    Builtin("sqrt", 1, HALVES_EXPONENTS, math.sqrt, lambda sp, x: sp.sqrt(x), "sqrt"),
    Builtin("abs", 1, KEEPS_UNIT, abs, lambda sp, x: sp.Abs(x), "abs"),
    Builtin("sin", 1, DIMENSIONLESS, math.sin, lambda sp, x: sp.sin(x), "sin"),
    Builtin("cos", 1, DIMENSIONLESS, math.cos, lambda sp, x: sp.cos(x), "cos"),
    Builtin("tan", 1, DIMENSIONLESS, math.tan, lambda sp, x: sp.tan(x), "tan"),
    Builtin("tanh", 1, DIMENSIONLESS, math.tanh, lambda sp, x: sp.tanh(x), "tanh"),
    Builtin("min", 2, ONE_DIMENSION, min, lambda sp, a, b: sp.Min(a, b), "min"),
    Builtin("max", 2, ONE_DIMENSION, max, lambda sp, a, b: sp.Max(a, b), "max"),
    Builtin("ifelse", 3, BRANCHES, lambda c, a, b: a if c else b,
            lambda sp, c, a, b: sp.Piecewise((a, c), (b, True)), None),  # Ops.where
)}

# What every back end's `ir.Ops.funcs` must provide (and, so that none drifts, nothing more).
BACKEND_FUNCTIONS = frozenset(b.op for b in BUILTINS.values() if b.op is not None)
