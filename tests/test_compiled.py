"""The compiled route (nimm_dsl/backends/compiled.py): same results as the interpreted CasADi path
and scipy, a cache that never loads a planted object, and a clean fallback.

Where this machine has no C compiler or no SUNDIALS or GSL headers, the parity tests still run and
assert the fallback instead (same results, one warning): nothing is skipped.
"""
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from scipy.integrate import solve_ivp

import nimm_dsl
from nimm_dsl.backends import compiled
from nimm_dsl.backends.casadi_backend import compile_casadi
from nimm_dsl.backends.protocol import segment_tail
from nimm_dsl.errors import SimulationError

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
# what the CI machine has (make setup installs libsundials-dev and libgsl-dev); without them the
# fallback is asserted
TOOLCHAIN = (shutil.which("cc") is not None and Path("/usr/include/cvodes/cvodes.h").exists()
             and Path("/usr/include/gsl/gsl_odeiv2.h").exists())
TOL = dict(rtol=1e-10, atol=1e-10)


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    """A fresh cache directory and a process state as if new, for every test."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    compiled.forget_loaded()
    yield tmp_path / "cache" / "nimm_dsl" / "compiled"
    compiled.forget_loaded()


def load(name):
    return nimm_dsl.load(EXAMPLES / name).ir


def states(result, names):
    return np.array([result[n] for n in names])


def close(a, b, rel=1e-6):
    """Every state within `rel` of its range."""
    scale = np.max(np.abs(b), axis=1, keepdims=True)
    return float(np.max(np.abs(a - b) / scale)) <= rel


def both(ir, times, **kw):
    """(compiled result, interpreted result); asserts which route ran."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fast = compile_casadi(ir, compiled=True)
        a = fast.simulate(times, **kw)
    assert (fast.compiled_route.solver() is not None) == TOOLCHAIN
    if not TOOLCHAIN:
        assert [w for w in caught if issubclass(w.category, compiled.CompiledFallback)]
    return a, compile_casadi(ir, compiled=False).simulate(times, **kw)


def sir_rhs(_, y, beta):
    s, i, r = y
    infection = beta * s * i / (s + i + r)
    return [-infection, infection - 0.54 * i, 0.54 * i]


def test_sir_matches_interpreted_and_scipy():
    times = np.linspace(0, 30, 301)
    a, b = both(load("flu_sir.nimm"), times, **TOL)
    ref = solve_ivp(sir_rhs, (0, 30), [762.0, 1.0, 0.0], t_eval=times, args=(1.73,), method="DOP853",
                    rtol=1e-12, atol=1e-12).y
    assert close(states(a, "SIR"), states(b, "SIR"))
    assert close(states(a, "SIR"), ref)


def test_set_window_matches_piecewise_scipy():
    """early_isolation halves beta on [1, 6): three segments, the flag a parameter of each."""
    times = np.linspace(0, 20, 201)
    a, b = both(load("flu_sir.nimm"), times, scenario="early_isolation", **TOL)
    y, pieces = [762.0, 1.0, 0.0], []
    for t0, t1, beta in [(0, 1, 1.73), (1, 6, 0.865), (6, 20, 1.73)]:
        inside = times[(times >= t0) & (times < t1) | ((times == t1) & (t1 == 20))]
        sol = solve_ivp(sir_rhs, (t0, t1), y, t_eval=inside, args=(beta,), method="DOP853",
                        rtol=1e-12, atol=1e-12, dense_output=True)
        pieces.append(sol.y)
        y = sol.sol(t1)
    ref = np.hstack(pieces)
    assert close(states(a, "SIR"), states(b, "SIR"))
    assert close(states(a, "SIR"), ref)
    assert not close(states(a, "SIR"), states(both(load("flu_sir.nimm"), times, **TOL)[0], "SIR"), 1e-2)


