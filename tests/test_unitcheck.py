"""The unit check: each unit diagnostic at its line and column, and clean models stay clean."""
from fractions import Fraction
from pathlib import Path

import pytest

from nimm_dsl.compiler.check import check_source

HEAD = "model m\ntime t [day]\nunit person\n"  # lines 1-3; a model's own lines start at line 4


def unit_diags(body: str, head: str = HEAD):
    checked = check_source(head + body)
    # E303 left out: many bodies here have no states, so their `time` line is only a time unit.
    return checked, [d for d in checked.diagnostics
                     if (d.code[1] in "345" and d.code != "E303") or d.code == "E307"]


def only(body: str, code: str, line: int, column: int, head: str = HEAD):
    checked, diags = unit_diags(body, head)
    found = [(d.code, d.span.line, d.span.column) for d in diags if d.is_error]
    assert found == [(code, line, column)], [(d.code, d.span.line, d.span.column, d.message) for d in diags]
    return next(d for d in diags if d.code == code)


SIR = """
const N [person] = 763
param gamma [1/day] = 0.5 in [0.05, 2]
state I [person] = 1 in [0, inf]
let infection = gamma * I
observe y [person] = I
"""


def test_e401_points_at_the_mismatched_operand_with_a_fix_hint():
    d = only(SIR + "der(I) = infection - gamma\n", "E401", 10, 22)
    assert d.message == "cannot subtract [1/day] from [person/day]"
    assert d.hint == "did you mean `gamma * I`?"


def test_e402_der_unit():
    d = only(SIR + "der(I) = infection / gamma\n", "E402", 10, 10)
    assert "[person/day^2]" not in d.message and "[person]" in d.message and "expected [person/day]" in d.message
    d = only(SIR + "der(I) = infection * gamma\n", "E402", 10, 10)
    assert "der(I) has unit [person/day^2], expected [person/day]" in d.message


def test_e402_flow_rate_and_e307_flow_ends():
    body = "state C [mg] = 0\nder(I) = 0 [person/day]\nflow C -> = gamma\n"
    only(SIR + body, "E402", 12, 13)
    body = "state C [mg] = 0\nflow C -> I = gamma * C\n"
    only(SIR + body, "E307", 11, 6)


def test_e403_dimensionless_argument_hint_names_a_reference():
    d = only(SIR + "der(I) = exp(I) * gamma * I\n", "E403", 10, 14)
    assert d.hint == "divide by a reference scale such as `N`"


def test_e404_exponents():
    only(SIR + "der(I) = I * gamma^gamma\n", "E404", 10, 20)
    only(SIR + "der(I) = I^gamma\n", "E404", 10, 12)  # dimensioned base, non-constant exponent


def test_e405_declared_value_and_bare_numbers():
    only("param k [1/day] = 2 [day] in [0, 5]\n", "E405", 4, 19)
    checked, diags = unit_diags("param k [1/day] = 1/7 in [0, 5]\n")
    assert not diags
    value = checked.program.statements[-1].value
    assert str(checked.units.expr_units[value]) == "[1/day]"


def test_e405_dose_and_time_positions():
    body = "state A [mg] = 0\nder(A) = 0 [mg/day]\ndose d: A += 2 [L] at 1 [h]\n"
    only(body, "E405", 6, 14)
    body = "state A [mg] = 0\nder(A) = 0 [mg/day]\ndose d: A += 2 at 1 [mg]\n"
    only(body, "E405", 6, 19)


def test_e406_unknown_unit_at_its_name():
    d = only("param k [1/dya] = 1\n", "E406", 4, 12)
    assert d.hint.startswith("did you mean `day`?")
    only("param k [pelt] = 1\n", "E406", 4, 10)


def test_e407_booleans_and_numbers():
    only(SIR + "der(I) = ifelse(I, 1, 2) * gamma * I\n", "E407", 10, 17)
    only(SIR + "der(I) = (I > N) * gamma * I\n", "E407", 10, 10)


def test_e502_default_outside_bounds_with_exact_conversion():
    only("param k [1/h] = 1 [1/day] in [1, 2]\n", "E502", 4, 17)
    checked, diags = unit_diags("param k [1/h] = 48 [1/day] in [1, 2]\n")
    assert not diags  # 48/day is 2/h: on the bound


def test_unknown_names_never_cascade():
    checked, diags = unit_diags(SIR + "der(I) = nothing - gamma\n")
    assert not diags
    assert any(d.code == "E201" for d in checked.diagnostics)


def test_exact_exponents_and_sqrt():
    checked, diags = unit_diags("param a [m^2] = 4\nlet r = sqrt(a)\nlet c = a^(3/2)\nlet d = a^0.5\n",
                                "model m\ntime t [day]\n\n")
    units = checked.units.declared
    assert str(units["r"]) == "[m]" and str(units["c"]) == "[m^3]" and units["d"] == units["r"]
    assert units["d"].dimensions == {"[length]": Fraction(1)}


from language_example import FLU  # noqa: E402  (LANGUAGE.md §1, verbatim)

PK = """model pk "hours, days and mg/L together"
time t [h]
param ka [1/h]   = 1.6 in [0.1, 10]
param V  [L]     = 33  in [5, 200]
param CL [L/day] = 67  in [5, 500]
param Km [mg/L]  = 2   in [0.1, 10]
state Ag [mg]    = 0 in [0, inf]
state C  [mg/L]  = 0 in [0, inf]
let elim = CL / V * C / (1 + C / Km)
der(Ag) = -ka * Ag
der(C)  = ka * Ag / V - elim + 0.1 [ug/(mL*day)] * exp(-t / 12 [h])
observe conc [ug/mL] = C ~ normal(sigma = 0.2)
observe conc_log [mg/L] = C ~ lognormal(sigma = 0.1)
dose D: Ag += 300 at 0 every 0.5 [day] times 6
set CL = CL * 2 from 1 [day] to 48
"""


@pytest.mark.parametrize("source, time_unit", [(FLU, "[day]"), (PK, "[h]")])
def test_clean_models_have_no_unit_errors(source, time_unit):
    checked = check_source(source)
    assert [d for d in checked.diagnostics if d.is_error] == []
    units = checked.units
    assert str(units.time_unit) == time_unit
    # every expression node of every statement got a unit (booleans excepted: none here)
    assert all(u is not None for u in units.expr_units.values())


def test_pk_let_is_inferred_in_a_mixed_scale_unit():
    units = check_source(PK).units
    assert units.declared["elim"].same_dims(units.declared["C"] / units.time_unit)
    assert units.declared["elim"].factor_to(units.declared["C"] / units.time_unit) == Fraction(1, 24)
