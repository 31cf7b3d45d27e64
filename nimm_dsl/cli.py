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


def _seed(text: str) -> int:
    """A seed numpy accepts; argparse puts the option's name before the message."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got `{text}`") from None
    if not 0 <= value < 2**32:
        raise argparse.ArgumentTypeError(f"expected a number from 0 to 2^32 - 1, got {value}")
    return value


class _Version(argparse.Action):
    """`--version`, looking the installed version up only when asked: importlib.metadata adds
    about 15 ms to every cold command."""

    def __init__(self, option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS,
                 help="show the program's version number and exit"):
        super().__init__(option_strings, dest, nargs=0, default=default, help=help)

    def __call__(self, parser, namespace, values, option_string=None):
        from importlib.metadata import PackageNotFoundError, version

        try:
            installed = version("nimm_dsl")
        except PackageNotFoundError:  # run from a source tree that was never installed
            installed = "(not installed)"
        print(f"nimm {installed}")
        parser.exit()


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="nimm", description="Check, simulate and fit .nimm models.")
    p.add_argument("--version", action=_Version)
    sub = p.add_subparsers(dest="command", required=True)

    c = sub.add_parser("check", help="parse and check model files")
    c.add_argument("files", nargs="+", metavar="FILE")
    c.add_argument("--format", choices=("text", "json"), default="text")
    c.add_argument("--data", metavar="DATA.csv", help="also check that the table fits the model (E601-W606)")
    c.add_argument("--probe", action="store_true",
                   help="also simulate every scenario once at the defaults (E801-W804; loads the back end)")
    c.add_argument("--task", metavar="TASK.toml",
                   help="read table(...) files from the ones the task provides ([data] tables)")

    s = sub.add_parser("simulate", help="simulate a model (optionally a fitted one, under a scenario)")
    s.add_argument("model", metavar="MODEL")
    s.add_argument("--fit", metavar="FIT.json", help="params (and neural weights) from `nimm fit`")
    s.add_argument("--reuse-fit", action="store_true",
                   help="use a FIT.json of another model or of an earlier version of this one "
                        "(its param names must still match; the model's consts are kept)")
    s.add_argument("--scenario", metavar="NAME")
    s.add_argument("--data", metavar="DATA.csv", help="inputs and output times from a data table")
    s.add_argument("--times", metavar="T0:T1:N", help="N evenly spaced output times from T0 to T1")
    s.add_argument("--backend", choices=("casadi", "torch"), default="casadi")
    s.add_argument("--method", choices=("bdf", "adams"), default="bdf", help=METHOD_HELP)
    s.add_argument("--output", metavar="OUT.csv", help="write the table here (default: stdout)")
    s.add_argument("--plot", metavar="PLOT.png", help="plot the run (baseline vs scenario with --scenario)")
    s.add_argument("--bands", type=float, metavar="LEVEL",
                   help="with --fit: NAME_lo and NAME_hi columns, from params drawn from the fit's covariance "
                        "(e.g. 0.95): prediction intervals for observes, confidence bands for states and lets")
    s.add_argument("--draws", type=int, default=300, help="parameter draws for --bands (default 300)")
    s.add_argument("--states", action="store_true", help="plot the states too (default: the observes)")
    s.add_argument("--log", action="store_true", help="logarithmic value axes in the plot (positive quantities)")
    s.add_argument("--seed", type=_seed, default=0, help="seed of the draws for --bands")
    s.add_argument("--rtol", type=float, default=1e-8, help="relative tolerance of the solver (default 1e-8)")
    s.add_argument("--atol", type=float, default=1e-8,
                   help="absolute tolerance, in each state's unit (default 1e-8)")

    f = sub.add_parser("fit", help="fit params (and neural weights) to data")
    f.add_argument("model", metavar="MODEL")
    f.add_argument("data", metavar="DATA.csv")
    f.add_argument("--backend", choices=("casadi", "torch"), default="casadi")
    f.add_argument("--method", choices=("bdf", "adams"), default="bdf", help=METHOD_HELP)
    f.add_argument("--output", metavar="FIT.json")
    f.add_argument("--plot", metavar="FIT.png")
    f.add_argument("--starts", type=int, default=1, help="multi-start: N Latin-hypercube starts")
    f.add_argument("--holdout", type=float, default=0.0,
                   help="fraction of each series' last times held out for early stopping (torch)")
    f.add_argument("--seed", type=_seed, default=0, help="seed of the Latin-hypercube starts (0 to 2^32 - 1)")
    f.add_argument("--log", action="store_true", help="logarithmic value axes in the plot (positive quantities)")
    f.add_argument("--profile", nargs="*", metavar="NAME",
                   help="profile likelihood of these estimated params (none named: all); with --plot "
                        "also writes PLOT_profiles.png. Put it after MODEL and DATA.csv")
    f.add_argument("--profile-workers", type=int, default=None, metavar="N",
                   help="profiles computed in N processes at once (default: one per core, CasADi only)")
    f.add_argument("--hessian", choices=("gauss-newton", "exact"), default="gauss-newton",
                   help="curvature behind the standard errors: the Fisher information (default) or "
                        "the exact Hessian of the loss (slower on large models)")
    f.add_argument("--max-iter", type=int, default=None, metavar="N",
                   help="iterations of the optimiser: CasADi, its iteration limit; Torch, its Adam "
                        "epochs (default 50, 30 with neural terms)")
    f.add_argument("--lbfgs-iter", type=int, default=None, metavar="N",
                   help="Torch: L-BFGS iterations after the Adam epochs (default 50)")
    f.add_argument("--dispersion", choices=("adjusted", "ml"), default="adjusted",
                   help="params that only set a negbinomial dispersion: Cox–Reid adjusted profile "
                        "likelihood (default; less biased in small samples) or maximum likelihood")

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
    a.add_argument("--seed", type=_seed, default=0, help="seed of the search (0 to 2^32 - 1)")
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
    w.add_argument("--all", action="store_true",
                   help="every element of every family (default: the first two, a count and the last)")
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
    tables = _task_tables(args.task) if args.task else None
    all_diags, texts = [], []
    for path in args.files:
        source = _read(path)
        diags = [d.with_file(path) for d in check(source, path, tables)]
        if (args.data or args.probe) and not has_errors(diags):
            diags += _run_time_diagnostics(source, path, args.data, args.probe, tables)
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


METHOD_HELP = ("CasADi's integration method: bdf (CVODES BDF, stiff-capable; the default) or adams "
               "(CVODES Adams without a Jacobian: much faster on large non-stiff models such as "
               "metapopulations, wrong for stiff ones)")


def _simulator(model, args):
    """The simulator a command uses: the back end's shared one, or CasADi with --method adams."""
    if getattr(args, "method", "bdf") == "adams":
        if args.backend != "casadi":
            raise UsageError("nimm: --method adams is a CasADi integration method; the torch back end "
                             "has its own solvers")
        return model.compile("casadi", method="adams")
    return model.compile(args.backend)


