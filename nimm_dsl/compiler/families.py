"""Index families, written once, become one scalar statement per element (docs/language.md §4.1).

`index district = 1..12` declares an index; `state S[d in district] [person] = ...` a family
with one state per member, named `S[1]` ... `S[12]`; `flow S[d] -> I[d] = ...` one flow per
member; `sum(k in district, EXPR)` the sum of EXPR over the members; `flow T[s in 1..4] ->
T[s+1]` one flow per member of an inline set, each into the next stage (a shifted subscript must
land on a member: E352). This pass runs between the parser and the checker: it resolves every
subscript (E350-E356), reads `table(...)` values (E354, E355) and hands the checker an ordinary
program whose names happen to contain brackets. Each element keeps the span of the line it came
from, so every later diagnostic points at the family's line and names the element.

Sums become balanced trees of `+` (depth log2 N, so the checker's recursive walks stay shallow),
and lowering flattens them into one n-ary sum.

With `reduce`, each index keeps only the members that the text names (`I[3]`, the members of its
subsets) plus one member that it does not name, which stands for all the others: names, units and
structure do not depend on how many members an index has, so the checker runs on a model whose
size does not grow with the index (docs/architecture.md, "Checking families"; with shifted
subscripts, see `_Glue`). Whatever does depend on the members (a subscript outside its index,
subsets, table keys, the size caps) is still checked against the full index.
"""
from __future__ import annotations

import bisect
import csv
import io
import itertools
import math
from fractions import Fraction
from dataclasses import dataclass, field, fields, is_dataclass, replace
from pathlib import Path
from typing import Iterable, Optional

from ..diagnostics import Diagnostic, Span, closest, did_you_mean
from ..grammar import ast as A
from ..grammar.words import RESERVED
from .builtins import BUILTINS
from .fold import FoldError, fold

MAX_TABLE_BYTES = 20_000_000
MAX_ELEMENTS = 1_000_000  # elements of one statement (a 1000 x 1000 matrix)
MAX_TERMS = 2_000_000  # sum terms expanded for one statement: a nested sum must not hang the checker
# A sum over at least this many members whose terms split into a part that depends on the element
# and a part that does not becomes an A.KernelRow in the whole expansion; lowering builds sums from
# this length without sympy's normalisation (lower._sum), so a row lowers as its terms would
KERNEL_ROW_MIN = 16


@dataclass
class TableAccess:
    """Which files `table(...)` may read: only plain file names in `folder` (no path separators,
    no `..`), and, when `allowed` is not None, only those names (the agent passes the files its
    task provides, or an empty set to refuse every table)."""

    folder: Optional[Path]
    allowed: Optional[frozenset] = None

    def to_plain(self) -> dict:
        """As plain data, for a re-check in another process (the probe's child, an agent worker)."""
        return {"folder": None if self.folder is None else str(self.folder),
                "allowed": None if self.allowed is None else sorted(self.allowed)}

    @staticmethod
    def from_plain(entry: Optional[dict]) -> Optional["TableAccess"]:
        if entry is None:
            return None
        return TableAccess(None if entry["folder"] is None else Path(entry["folder"]),
                           None if entry["allowed"] is None else frozenset(entry["allowed"]))


NO_TABLES = TableAccess(None, frozenset())  # model text from a language model, by default


@dataclass
class FamilyInfo:
    """What the expansion found, for later phases: index members and each family's indexes."""

    indexes: dict[str, list[str]] = field(default_factory=dict)
    families: dict[str, list[str]] = field(default_factory=dict)  # name -> index per position
    lines: set = field(default_factory=set)  # first lines of the statements that were expanded
    failed: set = field(default_factory=set)  # declarations dropped for an error already reported
    failed_dynamics: set = field(default_factory=set)  # states whose der/flow line was dropped
    dropped: bool = False  # some line was dropped for an index error
    dropped_dynamics: bool = False  # among them a state, der or flow line
    # reduced check: a member kept for others the text does not name -> those members, itself first
    stands_for: dict = field(default_factory=dict)

    def follows_from_failure(self, d: Diagnostic) -> bool:
        """An `undefined name`, a state without dynamics, an unused declaration or an influence
        path that only says that a line with an index error was dropped (that line may have been
        the use or the path)."""
        if d.code in ("W701", "W702", "W704"):
            return self.dropped
        if d.code == "E201":
            return any(f"`{name}[" in d.message for name in self.failed)
        if d.code == "E301":
            return any(f"`{name}`" in d.message or f"`{name}[" in d.message for name in self.failed_dynamics)
        if d.code == "E303":  # `time` in a model "without states": its states were on dropped lines
            return self.dropped_dynamics and "without states" in d.message
        return False


def element_name(name: str, members: Iterable[str]) -> str:
    """`I[3]`, `C[2,5]`, `I[north]`: the one spelling used for results, CSV columns and data."""
    return f"{name}[{','.join(members)}]"


class _Fail(Exception):
    def __init__(self, code: Optional[str], span: Span, message: str, hint: Optional[str] = None):
        """code None: drop the statement silently (an error elsewhere already explains it)."""
        super().__init__(message)
        self.diagnostic = (code, span, message, hint)


_DECLS = (A.ConstDecl, A.ParamDecl, A.StateDecl, A.InputDecl, A.LetDecl, A.ObserveDecl)


