"""The compiled route of the CasADi back end: the right-hand side as C, integrated directly (GSL, CVODES).

CasADi's integrator costs about a millisecond per call however small the model (its per-call
set-up and timers), ten times what a compiled right-hand side needs. Here the model's right-hand
side and its dense Jacobian, the SX expressions the CasADi back end already builds, are turned
into C by CasADi's code generator (public API) and linked with a small driver of our own
(`compiled_driver.c`: an explicit Runge-Kutta pair of the GNU Scientific Library's gsl_odeiv2,
stepping freely where its steps span several output times and to each output time elsewhere,
handing over to CVODES BDF with our Jacobian where the problem turns out stiff), each compiled
apart by the system C compiler (the generated part's optimisation by its size: MAX_RHS_SIZE),
into a shared object loaded with ctypes. The CasADi back
end calls it once per segment of the event protocol, exactly where it would call its integrator.

A model whose long sums are matrix products (compiler/linear_forms.py) is split at them
(`ProductSplit`): CasADi generates each product's vector and the rest of the right-hand side,
and the products are loops of ours over tables of their matrices (`_product_c`). Such a model,
or one whose Jacobian has many nonzeros, gets no generated Jacobian (`generates_jacobian`).

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
import math
import os
import re
import shutil
import stat
import subprocess
import tempfile
import warnings
from dataclasses import dataclass, replace
from functools import cached_property
from pathlib import Path
from typing import Callable, Optional

import casadi as ca
import numpy as np

# "rkf45", "rkck", "rk8pd": GSL's explicit embedded Runge-Kutta pairs, switching to CVODES BDF
# where the problem turns out stiff; "adams" and "bdf": CVODES throughout. The default is chosen
# by measurement at equal accuracy (benchmarks/compiled_speed.py).
METHODS = {"adams": 1, "bdf": 2, "rkf45": 3, "rkck": 4, "rk8pd": 5}
DEFAULT_METHOD = "rkck"
# gcc optimisation of the generated model code up to MAX_OPTIMISED_SIZE, then above it; the
# driver and the products, compiled apart, always get OPTIMISED (their loops, vectorised)
OPTIMISED, UNOPTIMISED = "-O2", "-O0"
DRIVER_OPTIMISATION = "-O2"
FLAGS = ("-shared", "-fPIC")
C_TYPES = {"casadi_real": "double", "casadi_int": "long long int"}  # both parts declare them alike
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


# Size (`rhs_size`): the CasADi instructions of everything generated into C (right-hand side,
# products' vectors and entries, Jacobian, outputs) and the static tables, TABLE_ENTRIES_PER_OPERATION
# numbers as one. gcc here (2026-12-01, benchmarks/README.md "gcc time against size"), -O2:
# 1.5-2 s at 3,000-3,500 operations (the dense and mean-field 100-district models), 3.3-3.5 s at
# 6,000-7,000 without a Jacobian and 4.7 s at 7,100 with one, 12 s at 17,500 and 26-37 s and
# 500 MB at 35,000 (mean-field, N = 1000): superlinear in one function's size; -O0 0.7-1.5 s at
# 3,000-7,000 and 1.0-3.7 s at 35,000, its code 1.2-4x slower (the interpreted BDF of that model:
# ~20 s a run). So -O2 up to MAX_OPTIMISED_SIZE, -O0 up to MAX_RHS_SIZE, beyond that the
# interpreted path. A static table costs gcc 2.5-4 us a number whatever the optimisation (10^6
# hexadecimal doubles: 2.5-4 s and 350 MB), an operation at -O0 about 1e-4 s: hence 25 numbers
# as one operation, so that the tables too stay within a few seconds at MAX_RHS_SIZE.
MAX_OPTIMISED_SIZE = 5000
MAX_RHS_SIZE = 40000
TABLE_ENTRIES_PER_OPERATION = 25
MAX_JACOBIAN_NNZ = 1000  # about 1 s of gcc: above it, difference quotients (generates_jacobian)
DENSE_FILL = 0.25  # a product stored dense when this share of its matrix is nonzero (see _product_c)


@dataclass(frozen=True)
class Product:
    """One matrix-vector product (a compiler/linear_forms.py group) that the driver computes in C
    of our own: u[offset : offset + n_rows] = M @ v, v the group's vector (`nimm_vec_<k>`, k its
    place in CompiledRHS.products). M is stored dense column-major (a loop gcc vectorises) when
    at least DENSE_FILL of it is nonzero, else by compressed rows. The stored values are
    `values` (numbers in the model) or, for a matrix of params and consts, nimm_entries's
    outputs from `entry_offset` on, evaluated once per segment (they cannot change within one).
    A dense matrix with places that hold no entry (stored as 0) marks its entries in `present`,
    a bit per place, column-major: a NaN or inf in the vector reaches only the rows with an
    entry in its column, as in compressed rows and CasADi's sparse product (0 * NaN is NaN)."""

    offset: int
    n_rows: int
    n_cols: int
    dense: bool
    rows: tuple  # compressed rows: the row of each stored value (dense: empty)
    cols: tuple  # compressed rows: the column of each stored value (dense: empty)
    values: Optional[tuple]  # numbers, in storage order; None: from nimm_entries
    entry_offset: int = 0
    present: Optional[bytes] = None  # dense with places that hold no entry: the bit map


