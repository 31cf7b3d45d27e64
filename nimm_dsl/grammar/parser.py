"""Text -> typed syntax tree (`ast.Program`) plus E100 diagnostics; never raises.

Three steps, each robust on its own:

1. `split_statements` cuts the file into logical statements: one per line, except that newlines
   inside ( ) and [ ] join lines. It tracks comments and strings, refuses absurd bracket nesting
   and reports unclosed brackets at the opening bracket.
2. Each logical statement is parsed on its own by Lark's LALR parser (grammar in `nimm.lark`),
   and `_Builder`, a non-recursive Lark transformer made for that statement, turns the tree
   into AST nodes with file positions. A syntax error in one statement never hides the others.
3. `_assemble` groups `scenario` ... `end` into `ScenarioBlock`s.

Nothing is cached on disk: Lark's table cache is a pickle, and building the tables takes about
50 ms once per process (docs/architecture.md).
"""
from __future__ import annotations

import re
from collections import deque
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Iterator, Optional

from lark import Lark, Token
from lark.exceptions import LarkError, UnexpectedCharacters, UnexpectedInput, UnexpectedToken, VisitError
from lark.lark import PostLex
from lark.visitors import Transformer_NonRecursive

from . import ast as A
from ..diagnostics import Diagnostic
from .words import KEYWORDS, STATEMENT_KEYWORDS
SCENARIO_STATEMENTS = (A.DoseStmt, A.SetStmt, A.RemoveStmt)

MAX_BRACKET_DEPTH = 100  # deeper nesting is refused before parsing
MAX_EXPRESSION_DEPTH = 200  # keeps every later recursive tree walk far from Python's limit
MAX_STATEMENT_CHARS = 20_000  # a logical statement longer than this is refused unparsed
MAX_DIAGNOSTICS = 200  # then one final "too many errors; stopping"
MAX_SOURCE_CHARS = 500_000  # ~10,000 lines, far beyond any real model; keeps parse() to seconds
MAX_UNIT_POWER = 64  # unit exponents, written (`[km^3]`) or computed (`x^3`): the checker uses it too
MAX_CONTINUATION_LINES = 10  # how far a statement broken across lines (outside brackets) is followed

_GRAMMAR_PATH = Path(__file__).with_name("nimm.lark")


@dataclass
class _InlineMembers:
    """`[a, b, c]` as written: the member idents and the span of the brackets."""

    members: list
    span: A.Span


class _Problem(Exception):
    """A syntax error found while building nodes (raised inside the LALR reductions)."""

    def __init__(self, span: A.Span, message: str, hint: Optional[str] = None):
        super().__init__(message)
        self.span, self.message, self.hint = span, message, hint


# ---------------------------------------------------------------- step 1: logical statements
@dataclass
class LogicalStatement:
    """The text of one statement: `source[line_offset:end]`, starting at a line start so that
    Lark's columns are the file's columns."""

    first_line: int  # 1-based line of the first character
    line_offset: int  # offset of the start of that physical line
    start: int  # offset of the first character of the statement
    end: int  # offset one past its last non-blank, non-comment character
    end_line: int
    end_column: int  # one past the last character (1-based)
    first_word: str  # the leading word (`param`, `scenario`, `end`, ...) or ''
    problems: list[Diagnostic] = field(default_factory=list)  # found while splitting: not parsed

    @property
    def span(self) -> A.Span:
        return A.Span(self.first_line, self.start - self.line_offset + 1, self.end_line, self.end_column)


_INTERESTING = re.compile(r'[()\[\]"#]')
_FIRST_WORD = re.compile(r"[ \t\r]*([A-Za-z_][A-Za-z0-9_]*)?")


