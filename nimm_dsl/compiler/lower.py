"""Lowering: a checked syntax tree -> ModelIR (sympy), by walking the tree.

Unit scales are folded in here, once, so that back ends only see numbers in declared units:
every name is read as `symbol * scale` (its value in base units), the expression is computed in
base units, and the result is divided by the scale of the unit it is reported in. A names-free
value in a position with a declared unit is a number in that unit (LANGUAGE.md §3).

Model text never reaches sympify: every sympy object is built from tree nodes.
"""
from __future__ import annotations

import operator
import re
from fractions import Fraction
from typing import Callable, Optional

import sympy as sp

from ..grammar import ast as A
from . import ir as I
from ..grammar.words import OBSERVE_FUNCTIONS
from .builtins import BUILTINS
from .check import CheckedModel
from .collector import collector_paused
from .families import KERNEL_ROW_MIN
from .linear_forms import KernelRow
from .fold import fold, is_bare, is_folded_number
from .units import ONE


class LoweringError(Exception):
    """A checked model that still cannot be lowered (e.g. a const defined through itself)."""

    def __init__(self, code: str, span: A.Span, message: str):
        super().__init__(message)
        self.code, self.span, self.message = code, span, message


def _rational(x) -> sp.Expr:
    """A folded number as sympy: exact stays exact, inf is oo."""
    if isinstance(x, Fraction):
        return sp.Rational(x.numerator, x.denominator)
    if isinstance(x, float) and x in (float("inf"), float("-inf")):
        return sp.oo if x > 0 else -sp.oo
    return sp.Float(x) if isinstance(x, float) else sp.Integer(x)


def _rescaled(value: sp.Expr, times: sp.Expr = sp.S.One, over: sp.Expr = sp.S.One) -> sp.Expr:
    """`value * times / over` (a unit conversion), without sympy's arithmetic for a factor of 1:
    most quantities are in base units, and a family model has thousands of such lines."""
    if times is not sp.S.One:
        value = value * times
    return value if over is sp.S.One else value / over


_LONG_SUM = KERNEL_ROW_MIN  # terms from which a sum is built without sympy's normalisation (see _sum)
_ARITHMETIC = {"+": operator.add, "-": operator.sub, "*": operator.mul, "/": operator.truediv, "^": sp.Pow}
_COMPARE = {"<": sp.Lt, "<=": sp.Le, ">": sp.Gt, ">=": sp.Ge, "==": sp.Eq, "!=": sp.Ne}


