"""The CasADi fitting paths: single shooting with IPOPT, and the least-squares path.

IPOPT: the training loss is one CasADi graph of the params (and neural weights) through the
simulator's `trajectory_function`, with exact gradients (and, without networks, exact Hessians)
through CVODES.

Least squares: where the loss is a sum of squares in the dynamic params (normal/lognormal/
least-squares observes, sigmas that are params used nowhere else, Poisson observes and negbinomial
ones with a fixed dispersion through their deviance residuals, integral observes, no networks;
`set` windows and doses allowed) the ODE is solved together with its forward sensitivities in one CVODES call and scipy's
trust-region least squares runs on that exact Jacobian, each sigma at its closed-form optimum:
several times faster than IPOPT with exact Hessians (benchmarks/README.md). Passing
`ipopt_options={...}` forces IPOPT.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping, Optional, Sequence

import numpy as np

from ...backends import compile_ir
from ...backends.protocol import segment_tail
from ...compiler.ir import ModelIR, walk
from ..data import Dataset
from ..series_params import estimated_params, series_key, series_values
from .failures import IPOPT_CONVERGED, IPOPT_USABLE, StartFailed, ipopt_status_words
from .loss import array_walk_ops, casadi_loss_ops, dataset_nll, numpy_nll, sigma_values
from .multistart import StartOutcome, StartSolver
from .starts import param_scale


def casadi_solver(ir: ModelIR, train: Dataset, rtol: float, atol: float, max_iter: Optional[int],
                  simulator=None, ipopt_options: Optional[dict] = None, train_weights: bool = True,
                  weights: Optional[Mapping] = None):
    """The CasADi path for this model and data: least squares where it applies (see the module
    docstring), else IPOPT. train_weights=False holds the neural weights at `weights` (default:
    their initial values) and fits the params only."""
    sim = simulator if simulator is not None else compile_ir(ir, "casadi", rtol=rtol, atol=atol)
    max_iter = 500 if max_iter is None else int(max_iter)
    plan = least_squares_plan(ir, train, sim) if ipopt_options is None else None
    if plan is not None:
        return LeastSquaresSolver(ir, train, sim, plan, rtol, atol, max_iter)
    return IpoptSolver(ir, train, sim, rtol, atol, max_iter, ipopt_options, train_weights, weights)


# ---------------------------------------------------------------- IPOPT
@dataclass
class CasadiProblem:
    """The training loss as a CasADi graph of the scaled estimated params `xs` (param = xs * scale)
    and all neural weights `w`, single shooting through the simulator's trajectory functions."""

    sim: object
    est: list
    scale: np.ndarray
    xs: object
    w: object
    loss: object

    def hessian(self) -> Callable:
        """(natural-unit params, weight vector) -> exact Hessian of the loss in the params."""
        import casadi as ca

        fn = ca.Function("loss_hessian", [self.xs, self.w], [ca.hessian(self.loss, self.xs)[0]])
        return lambda x, w: np.asarray(fn(x / self.scale, w), dtype=float) / np.outer(self.scale, self.scale)

    def gradient(self) -> Callable:
        import casadi as ca

        fn = ca.Function("loss_gradient", [self.xs, self.w], [ca.gradient(self.loss, self.xs)])
        return lambda x, w: np.asarray(fn(x / self.scale, w), dtype=float).ravel() / self.scale


