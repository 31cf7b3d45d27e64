"""Parser: statement forms, spans, precedence, E100 recovery and absurd input."""
import math
import operator
from fractions import Fraction

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nimm_dsl.grammar import ast as A
from nimm_dsl.grammar.parser import MAX_DIAGNOSTICS, MAX_SOURCE_CHARS, parse

from language_example import FLU  # noqa: E402  (LANGUAGE.md §1, verbatim)


def parse_ok(source):
    program, diagnostics = parse(source)
    assert diagnostics == [], [(d.span, d.message) for d in diagnostics]
    return program.statements


def one(source):
    statements = parse_ok(source)
    assert len(statements) == 1
    return statements[0]


def expr_of(text):
    return one(f"let x = {text}").value


def span(node):
    s = node.span
    return (s.line, s.column, s.end_line, s.end_column)


def errors(source):
    program, diagnostics = parse(source)
    assert all(d.code == "E100" for d in diagnostics)
    return program, diagnostics


# ---------------------------------------------------------------- the example and statement forms
def test_language_example_parses_without_diagnostics():
    statements = parse_ok(FLU)
    kinds = [type(s).__name__ for s in statements]
    assert kinds == ["ModelDecl", "TimeDecl", "UnitDecl", "ConstDecl", "ParamDecl", "ParamDecl",
                     "ParamDecl", "StateDecl", "StateDecl", "StateDecl", "FlowEq", "FlowEq",
                     "ObserveDecl", "ScenarioBlock"]
    model, beta, flow, observe, scenario = statements[0], statements[4], statements[10], statements[12], statements[13]
    assert model.doc == "SIR model for the 1978 boarding-school influenza outbreak"
    assert span(model.name) == (2, 7, 2, 14)
    assert span(model) == (2, 1, 2, 74)
    assert beta.name.name == "beta" and span(beta.name) == (8, 7, 8, 11)
    assert isinstance(beta.unit, A.UnitDiv) and isinstance(beta.unit.left, A.UnitOne)
    assert span(beta.unit) == (8, 14, 8, 19)
    assert beta.value.value == 1.5 and beta.doc == "transmission rate"
    assert (beta.bounds.lo.value, beta.bounds.hi.value) == (0.1, 5.0)
    assert span(beta.bounds) == (8, 32, 8, 40)
    assert statements[7].bounds.hi.value == math.inf and statements[7].bounds.hi.text == "inf"
    assert (flow.source.name, flow.target.name) == ("S", "I")
    assert span(flow) == (16, 1, 16, 31)
    assert (flow.arrow_span.line, flow.arrow_span.column, flow.arrow_span.end_column) == (16, 8, 10)
    assert span(flow.rate) == (16, 15, 16, 31)  # beta * S * I / N
    sigma = observe.noise.options[0]
    assert observe.noise.kind.name == "normal" and sigma.name.name == "sigma"
    assert sigma.value.value == 10 and sigma.value.unit.name == "person"
    assert span(sigma.value) == (19, 46, 19, 57)  # `10 [person]`, the annotation included
    assert scenario.name.name == "isolation" and scenario.doc == "half the contacts from day 3"
    assert span(scenario) == (21, 1, 21, 50)
    assert scenario.end_span.line == 23
    (set_line,) = scenario.body
    assert isinstance(set_line, A.SetStmt) and set_line.target.name == "beta"
    assert set_line.start.value == 3 and set_line.end is None
    assert span(set_line) == (22, 3, 22, 31)


def test_time_unit_and_const_forms():
    time_decl, base, derived, const = parse_ok(
        'time t [h]\nunit cell "a cell"\nunit kcell = 1000 [cell] "thousand cells"\nconst V [L] = 2 * 3')
    assert time_decl.name.name == "t" and time_decl.unit.name == "h"
    assert base.value is None and base.doc == "a cell"
    assert derived.value.value == 1000 and derived.value.unit.name == "cell" and derived.doc == "thousand cells"
    assert isinstance(const.value, A.BinOp)


