"""Constant folding (compiler/fold.py): one evaluator and one rule set for the checker and lowering
(docs/language.md §5, "Constants")."""
from __future__ import annotations

import math
from fractions import Fraction

import pytest

import nimm_dsl
from nimm_dsl.compiler.fold import FoldError, fold
from nimm_dsl.grammar.parser import parse


def value(text: str, **kw):
    program, diagnostics = parse(f"let z = {text}")
    assert diagnostics == []
    return fold(program.statements[0].value, **kw)


def failure(text: str) -> tuple[int, int, str]:
    with pytest.raises(FoldError) as err:
        value(text)
    return err.value.span.column, err.value.span.end_column, err.value.message


@pytest.mark.parametrize("text, expected", [
    ("2^3^2", 512),  # right-associative: 2^(3^2)
    ("(2^3)^2", 64),
    ("-2^2", -4),  # ^ binds tighter than unary minus
    ("(-2)^2", 4),
    ("2^-1", Fraction(1, 2)),
    ("--3", 3),
    ("-(1 - 3)", 2),
    ("1 - 2 - 3", -4),
    ("8 / 4 / 2", 1),
    ("0.1 + 0.2", Fraction(3, 10)),  # exact decimals: 0.1 + 0.2 is 3/10
    ("1/3 * 3", 1),
    ("min(1/3, 0.5) + max(-1, -2)", Fraction(-2, 3)),
    ("abs(-3/4)", Fraction(3, 4)),
    ("ifelse(1 < 2 and not 2 < 1, 3, 4)", 3),
])
def test_exact_arithmetic_follows_the_parse_tree(text, expected):
    result = value(text)
    assert isinstance(result, Fraction) and result == expected


@pytest.mark.parametrize("text, expected", [
    ("2 * pi", 2 * math.pi), ("2^0.5", math.sqrt(2)), ("exp(1) * 2", 2 * math.e),
    ("log10(1000)", 3.0), ("-inf", -math.inf), ("inf * 2", math.inf),
])
def test_inexact_values_are_floats(text, expected):
    result = value(text)
    assert isinstance(result, float) and result == pytest.approx(expected, rel=1e-15)


def test_booleans_are_not_numbers_and_names_need_a_lookup():
    assert value("1 < 2") is True
    assert value("(1 < 2) * 2") is None  # E407 is the unit checker's
    assert value("k * 2") is None
    assert value("k * 2", names={"k": Fraction(3)}.get) == 6


def test_unit_annotations_scale_only_when_asked():
    assert value("1 [h] + 30 [min]") == 31  # annotations ignored: for signs and counts
    scales = {"h": Fraction(3600), "min": Fraction(60)}
    with_units = value("1 [h] + 30 [min]", unit_scale=lambda unit: scales.get(unit.name))
    assert with_units == 5400  # seconds: the base unit
    assert value("2 [parsec]", unit_scale=lambda unit: scales.get(unit.name)) is None  # unknown unit


@pytest.mark.parametrize("text, span, message", [
    ("1 / 0", (9, 14), "division by zero"),
    ("2 * (1 / (3 - 3))", (13, 26), "division by zero"),  # at the (parenthesised) division
    ("x * (1/0)", (13, 18), "division by zero"),  # found even when the whole is not constant
    ("0^-1", (9, 13), "division by zero: 0 to a negative power"),
    ("1e999", (9, 14), "`1e999` is beyond the largest number a model can hold (about 1.8e308)"),
    ("10^400", (9, 15), "`10^400` is beyond the largest number a model can hold (about 1.8e308)"),
    ("1e300 * 1e300", (9, 22), "`1e+300 * 1e+300` is beyond the largest number a model can hold (about 1.8e308)"),
    ("exp(1000)", (9, 18), "`exp(1000)` is beyond the largest number a model can hold (about 1.8e308)"),
    ("(-8)^(1/3)", (9, 19), "`(-8)^0.333333` has no real value: a negative number to a fractional power"),
    ("log(0)", (9, 15), "`log(0)` has no real value"),
    ("sqrt(-1)", (9, 17), "`sqrt(-1)` has no real value"),
    ("inf - inf", (9, 18), "`inf - inf` has no value"),
    ("0 * inf", (9, 16), "`0 * inf` has no value"),
])
def test_operations_without_a_finite_value_are_errors_at_the_operation(text, span, message):
    assert failure(text) == (*span, message)


# ---------------------------------------------------------------- through the checker: E504
HEADER = "model m\ntime t [day]\n"
DECAY = "state x [1] = 1\nder(x) = -k * x\nobserve y [1] = x\n"  # lines 4-6


def e504(line3: str, extra: str = "") -> list[tuple[int, int, str]]:
    found = nimm_dsl.check(HEADER + line3 + "\n" + DECAY + extra)
    return [(d.span.line, d.span.column, d.message) for d in found if d.code == "E504"]


