"""Data binding (TASKS.md §5): does a table fit a model? Diagnostics E601-E603, W604-W606.

`bind(model, table)` returns the diagnostics, located at the model line they concern (the `time`
line, an `observe` line, the `model` header) and with hints that name the table's columns; `nimm
check --data`, `fit` (through `load_bound`), `simulate --data`, `evaluate` and the agent use it.
A table that cannot be read, or holds a cell that is not a number, is a DataError naming the
file, the column and the row, as everywhere else (docs/language.md §7).

Which checks apply depends on the command (docs/language.md §9): a table for `simulate --data`
may hold inputs only, so it needs no observed column (E602) and says nothing about observes
without data (W604) or start values (W606).
"""
from __future__ import annotations

import math
from typing import Optional

import numpy as np

from ..backends.protocol import build_protocol
from ..compiler.ir import InputIR, ModelIR
from ..diagnostics import Diagnostic, Span, closest, sort_key
from ..errors import DataError, ModelError, SimulationError
from .data import SERIES_COLUMN, Dataset, load_data, read_table
from .pointwise import point, start_values

ALL_CHECKS = frozenset({"E601", "E602", "E603", "W604", "W605", "W606", "E607", "E608", "E609",
                        "E611", "E612", "E613", "W614", "W615"})
CHECKS = {  # command -> the codes it applies (docs/language.md §9)
    "check": ALL_CHECKS,
    "fit": ALL_CHECKS,
    "simulate": frozenset({"E601", "E603", "W605", "E607", "E608", "E611", "E612", "W614"}),
}
# Column names that hold dose amounts in common dataset layouts (NONMEM's AMT, R's `dose`): in a
# model that reads doses from the table, a column so named that no dose reads is E611.
DOSE_WORDS = frozenset({"dose", "amt", "amount", "doses"})
W606_SIGMAS = 3.0  # how far (in noise sigmas) a start value may be from the first observation
# column names that say "time", and the unit each one implies (None: keep the model's unit)
TIME_WORDS = {"t": None, "time": None, "date": None, "s": "s", "sec": "s", "second": "s", "seconds": "s",
              "min": "min", "minute": "min", "minutes": "min", "h": "h", "hour": "h", "hours": "h",
              "day": "day", "days": "day", "week": "week", "weeks": "week", "month": "month",
              "months": "month", "year": "year", "years": "year"}


class BindingError(ModelError):
    """A table the model cannot be fitted to (or simulated with): `.diagnostics` says why."""


def model_ir(model) -> ModelIR:
    """The IR of a ModelIR or of anything that has one (`nimm_dsl.Model`)."""
    return model if isinstance(model, ModelIR) else model.ir


