"""Prompts for proposing and repairing `.nimm` models (docs/agent.md).

Everything the language model is told about the language comes from the package's own tables —
the statement keywords of `grammar/words.py`, the built-ins of `compiler/builtins.py`, the noise
models and neural options of the checker, the diagnostic codes of `diagnostics.py` — plus one
worked example that a test keeps checker-clean. No second hand-kept copy of the language can
drift from the checker.

A proposal prompt holds the language guide, the worked example, the task in words and a
summary of the training table (never held-out data). A repair prompt holds the numbered model
and the diagnostics exactly as a person reads them, capped in size.
"""
from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path
from typing import Optional, Sequence

from ..diagnostics import CODES, Diagnostic, render_text
from ..compiler.builtins import BUILTINS
from ..grammar.words import BUILTIN_CONSTANTS

MAX_DIAGNOSTIC_CHARS = 6000  # a repair prompt shows at most this much of the diagnostics
MAX_SUMMARY_ROWS = 5
WHOLE_TABLE_ROWS = 15  # up to this many rows the summary shows the table whole (a language model read the peaks off it)
MAX_PROVIDED_ROWS = 30  # a districts' table is reference data: shown whole when small

# One line of form per statement keyword; a test checks every keyword of the grammar has one.
STATEMENT_FORMS: dict[str, str] = {
    "model": 'model NAME "description"                    first line, exactly once',
    "time": "time NAME [unit] [from T0]                   once in a dynamic model; NAME = the table's time column",
    "unit": 'unit NAME  |  unit NAME = 1000 [other]       a new base unit (person, cell) or a derived one',
    "index": "index NAME = 1..12  |  index NAME = [a, b]     an index set; then `state S[d in NAME] [unit] = ...`, `S[d]`, `sum(k in NAME, EXPR)`",
    "const": "const NAME [unit] = VALUE                    fixed; VALUE from numbers and consts",
    "param": "param NAME [unit] = VALUE in [LO, HI] [per series]   estimated by the fit; always give bounds; `per series`: one value per table series",
    "state": "state NAME [unit] = INIT in [LO, HI]         INIT from params/consts/inputs; bounds = valid domain",
    "input": "input NAME [unit] = DEFAULT [interp linear]  a table column of that name, else DEFAULT; holds each value (step) unless `interp linear`",
    "let": "let NAME [unit] = EXPR                       an algebraic quantity (unit optional, checked)",
    "neural": "neural NAME(ARG, ...) [unit] = mlp(OPTIONS)  a small network; call it like a function",
    "der": "der(STATE) = EXPR                            the state's derivative (unit of STATE per time unit)",
    "flow": "flow A -> B = RATE                           moves RATE from A to B; `flow -> B` source, `flow A ->` sink",
    "observe": "observe NAME [unit] = EXPR ~ NOISE            compared with the table's column NAME",
    "dose": "dose NAME: STATE += AMOUNT at T [every DT times N]   a bolus (AMOUNT may use params, states, lets); `*=` multiplies; `dose NAME [unit]: STATE += NAME at data` takes amounts from the table's column NAME",
    "set": "set NAME = EXPR [from T] [to T]               overrides a param/const/input from T (inclusive) to T (exclusive)",
    "scenario": 'scenario NAME "description"                  an intervention: dose / set / remove lines, then',
    "end": "end                                          closes a scenario",
    "remove": "remove DOSE                                  (inside a scenario) drops a baseline dose",
}