class _Lowerer:
    def __init__(self, checked: CheckedModel):
        self.m = checked
        self.table = checked.table
        self.units = checked.units  # UnitInfo
        t = self.table.time
        self.time_name = t.name.name if t else None
        self.time = sp.Symbol(self.time_name, real=True) if t else None
        self.sym: dict[str, sp.Symbol] = {}
        for name, s in self.table.symbols.items():
            if s.kind in ("const", "param", "state", "input", "let", "observe"):
                self.sym[name] = sp.Symbol(name, real=True)
        self.neural_fn = {
            name: sp.Function(name) for name, s in self.table.symbols.items() if s.kind == "neural"
        }
        self.input_coef = {
            name: (sp.Symbol(f"{name}#a", real=True), sp.Symbol(f"{name}#b", real=True))
            for name, s in self.table.symbols.items() if s.kind == "input"
        }
        self.overrides: dict[str, sp.Expr] = {}  # name -> effective value (declared unit)
        self.integrals: list[tuple] = []  # (value symbol, rate in base units, window in time unit)
        self._entries: dict[tuple, tuple] = {}  # (id of A.KernelRow entries, baseline) -> (entries, lowered)
        self.let_decls = {s.name: s.decl for s in self.table.symbols.values() if s.kind == "let"}
        self._baseline_lets: dict[str, sp.Expr] = {}  # name -> baseline value (base units)
        self.table_dose: Optional[tuple[str, sp.Expr]] = None  # (name, base-unit value) inside its amount
        self._plain = False  # inside the terms of a long sum: arithmetic without normalisation
        self._scales: dict[str, sp.Expr] = {}
        self._literals: dict[tuple, sp.Expr] = {}  # (text, unit annotation) or (type, value) -> value in base units

    # -- units
    def scale(self, name: str) -> sp.Expr:
        scale = self._scales.get(name)
        if scale is None:  # one sympy number per name: a family model reads 10^4 names
            scale = self._scales[name] = _rational(self.units.declared[name].scale)
        return scale

    def label(self, name: str) -> str:
        u = self.units.declared.get(name)
        return u.label if u is not None else "1"

    def unit_scale(self, unit_expr) -> Fraction:
        return self.units.system.resolve(unit_expr).scale

    # -- expressions (value in base units)
    def base_value_of_name(self, name: str, baseline: bool) -> sp.Expr:
        if name == "pi":
            return sp.pi
        if name == self.time_name:
            return self.time * self.scale(name)
        if self.table_dose is not None and name == self.table_dose[0]:
            return self.table_dose[1]
        kind = self.table.kind(name)
        if kind == "let" and baseline:
            # a set value sees the baseline of every name (docs/language.md §8): its lets are
            # inlined with baseline values, so no let can reach itself through a set override
            if name not in self._baseline_lets:
                self._baseline_lets[name] = self.expr(self.let_decls[name].value, baseline=True)
            return self._baseline_lets[name]
        if kind == "input" and self.time is not None:
            a, b = self.input_coef[name]
            raw = a + b * self.time
        else:
            raw = self.sym[name]
        if not baseline and name in self.overrides:
            raw = self.overrides[name]
        scale = self.scale(name)
        if scale is sp.S.One:  # most names: skip sympy's Mul construction, 10^4 times in a family model
            return raw
        return sp.Mul(raw, scale, evaluate=False) if self._plain else raw * scale

    def expr(self, e, baseline: bool = False) -> sp.Expr:
        go = lambda x: self.expr(x, baseline)  # noqa: E731
        if isinstance(e, A.Number):
            key = (e.text, e.unit)  # a family repeats the same few folded values 10^4 times
            value = self._literals.get(key)
            if value is None:
                value = self._literals[key] = _rational(fold(e, unit_scale=self.unit_scale))
            return value
        if isinstance(e, A.Name):
            return self.base_value_of_name(e.name, baseline)
        if isinstance(e, A.BinOp) and e.op in "+-":
            # one n-ary Add per sum: a binary `+` per term re-flattens the whole sum each time,
            # quadratic in its length (docs/architecture.md, the IR decision)
            return self._sum(e, go)
        if isinstance(e, A.BinOp) and e.op in "*/" and self._plain:
            return self._product(e, go)
        if isinstance(e, A.KernelRow):
            return self._kernel_row(e, go, baseline)
        if isinstance(e, A.BinOp):
            return _ARITHMETIC[e.op](go(e.left), go(e.right))
        if isinstance(e, A.UnaryOp):
            v = go(e.operand)
            if e.op == "not":
                return sp.Not(v)
            return sp.Mul(-1, v, evaluate=False) if self._plain else -v
        if isinstance(e, A.Compare):
            return _COMPARE[e.op](go(e.left), go(e.right))
        if isinstance(e, A.BoolOp):
            return (sp.And if e.op == "and" else sp.Or)(go(e.left), go(e.right))
        if isinstance(e, A.Call):
            f = e.func.name
            args = [go(a) for a in e.args]
            if f in BUILTINS:
                return BUILTINS[f].sympy(sp, *args)
            if f in self.neural_fn:
                return self.neural_fn[f](*args) * self.scale(f)
            if f in OBSERVE_FUNCTIONS:  # integral(RATE, WINDOW): see ir.IntegralIR
                value = sp.Symbol(f"integral#{len(self.integrals)}", real=True)
                self.integrals.append((value, args[0], self.number(e.args[1], self.time_name)))
                return value
        raise LoweringError("E204", getattr(e, "span", A.Span(1, 1, 1, 1)), f"cannot lower {e!r}")

    def _sum(self, e, go) -> sp.Expr:
        """A sum as one Add. The terms of a long sum (an index sum, expanded) are built without
        sympy's normalisation (`evaluate=False`): it costs about 0.1 ms per product, which made
        lowering a dense 100-district model take seconds, and it buys nothing there (the terms
        are distinct products of numbers and names); the back ends evaluate the same values."""
        stack, n = [e], 0
        while stack and n < _LONG_SUM:  # count the terms, up to the threshold
            node = stack.pop()
            if isinstance(node, A.BinOp) and node.op in "+-":
                stack += (node.left, node.right)
            else:
                n += 1
        if n < _LONG_SUM or self._plain:
            terms = self._terms(e, go)
        else:
            self._plain = True
            try:
                terms = self._terms(e, go)
            finally:
                self._plain = False
        if not self._plain and n < _LONG_SUM:
            return sp.Add(*(term if positive else -term for term, positive in terms))
        return sp.Add(*(term if positive else sp.Mul(-1, term, evaluate=False) for term, positive in terms),
                      evaluate=False)

    def _kernel_row(self, row: A.KernelRow, go, baseline: bool) -> sp.Expr:
        """An expanded sum's row as a linear_forms.KernelRow: its weights, and its entries, one
        sympy Tuple lowered once for all the rows of its line (each entry as a term of a long
        sum is: without sympy's normalisation)."""
        known = self._entries.get((id(row.entries), baseline))
        if known is None:
            plain, self._plain = self._plain, True
            try:
                entries = sp.Tuple(*(go(entry) for entry in row.entries))
            finally:
                self._plain = plain
            known = self._entries[(id(row.entries), baseline)] = (row.entries, entries)
        # a folded kernel value is one number (`_number_node` spells 1/4 as a quotient)
        return KernelRow([go(w) if isinstance(w, A.Number) or not is_folded_number(w) else self._quotient(w)
                          for w in row.weights], known[1])

    def _quotient(self, e) -> sp.Expr:
        """A folded kernel value that `_number_node` spells as a quotient (`1 / 4`, `-1 / 4`) as
        one number, as the term written out has it (`... / 4`), built once per value."""
        value = fold(e)
        key = (type(value), value)  # 1/4 and 0.25 are equal keys, but not the same number
        number = self._literals.get(key)
        if number is None:
            number = self._literals[key] = _rational(value)
        return number

    @staticmethod
    def _product(e, go) -> sp.Expr:
        """A chain of `*` and `/` inside a long sum as one unnormalised Mul: `c * I[k] / pop[k]`
        is Mul(c, I[k], 1/pop[k]), not two nested Muls (sympy's construction is most of the
        cost of lowering a dense family). The back ends fold a product from the left, so
        spreading the leftmost operand's factors into it gives the same value; a product on the
        right stays one factor. Operands are lowered in the tree's order (left to right)."""
        chain = []
        while isinstance(e, A.BinOp) and e.op in "*/":
            chain.append(e)
            e = e.left
        first = go(e)
        factors = list(first.args) if isinstance(first, sp.Mul) else [first]
        for node in reversed(chain):
            right = go(node.right)
            factors.append(right if node.op == "*" else sp.Pow(right, -1))
        return sp.Mul(*factors, evaluate=False)

    @staticmethod
    def _terms(e, go) -> list:
        """The terms of a chain of `+` and `-` (any shape: index sums are balanced trees), with
        their signs, lowered; iterative, so a long sum costs no recursion."""
        terms, stack = [], [(e, True)]
        while stack:
            node, positive = stack.pop()
            if isinstance(node, A.BinOp) and node.op in "+-":
                stack.append((node.right, positive if node.op == "+" else not positive))
                stack.append((node.left, positive))
            else:
                terms.append((go(node), positive))
        return terms

    def value(self, e, unit_name: Optional[str] = None, baseline=False) -> sp.Expr:
        """A value in a declared-unit position (the unit of `unit_name`, else dimensionless),
        returned in that unit."""
        if is_bare(e):  # a bare number is already in the declared unit (LANGUAGE.md §3)
            return _rational(fold(e))
        scale = self.scale(unit_name) if unit_name is not None else sp.S.One
        return _rescaled(self.expr(e, baseline), over=scale)

    # -- constants (defaults, bounds, event times) must become floats
    def number(self, e, unit_name: Optional[str] = None) -> float:
        """A constant in a declared-unit position, folded exactly as the checker folded it."""
        unit = self.units.declared[unit_name] if unit_name is not None else ONE
        v = self.units.values.value_in(e, unit)
        if v is None:
            raise LoweringError("E306", e.span, "this value must be a constant number")
        return v


