"""Backend-neutral intermediate form of a checked model (sympy expressions).

Built by walking the checked syntax tree (`nimm_dsl.compiler.lower`), never by parsing strings.
Conventions every back end relies on:

* Numbers are in declared units. A state's value is in its declared unit, time is in the model's
  time unit, a param in its declared unit. Unit scale factors are already folded into the
  expressions: `derivatives[X]` is d(X)/dt in [unit of X / time unit]; an observe's expression is in
  the observe's unit; a let's in `LetIR.unit`.
* Lets stay symbols in the other expressions; evaluate `lets` in list order (topological) first.
* `set` overrides are folded in: wherever a set may change a param/const/input, the expression
  holds `Piecewise((override, flag > 0.5), (previous, True))` with one 0/1 flag symbol per SetIR.
  Flags are runtime parameters that the protocol switches per segment.
* Inputs of a dynamic model are folded in as `a + b*t` with two coefficient symbols per input,
  set per segment by the protocol (step: b = 0). In a static model the input symbol stays.
* Neural calls appear as applications of `NeuralIR.function` (a sympy undefined function); the
  value of a call is the MLP output in the neural's declared unit (conversions are outside it).
* Event times (dose times, set windows) are plain floats in the time unit.
* A dose amount may use any value of the model (states, lets, inputs, time, neural calls): it is
  evaluated at the dose time in the state just before that dose, with the set lines in force.
  A set value uses the baseline value of every name, lets included (they are inlined). A sigma
  or dispersion uses params and consts only, at their baseline values; a normal sigma may also
  use the observe's own symbol, which stands for its predicted value at each data point.
* Spans: every statement-level IR object keeps the span of the statement it came from, so that
  diagnostics found after checking (data binding, probes) point at the model line.

The full runtime parameter vector, in this order, is `ModelIR.runtime_symbols()`:
params and consts (declaration order), then set flags (SetIR order), then input coefficients
(a0, b0, a1, b1, ... per input). Neural weights are separate flat vectors, one per neural term,
laid out as described in `NeuralIR`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional

import numpy as np
import sympy as sp

from ..diagnostics import Span
from .collector import collector_paused
from .linear_forms import KernelRow, LinearForms, find_linear_forms

ACTIVATIONS = ("tanh", "relu", "softplus", "sigmoid", "gelu")


@dataclass
class ParamIR:
    name: str
    symbol: sp.Symbol
    default: float  # declared unit
    lo: float  # -inf when unbounded
    hi: float
    unit: str
    estimate: bool  # True for `param`, False for `const`
    doc: Optional[str] = None
    span: Optional[Span] = None  # the declaring statement, for diagnostics after checking
    per_series: bool = False  # `per series`: a fit estimates one value per data series


@dataclass
class StateIR:
    name: str
    symbol: sp.Symbol
    init: sp.Expr  # declared unit; may use params/consts/flags/input coefficients and the time symbol (= start time)
    lo: float
    hi: float
    unit: str
    doc: Optional[str] = None
    span: Optional[Span] = None
    hidden: bool = False  # an integral's accumulator: integrated like any state, never reported


@dataclass
class IntegralIR:
    """`integral(RATE, WINDOW)` in an observe (LANGUAGE.md §11), computed exactly: a hidden
    accumulator state Q (StateIR.hidden, d(state)/dt = RATE, 0 at the start) and, at each output
    time t, `symbol` = Q(t) - Q(max(t - window, start)). Back ends give `symbol` that value; the
    protocol adds the times t - window to the integration grid (Protocol.requested/.lags)."""

    symbol: sp.Symbol  # the integral's value, in base units of unit(RATE) x time
    state: str  # the accumulator's name in ModelIR.states
    window: float  # time unit


@dataclass
class InputIR:
    name: str
    symbol: sp.Symbol  # the input as declared (static models use it directly)
    coef: tuple[sp.Symbol, sp.Symbol]  # (a, b): value = a + b*t within a segment (dynamic models)
    default: Optional[float]  # declared unit; None: the data must supply it
    interp: str  # 'step' | 'linear'
    unit: str
    scale: float = 1.0  # value in declared unit * scale = value in base units (for data conversion)
    span: Optional[Span] = None


@dataclass
class LetIR:
    name: str
    symbol: sp.Symbol
    expr: sp.Expr
    unit: str  # declared, else inferred
    span: Optional[Span] = None


@dataclass
class FlowIR:
    source: Optional[str]
    target: Optional[str]
    rate: sp.Expr  # in the source/target state's unit per time unit
    span: Optional[Span] = None


@dataclass
class ObserveIR:
    name: str
    symbol: sp.Symbol
    expr: sp.Expr  # declared unit
    unit: str
    noise: str  # 'normal' | 'lognormal' | 'poisson' | 'negbinomial' | 'lsq' (no `~`: least squares)
    # normal: observe unit, params, consts and the observe's own symbol (its prediction);
    # lognormal: dimensionless, params and consts only
    sigma: Optional[sp.Expr] = None
    span: Optional[Span] = None
    dispersion: Optional[sp.Expr] = None  # negbinomial: dimensionless, params and consts only


@dataclass
class NeuralIR:
    """An MLP R^n_inputs -> R. Weight layout (shared by every back end, flat float64 vector):
    for each layer l with sizes (n_in -> n_out) in order [n_inputs, *hidden, 1]:
    W_l as n_out x n_in row-major, then b_l (n_out). Hidden layers apply `activation`; the output
    layer is linear. `init == 'zero'` zeroes the last layer's W and b."""

    name: str
    function: sp.FunctionClass  # sympy undefined function; calls look like resid(x, y)
    n_inputs: int
    hidden: list[int]
    activation: str
    init: str  # 'zero' | 'random'
    penalty: float
    unit: str

    @property
    def layer_sizes(self) -> list[int]:
        return [self.n_inputs, *self.hidden, 1]

    @property
    def n_weights(self) -> int:
        s = self.layer_sizes
        return sum(s[i + 1] * s[i] + s[i + 1] for i in range(len(s) - 1))

    def unpack(self, w):
        """Split a flat weight vector into [(W, b), ...]; works for numpy and torch 1-D arrays
        (and casadi column vectors, using reshape-free row slicing done by the caller)."""
        s = self.layer_sizes
        out, k = [], 0
        for i in range(len(s) - 1):
            n_in, n_out = s[i], s[i + 1]
            W = w[k:k + n_in * n_out].reshape(n_out, n_in)
            k += n_in * n_out
            b = w[k:k + n_out]
            k += n_out
            out.append((W, b))
        return out

    def initial_weights(self, seed: int = 0) -> np.ndarray:
        """Deterministic Glorot-uniform init (same numbers for every back end)."""
        rng = np.random.default_rng(seed)
        s = self.layer_sizes
        parts = []
        for i in range(len(s) - 1):
            n_in, n_out = s[i], s[i + 1]
            lim = np.sqrt(6.0 / (n_in + n_out))
            W = rng.uniform(-lim, lim, size=(n_out, n_in))
            b = np.zeros(n_out)
            if self.init == "zero" and i == len(s) - 2:
                W = np.zeros_like(W)
            parts += [W.ravel(), b]
        return np.concatenate(parts)


