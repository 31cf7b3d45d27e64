"""The probe (TASKS.md §5): simulate a model once per scenario, at the param defaults, and report
what goes wrong as diagnostics at the model line that caused it.

    E801  a state, let or observe becomes NaN or inf: the first time and quantity, at the line
          that produced it (a dose, a let, a flow or der line, an initial value, an observe)
    E802  the solver fails (too many steps, step size collapse): the time reached and the state
          that moves fastest, at that state's declaration; also a probe that runs out of time
    W803  a state leaves its declared domain: the first time and value
    W804  an observe leaves what its noise model allows (not positive under lognormal,
          negative under poisson)

The runs happen in a child process (`python -m nimm_dsl.runtime.probe`) that gets the model text
and the output grid as JSON on its standard input and answers with JSON; it is killed after
`timeout` seconds, and its CasADi solver has a step cap per output interval, so a probe always
ends. Only JSON crosses the process boundary (model text is data, LANGUAGE.md §10).

The time range is the data's (the union of its series' times, inputs from its first series)
when a table is given, else the default grid of `nimm simulate`. A NaN is traced to its line by
evaluating the model at the last good state with `pointwise.first_nonfinite`
(runtime/culprit.py, shared with `nimm simulate`).
"""
from __future__ import annotations

import json
import subprocess
import sys
from typing import Optional

import numpy as np

from ..compiler.ir import ModelIR
from ..diagnostics import Diagnostic, Span, sort_key
from .binding import model_ir

DEFAULT_TIMEOUT = 120.0  # seconds for all runs together
DEFAULT_MAX_STEPS = 5000  # solver steps per output interval
TOLERANCE = 1e-8  # rtol and atol of the runs (the back ends' defaults)
_MARK = "nimm-probe-result: "


