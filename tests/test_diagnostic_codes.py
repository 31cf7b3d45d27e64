"""The one table of diagnostic codes (nimm_dsl/diagnostics.py): every code the checker reports has
a minimal model that triggers it, at the line and column of the offending token, without
unrelated errors; every code sits in its area's range; docs/language.md §9 shows the same table."""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import pytest

import nimm_dsl
from nimm_dsl.diagnostics import AREAS, CODES, area_of

ROOT = Path(__file__).resolve().parents[1]

HEADER = "model m\ntime t [day]\n"  # lines 1-2; a case's own lines start at line 3
# A clean model (lines 3-6): one bounded param, one observed state with a der line.
DECAY = ("param k [1/day] = 1 in [0, 2]\n"
         "state x [1] = 1\n"
         "der(x) = -k * x\n"
         "observe y [1] = x\n")


@dataclass(frozen=True)
class Case:
    code: str
    source: str
    line: int
    column: int
    end_column: int | None = None  # checked when given
    also: frozenset = frozenset()  # other codes that truly follow from the same fault
    files: tuple = ()  # (name, text) written beside the model, which is then checked from its file

    @property
    def id(self) -> str:
        return self.code


def case(code, source, line, column, end_column=None, also=(), files=()):
    return Case(code, source, line, column, end_column, frozenset(also), tuple(files))