def split_statements(source: str, file: str = "<model>") -> Iterator[LogicalStatement]:
    """Cut `source` into logical statements (see the module docstring), lazily, so that a
    caller that stops early does not pay for the rest of a huge file."""
    current: Optional[LogicalStatement] = None
    open_brackets: list[tuple[str, int, int]] = []  # (char, line, column)
    line_no = 0
    line_start = 0
    length = len(source)

    def unclosed(stmt: LogicalStatement) -> None:
        char, line, column = open_brackets[-1]
        stmt.problems.append(Diagnostic(
            "E100", A.Span(line, column, line, column + 1), f"`{char}` is never closed",
            f"add the matching `{')' if char == '(' else ']'}`", file))
        open_brackets.clear()

    while line_start <= length:
        line_no += 1
        newline = source.find("\n", line_start)
        line_end = length if newline < 0 else newline
        first = _FIRST_WORD.match(source, line_start, line_end)
        word = first.group(1) or ""
        if current is not None and open_brackets and word in STATEMENT_KEYWORDS:
            unclosed(current)
            yield current
            current = None
        # Scan the line: brackets outside strings and comments, and where its code ends.
        code_end = line_end
        position = line_start
        while True:
            match = _INTERESTING.search(source, position, line_end)
            if match is None:
                break
            char = match.group()
            position = match.end()
            if char == "#":
                code_end = match.start()
                break
            if char == '"':
                closing = source.find('"', position, line_end)
                position = line_end if closing < 0 else closing + 1
                continue
            if current is None:  # the statement starts on this line
                current = _begin(source, line_no, line_start, line_end, word)
            if char in "([":
                open_brackets.append((char, line_no, match.start() - line_start + 1))
                if len(open_brackets) == MAX_BRACKET_DEPTH + 1 and not current.problems:
                    column = match.start() - line_start + 1
                    current.problems.append(Diagnostic(
                        "E100", A.Span(line_no, column, line_no, column + 1),
                        f"expression nested too deeply (more than {MAX_BRACKET_DEPTH} levels of brackets)",
                        "split it into several `let` lines", file))
            elif open_brackets:
                open_brackets.pop()
        stripped_end = len(source[line_start:code_end].rstrip(" \t\r")) + line_start
        if stripped_end > line_start:
            if current is None:
                current = _begin(source, line_no, line_start, line_end, word)
            current.end = stripped_end
            current.end_line = line_no
            current.end_column = stripped_end - line_start + 1
        if current is not None and not open_brackets:
            yield current
            current = None
        if newline < 0:
            break
        line_start = newline + 1
    if current is not None:
        if open_brackets:
            unclosed(current)
        yield current


def _begin(source: str, line_no: int, line_start: int, line_end: int, word: str) -> LogicalStatement:
    text = source[line_start:line_end]
    indent = len(text) - len(text.lstrip(" \t\r"))
    start = line_start + indent
    return LogicalStatement(line_no, line_start, start, start, line_no, indent + 1, word)


# ---------------------------------------------------------------- step 2: one statement
class _NamesEverywhere(PostLex):
    """Lets the contextual lexer see NAME in every state, so keywords are whole words only
    (`modelx` is a name, never `model` + `x`) and a misplaced word lexes as a name."""

    always_accept = ("NAME",)

    def process(self, stream):
        return stream


@dataclass
class _End:
    """The `end` line of a scenario block."""

    span: A.Span