class _Expander:
    def __init__(self, program: A.Program, file: str, tables: Optional[TableAccess], reduce: bool = False):
        self.file = file
        self.tables = tables
        self.info = FamilyInfo()
        self.diagnostics: list[Diagnostic] = []
        self.index_spans: dict[str, Span] = {}
        self.scalars: set[str] = set()
        for s in program.statements:
            if isinstance(s, A.IndexDecl):
                self._declare_index(s)
        for node in _nodes(program):  # inline sets (`s in 1..4`) are indexes named by their spelling
            if isinstance(node, A.Binder) and node.members is not None:
                self.info.indexes.setdefault(node.index.name, node.members)
        # the members each line and sum is expanded over; info.indexes keeps the full sets
        self.glue: Optional[_Glue] = None
        self.reduce = reduce
        self._rows_allowed = False  # inside an equation's right-hand side (see `dynamic`)
        self._kernels: dict[int, object] = {}  # IndexSum id -> (weight, entry) chains, or False
        self._kernel_entries: dict[int, tuple] = {}  # IndexSum id -> its entries, one per member
        self._weight_nodes: dict[tuple, object] = {}  # (weight, type, value) -> its number node, shared by rows
        if reduce:
            self.expanded, self.glue, self.info.stands_for = _reduced_members(self.info.indexes, program)
        else:
            self.expanded = self.info.indexes
        self._member_sets: dict[str, set] = {}
        self._warned_sums: set[int] = set()
        declared = [s for s in program.statements if type(s) in A.DECLARATION_KINDS]
        self.declared_names = {s.name.name for s in declared}
        self.broken: set[str] = set()  # families over an undeclared index (E350 on their line)
        for s in declared:
            family = getattr(s, "family", None)
            if family and all(b.index.name in self.info.indexes for b in family):
                self.info.families[s.name.name] = [b.index.name for b in family]
            elif family:
                self.broken.add(s.name.name)
            else:
                self.scalars.add(s.name.name)
        self.const_families = {s.name.name for s in declared if isinstance(s, A.ConstDecl) and s.family}
        for s in declared:
            if s.name.name in self.info.indexes:
                self._report("E202", s.name.span, f"`{s.name.name}` is already declared as an index",
                             "rename one of them")

    def _report(self, code, span, message, hint=None) -> None:
        self.diagnostics.append(Diagnostic(code, span, message, hint, self.file))

    def _declare_index(self, s: A.IndexDecl) -> None:
        name = s.name.name
        if name in RESERVED:
            self._report("E203", s.name.span, f"`{name}` is a reserved word and cannot name an index")
        elif name in self.info.indexes:
            self._report("E202", s.name.span, f"index `{name}` is declared twice")
        else:
            self.info.indexes[name] = s.members
            self.index_spans[name] = s.name.span

    # -- statements
    def run(self, program: A.Program) -> A.Program:
        out = A.Program([], program.unparsed)
        # top-level lines first, so that a scenario's `remove D` knows the elements of a dose family
        expanded = {id(s): self.statement(s) for s in program.statements
                    if not isinstance(s, (A.IndexDecl, A.ScenarioBlock))}
        for s in program.statements:
            if isinstance(s, A.ScenarioBlock):
                body = [x for b in s.body for x in self.statement(b)]
                out.statements.append(replace(s, body=body))
            elif not isinstance(s, A.IndexDecl):
                out.statements.extend(expanded[id(s)])
        return out

    def statement(self, s) -> list:
        try:
            if isinstance(s, A.RemoveStmt):
                return self.removals(s)
            variables = self.variables(s)
            self._env_index = {v: index for v, (index, _span) in variables.items()}
            self._shapes = {}  # per node of this line: (constant, varying), the same for every element
            self._scale = 1  # elements of the line times the sizes of the enclosing sums
            if not variables:
                return [self.instance(s, {})]
            names = list(variables)
            members = [self.expanded[variables[v][0]] for v in names]
            count = math.prod(len(self.info.indexes[variables[v][0]]) for v in names)
            self._scale = count
            if count > MAX_ELEMENTS:
                raise _Fail("E353", s.span, f"this line has {count} elements (at most {MAX_ELEMENTS})")
            self.info.lines.add(s.span.line)
            if isinstance(s, A.FlowEq):
                self._repeated_flow(s, variables)
            if isinstance(s, (A.SetStmt, A.DoseStmt)):
                self._every_member(s, variables)
            out = [self.instance(s, dict(zip(names, combo))) for combo in itertools.product(*members)]
            if isinstance(s, A.DoseStmt):
                self.dose_families.setdefault(s.name.name, []).extend(x.name.name for x in out)
            return out
        except _Fail as fail:
            self.info.dropped = True
            self.info.dropped_dynamics |= isinstance(s, (A.StateDecl, A.DerEq, A.FlowEq))
            if fail.diagnostic[0] is not None:
                self._report(*fail.diagnostic)
            if isinstance(s, _DECLS):
                self.info.failed.add(s.name.name)
            for t in _targets(s) if isinstance(s, (A.DerEq, A.FlowEq)) else ():
                self.info.failed_dynamics.add(t.name.name if isinstance(t, A.Element) else t.name)
            return []

    def _constant_sum(self, e: A.IndexSum) -> None:
        """W706, once per sum: terms that name quantities but not the sum's variable add the same
        term once per member (`sum(k in district, I[d])` for `I[k]`); a plain count such as
        `sum(k in district, 1)` is meant."""
        var = e.binder.var.name
        used = _names_in(e.body)
        if var in used or not used - {"pi"} or id(e) in self._warned_sums:
            return
        self._warned_sums.add(id(e))
        index = e.binder.index.name
        self._report("W706", e.binder.var.span, f"the terms of this sum do not use `{var}`: it adds the same term "
                                                f"once for each of the {len(self.info.indexes[index])} members of "
                                                f"`{index}`",
                     f"write `{var}` where the member should vary (`I[{var}]`, not `I[d]`), or multiply by the "
                     "count if that is meant")

    def _repeated_flow(self, s: A.FlowEq, variables: dict) -> None:
        """W705: a variable of only one end that the rate does not use repeats the same flow once
        per member (`flow S[a] -> E[b] = lambda[a] * S[a]`: each S[a] loses the rate once per b)."""
        ends = [_names_in(t) for t in (s.source, s.target)]
        used = _names_in(s.rate)
        for var, (index, span) in variables.items():
            if sum(var in e for e in ends) == 1 and var not in used:
                self._report("W705", span, f"the rate does not depend on `{var}`: this flow runs once for each "
                                           f"member of `{index}`, with the same rate each time",
                             f"use the same variable at both ends (`S[{var}] -> E[{var}]`), or make the rate "
                             f"depend on `{var}` (a matrix `C[.., {var}]`)")

    def _every_member(self, s, variables: dict) -> None:
        """W707: a target subscript that is no member (and close to none, else E352) is a variable
        over its index; when nothing else on the line uses it, the line acts alike on every member
        although it reads like one element (`set r[wolf] = ...` with no species `wolf`)."""
        target = _targets(s)[0]
        if not isinstance(target, A.Element):
            return
        rest = [s.value, s.start, s.end] if isinstance(s, A.SetStmt) else [s.amount, s.at, s.every, s.times]
        for sub in target.subscripts:
            if not isinstance(sub, A.Ident) or sub.name not in variables or variables[sub.name][1] != sub.span:
                continue  # a member, a binder (`[s in species]`: every member is meant) or a second use
            if sub.name in _names_in(rest + [x for x in target.subscripts if x is not sub]):
                continue  # `set beta[d] = 0.5 * beta[d]`, `set C[s, s] = 0`: the variable is meant
            index = variables[sub.name][0]
            members = self.info.indexes[index]
            acts = "sets" if isinstance(s, A.SetStmt) else "doses"
            self._report("W707", sub.span, f"`{sub.name}` is not a member of `{index}`, so it is a variable over "
                                           f"`{index}` and this line {acts} every member of `{index}` alike",
                         f"write `[{sub.name} in {index}]` if every member is meant, or name a member: "
                         + ", ".join(members[:5]) + (", ..." if len(members) > 5 else ""))

    def check_index(self, ident: A.Ident) -> list[str]:
        if ident.name not in self.info.indexes:
            raise _Fail("E350", ident.span, f"unknown index `{ident.name}`",
                        _hint_among(ident.name, self.info.indexes, "index"))
        return self.info.indexes[ident.name]

    def variables(self, s) -> dict[str, tuple[str, Span]]:
        """The statement's index variables: var -> (index name, span of its binder)."""
        found: dict[str, tuple[str, Span]] = {}

        def bind(var: A.Ident, index: str, span: Span) -> None:
            if var.name in found:
                raise _Fail("E356", var.span, f"index variable `{var.name}` is bound twice on this line",
                            "give each position its own variable: `C[d in district, k in district]`")
            found[var.name] = (index, span)

        if isinstance(s, _DECLS) and s.family:
            for b in s.family:
                self.check_index(b.index)
                bind(b.var, b.index.name, b.span)
            return found
        for target in _targets(s):
            if not isinstance(target, A.Element):
                continue
            indexes = self.family_indexes(target)
            for sub, index in zip(target.subscripts, indexes):
                if isinstance(sub, A.Shift):
                    continue  # its variable is bound by another subscript of the line (below)
                if isinstance(sub, A.Binder):
                    self.check_index(sub.index)
                    self.check_subset(sub.index.name, index, sub.index.span)
                    bind(sub.var, sub.index.name, sub.span)
                elif sub.name in found:
                    if not self.is_subset(found[sub.name][0], index):
                        raise _Fail("E353", sub.span, f"`{sub.name}` ranges over `{found[sub.name][0]}`, "
                                                      f"but this position of `{target.name.name}` is over `{index}`")
                elif sub.name not in self.info.indexes[index]:
                    # a name that is not a member of the position's index ranges over that index
                    if sub.name[0].isdigit():
                        raise _Fail("E352", sub.span, f"`{sub.name}` is not a member of index `{index}`",
                                    _members_hint(self.info.indexes[index]))
                    self._not_a_name(sub, index)
                    near = closest(sub.name, self.info.indexes[index]) if len(sub.name) >= 3 else None
                    if near is not None:  # a misspelt member would silently act on every member
                        raise _Fail("E352", sub.span, f"`{sub.name}` is not a member of index `{index}`; as a "
                                                      f"variable it would range over all of `{index}`",
                                    f"did you mean the member `{near}`? To range over every member, "
                                    f"bind it: `[{sub.name} in {index}]`")
                    bind(sub, index, sub.span)
        for target in _targets(s):
            if not isinstance(target, A.Element):
                continue
            for sub, index in zip(target.subscripts, self.family_indexes(target)):
                if isinstance(sub, A.Shift) and sub.var.name not in found:
                    raise _Fail("E352", sub.var.span, f"`{sub.var.name}` in `{target.name.name}[{_spelled(sub)}]` is "
                                                      "not bound on this line",
                                f"bind it in another subscript of the line: `[{sub.var.name} in {index}]`, "
                                "or an inline set of its members")
        return found

    def _not_a_name(self, sub: A.Ident, index: str) -> None:
        """E352 for an unbound subscript spelt like an index or a declared name: as a variable it
        would act on every member (`set c[treated] = ...` meaning the subset `treated`), and a
        variable named `beta` would hide the param `beta` on its line."""
        if sub.name == index:
            raise _Fail("E352", sub.span, f"`{index}` is the index itself, not a variable over it",
                        f"bind a variable to it: `[d in {index}]`, then write `d` in the other subscripts")
        if sub.name in self.index_spans:
            hint = (f"to act on the members of `{sub.name}`, bind a variable to it: `[d in {sub.name}]`"
                    if self.is_subset(sub.name, index) else
                    f"bind a variable over `{index}` or one of its subsets: `[d in {index}]`")
            raise _Fail("E352", sub.span, f"`{sub.name}` is an index, not a member of `{index}`; as a "
                                          f"variable it would range over all of `{index}`", hint)
        if sub.name in self.declared_names:
            raise _Fail("E352", sub.span, f"`{sub.name}` is a declared name, not a member of index `{index}`; "
                                          f"as a variable it would range over all of `{index}` and hide it",
                        f"name the variable otherwise: `[d in {index}]`")

    def family_indexes(self, e: A.Element) -> list[str]:
        name = e.name.name
        if name in self.broken:  # its declaration's error says it all
            raise _Fail(None, e.span, "")
        if name not in self.info.families:
            if name in self.scalars:
                raise _Fail("E351", e.span, f"`{name}` is not a family: it takes no subscripts",
                            f"write `{name}`, or declare it as a family: `{name}[d in INDEX]`")
            raise _Fail("E201", e.name.span, f"undefined name `{name}`")
        indexes = self.info.families[name]
        if len(e.subscripts) != len(indexes):
            raise _Fail("E351", e.span, f"`{name}` takes {len(indexes)} subscript{'s' if len(indexes) > 1 else ''} "
                                        f"(over {', '.join(indexes)}), found {len(e.subscripts)}")
        return indexes

    def is_subset(self, index: str, of: str) -> bool:
        return index == of or set(self.info.indexes[index]) <= set(self.info.indexes[of])

    def check_subset(self, index: str, of: str, span: Span) -> None:
        if not self.is_subset(index, of):
            missing = [m for m in self.info.indexes[index] if m not in set(self.info.indexes[of])]
            raise _Fail("E353", span, f"index `{index}` is not part of `{of}`: `{of}` has no member "
                                      f"`{missing[0]}`", f"use `{of}` or a subset of its members")

    def instance(self, s, env: dict[str, str]):
        """The statement for one assignment of its variables (env: var -> member)."""
        x = lambda e: self.expr(e, env) if e is not None else None  # noqa: E731
        if isinstance(s, _DECLS):
            name = s.name
            if s.family:
                name = A.Ident(element_name(name.name, (env[b.var.name] for b in s.family)), name.span)
            changes = {"name": name, "family": None}
            if isinstance(s, A.ConstDecl) and isinstance(s.value, A.TableRef):
                changes["value"] = self.table_value(s, env)
            elif isinstance(s, A.StateDecl):
                changes["init"] = x(s.init)
            elif isinstance(s, A.InputDecl):
                changes["default"] = x(s.default)
            elif isinstance(s, (A.LetDecl, A.ObserveDecl)):
                changes["value"] = self.dynamic(s.value, env)
            else:
                changes["value"] = x(s.value)
            if getattr(s, "bounds", None) is not None:
                changes["bounds"] = replace(s.bounds, lo=x(s.bounds.lo), hi=x(s.bounds.hi))
            if isinstance(s, A.ObserveDecl) and s.noise is not None:
                changes["noise"] = replace(s.noise, options=[self.option(o, env) for o in s.noise.options])
            return replace(s, **changes)
        if isinstance(s, A.DerEq):
            return replace(s, state=self.target(s.state, env), value=self.dynamic(s.value, env))
        if isinstance(s, A.FlowEq):
            return replace(s, source=self.target(s.source, env), target=self.target(s.target, env),
                           rate=self.dynamic(s.rate, env))
        if isinstance(s, A.SetStmt):
            return replace(s, target=self.target(s.target, env), value=x(s.value), start=x(s.start), end=x(s.end))
        if isinstance(s, A.DoseStmt):
            name = s.name
            if env:
                name = A.Ident(element_name(name.name, env.values()), name.span)
            return replace(s, name=name, state=self.target(s.state, env), amount=x(s.amount), at=x(s.at),
                           every=x(s.every), times=x(s.times))
        if isinstance(s, A.InputDecl) and s.default is not None:
            return replace(s, default=x(s.default))
        if isinstance(s, A.NeuralDecl):
            return replace(s, options=[self.option(o, env) for o in s.options])
        return s

    def removals(self, s: A.RemoveStmt) -> list:
        """`remove D` of a dose family removes every element's dose."""
        names = self.dose_families.get(s.name.name)
        if not names:
            return [s]
        return [A.RemoveStmt(A.Ident(n, s.name.span), s.span) for n in names]

    def option(self, o: A.Option, env) -> A.Option:
        if isinstance(o.value, A.ListValue):
            return replace(o, value=replace(o.value, items=[self.expr(i, env) for i in o.value.items]))
        return replace(o, value=self.expr(o.value, env))

    def target(self, t, env):
        if t is None or isinstance(t, A.Ident):
            if t is not None and t.name in self.info.families:
                raise _Fail("E351", t.span, f"`{t.name}` is a family over {', '.join(self.info.families[t.name])}: "
                                            "name its elements", f"write `{t.name}[d]` for every element")
            return t
        indexes = self.family_indexes(t)
        members = [self.shifted(sub, index, env, t.name.name) if isinstance(sub, A.Shift) else
                   self.member(sub.var if isinstance(sub, A.Binder) else sub, index, env, t.name.name)
                   for sub, index in zip(t.subscripts, indexes)]
        return A.Ident(element_name(t.name.name, members), t.span)

    def member(self, sub: A.Ident, index: str, env, family: str) -> str:
        if sub.name in env:
            return env[sub.name]
        if sub.name in self.info.indexes[index]:
            return sub.name
        raise _Fail("E352", sub.span, f"`{sub.name}` is neither an index variable in scope here nor a member "
                                      f"of `{index}` (the index of this position of `{family}`)",
                    did_you_mean(sub.name, self.info.indexes[index])
                    or f"bind it on the declaration (`[{sub.name} in {index}]`) or in a "
                       f"`sum({sub.name} in {index}, ...)`")

    def shifted(self, sub: A.Shift, index: str, env, family: str) -> str:
        """The member of `s+1`, `d-1`: the whole number `offset` away from the variable's member,
        which must be a member of the position's index (E352 names the first element without)."""
        var = sub.var.name
        if var not in env:
            raise _Fail("E352", sub.var.span, f"`{var}` in `{family}[{_spelled(sub)}]` is not an index variable in "
                                              "scope here", "bind it on the line (`[s in stage]`) or in a `sum(k in ...)`")
        member = env[var]
        if not member.isdigit():
            raise _Fail("E352", sub.span, f"`{var}` ranges over named members (`{member}`, ...): `{_spelled(sub)}` "
                                          "needs whole numbers", "shift only variables over whole-number indexes")
        value = int(member) + sub.offset
        if value < 0 or str(value) not in self.member_set(index):
            raise _Fail("E352", sub.span, f"at {var} = {member}, `{family}[{_spelled(sub)}]` is `{family}[{value}]`, "
                                          f"but index `{index}` has no member {value}", self._shift_hint(sub, index))
        if self.glue is not None:
            value = self.glue.stand_in(value, sub.offset)
        return str(value)

    def member_set(self, index: str) -> set:
        members = self._member_sets.get(index)
        if members is None:
            members = self._member_sets[index] = set(self.info.indexes[index])
        return members

    def _shift_hint(self, sub: A.Shift, index: str) -> str:
        """The members of the variable's range whose shifted member exists, as an inline set."""
        var = sub.var.name
        inside = self.member_set(index)
        fine = [m for m in self.info.indexes[self._env_index.get(var, index)]
                if m.isdigit() and str(int(m) + sub.offset) in inside]
        if not fine:
            return f"no member of `{var}`'s range has one: check the offset"
        values = [int(m) for m in fine]
        if values == list(range(values[0], values[0] + len(values))):
            return f"limit the line to the members where it exists: `{var} in {values[0]}..{values[-1]}`"
        if len(fine) <= 6:
            return f"limit the line to the members where it exists: `{var} in [{', '.join(fine)}]`"
        return f"limit the line to the members where it exists ({', '.join(fine[:6])}, ...): an index of them"

    # -- expressions
    def dynamic(self, e, env):
        """An equation's right-hand side (a let, observe, der or flow): the only place where a
        long sum becomes an A.KernelRow, and only in the whole expansion (the reduced one is
        checked as written; consts, bounds and event times fold as before)."""
        saved, self._rows_allowed = self._rows_allowed, not self.reduce
        try:
            return self.expr(e, env)
        finally:
            self._rows_allowed = saved

    def expr(self, e, env):
        node, constant, varying = self._expr(e, env)
        return _folded(node) if constant and varying else node

    def _expr(self, e, env):
        """(node, constant, varying): `constant` when the subtree holds only unannotated numbers,
        index values and built-ins; `varying` when it uses an index value. Constant parts that
        vary with the index are folded here, once per element (`exp(-abs(d - k))` becomes one
        number), so a family's equations stay as small as the scalar ones."""
        if isinstance(e, A.Number):
            return e, e.unit is None, False
        if self._shape(e, env) == (True, True) and not isinstance(e, A.Name):
            number = self._fold_in(e, env)  # most of a dense kernel: no tree built per element
            if number is not None:
                return number, True, True
        if isinstance(e, A.Name):
            if e.name in env:
                return self.variable_value(e, env), True, True
            if e.name in self.broken:
                raise _Fail(None, e.span, "")
            if e.name in self.info.families:
                raise _Fail("E351", e.span, f"`{e.name}` is a family over {', '.join(self.info.families[e.name])}: "
                                            "it needs subscripts", f"write `{e.name}[d]`, or sum it: "
                                                                   f"`sum(k in {self.info.families[e.name][0]}, {e.name}[k])`")
            return e, e.name == "pi", False
        if isinstance(e, A.Element):
            indexes = self.family_indexes(e)
            members = []
            for sub, index in zip(e.subscripts, indexes):
                if isinstance(sub, A.Shift):
                    members.append(self.shifted(sub, index, env, e.name.name))
                    continue
                var_index = self._env_index.get(sub.name)
                if sub.name in env and var_index is not None and not self.is_subset(var_index, index):
                    raise _Fail("E353", sub.span, f"`{sub.name}` ranges over `{var_index}`, but this position "
                                                  f"of `{e.name.name}` is over `{index}`")
                members.append(self.member(sub, index, env, e.name.name))
            return A.Name(element_name(e.name.name, members), e.span), False, False
        if isinstance(e, A.IndexSum):
            var, index = e.binder.var.name, e.binder.index
            if var in env:
                raise _Fail("E356", e.binder.var.span, f"index variable `{var}` is already bound here",
                            "use another name for the sum's variable")
            members = self.check_index(index)
            self._constant_sum(e)
            outer = self._scale
            if outer * len(members) > MAX_TERMS:  # refused before any work, however deep the nesting
                raise _Fail("E353", e.span, f"this line expands to {outer * len(members)} terms "
                                            f"(at most {MAX_TERMS})", "split it into lets, one per family")
            self._scale = outer * len(members)
            saved = self._env_index.get(var)
            self._env_index[var] = index.name
            try:
                row = self._kernel_row(e, env) if self._rows_allowed else None
                if row is not None:
                    return row, False, False
                terms = [self.expr(e.body, {**env, var: m}) for m in self.expanded[index.name]]
            finally:
                self._scale = outer
                if saved is None:
                    self._env_index.pop(var, None)
                else:
                    self._env_index[var] = saved
            return _balanced_sum(terms, e.span), False, False
        if isinstance(e, A.TableRef):
            raise _Fail("E354", e.span, "`table(...)` gives the values of a const family and stands alone",
                        "write `const pop[d in district] [person] = table(\"districts.csv\", pop)`")
        if isinstance(e, A.Call):
            parts = [self._expr(a, env) for a in e.args]
            constant = e.func.name in BUILTINS and all(p[1] for p in parts)
            varying = any(p[2] for p in parts)
            args = [p[0] if constant or not (p[1] and p[2]) else _folded(p[0]) for p in parts]
            return A.Call(e.func, args, e.span), constant, varying
        if isinstance(e, (A.BinOp, A.Compare, A.BoolOp)):
            left, right = self._expr(e.left, env), self._expr(e.right, env)
            constant, varying = left[1] and right[1], left[2] or right[2]
            l, r = left[0], right[0]
            if not constant:
                l = _folded(l) if left[1] and left[2] else l
                r = _folded(r) if right[1] and right[2] else r
            return type(e)(e.op, l, r, e.span), constant, varying
        if isinstance(e, A.UnaryOp):
            operand, constant, varying = self._expr(e.operand, env)
            return A.UnaryOp(e.op, operand, e.span), constant, varying
        return e, False, False

    def _kernel_row(self, e: A.IndexSum, env) -> Optional[A.KernelRow]:
        """This element's row of `e` as an A.KernelRow, or None to expand it term by term. The
        entries are expanded once per line and shared by its elements; each element folds only
        its weights (docs/architecture.md, "Checking families")."""
        var, members = e.binder.var.name, self.expanded[e.binder.index.name]
        if len(members) < KERNEL_ROW_MIN:
            return None
        split = self._kernels.get(id(e))
        if split is None:
            split = self._kernels[id(e)] = self._kernel_split(e, env, members[0]) or False
        if not split:
            return None
        weight, entry = split
        entries = self._kernel_entries.get(id(e))
        if entries is None:
            entries = self._kernel_entries[id(e)] = tuple(self.expr(entry, {**env, var: m}) for m in members)
        return A.KernelRow(self._weights(weight, env, var, members), entries, e.span)

    def _weights(self, weight, env, var: str, members: list[str]) -> tuple:
        """The weight of each member, as `expr` gives it; a constant over whole-number index
        values is folded straight (10^6 of them at N = 1000), one number node per value."""
        at = {**env, var: members[0]}
        if (isinstance(weight, A.Name) or self._shape(weight, at) != (True, True) or "pi" in at or "inf" in at
                or not all(v.isdigit() for v in env.values()) or not all(m.isdigit() for m in members)):
            return tuple(self.expr(weight, {**env, var: m}) for m in members)
        names = lambda name: self._member_value(at[name])  # noqa: E731
        out = []
        for m in members:
            at[var] = m
            try:
                value = fold(weight, names=names, memo=self._folds)
            except FoldError:
                value = None
            if value is None or isinstance(value, bool):  # the tree, for the checker to report on
                out.append(self.expr(weight, dict(at)))
                continue
            key = (id(weight), type(value), value)  # per line: a node keeps its line's span
            node = self._weight_nodes.get(key)
            if node is None:
                node = self._weight_nodes[key] = _number_node(value, weight.span)
            out.append(node)
        return tuple(out)

    def _kernel_split(self, e: A.IndexSum, env, member: str) -> Optional[tuple]:
        """(weight, entry) of the sum's product of factors: the weight the factors that use a
        variable bound outside the sum, each a constant over index values (it folds to a number
        per element) or an element of a const family (`C[d, k]`); the entry the other factors,
        in their order, not all constant. None when the body is not such a product."""
        outer = set(env)
        if not outer:
            return None  # the same sum for every element: nothing to share
        body_env = {**env, e.binder.var.name: member}
        weight, entry = [], []
        for op, factor in _factors(e.body):
            (weight if _names_in(factor) & outer else entry).append((op, factor))
        if not weight or not entry or all(self._shape(f, body_env)[0] for _, f in entry):
            return None
        if not all(self._shape(f, body_env) == (True, True) or self._const_element(f) for _, f in weight):
            return None
        return _product_of(weight, e.body.span), _product_of(entry, e.body.span)

    def _const_element(self, e) -> bool:
        return (isinstance(e, A.Element) and e.name.name in self.const_families
                and all(isinstance(sub, (A.Ident, A.Shift)) for sub in e.subscripts))

    _env_index: dict
    _shapes: dict

    def _shape(self, e, env) -> tuple[bool, bool]:
        """(constant, varying) of a subtree, as `_expr` finds them, without building anything;
        remembered per node, as every element of the line has the same."""
        shape = self._shapes.get(id(e))
        if shape is None:
            if isinstance(e, A.Number):
                shape = (e.unit is None, False)
            elif isinstance(e, A.Name):
                shape = (True, True) if e.name in env else (e.name == "pi", False)
            elif isinstance(e, A.Call):
                parts = [self._shape(a, env) for a in e.args]
                shape = (e.func.name in BUILTINS and all(p[0] for p in parts), any(p[1] for p in parts))
            elif isinstance(e, (A.BinOp, A.Compare, A.BoolOp)):
                left, right = self._shape(e.left, env), self._shape(e.right, env)
                shape = (left[0] and right[0], left[1] or right[1])
            elif isinstance(e, A.UnaryOp):
                shape = self._shape(e.operand, env)
            else:
                shape = (False, False)
            self._shapes[id(e)] = shape
        return shape

    def _fold_in(self, e, env):
        """A constant subtree over index values as one number node for this element, folded with
        the index variables' values; None when it has no number value (then the tree is built and
        left to the checker, as before)."""
        if "pi" in env or "inf" in env or not all(m.isdigit() for m in env.values()):
            return None  # the slow path reports a named member's missing value at its token
        try:
            value = fold(e, names=lambda name: self._member_value(env[name]), memo=self._folds)
        except FoldError:
            return None
        if value is None or isinstance(value, bool):
            return None
        return _number_node(value, e.span)

    def _member_value(self, member: str) -> int:
        """A whole-number member's value for `fold`: an int, exact like a Fraction, and its
        differences (`d - k`, 10^6 of them in a 1000-member kernel) cost a tenth as much."""
        value = self._member_values.get(member)
        if value is None:
            value = self._member_values[member] = int(member)
        return value

    def variable_value(self, e: A.Name, env) -> A.Number:
        member = env[e.name]
        if not member.isdigit():
            raise _Fail("E352", e.span, f"`{e.name}` ranges over named members (`{member}`, ...): it has no "
                                        "numeric value", "use it as a subscript only")
        return A.Number(float(member), member, None, e.span)

    # -- table(...)
    def table_value(self, s: A.ConstDecl, env):
        values = self._tables.get(id(s))
        if values is None:
            values = self._tables[id(s)] = self.read_table(s)
        key = tuple(env[b.var.name] for b in s.family)
        v = values[key]
        span = s.value.span
        number = A.Number(abs(v), repr(abs(v)), None, span)
        return A.UnaryOp("-", number, span) if v < 0 else number

    _tables: dict

    def read_table(self, s: A.ConstDecl) -> dict:
        ref: A.TableRef = s.value
        name = ref.file
        if "/" in name or "\\" in name or ".." in name or name.startswith(".") or not name:
            raise _Fail("E354", ref.span, f"table file `{name}` must be a plain file name beside the model "
                                          "(no folders, no `..`)", "put the CSV file in the model's folder")
        access = self.tables
        if access is None or access.folder is None:
            raise _Fail("E354", ref.span, f"`table(\"{name}\")` needs the model's folder",
                        "load the model from its file (nimm_dsl.load, or the nimm command)")
        if access.allowed is not None and name not in access.allowed:
            raise _Fail("E354", ref.span, f"table file `{name}` is not one this model may read",
                        "only files that the task provides: " + (", ".join(sorted(access.allowed)) or "none"))
        path = access.folder / name
        try:
            if not path.is_file() or path.is_symlink():
                raise _Fail("E354", ref.span, f"table file `{name}` is not in the model's folder ({access.folder})")
            if path.stat().st_size > MAX_TABLE_BYTES:
                raise _Fail("E354", ref.span, f"table file `{name}` is larger than {MAX_TABLE_BYTES} bytes")
            text = path.read_bytes().decode("utf-8-sig", errors="replace")
        except OSError as error:
            raise _Fail("E354", ref.span, f"table file `{name}` cannot be read ({error.strerror})") from None
        rows = list(csv.reader(io.StringIO(text)))
        if not rows:
            raise _Fail("E355", ref.span, f"table file `{name}` is empty")
        header = [h.strip() for h in rows[0]]
        column = ref.column.name if ref.column is not None else s.name.name
        if column not in header:
            raise _Fail("E355", ref.span, f"table file `{name}` has no column `{column}`",
                        "its columns: " + ", ".join(header))
        positions = []
        indexes = [b.index.name for b in s.family]
        for b in s.family:
            # an index at two positions (`C[d in district, k in district]`): its name cannot say
            # which, so each key column is named by its variable (else a matrix could be read
            # transposed without a word)
            twice = indexes.count(b.index.name) > 1
            for candidate in (b.var.name,) if twice else (b.var.name, b.index.name):
                if candidate in header and header.index(candidate) not in positions:
                    positions.append(header.index(candidate))
                    break
            else:
                hint = (f"the index `{b.index.name}` keys two positions: name the key columns by the variables "
                        f"({', '.join(f'`{x.var.name}`' for x in s.family)})" if twice
                        else f"name a column `{b.index.name}` (or `{b.var.name}`)")
                raise _Fail("E355", ref.span, f"table file `{name}` has no key column for `{b.var.name} in "
                                              f"{b.index.name}`", hint)
        members = [set(self.info.indexes[b.index.name]) for b in s.family]
        value_col = header.index(column)
        values: dict[tuple, float] = {}
        for row_no, row in enumerate(rows[1:], start=2):
            if not any(cell.strip() for cell in row):
                continue
            cells = [row[p].strip() if p < len(row) else "" for p in positions]
            key = tuple(str(int(c)) if c.isdigit() else c for c in cells)
            for k, allowed, b in zip(key, members, s.family):
                if k not in allowed:
                    raise _Fail("E355", ref.span, f"{name}, row {row_no}: `{k}` is not a member of index "
                                                  f"`{b.index.name}`", _members_hint(self.info.indexes[b.index.name]))
            if key in values:
                raise _Fail("E355", ref.span, f"{name}, row {row_no}: a second row for {element_name(s.name.name, key)}")
            cell = row[value_col].strip() if value_col < len(row) else ""
            try:
                v = float(cell)
            except ValueError:
                v = math.nan
            if not math.isfinite(v):
                raise _Fail("E355", ref.span, f"{name}, row {row_no}, column `{column}`: `{cell}` is not a finite number")
            values[key] = v
        wanted = itertools.product(*(self.info.indexes[b.index.name] for b in s.family))
        missing = [k for k in wanted if k not in values]
        if missing:
            raise _Fail("E355", ref.span, f"table file `{name}` has no row for {element_name(s.name.name, missing[0])}"
                                          + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""),
                        "every member of the index needs a row")
        return values


