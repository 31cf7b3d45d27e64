"""Name resolution and structure checks: each code at its line and column, and the NameInfo graph."""
from __future__ import annotations

import textwrap

import pytest

from nimm_dsl.compiler.check import check_source
from nimm_dsl.compiler.names import NameInfo, check_names
from nimm_dsl.compiler.symbols import build_symbol_table
from nimm_dsl.grammar.parser import parse

from language_example import FLU  # noqa: E402  (LANGUAGE.md §1, verbatim)

# Line 1 is the header, line 2 the time; a snippet's own lines start at line 3.
HEADER = "model m\ntime t [day]\n"


def names_of(source: str) -> tuple[NameInfo, list]:
    """Parse, build the symbol table and run only the checks of this module."""
    program, parse_diags = parse(source, "m.nimm")
    assert [d for d in parse_diags if d.is_error] == [], parse_diags
    table, _ = build_symbol_table(program, "m.nimm")
    return check_names(program, table, "m.nimm")


def diags(body: str, header: str = HEADER) -> list:
    return names_of(header + textwrap.dedent(body))[1]


def where(diagnostics, code: str) -> list[tuple[int, int]]:
    return [(d.span.line, d.span.column) for d in diagnostics if d.code == code]


def only(diagnostics, code: str):
    found = [d for d in diagnostics if d.code == code]
    assert len(found) == 1, diagnostics
    return found[0]


def errors(diagnostics) -> list:
    return [d for d in diagnostics if d.is_error]


# ---------------------------------------------------------------- the reference example
def test_language_example_has_no_errors_and_only_the_true_warning():
    model = check_source(FLU, "flu.nimm")
    assert errors(model.diagnostics) == []
    # R is a sink nothing observed depends on: the only warning that truly applies.
    assert [(d.code, d.span.line, d.span.column) for d in model.diagnostics] == [("W702", 14, 7)]


def test_language_example_dependency_graph():
    info, found = names_of(FLU)
    assert [(d.code, d.span.line, d.span.column) for d in found] == [("W702", 14, 7)]
    assert info.influences_observation >= {"S", "I", "N", "beta", "gamma", "I0"}
    assert "R" not in info.influences_observation
    assert [type(x).__name__ for x in info.dynamics["I"]] == ["FlowEq", "FlowEq"]
    assert info.depends["S"] == {"N", "I0", "beta", "S", "I"}
    assert info.depends["R"] == {"gamma", "I"}
    assert info.depends["in_bed"] == {"I"}


def test_one_run_reports_typo_unit_mismatch_and_missing_dynamics():
    source = HEADER + textwrap.dedent("""\
        param gamma [1/day] = 0.5 in [0, 2]
        state I [1] = 1
        state J [1] = 1
        der(I) = -gama * I
        let bad = gamma + I
        observe o [1] = I + J + bad
        """)
    found = check_source(source, "m.nimm").diagnostics
    assert [(d.code, d.span.line, d.span.column) for d in found if d.code in ("E201", "E301")] == [
        ("E301", 5, 7), ("E201", 6, 11)]
    assert only(found, "E201").hint == "did you mean `gamma`?"
    assert [d.code for d in errors(found) if d.code not in ("E201", "E301")] == ["E401"]


# ---------------------------------------------------------------- E201 undefined names
def test_undefined_name_in_expression_has_did_you_mean_hint():
    found = diags("""\
        param gamma [1/day] = 0.5 in [0, 1]
        state I [1] = 1
        der(I) = -gama * I
        """)
    d = only(found, "E201")
    assert (d.span.line, d.span.column, d.span.end_column) == (5, 11, 15)
    assert d.hint == "did you mean `gamma`?"
    assert "gama" in d.message


@pytest.mark.parametrize("line, column, hint", [
    ("der(Xx) = 1", 5, "did you mean `X`?"),
    ("flow X -> Yy = 1", 11, None),
    ("dose d: Xz += 1 at 0", 9, "did you mean `X`?"),
    ("set kk = 2", 5, "did you mean `k`?"),
    ("let z = expp(1) + k", 9, "did you mean `exp`?"),
])
def test_undefined_targets_and_calls(line, column, hint):
    found = diags(f"""\
        param k [1] = 1 in [0, 2]
        state X [1] = 1
        der(X) = -k * X
        {line}
        """)
    d = only(found, "E201")
    assert (d.span.line, d.span.column) == (6, column)
    assert d.hint == hint