class _Builder(Transformer_NonRecursive):
    """Lark tree of one statement -> AST node, bottom-up and without recursion (a 20,000-term sum
    is a deep tree). Made per statement: `line_offset` turns Lark's statement-relative lines into
    file lines, and `statement_span` is the span of every statement node."""

    def __init__(self, line_offset: int, statement_span: A.Span):
        super().__init__()
        self.line_offset = line_offset
        self.statement_span = statement_span

    def _span(self, tok: Token) -> A.Span:
        off = self.line_offset
        return A.Span(tok.line + off, tok.column, tok.end_line + off, tok.end_column)

    # --- names and small pieces
    def ident(self, c):
        return A.Ident(str(c[0]), self._span(c[0]))

    def ref(self, c):
        return self._reference(c[0])

    def _reference(self, tok: Token) -> A.Ident:
        if tok in KEYWORDS:
            raise _Problem(self._span(tok), f"unexpected keyword `{tok}`: expected a name",
                           "keywords are reserved and cannot be used as names")
        return A.Ident(str(tok), self._span(tok))

    def doc(self, c):
        return str(c[0])[1:-1]

    def parameters(self, c):
        return list(c)

    def arguments(self, c):
        return list(c)

    def options(self, c):
        return list(c)

    # --- statements
    def model_decl(self, c):
        return A.ModelDecl(c[0], c[1], self.statement_span)

    def time_decl(self, c):
        return A.TimeDecl(c[0], c[1], self.statement_span, c[2])

    def unit_decl(self, c):
        return A.UnitDecl(c[0], c[1], c[2], self.statement_span)

    def const_decl(self, c):
        return A.ConstDecl(c[0], c[2], c[3], c[4], self.statement_span, c[1])

    def param_decl(self, c):
        return A.ParamDecl(c[0], c[2], c[3], c[4], c[6], self.statement_span, c[1], per_series=c[5] is not None)

    def per_series(self, c):
        return True

    def state_decl(self, c):
        return A.StateDecl(c[0], c[2], c[3], c[4], c[5], self.statement_span, c[1])

    def input_decl(self, c):
        return A.InputDecl(c[0], c[2], c[3], c[4] or "step", c[5], self.statement_span, c[1])

    def interp(self, c):
        return str(c[0])

    def let_decl(self, c):
        return A.LetDecl(c[0], c[2], c[3], c[4], self.statement_span, c[1])

    def neural_decl(self, c):
        name, _lpar, params, _rpar, unit, kind, options = c
        return A.NeuralDecl(name, params or [], unit, kind, options[0] if options else [],
                            self.statement_span)

    def index_decl(self, c):
        name, members, doc = c
        texts, numeric = self._index_set(members)
        return A.IndexDecl(name, texts, numeric, doc, self.statement_span)

    def _index_set(self, members) -> tuple[list[str], bool]:
        """The members of `1..12` (an INDEX_RANGE token) or of `[a, b]` (member idents), and
        whether they are whole numbers: an index declaration and an inline set alike."""
        if isinstance(members, Token):
            lo, hi = (int(x) for x in str(members).split(".."))
            if hi < lo:
                raise _Problem(self._span(members), f"empty index range `{members}`: the first number must not exceed the second")
            if hi - lo >= 100_000:
                raise _Problem(self._span(members), f"index range `{members}` is too large (at most 100000 members)")
            return [str(k) for k in range(lo, hi + 1)], True
        members = members.members
        texts = [m.name for m in members]
        seen: set = set()
        for m in members:
            if m.name in seen:
                raise _Problem(m.span, f"member `{m.name}` is listed twice")
            seen.add(m.name)
        numeric = all(t.isdigit() for t in texts)
        if not numeric and any(t[0].isdigit() for t in texts):
            bad = next(m for m in members if m.name[0].isdigit())
            raise _Problem(bad.span, "an index's members are all names or all whole numbers")
        return texts, numeric

    def index_members(self, c):
        members = list(c[1:-1])
        members_span = self._span(c[0]).to(self._span(c[-1]))
        return _InlineMembers(members, members_span)

    def index_member(self, c):
        return self._member(c[0])

    def _member(self, tok: Token) -> A.Ident:
        if tok.type == "NUMBER" and not str(tok).isdigit():
            raise _Problem(self._span(tok), f"`{tok}` is not a member: members are names or whole numbers")
        if tok.type == "NUMBER":
            return A.Ident(str(int(str(tok))), self._span(tok))
        return self._reference(tok)

    def family(self, c):
        return list(c[1:-1])

    def binder(self, c):
        var, where = self._reference(c[0]), c[1]
        if isinstance(where, Token) and where.type == "NAME":
            index = self._reference(where)
            return A.Binder(var, index, var.span.to(index.span))
        # an inline set: `s in 1..4`, `d in [2, 5, 7]`, named by its own spelling
        if isinstance(where, Token):
            members, _numeric = self._index_set(where)
            index = A.Ident(str(where).replace(" ", "").replace("\t", ""), self._span(where))
        else:
            members, _numeric = self._index_set(where)
            index = A.Ident("[" + ", ".join(m.name for m in where.members) + "]", where.span)
        return A.Binder(var, index, var.span.to(index.span), members)

    def sub_shift(self, c):
        var, op, number = self._reference(c[0]), c[1], c[2]
        if not str(number).isdigit():
            raise _Problem(self._span(number), f"`{var.name}{op}{number}`: a subscript moves by a whole number",
                           f"write `{var.name}{op}1`, `{var.name}{op}2`, ...")
        offset = int(str(number)) * (-1 if str(op) == "-" else 1)
        return A.Shift(var, offset, var.span.to(self._span(number)))

    def sub_name(self, c):
        return self._reference(c[0])

    def sub_number(self, c):
        return self._member(c[0])

    def subscripts(self, c):
        return list(c[1:-1]), self._span(c[-1])

    def element(self, c):
        return list(c[1:-1]), self._span(c[-1])

    def target(self, c):
        ident, subs = self._reference(c[0]), c[1]
        if subs is None:
            return ident
        return A.Element(ident, subs[0], ident.span.to(subs[1]))

    def indexed(self, c):
        ident, (subs, end) = self._reference(c[0]), c[1]
        return A.Element(ident, subs, ident.span.to(end))

    def index_sum(self, c):
        _lpar, binder, body, rpar = c
        return A.IndexSum(binder, body, binder.span.to(self._span(rpar)))

    def table_call(self, c):
        lpar, file, column, rpar = c
        return A.TableRef(str(file)[1:-1], self._reference(column) if column is not None else None,
                          self._span(file).to(self._span(rpar)))

    def der_eq(self, c):
        return A.DerEq(c[0], c[1], self.statement_span)

    def flow_eq(self, c):
        return A.FlowEq(c[0], c[2], c[3], self._span(c[1]), self.statement_span)

    def observe_decl(self, c):
        return A.ObserveDecl(c[0], c[2], c[3], c[4], self.statement_span, c[1])

    def dose_stmt(self, c):
        name, state, op, amount, at, every, times = c
        return A.DoseStmt(name, state, str(op), amount, at, every, times, self.statement_span)

    def table_dose_stmt(self, c):
        name, unit, state, op, amount, _data = c
        return A.DoseStmt(name, state, str(op), amount, None, None, None, self.statement_span, unit=unit)

    def set_stmt(self, c):
        return A.SetStmt(c[0], c[1], c[2], c[3], self.statement_span)

    def remove_stmt(self, c):
        return A.RemoveStmt(c[0], self.statement_span)

    def scenario_head(self, c):
        return A.ScenarioBlock(c[0], c[1], [], self.statement_span, None)

    def scenario_end(self, c):
        return _End(self.statement_span)

    # --- parts of statements
    def bounds(self, c):
        lsqb, lo, hi, rsqb = c
        return A.Bounds(lo, hi, self._span(lsqb).to(self._span(rsqb)))

    def option_list(self, c):
        lpar, options, rpar = c
        return options or [], self._span(rpar)

    def noise(self, c):
        kind, options = c
        if options is None:
            return A.Noise(kind, [], kind.span)
        return A.Noise(kind, options[0], kind.span.to(options[1]))

    def option(self, c):
        name, value = c
        return A.Option(name, value, name.span.to(value.span))

    def list_value(self, c):
        lsqb, items, rsqb = c
        return A.ListValue(items or [], self._span(lsqb).to(self._span(rsqb)))

    # --- units
    def unit(self, c):
        return c[0]

    def unit_mul(self, c):
        return A.UnitMul(c[0], c[1], c[0].span.to(c[1].span))

    def unit_div(self, c):
        return A.UnitDiv(c[0], c[1], c[0].span.to(c[1].span))

    def unit_pow(self, c):
        base, (exponent, end) = c
        return A.UnitPow(base, exponent, base.span.to(end))

    def unit_name(self, c):
        return A.UnitName(str(c[0]), self._span(c[0]))

    def unit_one(self, c):
        tok = c[0]
        if _fraction(tok) != 1:
            raise _Problem(self._span(tok), f"unexpected number `{tok}` in a unit: only `1` (dimensionless) may stand alone",
                           f"put the factor before the unit, as in `{tok} [cell]`")
        return A.UnitOne(self._span(tok))

    def unit_group(self, c):
        lpar, inner, rpar = c
        inner.span = self._span(lpar).to(self._span(rpar))
        return inner

    def unit_exponent(self, c):
        if c[0] is not None and c[0].type == "LPAR":
            _lpar, minus, numerator, denominator, rpar = c
            end = rpar
        else:
            minus, numerator = c
            denominator = None
            end = numerator
        value = _fraction(numerator)
        if denominator is not None:
            if _fraction(denominator) == 0:
                raise _Problem(self._span(denominator), "division by zero in a unit exponent")
            value /= _fraction(denominator)
        if minus is not None:
            value = -value
        if abs(value.numerator) > MAX_UNIT_POWER or value.denominator > MAX_UNIT_POWER:
            raise _Problem(self._span(numerator), f"unit exponent `{value}` is out of range "
                                                  f"(at most {MAX_UNIT_POWER} in size)")
        return value, self._span(end)

    # --- expressions
    def bool_or(self, c):
        return A.BoolOp("or", c[0], c[1], c[0].span.to(c[1].span))

    def bool_and(self, c):
        return A.BoolOp("and", c[0], c[1], c[0].span.to(c[1].span))

    def unary(self, c):
        op, operand = c
        return A.UnaryOp(str(op), operand, self._span(op).to(operand.span))

    def unary_plus(self, c):
        plus, operand = c
        operand.span = self._span(plus).to(operand.span)
        return operand

    def compare(self, c):
        return A.Compare(str(c[1]), c[0], c[2], c[0].span.to(c[2].span))

    def binop(self, c):
        return A.BinOp(str(c[1]), c[0], c[2], c[0].span.to(c[2].span))

    def name(self, c):
        ident = self._reference(c[0])
        return A.Name(ident.name, ident.span)

    def call(self, c):
        func, _lpar, args, rpar = c
        ident = self._reference(func)
        return A.Call(ident, args or [], ident.span.to(self._span(rpar)))

    def group(self, c):
        lpar, inner, rpar = c
        inner.span = self._span(lpar).to(self._span(rpar))
        return inner

    def number(self, c):
        tok, _lsqb, unit, rsqb = c
        span = self._span(tok)
        value = float("inf") if tok.type == "INF" else float(tok)
        return A.Number(value, str(tok), unit, span.to(self._span(rsqb)) if rsqb is not None else span)


