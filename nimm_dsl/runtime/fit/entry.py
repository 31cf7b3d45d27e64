"""`fit` and `nll`: from a model and a data table to a FitResult, through one multi-start loop."""
from __future__ import annotations

import time
from typing import Mapping, Optional

import numpy as np

from ...backends import check_backend, compile_ir
from ...compiler.ir import ModelIR
from ...errors import FitError, SimulationError
from ..binding import load_bound
from ..data import Dataset, load_data
from ..interrupt import interruptible
from .dispersion import (DISPERSION_ESTIMATORS, ESTIMATOR_NAMES, MAX_ROUNDS, TOLERANCE, adjusted_profile,
                         curvature, dispersion_only, hold, maximise)
from .failures import native_output_captured
from .loss import numpy_nll, predict, rmse_by_observe
from ..series_params import by_series, estimated_params, series_key
from .multistart import START_ERRORS, MultiStart, StartOutcome, StartSolver, run_starts, start_origins
from .result import AT_UPPER, FitResult, matrix_dict
from .starts import correlation, finite_difference_hessian, param_labels, standard_errors, start_points


def _casadi(ir, train, valid, rtol, atol, max_iter, seed, simulator, **options):
    from .casadi_paths import casadi_solver

    if ir.neurals and options.get("weights") is None:  # seeded like the Torch path's weights
        options["weights"] = {n.name: n.initial_weights(seed) for n in ir.neurals}
    return casadi_solver(ir, train, rtol, atol, max_iter, simulator, **options)


def _torch(ir, train, valid, rtol, atol, max_iter, seed, simulator, **options):
    from .torch_path import TorchSolver

    return TorchSolver(ir, train, valid, rtol, atol, max_iter, seed, simulator, **options)


# back-end name -> the fitting path for it (nimm_dsl.backends.BACKENDS names the back ends)
PATHS = {"casadi": _casadi, "torch": _torch}

# How the curvature behind the standard errors is computed: the Gauss-Newton / Fisher
# information approximation (first-order sensitivities only; the field's standard) or the exact
# Hessian of the loss (second-order sensitivities, several times the cost on large models).
HESSIANS = ("gauss-newton", "exact")


def information_matrix(solver: StartSolver, outcome: StartOutcome, x: np.ndarray,
                       hessian: str = "gauss-newton") -> np.ndarray:
    """The curvature of the training loss in the estimated params (natural units) at `x`, the
    estimates of `outcome`: the observed information the standard errors invert. "gauss-newton"
    falls back to the exact Hessian on paths without an approximation (IPOPT: neural terms, a
    negbinomial dispersion fitted jointly with them, a sigma that uses its own prediction); where
    no exact Hessian exists either, central differences of the exact gradient."""
    if hessian not in HESSIANS:
        raise ValueError(f"hessian must be one of {', '.join(HESSIANS)}, got {hessian!r}")
    approx = solver.gauss_newton(outcome) if hessian == "gauss-newton" else None
    if approx is not None:
        return np.asarray(approx(x), dtype=float)
    grad, exact = solver.curvature(outcome)
    if exact is not None:
        return np.asarray(exact(x), dtype=float)
    return finite_difference_hessian(grad, x, np.maximum(np.abs(x), 1e-8))


