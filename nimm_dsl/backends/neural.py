"""The neural MLP shared by both back ends: one Torch module and one CasADi builder.

Both follow `NeuralIR`'s flat float64 weight layout (per layer: W as n_out x n_in row-major, then
b), apply the activation on hidden layers only, and use the same formula for every activation,
so they compute the same function for the same weights (tests/test_neural.py checks it):

    tanh, sigmoid, relu = max(x, 0), softplus = log(1 + exp(x)) (overflow-free form),
    gelu = 0.5 * x * (1 + erf(x / sqrt(2)))  (exact, not the tanh approximation).

torch and casadi are imported lazily: `import nimm_dsl` must not pull them in.
"""
from __future__ import annotations

import math
from typing import Iterator, Sequence

import numpy as np

from ..compiler.ir import ACTIVATIONS, NeuralIR

_SQRT1_2 = 1.0 / math.sqrt(2.0)


def layer_slices(nir: NeuralIR) -> Iterator[tuple[int, int, int, int, bool]]:
    """(offset of W, offset of b, n_in, n_out, is_hidden) per layer of the flat weight vector."""
    sizes = nir.layer_sizes
    k = 0
    for i in range(len(sizes) - 1):
        n_in, n_out = sizes[i], sizes[i + 1]
        yield k, k + n_in * n_out, n_in, n_out, i < len(sizes) - 2
        k += n_in * n_out + n_out


def _check_activation(nir: NeuralIR) -> None:
    if nir.activation not in ACTIVATIONS:
        raise ValueError(f"neural {nir.name}: unknown activation {nir.activation!r} "
                         f"(expected one of {', '.join(ACTIVATIONS)})")


