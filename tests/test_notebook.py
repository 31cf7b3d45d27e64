"""What Python and notebook users see: summaries, reprs, `nimm --version`, the inputs in a
simulate table."""
import numpy as np
import pandas as pd
import pytest

import nimm_dsl
from nimm_dsl.cli import main
from nimm_dsl.runtime.fit import fit, format_report

from test_fit import decay_data, decay_model

SEIR = __import__("pathlib").Path(__file__).resolve().parents[1] / "examples" / "seir.nimm"


def test_fit_result_summary_repr_and_html():
    res = fit(decay_model(), decay_data(), progress=False)
    assert res.summary() == format_report(res)
    assert repr(res).startswith("<FitResult of decay (casadi): loss ") and "3 param(s) estimated" in repr(res)
    assert len(repr(res)) < 120
    html = res._repr_html_()
    assert html.count("<tr>") == 4 and "<td>k</td>" in html and "1/h" in html


def test_diagnostic_and_simulation_reprs_read_as_one_line():
    (d,) = [x for x in nimm_dsl.check("model m\ntime t [h]\nstate X [mg] = 1\nder(X) = -k * X\n", "m.nimm")
            if x.is_error][:1]
    assert repr(d).startswith(f"<error {d.code} at m.nimm:4:") and "\n" not in repr(d)
    res = nimm_dsl.load(SEIR).simulate(np.linspace(0, 10, 3))
    assert "<table" in res._repr_html_()


def test_version(capsys):
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"nimm {nimm_dsl.__version__}"


def test_simulate_table_has_the_input_in_force_under_a_scenario(tmp_path, capsys):
    out = tmp_path / "run.csv"
    assert main(["simulate", str(SEIR), "--scenario", "lockdown", "--times", "0:100:11", "--output", str(out)]) == 0
    table = pd.read_csv(out)
    assert list(table.columns[:2]) == ["day", "mobility"]
    # `set mobility = 0.3 from 30 to 90`: the window's end is exclusive
    expected = np.where((table["day"] >= 30) & (table["day"] < 90), 0.3, 1.0)
    np.testing.assert_allclose(table["mobility"], expected)


def test_static_model_bands_leave_the_inputs_alone_and_plot_is_refused(tmp_path, capsys):
    from nimm_dsl.cli import main

    root = SEIR.parent
    model, data = str(root / "michaelis_menten.nimm"), str(root / "data" / "puromycin_treated.csv")
    fit_json = tmp_path / "FIT.json"
    assert main(["fit", model, data, "--output", str(fit_json)]) == 0
    out = tmp_path / "mm.csv"
    assert main(["simulate", model, "--fit", str(fit_json), "--bands", "0.95", "--data", data,
                 "--output", str(out), "--draws", "50"]) == 0
    assert list(pd.read_csv(out).columns) == ["conc", "rate", "rate_lo", "rate_hi"]
    capsys.readouterr()
    assert main(["simulate", model, "--data", data, "--plot", str(tmp_path / "p.png")]) == 2
    assert "static model" in capsys.readouterr().err