def casadi_problem(ir: ModelIR, train: Dataset, rtol, atol, sim=None) -> CasadiProblem:
    import casadi as ca

    from ...backends.casadi_backend import CASADI_OPS

    sim = sim if sim is not None else compile_ir(ir, "casadi", rtol=rtol, atol=atol)
    est = estimated_params(ir, train)
    scale = np.array([param_scale(p) for p in est])
    xs = ca.MX.sym("x", len(est))
    w = ca.MX.sym("w", sim.n_weights)
    col = {p.name: j for j, p in enumerate(est)}

    def params_of(label):
        """The model's param vector for one series: its own copy of each per-series param."""
        if not ir.params:
            return ca.MX(0, 1)
        keys = [series_key(p.name, label) if p.per_series and p.estimate else p.name for p in ir.params]
        return ca.vertcat(*[xs[col[k]] * scale[col[k]] if k in col else ca.MX(p.default)
                            for k, p in zip(keys, ir.params)])

    p_full = params_of(None)
    names = train.observed_names
    obs_row = {o.name: i for i, o in enumerate(ir.observes)}
    neural_sq = {n.name: 0 for n in ir.neurals}
    neural_count = {n.name: 0 for n in ir.neurals}
    predictions = []
    for s in train.series:
        if train.static:
            Y, _ = sim.static_outputs_function(s.input_frame())(p_full, w)
        else:
            proto = sim.protocol(s.times, **s.run_options())
            Y, _, N = sim.trajectory_function(proto, rtol, atol, neural_outputs=True)(params_of(s.label), w)
            for r, name in enumerate(sim.neural_call_names):
                neural_sq[name] = neural_sq[name] + ca.sumsqr(N[r, :])
                neural_count[name] += len(s.times)
        predictions.append({n: Y[obs_row[n], :].T for n in names})

    # noise options see params and consts: an SX function of the param vector; one that uses the
    # observe's own prediction is a function of (params, prediction) mapped over the data points
    P_sx = ca.SX.sym("p", len(ir.params))
    P_env = {p.symbol: P_sx[i] for i, p in enumerate(ir.params)}

    def per_point(o, expr):
        y = ca.SX.sym("y")
        fn = ca.Function(f"sigma_{o.name}", [P_sx, y], [walk(expr, {**P_env, o.symbol: y}, CASADI_OPS, memo={})])
        return lambda pred: fn.map(pred.shape[0])(p_full, ca.vec(pred).T).T

    sig = sigma_values(ir, P_env, CASADI_OPS, names, per_point)
    sig_names = [n for n in sig if not callable(sig[n])]
    sig_mx = ca.Function("sigmas", [P_sx], [ca.vertcat(*[sig[n] for n in sig_names])])(p_full)
    sigmas = {n: sig_mx[i] for i, n in enumerate(sig_names)}
    sigmas.update({n: f for n, f in sig.items() if callable(f)})

    loss = dataset_nll(ir, train, predictions, sigmas, casadi_loss_ops())
    for n in ir.neurals:
        if n.penalty and neural_count[n.name]:
            loss = loss + n.penalty * neural_sq[n.name] / neural_count[n.name]
    return CasadiProblem(sim, est, scale, xs, w, loss)


class IpoptSolver(StartSolver):
    """Single shooting with IPOPT from one start point (see the module docstring)."""

    def __init__(self, ir, train, sim, rtol, atol, max_iter, ipopt_options=None, train_weights=True,
                 weights=None):
        import casadi as ca

        self.ir, self.train, self.simulator, self.rtol, self.atol = ir, train, sim, rtol, atol
        self.problem = prob = casadi_problem(ir, train, rtol, atol, sim)
        self.est, self.scale = prob.est, prob.scale
        self.train_weights = train_weights
        self.w0 = sim.weight_vector(weights)
        n_free_w = sim.n_weights if train_weights else 0
        # The exact Hessian (second-order sensitivities through CVODES) is cheap for a few params
        # and makes IPOPT take sensible first steps; with network weights L-BFGS is affordable.
        opts = {"ipopt.print_level": 0, "ipopt.sb": "yes", "print_time": False, "show_eval_warnings": False,
                "ipopt.hessian_approximation": "exact" if n_free_w == 0 else "limited-memory",
                "ipopt.max_iter": int(max_iter), "ipopt.tol": 1e-6,
                # integration error limits how small the gradient can get: accept a stalled optimum
                "ipopt.acceptable_tol": 1e-4, "ipopt.acceptable_iter": 5}
        opts.update(ipopt_options or {})
        nlp = ({"x": ca.vertcat(prob.xs, prob.w), "f": prob.loss} if train_weights
               else {"x": prob.xs, "p": prob.w, "f": prob.loss})
        self.solver = ca.nlpsol("fit", "ipopt", nlp, opts)
        self.lbx = np.r_[[p.lo for p in self.est] / self.scale, np.full(n_free_w, -np.inf)]
        self.ubx = np.r_[[p.hi for p in self.est] / self.scale, np.full(n_free_w, np.inf)]

    def _values(self, z: np.ndarray) -> tuple[dict, dict]:
        """(every param and const, neural weights) at the solver's variables z."""
        values = {p.name: float(p.default) for p in self.ir.params}
        values.update({p.name: float(z[j] * self.scale[j]) for j, p in enumerate(self.est)})
        w = z[len(self.est):] if self.train_weights else self.w0
        weights = {n.name: np.array(w[self.simulator.weight_slices[n.name]]) for n in self.ir.neurals}
        return values, weights

    def solve(self, start: np.ndarray) -> StartOutcome:
        n = len(self.est)
        x0 = np.clip(start / self.scale, self.lbx[:n], self.ubx[:n])
        args = dict(lbx=self.lbx, ubx=self.ubx)
        if self.train_weights:
            args["x0"] = np.r_[x0, self.w0]
        else:
            args.update(x0=x0, p=self.w0)
        try:
            sol = self.solver(**args)
        except RuntimeError:  # CasADi's own error text names C++ files, not the model
            raise StartFailed("failed: the loss could not be evaluated") from None
        status = self.solver.stats().get("return_status", "")
        values, weights = self._values(np.asarray(sol["x"], dtype=float).ravel())
        if status not in IPOPT_USABLE:
            raise StartFailed(ipopt_status_words(status), values, weights)
        return StartOutcome(values, weights, float(sol["f"]), ipopt_status_words(status),
                            status in IPOPT_CONVERGED)

    def curvature(self, outcome: StartOutcome):
        grad, hess = self.problem.gradient(), self.problem.hessian()
        w = self.simulator.weight_vector(outcome.weights)
        return (lambda x: grad(x, w)), (lambda x: hess(x, w))


