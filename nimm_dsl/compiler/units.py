"""Physical units with exact rational exponents and exact scale factors.

A `Unit` is a product of base dimensions raised to `Fraction` exponents, a `Fraction` scale (a
value in this unit times `scale` is the value in base units: SI with kg, plus one base per model
`unit NAME`), and a label for printing. Units compare by dimension and scale: `[mg/L]` equals
`[g/m^3]`.

Unit names come from pint, the unit library, but pint costs ~0.2 s to import and `nimm check`
must start in well under half a second. So the names models use every day are in a small exact
table (`_COMMON`, checked against pint by tests/test_units.py), the set of all names pint knows is
embedded at the bottom of this file (also checked against pint), and pint itself is imported only
for a library unit outside the table, or to name the library unit a model unit collides with.

Library names are accepted by the SI rule, stricter than pint's own parser: a name is a unit's
name, symbol or alias, a long name with a plural `s`, or a prefix and a unit both in symbol form
(`mg`, `uM`) or both in long form (`milligram`). Pint alone would read `hare` as hecto-are; a
model about hares must be able to declare `unit hare`.

Temperatures are purely multiplicative (`degC` has the kelvin's scale): unit conversion never
adds offsets.
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
def _si(scale, **exponents) -> tuple[dict[str, int], Fraction]:
    key = {"m": LENGTH, "s": TIME, "kg": MASS, "mol": SUBSTANCE, "A": CURRENT,
           "K": TEMPERATURE, "cd": LUMINOSITY}
    return {key[k]: v for k, v in exponents.items()}, Fraction(scale)


_PREFIXES = {"k": Fraction(1000), "d": Fraction(1, 10), "c": Fraction(1, 100),
             "m": Fraction(1, 1000), "u": Fraction(1, 10**6), "n": Fraction(1, 10**9),
             "p": Fraction(1, 10**12)}
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
}
_PLAIN = {
    "min": _si(60, s=1), "h": _si(3600, s=1), "day": _si(86400, s=1),
    "week": _si(604800, s=1), "year": _si(31557600, s=1),  # pint's year: 365.25 days
    "second": _si(1, s=1), "minute": _si(60, s=1), "hour": _si(3600, s=1),
    "K": _si(1, K=1), "cd": _si(1, cd=1), "kat": _si(1, mol=1, s=-1),
    "gram": _si(Fraction(1, 1000), kg=1), "liter": _si(Fraction(1, 1000), m=3),
    "litre": _si(Fraction(1, 1000), m=3), "meter": _si(1, m=1), "metre": _si(1, m=1),
    "mole": _si(1, mol=1), "percent": _si(Fraction(1, 100)),
}


def _common_table() -> dict[str, tuple[dict[str, int], Fraction]]:
    table = dict(_PLAIN)
    for symbol, ((dims, scale), prefixes) in _PREFIXABLE.items():
        table[symbol] = (dims, scale)
        for p in prefixes:
            table[p + symbol] = (dims, scale * _PREFIXES[p])
    return table


_COMMON = _common_table()


# ---------------------------------------------------------------- pint, lazily
_registry = None


def pint_registry():
    """The process's one pint registry (imported on first need: it is slow to load)."""
    global _registry
    if _registry is None:
        import pint

        _registry = pint.UnitRegistry()  # no cache_folder: pint's cache is a pickle
    return _registry


def pint_name_index(registry) -> tuple[frozenset, frozenset, frozenset, frozenset]:
    """(unit symbols, unit long names, prefix symbols, prefix long names) known to pint.

    Aliases count as both forms (pint mixes `hr` and `litre` among them). Prefixed units that pint
    cached while parsing (`kilometer`, `km`) are left out: the prefix rule accepts them anyway,
    and the index must not depend on what a registry happened to parse.
    """
    prefix_short, prefix_long = set(), set()
    for d in set(registry._prefixes.values()):
        if d.name:
            prefix_long.add(d.name)
        if d.symbol and d.symbol != d.name:
            prefix_short.add(d.symbol)
        prefix_short.update(d.aliases)
        prefix_long.update(d.aliases)
    definitions = set(registry._units.values())
    names = {d.name for d in definitions}

    def prefixed(name: str) -> bool:
        return any(name.startswith(p) and name[len(p):] in names for p in prefix_long if p)

    unit_short, unit_long = set(), set()
    for d in definitions:
        if prefixed(d.name):
            continue
        unit_long.add(d.name)
        if d.symbol and d.symbol != d.name:  # pint gives symbol-less units their name as symbol
            unit_short.add(d.symbol)
        unit_short.update(d.aliases)
        unit_long.update(d.aliases)
    return frozenset(unit_short), frozenset(unit_long), frozenset(prefix_short), frozenset(prefix_long)


