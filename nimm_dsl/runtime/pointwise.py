"""A model's IR evaluated at one point with numpy, and the first quantity that is NaN or inf there.

The data binding (W606) needs the observes at a series' first time, and the probe (E801) needs to
know which line made a value NaN: both walk the IR once with plain floats (`ir.walk` with numpy
operations), no back end involved, so `nimm check --data` stays light.

A quantity's failure is explained by its deepest sub-expression that is not finite while its own
operands are (`log of -0.3`, `division by zero`): that is the operation the model line asked for.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping, Optional

import numpy as np
import sympy as sp

from ..backends.protocol import Segment, build_protocol, param_vector, segment_tail
from ..compiler.ir import ModelIR, Ops, walk
from ..compiler.linear_forms import KernelRow
from ..diagnostics import Span


def _where(c, a, b):
    return a if c > 0.5 else b


NUMPY_OPS = Ops(
    const=float,
    add=lambda a, b: a + b,
    mul=lambda a, b: a * b,
    pow=lambda a, b: float(np.power(a, b)) if not (a < 0 and b != int(b)) else math.nan,
    funcs={"exp": np.exp, "log": np.log, "sin": np.sin, "cos": np.cos, "tan": np.tan, "tanh": np.tanh,
           "abs": np.abs, "sqrt": np.sqrt, "min": np.fmin, "max": np.fmax},
    where=_where,
    compare={"<": lambda a, b: float(a < b), "<=": lambda a, b: float(a <= b),
             ">": lambda a, b: float(a > b), ">=": lambda a, b: float(a >= b),
             "==": lambda a, b: float(a == b), "!=": lambda a, b: float(a != b)},
    and_=lambda a, b: float(a > 0.5 and b > 0.5),
    or_=lambda a, b: float(a > 0.5 or b > 0.5),
    not_=lambda a: float(not a > 0.5),
)

_ACTIVATIONS = {
    "tanh": np.tanh,
    "sigmoid": lambda x: 1.0 / (1.0 + np.exp(-x)),
    "relu": lambda x: np.maximum(x, 0.0),
    "softplus": lambda x: np.maximum(x, 0.0) + np.log1p(np.exp(-np.abs(x))),
    "gelu": lambda x: 0.5 * x * (1.0 + np.vectorize(math.erf)(x / math.sqrt(2.0))),
}


def numpy_mlp(nir, args, w) -> float:
    """The MLP of a neural term (NeuralIR weight layout, as in backends/neural.py) at one point."""
    h = np.asarray(args, dtype=float)
    layers = nir.unpack(np.asarray(w, dtype=float))
    for k, (W, b) in enumerate(layers):
        h = W @ h + b
        if k < len(layers) - 1:
            h = _ACTIVATIONS[nir.activation](h)
    return float(h[0])


@dataclass
class Point:
    """Where a model is evaluated: time, states (None before the initial values exist), the
    runtime symbols' values and the neural weights."""

    ir: ModelIR
    t: float
    env: dict  # sympy symbol -> float: params, consts, flags, input coefficients, time, states
    weights: dict  # neural name -> flat weight vector
    memo: dict  # sympy expression -> float, filled by every evaluation at this point

    def value(self, expr) -> float:
        by_name = {n.name: n for n in self.ir.neurals}

        def neural(name, args):
            return numpy_mlp(by_name[name], args, self.weights[name])

        with np.errstate(all="ignore"):
            return float(walk(expr, self.env, NUMPY_OPS, neural, self.memo))


def point(ir: ModelIR, t: float, segment: Segment, params: Optional[Mapping] = None,
          weights: Optional[Mapping] = None) -> Point:
    """A point at time t with a segment's flags and inputs (no states yet)."""
    values = np.r_[param_vector(ir, params), segment_tail(segment)]
    env = {s: float(v) for s, v in zip(ir.runtime_symbols(), values)}
    env[ir.time] = float(t)
    # one point has no window to integrate over: an integral there is the one at a run's start
    env.update({g.symbol: 0.0 for g in ir.integrals})
    w = {n.name: np.asarray((weights or {}).get(n.name, n.initial_weights()), dtype=float) for n in ir.neurals}
    return Point(ir, float(t), env, w, {})


def with_states(p: Point, x, clip: bool = False) -> Point:
    """The point with state values x (clipped into their domains, as the back ends evaluate the
    dynamics, when clip) and the lets evaluated in order; a fresh memo."""
    env = dict(p.env)
    for s, v in zip(p.ir.states, np.asarray(x, dtype=float).ravel()):
        env[s.symbol] = float(min(max(v, s.lo), s.hi)) if clip else float(v)
    q = Point(p.ir, p.t, env, p.weights, {})
    for let in p.ir.lets:
        q.env[let.symbol] = q.value(let.expr)
    return q


