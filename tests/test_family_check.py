"""The checker runs on a reduced expansion of index families (compiler/families.py, `reduce`):
each index keeps the members the text names and one member per set of indexes sharing members.
These tests hold it to the whole expansion: same codes at the same places, for the families
models of the test suite, the examples and the benchmark task, and for faults that sit in the
text of one element or one subset."""
from __future__ import annotations

from pathlib import Path

import pytest

from nimm_dsl.compiler.check import check_source
from nimm_dsl.compiler.families import TableAccess, expand_families
from nimm_dsl.grammar.parser import parse

from test_families import NEURAL, SEIR, SMALL

ROOT = Path(__file__).resolve().parent.parent
TASK_DATA = TableAccess(ROOT / "benchmarks" / "tasks" / "data")

BASE = """model m
time t [day]
index patch = 1..{n}
index west = [2, 3]
param r [1/day] = 0.3 in [0, 1]
param k[p in patch] [1/day] = 0.1 in [0, 1]
state x[p in patch] [1] = 1
{dynamics}
observe y[p in patch] [1] = x[p]
{extra}
"""
ALL_DYNAMICS = "der(x[p]) = -r * x[p]"


def model(n=1000, dynamics=ALL_DYNAMICS, extra=""):
    return BASE.format(n=n, dynamics=dynamics, extra=extra)


def places(diagnostics):
    return sorted({(d.code, d.span.line, d.span.column) for d in diagnostics})


def assert_same_as_whole(text, file="<model>", tables=None):
    reduced = check_source(text, file, tables)
    whole = check_source(text, file, tables, whole=True)
    assert places(reduced.diagnostics) == places(whole.diagnostics)
    return reduced.diagnostics


# Faults that only some elements have: each must be found where the whole expansion finds it.
ELEMENT_FAULTS = [
    # one element's dynamics written, the others have none
    (dict(dynamics="der(x[3]) = -r * x[3]"), "E301", 7),
    # the elements of a subset given a flow besides their der line
    (dict(extra="flow x[p in west] -> = r * x[p]"), "E302", 8),
    # a unit fault in a line about one named element
    (dict(extra="observe z [1] = x[7] + 1 [day]"), None, 10),
    # a literal subscript outside a large index
    (dict(extra="observe z [1] = x[1001]"), "E352", 10),
    # a set on one element of a param family with the wrong unit
    (dict(extra="scenario s\n  set k[5] = 2 [day] from 3\nend"), None, 11),
    # a set on a subset whose value uses a name that does not exist
    (dict(extra="scenario s\n  set k[p in west] = 2 * nope from 3\nend"), "E201", 11),
]


@pytest.mark.parametrize("changes, code, line", ELEMENT_FAULTS)
def test_a_fault_in_the_text_of_one_element_or_subset_is_found_as_in_the_whole_model(changes, code, line):
    found = [d for d in assert_same_as_whole(model(**changes)) if d.is_error]
    assert found, "the fault was not found"
    assert {d.span.line for d in found} == {line}
    if code is not None:
        assert {d.code for d in found} == {code}


def test_a_fault_in_the_line_of_every_element_is_found_once_at_its_line():
    found = [d for d in assert_same_as_whole(model(dynamics="der(x[p]) = -r * x[p] * 2 [day]")) if d.is_error]
    assert [(d.code, d.span.line) for d in found] == [(found[0].code, 8)]


@pytest.mark.parametrize("text", [SEIR, SMALL, NEURAL, model(), model(n=7)], ids=["seir", "small", "neural", "base", "base7"])
def test_the_families_models_check_alike_reduced_and_whole(text):
    assert_same_as_whole(text)


@pytest.mark.parametrize("path", sorted((ROOT / "benchmarks" / "tasks" / "models" / "metapop").glob("*.nimm"))
                         + [ROOT / "examples" / "metapop_seir.nimm"], ids=lambda p: p.stem)
def test_the_task_and_example_family_models_check_alike_reduced_and_whole(path):
    assert_same_as_whole(path.read_text(), str(path), TASK_DATA)


def test_the_reduced_expansion_does_not_grow_with_the_index():
    def statements(n):
        program, _ = parse(SEIR.replace("1..100", f"1..{n}"), "m")
        expanded, diagnostics, info = expand_families(program, "m", None, reduce=True)
        assert not diagnostics and len(info.indexes["district"]) == n
        return len(expanded.statements)

    # districts 2, 3, 5 (the subset `treated`) and one district outside it
    assert statements(100) == statements(1000) < statements(10) * 2


def test_what_comes_after_the_check_sees_every_element():
    checked = check_source(SEIR)
    assert checked.ok
    states = [s.name for s in checked.table.symbols.values() if s.kind == "state"]
    assert len(states) == 4 * 100 and "I[57]" in states


def test_a_fault_only_the_whole_model_has_is_refused_at_lowering_with_its_place():
    # 1 / (p - 50) fails to fold only at p = 50, which no line names: the reduced check cannot
    # see it, so lowering (which expands every element) refuses the model at that line
    import nimm_dsl
    from nimm_dsl.errors import ModelError

    text = model(n=100, extra="observe z[p in patch] [1] = x[p] / (p - 50)")
    whole = [d for d in check_source(text, whole=True).diagnostics if d.is_error]
    assert [(d.code, d.span.line) for d in whole] == [("E504", 10)]
    model_ = nimm_dsl.load_source(text)
    with pytest.raises(ModelError) as error:
        model_.ir
    assert [(d.code, d.span.line) for d in error.value.diagnostics] == [("E504", 10)]