def lower(checked: CheckedModel) -> I.ModelIR:
    """Build the ModelIR of a model that checked without errors."""
    with collector_paused():  # a family model builds 10^4 sympy terms (compiler/collector.py)
        return _lower(checked)


def _lower(checked: CheckedModel) -> I.ModelIR:
    for d in checked.whole_model_errors():
        raise LoweringError(d.code, d.span, d.message)
    L = _Lowerer(checked)
    table = checked.table
    stmts = checked.program.statements
    model = table.model
    ir = I.ModelIR(
        name=model.name.name if model else "model",
        doc=model.doc if model else None,
        time=L.time,
        time_name=L.time_name,
        time_unit=L.label(L.time_name) if L.time_name else None,
        t0=(L.number(table.time.origin, L.time_name)
            if table.time is not None and table.time.origin is not None else None),
        file=checked.file,
        source=checked.source,
        tables=checked.tables,
        model_span=model.span if model else None,
        time_span=table.time.span if table.time else None,
    )
    time_scale = L.scale(L.time_name) if L.time_name else sp.S.One

    def of(cls):
        return [s for s in stmts if isinstance(s, cls)]

    def bounds(decl) -> tuple[float, float]:
        if decl.bounds is None:
            return float("-inf"), float("inf")
        n = decl.name.name
        return L.number(decl.bounds.lo, n), L.number(decl.bounds.hi, n)

    # params (estimated) then consts (fixed), declaration order
    for p in of(A.ParamDecl):
        lo, hi = bounds(p)
        ir.params.append(I.ParamIR(p.name.name, L.sym[p.name.name],
                                   L.number(p.value, p.name.name),
                                   lo, hi, L.label(p.name.name), True, p.doc, p.span, p.per_series))
    for c in of(A.ConstDecl):
        n = c.name.name
        ir.params.append(I.ParamIR(n, L.sym[n], L.number(c.value, n),
                                   float("-inf"), float("inf"), L.label(n), False, c.doc, c.span))

    for u in of(A.InputDecl):
        n = u.name.name
        default = L.number(u.default, n) if u.default is not None else None
        ir.inputs.append(I.InputIR(n, L.sym[n], L.input_coef[n], default, u.interp, L.label(n),
                                   float(L.scale(n)), u.span))

    # set overrides: every set line gets a flag; the last line whose flag is on wins. One flat
    # Piecewise per target (nesting one per line made sympy recurse past its limit at ~200 lines).
    pieces: dict[str, list] = {}
    set_lines: list[tuple[A.SetStmt, Optional[str]]] = [(s, None) for s in of(A.SetStmt)]
    for sc in of(A.ScenarioBlock):
        set_lines += [(s, sc.name.name) for s in sc.body if isinstance(s, A.SetStmt)]
    for k, (s, scen) in enumerate(set_lines):
        target = s.target.name
        flag = sp.Symbol(f"set#{k}:{target}", real=True)
        override = L.value(s.value, target, baseline=True)
        start = L.number(s.start, L.time_name) if s.start is not None else None
        end = L.number(s.end, L.time_name) if s.end is not None else None
        ir.sets.append(I.SetIR(target, flag, override, start, end, scen, s.span))
        if L.table.kind(target) == "input" and L.time is not None:
            a, b = L.input_coef[target]
            baseline = a + b * L.time
        else:
            baseline = L.sym[target]
        pieces.setdefault(target, [(baseline, True)]).insert(0, (override, flag > sp.Rational(1, 2)))
    for target, choices in pieces.items():
        L.overrides[target] = sp.Piecewise(*choices)

    # neural terms
    for nd in of(A.NeuralDecl):
        opts = {o.name.name: o.value for o in nd.options}
        hidden = [int(x.value) for x in opts["hidden"].items] if "hidden" in opts else [16, 16]
        act = opts["activation"].name if "activation" in opts else "tanh"
        init = opts["init"].name if "init" in opts else "zero"
        penalty = L.number(opts["penalty"]) if "penalty" in opts else 0.0
        ir.neurals.append(I.NeuralIR(nd.name.name, L.neural_fn[nd.name.name], len(nd.args), hidden,
                                     act, init, penalty, L.label(nd.name.name)))

    # lets in dependency order
    lets = {s.name.name: s for s in of(A.LetDecl)}
    for name in checked.names.let_order:
        if name in lets:
            ir.lets.append(I.LetIR(name, L.sym[name], _rescaled(L.expr(lets[name].value), over=L.scale(name)),
                                   L.label(name), lets[name].span))

    # states and their dynamics (der lines, or the sum of flows, each end in its own unit)
    derivatives: dict[str, list] = {}  # state -> terms, added once (n-ary)
    for d in of(A.DerEq):
        n = d.state.name
        derivatives[n] = [_rescaled(L.expr(d.value), time_scale, L.scale(n))]
        ir.der_spans[n] = d.span
    for f in of(A.FlowEq):
        rate_base = L.expr(f.rate)
        src = f.source.name if f.source else None
        dst = f.target.name if f.target else None
        unit_ref = src or dst
        ir.flows.append(I.FlowIR(src, dst, _rescaled(rate_base, time_scale, L.scale(unit_ref)), f.span))
        if src:
            derivatives.setdefault(src, []).append(_rescaled(-rate_base, time_scale, L.scale(src)))
        if dst:
            derivatives.setdefault(dst, []).append(_rescaled(rate_base, time_scale, L.scale(dst)))
    for s in of(A.StateDecl):
        n = s.name.name
        lo, hi = bounds(s)
        init = L.value(s.init, n)
        ir.states.append(I.StateIR(n, L.sym[n], init, lo, hi, L.label(n), s.doc, s.span))
        ir.derivatives[n] = sp.Add(*derivatives.get(n, []))

    for o in of(A.ObserveDecl):
        n = o.name.name
        noise, sigma, dispersion = "lsq", None, None
        if o.noise is not None:
            noise = o.noise.kind.name
            opts = {op.name.name: op.value for op in o.noise.options}
            if "sigma" in opts:  # fixed over the data: set lines do not change it
                sigma = L.value(opts["sigma"], n if noise == "normal" else None, baseline=True)
            if "dispersion" in opts:
                dispersion = L.value(opts["dispersion"], None, baseline=True)
        ir.observes.append(I.ObserveIR(n, L.sym[n], _rescaled(L.expr(o.value), over=L.scale(n)), L.label(n), noise, sigma,
                                       o.span, dispersion))
    # each integral's accumulator: a hidden state in base units of unit(RATE) x time, from 0
    for value, rate, window in L.integrals:
        name = f"{value}:accumulator"
        ir.states.append(I.StateIR(name, sp.Symbol(name, real=True), sp.Integer(0), float("-inf"),
                                   float("inf"), "base units", hidden=True))
        ir.derivatives[name] = rate * time_scale
        ir.integrals.append(I.IntegralIR(value, name, window))

    # doses: baseline, then scenarios
    def dose_ir(d: A.DoseStmt) -> I.DoseIR:
        state = d.state.name
        if d.from_data:
            # the row's amount is a runtime value of each dose instant (backends/protocol.py)
            symbol = I.table_dose_symbol(d.name.name)
            L.table_dose = (d.name.name, symbol * _rational(L.unit_scale(d.unit)))
            amount = L.value(d.amount, state) if d.op == "+=" else L.value(d.amount)
            L.table_dose = None
            return I.DoseIR(d.name.name, state, "+" if d.op == "+=" else "*", amount, [], d.span,
                            amount_symbol=symbol)
        # evaluated at the dose time with the set lines then in force (LANGUAGE.md §4)
        amount = L.value(d.amount, state) if d.op == "+=" else L.value(d.amount)
        at = L.number(d.at, L.time_name)
        every = L.number(d.every, L.time_name) if d.every is not None else 0.0
        count = int(round(L.number(d.times))) if d.times is not None else 1
        times = [at + k * every for k in range(count)]
        return I.DoseIR(d.name.name, state, "+" if d.op == "+=" else "*", amount, times, d.span)

    ir.doses = [dose_ir(d) for d in of(A.DoseStmt)]
    for sc in of(A.ScenarioBlock):
        ir.scenarios[sc.name.name] = I.ScenarioIR(
            sc.name.name, sc.doc,
            [dose_ir(d) for d in sc.body if isinstance(d, A.DoseStmt)],
            [r.name.name for r in sc.body if isinstance(r, A.RemoveStmt)],
        )
    return ir


