"""The Torch fitting path (hybrid models): Adam on mini-batches of series, with early stopping on
the hold-out, then L-BFGS on every series; params are optimised through a smooth map onto their
bounds, network weights directly. Convergence is checked at the end (the loss change of the
last L-BFGS iterations and the gradient norm), and a start that stops short says so.

A hybrid model whose networks all start at zero (`init = zero`) starts as its mechanistic part:
with warm_start its params are first fitted alone by the CasADi path (seconds), so the slow
stochastic phase is spent on what the networks add.
"""
from __future__ import annotations

import math
from dataclasses import replace
from typing import Mapping, Optional, Sequence

import numpy as np

from ...backends import compile_ir
from ...backends.protocol import build_protocol
from ...compiler.ir import ParamIR
from ...errors import FitError, SimulationError
from ..data import Dataset
from ..series_params import estimated_params, series_key
from .failures import StartFailed
from .loss import array_walk_ops, dataset_nll, sigma_values, torch_loss_ops
from .multistart import StartOutcome, StartSolver, run_starts
from .starts import param_scale

# A start has converged when the gradient in the optimiser's variables is this small relative to
# the loss, or the loss no longer changes between the last L-BFGS evaluations.
GRAD_TOL = 1e-4
CHANGE_TOL = 1e-9


class BoundTransform:
    """Unconstrained variables u <-> params within their bounds, smoothly:
    two finite bounds: a sigmoid (in log space for positive ranges wider than a decade);
    one finite bound: a softplus away from it; none: a plain scale."""

    def __init__(self, params: Sequence[ParamIR]):
        self.params = list(params)
        self.scale = np.array([param_scale(p) for p in params])

    @staticmethod
    def _log_range(p):
        return np.isfinite(p.lo) and np.isfinite(p.hi) and p.lo > 0 and p.hi / p.lo > 10

    def to_params(self, u):
        import torch

        out = []
        for j, p in enumerate(self.params):
            uj = u[..., j]
            if np.isfinite(p.lo) and np.isfinite(p.hi):
                if self._log_range(p):
                    lo, hi = math.log(p.lo), math.log(p.hi)
                    out.append(torch.exp(lo + (hi - lo) * torch.sigmoid(uj)))
                else:
                    out.append(p.lo + (p.hi - p.lo) * torch.sigmoid(uj))
            elif np.isfinite(p.lo):
                out.append(p.lo + self.scale[j] * torch.nn.functional.softplus(uj))
            elif np.isfinite(p.hi):
                out.append(p.hi - self.scale[j] * torch.nn.functional.softplus(uj))
            else:
                out.append(self.scale[j] * uj)
        return torch.stack(out, dim=-1) if out else u

    def to_unconstrained(self, x: np.ndarray) -> np.ndarray:
        u = np.empty(len(self.params))
        for j, p in enumerate(self.params):
            if np.isfinite(p.lo) and np.isfinite(p.hi):
                if self._log_range(p):
                    f = (math.log(x[j]) - math.log(p.lo)) / (math.log(p.hi) - math.log(p.lo))
                else:
                    f = (x[j] - p.lo) / (p.hi - p.lo)
                f = min(max(f, 1e-6), 1 - 1e-6)
                u[j] = math.log(f / (1 - f))
            elif np.isfinite(p.lo) or np.isfinite(p.hi):
                d = max(abs(x[j] - (p.lo if np.isfinite(p.lo) else p.hi)) / self.scale[j], 1e-6)
                u[j] = d + math.log(-math.expm1(-d))  # inverse softplus, overflow-free
            else:
                u[j] = x[j] / self.scale[j]
        return u


class _NonFiniteLoss(ArithmeticError):
    def __str__(self) -> str:
        return "the loss is not finite at a point it tried"


