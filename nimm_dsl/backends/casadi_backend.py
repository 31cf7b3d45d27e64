"""CasADi back end: one symbolic right-hand side, SUNDIALS integrators, event segments.

The IR is translated once into SX functions of (t, x, P, W): x the states, P the runtime
parameter vector (`ir.runtime_symbols()` order: params and consts, set flags, input coefficients),
W all neural weights concatenated in `ir.neurals` order. A simulation integrates segment by
segment (see `nimm_dsl.backends.protocol`), applying dose jumps between segments. The same chain,
built with MX symbols, is a differentiable CasADi function of the parameters and weights
(`CasadiSimulator.trajectory_function`) for fitting.

casadi is imported here only; `import nimm_dsl` does not load this module.
"""
from __future__ import annotations

import re
import time
from collections import OrderedDict
from dataclasses import dataclass, replace
from functools import partial
from typing import Callable, Mapping, Optional

import casadi as ca
import numpy as np

from ..errors import SimulationError
from .protocol import Protocol, Segment, build_protocol, param_vector, segment_tail
from .contract import check_weight_names, static_input_table
from .results import SimulationResult, domain_warnings, nonfinite_warnings, trough_warnings
from ..compiler.ir import ModelIR, Ops, walk
from .neural import casadi_mlp, check_weights

METHODS = ("cvodes", "adams", "idas", "rk")
# 'adams': CVODES with the Adams method and fixed-point iteration: no Jacobian is formed or
# factorised, which for a non-stiff model with many coupled states (a metapopulation) is most of
# the BDF cost (benchmarks/README.md, "Index families"); a stiff model needs 'cvodes'.
_PLUGIN = {"adams": "cvodes"}
_ADAMS = {"linear_multistep_method": "adams", "nonlinear_solver_iteration": "functional"}
_CACHE_SIZE = 256

def _casadi_matvec(group, vector, entries):
    """The rows of a linear_forms.LinearGroup as one call of a CasADi function computing the
    sparse matrix times the vector: N^2 scalar nodes become one node, evaluated by CasADi's
    matrix product (and differentiated as one). `never_inline` keeps the call a call inside the
    SX right-hand side."""
    n_rows, n_cols = group.shape
    order = group.column_major()
    pattern = ca.Sparsity.triplet(n_rows, n_cols, [group.entries[i][0] for i in order],
                                  [group.entries[i][1] for i in order])
    v = ca.MX.sym("v", n_cols)
    name = f"linear_form_{group.index}"
    if entries is None:
        matrix = ca.DM(pattern, [group.entries[i][2] for i in order])
        fn = ca.Function(name, [v], [ca.mtimes(matrix, v)], {"never_inline": True})
        out = fn(ca.vertcat(*vector))
    else:
        nz = ca.MX.sym("m", len(order))
        fn = ca.Function(name, [v, nz], [ca.mtimes(ca.MX(pattern, nz), v)], {"never_inline": True})
        out = fn(ca.vertcat(*vector), ca.vertcat(*[entries[i] for i in order]))
    return [out[i] for i in range(n_rows)]


CASADI_OPS = Ops(
    const=lambda v: ca.SX(float(v)),
    add=lambda a, b: a + b,
    mul=lambda a, b: a * b,
    pow=lambda a, b: a ** b,
    funcs={"exp": ca.exp, "log": ca.log, "sin": ca.sin, "cos": ca.cos, "tan": ca.tan,  # builtins.BACKEND_FUNCTIONS
           "tanh": ca.tanh, "abs": ca.fabs, "sqrt": ca.sqrt, "min": ca.fmin, "max": ca.fmax},
    where=ca.if_else,
    compare={"<": ca.lt, "<=": ca.le, ">": ca.gt, ">=": ca.ge, "==": ca.eq, "!=": ca.ne},
    and_=ca.logic_and,
    or_=ca.logic_or,
    not_=ca.logic_not,
    matvec=_casadi_matvec,
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
    "ILL_INPUT": "the solver met an invalid value (NaN or inf in the right-hand side?)",
}


class FastCall:
    """Numeric calls of a CasADi Function through its buffer interface: numpy memory in and out,
    no DM conversions (about 10x less overhead for long output grids). A CasADi n x m matrix is
    an (m, n) C-ordered array here. Raises RuntimeError like a normal call."""

    def __init__(self, fn: ca.Function):
        self.fn = fn
        self._buffer, self._trigger = fn.buffer()
        self._shapes = [(fn.size2_out(i), fn.size1_out(i)) for i in range(fn.n_out())]

    def __call__(self, args: dict, out: int = 0) -> np.ndarray:
        alive = []  # the buffer holds raw pointers: keep the arrays alive until the call returns
        for i, a in args.items():
            a = np.ascontiguousarray(a, dtype=float)
            alive.append(a)
            self._buffer.set_arg(i, memoryview(a))
        res = np.empty(self._shapes[out])
        self._buffer.set_res(out, memoryview(res))
        self._trigger()
        return res


