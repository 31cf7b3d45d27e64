"""The language's word lists (LANGUAGE.md §2, §6): one place that the parser, the checker and
the language-model prompts all read."""
from __future__ import annotations

KEYWORDS = frozenset(
    "model time unit param const state input let neural der flow observe dose set scenario end "
    "remove in at every times from to and or not".split()
)
# name -> number of positional arguments
BUILTIN_FUNCTIONS: dict[str, int] = {
    "exp": 1, "log": 1, "log10": 1, "sqrt": 1, "abs": 1, "sin": 1, "cos": 1, "tan": 1,
    "tanh": 1, "min": 2, "max": 2, "ifelse": 3,
}
BUILTIN_CONSTANTS = frozenset({"pi"})
# Keywords, built-in functions and constants. Words with a meaning only in fixed positions (noise
# models, neural kinds and options) are deliberately not reserved: declaring them is allowed.
RESERVED = KEYWORDS | frozenset(BUILTIN_FUNCTIONS) | BUILTIN_CONSTANTS | {"inf"}

# Words that start a statement. A continuation line (inside an open bracket) that starts with
# one of them means the bracket was never closed.
STATEMENT_KEYWORDS = frozenset(
    "model time unit param const state input let neural der flow observe dose set scenario end "
    "remove".split()
)
