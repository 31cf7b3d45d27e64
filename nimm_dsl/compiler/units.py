"""Physical units with exact rational exponents and exact scale factors.

A `Unit` is a product of base dimensions raised to `Fraction` exponents, a `Fraction` scale (a
value in this unit times `scale` is the value in base units: SI with kg, plus one base per model
`unit NAME`), and a label for printing. Units compare by dimension and scale: `[mg/L]` equals
`[g/m^3]`.

Unit names come from pint, the unit library, used whole and through its public API. Importing
pint and building its registry costs ~0.6 s, and `nimm check` must start in well under half a
second, so three layers answer in turn:

* `_COMMON`, our own small exact table (SI bases, prefixes, the units of docs/language.md §4),
  after Myokit's `_unit.py`; tests/test_units.py checks every entry against pint.
* `library_names()`: the names in pint's definition file, read as text in pint's documented
  definition-file format, without importing pint. It answers "is this a library name?" (so a
  model may declare `unit person` but not `unit au`) and names the unit in a message.
* pint itself, imported on first need only, for the factor and dimension of a library unit
  outside the table (`au`, `mmHg`, `inch`).

Library names are accepted by the SI rule, stricter than pint's own parser: a name is a unit's
name, symbol or alias, a long name with a plural `s`, or a prefix and a unit both in symbol form
(`mg`, `uM`) or both in long form (`milligram`). Pint alone would read `hare` as hecto-are; a
model about hares must be able to declare `unit hare`.

Units with an offset or on a log scale (`degC`, `dB`) convert by no factor, so each is a dimension
of its own (docs/language.md §4); `delta_degC` is an ordinary multiple of the kelvin.
"""
from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from typing import Iterable, Mapping, Optional, Union

from ..grammar import ast as A

Exponent = Union[int, Fraction]

LENGTH, TIME, MASS, SUBSTANCE = "[length]", "[time]", "[mass]", "[substance]"
CURRENT, TEMPERATURE, LUMINOSITY = "[current]", "[temperature]", "[luminosity]"


def _clean(mapping: Mapping[str, Fraction]) -> tuple[tuple[str, Fraction], ...]:
    return tuple(sorted((k, Fraction(v)) for k, v in mapping.items() if v != 0))


def _combine(a: Iterable[tuple[str, Fraction]], b: Iterable[tuple[str, Fraction]], sign: int):
    """a * b (sign 1) or a / b (sign -1) of two sorted exponent tuples, as a sorted tuple.
    Both hold Fractions already, so nothing is converted again."""
    out: dict[str, Fraction] = dict(a)
    for k, v in b:
        if sign < 0:
            v = -v
        out[k] = out[k] + v if k in out else v
    return tuple(sorted(item for item in out.items() if item[1]))


# Results of Unit arithmetic by the identity of the operands. A check multiplies and divides the
# same few unit objects over and over (`k * A1`, `A1 / V`, each rate per time unit), and exact
# Fraction arithmetic costs ~10 us a product. Each entry keeps its operands alive, so an id is
# never reused while its entry exists; the table is emptied when it grows large.
_ARITHMETIC: dict[tuple, tuple] = {}
_MAX_ARITHMETIC = 4096


def _remembered(key: tuple, operands: tuple, compute) -> "Unit":
    entry = _ARITHMETIC.get(key)
    if entry is None:
        if len(_ARITHMETIC) >= _MAX_ARITHMETIC:
            _ARITHMETIC.clear()
        entry = _ARITHMETIC[key] = (operands, compute(*operands))
    return entry[1]


def _integer_root(n: int, k: int) -> Optional[int]:
    """The exact k-th root of n >= 0, or None when n is not a perfect k-th power."""
    r = round(n ** (1.0 / k)) if n else 0
    for c in (r - 1, r, r + 1):
        if c >= 0 and c ** k == n:
            return c
    return None


def fraction_power(x: Fraction, e: Fraction) -> Fraction:
    """x ** e, exact whenever the result is rational (1/1000 ** (1/3) == 1/10)."""
    e = Fraction(e)
    if e.denominator == 1:
        return x ** int(e)
    if x > 0:
        num = _integer_root(x.numerator, e.denominator)
        den = _integer_root(x.denominator, e.denominator)
        if num is not None and den is not None:
            return Fraction(num, den) ** e.numerator
    return exact(float(x) ** float(e))


def exact(x: float) -> Fraction:
    """A library float factor as the decimal it was meant to be (999.9999999999999 -> 1000)."""
    return Fraction(f"{x:.15g}")