def bind(model, table, file: Optional[str] = None, command: str = "check") -> list[Diagnostic]:
    """The data-binding diagnostics of `table` (a CSV path or a DataFrame) for `model` (a
    `nimm_dsl.Model` or its IR), for `command` ("check", "fit" or "simulate")."""
    ir = model_ir(model)
    checks = CHECKS[command]
    t = read_table(table, file)
    found: list[Diagnostic] = []

    def report(code, span, message, hint=None):
        if code in checks:
            found.append(Diagnostic(code, span or _top(ir), message, hint, ir.file))

    columns = t.columns
    observes = [o.name for o in ir.observes]
    inputs = [u.name for u in ir.inputs]
    table_doses = [] if ir.is_static else ir.table_dose_names()
    used = set(observes) | set(inputs) | set(table_doses)
    time_guess = None
    if not ir.is_static:
        used |= {ir.time_name, SERIES_COLUMN}
        if ir.time_name not in columns:
            time_guess = _time_column(t, used)
            report("E601", ir.time_span, f"the table {t.file} has no column `{ir.time_name}` for the model's "
                   f"time variable; its columns are {_names(columns)}", _time_hint(ir, time_guess, columns))
    unmatched = [c for c in columns if c not in used and c != time_guess]
    if not ir.is_static and ir.t0 is not None and ir.time_name in columns:
        times = t.numbers(ir.time_name)
        early = np.flatnonzero(np.isfinite(times) & (times < ir.t0))
        if early.size:
            i = int(early[0])
            report("E607", ir.time_span, f"{t.file}, {t.where(i)}: {ir.time_name} = {times[i]:g} is before the "
                   f"model's clock origin {ir.time_name} = {ir.t0:g} ({early.size} row(s) in all)",
                   "drop the rows before the origin, or move the origin (`from`) back to the first data time")
    # a simulation reads only the inputs of a table: its observed columns are not bound
    unmatched = _family_columns(ir, columns, unmatched, report, t.file, observed=command != "simulate")
    undeclared = _dose_columns(ir, unmatched)
    for column, (span, why) in undeclared.items():
        report("E611", span, f"column `{column}` of {t.file} holds doses, but {why}",
               f"declare it: `dose {column} [UNIT]: STATE += {column} at data` (the table's amounts in UNIT)")
    unmatched = [c for c in unmatched if c not in undeclared]

    present = [o for o in observes if o in columns]
    if not present:
        if ir.observes:
            report("E602", ir.observes[0].span,
                   f"no column of {t.file} matches an observe, so there is nothing to fit: the model observes "
                   f"{_names(observes)}, the table has {_names(columns)}", _renames(unmatched, observes))
        else:
            report("E602", ir.model_span, f"the model has no `observe` line, so {t.file} cannot be fitted",
                   f"observe a quantity the table measures: `observe NAME [unit] = EXPR ~ normal(sigma = ...)` "
                   f"with NAME one of {_names(columns)}")
    else:
        for o in ir.observes:
            if o.name not in columns and not _family(o.name):  # a family's missing columns are E609
                report("W604", o.span, f"observe `{o.name}` has no column in {t.file}: it is simulated but not fitted",
                       _renames(unmatched, [o.name]))
    if unmatched:
        report("W605", ir.model_span, f"column(s) of {t.file} that match nothing in the model are ignored: "
               f"{_names(unmatched)}", _renames(unmatched, observes + inputs + ([ir.time_name] if ir.time_name else [])))

    for o in ir.observes:
        if o.name in columns:
            problem = _impossible(o.noise, t.numbers(o.name))
            if problem is not None:
                i, what = problem
                report("E603", o.span, f"column `{o.name}` of {t.file}, {t.where(i)}: {what}",
                       "leave the cell empty where nothing was measured, or choose a noise model that "
                       "allows these values")

    if not ir.is_static and ir.time_name in columns:
        _dose_checks(ir, t, table_doses, report)
        _cut_windows(ir, t, report)

    if "W606" in checks and present and not ir.is_static and not any(d.is_error for d in found):
        found += _start_warnings(ir, load_data(table, ir, file=t.file))
    return sorted(found, key=sort_key)


def load_bound(ir: ModelIR, data, file: Optional[str] = None, command: str = "fit") -> Dataset:
    """The Dataset of `data` for `ir`, after the binding checks: errors raise BindingError (a
    ModelError with located diagnostics) before any work starts; warnings join the dataset's
    warnings as one-line texts. A Dataset is returned as it is."""
    if isinstance(data, Dataset):
        return data
    found = bind(ir, data, file, command)
    if any(d.is_error for d in found):
        raise BindingError(found, ir.source)
    dataset = load_data(data, ir, file=file, require_observed=command != "simulate")
    notes = [one_line(d) for d in found]
    if any(d.code == "W605" for d in found):  # W605 lists the ignored columns
        dataset.warnings = [w for w in dataset.warnings if "ignored column" not in w]
    dataset.warnings = notes + dataset.warnings
    return dataset


def _family(name: str) -> Optional[str]:
    """`cases` for a column or observe `cases[3]` (an element of a family, docs/language.md §4.1);
    also for a column `cases [3]`, which names the family but is no element's spelling."""
    head, bracket, rest = name.partition("[")
    return head.strip() if bracket and rest.endswith("]") else None