@dataclass
class DoseIR:
    name: str
    state: str
    op: str  # '+' (add amount, state unit) | '*' (multiply by dimensionless factor)
    amount: sp.Expr  # any value of the model, evaluated at the dose time in the current state
    times: list[float]  # time unit, sorted; empty for a dose from the data table
    span: Optional[Span] = None
    # a dose from the data table (`at data`): its times and amounts come with each series, and
    # `amount` reads the row's amount (in the dose's declared unit) through this runtime symbol
    amount_symbol: Optional[sp.Symbol] = None

    @property
    def from_data(self) -> bool:
        return self.amount_symbol is not None


def table_dose_symbol(name: str) -> sp.Symbol:
    """The runtime symbol of a table dose's row amount: one per dose name, shared by the baseline
    and the scenarios that replace it (`#` keeps it apart from model names)."""
    return sp.Symbol(f"{name}#amount", real=True)


@dataclass
class SetIR:
    target: str  # a param, const or input name
    flag: sp.Symbol  # 0/1 runtime parameter
    expr: sp.Expr  # declared unit of the target; the target's own symbol means its baseline
    start: Optional[float]  # None: from the start of the run
    end: Optional[float]  # None: to the end; the window is start <= t < end
    scenario: Optional[str]  # None for the baseline protocol
    span: Optional[Span] = None


@dataclass
class ScenarioIR:
    name: str
    doc: Optional[str]
    doses: list[DoseIR]  # replace baseline doses of the same name, or add new ones
    removed: list[str]  # baseline dose names dropped