def test_hodgkin_huxley_matches_interpreted_and_scipy():
    times = np.linspace(0, 30, 301)  # two spikes
    a, b = both(load("hodgkin_huxley.nimm"), times, rtol=1e-12, atol=1e-12)
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from simulate_speed import hh_rhs
    ref = solve_ivp(hh_rhs, (0, 30), [-65.0, 0.0529, 0.5961, 0.3177], t_eval=times, method="DOP853",
                    rtol=1e-13, atol=1e-13).y
    assert close(states(a, "Vmhn"), states(b, "Vmhn"))
    assert close(states(a, "Vmhn"), ref)
    assert np.max(a["V"]) > 20  # it spiked


def test_doses_match_interpreted_and_closed_form():
    """pk_oral: 300 mg every 12 h, six doses; the one-compartment oral closed form by superposition."""
    times = np.linspace(0, 72, 289)
    a, b = both(load("pk_oral.nimm"), times, **TOL)
    ka, V, k = 1.6, 33.0, 67.0 / 24 / 33.0
    C = np.zeros_like(times)
    for td in np.arange(6) * 12.0:
        s = np.clip(times - td, 0, None) * (times >= td)
        C += (times >= td) * 300 * ka / (V * (ka - k)) * (np.exp(-k * s) - np.exp(-ka * s))
    assert close(states(a, ["C"]), states(b, ["C"]))
    assert close(states(a, ["C"]), C[None, :])


def test_stiff_model_matches_interpreted(tmp_path):
    """van der Pol with mu = 1000: relaxation jumps that Adams must take with tiny steps."""
    path = tmp_path / "vdp.nimm"
    path.write_text("model vdp\ntime t [s]\nparam mu [1] = 1000 in [1, 1e4]\nstate x [1] = 2\n"
                    "state y [1] = 0\nder(x) = y / (1 [s])\nder(y) = (mu * (1 - x^2) * y - x) / (1 [s])\n")
    times = np.linspace(0, 3000, 301)
    ir = nimm_dsl.load(path).ir
    a, b = both(ir, times, rtol=1e-11, atol=1e-11)
    assert np.max(np.abs(a["x"] - b["x"])) < 1e-5 * 2
    assert np.min(a["x"]) < -1.9 and np.max(a["x"]) > 1.9  # it relaxed both ways
    solver = compile_casadi(ir, compiled=True).compiled_route.solver()
    if TOOLCHAIN:  # an explicit method alone would need far more than 2000 steps per output
        pw = np.array([1000.0])
        bdf = solver.integrate(0.0, times[1:], [2.0, 0.0], pw, 1e-8, 1e-8, 2000, "bdf")
        assert bdf is not None
        for method in ("rkf45", "rkck", "rk8pd"):  # each hands the segment over to BDF
            explicit = solver.integrate(0.0, times[1:], [2.0, 0.0], pw, 1e-8, 1e-8, 2000, method)
            assert explicit is not None and np.max(np.abs(explicit[:, 0] - bdf[:, 0])) < 1e-3
            assert solver.handed_over is not None and 0 < solver.handed_over < times[-1]


def _one_segment(tmp_path, text: str, t_end: float):
    """(the compiled solver, the runtime vector of the model's one segment from 0 to t_end); the
    solver is None (and checked to be) where no toolchain exists."""
    path = tmp_path / "model.nimm"
    path.write_text(text)
    fast = compile_casadi(nimm_dsl.load(path).ir, compiled=True)
    solver = fast.compiled_route.solver()
    if not TOOLCHAIN:
        assert solver is None
        return None, None
    (segment,) = fast.protocol(np.array([0.0, t_end])).segments
    return solver, np.concatenate((fast.param_vector(), segment_tail(segment), fast.weight_vector()))


