"""Prompts for generating a `.nimm` model with an LLM and for repairing it from diagnostics.

The repair prompt carries the numbered source and the checker's diagnostics exactly as a person
sees them (code, line, column, caret, hint), so that one round is usually enough.
"""
from __future__ import annotations

import re

from ..diagnostics import Diagnostic, render_text

LANGUAGE_GUIDE = """\
You write models in the NIMM language (one statement per line, order does not matter).
Statements:
  model NAME "description"                      (first line, exactly once)
  time NAME [unit]                              (once, for dynamic models)
  unit NAME                                     (a new countable unit, e.g. person, cell)
  const NAME [unit] = VALUE                     (fixed)
  param NAME [unit] = VALUE in [LO, HI]         (estimated; always give bounds)
  state NAME [unit] = INIT in [LO, HI]
  input NAME [unit] = DEFAULT [interp step|linear]
  let NAME [unit] = EXPR                        (algebraic helper; unit optional)
  neural NAME(ARG, ...) [unit] = mlp(hidden = [16, 16], activation = tanh, init = zero, penalty = 1e-3)
  der(STATE) = EXPR      or      flow A -> B = RATE   (never both for one state)
  observe NAME [unit] = EXPR ~ normal(sigma = VALUE) | lognormal(sigma = VALUE) | poisson
  dose NAME: STATE += AMOUNT at TIME [every INTERVAL times N]     (*= for a factor)
  set NAME = EXPR [from TIME] [to TIME]         (override a param/const/input in a window)
  scenario NAME "doc" ... end                    (dose / set / remove lines inside)
Units are written in brackets: [1/day], [mg/L], [L/(h*kg)], [1]. A plain number standing alone
in a declaration takes the declared unit; next to names it is dimensionless, so write `5 [day]`.
der(X) must have the unit of X per time unit. Arguments of exp/log/sin/... and of neural calls
must be dimensionless: divide by a reference scale. Built-ins: exp log log10 sqrt abs sin cos tan
tanh min max ifelse(COND, A, B) pi. Reserved words may not be used as names.
Answer with the complete model in one ```nimm fenced block and nothing else."""


def generation_messages(task: str) -> list[dict]:
    return [
        {"role": "system", "content": LANGUAGE_GUIDE},
        {"role": "user", "content": f"Write a NIMM model for this task:\n{task}"},
    ]


def numbered(source: str) -> str:
    return "\n".join(f"{i:4d} | {line}" for i, line in enumerate(source.splitlines(), 1))


def repair_messages(task: str, source: str, diagnostics: list[Diagnostic]) -> list[dict]:
    report = render_text(diagnostics, source)
    return [
        {"role": "system", "content": LANGUAGE_GUIDE},
        {"role": "user", "content": (
            f"Task:\n{task}\n\nYour model:\n{numbered(source)}\n\n"
            f"The checker reported these problems (code, line:column, what was expected and found):\n"
            f"{report}\n\nFix every error and answer with the complete corrected model in one "
            f"```nimm fenced block.")},
    ]


_FENCE = re.compile(r"```(?:nimm)?[ \t]*\n(.*?)```", re.DOTALL)


def extract_model(reply: str) -> str:
    """The model text of a reply: the first fenced block, else the whole reply."""
    m = _FENCE.search(reply)
    return (m.group(1) if m else reply).strip() + "\n"