# ---------------------------------------------------------------- least squares with sensitivities
def _total_derivative(expr, x, S, S2, theta):
    """d expr / d theta along the trajectory: expr may use the states x, their sensitivities S
    (nx x n) and theta; S2 (nx*n x n, None for first order) holds dS/dtheta."""
    import casadi as ca

    # directional derivatives (forward mode, one direction per param) rather than the Jacobian
    # times S: a matrix-vector call of the model (compiler/linear_forms.py) then stays one call
    # per direction instead of an N x N block of scalar Jacobian entries
    d = ca.jtimes(expr, x, S) + ca.jacobian(expr, theta)
    if S2 is not None:
        d = d + ca.jtimes(expr, ca.vec(S), S2)
    return d


class Sensitivities:
    """Observes and their first (and second) derivatives in the dynamic params, from one plain
    CVODES solve of the ODE augmented with its sensitivity equations. For a few params this is
    several times cheaper than CasADi's integrator derivatives (no sensitivity machinery, no
    adjoints), which is what makes the least-squares fit fast."""

    def __init__(self, sim, columns: Sequence[int], order: int, rtol, atol):
        import casadi as ca

        m = sim.symbolic()
        t, x, P, W = m.t, m.x, m.P, m.W
        nx, n = x.shape[0], len(columns)
        theta = ca.vertcat(*[P[c] for c in columns])
        S = ca.SX.sym("S", nx, n)
        S2 = ca.SX.sym("S2", nx * n, n) if order == 2 else None
        dS = _total_derivative(m.ode, x, S, None, theta)
        states, rates = [x, ca.vec(S)], [m.ode, ca.vec(dS)]
        if S2 is not None:
            states.append(ca.vec(S2))
            rates.append(ca.vec(_total_derivative(ca.vec(dS), x, S, S2, theta)))
        self.sim, self.order, self.nx, self.n, self.rtol, self.atol = sim, order, nx, n, rtol, atol
        self.dae = {"x": ca.vertcat(*states), "p": ca.vertcat(P, W), "t": t, "ode": ca.vertcat(*rates)}
        x0 = m.init(t, P, W)  # SX in, SX out
        S0 = ca.jacobian(x0, theta)
        init = [x0, ca.vec(S0)] + ([ca.vec(ca.jacobian(ca.vec(S0), theta))] if S2 is not None else [])
        self.init = ca.Function("init_sens", [t, P], [ca.vertcat(*init)])
        a = ca.vertcat(*states)
        # an integral observe sees each integral's value I and its sensitivity dI (n_int x n):
        # differences of its accumulator and the accumulator's sensitivities (first order only)
        rows = sim.ir.integral_rows()
        if rows and order == 2:
            raise ValueError("second-order sensitivities of integral observes are not available")
        I, dI = ca.SX.sym("I", len(rows)), ca.SX.sym("dI", len(rows), n)
        y = (m.outputs(t, x, P, W, I) if rows else m.outputs(t, x, P, W))[m.n_lets:]
        dy = _total_derivative(y, x, S, None, theta) + (ca.jacobian(y, I) @ dI if rows else 0)
        outs = [y, ca.vec(dy)]
        if S2 is not None:
            outs.append(ca.vec(_total_derivative(ca.vec(dy), x, S, S2, theta)))
        self.outputs = ca.Function("outputs_sens", [t, a, P, W, I, ca.vec(dI)], [ca.vertcat(*outs)])
        self.integral_rows = rows
        self.n_obs = y.shape[0]
        self._integrators = {}
        self._mapped_outputs = {}  # per number of output times, called through numpy buffers
        self._symbols = (t, x, P, W, S, S2, theta, a)
        self._jumps = {}

    def _jump(self, dose, k: int):
        """The augmented state after `dose` into state k: x+ = g(x, P), S+ = dg/dx S + dg/dtheta
        (and its derivative for second order), as a Function of (t, a, P, W)."""
        import casadi as ca

        fn = self._jumps.get(id(dose))
        if fn is None:
            t, x, P, W, S, S2, theta, a = self._symbols
            amount = self.sim.dose_amount_function(dose)(t, x, P, W)
            e = ca.DM.zeros(x.shape[0])
            e[k] = 1
            xp = x + e * amount if dose.op == "+" else x + e * (x[k] * (amount - 1))
            Sp = _total_derivative(xp, x, S, None, theta)
            after = [xp, ca.vec(Sp)]
            if S2 is not None:
                after.append(ca.vec(_total_derivative(ca.vec(Sp), x, S, S2, theta)))
            fn = self._jumps[id(dose)] = ca.Function("dose_sens", [t, a, P, W], [ca.vertcat(*after)])
        return fn

    def __call__(self, protocol, p: np.ndarray):
        """(y [n_obs x n_t], dy [n_t x n_obs x n], d2y [n_t x n_obs x n x n] or None) at the
        asked times of a protocol; p: values of ir.params. Across the segments of `set` windows
        and doses the state and its sensitivities are continuous but for the dose jumps (the
        boundaries do not depend on the params); each segment integrates with its own runtime
        vector. With integrals the protocol's grid also holds each t - window (Protocol.lags).
        RuntimeError when the integration fails or gives non-finite values."""
        times = protocol.output_times
        A_all = np.empty((self.dae["x"].shape[0], len(times)))
        P_all = np.empty((len(p) + len(segment_tail(protocol.segments[0])), len(times)))
        a = None
        for seg in protocol.segments:
            P = np.r_[p, segment_tail(seg)]
            if a is None:
                a = np.asarray(self.init(seg.t0, P), dtype=float).ravel()
            for ev in seg.doses:  # before the outputs at t0, in model order
                a = np.asarray(self._jump(ev.dose, ev.state_index)(ev.time, a, P, np.zeros(0)), dtype=float).ravel()
            idx = np.asarray(seg.out_idx, dtype=int)
            ts = times[idx]
            later = ts > seg.t0
            grid = np.unique(np.r_[ts[later], seg.t1])
            A = np.repeat(a[:, None], len(idx), axis=1)
            if grid.size and seg.t1 > seg.t0:
                key = grid.tobytes() + np.float64(seg.t0).tobytes()
                F = self._integrators.get(key)
                if F is None:
                    F = self._integrators[key] = _buffered(self.sim.integrator_for(self.dae, seg.t0, grid,
                                                                                   self.rtol, self.atol))
                X = F({F.fn.index_in("x0"): a, F.fn.index_in("p"): P}, F.fn.index_out("xf")).T
                A[:, later] = X[:, np.searchsorted(grid, ts[later])]
                a = X[:, -1]  # the grid ends at t1: the next segment starts here
            if not (np.all(np.isfinite(A)) and np.all(np.isfinite(a))):
                raise RuntimeError("the simulation produced non-finite values")
            A_all[:, idx], P_all[:, idx] = A, P[:, None]
        cols = np.arange(len(times)) if protocol.requested is None else np.asarray(protocol.requested)
        m, n, nx, rows = self.n_obs, self.n, self.nx, self.integral_rows
        I = dI = np.zeros((0, len(cols)))
        if rows:
            Q = A_all[rows]  # the accumulators, then their sensitivity rows (S is stored column-major)
            dQ = A_all[[nx + j * nx + r for r in rows for j in range(n)]]
            I = protocol.integral_values(Q)
            lags = np.repeat(protocol.lags, n, axis=0)
            dI = (dQ[:, cols] - dQ[np.arange(dQ.shape[0])[:, None], lags]).reshape(len(rows), n, len(cols))
            dI = dI.transpose(1, 0, 2).reshape(n * len(rows), len(cols))  # vec(dI) per column
        mapped = self._mapped_outputs.get(len(cols))
        if mapped is None:
            mapped = self._mapped_outputs[len(cols)] = _buffered(self.outputs.map(len(cols)))
        # a buffer holds a CasADi (rows x columns) matrix as a (columns, rows) C-ordered array
        args = {0: times[cols], 1: A_all[:, cols].T, 2: P_all[:, cols].T}
        if rows:
            args.update({4: I.T, 5: dI.T})
        out = mapped(args).T
        n_t = len(cols)
        y = out[:m]
        dy = out[m:m + m * n].T.reshape(n_t, n, m).transpose(0, 2, 1)
        d2y = (out[m + m * n:].T.reshape(n_t, n, n, m).transpose(0, 3, 2, 1)
               if self.order == 2 else None)
        return y, dy, d2y