SHOWN_ELEMENTS = 3  # of a family's rows, `show` prints the first two and the last


def _shape(*exprs) -> str:
    """An expression's structure with element subscripts and numbers left out (`S[3]*force[3]`
    and `S[7]*force[7]` alike; sums and products in any order): which hidden element would read
    differently from those shown."""
    def shape(e):
        if not isinstance(e, sp.Basic):
            return str(e)
        if e.is_Number:
            return "#"
        if isinstance(e, sp.Symbol):
            return e.name.partition("[")[0]
        parts = [shape(a) for a in e.args]
        if isinstance(e, (sp.Add, sp.Mul)):
            parts = sorted(parts)
            parts = [p for p in parts if p != "#"] or ["#"]  # a coefficient of 1 prints no number
        return f"{type(e).__name__}({','.join(parts)})"
    return ";".join(shape(e) for e in exprs)


def _display(member_key: Optional[Callable[[str], tuple]] = None) -> Callable:
    """How `show` rebuilds an expression before printing it (display only: the IR the back ends
    evaluate keeps its form).

    - Names become symbols that sort, among the terms of a sum and the factors of a product, in
      member order (`X[9] + X[10]`, named members as their index declares them): sympy orders
      names as text (`X[10] + X[1] + X[2]`). `member_key`: an element name's places in its
      indexes (check.member_order); without it, names sort as text.
    - Exact fractions that only stand for a decimal (a folded `exp(-1/3)` is
      7165313105737893/10000000000000000) become that decimal, to 6 digits; 1/3 stays 1/3.
    - Every sum, product and power is built again with sympy's arithmetic: lowering builds the
      terms of a long sum without it (`_Lowerer._sum`, and a family's mixing row is one
      KernelRow node of weights and entries), so unit factors that cancel stay apart there
      (`X[3]*(1/1000000)*(1000/w[3])`, shown `X[3]/(1000*w[3])`).
    One walk does all three: a family model's equations are large."""
    keys: dict[str, str] = {}

    def key(name: str) -> str:
        out = keys.get(name)
        if out is None:
            family, bracket, _ = name.partition("[")
            # the name last: elements whose places tie (none should) still sort one way
            out = keys[name] = (f"{family}[{','.join(f'{p:09d}' for p in member_key(name))}]{name}"
                                if bracket and member_key is not None else name)
        return out

    class Shown(sp.Symbol):  # a class per call: sympy caches symbols by class, name and assumptions
        @classmethod
        def class_key(cls):  # sorts among other kinds of terms as a plain symbol does
            return sp.Symbol.class_key()

        def sort_key(self, order=None):
            return self.class_key(), (1, (key(self.name),)), sp.S.One.sort_key(), sp.S.One

    memo: dict = {}

    def rebuild(e):
        if not isinstance(e, sp.Basic):
            return e
        out = memo.get(e)
        if out is None:
            if isinstance(e, sp.Symbol):
                out = Shown(e.name, **e.assumptions0)
            elif isinstance(e, sp.Rational) and _stands_for_a_decimal(e):
                out = sp.Float(e, 6)
            elif isinstance(e, KernelRow):  # one node in the IR; shown as the sum it stands for
                out = rebuild(e.as_sum())
            else:
                out = e.func(*(rebuild(a) for a in e.args)) if e.args else e
            memo[e] = out
        return out
    return rebuild