IDIOMS = """\
Rules that matter:
- One statement per line; a long expression may wrap only inside ( ). `#` starts a comment.
  Order does not matter. Use `^` for powers (not `**`) and `der(X) = ...` (not dX/dt).
- Units in brackets: [1/day], [mg/L], [person], [1] (dimensionless); compound units such as
  [g/L/h] or [mL/(kg*h)] and powers [m^2] are fine. A bare number (or numbers only, `1 / 3`)
  standing alone in a declaration, bound, dose amount or set value takes the declared unit; a
  number next to names is dimensionless, so write `5 [day]`. der(X) has the unit of X per time unit.
- What the task states (a known period, a population, a dose) is a `const`; only what is unknown
  is a `param`. Estimating a stated value lets it drift to a bound and blurs every other estimate.
- Arguments of exp, log, sin, ... and of neural terms must be dimensionless: divide by a
  reference scale (S / N).
- The time variable is named exactly like the data table's time column (`time day [day]` for a
  column `day`). Without `from`, the clock starts at each series' first data time and initial
  values hold there; `time t [h] from 0` makes them hold at t = 0 (a dose at 0 before the first
  sample, for instance).
- An unknown initial value is a param: `param E0 [person] = 10 in [1, 1000]` and
  `state E [person] = E0 in [0, inf]`. State bounds are the valid domain, not an estimate range.
- Every data column to fit needs an `observe` of the same name and unit. A reported fraction of
  incidence per day is `observe cases [person] = rho * rate * 1 [day] ~ poisson`; counts reported
  per week are the integral of the rate over the week: `observe weekly [person] =
  integral(rho * rate, 7 [day]) ~ negbinomial(dispersion = k)`: the integral over the 7 days
  ending at each observation time (`integral` only in observes).
  Counts use `poisson` or, when overdispersed, `negbinomial` with `param k [1]`; positive
  quantities spanning decades `lognormal(sigma = s)`; otherwise `normal(sigma = s)` with
  `param s [unit of the observe] = ... in [..]`. The observe's own name in its sigma is its
  prediction: `observe C [mg/L] = A / V ~ normal(sigma = a + b * C)` is combined error.
- An input column of the table (a treatment, a lockdown flag) is an `input` of the same name.
- A dose is applied at its time before anything is reported there: a value measured at a dose
  time is the value after the dose. A dose amount may be an expression evaluated at that time.
- A neural term should refine a named `let` (a rate, a response), start at zero (`init = zero`)
  and stay small (hidden = [8]); give it `penalty = 1e-3`.
- Districts, age groups, a chain of compartments: an index and families, each line written once.
  `index district = 1..8` (members 1 to 8; named: `index age = [child, adult]`); a variable in
  brackets on the left of a declaration ranges over its index, and in `der`, `flow`, `dose` and
  `set` lines a subscript that is not a member (`S[d]`) means every member; `const
  pop[d in district] [person] = table("districts.csv", pop)` reads column `pop` of a table the
  task provides, keyed by a column named `district`; `state I[d in district] [person] =
  ifelse(d == 1, 10 [person], 0 [person])` gives one element its own value; `let foi[d in
  district] [1/day] = beta * sum(k in district, C[d, k] * I[k] / pop[k])`; `flow S[d] -> E[d] =
  foi[d] * S[d]` and `der(X[d])` are one equation per member; `observe cases[d in district]
  [person] = ...` fits the data columns `cases[1]`, `cases[2]`, ... (`input u[d in district]` reads
  `u[1]`, `u[2]`, ... the same way); `I[1]` is one element; a
  matrix is `const C[d in district, k in district] [1] = ...` (two variables, one per position).
  A chain: `flow T[s in 1..4] -> T[s+1] = ktr * T[s]` (`s+1` is the next member, so the line's
  range stops one short of the last; `[d in [2, 5]]` lists members; `u[d-1]` is the previous one).
- Every scenario the task names must be a `scenario NAME ... end` block. Inside it, `set` lines
  change params, consts or inputs, over a window if needed (`set lockdown = 1 from 20 to 45`,
  times in the time unit; without `to`, to the end of the run), `dose` lines add or replace doses and `remove DOSE` drops one. Say the
  whole intervention inside the block, even when the data drive it through an input column."""


def _units_line() -> str:
    from ..compiler.units import COMMON_NAMES

    short = sorted({n for n in COMMON_NAMES if len(n) <= 4}, key=lambda n: (n.lower(), n))
    return ("Library units (use them without declaring them; others from the SI and common "
            "scientific use exist too): " + " ".join(short) + ". Declare only new count units "
            "(`unit person`, `unit cell`).")


