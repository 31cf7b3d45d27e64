"""The value of every input at the output times, as the model sees it (data or default, then the
set lines in force), for the columns of a simulation table."""
from __future__ import annotations

from typing import Mapping, Optional

import numpy as np

from ..backends.protocol import build_protocol
from ..compiler.ir import ModelIR, walk
from .fit.loss import array_walk_ops


def input_values(ir: ModelIR, times, scenario: Optional[str] = None, inputs: Optional[Mapping] = None,
                 params: Optional[Mapping] = None) -> dict:
    """{input name: values over `times`} for a dynamic model. An input whose set value depends
    on something other than params, consts and the input itself (a state, say) is left out."""
    if ir.is_static or not ir.inputs:
        return {}
    protocol = build_protocol(ir, times, scenario, inputs)
    values = {p.symbol: float((params or {}).get(p.name, p.default)) for p in ir.params}
    ops = array_walk_ops(np, lambda v: np.asarray(v, dtype=float))
    out = {u.name: np.full(len(protocol.output_times), np.nan) for u in ir.inputs}
    skipped = set()
    for seg in protocol.segments:
        t = protocol.output_times[seg.out_idx]
        if t.size == 0:
            continue
        for k, u in enumerate(ir.inputs):
            a, b = seg.input_coef[k]
            value = a + b * t
            env = values | {u.coef[0]: a, u.coef[1]: b, u.symbol: value, ir.time: t}
            for i, s in enumerate(ir.sets):  # in order: a later line wins
                if s.target == u.name and seg.flags[i] > 0.5:
                    try:
                        value = np.broadcast_to(walk(s.expr, env, ops), t.shape).astype(float)
                    except KeyError:
                        skipped.add(u.name)
            out[u.name][seg.out_idx] = value
    return {k: v for k, v in out.items() if k not in skipped}