CASES = [
    # E100: syntax
    case("E100", HEADER + DECAY + "let z = x + * 2\n", 7, 13, 14),
    case("E100", HEADER + DECAY + "let z = (x + \n", 7, 9, 10),  # unclosed bracket: at the `(`
    case("E100", HEADER + DECAY + "scenario s\n  set k = 2\n", 7, 1),  # unclosed block
    case("E100", HEADER + DECAY + "let z = x $ 2\n", 7, 11, 12),  # stray character
    # E2xx: names
    case("E201", HEADER + "param gamma [1/day] = 1 in [0, 2]\nstate x [1] = 1\nder(x) = -gama * x\n"
         "observe y [1] = x\n", 5, 11, 15, also={"W701"}),  # gamma really is unused
    case("E202", HEADER + DECAY + "param k [1/day] = 2 in [0, 3]\n", 7, 7, 8),
    case("E203", HEADER + DECAY + "const exp [1] = 2\n", 7, 7, 10),
    case("E203", HEADER + DECAY + "const from [1] = 2\n", 7, 7, 11),
    case("E204", HEADER + DECAY + "set x = 2 from 1\n", 7, 5, 6),  # set of a state
    case("E204", HEADER + DECAY + "let z = k(x)\n", 7, 9, 10, also={"W701"}),  # calling a param
    case("E205", HEADER + "param k [1/day] = 1 in [0, 2]\nstate x [1] = 1\nder(x) = -k * x * max(x)\n"
         "observe y [1] = x\n", 5, 19, 22),
    # E3xx: structure
    case("E301", HEADER + DECAY + "state z [1] = 0\n", 7, 7, 8, also={"W702"}),
    case("E302", HEADER + DECAY + "der(x) = k * x\n", 7, 5, 6),
    case("E303", "model m\n" + DECAY, 3, 7),  # no time, at the first state
    case("E303", HEADER + DECAY + "time s [h]\n", 7, 6, 7),  # declared twice, at the second name
    case("E304", HEADER + DECAY + "let a = b\nlet b = a\n", 7, 5, 6, also={"W701"}),
    case("E305", HEADER + DECAY + "model m2\n", 7, 1),
    case("E305", "time t [day]\n" + DECAY, 1, 1),
    case("E306", HEADER + "param k [1/day] = 1 in [0, 2]\nconst c [1/day] = k\nstate x [1] = 1\n"
         "der(x) = -c * x\nobserve y [1] = x\n", 4, 19, 20),
    case("E306", HEADER + DECAY + "param j [1] = x in [0, 2]\nobserve w [1] = j\n", 7, 15, 16),
    # a sigma is one number over the data: params and consts only (a state there failed the fit)
    case("E306", HEADER + DECAY.replace("observe y [1] = x", "observe y [1] = x ~ normal(sigma = 0.1 * x)"),
         6, 42, 43),
    # a set that reaches an initial value may use only what an initial value may
    case("E306", HEADER + DECAY.replace("state x [1] = 1", "param x0 [1] = 1 in [0, 2]\nstate x [1] = x0")
         + "let z [1] = 2 * x\nset x0 = z from 1\n", 9, 10, 11),
    case("E307", HEADER + "unit person\nparam k [1/day] = 1 in [0, 2]\nstate x [1] = 1\n"
         "state p [person] = 1\nflow x -> p = k * x\nobserve y [1] = x\nobserve z [person] = p\n", 7, 6, 12),
    case("E307", HEADER + "param k [1/day] = 1 in [0, 2]\nstate x [1] = 1\nflow x -> x = k * x\n"
         "observe y [1] = x\n", 5, 11, 12),
    case("E307", HEADER + DECAY + "flow -> = k\n", 7, 6, 8),
    # E4xx: units
    case("E401", HEADER + "unit person\nparam k [1/day] = 1 in [0, 2]\nstate x [person] = 1\n"
         "der(x) = -k * x - k\nobserve y [person] = x\n", 6, 19, 20),
    case("E402", HEADER + "param k [1/day] = 1 in [0, 2]\nstate x [1] = 1\nder(x) = -x\n"
         "observe y [1] = k * x * 1 [day]\n", 5, 10, 12),
    case("E403", HEADER + "param k [1/day] = 1 in [0, 2]\nstate x [1] = 1\nder(x) = -k * x * exp(k)\n"
         "observe y [1] = x\n", 5, 23, 24),
    case("E404", HEADER + "param k [1/day] = 1 in [0, 2]\nstate x [1] = 1\nder(x) = -k * x^k\n"
         "observe y [1] = x\n", 5, 17, 18),
    case("E405", HEADER + "param k [1/day] = 1 [h] in [0, 2]\nstate x [1] = 1\nder(x) = -k * x\n"
         "observe y [1] = x\n", 3, 19, 24),
    case("E406", HEADER + "param k [1/dy] = 1 in [0, 2]\nstate x [1] = 1\nder(x) = -k * x\n"
         "observe y [1] = x\n", 3, 12, 14),
    case("E407", HEADER + "param k [1/day] = 1 in [0, 2]\nstate x [1] = 1\nder(x) = -k * (x > 1)\n"
         "observe y [1] = x\n", 5, 15, 22),
    # E5xx: values and options
    case("E501", HEADER + "param k [1/day] = 1 in [2, 0]\nstate x [1] = 1\nder(x) = -k * x\n"
         "observe y [1] = x\n", 3, 24, 30),
    case("E502", HEADER + "param k [1/day] = 3 in [0, 2]\nstate x [1] = 1\nder(x) = -k * x\n"
         "observe y [1] = x\n", 3, 19, 20),
    case("E503", HEADER + DECAY.replace("observe y [1] = x", "observe y [1] = x ~ gauss(sigma = 1)"), 6, 21, 26),
    case("E503", HEADER + DECAY + "dose D: x += 1 at 0 every 1 times 0\n", 7, 35, 36),
    case("E504", HEADER + "param k [1/day] = 1 / (2 - 2) in [0, 2]\nstate x [1] = 1\nder(x) = -k * x\n"
         "observe y [1] = x\n", 3, 19, 30),
    # W7xx: warnings
    # E35x: index families (a family line with an error is dropped, so `c` may go unused)
    case("E350", HEADER + DECAY + "const c[i in nn] [1] = 1\n", 7, 14, 16),
    case("E351", HEADER + DECAY + "index n = 1..3\nconst c[i in n] [1] = 1\nobserve z [1] = c * x\n",
         9, 17, 18, also={"W701"}),
    case("E351", HEADER + DECAY + "index n = 1..3\nconst c[i in n] [1] = 1\nobserve z[i in n] [1] = c[i, i] * x\n",
         9, 25, 32, also={"W701"}),
    case("E352", HEADER + DECAY + "index n = 1..3\nconst c[i in n] [1] = 1\nobserve z[i in n] [1] = c[j] * x\n",
         9, 27, 28, also={"W701"}),
    case("E352", HEADER + DECAY + "index n = 1..3\nconst c[i in n] [1] = 1\nobserve z [1] = c[4] * x\n",
         9, 19, 20, also={"W701"}),
    case("E353", HEADER + DECAY + "index n = 1..3\nindex g = [a, b]\nconst c[i in n] [1] = 1\n"
         "observe z[j in g] [1] = c[j] * x\n", 10, 27, 28, also={"W701"}),
    case("E354", HEADER + DECAY + "index n = 1..3\nconst c[i in n] [1] = table(\"c.csv\")\n"
         "observe z[i in n] [1] = c[i] * x\n", 8, 29, 37),  # model text without a folder
    case("E354", HEADER + DECAY + "index n = 1..3\nconst c[i in n] [1] = table(\"../c.csv\")\n"
         "observe z[i in n] [1] = c[i] * x\n", 8, 29, 40, files=[("c.csv", "n,c\n1,1\n2,2\n3,3\n")]),
    case("E355", HEADER + DECAY + "index n = 1..3\nconst c[i in n] [1] = table(\"c.csv\")\n"
         "observe z[i in n] [1] = c[i] * x\n", 8, 29, 37, files=[("c.csv", "n,c\n1,1\n2,2\n4,3\n")]),
    case("E356", HEADER + DECAY + "index n = 1..3\nconst c[i in n, i in n] [1] = 1\n", 8, 17, 18),
    case("W701", HEADER + DECAY + "const c [1] = 1\n", 7, 7, 8),
    case("W702", HEADER + DECAY + "state z [1] = 0\nder(z) = k * x\n", 7, 7, 8),
    case("W703", HEADER + "param k [1/day] = 1\nstate x [1] = 1\nder(x) = -k * x\nobserve y [1] = x\n", 3, 7, 8),
    case("W704", HEADER + DECAY + "param j [1/day] = 1 in [0, 2]\nstate z [1] = 0\nder(z) = j\n", 7, 7, 8,
         also={"W702"}),  # z, which j drives, is unobserved too
    case("W705", HEADER + DECAY + "index n = 1..3\nstate s[i in n] [1] = 1\nstate u[i in n] [1] = 0\n"
         "flow s[i] -> u[j] = k * s[i]\nobserve v[i in n] [1] = u[i]\n", 10, 16, 17),
    case("W706", HEADER + DECAY + "index n = 1..3\nconst c[i in n] [1] = 1\n"
         "observe v[i in n] [1] = sum(j in n, c[i]) * x\n", 9, 29, 30),
    case("W707", HEADER + DECAY + "index n = 1..3\nparam c[i in n] [1] = 1 in [0, 2]\n"
         "observe v[i in n] [1] = c[i] * x\nset c[j] = 2 from 1\n", 10, 7, 8),
]