def _fraction(tok: Token) -> Fraction:
    return Fraction(str(tok))


_parser: Optional[Lark] = None


def get_parser() -> Lark:
    """The LALR parser, built once per process (~50 ms of grammar analysis; no disk cache)."""
    global _parser
    if _parser is None:  # two threads racing here both build an identical parser: harmless
        _parser = Lark(
            _GRAMMAR_PATH.read_text(encoding="utf-8"),
            parser="lalr",
            lexer="contextual",
            postlex=_NamesEverywhere(),
            maybe_placeholders=True,
        )
    return _parser


def _parse_statement(stmt: LogicalStatement, source: str, file: str):
    """One logical statement -> (node or None, diagnostics)."""
    if stmt.problems:
        return None, stmt.problems
    if stmt.end - stmt.start > MAX_STATEMENT_CHARS:
        span = A.Span(stmt.first_line, stmt.span.column, stmt.first_line, stmt.span.column + 1)
        return None, [Diagnostic("E100", span, f"statement too long ({stmt.end - stmt.start} characters; "
                                               f"the limit is {MAX_STATEMENT_CHARS})",
                                 "split it into several `let` lines", file)]
    return _parse_recovering(source[stmt.line_offset:stmt.end], stmt, file)


def _parse_recovering(text: str, stmt: LogicalStatement, file: str):
    node, problems = _parse_text(text, stmt, file)
    if node is None and "**" in text:
        node, problems = _recover_double_star(text, stmt, file, node, problems)
    return node, problems