@dataclass
class ModelIR:
    name: str
    doc: Optional[str]
    time: Optional[sp.Symbol]  # None for a static model
    time_name: Optional[str]
    time_unit: Optional[str]
    states: list[StateIR] = field(default_factory=list)
    params: list[ParamIR] = field(default_factory=list)  # params then consts, declaration order
    inputs: list[InputIR] = field(default_factory=list)
    lets: list[LetIR] = field(default_factory=list)  # topological order
    derivatives: dict[str, sp.Expr] = field(default_factory=dict)  # state name -> expr
    flows: list[FlowIR] = field(default_factory=list)  # informational (already in derivatives)
    observes: list[ObserveIR] = field(default_factory=list)
    neurals: list[NeuralIR] = field(default_factory=list)
    doses: list[DoseIR] = field(default_factory=list)  # baseline protocol
    sets: list[SetIR] = field(default_factory=list)  # baseline and scenario sets
    scenarios: dict[str, ScenarioIR] = field(default_factory=dict)
    # where things were written, for diagnostics found after checking (data binding, probes):
    # each *IR above has the span of its statement; these hold the rest
    file: str = "<model>"
    source: Optional[str] = None  # the model text, for rendering those diagnostics
    tables: Optional[object] = None  # families.TableAccess the text was checked with (a re-check in a child process uses it)
    model_span: Optional[Span] = None  # the `model` header
    time_span: Optional[Span] = None  # the `time` line
    der_spans: dict[str, Span] = field(default_factory=dict)  # state -> its `der(...)` line
    t0: Optional[float] = None  # `time t [u] from T0`: every run starts at T0 (None: at its first time)
    integrals: list[IntegralIR] = field(default_factory=list)  # in observes; accumulators in `states`

    @property
    def is_static(self) -> bool:
        return self.time is None

    def runtime_symbols(self) -> list[sp.Symbol]:
        syms: list[sp.Symbol] = [p.symbol for p in self.params]
        syms += [s.flag for s in self.sets]
        for u in self.inputs:
            syms += list(u.coef)
        return syms + self.table_dose_symbols()

    def table_dose_symbols(self) -> list[sp.Symbol]:
        """The row-amount symbols of the table doses (baseline and scenarios), first use order."""
        doses = [*self.doses, *(d for sc in self.scenarios.values() for d in sc.doses)]
        return list(dict.fromkeys(d.amount_symbol for d in doses if d.from_data))

    def table_dose_names(self) -> list[str]:
        """Names of the doses the data table may give (baseline or any scenario)."""
        doses = [*self.doses, *(d for sc in self.scenarios.values() for d in sc.doses)]
        return list(dict.fromkeys(d.name for d in doses if d.from_data))

    def param(self, name: str) -> ParamIR:
        return next(p for p in self.params if p.name == name)

    @property
    def reported_states(self) -> list[StateIR]:
        """The states a simulation reports (integral accumulators are internal)."""
        return [s for s in self.states if not s.hidden]

    def integral_rows(self) -> list[int]:
        """Indices into `states` of each integral's accumulator, `integrals` order."""
        return [self.state_index(i.state) for i in self.integrals]

    def fingerprint(self) -> str:
        """A digest of the model's structure: names, kinds and units of its states, params,
        inputs and observes, noise models, network shapes and the equations as lowered. A fit
        records it (FIT.json `fingerprint`), so that its values are not silently given to another
        model, or to an edited one, whose params merely share the names. Values and bounds are
        left out: a fit stays valid when a default or a bound is changed."""
        import hashlib
        import json

        shared: dict = {}  # subtree digests, shared by every expression of the model
        text = lambda e: _expression_key(e, shared)  # noqa: E731
        structure = {
            "name": self.name, "time": [self.time_name, self.time_unit],
            "states": [[s.name, s.unit, text(s.init)] for s in self.states],
            "params": [[p.name, p.unit, p.estimate] for p in self.params],
            "inputs": [[u.name, u.unit, u.interp] for u in self.inputs],
            "lets": [[x.name, x.unit, text(x.expr)] for x in self.lets],
            "derivatives": sorted([name, text(e)] for name, e in self.derivatives.items()),
            "observes": [[o.name, o.unit, o.noise, text(o.expr), text(o.sigma), text(o.dispersion)]
                         for o in self.observes],
            "neurals": [[n.name, n.n_inputs, list(n.hidden), n.activation, n.unit] for n in self.neurals],
        }
        return hashlib.sha256(json.dumps(structure, sort_keys=True).encode()).hexdigest()[:16]

    def linear_forms(self) -> LinearForms:
        """The long sums of the lets, derivatives and observes that share their terms, grouped
        into matrix rows (compiler/linear_forms.py); found once per IR."""
        found = self.__dict__.get("_linear_forms")
        if found is None:
            exprs = [x.expr for x in self.lets] + list(self.derivatives.values()) + [o.expr for o in self.observes]
            with collector_paused():  # (compiler/collector.py)
                found = self.__dict__["_linear_forms"] = find_linear_forms(exprs, [p.symbol for p in self.params])
        return found

    def as_written(self) -> dict:
        """Substitutions that spell an expression as the model text does: a set's switch off
        (its line is shown apart), an input's per-segment line `a + b*t` as the input, a table
        dose's row amount under the dose's name (all internal symbols)."""
        out = {s.flag: 0 for s in self.sets}
        for u in self.inputs:
            a, b = u.coef
            out[a], out[b] = u.symbol, 0
        for d in self.doses:
            if d.from_data:
                out[d.amount_symbol] = sp.Symbol(d.name, real=True)
        return out

    def state_index(self, name: str) -> int:
        return next(i for i, s in enumerate(self.states) if s.name == name)

    def doses_for(self, scenario: Optional[str]) -> list[DoseIR]:
        """The dose list in force for a scenario (None: baseline)."""
        if scenario is None:
            return list(self.doses)
        sc = self.scenarios[scenario]
        by_name = {d.name: d for d in self.doses if d.name not in sc.removed}
        for d in sc.doses:
            by_name[d.name] = d
        return list(by_name.values())

    def sets_for(self, scenario: Optional[str]) -> list[int]:
        """Indices (into `sets`) of the set lines in force for a scenario (None: baseline)."""
        return [i for i, s in enumerate(self.sets) if s.scenario is None or s.scenario == scenario]