def test_a_long_non_stiff_segment_stays_with_the_explicit_pair(tmp_path):
    """An oscillator over 200 s with no output between: thousands of steps, each limited by
    accuracy (h times the spectral radius 1 stays far below the pair's stability bound), so the
    step budget's stiffness test lets the explicit pair go on instead of handing over to BDF."""
    solver, pw = _one_segment(tmp_path, "model osc\ntime t [s]\nstate x [1] = 1\nstate y [1] = 0\n"
                                        "der(x) = y / (1 [s])\nder(y) = -x / (1 [s])\n", 200.0)
    if solver is None:
        return
    for method in ("rkf45", "rkck", "rk8pd"):
        x = solver.integrate(0.0, np.array([200.0]), np.array([1.0, 0.0]), pw, 1e-11, 1e-11, 10 ** 6, method)
        assert x is not None and solver.handed_over is None, method
        assert np.max(np.abs(x[0] - [np.cos(200.0), -np.sin(200.0)])) < 1e-7


def test_a_zero_jacobian_from_a_zero_state_stays_with_the_explicit_pair(tmp_path):
    """x' = cos(t) from x = 0 beside z, which rests at -1 where its rate is flat: the power
    iteration's difference quotients are exactly zero (a spectral radius of 0, not a division
    by it, which would feed NaN states to the right-hand side), so thousands of steps stay with
    the pair."""
    solver, pw = _one_segment(tmp_path, "model forced\ntime t [s]\nstate x [1] = 0\nstate z [1] = -1 in [-inf, inf]\n"
                                        "der(x) = cos(t / (1 [s])) / (1 [s])\nder(z) = ifelse(z < 0, 0, z) / (1 [s])\n",
                              2000.0)
    if solver is None:
        return
    for method in ("rkf45", "rkck"):
        x = solver.integrate(0.0, np.array([2000.0]), np.array([0.0, -1.0]), pw, 1e-12, 1e-12, 10 ** 6, method)
        assert x is not None and solver.handed_over is None, method
        assert abs(x[0, 0] - np.sin(2000.0)) < 1e-8 and x[0, 1] == -1.0, method


def test_a_stiff_segment_the_spectral_estimate_misses_is_still_handed_over(tmp_path):
    """z relaxes at rate Vmax / (4 Km) = 2500 / s to Km = 1e-6 beside y ~ 1e6: the power
    iteration's increment (scaled by |y|) pushes z far past Km, into the saturated rate, and
    sees no stiffness. The explicit pair is still stability-limited (~10^6 steps over 1000 s),
    so when the step limit runs out it must hand over to BDF, not fail where BDF succeeds."""
    path = tmp_path / "mm.nimm"
    path.write_text("model mm\ntime t [s]\nstate y [1] = 1e6\nstate z [1] = 0\n"
                    "der(y) = -0.001 * y / (1 [s])\n"
                    "der(z) = (0.005 - 0.01 * z / (1e-6 + z)) / (1 [s])\n")
    fast = compile_casadi(nimm_dsl.load(path).ir, compiled=True)
    solver = fast.compiled_route.solver()
    if not TOOLCHAIN:
        assert solver is None
        return
    (segment,) = fast.protocol(np.array([0.0, 1000.0])).segments
    pw = np.concatenate((fast.param_vector(), segment_tail(segment), fast.weight_vector()))
    expected = [1e6 * np.exp(-1.0), 1e-6]  # z at its steady state 0.005 Km / (0.01 - 0.005)
    for method in ("rkf45", "rkck", "rk8pd"):
        x = solver.integrate(0.0, np.array([1000.0]), np.array([1e6, 0.0]), pw, 1e-8, 1e-10, 20000, method)
        assert x is not None, method
        assert np.allclose(x[0], expected, rtol=1e-5, atol=0), method
        assert solver.handed_over is not None and 0 < solver.handed_over < 1000.0, method


@pytest.mark.parametrize("method", sorted(compiled.METHODS))
def test_every_method_matches_scipy(method):
    """Each stepper the driver offers, called bare on SIR, against DOP853 at 1e-12."""
    ir = load("flu_sir.nimm")
    times = np.linspace(0, 30, 301)
    fast = compile_casadi(ir, compiled=True)
    solver = fast.compiled_route.solver()
    if not TOOLCHAIN:
        assert solver is None
        return
    ref = solve_ivp(sir_rhs, (0, 30), [762.0, 1.0, 0.0], t_eval=times, args=(1.73,), method="DOP853",
                    rtol=1e-12, atol=1e-12).y
    (segment,) = fast.protocol(times).segments
    pw = np.concatenate((fast.param_vector(), segment_tail(segment), fast.weight_vector()))
    x = solver.integrate(0.0, times[1:], np.array([762.0, 1.0, 0.0]), pw, 1e-10, 1e-10, 20000, method)
    assert x is not None and close(x.T, ref[:, 1:])