def _family_columns(ir: ModelIR, columns, unmatched: list, report, file: str, observed: bool = True) -> list:
    """An observed or input family is bound column by column (`cases[3]`), each column name
    matched exactly: a column that names such a family but none of its elements is E608 (with
    the exact spelling as the hint when it writes a member another way: `cases[01]`, `cases[ 1]`),
    and an observed element without a column while its siblings have one is E609. `observed`:
    bind the observed families too (not for a simulation). Returns the unmatched columns that
    are not E608's."""
    families: dict[str, list] = {}  # family -> its observes (or inputs), member order
    for o in [*(ir.observes if observed else []), *ir.inputs]:
        if _family(o.name):
            families.setdefault(_family(o.name), []).append(o)
    if not families:
        return unmatched
    rest, misspelt = [], set()
    for c in unmatched:
        family = _family(c)
        if family in families:
            elements = [o.name for o in families[family]]
            kind = "input" if isinstance(families[family][0], InputIR) else "observed"
            member = c[c.index("[") + 1:-1]
            free = {e[len(family) + 1:-1]: e for e in elements if e not in columns}
            near = free.get(_member_spelling(member))  # `01`, ` 1`, `1.0` for `1`
            if near is None and not any(_is_number(p) for p in member.split(",")):
                # a near spelling of a named member (`cases[seniors]`); numbers are not misspelt names;
                # compared by member only: the shared `family[...]` would make every member look close
                near = free.get(closest(member, free))
            if near is not None:  # its E608 says it: no E609 for the same column
                misspelt.add(near)
            report("E608", families[family][0].span, f"column `{c}` of {file} is not an element of the {kind} "
                   f"family `{family}`, which has {_names(elements[:5])}{' ...' if len(elements) > 5 else ''}",
                   f"did you mean `{near}`? rename the column (column names are matched exactly)" if near else
                   f"remove or rename the column, or extend the {'observe' if kind == 'observed' else 'input'} "
                   "(or its index) to that element")
        else:
            rest.append(c)
    for family, observes in families.items():
        if isinstance(observes[0], InputIR):  # an input's element without a column keeps its default
            continue
        with_data = [o for o in observes if o.name in columns]
        without = [o for o in observes if o.name not in columns and o.name not in misspelt]
        if with_data and without:
            report("E609", without[0].span, f"the table {file} has columns for {len(with_data)} of the "
                   f"{len(observes)} elements of `{family}`, but none for {_names([o.name for o in without[:5]])}"
                   f"{' ...' if len(without) > 5 else ''}",
                   "add the missing columns (empty cells where nothing was measured)")
    return rest


def _member_spelling(member: str) -> str:
    """The members of a column's subscript as an element's name spells them: no spaces, whole
    numbers as whole numbers without leading zeros (`01, 2.0` -> `1,2`)."""
    out = []
    for p in (p.strip() for p in member.split(",")):
        if p.isdigit():
            p = str(int(p))
        elif _is_number(p) and float(p).is_integer():
            p = str(int(float(p)))
        out.append(p)
    return ",".join(out)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def one_line(d: Diagnostic) -> str:
    """A diagnostic as one line of text, for lists of warnings."""
    hint = f" (hint: {d.hint})" if d.hint else ""
    return f"{d.file}:{d.span.line}: {d.severity}[{d.code}]: {d.message}{hint}"


# ---------------------------------------------------------------- doses from the table (E611-W614)
def _dose_columns(ir: ModelIR, unmatched) -> dict:
    """{column: (span, why)} for unmatched columns that hold doses: one named after a dose the
    model text times itself, or a conventional dose word (`amt`) in a model that reads its doses
    from the table (elsewhere such a column is only ignored, W605, as LANGUAGE.md §7 says)."""
    text_doses = {}  # the baseline dose, else the first scenario's
    for d in ir.doses + [d for sc in ir.scenarios.values() for d in sc.doses]:
        if not d.from_data:
            text_doses.setdefault(d.name, d)
    found = {}
    for c in unmatched:
        if c in text_doses:
            found[c] = (text_doses[c].span, f"dose `{c}` is timed in the model text, not read from the data")
        elif c.lower() in DOSE_WORDS and not ir.is_static and ir.table_dose_names():
            found[c] = (_top(ir), f"no dose of the model reads it (the doses from the data are "
                        f"{_names(ir.table_dose_names())})")
    return found