class TorchObjective:
    """The training loss of a subset of series as a function of (params, weights), in torch."""

    def __init__(self, ir, sim, dataset: Dataset, rtol, atol, est: Optional[Sequence[ParamIR]] = None):
        """est: the fit's estimated params, the entries of x (default: those of `dataset`; a
        validation set passes the training set's, since it may hold fewer series)."""
        import torch

        self.ir, self.sim, self.dataset = ir, sim, dataset
        self.rtol, self.atol = rtol, atol
        # per series: which entry of x each estimated model param takes (its own per-series copy)
        names = [p.name for p in (est if est is not None else estimated_params(ir, dataset))]
        self.est_index = [i for i, p in enumerate(ir.params) if p.estimate]
        self.x_index = [[names.index(series_key(p.name, s.label) if p.per_series else p.name)
                         for p in ir.params if p.estimate] for s in dataset.series]
        self.fixed = torch.tensor([p.default for p in ir.params], dtype=torch.float64)
        self.protocols = (None if dataset.static else
                          [build_protocol(ir, s.times, **s.run_options()) for s in dataset.series])
        self.ops = torch_loss_ops()
        self.walk_ops = array_walk_ops(torch, lambda v: torch.tensor(float(v), dtype=torch.float64))

    def param_row(self, x, k: int = 0):
        """(1, n_params) for series k: estimated params from x, consts fixed."""
        import torch

        row = self.fixed.clone()
        if self.est_index:
            row = row.index_put((torch.tensor(self.est_index),), x[torch.tensor(self.x_index[k])])
        return row.unsqueeze(0)

    def __call__(self, x, weights: Mapping, subset: Optional[Sequence[int]] = None, rtol=None):
        from ...backends.torch_backend import NEURAL_KEY

        rtol = self.rtol if rtol is None else rtol
        subset = range(len(self.dataset.series)) if subset is None else subset
        P = self.param_row(x)
        preds, series = [], []
        sq = {n.name: 0.0 for n in self.ir.neurals}
        count = {n.name: 0 for n in self.ir.neurals}
        for k in subset:
            s = self.dataset.series[k]
            series.append(s)
            if self.dataset.static:
                inputs = {u: self.ops.const(v) for u, v in s.inputs.items()}
                out = self.sim.static_outputs(inputs, P, weights)
            else:
                out = self.sim.trajectory(self.protocols[k], self.param_row(x, k), weights, rtol, self.atol)
                for n in self.ir.neurals:
                    values = out[NEURAL_KEY.format(n.name)]
                    sq[n.name] = sq[n.name] + (values ** 2).sum()
                    count[n.name] += values.numel()
            preds.append({name: out[name][0] for name in self.dataset.observed_names})
        env = {p.symbol: P[0, i] for i, p in enumerate(self.ir.params)}
        sigmas = sigma_values(self.ir, env, self.walk_ops, self.dataset.observed_names)
        total = dataset_nll(self.ir, replace(self.dataset, series=series), preds, sigmas, self.ops)
        for n in self.ir.neurals:
            if n.penalty and count[n.name]:
                total = total + n.penalty * sq[n.name] / count[n.name]
        return total


