"""Data binding (TASKS.md §5, docs/language.md §9): a table checked against a model gives E601-E603
and W604-W606 at the model line concerned, with hints naming the table's columns; fit refuses
before any work, simulate --data applies the checks that suit a table of inputs."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

import nimm_dsl
from nimm_dsl.cli import main
from nimm_dsl.diagnostics import CODES
from nimm_dsl.errors import DataError, ModelError
from nimm_dsl.runtime.binding import CHECKS, BindingError, bind, load_bound

ROOT = Path(__file__).resolve().parents[1]

# lines:      1        2                3                                4
DECAY = ("model decay\ntime t [day]\nparam k [1/day] = 0.5 in [0, 2]\nstate A [mg] = 10 in [0, inf]\n"
         # 5                6                                         7
         "der(A) = -k * A\nobserve amount [mg] = A ~ normal(sigma = 0.5)\n"
         "observe log_amount [mg] = A ~ lognormal(sigma = 0.1)\n")


def decay(text=DECAY, file="decay.nimm"):
    return nimm_dsl.load_source(text, file)


def codes_at(diagnostics):
    return [(d.code, d.span.line) for d in diagnostics]


def test_a_table_that_fits_binds_without_diagnostics():
    table = pd.DataFrame({"t": [0, 1, 2], "amount": [10.1, 6.0, 3.7], "log_amount": [10, 6, 3.7]})
    assert bind(decay(), table) == []


def test_e601_time_column_named_differently_points_at_the_time_line():
    """Issue #9: `time t` while the table's time column is `day` checked clean and then failed."""
    table = pd.DataFrame({"day": [0, 1, 2], "amount": [10, 6, 3.7]})
    found = bind(decay(), table)
    e601 = [d for d in found if d.code == "E601"]
    assert codes_at(e601) == [("E601", 2)]
    assert "`day`" in e601[0].message  # the table's columns are listed
    assert e601[0].hint.startswith("the table's time column looks like `day`: write `time day [day]`")
    assert e601[0].file == "decay.nimm"
    hour = bind(decay(), pd.DataFrame({"hour": [0, 1], "amount": [1, 2]}))
    assert "write `time hour [h]`" in next(d.hint for d in hour if d.code == "E601")
    # no time word: the first increasing numeric column is the clock
    clock = bind(decay(), pd.DataFrame({"amount": [1, 2], "tt": [0.0, 0.5]}))
    assert "`tt`" in next(d.hint for d in clock if d.code == "E601")


def test_e602_no_observed_column_names_the_close_column():
    found = bind(decay(), pd.DataFrame({"t": [0, 1], "amout": [10, 6]}))
    assert ("E602", 6) in codes_at(found)
    e602 = next(d for d in found if d.code == "E602")
    assert "column `amout` looks like `amount`" in e602.hint
    assert not any(d.code == "W604" for d in found)  # E602 says it once
    no_observe = decay(DECAY.split("observe")[0])  # the same model without observe lines
    found = bind(no_observe, pd.DataFrame({"t": [0, 1], "A": [1, 2]}))
    assert codes_at([d for d in found if d.is_error]) == [("E602", 1)]  # at the model header


@pytest.mark.parametrize("column, values, row", [
    ("log_amount", [10, 0, 3], 2),           # lognormal needs > 0
    ("log_amount", [10, 5, -3], 3),
])
def test_e603_impossible_values_give_the_first_row_at_the_observe_line(column, values, row):
    found = bind(decay(), pd.DataFrame({"t": [0, 1, 2], column: values}))
    e603 = [d for d in found if d.code == "E603"]
    assert codes_at(e603) == [("E603", 7)]
    assert f"row {row}" in e603[0].message and "lognormal" in e603[0].message


def test_e603_poisson_needs_whole_non_negative_counts(tmp_path):
    text = DECAY.replace("observe log_amount [mg] = A ~ lognormal(sigma = 0.1)",
                         "observe count [mg] = A ~ poisson")
    data = tmp_path / "counts.csv"
    data.write_text("t,count\n0,10\n1,6.5\n2,-1\n")
    e603 = [d for d in bind(decay(text), data) if d.code == "E603"]
    assert codes_at(e603) == [("E603", 7)]
    assert "row 2 (line 3)" in e603[0].message and "6.5 is not a count" in e603[0].message
    assert str(data) in e603[0].message


def test_w604_and_w605_unmatched_observes_and_columns():
    found = bind(decay(), pd.DataFrame({"t": [0, 1], "amount": [10, 6], "log_amont": [10, 6], "note": [1, 2]}))
    assert ("W604", 7) in codes_at(found)
    w605 = next(d for d in found if d.code == "W605")
    assert w605.span.line == 1 and "`log_amont`" in w605.message and "`note`" in w605.message
    assert "column `log_amont` looks like `log_amount`" in w605.hint
    w604 = next(d for d in found if d.code == "W604")
    assert "`log_amont`" in w604.hint