def test_failure_is_located_like_the_interpreted_path(tmp_path):
    """x' = x^2 from 1 blows up at t = 1: the compiled solver fails, the segment is rerun on the
    interpreted path, which names the time."""
    path = tmp_path / "blowup.nimm"
    path.write_text("model blowup\ntime t [day]\nstate x [1] = 1\nder(x) = x^2 / (1 [day])\n")
    ir = nimm_dsl.load(path).ir
    errors = []
    for mode in (True, False):
        with pytest.raises(SimulationError) as err:
            compile_casadi(ir, compiled=mode).simulate(np.linspace(0, 2, 21))
        errors.append(err.value)
    assert abs(errors[0].time - 1.0) < 0.05 and errors[0].time == errors[1].time


# ---------------------------------------------------------------- the cache
def sir_symbols():
    sim = compile_casadi(load("flu_sir.nimm"))
    return sim.compiled_route.rhs, sim._outputs  # noqa: SLF001  (what the simulator compiles)


def built_files(cache):
    return sorted(cache.glob("*.so")), sorted(cache.glob("*.sha256"))


def plant(path: Path, tmp_path: Path):
    """A shared object with nimm_solve that writes 42 everywhere: if it were loaded, every
    simulated state would be 42."""
    src = tmp_path / "evil.c"
    src.write_text("int nimm_solve(double t0, const double *g, int n, const double *x, const double *p,"
                   " double r, double a, long m, int l, double *out, double *tr)"
                   " { for (int i = 0; i < 3 * n; i++) out[i] = 42; return 0; }\n")
    if shutil.which("cc"):
        subprocess.run(["cc", "-shared", "-fPIC", "-o", str(path), str(src)], check=True)
    else:
        path.write_bytes(b"\x7fELF planted")


def test_cache_is_private_and_recorded(private_cache):
    solver = compiled.build(*sir_symbols())
    if not TOOLCHAIN:
        assert solver is None
        return
    assert (os.stat(private_cache).st_mode & 0o777) == 0o700
    (so,), (digest,) = built_files(private_cache)
    import hashlib
    assert digest.read_text() == hashlib.sha256(so.read_bytes()).hexdigest()
    assert so.stat().st_mode & 0o022 == 0
    compiled.forget_loaded()
    again = compiled.build(*sir_symbols(), cached_only=True)  # a new process finds it
    assert again is not None and again.path == so


@pytest.mark.parametrize("how", ["no digest", "wrong digest", "group writable", "symlink"])
def test_planted_object_is_never_loaded(private_cache, tmp_path, how):
    compiled.build(*sir_symbols())
    if not TOOLCHAIN:
        assert compiled.build(*sir_symbols()) is None
        return
    (so,), (digest,) = built_files(private_cache)
    compiled.forget_loaded()
    so.unlink()
    if how == "symlink":
        plant(tmp_path / "elsewhere.so", tmp_path)
        so.symlink_to(tmp_path / "elsewhere.so")
        import hashlib
        digest.write_text(hashlib.sha256((tmp_path / "elsewhere.so").read_bytes()).hexdigest())
    else:
        plant(so, tmp_path)
    if how == "no digest":
        digest.unlink()
    elif how == "group writable":
        import hashlib
        digest.write_text(hashlib.sha256(so.read_bytes()).hexdigest())  # the right hash ...
        so.chmod(0o664)  # ... but others could have written it
    assert compiled.build(*sir_symbols(), cached_only=True) is None  # refused, not loaded
    sim = compile_casadi(load("flu_sir.nimm"), compiled=True)  # rebuilt over it
    result = sim.simulate(np.linspace(0, 10, 11))
    assert np.all(result["S"] != 42) and result["S"][-1] < 762
    assert not so.is_symlink() and so.stat().st_mode & 0o022 == 0