def _format_power(name: str, e: Fraction) -> str:
    if e == 1:
        return name
    text = str(e.numerator) if e.denominator == 1 else f"({e})"
    return f"{name}^{text}"


def _format_label(names: tuple[tuple[str, Fraction], ...]) -> str:
    """`person/day`, `L/(h*kg)`, `m^(1/2)`, `1/day^2`, `1`."""
    num = [_format_power(n, e) for n, e in names if e > 0]
    den = [_format_power(n, -e) for n, e in names if e < 0]
    top = "*".join(num) if num else "1"
    if not den:
        return top
    bottom = den[0] if len(den) == 1 else "(" + "*".join(den) + ")"
    return f"{top}/{bottom}"


@dataclass(frozen=True, eq=False)
class Unit:
    """An exact physical unit. `dims` and `names` are sorted (name, exponent) tuples."""

    dims: tuple[tuple[str, Fraction], ...]
    scale: Fraction
    names: tuple[tuple[str, Fraction], ...] = ()  # the unit names as written, for the label

    @staticmethod
    def make(dims: Mapping[str, Exponent], scale=1, names: Mapping[str, Exponent] = None) -> "Unit":
        return Unit(_clean(dims), Fraction(scale), _clean(names or {}))

    @property
    def label(self) -> str:
        return _format_label(self.names)

    @property
    def dimensions(self) -> dict[str, Fraction]:
        return dict(self.dims)

    @property
    def is_dimensionless(self) -> bool:
        return not self.dims

    def same_dims(self, other: "Unit") -> bool:
        return self.dims == other.dims

    def factor_to(self, other: "Unit") -> Fraction:
        """The number to multiply a value in self by to express it in other (same dimension)."""
        if not self.same_dims(other):
            raise ValueError(f"cannot convert {self} to {other}")
        return self.scale / other.scale

    def __mul__(self, other: "Unit") -> "Unit":
        return _remembered(("*", id(self), id(other)), (self, other), _product)

    def __truediv__(self, other: "Unit") -> "Unit":
        return _remembered(("/", id(self), id(other)), (self, other), _quotient)

    def __pow__(self, e: Exponent) -> "Unit":
        e = Fraction(e)
        return _remembered(("^", id(self), e), (self, e), _power)

    def sqrt(self) -> "Unit":
        return self ** Fraction(1, 2)

    def __eq__(self, other) -> bool:
        return isinstance(other, Unit) and self.dims == other.dims and self.scale == other.scale

    def __hash__(self) -> int:
        return hash((self.dims, self.scale))

    def __str__(self) -> str:
        return f"[{self.label}]"

    def __repr__(self) -> str:
        return f"Unit({self}, dims={dict(self.dims)}, scale={self.scale})"


def _product(a: Unit, b: Unit) -> Unit:
    return Unit(_combine(a.dims, b.dims, 1), a.scale * b.scale, _combine(a.names, b.names, 1))


def _quotient(a: Unit, b: Unit) -> Unit:
    return Unit(_combine(a.dims, b.dims, -1), a.scale / b.scale, _combine(a.names, b.names, -1))


def _power(a: Unit, e: Fraction) -> Unit:
    return Unit(_clean({k: v * e for k, v in a.dims}), fraction_power(a.scale, e),
                _clean({k: v * e for k, v in a.names}))


ONE = Unit((), Fraction(1), ())


class UnitError(Exception):
    """A unit that cannot be resolved or declared: a diagnostic code, message and hint."""

    def __init__(self, code: str, message: str, hint: Optional[str] = None,
                 span: Optional[A.Span] = None):
        super().__init__(message)
        self.code, self.message, self.hint, self.span = code, message, hint, span
        self.name: Optional[str] = None  # the unit name at fault, when there is one


# ---------------------------------------------------------------- the common-name table
# Our own table, exact by construction: the units models use every day (docs/language.md §4), so
# that checking them never waits for pint. tests/test_units.py compares every entry with pint.
def _si(scale, **exponents) -> tuple[dict[str, int], Fraction]:
    key = {"m": LENGTH, "s": TIME, "kg": MASS, "mol": SUBSTANCE, "A": CURRENT,
           "K": TEMPERATURE, "cd": LUMINOSITY}
    return {key[k]: v for k, v in exponents.items()}, Fraction(scale)


_PREFIXES = {"G": Fraction(10**9), "M": Fraction(10**6), "k": Fraction(1000),
             "d": Fraction(1, 10), "c": Fraction(1, 100), "m": Fraction(1, 1000),
             "u": Fraction(1, 10**6), "n": Fraction(1, 10**9), "p": Fraction(1, 10**12)}