_DOUBLE_STAR = re.compile(r'"[^"\n]*"|#[^\n]*|\*\*')


def _recover_double_star(text: str, stmt: LogicalStatement, file: str, node, problems):
    """`x ** 2` is a common slip for `x^2`: report each `**` and, when the statement parses with
    `^` in their place, keep it, so that its names are not reported as undefined or unused."""
    stars = [m.start() for m in _DOUBLE_STAR.finditer(text) if m.group() == "**"]
    if not stars:
        return node, problems
    patched = list(text)
    for i in stars:
        patched[i:i + 2] = "^ "  # same length: every span stays right
    recovered, still = _parse_text("".join(patched), stmt, file)
    if recovered is None:
        return node, problems
    diagnostics = []
    for i in stars:
        line = stmt.first_line + text.count("\n", 0, i)
        column = i - (text.rfind("\n", 0, i) + 1) + 1
        diagnostics.append(Diagnostic("E100", A.Span(line, column, line, column + 2),
                                      "unexpected `**`: the power operator is `^`",
                                      "write `x^2`, not `x**2`", file))
    return recovered, diagnostics


def _parse_text(text: str, stmt: LogicalStatement, file: str):
    """Lark on one statement's text -> (node or None, diagnostics)."""
    try:
        tree = get_parser().parse(text)
        node = _Builder(stmt.first_line - 1, stmt.span).transform(tree)
    except VisitError as error:
        problem = error.orig_exc
        if not isinstance(problem, _Problem):
            raise
        return None, [Diagnostic("E100", problem.span, problem.message, problem.hint, file)]
    except UnexpectedInput as error:
        return None, [_describe(error, stmt, file, text)]
    except LarkError as error:  # defensive: any other parser failure is still a diagnostic
        return None, [Diagnostic("E100", stmt.span, f"cannot parse this statement ({error})", None, file)]
    # Each tree level spans at least one character of its own, so short text cannot be deep.
    deep = _too_deep(node) if len(text) > MAX_EXPRESSION_DEPTH else None
    if deep is not None:
        return None, [Diagnostic("E100", deep, f"expression nested too deeply (more than {MAX_EXPRESSION_DEPTH} levels)",
                                 "split it into several `let` lines", file)]
    return node, []


def _too_deep(root) -> Optional[A.Span]:
    """The span of the first node deeper than MAX_EXPRESSION_DEPTH, without recursion."""
    stack = [(root, 0)]
    while stack:
        node, depth = stack.pop()
        if depth > MAX_EXPRESSION_DEPTH:
            return node.span
        for value in vars(node).values():
            if isinstance(value, list):
                stack.extend((item, depth + 1) for item in value if hasattr(item, "__dataclass_fields__"))
            elif hasattr(value, "__dataclass_fields__") and not isinstance(value, A.Span):
                stack.append((value, depth + 1))
    return None


# ---------------------------------------------------------------- readable syntax errors
_READABLE = {
    "NAME": "a name",
    "NUMBER": "a number",
    "STRING": "a description in quotes",
    "COMPARE": "a comparison",
    "DOSE_OP": "`+=` or `*=`",
    "ADD_OP": "`+`/`-`",
    "MUL_OP": "`*`/`/`",
    "$END": "the end of the statement",
}
_VALUE_TERMINALS = ("NAME", "NUMBER", "INF", "LPAR", "MINUS", "PLUS", "NOT", "SUM", "TABLE")
_OPERATOR_TERMINALS = frozenset({"ADD_OP", "MUL_OP", "POW", "COMPARE", "AND", "OR"})
_GROUPS = {"<expression>": "an expression (a number, a name or `(`)", "<operator>": "an operator"}
_MAX_EXPECTED = 6


def _terminal_text(name: str) -> str:
    if name in _READABLE:
        return _READABLE[name]
    pattern = _terminal_patterns().get(name)
    return f"`{pattern}`" if pattern is not None else name.lower()


_PATTERNS: Optional[dict] = None


def _terminal_patterns() -> dict:
    """Terminal name -> its literal text, for the terminals that are plain strings."""
    global _PATTERNS
    if _PATTERNS is None:
        _PATTERNS = {t.name: t.pattern.value for t in get_parser().terminals if t.pattern.type == "str"}
    return _PATTERNS