def fit(ir: ModelIR, data, backend: str = "casadi", starts: int = 1, holdout: float = 0.0,
        seed: int = 0, rtol: float = 1e-8, atol: float = 1e-8, max_iter: Optional[int] = None,
        progress: bool = True, file: Optional[str] = None, simulator=None, hessian: str = "gauss-newton",
        dispersion: str = "adjusted", **options) -> FitResult:
    """Fit the estimated params (ParamIR.estimate) and neural weights of `ir` to `data` (a CSV
    path, a DataFrame or a Dataset).

    starts: the defaults, then starts - 1 Latin-hypercube points inside the bounds; every start
    is kept in FitResult.starts. holdout: fraction of each series' last points kept out of the
    fit (validation; the Torch fit also stops early on it). simulator: a compiled simulator of
    `ir` for `backend` to reuse. options: of the path (`ipopt_options` for CasADi; `lr`,
    `lbfgs_iter`, `warm_start`, ... for Torch). hessian: what the standard errors invert (see
    HESSIANS and `information_matrix`). dispersion: how params that only set a negbinomial
    dispersion are estimated, "adjusted" (Cox–Reid adjusted profile likelihood, less biased in
    small samples; runtime/fit/dispersion.py) or "ml" (maximum likelihood with the rest). Solver
    output never reaches the terminal; a fit that fails raises FitError with the cause found and
    a fix."""
    t0 = time.perf_counter()
    check_backend(backend)
    if starts < 1:
        raise ValueError(f"starts must be at least 1, got {starts}")
    if not 0.0 <= holdout < 1.0:  # also refuses NaN
        raise ValueError(f"holdout must be in [0, 1), got {holdout}")
    if hessian not in HESSIANS:
        raise ValueError(f"hessian must be one of {', '.join(HESSIANS)}, got {hessian!r}")
    if dispersion not in DISPERSION_ESTIMATORS:
        raise ValueError(f"dispersion must be one of {', '.join(DISPERSION_ESTIMATORS)}, got {dispersion!r}")
    dataset = load_bound(ir, data, file=file)  # E601-E603 before any work starts (TASKS.md §5)
    if not dataset.observed_names:
        raise FitError(f"{dataset.file}: no observed column to fit")
    if dataset.n_observations == 0:
        raise FitError(f"{dataset.file}: every observed value is missing; nothing to fit")
    train, valid = dataset.split(holdout) if holdout > 0 else (dataset, None)
    nuisance = dispersion_only(ir, train)
    # hybrid models fit everything jointly by maximum likelihood (network weights are outside the
    # adjustment's J, and the alternation would retrain the networks each round)
    held = nuisance if not ir.neurals else []
    adjusted = dispersion == "adjusted" and bool(held)
    estimator = ESTIMATOR_NAMES["adjusted" if adjusted else "ml"] if nuisance else None
    # the starts fit the mean params with the dispersion held at its default; then they alternate
    fit_ir = hold(ir, {p.name: p.default for p in ir.params}, [p.name for p in held]) if held else ir
    with interruptible(), native_output_captured() as terminal:  # Ctrl-C stops the fit
        solver = PATHS[backend](fit_ir, train, valid, rtol, atol, max_iter, seed, simulator, **options)
        solver.progress = terminal if progress else None
        points, origins, notes = solver.warm_start(start_points(solver.est, starts, seed), start_origins(starts))
        try:
            run = run_starts(solver, points, origins, seed, terminal if progress else None)
        except FitError as e:  # a cut counting window (W615) predicts 0 where counts are: the cause
            told = [w for w in dataset.warnings if "warning[W615]" in w]
            if not told:
                raise
            raise FitError(f"{e}. The data binding warned: {told[0]}") from None
        run.warnings[:0] = notes
        held_curvature = None
        if held:
            for record in run.records:  # each start fitted the means at the dispersion's default
                record.start.update({p.name: float(p.default) for p in held})
                if record.params is not None:
                    record.params.update({p.name: float(p.default) for p in held})
            solver, held_curvature = _alternate_dispersion(ir, train, valid, backend, solver, run, held, adjusted,
                                                           seed, max_iter, options)
        return _finish(ir, dataset, train, valid, solver, run, backend, hessian, t0, held_curvature, estimator)


def _alternate_dispersion(ir, train, valid, backend, solver, run: MultiStart, held, adjusted: bool, seed,
                          max_iter, options):
    """Alternate the dispersion-only params `held` (the Cox–Reid adjusted profile, or with
    adjusted=False the plain likelihood, with the means held: one numpy step for both back ends)
    and the mean params at fixed dispersion (the back end's path), from the best start; updates
    run.best. Returns the last mean solver and the Hessian of the minimised profile in `held`."""
    names = [p.name for p in held]
    best, sim, rtol, atol = run.best, solver.simulator, solver.rtol, solver.atol
    values = dict(best.values)
    for round_ in range(MAX_ROUNDS):
        profile = adjusted_profile(ir, train, sim, values, best.weights, solver.est, names, rtol, atol, adjusted)
        found = maximise(profile, held)
        change = max(abs(found[n] - values[n]) / max(abs(values[n]), 1e-300) for n in names)
        values.update(found)
        if change < TOLERANCE:
            break
        if round_ == MAX_ROUNDS - 1:
            run.warnings.append(f"the dispersion ({', '.join(names)}) still moved by {change:.1e} (relative) "
                                f"after {MAX_ROUNDS} rounds of fitting it and the means in turn; the estimates "
                                "may be rough")
            break
        mean = PATHS[backend](hold(ir, values, names), train, valid, rtol, atol, max_iter, seed, sim, **options)
        try:
            refit = mean.solve(np.array([values[p.name] for p in mean.est], dtype=float))
        except START_ERRORS as e:
            run.warnings.append(f"the fit of the means at the updated dispersion failed ({e}); the estimates "
                                "are those of the previous round")
            break
        solver, best = mean, refit
        values = dict(refit.values, **{n: values[n] for n in names})
    profile = adjusted_profile(ir, train, sim, values, best.weights, solver.est, names, rtol, atol, adjusted)
    run.best = StartOutcome(values, best.weights, profile.nll(values), best.status, best.converged, best.notes)
    return solver, curvature(profile, names)