def test_shared_cache_directory_is_refused(private_cache):
    private_cache.mkdir(parents=True)
    private_cache.chmod(0o777)
    ir = load("flu_sir.nimm")
    times = np.linspace(0, 30, 31)
    with pytest.warns(compiled.CompiledFallback, match="not a private|no C compiler|SUNDIALS"):
        sim = compile_casadi(ir, compiled=True)
        a = sim.simulate(times, **TOL)
    assert sim.compiled_route.solver() is None
    assert not list(private_cache.glob("*.so"))
    b = compile_casadi(ir, compiled=False).simulate(times, **TOL)
    assert np.array_equal(a["I"], b["I"])


# ---------------------------------------------------------------- fallback and adaptivity
@pytest.mark.parametrize("compiler,reason", [("missing", "no C compiler"),
                                             ("cvodes/cvodes.h", "SUNDIALS"),
                                             ("gsl/gsl_odeiv2.h", "GNU Scientific Library")])
def test_fallback_warns_once_and_matches(tmp_path, monkeypatch, compiler, reason):
    if compiler == "missing":
        monkeypatch.setenv(compiled.COMPILER_ENV, str(tmp_path / "no-such-cc"))
    else:  # a compiler that cannot find a header, as on a machine without libsundials-dev or libgsl-dev
        fake = tmp_path / "fake-cc"
        fake.write_text("#!/bin/sh\nif [ \"$1\" = --version ]; then echo fake 1.0; exit 0; fi\n"
                        f"echo 'model.c:1: fatal error: {compiler}: No such file or directory' >&2\n"
                        "exit 1\n")
        fake.chmod(0o755)
        monkeypatch.setenv(compiled.COMPILER_ENV, str(fake))
    ir = load("flu_sir.nimm")
    times = np.linspace(0, 30, 31)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        runs = [compile_casadi(ir, compiled=True).simulate(times, **TOL) for _ in range(2)]
    fallbacks = [w for w in caught if issubclass(w.category, compiled.CompiledFallback)]
    assert len(fallbacks) == 1 and reason in str(fallbacks[0].message)
    b = compile_casadi(ir, compiled=False).simulate(times, **TOL)
    assert all(np.array_equal(r["I"], b["I"]) for r in runs)


def test_adaptive_compiles_after_the_budget_and_reuses_the_cache(monkeypatch, private_cache):
    ir = load("flu_sir.nimm")
    times = np.linspace(0, 30, 31)
    sim = compile_casadi(ir)  # compiled=None: adaptive
    sim.simulate(times)
    assert sim.compiled_route.solver() is None  # one short run never waits for the compiler
    assert sim.compiled_route.interpreted_seconds > 0
    monkeypatch.setattr(compiled, "BUILD_BUDGET", 0.0)
    monkeypatch.setattr(compiled, "BUDGET_PER_OPERATION", 0.0)
    sim.simulate(times)
    assert (sim.compiled_route.solver() is not None) == TOOLCHAIN
    compiled.forget_loaded()
    monkeypatch.setattr(compiled, "BUILD_BUDGET", 1e9)
    fresh = compile_casadi(ir)  # as a new process: the cached object is used at once
    assert (fresh.compiled_route.solver() is not None) == TOOLCHAIN
    assert compile_casadi(ir, compiled=False).compiled_route is None
    assert compile_casadi(ir, method="rk").compiled_route is None
    with pytest.raises(ValueError, match="cvodes"):
        compile_casadi(ir, method="idas", compiled=True)