_PRINTED_NODES = 200  # expressions up to this many nodes are fingerprinted as sympy prints them


def _expression_key(e, digest: Optional[dict] = None) -> str:
    """A stable text for an expression in `ModelIR.fingerprint`: as sympy prints it (what
    fingerprints have always used), but for a huge one (an expanded family sum: printing 10^4
    terms took seconds) a digest of its tree, each distinct subtree hashed once."""
    if not isinstance(e, sp.Basic):
        return str(e)
    count, stack = 0, [e]
    while stack and count <= _PRINTED_NODES:
        node = stack.pop()
        count += 1
        if isinstance(node, KernelRow):  # an expanded family sum: printed, its terms written out
            count = _PRINTED_NODES + 1
        stack.extend(node.args)
    if count <= _PRINTED_NODES:
        return str(e)
    import hashlib

    digest = {} if digest is None else digest
    stack = [(e, False)]
    while stack:
        node, ready = stack.pop()
        if node in digest:
            continue
        if node.args and not ready:
            stack.append((node, True))
            stack.extend((a, False) for a in node.args if a not in digest)
            continue
        own = type(node).__name__ + ":" + (str(node) if not node.args else "")
        h = hashlib.sha256(own.encode())
        for a in node.args:
            h.update(digest[a].encode())
        digest[node] = h.hexdigest()
    return "sha256:" + digest[e]


# ---------------------------------------------------------------- walking expressions
@dataclass
class Ops:
    """How a back end spells each operation. Every callable takes and returns backend values."""

    const: Callable[[float], object]
    add: Callable
    mul: Callable
    pow: Callable
    funcs: dict[str, Callable]  # one per builtins.BACKEND_FUNCTIONS (exp log sqrt abs ... min max)
    where: Callable  # where(cond, a, b)
    compare: dict[str, Callable]  # '<' '<=' '>' '>=' '==' '!='
    and_: Callable
    or_: Callable
    not_: Callable
    # matvec(group, vector, entries) -> the rows of a linear_forms.LinearGroup: `vector` the
    # backend values of group.keys, `entries` those of the matrix entries (None when the matrix
    # is numbers only). None: the back end evaluates long sums term by term.
    matvec: Optional[Callable] = None


# The sympy forms of compiler/builtins.py as `Ops.funcs` names (sqrt is a power, min/max fold).
_SYMPY_FUNCS = {
    sp.exp: "exp", sp.log: "log", sp.sin: "sin", sp.cos: "cos", sp.tan: "tan", sp.tanh: "tanh",
    sp.Abs: "abs",
}
_REL = {sp.StrictLessThan: "<", sp.LessThan: "<=", sp.StrictGreaterThan: ">",
        sp.GreaterThan: ">=", sp.Equality: "==", sp.Unequality: "!="}


