"""Per-series params (`param V [L] = 30 in [5, 200] per series`, docs/language.md §4): a fit
estimates one value per data series, the other params stay shared.

A fit sees one flat list of estimated params: the shared ones under their names and one copy of
each per-series param per series, named `NAME[LABEL]` (brackets cannot appear in model names, so
the keys never collide). Every simulation of series k reads its own copy: `series_values` maps
the fit's values to the model's param names for one series. A table without a `series` column
is one series, and a per-series param is then estimated once under its own name.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Mapping, Optional

from ..compiler.ir import ModelIR, ParamIR
from ..errors import FitError
from .data import Dataset, Series


def series_key(name: str, label: Optional[str]) -> str:
    return name if label is None else f"{name}[{label}]"


def estimated_params(ir: ModelIR, dataset: Optional[Dataset] = None) -> list[ParamIR]:
    """The estimated params of a fit of `ir` to `dataset`: shared ones, then each per-series param
    once per series (same bounds and default). Without a dataset: the model's params."""
    shared = [p for p in ir.params if p.estimate and not (p.per_series and dataset is not None)]
    if dataset is None:
        return shared
    per_series = [p for p in ir.params if p.estimate and p.per_series]
    if per_series:
        _check_sigmas(ir, per_series)
    return shared + [replace(p, name=series_key(p.name, s.label)) for p in per_series for s in dataset.series]


def series_values(ir: ModelIR, values: Mapping, series: Series) -> dict:
    """The values of the model's params for one series: a per-series param takes its series'
    copy where the fit has one (else its shared value or default)."""
    out = {p.name: values[p.name] for p in ir.params if p.name in values}
    for p in ir.params:
        key = series_key(p.name, series.label)
        if p.per_series and key in values:
            out[p.name] = values[key]
    return out


def by_series(ir: ModelIR, values: Mapping, dataset: Dataset) -> dict:
    """{param: {series label: value}} of the per-series params a fit estimated (FIT.json)."""
    out = {}
    for p in ir.params:
        if p.per_series and p.estimate:
            found = {s.label: values[series_key(p.name, s.label)] for s in dataset.series
                     if s.label is not None and series_key(p.name, s.label) in values}
            if found:
                out[p.name] = found
    return out


def _check_sigmas(ir: ModelIR, per_series) -> None:
    symbols = {p.symbol for p in per_series}
    for o in ir.observes:
        if o.sigma is not None and o.sigma.free_symbols & symbols:
            name = next(p.name for p in per_series if p.symbol in o.sigma.free_symbols)
            raise FitError(f"observe `{o.name}`: its sigma uses `{name}`, a per-series param; the noise "
                           "level is shared by every series (declare it without `per series`)")