def _buffered(fn):
    """`fn` called through numpy buffers (backends' FastCall): the dict call's DM conversions
    cost about as much as the outputs' evaluation for these small models."""
    from ...backends.casadi_backend import FastCall

    return FastCall(fn)


def least_squares_plan(ir: ModelIR, train: Dataset, sim):
    """When the loss is a sum of squares with nothing but sigmas besides: every observed observe
    least squares, normal or lognormal, each sigma either fixed (no estimated param) or one
    estimated param used nowhere else (then profiled out analytically), Poisson observes,
    negbinomial ones whose dispersion has no estimated param (the adjusted-dispersion alternation
    holds it: runtime/fit/dispersion.py), and no networks (`set` windows, doses, table doses,
    integrals and per-series params, each series in its own columns, are fine). Returns
    (protocols, {observe: sigma param or float or None}) or None."""
    if ir.neurals or train.static or not train.series:
        return None
    est = {p.symbol: p for p in ir.params if p.estimate}
    used = set()
    for expr in (list(ir.derivatives.values()) + [l.expr for l in ir.lets] + [o.expr for o in ir.observes]
                 + [s.init for s in ir.states]):
        used |= expr.free_symbols
    sigma = {}
    for o in ir.observes:
        if o.name not in train.observed_names:
            continue
        if o.noise == "lsq":
            sigma[o.name] = None
        elif o.noise == "poisson":
            sigma[o.name] = POISSON
        elif o.noise == "negbinomial" and o.dispersion is not None and not (o.dispersion.free_symbols & set(est)):
            env = {p.symbol: float(p.default) for p in ir.params}  # a fixed dispersion (the fit may alternate it)
            sigma[o.name] = (NEGBINOMIAL, float(sigma_values(ir, env, array_walk_ops(np, float), [o.name])[o.name]))
        elif o.noise in ("normal", "lognormal") and o.sigma is not None and o.symbol not in o.sigma.free_symbols:
            free = o.sigma.free_symbols & set(est)
            if not free:
                env = {p.symbol: float(p.default) for p in ir.params}
                sigma[o.name] = float(sigma_values(ir, env, array_walk_ops(np, float), [o.name])[o.name])
            elif o.sigma in est and o.sigma not in used:
                sigma[o.name] = est[o.sigma].name
            else:
                return None
        else:
            return None
    protocols = [sim.protocol(s.times, **s.run_options()) for s in train.series]
    return protocols, sigma


