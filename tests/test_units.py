"""Unit algebra: exact exponents and scales, names from pint, the SI naming rule."""
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nimm_dsl.compiler import units as U
from nimm_dsl.compiler.units import ONE, Unit, UnitError, UnitSystem


@pytest.fixture(scope="module")
def pint_registry():
    return U.pint_registry()


@pytest.fixture
def system():
    return UnitSystem()


def test_sqrt_and_rational_powers_are_exact(system):
    m = system.lookup("m")
    assert (m ** 2).sqrt() == m
    assert str((m ** 2).sqrt()) == "[m]"
    assert (m ** Fraction(1, 3)) ** 3 == m
    assert (m ** Fraction(1, 2)).dimensions == {"[length]": Fraction(1, 2)}
    assert str(m ** Fraction(1, 2)) == "[m^(1/2)]"
    litre = system.lookup("L")
    assert (litre ** Fraction(1, 3)).scale == Fraction(1, 10)  # exact root of 1/1000


def test_scales_are_exact(system):
    assert system.lookup("mg") / system.lookup("L") == system.lookup("g") / system.lookup("m") ** 3
    assert system.lookup("day").factor_to(system.lookup("h")) == 24
    molar = system.lookup("M")
    assert molar.scale == 1000 and molar.same_dims(system.lookup("mol") / system.lookup("m") ** 3)
    assert molar == system.lookup("mol") / system.lookup("L")
    with pytest.raises(ValueError):
        system.lookup("mg").factor_to(system.lookup("L"))


def test_labels_simplify(system):
    person = system.add_base("person")
    day = system.lookup("day")
    assert str(person / day) == "[person/day]"
    assert str(person * person / person) == "[person]"
    assert str(system.lookup("L") / (system.lookup("h") * system.lookup("kg"))) == "[L/(h*kg)]"
    assert str(ONE / day ** 2) == "[1/day^2]"
    assert str(person / person) == "[1]" and (person / person).is_dimensionless


def test_common_table_agrees_with_pint(pint_registry):
    for name in U.COMMON_NAMES:
        factor, _ = pint_registry.get_base_units(name)
        dims = {d: Fraction(e) for d, e in pint_registry.get_dimensionality(name).items()}
        unit = U._library_unit(name)
        assert unit.dimensions == dims, name
        assert unit.scale == U.exact(float(factor)), name


def test_embedded_name_index_matches_pint(pint_registry):
    assert U._embedded_index() == U.pint_name_index(pint_registry), (
        "pint's unit names changed; regenerate the constants at the end of units.py with:\n"
        + U.embedded_index_source(pint_registry))


def test_uncommon_library_units_come_from_pint(system):
    au = system.lookup("au")
    assert au.dimensions == {"[length]": 1} and au.scale == 149597870700
    assert system.lookup("kcal").scale == 4184


@pytest.mark.parametrize("name", ["person", "cell", "pelt", "hare", "kcell", "cells"])
def test_count_words_are_not_library_units(system, name):
    with pytest.raises(UnitError) as err:
        system.lookup(name)
    assert err.value.code == "E406" and f"`{name}`" in err.value.message


def test_model_units(system):
    cell = system.add_base("cell")
    kcell = system.add_derived("kcell", Fraction(1000), cell)
    assert kcell.factor_to(cell) == 1000 and str(kcell) == "[kcell]"
    with pytest.raises(UnitError) as err:
        system.add_base("au")
    assert err.value.code == "E202" and "astronomical unit" in err.value.message


def test_unknown_unit_hint(system):
    with pytest.raises(UnitError) as err:
        system.lookup("dya")
    assert err.value.hint.startswith("did you mean `day`?")


def test_offset_temperature_does_not_convert_to_kelvin(system):
    # A scale factor alone would make 1 degC equal 1 K; degC keeps a dimension of its own.
    assert not system.lookup("degC").same_dims(system.lookup("K"))
    assert system.lookup("degC").same_dims(system.lookup("celsius"))
    assert system.lookup("delta_degC").same_dims(system.lookup("K"))


_BASES = ["m", "s", "kg", "mol", "day", "mg", "L", "uM", "h"]
units_strategy = st.builds(
    lambda name, num, den: U._library_unit(name) ** Fraction(num, den),
    st.sampled_from(_BASES), st.integers(-3, 3), st.integers(1, 3))


@settings(max_examples=60, deadline=None)
@given(units_strategy, units_strategy, units_strategy)
def test_products_are_associative_and_invertible(a, b, c):
    assert (a * b) * c == a * (b * c)
    assert (a * b).dims == (b * a).dims
    quotient = a / a
    assert quotient.is_dimensionless and quotient.scale == 1
    assert (a * b) / b == a
    assert (a ** 2).sqrt() == a


def test_unit_arithmetic_is_remembered_by_operand_identity_without_mixing_labels():
    from nimm_dsl.compiler import units as U

    system = U.UnitSystem()
    mg, L, g, m, h = (system.lookup(n) for n in ("mg", "L", "g", "m", "h"))
    conc = mg / L
    assert conc is mg / L  # the second quotient is the remembered one
    other = g / m ** 3
    assert conc == other and conc is not other
    assert (conc / h).label == "mg/(L*h)" and (other / h).label == "g/(h*m^3)"
    for i in range(U._MAX_ARITHMETIC + 10):  # the table is emptied, results stay right
        assert (U.Unit.make({f"d{i}": 1}, 2, {f"d{i}": 1}) * h).scale == 2 * h.scale
    assert (mg / L).label == "mg/L" and (mg / L) == conc