def _families_together(items: list, member_key: Optional[Callable[[str], tuple]]) -> list:
    """`items` (lets, in the order they are computed: `g[1]`, `f[1]`, `g[2]`, ... when f reads g)
    with each family's elements together, in member order, where its first element was: `show`
    folds a family's rows into a few only when they are adjacent."""
    first: dict[str, int] = {}
    for i, x in enumerate(items):
        first.setdefault(x.name.partition("[")[0], i)
    return sorted(items, key=lambda x: (first[x.name.partition("[")[0]],
                                        member_key(x.name) if member_key is not None and "[" in x.name else ()))


def _family_rows(items, name_of, row, more, shape_of):
    """The rows of `items` (each through `row`), but of a run of a family's elements (`S[1]`,
    `S[2]`, ...) only the first two, each element whose equation has a shape neither of those
    has (`_shape`: an extra outflow on one stage), `more(n, family)` for the n left out, and
    the last: a 100-district model shows as a few lines per equation instead of hundreds, and
    only the elements shown are rendered."""
    items = list(items)
    out, i = [], 0
    while i < len(items):
        family = name_of(items[i]).partition("[")[0] if "[" in name_of(items[i]) else None
        j = i + 1
        while family is not None and j < len(items) and name_of(items[j]).partition("[")[0] == family \
                and "[" in name_of(items[j]):
            j += 1
        run = items[i:j]
        middle = run[2:-1]
        if family is not None and len(middle) >= 2:
            shown = {shape_of(run[0]), shape_of(run[1])}
            different = [x for x in middle if shape_of(x) not in shown]
            hidden = len(middle) - len(different)
            out += [row(run[0]), row(run[1])] + [row(x) for x in different]
            out += ([more(hidden, family)] if hidden else []) + [row(run[-1])]
        else:
            out += [row(x) for x in run]
        i = j
    return out


