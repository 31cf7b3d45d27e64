"""The language's word lists (LANGUAGE.md §2, §6): one place that the parser, the checker and
the language-model prompts all read. What each built-in function does is compiler/builtins.py."""
from __future__ import annotations

KEYWORDS = frozenset(
    "model time unit param const state input let neural der flow observe dose set scenario end "
    "remove in at every times from to and or not index sum table".split()
)
BUILTIN_FUNCTIONS = frozenset("exp log log10 sqrt abs sin cos tan tanh min max ifelse".split())
BUILTIN_CONSTANTS = frozenset({"pi"})
# Functions of an observe's expression only (LANGUAGE.md §11): `integral(RATE, WINDOW)`.
OBSERVE_FUNCTIONS = frozenset({"integral"})
# Keywords, built-in functions and constants. Words with a meaning only in fixed positions (noise
# models, neural kinds and options) are deliberately not reserved: declaring them is allowed.
RESERVED = KEYWORDS | BUILTIN_FUNCTIONS | BUILTIN_CONSTANTS | OBSERVE_FUNCTIONS | {"inf"}

# A data column with a meaning of its own (independent experiments, LANGUAGE.md §7): the time,
# an input or an observe of this name would be read from it, so they may not take it (E203).
SERIES_COLUMN = "series"
COLUMN_KINDS = frozenset({"time", "input", "observe"})

# Words that start a statement. A continuation line (inside an open bracket) that starts with
# one of them means the bracket was never closed.
STATEMENT_KEYWORDS = frozenset(
    "model time unit param const state input let neural der flow observe dose set scenario end "
    "remove index".split()
)
