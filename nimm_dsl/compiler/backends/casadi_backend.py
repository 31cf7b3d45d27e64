"""CasADi back end: one symbolic right-hand side, SUNDIALS integrators, event segments.

The IR is translated once into SX functions of (t, x, P, W): x the states, P the runtime
parameter vector (`ir.runtime_symbols()` order: params and consts, set flags, input coefficients),
W all neural weights concatenated in `ir.neurals` order. A simulation integrates segment by
segment (see `nimm_dsl.runtime.protocol`), applying dose jumps between segments. The same chain,
built with MX symbols, is a differentiable CasADi function of the parameters and weights
(`CasadiSimulator.trajectory_function`) for fitting.

casadi is imported here only; `import nimm_dsl` does not load this module.
"""
from __future__ import annotations

import re
from collections import OrderedDict
from typing import Mapping, Optional

import casadi as ca
import numpy as np

from ...errors import SimulationError
from ...runtime.protocol import Protocol, Segment, build_protocol, param_vector, segment_tail
from ...runtime.results import SimulationResult
from ..ir import ModelIR, Ops, walk
from .neural import casadi_mlp, check_weights

METHODS = ("cvodes", "idas", "rk")
_CACHE_SIZE = 256

CASADI_OPS = Ops(
    const=lambda v: ca.SX(float(v)),
    add=lambda a, b: a + b,
    mul=lambda a, b: a * b,
    pow=lambda a, b: a ** b,
    funcs={"exp": ca.exp, "log": ca.log, "log10": ca.log10, "sin": ca.sin, "cos": ca.cos,
           "tan": ca.tan, "tanh": ca.tanh, "abs": ca.fabs, "sqrt": ca.sqrt, "min": ca.fmin,
           "max": ca.fmax},
    where=ca.if_else,
    compare={"<": ca.lt, "<=": ca.le, ">": ca.gt, ">=": ca.ge, "==": ca.eq, "!=": ca.ne},
    and_=ca.logic_and,
    or_=ca.logic_or,
    not_=ca.logic_not,
)

# what a SUNDIALS return flag means for a modeler
_FAILURE_REASONS = {
    "TOO_MUCH_WORK": "too many steps (max_num_steps = {max_steps}); the solution may blow up or be very stiff",
    "TOO_MUCH_ACC": "the requested accuracy cannot be reached",
    "ERR_FAIL": "the error test failed repeatedly (step size collapsed)",
    "CONV_FAIL": "the corrector did not converge (step size collapsed)",
    "RHSFUNC": "the right-hand side gave NaN or inf",
    "RESFUNC": "the right-hand side gave NaN or inf",
    "LSETUP_FAIL": "the linear solver setup failed (singular Jacobian?)",
    "LSOLVE_FAIL": "the linear solver failed (singular Jacobian?)",
}


def compile_casadi(ir: ModelIR, method: str = "cvodes", **options) -> "CasadiSimulator":
    """Compile a ModelIR for simulation with CasADi.

    method: 'cvodes' (BDF, stiff-capable, default), 'idas', or 'rk' (fixed-step Runge-Kutta).
    options: rtol, atol (defaults for simulate), max_num_steps (per output interval, default
    20000), finite_elements (rk steps per output interval, default 20), integrator_options (a
    dict passed on to casadi.integrator).
    """
    return CasadiSimulator(ir, method=method, **options)


