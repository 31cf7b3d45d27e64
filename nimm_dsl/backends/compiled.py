"""The compiled route of the CasADi back end: the right-hand side as C, integrated directly (GSL, CVODES).

CasADi's integrator costs about a millisecond per call however small the model (its per-call
set-up and timers), ten times what a compiled right-hand side needs. Here the model's right-hand
side and its dense Jacobian, the SX expressions the CasADi back end already builds, are turned
into C by CasADi's code generator (public API), joined with a small driver of our own
(`compiled_driver.c`: an explicit Runge-Kutta pair of the GNU Scientific Library's gsl_odeiv2,
stepping freely where its steps span several output times and to each output time elsewhere,
handing over to CVODES BDF with our Jacobian where the problem turns out stiff) and compiled with
the system C compiler into a shared object loaded with ctypes. The CasADi back
end calls it once per segment of the event protocol, exactly where it would call its integrator.

Shared objects are cached per user under `$XDG_CACHE_HOME/nimm_dsl/compiled` (else
`~/.cache/nimm_dsl/compiled`), named by a hash of the generated code, the compiler and the flags.
Nothing is loaded unless the directory is ours and private (0700), the file is ours and writable
by nobody else, and its content hash equals the one recorded when we built it (docs/security.md).

Where no C compiler or no SUNDIALS or GSL headers exist, `build` returns None after one warning per
process and the interpreted integrator is used: same results within the tolerances.
"""
from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import stat
import subprocess
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import casadi as ca
import numpy as np

# "rkf45", "rkck", "rk8pd": GSL's explicit embedded Runge-Kutta pairs, switching to CVODES BDF
# where the problem turns out stiff; "adams" and "bdf": CVODES throughout. The default is chosen
# by measurement at equal accuracy (benchmarks/compiled_speed.py).
METHODS = {"adams": 1, "bdf": 2, "rkf45": 3, "rkck": 4, "rk8pd": 5}
DEFAULT_METHOD = "rkck"
FLAGS = ("-O2", "-shared", "-fPIC")
LIBS = ("-lsundials_cvodes", "-lsundials_nvecserial", "-lgsl", "-lgslcblas", "-lm")
COMPILER_ENV = "NIMM_CC"  # the C compiler to use; a missing one means the interpreted path
DRIVER = Path(__file__).with_name("compiled_driver.c")


class CompiledFallback(UserWarning):
    """The compiled route is unavailable (no compiler, no SUNDIALS or GSL, an unsafe cache); the
    interpreted CasADi integrator is used instead."""


_warned = False
_loaded: dict[str, "CompiledODE"] = {}  # key -> loaded object, for this process


def _fallback(reason: str) -> None:
    """Say once per process why simulations take the interpreted path."""
    global _warned
    if not _warned:
        _warned = True
        warnings.warn(f"compiled simulation unavailable ({reason}); using the interpreted CasADi "
                      f"integrator, same results, slower", CompiledFallback, stacklevel=4)


def forget_loaded() -> None:
    """Forget the objects loaded in this process (the next `build` reads the disk cache again,
    as a new process would) and the fallback warning: for tests and benchmarks."""
    global _warned
    _loaded.clear()
    _toolchains.clear()
    _warned = False


MAX_RHS_SIZE = 2000  # right-hand-side operations (CasADi instructions): about 3 s of gcc


def rhs_size(t: ca.SX, x: ca.SX, pw: ca.SX, ode: ca.SX) -> int:
    """The right-hand side's size in CasADi instructions plus its Jacobian's nonzeros: what the
    compile time grows with. A matrix-vector call (compiler/linear_forms.py) is one instruction
    of the right-hand side but an N x N block of the Jacobian, each entry its own expression."""
    return (ca.Function("size", [t, x, pw], [ode]).n_instructions()
            + ca.jacobian_sparsity(ode, x).nnz())


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "nimm_dsl" / "compiled"