def _options_line() -> str:
    from ..compiler.names import ACTIVATIONS, NEURAL_OPTIONS, NOISE_OPTIONS

    noise = ", ".join(f"{kind}({', '.join(f'{o} = EXPR' for o in options)})" if options else kind
                      for kind, options in NOISE_OPTIONS.items())
    return (f"NOISE is one of: {noise}; without `~` the fit is least squares.\n"
            f"mlp OPTIONS: {', '.join(NEURAL_OPTIONS)} (hidden = [8, 8], activation = "
            f"{' | '.join(ACTIVATIONS)}, init = zero | random, penalty = 1e-3).")


@lru_cache(maxsize=1)
def language_guide() -> str:
    forms = "\n".join(f"  {STATEMENT_FORMS[k]}" for k in STATEMENT_FORMS)
    functions = ", ".join(f"{name}({', '.join('xyz'[:row.arity])})" if name != "ifelse" else
                          "ifelse(CONDITION, A, B)" for name, row in BUILTINS.items())
    codes = "\n".join(f"  {code}: {meaning}" for code, meaning in _code_meanings())
    return (
        "You write models in the NIMM language: a typed equation language for mechanistic "
        "dynamical models (ODEs) that are fitted to data.\n\nStatements:\n" + forms + "\n\n"
        f"Built-in functions: {functions}; constant: {', '.join(sorted(BUILTIN_CONSTANTS))}; "
        "comparisons < <= > >= == != with and/or/not appear only inside ifelse.\n"
        + _options_line() + "\n" + _units_line() + "\n\n" + IDIOMS + "\n\n"
        "The checker reports problems with these codes:\n" + codes + "\n\n"
        "Answer with the complete model in one ```nimm fenced block and nothing else.")


def _code_meanings():
    for code, entry in CODES.items():
        meaning = entry if isinstance(entry, str) else getattr(entry, "meaning", str(entry))
        yield code, meaning


@lru_cache(maxsize=1)
def worked_example() -> str:
    return (Path(__file__).with_name("worked_example.nimm")).read_text(encoding="utf-8")


# ---------------------------------------------------------------- the data summary
def summarize_table(path, provided=(), max_rows: int = MAX_SUMMARY_ROWS) -> str:
    """What a modeler would look at first: columns with ranges and missing values, the time
    range, the series, and the first rows. Only the training table is ever summarised, and the
    tables the task provides for `table(...)` (`provided`: their paths) by their header and
    first rows."""
    import pandas as pd

    from ..runtime.data import open_local

    with open_local(path) as handle:
        frame = pd.read_csv(handle)
    # The file's name is left out: a name like `misspecified_train.csv` gives the answer away.
    lines = [f"Training table: {len(frame)} rows, columns "
             + ", ".join(f"`{c}`" for c in frame.columns) + "."]
    if "series" in frame.columns:
        labels = frame["series"].astype(str).unique()
        lines.append(f"- `series`: {len(labels)} independent series ({', '.join(labels[:8])}"
                     + (", ..." if len(labels) > 8 else "") + ")")
    for column in frame.columns:
        if column == "series":
            continue
        values = pd.to_numeric(frame[column], errors="coerce")
        missing = int(values.isna().sum())
        present = values.dropna()
        if present.empty:
            lines.append(f"- `{column}`: no numeric values")
            continue
        kind = "integers" if (present == present.round()).all() else "reals"
        distinct = present.unique()
        shape = (f"values {', '.join(f'{v:g}' for v in sorted(distinct.tolist()))}" if len(distinct) <= 4
                 else f"from {present.min():.4g} to {present.max():.4g}")
        lines.append(f"- `{column}`: {kind}, {shape}"
                     + (f", {missing} missing" if missing else "")
                     + (f" (first {present.iloc[0]:.4g}, last {present.iloc[-1]:.4g})" if len(distinct) > 4 else ""))
    whole = len(frame) <= WHOLE_TABLE_ROWS  # a short table is read whole: its last rows matter too
    with open(path, encoding="utf-8-sig") as handle:  # as written, not as pandas reformats them
        first = [next(handle, "").rstrip("\n") for _ in range((WHOLE_TABLE_ROWS if whole else max_rows) + 1)]
    lines.append(("All rows:\n" if whole else "First rows:\n") + "\n".join(line for line in first if line))
    for table in provided:
        with open(table, encoding="utf-8-sig") as handle:
            rows = [line.rstrip("\n") for line in handle if line.strip()]
        key = rows[0].split(",")[0].strip() if rows else "?"
        shown = rows[:MAX_PROVIDED_ROWS + 1]
        lines.append(f"\nProvided table `{table.name}` ({len(rows) - 1} rows keyed by `{key}`: declare "
                     f"`index {key} = ...` with those members and read a column with "
                     f"`const NAME[i in {key}] [UNIT] = table(\"{table.name}\", COLUMN)`):\n" + "\n".join(shown)
                     + ("\n..." if len(rows) > len(shown) else ""))
    return "\n".join(lines)


