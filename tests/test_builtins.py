"""The built-in table (compiler/builtins.py) is the one list every phase reads: each row checks,
folds, lowers, and computes the same number in both back ends and in the fitter's numpy walk."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import sympy as sp

import nimm_dsl
from nimm_dsl.compiler.builtins import BACKEND_FUNCTIONS, BRANCHES, BUILTINS, ONE_DIMENSION
from nimm_dsl.grammar.words import BUILTIN_FUNCTIONS

ROOT = Path(__file__).resolve().parents[1]
A_VALUES = [0.3, 0.7, 0.9]  # inside every function's domain; a < b, a > b and a == b below
B_VALUES = [0.7, 0.3, 0.9]


def call_text(row) -> str:
    """A call of the row with the static model's inputs `a` and `b` as arguments."""
    if row.units == BRANCHES:
        return f"{row.name}(a < b, a, b)"
    return f"{row.name}({', '.join(['a', 'b'][:row.arity])})"


def expected(row, a: float, b: float) -> float:
    if row.units == BRANCHES:
        return row.value(a < b, a, b)
    return row.value(*[a, b][:row.arity])


STATIC = "model every_builtin\ninput a [1]\ninput b [1]\n" + "".join(
    f"observe y_{name} [1] = {call_text(row)}\n" for name, row in BUILTINS.items())


def test_the_table_has_exactly_the_reserved_names():
    assert set(BUILTINS) == BUILTIN_FUNCTIONS


def test_every_row_checks_clean_and_arity_comes_from_the_table():
    assert nimm_dsl.check(STATIC) == []
    for name, row in BUILTINS.items():
        wrong = ", ".join(["a"] * (row.arity + 1))
        found = [d for d in nimm_dsl.check(STATIC + f"observe z [1] = {name}({wrong})\n") if d.code == "E205"]
        assert [d.message for d in found] == [f"built-in `{name}` takes {row.arity} argument"
                                              f"{'s' * (row.arity != 1)}, found {row.arity + 1}"]


@pytest.mark.parametrize("name", sorted(BUILTINS))
def test_float_form_and_sympy_form_agree(name):
    row = BUILTINS[name]
    for a, b in zip(A_VALUES + [-0.4], B_VALUES + [0.2]):
        if row.units == BRANCHES:
            form = row.sympy(sp, sp.Float(a) < sp.Float(b), sp.Float(a), sp.Float(b))
        else:
            form = row.sympy(sp, *[sp.Float(a), sp.Float(b)][:row.arity])
        try:
            value = expected(row, a, b)
        except ValueError:  # log(-0.4): outside the domain in both forms
            assert not form.is_real
            continue
        assert float(form) == pytest.approx(value, rel=1e-14)


@pytest.mark.parametrize("backend", ["casadi", "torch"])
def test_every_row_computes_its_float_form_in_each_back_end(backend):
    model = nimm_dsl.load_source(STATIC)
    result = model.compile(backend).simulate(inputs={"a": A_VALUES, "b": B_VALUES})
    for name, row in BUILTINS.items():
        want = [expected(row, a, b) for a, b in zip(A_VALUES, B_VALUES)]
        assert np.asarray(result[f"y_{name}"]) == pytest.approx(want, rel=1e-12), name


def test_every_row_computes_its_float_form_in_the_fitters_numpy_walk():
    from nimm_dsl.compiler.ir import walk
    from nimm_dsl.runtime.fit import array_walk_ops

    ir = nimm_dsl.load_source(STATIC).ir
    env = {u.symbol: np.array(v) for u, v in zip(ir.inputs, (A_VALUES, B_VALUES))}
    ops = array_walk_ops(np, float)
    for observe in ir.observes:
        row = BUILTINS[observe.name[2:]]
        want = [expected(row, a, b) for a, b in zip(A_VALUES, B_VALUES)]
        assert walk(observe.expr, env, ops) == pytest.approx(want, rel=1e-12), observe.name


def test_back_ends_implement_exactly_the_table_operations():
    import torch

    from nimm_dsl.backends.casadi_backend import CASADI_OPS
    from nimm_dsl.backends.torch_backend import _Tape
    from nimm_dsl.runtime.fit import array_walk_ops

    assert set(CASADI_OPS.funcs) == BACKEND_FUNCTIONS
    assert set(_Tape([], torch.float64, "cpu").ops().funcs) == BACKEND_FUNCTIONS
    assert set(array_walk_ops(np, float).funcs) == BACKEND_FUNCTIONS


@pytest.mark.parametrize("name", sorted(BUILTINS))
def test_constant_calls_fold_with_the_float_form(name):
    # A names-free value in a declared-unit position is folded (compiler/fold.py) and becomes
    # the param's default: it must be the row's float form.
    row = BUILTINS[name]
    args = "0.3 < 0.7, 0.3, 0.7" if row.units == BRANCHES else ", ".join(["0.3", "0.7"][:row.arity])
    model = nimm_dsl.load_source(f"model m\nparam p [1] = {name}({args}) in [-10, 10]\nobserve y [1] = p\n")
    assert model.ir.params[0].default == pytest.approx(expected(row, 0.3, 0.7), rel=1e-15)


def test_unit_rules_come_from_the_table():
    head = "model m\nparam x [m] = 1 in [0, 2]\nparam y [s] = 1 in [0, 2]\n"
    for name, row in BUILTINS.items():
        if row.units == BRANCHES:
            text, code = f"{name}(x > x, x, y)", "E401"
        elif row.units == ONE_DIMENSION:
            text, code = f"{name}(x, y)", "E401"
        elif row.units == "dimensionless":
            text, code = f"{name}(x)", "E403"
        else:  # keeps or halves the unit: no error, the result's unit is checked below
            continue
        found = {d.code for d in nimm_dsl.check(head + f"observe o [1] = {text}\n") if d.is_error}
        assert found == {code}, (name, found)
    units = nimm_dsl.load_source(head + "let r = sqrt(x * x * y * y)\nlet q = abs(x)\nobserve o [1] = r / q / y\n")
    lets = {let.name: let.unit for let in units.ir.lets}
    assert lets == {"r": "m*s", "q": "m"}


def test_every_builtin_is_documented_for_modelers():
    # The language model's guide is generated from the table (tests/test_prompts.py).
    guide = (ROOT / "docs" / "language.md").read_text()
    section = guide[guide.index("## 5. Expressions"):guide.index("## 6.")]
    quoted = {word for text in re.findall(r"`([^`]*)`", section) for word in re.findall(r"\w+", text)}
    assert set(BUILTINS) <= quoted
