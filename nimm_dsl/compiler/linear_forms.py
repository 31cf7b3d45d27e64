"""Long sums that share their terms, found in the IR so that back ends evaluate them as one
matrix-vector product.

An index family's `sum(k in district, C[d, k] * I[k] / pop[k])` becomes, for each d, a sum of
N products that differ between rows only by a coefficient: row d is sum_k M[d, k] * v[k] with
v[k] = I[k] / pop[k]. Evaluated term by term that is N^2 scalar operations; as a product of the
N x N matrix M with the vector v it is one call, which is what a vectorised numpy right-hand side
does (docs/architecture.md, "The IR after sympy"; issue #14: a dense 100-district model simulated
5x slower than scipy that way).

The analysis is structural and exact: a term is a product of factors; its numbers and the
factors made of params and consts only (`L`, `exp(-abs(d - k) / L)`) are its coefficient, the
other factors are its *key* (the vector entry). A term whose key appears in at least one other long sum is shared; long sums whose shared
keys are the same set form a group, one matrix row each, and the terms that are not shared stay
outside the product as a remainder of their row. Nothing is approximated: a row's value is the
same sum, added in another order.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Optional

import sympy as sp
from sympy.printing.precedence import PRECEDENCE

MIN_TERMS = 8  # a sum shorter than this is cheaper as scalar operations than as a call
MIN_ROWS = 2  # a matrix of one row is a dot product: no sharing to gain


class KernelRow(sp.Expr):
    """The IR of a grammar `A.KernelRow` (compiler/families.py): sum_i weights[i] * entries[i],
    with `entries` one sympy Tuple shared by the rows of a family line. It is what the terms
    written out would be (an Add of `weight * entry`), kept as one node so that lowering does not
    build N products per row: the rows sharing their entries are a matrix product by
    construction (`find_linear_forms`), `ir.walk` evaluates a row outside a product term by term,
    and printing spells it as that sum. Everything sympy does over `args` (free symbols,
    `xreplace`, atoms) sees the weights and the entries."""

    is_commutative = True
    precedence = PRECEDENCE["Add"]  # printed as its sum: parenthesised inside a product

    def __new__(cls, weights, entries):
        return sp.Expr.__new__(cls, sp.Tuple(*weights), entries if isinstance(entries, sp.Tuple) else sp.Tuple(*entries))

    @property
    def weights(self) -> sp.Tuple:
        return self.args[0]

    @property
    def entries(self) -> sp.Tuple:
        return self.args[1]

    def as_sum(self) -> sp.Expr:
        """The terms written out, unnormalised (for printing): each the weight, then the
        entry's factors."""
        return sp.Add(*(sp.Mul(w, *(v.args if isinstance(v, sp.Mul) else (v,)), evaluate=False)
                        for w, v in zip(*self.args)), evaluate=False)

    def _sympystr(self, printer) -> str:  # sympy's printer protocol (sstr, str)
        return printer._print(self.as_sum())

    def _latex(self, printer) -> str:
        return printer._print(self.as_sum())


@dataclass
class LinearGroup:
    """Rows `rows` (the sums) = matrix @ vector + each row's remainder.

    `keys[j]`: the factors whose product is vector entry j. `entries`: the nonzero matrix
    entries as (row, column, number, factors): the entry is number * product of the factors
    (params, consts or expressions of them only, evaluated by the back end; none for a constant
    matrix)."""

    index: int  # within the model: names the back ends' function (stable, for compiled caches)
    rows: list[sp.Expr]
    keys: list[tuple]
    entries: list[tuple[int, int, float, tuple]]
    remainder: list[list[sp.Expr]]  # per row: the terms outside the product

    @property
    def shape(self) -> tuple[int, int]:
        return len(self.rows), len(self.keys)

    @property
    def numeric(self) -> bool:
        return all(not syms for _, _, _, syms in self.entries)

    def column_major(self) -> list[int]:
        """Indices into `entries` in column-major order (CasADi's compressed column storage)."""
        return sorted(range(len(self.entries)), key=lambda i: (self.entries[i][1], self.entries[i][0]))