def test_cases_cover_every_code_the_checker_reports():
    # E000 is the last resort of a bug, never a model's fault: tests/test_fuzz_checker.py has its case
    reported = {code for code in CODES if area_of(code).phase == "check" and area_of(code).name != "internal"}
    assert {c.code for c in CASES} == reported


def test_every_code_lies_in_exactly_one_area_of_its_severity():
    for code in CODES:
        assert [a.name for a in AREAS if code in a] == [area_of(code).name], code
    numbers = sorted((a.first[0], int(a.first[1:]), int(a.last[1:])) for a in AREAS)
    for (letter, _, last), (next_letter, first, _) in zip(numbers, numbers[1:]):
        assert letter != next_letter or last < first, "areas overlap"


def documented_codes() -> dict[str, str]:
    text = (ROOT / "docs" / "language.md").read_text()
    section = text[text.index("## 9. Diagnostics"):text.index("## 10.")]
    return {m.group(1): m.group(2) for m in re.finditer(r"^\| ([EW]\d{3}) \| ([^|]*?) \|", section, re.M)}


def test_docs_show_the_code_table_word_for_word():
    documented = documented_codes()
    assert sorted(documented) == sorted(CODES), "codes only in the docs or only in the table"
    assert {c: m for c, m in documented.items() if m != CODES[c]} == {}