def _targets(s) -> list:
    if isinstance(s, A.DerEq):
        return [s.state]
    if isinstance(s, A.FlowEq):
        return [t for t in (s.source, s.target) if t is not None]
    if isinstance(s, A.SetStmt):
        return [s.target]
    if isinstance(s, A.DoseStmt):
        return [s.state]
    return []


def _folded(node):
    """A constant subtree as one number (exact values stay exact); left alone when it has no
    number value (a comparison, a domain error that the checker will report as E504)."""
    if isinstance(node, A.Number):
        return node
    try:
        value = fold(node)
    except FoldError:
        return node
    if value is None or isinstance(value, bool):
        return node
    return _number_node(value, node.span)


def _number_node(value, span: Span):
    """A folded value as a tree: a number, negated when below zero, a quotient when a fraction."""
    magnitude = abs(value)
    if isinstance(magnitude, Fraction) and magnitude.denominator != 1:
        number = A.BinOp("/", _number(magnitude.numerator, span), _number(magnitude.denominator, span), span)
    else:
        number = _number(magnitude, span)
    return A.UnaryOp("-", number, span) if value < 0 else number


def _number(value, span: Span) -> A.Number:
    if isinstance(value, Fraction):
        value = value.numerator
    text = str(value) if isinstance(value, int) else repr(float(value))
    return A.Number(float(value), text, None, span)