@dataclass
class LinearForms:
    groups: list[LinearGroup] = field(default_factory=list)
    row_of: dict = field(default_factory=dict)  # sum expression -> (group index, row)


def _factors(term: sp.Expr) -> list[sp.Expr]:
    """The factors of a product, nested products (built without normalisation) flattened."""
    out, stack = [], [term]
    while stack:
        node = stack.pop()
        if isinstance(node, sp.Mul):
            stack.extend(reversed(node.args))
        else:
            out.append(node)
    return out


def _is_coefficient(f: sp.Expr, coefficient_symbols: frozenset, expressions: bool) -> bool:
    """A factor that is the same at every evaluation of a run: a param or const, or (with
    `expressions`) an expression of them only, such as `exp(-abs(d - k) / L)` with L a param."""
    if f in coefficient_symbols:
        return True
    if not expressions or isinstance(f, sp.Symbol):
        return False
    free = f.free_symbols
    return bool(free) and free <= coefficient_symbols


def _split(term: sp.Expr, coefficient_symbols: frozenset, expressions: bool = False
           ) -> Optional[tuple[float, tuple, tuple]]:
    """(number, coefficient factors, key) of a term, or None when the term has no key to share
    (a number alone, or only params and consts)."""
    number, symbols, key = 1.0, [], []
    for f in _factors(term):
        if f.is_Number:  # p / q: a correctly rounded float without sympy's mpmath conversion
            number *= f.p / f.q if f.is_Rational else float(f)
        elif _is_coefficient(f, coefficient_symbols, expressions):
            symbols.append(f)
        else:
            key.append(f)
    if not key:
        return None
    return number, tuple(symbols), tuple(key)


def _long_sums(exprs: list[sp.Expr]) -> tuple[list[sp.Add], list[KernelRow]]:
    """Every distinct sum of at least MIN_TERMS terms inside `exprs`, and every kernel row, in
    first-seen order."""
    seen, found, rows, stack = set(), [], [], list(reversed(exprs))
    while stack:
        node = stack.pop()
        if node in seen or not isinstance(node, sp.Basic) or node.is_Atom:
            continue
        seen.add(node)
        if isinstance(node, sp.Add) and len(node.args) >= MIN_TERMS:
            found.append(node)
        elif isinstance(node, KernelRow):
            rows.append(node)
            stack.append(node.entries)  # its weights hold no sum (numbers, params and consts)
            continue
        stack.extend(reversed(node.args))
    return found, rows


def find_linear_forms(exprs: list[sp.Expr], coefficient_symbols) -> LinearForms:
    """The groups of long sums in `exprs` (a model's lets, derivatives and observes) that share
    their terms. `coefficient_symbols`: the symbols that may sit in a matrix entry (params and
    consts: the same at every evaluation of a run, never states or time).

    Two passes: first with numbers and bare params/consts as coefficients (a kernel written with
    numbers folds to numbers: a constant matrix); then, for the sums left over, with any factor
    made of params and consts only as a coefficient (a kernel with an estimated length scale,
    `exp(-abs(d - k) / L)`: a matrix of expressions), where a factor that every row shares for a
    column (`1 / pop[k]`) goes to the vector instead, so that the matrix holds only what varies."""
    coefficient_symbols = frozenset(coefficient_symbols)
    forms = LinearForms()
    sums, kernel_rows = _long_sums(exprs)
    _group(forms, sums, {s: [_split(t, coefficient_symbols) for t in s.args] for s in sums}, False)
    left = [s for s in sums if s not in forms.row_of]
    _group(forms, left, {s: [_split(t, coefficient_symbols, True) for t in s.args] for s in left}, True)
    _group_kernel_rows(forms, kernel_rows, coefficient_symbols)
    return forms