def _cut_windows(ir: ModelIR, t, report) -> None:
    """W615: without a clock origin a series' run starts at its first row, so a count over the
    WINDOW before an observation that lies closer than WINDOW to that start covers only part of
    its interval (at the first row, none of it) -- and is compared with a whole interval's count."""
    if ir.t0 is not None:
        return
    times = t.numbers(ir.time_name)
    labels = (np.array([str(v).strip() for v in t.frame[SERIES_COLUMN]], dtype=object)
              if SERIES_COLUMN in t.columns else np.array([None] * len(times)))
    start = {label: np.nanmin(times[labels == label]) for label in dict.fromkeys(labels)}
    starts = np.array([start[label] for label in labels])
    told = set()  # the elements of an observed family share its line: one warning for the line
    for o in ir.observes:
        windows = [g.window for g in ir.integrals if g.symbol in o.expr.free_symbols]
        if not windows or o.name not in t.columns or (o.span is not None and o.span in told):
            continue
        window = max(windows)
        cut = np.flatnonzero(np.isfinite(t.numbers(o.name)) & (times - window < starts - 1e-9 * window))
        if cut.size:
            i = int(cut[0])
            told.add(o.span)
            report("W615", o.span, f"observe `{o.name}` counts over {window:g} {ir.time_unit} before each time, but "
                   f"at {ir.time_name} = {times[i]:g} ({t.file}, {t.where(i)}) the run has only just started at "
                   f"{starts[i]:g}: its window is cut ({cut.size} value(s) in all)",
                   f"give the model a clock origin one window before the first count: "
                   f"`time {ir.time_name} [{ir.time_unit}] from {starts.min() - window:g}`")


def _dose_checks(ir: ModelIR, t, table_doses, report) -> None:
    """E612 negative amounts, E613 doses after a series' last observation, W614 a table dose
    without a column; located at the dose's line."""
    spans = {}  # the baseline dose's line, else the first scenario's
    for d in ir.doses + [d for sc in ir.scenarios.values() for d in sc.doses]:
        if d.from_data:
            spans.setdefault(d.name, d.span)
    times = t.numbers(ir.time_name)
    labels = (np.array([str(v).strip() for v in t.frame[SERIES_COLUMN]], dtype=object)
              if SERIES_COLUMN in t.columns else np.array([None] * len(times)))
    observed = np.zeros(len(times), dtype=bool)
    for o in ir.observes:
        if o.name in t.columns:
            observed |= np.isfinite(t.numbers(o.name))
    for name in table_doses:
        if name not in t.columns:
            report("W614", spans[name], f"dose `{name}` comes from the data, but {t.file} has no column "
                   f"`{name}`: no dose `{name}` is given", f"add a column `{name}` with the amounts on the dose rows")
            continue
        amounts = t.numbers(name)
        given = np.flatnonzero(np.isfinite(amounts))
        negative = given[amounts[given] < 0]
        if negative.size:
            i = negative[0]
            report("E612", spans[name], f"column `{name}` of {t.file}, {t.where(i)}: the dose amount "
                   f"{amounts[i]:g} is negative", "a dose adds an amount >= 0; leave the cell empty on rows without a dose")
        if not observed.any():
            continue
        for i in given:
            mine = labels == labels[i]
            last = times[mine & observed].max() if (mine & observed).any() else -np.inf
            if np.isfinite(times[i]) and times[i] > last:
                in_series = f"series `{labels[i]}`" if labels[i] is not None else "the table"
                ends = (f"whose last observation is at {ir.time_name} = {last:g}" if np.isfinite(last)
                        else "which has no observation")
                report("E613", spans[name], f"column `{name}` of {t.file}, {t.where(i)}: a dose at "
                       f"{ir.time_name} = {times[i]:g} lies outside {in_series}, {ends}",
                       "check the row's series label and time (in the model's time unit)")
                break