def _factors(e) -> list[tuple[str, object]]:
    """A chain of `*` and `/` as its factors in order, each with the operator before it (`*` for
    the first): `a * b / c` is [(*, a), (*, b), (/, c)]; a parenthesised product is one factor."""
    out = []
    while isinstance(e, A.BinOp) and e.op in "*/":
        out.append((e.op, e.right))
        e = e.left
    out.append(("*", e))
    out.reverse()
    return out


def _product_of(factors: list[tuple[str, object]], span: Span):
    """The chain of `_factors` again (a leading `/ c` as `1 / c`)."""
    op, first = factors[0]
    node = first if op == "*" else A.BinOp("/", A.Number(1.0, "1", None, span), first, span)
    for op, factor in factors[1:]:
        node = A.BinOp(op, node, factor, span)
    return node


def _balanced_sum(terms: list, span: Span):
    if len(terms) == 1:  # a sum of one member (a reduced index) is still the sum, at the sum's place
        return replace(terms[0], span=span) if is_dataclass(terms[0]) and hasattr(terms[0], "span") else terms[0]
    while len(terms) > 1:
        paired = [A.BinOp("+", terms[i], terms[i + 1], span) for i in range(0, len(terms) - 1, 2)]
        if len(terms) % 2:
            paired.append(terms[-1])
        terms = paired
    return terms[0]


