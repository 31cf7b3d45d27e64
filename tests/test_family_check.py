"""The checker runs on a reduced expansion of index families (compiler/families.py, `reduce`):
each index keeps the members the text names and one member per set of indexes sharing members.
These tests hold it to the whole expansion: same codes at the same places, for the families
models of the test suite, the examples and the benchmark task, and for faults that sit in the
text of one element or one subset."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from nimm_dsl.compiler.check import check_source
from nimm_dsl.compiler.families import TableAccess, expand_families
from nimm_dsl.grammar.parser import parse

from test_families import NEURAL, SEIR, SMALL
from test_transit_chain import CHAIN, LINE

LONG_LINE = (LINE.replace("1..8", "1..1000").replace("2..7", "2..999").replace("[8]", "[1000]")
             .replace("u[7]", "u[999]").replace("[1, 8]", "[1, 1000]"))

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


@pytest.mark.parametrize("text", [SEIR, SMALL, NEURAL, model(), model(n=7), LINE, LONG_LINE, CHAIN],
                         ids=["seir", "small", "neural", "base", "base7", "line", "line1000", "chain1000"])
def test_the_families_models_check_alike_reduced_and_whole(text):
    assert_same_as_whole(text)


@pytest.mark.parametrize("path", sorted((ROOT / "benchmarks" / "tasks" / "models" / "metapop").glob("*.nimm"))
                         + [ROOT / "examples" / "metapop_seir.nimm", ROOT / "examples" / "transit_chain.nimm"],
                         ids=lambda p: p.stem)
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


# ---------------------------------------------------------------- shifted subscripts
# With `T[s+1]` each element depends on its neighbours, so the reduced check keeps the members
# near every run end of every index and inline set and glues the long stretches between them
# (families._Glue). These hold it to the whole expansion where it matters: at the ends of a chain,
# of a line's range and of a subset.
CHAIN_TEMPLATE = """model chain
time t [h]
index stage = 1..{n}
index mid = [400, 401, 700]
param ktr [1/h] = 1 in [0.1, 10]
state T[s in stage] [mg] = 0
{dynamics}
observe y [mg] = sum(k in stage, T[k])
"""
CHAIN_DYNAMICS = "flow T[s in 1..{m}] -> T[s+1] = ktr * T[s]\nflow T[{n}] -> = ktr * T[{n}]"


def chain(n=1000, dynamics=CHAIN_DYNAMICS):
    return CHAIN_TEMPLATE.format(n=n, dynamics=dynamics.format(n=n, m=n - 1))


SHIFT_FAULTS = [
    # the chain stops two stages early: T[999] gets nothing (E301 on the state's line)
    (dict(dynamics="flow T[s in 1..997] -> T[s+1] = ktr * T[s]\nflow T[1000] -> = ktr * T[1000]"), "E301", 6),
    # a shifted target whose variable no subscript of the line binds
    (dict(dynamics="flow -> T[s+1] = ktr"), "E352", 7),
    (dict(dynamics="flow T[s in 1..999] -> = ktr * T[s+1]"), "E301", 6),
    # a der line on a subset that the chain also flows into
    (dict(dynamics=CHAIN_DYNAMICS + "\nder(T[s in mid]) = -ktr * T[s-1]"), "E302", 9),
    # a shift two stages back, from a range that starts too early for it
    (dict(dynamics="der(T[s in 2..1000]) = ktr * (T[s-2] - T[s])\nder(T[1]) = -ktr * T[1]"), "E352", 7),
    # the same written right
    (dict(dynamics="der(T[s in 3..1000]) = ktr * (T[s-2] - T[s])\nder(T[s in 1..2]) = -ktr * T[s]"), None, None),
]


@pytest.mark.parametrize("changes, code, line", SHIFT_FAULTS)
def test_a_fault_at_the_end_of_a_chain_is_found_as_in_the_whole_model(changes, code, line):
    found = [d for d in assert_same_as_whole(chain(**changes)) if d.is_error]
    assert [(d.code, d.span.line) for d in found] == ([(code, line)] if code else [])


def test_a_reduced_chain_does_not_grow_with_its_length():
    def statements(n):
        program, _ = parse(chain(n), "m")
        expanded, diagnostics, info = expand_families(program, "m", None, reduce=True)
        assert not diagnostics and len(info.indexes["stage"]) == n
        return len(expanded.statements)

    assert statements(1000) == statements(10_000) < 100


def _random_model(rng) -> str:
    """Flows, der lines and sums with shifts of up to 3 over random inline sets and a subset."""
    n = rng.choice([30, 200])
    subset = ", ".join(map(str, sorted(rng.sample(range(1, n + 1), 3))))
    lines = ["model m", "time t [day]", f"index x = 1..{n}", f"index sub = [{subset}]",
             "param r [1/day] = 0.3 in [0, 1]", "state T[s in x] [1] = 1", "state U[s in x] [1] = 1"]

    def members():
        a = rng.randint(1, n)
        b = rng.randint(a, n)
        return rng.choice([f"{a}..{b}", "x", "sub", f"[{a}, {b}]" if a != b else f"[{a}]"])

    for _ in range(rng.randint(1, 4)):
        c = rng.choice([-3, -2, -1, 1, 2, 3])
        shift = f"s{'+' if c > 0 else '-'}{abs(c)}"
        a, b = rng.choice("TU"), rng.choice("TU")
        lines.append(rng.choice([
            f"flow {a}[s in {members()}] -> {b}[{shift}] = r * {a}[s]",
            f"flow {a}[s in {members()}] -> = r * {b}[{shift}]",
            f"der({a}[s in {members()}]) = r * ({b}[{shift}] - {a}[s])",
            f"flow {a}[s in {members()}] -> = r * {a}[s]",
            f"der({a}[{rng.randint(1, n)}]) = -r * {a}[{rng.randint(1, n)}]",
        ]))
    lines.append("observe y [1] = sum(k in x, T[k] + U[k])")
    return "\n".join(lines) + "\n"


def test_random_chains_check_alike_reduced_and_whole():
    import random

    rng = random.Random(14)
    codes = set()
    for _ in range(40):
        text = _random_model(rng)
        found = assert_same_as_whole(text)
        # and worded alike, to the count of elements the members of cut stretches add
        assert [d.message for d in found] == [d.message for d in check_source(text, whole=True).diagnostics], text
        codes.update(d.code for d in found)
    assert {"E301", "E302", "E352"} <= codes  # the sample reaches the faults that shifts can make


AGES = """model ages
time t [day]
unit person
index age = [child, adult, senior]
param beta [1/day] = 0.5 in [0.01, 3]
state S[a in age] [person] = 999
state I[a in age] [person] = 1
flow S[a] -> I[a] = beta * S[a] * I[a] / 1000 [person]
state R[a in age] [person] = 0
flow I[a] -> R[a] = 0.2 [1/day] * I[a]
observe cases [person/day] = 0.2 [1/day] * I[{observed}] ~ poisson
"""


def test_a_member_the_text_names_does_not_stand_for_the_members_it_leaves_alone():
    # only the children are observed: the adults' and seniors' states reach no observation, which
    # the reduced check once missed because `child` (named) stood for every age
    found = assert_same_as_whole(AGES.format(observed="child"))
    assert {(d.code, d.span.line) for d in found} == {("W702", 6), ("W702", 7), ("W702", 9)}
    assert "`S[adult]`" in found[0].message and "`S[senior]`" in found[0].message


def test_a_fault_of_every_element_of_a_line_names_them_all_reduced_and_whole_alike():
    text = AGES.format(observed="child").replace("0.2 [1/day] * I[child]", "sum(a in age, I[a]) / 5 [day]")
    for named in ("age = [child, adult, senior]", "age = 1..100"):
        source = text.replace("age = [child, adult, senior]", named)
        reduced = [d.message for d in check_source(source).diagnostics]
        assert reduced == [d.message for d in check_source(source, whole=True).diagnostics]
        w702 = [m for m in reduced if "`R[" in m]
        assert w702 == (["state `R[child]` can influence no observation (likewise `R[adult]` and `R[senior]`)"]
                        if "child" in named else
                        ["state `R[1]` can influence no observation (likewise `R[2]`, `R[3]`, ..., `R[100]`: "
                         "99 more elements)"])


def test_a_fault_of_one_named_element_names_only_it():
    found = check_source(AGES.format(observed="child") + "der(I[adult]) = 0 [person/day]\n").diagnostics
    e302 = [d for d in found if d.code == "E302"]
    assert [d.message for d in e302] == [
        "state `I[adult]` has both a `der` line and flows (lines 8, 10); expected one or the other"]


def _random_named_model(rng) -> str:
    """Named members, a subset, and lines about the whole index, the subset or one member: which
    states reach an observation, which have dynamics and which have two kinds of them varies."""
    members = ["north", "south", "east", "west", "centre"]
    sub = rng.sample(members, 2)
    lines = ["model m", "time t [day]", f"index zone = [{', '.join(members)}]", f"index coast = [{', '.join(sub)}]",
             "param r [1/day] = 0.3 in [0, 1]", "param q[z in zone] [1/day] = 0.1 in [0, 1]",
             "state A[z in zone] [1] = 1", "state B[z in zone] [1] = 1"]

    def over():
        return rng.choice(["z in zone", "z in coast", f"z in [{rng.choice(members)}]"])

    for _ in range(rng.randint(2, 5)):
        a, b, m = rng.choice("AB"), rng.choice("AB"), rng.choice(members)
        lines.append(rng.choice([
            f"flow {a}[{over()}] -> {b}[z] = q[z] * {a}[z]",
            f"der({a}[{over()}]) = -r * {a}[z]",
            f"der({a}[{m}]) = -r * {b}[{m}]",
            f"flow {a}[{over()}] -> = r * {b}[{m}]",
        ]))
    for _ in range(rng.randint(1, 2)):
        a, m = rng.choice("AB"), rng.choice(members)
        lines.append(rng.choice([f"observe y_{len(lines)} [1] = {a}[{m}] ~ normal(sigma = 0.1)",
                                 f"observe y_{len(lines)} [1] = sum(k in coast, {a}[k]) ~ normal(sigma = 0.1)",
                                 f"observe y_{len(lines)}[{over()}] [1] = {a}[z] ~ normal(sigma = 0.1)"]))
    if rng.random() < 0.5:
        lines += ["scenario s", f"  set q[{rng.choice(members)}] = 0 [1/day] from 1", "end"]
    return "\n".join(lines) + "\n"


def _elements_named(message: str) -> tuple:
    names = re.findall(r"`[A-Za-z_]\w*\[[^`]*\]`", message)
    return re.sub(r"`[A-Za-z_]\w*\[[^`]*\]`", "E", message.split(" (likewise ")[0]), sorted(set(names))


def test_random_named_member_models_check_alike_reduced_and_whole():
    import random

    rng = random.Random(15)
    codes = set()
    for _ in range(60):
        text = _random_named_model(rng)
        reduced = check_source(text).diagnostics
        whole = check_source(text, whole=True).diagnostics
        assert places(reduced) == places(whole), text
        # the same words and the same elements named (which element leads may differ)
        assert [_elements_named(d.message) for d in reduced] == [_elements_named(d.message) for d in whole], text
        codes.update(d.code for d in reduced)
    assert {"E301", "E302", "W702", "W704"} <= codes  # the sample reaches what named members vary


def test_a_shifted_model_s_diagnostics_count_every_element_reduced_and_whole_alike():
    # a shift anywhere (`A[a+1]`) keeps whole-number members by their distance to the ends
    # (_Glue): the cut members still hold the fault, and the reduced check must count them
    text = AGES.format(observed="child").replace("[child, adult, senior]", "1..30").replace(
        "I[child]", "sum(a in age, I[a])") + ("state A[a in age] [person] = 1\n"
                                             "der(A[a in 1..29]) = 0.1 [1/day] * (A[a+1] - A[a])\n"
                                             "der(A[30]) = 0 [person/day]\n")
    reduced = [d.message for d in check_source(text).diagnostics]
    assert reduced == [d.message for d in check_source(text, whole=True).diagnostics]
    assert "state `R[1]` can influence no observation (likewise `R[2]`, `R[3]`, ..., `R[30]`: 29 more elements)" \
        in reduced


def test_a_sum_the_reduced_check_keeps_one_member_of_is_located_as_the_whole_sum():
    # the reduced index of three unnamed species keeps one member: its sum is one term, and a
    # unit fault at the sum is reported at `sum(`, as the whole model's three-term sum is
    text = ("model web\ntime t [day]\nindex species = [fox, hare, lynx]\n"
            "param r[s in species] [1/day] = 0.1 in [0, 1]\nconst C[s in species, z in species] [1] = 0.01\n"
            "state N[s in species] [1] = 1\nder(N[s]) = r[s] * N[s] - sum(z in species, C[s, z] * N[z])\n"
            "observe y[s in species] [1] = N[s] ~ normal(sigma = 0.1)\n")
    assert places(assert_same_as_whole(text)) == [("E401", 7, 31)]
