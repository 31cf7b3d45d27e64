"""The public Python surface: `check`, `load`, and the `Model` they return.

Everything heavy (sympy lowering, CasADi, Torch) is imported on first use, so that checking a
model stays fast and light.
"""
from __future__ import annotations

from pathlib import Path
from .diagnostics import Diagnostic
from .backends import BACKENDS, compile_ir  # noqa: F401  (BACKENDS re-exported)
from .errors import ModelError


def read_model_text(path) -> str:
    """Model files are read as UTF-8 (a byte-order mark is dropped); undecodable bytes become
    U+FFFD and then E100 diagnostics. Only as much is read as the parser's size limit can use (a
    character is at most 4 bytes), so `/dev/zero` or a huge file costs bounded memory. A file
    whose lines end in a lone carriage return (classic Mac OS) reads as lines, not as one line."""
    from .grammar.parser import MAX_SOURCE_CHARS

    with open(path, "rb") as f:
        text = f.read(4 * MAX_SOURCE_CHARS + 4).decode("utf-8-sig", errors="replace")
    if "\r" in text and "\n" not in text:
        text = text.replace("\r", "\n")
    return text


def check(source: str, file: str = "<model>", tables=None) -> list[Diagnostic]:
    """Parse and check model text; returns every diagnostic (errors and warnings), never raises.
    `tables` (compiler.families.TableAccess): which files `table(...)` may read; by default any
    CSV beside `file` when it names a file, none otherwise."""
    from .compiler.check import check_source

    from .diagnostics import Span

    try:
        checked = check_source(source, file) if tables is None else check_source(source, file, tables)
        return checked.diagnostics
    except RecursionError:  # a last line of defence; the parser limits nesting first
        return [Diagnostic("E100", Span(1, 1, 1, 2), "the model is nested too deeply to check",
                           None, file)]
    except Exception as error:  # noqa: BLE001 - the last resort of a function that never raises;
        # tests/test_fuzz_checker.py asserts that no fuzzed model ever reaches it
        return [Diagnostic("E000", Span(1, 1, 1, 2),
                           f"internal error in the checker ({type(error).__name__}: {error})",
                           "this is a bug in nimm_dsl, not in the model: please report it with the model", file)]


def load_source(source: str, file: str = "<model>", tables=None) -> "Model":
    """Parse, check and lower model text; raises ModelError (with .diagnostics) on errors.
    `tables` as for `check`."""
    from .compiler.check import check_source

    checked = check_source(source, file, tables)
    if not checked.ok:
        raise ModelError(checked.diagnostics, source)
    return Model(checked)


def load(path) -> "Model":
    """Load a `.nimm` file; raises ModelError on errors (OSError if it cannot be read)."""
    return load_source(read_model_text(path), str(path))


class Model:
    """A checked model. `ir` is built on first use; back ends compile from it."""

    def __init__(self, checked):
        self.checked = checked
        self._ir = None
        self._simulators: dict = {}  # back-end name -> simulator compiled with default options

    @property
    def name(self) -> str:
        m = self.checked.table.model
        return m.name.name if m else "model"

    @property
    def file(self) -> str:
        return self.checked.file

    @property
    def warnings(self) -> list[Diagnostic]:
        return [d for d in self.checked.diagnostics if not d.is_error]

    @property
    def ir(self):
        if self._ir is None:
            from .compiler.lower import LoweringError, lower

            try:
                self._ir = lower(self.checked)
            except LoweringError as e:
                raise ModelError([Diagnostic(e.code, e.span, e.message, None, self.file)],
                                 self.checked.source) from None
        return self._ir

    @property
    def scenarios(self) -> list[str]:
        return list(self.ir.scenarios)

    def compile(self, backend: str = "casadi", **options):
        """A simulator for this model: `.simulate(times, params=None, scenario=None, inputs=None)`.
        Without options, one simulator per back end is compiled and then reused."""
        if options:
            return compile_ir(self.ir, backend, **options)
        if backend not in self._simulators:
            self._simulators[backend] = compile_ir(self.ir, backend)
        return self._simulators[backend]

    def simulate(self, times=None, backend: str = "casadi", **kwargs):
        """Simulate with the shared simulator of `backend`; a run that stops on NaN or inf raises
        a SimulationError that names the model line that caused it (`.diagnostics`)."""
        from .runtime.culprit import simulate

        return simulate(self.compile(backend), times, **kwargs)

    def fit(self, data, backend: str = "casadi", **kwargs):
        """Fit params (and neural weights) to a CSV file or DataFrame; returns a FitResult. The
        fit runs on this model's simulator for `backend` (see `compile`)."""
        from .runtime.fit import fit

        kwargs.setdefault("simulator", self.compile(backend))
        return fit(self.ir, data, backend=backend, **kwargs)

    def latex(self, every_element: bool = False) -> str:
        """The compiled equations as LaTeX (`nimm show`); of a family, the first two elements,
        how many more, and the last, unless `every_element`."""
        from .compiler.check import member_order
        from .compiler.lower import to_latex

        return to_latex(self.ir, every_element, member_order(self.checked.families))

    def equations(self, every_element: bool = False) -> str:
        """The compiled equations as plain text (`nimm show --format text`); families as in `latex`."""
        from .compiler.check import member_order
        from .compiler.lower import to_text

        return to_text(self.ir, every_element, member_order(self.checked.families))

    def __repr__(self) -> str:
        return f"<nimm Model {self.name!r} from {self.file}>"

