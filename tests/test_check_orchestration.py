"""The front end as a whole: one syntax error does not drag in errors that only follow from it."""
from pathlib import Path

import nimm_dsl

ROOT = Path(__file__).resolve().parents[1]


def codes(source):
    return sorted((d.code, d.span.line) for d in nimm_dsl.check(source))


def test_a_broken_flow_line_reports_only_its_syntax_error():
    source = (ROOT / "examples" / "flu_sir.nimm").read_text()
    broken = source.replace("flow I -> R = gamma * I", "flow I -> R = gamma * * I")
    line = broken.splitlines().index("flow I -> R = gamma * * I") + 1
    assert codes(broken) == [("E100", line)]  # no W701 for gamma, no E301 for R


def test_a_broken_declaration_does_not_make_its_uses_undefined():
    source = """model m
time t [day]
param k [1/day] = 0.5 in [0, 1
state x [1] = 1 in [0, inf]
der(x) = -k * x
observe y [1] = x
"""
    assert [c for c, _ in codes(source)] == ["E100"]


def test_other_errors_still_reported_next_to_a_syntax_error():
    source = """model m
time t [day]
param k [1/day] = 0.5 in [0, 1
state x [1] = 1 in [0, inf]
der(x) = -k * x + kk
observe y [1] = x
"""
    assert codes(source) == [("E100", 3), ("E201", 5)]


def test_broken_header_is_not_also_missing():
    assert [c for c, _ in codes("model \x00\n")] == ["E100"]


def test_byte_order_mark_is_ignored(tmp_path):
    f = tmp_path / "bom.nimm"
    f.write_bytes("\ufeffmodel m\nconst c [1] = 1\nobserve y [1] = c\n".encode("utf-8"))
    model = nimm_dsl.load(f)
    assert model.name == "m"
    assert not [d for d in nimm_dsl.check("\ufeffmodel m\n") if d.is_error]


BASE = """model m
time t [day]
param k [1/day] = 0.5 in [0, 1]
param r [1/day] = 0.5 in [0, 1]
state G [1] = 1 in [0, inf]
state H [1] = 1 in [0, inf]
der(G) = -k * G
der(H) = -r * H
observe y [1] = G
observe z [1] = H
"""


def replaced(old: str, new: str) -> str:
    assert old in BASE
    return BASE.replace(old, new)


def test_a_broken_multi_line_statement_covers_all_its_lines():
    # `r` is used on the first line of a statement whose error is on its second line.
    source = replaced("der(H) = -r * H", "der(H) = (-r * H\n   + * 2)")
    assert codes(source) == [("E100", 9)]


def test_a_broken_observe_does_not_make_what_it_observes_unobservable():
    # Only `z` reached H and r: with its line broken, W702 (H) and W704 (r) would be cascades.
    source = replaced("observe z [1] = H", "observe z [1] = H +* 2")
    assert codes(source) == [("E100", 10)]


def test_a_broken_declaration_still_allows_reachability_warnings():
    source = replaced("param r [1/day] = 0.5 in [0, 1]", "param r [1/day] = 0.5 in [0, 1]\nparam q [1/day] = = 1\n"
                      "param w [1/day] = 0.5 in [0, 1]\nstate U [1] = 0\nder(U) = w")
    assert codes(source) == [("E100", 5), ("W702", 7), ("W704", 6)]


def test_a_textbook_derivative_reports_one_error_and_no_cascade():
    # Without the line, G has no dynamics (E301) and k is unused (W701): both follow from it.
    source = replaced("der(G) = -k * G", "dG/dt = -k * G")
    found = nimm_dsl.check(source)
    assert [(d.code, d.span.line, d.span.column, d.hint) for d in found] == [("E100", 7, 1, "write `der(G) = ...`")]


def test_recovered_statements_are_checked_like_any_other():
    # `**` and a continuation line are reported, the statements are kept: their names count as
    # used, and a real fault inside them is still found.
    source = replaced("der(H) = -r * H", "der(H) = -r * H\n  + k * G ** 2")
    assert codes(source) == [("E100", 9), ("E100", 9)]
    assert codes(source.replace("k * G ** 2", "k ** 2 * G")) == [("E100", 9), ("E100", 9), ("E401", 9)]