def test_undefined_remove_in_scenario_suggests_baseline_dose():
    found = diags("""\
        state X [1] = 1
        der(X) = -X
        dose bolus: X += 1 at 0
        scenario s
          remove bolos
        end
        """)
    d = only(found, "E201")
    assert (d.span.line, d.span.column, d.hint) == (7, 10, "did you mean `bolus`?")


def test_unit_name_used_as_value_says_so():
    d = only(diags("unit cell\nlet z = 2 * cell\n"), "E201")
    assert (d.span.line, d.span.column) == (4, 13)
    assert d.hint == "attach the unit to a number: `1 [cell]`"


# ---------------------------------------------------------------- E204 wrong kind
@pytest.mark.parametrize("line, column, snippet", [
    ("der(k) = 1", 5, "expects a state, found param"),
    ("dose d: k += 1 at 0", 9, "found param"),
    ("set X = 1", 5, "found state"),
    ("set y = 1", 5, "found let"),
    ("set t = 1", 5, "found time"),
    ("let z = k(2)", 9, "not a function"),
    ("let z = f * 2", 9, "must be called"),
    ("let z = o + 1", 9, "observe `o` is an output"),
    ("flow k -> X = 1", 6, "flow connects states, found param"),
    ("remove d0", 1, "outside a scenario"),
    ("let z = d0 + 1", 9, "is a dose"),
    ("let z = sqrt", 9, "built-in function"),
])
def test_wrong_kind(line, column, snippet):
    found = diags(f"""\
        param k [1] = 1 in [0, 2]
        state X [1] = 1
        der(X) = -k * X
        let y = X
        neural f(a) [1] = mlp()
        observe o [1] = X + y + f(k)
        dose d0: X += 1 at 0
        {line}
        """)
    d = only(found, "E204")
    assert (d.span.line, d.span.column) == (10, column)
    assert snippet in d.message


def test_remove_in_scenario_of_non_dose_or_scenario_only_dose():
    found = diags("""\
        param k [1] = 1 in [0, 2]
        state X [1] = 1
        der(X) = -k * X
        observe o [1] = X
        scenario s
          dose extra: X += 1 at 2
          remove k
          remove extra
        end
        """)
    assert where(found, "E204") == [(9, 10), (10, 10)]


# ---------------------------------------------------------------- E205 arity
def test_wrong_number_of_arguments_to_builtin_and_neural():
    found = diags("""\
        state X [1] = 1
        neural f(a, b) [1] = mlp()
        der(X) = -exp(X, 2) + f(X)
        observe o [1] = ifelse(X > 1, X, 0)
        """)
    builtin, neural = [d for d in found if d.code == "E205"]
    assert [(d.span.line, d.span.column) for d in (builtin, neural)] == [(5, 11), (5, 23)]
    assert builtin.message == "built-in `exp` takes 1 argument, found 2"
    assert neural.message == "neural `f` takes 2 arguments, found 1"


# ---------------------------------------------------------------- E301, E302 dynamics
def test_state_without_dynamics_and_competing_dynamics():
    found = diags("""\
        state A [1] = 1
        state B [1] = 1
        state C [1] = 0
        der(B) = -B
        der(B) = -2 * B
        der(C) = 1
        flow C -> = C
        observe o [1] = A + B + C
        """)
    assert where(found, "E301") == [(3, 7)]
    assert where(found, "E302") == [(7, 5), (8, 5)]
    second, mixed = [d for d in found if d.code == "E302"]
    assert "first on line 6" in second.message
    assert "line 9" in mixed.message


# ---------------------------------------------------------------- E303 time
def test_missing_time_in_a_dynamic_model():
    found = diags("state X [1] = 1\nder(X) = -X\n", header="model m\n")
    d = only(found, "E303")
    assert (d.span.line, d.span.column) == (2, 7)
    assert "needs a `time` declaration" in d.message


def test_static_model_needs_no_time():
    found = diags("input x [1]\nparam a [1] = 1 in [0, 2]\nobserve y [1] = a * x\n", header="model m\n")
    assert errors(found) == []


def test_time_declared_twice():
    found = diags("time s [h]\nstate X [1] = 1\nder(X) = -X\n")
    assert where(found, "E303") == [(3, 6)]


# ---------------------------------------------------------------- E304 cycles
def test_cyclic_lets_reported_once_with_the_cycle():
    info, found = names_of(HEADER + textwrap.dedent("""\
        let a = c + 1
        let b = a * 2
        let c = b - t
        let d = d + 1
        let e = 2 * t
        let f = e + a
        let g = e
        state X [1] = 1
        der(X) = -X * (f + g)
        observe o [1] = X
        """))
    cycles = [d for d in found if d.code == "E304"]
    assert [(d.span.line, d.span.column) for d in cycles] == [(3, 5), (6, 5)]
    assert cycles[0].message == "cyclic definition: a -> c -> b -> a"
    assert cycles[1].message == "cyclic definition: d -> d"
    assert info.let_order == ["e", "f", "g"]


