"""`nimm simulate --backend torch` and `--backend casadi` print the same tables, also for a hybrid
model restored from saved (non-trivial) neural weights."""
import glob
import json

import numpy as np
import pandas as pd
import pytest

import nimm_dsl
from nimm_dsl.cli import main
from nimm_dsl.runtime.weights import weights_to_fit_entry

EXAMPLES = sorted(p for p in glob.glob("examples/*.nimm") if "hodgkin" not in p)  # HH: see below


def simulate(args, out):
    assert main(["simulate", *args, "--output", str(out)]) == 0
    return pd.read_csv(out)


def assert_same_table(a, b, rtol):
    assert list(a.columns) == list(b.columns)
    for col in a.columns:
        if col == "series":
            continue
        scale = np.max(np.abs(b[col].to_numpy())) + 1e-300
        np.testing.assert_allclose(a[col], b[col], rtol=rtol, atol=rtol * scale, err_msg=col)


@pytest.mark.slow
@pytest.mark.parametrize("path", EXAMPLES)
def test_cli_backends_agree_on_every_example(path, tmp_path):
    model = nimm_dsl.load(path)
    if model.ir.is_static:
        data = "examples/data/puromycin_treated.csv"
        args = [path, "--data", data]
    else:
        args = [path, "--times", "0:10:21"]
    for scenario in [None, *model.ir.scenarios][:2]:
        extra = ["--scenario", scenario] if scenario else []
        a = simulate([*args, *extra, "--backend", "torch"], tmp_path / "torch.csv")
        b = simulate([*args, *extra, "--backend", "casadi"], tmp_path / "casadi.csv")
        assert_same_table(a, b, rtol=1e-5)  # both solvers run at the CLI's rtol = atol = 1e-8


def test_cli_backends_agree_on_hodgkin_huxley_spikes(tmp_path):
    # Spiking dynamics magnify solver differences near each upstroke; compare on a short window.
    args = ["examples/hodgkin_huxley.nimm", "--times", "0:5:11"]
    a = simulate([*args, "--backend", "torch"], tmp_path / "torch.csv")
    b = simulate([*args, "--backend", "casadi"], tmp_path / "casadi.csv")
    assert_same_table(a, b, rtol=1e-4)


def test_hybrid_model_from_saved_weights_simulates_identically(tmp_path):
    model = nimm_dsl.load("examples/lotka_volterra_neural.nimm")
    rng = np.random.default_rng(3)
    weights = {n.name: rng.normal(scale=0.4, size=n.n_weights) for n in model.ir.neurals}
    fit_json = tmp_path / "fit.json"
    params = {p.name: p.default for p in model.ir.params if p.estimate}
    fit_json.write_text(json.dumps({"params": params, "loss": 0.0, "metrics": {"rmse": {}},
                                    "weights": weights_to_fit_entry(weights, fit_json, inline=False)}))
    assert (tmp_path / "fit.weights.safetensors").exists()
    args = ["examples/lotka_volterra_neural.nimm", "--fit", str(fit_json), "--times", "1900:1920:41"]
    a = simulate([*args, "--backend", "torch"], tmp_path / "torch.csv")
    b = simulate([*args, "--backend", "casadi"], tmp_path / "casadi.csv")
    assert_same_table(a, b, rtol=1e-5)
    # the weights matter: without them the trajectory is the mechanistic one
    plain = simulate(["examples/lotka_volterra_neural.nimm", "--times", "1900:1920:41"], tmp_path / "p.csv")
    assert np.max(np.abs(plain["H"] - b["H"])) > 1e-2 * np.max(np.abs(b["H"]))