# a Poisson observe's place in the plan: least squares on its deviance residuals; a negbinomial
# one's (with a fixed dispersion k): (NEGBINOMIAL, k), its deviance residuals at that k
POISSON = ("poisson",)
NEGBINOMIAL = "negbinomial"

# scipy.optimize.least_squares' status codes, in words
_LSQ_STATUS = {0: "stopped at the evaluation limit before converging",
               1: "converged (gradient small)", 2: "converged (loss no longer changes)",
               3: "converged (params no longer change)", 4: "converged"}


def _deviance(f, df, d2f, y, k=np.inf):
    """Count deviance residuals r = sign(f - y) sqrt(2 D) of a negative binomial with dispersion
    k (Poisson: k = inf), D = y log(y / f) - (y + k) log((y + k) / (f + k)) (Poisson: f - y +
    y log(y / f)), the NLL in the mean f up to a constant; with dr (n x p), d2r (n x p x p, or
    None without d2f) and the Fisher rows df sqrt(k / (f (f + k))) (Poisson: df / sqrt(f)).
    r r' = D' = k (f - y) / (f (f + k)) and r'^2 + r r'' = D'' = y / f^2 - (y + k) / (f + k)^2;
    where f = y (r = 0) r' is its limit sqrt(D''(y)) and r'' is 0 (only r * r'' enters the
    Hessian). A non-positive mean under a positive count gives NaN residuals (the trust region
    then shrinks); under a zero count, r = 0 and no slope."""
    with np.errstate(all="ignore"):
        ylog = np.where(y > 0, y * np.log(y / f), 0.0)
        if np.isinf(k):
            D, dD, d2D, info = f - y + ylog, 1.0 - y / f, y / f ** 2, 1.0 / f
        else:
            D = ylog - (y + k) * np.log1p((y - f) / (f + k))
            dD, d2D = k * (f - y) / (f * (f + k)), y / f ** 2 - (y + k) / (f + k) ** 2
            info = k / (f * (f + k))
        D = np.maximum(D, 0.0)  # >= 0 in exact arithmetic; rounding may dip below
        r = np.sign(f - y) * np.sqrt(2.0 * D)
        near = np.abs(f - y) <= 1e-8 * np.abs(f)
        slope = np.where(near, np.sqrt(info), dD / np.where(near, 1.0, r))
        # a zero count where the mean is zero, or below it by the integrator's error (a patch the
        # epidemic has not reached): no deviance, no slope
        zero = (f <= 0) & (y == 0)
        r, slope = np.where(zero, 0.0, r), np.where(zero, 0.0, slope)
        r = np.where((f <= 0) & (y > 0), np.nan, r)
        dr = slope[:, None] * df
        fisher = np.where(f > 0, np.sqrt(info), 0.0)[:, None] * df
        d2r = None
        if d2f is not None:
            curv = np.where(near | zero, 0.0, (d2D - slope ** 2) / np.where(near | zero, 1.0, r))
            d2r = curv[:, None, None] * np.einsum("ij,ik->ijk", df, df) + slope[:, None, None] * d2f
    return r, dr, d2r, fisher


