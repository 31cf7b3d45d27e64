"""Data tables: matching columns to the model, series, inputs, and errors naming file/column/row."""
import numpy as np
import pandas as pd
import pytest
import sympy as sp

from nimm_dsl.compiler.ir import InputIR, ModelIR, ObserveIR, ParamIR, StateIR
from nimm_dsl.errors import DataError
from nimm_dsl.runtime.data import load_data


def decay_ir(noise="normal", with_input=False, static=False):
    """dX/dt = -k X (+ u), observe y = X; or a static model y = k * u."""
    k, X, u = sp.Symbol("k"), sp.Symbol("X"), sp.Symbol("u")
    a, b = sp.Symbol("u_a"), sp.Symbol("u_b")
    params = [ParamIR("k", k, 0.5, 0, 5, "1/h", True)]
    inputs = [InputIR("u", u, (a, b), None, "step", "mg/h")] if (with_input or static) else []
    sigma = sp.Float(0.1) if noise in ("normal", "lognormal") else None
    if static:
        obs = [ObserveIR("y", sp.Symbol("y"), k * u, "mg", noise, sigma)]
        return ModelIR("lin", None, None, None, None, [], params, inputs, observes=obs)
    rhs = -k * X + ((a + b * sp.Symbol("t")) if with_input else 0)
    obs = [ObserveIR("y", sp.Symbol("y"), X, "mg", noise, sigma)]
    states = [StateIR("X", X, sp.Integer(1), 0, np.inf, "mg")]
    return ModelIR("decay", None, sp.Symbol("t"), "t", "h", states, params, inputs, derivatives={"X": rhs},
                   observes=obs)


def write(tmp_path, text, name="data.csv"):
    p = tmp_path / name
    p.write_text(text)
    return p


def test_reads_series_inputs_and_reports_ignored_columns(tmp_path):
    p = write(tmp_path, "t,y,u,series,comment\n0,1.0,2,a,x\n1,,3,a,y\n2,0.5,,a,z\n0,2,1,b,\n3,1,,b,\n")
    d = load_data(p, decay_ir(with_input=True))
    assert [s.label for s in d.series] == ["a", "b"]
    a, b = d.series
    np.testing.assert_array_equal(a.times, [0, 1, 2])
    assert np.isnan(a.observed["y"][1]) and a.observed["y"][2] == 0.5
    # rows without an input value are left out of the input signal
    np.testing.assert_array_equal(a.inputs["u"][0], [0, 1])
    np.testing.assert_array_equal(a.inputs["u"][1], [2, 3])
    np.testing.assert_array_equal(b.inputs["u"][0], [0])
    assert d.ignored_columns == ["comment"]
    assert any("`comment`" in w for w in d.warnings)
    assert d.n_observations == 4


def test_dataframe_input_works_like_a_file():
    frame = pd.DataFrame({"t": [0.0, 1.0, 2.0], "y": [1.0, np.nan, 0.3]})
    d = load_data(frame, decay_ir())
    assert d.file == "<data>" and d.series[0].label is None
    assert d.n_observations == 2


def test_non_numeric_value_names_file_column_and_row(tmp_path):
    p = write(tmp_path, "t,y\n0,1\n1,0.8\n2,abc\n")
    with pytest.raises(DataError) as e:
        load_data(p, decay_ir())
    msg = str(e.value)
    assert str(p) in msg and "column `y`" in msg and "row 3 (line 4)" in msg and "`abc` is not a number" in msg


def test_row_numbers_count_blank_lines_so_they_match_the_file(tmp_path):
    p = write(tmp_path, "t,y\n0,1\n\n2,x1\n")
    with pytest.raises(DataError, match=r"row 3 \(line 4\)"):
        load_data(p, decay_ir())


def test_missing_time_column_names_the_model_time(tmp_path):
    p = write(tmp_path, "time,y\n0,1\n")
    with pytest.raises(DataError) as e:
        load_data(p, decay_ir())
    msg = str(e.value)
    assert "no time column `t`" in msg and "`time`" in msg and str(p) in msg


def test_duplicate_and_unsorted_times_within_a_series(tmp_path):
    p = write(tmp_path, "t,y\n0,1\n1,2\n1,3\n")
    with pytest.raises(DataError, match=r"column `t`, row 3 \(line 4\): time 1 repeats the time 1 at row 2"):
        load_data(p, decay_ir())
    p = write(tmp_path, "t,y,series\n0,1,a\n2,2,a\n1,3,a\n0,1,b\n")
    with pytest.raises(DataError, match=r"row 3 .*time 1 is earlier than the time 2 .* in series `a`"):
        load_data(p, decay_ir())
    # the same times in different series are fine
    p = write(tmp_path, "t,y,series\n0,1,a\n1,2,a\n0,1,b\n1,3,b\n")
    assert len(load_data(p, decay_ir()).series) == 2


def test_times_restarting_without_a_series_column_suggest_naming_one(tmp_path):
    # two subjects told apart by a column the model does not know: the times restart at 0
    p = write(tmp_path, "subject,t,y\n1,0,1\n1,2,0.5\n2,0,2\n2,2,1\n")
    with pytest.raises(DataError, match=r"time 0 is earlier than .*name the column that tells them apart "
                                        r"`series` .*ignored: `subject`"):
        load_data(p, decay_ir())
    p = write(tmp_path, "t,y\n0,1\n2,0.5\n0,2\n")  # nothing to rename: no suggestion
    with pytest.raises(DataError) as e:
        load_data(p, decay_ir())
    assert "`series`" not in str(e.value)