def test_input_forms():
    plain, with_default, linear, documented = parse_ok(
        'input u [mg/h]\ninput v [1] = 0.5\ninput w [1] = 0 interp linear\ninput z [1] interp step "doc"')
    assert plain.default is None and plain.interp == "step"
    assert with_default.default.value == 0.5 and with_default.interp == "step"
    assert linear.interp == "linear" and linear.default.value == 0
    assert documented.interp == "step" and documented.doc == "doc"


def test_interp_and_step_remain_usable_as_names():
    let = one("let interp = step * linear")
    assert let.name.name == "interp"
    assert {let.value.left.name, let.value.right.name} == {"step", "linear"}


def test_let_with_and_without_unit():
    typed, untyped = parse_ok('let inf_rate [person/day] = beta * S "infections"\nlet ratio = S / N')
    assert isinstance(typed.unit, A.UnitDiv) and typed.doc == "infections"
    assert untyped.unit is None and untyped.doc is None


def test_neural_declaration_and_call():
    neural, der = parse_ok(
        "neural resid(x, y) [1/year] = mlp(hidden = [16, 16], activation = tanh, init = zero, penalty = 1e-3)\n"
        "der(H) = alpha * H - beta * H * L + resid(H / K, L / K) * H")
    assert [a.name for a in neural.args] == ["x", "y"] and neural.kind.name == "mlp"
    options = {o.name.name: o.value for o in neural.options}
    assert isinstance(options["hidden"], A.ListValue)
    assert [i.value for i in options["hidden"].items] == [16, 16]
    assert span(options["hidden"]) == (1, 44, 1, 52)
    assert isinstance(options["activation"], A.Name) and options["activation"].name == "tanh"
    assert options["penalty"].value == 1e-3
    assert der.state.name == "H" and span(der.state) == (2, 5, 2, 6)
    call = der.value.right.left  # ... + resid(...) * H
    assert isinstance(call, A.Call) and call.func.name == "resid" and len(call.args) == 2
    assert span(call) == (2, 37, 2, 56)


def test_flow_source_and_sink():
    source, sink = parse_ok("flow -> S = births\nflow I -> = mu * I")
    assert source.source is None and source.target.name == "S"
    assert span(source) == (1, 1, 1, 19)
    assert (source.arrow_span.column, source.arrow_span.end_column) == (6, 8)
    assert sink.source.name == "I" and sink.target is None


def test_observe_noise_forms():
    plain, logn, pois, pois_empty = parse_ok(
        "observe a [1] = x\nobserve b [1] = x ~ lognormal(sigma = s)\n"
        "observe c [1] = x ~ poisson\nobserve d [1] = x ~ poisson()")
    assert plain.noise is None
    assert logn.noise.kind.name == "lognormal" and logn.noise.options[0].value.name == "s"
    assert pois.noise.kind.name == "poisson" and pois.noise.options == []
    assert span(pois.noise) == (3, 21, 3, 28)
    assert pois_empty.noise.options == []


def test_dose_forms():
    bolus, repeated, kill = parse_ok(
        "dose d1: A += 100 [mg] at 0\n"
        "dose d2: A += 5 at 1 [day] every 12 [h] times 3\n"
        "dose rt: T *= 0.5 at 10")
    assert (bolus.name.name, bolus.state.name, bolus.op) == ("d1", "A", "+=")
    assert bolus.amount.unit.name == "mg" and bolus.every is None and bolus.times is None
    assert repeated.at.unit.name == "day" and repeated.every.unit.name == "h" and repeated.times.value == 3
    assert kill.op == "*="
    assert span(bolus.state) == (1, 10, 1, 11)


def test_set_forms():
    plain, window, until = parse_ok("set k = 2\nset k = 0.5 * k from 3 to 7\nset u = 0 to 4")
    assert plain.start is None and plain.end is None
    assert window.start.value == 3 and window.end.value == 7
    assert until.start is None and until.end.value == 4