def test_w606_a_fixed_initial_value_far_from_the_first_observation():
    """The observe starts at A(0) = 10 (fixed), the data at 30: 40 sigmas away."""
    found = bind(decay(), pd.DataFrame({"t": [0, 1, 2], "amount": [30, 18, 11]}))
    w606 = [d for d in found if d.code == "W606"]
    assert codes_at(w606) == [("W606", 6)]
    assert "starts at 10" in w606[0].message and "first observation is 30" in w606[0].message
    assert "40.0 noise sigmas" in w606[0].message
    assert "initial value of `A` is fixed" in w606[0].hint and "param A0 [mg]" in w606[0].hint
    # within the noise: nothing; lognormal compares logs (log 10 vs log 13: 2.6 sigmas)
    assert not any(d.code == "W606" for d in bind(decay(), pd.DataFrame({"t": [0, 1], "amount": [11, 6]})))
    assert not any(d.code == "W606" for d in bind(decay(), pd.DataFrame({"t": [0, 1], "log_amount": [13, 6]})))
    assert any(d.code == "W606" for d in bind(decay(), pd.DataFrame({"t": [0, 1], "log_amount": [14, 6]})))


def test_w606_uses_the_doses_and_inputs_at_the_first_time_and_names_param_starts():
    text = ("model m\ntime t [day]\nparam k [1/day] = 0.5 in [0, 2]\nparam A0 [mg] = 2 in [0, 100]\n"
            "input u [1] = 1\nstate A [mg] = A0 * u in [0, inf]\nder(A) = -k * A\n"
            "dose D: A += 4 at 0\nobserve amount [mg] = A ~ normal(sigma = 0.5)\n")
    # A(0) = A0 * u + 4 = 2 * 3 + 4 = 10 with the table's u = 3: close to 10.2
    assert bind(decay(text), pd.DataFrame({"t": [0, 1], "u": [3, 3], "amount": [10.2, 6]})) == []
    w606 = [d for d in bind(decay(text), pd.DataFrame({"t": [0, 1], "u": [1, 1], "amount": [30, 6]}))]
    assert codes_at(w606) == [("W606", 9)]
    assert "params in the initial values" in w606[0].hint


def test_the_examples_bind_to_their_data_with_only_the_known_extra_columns():
    flu = nimm_dsl.load(ROOT / "examples" / "flu_sir.nimm")
    found = bind(flu, ROOT / "examples" / "data" / "influenza_england_1978_school.csv")
    assert [d.code for d in found] == ["W605"]  # `date` and `convalescent` are not modelled
    for name in ("lotka_volterra", "lotka_volterra_neural"):
        model = nimm_dsl.load(ROOT / "examples" / f"{name}.nimm")
        assert bind(model, ROOT / "examples" / "data" / "hudson_bay_lynx_hare.csv") == [], name
    mm = nimm_dsl.load(ROOT / "examples" / "michaelis_menten.nimm")
    assert bind(mm, ROOT / "examples" / "data" / "puromycin_treated.csv") == []