def start_values(ir: ModelIR, t0: float, inputs=None, params: Optional[Mapping] = None,
                 weights: Optional[Mapping] = None, doses=None) -> dict[str, float]:
    """Every state, let and observe at a run's first time t0 (after the doses at t0), with the
    given params (defaults elsewhere), inputs ({name: (times, values)}) and table doses: what a simulation
    reports at its first output time, without integrating."""
    protocol = build_protocol(ir, [t0], inputs=inputs, doses=doses)
    seg = protocol.segments[0]
    p = point(ir, t0, seg, params, weights)
    x = np.array([p.value(s.init) for s in ir.states])
    for ev in seg.doses:
        amount = with_states(p, x).value(ev.dose.amount)
        k = ev.state_index
        x[k] = x[k] + amount if ev.dose.op == "+" else x[k] * amount
    q = with_states(p, x)
    out = {s.name: float(v) for s, v in zip(ir.states, x)}
    out.update({let.name: q.env[let.symbol] for let in ir.lets})
    out.update({o.name: q.value(o.expr) for o in ir.observes})
    return out


# ---------------------------------------------------------------- what became NaN, and why
@dataclass
class Culprit:
    """The first quantity that is not finite, in the order the model computes them."""

    what: str  # "let", "flow", "der", "observe", "initial value", "dose"
    name: str  # the let, observe, state or dose
    span: Optional[Span]
    value: float
    why: str  # the operation that failed, e.g. "log of -0.3 (in `log(x)`)"


def first_nonfinite(p: Point, x, dynamics: bool = True) -> Optional[Culprit]:
    """At state x: the first let (in evaluation order), then flow or der line (with the states
    clipped into their domains, as the back ends integrate), then observe that is NaN or inf.
    dynamics=False looks at lets and observes only, at the unclipped states (the outputs)."""
    ir = p.ir
    q = with_states(p, x, clip=dynamics)
    for let in ir.lets:
        v = q.env[let.symbol]
        if not math.isfinite(v):
            return Culprit("let", let.name, let.span, v, explain(let.expr, q))
    if dynamics:
        for f in ir.flows:
            v = q.value(f.rate)
            if not math.isfinite(v):
                ends = f"{f.source or ''} -> {f.target or ''}".strip()
                return Culprit("flow", ends, f.span, v, explain(f.rate, q))
        for s in ir.states:
            if s.name in ir.der_spans:
                expr = ir.derivatives[s.name]
                v = q.value(expr)
                if not math.isfinite(v):
                    return Culprit("der", s.name, ir.der_spans[s.name], v, explain(expr, q))
    else:
        q = with_states(p, x, clip=False)
    for o in ir.observes:
        v = q.value(o.expr)
        if not math.isfinite(v):
            return Culprit("observe", o.name, o.span, v, explain(o.expr, q))
    return None


def explain(expr, p: Point) -> str:
    """The deepest sub-expression of expr that is not finite while its operands are, described
    as the operation that failed. Call after p.value(expr) (the memo holds every node)."""
    node = expr
    while True:
        children = [a for a in _operands(node, p) if not math.isfinite(p.value(a))]
        if not children:
            break
        node = children[0]
    text = sp.sstr(_as_written(node, p.ir))
    where = f" (in `{text}`)" if len(text) <= 60 else ""
    args = [p.value(a) for a in _operands(node, p)]
    if isinstance(node, sp.Pow):
        base, ex = args
        if base == 0 and ex < 0:
            return "division by zero" + where
        if node.exp == sp.Rational(1, 2):
            return f"sqrt of {base:.6g}" + where
        return f"{base:.6g} to the power {ex:.6g}" + where
    if node.func == sp.log:
        return f"log of {args[0]:.6g}" + where
    if node.func == sp.exp:
        return f"exp of {args[0]:.6g} overflows" + where
    if isinstance(node, sp.Mul) and any(a == 0 for a in args) and any(math.isinf(a) for a in args):
        return "0 times inf" + where
    if isinstance(node, sp.Add) and any(a == math.inf for a in args) and any(a == -math.inf for a in args):
        return "inf minus inf" + where
    if isinstance(node, sp.core.function.AppliedUndef):
        return f"neural `{node.func}` gave {p.value(node):g}"
    if isinstance(node, sp.Symbol):
        return f"`{node}` is {p.value(node):g}"
    return f"`{text}` is {p.value(node):g}" if where else f"the value is {p.value(node):g}"


def _as_written(e, ir: ModelIR):
    """e as the model line spells it (ModelIR.as_written: no internal symbols)."""
    shown = ir.as_written()
    return e.xreplace(shown) if shown else e


def _operands(e, p: Point) -> tuple:
    """The sub-expressions a node's value comes from (for a Piecewise: the branch taken)."""
    if isinstance(e, sp.Piecewise):
        for value, cond in e.args:
            if cond == sp.true or p.value(cond) > 0.5:
                return (value,)
        return ()
    if isinstance(e, sp.Symbol) or e.is_Number or e is sp.pi or e.is_NumberSymbol:
        return ()
    if isinstance(e, KernelRow):  # a family's sum: its entries, then its weights
        return tuple(e.entries) + tuple(e.weights)
    return tuple(e.args)