def check_weights(nir: NeuralIR, w) -> np.ndarray:
    """A weight vector as a flat float64 array of the right length; ValueError naming the term."""
    arr = np.asarray(w, dtype=np.float64)
    if arr.ndim != 1 or arr.shape[0] != nir.n_weights:
        raise ValueError(f"neural {nir.name}: expected {nir.n_weights} weights, got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"neural {nir.name}: weights contain NaN or inf")
    return arr


# ------------------------------------------------------------------------------- torch
def torch_activation(name: str, x):
    import torch

    if name == "tanh":
        return torch.tanh(x)
    if name == "sigmoid":
        return torch.sigmoid(x)
    if name == "relu":
        return torch.relu(x)
    if name == "softplus":
        # log(exp(x) + exp(0)), stable for large |x|; torch's F.softplus switches to x above a threshold
        return torch.logaddexp(x, torch.zeros_like(x))
    if name == "gelu":
        return 0.5 * x * (1.0 + torch.erf(x * _SQRT1_2))
    raise ValueError(f"unknown activation {name!r}")


def torch_mlp(nir: NeuralIR, args: Sequence, w):
    """Evaluate the MLP on torch tensors.

    args: n_inputs tensors (or floats) that broadcast together, e.g. each (B,) or (T, B).
    w: flat weights (n_weights,) shared by the batch, or (B, n_weights) one set per batch member;
    batched weights line up with the LAST dimension of the broadcast arguments.
    Returns a tensor with the broadcast shape of the arguments (and of the batch for batched w).
    """
    import torch

    _check_activation(nir)
    if len(args) != nir.n_inputs:
        raise ValueError(f"neural {nir.name} takes {nir.n_inputs} arguments, got {len(args)}")
    xs = [torch.as_tensor(a, dtype=w.dtype, device=w.device) for a in args]  # no copy when they match
    shape = torch.broadcast_shapes(*(a.shape for a in xs))
    if w.dim() == 2:  # one weight set per batch member: the batch is the last argument dimension
        shape = torch.broadcast_shapes(shape, (w.shape[0],))
    x = torch.stack([a.expand(shape) for a in xs], dim=-1)  # (..., n_in)
    for kW, kb, n_in, n_out, hidden in layer_slices(nir):
        if w.dim() == 1:
            W = w[kW:kb].reshape(n_out, n_in)
            x = x @ W.T + w[kb:kb + n_out]
        else:
            W = w[:, kW:kb].reshape(w.shape[0], n_out, n_in)
            x = torch.einsum("...bi,boi->...bo", x, W) + w[:, kb:kb + n_out]
        if hidden:
            x = torch_activation(nir.activation, x)
    return x[..., 0]


def _build_torch_mlp_class():
    import torch

    class TorchMLP(torch.nn.Module):
        """A float64 nn.Module holding one neural term's flat weights as the parameter `weight`.

        `TorchMLP(nir, weights=None)` starts at `weights` (default `nir.initial_weights()`, so
        `init = zero` starts with a zero output layer); `module(*args, weights=None)` evaluates
        it, optionally with other (e.g. batched (B, n_weights)) weights.
        """

        def __init__(self, nir: NeuralIR, weights=None, dtype=None, device="cpu"):
            super().__init__()
            self.nir = nir
            w0 = nir.initial_weights() if weights is None else check_weights(nir, weights)
            self.weight = torch.nn.Parameter(
                torch.as_tensor(w0, dtype=dtype or torch.float64, device=device).clone())

        def forward(self, *args, weights=None):
            return torch_mlp(self.nir, args, self.weight if weights is None else weights)

        def extra_repr(self):
            n = self.nir
            return f"{n.name}: {n.layer_sizes}, activation={n.activation}, penalty={n.penalty}"

    return TorchMLP


def __getattr__(name):
    # TorchMLP is built on first use so that importing this module does not import torch
    if name == "TorchMLP":
        cls = _build_torch_mlp_class()
        globals()["TorchMLP"] = cls
        return cls
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def neural_penalty(nir: NeuralIR, outputs):
    """The L2 penalty of a neural term along a trajectory: `penalty * mean(outputs ** 2)`.

    outputs: the term's values at the output times, shape (B, T) or (B, T, n_calls) (every call
    site of the term); the mean runs over everything but the batch dimension. Returns (B,).
    Works on torch tensors and numpy arrays.
    """
    flat = outputs.reshape(outputs.shape[0], -1)
    return nir.penalty * (flat ** 2).mean(-1)


# ------------------------------------------------------------------------------ casadi
def casadi_activation(name: str, x):
    import casadi as ca

    if name == "tanh":
        return ca.tanh(x)
    if name == "sigmoid":
        return 1.0 / (1.0 + ca.exp(-x))
    if name == "relu":
        return ca.fmax(x, 0)
    if name == "softplus":
        return ca.fmax(x, 0) + ca.log1p(ca.exp(-ca.fabs(x)))
    if name == "gelu":
        return 0.5 * x * (1.0 + ca.erf(x * _SQRT1_2))
    raise ValueError(f"unknown activation {name!r}")


def casadi_mlp(nir: NeuralIR, args: Sequence, w):
    """Build the MLP as a CasADi expression (SX, MX or DM).

    args: n_inputs scalar expressions; w: the flat weight column (n_weights x 1, symbolic or
    numeric; a numpy vector is accepted). Returns a 1x1 expression.
    """
    import casadi as ca

    _check_activation(nir)
    if len(args) != nir.n_inputs:
        raise ValueError(f"neural {nir.name} takes {nir.n_inputs} arguments, got {len(args)}")
    if isinstance(w, (np.ndarray, list, tuple)):
        w = ca.DM(check_weights(nir, w))
    if w.shape != (nir.n_weights, 1):
        raise ValueError(f"neural {nir.name}: expected a {nir.n_weights}x1 weight column, got {w.shape}")
    x = ca.vertcat(*args)
    for kW, kb, n_in, n_out, hidden in layer_slices(nir):
        # the flat block is W row-major; CasADi reshapes column-major, so this gives W transposed
        W = ca.reshape(w[kW:kb], n_in, n_out).T
        x = ca.mtimes(W, x) + w[kb:kb + n_out]
        if hidden:
            x = casadi_activation(nir.activation, x)
    return x
