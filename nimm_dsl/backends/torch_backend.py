"""PyTorch back end: batched, differentiable simulation with torchdiffeq.

The IR's sympy trees are translated once, with `ir.walk` and a torch `Ops` table that records a
straight-line program (`_Tape`): every distinct sub-expression becomes one register, computed by
one torch call. Running a tape on tensors with a leading batch dimension evaluates a whole batch
of parameter sets at once (values broadcast: time is a scalar, states and params are (B,)).

Integration runs segment by segment over a `backends.protocol.Protocol` (dose jumps, set flags,
input coefficients), with `torchdiffeq.odeint` (`dopri5` by default; fixed-step `rk4` with
`step_size`; `adjoint=True` uses `odeint_adjoint`). The adaptive error norm is the worst
member's RMS norm, so each batch member is solved at least as accurately as it would be alone.

Entry points: `compile_torch(ir)` -> `TorchSimulator` with `simulate(...)` (numpy in/out, the
shared back-end contract) and `trajectory(protocol, P, weights)` (tensors in/out, autograd
friendly, for the fitter), `neural_penalty(traj)` and `static_outputs(...)` for static models.
"""
from __future__ import annotations

import math
from typing import Mapping, Optional

import numpy as np
import sympy as sp
import torch

from ..errors import SimulationError
from .protocol import (Protocol, build_protocol, check_scenario, param_vector,
                                 segment_tail)
from .contract import check_weight_names, static_input_table
from .results import SimulationResult, domain_warnings, nonfinite_warnings, trough_warnings
from ..compiler.ir import ModelIR, Ops, walk
from .neural import TorchMLP, check_weights, neural_penalty, torch_mlp

# Per segment; integration fails loudly instead of hanging. The examples need at most ~2,000
# dopri5 steps; a step costs about 1 ms, so a stiff model gives up in well under a minute.
DEFAULT_MAX_STEPS = 20_000
NEURAL_KEY = "neural:{}"  # trajectory key of a neural term's outputs (B, T, n_calls)


