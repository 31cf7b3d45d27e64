"""Robustness of the front end under random edits (LANGUAGE.md §8: "No input makes it crash").

Random damage to the shipped examples, and arbitrary text, must give diagnostics with known codes
and spans inside the text, never an exception; `load_source` either returns a model or raises
ModelError. Harmless edits (blank lines, comments, spacing, statement order) keep valid models
free of diagnostics.
"""
from __future__ import annotations

import re
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import nimm_dsl
from nimm_dsl.diagnostics import CODES, area_of

EXAMPLES = {p.name: p.read_text() for p in sorted((Path(__file__).parent.parent / "examples").glob("*.nimm"))}
EXAMPLE_TEXTS = list(EXAMPLES.values())

KEYWORDS = ("model time unit param const state input let neural der flow observe dose set scenario "
            "end remove in at every times from to and or not interp step linear mlp normal "
            "lognormal poisson ifelse exp log sqrt min max pi inf").split()
OPERATORS = "+ - * / ^ = == != < <= > >= -> += *= ~ : , # \"".split()
BRACKETS = list("()[]")
UNITS = ["[1/day]", "[mg/L]", "[L/(h*kg)]", "[m^(1/2)]", "[1]", "[person]", "[au]", "[zz]", "[", "]"]
NUMBERS = ["0", "1", "-1", ".5", "1e-3", "2.5E+4", "1e309", "0.0", "1/0", "inf", "-inf", "99999999999999999999"]
NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# Tokens of the language, for re-spacing a line without changing its meaning.
TOKEN_RE = re.compile(r'"[^"\n]*"|#.*|\d+\.\.\d+|(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?|[A-Za-z_][A-Za-z0-9_]*'
                      r"|->|\+=|\*=|<=|>=|==|!=|\S")

FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def assert_well_formed(text: str, diagnostics) -> None:
    """Every diagnostic has a known code and a span inside the text (the line after the last
    one is allowed, for an unexpected end of input)."""
    n_lines = text.count("\n") + 1  # the lexer's line count: only \n ends a line
    for d in diagnostics:
        assert d.code in CODES and area_of(d.code).phase == "check", d
        assert 1 <= d.span.line <= n_lines + 1, (d, n_lines)
        assert d.span.column >= 1, d
        assert d.span.end_line >= d.span.line, d
        assert isinstance(d.message, str) and d.message, d


def assert_robust(text: str) -> None:
    diagnostics = nimm_dsl.check(text)
    assert not [d for d in diagnostics if d.code == "E000"], diagnostics  # the last resort is never reached
    assert_well_formed(text, diagnostics)
    try:
        model = nimm_dsl.load_source(text)
    except nimm_dsl.ModelError as error:
        assert any(d.is_error for d in error.diagnostics)
    else:
        assert not any(d.is_error for d in diagnostics), diagnostics
        assert model.name


# ---------------------------------------------------------------- random damage
def vocabulary(text: str) -> list[str]:
    return KEYWORDS + OPERATORS + BRACKETS + UNITS + NUMBERS + sorted(set(NAME_RE.findall(text)))


@st.composite
def damaged_models(draw) -> str:
    text = draw(st.sampled_from(EXAMPLE_TEXTS))
    for _ in range(draw(st.integers(1, 4))):
        text = draw(st.sampled_from(EDITS))(draw, text)
    return text


def _lines_edit(draw, text: str) -> str:
    lines = text.split("\n")
    i = draw(st.integers(0, len(lines) - 1))
    j = draw(st.integers(0, len(lines) - 1))
    action = draw(st.sampled_from(["delete", "duplicate", "swap"]))
    if action == "delete":
        del lines[i]
    elif action == "duplicate":
        lines.insert(j, lines[i])
    else:
        lines[i], lines[j] = lines[j], lines[i]
    return "\n".join(lines)


def _delete_chars(draw, text: str) -> str:
    i = draw(st.integers(0, len(text)))
    return text[:i] + text[i + draw(st.integers(1, 5)):]


def _insert_chars(draw, text: str) -> str:
    i = draw(st.integers(0, len(text)))
    return text[:i] + draw(st.text(min_size=1, max_size=4)) + text[i:]


def _insert_token(draw, text: str) -> str:
    i = draw(st.integers(0, len(text)))
    token = draw(st.sampled_from(vocabulary(text)))
    return f"{text[:i]} {token} {text[i:]}" if draw(st.booleans()) else text[:i] + token + text[i:]


def _delete_token(draw, text: str) -> str:
    tokens = list(TOKEN_RE.finditer(text))
    if not tokens:
        return text
    m = draw(st.sampled_from(tokens))
    return text[:m.start()] + text[m.end():]