def _task_tables(task_file: str):
    """The tables a task provides to `table(...)`, as `nimm evaluate` reads them for this task."""
    from .tasks import TaskError, load_task

    try:
        return load_task(task_file, read_held_out=False).table_access()
    except TaskError as e:
        raise UsageError(f"nimm: {e}") from None


def _run_time_diagnostics(source: str, path: str, data: Optional[str], probe: bool, tables=None) -> list:
    """`check --data` and `--probe`: the data binding (TASKS.md §5), then the probe when the
    binding found no error. A table that cannot be read is a DataError (exit 1)."""
    from .api import load_source
    from .diagnostics import has_errors
    from .errors import ModelError

    try:
        model = load_source(source, path, tables)
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


MAX_PLOTTED_SERIES = 6  # facets of a simulate plot; more would be unreadable
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


def _same_file(a: str, b: str) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist (yet)
        return os.path.realpath(a) == os.path.realpath(b)


def _check_writable(path: Optional[str], option: str, inputs: Sequence[Optional[str]] = ()) -> None:
    """Refuse an output path that cannot be written before any work is done (a fit may take
    minutes), and one that is an input of the run (it would be replaced by the output)."""
    if path is None:
        return
    if option == "--plot" and os.path.splitext(path)[1]:  # without one `.png` is added
        from .runtime.plots import plot_formats

        extension = os.path.splitext(path)[1][1:].lower()
        if extension not in plot_formats():
            raise UsageError(f"nimm: --plot `{path}`: unknown image format `.{extension}` "
                             f"(known: {', '.join(plot_formats())})")
    for source in inputs:
        if source is not None and _same_file(path, source):
            raise UsageError(f"nimm: {option} `{path}` is an input of this run (`{source}`); "
                             "write the output to another file")
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
    from .runtime.culprit import simulate  # names the model line of a NaN

    inputs = (args.model, args.fit, args.data)
    _check_writable(args.output, "--output", inputs)
    _check_writable(args.plot, "--plot", inputs + (args.output,))
    for option, value in (("--rtol", args.rtol), ("--atol", args.atol)):
        if not 0 < value < 1:
            raise UsageError(f"nimm: {option} needs a tolerance between 0 and 1, got {value:g}")
    model = _load(args.model)
    ir = model.ir
    if ir.is_static and args.plot:
        raise UsageError(f"nimm: `{ir.name}` is a static model (no time axis to plot): --plot does not apply; "
                         "`nimm fit --plot` draws it fitted against observed")
    if ir.is_static and args.times:
        raise UsageError(f"nimm: `{ir.name}` is a static model (no time): --times does not apply; "
                         "give its inputs with --data TABLE.csv")
    if args.scenario is not None and args.scenario not in ir.scenarios:
        known = ", ".join(ir.scenarios) or "none"
        raise UsageError(f"nimm: unknown scenario `{args.scenario}` (this model declares: {known})")
    if args.bands is not None and not (args.fit and 0 < args.bands < 1 and args.draws >= 10):
        raise UsageError("nimm: --bands needs --fit FIT.json, a level between 0 and 1 (e.g. 0.95) "
                         "and --draws of at least 10")
    params, weights, uncertainty, per_series = None, None, None, {}
    if args.fit:
        from .runtime.fit import load_fit, params_for_model

        restored = load_fit(args.fit)
        params, weights, notes = params_for_model(restored, ir, args.fit, reuse=args.reuse_fit)
        weights = weights or None
        per_series = restored.get("series_params") or {}
        for note in notes:
            _warn(note)
        if args.bands is not None:
            from .runtime.bands import Uncertainty

            try:
                uncertainty = Uncertainty.from_fit(restored["document"], ir)
            except FitError as e:
                raise FitError(f"{args.fit}: {e}") from None
    _torch_threads(args.backend)
    sim = _simulator(model, args)
    grid = _parse_times(args.times) if args.times else None
    if grid is not None and ir.t0 is not None and grid[0] < ir.t0:
        raise UsageError(f"nimm: --times starts at {grid[0]:g}, before the model's clock origin "
                         f"{ir.time_name} = {ir.t0:g} (`time {ir.time_name} ... from {ir.t0:g}`)")

    # One run per data series (a table without `series` is one run); no data: one run.
    runs: list[tuple[object, object, dict]] = []  # (series label, times, inputs and table doses)
    if args.data:
        from .runtime.binding import load_bound

        dataset = load_bound(ir, args.data, command="simulate")  # E601, E603 as diagnostics
        for w in dataset.warnings:
            _warn(w)
        for series in dataset.series:
            if dataset.static:
                runs.append((series.label, None, {"inputs": series.input_frame()}))
            else:
                runs.append((series.label, grid if grid is not None else series.times, series.run_options()))
    else:
        times = grid if grid is not None else (None if ir.is_static else default_times(ir))
        runs.append((None, times, {}))
        from_table = [] if ir.is_static else [d.name for d in ir.doses_for(args.scenario) if d.from_data]
        if from_table:  # else a PK model simulates flat zeros without a word
            _warn(f"dose(s) {', '.join(f'`{n}`' for n in dict.fromkeys(from_table))} come from a data table "
                  "(`at data`): without --data none is given; pass --data TABLE.csv with the dose rows")

    if not runs:
        raise NimmError(f"{args.data}: the table has no data rows")

    import pandas as pd

    frames, results = [], []
    for label, times, options in runs:
        # a per-series param takes its series' fitted value (FIT.json series_params), else the mean
        own = {k: v[label] for k, v in per_series.items() if label in v}
        if args.data and len(own) < len(per_series):  # a new subject, or a relabelled table
            missing = ", ".join(f"`{k}`" for k in per_series if k not in own)
            which = f"series `{label}` of {args.data}" if label is not None else f"{args.data} (no `series` column)"
            _warn(f"{which} has no fitted value of {missing} in {args.fit}: it takes the mean over the "
                  "fitted series")
        inputs = options.get("inputs")
        result = simulate(sim, times, params={**(params or {}), **own} or None, scenario=args.scenario, **options,
                              weights=weights, rtol=args.rtol, atol=args.atol)
        for w in result.warnings:
            _warn(w)
        frame = result.to_frame()
        if times is not None:  # the inputs in force, beside the outputs (a static table has them already)
            from .runtime.input_values import input_values

            for k, (name, values) in enumerate(input_values(ir, times, args.scenario, inputs, params).items()):
                frame.insert(1 + k, name, values)
        band = None
        if uncertainty is not None:
            from .runtime.bands import bands, with_bands

            band = bands(sim, ir, uncertainty.with_values(own), times, level=args.bands, n_draws=args.draws, seed=args.seed,
                         scenario=args.scenario, **options, weights=weights, rtol=args.rtol, atol=args.atol)
            frame = with_bands(frame, band)
        if len(runs) > 1:
            frame.insert(0, "series", label)
        frames.append(frame)
        results.append((result, times, options, own, band))
    table = pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]
    if args.output:
        from .runtime.files import write_text_atomic

        write_text_atomic(args.output, table.to_csv(index=False))
    else:
        table.to_csv(sys.stdout, index=False)

    if args.plot:
        from .runtime.plots import ScenarioRun, save_figure, scenario_figure

        plot_runs = []
        for (label, times, options), (result, _, _, own, band) in zip(runs, results):
            data = next((x for x in dataset.series if x.label == label), None) if args.data else None
            if args.scenario is None:
                plot_runs.append(ScenarioRun(result, None, band, None, data, label if len(runs) > 1 else None))
                continue
            baseline = simulate(sim, times, params={**(params or {}), **own} or None, scenario=None, **options,
                                    weights=weights,
                                    rtol=args.rtol, atol=args.atol)
            base_band = None
            if uncertainty is not None:
                base_band = bands(sim, ir, uncertainty.with_values(own), times,
                                  level=args.bands, n_draws=args.draws, seed=args.seed, **options,
                                  weights=weights, rtol=args.rtol, atol=args.atol)
            plot_runs.append(ScenarioRun(baseline, result, base_band, band, data, label if len(runs) > 1 else None))
        shown = plot_runs[:MAX_PLOTTED_SERIES]
        title = ir.name if args.scenario is None else f"{ir.name}: baseline vs {args.scenario}"
        if len(plot_runs) > len(shown):
            title += f" (first {len(shown)} of {len(plot_runs)} series)"
        figure = scenario_figure(shown, ir, states=args.states, title=title, scenario=args.scenario, log=args.log)
        written = save_figure(figure, args.plot)
        print(f"nimm: plot written to {written}", file=sys.stderr)
    return EXIT_OK


