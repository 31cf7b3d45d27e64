"""The `nimm` command: check, simulate, fit, show, generate.

Exit status (LANGUAGE.md §9): 0 ok, 1 model/data/run error, 2 usage or unreadable file. Errors go to
standard error as diagnostics or one-line messages; bad input never ends in a traceback.
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Optional, Sequence

EXIT_OK, EXIT_ERROR, EXIT_USAGE = 0, 1, 2


class UsageError(Exception):
    pass


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="nimm", description="Check, simulate and fit .nimm models.")
    sub = p.add_subparsers(dest="command", required=True)

    c = sub.add_parser("check", help="parse and check model files")
    c.add_argument("files", nargs="+", metavar="FILE")
    c.add_argument("--format", choices=("text", "json"), default="text")
    c.add_argument("--data", metavar="DATA.csv", help="also check that the table fits the model (E601-W606)")
    c.add_argument("--probe", action="store_true",
                   help="also simulate every scenario once at the defaults (E801-W804; loads the back end)")

    s = sub.add_parser("simulate", help="simulate a model (optionally a fitted one, under a scenario)")
    s.add_argument("model", metavar="MODEL")
    s.add_argument("--fit", metavar="FIT.json", help="params (and neural weights) from `nimm fit`")
    s.add_argument("--scenario", metavar="NAME")
    s.add_argument("--data", metavar="DATA.csv", help="inputs and output times from a data table")
    s.add_argument("--times", metavar="T0:T1:N", help="N evenly spaced output times from T0 to T1")
    s.add_argument("--backend", choices=("casadi", "torch"), default="casadi")
    s.add_argument("--output", metavar="OUT.csv", help="write the table here (default: stdout)")
    s.add_argument("--plot", metavar="PLOT.png", help="plot the run (baseline vs scenario with --scenario)")
    s.add_argument("--rtol", type=float, default=1e-8, help="relative tolerance of the solver (default 1e-8)")
    s.add_argument("--atol", type=float, default=1e-8,
                   help="absolute tolerance, in each state's unit (default 1e-8)")

    f = sub.add_parser("fit", help="fit params (and neural weights) to data")
    f.add_argument("model", metavar="MODEL")
    f.add_argument("data", metavar="DATA.csv")
    f.add_argument("--backend", choices=("casadi", "torch"), default="casadi")
    f.add_argument("--output", metavar="FIT.json")
    f.add_argument("--plot", metavar="FIT.png")
    f.add_argument("--starts", type=int, default=1, help="multi-start: N Latin-hypercube starts")
    f.add_argument("--holdout", type=float, default=0.0,
                   help="fraction of each series' last times held out for early stopping (torch)")
    f.add_argument("--seed", type=int, default=0)
    f.add_argument("--hessian", choices=("gauss-newton", "exact"), default="gauss-newton",
                   help="curvature behind the standard errors: the Fisher information (default) or "
                        "the exact Hessian of the loss (slower on large models)")

    g = sub.add_parser("generate", help="ask an LLM for a model, check it and repair it from the diagnostics")
    g.add_argument("task", metavar="TASK",
                   help="a task file (TASK.toml: its description, scenarios and training table) or the task in words")
    g.add_argument("--data", metavar="DATA.csv",
                   help="a training table: summarised in the prompt, and every version is bound to it and probed")
    g.add_argument("--endpoint", required=True, metavar="URL",
                   help="an OpenAI-compatible API base URL (key from $NIMM_LLM_API_KEY)")
    g.add_argument("--llm", required=True, metavar="NAME", help="the model name at that endpoint")
    g.add_argument("--rounds", type=int, default=3, help="at most this many versions (default 3)")
    g.add_argument("--constrain", choices=("none", "vllm", "llama-cpp", "sglang"), default="none",
                   help="send the whole-file generation grammar in this server's request field "
                        "(vllm: structured_outputs.grammar, Lark; llama-cpp: grammar, GBNF; sglang: ebnf, GBNF)")
    g.add_argument("--timeout", type=float, default=120.0, metavar="SECONDS",
                   help="deadline for each request to the model, retries included (default 120)")
    g.add_argument("--allow-insecure", action="store_true",
                   help="allow plain http:// to a host other than this machine (the key travels unencrypted)")
    g.add_argument("--output", metavar="MODEL.nimm", help="write the last version here (default: stdout)")

    e = sub.add_parser("evaluate", help="score a model on a task: check, fit, forecast, counterfactuals")
    e.add_argument("task", metavar="TASK.toml")
    e.add_argument("model", metavar="MODEL.nimm")
    e.add_argument("--backend", choices=("casadi", "torch"), default=None,
                   help="default: the task's [fit] backend, else casadi")
    e.add_argument("--output", metavar="REPORT.json")
    e.add_argument("--plot", metavar="DIR", help="write fit_forecast.png and counterfactual_*.png here")

    a = sub.add_parser("agent", help="build models for a task with a language model in the loop")
    a.add_argument("task", metavar="TASK.toml")
    a.add_argument("--endpoint", required=True, metavar="URL",
                   help="an OpenAI-compatible API base URL (key from $NIMM_LLM_API_KEY)")
    a.add_argument("--llm", required=True, metavar="NAME", help="the model name at that endpoint")
    a.add_argument("--budget", type=int, default=20, help="language-model calls, repairs included (default 20)")
    where = a.add_mutually_exclusive_group()
    where.add_argument("--workers", type=int, default=2, help="local worker processes (default 2)")
    where.add_argument("--cluster", metavar="ADDRESS", help="a Dask scheduler, e.g. tcp://host:8786")
    a.add_argument("--out", metavar="RUN_DIR", help="default: runs/<task name>")
    a.add_argument("--resume", metavar="RUN_DIR", help="continue a stopped run in RUN_DIR")
    a.add_argument("--seed", type=int, default=0)
    a.add_argument("--validation", type=float, default=0.2,
                   help="fraction of each series' last points held out for validation (default 0.2)")
    a.add_argument("--branches", type=int, default=3, help="initial branches (default 3)")
    a.add_argument("--timeout", type=float, default=300.0, help="seconds per candidate fit (default 300)")
    a.add_argument("--llm-timeout", type=float, default=120.0, metavar="SECONDS",
                   help="deadline of one language-model call, retries included (default 120)")
    a.add_argument("--allow-insecure", action="store_true",
                   help="allow plain http:// to a host other than this machine (the key travels in clear)")
    a.add_argument("--constrain", choices=("none", "vllm", "llama-cpp", "sglang"), default="none",
                   help="send the generation grammar to a server that supports it")

    w = sub.add_parser("show", help="show the compiled equations")
    w.add_argument("model", metavar="MODEL")
    w.add_argument("--format", choices=("latex", "text"), default="latex",
                   help="LaTeX equations (default) or plain text")
    w.add_argument("--latex", action="store_const", const="latex", dest="format",
                   help="the same as --format latex")
    return p


def _read(path: str) -> str:
    from .api import read_model_text

    try:
        return read_model_text(path)
    except OSError as e:
        raise UsageError(f"nimm: cannot read `{path}`: {e.strerror or e}") from None


def cmd_check(args) -> int:
    from .diagnostics import has_errors, render_json, render_text
    from .api import check

    if args.data is not None and not os.path.isfile(args.data):
        raise UsageError(f"nimm: cannot read `{args.data}`: no such file")
    all_diags, texts = [], []
    for path in args.files:
        source = _read(path)
        diags = [d.with_file(path) for d in check(source, path)]
        if (args.data or args.probe) and not has_errors(diags):
            diags += _run_time_diagnostics(source, path, args.data, args.probe)
        all_diags += diags
        if args.format == "text" and diags:
            texts.append(render_text(diags, source))
    if args.format == "json":
        print(render_json(all_diags))
    elif texts:
        print("\n".join(texts))
    n_err = sum(d.is_error for d in all_diags)
    n_warn = len(all_diags) - n_err
    sys.stdout.flush()  # keep the summary after the diagnostics when both streams share a terminal
    if args.format == "text":
        print(f"{len(args.files)} file(s) checked: {n_err} error(s), {n_warn} warning(s)", file=sys.stderr)
    return EXIT_ERROR if has_errors(all_diags) else EXIT_OK


def _run_time_diagnostics(source: str, path: str, data: Optional[str], probe: bool) -> list:
    """`check --data` and `--probe`: the data binding (TASKS.md §5), then the probe when the
    binding found no error. A table that cannot be read is a DataError (exit 1)."""
    from .api import load_source
    from .diagnostics import has_errors
    from .errors import ModelError

    try:
        model = load_source(source, path)
        model.ir
    except ModelError as e:  # a model the checker passed but lowering refused
        return [d.with_file(path) for d in e.diagnostics]
    found = []
    if data:
        from .runtime.binding import bind

        found += bind(model, data, command="check")
    if probe and not has_errors(found):
        from .runtime.probe import probe as run_probe

        found += run_probe(model, data=data)
    return [d.with_file(path) for d in found]


def _load(path: str):
    from .api import load_source

    return load_source(_read(path), path)


MAX_OUTPUT_TIMES = 1_000_000  # more is a typo, not a table anyone reads; refuse it instead of hanging


def _parse_times(spec: str):
    import math

    import numpy as np

    try:
        t0, t1, n = spec.split(":")
        t0, t1, n = float(t0), float(t1), int(n)
    except ValueError:
        raise UsageError(f"nimm: --times expects T0:T1:N (e.g. 0:30:301), got `{spec}`") from None
    if not (math.isfinite(t0) and math.isfinite(t1)):
        raise UsageError(f"nimm: --times needs finite T0 and T1, got `{spec}`")
    if not 1 <= n <= MAX_OUTPUT_TIMES or not t1 >= t0:
        raise UsageError(f"nimm: --times needs 1 <= N <= {MAX_OUTPUT_TIMES} and T1 >= T0, got `{spec}`")
    return np.linspace(t0, t1, n)


def _check_writable(path: Optional[str], option: str) -> None:
    """Refuse an output path that cannot be written before any work is done (a fit may take minutes)."""
    if path is None:
        return
    folder = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        raise UsageError(f"nimm: {option} `{path}` is a directory; give a file name")
    if not os.path.isdir(folder):
        raise UsageError(f"nimm: {option} `{path}`: the folder `{folder}` does not exist")
    if not os.access(folder, os.W_OK):
        raise UsageError(f"nimm: {option} `{path}`: the folder `{folder}` is not writable")


def _torch_threads(backend: Optional[str]) -> None:
    """Before Torch work: the thread count that measures best here (runtime/torch_threads.py)."""
    if backend == "torch":
        from .runtime.torch_threads import use_best_torch_threads

        use_best_torch_threads()


def cmd_simulate(args) -> int:
    from .backends.protocol import default_times
    from .errors import FitError, NimmError

    _check_writable(args.output, "--output")
    _check_writable(args.plot, "--plot")
    for option, value in (("--rtol", args.rtol), ("--atol", args.atol)):
        if not 0 < value < 1:
            raise UsageError(f"nimm: {option} needs a tolerance between 0 and 1, got {value:g}")
    model = _load(args.model)
    ir = model.ir
    if ir.is_static and args.times:
        raise UsageError(f"nimm: `{ir.name}` is a static model (no time): --times does not apply; "
                         "give its inputs with --data TABLE.csv")
    if args.scenario is not None and args.scenario not in ir.scenarios:
        known = ", ".join(ir.scenarios) or "none"
        raise UsageError(f"nimm: unknown scenario `{args.scenario}` (this model declares: {known})")
    params, weights = None, None
    if args.fit:
        from .runtime.fit import load_fit

        restored = load_fit(args.fit)
        params, weights = restored["params"], restored.get("weights") or None
        unknown = sorted(set(params) - {p.name for p in ir.params})
        if unknown:
            raise FitError(f"{args.fit}: params {', '.join(unknown)} are not in model `{ir.name}` "
                           f"(is this the fit of another model?)")
    _torch_threads(args.backend)
    sim = model.compile(args.backend)
    grid = _parse_times(args.times) if args.times else None
    if grid is not None and ir.t0 is not None and grid[0] < ir.t0:
        raise UsageError(f"nimm: --times starts at {grid[0]:g}, before the model's clock origin "
                         f"{ir.time_name} = {ir.t0:g} (`time {ir.time_name} ... from {ir.t0:g}`)")

    # One run per data series (a table without `series` is one run); no data: one run.
    runs: list[tuple[object, object, object]] = []  # (series label, times, inputs)
    if args.data:
        from .runtime.binding import load_bound

        dataset = load_bound(ir, args.data, command="simulate")  # E601, E603 as diagnostics
        for w in dataset.warnings:
            print(f"nimm: warning: {w}", file=sys.stderr)
        for series in dataset.series:
            if dataset.static:
                runs.append((series.label, None, series.input_frame()))
            else:
                runs.append((series.label, grid if grid is not None else series.times,
                             dict(series.inputs) or None))
    else:
        times = grid if grid is not None else (None if ir.is_static else default_times(ir))
        runs.append((None, times, None))

    if not runs:
        raise NimmError(f"{args.data}: the table has no data rows")

    import pandas as pd

    frames, results = [], []
    for label, times, inputs in runs:
        result = sim.simulate(times, params=params, scenario=args.scenario, inputs=inputs,
                              weights=weights, rtol=args.rtol, atol=args.atol)
        for w in result.warnings:
            print(f"nimm: warning: {w}", file=sys.stderr)
        frame = result.to_frame()
        if len(runs) > 1:
            frame.insert(0, "series", label)
        frames.append(frame)
        results.append((result, times, inputs))
    table = pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]
    table.to_csv(args.output if args.output else sys.stdout, index=False)

    if args.plot:
        from .runtime.plots import plot_scenario

        result, times, inputs = results[0]  # the first series
        title = ir.name if len(runs) == 1 else f"{ir.name}, series {runs[0][0]}"
        if args.scenario is not None:
            baseline = sim.simulate(times, params=params, scenario=None, inputs=inputs, weights=weights,
                                    rtol=args.rtol, atol=args.atol)
            written = plot_scenario(baseline, result, args.plot,
                                    title=f"{title}: baseline vs {args.scenario}", scenario=args.scenario)
        else:
            written = plot_scenario(result, None, args.plot, title=title)
        print(f"nimm: plot written to {written}", file=sys.stderr)
    return EXIT_OK


def cmd_fit(args) -> int:
    from .runtime.fit import format_report

    if args.starts < 1:
        raise UsageError(f"nimm: --starts needs at least 1 start, got {args.starts}")
    if not 0.0 <= args.holdout < 1.0:
        raise UsageError(f"nimm: --holdout needs a fraction in [0, 1), got {args.holdout}")
    _check_writable(args.output, "--output")
    _check_writable(args.plot, "--plot")
    model = _load(args.model)
    _torch_threads(args.backend)
    result = model.fit(args.data, backend=args.backend, starts=args.starts, holdout=args.holdout,
                       seed=args.seed, progress=sys.stderr.isatty(), hessian=args.hessian)
    print(format_report(result), flush=True)  # before the notes on stderr
    for w in result.warnings:
        print(f"nimm: warning: {w}", file=sys.stderr)
    if args.output:
        result.save(args.output)
        print(f"nimm: fit written to {args.output}", file=sys.stderr)
    if args.plot:
        from .runtime.plots import plot_fit

        written = plot_fit(model.ir, result.dataset, result, model.compile(args.backend), args.plot)
        print(f"nimm: plot written to {written}", file=sys.stderr)
    return EXIT_OK


def cmd_generate(args) -> int:
    from .diagnostics import render_text
    from .llm.client import OpenAIClient
    from .llm.pipeline import generate_model

    if args.rounds < 1:
        raise UsageError(f"nimm: --rounds needs at least 1, got {args.rounds}")
    if not args.timeout > 0:
        raise UsageError(f"nimm: --timeout needs a positive number of seconds, got {args.timeout}")
    _check_writable(args.output, "--output")
    import os

    from .llm.prompts import summarize_table, task_text
    from .tasks import TaskError, load_task

    text, data = args.task, args.data
    if args.task.endswith(".toml") and os.path.isfile(args.task):
        try:
            task = load_task(args.task, read_held_out=False)  # a generator sees no held-out data
        except TaskError as e:
            raise UsageError(f"nimm: {e}") from None
        text = task_text(task.description, [(c.scenario, c.description) for c in task.counterfactuals])
        data = data or str(task.train)
    if data is not None and not os.path.isfile(data):
        raise UsageError(f"nimm: --data `{data}`: no such file")
    client = OpenAIClient(args.endpoint, args.llm, timeout=args.timeout, constrain=args.constrain,
                          allow_insecure=args.allow_insecure)
    summary = summarize_table(data) if data is not None else None
    result = generate_model(text, client, max_rounds=args.rounds, file=args.output or "<generated>",
                            data=data, probe=data is not None, data_summary=summary)
    error = result.last.error if result.last else None
    if error and not result.source:  # no model at all: the language model could not be had
        print(f"nimm: error: {error}", file=sys.stderr)
        return EXIT_ERROR
    if args.output:
        with open(args.output, "w", encoding="utf-8") as f:
            f.write(result.source)
    else:
        print(result.source, end="")
    clean = "binds to the data and probes clean" if data is not None else "checks clean"
    print(f"nimm: {len(result.rounds)} round(s); the last version "
          f"{clean if result.ok else f'still has errors ({result.stage})'}", file=sys.stderr)
    if result.diagnostics:
        print(render_text(result.diagnostics, result.source), file=sys.stderr)
    if error:
        print(f"nimm: error: {error}", file=sys.stderr)
    return EXIT_OK if result.ok else EXIT_ERROR


def cmd_evaluate(args) -> int:
    """Exit 0 when every step ran (whatever the scores), 1 when the model failed a step, 2 usage."""
    import os

    from .tasks import TaskError, evaluate, load_task

    _check_writable(args.output, "--output")
    if args.plot is not None and os.path.exists(args.plot) and not os.path.isdir(args.plot):
        raise UsageError(f"nimm: --plot `{args.plot}` is a file; give a directory")
    if not os.path.isfile(args.model):
        raise UsageError(f"nimm: cannot read `{args.model}`: no such file")
    try:
        task = load_task(args.task)
    except TaskError as e:
        raise UsageError(f"nimm: {e}") from None
    _torch_threads(args.backend or task.fit.backend)
    report = evaluate(task, args.model, backend=args.backend, plot_dir=args.plot,
                      progress=sys.stderr.isatty())
    print(report.summary(), flush=True)
    if args.output:
        report.save(args.output)
        print(f"nimm: report written to {args.output}", file=sys.stderr)
    for path in report.plots:
        print(f"nimm: plot written to {path}", file=sys.stderr)
    if report.plot_error:
        print(f"nimm: warning: {report.plot_error}", file=sys.stderr)
    return EXIT_OK if report.ok else EXIT_ERROR


def cmd_agent(args) -> int:
    from pathlib import Path

    from .agent import AgentConfig, run_agent
    from .agent.executor import make_executor
    from .llm.client import OpenAIClient
    from .tasks import TaskError, load_task

    if args.budget < 1:
        raise UsageError(f"nimm: --budget needs at least 1 call, got {args.budget}")
    if not 0.0 <= args.validation < 1.0:
        raise UsageError(f"nimm: --validation needs a fraction in [0, 1), got {args.validation}")
    if args.workers < 1 or args.branches < 1 or not args.timeout > 0:
        raise UsageError("nimm: --workers and --branches need at least 1, --timeout a positive number")
    try:
        task = load_task(args.task, read_held_out=False)
    except TaskError as e:
        raise UsageError(f"nimm: {e}") from None
    out = Path(args.resume or args.out or Path("runs") / task.name)
    if args.resume and not (out / "tree.json").is_file():
        raise UsageError(f"nimm: --resume `{out}`: no tree.json there")
    if not args.resume and (out / "tree.json").exists():
        raise UsageError(f"nimm: `{out}` already holds a run; use --resume {out} or another --out")
    client = OpenAIClient(args.endpoint, args.llm, constrain=args.constrain, timeout=args.llm_timeout,
                          allow_insecure=args.allow_insecure)
    executor = make_executor(args.workers, args.cluster, args.timeout)
    try:
        config = AgentConfig(Path(args.task), out, budget=args.budget, branches=args.branches,
                             validation=args.validation, seed=args.seed)
        result = run_agent(config, client, executor)
    finally:
        executor.close()
    print(f"best model: {out / 'best.nimm'}" if result.best else "no candidate could be fitted")
    print(f"report: {out / 'report.md'}")
    return EXIT_OK if result.best else EXIT_ERROR


def cmd_show(args) -> int:
    model = _load(args.model)
    print(model.latex() if args.format == "latex" else model.equations(), end="")
    return EXIT_OK


def _glue_negative_times(argv: list[str]) -> list[str]:
    """`--times -5:5:3` would read as an unknown option: glue a negative range to its flag."""
    out, i = [], 0
    while i < len(argv):
        if argv[i] == "--times" and i + 1 < len(argv) and argv[i + 1].startswith("-"):
            out.append(f"--times={argv[i + 1]}")
            i += 2
        else:
            out.append(argv[i])
            i += 1
    return out


def main(argv: Optional[Sequence[str]] = None) -> int:
    from .errors import ModelError, NimmError
    from .diagnostics import render_text

    argv = _glue_negative_times(list(sys.argv[1:] if argv is None else argv))
    try:
        args = _parser().parse_args(argv)
    except SystemExit as e:  # argparse: --help (0) or a usage error (2)
        return int(e.code or 0)
    commands = {"check": cmd_check, "simulate": cmd_simulate, "fit": cmd_fit, "show": cmd_show,
                "generate": cmd_generate, "evaluate": cmd_evaluate, "agent": cmd_agent}
    try:
        return commands[args.command](args)
    except UsageError as e:
        print(str(e), file=sys.stderr)
        return EXIT_USAGE
    except ModelError as e:
        print(render_text(e.diagnostics, e.source), file=sys.stderr)
        return EXIT_ERROR
    except NimmError as e:
        print(f"nimm: error: {e}", file=sys.stderr)
        return EXIT_ERROR
    except ValueError as e:  # bad params / scenario names reported by the runtime
        print(f"nimm: error: {e}", file=sys.stderr)
        return EXIT_ERROR
    except OSError as e:  # a write that failed after the up-front checks (disk full, permissions)
        print(f"nimm: error: cannot write `{e.filename}`: {e.strerror or e}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("nimm: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