def test_let_order_puts_dependencies_first():
    info, found = names_of(HEADER + textwrap.dedent("""\
        let total = part1 + part2
        let part2 = 2 * part1
        let part1 = t
        state X [1] = 1
        der(X) = -total * X
        observe o [1] = X
        """))
    assert errors(found) == []
    assert info.let_order == ["part1", "part2", "total"]


# ---------------------------------------------------------------- E305 header
def test_model_header_missing():
    found = names_of("time t [day]\nstate X [1] = 1\nder(X) = -X\n")[1]
    d = only(found, "E305")
    assert (d.span.line, d.span.column) == (1, 1)


def test_model_header_not_first_and_repeated():
    found = names_of("time t [day]\nmodel a\nmodel b\nstate X [1] = 1\nder(X) = -X\n")[1]
    assert where(found, "E305") == [(2, 1), (3, 1)]


# ---------------------------------------------------------------- E306 dependencies
@pytest.mark.parametrize("line, column, found_kind", [
    ("const c [1] = k * 2", 15, "param"),
    ("param p [1] = X in [0, 1]", 15, "state"),
    ("param p [1] = c0 + y in [0, 1]", 20, "let"),
    ("state Y [1] = X", 15, "state"),
    ("state Y [1] = t", 15, "time"),
    ("state Y [1] = o", 15, "observe"),
    ("input u [1] = k", 15, "param"),
    ("param p [1] = 1 in [0, k]", 24, "name `k`"),
    ("dose d: X += 1 at k", 19, "param"),
    ("dose d: X += 1 at 1 every 1 times k", 35, "param"),
    ("set k = 2 from X", 16, "state"),
    ("set k = 2 to t", 14, "time"),
])
def test_value_depends_on_what_it_may_not(line, column, found_kind):
    found = diags(f"""\
        const c0 [1] = 2
        param k [1] = c0 in [0, 3]
        state X [1] = k
        der(X) = -X
        let y = X
        observe o [1] = X + y
        {line}
        """)
    d = only(found, "E306")
    assert (d.span.line, d.span.column) == (9, column)
    assert found_kind in d.message


def test_allowed_constant_positions_are_silent():
    found = diags("""\
        const c [1] = 2 * pi
        const w [day] = c * 3
        param k [1] = c / 2 in [-inf, inf]
        input u [1] = c
        state X [1] = k + c + u   in [-1, 1e3]
        der(X) = -k * X + u
        dose d: X += k at w every c times 2
        set k = 0.5 * k from w to 2 * w
        observe o [1] = X
        """)
    assert errors(found) == []


# ---------------------------------------------------------------- E307 flows
def test_flow_to_itself_and_flow_with_no_end():
    found = diags("""\
        state X [1] = 1
        flow X -> X = X
        flow -> = 1
        flow -> X = 1
        """)
    assert where(found, "E307") == [(4, 11), (5, 6)]


# ---------------------------------------------------------------- E501 bounds
def test_bounds_not_increasing():
    found = diags("""\
        param a [1] = 1 in [2, 1]
        param b [1] = 1 in [1, 1]
        param c [1] = 1 in [-inf, -2]
        state X [1] = a + b + c in [inf, 0]
        der(X) = -X
        """)
    assert where(found, "E501") == [(3, 20), (4, 20), (6, 28)]


# ---------------------------------------------------------------- E503 options
def test_invalid_neural_options():
    found = diags("""\
        state X [1] = 1
        neural f(a) [1] = mlp(hidden = [16, 0], activation = tahn, init = ones, penalty = -1, depth = 2)
        neural g(a) [1] = cnn(hidden = 8)
        der(X) = f(X) + g(X)
        """)
    assert sorted(where(found, "E503")) == [(4, 37), (4, 54), (4, 67), (4, 83), (4, 87), (5, 19), (5, 32)]
    activation = [d for d in found if d.code == "E503"][1]
    assert activation.hint == "did you mean `tanh`?"