def cmd_fit(args) -> int:
    from .runtime.fit import format_report

    if args.starts < 1:
        raise UsageError(f"nimm: --starts needs at least 1 start, got {args.starts}")
    if args.profile_workers is not None and args.profile_workers < 1:
        raise UsageError(f"nimm: --profile-workers needs at least 1 process, got {args.profile_workers}")
    if not 0.0 <= args.holdout < 1.0:
        raise UsageError(f"nimm: --holdout needs a fraction in [0, 1), got {args.holdout}")
    _check_writable(args.output, "--output", (args.model, args.data))
    _check_writable(args.plot, "--plot", (args.model, args.data, args.output))
    model = _load(args.model)
    _torch_threads(args.backend)
    if not sys.stderr.isatty():  # a log gets a line now and one every 30 s (a terminal: a bar)
        _say(f"nimm: fitting {model.name} to {args.data} ({args.starts} start{'s' * (args.starts > 1)})")
    for flag, value in (("--max-iter", args.max_iter), ("--lbfgs-iter", args.lbfgs_iter)):
        if value is not None and value < 1:
            raise UsageError(f"nimm: {flag} needs at least 1, got {value}")
    if args.lbfgs_iter is not None and args.backend != "torch":
        raise UsageError("nimm: --lbfgs-iter is an option of the Torch fit (--backend torch)")
    options = {"lbfgs_iter": args.lbfgs_iter} if args.lbfgs_iter is not None else {}
    result = model.fit(args.data, backend=args.backend, starts=args.starts, holdout=args.holdout,
                       seed=args.seed, progress=True, hessian=args.hessian, max_iter=args.max_iter,
                       dispersion=args.dispersion, simulator=_simulator(model, args), **options)
    if args.profile is not None:
        from .runtime.fit import profile

        workers = args.profile_workers if args.profile_workers is not None else (os.cpu_count() or 1)
        profile(model.ir, args.data, result, args.profile or None, holdout=args.holdout,
                simulator=_simulator(model, args), workers=workers, max_iter=args.max_iter)
    print(format_report(result), flush=True)  # before the notes on stderr
    for w in result.warnings:
        _warn(w)
    if args.output:
        result.save(args.output)
        print(f"nimm: fit written to {args.output}", file=sys.stderr)
    if args.plot:
        from .runtime.plots import plot_fit

        written = plot_fit(model.ir, result.dataset, result, _simulator(model, args), args.plot,
                           bands=0.95, log=args.log)
        print(f"nimm: plot written to {written}", file=sys.stderr)
        if result.profiles:
            from .runtime.plots import plot_profiles

            stem, ext = os.path.splitext(args.plot)
            written = plot_profiles(result, f"{stem}_profiles{ext or '.png'}")
            print(f"nimm: profile plot written to {written}", file=sys.stderr)
    return EXIT_OK


