"""Index families (docs/language.md, "Index families"): one line per family, checked, lowered and run
in both back ends, against a hand-vectorised numpy right-hand side integrated by scipy."""
from __future__ import annotations

import numpy as np
import pytest
from scipy.integrate import solve_ivp

import nimm_dsl
from nimm_dsl.compiler.check import check_source
from nimm_dsl.compiler.families import TableAccess
from nimm_dsl.runtime.binding import bind

N = 100
# A 100-district SEIR in under 25 lines: contacts decay with the distance between district numbers.
def seir(n: int) -> str:
    return SEIR.replace("1..100", f"1..{n}")


SEIR = f'''model metapop "SEIR in {N} districts"
time t [day]
unit person
index district = 1..{N}
index treated = [2, 3, 5]
const pop[d in district] [person] = 1000 * (1 + d / 10)
param beta [1/day] = 0.6 in [0.01, 3]
param sigma [1/day] = 0.25 in [0.01, 1]
param gamma [1/day] = 0.2 in [0.01, 1]
param contact[d in district] [1] = 1 in [0.1, 2]
state S[d in district] [person] = pop[d] - ifelse(d == 1, 5 [person], 0 [person])
state E[d in district] [person] = 0
state I[d in district] [person] = ifelse(d == 1, 5, 0)
state R[d in district] [person] = 0
let force[d in district] [1/day] = beta * contact[d] * sum(k in district, exp(-abs(d - k) / 3) * I[k] / pop[k])
flow S[d] -> E[d] = force[d] * S[d]
flow E[d] -> I[d] = sigma * E[d]
flow I[d] -> R[d] = gamma * I[d]
observe cases[d in district] [person/day] = sigma * E[d] ~ poisson
scenario distancing
  set contact[d in treated] = 0.5 * contact[d] from 10
end
'''
TIMES = np.linspace(0, 120, 25)


def numpy_reference(beta=0.6, sigma=0.25, gamma=0.2, n=N, treated=(), cut_from=None, times=TIMES):
    """The same model written by hand as vectorised numpy, integrated by scipy's LSODA."""
    d = np.arange(1, n + 1)
    pop = 1000 * (1 + d / 10)
    kernel = np.exp(-np.abs(d[:, None] - d[None, :]) / 3)
    in_treated = np.isin(d, treated)

    def rhs(t, y):
        S, E, I, R = y.reshape(4, n)
        contact = np.where(in_treated & (cut_from is not None and t >= cut_from), 0.5, 1.0)
        infection = beta * contact * (kernel @ (I / pop)) * S
        return np.concatenate([-infection, infection - sigma * E, sigma * E - gamma * I, gamma * I])

    y0 = np.concatenate([pop - np.where(d == 1, 5, 0), np.zeros(n), np.where(d == 1, 5.0, 0.0), np.zeros(n)])
    spans = [(times[0], cut_from), (cut_from, times[-1])] if cut_from is not None else [(times[0], times[-1])]
    out, y = [], y0
    for a, b in spans:  # restart at the switch, as the back ends do at a set window
        inside = times[(times >= a) & ((times < b) if b != times[-1] else (times <= b))]
        sol = solve_ivp(rhs, (a, b), y, method="LSODA", t_eval=np.unique(np.r_[inside, b]),
                        rtol=1e-10, atol=1e-10)
        keep = np.isin(sol.t, inside)
        out.append(sol.y[:, keep])
        y = sol.y[:, -1]
    return np.concatenate(out, axis=1).reshape(4, n, -1)


@pytest.fixture(scope="module")
def model():
    return nimm_dsl.load_source(SEIR)


def test_the_family_model_is_short_and_checks_clean():
    assert len(SEIR.strip().splitlines()) < 25
    # R is not observed and feeds back nowhere: one warning for the family line, not one per district
    assert [(d.code, d.span.line) for d in nimm_dsl.check(SEIR)] == [("W702", 14)]


def test_elements_are_named_with_brackets(model):
    names = [s.name for s in model.ir.states]
    assert names[:3] == ["S[1]", "S[2]", "S[3]"] and len(names) == 4 * N
    assert [p.name for p in model.ir.params if p.estimate][3:5] == ["contact[1]", "contact[2]"]


