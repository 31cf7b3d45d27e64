"""Every shipped example checks clean, and the shipped data tables fit the models meant for them.

The examples are what users copy first, so a warning in one of them is a bug in the example (or
in the checker): the test prints every diagnostic with its line so the culprit is obvious.
"""
from __future__ import annotations

import csv
import re
from pathlib import Path

import pytest

import nimm_dsl
from nimm_dsl.compiler.check import check_source
from nimm_dsl.grammar import ast as A
from nimm_dsl.grammar.parser import parse

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
MODELS = sorted(EXAMPLES.glob("*.nimm"))

# Example model -> the shipped data table it is fitted to.
DATA_FOR = {
    "flu_sir.nimm": "influenza_england_1978_school.csv",
    "lotka_volterra.nimm": "hudson_bay_lynx_hare.csv",
    "lotka_volterra_neural.nimm": "hudson_bay_lynx_hare.csv",
    "michaelis_menten.nimm": "puromycin_treated.csv",
}


def test_the_examples_show_every_statement_kind():
    # The examples are the language's working documentation (docs/language.md points to them).
    kinds = set()
    for path in MODELS:
        program, _ = parse(path.read_text())
        for stmt in program.statements:
            kinds.add(type(stmt))
            kinds.update(type(inner) for inner in getattr(stmt, "body", ()))
    assert set(A.Statement.__args__) - kinds == set()


@pytest.mark.parametrize("path", MODELS, ids=lambda p: p.name)
def test_example_checks_without_errors_or_warnings(path):
    diagnostics = nimm_dsl.check(path.read_text(), path.name)
    listing = "\n".join(f"{path.name}:{d.span.line}:{d.span.column}: {d.code} {d.message}"
                        for d in diagnostics)
    assert diagnostics == [], listing


@pytest.mark.parametrize("path", MODELS, ids=lambda p: p.name)
def test_example_names_its_source_in_a_leading_comment(path):
    header = []
    for line in path.read_text().splitlines():
        if not line.startswith("#"):
            break
        header.append(line)
    assert header, f"{path.name} must open with comments naming its source"
    # A published source is cited with a year: "(1952)", "1978;1:587", "(2004)".
    years = [int(y) for y in re.findall(r"(?<!\d)(1[89]\d\d|20[0-2]\d)(?!\d)", " ".join(header))]
    assert years, f"{path.name}: no publication year (1800-2029) in the source comment"


@pytest.mark.parametrize("model_name, data_name", sorted(DATA_FOR.items()))
def test_shipped_data_columns_match_the_model(model_name, data_name):
    program = check_source((EXAMPLES / model_name).read_text(), model_name).program
    with open(EXAMPLES / "data" / data_name, newline="") as f:
        header = next(csv.reader(f))
    times = [s.name.name for s in program.statements if isinstance(s, A.TimeDecl)]
    observes = [s.name.name for s in program.statements if isinstance(s, A.ObserveDecl)]
    inputs = [s.name.name for s in program.statements if isinstance(s, A.InputDecl)]
    for name in times + inputs:
        assert name in header, f"{data_name} lacks the column `{name}` that {model_name} needs"
    assert any(name in header for name in observes), f"{data_name} has no observed column of {model_name}"


def test_shipped_data_keep_their_attribution():
    sources = (EXAMPLES / "data" / "SOURCES.md").read_text()
    for table in sorted((EXAMPLES / "data").glob("*.csv")):
        assert f"## {table.name}" in sources, f"{table.name} has no section in examples/data/SOURCES.md"