def _expected_text(expected) -> str:
    """A readable, ordered, capped list: values, operators, punctuation, keywords, the end."""
    expected = set(expected)
    operators = expected & _OPERATOR_TERMINALS
    if len(operators) > 1:
        expected -= operators
        expected.add("<operator>")
    if {"NAME", "NUMBER", "LPAR"} <= expected:
        expected -= set(_VALUE_TERMINALS)
        expected.add("<expression>")

    def rank(name: str):
        if name in _VALUE_TERMINALS:
            return (0, _VALUE_TERMINALS.index(name), name)
        if name in _GROUPS:
            return (1, 0, name)
        if name == "$END":
            return (5, 0, name)
        if name == "STRING":
            return (4, 0, name)
        text = _terminal_text(name).strip("`")
        return (3 if text.isalpha() else 2, 0, text)

    texts = list(dict.fromkeys(_GROUPS.get(n) or _terminal_text(n)
                               for n in sorted(expected, key=rank)))
    if len(texts) > _MAX_EXPECTED:
        texts = texts[:_MAX_EXPECTED - 1] + ["..."]
    if len(texts) == 1:
        return texts[0]
    return ", ".join(texts[:-1]) + " or " + texts[-1]


def _show(text: str, limit: int = 40) -> str:
    text = text if len(text) <= limit else text[:limit] + "…"
    return "".join(ch if ch.isprintable() else f"\\u{ord(ch):04x}" for ch in text)


def _found_text(tok: Token) -> str:
    if tok.type == "NAME":
        return f"keyword `{tok}`" if tok in KEYWORDS else f"name `{_show(tok)}`"
    if tok.type == "NUMBER":
        return f"number `{_show(tok)}`"
    if tok.type == "STRING":
        return f"description `{_show(tok)}`"
    if tok in KEYWORDS:
        return f"keyword `{tok}`"
    return f"`{_show(tok)}`"


def _acceptable(error: UnexpectedToken) -> set:
    """The terminals that could really come next. LALR merges states, so `error.expected` may
    list tokens that no statement allows here; the interactive parser tries each one."""
    try:
        accepted = error.interactive_parser.accepts()
    except (LarkError, AttributeError, KeyError):
        accepted = set()
    return accepted or set(error.expected)


# `dG/dt =` or `d(G)/dt =` at the start of a statement: a derivative written as in a textbook.
_DERIVATIVE = re.compile(r"(d[ \t]*(\([ \t]*)?([A-Za-z_]\w*)[ \t]*(?(2)\))[ \t]*/[ \t]*d[ \t]*[A-Za-z_]\w*)[ \t]*=")


def _describe(error: UnexpectedInput, stmt: LogicalStatement, file: str, text: str) -> Diagnostic:
    offset = stmt.first_line - 1
    if isinstance(error, UnexpectedCharacters):
        line, column = error.line + offset, error.column
        char = error.char
        span = A.Span(line, column, line, column + 1)
        if char == '"':
            return Diagnostic("E100", span, "unterminated string: a description must end with `\"` on the same line",
                              None, file)
        shown = _show(char)
        code = f" (U+{ord(char):04X})" if not char.isprintable() or char != shown else ""
        return Diagnostic("E100", span, f"unexpected character `{shown}`{code}", None, file)
    assert isinstance(error, UnexpectedToken)
    tok = error.token
    expected = _acceptable(error)
    if tok.type == "$END":
        span = A.Span(stmt.end_line, stmt.end_column, stmt.end_line, stmt.end_column + 1)
        return Diagnostic("E100", span, f"unexpected end of statement: expected {_expected_text(expected)}",
                          None, file)
    span = A.Span(tok.line + offset, tok.column, tok.end_line + offset, tok.end_column)
    found = _found_text(tok)
    if tok == "*" and "**" in (text[tok.start_pos - 1:tok.start_pos + 1], text[tok.start_pos:tok.start_pos + 2]):
        first = tok.column - 1 if text[tok.start_pos - 1:tok.start_pos] == "*" else tok.column
        return Diagnostic("E100", A.Span(span.line, first, span.line, first + 2),
                          "unexpected `**`: the power operator is `^`", "write `x^2`, not `x**2`", file)
    if tok.start_pos == stmt.start - stmt.line_offset:  # the statement's first word
        derivative = _DERIVATIVE.match(text, tok.start_pos)
        if derivative is not None:
            written, state = derivative.group(1), derivative.group(3)
            end = tok.column + len(written)
            return Diagnostic("E100", A.Span(span.line, tok.column, span.line, end),
                              f"unexpected `{written}`: a time derivative is written `der({state})`",
                              f"write `der({state}) = ...`", file)
        if tok.type == "NAME" and tok not in KEYWORDS:
            hint = f"did you mean `let {tok} = ...`?"
        else:  # most likely the rest of the previous line
            hint = "a statement continues on the next line only inside ( ) or [ ]"
        return Diagnostic("E100", span, f"unexpected {found}: a statement starts with a keyword such as "
                                        "`param`, `state`, `let`, `der` or `flow`", hint, file)
    hint = None
    if tok.type == "COMPARE" and "COMPARE" not in expected:
        hint = "comparisons cannot be chained: combine them with `and`"
    elif stmt.first_word == "der" and tok.type == "NAME" and "LPAR" in expected:
        hint = f"write `der({tok}) = ...`"
    return Diagnostic("E100", span, f"unexpected {found}: expected {_expected_text(expected)}", hint, file)


