"""The shared MLP: torch and CasADi compute the same function; weight files round-trip."""
import json
import math

import casadi as ca
import numpy as np
import pytest
import sympy as sp
import torch

from nimm_dsl.backends.neural import (TorchMLP, casadi_mlp, check_weights,
                                               neural_penalty, torch_mlp)
from nimm_dsl.compiler.ir import ACTIVATIONS, NeuralIR
from nimm_dsl.errors import DataError
from nimm_dsl.runtime.weights import (load_weights, save_weights, weights_from_fit_entry,
                                      weights_to_fit_entry)


def make_nir(activation="tanh", hidden=(5, 3), n_inputs=2, init="random", penalty=0.0):
    return NeuralIR("resid", sp.Function("resid"), n_inputs, list(hidden), activation, init, penalty, "1")


def numpy_mlp(nir, x, w):
    """Reference: the layout and activations written out with numpy."""
    act = {"tanh": np.tanh, "relu": lambda z: np.maximum(z, 0), "sigmoid": lambda z: 1 / (1 + np.exp(-z)),
           "softplus": lambda z: np.log1p(np.exp(z)),
           "gelu": lambda z: 0.5 * z * (1 + np.vectorize(math.erf)(z / math.sqrt(2)))}[nir.activation]
    layers = nir.unpack(w)
    h = np.asarray(x, float)
    for i, (W, b) in enumerate(layers):
        h = W @ h + b
        if i < len(layers) - 1:
            h = act(h)
    return float(h[0])


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_torch_and_casadi_mlp_agree_for_every_activation(activation):
    nir = make_nir(activation)
    rng = np.random.default_rng(1)
    w = rng.normal(scale=1.5, size=nir.n_weights)
    xs = rng.normal(scale=2.0, size=(20, 2))
    x_sym = [ca.SX.sym("x0"), ca.SX.sym("x1")]
    f = ca.Function("f", x_sym, [casadi_mlp(nir, x_sym, ca.DM(w))])
    got_ca = np.array([float(f(*row)) for row in xs])
    got_torch = torch_mlp(nir, [torch.tensor(xs[:, 0]), torch.tensor(xs[:, 1])], torch.tensor(w)).numpy()
    ref = np.array([numpy_mlp(nir, row, w) for row in xs])
    np.testing.assert_allclose(got_torch, ref, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(got_ca, ref, rtol=1e-12, atol=1e-12)
    # gradients w.r.t. inputs agree as well (the fitters differentiate through both)
    xt = torch.tensor(xs, requires_grad=True)
    torch_mlp(nir, [xt[:, 0], xt[:, 1]], torch.tensor(w)).sum().backward()
    J = ca.Function("J", x_sym, [ca.jacobian(casadi_mlp(nir, x_sym, ca.DM(w)), ca.vertcat(*x_sym))])
    got_J = np.array([np.array(J(*row)).ravel() for row in xs])
    np.testing.assert_allclose(xt.grad.numpy(), got_J, rtol=1e-10, atol=1e-12)


def test_softplus_does_not_overflow_in_either_back_end():
    nir = make_nir("softplus", hidden=(1,), n_inputs=1)
    w = np.array([1.0, 0.0, 1.0, 0.0])  # out = softplus(x)
    big = 800.0
    assert float(torch_mlp(nir, [torch.tensor(big)], torch.tensor(w))) == pytest.approx(big)
    x = ca.SX.sym("x")
    assert float(ca.Function("f", [x], [casadi_mlp(nir, [x], w)])(big)) == pytest.approx(big)


def test_symbolic_weights_in_casadi_match_numeric():
    nir = make_nir("gelu", hidden=(4,))
    w_sym = ca.SX.sym("w", nir.n_weights)
    x = [ca.SX.sym("a"), ca.SX.sym("b")]
    f = ca.Function("f", [*x, w_sym], [casadi_mlp(nir, x, w_sym)])
    w = np.random.default_rng(3).normal(size=nir.n_weights)
    assert float(f(0.3, -0.7, w)) == pytest.approx(numpy_mlp(nir, [0.3, -0.7], w), rel=1e-13)


def test_batched_weights_give_one_output_per_member():
    nir = make_nir("tanh")
    rng = np.random.default_rng(4)
    W = rng.normal(size=(3, nir.n_weights))
    x = rng.normal(size=(3, 2))
    out = torch_mlp(nir, [torch.tensor(x[:, 0]), torch.tensor(x[:, 1])], torch.tensor(W))
    ref = [numpy_mlp(nir, x[i], W[i]) for i in range(3)]
    np.testing.assert_allclose(out.numpy(), ref, rtol=1e-13)
    # a (T, B) grid of inputs: members along the last dimension
    xt = torch.tensor(rng.normal(size=(4, 3, 2)))
    out2 = torch_mlp(nir, [xt[..., 0], xt[..., 1]], torch.tensor(W))
    assert out2.shape == (4, 3)
    assert float(out2[2, 1]) == pytest.approx(numpy_mlp(nir, xt[2, 1].numpy(), W[1]), rel=1e-13)


def test_zero_init_module_outputs_zero_and_has_float64_weights():
    nir = make_nir("relu", init="zero")
    mod = TorchMLP(nir)
    assert isinstance(mod, torch.nn.Module) and mod.weight.dtype == torch.float64
    assert mod.weight.shape == (nir.n_weights,)
    out = mod(torch.tensor([0.5, -1.0]), torch.tensor([2.0, 3.0])).detach()
    assert torch.all(out == 0)
    mod.weight.data = torch.tensor(nir.initial_weights(seed=0))
    assert float(mod(torch.tensor(0.2), torch.tensor(0.1)).detach()) == 0.0  # init=zero's last layer is zero
    rand = TorchMLP(make_nir("relu", init="random"))
    assert float(rand(torch.tensor(0.9), torch.tensor(-0.4)).detach().abs()) > 0


def test_neural_penalty_is_penalty_times_mean_square():
    nir = make_nir(penalty=0.5)
    out = torch.tensor([[1.0, 3.0], [2.0, 0.0]])
    np.testing.assert_allclose(neural_penalty(nir, out).numpy(), [0.5 * 5.0, 0.5 * 2.0])


def test_check_weights_rejects_wrong_length_and_nan():
    nir = make_nir()
    with pytest.raises(ValueError, match="resid: expected"):
        check_weights(nir, np.zeros(3))
    with pytest.raises(ValueError, match="NaN"):
        check_weights(nir, np.full(nir.n_weights, np.nan))


# ------------------------------------------------------------------------- weight files
def test_safetensors_and_json_round_trip_exactly(tmp_path):
    w = {"resid": np.random.default_rng(0).normal(size=17), "other": np.array([1e-300, -2.5, 3.0])}
    for name in ("w.safetensors", "w.json"):
        save_weights(tmp_path / name, w)
        back = load_weights(tmp_path / name)
        assert set(back) == set(w)
        for k in w:
            assert back[k].dtype == np.float64
            np.testing.assert_array_equal(back[k], w[k])
    assert (tmp_path / "w.safetensors").read_bytes()[:8] != b"\x80\x04\x95"  # not a pickle


def test_fit_json_entry_inline_and_file(tmp_path):
    w = {"resid": np.linspace(-1, 1, 9)}
    fit_json = tmp_path / "FIT.json"
    inline = weights_to_fit_entry(w, fit_json, inline=True)
    json.dumps(inline)  # serialisable as it is
    np.testing.assert_array_equal(weights_from_fit_entry(json.loads(json.dumps(inline)), fit_json)["resid"], w["resid"])
    pointer = weights_to_fit_entry(w, fit_json, inline=False)
    assert pointer == {"format": "safetensors", "file": "FIT.weights.safetensors"}
    assert (tmp_path / "FIT.weights.safetensors").is_file()
    np.testing.assert_array_equal(weights_from_fit_entry(pointer, fit_json)["resid"], w["resid"])


def test_bad_weight_files_are_data_errors(tmp_path):
    fit_json = tmp_path / "FIT.json"
    with pytest.raises(DataError, match="file name beside FIT.json"):
        weights_from_fit_entry({"format": "safetensors", "file": "../../etc/passwd"}, fit_json)
    with pytest.raises(DataError, match="not found"):
        load_weights(tmp_path / "missing.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"not a tensor file at all")
    with pytest.raises(DataError, match="junk.safetensors"):
        load_weights(tmp_path / "junk.safetensors")
    (tmp_path / "bad.json").write_text('{"resid": [1, "x"]}')
    with pytest.raises(DataError, match="resid"):
        load_weights(tmp_path / "bad.json")
    with pytest.raises(DataError, match="NaN"):
        weights_from_fit_entry({"format": "inline", "values": {"resid": [1.0, float("nan")]}}, fit_json)
