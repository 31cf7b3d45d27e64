"""What every back end does the same way, whatever its numerics: the inputs of a static model
and the names of neural weights (the domain and trough warnings of a run are in results.py).

Each back end calls these, so a modeler gets the same checks and the same words from CasADi and
from Torch; only the numbers are computed differently.
"""
from __future__ import annotations

from typing import Mapping, Optional

import numpy as np

from ..compiler.ir import ModelIR
from ..errors import SimulationError

def static_input_table(ir: ModelIR, table) -> dict[str, np.ndarray]:
    """Static models (docs/language.md §3 "Static models"): every input's values over the rows of
    `table` (a DataFrame or a mapping of columns; None: no columns), model order. An input
    without a column takes its declared default on every row; SimulationError names an input with
    neither; ValueError when the columns have different lengths."""
    table = {} if table is None else table
    columns = set(table.columns) if hasattr(table, "columns") else set(table)
    given = {u.name: np.atleast_1d(np.asarray(table[u.name], dtype=float)).ravel()
             for u in ir.inputs if u.name in columns}
    n = max((len(v) for v in given.values()), default=1)
    out = {}
    for u in ir.inputs:
        if u.name in given:
            if len(given[u.name]) != n:
                raise ValueError(f"input column `{u.name}` has {len(given[u.name])} rows, expected {n}")
            out[u.name] = given[u.name]
        elif u.default is not None:
            out[u.name] = np.full(n, float(u.default))
        else:
            raise SimulationError(f"input `{u.name}` has no data and no default value; "
                                  f"give a column `{u.name}`")
    return out


def check_weight_names(ir: ModelIR, weights: Optional[Mapping]) -> dict:
    """`weights` as a dict; ValueError for names that are not neural terms of the model."""
    weights = dict(weights or {})
    declared = [n.name for n in ir.neurals]
    unknown = sorted(set(weights) - set(declared))
    if unknown:
        raise ValueError(f"unknown neural term(s) {', '.join(unknown)}; the model declares: "
                         f"{', '.join(declared) or 'none'}")
    return weights