# symbol -> (dimension exponents, scale to SI), and which prefixes are in common use with it
_PREFIXABLE = {
    "s": (_si(1, s=1), "mun"), "g": (_si(Fraction(1, 1000), kg=1), "kmunp"),
    "L": (_si(Fraction(1, 1000), m=3), "dmun"), "m": (_si(1, m=1), "kcmun"),
    "mol": (_si(1, mol=1), "mun"), "M": (_si(1000, mol=1, m=-3), "munp"),
    "V": (_si(1, kg=1, m=2, s=-3, A=-1), "kmu"), "A": (_si(1, A=1), "mnup"),
    "F": (_si(1, A=2, s=4, kg=-1, m=-2), "munp"), "S": (_si(1, A=2, s=3, kg=-1, m=-2), "mun"),
    "J": (_si(1, kg=1, m=2, s=-2), "km"), "W": (_si(1, kg=1, m=2, s=-3), "km"),
    "N": (_si(1, kg=1, m=1, s=-2), "km"), "Pa": (_si(1, kg=1, m=-1, s=-2), "k"),
    "Gy": (_si(1, m=2, s=-2), "cm"), "Hz": (_si(1, s=-1), "k"), "C": (_si(1, A=1, s=1), "mun"),
    "Bq": (_si(1, s=-1), "kMG"),
}
_PLAIN = {
    "min": _si(60, s=1), "h": _si(3600, s=1), "day": _si(86400, s=1),
    "week": _si(604800, s=1), "year": _si(31557600, s=1),  # pint's year: 365.25 days
    "second": _si(1, s=1), "minute": _si(60, s=1), "hour": _si(3600, s=1),
    "K": _si(1, K=1), "cd": _si(1, cd=1), "kat": _si(1, mol=1, s=-1),
    "gram": _si(Fraction(1, 1000), kg=1), "liter": _si(Fraction(1, 1000), m=3),
    "litre": _si(Fraction(1, 1000), m=3), "meter": _si(1, m=1), "metre": _si(1, m=1),
    "mole": _si(1, mol=1), "count": _si(1), "percent": _si(Fraction(1, 100)),
    "ppm": _si(Fraction(1, 10**6)),
}


def _common_table() -> dict[str, tuple[dict[str, int], Fraction]]:
    table = dict(_PLAIN)
    for symbol, ((dims, scale), prefixes) in _PREFIXABLE.items():
        table[symbol] = (dims, scale)
        for p in prefixes:
            table[p + symbol] = (dims, scale * _PREFIXES[p])
    return table


_COMMON = _common_table()
COMMON_NAMES = tuple(_COMMON)


# ---------------------------------------------------------------- the names pint knows
@dataclass(frozen=True)
class LibraryNames:
    """The unit and prefix names of pint's definition files, each mapped to its canonical name.

    Symbols (`mg`'s `m` and `g`) and long names (`milli`, `gram`) are kept apart for the SI rule;
    an alias counts as both, as pint mixes `hr` and `litre` among them.
    """

    unit_symbols: frozenset
    unit_names: frozenset
    prefix_symbols: frozenset
    prefix_names: frozenset
    canonical: Mapping[str, str]  # unit name, symbol or alias -> pint's name for the unit
    canonical_prefix: Mapping[str, str]  # prefix name, symbol or alias -> pint's prefix name

    def split(self, name: str) -> Optional[tuple[str, str]]:
        """(prefix, unit) as written when `name` is a library unit by the SI rule, else None."""
        if name in self.unit_symbols or name in self.unit_names:
            return "", name
        if name.endswith("s") and name[:-1] in self.unit_names:
            return "", name[:-1]
        for i in range(1, len(name)):
            prefix, rest = name[:i], name[i:]
            if prefix in self.prefix_symbols and rest in self.unit_symbols:
                return prefix, rest
            if prefix in self.prefix_names:
                if rest in self.unit_names:
                    return prefix, rest
                if rest.endswith("s") and rest[:-1] in self.unit_names:
                    return prefix, rest[:-1]
        return None

    def canonical_name(self, name: str) -> Optional[str]:
        """pint's spelling of a library name (`au` -> `astronomical_unit`, `mg` -> `milligram`)."""
        split = self.split(name)
        if split is None:
            return None
        prefix, unit = split
        return (self.canonical_prefix[prefix] if prefix else "") + self.canonical[unit]