# ---------------------------------------------------------------- messages
def task_text(description: str, scenarios: Sequence[tuple[str, str]] = ()) -> str:
    text = description.strip()
    if scenarios:
        text += "\n\nThe model must define these scenarios (interventions to predict):\n" + "\n".join(
            f"- scenario `{name}`: {doc}" for name, doc in scenarios)
    return text


def proposal_messages(task: str, data_summary: Optional[str] = None,
                      direction: Optional[str] = None) -> list[dict]:
    """The first request for a candidate. `direction` asks for a distinct mechanism (the
    agent's branches)."""
    user = [f"Task:\n{task}"]
    if data_summary:
        user.append(data_summary)
    if direction:
        user.append(direction)
    user.append("Write one complete NIMM model for this task.")
    return [{"role": "system", "content": language_guide() + "\n\nA complete example:\n```nimm\n"
             + worked_example() + "```"},
            {"role": "user", "content": "\n\n".join(user)}]


# Kept for `generate_model` and its callers: the proposal without data.
def generation_messages(task: str) -> list[dict]:
    return proposal_messages(task)


MAX_ECHOED_CHARS = 30_000  # a repair prompt echoes at most this much of the model


def numbered(source: str, limit: int = MAX_ECHOED_CHARS) -> str:
    """The model with line numbers, cut at `limit` characters (a hostile reply is not echoed back
    whole)."""
    out, used = [], 0
    lines = source.splitlines()
    for i, line in enumerate(lines, 1):
        text = f"{i:4d} | {line}"
        if used + len(text) > limit and out:
            out.append(f"     | ... {len(lines) - i + 1} more lines not shown")
            break
        out.append(text)
        used += len(text) + 1
    return "\n".join(out)


def diagnostics_text(diagnostics: Sequence[Diagnostic], source: str,
                     limit: int = MAX_DIAGNOSTIC_CHARS) -> str:
    """The diagnostics as a person reads them, errors first, cut at `limit` characters."""
    ordered = sorted(diagnostics, key=lambda d: (not d.is_error, d.span.line, d.span.column))
    shown, used = [], 0
    for i, d in enumerate(ordered):
        block = render_text([d], source)
        if used + len(block) > limit and shown:
            shown.append(f"... and {len(ordered) - i} more")
            break
        shown.append(block)
        used += len(block) + 1
    return "\n".join(shown)


def repair_messages(task: str, source: str, diagnostics: Sequence[Diagnostic],
                    data_summary: Optional[str] = None, stage: str = "check") -> list[dict]:
    what = {"check": "The checker reported these problems",
            "bind": "Checked against the training table, these problems were found",
            "probe": "A short simulation at the parameter defaults found these problems"}.get(stage, "Problems")
    user = f"Task:\n{task}\n\n"
    if data_summary:
        user += data_summary + "\n\n"
    user += (f"Your model:\n{numbered(source)}\n\n{what} (code, line:column, what was expected and "
             f"found):\n{diagnostics_text(diagnostics, source)}\n\nFix every error (warnings too where "
             f"they point at a real mistake) and answer with the complete corrected model in one "
             f"```nimm fenced block.")
    return [{"role": "system", "content": language_guide()}, {"role": "user", "content": user}]


_FENCE = re.compile(r"```[ \t]*(?:nimm)?[ \t]*\n(.*?)```", re.DOTALL)


def extract_model(reply: str) -> str:
    """The model text of a reply: the first fenced block, else the whole reply (a constrained
    reply is the bare model)."""
    m = _FENCE.search(reply)
    return (m.group(1) if m else reply).strip() + "\n"