class LeastSquaresProblem:
    """NLL = sum over sigma groups g of S_g / (2 s_g^2) + n_g log s_g + const, S_g the sum of
    squared residuals (log residuals for lognormal); least squares: s_g = 1 without the log;
    Poisson: s_g = 1 and the deviance residuals sign(f - y) sqrt(2 (f - y + y log(y / f))),
    whose half sum of squares is the Poisson NLL up to a constant.
    With the sigmas fixed the dynamic params are a weighted least-squares problem (scipy's
    trust-region reflective with exact Jacobians); a sigma param then has its closed form."""

    def __init__(self, ir, train: Dataset, sim, protocols, sigma, rtol, atol):
        self.ir, self.train, self.sim, self.protocols, self.sigma = ir, train, sim, protocols, sigma
        self.est = estimated_params(ir, train)
        sigma_params = {v for v in sigma.values() if isinstance(v, str)}
        self.dyn = [j for j, p in enumerate(self.est) if p.name not in sigma_params]
        self.sigma_est = [j for j, p in enumerate(self.est) if p.name in sigma_params]
        # sensitivities are taken in the model's params (a per-series param once); each series
        # puts them into its own columns of the fit (its copy `V[label]`, docs/language.md §4)
        index = {p.symbol: i for i, p in enumerate(ir.params)}
        columns = list(dict.fromkeys(index[self.est[j].symbol] for j in self.dyn))
        position = {self.est[j].name: k for k, j in enumerate(self.dyn)}
        self.series_columns = [
            np.array([position[series_key(ir.params[c].name, s.label) if ir.params[c].per_series
                               and series_key(ir.params[c].name, s.label) in position else ir.params[c].name]
                      for c in columns]) for s in train.series]
        self.rtol, self.atol, self.columns = rtol, atol, columns
        self.first = Sensitivities(sim, columns, 1, rtol, atol)
        self.obs_row = {o.name: i for i, o in enumerate(ir.observes)}
        self.noise = {o.name: o.noise for o in ir.observes}
        self.groups = list(dict.fromkeys(self._group(n) for n in sigma))

    def _group(self, name):
        s = self.sigma[name]
        if s is None or s == POISSON or (isinstance(s, tuple) and s[0] == NEGBINOMIAL):
            return ("lsq",) if s is None else s
        return ("param", s) if isinstance(s, str) else ("fixed", s)

    def residuals(self, values: Mapping, order: int = 1, sens: Optional[Sensitivities] = None):
        """{group: (r, dr, d2r or None, fisher)} of the unweighted residuals (fisher: the rows
        whose J'J is the Fisher information), and predictions per series."""
        blocks = {g: ([], [], [], []) for g in self.groups}
        predictions = []
        n_dyn = len(self.dyn)
        for s, proto, at in zip(self.train.series, self.protocols, self.series_columns):
            y, dy, d2y = (sens or self.first)(proto, self.sim.param_vector(series_values(self.ir, values, s)))
            if len(at) != n_dyn or np.any(at != np.arange(n_dyn)):  # per-series params: this series' columns
                wide = np.zeros(dy.shape[:2] + (n_dyn,))
                wide[:, :, at] = dy
                dy = wide
                if d2y is not None:
                    wide2 = np.zeros(d2y.shape[:2] + (n_dyn, n_dyn))
                    wide2[:, :, at[:, None], at[None, :]] = d2y
                    d2y = wide2
            predictions.append({n: y[self.obs_row[n]] for n in self.train.observed_names})
            for name in self.sigma:
                data = s.observed[name]
                idx = np.flatnonzero(np.isfinite(data))
                f, df = y[self.obs_row[name], idx], dy[idx, self.obs_row[name], :]
                d2f = d2y[idx, self.obs_row[name]] if d2y is not None else None
                if self.noise[name] in ("poisson", "negbinomial"):
                    k = self.sigma[name][1] if self.noise[name] == "negbinomial" else np.inf
                    r, dr, d2r, fisher = _deviance(f, df, d2f, data[idx], k)
                    b = blocks[self._group(name)]
                    b[0].append(r), b[1].append(dr), b[2].append(d2r), b[3].append(fisher)
                    continue
                if self.noise[name] == "lognormal":
                    with np.errstate(all="ignore"):  # a non-positive prediction is a NaN residual
                        r = np.log(f) - np.log(data[idx])
                    if d2f is not None:
                        d2f = d2f / f[:, None, None] - np.einsum("ij,ik->ijk", df, df) / (f ** 2)[:, None, None]
                    df = df / f[:, None]
                else:
                    r = f - data[idx]
                b = blocks[self._group(name)]
                b[0].append(r), b[1].append(df), b[2].append(d2f), b[3].append(df)
        out = {g: (np.concatenate(r), np.concatenate(dr), np.concatenate(d2r) if order == 2 else None,
                   np.concatenate(fisher)) for g, (r, dr, d2r, fisher) in blocks.items()}
        return out, predictions

    def sigma_of(self, g, values):
        return 1.0 if g[0] in ("lsq", "poisson", NEGBINOMIAL) else (values[g[1]] if g[0] == "param" else g[1])

    def hessian_and_gradient(self, values, order: int = 2):
        """Exact NLL gradient and Hessian in the estimated params (natural units), from
        second-order sensitivities: sum_g (J'J + sum r d2r) / s^2 plus the sigma terms
        (order=1: the gradient only, from first-order sensitivities; the Hessian is then None)."""
        n_est = len(self.est)
        second = Sensitivities(self.sim, self.columns, 2, self.rtol, self.atol) if order == 2 else None
        blocks, _ = self.residuals(values, order=order, sens=second)
        H, g_out = np.zeros((n_est, n_est)), np.zeros(n_est)
        dyn = np.array(self.dyn, dtype=int)
        for g, (r, J, d2r, _) in blocks.items():
            s = self.sigma_of(g, values)
            if order == 2:
                H[np.ix_(dyn, dyn)] += (J.T @ J + np.einsum("i,ijk->jk", r, d2r)) / s ** 2
            g_out[dyn] += J.T @ r / s ** 2
            if g[0] == "param":
                k = [p.name for p in self.est].index(g[1])
                n, S = r.size, float(r @ r)
                H[dyn, k] += -2 * (J.T @ r) / s ** 3
                H[k, dyn] = H[dyn, k]
                H[k, k] += 3 * S / s ** 4 - n / s ** 2
                g_out[k] += -S / s ** 3 + n / s
        return g_out, (H if order == 2 else None)

    def gauss_newton(self, values):
        """The Fisher information in the estimated params (natural units) from first-order
        sensitivities: sum_g J'J / s^2, and 2 n_g / s^2 for a sigma param (its expected
        information; the expected cross terms with the dynamic params vanish)."""
        n_est = len(self.est)
        blocks, _ = self.residuals(values)
        H = np.zeros((n_est, n_est))
        dyn = np.array(self.dyn, dtype=int)
        for g, (r, _, _, J) in blocks.items():
            s = self.sigma_of(g, values)
            H[np.ix_(dyn, dyn)] += J.T @ J / s ** 2
            if g[0] == "param":
                k = [p.name for p in self.est].index(g[1])
                H[k, k] += 2 * r.size / s ** 2
        return H

    def solve(self, start: np.ndarray, max_nfev: int) -> tuple[dict, float, int]:
        """Weighted least squares in the dynamic params, then the closed-form sigmas; repeated
        while sigmas and params still move each other (never, with one sigma group).
        StartFailed when the model cannot be evaluated at the start point."""
        from scipy.optimize import least_squares

        values = {p.name: float(p.default) for p in self.ir.params}
        values.update({p.name: float(v) for p, v in zip(self.est, start)})
        dyn_params = [self.est[j] for j in self.dyn]
        scale = np.array([param_scale(p) for p in dyn_params])
        lo = np.array([p.lo for p in dyn_params]) / scale
        hi = np.array([p.hi for p in dyn_params]) / scale
        cache = {}

        def evaluate(z):
            """Residual blocks at z, or None where the model cannot be evaluated (the trust region
            then shrinks, as scipy does for non-finite residuals)."""
            key = z.tobytes()
            if key not in cache:
                cache.clear()
                trial = dict(values, **{p.name: float(v) for p, v in zip(dyn_params, z * scale)})
                try:
                    blocks, _ = self.residuals(trial)
                except RuntimeError:
                    blocks = None
                if blocks is not None and not all(np.all(np.isfinite(b[0])) and np.all(np.isfinite(b[1]))
                                                  for b in blocks.values()):
                    blocks = None
                cache[key] = blocks
            return cache[key]

        def weights():
            return {g: 1.0 / self.sigma_of(g, values) for g in self.groups}

        def fun(z):
            blocks = evaluate(z)
            if blocks is None:
                return np.full(self.train.n_observations, np.nan)
            w = weights()
            return np.concatenate([blocks[g][0] * w[g] for g in self.groups])

        def jac(z):  # only ever called where fun was finite
            blocks = evaluate(z)
            w = weights()
            return np.concatenate([blocks[g][1] * w[g] for g in self.groups]) * scale

        z = np.clip(np.array([values[p.name] for p in dyn_params]) / scale, lo, hi)
        if evaluate(z) is None:
            start_values = dict(values, **{p.name: float(v) for p, v in zip(dyn_params, z * scale)})
            raise StartFailed("failed: the model cannot be evaluated at the start point", start_values)
        previous, status, loss = np.inf, 0, np.inf
        for _ in range(50):
            res = least_squares(fun, z, jac=jac, bounds=(lo, hi), x_scale="jac", method="trf",
                                max_nfev=max_nfev)
            z, status = res.x, res.status
            values.update({p.name: float(v) for p, v in zip(dyn_params, z * scale)})
            blocks, predictions = self.residuals(values)
            for j in self.sigma_est:  # the sigma minimising S/(2 s^2) + n log s, within bounds
                p = self.est[j]
                r = blocks[("param", p.name)][0]
                values[p.name] = float(np.clip(np.sqrt(r @ r / r.size), p.lo, p.hi))
            loss = numpy_nll(self.ir, self.train, predictions, values)
            if len(self.groups) == 1 or previous - loss <= 1e-10 * max(1.0, abs(loss)):
                break
            previous = loss
        return values, loss, status