def _members_hint(members: list[str]) -> str:
    shown = ", ".join(members[:5]) + (", ..." if len(members) > 5 else "")
    return f"its members: {shown}"


def _hint_among(name: str, names, what: str) -> Optional[str]:
    return did_you_mean(name, list(names)) if names else f"declare it: `index {name} = 1..10`"


def _spelled(sub: A.Shift) -> str:
    return f"{sub.var.name}{'+' if sub.offset >= 0 else '-'}{abs(sub.offset)}"


def _names_in(node) -> set[str]:
    """Every name and subscript variable written in a subtree (targets, expressions)."""
    found, stack = set(), [node]
    while stack:
        n = stack.pop()
        if isinstance(n, list):
            stack.extend(n)
        elif isinstance(n, (A.Ident, A.Name)):
            found.add(n.name)
        elif is_dataclass(n) and not isinstance(n, Span):
            stack.extend(getattr(n, f.name) for f in fields(n) if f.name != "members")
    return found


def _nodes(program: A.Program) -> Iterable:
    """Every node of the tree below the statements (idents and spans excepted; not into the
    member lists of indexes and inline sets, which hold only text)."""
    stack: list = list(program.statements)
    while stack:
        node = stack.pop()
        if isinstance(node, list):
            stack.extend(node)
        elif is_dataclass(node) and not isinstance(node, (A.Ident, Span)):
            yield node
            stack.extend(getattr(node, f.name) for f in fields(node) if f.name != "members")