# ------------------------------------------------------------------ straight-line programs
class _Tape:
    """A program recorded by walking sympy trees: registers are inputs, constants, then results."""

    def __init__(self, inputs: list[sp.Symbol], dtype, device):
        self.inputs = list(inputs)
        self.dtype, self.device = dtype, device
        self.consts: dict[int, float] = {}  # register -> python value of a constant
        self.instrs: list[tuple] = []  # (torch function | neural name, argument registers)
        self.neural_calls: list[tuple[str, int]] = []  # (neural name, register) per distinct call
        self.outputs: list[int] = []

    def _emit(self, fn, *args) -> int:
        self.instrs.append((fn, args))
        return len(self.inputs) + len(self.instrs) - 1

    def const(self, value: float) -> int:
        tensor = torch.tensor(float(value), dtype=self.dtype, device=self.device)
        reg = self._emit(lambda: tensor)
        self.consts[reg] = float(value)
        return reg

    def _pow(self, base: int, ex: int) -> int:
        if ex in self.consts:  # a constant exponent: no gradient w.r.t. it, no log(base) needed
            e = self.consts[ex]
            return self._emit(lambda x: torch.pow(x, e), base)
        return self._emit(torch.pow, base, ex)

    def _where(self, cond: int, a: int, b: int) -> int:
        return self._emit(lambda c, x, y: torch.where(_as_bool(c), x, y), cond, a, b)

    def ops(self) -> Ops:
        e = self._emit
        unary = {"exp": torch.exp, "log": torch.log, "sin": torch.sin, "cos": torch.cos,
                 "tan": torch.tan, "tanh": torch.tanh, "abs": torch.abs, "sqrt": torch.sqrt}
        funcs = {k: (lambda f: lambda a: e(f, a))(f) for k, f in unary.items()}
        funcs["min"] = lambda a, b: e(torch.minimum, a, b)
        funcs["max"] = lambda a, b: e(torch.maximum, a, b)
        cmp = {"<": torch.lt, "<=": torch.le, ">": torch.gt, ">=": torch.ge, "==": torch.eq, "!=": torch.ne}
        return Ops(
            const=self.const,
            add=lambda a, b: e(torch.add, a, b),
            mul=lambda a, b: e(torch.mul, a, b),
            pow=self._pow,
            funcs=funcs,
            where=self._where,
            compare={k: (lambda f: lambda a, b: e(f, a, b))(f) for k, f in cmp.items()},
            and_=lambda a, b: e(lambda x, y: torch.logical_and(_as_bool(x), _as_bool(y)), a, b),
            or_=lambda a, b: e(lambda x, y: torch.logical_or(_as_bool(x), _as_bool(y)), a, b),
            not_=lambda a: e(lambda x: torch.logical_not(_as_bool(x)), a),
            matvec=self._matvec,
        )

    def _matvec(self, group, vector: list[int], entries: Optional[list[int]]) -> list[int]:
        """The rows of a linear_forms.LinearGroup as one matrix product over the batch (one
        register holding every row), instead of N^2 scalar multiplications and additions."""
        n_rows, n_cols = group.shape
        rows = torch.tensor([r for r, _, _, _ in group.entries], dtype=torch.long, device=self.device)
        cols = torch.tensor([c for _, c, _, _ in group.entries], dtype=torch.long, device=self.device)

        def stacked(values):  # registers that broadcast together -> (..., len(values))
            return torch.stack(torch.broadcast_tensors(*values), dim=-1)

        if entries is None:
            matrix_t = torch.zeros(n_cols, n_rows, dtype=self.dtype, device=self.device)
            matrix_t[cols, rows] = torch.tensor([e[2] for e in group.entries], dtype=self.dtype,
                                                device=self.device)
            product = self._emit(lambda *v: stacked(v) @ matrix_t, *vector)
        else:
            n_vector = len(vector)

            def with_entries(*regs):
                values = stacked(regs[n_vector:])
                matrix = values.new_zeros(*values.shape[:-1], n_rows, n_cols)
                matrix[..., rows, cols] = values
                return (matrix @ stacked(regs[:n_vector]).unsqueeze(-1)).squeeze(-1)

            product = self._emit(with_entries, *vector, *entries)
        return [self._emit(lambda m, r=r: m[..., r], product) for r in range(n_rows)]

    def neural(self, name: str, args: list[int]) -> int:
        reg = self._emit(name, *args)
        self.neural_calls.append((name, reg))
        return reg

    def run(self, values: list, nir: Mapping, weights: Mapping) -> list:
        """All registers for input values (tensors that broadcast together)."""
        regs = list(values)
        for fn, args in self.instrs:
            if isinstance(fn, str):
                regs.append(torch_mlp(nir[fn], [regs[a] for a in args], weights[fn]))
            else:
                regs.append(fn(*[regs[a] for a in args]))
        return regs


def _as_bool(x):
    return x if x.dtype == torch.bool else x > 0.5


def _record(ir: ModelIR, inputs: list[sp.Symbol], exprs: list[sp.Expr], dtype, device,
            with_lets: bool = True) -> tuple[_Tape, list[int], list[int]]:
    """A tape computing the lets (in order) and then `exprs`; returns (tape, expr regs, let regs)."""
    tape = _Tape(inputs, dtype, device)
    env = {s: i for i, s in enumerate(inputs)}
    ops, memo, linear = tape.ops(), {}, ir.linear_forms()
    let_regs = []
    if with_lets:
        for let in ir.lets:
            env[let.symbol] = walk(let.expr, env, ops, tape.neural, memo, linear)
            let_regs.append(env[let.symbol])
    out = [walk(x, env, ops, tape.neural, memo, linear) for x in exprs]
    return tape, out, let_regs