def test_data_errors_stay_data_errors(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("t,amount\n0,1\n1,oops\n")
    with pytest.raises(DataError, match=r"column `amount`, row 2 \(line 3\)"):
        bind(decay(), bad)
    with pytest.raises(DataError, match="no such file"):
        bind(decay(), tmp_path / "missing.csv")


def test_simulate_applies_only_the_checks_for_a_table_of_inputs():
    assert CHECKS["simulate"] == {"E601", "E603", "W605", "E607", "E608", "E611", "E612", "W614"}
    inputs_only = pd.DataFrame({"t": [0, 1], "other": [1, 2]})
    assert codes_at(bind(decay(), inputs_only, command="simulate")) == [("W605", 1)]
    assert ("E602", 6) in codes_at(bind(decay(), inputs_only, command="fit"))


def test_fit_refuses_a_table_that_does_not_bind_before_fitting():
    model = decay()
    with pytest.raises(BindingError) as err:
        model.fit(pd.DataFrame({"day": [0, 1, 2], "amount": [10, 6, 3.7]}), progress=False)
    assert isinstance(err.value, ModelError)
    assert codes_at([d for d in err.value.diagnostics if d.is_error]) == [("E601", 2)]
    assert "decay.nimm:2:1: error[E601]" in str(err.value)


def test_fit_warnings_carry_the_binding_warnings_once():
    table = pd.DataFrame({"t": [0, 1, 2, 3], "amount": [30, 18, 11, 6.7], "x": [0, 0, 0, 0]})
    dataset = load_bound(decay().ir, table)
    assert sum("W605" in w for w in dataset.warnings) == 1
    assert not any("ignored column" in w for w in dataset.warnings)  # W605 says it
    result = decay().fit(table, progress=False)
    assert any("warning[W606]" in w for w in result.warnings)


def test_every_binding_code_is_registered():
    assert set(CHECKS["check"]) <= set(CODES)


# ---------------------------------------------------------------- the command line
def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_check_data_reports_e601_in_text_and_json(tmp_path, capsys):
    model = write(tmp_path, "decay.nimm", DECAY)
    data = write(tmp_path, "data.csv", "day,amount\n0,10\n1,6\n")
    assert main(["check", model, "--data", data]) == 1
    err = capsys.readouterr()
    assert f"{model}:2:1: error[E601]" in err.out
    assert "write `time day [day]`" in err.out
    assert main(["check", "--format", "json", model, "--data", data]) == 1
    found = json.loads(capsys.readouterr().out)
    assert {(d["file"], d["code"], d["line"]) for d in found} == {(model, "E601", 2), (model, "W604", 7)}
    assert main(["check", model, "--data", write(tmp_path, "ok.csv", "t,amount\n0,10\n1,6\n")]) == 0
    assert main(["check", model, "--data", str(tmp_path / "nope.csv")]) == 2


def test_check_data_with_unreadable_numbers_is_a_data_error(tmp_path, capsys):
    model = write(tmp_path, "decay.nimm", DECAY)
    data = write(tmp_path, "data.csv", "t,amount\n0,10\n1,six\n")
    assert main(["check", model, "--data", data]) == 1
    assert "column `amount`, row 2 (line 3)" in capsys.readouterr().err


def test_simulate_data_reports_e601_and_fit_reports_it_before_fitting(tmp_path, capsys):
    model = write(tmp_path, "decay.nimm", DECAY)
    data = write(tmp_path, "data.csv", "day,amount\n0,10\n1,6\n")
    assert main(["simulate", model, "--data", data]) == 1
    assert "error[E601]" in capsys.readouterr().err
    assert main(["fit", model, data]) == 1
    assert "error[E601]" in capsys.readouterr().err


@pytest.mark.slow
def test_check_stays_light_without_probe(tmp_path):
    """`nimm check` (with --data too) never imports a numeric back end."""
    model = write(tmp_path, "decay.nimm", DECAY)
    data = write(tmp_path, "data.csv", "t,amount\n0,30\n1,6\n")
    code = ("import sys\nfrom nimm_dsl.cli import main\n"
            f"main(['check', {model!r}])\nmain(['check', {model!r}, '--data', {data!r}])\n"
            "print(sorted(m for m in ('torch', 'casadi') if m in sys.modules))\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "[]"
    assert "warning[W606]" in done.stdout


WEEKLY = ("model w\ntime day [day]\nunit person\nparam r [person/day] = 10 in [1, 100]\nstate C [person] = 0\n"
          "der(C) = r\n"
          # line 7
          "observe weekly [person] = integral(r, 7 [day]) ~ poisson\n")


def test_a_count_whose_window_starts_before_the_run_is_w615_once_per_line():
    table = pd.DataFrame({"day": [7.0, 14.0, 21.0], "weekly": [70, 71, 69]})
    found = {x.code: x for x in bind(nimm_dsl.load_source(WEEKLY, "w.nimm"), table)}
    assert set(found) == {"W606", "W615"}  # W606: the count starts at 0 against 70
    d = found["W615"]
    assert d.span.line == 7
    assert "day = 7" in d.message and "`time day [day] from 0`" in d.hint
    # what it warns about: the run starts at day 7, so the first week's count is 0, not 70
    assert nimm_dsl.load_source(WEEKLY, "w.nimm").simulate([7.0, 14.0])["weekly"][0] == 0
    # with a clock origin a window before, nothing is cut
    assert bind(nimm_dsl.load_source(WEEKLY.replace("[day]\n", "[day] from 0\n", 1), "w.nimm"), table) == []
    family = WEEKLY.replace("observe weekly [person] =", "index n = 1..3\nobserve weekly[i in n] [person] =")
    wide = pd.DataFrame({"day": [7.0, 14.0], **{f"weekly[{i}]": [70, 71] for i in (1, 2, 3)}})
    assert [x.code for x in bind(nimm_dsl.load_source(family, "w.nimm"), wide)].count("W615") == 1


def test_a_fit_that_fails_on_a_cut_window_repeats_the_w615_warning():
    from nimm_dsl.errors import FitError

    table = pd.DataFrame({"day": [7.0, 14.0, 21.0], "weekly": [70, 71, 69]})
    with pytest.raises(FitError, match=r"(?s)failed from every starting point.*binding warned.*W615"):
        nimm_dsl.load_source(WEEKLY, "w.nimm").fit(table, progress=False)