# ---------------------------------------------------------------- step 3: the whole file
def parse(source: str, file: str = "<model>") -> tuple[A.Program, list[Diagnostic]]:
    """Parse a whole `.nimm` text. Never raises: syntax errors come back as E100 diagnostics,
    and the Program holds every statement that parsed."""
    diagnostics: list[Diagnostic] = []
    parsed: list[tuple[LogicalStatement, object]] = []
    too_large = None
    if len(source) > MAX_SOURCE_CHARS:  # read whole lines up to the limit, report the rest
        source = source[:source.rfind("\n", 0, MAX_SOURCE_CHARS) + 1]
        line = source.count("\n") + 1
        too_large = Diagnostic("E100", A.Span(line, 1, line, 2),
                               f"file too large: more than {MAX_SOURCE_CHARS} characters; "
                               f"stopped reading at line {line}", "split the model", file)
    statements = _Lookahead(split_statements(source, file))
    for stmt in statements:
        node, problems = _parse_statement(stmt, source, file)
        continued = _continued(stmt, statements, source, file)
        if continued is not None:
            stmt, node, problems = continued
        diagnostics += problems
        parsed.append((stmt, node))
        if len(diagnostics) >= MAX_DIAGNOSTICS:
            break
    program = _assemble(parsed, diagnostics, file)
    if len(diagnostics) > MAX_DIAGNOSTICS:
        diagnostics = diagnostics[:MAX_DIAGNOSTICS]
    if len(diagnostics) == MAX_DIAGNOSTICS:
        diagnostics.append(Diagnostic("E100", diagnostics[-1].span, "too many errors; stopping", None, file))
    elif too_large is not None:
        diagnostics.append(too_large)
    return program, diagnostics


class _Lookahead:
    """An iterator of statements that can look ahead without consuming."""

    def __init__(self, statements: Iterator[LogicalStatement]):
        self._statements = statements
        self._ahead: deque[LogicalStatement] = deque()

    def __iter__(self):
        return self

    def __next__(self) -> LogicalStatement:
        return self._ahead.popleft() if self._ahead else next(self._statements)

    def peek(self, k: int) -> Optional[LogicalStatement]:
        """The k-th statement after the current one (0: the next), or None at the end."""
        while len(self._ahead) <= k:
            following = next(self._statements, None)
            if following is None:
                return None
            self._ahead.append(following)
        return self._ahead[k]

    def skip(self, n: int) -> None:
        for _ in range(n):
            self._ahead.popleft()


_FIRST_TOKEN = re.compile(r"[A-Za-z_]\w*|(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?|->|\+=|\*=|<=|>=|==|!=|\*\*|\S")


def _continued(first: LogicalStatement, statements: _Lookahead, source: str, file: str):
    """A statement broken across lines outside brackets, as (joined statement, node, [E100]).

    The lines after `first` that cannot start a statement (their first word is no statement
    keyword: `+ k * G`, `r * H`, `in [0, 1]`) are tried as its continuation; when the joined text
    parses, one E100 at the first continuation line says so (with the fix), the statement is
    kept, and the errors each line would have on its own are dropped. The longest such join wins
    (`a +` / `b -` / `c` only parses as a whole). None when no join parses."""
    if first.first_word not in STATEMENT_KEYWORDS or first.first_word in ("scenario", "end") or first.problems:
        return None
    last, best = first, None
    for k in range(MAX_CONTINUATION_LINES):
        following = statements.peek(k)
        if (following is None or following.problems or following.first_word in STATEMENT_KEYWORDS
                or following.first_line != last.end_line + 1):
            break
        last = following
        joined = LogicalStatement(first.first_line, first.line_offset, first.start, last.end, last.end_line,
                                  last.end_column, first.first_word)
        text = source[joined.line_offset:joined.end]
        node, problems = _parse_recovering(text, joined, file)
        if node is not None:
            best = k, joined, node, problems, text
    if best is None:
        return None
    k, joined, node, problems, text = best
    statements.skip(k + 1)
    return joined, node, [_continuation(first, (first.end_line + 1, joined.end_line), node, text, file), *problems]