def test_a_sum_lowers_to_one_n_ary_sum(model):
    from nimm_dsl.compiler.linear_forms import KernelRow

    force = {x.name: x.expr for x in model.ir.lets}
    # beta * contact * (sum of N terms): the sum is one node with every term, not a nested chain,
    # and its entries (I[k] / pop[k]) are one tuple that every district's row shares
    rows = [[node for node in _preorder(force[f"force[{d}]"]) if isinstance(node, KernelRow)] for d in (1, 50)]
    assert [len(r) for r in rows] == [1, 1]
    (first,), (middle,) = rows
    assert len(middle.weights) == len(middle.entries) == N and middle.entries is first.entries
    assert str(middle.entries[2]) == "I[3]/pop[3]" and float(middle.weights[48]) == pytest.approx(np.exp(-1 / 3))


def _preorder(expr):
    stack = [expr]
    while stack:
        node = stack.pop()
        yield node
        stack.extend(node.args)


def test_casadi_matches_a_vectorised_scipy_reference(model):
    res = model.simulate(TIMES, rtol=1e-10, atol=1e-10)
    ref = numpy_reference()
    for k, family in enumerate("SEIR"):
        got = np.array([res[f"{family}[{d}]"] for d in range(1, N + 1)])
        np.testing.assert_allclose(got, ref[k], rtol=1e-6, atol=1e-6)


def test_the_adams_method_matches_the_reference_without_a_jacobian(model):
    # non-stiff and 400 coupled states: the method benchmarks/index_families.py measures
    res = model.compile("casadi", method="adams").simulate(TIMES, rtol=1e-10, atol=1e-10)
    ref = numpy_reference()
    for k, family in enumerate("SEIR"):
        got = np.array([res[f"{family}[{d}]"] for d in range(1, N + 1)])
        np.testing.assert_allclose(got, ref[k], rtol=1e-6, atol=1e-6)


@pytest.mark.slow
def test_both_back_ends_agree_on_the_family_model(model):
    # all 100 districts: the dense sum is one matrix product in both back ends
    # (compiler/linear_forms.py), so Torch takes ~20 s here instead of minutes
    a = model.simulate(TIMES, backend="casadi", rtol=1e-10, atol=1e-10)
    b = model.simulate(TIMES, backend="torch", rtol=1e-9, atol=1e-9)
    for name in a.names:
        np.testing.assert_allclose(a[name], b[name], rtol=1e-6, atol=1e-6, err_msg=name)
    ref = numpy_reference()
    for k, family in enumerate("SEIR"):
        got = np.array([b[f"{family}[{d}]"] for d in range(1, N + 1)])
        np.testing.assert_allclose(got, ref[k], rtol=1e-6, atol=1e-6)


def test_a_scenario_on_a_subset_changes_those_districts_as_the_reference_says(model):
    res = model.simulate(TIMES, scenario="distancing", rtol=1e-10, atol=1e-10)
    ref = numpy_reference(treated=(2, 3, 5), cut_from=10.0)
    got = np.array([res[f"I[{d}]"] for d in range(1, N + 1)])
    np.testing.assert_allclose(got, ref[2], rtol=1e-6, atol=1e-6)
    base = model.simulate(TIMES)
    assert np.max(np.abs(res["I[3]"] - base["I[3]"])) > 1.0  # a treated district changes


SMALL = '''model small "SEIR in 6 districts with wide data"
time t [day]
unit person
index district = 1..6
const pop[d in district] [person] = 2000 * d
param beta [1/day] = 0.5 in [0.05, 3]
param gamma [1/day] = 0.3 in [0.05, 1]
state S[d in district] [person] = pop[d] - 10 [person]
state I[d in district] [person] = 10
flow S[d] -> I[d] = beta * S[d] * (0.8 * I[d] / pop[d] + 0.2 / 6 * sum(k in district, I[k] / pop[k]))
flow I[d] -> = gamma * I[d]
observe cases[d in district] [person/day] = beta * S[d] * I[d] / pop[d]
'''


def test_a_fit_of_shared_params_to_district_counts_recovers_them(tmp_path):
    model = nimm_dsl.load_source(SMALL)
    times = np.arange(0.0, 41.0, 2.0)
    truth = {"beta": 0.8, "gamma": 0.35}
    res = model.simulate(times, params=truth)
    table = {"t": times, **{f"cases[{d}]": res[f"cases[{d}]"] for d in range(1, 7)}}
    import pandas as pd

    data = tmp_path / "districts.csv"
    pd.DataFrame(table).to_csv(data, index=False)
    assert [d.code for d in bind(model, str(data))] == []
    fit = model.fit(str(data))
    assert fit.params["beta"] == pytest.approx(0.8, rel=1e-4)
    assert fit.params["gamma"] == pytest.approx(0.35, rel=1e-4)