def walk(expr: sp.Expr, env: dict, ops: Ops, neural: Optional[Callable] = None, memo: Optional[dict] = None,
         linear: Optional[LinearForms] = None):
    """Evaluate a sympy expression with backend operations, by structural recursion.

    env maps sympy Symbols to backend values. neural(name, [args]) evaluates a neural call.
    memo caches shared sub-expressions (pass one dict for several expressions that share lets).
    linear: `ModelIR.linear_forms()`; with an `ops.matvec`, the long sums it groups are rows of
    one matrix-vector product each, computed once per group.
    """
    memo = {} if memo is None else memo
    if ops.matvec is None:
        linear = None

    def go(e):
        hit = memo.get(e)
        if hit is not None:
            return hit
        v = _eval(e)
        memo[e] = v
        return v

    def fold(op, args):  # n-ary sympy nodes (Add, Mul, And, Or, Min, Max) as left folds of a binary op
        acc = go(args[0])
        for a in args[1:]:
            acc = op(acc, go(a))
        return acc

    def product(factors):
        return fold(ops.mul, factors)

    def linear_row(g: int, r: int):
        key = ("linear form", g)
        rows = memo.get(key)
        if rows is None:
            group = linear.groups[g]
            vector = [product(k) for k in group.keys]
            entries = None if group.numeric else [
                ops.const(number) if not syms else product(syms) if number == 1.0
                else ops.mul(ops.const(number), product(syms))
                for _, _, number, syms in group.entries]
            rows = memo[key] = ops.matvec(group, vector, entries)
        acc = rows[r]
        for term in linear.groups[g].remainder[r]:
            acc = ops.add(acc, go(term))
        return acc

    def _eval(e):
        if isinstance(e, sp.Symbol):
            try:
                return env[e]
            except KeyError:
                raise KeyError(f"no value for symbol {e}") from None
        if e is sp.true or e == sp.true:
            return ops.const(1.0)
        if e is sp.false or e == sp.false:
            return ops.const(0.0)
        if e.is_Number or e is sp.pi or e.is_NumberSymbol:
            return ops.const(float(e))
        if isinstance(e, sp.Add):
            hit = linear.row_of.get(e) if linear is not None else None
            if hit is not None:
                return linear_row(*hit)
            return fold(ops.add, e.args)
        if isinstance(e, sp.Mul):
            return fold(ops.mul, e.args)
        if isinstance(e, KernelRow):
            hit = linear.row_of.get(e) if linear is not None else None
            if hit is not None:
                return linear_row(*hit)
            acc = None
            for w, v in zip(e.weights, e.entries):  # the terms written out, added in order
                term = ops.mul(go(w), go(v))
                acc = term if acc is None else ops.add(acc, term)
            return acc
        if isinstance(e, sp.Pow):
            base, ex = e.args
            if ex == sp.Rational(1, 2):
                return ops.funcs["sqrt"](go(base))
            return ops.pow(go(base), go(ex))
        if isinstance(e, sp.Piecewise):
            # Piecewise((a, c1), (b, c2), ..., (z, True)) -> nested where
            pieces = list(e.args)
            acc = go(pieces[-1][0])
            for val, cond in reversed(pieces[:-1]):
                acc = ops.where(go(cond), go(val), acc)
            return acc
        if type(e) in _REL:
            return ops.compare[_REL[type(e)]](go(e.args[0]), go(e.args[1]))
        if isinstance(e, sp.And):
            return fold(ops.and_, e.args)
        if isinstance(e, sp.Or):
            return fold(ops.or_, e.args)
        if isinstance(e, sp.Not):
            return ops.not_(go(e.args[0]))
        if isinstance(e, (sp.Min, sp.Max)):
            return fold(ops.funcs["min" if isinstance(e, sp.Min) else "max"], e.args)
        if e.func in _SYMPY_FUNCS:
            return ops.funcs[_SYMPY_FUNCS[e.func]](go(e.args[0]))
        if isinstance(e, sp.core.function.AppliedUndef):
            if neural is None:
                raise ValueError(f"neural call {e.func} without a neural evaluator")
            return neural(str(e.func), [go(a) for a in e.args])
        raise NotImplementedError(f"IR node {type(e).__name__} is not supported by the walker")

    return go(expr)
