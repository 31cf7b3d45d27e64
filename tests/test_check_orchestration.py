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