def test_invalid_noise_and_dose_counts():
    found = diags("""\
        state X [1] = 1
        der(X) = -X
        observe a [1] = X ~ gauss(sigma = 1)
        observe b [1] = X ~ normal(sd = 1)
        observe c [1] = X ~ lognormal
        observe d [1] = X ~ poisson(sigma = 1)
        dose d1: X += 1 at 0 every 1 times 0
        dose d2: X += 1 at 0 every 1 times 1.5
        dose d3: X += 1 at 0 every -1 times 2
        """)
    assert sorted(where(found, "E503")) == [(5, 21), (6, 21), (6, 28), (7, 21), (8, 29),
                                            (9, 36), (10, 36), (11, 28)]


# ---------------------------------------------------------------- warnings
def test_unused_declarations_and_unobservable_parts():
    found = diags("""\
        const unused_c [1] = 1
        param unused_p [1] = 1 in [0, 2]
        input unused_u [1] = 0
        let unused_l = 2 * t
        neural unused_f(a) [1] = mlp()
        param free [1] = 1
        param hidden_rate [1] = 1 in [0, 2]
        state X [1] = 1
        state Y [1] = 1
        der(X) = -free * X
        der(Y) = -hidden_rate * Y + X
        observe o [1] = X
        """)
    assert sorted(where(found, "W701")) == [(3, 7), (4, 7), (5, 7), (6, 5), (7, 8)]
    assert where(found, "W702") == [(11, 7)]
    assert where(found, "W703") == [(8, 7)]
    assert where(found, "W704") == [(9, 7)]


def test_no_observation_means_no_w702_or_w704():
    found = diags("""\
        param k [1] = 1 in [0, 2]
        state X [1] = 1
        der(X) = -k * X
        """)
    assert where(found, "W702") == [] and where(found, "W704") == []


def test_influence_follows_doses_sets_and_sigma():
    info, found = names_of(HEADER + textwrap.dedent("""\
        param amount [1] = 1 in [0, 2]
        param s [1] = 1 in [0.1, 2]
        param late [1] = 1 in [0, 2]
        state X [1] = 0
        der(X) = -X
        dose d: X += amount at 0
        observe o [1] = X ~ normal(sigma = s)
        param k [1] = 1 in [0, 2]
        scenario boost
          set k = late from 2
        end
        let uses_k = k
        observe p [1] = uses_k
        """))
    assert errors(found) == []
    assert {"amount", "s", "late", "k", "X", "uses_k"} <= info.influences_observation
    assert [d.code for d in found] == []


def test_every_prefix_of_a_model_gets_diagnostics_inside_it():
    # Partial files (as an editor or an LLM produces them): diagnostics point into the prefix,
    # and a name declared in the prefix is never called undefined (LANGUAGE.md §1 declares
    # every name before its use).
    lines = FLU.splitlines()
    for n in range(len(lines) + 1):
        program, _ = parse("\n".join(lines[:n]) + "\n", "p.nimm")
        table, _ = build_symbol_table(program, "p.nimm")
        info, found = check_names(program, table, "p.nimm")
        assert all(d.span.line <= max(n, 1) for d in found), (n, found)
        assert [d for d in found if d.code == "E201"] == [], (n, found)
        assert set(info.let_order) <= set(table.symbols)


FRAGMENTS = [
    "model m", "time t [day]", "time s [h]", "param k [1] = 1 in [0, 2]", "param k [1] = X",
    "const c [1] = k", "state X [1] = k", "state Y [1] = X in [2, 1]", "der(X) = -k * X",
    "der(Y) = f(X)", "der(k) = 1", "flow X -> Y = k", "flow -> = 1", "flow Y -> Y = 1",
    "let a = b", "let b = a + t", "let z = zz(1, 2)", "neural f(u) [1] = mlp(hidden = [])",
    "neural g(u, v) [1] = rnn(init = zero)", "observe o [1] = X + a ~ normal",
    "observe p [1] = o ~ poisson(sigma = 1)", "dose d: X += 1 at k every 0 times -1",
    "dose d: k *= 2 at 1", "set X = 1 from k", "set k = exp(1, 2)", "remove d", "remove nothing",
    "scenario s", "scenario s2 \"doc\"", "end", "unit cell", "input u [1] = u",
]


@pytest.mark.parametrize("seed", range(40))
def test_random_statement_soups_never_raise(seed):
    import random

    rng = random.Random(seed)
    source = "\n".join(rng.choice(FRAGMENTS) for _ in range(rng.randint(0, 25))) + "\n"
    program, _ = parse(source, "soup.nimm")
    table, _ = build_symbol_table(program, "soup.nimm")
    info, found = check_names(program, table, "soup.nimm")
    assert all(d.span.line >= 1 and d.span.column >= 1 for d in found)
    assert set(info.let_order) <= {"a", "b", "z"}