@dataclass
class CompiledRHS:
    """dx/dt = ode(t, x, pw, u), u the rows of the matrix products, which the driver computes
    before each evaluation: for product k, v_k = vectors[k](t, x, pw, u) (a vector may hold an
    earlier product's rows), then u_k = M_k v_k. `entries(pw)`: the stored values of the
    matrices of params and consts. Without products u is empty and ode the whole right-hand
    side."""

    t: ca.SX
    x: ca.SX
    pw: ca.SX
    ode: ca.SX
    u: ca.SX
    vectors: list
    entries: ca.SX
    products: list
    # each entry as factor * pw[index] (index -1: zero), when all have that form (a matrix of
    # consts): a table rather than generated code, as N^2 assignments would cost gcc time
    gather: Optional[tuple[tuple, tuple]] = None

    @classmethod
    def plain(cls, t: ca.SX, x: ca.SX, pw: ca.SX, ode: ca.SX) -> "CompiledRHS":
        return cls(t, x, pw, ode, ca.SX.sym("u", 0), [], ca.SX(0, 1), [])

    @property
    def inputs(self) -> list:
        return [self.t, self.x, self.pw, self.u]

    @cached_property
    def jacobian_nnz(self) -> int:
        """The structural nonzeros of d(ode)/dx (0.3 s to find at 2 x 10^6: found once)."""
        return ca.jacobian_sparsity(self.ode, self.x).nnz()