# ---------------------------------------------------------------- the C source
def c_source(t: ca.SX, x: ca.SX, pw: ca.SX, ode: ca.SX, outputs: ca.Function) -> str:
    """The generated right-hand side and dense Jacobian of `ode` (inputs t, x, pw) and the
    simulator's `outputs(t, x, P, W[, I])` (lets then observes), then the driver."""
    rhs = ca.Function("nimm_rhs", [t, x, pw], [ode])
    jacobian = ca.jacobian(ode, x)
    jac = ca.Function("nimm_jac", [t, x, pw], [jacobian])
    pattern = jacobian.sparsity()  # compressed columns, as the generated code writes them
    n = x.numel()
    at = [c * n + r for c in range(n) for r in pattern.row()[pattern.colind()[c]:pattern.colind()[c + 1]]]
    symbols = outputs.sx_in()
    out = ca.Function("nimm_out", symbols, outputs.call(symbols))
    gen = ca.CodeGenerator("nimm_model.c", {"with_header": False})
    fns = (rhs, jac, out)
    for f in fns:
        gen.add(f)
    sizes = {"NX": x.numel(), "NP": outputs.nnz_in(2), "NW": outputs.nnz_in(3),
             "NI": outputs.nnz_in(4) if outputs.n_in() > 4 else 0, "NY": outputs.nnz_out(0),
             "SZ_ARG": max(f.sz_arg() for f in fns), "SZ_RES": max(f.sz_res() for f in fns),
             "SZ_IW": max(f.sz_iw() for f in fns), "SZ_W": max(f.sz_w() for f in fns)}
    sizes["JAC_NNZ"] = len(at)
    defines = "".join(f"#define NIMM_{k} {v}\n" for k, v in sizes.items())
    places = f"static const long nimm_jac_at[{len(at) + 1}] = {{{', '.join(map(str, at + [0]))}}};\n"
    return gen.dump() + "\n" + defines + places + DRIVER.read_text()


# ---------------------------------------------------------------- the compiler
@dataclass(frozen=True)
class Toolchain:
    compiler: str  # absolute path
    identity: str  # its --version line: part of the cache key

    @property
    def command(self) -> tuple[str, ...]:
        return (self.compiler, *FLAGS)


_toolchains: dict[str, Optional[Toolchain]] = {}


def toolchain(compiler: Optional[str] = None) -> Optional[Toolchain]:
    """The C compiler (`compiler`, else $NIMM_CC, else cc), or None when there is none."""
    name = compiler or os.environ.get(COMPILER_ENV) or "cc"
    if name not in _toolchains:
        path = shutil.which(name)
        found = None
        if path:
            try:
                out = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=30)
                if out.returncode == 0:
                    found = Toolchain(os.path.realpath(path), (out.stdout.splitlines() or [""])[0])
            except (OSError, subprocess.SubprocessError):
                pass
        _toolchains[name] = found
    return _toolchains[name]


# ---------------------------------------------------------------- the cache
def _private_dir(path: Path) -> Optional[str]:
    """Create `path` (0700) if needed; None if it is ours and private, else why not."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.mkdir(path, 0o700)
        except FileExistsError:
            pass
        st = os.lstat(path)
    except OSError as err:
        return f"cannot create the cache directory {path}: {err.strerror}"
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid() or st.st_mode & 0o077:
        return f"the cache directory {path} is not a private (0700) directory of this user"
    return None


def _read_trusted(path: Path) -> Optional[tuple[int, bytes]]:
    """(an open descriptor, the content) of a regular file owned by us and writable by nobody
    else (not a symbolic link), else None."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or st.st_uid != os.getuid() or st.st_mode & 0o022:
        os.close(fd)
        return None
    with os.fdopen(os.dup(fd), "rb") as f:
        return fd, f.read()