def cmd_generate(args) -> int:
    from .diagnostics import render_text, visible
    from .llm.client import OpenAIClient
    from .llm.pipeline import generate_model

    if args.rounds < 1:
        raise UsageError(f"nimm: --rounds needs at least 1, got {args.rounds}")
    if not args.timeout > 0:
        raise UsageError(f"nimm: --timeout needs a positive number of seconds, got {args.timeout}")
    _check_writable(args.output, "--output", (args.task, args.data))
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
    _check_writable(args.output, "--output", (data,))  # the task's training table
    client = OpenAIClient(args.endpoint, args.llm, timeout=args.timeout, constrain=args.constrain,
                          allow_insecure=args.allow_insecure)
    summary = summarize_table(data) if data is not None else None
    result = generate_model(text, client, max_rounds=args.rounds, file=args.output or "<generated>",
                            data=data, probe=data is not None, data_summary=summary)
    error = result.last.error if result.last else None
    if error and not result.source:  # no model at all: the language model could not be had
        _say(f"nimm: error: {visible(str(error), keep_lines=True)}")
        return EXIT_ERROR
    if args.output:
        from .runtime.files import write_text_atomic

        write_text_atomic(args.output, result.source)
    else:
        # a terminal acts on escapes in a reply; a file or pipe gets the model as generated
        print(visible(result.source, keep_lines=True) if sys.stdout.isatty() else result.source, end="")
    clean = "binds to the data and probes clean" if data is not None else "checks clean"
    print(f"nimm: {len(result.rounds)} round(s); the last version "
          f"{clean if result.ok else f'still has errors ({result.stage})'}", file=sys.stderr)
    if result.diagnostics:
        print(render_text(result.diagnostics, result.source), file=sys.stderr)
    if error:
        _say(f"nimm: error: {visible(str(error), keep_lines=True)}")
    return EXIT_OK if result.ok else EXIT_ERROR