class ProductSplit:
    """An `Ops.matvec` (compiler/ir.py) that leaves each matrix product to the compiled driver:
    it records the group's vector and matrix and answers with fresh symbols for the group's
    rows. Walking a model's derivatives with it gives `rhs()`: the right-hand side without
    CasADi's generic sparse product (an indirect-indexed loop that dominated the generated code)
    and without the N x N Jacobian block of one (gcc time)."""

    def __init__(self):
        # per product, in the order the walk met them (a product before those whose vectors
        # read its rows): (Product without offsets, its rows u, its vector, its entries or None)
        self._found: list[tuple[Product, ca.SX, ca.SX, Optional[list]]] = []

    def matvec(self, group, vector, entries):
        n_rows, n_cols = group.shape
        dense = len(group.entries) >= DENSE_FILL * n_rows * n_cols
        values = own = present = None
        if dense:
            at = {(r, c): i for i, (r, c, _, _) in enumerate(group.entries)}
            layout = [at.get((r, c)) for c in range(n_cols) for r in range(n_rows)]
            rows = cols = ()
            if len(at) < n_rows * n_cols:
                present = np.packbits([i is not None for i in layout], bitorder="little").tobytes()
        else:
            layout = sorted(range(len(group.entries)), key=lambda i: group.entries[i][:2])
            rows = tuple(group.entries[i][0] for i in layout)
            cols = tuple(group.entries[i][1] for i in layout)
        if entries is None:
            values = tuple(0.0 if i is None else float(group.entries[i][2]) for i in layout)
        else:
            own = [ca.SX(0) if i is None else entries[i] for i in layout]
        u = ca.SX.sym(f"u{group.index}_", n_rows)
        self._found.append((Product(0, n_rows, n_cols, dense, rows, cols, values, present=present), u,
                            ca.vertcat(*vector), own))
        return [u[i] for i in range(n_rows)]

    def rhs(self, t: ca.SX, x: ca.SX, pw: ca.SX, ode: ca.SX) -> CompiledRHS:
        """The right-hand side `ode` with the products it reads (a let that only the outputs
        read may hold others: they stay with the outputs)."""
        needed, reads = [], ode
        for found in reversed(self._found):
            if ca.depends_on(reads, found[1]):
                needed.insert(0, found)
                reads = ca.vertcat(reads, found[2])
        if not needed:
            return CompiledRHS.plain(t, x, pw, ode)
        products, entries, n_rows = [], [], 0
        for prod, u, _, own in needed:
            products.append(replace(prod, offset=n_rows, entry_offset=len(entries)))
            entries += own or []
            n_rows += prod.n_rows
        entries = ca.vertcat(*entries) if entries else ca.SX(0, 1)
        return CompiledRHS(t, x, pw, ode, ca.vertcat(*[f[1] for f in needed]), [f[2] for f in needed],
                           entries, products, _gather(entries, pw))


def _gather(entries: ca.SX, pw: ca.SX) -> Optional[tuple[tuple, tuple]]:
    """(index into pw or -1, factor) of each entry when every entry is a number times one element
    of pw, or zero; else None."""
    if entries.numel() == 0:
        return None
    jacobian = ca.jacobian(entries, pw)
    if not jacobian.is_constant():
        return None
    at_zero = ca.Function("at_zero", [pw], [entries])(np.zeros(pw.numel()))
    if np.any(np.asarray(at_zero) != 0):
        return None
    coefficients = ca.DM(jacobian)
    sparsity = coefficients.sparsity()
    rows, cols = sparsity.get_triplet()
    if len(set(rows)) != len(rows):  # an entry of two params: a product of them, generated
        return None
    index, factor = [-1] * entries.numel(), [0.0] * entries.numel()
    for r, c, v in zip(rows, cols, coefficients.nonzeros()):
        index[r], factor[r] = c, v
    return tuple(index), tuple(factor)


def _functions(rhs: CompiledRHS) -> list:
    """The CasADi functions of the right-hand side generated into C, Jacobian apart."""
    fns = [ca.Function("nimm_rhs", rhs.inputs, [rhs.ode])]
    fns += [ca.Function(f"nimm_vec_{k}", rhs.inputs, [v]) for k, v in enumerate(rhs.vectors)]
    if rhs.gather is None:  # of params only: evaluated once a segment
        fns.append(ca.Function("nimm_entries", [rhs.pw], [rhs.entries]))
    return fns


def generates_jacobian(rhs: CompiledRHS) -> bool:
    """Whether the Jacobian is generated into C: not with products (their rows u would need the
    chain rule through the product; each product's N x N block was most of gcc's time) nor with
    more than MAX_JACOBIAN_NNZ nonzeros (a scalar that every state reads, such as a mean-field
    prevalence, fills the matrix just as well). Without it CVODES takes difference quotients,
    N evaluations of the right-hand side, where it needs a Jacobian (BDF, the stiff hand-over)."""
    return not rhs.products and rhs.jacobian_nnz <= MAX_JACOBIAN_NNZ