def split_library_name(name: str, index) -> Optional[tuple[str, str]]:
    """(prefix, unit) as written when `name` is a library unit by the SI rule, else None."""
    unit_short, unit_long, prefix_short, prefix_long = index
    if name in unit_short or name in unit_long:
        return "", name
    if name.endswith("s") and name[:-1] in unit_long:
        return "", name[:-1]
    for i in range(1, len(name)):
        prefix, rest = name[:i], name[i:]
        if prefix in prefix_short and rest in unit_short:
            return prefix, rest
        if prefix in prefix_long and (rest in unit_long or rest.endswith("s") and rest[:-1] in unit_long):
            return prefix, rest if rest in unit_long else rest[:-1]
    return None


def _embedded_index():
    return (frozenset(_PINT_UNIT_SYMBOLS.split()) | frozenset(_PINT_UNIT_ALIASES.split()),
            frozenset(_PINT_UNIT_NAMES.split()) | frozenset(_PINT_UNIT_ALIASES.split()),
            frozenset(_PINT_PREFIX_SYMBOLS.split()), frozenset(_PINT_PREFIX_NAMES.split()))


_INDEX = None


def is_library_name(name: str) -> bool:
    global _INDEX
    if name in _COMMON:
        return True
    if _INDEX is None:
        _INDEX = _embedded_index()
    return split_library_name(name, _INDEX) is not None


def _pint_canonical(name: str) -> Optional[str]:
    """pint's spelling of a library name (`astronomical_unit`, `milligram`)."""
    registry = pint_registry()
    split = split_library_name(name, pint_name_index(registry))
    if split is None:
        return None
    prefix, unit = split
    prefix_name = registry._prefixes[prefix].name if prefix else ""
    return prefix_name + registry._units[unit].name


def library_description(name: str) -> str:
    """How to name a library unit in a message: `astronomical unit`."""
    try:
        canonical = _pint_canonical(name)
    except Exception:
        canonical = None
    return (canonical or name).replace("_", " ")


def _library_unit(name: str) -> Optional[Unit]:
    if name in _COMMON:
        dims, scale = _COMMON[name]
        return Unit.make(dims, scale, {name: 1})
    if not is_library_name(name):
        return None
    try:
        registry = pint_registry()
        canonical = _pint_canonical(name)
        multiplicative = registry.Quantity(1, canonical)._is_multiplicative
        factor, _ = registry.get_base_units(canonical)
        dims = registry.get_dimensionality(canonical)
    except Exception:
        return None
    if not multiplicative:
        # degC, degF, dB: no factor converts them (0 degC is 273.15 K), so each is a dimension of
        # its own: values combine with the same unit, and mixing with K is E401/E405, not wrong.
        return Unit.make({f"[{canonical}]": 1}, 1, {name: 1})
    return Unit.make({d: exact(float(e)) for d, e in dims.items()}, exact(float(factor)), {name: 1})


COMMON_NAMES = tuple(_COMMON)


class UnitSystem:
    """Resolves unit names: the library's plus the model's own (`unit person`, `unit kcell = ...`)."""

    def __init__(self):
        self.model_units: dict[str, Unit] = {}
        self._cache: dict[str, Optional[Unit]] = {}

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
        if name in self.model_units and not is_library_name(name):
            return self.model_units[name]
        if name not in self._cache:
            self._cache[name] = _library_unit(name)
        unit = self._cache[name]
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


# ---------------------------------------------------------------- pint's names, embedded
# Generated by `pint_name_index(pint.UnitRegistry())` (pint 0.25); tests/test_units.py fails
# when pint's names change, with the text to paste here.
def embedded_index_source(registry) -> str:
    """The Python text of the constants below, from a pint registry."""
    import textwrap

    unit_short, unit_long, prefix_short, prefix_long = pint_name_index(registry)
    parts = {"_PINT_UNIT_SYMBOLS": unit_short - unit_long, "_PINT_UNIT_NAMES": unit_long - unit_short,
             "_PINT_UNIT_ALIASES": unit_short & unit_long, "_PINT_PREFIX_SYMBOLS": prefix_short,
             "_PINT_PREFIX_NAMES": prefix_long}
    out = []
    for const, names in parts.items():
        body = textwrap.fill(" ".join(sorted(names)), 96, break_long_words=False, break_on_hyphens=False)
        out.append(f'{const} = """\n{body}\n"""')
    return "\n".join(out) + "\n"