@pytest.mark.parametrize("path, horizon, scenario", [
    ("examples/flu_sir.nimm", 20, "isolation"),
    ("examples/lotka_volterra_neural.nimm", 10, None),  # neural weights in the right-hand side
    ("examples/measles_seasonal.nimm", 365, None),
    ("examples/pk_two_compartment.nimm", 48, None),
    ("seir weekly", 70, None),  # weekly integrals and a set window (tests/test_observation_models.py)
])
def test_every_output_matches_interpreted(path, horizon, scenario):
    """States, lets and observes (the outputs are compiled too) of varied models."""
    if path == "seir weekly":
        from test_observation_models import SEIR
        model = nimm_dsl.load_source(SEIR)
    else:
        model = nimm_dsl.load(ROOT / path)
    times = np.linspace(0, horizon, 71)
    a, b = both(model.ir, times, scenario=scenario, **TOL)
    names = [n for n in b.names if n != model.ir.time_name]
    assert a.names == b.names and len(names) > 2
    for name in names:
        scale = max(np.max(np.abs(b[name])), 1e-300)
        assert np.max(np.abs(a[name] - b[name])) / scale < 1e-6, name


def test_a_model_too_large_to_compile_quickly_stays_interpreted(monkeypatch):
    """gcc time grows faster than the right-hand side (about 500 s for a dense 100-patch model):
    above MAX_RHS_SIZE nothing is compiled, whatever the mode, and the fallback says why."""
    monkeypatch.setattr(compiled, "MAX_RHS_SIZE", 10)
    ir = load("hodgkin_huxley.nimm")
    times = np.linspace(0, 5, 11)
    with pytest.warns(compiled.CompiledFallback, match="operations"):
        sim = compile_casadi(ir, compiled=True)
        a = sim.simulate(times)
    assert sim.compiled_route.solver() is None
    b = compile_casadi(ir, compiled=False).simulate(times)
    assert np.array_equal(a["V"], b["V"])


def test_the_cli_words_a_fallback_like_its_other_messages(capsys, monkeypatch):
    """One line `nimm: warning: compiled simulation unavailable (...)`, not Python's warning format
    with a file, a line number and a source line under it."""
    import warnings

    from nimm_dsl.backends.compiled import CompiledFallback
    from nimm_dsl.cli import main

    def simulate_and_fall_back(args):
        warnings.warn("compiled simulation unavailable (no C compiler); using the interpreted "
                      "CasADi integrator, same results, slower", CompiledFallback)
        return 0

    monkeypatch.setattr("nimm_dsl.cli.cmd_check", simulate_and_fall_back)
    assert main(["check", "whatever.nimm"]) == 0
    err = capsys.readouterr().err
    assert err == ("nimm: warning: compiled simulation unavailable (no C compiler); using the "
                   "interpreted CasADi integrator, same results, slower\n")


@pytest.mark.parametrize("times", [np.linspace(0, 30, 2001),  # outputs far denser than the steps
                                   np.r_[np.linspace(0, 2, 401), np.linspace(2.5, 30, 12)]])  # mixed
@pytest.mark.parametrize("tol", [1e-6, 1e-9])
def test_outputs_inside_free_steps_are_as_accurate_as_the_tolerance(times, tol):
    """Where a step spans several output times the driver steps freely and takes each output by
    one step of the same pair from the step's start: the error stays at the tolerance's level."""
    a, _ = both(load("flu_sir.nimm"), times, rtol=tol, atol=tol)
    ref = solve_ivp(sir_rhs, (0, 30), [762.0, 1.0, 0.0], t_eval=times, args=(1.73,), method="DOP853",
                    rtol=1e-12, atol=1e-12).y
    assert close(states(a, "SIR"), ref, rel=50 * tol)
    fast = compile_casadi(load("flu_sir.nimm"), compiled=True)
    solver = fast.compiled_route.solver()
    if TOOLCHAIN:  # the other GSL pairs take the same path
        (segment,) = fast.protocol(times).segments
        pw = np.concatenate((fast.param_vector(), segment_tail(segment), fast.weight_vector()))
        for method in ("rkf45", "rk8pd"):
            x = solver.integrate(0.0, times[1:], np.array([762.0, 1.0, 0.0]), pw, tol, tol, 20000, method)
            assert x is not None and close(x.T, ref[:, 1:], rel=50 * tol)