def test_wide_data_columns_that_do_not_match_the_family_are_e608_and_e609(tmp_path):
    model = nimm_dsl.load_source(SMALL)
    data = tmp_path / "d.csv"
    data.write_text("t,cases[1],cases[2],cases[3],cases[4],cases[5],cases[7]\n0,1,1,1,1,1,1\n")
    found = {d.code: d for d in bind(model, str(data))}
    assert "E608" in found and "cases[7]" in found["E608"].message
    assert "E609" in found and "cases[6]" in found["E609"].message
    assert found["E609"].span.line == 12  # the observe line of the family


def write(folder, name, text):
    (folder / name).write_text(text)
    return folder / name


TABLE_MODEL = '''model tables
time t [day]
index district = [north, south, east]
const rate[d in district] [1/day] = table("rates.csv")
const C[d in district, k in district] [1] = table("mixing.csv", weight)
state x[d in district] [1] = 1
der(x[d]) = -rate[d] * sum(k in district, C[d, k] * x[k])
observe y[d in district] [1] = x[d]
'''
RATES = "district,rate\nnorth,0.1\nsouth,0.2\neast,0.3\n"
MIXING = "d,k,weight\n" + "".join(f"{a},{b},{1.0 if a == b else 0.0}\n"
                                  for a in ("north", "south", "east") for b in ("north", "south", "east"))


def test_tables_fill_a_family_and_a_matrix_in_long_form(tmp_path):
    write(tmp_path, "rates.csv", RATES)
    write(tmp_path, "mixing.csv", MIXING)
    model = nimm_dsl.load(write(tmp_path, "m.nimm", TABLE_MODEL))
    res = model.simulate(np.array([0.0, 10.0]))
    assert res["x[south]"][-1] == pytest.approx(np.exp(-2.0), rel=1e-6)  # C is the identity
    assert res["y[east]"][-1] == pytest.approx(np.exp(-3.0), rel=1e-6)


def test_a_table_key_that_is_not_a_member_or_a_missing_row_is_e355(tmp_path):
    write(tmp_path, "mixing.csv", MIXING)
    path = write(tmp_path, "m.nimm", TABLE_MODEL)
    write(tmp_path, "rates.csv", "district,rate\nnorth,0.1\nsouth,0.2\nwest,0.3\n")
    (d,) = [x for x in check_source(TABLE_MODEL, str(path)).diagnostics if x.is_error]
    assert d.code == "E355" and "`west`" in d.message and (d.span.line, d.span.column) == (4, 43)  # at the file name
    write(tmp_path, "rates.csv", "district,rate\nnorth,0.1\nsouth,0.2\n")
    (d,) = [x for x in check_source(TABLE_MODEL, str(path)).diagnostics if x.is_error]
    assert d.code == "E355" and "rate[east]" in d.message


def test_a_matrix_over_one_index_twice_needs_its_key_columns_named_by_the_variables(tmp_path):
    # `district,k,weight`: `district` could be d or k, so the matrix could be read transposed
    write(tmp_path, "rates.csv", RATES)
    path = write(tmp_path, "m.nimm", TABLE_MODEL)
    write(tmp_path, "mixing.csv", MIXING.replace("d,k,weight", "district,k,weight"))
    (d,) = [x for x in check_source(TABLE_MODEL, str(path)).diagnostics if x.is_error]
    assert d.code == "E355" and "no key column for `d in district`" in d.message
    assert "name the key columns by the variables (`d`, `k`)" in d.hint


def test_tables_read_only_plain_files_beside_the_model_and_only_those_allowed(tmp_path):
    write(tmp_path, "rates.csv", RATES)
    write(tmp_path, "mixing.csv", MIXING)
    path = write(tmp_path, "m.nimm", TABLE_MODEL)
    for bad in ("../rates.csv", "sub/rates.csv", "/etc/passwd", ".hidden.csv"):
        (d,) = [x for x in check_source(TABLE_MODEL.replace("rates.csv", bad), str(path)).diagnostics
                if x.is_error]
        assert d.code == "E354" and "plain file name" in d.message
    # the agent's switch: only the task's files, or none
    refused = check_source(TABLE_MODEL, str(path), TableAccess(tmp_path, frozenset({"rates.csv"})))
    assert [(d.code, d.span.line) for d in refused.diagnostics if d.is_error] == [("E354", 5)]
    assert check_source(TABLE_MODEL, str(path), TableAccess(tmp_path, frozenset({"rates.csv", "mixing.csv"}))).ok