def test_missing_time_value_is_an_error(tmp_path):
    p = write(tmp_path, "t,y\n0,1\n,2\n")
    with pytest.raises(DataError, match=r"column `t`, row 2 \(line 3\): the time is missing"):
        load_data(p, decay_ir())


def test_no_observed_column_names_the_expected_observes(tmp_path):
    p = write(tmp_path, "t,Y_obs\n0,1\n")
    with pytest.raises(DataError) as e:
        load_data(p, decay_ir())
    assert "expected `y`" in str(e.value) and str(p) in str(e.value)
    # inputs-only tables are accepted when asked (simulation with data inputs)
    d = load_data(write(tmp_path, "t,u\n0,1\n"), decay_ir(with_input=True), require_observed=False)
    assert d.observed_names == [] and "u" in d.series[0].inputs


def test_lognormal_needs_positive_values(tmp_path):
    p = write(tmp_path, "t,y\n0,1\n1,0\n")
    with pytest.raises(DataError, match=r"column `y`, row 2 \(line 3\): 0 is not positive.*lognormal"):
        load_data(p, decay_ir("lognormal"))
    p = write(tmp_path, "t,y\n0,1\n1,-2\n")
    with pytest.raises(DataError, match=r"row 2 .*-2 is not positive"):
        load_data(p, decay_ir("lognormal"))


def test_poisson_rejects_negative_counts_and_warns_on_fractions(tmp_path):
    with pytest.raises(DataError, match=r"column `y`, row 2 \(line 3\): -1 is negative.*poisson"):
        load_data(write(tmp_path, "t,y\n0,1\n1,-1\n"), decay_ir("poisson"))
    d = load_data(write(tmp_path, "t,y\n0,0\n1,2.5\n"), decay_ir("poisson"))
    assert any("non-integer" in w and "row 2" in w for w in d.warnings)


def test_unreadable_and_empty_files(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        load_data(tmp_path / "nope.csv", decay_ir())
    with pytest.raises(DataError, match="empty"):
        load_data(write(tmp_path, ""), decay_ir())
    with pytest.raises(DataError, match="cannot read"):
        load_data(tmp_path, decay_ir())  # a folder, not a file


def test_duplicate_header_column(tmp_path):
    with pytest.raises(DataError, match="column `y` appears more than once"):
        load_data(write(tmp_path, "t,y,y\n0,1,2\n"), decay_ir())


def test_static_model_rows_are_points_and_inputs_are_columns(tmp_path):
    ir = decay_ir(static=True)
    d = load_data(write(tmp_path, "u,y,series\n1,0.5,a\n2,1.1,a\n3,,b\n"), ir)
    assert d.static and len(d.series) == 1 and d.series[0].times is None
    np.testing.assert_array_equal(d.series[0].inputs["u"], [1, 2, 3])
    assert d.ignored_columns == ["series"]
    with pytest.raises(DataError, match=r"column `u`, row 2 \(line 3\): the input is missing"):
        load_data(write(tmp_path, "u,y\n1,0.5\n,1.1\n"), ir)
    with pytest.raises(DataError, match="no column `u` for the input `u`"):
        load_data(write(tmp_path, "y\n0.5\n"), ir)


def test_holdout_split_keeps_the_last_points_of_each_series():
    frame = pd.DataFrame({"t": [0, 1, 2, 3, 0, 1], "y": [1, 2, 3, 4, 5, 6], "series": list("aaaabb")})
    train, valid = load_data(frame, decay_ir()).split(0.5)
    np.testing.assert_array_equal(train.series[0].times, [0, 1])
    np.testing.assert_array_equal(train.series[1].times, [0])
    # validation series still start at the series' first time; the training points are masked
    np.testing.assert_array_equal(valid.series[0].times, [0, 1, 2, 3])
    np.testing.assert_array_equal(np.isfinite(valid.series[0].observed["y"]), [False, False, True, True])
    assert valid.n_observations == 3 and train.n_observations == 3


def test_csv_reader_edge_cases_without_pandas(tmp_path):
    """The CSV reader is the standard library's (pandas is not loaded for a fit): a byte-order
    mark, spaces after commas, quoted cells, short rows (missing cells) and a row with too many
    cells each behave as documented."""
    d = load_data(write(tmp_path, '\ufefft, y\n0, "1.5"\n1\n2,3\n'), decay_ir())
    assert d.series[0].times.tolist() == [0, 1, 2]
    assert np.isnan(d.series[0].observed["y"][1]) and d.series[0].observed["y"][2] == 3
    with pytest.raises(DataError, match=r"not a readable CSV table: expected 2 fields in line 3, saw 3"):
        load_data(write(tmp_path, "t,y\n0,1\n1,2,3\n"), decay_ir())
    with pytest.raises(DataError, match="empty"):
        load_data(write(tmp_path, "\n\n"), decay_ir())
    # a column literally named `y.1` next to `y` is not a duplicate
    assert load_data(write(tmp_path, "t,y,y.1\n0,1,2\n"), decay_ir()).ignored_columns == ["y.1"]