# ------------------------------------------------------------------ the simulator
class TorchSimulator(torch.nn.Module):
    """A compiled model. Neural terms are `TorchMLP` modules in `self.mlps` (float64 weights,
    initialised with `NeuralIR.initial_weights()`); weights passed to `simulate`/`trajectory`
    take precedence over them."""

    def __init__(self, ir: ModelIR, device="cpu", dtype=torch.float64, method: str = "dopri5",
                 step_size: Optional[float] = None, adjoint: bool = False,
                 max_num_steps: int = DEFAULT_MAX_STEPS):
        super().__init__()
        self.ir = ir
        self.device = torch.device(device)
        self.dtype = dtype
        self.method, self.step_size, self.adjoint = method, step_size, adjoint
        self.max_num_steps = int(max_num_steps)
        self.nir = {n.name: n for n in ir.neurals}
        self.mlps = torch.nn.ModuleDict(
            {n.name: TorchMLP(n, dtype=dtype, device=self.device) for n in ir.neurals})
        self.n_params = len(ir.params)
        self.runtime_symbols = ir.runtime_symbols()
        self.state_names = [s.name for s in ir.states]
        self.let_names = [l.name for l in ir.lets]
        self.observe_names = [o.name for o in ir.observes]
        if ir.is_static:
            # static model: inputs are plain symbols; evaluate lets and observes row-wise
            inputs = [u.symbol for u in ir.inputs] + [p.symbol for p in ir.params]
            self._static, self._static_obs, self._static_lets = _record(
                ir, inputs, [o.expr for o in ir.observes], dtype, self.device)
            return
        t, runtime = ir.time, self.runtime_symbols
        states = [s.symbol for s in ir.states]
        derivs = [ir.derivatives[s.name] for s in ir.states]
        # right-hand side: lets then derivatives
        self._rhs, self._rhs_out, _ = _record(ir, [t, *states, *runtime], derivs, dtype, self.device)
        # outputs at the reported times: lets, observes, and (for penalties) every neural call
        # (an integral's value is an input of the outputs: Protocol.integral_values)
        self._out, self._out_obs, self._out_lets = _record(
            ir, [t, *states, *runtime, *(g.symbol for g in ir.integrals)],
            [*derivs, *[o.expr for o in ir.observes]], dtype, self.device)
        self._out_obs = self._out_obs[len(derivs):]
        # initial values: functions of (time, runtime vector); they use no state or let (E306)
        self._events, self._event_out, _ = _record(ir, [t, *runtime], [s.init for s in ir.states],
                                                   dtype, self.device, with_lets=False)
        # dose amounts may use any value: functions of (time, states, runtime vector)
        self._doses = {}
        for dose in [*ir.doses, *(d for sc in ir.scenarios.values() for d in sc.doses)]:
            self._doses.setdefault(id(dose), (len(self._doses), dose))
        self._amounts, self._amount_out, _ = _record(
            ir, [t, *states, *runtime], [d.amount for _, d in self._doses.values()], dtype, self.device)
        # the dynamics are evaluated inside the states' declared domains (see _integrate)
        self._lo = [None if math.isinf(s.lo) else s.lo for s in ir.states]
        self._hi = [None if math.isinf(s.hi) else s.hi for s in ir.states]

    # ------------------------------------------------------------ inputs to tensors
    def _tensor(self, x) -> torch.Tensor:
        if isinstance(x, np.ndarray) and not x.flags.writeable:  # e.g. a pandas column view
            x = x.copy()
        return torch.as_tensor(x, dtype=self.dtype, device=self.device)

    def _weights(self, weights: Optional[Mapping], batch: int) -> dict[str, torch.Tensor]:
        """Every neural term's weights as a tensor (n_w,) or (B, n_w); unknown names -> ValueError."""
        weights = check_weight_names(self.ir, weights)
        out = {}
        for name, nir in self.nir.items():
            w = weights.get(name)
            if w is None:
                out[name] = self.mlps[name].weight
                continue
            if torch.is_tensor(w):
                w = w.to(dtype=self.dtype, device=self.device)
            else:
                arr = np.asarray(w, dtype=np.float64)
                w = self._tensor(check_weights(nir, arr) if arr.ndim == 1 else arr)
            if w.shape[-1] != nir.n_weights or w.dim() > 2 or (w.dim() == 2 and w.shape[0] != batch):
                raise ValueError(f"neural {name}: weights must have shape ({nir.n_weights},) or "
                                 f"({batch}, {nir.n_weights}), got {tuple(w.shape)}")
            out[name] = w
        return out

    def _columns(self, P: torch.Tensor) -> list[torch.Tensor]:
        return [P[:, j] for j in range(P.shape[1])]

    def _segment_P(self, P_params: torch.Tensor, segment) -> torch.Tensor:
        tail = self._tensor(segment_tail(segment)).expand(P_params.shape[0], -1)
        return torch.cat([P_params, tail], dim=1)

    # ------------------------------------------------------------ differentiable core
    def trajectory(self, protocol: Protocol, P: torch.Tensor, weights: Optional[Mapping] = None,
                   rtol: float = 1e-8, atol: float = 1e-8) -> dict[str, torch.Tensor]:
        """Simulate a batch along a protocol, keeping the autograd graph.

        P: (B, n_params) values of `ir.params` in order, or (B, n_runtime) (then only the first
        n_params columns are used: flags and input coefficients come from the protocol).
        weights: {neural name: (n_w,) shared or (B, n_w)}; missing names use `self.mlps`.
        Returns {name: (B, T)} for every state, let and observe, and under
        `NEURAL_KEY.format(name)` the neural term's outputs (B, T, n_calls) for penalties.
        """
        if self.ir.is_static:
            raise ValueError("a static model has no trajectory; use static_outputs()")
        P = torch.as_tensor(P).to(dtype=self.dtype, device=self.device)  # differentiable cast
        if P.dim() != 2 or P.shape[1] not in (self.n_params, len(self.runtime_symbols)):
            raise ValueError(f"P must have shape (B, {self.n_params}), got {tuple(P.shape)}")
        B = P.shape[0]
        P_params = P[:, :self.n_params]
        W = self._weights(weights, B)
        out_times = protocol.output_times
        t_dev = lambda v: self._tensor(float(v))  # noqa: E731

        segments = protocol.segments
        P_seg = self._segment_P(P_params, segments[0])
        ev = self._events.run([t_dev(protocol.t_start), *self._columns(P_seg)], self.nir, W)
        y = torch.stack([ev[r].expand(B) for r in self._event_out[:len(self.ir.states)]], dim=1)
        if not bool(torch.isfinite(y).all()):  # said here, not as the solver's dt underflow
            finite = torch.isfinite(y)
            bad = [n for i, n in enumerate(self.state_names) if not bool(finite[:, i].all())]
            raise SimulationError(f"state(s) {', '.join(bad)} became NaN or inf in the initial values at "
                                  f"{self.ir.time_name} = {protocol.t_start:g}", kind="initial",
                                  time=float(protocol.t_start), quantities=bad,
                                  state=self._state_dict(y, int((~finite).any(1).nonzero()[0])))

        runs = []  # (output indices, states (T, B, n_s), runtime columns) per segment
        for seg in segments:
            P_seg = self._segment_P(P_params, seg)
            if seg.doses:
                y = self._apply_doses(y, seg, P_seg, W)
            idx = np.asarray(seg.out_idx, dtype=int)
            t_out = out_times[idx]
            if seg.t1 > seg.t0:
                grid, where = np.unique(np.r_[seg.t0, t_out, seg.t1], return_inverse=True)
                sol = self._integrate(y, grid, P_seg, W, rtol, atol)  # (n_grid, B, n_s)
                Y = sol[torch.as_tensor(where[1:1 + len(idx)], device=self.device)]
                y = sol[-1]
            else:
                Y = y.unsqueeze(0).expand(len(idx), -1, -1)
            if len(idx):
                runs.append((idx, Y, P_seg))
        if not runs:
            raise ValueError("no output times inside the protocol")
        if protocol.requested is None:
            pieces = [self._outputs(Y, out_times[idx], P_seg, W) for idx, Y, P_seg in runs]
        else:  # integrals: the asked times only, each with its integrals' values
            Q = torch.cat([Y for _, Y, _ in runs])[:, :, self.ir.integral_rows()]  # (T_all, B, n_int)
            lags = torch.as_tensor(protocol.lags, device=self.device)
            requested = torch.as_tensor(protocol.requested, device=self.device)
            values = [Q[requested, :, k] - Q[lags[k], :, k] for k in range(Q.shape[2])]  # each (T_req, B)
            pieces = []
            for idx, Y, P_seg in runs:
                mine = np.flatnonzero((protocol.requested >= idx[0]) & (protocol.requested <= idx[-1]))
                if mine.size:
                    local = torch.as_tensor(protocol.requested[mine] - idx[0], device=self.device)
                    pieces.append(self._outputs(Y[local], out_times[protocol.requested[mine]], P_seg, W,
                                                [v[torch.as_tensor(mine)] for v in values]))
        return {k: torch.cat([p[k] for p in pieces], dim=1) for k in pieces[0]}

    def _apply_doses(self, y, seg, P_seg, W):
        """The doses at the segment's start, in model order: each amount is evaluated in the
        state left by the doses before it."""
        cols = list(y.unbind(1))
        t0, params = self._tensor(seg.t0), self._columns(P_seg)
        for e in seg.doses:
            regs = self._amounts.run([t0, *cols, *params], self.nir, W)
            amount = regs[self._amount_out[self._doses[id(e.dose)][0]]]
            k = e.state_index
            before = cols[k]
            cols[k] = cols[k] + amount if e.dose.op == "+" else cols[k] * amount
            if not bool(torch.isfinite(cols[k]).all()):
                name = self.state_names[k]
                row = int((~torch.isfinite(cols[k])).nonzero()[0])
                raise SimulationError(f"state {name} became NaN or inf after dose `{e.dose.name}` at "
                                      f"{self.ir.time_name} = {seg.t0:g}", kind="dose", time=seg.t0,
                                      quantities=[e.dose.name, name],
                                      state=self._state_dict(torch.stack([*cols[:k], before, *cols[k + 1:]], 1), row))
        return torch.stack(cols, dim=1)

    def _outputs(self, Y, t_out, P_seg, W, integrals=()) -> dict[str, torch.Tensor]:
        """States, lets, observes and neural outputs at output times; Y: (T, B, n_s) -> (B, T);
        integrals: each integral's values (T, B) at these times."""
        T, B = Y.shape[0], Y.shape[1]
        t = self._tensor(t_out).reshape(T, 1)
        regs = self._out.run([t, *Y.unbind(2), *self._columns(P_seg), *integrals], self.nir, W)
        full = lambda r: regs[r].expand(T, B).transpose(0, 1)  # noqa: E731
        res = {n: Y[:, :, i].transpose(0, 1) for i, n in enumerate(self.state_names)}
        res.update({n: full(r) for n, r in zip(self.let_names, self._out_lets)})
        res.update({n: full(r) for n, r in zip(self.observe_names, self._out_obs)})
        for name in self.nir:
            calls = [full(r) for n, r in self._out.neural_calls if n == name]
            res[NEURAL_KEY.format(name)] = (torch.stack(calls, dim=2) if calls
                                            else torch.zeros(B, T, 0, dtype=Y.dtype, device=Y.device))
        return res

    def _integrate(self, y0, grid: np.ndarray, P_seg, W, rtol, atol):
        import torchdiffeq

        cols = self._columns(P_seg)
        last = {}

        def rhs(t, y):
            regs = self._rhs.run([t, *self._inside_domains(y), *cols], self.nir, W)
            dy = torch.stack([regs[r].expand(y.shape[0]) for r in self._rhs_out], dim=1)
            if bool(torch.isfinite(dy).all()):
                last["t"], last["y"] = t, y
            elif "nonfinite" not in last and bool(torch.isfinite(t)) and bool(torch.isfinite(y).all()):
                # the first finite point where the model itself gives NaN/inf (log of a negative...):
                # after it the solver only sees NaN, and its own message (dt underflow) misleads
                last["nonfinite"] = (t.detach().clone(), ~torch.isfinite(dy), y.detach().clone())
            return dy

        t = self._tensor(grid)
        options = {}
        if self.method in _FIXED_STEP:
            h = self.step_size or (grid[-1] - grid[0]) / 1000.0
            n_steps = int(np.sum(np.ceil(np.diff(grid) / h - 1e-9)))
            if n_steps > self.max_num_steps:
                raise SimulationError(f"rk step size {h:g} needs {n_steps} steps between t = {grid[0]:g} "
                                      f"and {grid[-1]:g}, more than max_num_steps = {self.max_num_steps}")
            options["grid_constructor"] = lambda func, y0, tt: _fine_grid(tt, h)
        else:
            options["max_num_steps"] = self.max_num_steps
            options["norm"] = _worst_member_rms
        try:
            if self.adjoint:
                params = tuple(x for x in (P_seg, *W.values()) if x.requires_grad)
                sol = torchdiffeq.odeint_adjoint(rhs, y0, t, rtol=rtol, atol=atol, method=self.method,
                                                 options=options, adjoint_params=params)
            else:
                sol = torchdiffeq.odeint(rhs, y0, t, rtol=rtol, atol=atol, method=self.method,
                                        options=options)
        except AssertionError as exc:  # torchdiffeq reports dt underflow / max steps by assert
            raise self._failure(str(exc), last, grid, rhs) from None
        bad = ~torch.isfinite(sol)
        if bad.any():
            first = int(bad.reshape(len(grid), -1).any(1).nonzero()[0])
            last = {"t": t[max(first - 1, 0)], "y": sol[max(first - 1, 0)], "t_bad": float(grid[first])}
            raise self._failure(f"non-finite values by t = {grid[first]:g}", last, grid, rhs,
                                bad_states=bad[first])
        return sol

    def _inside_domains(self, y) -> list:
        """The state columns clipped into their declared domains: the dynamics are evaluated
        there, so a solver's excursion of the size of its tolerance below 0 cannot grow
        (the CasADi back end does the same; docs/language.md §3, Dynamics)."""
        return [c if lo is None and hi is None else torch.clamp(c, lo, hi)
                for c, lo, hi in zip(y.unbind(1), self._lo, self._hi)]

    def _failure(self, why: str, last: dict, grid, rhs, bad_states=None) -> SimulationError:
        """A SimulationError naming the time reached and the states that went wrong."""
        t_reached = float(last["t"]) if "t" in last else float(grid[0])
        names = []
        kind = "nonfinite" if "nonfinite" in last or bad_states is not None else "solver"
        state, state_time = None, None  # where the runtime can look for the model line
        if "nonfinite" in last:
            t_bad, bad_states, y_bad = last["nonfinite"]
            t_reached = float(t_bad)
            state, state_time = self._state_dict(y_bad, int(bad_states.any(1).nonzero()[0])), t_reached
            why = "the right-hand side gave NaN or inf (a log or sqrt of a negative, a division by zero?)"
        elif "max_num_steps" in why or "underflow" in why:  # torchdiffeq's words for it
            why += ("; the solution may blow up, or the model is stiff: the casadi back end (CVODES, "
                    "implicit) handles stiff models"
                    + (", or compile with a larger max_num_steps" if "max_num_steps" in why else ""))
        if state is None and "y" in last and bool(torch.isfinite(last["y"]).all()):
            state, state_time = self._state_dict(last["y"]), float(last["t"])
        if bad_states is not None:
            names = [n for i, n in enumerate(self.state_names) if bool(bad_states[:, i].any())]
        elif "y" in last:
            with torch.no_grad():
                y = last["y"]
                dy = rhs(last["t"], y)
                nonfinite = ~(torch.isfinite(y) & torch.isfinite(dy))
                names = [n for i, n in enumerate(self.state_names) if bool(nonfinite[:, i].any())]
                if not names:  # blow-up or stiffness: the state changing fastest relative to its size
                    rel = (dy.abs() / (y.abs() + 1.0)).amax(0)
                    names = [self.state_names[int(rel.argmax())]]
        states = ", ".join(names) or "unknown"
        return SimulationError(
            f"integration failed at {self.ir.time_name} = {t_reached:g} (segment {grid[0]:g} to "
            f"{grid[-1]:g}, method {self.method}): {why}; states involved: {states}",
            kind=kind, time=last.get("t_bad", t_reached), quantities=names, state=state, state_time=state_time)

    def _state_dict(self, y, row: int = 0) -> dict:
        """One batch member's states {name: value} from a (B, n_states) tensor."""
        values = y.detach()[row].cpu().tolist()
        return dict(zip(self.state_names, values))

    def neural_penalty(self, traj: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Sum over neural terms of penalty * mean(output^2) along the trajectory: (B,)."""
        total = None
        for name, nir in self.nir.items():
            outputs = traj[NEURAL_KEY.format(name)]
            if outputs.numel() == 0:  # a declared term that no equation calls
                continue
            term = neural_penalty(nir, outputs)
            total = term if total is None else total + term
        if total is None:
            first = next(iter(traj.values()))
            return torch.zeros(first.shape[0], dtype=first.dtype, device=first.device)
        return total

    # ------------------------------------------------------------ static models
    def static_outputs(self, inputs: Mapping[str, torch.Tensor], P: torch.Tensor,
                       weights: Optional[Mapping] = None) -> dict[str, torch.Tensor]:
        """Static model: lets and observes for N input rows: {input: (N,)}, P (B, n_params) -> (B, N)."""
        B = P.shape[0]
        W = self._weights(weights, B)
        rows = [inputs[u.name].reshape(-1, 1) for u in self.ir.inputs]
        n = rows[0].shape[0] if rows else 1
        regs = self._static.run([*rows, *self._columns(P[:, :self.n_params])], self.nir, W)
        full = lambda r: regs[r].expand(n, B).transpose(0, 1)  # noqa: E731
        res = {name: full(r) for name, r in zip(self.let_names, self._static_lets)}
        res.update({name: full(r) for name, r in zip(self.observe_names, self._static_obs)})
        return res

    def _static_inputs(self, inputs) -> dict[str, torch.Tensor]:
        return {name: self._tensor(v) for name, v in static_input_table(self.ir, inputs).items()}

    # ------------------------------------------------------------ numpy-facing contract
    def param_matrix(self, params: Optional[Mapping] = None) -> tuple[np.ndarray, bool]:
        """(B, n_params) values of ir.params from {name: scalar or (B,) array}; and whether batched."""
        params = dict(params or {})
        arrays = {k: np.asarray(v, dtype=float) for k, v in params.items()}
        base = param_vector(self.ir, {k: (float(v) if v.ndim == 0 else 0.0) for k, v in arrays.items()})
        sizes = {v.shape[0] for v in arrays.values() if v.ndim == 1}
        if len(sizes) > 1 or any(v.ndim > 1 for v in arrays.values()):
            raise ValueError(f"batched params must all be 1-D arrays of one length, got sizes {sorted(sizes)}")
        batched = bool(sizes)
        P = np.tile(base, (sizes.pop() if sizes else 1, 1))
        names = [p.name for p in self.ir.params]
        for k, v in arrays.items():
            if v.ndim == 1:
                P[:, names.index(k)] = v
        return P, batched

    def simulate(self, times=None, params=None, scenario=None, inputs=None, rtol=1e-8, atol=1e-8,
                 weights=None, t_start=None, doses=None) -> SimulationResult:
        """Simulate one parameter set, or a batch: params {name: (B,) array} and/or weights
        {name: (B, n_w)} give results of shape (B, T). See the module docstring."""
        P, batched = self.param_matrix(params)
        batched = batched or any(np.ndim(w) == 2 for w in (weights or {}).values())
        if batched and P.shape[0] == 1:
            P = np.tile(P, (max(np.shape(w)[0] for w in weights.values() if np.ndim(w) == 2), 1))
        units = {**{s.name: s.unit for s in self.ir.states}, **{l.name: l.unit for l in self.ir.lets},
                 **{o.name: o.unit for o in self.ir.observes}}
        with torch.no_grad():
            if self.ir.is_static:
                check_scenario(self.ir, scenario)
                rows = self._static_inputs(inputs)
                res = self.static_outputs(rows, self._tensor(P), weights)
                values = {k: v.cpu().numpy() for k, v in res.items()}
                # like the CasADi back end: the input columns first, then lets and observes
                table = {u.name: rows[u.name].cpu().numpy() for u in self.ir.inputs}
                units.update({u.name: u.unit for u in self.ir.inputs})
                return SimulationResult(None, {**table, **_unbatch(values, batched)}, units, "row",
                                        warnings=[])
            if times is None:
                raise ValueError("simulate needs output times for a dynamic model")
            protocol = build_protocol(self.ir, times, scenario, inputs, t_start, doses)
            traj = self.trajectory(protocol, self._tensor(P), weights, rtol, atol)
        names = [*self.state_names, *self.let_names, *self.observe_names]
        values = {n: traj[n].cpu().numpy() for n in names}
        outputs = {n: values[n] for n in [*self.let_names, *self.observe_names]}  # states stay finite
        units[self.ir.time_name] = self.ir.time_unit
        ir, times = self.ir, protocol.output_times
        if protocol.requested is not None:
            times = times[protocol.requested]
        X = np.stack([values[n] for n in self.state_names], axis=1)  # (B, n_states, T)
        for s in ir.states:  # integral accumulators are internal
            if s.hidden:
                del values[s.name], units[s.name]
        warnings = [*protocol.warnings,
                    *domain_warnings(times, X, ir.states, rtol, atol, ir.time_name, ir.time_unit),
                    *trough_warnings(times, X[0], ir.states, atol, ir.time_name, ir.time_unit,
                                     self._rhs_columns(protocol, P[0], weights)),
                    *nonfinite_warnings(times, outputs, ir.time_name)]
        return SimulationResult(times, _unbatch(values, batched), units, time_name=ir.time_name,
                                warnings=warnings, scenario=scenario)

    def _rhs_columns(self, protocol: Protocol, p: np.ndarray, weights):
        """rhs(idx, columns): the right-hand side (n_states, n) at output times idx, for state
        columns (n_states, n), with each time's segment flags and inputs (for trough warnings)."""
        P = np.empty((len(protocol.output_times), len(self.runtime_symbols)))
        for seg in protocol.segments:
            P[seg.out_idx] = np.r_[p[:self.n_params], segment_tail(seg)]
        times = protocol.output_times
        if protocol.requested is not None:  # the reported times only
            P, times = P[protocol.requested], times[protocol.requested]

        def rhs(idx, columns):
            with torch.no_grad():
                W = self._weights(weights, len(idx))
                cols = [self._tensor(c) for c in P[idx].T]
                y = self._tensor(np.asarray(columns).T)
                regs = self._rhs.run([self._tensor(times[idx]), *self._inside_domains(y), *cols],
                                     self.nir, W)
                return np.stack([regs[r].expand(len(idx)).cpu().numpy() for r in self._rhs_out])

        return rhs


def _unbatch(values: Mapping[str, np.ndarray], batched: bool) -> dict[str, np.ndarray]:
    return dict(values) if batched else {k: v[0] for k, v in values.items()}


_FIXED_STEP = {"euler", "midpoint", "heun2", "heun3", "rk4"}


def _fine_grid(t: torch.Tensor, h: float) -> torch.Tensor:
    """The requested times with each gap cut into equal steps of at most h (outputs stay on the grid)."""
    parts = []
    for a, b in zip(t[:-1].tolist(), t[1:].tolist()):
        n = max(1, math.ceil((b - a) / h - 1e-9))
        parts.append(torch.linspace(a, b, n + 1, dtype=t.dtype, device=t.device)[:-1])
    parts.append(t[-1:])
    return torch.cat(parts)


def _worst_member_rms(x: torch.Tensor) -> torch.Tensor:
    """Error norm of a batch (B, n): the largest per-member RMS, so no member is under-resolved."""
    return x.pow(2).mean(dim=-1).sqrt().max()


def compile_torch(ir: ModelIR, device="cpu", dtype=torch.float64, method: str = "dopri5",
                  **options) -> TorchSimulator:
    """Compile a ModelIR for PyTorch. options: step_size (fixed-step methods such as rk4),
    adjoint (bool), max_num_steps (per segment)."""
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("device 'cuda' requested but CUDA is not available; use device='cpu'")
    from torchdiffeq._impl.odeint import SOLVERS

    if method not in SOLVERS:
        raise ValueError(f"unknown ODE method `{method}`; use dopri5 (adaptive) or rk4 (fixed step)")
    return TorchSimulator(ir, device=device, dtype=dtype, method=method, **options)