def test_named_members_a_single_element_dose_and_cli_columns(tmp_path):
    text = TABLE_MODEL + "dose boost: x[north] += 1 at 5\n"
    write(tmp_path, "rates.csv", RATES)
    write(tmp_path, "mixing.csv", MIXING)
    model = nimm_dsl.load(write(tmp_path, "m.nimm", text))
    res = model.simulate(np.array([0.0, 5.0, 10.0]))
    assert res["x[north]"][1] == pytest.approx(np.exp(-0.5) + 1, rel=1e-6)
    assert res["x[south]"][1] == pytest.approx(np.exp(-1.0), rel=1e-6)
    frame = res.to_frame()
    assert list(frame.columns)[:4] == ["t", "x[north]", "x[south]", "x[east]"]


NEURAL = '''model hybrid
time t [day]
index patch = 1..4
param r [1/day] = 0.3 in [0, 1]
state N[p in patch] [1] = 0.1 * p
neural g(x) [1/day] = mlp(hidden = [4], init = random)
der(N[p]) = r * N[p] * (1 - N[p]) + g(N[p]) * N[p]
observe y[p in patch] [1] = N[p]
'''


def test_a_neural_term_is_applied_elementwise_with_one_set_of_weights():
    model = nimm_dsl.load_source(NEURAL)
    assert [n.name for n in model.ir.neurals] == ["g"]
    times = np.linspace(0, 5, 6)
    a = model.simulate(times, backend="casadi")
    b = model.simulate(times, backend="torch")
    for p in range(1, 5):
        np.testing.assert_allclose(a[f"N[{p}]"], b[f"N[{p}]"], rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("line, code", [
    ("observe z [1] = sum(k in nope, 1) * x[1]", "E350"),
    ("observe z [1] = x", "E351"),
    ("observe z [1] = x[1, 2]", "E351"),
    ("observe z [1] = r[1] * x[1]", "E351"),
    ("observe z [1] = x[k]", "E352"),
    ("observe z [1] = x[9]", "E352"),
    ("observe z [1] = sum(k in colour, x[k])", "E353"),
    ("observe z [1] = sum(p in patch, sum(p in patch, x[p]))", "E356"),
])
def test_index_errors_are_located_at_the_offending_token(line, code):
    text = ("model m\ntime t [day]\nindex patch = 1..4\nindex colour = [red, blue]\n"
            "param r [1/day] = 0.3 in [0, 1]\nstate x[p in patch] [1] = 1\nder(x[p]) = -r * x[p]\n"
            "observe y[p in patch] [1] = x[p]\n" + line + "\n")
    found = [d for d in nimm_dsl.check(text) if d.is_error]
    assert [d.code for d in found] == [code], found
    assert found[0].span.line == 9 and found[0].span.column > 16


def test_a_language_models_text_reads_no_table_unless_the_task_provides_it(tmp_path):
    from nimm_dsl.llm.pipeline import validate

    write(tmp_path, "rates.csv", RATES)
    write(tmp_path, "mixing.csv", MIXING)
    path = write(tmp_path, "m.nimm", TABLE_MODEL)
    stage, found = validate(TABLE_MODEL, str(path), probe=False)
    assert stage == "check" and {d.code for d in found if d.is_error} == {"E354"}
    given = TableAccess(tmp_path, frozenset({"rates.csv", "mixing.csv"}))
    stage, found = validate(TABLE_MODEL, str(path), probe=False, tables=given)
    assert stage == "clean", found


def test_a_dose_over_a_family_gives_each_element_its_dose_and_a_scenario_removes_them_all():
    text = NEURAL.replace("neural g(x) [1/day] = mlp(hidden = [4], init = random)\n", "").replace(
        " + g(N[p]) * N[p]", "") + "dose seed: N[p in patch] += 0.5 at 1\nscenario none\n  remove seed\nend\n"
    model = nimm_dsl.load_source(text)
    assert [d.name for d in model.ir.doses] == ["seed[1]", "seed[2]", "seed[3]", "seed[4]"]
    times = np.array([0.0, 1.0])
    with_dose, without = model.simulate(times), model.simulate(times, scenario="none")
    for p in range(1, 5):
        assert with_dose[f"N[{p}]"][1] == pytest.approx(without[f"N[{p}]"][1] + 0.5, rel=1e-6)


def test_a_nested_sum_too_large_to_expand_is_refused_quickly():
    text = ("model m\ntime t [day]\nindex n = 1..100000\nstate x [1] = 1\n"
            "der(x) = -x / 1 [day] * sum(i in n, sum(j in n, 1))\nobserve y [1] = x\n")
    (d,) = [d for d in nimm_dsl.check(text) if d.is_error]
    assert d.code == "E353" and d.span.line == 5


INPUT_FAMILY = """model treated_patches "decay, faster in each patch while it is treated"
time t [day]
index patch = 1..3
input u[p in patch] [1] = 0 "1 while patch p is treated"
param k [1/day] = 0.2 in [0.01, 2]
state x[p in patch] [mg] = 10
der(x[p]) = -k * (1 + u[p]) * x[p]
observe y[p in patch] [mg] = x[p] ~ normal(sigma = 0.01 [mg])
scenario untreated "no patch is treated"
  set u[p in patch] = 0
end
"""


@pytest.mark.parametrize("backend", ["casadi", pytest.param("torch", marks=pytest.mark.slow)])
def test_an_input_family_takes_one_data_column_per_member(backend):
    """`input u[p in patch]` is one input per member, bound to the columns `u[1]`, `u[2]`, ...
    (missing ones keep the default); the fit recovers k from a closed form, and a scenario sets
    the whole family."""
    import pandas as pd

    t = np.arange(0.0, 11.0)
    k, start = 0.3, {"2": 4.0, "3": 7.0}  # patch 2 treated from day 4, patch 3 from day 7, patch 1 never

    def closed_form(p):
        s = start.get(p, t[-1] + 1)
        return np.where(t < s, 10 * np.exp(-k * t), 10 * np.exp(-k * s) * np.exp(-2 * k * (t - s)))

    table = pd.DataFrame({"t": t, **{f"y[{p}]": closed_form(p) for p in "123"},
                          **{f"u[{p}]": (t >= s).astype(float) for p, s in start.items()}})
    model = nimm_dsl.load_source(INPUT_FAMILY)
    assert [i.name for i in model.ir.inputs] == ["u[1]", "u[2]", "u[3]"]
    fitted = model.fit(table, backend=backend, progress=False)
    assert fitted.params["k"] == pytest.approx(k, rel=1e-4)
    sim = model.compile(backend)
    inputs = {f"u[{p}]": (t, (t >= s).astype(float)) for p, s in start.items()}
    treated = sim.simulate(t, params=fitted.params, inputs=inputs)
    for p in "123":
        np.testing.assert_allclose(treated[f"y[{p}]"], closed_form(p), rtol=1e-5)
    untreated = sim.simulate(t, params=fitted.params, inputs=inputs, scenario="untreated")
    for p in "123":
        np.testing.assert_allclose(untreated[f"y[{p}]"], 10 * np.exp(-k * t), rtol=1e-5)


def test_the_cli_fits_and_simulates_with_the_adams_method(tmp_path, capsys):
    """`--method adams` (CVODES Adams, no Jacobian: the fast choice for large non-stiff families)
    reaches the same fit as the default BDF; the torch back end refuses it as a usage error."""
    import json

    import pandas as pd

    from nimm_dsl.cli import main

    t = np.arange(0.0, 11.0)
    model = tmp_path / "m.nimm"
    model.write_text(INPUT_FAMILY)
    data = tmp_path / "d.csv"
    pd.DataFrame({"t": t, **{f"y[{p}]": 10 * np.exp(-0.3 * t) for p in "123"}}).to_csv(data, index=False)
    fits = {}
    for method in ("bdf", "adams"):
        out = tmp_path / f"{method}.json"
        assert main(["fit", str(model), str(data), "--method", method, "--output", str(out)]) == 0
        fits[method] = json.loads(out.read_text())["params"]["k"]
    assert fits["adams"] == pytest.approx(0.3, rel=1e-5) and fits["bdf"] == pytest.approx(0.3, rel=1e-5)
    capsys.readouterr()
    assert main(["simulate", str(model), "--method", "adams", "--backend", "torch", "--times", "0:5:3"]) == 2
    assert "--method adams is a CasADi integration method" in capsys.readouterr().err


AGES = """model ages
time t [day]
unit person
index age = [child, adult, senior]
const pop[a in age] [person] = 1000
param beta [1/day] = 0.3 in [0.01, 3]
param cmult[a in age] [1] = 1 in [0.1, 2]
state S[a in age] [person] = pop[a] - 1 [person]
state I[a in age] [person] = 1
let lambda[a in age] [1/day] = beta * cmult[a] * sum(b in age, I[b] / pop[b])
flow S[a] -> I[a] = lambda[a] * S[a]
flow I[a] -> = 0.1 [1/day] * I[a]
observe cases[a in age] [person/day] = lambda[a] * S[a]
"""


def _located(text):
    return [(d.code, d.span.line, d.span.column) for d in nimm_dsl.check(text)]


@pytest.mark.parametrize("line, column", [
    ("scenario close\n  set cmult[chlid] = 0.4 * cmult[chlid] from 35\nend", 13),
    ("dose intro: I[adlt] += 5 at 10", 15),
])
def test_a_misspelt_member_in_a_target_is_an_error_not_a_variable_over_every_member(line, column):
    text = AGES + line + "\n"
    row = len(AGES.splitlines()) + 1 + ("scenario" in line)
    assert _located(text) == [("E352", row, column)]
    (d,) = nimm_dsl.check(text)
    assert "did you mean the member" in d.hint and "in age]" in d.hint
    # bound explicitly, the same name is a variable over every member, as written
    bound = line.replace("[chlid]", "[chlid in age]", 1).replace("[adlt]", "[adlt in age]")
    assert _located(AGES + bound + "\n") == []


@pytest.mark.parametrize("line, column, hint", [
    ("scenario close\n  set cmult[young] = 0.4 * cmult[young] from 35\nend", 13, "[d in young]"),
    ("scenario close\n  set cmult[beta] = 0.4 from 35\nend", 13, "[d in age]"),
    ("dose intro: I[age] += 5 at 10", 15, "[d in age]"),
])
def test_an_index_or_declared_name_as_a_target_subscript_is_an_error_not_every_member(line, column, hint):
    # as an unbound variable each of these would silently act on all three age groups
    text = AGES + "index young = [child, adult]\n" + line + "\n"
    row = len(AGES.splitlines()) + 2 + ("scenario" in line)
    assert _located(text) == [("E352", row, column)]
    (d,) = nimm_dsl.check(text)
    assert hint in d.hint


def test_a_set_bound_to_a_subset_changes_only_its_members():
    text = AGES + "index young = [child, adult]\nscenario close\n  set cmult[d in young] = 0 from 0\nend\n"
    model = nimm_dsl.load_source(text)
    times = np.array([0.0, 5.0])
    base, closed = model.simulate(times), model.simulate(times, scenario="close")
    assert closed["S[child]"][-1] == pytest.approx(1000 - 1)  # no infection at all with cmult 0
    assert closed["S[adult]"][-1] == pytest.approx(1000 - 1)
    # at t = 0 the states agree, so the seniors' force of infection shows their cmult unchanged
    assert closed["lambda[senior]"][0] == pytest.approx(0.3 * 3 / 1000, rel=1e-9)
    assert base["S[senior]"][-1] < 1000 - 1 - 1


def test_a_flow_whose_rate_ignores_one_ends_variable_is_w705():
    text = AGES.replace("flow S[a] -> I[a] = lambda[a] * S[a]", "flow S[a] -> I[b] = lambda[a] * S[a]")
    assert _located(text) == [("W705", 11, 16)]
    # a rate that depends on both ends' variables (a migration matrix) is meant
    migration = AGES + "const m[a in age, b in age] [1/day] = 0.01\nflow S[a] -> S[b] = m[a, b] * S[a]\n"
    assert "W705" not in [c for c, _, _ in _located(migration)]


def test_a_sum_that_ignores_its_variable_is_w706_once_and_a_count_is_not():
    text = AGES.replace("sum(b in age, I[b] / pop[b])", "sum(b in age, I[a] / pop[a])")
    assert _located(text) == [("W706", 10, 54)]  # at `b`; one line of three elements: one warning
    counted = AGES.replace("sum(b in age, I[b] / pop[b])", "sum(b in age, I[b] / pop[b]) / sum(b in age, 1)")
    assert _located(counted) == []


@pytest.mark.parametrize("members", ["[a, b, a]", "[a, b, 3]"])
def test_a_broken_index_line_is_its_only_error_not_time_without_states(members):
    text = ("model x\ntime t [year]\nindex sp = " + members + "\nparam r[i in sp] [1/year] = 0.1 in [0, 1]\n"
            "state N[i in sp] [1] = 1\nder(N[i]) = r[i] * N[i]\nobserve y[i in sp] [1] = N[i]\n")
    assert [(c, row) for c, row, _ in _located(text)] == [("E100", 3)]


def test_a_line_dropped_for_an_index_error_leaves_no_unused_warnings():
    text = AGES.replace("beta * cmult[a]", "beta * cmult[chlid]")
    assert _located(text) == [("E352", 10, 45)]


def test_element_columns_follow_member_order_and_a_misspelt_data_column_is_one_e608(tmp_path):
    model = nimm_dsl.load_source(AGES)
    res = model.simulate(np.array([0.0, 1.0]))
    assert [n for n in res.names if n.startswith("lambda")] == ["lambda[child]", "lambda[adult]", "lambda[senior]"]
    data = tmp_path / "d.csv"
    data.write_text("t,cases[child],cases[adult],cases[seniors]\n0,1,2,3\n1,2,3,4\n")
    (d,) = bind(model, str(data))
    assert d.code == "E608" and "did you mean `cases[senior]`?" in d.hint


def test_a_column_for_an_unobserved_member_is_e608_without_a_wrong_suggestion(tmp_path):
    # the observe covers two of three groups; a column for the third is not a misspelling of either
    text = AGES.replace("observe cases[a in age]", "observe cases[a in [child, adult]]")
    data = tmp_path / "d.csv"
    data.write_text("t,cases[child],cases[senior]\n0,1,3\n1,2,4\n")
    found = {d.code: d for d in bind(nimm_dsl.load_source(text), str(data))}
    assert set(found) == {"E608", "E609"}  # cases[senior] is no element; cases[adult] has no column
    assert "did you mean" not in found["E608"].hint and "extend the observe" in found["E608"].hint


def test_a_long_table_is_told_to_become_wide(tmp_path):
    data = tmp_path / "long.csv"
    data.write_text("t,age,cases\n0,child,3\n0,adult,4\n1,child,5\n1,adult,6\n")
    found = {d.code: d for d in bind(nimm_dsl.load_source(AGES), str(data))}
    assert "E602" in found
    assert "`cases` is a family" in found["E602"].hint and "`cases[child]`, `cases[adult]`" in found["E602"].hint


def test_a_unit_error_in_a_family_line_suggests_no_element_names():
    text = AGES.replace("sum(b in age, I[b] / pop[b])", "sum(b in age, I[b] / pop[b] + I[b])")
    (d,) = [d for d in nimm_dsl.check(text) if d.code == "E401"]
    assert d.hint is None or "[child]" not in d.hint  # it suggested `I[child] / S[child]`


def test_the_start_check_evaluates_a_series_start_once_not_once_per_observe(tmp_path, monkeypatch):
    from nimm_dsl.runtime import binding

    calls = []
    original = binding.start_values
    monkeypatch.setattr(binding, "start_values", lambda *a, **k: calls.append(1) or original(*a, **k))
    data = tmp_path / "d.csv"
    data.write_text("t,cases[child],cases[adult],cases[senior]\n0,1,2,3\n1,2,3,4\n")
    assert {d.code for d in bind(nimm_dsl.load_source(AGES), str(data))} <= {"W606"}
    assert len(calls) == 1  # three observes, one series: the start values of a 100-district model took 15 s


TWELVE = """model twelve
time t [day]
index district = 1..12
param k [1/day] = 0.2 in [0.01, 1]
input closed[d in district] [1] = 0
state X[d in district] [1] = 10 * d
der(X[d]) = -k * (1 + closed[d]) * X[d]
observe cases[d in district] [1/day] = k * X[d] ~ poisson
"""


def _twelve_table(path, spelling: dict):
    """A wide table for TWELVE, `spelling` renaming some of its columns."""
    columns = ["t"] + [spelling.get(f"cases[{d}]", f"cases[{d}]") for d in range(1, 13)]
    extra = [c for c in spelling if c.startswith("closed")]
    columns += [spelling[c] for c in extra]
    rows = [[str(t)] + [str(2 * d) for d in range(1, 13)] + ["0"] * len(extra) for t in range(3)]
    path.write_text("\n".join(",".join(r) for r in [columns] + rows) + "\n")
    return str(path)


@pytest.mark.parametrize("column", ["cases[01]", "cases[ 1]", "cases[1 ]", "cases [1]", "cases[1.0]"])
def test_a_column_spelling_a_member_differently_is_e608_naming_the_member(tmp_path, capsys, column):
    """Column names are matched exactly: `cases[01]` is not `cases[1]`. Such a column is E608 at
    the observe line, naming the file and the column, with the exact spelling as the hint, and
    not also an E609 for the member it meant."""
    from nimm_dsl.cli import main

    model = tmp_path / "twelve.nimm"
    model.write_text(TWELVE)
    data = _twelve_table(tmp_path / "d.csv", {"cases[1]": column})
    assert main(["fit", str(model), data]) == 1
    err = capsys.readouterr().err
    assert "error[E608]" in err and f"column `{column}` of {data}" in err and "E609" not in err
    assert "did you mean `cases[1]`?" in err
    with pytest.raises(nimm_dsl.ModelError) as raised:
        nimm_dsl.load(str(model)).fit(data)
    (d,) = raised.value.diagnostics
    assert (d.code, d.span.line) == ("E608", 8) and d.hint.startswith("did you mean `cases[1]`?")


def test_an_input_family_column_spelling_a_member_differently_is_e608(tmp_path):
    """An input family's element without its column keeps the default: a column `closed[03]` meant
    for `closed[3]` would silently change nothing, so it is E608 too (at the input line)."""
    model = nimm_dsl.load_source(TWELVE)
    data = _twelve_table(tmp_path / "d.csv", {"closed[3]": "closed[03]"})
    (d,) = bind(model, data, command="fit")
    assert (d.code, d.span.line) == ("E608", 5) and "column `closed[03]`" in d.message
    assert d.hint.startswith("did you mean `closed[3]`?")
    exact = _twelve_table(tmp_path / "e.csv", {"closed[3]": "closed[3]"})
    assert bind(model, exact, command="fit") == []
    # `simulate --data` reads the inputs too: the same error; a misspelt observed column changes
    # nothing there (nothing is fitted), so it is only listed as ignored
    both = _twelve_table(tmp_path / "s.csv", {"closed[3]": "closed[03]", "cases[2]": "cases[02]"})
    found = bind(model, both, command="simulate")
    assert [(d.code, d.span.line) for d in found] == [("W605", 1), ("E608", 5)]
    assert "`cases[02]`" in found[0].message and "`closed[03]`" in found[1].message


SPECIES = """model pond
time t [year]
index species = [fox, hare, lynx]
param r[s in species] [1/year] = 0.3 in [0, 1]
const w[s in species] [1] = 1
const C[s in species, z in species] [1/year] = 0.1
state N[s in species] [1] = 1
der(N[s]) = r[s] * N[s] - sum(z in species, C[s, z] * N[z])
observe y[s in species] [1] = w[s] * N[s]
"""


@pytest.mark.parametrize("line, column", [
    ("set r[wolf] = 0.1 from 10", 7),
    ("dose seed: N[wolf] += 5 at 0", 14),
    ("scenario cull\n  set r[wolf] = 0.1 from 10 to 20\nend", 9),
    ("set C[wolf, hare] = 0.2 from 10", 7),
])
def test_a_target_subscript_used_nowhere_else_on_its_line_warns_that_it_acts_on_every_member(line, column):
    """`wolf` is no member of `species` and close to none, so it is a variable over `species`: the
    line acts on fox, hare and lynx alike, which a reader of `r[wolf]` would not guess."""
    from test_family_check import assert_same_as_whole

    text = SPECIES + line + "\n"
    found = assert_same_as_whole(text)
    at = 11 if line.startswith("scenario") else 10
    assert [(d.code, d.span.line, d.span.column) for d in found] == [("W707", at, column)]
    (d,) = found
    assert "`wolf`" in d.message and "every member of `species`" in d.message
    assert "`[wolf in species]`" in d.hint and "fox" in d.hint


@pytest.mark.parametrize("line", [
    "set r[s] = 0.5 * r[s] from 30",              # the variable is used in the value
    "set r[s in species] = 0.1 from 10",          # an explicit binder says every member is meant
    "set r[fox] = 0.1 from 10",                   # a member
    "set C[s, s] = 0 from 10",                    # the diagonal: the variable used twice
    "dose seed: N[s] += 5 * w[s] at 0",          # the amount uses it
    "dose seed: N[s in species] += 5 at 0",
])
def test_a_target_variable_used_on_its_line_or_bound_explicitly_is_silent(line):
    from test_family_check import assert_same_as_whole

    assert assert_same_as_whole(SPECIES + line + "\n") == []