def test_scenario_with_dose_set_and_remove():
    (block,) = parse_ok('scenario high "double"\n  dose d1: A += 200 at 0\n  remove d2\n  set k = 1\nend')
    assert [type(s) for s in block.body] == [A.DoseStmt, A.RemoveStmt, A.SetStmt]
    assert block.body[1].name.name == "d2" and span(block.body[1]) == (3, 3, 3, 12)
    assert block.end_span == A.Span(5, 1, 5, 4)


def test_top_level_remove_is_parsed_for_the_checker():
    (remove,) = parse_ok("remove d1")
    assert isinstance(remove, A.RemoveStmt) and remove.name.name == "d1"


def test_builtin_and_keyword_names_become_idents_for_e203():
    exp_param, pi_const, in_param = parse_ok("param exp [1] = 1\nconst pi [1] = 3\nparam in [1/day] = 1")
    assert exp_param.name.name == "exp" and pi_const.name.name == "pi"
    assert in_param.name.name == "in" and span(in_param.name) == (3, 7, 3, 9)


# ---------------------------------------------------------------- units and numbers
@pytest.mark.parametrize("text, exponent", [
    ("m^(1/2)", Fraction(1, 2)), ("cm^3", Fraction(3)), ("s^-1", Fraction(-1)),
    ("s^(-2)", Fraction(-2)), ("m^(-3/2)", Fraction(-3, 2)), ("m^0.5", Fraction(1, 2)),
])
def test_unit_exponents_are_exact(text, exponent):
    unit = one(f"param p [{text}] = 1").unit
    assert isinstance(unit, A.UnitPow) and unit.exponent == exponent
    assert (unit.span.column, unit.span.end_column) == (10, 10 + len(text))


def test_compound_units():
    unit = one("param cl [L/(h*kg)] = 1").unit
    assert isinstance(unit, A.UnitDiv) and unit.left.name == "L"
    assert isinstance(unit.right, A.UnitMul) and span(unit.right) == (1, 13, 1, 19)  # `(h*kg)`
    assert isinstance(one("param d [1] = 1").unit, A.UnitOne)
    rate = one("param r [1/day] = 1").unit
    assert isinstance(rate, A.UnitDiv) and rate.right.name == "day"


@pytest.mark.parametrize("text, value", [
    ("12", 12.0), ("0.5", 0.5), (".5", 0.5), ("1e-3", 1e-3), ("2.5E+4", 2.5e4), ("inf", math.inf),
])
def test_numbers(text, value):
    number = expr_of(text)
    assert isinstance(number, A.Number) and number.value == value and number.text == text
    assert number.unit is None and span(number) == (1, 9, 1, 9 + len(text))


def test_unit_annotated_literals():
    number = expr_of("0.1 [mg/L]")
    assert number.value == 0.1 and isinstance(number.unit, A.UnitDiv)
    assert span(number) == (1, 9, 1, 19)
    assert expr_of("5 [day]").unit.name == "day"


def test_negative_infinite_bound_is_unary_minus():
    bounds = one("param p [1] = 0 in [-inf, inf]").bounds
    assert isinstance(bounds.lo, A.UnaryOp) and bounds.lo.operand.value == math.inf


# ---------------------------------------------------------------- expressions
_BINARY = {"+": operator.add, "-": operator.sub, "*": operator.mul, "/": operator.truediv, "^": operator.pow}
_COMPARE = {"<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge,
            "==": operator.eq, "!=": operator.ne}