def test_the_base_model_is_clean():
    assert nimm_dsl.check(HEADER + DECAY) == []


@pytest.mark.parametrize("c", CASES, ids=[c.id for c in CASES])
def test_code_at_its_token(c: Case, tmp_path):
    if c.files:
        for name, text in c.files:
            (tmp_path / name).write_text(text)
        model = tmp_path / "m.nimm"
        model.write_text(c.source)
        diagnostics = nimm_dsl.check(c.source, str(model))
    else:
        diagnostics = nimm_dsl.check(c.source)
    found = [d for d in diagnostics if d.code == c.code]
    assert [(d.span.line, d.span.column) for d in found] == [(c.line, c.column)], diagnostics
    if c.end_column is not None:
        assert found[0].span.end_column == c.end_column, found[0]
    assert found[0].message
    # Nothing unrelated to the fault: no other code beyond what the fault itself implies.
    assert {d.code for d in diagnostics} - {c.code} <= c.also, diagnostics


def only(source: str, code: str):
    found = [d for d in nimm_dsl.check(source) if d.code == code]
    assert len(found) == 1, found
    return found[0]


def test_e401_message_names_both_units():
    d = only(HEADER + "unit person\nparam k [1/day] = 1 in [0, 2]\nstate x [person] = 1\n"
             "der(x) = -k * x - k\nobserve y [person] = x\n", "E401")
    assert "[person/day]" in d.message and "[1/day]" in d.message, d.message
    assert d.hint == "did you mean `k * x`?"


def test_e201_hint_suggests_the_close_name():
    d = only(HEADER + "param gamma [1/day] = 1 in [0, 2]\nstate x [1] = 1\nder(x) = -gama * x\n"
             "observe y [1] = x\n", "E201")
    assert "gama" in d.message
    assert d.hint == "did you mean `gamma`?"


def test_e402_message_names_found_and_expected_units():
    d = only(HEADER + "param k [1/day] = 1 in [0, 2]\nstate x [1] = 1\nder(x) = -x\n"
             "observe y [1] = k * x * 1 [day]\n", "E402")
    assert "[1]" in d.message and "[1/day]" in d.message, d.message


def test_e406_hint_suggests_the_library_unit():
    d = only(HEADER + "param k [1/dy] = 1 in [0, 2]\nstate x [1] = 1\nder(x) = -k * x\n"
             "observe y [1] = x\n", "E406")
    assert "`dy`" in d.message and "`day`" in d.hint


def test_syntax_error_does_not_hide_errors_on_other_lines():
    source = HEADER + DECAY + "let z = x + * 2\nconst c [1] = undefined_name\n"
    assert [(d.code, d.span.line) for d in nimm_dsl.check(source) if d.is_error] == [("E100", 7), ("E201", 8)]


def test_e401_hint_never_divides_a_name_by_itself():
    # `x + k` with x [1], k [1/day]: k is the only [1/day] name; `k / k` would be a useless fix.
    d = only(HEADER + "param k [1/day] = 1 in [0, 2]\nstate x [1] = 1\nder(x) = -k * x\n"
             "observe y [1] = x + k\n", "E401")
    assert (d.span.line, d.span.column) == (6, 21)
    assert "`k / k`" not in (d.hint or "")


@pytest.mark.parametrize("factor", ["0", "0.0", "inf", "1e-400", "1e400"])
def test_derived_unit_factor_must_be_positive_and_finite(factor):
    # Found by fuzzing: `unit z = 0 [person]` crashed the bounds check (division by zero) and
    # `unit z = inf [person]` crashed building the exact factor.
    source = (f"model m\nunit person\nunit z = {factor} [person]\n"
              "param K [z] = 1 in [0, 2]\nobserve o [1] = K / (1 [person])\n")
    diagnostics = nimm_dsl.check(source)
    assert [(d.code, d.span.line, d.span.column) for d in diagnostics if d.is_error] == [("E306", 3, 10)]