def table_entries(rhs: CompiledRHS) -> int:
    """How many numbers the generated C holds in the products' static tables (`_product_c`,
    `_gather_c`): the matrices of numbers, the compressed rows' places, the entries' bit maps,
    the gather table's index and factor per entry."""
    count = 2 * len(rhs.gather[0]) if rhs.gather is not None else 0
    for prod in rhs.products:
        count += len(prod.values or ()) + len(prod.present or ())
        if not prod.dense:
            count += prod.n_rows + 1 + len(prod.cols)
    return count


def _jacobian(rhs: CompiledRHS) -> tuple[ca.Function, list]:
    """The generated Jacobian `nimm_jac` and the place of each of its nonzeros in the dense
    column-major matrix (the generated code writes them by compressed columns)."""
    jacobian = ca.jacobian(rhs.ode, rhs.x)
    pattern, n = jacobian.sparsity(), rhs.x.numel()
    at = [c * n + r for c in range(n) for r in pattern.row()[pattern.colind()[c]:pattern.colind()[c + 1]]]
    return ca.Function("nimm_jac", rhs.inputs, [jacobian]), at


def rhs_size(rhs: CompiledRHS, outputs: Optional[ca.Function] = None) -> int:
    """What the compile time grows with, in operations: the CasADi instructions of the functions
    generated into C (with the `outputs` when given) and the static tables
    (TABLE_ENTRIES_PER_OPERATION numbers as one operation: MAX_RHS_SIZE)."""
    fns = _functions(rhs) + ([_jacobian(rhs)[0]] if generates_jacobian(rhs) else [])
    fns += [outputs] if outputs is not None else []
    tables = -(-table_entries(rhs) // TABLE_ENTRIES_PER_OPERATION)  # rounded up
    return sum(f.n_instructions() for f in fns) + tables


def optimisation(size: int) -> str:
    """gcc's optimisation flag for a model of `size` (MAX_OPTIMISED_SIZE)."""
    return OPTIMISED if size <= MAX_OPTIMISED_SIZE else UNOPTIMISED


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "nimm_dsl" / "compiled"


# ---------------------------------------------------------------- the C source
def _c_double(v: float) -> str:
    """A C literal of exactly `v` (hexadecimal floating point, C99)."""
    if math.isfinite(v):
        return v.hex()
    return "NAN" if math.isnan(v) else "INFINITY" if v > 0 else "-INFINITY"


def _c_array(ctype: str, name: str, values) -> str:
    items = ", ".join(values) or "0"
    return f"static const {ctype} {name}[] = {{{items}}};\n"


def _product_c(products: list) -> str:
    """`nimm_products(wk)`: every product's vector (generated by CasADi), then the product in
    our own loops (compiled_driver.c): its stored values as static tables, or from wk->entries."""
    tables, body = [], []
    for k, prod in enumerate(products):
        m = f"nimm_m{k}"
        if prod.values is not None:
            tables.append(_c_array("double", m, map(_c_double, prod.values)))
        else:
            m = f"(wk->entries + {prod.entry_offset})"
        body.append(f"  wk->res[0] = wk->v;\n"
                    f"  if (nimm_vec_{k}(wk->arg, wk->res, wk->iw, wk->w, 0)) return 1;\n")
        if prod.dense:
            present = "NULL"
            if prod.present is not None:
                present = f"nimm_present{k}"
                tables.append(_c_array("unsigned char", present, map(str, prod.present)))
            body.append(f"  nimm_dense_product({prod.n_rows}, {prod.n_cols}, {m}, {present}, wk->v, "
                        f"wk->u + {prod.offset});\n")
        else:
            starts = np.searchsorted(np.asarray(prod.rows, dtype=int), np.arange(prod.n_rows + 1))
            tables.append(_c_array("int", f"nimm_start{k}", map(str, starts)))
            tables.append(_c_array("int", f"nimm_col{k}", map(str, prod.cols)))
            body.append(f"  nimm_sparse_product({prod.n_rows}, nimm_start{k}, nimm_col{k}, {m}, wk->v, "
                        f"wk->u + {prod.offset});\n")
    return ("".join(tables) + "static int nimm_products(nimm_work *wk) {\n" + "".join(body)
            + "  (void)wk;\n  return 0;\n}\n")


def _gather_c(index: tuple, factor: tuple) -> str:
    """nimm_entries (CasADi's calling convention) from the table of `_gather`."""
    return (_c_array("int", "nimm_entry_at", map(str, index)) + _c_array("double", "nimm_entry_factor", map(_c_double, factor))
            + "static int nimm_entries(const casadi_real **arg, casadi_real **res, casadi_int *iw, casadi_real *w,\n"
            "                        int mem) {\n"
            "  (void)iw; (void)w; (void)mem;\n"
            f"  for (int i = 0; i < {len(index)}; i++)\n"
            "    res[0][i] = nimm_entry_at[i] < 0 ? 0.0 : nimm_entry_factor[i] * arg[0][nimm_entry_at[i]];\n"
            "  return 0;\n}\n")


@dataclass(frozen=True)
class CSource:
    """The two parts of a compiled model, compiled apart and linked into one shared object:
    `model`, CasADi's code (optimised by size: MAX_OPTIMISED_SIZE), and `driver`, ours
    (compiled_driver.c and the products, always optimised)."""

    model: str
    driver: str


def c_source(rhs: CompiledRHS, outputs: ca.Function) -> CSource:
    """The generated right-hand side of `rhs` (with its dense Jacobian if `generates_jacobian`)
    and the simulator's `outputs(t, x, P, W[, I])` (lets then observes); the driver, with the
    declarations of those functions, then the products' C."""
    fns = _functions(rhs)
    at = []
    if generates_jacobian(rhs):
        jacobian, at = _jacobian(rhs)
        fns.append(jacobian)
    symbols = outputs.sx_in()
    fns.append(ca.Function("nimm_out", symbols, outputs.call(symbols)))
    gen = ca.CodeGenerator("nimm_model.c", {"with_header": False, **C_TYPES})
    for f in fns:
        gen.add(f)
    sizes = {"NX": rhs.x.numel(), "NP": outputs.nnz_in(2), "NW": outputs.nnz_in(3),
             "NI": outputs.nnz_in(4) if outputs.n_in() > 4 else 0, "NY": outputs.nnz_out(0),
             "SZ_ARG": max(f.sz_arg() for f in fns), "SZ_RES": max(f.sz_res() for f in fns),
             "SZ_IW": max(f.sz_iw() for f in fns), "SZ_W": max(f.sz_w() for f in fns),
             "NU": rhs.u.numel(), "NV": max([v.numel() for v in rhs.vectors], default=0),
             "NE": rhs.entries.numel()}
    if at:
        sizes["JAC_NNZ"] = len(at)
    defines = "".join(f"#define NIMM_{k} {v}\n" for k, v in sizes.items())
    places = _c_array("long", "nimm_jac_at", map(str, at)) if at else ""
    if rhs.gather is not None:
        places += _gather_c(*rhs.gather)
    declarations = "".join(f"#define {k} {v}\n" for k, v in C_TYPES.items()) + "".join(
        f"int {f.name()}(const casadi_real **arg, casadi_real **res, casadi_int *iw, casadi_real *w, int mem);\n"
        for f in fns)
    return CSource(_without_null_checks(gen.dump()),
                   declarations + defines + places + DRIVER.read_text() + "\n" + _product_c(rhs.products))


# CasADi's generated SX code reads each input element as `a=arg[i]? arg[i][j] : 0;` and writes
# each output element as `if (res[i]!=0) res[i][j]=a;` (a missing argument reads as zeros, a
# missing result is skipped): a branch per element, thousands in a large model, which made most
# of gcc's time and memory (mean-field N = 200: 8.3 s and 250 MB with them, 2.7 s and 90 MB
# without; benchmarks/README.md, "gcc time against size"). Every pointer our driver passes is set
# (compiled_driver.c), and a generated function that calls another (an SX call of a matrix
# product's function) passes pointers into its work vector, so the checks never fire and are
# dropped. Code in another form (another CasADi version) is left as it is: slower to compile, as
# correct.
_INPUT_CHECK = re.compile(r"arg\[(\d+)\]\? arg\[\1\]\[(\d+)\] : 0;")
_OUTPUT_CHECK = re.compile(r"if \(res\[(\d+)\]!=0\) res\[\1\]\[(\d+)\]=")


def _without_null_checks(code: str) -> str:
    return _OUTPUT_CHECK.sub(r"res[\1][\2]=", _INPUT_CHECK.sub(r"arg[\1][\2];", code))


# ---------------------------------------------------------------- the compiler
@dataclass(frozen=True)
class Toolchain:
    compiler: str  # absolute path
    identity: str  # its --version line: part of the cache key

    def command(self, optimise: str) -> tuple[str, ...]:
        return (self.compiler, optimise, *FLAGS)


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


def _compile(tools: Toolchain, optimise: str, source: CSource, so: Path, digest: Path) -> Optional[str]:
    """Compile `source` into `so` (atomically; its model part with `optimise`) and record its
    hash; None, else why it failed."""
    with tempfile.TemporaryDirectory(prefix="nimm-cc-") as work:
        model, driver = Path(work) / "model.c", Path(work) / "driver.c"
        obj, out = Path(work) / "model.o", Path(work) / "model.so"
        if optimise == DRIVER_OPTIMISATION:  # one unit: a second gcc run costs small models 0.3 s
            driver.write_text(source.model + "\n" + source.driver)
            commands = [[*tools.command(optimise), "-o", str(out), str(driver), *LIBS]]
        else:
            model.write_text(source.model)
            driver.write_text(source.driver)
            commands = [[*tools.command(optimise), "-c", "-o", str(obj), str(model)],
                        [*tools.command(DRIVER_OPTIMISATION), "-o", str(out), str(driver), str(obj), *LIBS]]
        for command in commands:
            try:
                run = subprocess.run(command, capture_output=True, text=True, timeout=600)
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
        self._reached = np.zeros(2)  # where a failed solve stopped; where a GSL pair handed over to BDF
        self._reached_at = self._reached.ctypes.data
        self.handed_over: Optional[float] = None  # the last segment's hand-over time, if any

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
        self.handed_over = None if np.isnan(self._reached[1]) else float(self._reached[1])
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


def build(rhs: CompiledRHS, outputs: ca.Function, compiler: Optional[str] = None,
          cached_only: bool = False) -> Optional[CompiledODE]:
    """The compiled solver of the right-hand side `rhs` and the `outputs` function, from the
    cache or freshly compiled.

    cached_only: return None rather than compile when no valid cached object exists (the
    adaptive choice looks up the cache first and compiles only once a model has run long enough).
    None after one warning per process when it cannot be built."""
    size = rhs_size(rhs, outputs)
    if size > MAX_RHS_SIZE:
        if not cached_only:
            _fallback(f"the model has {size} operations to compile (its tables included), more than "
                      f"{MAX_RHS_SIZE}: gcc would take too long")
        return None
    optimise = optimisation(size)
    tools = toolchain(compiler)
    if tools is None:
        if not cached_only:
            _fallback(f"no C compiler `{compiler or os.environ.get(COMPILER_ENV) or 'cc'}` found")
        return None
    source = c_source(rhs, outputs)
    key = hashlib.sha256("\0".join([source.model, source.driver, tools.compiler, tools.identity, optimise,
                                    DRIVER_OPTIMISATION, *FLAGS, *LIBS]).encode()).hexdigest()
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
        problem = _compile(tools, optimise, source, so, digest)
        if problem:
            _fallback(problem)
            return None
        lib = _load(so, digest)
        if lib is None:
            _fallback(f"the freshly built {so} failed its checks")
            return None
    _loaded[key] = CompiledODE(lib, rhs.x.numel(), outputs.nnz_out(0), so)
    return _loaded[key]


# Adaptive choice: compile once the interpreted path has spent about as long as the C compiler
# will take, so that a model run once never waits for gcc and one run many times pays for
# compiling at most about twice. gcc on this machine (2026-12-01, see MAX_RHS_SIZE): 0.24-0.5 s
# for SIR and Hodgkin-Huxley; per operation 3-6e-4 s at -O2, 0.7-1.1e-4 s at -O0.
BUILD_BUDGET = 0.25  # seconds of interpreted simulation, at least
BUDGET_PER_OPERATION = 5e-4  # seconds of gcc -O2 per operation, about
BUDGET_PER_UNOPTIMISED_OPERATION = 1e-4  # at -O0
# Except where the interpreted path is costlier from its first run: its BDF forms and factorises
# the Jacobian (CasADi's sparse LU). The mean-field model (benchmarks/README.md, "gcc time against
# size") at 2 x 10^5 nonzeros (N = 316) took 1.0 s to construct and 1.2 s a run, at 2 x 10^6
# (N = 1000) 12 s and 26 s, against about 1 and 3 s of gcc -O0: above this many nonzeros of the
# compiled right-hand side's Jacobian, the adaptive route compiles at once.
COMPILE_AT_ONCE_NNZ = 200_000


class Route:
    """Whether and when one simulator uses its compiled solver: always (mode True), never (False)
    or adaptively (None: at once if the cache holds it or the Jacobian is large
    (COMPILE_AT_ONCE_NNZ), else once the interpreted simulations took about as long as compiling
    will: BUILD_BUDGET, or more for a larger right-hand side)."""

    def __init__(self, mode: Optional[bool], rhs: Callable[[], CompiledRHS], outputs: ca.Function):
        """rhs: builds the right-hand side as compiled (on first use: a walk of the model)."""
        self.mode = mode
        self._make_rhs, self._outputs = rhs, outputs
        self._rhs: Optional[CompiledRHS] = None
        self._size: Optional[int] = None
        self._solver: Optional[CompiledODE] = None
        self._looked_up = False  # the adaptive cache lookup happened
        self._settled = mode is False  # built, or failed to build: no further attempt
        self.interpreted_seconds = 0.0

    @property
    def rhs(self) -> CompiledRHS:
        if self._rhs is None:
            self._rhs = self._make_rhs()
        return self._rhs

    def _budget(self) -> float:
        if self._size is None:
            self._size = rhs_size(self.rhs, self._outputs)
        per_operation = BUDGET_PER_OPERATION if optimisation(self._size) == OPTIMISED else BUDGET_PER_UNOPTIMISED_OPERATION
        return max(BUILD_BUDGET, per_operation * self._size)

    def solver(self) -> Optional[CompiledODE]:
        if self._settled:
            return self._solver
        if self.mode is None and not self._looked_up:
            self._looked_up = True
            self._solver = build(self.rhs, self._outputs, cached_only=True)
            self._settled = self._solver is not None
            if self._settled or self.rhs.jacobian_nnz <= COMPILE_AT_ONCE_NNZ:
                return self._solver
        elif not self.mode and self.interpreted_seconds < self._budget():
            return self._solver
        self._solver = build(self.rhs, self._outputs)
        self._settled = True
        return self._solver

    def record(self, seconds: float) -> None:
        """Time spent simulating on the interpreted path."""
        self.interpreted_seconds += seconds