def _truncate(draw, text: str) -> str:
    return text[:draw(st.integers(0, len(text)))]


def _wrap_in_parentheses(draw, text: str) -> str:
    """Wrap the right-hand side of one `=` in many parentheses (beyond the nesting limits too)."""
    lines = text.split("\n")
    candidates = [i for i, line in enumerate(lines) if " = " in line and not line.lstrip().startswith("#")]
    if not candidates:
        return text
    i = draw(st.sampled_from(candidates))
    depth = draw(st.sampled_from([1, 5, 50, 99, 100, 101, 150, 250, 1000]))
    head, rhs = lines[i].split(" = ", 1)
    code, hash_, comment = rhs.partition("#")
    lines[i] = f"{head} = {'(' * depth}{code.rstrip()}{')' * depth} {hash_}{comment}"
    return "\n".join(lines)


EDITS = [_lines_edit, _delete_chars, _insert_chars, _insert_token, _delete_token, _truncate,
         _wrap_in_parentheses]


@FUZZ
@given(damaged_models())
def test_random_edits_of_examples_never_crash(text):
    assert_robust(text)


@settings(max_examples=150, deadline=None)
@given(st.text(max_size=200))
def test_arbitrary_text_never_crashes(text):
    assert_robust(text)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.sampled_from(KEYWORDS + OPERATORS + BRACKETS + UNITS + NUMBERS + ["x", "\n", " "]),
                max_size=40))
def test_token_soup_never_crashes(tokens):
    assert_robust(" ".join(tokens))


@pytest.mark.parametrize("depth", [100, 101, 10_000])
@pytest.mark.parametrize("bracket", ["(", "["])
def test_deep_nesting_is_a_diagnostic(depth, bracket):
    closer = {"(": ")", "[": "]"}[bracket]
    text = f"model m\nconst c [1] = {bracket * depth}1{closer * depth}\n"
    assert_robust(text)


# ---------------------------------------------------------------- harmless edits
def units_of(text: str) -> list[list[str]]:
    """The file cut into movable units: each top-level line, each scenario block as a whole; the
    model header (and the comments before it) stays first."""
    lines = text.split("\n")
    head_end = next(i for i, line in enumerate(lines) if line.startswith("model "))
    units, block = [], None
    for line in lines[head_end + 1:]:
        if block is not None:
            block.append(line)
            if line.strip() == "end":
                units.append(block)
                block = None
        elif line.startswith("scenario "):
            block = [line]
        else:
            units.append([line])
    assert block is None
    return [lines[:head_end + 1]] + units


def respace(line: str, draw) -> str:
    indent = line[:len(line) - len(line.lstrip())]
    tokens = [m.group() for m in TOKEN_RE.finditer(line)]
    out = indent
    for token in tokens:
        out += token + " " * draw(st.integers(1, 3)) + ("\t" if draw(st.booleans()) else "")
    return out


@st.composite
def harmless_rewrites(draw) -> tuple[str, str]:
    name = draw(st.sampled_from(sorted(EXAMPLES)))
    header, *units = units_of(EXAMPLES[name])
    units = draw(st.permutations(units))
    out = list(header)
    for unit in units:
        for line in unit:
            if draw(st.integers(0, 4)) == 0:
                out.append(respace(line, draw))
            else:
                out.append(line)
            if draw(st.integers(0, 5)) == 0:
                out.append(draw(st.sampled_from(["", "   ", "# a comment: ( [ \" unclosed", "\t# x = y"])))
        if draw(st.booleans()):
            out[-1] += draw(st.sampled_from(["  # trailing comment", "   ", "\t"]))
    return name, "\n".join(out) + draw(st.sampled_from(["", "\n", "\n\n\n"]))


@pytest.mark.slow
@FUZZ
@given(harmless_rewrites())
def test_harmless_edits_keep_valid_models_clean(case):
    name, text = case
    before = {d.code for d in nimm_dsl.check(EXAMPLES[name])}
    after = nimm_dsl.check(text)
    assert before == set()
    assert {d.code for d in after} == before, [(d.code, d.span.line, d.span.column, d.message) for d in after]


def test_an_internal_error_becomes_e000_instead_of_an_exception(monkeypatch):
    """The last resort works (and the fuzz tests above show nothing reaches it)."""
    from nimm_dsl.compiler import check as check_module

    def broken(source, file):
        raise KeyError("a bug")

    monkeypatch.setattr(check_module, "check_source", broken)
    diagnostics = nimm_dsl.check("model m\n", "m.nimm")
    assert [(d.code, d.file, d.is_error) for d in diagnostics] == [("E000", "m.nimm", True)]
    assert "KeyError" in diagnostics[0].message and "report" in diagnostics[0].hint