class TorchSolver(StartSolver):
    """Adam then L-BFGS from one start point (see the module docstring)."""

    def __init__(self, ir, train: Dataset, valid: Optional[Dataset], rtol, atol, max_iter, seed,
                 simulator=None, lr: float = 0.05, weight_lr: float = 0.01, lbfgs_iter: int = 50,
                 batch_series: int = 8, validate_every: int = 10, patience: int = 5,
                 adam_rtol: float = 1e-5, lbfgs_rtol: Optional[float] = None, warm_start: bool = True):
        import torch

        torch.manual_seed(seed)
        self.ir, self.train, self.rtol, self.atol, self.seed = ir, train, rtol, atol, seed
        self.simulator = sim = simulator if simulator is not None else compile_ir(ir, "torch")
        self.est = estimated_params(ir, train)
        self.transform = BoundTransform(self.est)
        self.objective = TorchObjective(ir, sim, train, rtol, atol, self.est)
        self.validation = (TorchObjective(ir, sim, valid, rtol, atol, self.est)
                           if valid is not None and valid.series else None)
        self.epochs = max_iter if max_iter is not None else (30 if ir.neurals else 50)
        self.lr, self.weight_lr, self.lbfgs_iter = lr, weight_lr, lbfgs_iter
        self.batch_series, self.validate_every, self.patience = batch_series, validate_every, patience
        # the search phases need no tighter solves than these; the final loss uses `rtol`
        # (hybrid models: the networks' own error dwarfs a 1e-6 solve; mechanistic ones get `rtol`)
        if lbfgs_rtol is None:
            lbfgs_rtol = 1e-6 if ir.neurals else rtol
        self.adam_rtol, self.lbfgs_rtol = max(rtol, adam_rtol), max(rtol, lbfgs_rtol)
        self.rng = np.random.default_rng(seed)
        self.use_warm_start = warm_start and ir.neurals and all(n.init == "zero" for n in ir.neurals)

    def warm_start(self, points: np.ndarray, origins: list) -> tuple[np.ndarray, list, list[str]]:
        """The mechanistic part fitted alone by CasADi, as the one start (when it applies)."""
        if not self.use_warm_start:
            return points, origins, []
        from .casadi_paths import casadi_solver

        try:
            pre = run_starts(casadi_solver(self.ir, self.train, self.rtol, self.atol, 200, train_weights=False),
                             points, origins, self.seed)
        except FitError as e:
            return points, origins, [f"no mechanistic warm start ({e}); the hybrid fit starts from the "
                                     "params' starting points"]
        notes = [f"mechanistic warm start: {m}" for m in pre.warnings]
        return np.array([[pre.best.values[p.name] for p in self.est]]), ["warm start"], notes

    def _values(self, x: np.ndarray) -> dict:
        values = {p.name: float(p.default) for p in self.ir.params}
        values.update({p.name: float(x[j]) for j, p in enumerate(self.est)})
        return values

    def solve(self, start: np.ndarray) -> StartOutcome:
        import torch

        transform, objective, validation = self.transform, self.objective, self.validation
        u = torch.tensor(transform.to_unconstrained(start), dtype=torch.float64, requires_grad=True)
        W = {n.name: torch.tensor(n.initial_weights(self.seed), dtype=torch.float64, requires_grad=True)
             for n in self.ir.neurals}

        def here() -> tuple[dict, dict]:
            with torch.no_grad():
                x = transform.to_params(u).numpy().astype(float)
            return self._values(x), {k: w.detach().numpy().astype(float).copy() for k, w in W.items()}

        groups = [{"params": [u], "lr": self.lr}]
        if W:
            groups.append({"params": list(W.values()), "lr": self.weight_lr})
        adam = torch.optim.Adam(groups)
        n_series = len(self.train.series)
        best_val, best_state, stale = math.inf, None, 0
        notes: list[str] = []
        from .multistart import progress_bar

        bar = progress_bar(self.epochs, f"fitting {self.ir.name} (adam)", self.progress)
        try:
            for epoch in range(self.epochs):
                order = self.rng.permutation(n_series)
                for b in range(0, n_series, self.batch_series):
                    adam.zero_grad()
                    loss = objective(transform.to_params(u), W, order[b:b + self.batch_series], rtol=self.adam_rtol)
                    if not bool(torch.isfinite(loss)):  # NaN would spread into every param
                        raise StartFailed("failed: the loss is not finite at the point reached", *here())
                    loss.backward()
                    adam.step()
                bar.update()
                bar.set_postfix(loss=f"{float(loss.detach()):.4g}")
                if validation is not None and (epoch + 1) % self.validate_every == 0:
                    with torch.no_grad():
                        v = float(validation(transform.to_params(u), W, rtol=self.adam_rtol))
                    if v < best_val - 1e-9 * abs(best_val):
                        best_val, stale = v, 0
                        best_state = (u.detach().clone(), {k: w.detach().clone() for k, w in W.items()})
                    else:
                        stale += 1
                        if stale >= self.patience:
                            break
        except SimulationError:
            raise StartFailed("failed: the simulation failed during Adam", *here()) from None
        finally:
            bar.close()
        if best_state is not None:
            with torch.no_grad():
                u.copy_(best_state[0])
                for k, w in W.items():
                    w.copy_(best_state[1][k])
        # L-BFGS on every series with the full tolerance; kept only if the hold-out agrees
        variables = [u, *W.values()]
        saved = [v.detach().clone() for v in variables]
        lbfgs = torch.optim.LBFGS(variables, lr=1.0, max_iter=self.lbfgs_iter, line_search_fn="strong_wolfe",
                                  tolerance_grad=1e-9, tolerance_change=1e-12, history_size=20)
        history: list[float] = []

        def closure():
            lbfgs.zero_grad()
            value = objective(transform.to_params(u), W, rtol=self.lbfgs_rtol)
            if not bool(torch.isfinite(value)):  # torch's line search cannot bracket a NaN
                raise _NonFiniteLoss()
            value.backward()
            history.append(float(value.detach()))
            return value

        def restore():
            with torch.no_grad():
                for var, old in zip(variables, saved):
                    var.copy_(old)

        early_stopped = False
        try:
            lbfgs.step(closure)
        except (SimulationError, _NonFiniteLoss) as e:
            notes.append(f"L-BFGS stopped early ({e}); the result is Adam's")
            restore()
            history.clear()
        if validation is not None:
            with torch.no_grad():
                v = float(validation(transform.to_params(u), W))
            if v > best_val and best_state is not None:
                restore()
                early_stopped = True
        try:
            final = objective(transform.to_params(u), W)
            grads = torch.autograd.grad(final, variables, allow_unused=True)
        except SimulationError:
            raise StartFailed("failed: the simulation failed at the point reached", *here()) from None
        loss = float(final.detach())
        values, weights = here()
        if early_stopped:
            return StartOutcome(values, weights, loss, "stopped early: the hold-out loss stopped improving",
                                True, notes)
        gnorm = max((float(g.abs().max()) for g in grads if g is not None and g.numel()), default=0.0)
        change = abs(history[-1] - history[-2]) if len(history) >= 2 else math.inf
        converged = gnorm <= GRAD_TOL * max(1.0, abs(loss)) or change <= CHANGE_TOL * max(1.0, abs(loss))
        if converged:
            return StartOutcome(values, weights, loss, "converged", True, notes)
        change_text = f"{change:.3g}" if np.isfinite(change) else "unknown"
        return StartOutcome(values, weights, loss,
                            f"stopped before converging (last loss change {change_text}, gradient norm "
                            f"{gnorm:.3g})",
                            False, notes)

    def curvature(self, outcome: StartOutcome):
        import torch

        weights = outcome.weights

        def grad(x_natural):
            xt = torch.tensor(x_natural, dtype=torch.float64, requires_grad=True)
            value = self.objective(xt, {k: torch.tensor(w) for k, w in weights.items()})
            (g,) = torch.autograd.grad(value, xt)
            return g.numpy()

        # Both back ends compute the same loss; CasADi's exact Hessian is far cheaper than
        # differentiating the Torch solver twice, so the standard errors come from there.
        prob = self._casadi_problem()
        w_vec = prob.sim.weight_vector(weights)
        exact = prob.hessian()
        return grad, (lambda x: exact(x, w_vec))

    def _casadi_problem(self):
        from .casadi_paths import casadi_problem

        return casadi_problem(self.ir, self.train, self.rtol, self.atol)