def to_latex(ir: I.ModelIR, every_element: bool = False,
             member_key: Optional[Callable[[str], tuple]] = None) -> str:
    """The baseline model as LaTeX equations (aligned), for `nimm show --latex`.

    Set lines are shown as windows beside the equations rather than as the Piecewise switches
    the back ends use, and doses as jumps. `member_key`: see `_display`."""
    baseline = _display_substitutions(ir)
    shown = _display(member_key)
    inputs = {u.name for u in ir.inputs}
    time_tex = latex_name(ir.time_name) if ir.time_name else ""

    def ltx(e) -> str:  # the user's names: \mathrm{beta\_eff}, inputs as functions of time
        names = {x: latex_name(x.name) + (f"({time_tex})" if x.name in inputs and time_tex else "")
                 for x in getattr(e, "free_symbols", ())}
        return sp.latex(e, symbol_names=names)

    def tex(e) -> str:
        return ltx(_display_form(shown(e.xreplace(baseline))) if isinstance(e, sp.Basic) else e)

    def text(name: str) -> str:  # a name inside \text{}: underscores must be escaped
        return name.replace("_", r"\_")

    t = ir.time
    dt = rf"\mathrm{{d}}{ltx(t)}" if t is not None else ""

    def rows_of(items, name_of, row, shape_of):
        if every_element:
            return [row(x) for x in items]
        return _family_rows(items, name_of, row,
                            lambda n, family: rf"&\vdots && \text{{{n} more elements of {text(family)} alike}}",
                            shape_of)

    def observe_row(o) -> str:
        noise = {"normal": r"\mathcal{N}", "lognormal": r"\log\mathcal{N}",
                 "poisson": r"\mathrm{Poisson}", "negbinomial": r"\mathrm{NegBin}", "lsq": None}[o.noise]
        rhs = tex(o.expr)
        if noise:
            rhs += rf" && \text{{data}} \sim {noise}" + (rf"(\sigma = {tex(o.sigma)})" if o.sigma is not None else "")
            rhs += rf"(k = {tex(o.dispersion)})" if o.dispersion is not None else ""
        return rf"{ltx(o.symbol)} &= {rhs}"

    by_name = lambda x: x.name  # noqa: E731
    shape = lambda *es: _shape(*(x.xreplace(baseline) if isinstance(x, sp.Basic) else x for x in es))  # noqa: E731
    lets = _families_together(ir.lets, member_key)
    rows = rows_of(lets, by_name, lambda let: rf"{ltx(let.symbol)} &= {tex(let.expr)} && [\mathrm{{{let.unit}}}]",
                   lambda let: shape(let.expr))
    rows += rows_of(ir.reported_states, by_name,
                    lambda s: rf"\frac{{\mathrm{{d}}{ltx(s.symbol)}}}{{{dt}}} &= {tex(ir.derivatives[s.name])}"
                              rf" && [\mathrm{{{s.unit}/{ir.time_unit}}}]",
                    lambda s: shape(ir.derivatives[s.name]))
    rows += rows_of(ir.reported_states, by_name,
                    lambda s: rf"{ltx(s.symbol)}({ltx(t)}_0) &= {tex(s.init)} && [\mathrm{{{s.unit}}}]",
                    lambda s: shape(s.init))
    rows += rows_of(ir.observes, by_name, observe_row, lambda o: shape(o.expr, o.sigma, o.dispersion))
    for s in ir.sets:
        window = " ".join(filter(None, [rf"{s.start:g} \le" if s.start is not None else "",
                                        ltx(t) if t is not None else "",
                                        rf"< {s.end:g}" if s.end is not None else ""]))
        where = rf"\text{{scenario {text(s.scenario)}}}" if s.scenario else r"\text{baseline}"
        rows.append(rf"{latex_name(s.target)} &\leftarrow {tex(s.expr)} && {where},\ {window}")
    for d in ir.doses:
        op = "+" if d.op == "+" else r"\times"
        times = ", ".join(f"{x:g}" for x in d.times)
        when = (r" at the table's dose times}" if d.from_data
                else rf" at }} {ltx(t)} \in \{{{times}\}}")
        rows.append(rf"{latex_name(d.state)} &\mathrel{{{op}}}= {tex(d.amount)} && "
                    rf"\text{{dose {text(d.name)}" + when)
    for u in ir.inputs:
        how = {"linear": "linear interpolation", "step": "steps"}.get(u.interp, u.interp)
        default = f", default {u.default:g}" if u.default is not None else ", from the data"
        rows.append(rf"{tex(u.symbol)} &: \text{{input ({how}{default})}} && [\mathrm{{{u.unit}}}]")
    return "\\begin{aligned}\n" + " \\\\\n".join(rows) + "\n\\end{aligned}\n"