def _write_atomic(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _load(so: Path, digest: Path) -> Optional[ctypes.CDLL]:
    """The shared object `so` if its content hash equals the one recorded in `digest` at build
    time and both pass the ownership and mode checks; None otherwise (it is then rebuilt)."""
    recorded = _read_trusted(digest)
    if recorded is None:
        return None
    os.close(recorded[0])
    opened = _read_trusted(so)
    if opened is None:
        return None
    fd, content = opened
    os.close(fd)
    if hashlib.sha256(content).hexdigest().encode() != recorded[1].strip():
        return None
    # Loaded by its path (the dynamic loader shares one handle per path name, which is right here:
    # a name is a hash of the code). Swapping the file between the check and the load needs
    # write access to our private directory, that is, our own user id.
    try:
        return ctypes.CDLL(str(so))
    except OSError:
        return None


def _compile(tools: Toolchain, source: str, so: Path, digest: Path) -> Optional[str]:
    """Compile `source` into `so` (atomically) and record its hash; None, else why it failed."""
    with tempfile.TemporaryDirectory(prefix="nimm-cc-") as work:
        src, out = Path(work) / "model.c", Path(work) / "model.so"
        src.write_text(source)
        try:
            run = subprocess.run([*tools.command, "-o", str(out), str(src), *LIBS],
                                 capture_output=True, text=True, timeout=600)
        except (OSError, subprocess.SubprocessError) as err:
            return f"the C compiler {tools.compiler} failed to run: {err}"
        if run.returncode != 0:
            missing = "No such file" in run.stderr or "cannot find" in run.stderr
            if missing and "cvodes" in run.stderr:
                return "no SUNDIALS CVODES headers or libraries (Debian: apt-get install libsundials-dev)"
            if missing and "gsl" in run.stderr:
                return "no GNU Scientific Library headers or libraries (Debian: apt-get install libgsl-dev)"
            first = next((line for line in run.stderr.splitlines() if "error" in line), run.stderr[:200])
            return f"the C compiler failed: {first.strip()}"
        content = out.read_bytes()
    _write_atomic(so, content)
    _write_atomic(digest, hashlib.sha256(content).hexdigest().encode())
    return None


# ---------------------------------------------------------------- the compiled solver
class CompiledODE:
    """A loaded compiled model: `integrate` one segment."""

    def __init__(self, lib: ctypes.CDLL, n_states: int, n_outputs: int, path: Path):
        self.path = path
        self.n_states, self.n_outputs = n_states, n_outputs
        self._solve = lib.nimm_solve
        dp = ctypes.c_void_p
        self._solve.argtypes = [ctypes.c_double, dp, ctypes.c_int, dp, dp, ctypes.c_double,
                                ctypes.c_double, ctypes.c_long, ctypes.c_int, dp, dp]
        self._solve.restype = ctypes.c_int
        self._outputs = lib.nimm_outputs
        self._outputs.argtypes = [ctypes.c_int, dp, dp, dp, dp, dp, dp]
        self._outputs.restype = ctypes.c_int
        self._lib = lib  # keeps the library loaded
        self._reached = np.zeros(1)  # where a failed solve stopped
        self._reached_at = self._reached.ctypes.data

    def integrate(self, t0: float, grid: np.ndarray, x0: np.ndarray, pw: np.ndarray, rtol: float,
                  atol: float, max_steps: int, method: Optional[str] = None) -> Optional[np.ndarray]:
        """The states at each time of `grid` (increasing, after t0) from x0 at t0: [len(grid) x nx];
        None when the solver fails (the caller reruns the segment on the interpreted path, which
        locates and reports the failure)."""
        grid, x0, pw = (np.ascontiguousarray(a, dtype=float) for a in (grid, x0, pw))
        out = np.empty((len(grid), self.n_states))
        flag = self._solve(float(t0), grid.ctypes.data, len(grid), x0.ctypes.data, pw.ctypes.data,
                           rtol, atol, max_steps, METHODS[method or DEFAULT_METHOD], out.ctypes.data,
                           self._reached_at)
        return None if flag else out  # the driver checks that every state is finite

    def outputs(self, times, X, Pcols, w, integrals=None) -> Optional[np.ndarray]:
        """Lets then observes at every output time, [n_outputs x T], from the states X [nx x T],
        runtime vectors Pcols [n_runtime x T] and integrals [n_integrals x T]; None if the
        generated code reports an error (the caller then uses CasADi's)."""
        times, X, Pcols, w = (np.ascontiguousarray(a, dtype=float) for a in (times, X, Pcols, w))
        extra = None if integrals is None else np.ascontiguousarray(integrals, dtype=float)
        Y = np.empty((self.n_outputs, len(times)))
        flag = self._outputs(len(times), times.ctypes.data, X.ctypes.data, Pcols.ctypes.data, w.ctypes.data,
                             None if extra is None else extra.ctypes.data, Y.ctypes.data)
        return None if flag else Y


def build(t: ca.SX, x: ca.SX, pw: ca.SX, ode: ca.SX, outputs: ca.Function, compiler: Optional[str] = None,
          cached_only: bool = False) -> Optional[CompiledODE]:
    """The compiled solver of dx/dt = ode(t, x, pw) and the `outputs` function, from the cache or
    freshly compiled.

    cached_only: return None rather than compile when no valid cached object exists (the
    adaptive choice looks up the cache first and compiles only once a model has run long enough).
    None after one warning per process when it cannot be built."""
    size = rhs_size(t, x, pw, ode)
    if size > MAX_RHS_SIZE:
        if not cached_only:
            _fallback(f"the right-hand side has {size} operations, more than {MAX_RHS_SIZE}: gcc would take "
                      f"minutes")
        return None
    tools = toolchain(compiler)
    if tools is None:
        if not cached_only:
            _fallback(f"no C compiler `{compiler or os.environ.get(COMPILER_ENV) or 'cc'}` found")
        return None
    source = c_source(t, x, pw, ode, outputs)
    key = hashlib.sha256("\0".join([source, tools.compiler, tools.identity, *FLAGS, *LIBS]).encode()).hexdigest()
    if key in _loaded:
        return _loaded[key]
    directory = cache_dir()
    problem = _private_dir(directory)
    if problem:
        _fallback(problem)
        return None
    so, digest = directory / f"{key[:32]}.so", directory / f"{key[:32]}.sha256"
    lib = _load(so, digest)
    if lib is None:
        if cached_only:
            return None
        problem = _compile(tools, source, so, digest)
        if problem:
            _fallback(problem)
            return None
        lib = _load(so, digest)
        if lib is None:
            _fallback(f"the freshly built {so} failed its checks")
            return None
    _loaded[key] = CompiledODE(lib, x.numel(), outputs.nnz_out(0), so)
    return _loaded[key]


# Adaptive choice: compile once the interpreted path has spent about as long as the C compiler
# will take, so that a model run once never waits for gcc and one run many times pays for
# compiling at most about twice. gcc -O2 on this machine (2026-11-30): 0.24-0.5 s for SIR and
# Hodgkin-Huxley, 0.53 s for 432 right-hand-side operations, 1.9 s for 1362, 14 s for 4722 and
# about 500 s for 26802 (a dense 100-patch model): superlinear, hence a size limit.
BUILD_BUDGET = 0.25  # seconds of interpreted simulation, at least
BUDGET_PER_OPERATION = 1.4e-3  # seconds of gcc per right-hand-side operation, about


class Route:
    """Whether and when one simulator uses its compiled solver: always (mode True), never (False)
    or adaptively (None: at once if the cache holds it, else once the interpreted simulations
    took about as long as compiling will: BUILD_BUDGET, or more for a larger right-hand side)."""

    def __init__(self, mode: Optional[bool], t: ca.SX, x: ca.SX, pw: ca.SX, ode: ca.SX,
                 outputs: ca.Function):
        self.mode = mode
        self._symbols = (t, x, pw, ode, outputs)
        self._solver: Optional[CompiledODE] = None
        self._looked_up = False  # the adaptive cache lookup happened
        self._settled = mode is False  # built, or failed to build: no further attempt
        self.interpreted_seconds = 0.0
        self._size = rhs_size(t, x, pw, ode) if mode is None else 0

    def solver(self) -> Optional[CompiledODE]:
        if self._settled:
            return self._solver
        if self.mode is None and not self._looked_up:
            self._looked_up = True
            self._solver = build(*self._symbols, cached_only=True)
            self._settled = self._solver is not None
        elif self.mode or self.interpreted_seconds >= max(BUILD_BUDGET, BUDGET_PER_OPERATION * self._size):
            self._solver = build(*self._symbols)
            self._settled = True
        return self._solver

    def record(self, seconds: float) -> None:
        """Time spent simulating on the interpreted path."""
        self.interpreted_seconds += seconds