def evaluate(node, env):
    if isinstance(node, A.Number):
        return node.value
    if isinstance(node, A.Name):
        return env[node.name]
    if isinstance(node, A.BinOp):
        return _BINARY[node.op](evaluate(node.left, env), evaluate(node.right, env))
    if isinstance(node, A.UnaryOp):
        value = evaluate(node.operand, env)
        return -value if node.op == "-" else (not value)
    if isinstance(node, A.Compare):
        return _COMPARE[node.op](evaluate(node.left, env), evaluate(node.right, env))
    if isinstance(node, A.BoolOp):
        left, right = evaluate(node.left, env), evaluate(node.right, env)
        return (left and right) if node.op == "and" else (left or right)
    if isinstance(node, A.Call):
        return {"max": max, "min": min}[node.func.name](*(evaluate(a, env) for a in node.args))
    raise AssertionError(node)


@pytest.mark.parametrize("text, expected", [
    ("2^3^2", 2 ** 3 ** 2),
    ("-2^2", -(2 ** 2)),
    ("1-2-3", 1 - 2 - 3),
    ("8/4/2", 8 / 4 / 2),
    ("2*3+4*5", 2 * 3 + 4 * 5),
    ("2^-1", 2 ** -1),
    ("-x^2", -(3 ** 2)),
    ("(1-2)*3", (1 - 2) * 3),
    ("2*-3", 2 * -3),
    ("--2", 2),
    ("+2 - +1", 1),
    ("1 + 2 < 4 and 3 > 2", (1 + 2 < 4) and (3 > 2)),
    ("not 1 < 2 or 1 == 1", (not (1 < 2)) or (1 == 1)),
    ("1 < 2 or 2 < 1 and 2 < 1", (1 < 2) or ((2 < 1) and (2 < 1))),
    ("not not 1 != 2", 1 != 2),
    ("max(1, 2) * min(x, 4)", 2 * 3),
    ("(1 +\n   2) * 3", 9),
])
def test_precedence_and_associativity(text, expected):
    assert evaluate(expr_of(text), {"x": 3}) == expected


def test_expression_spans():
    value = expr_of("a + b * (c - 1)")
    assert span(value) == (1, 9, 1, 24)
    assert span(value.right) == (1, 13, 1, 24)
    assert span(value.right.right) == (1, 17, 1, 24)  # the parentheses belong to the group
    negation = expr_of("-x^2")
    assert isinstance(negation, A.UnaryOp) and span(negation) == (1, 9, 1, 13)
    assert span(negation.operand) == (1, 10, 1, 13)


def test_expressions_wrap_inside_brackets_with_comments():
    let, after = parse_ok("let x = (a +   # first part\n   b) * c\nlet y = 1")
    assert span(let) == (1, 1, 2, 10)
    assert let.value.left.right.name == "b" and span(let.value.left.right) == (2, 4, 2, 5)
    assert after.span.line == 3


def test_indentation_tabs_and_crlf():
    model, param = parse_ok("model m\r\n\tparam k [1] = 2  \r\n")
    assert span(param.name) == (2, 8, 2, 9)
    assert span(param) == (2, 2, 2, 17)


def test_repeated_statements_get_fresh_nodes_at_their_own_lines():
    source = "let x = a + 1\nlet x = a + 1\n  bad = 1\n  bad = 1\n"
    program, diagnostics = parse(source, "m.nimm")
    first, second = program.statements
    assert first is not second and first.value is not second.value and first.name is not second.name
    assert span(second.value.left) == (2, 9, 2, 10) and span(second) == (2, 1, 2, 14)
    assert [(span(d), d.file) for d in diagnostics] == [((3, 3, 3, 6), "m.nimm"), ((4, 3, 4, 6), "m.nimm")]
    again, _ = parse("\n" + source)
    assert again.statements[0] is not first and span(again.statements[0].value) == (2, 9, 2, 14)


