"""Standard rate laws by role, and the siblings a candidate gets when one of its lets plays a role.

A language model proposes the laws it happens to think of; a modeler would also try the other
standard laws of the same role. When a candidate has a `let` of the saturating form
`A * X / (K + X)` (Monod growth, a Holling type II response, Michaelis–Menten kinetics) or the
mass-action incidence `B * S * I / N`, the agent fits the other laws of that role as its children
without asking the language model, so the plausible set is not only what it proposed.

Each law is a row: its name, the expression written in the candidate's own names, and the new
parameters it needs. The rewritten model is plain text, built from the let's source span and
re-checked like any candidate.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional


@dataclass(frozen=True)
class Law:
    name: str
    template: str  # {A} the maximal rate, {K} the half-saturation constant, {X} the driver
    # (name suffix, unit kind, default rule, bounds): bounds None = the default ÷/× 100
    new_params: tuple[tuple[str, str, str, Optional[tuple[float, float]]], ...] = ()


# role -> laws (the first is the form that is detected)
LAWS: dict[str, tuple[Law, ...]] = {
    "saturating": (
        Law("Monod / Holling II / Michaelis-Menten", "{A} * {X} / ({K} + {X})"),
        Law("Tessier", "{A} * (1 - exp(-({X}) / {K}))"),
        Law("Haldane (substrate inhibition)", "{A} * {X} / ({K} + {X} + ({X})^2 / {name}_Ki)",
            (("Ki", "X", "10K", None),)),
        # abs(X): a solver may step a vanishing substrate a hair below zero, and a negative base
        # to a fractional power is NaN (a bare 0 in max(X, 0) would be dimensionless: E401)
        Law("Moser / Hill", "{A} * (abs({X}) / {K})^{name}_n / (1 + (abs({X}) / {K})^{name}_n)",
            (("n", "1", "2", (0.5, 6.0)),)),
        Law("Holling III (sigmoid)", "{A} * ({X})^2 / ({K}^2 + ({X})^2)"),
        Law("Holling I (linear)", "{A} * ({X}) / {K}"),
    ),
    "incidence": (
        Law("frequency-dependent (mass action over N)", "{A} * {S} * {I} / {N}"),
        Law("density-dependent mass action", "{A} * {S} * {I} / {name}_N0", (("N0", "N", "N", None),)),
        Law("saturating incidence", "{A} * {S} * {I} / ({N} + {name}_alpha * {I})",
            (("alpha", "1", "1", (0.0, 100.0)),)),
    ),
}


@dataclass
class RoleLet:
    """A let whose expression is the first law of a role, with its parts as source text."""

    name: str
    role: str
    line: int  # 1-based line of the let
    value_columns: tuple[int, int]  # the expression's columns on that line (1-based, end exclusive)
    parts: dict  # placeholder -> source text
    driver: str  # the name of the driving quantity (for the learned-shape analysis)


def _text(source_lines, span) -> str:
    if span.line != span.end_line:
        raise ValueError("multi-line")
    return source_lines[span.line - 1][span.column - 1:span.end_column - 1]


def _factors(node):
    """The factors of a product tree (`a * b * c`)."""
    if type(node).__name__ == "BinOp" and node.op == "*":
        return _factors(node.left) + _factors(node.right)
    return [node]


def _terms(node):
    if type(node).__name__ == "BinOp" and node.op == "+":
        return _terms(node.left) + _terms(node.right)
    return [node]


def find_role_let(model) -> Optional[RoleLet]:
    """The first let of the model that is the detected form of a role, or None."""
    lines = model.checked.source.splitlines()
    kinds = {s.name: s.kind for s in model.checked.table.symbols.values()}
    for stmt in model.checked.program.statements:
        if type(stmt).__name__ != "LetDecl" or stmt.span.line != stmt.span.end_line:
            continue
        try:
            found = (_saturating(stmt.value, lines, kinds)
                     or _incidence(stmt.value, lines, kinds, _flow_sources(model, stmt.name.name)))
        except ValueError:
            continue
        if found is not None:
            role, parts, driver = found
            v = stmt.value.span
            return RoleLet(stmt.name.name, role, stmt.span.line, (v.column, v.end_column), parts, driver)
    return None


def _name_of(node) -> Optional[str]:
    return node.name if type(node).__name__ == "Name" else None


def _saturating(value, lines, kinds):
    """`A * X / (K + X)` in any order of factors and terms; A and K params or consts."""
    if type(value).__name__ != "BinOp" or value.op != "/":
        return None
    factors, terms = _factors(value.left), _terms(value.right)
    if len(factors) != 2 or len(terms) != 2:
        return None
    texts = [_text(lines, f.span) for f in factors]
    term_texts = [_text(lines, t.span) for t in terms]
    for i in (0, 1):
        x = texts[i]
        if x in term_texts:
            a, k = factors[1 - i], terms[1 - term_texts.index(x)]
            if kinds.get(_name_of(a)) in ("param", "const") and kinds.get(_name_of(k)) in ("param", "const"):
                driver = _name_of(factors[i]) or x
                return "saturating", {"A": _name_of(a), "K": _name_of(k), "X": x}, driver
    return None


def _flow_sources(model, let: str) -> set:
    """The source states of the flows whose rate is exactly this let (`flow S -> E = infection`)."""
    return {stmt.source.name for stmt in model.checked.program.statements
            if type(stmt).__name__ == "FlowEq" and stmt.source is not None and _name_of(stmt.rate) == let}


def _incidence(value, lines, kinds, sources=frozenset()):
    """`B * S * I / N` with S and I states and N a const, param or let. S is the state the
    incidence flows out of (so `beta * I * S / N` is read right); else the first in reading order."""
    if type(value).__name__ != "BinOp" or value.op != "/":
        return None
    factors = _factors(value.left)
    n = _name_of(value.right)
    names = [_name_of(f) for f in factors]
    if len(factors) != 3 or n is None or None in names:
        return None
    states = [x for x in names if kinds.get(x) == "state"]
    rates = [x for x in names if kinds.get(x) == "param"]
    if len(states) == 2 and len(rates) == 1:
        if states[1] in sources and states[0] not in sources:
            states.reverse()
        return "incidence", {"A": rates[0], "S": states[0], "I": states[1], "N": n}, states[1]
    return None


def law_siblings(model, role_let: RoleLet) -> list[tuple[str, str]]:
    """[(change in words, model text)] for every other law of the role."""
    source = model.checked.source
    lines = source.splitlines()
    params = {p.name: p for p in model.ir.params}
    units = {s.name: _declared_unit(s.decl, lines) for s in model.checked.table.symbols.values()}
    first, *others = LAWS[role_let.role]
    out = []
    for law in others:
        values = dict(role_let.parts, name=role_let.name)
        added = []
        ok = True
        for suffix, unit_kind, rule, bounds in law.new_params:
            new = f"{role_let.name}_{suffix}"
            values[f"{role_let.name}_{suffix}"] = new
            unit = {"1": "1", "X": units.get(role_let.parts.get("X")),
                    "N": units.get(role_let.parts.get("N"))}.get(unit_kind)
            default = _default(rule, params, role_let.parts)
            if unit is None or default is None:
                ok = False
                break
            lo, hi = bounds if bounds is not None else (default / 100, default * 100)
            added.append(f"param {new} [{unit}] = {default:.6g} in [{lo:.6g}, {hi:.6g}]"
                         f"  \"{law.name}: added by the agent\"")
        if not ok:
            continue
        expression = law.template.format(**values)
        row = role_let.line - 1
        start, end = role_let.value_columns
        new_lines = list(lines)
        new_lines[row] = lines[row][:start - 1] + expression + lines[row][end - 1:]
        text = "\n".join(new_lines + added) + "\n"
        out.append((f"{first.name.split(' /')[0]} -> {law.name} in let `{role_let.name}` "
                    f"(a standard-law sibling)", text))
    return out


def _declared_unit(decl, lines) -> Optional[str]:
    unit = getattr(decl, "unit", None)
    if unit is None or not hasattr(unit, "span"):
        return None
    try:
        return _text(lines, unit.span).strip("[] ")
    except ValueError:
        return None


def _default(rule: str, params: dict, parts: dict) -> Optional[float]:
    if rule == "10K":
        k = params.get(parts.get("K"))
        return 10 * float(k.default) if k is not None and k.default else None
    if rule == "N":
        n = params.get(parts.get("N"))
        return float(n.default) if n is not None and n.default else None
    return float(rule)


def _names_in(node) -> list[str]:
    """Every name used in an expression, in reading order."""
    found, stack = [], [node]
    while stack:
        current = stack.pop()
        kind = type(current).__name__
        if kind == "Name":
            found.append(current.name)
        elif kind == "Call":
            stack.extend(reversed(current.args))
        elif kind == "KernelRow":  # an expanded family sum: weight, entry, weight, entry, ...
            stack.extend(reversed([x for term in zip(current.weights, current.entries) for x in term]))
        else:  # pushed right first, so the left operand is read first
            for attribute in ("right", "left", "operand"):
                child = getattr(current, attribute, None)
                if child is not None:
                    stack.append(child)
    return found


def _calls_in(node) -> list:
    calls, stack = [], [node]
    while stack:
        current = stack.pop()
        if type(current).__name__ == "Call":
            calls.append(current)
            stack.extend(current.args)
        if type(current).__name__ == "KernelRow":
            stack.extend(current.weights + current.entries)
        for attribute in ("left", "right", "operand"):
            child = getattr(current, attribute, None)
            if child is not None:
                stack.append(child)
    return calls


def shape_lets(model) -> list[dict]:
    """The lets worth showing against their driver: a let of a standard role, and every let
    that holds a neural term (driver: the first state or let among the network's arguments)."""
    kinds = {s.name: s.kind for s in model.checked.table.symbols.values()}
    out = []
    role = find_role_let(model)
    if role is not None and kinds.get(role.driver) in ("state", "let"):
        out.append({"let": role.name, "driver": role.driver})
    for stmt in model.checked.program.statements:
        if type(stmt).__name__ != "LetDecl" or any(e["let"] == stmt.name.name for e in out):
            continue
        for call in _calls_in(stmt.value):
            if kinds.get(call.func.name) != "neural":
                continue
            drivers = [n for arg in call.args for n in _names_in(arg) if kinds.get(n) in ("state", "let")]
            if drivers:
                out.append({"let": stmt.name.name, "driver": drivers[0]})
                break
    return out