class LeastSquaresSolver(StartSolver):
    """The least-squares path from one start point (see the module docstring)."""

    def __init__(self, ir, train, sim, plan, rtol, atol, max_iter):
        self.ir, self.train, self.simulator, self.rtol, self.atol = ir, train, sim, rtol, atol
        self.problem = LeastSquaresProblem(ir, train, sim, *plan, rtol, atol)
        self.est = self.problem.est
        self.max_iter = max_iter

    def solve(self, start: np.ndarray) -> StartOutcome:
        values, loss, status = self.problem.solve(start, self.max_iter)
        return StartOutcome(values, {}, float(loss), _LSQ_STATUS.get(status, f"stopped (status {status})"),
                            status > 0)

    def _at(self, outcome: StartOutcome, x) -> dict:
        return dict(outcome.values, **{p.name: float(v) for p, v in zip(self.est, x)})

    def curvature(self, outcome: StartOutcome):
        # exact first and second derivatives, at the optimum (standard errors); integral
        # observes have first-order sensitivities only: the Hessian is then differenced
        if self.ir.integrals:
            return (lambda x: self.problem.hessian_and_gradient(self._at(outcome, x), order=1)[0]), None
        return (lambda x: self.problem.hessian_and_gradient(self._at(outcome, x))[0],
                lambda x: self.problem.hessian_and_gradient(self._at(outcome, x))[1])

    def gauss_newton(self, outcome: StartOutcome):
        return lambda x: self.problem.gauss_newton(self._at(outcome, x))