# ---------------------------------------------------------------- syntax errors
def test_several_errors_reported_in_one_run():
    program, diagnostics = errors(
        "model m\n"
        "param k [1/day] = )\n"
        "let ok = 1\n"
        "let x = 1 + $\n"
        "state S [1] = 0 in [0, 1] extra\n"
        "beta = 2\n")
    assert [(d.span.line, d.span.column) for d in diagnostics] == [(2, 19), (4, 13), (5, 27), (6, 1)]
    assert diagnostics[0].message == "unexpected `)`: expected an expression (a number, a name or `(`)"
    assert diagnostics[1].message == "unexpected character `$`"
    assert "unexpected name `extra`" in diagnostics[2].message
    assert "the end of the statement" in diagnostics[2].message
    assert "statement starts with a keyword" in diagnostics[3].message
    assert diagnostics[3].hint == "did you mean `let beta = ...`?"
    assert [type(s).__name__ for s in program.statements] == ["ModelDecl", "LetDecl"]


def test_error_spans_cover_the_offending_token():
    _, (d,) = errors("let y = a < b < c")
    assert span(d) == (1, 15, 1, 16) and "chained" in d.hint
    _, (d,) = errors("param q [1] = 2 inflow")
    assert span(d) == (1, 17, 1, 23)
    assert d.message.startswith("unexpected name `inflow`: expected") and "`in`" in d.message


def test_end_of_statement_and_unknown_words():
    _, (d,) = errors("let e =")
    assert d.message.startswith("unexpected end of statement: expected an expression")
    assert (d.span.line, d.span.column) == (1, 8)
    _, (d,) = errors("input v [1] interp cubic")
    assert d.message == "unexpected name `cubic`: expected `linear` or `step`"
    _, (d,) = errors("modelx foo")  # keywords are whole words only
    assert "unexpected name `modelx`" in d.message


def test_bounds_on_the_next_line_are_one_statement_with_one_error():
    program, (d,) = errors("param k [1] = 1\n    in [0, 1]")
    assert span(d) == (2, 5, 2, 7)
    assert d.message == ("unexpected `in`: line 2 continues the statement of line 1, but a statement ends "
                         "with its line unless a bracket is open")
    assert d.hint == "write the statement on one line: `param k [1] = 1 in [0, 1]`"
    (param,) = program.statements  # kept, with its bounds: its names are not lost
    assert param.bounds.hi.value == 1 and span(param) == (1, 1, 2, 14)


@pytest.mark.parametrize("source, where, fixed", [
    # the continuation starts with an operator: the first line parsed on its own
    ("der(H) = -r * H\n  + k * G\n", (2, 3, 2, 4), "der(H) = (-r * H + k * G)"),
    # the first line ends with an operator: each line failed on its own
    ("der(G) = -k * G +\n  r * H\n", (2, 3, 2, 4), "der(G) = (-k * G + r * H)"),
    # three lines, operators at the ends
    ("let total = a +\n    b -\n    c\n", (2, 5, 2, 6), "let total = (a + b - c)"),
    # the expression is followed by more of the statement
    ("observe y [1] = x\n  + 1 ~ normal(sigma = 1)\n", (2, 3, 2, 4), "observe y [1] = (x + 1) ~ normal(sigma = 1)"),
])
def test_an_expression_broken_across_lines_suggests_parentheses(source, where, fixed):
    program, (d,) = errors(source)
    assert span(d) == where
    assert d.hint == f"wrap the expression in parentheses: `{fixed}`"
    (statement,) = program.statements
    assert statement.span.end_line == source.count("\n")


def test_three_line_statement_names_the_lines():
    _, (d,) = errors("let total = a\n    + b\n    - c\nlet after = 1\n")
    assert d.message.startswith("unexpected `+`: lines 2-3 continue the statement of line 1")


def test_a_line_that_starts_a_statement_is_never_joined():
    program, diagnostics = errors("der(G) = -k * G +\nlet r = 1\n")
    assert [(d.span.line, d.message.split(":")[0]) for d in diagnostics] == [(1, "unexpected end of statement")]
    assert [type(s).__name__ for s in program.statements] == ["LetDecl"]