DISPLAY_FACTORING_LIMIT = 400  # operations; larger expressions are shown as lowered


def _display_form(e):
    """Unit factors pulled out for reading: `1000 g (V/1000 - E/1000)` (a unit conversion spread
    over a sum) shows as `g (V - E)`. The same expression, only regrouped; huge ones (families
    expanded to thousands of terms) are left as they are, and so are those holding a family's
    long sum (`_LONG_SUM` terms or more: its terms have no common factor worth pulling out, and
    sympy takes a tenth of a second per row to find that). `e` has been through `_display`
    (decimals first: factoring 10^16 denominators out of a sum reads worse)."""
    if (isinstance(e, sp.Expr) and sp.count_ops(e) <= DISPLAY_FACTORING_LIMIT
            and all(len(a.args) < _LONG_SUM for a in e.atoms(sp.Add))):
        return sp.factor_terms(e)
    return e


def _stands_for_a_decimal(r: sp.Rational) -> bool:
    """A fraction folded from a float (a power of ten of 7 digits or more below it, or digits
    that long on both sides), not one a unit conversion or the text makes (1/3600, 7/1024)."""
    q, p = int(r.q), abs(int(r.p))
    while q % 10 == 0 and q > 1:
        q //= 10
    tens = q in (1, 2, 4, 5, 8, 16, 25, 32, 64, 125) and r.q >= 10 ** 7
    return tens or (len(str(p)) > 12 and len(str(int(r.q))) > 12)