def _continuation(first: LogicalStatement, lines: tuple[int, int], node, text: str, file: str) -> Diagnostic:
    """The E100 for a statement continued outside brackets, with the fix as a hint."""
    starts = [0] + [i + 1 for i, ch in enumerate(text) if ch == "\n"]

    def offset(line: int, column: int) -> int:
        return starts[line - first.first_line] + column - 1

    line_start = starts[lines[0] - first.first_line]
    line_end = text.find("\n", line_start)
    line_text = text[line_start:] if line_end < 0 else text[line_start:line_end]
    indent = len(line_text) - len(line_text.lstrip(" \t\r"))
    token = _FIRST_TOKEN.match(line_text, indent)
    width = token.end() - token.start() if token else 1
    span = A.Span(lines[0], indent + 1, lines[0], indent + 1 + width)
    which = f"line {lines[0]} continues" if lines[0] == lines[1] else f"lines {lines[0]}-{lines[1]} continue"
    message = (f"unexpected `{_show(token.group() if token else line_text.strip())}`: {which} the statement "
               f"of line {first.first_line}, but a statement ends with its line unless a bracket is open")
    expression = next((v for v in vars(node).values()
                       if isinstance(v, (A.BinOp, A.UnaryOp, A.Call, A.Compare, A.BoolOp, A.Name, A.Number))
                       and v.span.line < lines[0] <= v.span.end_line), None)
    body = text[starts[0] + first.start - first.line_offset:]
    if expression is not None:
        s = offset(expression.span.line, expression.span.column) - (first.start - first.line_offset)
        e = offset(expression.span.end_line, expression.span.end_column) - (first.start - first.line_offset)
        fixed = body[:s] + "(" + body[s:e] + ")" + body[e:]
        hint = "wrap the expression in parentheses: `{}`"
    else:
        fixed = body
        hint = "write the statement on one line: `{}`"
    fixed = re.sub(r"[ \t\r]*\n[ \t\r]*", " ", fixed)
    if len(fixed) > 80:
        fixed = fixed[:38] + " … " + fixed[-38:]
    return Diagnostic("E100", span, message, hint.format(fixed), file)


def _assemble(parsed, diagnostics: list[Diagnostic], file: str) -> A.Program:
    """Nest the statements between `scenario` and `end` into their ScenarioBlock.

    The block structure follows each statement's first word, so a header or `end` line with a
    syntax error still opens or closes its block. A statement that may not stand in a scenario
    closes an unterminated block if no `end` follows before the next header (a forgotten `end`);
    otherwise it is reported as misplaced.
    """
    program = A.Program()
    # For each position: does an `end` come before the next `scenario` header (or the file end)?
    end_follows = [False] * len(parsed)
    seen_end = False
    for i in range(len(parsed) - 1, -1, -1):
        word = parsed[i][0].first_word
        if word == "end":
            seen_end = True
        elif word == "scenario":
            seen_end = False
        end_follows[i] = seen_end

    block: Optional[A.ScenarioBlock] = None
    header: Optional[LogicalStatement] = None  # the open block's header line

    def never_closed() -> None:
        name = f" `{block.name.name}`" if block is not None else ""
        span = _first_word_span(header)
        diagnostics.append(Diagnostic("E100", span, f"scenario{name} is never closed with `end`",
                                      "add a line `end` after its last `dose`/`set`/`remove` line", file))

    for i, (stmt, node) in enumerate(parsed):
        word = stmt.first_word
        if word == "scenario":
            if header is not None:
                never_closed()
            header, block = stmt, node if isinstance(node, A.ScenarioBlock) else None
            if block is not None:
                program.statements.append(block)
            continue
        if word == "end":
            if header is None:
                diagnostics.append(Diagnostic("E100", _first_word_span(stmt), "`end` without an open `scenario`",
                                              None, file))
            elif block is not None and isinstance(node, _End):
                block.end_span = node.span
            elif block is not None:  # an `end` line with trailing garbage (already reported)
                block.end_span = _first_word_span(stmt)
            header = block = None
            continue
        if header is not None and not isinstance(node, SCENARIO_STATEMENTS) and word not in ("dose", "set", "remove"):
            if end_follows[i]:
                what = f"`{word}`" if word else "this statement"
                name = f" `{block.name.name}`" if block is not None else ""
                diagnostics.append(Diagnostic(
                    "E100", _first_word_span(stmt),
                    f"{what} is not allowed inside scenario{name}: a scenario holds only `dose`, `set` and `remove` lines",
                    "move it above the `scenario` line", file))
            else:
                never_closed()
                header = block = None
        if node is None:
            program.unparsed.append(stmt.span)
            continue
        if isinstance(node, _End):
            continue
        if header is not None:
            if block is not None and isinstance(node, SCENARIO_STATEMENTS):
                block.body.append(node)
            elif block is None and isinstance(node, SCENARIO_STATEMENTS):
                program.unparsed.append(stmt.span)  # the header did not parse: no block to join
            else:
                program.statements.append(node)
        else:
            program.statements.append(node)
    if header is not None:
        never_closed()
    return program


def _first_word_span(stmt: LogicalStatement) -> A.Span:
    column = stmt.start - stmt.line_offset + 1
    width = max(1, len(stmt.first_word))
    return A.Span(stmt.first_line, column, stmt.first_line, column + width)