def read_definitions(lines: Iterable[str], open_import) -> LibraryNames:
    """The names defined by lines in pint's documented definition-file format (pint's
    "Defining units" page): `name = definition [= symbol] [= alias ...]` (symbol `_`: none),
    `prefix- = factor [= symbol-] [= alias- ...]`, `@alias name = alias ...`, `@import FILE` (read
    through `open_import(FILE)`), `@group` bodies (units); `[dimension] = ...` lines and
    `@defaults`, `@context` and `@system` blocks define no names and are skipped."""
    unit_symbols, unit_names, prefix_symbols, prefix_names = set(), set(), set(), set()
    canonical: dict[str, str] = {}
    canonical_prefix: dict[str, str] = {}

    def add(name: str, rest: list[str], symbols: set, longs: set, names: dict) -> None:
        symbol, aliases = (rest[0], rest[1:]) if rest else ("_", [])
        longs.add(name)
        names[name] = name
        if symbol not in ("_", "", name):
            symbols.add(symbol)
            names[symbol] = name
        for alias in aliases:
            symbols.add(alias)
            longs.add(alias)
            names[alias] = name

    def walk(text_lines: Iterable[str]) -> None:
        skipping = False
        for raw in text_lines:
            line = raw.split("#", 1)[0].strip()
            if not line:
                continue
            if line.startswith("@"):
                directive = line[1:].split(None, 1)
                word = directive[0].split("(", 1)[0]
                if word == "end":
                    skipping = False
                elif word in ("defaults", "context", "system"):
                    skipping = True
                elif word == "import" and len(directive) > 1:
                    walk(open_import(directive[1].strip()))
                elif word == "alias" and len(directive) > 1:
                    target, *aliases = (part.strip() for part in directive[1].split("="))
                    for alias in aliases:
                        unit_symbols.add(alias)
                        unit_names.add(alias)
                        canonical[alias] = canonical.get(target, target)
                continue  # @group opens a block of ordinary definitions
            if skipping or line.startswith("[") or "=" not in line:
                continue
            name, definition, *rest = (part.strip() for part in line.split("="))
            if name.endswith("-"):
                rest = [r[:-1] if r.endswith("-") else r for r in rest]
                add(name[:-1], rest, prefix_symbols, prefix_names, canonical_prefix)
                continue
            add(name, rest, unit_symbols, unit_names, canonical)
            if _has_offset(definition):  # pint adds `delta_degC` for differences of degC
                symbol, aliases = (rest[0], rest[1:]) if rest else ("_", [])
                delta_symbol = "_" if symbol in ("_", "") else "Δ" + symbol
                delta_aliases = ["Δ" + a for a in aliases] + ["delta_" + a for a in aliases]
                add("delta_" + name, [delta_symbol, *delta_aliases], unit_symbols, unit_names, canonical)

    walk(lines)
    return LibraryNames(frozenset(unit_symbols), frozenset(unit_names), frozenset(prefix_symbols),
                        frozenset(prefix_names), canonical, canonical_prefix)


def _has_offset(definition: str) -> bool:
    """Whether a unit definition (`kelvin; offset: 273.15`) has a non-zero offset."""
    for modifier in definition.split(";")[1:]:
        key, _, value = modifier.partition(":")
        if key.strip() == "offset":
            try:
                return float(value) != 0
            except ValueError:
                return True
    return False


_LIBRARY_NAMES: Optional[LibraryNames] = None


def library_names() -> Optional[LibraryNames]:
    """The names in pint's default definition file, read without importing pint (that costs
    ~0.6 s, and deciding that `person` is free to declare must not). None when the file is not
    where `pint.UnitRegistry()` loads it from; pint itself then decides what is a library name."""
    global _LIBRARY_NAMES
    if _LIBRARY_NAMES is None:
        import importlib.util
        from pathlib import Path

        spec = importlib.util.find_spec("pint")
        if spec is None or spec.origin is None:
            return None
        folder = Path(spec.origin).parent
        try:
            _LIBRARY_NAMES = read_definitions(
                _read_lines(folder / "default_en.txt"), lambda f: _read_lines(folder / f))
        except OSError:
            return None
    return _LIBRARY_NAMES


def _read_lines(path) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines()


# ---------------------------------------------------------------- pint, lazily
_registry = None


def pint_registry():
    """The process's one pint registry, built on first need (importing pint and reading its
    definitions takes ~0.6 s). No cache_folder: pint's registry cache is a pickle."""
    global _registry
    if _registry is None:
        import pint

        _registry = pint.UnitRegistry()
    return _registry


def is_library_name(name: str) -> bool:
    if name in _COMMON:
        return True
    names = library_names()
    if names is None:
        return bool(pint_registry().parse_unit_name(name))
    return names.split(name) is not None