def latex_name(name: str) -> str:
    """A user's name in LaTeX: one letter or a Greek letter, optionally followed by digits, as
    sympy writes it (`I0` -> I_{0}, `beta` -> \\beta); any other name upright and whole
    (`beta_eff` -> \\mathrm{beta\\_eff}), never as a product of letters or a subscript."""
    if " " in name:  # a number with its unit (an integral's window): no model name has a space
        number, unit = name.split(" ", 1)
        return rf"{number}\ \mathrm{{{unit}}}"
    head = re.fullmatch(r"([A-Za-z]+?)(\d*)", name)
    if head and (len(head.group(1)) == 1 or sp.latex(sp.Symbol(head.group(1))).startswith("\\")):
        return sp.latex(sp.Symbol(name))
    return r"\mathrm{" + name.replace("_", r"\_") + "}"


def _display_substitutions(ir: I.ModelIR) -> dict:
    """What the shown equations replace: set flags off (sets are listed as windows), and each
    input's per-segment line `a + b*t` by the input itself (the coefficients are internal)."""
    out = ir.as_written()
    # an integral as written (its accumulator state is internal and not shown)
    integral = sp.Function("integral")
    for g in ir.integrals:
        window = sp.Symbol(f"{g.window:g} {ir.time_unit}")  # the window with its unit, as written
        out[g.symbol] = integral(ir.derivatives[g.state].xreplace(out), window)
    return out


def to_text(ir: I.ModelIR, every_element: bool = False,
            member_key: Optional[Callable[[str], tuple]] = None) -> str:
    """The baseline model as plain-text equations in declared units, for `nimm show --format text`
    (the same content as `to_latex`)."""
    baseline = _display_substitutions(ir)
    shown = _display(member_key)

    def show(e) -> str:
        return sp.sstr(shown(e.xreplace(baseline)) if isinstance(e, sp.Basic) else e)

    t = ir.time

    shape = lambda *es: _shape(*(x.xreplace(baseline) if isinstance(x, sp.Basic) else x for x in es))  # noqa: E731

    def rows_of(items, row, shape_of):
        if every_element:
            return [row(x) for x in items]
        return _family_rows(items, lambda x: x.name, row,
                            lambda n, family: f"    ... {n} more elements of {family} alike (`nimm show --all` lists them)",
                            shape_of)

    def observe_row(o) -> str:
        noise = "" if o.noise == "lsq" else f"    data ~ {o.noise}" + (
            f"(sigma = {show(o.sigma)})" if o.sigma is not None else "") + (
            f"(dispersion = {show(o.dispersion)})" if o.dispersion is not None else "")
        return f"{o.symbol} = {show(o.expr)}{noise}"

    lets = _families_together(ir.lets, member_key)
    rows = rows_of(lets, lambda let: f"{let.symbol} = {show(let.expr)}    [{let.unit}]", lambda let: shape(let.expr))
    rows += rows_of(ir.reported_states,
                    lambda s: f"d{s.symbol}/d{t} = {show(ir.derivatives[s.name])}    [{s.unit}/{ir.time_unit}]",
                    lambda s: shape(ir.derivatives[s.name]))
    rows += rows_of(ir.reported_states, lambda s: f"{s.symbol}({t}0) = {show(s.init)}    [{s.unit}]",
                    lambda s: shape(s.init))
    rows += rows_of(ir.observes, observe_row, lambda o: shape(o.expr, o.sigma, o.dispersion))
    for s in ir.sets:
        window = " ".join(filter(None, [f"{s.start:g} <=" if s.start is not None else "",
                                        str(t) if t is not None else "",
                                        f"< {s.end:g}" if s.end is not None else ""]))
        rows.append(f"{s.target} <- {sp.sstr(shown(s.expr))}    {'scenario ' + s.scenario if s.scenario else 'baseline'}"
                    + (f", {window}" if window else ""))
    for d in ir.doses:
        when = ("at the table's dose times" if d.from_data
                else f"at {t} in {{{', '.join(f'{x:g}' for x in d.times)}}}")
        rows.append(f"{d.state} {d.op}= {show(d.amount)}    dose {d.name} {when}")
    return "\n".join(rows) + "\n"
