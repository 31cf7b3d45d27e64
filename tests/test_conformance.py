"""Conformance of the front end with LANGUAGE.md: each test is a rule of the design reference,
exercised through `nimm_dsl.check` (diagnostics) or the lowered IR (meaning)."""
from __future__ import annotations

import pytest

import nimm_dsl

HEADER = "model m\ntime t [day]\n"  # lines 1-2
# A clean dynamic model on lines 3-6.
DECAY = ("param k [1/day] = 1 in [0, 2]\n"
         "state X [mg] = 1 in [0, inf]\n"
         "der(X) = -k * X\n"
         "observe y [mg] = X\n")


def errors(source: str) -> list[tuple[str, int, int]]:
    return [(d.code, d.span.line, d.span.column) for d in nimm_dsl.check(source) if d.is_error]


def messages(source: str, code: str) -> list[str]:
    return [d.message for d in nimm_dsl.check(source) if d.code == code]


# ---------------------------------------------------------------- §2 lexical structure
def test_model_name_may_not_be_a_keyword():
    assert errors("model model\n" + "time t [day]\n" + DECAY) == [("E203", 1, 7)]


def test_model_name_may_not_be_a_builtin():
    assert errors("model exp\n" + "time t [day]\n" + DECAY) == [("E203", 1, 7)]


# ---------------------------------------------------------------- §3 units
@pytest.mark.parametrize("unit", "s min h day week year g mg ug kg L mL m cm mm mol mmol umol M mM uM nM "
                                 "V mV A uA F uF S mS K J W N Pa Gy".split())
def test_every_listed_unit_name_resolves(unit):
    assert errors(f"model m\nparam p [{unit}] = 1 in [0, 10]\nobserve y [{unit}] = p\n") == []


@pytest.mark.parametrize("unit", ["degC", "degF"])
def test_offset_temperature_units_do_not_convert_to_kelvin(unit):
    # Units are scale factors here, and 1 degC is not 1 K: mixing them is an error, not a
    # silently wrong number. Within one offset unit (differences, Q10 factors) all is well.
    assert errors(f"model m\nparam p [{unit}] = 1 in [0, 10]\nobserve y [K] = p\n") == [("E405", 3, 17)]
    assert errors(f"model m\ninput T [{unit}]\nparam Q [1] = 2 in [1, 3]\n"
                  f"observe y [1] = Q^((T - 20 [{unit}]) / (10 [{unit}]))\n") == []


def test_dimensionless_let_is_a_plain_number():
    # `sqrt(4 m^2) / 1 cm` is 200, not 2 [m/cm]: a let without a declared unit that comes out
    # dimensionless holds the pure number.
    model = nimm_dsl.load_source(HEADER + DECAY + "let r = sqrt(4 [m^2]) / (1 [cm])\n"
                                 "let q = (1 [h]) / (1 [day])\nobserve w [1] = r + q\n")
    lets = {let.name: let for let in model.ir.lets}
    assert float(lets["r"].expr) == 200 and lets["r"].unit == "1"
    assert float(lets["q"].expr) == pytest.approx(1 / 24) and lets["q"].unit == "1"
    assert float(model.ir.observes[1].expr.subs({lets["r"].symbol: 200, lets["q"].symbol: 1 / 24})) \
        == pytest.approx(200 + 1 / 24)


# ---------------------------------------------------------------- §4 declarations
def test_time_without_dynamics_is_an_error():
    # `time` belongs to a model with dynamics; with no states the model is static (and the
    # solvers have nothing to integrate). The hint points to an input for a time column.
    source = "model m\ntime t [day]\nparam k [1/day] = 1 in [0, 2]\nobserve y [1] = k * t\n"
    assert errors(source) == [("E303", 2, 6)]
    hint = [d.hint for d in nimm_dsl.check(source) if d.code == "E303"][0]
    assert "input t [day]" in hint


def test_empty_set_window_is_an_error():
    assert errors(HEADER + DECAY + "set k = 2 from 5 to 1\n") == [("E501", 7, 16)]
    assert errors(HEADER + DECAY + "set k = 2 from 1 [day] to 12 [h]\n") == [("E501", 7, 16)]
    assert errors(HEADER + DECAY + "set k = 2 from 12 [h] to 1 [day]\n") == []


# ---------------------------------------------------------------- §5 neural terms
def test_neural_term_needs_an_argument():
    source = HEADER + DECAY.replace("-k * X", "-k * X + r() * X") + "neural r() [1/day] = mlp()\n"
    assert errors(source) == [("E205", 7, 8)]


def test_neural_penalty_is_a_plain_number():
    source = (HEADER + DECAY.replace("-k * X", "-k * X + r(X / (1 [mg])) * X")
              + "neural r(a) [1/day] = mlp(penalty = 1 [mg])\n")
    assert errors(source) == [("E405", 7, 37)]


def test_negative_hidden_width_is_named():
    source = (HEADER + DECAY.replace("-k * X", "-k * X + r(X / (1 [mg])) * X")
              + "neural r(a) [1/day] = mlp(hidden = [8, -1])\n")
    assert errors(source) == [("E503", 7, 40)]
    assert messages(source, "E503") == ["`hidden` widths must be positive whole numbers, found -1"]


# ---------------------------------------------------------------- §6 expressions
def test_calling_pi_says_it_is_a_constant():
    source = HEADER + DECAY + "observe w [1] = pi()\n"
    assert errors(source) == [("E204", 7, 17)]


# ---------------------------------------------------------------- §7 noise
@pytest.mark.parametrize("noise, column", [("normal(sigma = 0)", 37), ("normal(sigma = -1)", 37),
                                           ("lognormal(sigma = -0.1)", 40)])
def test_sigma_must_be_positive(noise, column):
    assert errors(HEADER + DECAY + f"observe w [mg] = X ~ {noise}\n") == [("E503", 7, column)]


def test_time_is_not_blamed_when_the_state_line_did_not_parse():
    assert errors(HEADER + "state X [mg] = = 1\nobserve y [1] = 1\n") == [("E100", 3, 16)]