def cmd_evaluate(args) -> int:
    """Exit 0 when every step ran (whatever the scores), 1 when the model failed a step, 2 usage."""
    import os

    from .tasks import TaskError, evaluate, load_task

    _check_writable(args.output, "--output", (args.task, args.model))
    if args.plot is not None and os.path.exists(args.plot) and not os.path.isdir(args.plot):
        raise UsageError(f"nimm: --plot `{args.plot}` is a file; give a directory")
    if not os.path.isfile(args.model):
        raise UsageError(f"nimm: cannot read `{args.model}`: no such file")
    try:
        task = load_task(args.task)
    except TaskError as e:
        raise UsageError(f"nimm: {e}") from None
    _check_writable(args.output, "--output", [str(p) for p in (task.train, *task.held_out_files)])
    _torch_threads(args.backend or task.fit.backend)
    report = evaluate(task, args.model, backend=args.backend, plot_dir=args.plot,
                      progress=True)  # a bar on a terminal, else a line every 30 s
    print(report.summary(), flush=True)
    if args.output:
        report.save(args.output)
        print(f"nimm: report written to {args.output}", file=sys.stderr)
    for path in report.plots:
        print(f"nimm: plot written to {path}", file=sys.stderr)
    if report.plot_error:
        _warn(report.plot_error)
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
    print(model.latex(args.all) if args.format == "latex" else model.equations(args.all), end="")
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
    import warnings

    from .runtime.interrupt import interrupted, interruptible

    argv = _glue_negative_times(list(sys.argv[1:] if argv is None else argv))
    try:
        args = _parser().parse_args(argv)
    except SystemExit as e:  # argparse: --help (0) or a usage error (2)
        return int(e.code or 0)
    commands = {"check": cmd_check, "simulate": cmd_simulate, "fit": cmd_fit, "show": cmd_show,
                "generate": cmd_generate, "evaluate": cmd_evaluate, "agent": cmd_agent}
    if _stdout_closed():  # started with `>&-`: Python leaves sys.stdout as None
        _say("nimm: standard output is closed; give it somewhere to go (e.g. >/dev/null)")
        return EXIT_USAGE
    try:
        with interruptible(), warnings.catch_warnings():
            # numpy's RuntimeWarnings (overflow in exp, ...) are no message for a user: what went
            # wrong is reported as a diagnostic with the quantity and the time
            warnings.simplefilter("ignore", RuntimeWarning)
            # a library warning (the compiled route falling back, say) reads like our other
            # messages, not as Python's `file:line: Category:` with a source line under it
            warnings.showwarning = lambda message, *_, **__: _say(f"nimm: warning: {message}")
            return commands[args.command](args)
    except BaseException as e:  # noqa: BLE001 - every outcome becomes a message and an exit status
        if isinstance(e, KeyboardInterrupt) or interrupted():  # whatever a solver made of Ctrl-C
            _say("nimm: interrupted")
            return EXIT_INTERRUPTED
        if isinstance(e, SystemExit):
            raise
        code, message = _outcome(e)
        _say(message)
        return code