def _literal_subscripts(program: A.Program) -> set[str]:
    """Every subscript written as a plain name or number anywhere in the text (`I[3]`, `C[d, north]`)."""
    return {sub.name for node in _nodes(program) if isinstance(node, A.Element)
            for sub in node.subscripts if isinstance(sub, A.Ident)}


def _reduced_members(indexes: dict[str, list[str]], program: A.Program) -> tuple[dict, Optional["_Glue"], dict]:
    """Per index, in its order: the members the text names, and one member for each set of
    indexes that share members (`north` inside `district`: one member in `north`, one outside).
    Every other element behaves like the one that stands for its set, which is the same member
    whichever index a line ranges over, so subsets and their parents keep matching elements.
    Also: each standing member -> the members it stands for (itself first), where more than one.

    Shifted subscripts (`T[s+1]`) tie each element to its neighbours, so whole-number members
    are then kept differently (`_Glue`); named members as above."""
    named = _literal_subscripts(program)
    holders: dict[str, list[str]] = {}
    for index, members in indexes.items():
        for m in members:
            holders.setdefault(m, []).append(index)
    standing: set[str] = set()
    seen: set[tuple] = set()
    # the first unnamed member of each set of indexes, in declaration order: a named member
    # behaves as the text says for it, so it cannot stand for the members the text leaves alone
    for m, owners in holders.items():
        if m not in named and tuple(owners) not in seen:
            seen.add(tuple(owners))
            standing.add(m)
    reach = max((abs(n.offset) for n in _nodes(program) if isinstance(n, A.Shift)), default=0)
    glue = _Glue(indexes, named, reach) if reach else None

    def kept(m: str) -> bool:
        if glue is not None and m.isdigit():
            return int(m) in glue.kept
        return m in named or m in standing

    classes: dict[str, list[str]] = {}
    for m, owners in holders.items():
        if m not in named and not (glue is not None and m.isdigit()):
            classes.setdefault(tuple(owners), []).append(m)
    stands_for = {members[0]: members for members in classes.values() if len(members) > 1}
    if glue is not None:
        stands_for.update(glue.stands_for())
    return {index: [m for m in members if kept(m)] for index, members in indexes.items()}, glue, stands_for