def _group_kernel_rows(forms: LinearForms, rows: list[KernelRow], coefficient_symbols: frozenset) -> None:
    """The kernel rows that share their entries, one group each: the entries are the vector,
    the weights the matrix. A row whose weight is not made of numbers, params and consts (a
    scenario's `set` of a const in it adds a switch) stays out, evaluated term by term."""
    by_entries: dict[sp.Tuple, list] = {}
    split: dict = {}  # weight -> _weight: a kernel repeats few values (199 distinct `d - k` of 10^4)
    for row in rows:
        weights = [split[w] if w in split else split.setdefault(w, _weight(w, coefficient_symbols))
                   for w in row.weights]
        if all(w is not None for w in weights):
            by_entries.setdefault(row.entries, []).append((row, weights))
    for entries, members in by_entries.items():
        if len(members) < MIN_ROWS:
            continue
        g = len(forms.groups)
        forms.groups.append(LinearGroup(
            g, [row for row, _ in members], [(v,) for v in entries],
            [(r, c, number, symbols) for r, (_, weights) in enumerate(members)
             for c, (number, symbols) in enumerate(weights)],
            [[] for _ in members]))
        for r, (row, _) in enumerate(members):
            forms.row_of[row] = (g, r)


def _weight(w: sp.Expr, coefficient_symbols: frozenset) -> Optional[tuple[float, tuple]]:
    """(number, coefficient factors) of a kernel row's weight, or None when a factor is neither."""
    number, symbols = 1.0, []
    for f in _factors(w):
        if f.is_Number:
            number *= f.p / f.q if f.is_Rational else float(f)
        elif _is_coefficient(f, coefficient_symbols, True):
            symbols.append(f)
        else:
            return None
    return number, tuple(symbols)


def _group(forms: LinearForms, sums: list, split: dict, column_factors: bool) -> None:
    """Add to `forms` the groups of `sums` whose shared keys are the same set (`split`: each
    sum's terms as _split gives them). column_factors: move the coefficient factors that all
    entries of a column share into that column's vector entry."""
    uses: dict[tuple, int] = {}
    for s in sums:
        for key in {p[2] for p in split[s] if p is not None}:
            uses[key] = uses.get(key, 0) + 1
    by_keys: dict[frozenset, list] = {}
    for s in sums:
        shared = frozenset(p[2] for p in split[s] if p is not None and uses[p[2]] >= 2)
        if len(shared) >= MIN_TERMS:
            by_keys.setdefault(shared, []).append(s)
    for shared, rows in by_keys.items():
        if len(rows) < MIN_ROWS:
            continue
        column: dict[tuple, int] = {}
        entries, remainder = [], []
        for r, s in enumerate(rows):
            rest, taken = [], set()
            for term, part in zip(s.args, split[s]):
                # a key twice in one sum (unnormalised terms) keeps its second term outside, so
                # that every matrix entry is one term
                if part is None or part[2] not in shared or part[2] in taken:
                    rest.append(term)
                    continue
                number, symbols, key = part
                taken.add(key)
                entries.append((r, column.setdefault(key, len(column)), number, symbols))
            remainder.append(rest)
        keys = list(column)
        if column_factors:
            keys, entries = _factors_to_columns(keys, entries)
        g = len(forms.groups)
        forms.groups.append(LinearGroup(g, rows, keys, entries, remainder))
        for r, s in enumerate(rows):
            forms.row_of[s] = (g, r)


def _factors_to_columns(keys: list[tuple], entries: list[tuple]) -> tuple[list[tuple], list[tuple]]:
    """Move each column's shared coefficient factors (with their multiplicity) from its
    entries to its key: entry number * a * f, column key v -> entry number * a, key v * f."""
    common: dict[int, Counter] = {}
    for _, c, _, symbols in entries:
        counts = Counter(symbols)
        common[c] = common[c] & counts if c in common else counts
    keys = [key + tuple(common.get(c, Counter()).elements()) for c, key in enumerate(keys)]
    moved = []
    for r, c, number, symbols in entries:
        drop = Counter(common[c])
        kept = []
        for f in symbols:
            if drop[f] > 0:
                drop[f] -= 1
            else:
                kept.append(f)
        moved.append((r, c, number, tuple(kept)))
    return keys, moved