# ---------------------------------------------------------------- E601
def _time_column(t, used: set) -> Optional[str]:
    """The column that most likely holds the time: a time word, else the first numeric column
    whose values increase (not an observe or input)."""
    free = [c for c in t.columns if c not in used]
    for c in free:
        if c.lower() in TIME_WORDS:
            return c
    for c in free:
        try:
            v = t.numbers(c)
        except DataError:  # a text column: not a clock
            continue
        v = v[np.isfinite(v)]
        if v.size > 1 and np.all(np.diff(v) > 0):
            return c
    return None


def _time_hint(ir: ModelIR, guess: Optional[str], columns) -> str:
    if guess is None:
        return (f"name the time variable like the table's time column (`time NAME [{ir.time_unit}]`), or add a "
                f"column `{ir.time_name}`")
    unit = TIME_WORDS.get(guess.lower()) or ir.time_unit
    if guess.lower() == "date":
        return f"the table's time column looks like `{guess}`: give the times as numbers in {ir.time_unit}"
    return (f"the table's time column looks like `{guess}`: write `time {guess} [{unit}]` (and use `{guess}` "
            f"where the equations use `{ir.time_name}`)")


# ---------------------------------------------------------------- E603
def _impossible(noise: str, v: np.ndarray) -> Optional[tuple[int, str]]:
    """(row index, what is wrong) for the first value the noise model cannot produce."""
    ok = np.isfinite(v)
    if noise == "lognormal":
        bad = np.flatnonzero(ok & (v <= 0))
        if bad.size:
            return int(bad[0]), f"{v[bad[0]]:g} is not positive, but lognormal noise needs values > 0"
    elif noise in ("poisson", "negbinomial"):
        bad = np.flatnonzero(ok & ((v < 0) | (v != np.round(v))))
        if bad.size:
            return int(bad[0]), f"{v[bad[0]]:g} is not a count, but {noise} noise needs whole numbers >= 0"
    return None


# ---------------------------------------------------------------- W606
def _start_warnings(ir: ModelIR, dataset: Dataset) -> list[Diagnostic]:
    """W606 per observe: its value at a series' first time, with the params at their defaults,
    against the observation there (a series starts at its first time: the initial values hold
    there, so nothing needs integrating)."""
    out = []
    starts: dict[int, dict] = {}  # per series: every start value at once (not once per observe)
    for o in ir.observes:
        if o.name not in dataset.observed_names:
            continue
        for k, s in enumerate(dataset.series):
            y, t0 = float(s.observed[o.name][0]), float(s.times[0])
            if not math.isfinite(y) or (ir.t0 is not None and t0 != ir.t0):
                continue  # a series that starts after the clock origin needs integrating: not a start value
            try:
                if k not in starts:
                    starts[k] = start_values(ir, t0, **s.run_options())
                pred = starts[k][o.name]
                sigma = None
                if o.sigma is not None:
                    at = point(ir, t0, build_protocol(ir, [t0], **s.run_options()).segments[0])
                    at.env[o.symbol] = pred  # a sigma may use the observe's own prediction
                    sigma = at.value(o.sigma)
            except SimulationError:  # an input without data or default: simulate and fit say so
                break
            far = _far(o.noise, pred, y, sigma)
            if far is None:
                continue
            in_series = f" of series `{s.label}`" if s.label is not None else ""
            out.append(Diagnostic(
                "W606", o.span or _top(ir),
                f"observe `{o.name}` starts at {pred:.4g} at {ir.time_name} = {t0:g} (the first time"
                f"{in_series}, params at their defaults) but the first observation is {y:.4g}: {far}",
                _fixed_start_hint(ir, o), ir.file))
            break
    return out


