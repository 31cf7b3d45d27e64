"""Unit algebra: exact exponents and scales, names from pint, the SI naming rule."""
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

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
    # Our own table must not drift from the library: same dimension, same factor, every entry.
    for name in U.COMMON_NAMES:
        factor, _ = pint_registry.get_base_units(name)
        dims = {d: Fraction(e) for d, e in pint_registry.get_dimensionality(name).items()}
        unit = U.library_unit(name)
        assert unit.dimensions == dims, name
        assert unit.scale == U.exact(float(factor)), name


def test_library_names_are_pints_names(pint_registry):
    # The names read from pint's definition file agree with pint's public API, both ways.
    names = U.library_names()
    assert names is not None
    for name in names.unit_symbols | names.unit_names:
        assert pint_registry.get_name(name) == names.canonical[name], name
    for name in pint_registry:  # pint's own list of unit names, symbols and aliases
        assert names.split(name) is not None, name


@pytest.mark.parametrize("name, dims, scale", [
    ("MBq", {"[time]": -1}, 10**6),
    ("kBq", {"[time]": -1}, 1000),
    ("ppm", {}, Fraction(1, 10**6)),
    ("count", {}, 1),
    ("percent", {}, Fraction(1, 100)),
    ("uM", {"[substance]": 1, "[length]": -3}, Fraction(1, 1000)),
    ("mmHg", {"[mass]": 1, "[length]": -1, "[time]": -2}, Fraction("133.322387415")),
    ("inch", {"[length]": 1}, Fraction(254, 10000)),
    ("inches", {"[length]": 1}, Fraction(254, 10000)),
    ("au", {"[length]": 1}, 149597870700),
    ("kcal", {"[mass]": 1, "[length]": 2, "[time]": -2}, 4184),
    ("milligram", {"[mass]": 1}, Fraction(1, 10**6)),
    ("delta_degC", {"[temperature]": 1}, 1),
])
def test_library_units_have_their_dimension_and_exact_factor(system, name, dims, scale):
    unit = system.lookup(name)
    assert unit.dimensions == {d: Fraction(e) for d, e in dims.items()}
    assert unit.scale == scale
    assert str(unit) == f"[{name}]"


PINT_PROBE = '''
import sys, pathlib
import nimm_dsl
root = pathlib.Path(sys.argv[1])
errors = []
for path in sorted((root / "examples").glob("*.nimm")):
    errors += [(path.name, d.code) for d in nimm_dsl.check(path.read_text()) if d.is_error]
errors += [d.code for d in nimm_dsl.check(sys.argv[2]) if d.is_error]
print(errors, "pint" in sys.modules)
'''
EVERYDAY_UNITS = """model m
unit person
unit au
param k [1/h] = 1
param a [person/(L*min)] = 1
param b [MBq/ppm] = 1
param c [hare] = 1
"""


def test_checking_the_examples_and_everyday_units_does_not_import_pint():
    # Importing pint costs ~0.6 s: no shipped example, declared unit or E202/E406 may need it.
    root = Path(__file__).resolve().parents[1]
    done = subprocess.run([sys.executable, "-c", PINT_PROBE, str(root), EVERYDAY_UNITS],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "['E202', 'E406'] False", done.stdout  # `unit au`; `hare`


@pytest.mark.parametrize("name, described", [
    ("au", "astronomical unit"), ("count", "count"), ("mg", "milligram"), ("kBq", "kilobecquerel"),
    ("degC", "degree Celsius"), ("hr", "hour"), ("ug", "microgram"),
])
def test_a_model_unit_may_not_take_a_library_name(system, name, described):
    with pytest.raises(UnitError) as err:
        system.add_base(name)
    assert err.value.code == "E202"
    assert err.value.message == f"`{name}` is already the {described}"


def test_without_pints_definition_file_pint_itself_decides(monkeypatch):
    # A pint release that moves its definition file must not break checking, only slow it.
    monkeypatch.setattr(U, "library_names", lambda: None)
    monkeypatch.setattr(U, "_LIBRARY_UNITS", {})
    system = UnitSystem()
    assert system.lookup("inch").scale == Fraction(254, 10000)
    assert system.lookup("mg").scale == Fraction(1, 10**6)
    assert system.add_base("person").dimensions == {"person": 1}
    with pytest.raises(UnitError) as err:
        system.add_base("au")
    assert err.value.code == "E202"
    with pytest.raises(UnitError) as err:
        system.lookup("pelt")
    assert err.value.code == "E406"


DEFINITIONS = """
# a comment
@defaults
    group = international
@end
kilo- = 1e3 = k-
micro- = 1e-6 = µ- = u- = mu-
semi- = 0.5 = _ = demi-
meter = [length] = m = metre  # trailing comment
[area] = [length] ** 2
@import more.txt
@group Imperial
    inch = 2.54 * centimeter = in = inches
@end
@context(n=1) spectroscopy = sp
    [length] <-> [frequency]: speed_of_light / n / value
@end
@system mks using international
    meter
@end
millennium = 1e3 * year = _ = millennia
degree_Celsius = kelvin; offset: 273.15 = °C = celsius = degC
kelvin = [temperature]; offset: 0 = K
@alias meter = my_meter
"""


def test_read_definitions_follows_pints_file_format():
    imported = []

    def open_import(filename):
        imported.append(filename)
        return ["year = 365.25 * day = a = julian_year"]

    names = U.read_definitions(DEFINITIONS.splitlines(), open_import)
    assert imported == ["more.txt"]
    assert names.prefix_symbols == {"k", "µ", "u", "mu", "demi"}
    assert names.prefix_names == {"kilo", "micro", "semi", "u", "mu", "demi"}
    assert {"m", "in", "a", "°C", "K", "Δ°C", "my_meter"} <= names.unit_symbols
    assert {"meter", "metre", "inch", "inches", "year", "millennium", "millennia", "celsius",
            "delta_degree_Celsius", "delta_celsius", "delta_degC", "my_meter"} <= names.unit_names
    assert "delta_kelvin" not in names.unit_names  # no offset, no delta unit
    assert "group" not in names.unit_names and "n" not in names.unit_symbols
    assert names.canonical_name("uin") == "microinch"
    assert names.canonical_name("kilometres") == "kilometer"
    assert names.canonical_name("kmeter") is None  # a symbol prefix on a long name: not SI
    assert names.canonical_name("my_meter") == "meter"
    assert names.canonical_name("semimillennia") == "semimillennium"


@pytest.mark.parametrize("name", ["person", "cell", "pelt", "hare", "kcell", "cells"])
def test_count_words_are_not_library_units(system, name):
    with pytest.raises(UnitError) as err:
        system.lookup(name)
    assert err.value.code == "E406" and f"`{name}`" in err.value.message


def test_model_units(system):
    cell = system.add_base("cell")
    kcell = system.add_derived("kcell", Fraction(1000), cell)
    assert kcell.factor_to(cell) == 1000 and str(kcell) == "[kcell]"


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
    lambda name, num, den: U.library_unit(name) ** Fraction(num, den),
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