EXIT_INTERRUPTED = 130  # 128 + SIGINT, as shells report it


def _say(message: str) -> None:
    """A message on stderr; a closed or broken stderr is no reason for a traceback."""
    try:
        print(message, file=sys.stderr, flush=True)
    except (OSError, ValueError, AttributeError):
        pass


def _warn(message: str) -> None:
    """A warning of the run; it may quote a table's column names, hence `visible`."""
    from .diagnostics import visible

    _say(f"nimm: warning: {visible(str(message), keep_lines=True)}")


def _outcome(error: BaseException) -> tuple[int, str]:
    """The exit status and message of an exception that ended a command."""
    from .diagnostics import render_text, visible
    from .errors import ModelError, NimmError, SimulationError

    if isinstance(error, UsageError):
        return EXIT_USAGE, visible(str(error), keep_lines=True)  # may quote a file name
    if isinstance(error, (ModelError, SimulationError)) and error.diagnostics:  # at the model line
        return EXIT_ERROR, render_text(error.diagnostics, error.source)
    if isinstance(error, NimmError):
        return EXIT_ERROR, f"nimm: error: {visible(str(error), keep_lines=True)}"  # may quote a table
    if isinstance(error, BrokenPipeError):  # the reader went away (`nimm simulate M | head -1`)
        _discard_stdout()
        return EXIT_ERROR, "nimm: error: the output stream was closed before the output was written"
    if isinstance(error, OSError):  # a write that failed after the up-front checks (disk full, permissions)
        where = f"`{error.filename}`" if error.filename else "the output"
        return EXIT_ERROR, f"nimm: error: cannot write {where}: {error.strerror or error}"
    if isinstance(error, ValueError) and _raised_by_us(error):  # bad params, scenario, times
        return EXIT_ERROR, f"nimm: error: {visible(str(error), keep_lines=True)}"
    return EXIT_ERROR, (f"nimm: internal error ({type(error).__name__}: {visible(str(error))}); this is a bug in "
                        "nimm_dsl, not in your input: please report it with the command and its files")


def _stdout_closed() -> bool:
    return sys.stdout is None or sys.stdout.closed


def _discard_stdout() -> None:
    """Point stdout at /dev/null, so that Python's final flush does not fail on the broken pipe."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):
        pass


def _raised_by_us(error: BaseException) -> bool:
    """Whether the innermost frame that raised `error` is nimm_dsl's own code (a message we wrote
    for the user), not a library's (a bug of ours that reached a library with bad input)."""
    import traceback

    frames = traceback.extract_tb(error.__traceback__)
    package = os.path.dirname(os.path.abspath(__file__))
    return bool(frames) and os.path.abspath(frames[-1].filename).startswith(package + os.sep)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