@pytest.mark.parametrize("line, column, message", [
    ("param k [1/day] = 1/0 in [0, 2]", 19, "division by zero"),
    ("param k [1/day] = 1e999 in [0, 2]", 19, "`1e999` is beyond the largest number a model can hold (about 1.8e308)"),
    ("param k [1/day] = 1 in [0, 1e999]", 28, "`1e999` is beyond the largest number a model can hold (about 1.8e308)"),
    ("param k [1/day] = inf in [0, inf]", 19, "the default of param `k` is infinite; expected a finite number"),
    ("param k [1/day] = (-8)^(1/3) in [-9, 9]", 19,
     "`(-8)^0.333333` has no real value: a negative number to a fractional power"),
])
def test_e504_in_a_default_and_its_bounds(line, column, message):
    assert e504(line) == [(3, column, message)]


def test_e504_through_a_const_and_anywhere_in_an_equation():
    assert e504("param k [1/day] = 1 / z in [0, 2]", "const z [1] = 0\n") == [(3, 19, "division by zero")]
    assert e504("param k [1/day] = 1 in [0, 2]", "let w = x * log(1 - 1)\nobserve v [1] = w\n") == [
        (7, 13, "`log(0)` has no real value")]
    # Outside positions restricted to constants a const may be `set` in a window: not folded.
    assert e504("param k [1/day] = 1 in [0, 2]", "const z [1] = 0\nlet w = x / z\nobserve v [1] = w\n") == []


def test_infinite_bounds_and_set_windows_are_fine_but_event_times_are_not():
    assert e504("param k [1/day] = 1 in [-inf, inf]", "set k = 2 from 1 to inf\n") == []
    assert e504("param k [1/day] = 1 in [0, 2]", "dose d: x += 1 at inf\n") == [
        (7, 19, "`at` of dose `d` is infinite; expected a finite number")]
    # one fault, one code: an infinite count is not also E503
    found = nimm_dsl.check(HEADER + "param k [1/day] = 1 in [0, 2]\n" + DECAY + "dose d: x += 1 at 0 every 1 times inf\n")
    assert [(d.code, d.span.column) for d in found] == [("E504", 35)]


# ---------------------------------------------------------------- one rule set: checker and lowering agree
def test_pi_in_a_bare_default_is_a_number_in_the_declared_unit():
    # The checker read `2 * pi` as 2π per hour while lowering used to read it as 2π in base
    # units (2π * 3600 per hour): E502 passed a default the fit then started far outside.
    model = nimm_dsl.load_source(HEADER + "param k [1/h] = 2 * pi in [0, 10]\n" + DECAY)
    assert model.ir.param("k").default == pytest.approx(2 * math.pi, rel=1e-15)
    assert [d.code for d in nimm_dsl.check(HEADER + "param k [1/h] = 4 * pi in [0, 10]\n" + DECAY)] == ["E502"]


def test_defaults_and_times_lower_to_the_numbers_the_checker_compared():
    source = (HEADER + "const w [h] = 36\nparam k [1/day] = 48 [1/h] / 1000 in [0, 2]\n" + DECAY
              + "set k = 2 from w to 2 [day]\ndose d: x += 1 at w / 2 every 1 [day] times 2\n")
    model = nimm_dsl.load_source(source)
    assert model.ir.param("k").default == pytest.approx(48 * 24 / 1000, rel=1e-15)
    assert (model.ir.sets[0].start, model.ir.sets[0].end) == (1.5, 2.0)  # 36 h is 1.5 days
    assert model.ir.doses[0].times == [0.75, 1.75]
    # 49 per hour / 1000 is 1.176 per day: outside [0, 1], and E502 says so in the declared unit
    bad = nimm_dsl.check(HEADER + "param k [1/day] = 49 [1/h] / 1000 in [0, 1]\n" + DECAY)
    assert [(d.code, d.message) for d in bad] == [
        ("E502", "the default of `k` is 1.176 [1/day], outside its bounds [0, 1]")]


def test_a_memo_gives_each_fold_the_value_and_type_of_a_fold_without_it():
    """One memo across many folds of a tree with other names (an index family's kernel, once per
    element): equal operands of other types are not confused (2 and 2.0), and an error is
    raised again on every fold that meets it."""
    program, _ = parse("let z = min(d, 2) / 3 + 1 / (d - 5)")
    tree = program.statements[0].value
    memo: dict = {}
    for d in [Fraction(2), 2.0, Fraction(7), Fraction(2), 2.0, Fraction(7)]:
        names = lambda name, d=d: d  # noqa: E731
        plain, remembered = fold(tree, names), fold(tree, names, memo=memo)
        assert remembered == plain and type(remembered) is type(plain)
    assert type(fold(tree, lambda name: 2.0, memo=memo)) is float
    assert fold(tree, lambda name: Fraction(2), memo=memo) == Fraction(2, 3) - Fraction(1, 3)
    for _ in range(2):
        with pytest.raises(FoldError, match="division by zero"):
            fold(tree, lambda name: Fraction(5), memo=memo)


@pytest.mark.parametrize("text, expected", [
    ("d - k", -1), ("d / k", Fraction(2, 3)), ("k ^ -1", Fraction(1, 3)), ("d ^ 2 / k", Fraction(4, 3)),
    ("abs(d - k) / 3", Fraction(1, 3)), ("d * 0.5", Fraction(1)),
])
def test_whole_number_index_values_stay_exact(text, expected):
    # an index family folds its members' values as ints (compiler/families.py); ints divide and
    # take powers exactly, as Fractions do
    found = value(text, names={"d": 2, "k": 3}.get)
    assert found == expected and type(found) is type(expected)