class _Glue:
    """The reduced check's whole-number members when subscripts are shifted by up to `reach`.

    Each whole-number index is a few runs of consecutive numbers; the places where something
    changes (the ends of every run of every index and inline set, the members the text names)
    are its landmarks. Members within 2 * reach of a landmark are kept; in the long stretches
    between, every member sees the same sets within `reach` on either side, so the middle of each
    stretch is cut out and its two kept ends are glued: a shift that lands in a cut stretch lands
    as far past the cut instead. The reduced model is then the whole one over a shorter index with
    the same landmarks, and checks alike: every element keeps the same kinds of neighbours."""

    def __init__(self, indexes: dict[str, list[str]], named: set[str], reach: int):
        landmarks: set[int] = {int(m) for m in named if m.isdigit()}
        numbers: set[int] = set()
        for members in indexes.values():
            if not members or not all(m.isdigit() for m in members):
                continue
            values = sorted(int(m) for m in members)
            numbers.update(values)
            for i, v in enumerate(values):  # the ends of each run of consecutive numbers
                if i == 0 or values[i - 1] != v - 1 or i == len(values) - 1 or values[i + 1] != v + 1:
                    landmarks.add(v)
        width = 2 * reach
        self.kept: set[int] = {v for mark in landmarks for v in range(mark - width, mark + width + 1)
                               if v in numbers}
        self._sorted = sorted(self.kept)
        self._numbers = numbers

    def stands_for(self) -> dict[str, list[str]]:
        """Each kept member before a cut stretch -> itself and the stretch's members: 2 * reach
        from every landmark, it sees what they see (a diagnostic of one holds for them all)."""
        found: dict[str, list[str]] = {}
        for v in sorted(self._numbers - self.kept):
            i = bisect.bisect_left(self._sorted, v)
            if i:  # always: an index's ends are landmarks
                found.setdefault(str(self._sorted[i - 1]), [str(self._sorted[i - 1])]).append(str(v))
        return found

    def stand_in(self, value: int, offset: int) -> int:
        """`value` if kept; else, for a shift that ran into a cut stretch, the member as far
        past the cut (forwards for a positive offset, backwards for a negative one)."""
        if value in self.kept:
            return value
        i = bisect.bisect_left(self._sorted, value)
        if not 0 < i < len(self._sorted):  # cannot happen: an index's ends are landmarks
            return value
        before, after = self._sorted[i - 1], self._sorted[i]  # the kept ends of the cut stretch
        if offset > 0:
            return after + (value - before - 1)
        return before - (after - 1 - value)


def expand_families(program: A.Program, file: str, tables: Optional[TableAccess] = None, reduce: bool = False):
    """(scalar program, diagnostics, FamilyInfo); `reduce`: expand over the members that stand for
    all (see the module docstring), for checking."""
    x = _Expander(program, file, tables, reduce)
    x._env_index = {}
    x._scale = 1
    x._tables = {}
    x._folds = {}  # fold's memo: the index values' constant subtrees, over the whole expansion
    x._member_values = {}
    x.dose_families = {}
    return x.run(program), x.diagnostics, x.info