@dataclass(frozen=True)
class SymbolicModel:
    """A dynamic model as CasADi SX: symbols t, x [n_states], P [n_runtime] (ir.runtime_symbols()
    order), W [n_weights]; `ode` = dx/dt; `init(t, P, W)` the initial states; `outputs(t, x, P, W)`
    the lets (first n_lets rows) then the observes."""

    t: ca.SX
    x: ca.SX
    P: ca.SX
    W: ca.SX
    ode: ca.SX
    init: ca.Function
    outputs: ca.Function
    n_lets: int


@dataclass
class _SegmentPlan:
    segment: Segment
    tail: np.ndarray  # flags and input coefficients (the protocol part of the runtime vector)
    make_F: Optional[Callable[[], FastCall]]  # builds the segment's integrator; None for zero length
    grid: np.ndarray  # integrator output times (after t0; the last one is t1)
    at_start: np.ndarray  # output indices at t0, right after the doses
    later: np.ndarray  # output indices after t0 ...
    cols: np.ndarray  # ... and their grid columns
    # out_idx, `later` and `cols` as slices where they are ranges (the usual case): slicing
    # 1000 columns is ~10x cheaper than fancy indexing
    out_cols: object
    later_cols: object
    grid_rows: object

    @property
    def F(self) -> Optional[FastCall]:
        """The segment's CasADi integrator, built on first use (the compiled route needs none)."""
        return None if self.make_F is None else self.make_F()


def _as_slice(idx: np.ndarray):
    """A slice equal to the index array `idx` when it is a contiguous increasing range."""
    if len(idx) and idx[-1] - idx[0] == len(idx) - 1 and np.all(np.diff(idx) == 1):
        return slice(int(idx[0]), int(idx[-1]) + 1)
    return idx


def _inside_domains(ode, x, ir: ModelIR):
    """The right-hand side evaluated at the states clipped into their declared domains.

    The exact solution never leaves a domain such as `in [0, inf]`, but a solver's solution may,
    by up to its tolerance: an infected count that should be 1e-12 comes out as -1e-9. Outside
    the domain the dynamics can be unstable (a negative count of infected grows without bound
    once R > 1), so that noise would blow up into inf. Clipping changes nothing inside the
    domain and keeps such noise from growing (docs/language.md §3, Dynamics)."""
    clipped, changed = [], False
    for i, s in enumerate(ir.states):
        xi = x[i]
        if np.isfinite(s.lo):
            xi, changed = ca.fmax(xi, s.lo), True
        if np.isfinite(s.hi):
            xi, changed = ca.fmin(xi, s.hi), True
        clipped.append(xi)
    return ca.substitute(ode, x, ca.vertcat(*clipped)) if changed else ode


def compile_casadi(ir: ModelIR, method: str = "cvodes", **options) -> "CasadiSimulator":
    """Compile a ModelIR for simulation with CasADi.

    method: 'cvodes' (BDF, stiff-capable, default), 'adams' (CVODES's Adams method without a
    Jacobian: faster on non-stiff models with many coupled states), 'idas', or 'rk' (fixed-step
    Runge-Kutta).
    options: rtol, atol (defaults for simulate), max_num_steps (per output interval, default
    20000), finite_elements (rk steps per output interval, default 20), integrator_options (a
    dict passed on to casadi.integrator), compiled (the right-hand side compiled to C and
    integrated by CVODES directly, `nimm_dsl.backends.compiled`: True always, False never, None
    (default) once a model has run long enough to repay the C compiler or is already cached;
    'cvodes' without integrator_options only).
    """
    return CasadiSimulator(ir, method=method, **options)