def _far(noise: str, pred: float, y: float, sigma: Optional[float]) -> Optional[str]:
    """How far pred is from y beyond what the noise model allows, in words (None: not far)."""
    if not math.isfinite(pred):
        return "the start value is not a number"
    if noise in ("normal", "lognormal"):
        if noise == "lognormal":
            if pred <= 0:
                return "a lognormal observe must be positive"
            gap = abs(math.log(pred) - math.log(y)) / sigma
        else:
            gap = abs(pred - y) / sigma
        return f"{gap:.1f} noise sigmas away" if gap > W606_SIGMAS else None
    if noise in ("poisson", "negbinomial"):  # the Poisson spread is the narrowest a negbinomial allows
        gap = abs(pred - y) / math.sqrt(max(pred, 1.0))
        return f"{gap:.1f} Poisson standard deviations away" if gap > W606_SIGMAS else None
    # least squares: no noise scale, so a factor of two is "far"
    if abs(pred - y) > 0.5 * max(abs(pred), abs(y)):
        return "they differ by more than a factor of 2"
    return None


def _fixed_start_hint(ir: ModelIR, o) -> str:
    """Name the states behind the observe whose initial value no estimated param can move."""
    symbols = set(o.expr.free_symbols)
    lets = {let.symbol: let for let in ir.lets}
    pending = [s for s in symbols if s in lets]
    while pending:
        more = lets[pending.pop()].expr.free_symbols - symbols
        symbols |= more
        pending += [s for s in more if s in lets]
    estimated = {p.symbol for p in ir.params if p.estimate}
    states = [s for s in ir.states if s.symbol in symbols]
    fixed = [s for s in states if not (s.init.free_symbols & estimated)]
    if fixed:
        names = ", ".join(f"`{s.name}`" for s in fixed)
        s = fixed[0]
        return (f"usually a fixed initial value that should be a param: the initial value of {names} is fixed; "
                f"estimate it, e.g. `param {s.name}0 [{s.unit}] = ... in [LO, HI]` and "
                f"`state {s.name} [{s.unit}] = {s.name}0`")
    return ("the params in the initial values start far from the data: give them defaults near the first "
            "observation")


# ---------------------------------------------------------------- helpers
def _top(ir: ModelIR) -> Span:
    return ir.model_span or Span(1, 1, 1, 2)


def _names(names) -> str:
    return ", ".join(f"`{n}`" for n in names) if names else "none"


def _renames(columns, names) -> Optional[str]:
    """'column `cases` looks like `case`' for columns close to a model name: a typo on one side.
    A column named after a family (`cases` for `cases[1]`, `cases[2]`, ...) is a long table's
    value column: the wide layout wants one column per element."""
    families = {}
    for n in names:
        if _family(n):
            families.setdefault(_family(n), []).append(n)
    hints = [f"`{c}` is a family: its data go in one column per element, "
             f"{', '.join(f'`{n}`' for n in families[c][:2])}, ... (the wide layout, docs/language.md, "
             "Index families); pivot a long table (a row per element, a column naming the member) into "
             "that, e.g. with pandas `pivot_table`" for c in columns if c in families]
    pairs = [f"column `{c}` looks like `{n}`" for c in columns if c not in families and (n := closest(c, names))]
    if pairs:
        hints.append("; ".join(pairs) + ": rename one of them")
    return "; ".join(hints) if hints else None


def missing_observes(model, observes) -> list[Diagnostic]:
    """E602 for each quantity the task scores that the model does not observe (as `evaluate`)."""
    have = {o.name for o in model.ir.observes}
    missing = [name for name in observes or () if name not in have]
    if not missing:
        return []
    header = model.checked.table.model
    span = header.span if header is not None else Span(1, 1, 1, 2)
    return [Diagnostic("E602", span, f"the task scores {', '.join(f'`{m}`' for m in missing)}, which the "
                       "model does not observe",
                       f"add `observe {missing[0]} [unit] = ...` for the table's column `{missing[0]}`",
                       model.file)]