@pytest.mark.parametrize("source, where, state", [
    ("dG/dt = -k * G", (1, 1, 1, 6), "G"),
    ("d(G)/dt = -k * G", (1, 1, 1, 8), "G"),
    ("  dS / dday = -S", (1, 3, 1, 12), "S"),
])
def test_a_textbook_derivative_suggests_der(source, where, state):
    _, (d,) = errors(source)
    assert span(d) == where
    assert d.message.endswith(f"a time derivative is written `der({state})`")
    assert d.hint == f"write `der({state}) = ...`"


def test_der_without_parentheses_suggests_them():
    _, (d,) = errors("der G = 1")
    assert span(d) == (1, 5, 1, 6) and d.hint == "write `der(G) = ...`"


@pytest.mark.parametrize("source, columns", [
    ("let z = G**2", [(10, 12)]),
    ("let z = 2 ** G + x ** 3", [(11, 13), (20, 22)]),
    ('let z = x ** 2 "a ** b"', [(11, 13)]),  # not inside the description
])
def test_double_star_suggests_caret_and_keeps_the_statement(source, columns):
    program, diagnostics = errors(source)
    assert [(d.span.column, d.span.end_column) for d in diagnostics] == columns
    assert {(d.message, d.hint) for d in diagnostics} == {
        ("unexpected `**`: the power operator is `^`", "write `x^2`, not `x**2`")}
    (let,) = program.statements
    assert "^" in {n.op for n in (let.value, let.value.left, let.value.right) if isinstance(n, A.BinOp)}


def test_double_star_is_named_even_when_the_statement_has_other_errors():
    program, (d,) = errors("let z = G ** ) 2")
    assert program.statements == [] and program.unparsed == [A.Span(1, 1, 1, 17)]
    assert (d.span.column, d.span.end_column, d.message) == (11, 13, "unexpected `**`: the power operator is `^`")
    _, (d,) = errors("let z = ** 2")
    assert (d.span.column, d.span.end_column, d.message) == (9, 11, "unexpected `**`: the power operator is `^`")


def test_keyword_used_as_a_reference():
    _, (d,) = errors("let x = in + 1")
    assert d.message == "unexpected keyword `in`: expected a name" and span(d) == (1, 9, 1, 11)


def test_odd_characters_and_strings():
    _, (d,) = errors("let x = 1 @ 2")
    assert d.message == "unexpected character `@`" and span(d) == (1, 11, 1, 12)
    _, (d,) = errors("let x = \x00")
    assert "U+0000" in d.message
    _, (d,) = errors('model m "never closed')
    assert d.message.startswith("unterminated string") and d.span.column == 9


def test_unit_errors():
    _, (d,) = errors("param p [1000 cell] = 1")
    assert "unexpected name `cell`" in d.message
    _, (d,) = errors("param p [10] = 1")
    assert "only `1`" in d.message and span(d) == (1, 10, 1, 12)
    _, (d,) = errors("param p [m^(1/0)] = 1")
    assert "division by zero" in d.message


def test_unclosed_bracket_is_reported_at_the_bracket_and_parsing_resumes():
    program, diagnostics = errors("let z = (1 +\n   2\nparam q [1] = 2\nlet w = f(1, 2")
    assert [(d.span.line, d.span.column, d.message) for d in diagnostics] == [
        (1, 9, "`(` is never closed"), (4, 10, "`(` is never closed")]
    assert [s.name.name for s in program.statements] == ["q"]


def test_unclosed_scenario_and_stray_end():
    # No `end` follows: the declaration shows where the block should have ended.
    program, diagnostics = errors("scenario s2 \"x\"\n set beta = 1\nparam after [1] = 2\nset k = 1\n")
    assert [(d.span.line, d.message) for d in diagnostics] == [(1, "scenario `s2` is never closed with `end`")]
    block, param, top_set = program.statements
    assert len(block.body) == 1 and block.end_span is None and param.name.name == "after"
    assert isinstance(top_set, A.SetStmt)
    _, (d,) = errors("set k = 1\nend\n")
    assert d.message == "`end` without an open `scenario`" and span(d) == (2, 1, 2, 4)
    _, (d,) = errors("set beta = 1\nscenario s")
    assert d.message == "scenario `s` is never closed with `end`" and span(d) == (2, 1, 2, 9)