class CasadiSimulator:
    """Simulates one model; integrators are cached per (segment grid, tolerances)."""

    def __init__(self, ir: ModelIR, method: str = "cvodes", rtol: float = 1e-8, atol: float = 1e-8,
                 max_num_steps: int = 20000, finite_elements: int = 20,
                 integrator_options: Optional[dict] = None, compiled: Optional[bool] = None):
        if method not in METHODS:
            raise ValueError(f"unknown integration method `{method}`; choose one of {', '.join(METHODS)}")
        self.ir = ir
        self.method = method
        self._plugin = _PLUGIN.get(method, method)  # the casadi.integrator plugin
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
        self._protocols: dict = {}
        self._token = object()  # names this simulator's entries in Protocol.cache
        if ir.is_static:
            self._build_static()
        else:
            self._build_dynamic()
        self.compiled_route = None
        if compiled and (method != "cvodes" or integrator_options):
            raise ValueError("compiled=True needs method='cvodes' and no integrator_options")
        if compiled is not False and method == "cvodes" and not integrator_options and not ir.is_static:
            from .compiled import Route

            self.compiled_route = Route(compiled, self._compiled_rhs, self._outputs)

    # ------------------------------------------------------------ building the functions
    def _symbolic_env(self, extra: dict, runtime: list, ops: Ops = CASADI_OPS):
        """SX symbols P (for the `runtime` sympy symbols) and W, the walker environment with
        `extra` and every let, and an evaluator of IR expressions sharing one memo."""
        ir = self.ir
        P = ca.SX.sym("P", len(runtime))
        W = ca.SX.sym("W", self.n_weights)
        env = {s: P[i] for i, s in enumerate(runtime)}
        env.update(extra)
        by_name = {n.name: n for n in ir.neurals}
        self._neural_calls: list[tuple[str, ca.SX]] = []  # each distinct call once (the memo)

        def neural(name, args):
            out = casadi_mlp(by_name[name], args, W[self.weight_slices[name]])
            self._neural_calls.append((name, out))
            return out

        memo: dict = {}
        linear = ir.linear_forms()

        def ev(expr):
            return walk(expr, env, ops, neural, memo, linear)

        for let in ir.lets:
            env[let.symbol] = ev(let.expr)
        return P, W, env, ev, neural

    def _dynamic_env(self, ops: Ops = CASADI_OPS):
        """t, x, the integrals' symbols I and `_symbolic_env`'s values for the right-hand side."""
        ir = self.ir
        t = ca.SX.sym("t")
        x = ca.SX.sym("x", len(ir.states))
        extra = {s.symbol: x[i] for i, s in enumerate(ir.states)}
        extra[ir.time] = t
        # each integral's value at an output time (Protocol.integral_values): an input of the outputs
        I = ca.SX.sym("I", len(ir.integrals))
        extra.update({g.symbol: I[k] for k, g in enumerate(ir.integrals)})
        return (t, x, I, *self._symbolic_env(extra, ir.runtime_symbols(), ops))

    def _derivatives(self, ev, x):
        """dx/dt as one SX column, evaluated inside the states' domains."""
        return _inside_domains(ca.vertcat(*[ev(self.ir.derivatives[s.name]) for s in self.ir.states]), x, self.ir)

    def _compiled_rhs(self):
        """The right-hand side as the compiled route builds it (backends/compiled.py): the same
        walk with each matrix product left to the driver's own C."""
        from .compiled import CompiledRHS, ProductSplit

        if not self.ir.linear_forms().groups:  # nothing to split: the right-hand side as built
            t, x, P, W, ode = self._ode
            return CompiledRHS.plain(t, x, ca.vertcat(P, W), ode)
        split, calls = ProductSplit(), self._neural_calls  # a second walk records its calls anew
        t, x, _, P, W, _, ev, _ = self._dynamic_env(replace(CASADI_OPS, matvec=split.matvec))
        self._neural_calls = calls
        return split.rhs(t, x, ca.vertcat(P, W), self._derivatives(ev, x))

    def _build_dynamic(self):
        ir = self.ir
        t, x, I, P, W, env, ev, neural = self._dynamic_env()
        ode = self._derivatives(ev, x)
        lets = [env[let.symbol] for let in ir.lets]
        observes = [ev(o.expr) for o in ir.observes]
        self._ode = (t, x, P, W, ode)
        self.rhs = ca.Function("rhs", [t, x, P, W], [ode], ["t", "x", "P", "W"], ["dx"])
        self._outputs = ca.Function("outputs", [t, x, P, W] + ([I] if ir.integrals else []),
                                    [ca.vertcat(*lets, *observes)],
                                    ["t", "x", "P", "W"] + (["I"] if ir.integrals else []), ["y"])
        # every neural call's output, one row per call: what a neural penalty sums along a run
        self.neural_call_names = [name for name, _ in self._neural_calls]
        self._neural_outputs = ca.Function("neural_outputs", [t, x, P, W],
                                           [ca.vertcat(*[out for _, out in self._neural_calls])])
        # initial values see no states or lets (E306); a fresh walk keeps their symbols out
        init_env = {s: P[i] for i, s in enumerate(ir.runtime_symbols())}
        init_env[ir.time] = t
        init = ca.vertcat(*[walk(s.init, init_env, CASADI_OPS, neural, {}) for s in ir.states])
        self._init = ca.Function("init", [t, P, W], [init], ["t", "P", "W"], ["x0"])
        self._fast_init = FastCall(self._init)
        # a dose amount may use any value: it is evaluated in the state just before the dose
        self._dose_amount = {}
        for dose in [d for d in ir.doses] + [d for sc in ir.scenarios.values() for d in sc.doses]:
            self._dose_amount[id(dose)] = ca.Function("dose_amount", [t, x, P, W], [ev(dose.amount)])
        self._output_map: dict[int, ca.Function] = {}
        self._fast_output_map: dict[int, FastCall] = {}

    def _build_static(self):
        ir = self.ir
        U = ca.SX.sym("U", len(ir.inputs))
        # a static model has no flags or input coefficients: P holds only ir.params
        P, W, env, ev, _ = self._symbolic_env({u.symbol: U[i] for i, u in enumerate(ir.inputs)},
                                           [p.symbol for p in ir.params])
        lets = [env[let.symbol] for let in ir.lets]
        observes = [ev(o.expr) for o in ir.observes]
        # (U [n_inputs], p [n_params], w [n_weights]) -> lets then observes; .map(n) over rows
        self._static = ca.Function("static", [U, P, W], [ca.vertcat(*lets, *observes)],
                                   ["U", "p", "w"], ["y"])

    def static_outputs_function(self, inputs) -> ca.Function:
        """Static models, the counterpart of `trajectory_function`: the rows of an input table
        (see `static_input_table`) as one differentiable function `F(p, w) -> (y, z)` with
        y: [n_observes x n_rows], z: [n_lets x n_rows]; the inputs are numbers inside."""
        table = static_input_table(self.ir, inputs)
        n = len(next(iter(table.values()))) if table else 1
        U = ca.DM(np.array([table[u.name] for u in self.ir.inputs]).reshape(len(self.ir.inputs), n))
        p, w = ca.MX.sym("p", self.n_params), ca.MX.sym("w", self.n_weights)
        Y = self._static.map(n)(U, p, w)
        n_let = len(self.ir.lets)
        return ca.Function("static_outputs", [p, w], [Y[n_let:, :], Y[:n_let, :]],
                           ["p", "w"], ["y", "z"])

    def dose_amount_function(self, dose) -> ca.Function:
        """(t, x, P, W) -> the amount of `dose` (a DoseIR of the model or of a scenario), for tools
        that differentiate across dose jumps themselves."""
        return self._dose_amount[id(dose)]

    def symbolic(self) -> SymbolicModel:
        """The dynamic model as CasADi SX expressions, for tools that differentiate it themselves
        (the least-squares fit integrates the ODE with its sensitivity equations)."""
        t, x, P, W, ode = self._ode
        return SymbolicModel(t, x, P, W, ode, self._init, self._outputs, len(self.ir.lets))

    def _output_fn(self, n: int) -> ca.Function:
        fn = self._output_map.get(n)
        if fn is None:
            # weights are shared by all times (not repeated per column)
            fn = self._output_map[n] = self._outputs.map(f"outputs_{n}", "serial", n, [3], [])
        return fn

    # ------------------------------------------------------------ integrators
    def _integrator_opts(self, rtol: float, atol: float) -> dict:
        opts = {"show_eval_warnings": False}
        if self.method == "rk":
            opts["number_of_finite_elements"] = self.finite_elements
        else:
            opts.update(abstol=atol, reltol=rtol, max_num_steps=self.max_num_steps,
                        disable_internal_warnings=True)
            if self.method == "adams":
                opts.update(_ADAMS)
        opts.update(self.integrator_options)
        return opts

    def integrator_for(self, dae: dict, t0: float, grid, rtol: float, atol: float) -> ca.Function:
        """A CasADi integrator of another ODE (`dae` as for casadi.integrator, e.g. the model's
        ODE augmented with its sensitivities) with this simulator's method and options."""
        return ca.integrator("F_custom", self._plugin, dae, float(t0), [float(g) for g in grid],
                             self._integrator_opts(rtol, atol))

    def _integrator(self, t0: float, grid: np.ndarray, rtol: float, atol: float) -> FastCall:
        grid = np.ascontiguousarray(grid, dtype=float)
        key = (float(t0), grid.tobytes(), rtol, atol)
        F = self._integrators.get(key)
        if F is not None:
            self._integrators.move_to_end(key)
            return F
        t, x, P, W, ode = self._ode
        dae = {"x": x, "p": ca.vertcat(P, W), "t": t, "ode": ode}
        F = FastCall(ca.integrator("F", self._plugin, dae, float(t0), grid.tolist(),
                                    self._integrator_opts(rtol, atol)))
        self._integrators[key] = F
        if len(self._integrators) > _CACHE_SIZE:
            self._integrators.popitem(last=False)
        return F

    def _plan(self, protocol: Protocol, rtol: float, atol: float) -> list[_SegmentPlan]:
        """Per segment: its fixed runtime tail, integrator (None for zero length), output grid
        and where each of its outputs comes from."""
        key = (self._token, rtol, atol)
        plans = protocol.cache.get(key)
        if plans is not None:
            return plans
        plans = protocol.cache[key] = []
        for seg in protocol.segments:
            times = protocol.output_times[seg.out_idx]
            later = times > seg.t0
            grid = np.unique(np.r_[times[later], seg.t1])
            F = partial(self._integrator, seg.t0, grid, rtol, atol) if seg.t1 > seg.t0 else None
            rows, cols = seg.out_idx[later], np.searchsorted(grid, times[later])
            plans.append(_SegmentPlan(seg, segment_tail(seg), F, grid, seg.out_idx[~later],
                                      rows, cols, _as_slice(seg.out_idx), _as_slice(rows),
                                      _as_slice(cols)))
        return plans

    # ------------------------------------------------------------ public helpers
    def weight_vector(self, weights: Optional[Mapping] = None) -> np.ndarray:
        """All neural weights concatenated in ir.neurals order (defaults: initial_weights())."""
        weights = check_weight_names(self.ir, weights)
        parts = [check_weights(n, weights[n.name]) if n.name in weights else n.initial_weights()
                 for n in self.ir.neurals]
        return np.concatenate(parts) if parts else np.zeros(0)

    def param_vector(self, params: Optional[Mapping] = None) -> np.ndarray:
        """Values of ir.params (params then consts, declaration order): the `p` of trajectory_function."""
        return param_vector(self.ir, params)

    def protocol(self, times, scenario=None, inputs=None, t_start=None, doses=None) -> Protocol:
        return build_protocol(self.ir, times, scenario=scenario, inputs=inputs, t_start=t_start, doses=doses)

    def _cached_protocol(self, times, scenario, inputs, t_start, doses=None) -> Protocol:
        """Protocols without data inputs or doses depend only on the grid and scenario: reuse them."""
        if inputs is not None or doses:
            return self.protocol(times, scenario, inputs, t_start, doses)
        grid = np.ascontiguousarray(times, dtype=float)
        key = (grid.tobytes(), scenario, None if t_start is None else float(t_start))
        protocol = self._protocols.get(key)
        if protocol is None:
            protocol = self._protocols[key] = self.protocol(grid, scenario, None, t_start)
            if len(self._protocols) > _CACHE_SIZE:
                self._protocols.pop(next(iter(self._protocols)))
        return protocol

    # ------------------------------------------------------------ the symbolic chain
    def trajectory_function(self, protocol: Protocol, rtol: Optional[float] = None,
                            atol: Optional[float] = None, neural_outputs: bool = False) -> ca.Function:
        """The whole simulation of `protocol` as one differentiable CasADi function.

        Signature: `F(p, w) -> (y, z)` with
          p: [n_params]  values of ir.params (params then consts, declaration order; the
                         protocol's set flags and input coefficients are fixed numbers inside),
          w: [n_weights] all neural weights concatenated in ir.neurals order,
          y: [n_observes x n_times] observes at protocol.output_times,
          z: [(n_states + n_lets) x n_times] states then lets at the same times,
        and with neural_outputs a third output
          neural: [n_calls x n_times] every neural call's output (rows: `neural_call_names`),
                  what a neural penalty sums.
        Built from MX and the cached integrators, so it can be called with MX symbols and
        differentiated (CVODES forward/adjoint sensitivities). Use `param_vector(params)` and
        `weight_vector(weights)` for numeric arguments.
        """
        rtol = self.rtol if rtol is None else float(rtol)
        atol = self.atol if atol is None else float(atol)
        p = ca.MX.sym("p", self.n_params)
        w = ca.MX.sym("w", self.n_weights)
        n_t = len(protocol.output_times)
        out_x, out_p = [None] * n_t, [None] * n_t
        plans = self._plan(protocol, rtol, atol)
        x = self._init(protocol.t_start, ca.vertcat(p, plans[0].tail), w)
        for plan in plans:
            P = ca.vertcat(p, plan.tail)
            x = self._apply_doses(plan.segment, x, P, w, symbolic=True)
            for i in plan.at_start:
                out_x[i], out_p[i] = x, P
            if plan.make_F is not None:
                xf = plan.F.fn(x0=x, p=ca.vertcat(P, w))["xf"]
                for i, c in zip(plan.later, plan.cols):
                    out_x[i], out_p[i] = xf[:, int(c)], P
                x = xf[:, -1]
        times, extra = protocol.output_times, []
        if protocol.requested is not None:  # integrals: report the asked times only
            rows = self.ir.integral_rows()
            extra = [ca.vertcat(*[ca.horzcat(*[out_x[j][r] - out_x[lag][r] for j, lag in zip(protocol.requested, lags)])
                                  for r, lags in zip(rows, protocol.lags)])]
            out_x = [out_x[j] for j in protocol.requested]
            out_p = [out_p[j] for j in protocol.requested]
            times = times[protocol.requested]
            n_t = len(times)
        X, Pcols = ca.horzcat(*out_x), ca.horzcat(*out_p)
        T = ca.DM(times).T
        Y = self._output_fn(n_t)(T, X, Pcols, w, *extra)
        n_let = len(self.ir.lets)
        outputs, names = [Y[n_let:, :], ca.vertcat(X, Y[:n_let, :])], ["y", "z"]
        if neural_outputs:
            outputs.append(self._neural_outputs.map(f"neural_{n_t}", "serial", n_t, [3], [])(T, X, Pcols, w))
            names.append("neural")
        return ca.Function("trajectory", [p, w], outputs, ["p", "w"], names)

    def _apply_doses(self, seg: Segment, x, P, w, symbolic: bool):
        """The doses at the segment's start, in model order: each amount is evaluated in the
        state left by the doses before it."""
        for ev in seg.doses:
            amount = self._dose_amount[id(ev.dose)](ev.time, x, P, w)
            k = ev.state_index
            if symbolic:
                e = ca.DM.zeros(x.shape[0])
                e[k] = 1
                x = x + e * amount if ev.dose.op == "+" else x + e * (x[k] * (amount - 1))
                continue
            before, x = x, x.copy()
            x[k] = x[k] + float(amount) if ev.dose.op == "+" else x[k] * float(amount)
            if not np.isfinite(x[k]):
                name = self.ir.states[k].name
                raise SimulationError(
                    f"state {name} became NaN or inf after dose `{ev.dose.name}` at {self.ir.time_name} = "
                    f"{self._t(seg.t0)}: its amount is {float(amount):g}", kind="dose", time=seg.t0,
                    quantities=[ev.dose.name, name], state=self._state_dict(before))
        return x

    def _run(self, protocol: Protocol, theta: np.ndarray, w: np.ndarray, rtol: float, atol: float):
        """Numeric event chain: (states [nx x T], runtime vectors [n_runtime x T]) at the output
        times; one row per quantity keeps the per-quantity reductions and copies contiguous."""
        n_t = len(protocol.output_times)
        X = np.empty((len(self.ir.states), n_t))
        Pcols = np.empty((self.n_runtime, n_t))
        plans = self._plan(protocol, rtol, atol)
        solver = self.compiled_route.solver() if self.compiled_route is not None else None
        started = time.perf_counter()
        x = self._fast_init({0: protocol.t_start, 1: np.concatenate((theta, plans[0].tail)), 2: w}).ravel()
        if not np.isfinite(x).all():  # the message only when needed: this runs on every simulation
            self._check_finite(x, f"in the initial values at {self.ir.time_name} = {self._t(protocol.t_start)}",
                               protocol.t_start)
        for plan in plans:
            P = np.concatenate((theta, plan.tail))
            x = self._apply_doses(plan.segment, x, P, w, symbolic=False)
            Pcols[:, plan.out_cols] = P[:, None]
            X[:, plan.at_start] = x[:, None]
            if plan.make_F is not None:
                # the compiled solver, where there is one; a failure there reruns the segment on
                # the interpreted integrator, which locates and reports it
                xf = None if solver is None else solver.integrate(
                    plan.segment.t0, plan.grid, x, np.concatenate((P, w)), rtol, atol, self.max_num_steps)
                if xf is None:
                    xf = self._integrate(plan, x, P, w, rtol, atol)
                X[:, plan.later_cols] = xf[plan.grid_rows].T
                x = xf[-1]
        if solver is None and self.compiled_route is not None:
            self.compiled_route.record(time.perf_counter() - started)
        return X, Pcols

    # ------------------------------------------------------------ numeric simulation
    def simulate(self, times=None, params=None, scenario=None, inputs=None, rtol: float = None,
                 atol: float = None, weights=None, t_start=None, doses=None) -> SimulationResult:
        """Simulate at `times` (model time unit). See LANGUAGE.md §9 and the back-end contract.
        doses: the table doses of this run, {dose name: (times, amounts)}.

        Static models: `simulate(inputs=table)` evaluates lets and observes row by row."""
        rtol = self.rtol if rtol is None else float(rtol)
        atol = self.atol if atol is None else float(atol)
        w = self.weight_vector(weights)
        if self.ir.is_static:
            return self._simulate_static(inputs, params, w)
        if times is None:
            raise ValueError("simulate needs output times for a dynamic model")
        protocol = self._cached_protocol(times, scenario, inputs, t_start, doses)
        theta = self.param_vector(params)
        X, Pcols = self._run(protocol, theta, w, rtol, atol)
        times, integrals = protocol.output_times, None
        if protocol.requested is not None:  # integrals: report the asked times only
            integrals = protocol.integral_values(X[self.ir.integral_rows()])
            X, Pcols, times = X[:, protocol.requested], Pcols[:, protocol.requested], times[protocol.requested]
        Y = self._outputs_numeric(times, X, Pcols, w, integrals)
        return self._result(protocol, times, X, Y, rtol, atol, Pcols, w)

    def _outputs_numeric(self, times, X, Pcols, w, integrals=None) -> np.ndarray:
        """Lets then observes at every output time: [(n_lets + n_observes) x T]."""
        solver = self.compiled_route.solver() if self.compiled_route is not None else None
        Y = None if solver is None else solver.outputs(times, X, Pcols, w, integrals)
        if Y is not None:
            return Y
        n_t = len(times)
        fast = self._fast_output_map.get(n_t)
        if fast is None:
            fast = self._fast_output_map[n_t] = FastCall(self._output_fn(n_t))
        # a CasADi n x T matrix is a (T, n) C-ordered array
        args = {0: times, 1: X.T, 2: Pcols.T, 3: w}
        if integrals is not None:
            args[4] = integrals.T
        return np.ascontiguousarray(fast(args).T)  # rows become the result's arrays

    def _result(self, protocol, times, X, Y, rtol, atol, Pcols, w) -> SimulationResult:
        ir = self.ir
        values, units = {}, {ir.time_name: ir.time_unit}
        # rows of X and Y, which each run allocates anew: views, no copies
        for i, s in enumerate(ir.states):
            if not s.hidden:
                values[s.name], units[s.name] = X[i], s.unit
        rows = [(let.name, let.unit) for let in ir.lets] + [(o.name, o.unit) for o in ir.observes]
        for i, (name, unit) in enumerate(rows):
            values[name], units[name] = Y[i], unit

        def rhs(idx, columns):
            return self._rhs_columns(times[idx], columns, Pcols[:, idx], w)

        warnings = (protocol.warnings
                    + domain_warnings(times, X, ir.states, rtol, atol, ir.time_name, ir.time_unit)
                    + trough_warnings(times, X, ir.states, atol, ir.time_name, ir.time_unit, rhs))
        if not np.isfinite(Y).all():  # lets/observes only: a non-finite state stops the run
            warnings += nonfinite_warnings(times, {n: values[n] for n, _ in rows}, ir.time_name)
        return SimulationResult(times, values, units, ir.time_name, warnings, protocol.scenario)

    def _rhs_columns(self, times, X, Pcols, w) -> np.ndarray:
        """The right-hand side at many points: times (n,), X (nx, n), Pcols (n_runtime, n)."""
        n = len(times)
        return np.asarray(self.rhs.map(n)(np.reshape(times, (1, -1)), X, Pcols,
                                          np.repeat(np.reshape(w, (-1, 1)), n, axis=1)), dtype=float)

    def _simulate_static(self, inputs, params, w) -> SimulationResult:
        ir = self.ir
        table = static_input_table(ir, inputs)
        n = len(next(iter(table.values()))) if table else 1
        U = np.array([table[u.name] for u in ir.inputs]).reshape(len(ir.inputs), n)
        Y = np.asarray(self._static.map(n)(U, self.param_vector(params), w), dtype=float).reshape(-1, n)
        values, units = dict(table), {u.name: u.unit for u in ir.inputs}
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

    def _state_dict(self, x) -> dict:
        return {s.name: float(v) for s, v in zip(self.ir.states, np.asarray(x, dtype=float).ravel())}

    def _check_finite(self, x, where, t):
        if not np.all(np.isfinite(x)):
            bad = [s.name for s, v in zip(self.ir.states, x) if not np.isfinite(v)]
            raise SimulationError(f"state(s) {', '.join(bad)} became NaN or inf {where} "
                                  f"(state: {self._state_text(x)})", kind="initial", time=t,
                                  quantities=bad, state=self._state_dict(x))

    def _integrate(self, plan: _SegmentPlan, x, P, w, rtol, atol) -> np.ndarray:
        seg, grid = plan.segment, plan.grid
        try:
            xf = plan.F({0: x, 2: np.r_[P, w]})  # [len(grid) x nx]
        except RuntimeError as err:
            self._raise_failure(plan, x, P, w, rtol, atol, str(err))
        if not np.isfinite(xf).all():  # fixed-step methods do not stop on NaN: report the first bad point
            j = int(np.argmin(np.all(np.isfinite(xf), axis=1)))
            t_good, x_good = (seg.t0, x) if j == 0 else (grid[j - 1], xf[j - 1])
            self._raise(grid[j], t_good, x_good, "the solution became NaN or inf", "nonfinite", P, w, atol, x)
        return xf

    def _raise(self, t_fail, t_good, x_good, reason, kind, P, w, atol, x_start=None):
        """A SimulationError naming the failure time, the state there and the state that changes
        fastest relative to its size (or the states whose derivative is not finite)."""
        ir = self.ir
        x_good = np.asarray(x_good, dtype=float).ravel()
        with np.errstate(all="ignore"):
            dx = np.asarray(self.rhs(t_good, x_good, P, w), dtype=float).ravel()
            speed = np.abs(dx) / (np.abs(x_good) + atol)
        bad = [s.name for s, v in zip(ir.states, dx) if not np.isfinite(v)]
        if bad:
            kind, involved = "nonfinite", bad
            detail = f"; the derivative of {', '.join(bad)} is NaN or inf there"
        else:
            speed[[s.hidden for s in ir.states]] = np.nan  # an integral's accumulator is internal
            i = int(np.nanargmax(speed)) if np.isfinite(speed).any() else 0
            involved = [ir.states[i].name]
            detail = (f"; the fastest-changing state is {ir.states[i].name} "
                      f"(d{ir.states[i].name}/d{ir.time_name} = {dx[i]:.4g} {ir.states[i].unit}/{ir.time_unit})")
        if x_start is not None:  # a count that turned negative without a declared domain
            negative = [s.name for s, a, b in zip(ir.states, np.ravel(x_start), x_good)
                        if a >= 0 > b and not np.isfinite(s.lo)]
            if negative:
                detail += (f"; {', '.join(negative)} turned negative: if a state cannot be negative, "
                           f"declare its domain (`in [0, inf]`) so the dynamics are evaluated inside it")
        raise SimulationError(f"integration failed at {ir.time_name} = {self._t(t_fail)}: {reason} "
                              f"(last good state at {self._t(t_good)}: {self._state_text(x_good)}){detail}",
                              kind=kind, time=float(t_fail), quantities=involved,
                              state=self._state_dict(x_good), state_time=float(t_good))

    def _raise_failure(self, plan, x, P, w, rtol, atol, message):
        """Report where the solver really stopped. CVODES/IDAS record the time they reached
        (`tcur`, inside the output interval that failed); the state at the start of that interval
        comes from one uninterrupted run, and only that interval is searched in restarted
        pieces (a solver restarted from the segment start may pass where the original run
        failed, and would name the wrong time)."""
        seg = plan.segment
        flag = re.search(r'returned "(\w+)"', message)
        reason, kind = "the integrator failed", "solver"
        if flag:
            code = flag.group(1)
            reason = next((r for k, r in _FAILURE_REASONS.items() if k in code), f"the integrator returned {code}")
            reason = reason.format(max_steps=self.max_num_steps)
            kind = "nonfinite" if "FUNC" in code else "solver"
        t_start, x_start, t_end = seg.t0, x, seg.t1
        t_reached = self._time_reached(plan.F.fn, x, np.r_[P, w])
        if t_reached is not None:
            k = int(np.searchsorted(plan.grid, t_reached, side="left"))  # the failing interval
            a = seg.t0 if k == 0 else float(plan.grid[k - 1])
            x_a = self._state_at(seg.t0, x, a, P, w, rtol, atol)
            if x_a is not None:
                t_start, x_start, t_end = a, x_a, float(plan.grid[min(k, len(plan.grid) - 1)])
        t_good, x_good, t_fail = self._locate_failure(t_start, x_start, t_end, P, w, rtol, atol)
        self._raise(t_fail, t_good, x_good, reason, kind, P, w, atol, x)

    @staticmethod
    def _time_reached(F: ca.Function, x0, p) -> Optional[float]:
        """The time a failing integrator call reached, from its statistics (None if unknown)."""
        try:
            F(x0=x0, p=p)
        except RuntimeError:
            try:
                t = float(F.stats().get("tcur", np.nan))
            except RuntimeError:
                return None
            return t if np.isfinite(t) else None
        return None

    def _state_at(self, t0, x0, t1, P, w, rtol, atol) -> Optional[np.ndarray]:
        """The state at t1 from one run starting at (t0, x0), or None when that run fails too."""
        if t1 <= t0:
            return np.asarray(x0, dtype=float)
        try:
            x1 = self._unit_integrator(rtol, atol)(x0=x0, p=np.r_[P, w, t0, t1 - t0])["xf"]
        except RuntimeError:
            return None
        x1 = np.asarray(x1, dtype=float).ravel()
        return x1 if np.all(np.isfinite(x1)) else None

    def _unit_integrator(self, rtol, atol) -> ca.Function:
        """Integrates over [t0, t0 + dt] in scaled time s in [0, 1]; p = [P; W; t0; dt]."""
        key = (rtol, atol)
        F = self._unit_integrators.get(key)
        if F is None:
            t, x, P, W, ode = self._ode
            s, t0, dt = ca.SX.sym("s"), ca.SX.sym("t0"), ca.SX.sym("dt")
            scaled = dt * ca.substitute(ode, t, t0 + s * dt)
            dae = {"x": x, "p": ca.vertcat(P, W, t0, dt), "t": s, "ode": scaled}
            F = ca.integrator("F_unit", self._plugin, dae, 0.0, 1.0, self._integrator_opts(rtol, atol))
            self._unit_integrators[key] = F
        return F

    def _locate_failure(self, t0, x, t1, P, w, rtol, atol):
        """March from (t0, x) towards t1 in small pieces to find the last time the solution is
        good. Returns (last good time, state there, first failing time)."""
        F = self._unit_integrator(rtol, atol)

        def step(x0, ta, tb):
            try:
                xb = np.asarray(F(x0=x0, p=np.r_[P, w, ta, tb - ta])["xf"], dtype=float).ravel()
            except RuntimeError:
                return None
            return xb if np.all(np.isfinite(xb)) else None

        ts = np.linspace(t0, t1, 101)
        t_good, x_good = t0, x
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
        # the pieces all succeeded (the full call failed on step count): report the interval end
        return t_good, x_good, t1