def library_description(name: str) -> str:
    """How to name a library unit in a message: `astronomical unit`."""
    names = library_names()
    canonical = names.canonical_name(name) if names is not None else None
    return (canonical or name).replace("_", " ")


_LIBRARY_UNITS: dict[str, Optional[Unit]] = {}


def library_unit(name: str) -> Optional[Unit]:
    """The library unit called `name`, or None. Remembered for the process: the library does not
    change, and handing out the same objects lets Unit arithmetic find its remembered results."""
    if name not in _LIBRARY_UNITS:
        _LIBRARY_UNITS[name] = _library_unit(name)
    return _LIBRARY_UNITS[name]


def _library_unit(name: str) -> Optional[Unit]:
    """The library unit called `name` (our table, else pint's public API), or None."""
    if name in _COMMON:
        dims, scale = _COMMON[name]
        return Unit.make(dims, scale, {name: 1})
    names = library_names()
    canonical = names.canonical_name(name) if names is not None else name
    if canonical is None:
        return None
    registry = pint_registry()
    import pint

    try:
        factor, _ = registry.get_base_units(canonical)
        dims = registry.get_dimensionality(canonical)
        # A multiplicative unit maps zero to zero; degC (0 degC is 273.15 K) and the
        # logarithmic dB (0 dB is a ratio of 1) do not.
        multiplicative = registry.Quantity(0, canonical).to_base_units().magnitude == 0
    except (pint.PintError, ValueError, ArithmeticError):  # a prefixed degC, say
        return None
    if not multiplicative:
        # No factor converts these, so each is a dimension of its own: values combine with the
        # same unit, and mixing with K is E401/E405, not silently wrong (docs/language.md §4).
        return Unit.make({f"[{canonical}]": 1}, 1, {name: 1})
    return Unit.make({d: exact(float(e)) for d, e in dims.items()}, exact(float(factor)), {name: 1})


class UnitSystem:
    """Resolves unit names: the library's plus the model's own (`unit person`, `unit kcell = ...`)."""

    def __init__(self):
        self.model_units: dict[str, Unit] = {}  # never a library name: _check_free refuses those

    def _check_free(self, name: str) -> None:
        if is_library_name(name):
            raise UnitError("E202", f"`{name}` is already the {library_description(name)}",
                            "choose another name, or use the library unit")

    def add_base(self, name: str) -> Unit:
        """Declare a new base unit with its own dimension; raises UnitError (E202) on a library name."""
        self._check_free(name)
        unit = Unit.make({name: 1}, 1, {name: 1})
        self.model_units[name] = unit
        return unit

    def add_derived(self, name: str, factor: Fraction, unit: Unit) -> Unit:
        """Declare `name = factor [unit]`; raises UnitError (E202) on a library name."""
        self._check_free(name)
        derived = Unit(unit.dims, Fraction(factor) * unit.scale, _clean({name: 1}))
        self.model_units[name] = derived
        return derived

    def lookup(self, name: str) -> Unit:
        """The unit called `name`; raises UnitError (E406) when there is none."""
        if name in self.model_units:
            return self.model_units[name]
        unit = library_unit(name)
        if unit is None:
            raise UnitError("E406", f"unknown unit `{name}`", self._unknown_hint(name))
        return unit

    def _unknown_hint(self, name: str) -> str:
        from ..diagnostics import did_you_mean

        declare = f"declare `unit {name}` if it is a new kind of thing to count"
        close = did_you_mean(name, list(COMMON_NAMES) + list(self.model_units))
        return f"{close} Or {declare}" if close else declare

    def try_resolve(self, expr: A.UnitExpr) -> tuple[Optional[Unit], list[UnitError]]:
        """The unit of a bracketed unit expression, and one error per unknown name in it."""
        errors: list[UnitError] = []

        def go(e) -> Optional[Unit]:
            if isinstance(e, A.UnitOne):
                return ONE
            if isinstance(e, A.UnitName):
                try:
                    return self.lookup(e.name)
                except UnitError as err:
                    err.span, err.name = e.span, e.name
                    errors.append(err)
                    return None
            if isinstance(e, A.UnitPow):
                base = go(e.base)
                return None if base is None else base ** e.exponent
            if isinstance(e, (A.UnitMul, A.UnitDiv)):
                left, right = go(e.left), go(e.right)
                if left is None or right is None:
                    return None
                return left * right if isinstance(e, A.UnitMul) else left / right
            return None

        return go(expr), errors

    def resolve(self, expr: A.UnitExpr) -> Unit:
        """Like try_resolve, but raises the first UnitError."""
        unit, errors = self.try_resolve(expr)
        if errors:
            raise errors[0]
        assert unit is not None
        return unit