_PINT_UNIT_SYMBOLS = """
% A AU A_90 A_US A_it Ah At B Ba Bd Bi Bq Btu Btu_it Btu_th C C_90 Ci Cl D Da E_h F FBM F_90 Fr
G G_0 Gal Gb Gy H H_90 Hz J K K_J K_J90 Ly M Mx N N_A Ne Nm Np Oe P PPCM PSH Pa R RIU R_K R_K90
R_∞ Rd Ry S SPL St Sv T Ta Td Tj Tt U UK_cwt US_cwt V VA V_90 V_US V_it W W_90 Wb Wh Xu_Cu Xu_Mo
Z_0 a a_0 a_u_current a_u_efg a_u_electric_field a_u_force a_u_intensity a_u_temp a_u_time abA
abC abF abH abS abV abΩ ap_dr ap_lb ap_oz arcmin arcsec at atm atm_l au b bbl beer_bbl blob bpp
bu c c_1 c_2 cal cal_15 cal_it cc cd cm_1 cmil cp cps ct cu_ft cu_in cu_yd cwt d dB dBW dBm dBu
deg den dgal dots_per_inch dpi dqt dr dwt dyn e eV eu fldr floz fm fps ft ftH2O ftH2O_4C
ftH2O_60F ftHg ftHg_0C ftHg_32F ftHg_60F ft_lb fur g g_0 g_e gal gf gi gr grad h ha hp
imperial_bbl imperial_bu imperial_cp imperial_fldr imperial_floz imperial_gal imperial_gi
imperial_pk imperial_pt imperial_qt in inH2O inH2O_4C inH2O_60F inHg inHg_0C inHg_32F inHg_60F
jig k k_C kat kgf kn kph ksi l lb lbf li lm lx ly m mH2O mH2O_4C mH2O_60F mHg mHg_0C mHg_32F
mHg_60F m_e m_n m_p m_u mi min mol mph mps nmi oct oil_bbl oz ozf pc pdl pk pp psi pt px qt quad
r_e rad rd rpm rps s sft slpm smi sq_deg sq_ft sq_in sq_mi sq_rod sq_yd sr statA statF statH
statT statV statWb statΩ sv t tTNT tbsp tf th thm tlb toe toz tsp u yd °C °F °R °Re µ µ_0 µ_B
µ_N Å Å_star ħ Δ°C Δ°F Δ°Re Φ_0 Ω Ω_90 Ω_US Ω_it α γ ε ε_0 ζ λ π ρH2O ρH2O_4C ρH2O_60F ρHg
ρHg_0C ρHg_32F ρHg_60F σ σ_e ‰ ℎ
"""
_PINT_UNIT_NAMES = """
LMH RKM UK_force_ton UK_hundredweight UK_ton US_force_ton US_hundredweight
US_international_ampere US_international_ohm US_international_volt US_therm US_ton abampere
abcoulomb aberdeen abfarad abhenry abohm absiemens absorbance_unit abvolt acre acre_foot ampere
ampere_hour ampere_turn angstrom angstrom_star apothecary_dram apothecary_ounce apothecary_pound
arcminute arcsecond are astronomical_unit atmosphere_liter atomic_mass_constant
atomic_unit_of_current atomic_unit_of_electric_field atomic_unit_of_electric_field_gradient
atomic_unit_of_force atomic_unit_of_intensity atomic_unit_of_temperature atomic_unit_of_time
avogadro_constant avogadro_number bag bar barn barrel barye baud becquerel beer_barrel biot
biot_turn bit bits_per_pixel board_foot bohr bohr_magneton boiler_horsepower boltzmann_constant
british_thermal_unit buckingham bushel byte cables_length calorie candela carat century chain
cicero circular_mil classical_electron_radius clausius common_year conductance_quantum
conventional_ampere_90 conventional_coulomb_90 conventional_farad_90 conventional_henry_90
conventional_josephson_constant conventional_mercury_density conventional_ohm_90
conventional_volt_90 conventional_von_klitzing_constant conventional_water_density
conventional_watt_90 cooling_tower_ton coulomb coulomb_constant count counts_per_second
css_pixel cubic_centimeter cubic_foot cubic_inch cubic_yard cup curie dalton darcy day debye
decade decibel decibelmicrowatt decibelmilliwatt decibelwatt degree degree_Celsius
degree_Fahrenheit degree_Rankine degree_Reaumur delta_degree_Celsius delta_degree_Fahrenheit
delta_degree_Reaumur denier didot dirac_constant dram dry_barrel dry_gallon dry_pint dry_quart
dtex dyne electrical_horsepower electron_g_factor electron_mass electron_volt elementary_charge
entropy_unit enzyme_unit eon erg eulers_number farad faraday faraday_constant fathom fermi
fifteen_degree_calorie fifth fine_structure_constant first_radiation_constant fluid_dram
fluid_ounce foot foot_H2O foot_H2O_4C foot_H2O_60F foot_Hg foot_Hg_0C foot_Hg_32F foot_Hg_60F
foot_per_second foot_pound force_gram force_kilogram force_long_ton force_metric_ton force_ounce
force_pound force_ton fortnight franklin furlong galileo gallon gamma gamma_mass gauss gilbert
gill grade grain gram gray gregorian_year hand hartree hectare henry hertz hogshead horsepower
hour hundredweight impedance_of_free_space imperial_barrel imperial_bushel imperial_cup
imperial_fluid_drachm imperial_fluid_ounce imperial_fluid_scruple imperial_gallon imperial_gill
imperial_minim imperial_peck imperial_pint imperial_quart inch inch_H2O inch_H2O_4C inch_H2O_60F
inch_Hg inch_Hg_0C inch_Hg_32F inch_Hg_60F international_british_thermal_unit
international_calorie josephson_constant joule jute katal kelvin kilometer_per_hour kip
kip_per_square_inch knot lambda lambert langley league leap_year light_year link liter ln10
long_hundredweight long_ton lumen lux magnetic_flux_quantum maxwell mean_international_ampere
mean_international_ohm mean_international_volt mercury_density_0C mercury_density_32F
mercury_density_60F meter meter_H2O meter_H2O_4C meter_H2O_60F meter_Hg meter_Hg_0C meter_Hg_32F
meter_Hg_60F meter_per_second meter_per_second_squared metric_horsepower metric_ton micron mil
mile mile_per_hour millennium minim minute molar molar_gas_constant mole month nautical_mile
neper neutron_mass newton newtonian_constant_of_gravitation nit nuclear_magneton number_english
number_meter octave oersted ohm oil_barrel ounce parsec particle pascal peak_sun_hour peck
pennyweight percent permille pi pica pint pixel pixels_per_centimeter pixels_per_inch
planck_constant planck_current planck_length planck_mass planck_temperature planck_time point
poise pound pound_force_per_square_inch poundal ppm proton_mass quadrillion_Btu quart quarter
radian rads reciprocal_centimeter refractive_index_unit refrigeration_ton rem
revolutions_per_minute revolutions_per_second reyn rhe rod roentgen rutherford rydberg
rydberg_constant scaled_point scruple second second_radiation_constant shake shot sidereal_day
sidereal_month sidereal_year siemens sievert slinch slug sound_pressure_level speed_of_light
square_degree square_foot square_inch square_league square_mile square_rod square_survey_mile
square_yard standard_atmosphere standard_gravity standard_liter_per_minute statampere statfarad
stathenry statmho statohm stattesla statvolt statweber stefan_boltzmann_constant steradian stere
stilb stokes stone strain survey_foot survey_mile svedberg sverdrup synodic_month tablespoon
tansec teaspoon technical_atmosphere tesla tex tex_cicero tex_didot tex_pica tex_point therm
thermochemical_british_thermal_unit thomson_cross_section thou ton ton_TNT
tonne_of_oil_equivalent torr townsend tropical_month tropical_year troy_ounce troy_pound turn
unified_atomic_mass_unit unit_pole vacuum_permeability vacuum_permittivity volt volt_ampere
von_klitzing_constant water_density_4C water_density_60F watt watt_hour weber week
wien_frequency_displacement_law_constant wien_u wien_wavelength_displacement_law_constant wien_x
x_unit_Cu x_unit_Mo yard year zeta
"""
_PINT_UNIT_ALIASES = """
BDFT BF BTU Btu_iso DPI ECC EC_therm Eh KPH L MPH NeC PPI Phi_0 R_inf UK_bbl UK_bushel UK_cup
UK_fluid_ounce UK_gallon UK_gill UK_horsepower UK_pint UK_pk UK_quart UK_ton_force US_dry_barrel
US_dry_gallon US_dry_pint US_dry_quart US_fluid_dram US_fluid_ounce US_liquid_cup US_liquid_dram
US_liquid_fifth US_liquid_gallon US_liquid_gill US_liquid_ounce US_liquid_quart US_pint US_shot
US_ton_force a0 a_u_action a_u_energy a_u_length a_u_mass abmho acre_feet alpha amp amu
angular_degree angular_minute angular_second apothecary_drachm arc_minute arc_second arcdeg
arcdegree atmosphere atomic_unit_of_action atomic_unit_of_energy atomic_unit_of_length
atomic_unit_of_mass avdp_dram avdp_ounce avdp_pound avoirdupois_dram avoirdupois_ounce
avoirdupois_pound barad barie barrie baryd big_point board_feet bohr_radius bp bps c_0 cal_th
candle celsius centuries characteristic_impedance_of_vacuum circle cubic_feet cycle degC degF
degK degR degRe degreeC degreeF degreeK degreeR degreeRe degree_Kelvin degree_Réaumur
delta_celsius delta_degC delta_degF delta_degRe delta_degreeC delta_degreeF delta_degreeRe
delta_degree_Réaumur delta_fahrenheit delta_reaumur delta_réaumur dot drachm electric_constant
electronvolt enzymeunit eps0 eps_0 epsilon_0 esu fahrenheit feet feetH2O feetH2O_4C feetH2O_60F
feetHg feetHg_0C feetHg_32F feetHg_60F feet_H2O feet_H2O_4C feet_H2O_60F feet_Hg feet_Hg_0C
feet_Hg_32F feet_Hg_60F fluidram footpound force_short_ton force_t ft_H2O ft_H2O_4C ft_H2O_60F
ft_Hg ft_Hg_0C ft_Hg_32F ft_Hg_60F g0 g_n gon gradian gram_force gravitational_constant gravity
hartree_energy hbar hr hydraulic_horsepower imperial_fluid_dram in_H2O in_H2O_4C in_H2O_60F
in_Hg in_Hg_0C in_Hg_32F in_Hg_60F inches inchesH2O inchesH2O_4C inchesH2O_60F inchesHg
inchesHg_0C inchesHg_32F inchesHg_60F inches_H2O inches_H2O_4C inches_H2O_60F inches_Hg
inches_Hg_0C inches_Hg_32F inches_Hg_60F international_feet international_foot
international_inch international_inches international_knot international_mile
international_steam_table_calorie international_yard julian_year k_B kayser kilogram_force
knot_international kt lbt lightyear liquid_cup liquid_gallon liquid_gill liquid_pint
liquid_quart litre long_ton_force lunar_month m_H2O m_H2O_4C m_H2O_60F m_Hg m_Hg_0C m_Hg_32F
m_Hg_60F magnetic_constant metre metric_ton_force mho mil_length millennia molec molecule mu0
mu_0 mu_B mu_N octet ohm_90 ohm_US ohm_it ounce_force ozt pel perch picture_element pole pond
pound_force ppi printers_dpi printers_pica printers_point rankine reaumur revolution réaumur
röntgen sec section short_hundredweight short_ton short_ton_force sigma sigma_e slm slugette
sq_perch sq_pole sqdeg square_feet square_inches statC statcoulomb super_feet super_foot
superficial_feet superficial_foot survey_link t_force thermochemical_calorie ton_force
ton_of_refrigeration tonne us_statute_mile watthour yr °K ångström ørsted Δcelsius ΔdegC ΔdegF
ΔdegRe ΔdegreeC ΔdegreeF ΔdegreeRe Δdegree_Réaumur Δfahrenheit Δreaumur Δréaumur μ ϵ ℓ Å
"""
_PINT_PREFIX_SYMBOLS = """
E Ei G Gi Ki M Mi P Pi Q R T Ti Y Yi Z Zi a c d da deka demi f h k m mc mu n p q r u y z µ μ
"""
_PINT_PREFIX_NAMES = """
atto centi deca deci deka demi exa exbi femto gibi giga hecto kibi kilo mc mebi mega micro milli
mu nano pebi peta pico quecto quetta ronna ronto semi sesqui tebi tera u yobi yocto yotta zebi
zepto zetta μ
"""