def test_declaration_inside_a_scenario():
    program, (d,) = errors("scenario s1\n param zz [1] = 1\n set beta = 1\nend")
    assert d.span.line == 2 and d.span.column == 2
    assert d.message.startswith("`param` is not allowed inside scenario `s1`")
    block = program.statements[0]
    assert [type(s) for s in block.body] == [A.SetStmt] and block.end_span.line == 4


def test_end_with_trailing_text_still_closes_the_block():
    program, diagnostics = errors("scenario s\n set k = 1\nend scenario\nparam p [1] = 1")
    assert len(diagnostics) == 1 and diagnostics[0].span.line == 3
    assert program.statements[0].end_span.line == 3 and program.statements[1].name.name == "p"


# ---------------------------------------------------------------- absurd input
def test_empty_and_comment_only_files():
    program, diagnostics = parse("")
    assert program.statements == [] and diagnostics == []
    assert parse_ok("# nothing\n\n   # still nothing\n") == []


def test_deep_nesting_is_refused_without_recursion_error():
    _, (d,) = errors("let x = " + "(" * 10_000 + "1" + ")" * 10_000)
    assert "nested too deeply" in d.message and (d.span.line, d.span.column) == (1, 109)
    assert isinstance(expr_of("(" * 99 + "1" + ")" * 99), A.Number)


@pytest.mark.parametrize("text", [
    "+".join(["1"] * 5000), "^".join(["2"] * 500), "-" * 5000 + "1", "not " * 1000 + "1",
])
def test_long_operator_chains_are_refused(text):
    _, (d,) = errors("let x = " + text)
    assert "nested too deeply" in d.message


def test_moderate_chains_parse():
    value = expr_of("+".join(["1"] * 150))
    assert evaluate(value, {}) == 150


def test_binary_garbage_never_raises():
    import random
    rng = random.Random(7)
    data = bytes(rng.randrange(256) for _ in range(100_000)).decode("utf-8", errors="replace")
    _, diagnostics = errors(data)
    assert 0 < len(diagnostics) <= MAX_DIAGNOSTICS + 1


@pytest.mark.slow
def test_five_megabytes_give_capped_diagnostics():
    garbage = "x = = ( ] $\n" * 420_000
    _, diagnostics = errors(garbage)
    assert len(diagnostics) == MAX_DIAGNOSTICS + 1
    assert diagnostics[-1].message == "too many errors; stopping"
    assert diagnostics[-2].span.line == MAX_DIAGNOSTICS  # one per line, then the stop: not the whole file

    valid = FLU * (5_000_000 // len(FLU))
    program, diagnostics = errors(valid)
    lines_read = MAX_SOURCE_CHARS // len(FLU) * FLU.count("\n")  # whole copies of the model before the limit
    assert program.statements[-1].span.line <= lines_read + FLU.count("\n")
    assert len(diagnostics) == 1 and diagnostics[0].message.startswith("file too large")


def test_very_long_single_line():
    _, (d,) = errors("let x = 1" + " + 1" * 500_000)
    assert d.code == "E100" and (d.span.line, d.span.column) == (1, 1)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.sampled_from(list("()[]+-*/^<>=!~:,.#\"\n \tabx1e_") + [
    "in ", "param ", "let ", "end\n", "scenario s\n", "inf", "not ", "->", "+=", " [1/day] "]), max_size=40).map("".join))
def test_any_text_gives_e100_only_and_spans_inside_the_text(text):
    program, diagnostics = parse(text)
    n_lines = text.count("\n") + 1
    for d in diagnostics:
        assert d.code == "E100" and 1 <= d.span.line <= n_lines and d.span.column >= 1
    for span in [s.span for s in program.statements] + program.unparsed:
        assert 1 <= span.line <= span.end_line <= n_lines