class CasadiSimulator:
    """Simulates one model; integrators are cached per (segment grid, tolerances)."""

    def __init__(self, ir: ModelIR, method: str = "cvodes", rtol: float = 1e-8, atol: float = 1e-8,
                 max_num_steps: int = 20000, finite_elements: int = 20,
                 integrator_options: Optional[dict] = None):
        if method not in METHODS:
            raise ValueError(f"unknown integration method `{method}`; choose one of {', '.join(METHODS)}")
        self.ir = ir
        self.method = method
        self.rtol, self.atol = float(rtol), float(atol)
        self.max_num_steps = int(max_num_steps)
        self.finite_elements = int(finite_elements)
        self.integrator_options = dict(integrator_options or {})
        self.param_names = [p.name for p in ir.params]
        self.n_params = len(ir.params)
        self.n_runtime = len(ir.runtime_symbols())
        self.weight_slices = {}
        k = 0
        for nir in ir.neurals:
            self.weight_slices[nir.name] = slice(k, k + nir.n_weights)
            k += nir.n_weights
        self.n_weights = k
        self._integrators: OrderedDict = OrderedDict()
        self._unit_integrators: dict = {}
        if ir.is_static:
            self._build_static()
        else:
            self._build_dynamic()

    # ------------------------------------------------------------ building the functions
    def _symbolic_env(self, extra: dict):
        ir = self.ir
        P = ca.SX.sym("P", self.n_runtime)
        W = ca.SX.sym("W", self.n_weights)
        env = {s: P[i] for i, s in enumerate(ir.runtime_symbols())}
        env.update(extra)
        by_name = {n.name: n for n in ir.neurals}

        def neural(name, args):
            return casadi_mlp(by_name[name], args, W[self.weight_slices[name]])

        memo: dict = {}

        def ev(expr):
            return walk(expr, env, CASADI_OPS, neural, memo)

        for let in ir.lets:
            env[let.symbol] = ev(let.expr)
        return P, W, env, ev

    def _build_dynamic(self):
        ir = self.ir
        nx = len(ir.states)
        t = ca.SX.sym("t")
        x = ca.SX.sym("x", nx)
        extra = {s.symbol: x[i] for i, s in enumerate(ir.states)}
        extra[ir.time] = t
        P, W, env, ev = self._symbolic_env(extra)
        ode = ca.vertcat(*[ev(ir.derivatives[s.name]) for s in ir.states])
        lets = [env[let.symbol] for let in ir.lets]
        observes = [ev(o.expr) for o in ir.observes]
        self._ode = (t, x, P, W, ode)
        self.rhs = ca.Function("rhs", [t, x, P, W], [ode], ["t", "x", "P", "W"], ["dx"])
        self._outputs = ca.Function("outputs", [t, x, P, W], [ca.vertcat(*lets, *observes)],
                                    ["t", "x", "P", "W"], ["y"])
        # initial values and dose amounts see no states; a fresh walk keeps state symbols out
        init_env = {s: P[i] for i, s in enumerate(ir.runtime_symbols())}
        init_env[ir.time] = t
        for let in ir.lets:  # an initial value may not use lets, but keep the walker total
            init_env.setdefault(let.symbol, ca.SX.nan())
        init_memo: dict = {}
        init = ca.vertcat(*[walk(s.init, init_env, CASADI_OPS, None, init_memo) for s in ir.states])
        self._init = ca.Function("init", [t, P], [init], ["t", "P"], ["x0"])
        self._dose_amount = {}
        for dose in [d for d in ir.doses] + [d for sc in ir.scenarios.values() for d in sc.doses]:
            amount = walk(dose.amount, init_env, CASADI_OPS, None, init_memo)
            self._dose_amount[id(dose)] = ca.Function(f"dose_{dose.name}", [t, P], [amount])
        self._output_map: dict[int, ca.Function] = {}

    def _build_static(self):
        ir = self.ir
        U = ca.SX.sym("U", len(ir.inputs))
        P, W, env, ev = self._symbolic_env({u.symbol: U[i] for i, u in enumerate(ir.inputs)})
        lets = [env[let.symbol] for let in ir.lets]
        observes = [ev(o.expr) for o in ir.observes]
        self._static = ca.Function("static", [U, P, W], [ca.vertcat(*lets, *observes)],
                                   ["U", "P", "W"], ["y"])

    def _output_fn(self, n: int) -> ca.Function:
        fn = self._output_map.get(n)
        if fn is None:
            fn = self._output_map[n] = self._outputs.map(n)
        return fn

    # ------------------------------------------------------------ integrators
    def _integrator_opts(self, rtol: float, atol: float) -> dict:
        opts = {"show_eval_warnings": False}
        if self.method == "rk":
            opts["number_of_finite_elements"] = self.finite_elements
        else:
            opts.update(abstol=atol, reltol=rtol, max_num_steps=self.max_num_steps,
                        disable_internal_warnings=True)
        opts.update(self.integrator_options)
        return opts

    def integrator(self, t0: float, grid, rtol: float, atol: float) -> ca.Function:
        """The cached integrator from t0 with outputs at `grid` (x0, p = [P; W]) -> xf [nx x len(grid)]."""
        key = (float(t0), tuple(float(g) for g in grid), rtol, atol)
        F = self._integrators.get(key)
        if F is not None:
            self._integrators.move_to_end(key)
            return F
        t, x, P, W, ode = self._ode
        dae = {"x": x, "p": ca.vertcat(P, W), "t": t, "ode": ode}
        F = ca.integrator("F", self.method, dae, float(t0), [float(g) for g in grid],
                          self._integrator_opts(rtol, atol))
        self._integrators[key] = F
        if len(self._integrators) > _CACHE_SIZE:
            self._integrators.popitem(last=False)
        return F

    @staticmethod
    def _segment_grid(protocol: Protocol, seg: Segment):
        """Integrator output grid of a segment (output times after t0, then t1) and, per output
        index of the segment, its grid column (-1: at t0, right after the doses)."""
        times = protocol.output_times[seg.out_idx]
        later = np.unique(times[times > seg.t0])
        grid = later if (later.size and later[-1] == seg.t1) else np.r_[later, seg.t1]
        cols = np.where(times > seg.t0, np.searchsorted(grid, times), -1)
        return grid, cols

    # ------------------------------------------------------------ public helpers
    def weight_vector(self, weights: Optional[Mapping] = None) -> np.ndarray:
        """All neural weights concatenated in ir.neurals order (defaults: initial_weights())."""
        weights = dict(weights or {})
        unknown = sorted(set(weights) - set(self.weight_slices))
        if unknown:
            raise ValueError(f"unknown neural term(s) {', '.join(unknown)}; the model declares: "
                             f"{', '.join(self.weight_slices) or 'none'}")
        parts = [check_weights(n, weights[n.name]) if n.name in weights else n.initial_weights()
                 for n in self.ir.neurals]
        return np.concatenate(parts) if parts else np.zeros(0)

    def param_vector(self, params: Optional[Mapping] = None) -> np.ndarray:
        """Values of ir.params (params then consts, declaration order): the `p` of trajectory_function."""
        return param_vector(self.ir, params)

    def runtime_vectors(self, protocol: Protocol, params: Optional[Mapping] = None) -> np.ndarray:
        """Full runtime vectors, one row per segment (n_segments x n_runtime)."""
        theta = self.param_vector(params)
        return np.array([np.r_[theta, segment_tail(s)] for s in protocol.segments]).reshape(-1, self.n_runtime)

    def protocol(self, times, scenario=None, inputs=None, t_start=None) -> Protocol:
        return build_protocol(self.ir, times, scenario=scenario, inputs=inputs, t_start=t_start)

    # ------------------------------------------------------------ the symbolic chain
    def trajectory_function(self, protocol: Protocol, rtol: Optional[float] = None,
                            atol: Optional[float] = None) -> ca.Function:
        """The whole simulation of `protocol` as one differentiable CasADi function.

        Signature: `F(p, w) -> (y, z)` with
          p: [n_params]  values of ir.params (params then consts, declaration order; the
                         protocol's set flags and input coefficients are fixed numbers inside),
          w: [n_weights] all neural weights concatenated in ir.neurals order,
          y: [n_observes x n_times] observes at protocol.output_times,
          z: [(n_states + n_lets) x n_times] states then lets at the same times.
        Built from MX and the cached integrators, so it can be called with MX symbols and
        differentiated (CVODES forward/adjoint sensitivities). Use `param_vector(params)` and
        `weight_vector(weights)` for numeric arguments.
        """
        rtol = self.rtol if rtol is None else float(rtol)
        atol = self.atol if atol is None else float(atol)
        p = ca.MX.sym("p", self.n_params)
        w = ca.MX.sym("w", self.n_weights)
        X, Pcols = self._chain(protocol, p, w, rtol, atol, symbolic=True)
        return self._finish_symbolic(protocol, p, w, X, Pcols)

    def _finish_symbolic(self, protocol, p, w, X, Pcols):
        n_t = len(protocol.output_times)
        t_row = ca.DM(protocol.output_times).T
        Y = self._output_fn(n_t)(t_row, X, Pcols, w)
        n_let = len(self.ir.lets)
        return ca.Function("trajectory", [p, w], [Y[n_let:, :], ca.vertcat(X, Y[:n_let, :])],
                           ["p", "w"], ["y", "z"])

    def _chain(self, protocol: Protocol, theta, w, rtol, atol, symbolic: bool):
        """Run the event chain. Returns (states at the output times [nx x T], runtime vectors per
        output time [n_runtime x T]): MX when symbolic, else numpy (and raises SimulationError)."""
        ir = self.ir
        nx, n_t = len(ir.states), len(protocol.output_times)
        cat = ca.vertcat if symbolic else (lambda *a: np.concatenate([np.ravel(v) for v in a]))
        out_x = [None] * n_t
        out_p = [None] * n_t
        seg0 = protocol.segments[0]
        P = cat(theta, segment_tail(seg0))
        x = self._init(protocol.t_start, P)
        x = x if symbolic else np.asarray(x, dtype=float).ravel()
        for seg in protocol.segments:
            P = cat(theta, segment_tail(seg))
            for ev in seg.doses:
                amount = self._dose_amount[id(ev.dose)](ev.time, P)
                x = self._jump(x, ev.state_index, ev.dose.op, amount, symbolic)
            if not symbolic:
                self._check_finite(x, seg.t0, f"after the doses at {self._t(seg.t0)}")
            grid, cols = self._segment_grid(protocol, seg)
            xf = None
            if seg.t1 > seg.t0:
                F = self.integrator(seg.t0, grid, rtol, atol)
                if symbolic:
                    xf = F(x0=x, p=ca.vertcat(P, w))["xf"]
                else:
                    xf = self._integrate(F, seg, grid, x, P, w, rtol, atol)
            for i, c in zip(seg.out_idx, cols):
                out_x[i] = x if c < 0 else xf[:, int(c)]
                out_p[i] = P
            if xf is not None:
                x = xf[:, -1]
        if symbolic:
            return ca.horzcat(*out_x), ca.horzcat(*out_p)
        return (np.array(out_x, dtype=float).reshape(n_t, nx).T,
                np.array(out_p, dtype=float).reshape(n_t, self.n_runtime).T)

    @staticmethod
    def _jump(x, k, op, amount, symbolic):
        if symbolic:
            e = ca.DM.zeros(x.shape[0])
            e[k] = 1
            return x + e * amount if op == "+" else x + e * (x[k] * (amount - 1))
        x = x.copy()
        a = float(amount)
        x[k] = x[k] + a if op == "+" else x[k] * a
        return x

    # ------------------------------------------------------------ numeric simulation
    def simulate(self, times=None, params=None, scenario=None, inputs=None, rtol: float = None,
                 atol: float = None, weights=None, t_start=None) -> SimulationResult:
        """Simulate at `times` (model time unit). See LANGUAGE.md §9 and the back-end contract.

        Static models: `simulate(inputs=table)` evaluates lets and observes row by row."""
        rtol = self.rtol if rtol is None else float(rtol)
        atol = self.atol if atol is None else float(atol)
        w = self.weight_vector(weights)
        if self.ir.is_static:
            return self._simulate_static(inputs, params, w)
        if times is None:
            raise ValueError("simulate needs output times for a dynamic model")
        protocol = self.protocol(times, scenario=scenario, inputs=inputs, t_start=t_start)
        theta = self.param_vector(params)
        X, Pcols = self._chain(protocol, theta, w, rtol, atol, symbolic=False)
        n_t = len(protocol.output_times)
        Y = np.asarray(self._output_fn(n_t)(protocol.output_times[None, :], X, Pcols, w), dtype=float)
        Y = Y.reshape(len(self.ir.lets) + len(self.ir.observes), n_t)
        return self._result(protocol, X, Y, rtol, atol)

    def _result(self, protocol, X, Y, rtol, atol) -> SimulationResult:
        ir = self.ir
        values, units = {}, {ir.time_name: ir.time_unit}
        for i, s in enumerate(ir.states):
            values[s.name], units[s.name] = X[i], s.unit
        rows = [(let.name, let.unit) for let in ir.lets] + [(o.name, o.unit) for o in ir.observes]
        for i, (name, unit) in enumerate(rows):
            values[name], units[name] = Y[i], unit
        warnings = self._domain_warnings(protocol.output_times, X, rtol, atol)
        return SimulationResult(protocol.output_times, values, units, ir.time_name, warnings,
                                protocol.scenario)

    def _domain_warnings(self, times, X, rtol, atol) -> list[str]:
        out = []
        for i, s in enumerate(self.ir.states):
            v = X[i]
            slack = 10 * (atol + rtol * np.max(np.abs(v), initial=0.0))
            bad = (v < s.lo - slack) | (v > s.hi + slack)
            if np.any(bad):
                j = int(np.argmax(bad))
                side = f"below its lower bound {s.lo:g}" if v[j] < s.lo else f"above its upper bound {s.hi:g}"
                out.append(f"state {s.name} leaves its domain [{s.lo:g}, {s.hi:g}]: {v[j]:.6g} {s.unit} "
                           f"is {side} at {self.ir.time_name} = {self._t(times[j])}")
        return out

    def _simulate_static(self, inputs, params, w) -> SimulationResult:
        ir = self.ir
        table = {} if inputs is None else inputs
        columns = list(table.columns) if hasattr(table, "columns") else list(table.keys())
        given = {u.name: np.asarray(table[u.name], dtype=float).ravel() for u in ir.inputs if u.name in columns}
        n = max((len(v) for v in given.values()), default=1)
        U = np.empty((len(ir.inputs), n))
        for i, u in enumerate(ir.inputs):
            if u.name in given:
                if len(given[u.name]) != n:
                    raise ValueError(f"input column `{u.name}` has {len(given[u.name])} rows, expected {n}")
                U[i] = given[u.name]
            elif u.default is not None:
                U[i] = u.default
            else:
                raise SimulationError(f"input `{u.name}` has no data and no default value; "
                                      f"give a column `{u.name}`")
        # a static model has no set flags; its input coefficients are unused
        P = np.r_[self.param_vector(params), np.zeros(self.n_runtime - self.n_params)]
        Y = np.asarray(self._static.map(n)(U, P, w), dtype=float).reshape(-1, n)
        values, units = {}, {}
        for i, u in enumerate(ir.inputs):
            values[u.name], units[u.name] = U[i], u.unit
        rows = [(let.name, let.unit) for let in ir.lets] + [(o.name, o.unit) for o in ir.observes]
        for i, (name, unit) in enumerate(rows):
            values[name], units[name] = Y[i], unit
        return SimulationResult(None, values, units, "row")

    # ------------------------------------------------------------ failures
    def _t(self, t: float) -> str:
        return f"{t:.6g} {self.ir.time_unit}" if self.ir.time_unit else f"{t:.6g}"

    def _state_text(self, x) -> str:
        names = [s.name for s in self.ir.states]
        x = np.asarray(x, dtype=float).ravel()
        order = list(range(len(names)))
        if len(names) > 8:  # the most extreme first
            order = sorted(order, key=lambda i: -abs(x[i]) if np.isfinite(x[i]) else -np.inf)[:8]
        return ", ".join(f"{names[i]} = {x[i]:.6g}" for i in order)

    def _check_finite(self, x, t, where):
        if not np.all(np.isfinite(x)):
            bad = [s.name for s, v in zip(self.ir.states, x) if not np.isfinite(v)]
            raise SimulationError(f"state(s) {', '.join(bad)} became NaN or inf {where} "
                                  f"(state: {self._state_text(x)})")

    def _integrate(self, F, seg, grid, x, P, w, rtol, atol) -> np.ndarray:
        try:
            xf = np.asarray(F(x0=x, p=np.r_[P, w])["xf"], dtype=float).reshape(len(x), len(grid))
        except RuntimeError as err:
            self._raise_failure(seg, x, P, w, rtol, atol, str(err))
        finite = np.all(np.isfinite(xf), axis=0)
        if not np.all(finite):  # fixed-step methods do not stop on NaN: report the first bad point
            j = int(np.argmin(finite))
            t_good, x_good = (seg.t0, x) if j == 0 else (grid[j - 1], xf[:, j - 1])
            self._raise(grid[j], t_good, x_good, "the solution became NaN or inf")
        return xf

    def _raise(self, t_fail, t_good, x_good, reason):
        raise SimulationError(f"integration failed at {self.ir.time_name} = {self._t(t_fail)}: {reason} "
                              f"(last good state at {self._t(t_good)}: {self._state_text(x_good)})")

    def _raise_failure(self, seg, x, P, w, rtol, atol, message):
        flag = re.search(r'returned "(\w+)"', message)
        reason = "the integrator failed"
        if flag:
            code = flag.group(1)
            reason = next((r for k, r in _FAILURE_REASONS.items() if k in code), f"the integrator returned {code}")
            reason = reason.format(max_steps=self.max_num_steps)
        t_good, x_good, t_fail = self._locate_failure(seg, x, P, w, rtol, atol)
        self._raise(t_fail, t_good, x_good, reason)

    def _unit_integrator(self, rtol, atol) -> ca.Function:
        """Integrates over [t0, t0 + dt] in scaled time s in [0, 1]; p = [P; W; t0; dt]."""
        key = (rtol, atol)
        F = self._unit_integrators.get(key)
        if F is None:
            t, x, P, W, ode = self._ode
            s, t0, dt = ca.SX.sym("s"), ca.SX.sym("t0"), ca.SX.sym("dt")
            scaled = dt * ca.substitute(ode, t, t0 + s * dt)
            dae = {"x": x, "p": ca.vertcat(P, W, t0, dt), "t": s, "ode": scaled}
            F = ca.integrator("F_unit", self.method, dae, 0.0, 1.0, self._integrator_opts(rtol, atol))
            self._unit_integrators[key] = F
        return F

    def _locate_failure(self, seg, x, P, w, rtol, atol):
        """March through the segment in small pieces to find the last time the solution is good.
        Returns (last good time, state there, first failing time)."""
        F = self._unit_integrator(rtol, atol)

        def step(x0, ta, tb):
            try:
                xb = np.asarray(F(x0=x0, p=np.r_[P, w, ta, tb - ta])["xf"], dtype=float).ravel()
            except RuntimeError:
                return None
            return xb if np.all(np.isfinite(xb)) else None

        ts = np.linspace(seg.t0, seg.t1, 101)
        t_good, x_good = seg.t0, x
        for tb in ts[1:]:
            xb = step(x_good, t_good, tb)
            if xb is None:
                lo, hi = t_good, tb
                for _ in range(40):  # bisection on the failing piece
                    mid = 0.5 * (lo + hi)
                    xm = step(x_good, t_good, mid)
                    if xm is None:
                        hi = mid
                    else:
                        lo, t_good, x_good = mid, mid, xm
                    if hi - lo <= 1e-9 * max(1.0, abs(hi)):
                        break
                return t_good, x_good, hi
            t_good, x_good = tb, xb
        # the pieces all succeeded (the full call failed on step count): report the segment end
        return t_good, x_good, seg.t1
