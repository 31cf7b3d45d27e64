"""The whole-file generation grammars (`nimm_file.lark`, `nimm_file.gbnf`) and their one generated part.

Both grammars are written by hand, except the rule for a name: a name is any identifier that is not
a reserved word, and the list of reserved words lives in one place (`grammar.words.KEYWORDS`,
plus `inf`, which is a number). llguidance's Lark dialect can say "identifier and not one of
these words" directly (`&` and `~`); GBNF cannot, so its rule is spelled out as a trie of the words
(an identifier that leaves the trie early, or ends on a node that is not a word).

`python -m nimm_dsl.grammar.generation` rewrites the generated blocks in both files; a test
checks that they are up to date. Nothing here is needed at run time: the client reads the files.
"""
from __future__ import annotations

import string
from pathlib import Path

HERE = Path(__file__).parent
LARK_PATH = HERE / "nimm_file.lark"
GBNF_PATH = HERE / "nimm_file.gbnf"

_FIRST = frozenset(string.ascii_letters + "_")
_REST = frozenset(string.ascii_letters + string.digits + "_")
_BEGIN = "BEGIN generated: reserved words (python -m nimm_dsl.grammar.generation)"
_END = "END generated"


def reserved_words() -> frozenset[str]:
    """Words that may never be a name in generated text: the keywords and `inf`."""
    from .words import KEYWORDS

    return frozenset(KEYWORDS) | {"inf"}


def lark_name_rule(words=None) -> str:
    words = sorted(reserved_words() if words is None else words)
    return f"NAME: /[A-Za-z_][A-Za-z0-9_]*/ & ~/({'|'.join(words)})/"


def _char_class(chars) -> str:
    """`[...]` for a set of identifier characters, with runs written as ranges."""
    codes = sorted(ord(c) for c in chars)
    parts, i = [], 0
    while i < len(codes):
        j = i
        while j + 1 < len(codes) and codes[j + 1] == codes[j] + 1:
            j += 1
        first, last = chr(codes[i]), chr(codes[j])
        parts.append(first if i == j else f"{first}{last}" if j == i + 1 else f"{first}-{last}")
        i = j + 1
    return "[" + "".join(parts) + "]"


def gbnf_name_rule(words=None) -> str:
    """`name ::= ...`: identifiers [A-Za-z_][A-Za-z0-9_]* minus `words`, as a GBNF expression."""
    words = frozenset(reserved_words() if words is None else words)
    prefixes = {w[:i] for w in words for i in range(len(w) + 1)}

    def suffixes(prefix: str) -> str:
        # The suffixes s that make prefix + s a name that is not reserved (prefix is in the trie).
        allowed = _FIRST if prefix == "" else _REST
        children = sorted(c for c in allowed if prefix + c in prefixes)
        alternatives = []
        others = allowed - set(children)
        if others:
            alternatives.append(f"{_char_class(others)} name-rest")
        for c in children:
            alternatives.append(f'"{c}" {suffixes(prefix + c)}'.rstrip())
        body = "(" + " | ".join(alternatives) + ")"
        may_end_here = prefix != "" and prefix not in words
        return body + "?" if may_end_here else body

    return f"name ::= {suffixes('')}"


def _replace_block(text: str, rule: str, comment: str) -> str:
    begin, end = f"{comment} {_BEGIN}", f"{comment} {_END}"
    head, sep, rest = text.partition(begin + "\n")
    _old, sep2, tail = rest.partition(end)
    if not sep or not sep2:
        raise ValueError("generated-block markers not found")
    return f"{head}{begin}\n{rule}\n{end}{tail}"


def expected_lark(text: str) -> str:
    return _replace_block(text, lark_name_rule(), "//")


def expected_gbnf(text: str) -> str:
    return _replace_block(text, gbnf_name_rule(), "#")


def main() -> None:  # pragma: no cover - a maintenance command
    for path, expected in ((LARK_PATH, expected_lark), (GBNF_PATH, expected_gbnf)):
        text = path.read_text(encoding="utf-8")
        new = expected(text)
        if new != text:
            path.write_text(new, encoding="utf-8")
            print(f"rewrote {path}")


if __name__ == "__main__":  # pragma: no cover
    main()