def probe(model, data=None, timeout: float = DEFAULT_TIMEOUT, max_steps: int = DEFAULT_MAX_STEPS,
          file: Optional[str] = None) -> list[Diagnostic]:
    """Probe diagnostics of `model` (a `nimm_dsl.Model` or a ModelIR lowered from text), over the
    time range of `data` (a CSV path or DataFrame; DataError if it cannot be read) or the
    default grid. Loads the numeric back end, in a child process."""
    from ..backends.protocol import default_times
    from .data import load_data

    ir = model_ir(model)
    if ir.source is None:
        raise ValueError("the probe needs a model loaded from text (its IR has no source)")
    request = {"source": ir.source, "file": ir.file, "max_steps": int(max_steps), "inputs": None,
               "tables": ir.tables.to_plain() if ir.tables is not None else None}
    if ir.is_static:
        request["rows"] = _static_rows(ir, data, file)
    elif data is not None:
        dataset = load_data(data, ir, file=file, require_observed=False)
        request["times"] = np.unique(np.concatenate([s.times for s in dataset.series])).tolist()
        first = dataset.series[0].inputs
        request["inputs"] = {k: [np.asarray(t).tolist(), np.asarray(v).tolist()] for k, (t, v) in first.items()}
        request["doses"] = {k: [np.asarray(t).tolist(), np.asarray(a).tolist()]
                            for k, (t, a) in dataset.series[0].doses.items()}  # the first series' too
        # W804 only where a value is measured: a dose row's empty cell at t = 0 (a prediction of
        # 0 under lognormal noise before an oral dose is absorbed) costs the fit nothing
        request["observed"] = {o: sorted({float(t) for s in dataset.series if o in s.observed
                                          for t in s.times[np.isfinite(s.observed[o])]})
                               for o in dataset.observed_names}
    else:
        request["times"] = default_times(ir).tolist()
    try:
        done = subprocess.run([sys.executable, "-m", "nimm_dsl.runtime.probe"], input=json.dumps(request),
                              capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:  # subprocess.run has killed the child
        return [Diagnostic("E802", _top(ir), f"the probe did not finish within {timeout:g} s: a run is stuck "
                           "(a very stiff or exploding model?)",
                           "simulate the baseline with `nimm simulate` to see where it stops", ir.file)]
    answer = [line[len(_MARK):] for line in done.stdout.splitlines() if line.startswith(_MARK)]
    if done.returncode != 0 or not answer:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        return [Diagnostic("E802", _top(ir), f"the probe could not run the model: {last}", None, ir.file)]
    found = [Diagnostic(d["code"], Span(d["line"], d["column"], d["end_line"], d["end_column"]), d["message"],
                        d["hint"], ir.file) for d in json.loads(answer[-1])]
    return sorted(found, key=sort_key)


def _static_rows(ir: ModelIR, data, file) -> Optional[dict]:
    if data is None:
        return None
    from .data import load_data

    series = load_data(data, ir, file=file, require_observed=False).series[0]
    return {k: np.asarray(v, dtype=float).tolist() for k, v in series.inputs.items()}


def _top(ir: ModelIR) -> Span:
    return ir.model_span or Span(1, 1, 1, 2)


# ---------------------------------------------------------------- the child process
def _runs(request: dict) -> list[Diagnostic]:
    """Every run of the probe, in this process: what the child does."""
    from ..backends import compile_ir
    from ..compiler.check import check_source
    from ..compiler.families import TableAccess
    from ..compiler.lower import lower
    from ..errors import SimulationError

    checked = check_source(request["source"], request["file"], TableAccess.from_plain(request.get("tables")))
    if not checked.ok:  # the parent checked it clean: only what it could read differs (a table file)
        return [d for d in checked.diagnostics if d.is_error]
    ir = lower(checked)
    sim = compile_ir(ir, "casadi", max_num_steps=request["max_steps"])
    found: list[Diagnostic] = []
    if ir.is_static:
        import pandas as pd

        rows = request.get("rows")
        try:
            res = sim.simulate(None, inputs=pd.DataFrame(rows) if rows else None)
        except SimulationError:  # an input without data or default: not the probe's business
            return []
        return _static_findings(ir, res)
    times = np.asarray(request["times"], dtype=float)
    observed = request.get("observed")
    inputs = {k: (np.asarray(t), np.asarray(v)) for k, (t, v) in (request["inputs"] or {}).items()}
    doses = {k: (np.asarray(t), np.asarray(a)) for k, (t, a) in (request.get("doses") or {}).items()}
    for scenario in [None, *ir.scenarios]:
        under = f" (scenario `{scenario}`)" if scenario else ""
        try:
            res = sim.simulate(times, scenario=scenario, inputs=inputs or None, doses=doses or None)
        except SimulationError as e:
            found.append(_failure(ir, e, times, scenario, inputs, doses, under))
            continue
        found += _findings(ir, res, scenario, inputs, under, judge_noise=bool(doses) or not ir.table_dose_names(),
                           observed=observed)
    unique: dict = {}
    for d in found:  # a fault the baseline shows is not repeated for every scenario
        unique.setdefault((d.code, d.span.line), d)
    return list(unique.values())


def _point_at(ir: ModelIR, t: float, scenario, inputs, times):
    """A pointwise.Point at time t with the flags and inputs in force there."""
    from .culprit import point_at

    return point_at(ir, t, times, scenario, inputs or None)


def _at(ir: ModelIR, t: float) -> str:
    return f"{ir.time_name} = {t:g}"


def _failure(ir: ModelIR, e, times, scenario, inputs, doses, under) -> Diagnostic:
    """The diagnostic of a run that stopped with a SimulationError."""
    from .culprit import failure_culprit, nan_hint

    states = {s.name: s for s in ir.states}
    found = failure_culprit(ir, e, times, scenario, inputs or None, doses or None)
    if found is not None:
        c, at = found.culprit, _at(ir, found.t)
        if c.what == "initial value":
            message = f"the initial value of state `{c.name}` is NaN or inf at {at}{under}: {c.why}"
        elif c.what == "dose":
            dose = next(d for d in ir.doses_for(scenario) if d.name == c.name)
            message = f"state `{dose.state}` becomes NaN or inf after dose `{dose.name}` at {at}{under}: " + (
                c.why if c.why.startswith("its amount") else f"its amount is {c.value:g}, {c.why}")
        else:
            stalls = e.kind != "nonfinite" or found.ahead
            when = f"just after {at}, where the solver stalls" if stalls else f"at {at}"
            message = f"{c.what} `{c.name}` becomes NaN or inf {when}{under}: {c.why}"
        return Diagnostic("E801", c.span or _top(ir), message, nan_hint(c), ir.file)
    fastest = states.get(e.quantities[0]) if e.quantities else None
    span = fastest.span if fastest is not None and fastest.span else _top(ir)
    return Diagnostic("E802", span, f"the solver fails{under}: {e}",
                      "the solution may blow up (check the signs and units of the rates) or the model may "
                      "be very stiff", ir.file)


def _findings(ir: ModelIR, res, scenario, inputs, under, judge_noise: bool = True,
              observed: Optional[dict] = None) -> list[Diagnostic]:
    """E801 for lets/observes that are NaN or inf at an output time; W803 and W804 (not when
    judge_noise is False: a run without the table's doses, whose predictions say nothing).
    observed: {observe: the data's times with a value}, where W804 judges (None: every time)."""
    from .culprit import nan_hint
    from .pointwise import first_nonfinite

    out = []
    times = res.times
    outputs = [*(let.name for let in ir.lets), *(o.name for o in ir.observes)]
    bad = np.zeros(len(times), dtype=bool)
    for name in outputs:
        bad |= ~np.isfinite(np.asarray(res[name], dtype=float))
    if bad.any():
        k = int(np.argmax(bad))
        x = np.array([res[s.name][k] if s.name in res else 0.0 for s in ir.states])  # accumulators: not reported
        culprit = first_nonfinite(_point_at(ir, times[k], scenario, inputs, times), x, dynamics=False)
        if culprit is not None:
            out.append(Diagnostic("E801", culprit.span or _top(ir),
                                  f"{culprit.what} `{culprit.name}` becomes NaN or inf at {_at(ir, times[k])}{under}: "
                                  f"{culprit.why}", nan_hint(culprit), ir.file))
    for s in ir.reported_states:
        v = np.asarray(res[s.name], dtype=float)
        slack = 10 * (TOLERANCE + TOLERANCE * np.max(np.abs(v), initial=0.0))  # the solver's own error
        outside = np.flatnonzero((v < s.lo - slack) | (v > s.hi + slack))
        if outside.size:
            k = int(outside[0])
            out.append(Diagnostic("W803", s.span or _top(ir),
                                  f"state `{s.name}` leaves its domain [{s.lo:g}, {s.hi:g}] at {_at(ir, times[k])}"
                                  f"{under}: {v[k]:.6g} {s.unit}",
                                  "check the signs and units of its flows or der line, or widen the domain if "
                                  "the value is possible", ir.file))
    if judge_noise:
        out += _noise_findings(ir, res, times, under, observed)
    return out


def _noise_findings(ir: ModelIR, res, times, under, observed: Optional[dict] = None) -> list[Diagnostic]:
    out = []
    for o in ir.observes:
        v = np.asarray(res[o.name], dtype=float)
        judged = np.isfinite(v)
        if observed is not None:
            judged &= np.isin(times, observed.get(o.name, []))
        if o.noise == "lognormal":
            bad, what = v <= 0, "not positive, but lognormal noise needs a positive prediction"
        elif o.noise in ("poisson", "negbinomial"):
            bad, what = v < 0, f"negative, but a {o.noise} mean cannot be negative"
        elif o.noise == "normal" and o.symbol in o.sigma.free_symbols:
            from .fit.loss import numpy_sigmas

            with np.errstate(all="ignore"):
                sigma = np.broadcast_to(numpy_sigmas(ir, {p.name: p.default for p in ir.params}, [o.name])[o.name](v),
                                        v.shape)
            bad = sigma <= 0
            if bad.any():
                k = int(np.argmax(bad & judged))
                what = (f"its sigma is {sigma[k]:.6g} there, but a normal sigma must be positive at every "
                        "predicted value")
        else:
            continue
        bad &= judged
        if bad.any():
            k = int(np.argmax(bad))
            where = f" at {_at(ir, times[k])}" if times is not None else f" in row {k + 1}"
            out.append(Diagnostic("W804", o.span or _top(ir),
                                  f"observe `{o.name}` is {v[k]:.6g}{where}{under}: {what}",
                                  "the fit will fail where the data are observed: keep the prediction in range "
                                  "(e.g. observe a positive quantity)", ir.file))
    return out


def _static_findings(ir: ModelIR, res) -> list[Diagnostic]:
    out = []
    for name in [*(let.name for let in ir.lets), *(o.name for o in ir.observes)]:
        v = np.asarray(res[name], dtype=float)
        if not np.all(np.isfinite(v)):
            k = int(np.argmax(~np.isfinite(v)))
            span = next((x.span for x in [*ir.lets, *ir.observes] if x.name == name), None)
            out.append(Diagnostic("E801", span or _top(ir), f"`{name}` is NaN or inf in row {k + 1}", None, ir.file))
            break
    return out + _noise_findings(ir, res, None, "")


def _child_main() -> int:
    request = json.loads(sys.stdin.read())
    found = _runs(request)
    print(_MARK + json.dumps([d.to_dict() for d in found]), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(_child_main())