def _finish(ir, dataset: Dataset, train: Dataset, valid: Optional[Dataset], solver, run: MultiStart,
            backend: str, hessian: str, t0: float, held_curvature: Optional[np.ndarray] = None,
            estimator: Optional[str] = None) -> FitResult:
    best, sim, rtol, atol = run.best, solver.simulator, solver.rtol, solver.atol
    est = estimated_params(ir, train)
    names = [p.name for p in est]
    x = np.array([best.values[n] for n in names], dtype=float)
    warnings = list(dataset.warnings) + list(run.warnings) + list(best.notes)
    if not names and not ir.neurals:
        warnings.append("nothing to estimate: the model has no `param` (only consts) and no neural "
                        "term; the loss is that of the declared values")
    stderr, flat, cov, falling = {n: None for n in names}, [], np.full((len(names), len(names)), np.nan), []
    if names:
        try:
            # the solver's params (the mean params, when the dispersion was held); the held
            # dispersion's block is its adjusted profile's curvature, orthogonal to the means
            fitted = [names.index(p.name) for p in solver.est]
            H = np.zeros((len(names), len(names)))
            if fitted:
                H[np.ix_(fitted, fitted)] = information_matrix(solver, best, x[fitted], hessian)
            if held_curvature is not None:
                rest = [j for j in range(len(names)) if j not in fitted]
                H[np.ix_(rest, rest)] = held_curvature
            lsq_only = all(o.noise == "lsq" for o in ir.observes if o.name in train.observed_names)
            stderr, flat, cov, falling = standard_errors(H, names, x, best.loss, train.n_observations, lsq_only)
            if not np.all(np.isfinite(H)):
                warnings.append("no standard errors: the curvature of the loss is not finite at the estimate")
        except (SimulationError, RuntimeError, ImportError) as e:
            warnings.append(f"no standard errors: the curvature of the loss could not be computed ({e})")
    labels, label_warnings = param_labels(est, best.values, stderr, flat, falling)
    warnings += label_warnings
    for p in dispersion_only(ir, train):
        if AT_UPPER in labels.get(p.name, []):  # k -> inf is the Poisson limit
            warnings.append(f"the dispersion `{p.name}` ran to its upper bound: the counts spread no more "
                            "than Poisson counts around the model, so `~ poisson` is the simpler noise "
                            "model for them")
    metrics = {"rmse": rmse_by_observe(train, predict(sim, train, best.values, best.weights, rtol, atol))}
    holdout_after = {}
    if valid is not None and valid.series:
        preds = predict(sim, valid, best.values, best.weights, rtol, atol)
        metrics["holdout_rmse"] = rmse_by_observe(valid, preds)
        metrics["holdout_loss"] = float(numpy_nll(ir, valid, preds, best.values))
        holdout_after = {k: float((full.times[t.n_points - 1] + full.times[t.n_points]) / 2)
                         for k, (full, t) in enumerate(zip(dataset.series, train.series))
                         if t.times is not None and t.n_points < full.n_points}
    params, series_params = dict(best.values), by_series(ir, best.values, train)
    for name, found in series_params.items():
        # the model's own entry: the mean over the series (a typical value for runs without series)
        params[name] = float(np.mean(list(found.values())))
        for label in found:
            params.pop(series_key(name, label))
    series_stderr = {name: {label: stderr.pop(series_key(name, label), None) for label in found}
                     for name, found in series_params.items()}
    # covariance and correlation over the shared params only (a per-series param has one
    # estimate per series: series_stderr)
    shared = [n for n in names if n in params]
    cov = cov[np.ix_(*[[names.index(n) for n in shared]] * 2)]
    names = shared + [n for n in series_params if n not in names]
    stderr.update({n: None for n in series_params})  # no single standard error: see series_stderr
    return FitResult(model=ir.name, backend=backend, params=params, loss=float(best.loss),
                     metrics=metrics, stderr=stderr, warnings=list(dict.fromkeys(warnings)),
                     weights=best.weights, units={p.name: p.unit for p in ir.params}, estimated=names,
                     n_observations=train.n_observations, seconds=time.perf_counter() - t0, dataset=dataset,
                     holdout_after=holdout_after, labels={n: v for n, v in labels.items() if v},
                     starts=run.records, covariance=matrix_dict(shared, cov),
                     correlation=matrix_dict(shared, correlation(cov)),
                     series_params=series_params, series_stderr=series_stderr,
                     fingerprint=ir.fingerprint(), dispersion_estimator=estimator)


def nll(ir: ModelIR, data, params: Optional[Mapping] = None, weights=None, backend: str = "casadi",
        rtol: float = 1e-8, atol: float = 1e-8) -> float:
    """The negative log-likelihood of `data` at `params` (defaults elsewhere), neural penalties not
    included: what a fit minimises, for checks and profiles."""
    dataset = data if isinstance(data, Dataset) else load_data(data, ir)
    values = {p.name: p.default for p in ir.params}
    values.update(params or {})
    options = {"rtol": rtol, "atol": atol} if backend == "casadi" else {}
    sim = compile_ir(ir, backend, **options)
    return numpy_nll(ir, dataset, predict(sim, dataset, values, weights, rtol, atol), values)
