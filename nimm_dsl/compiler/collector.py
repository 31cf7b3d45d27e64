"""Building a large model without the cyclic garbage collector's pauses.

Expanding and lowering a dense 100-district model creates some 10^5 syntax-tree and sympy nodes
that all stay alive until the simulator is built. Each full collection of the cyclic collector
walks every one of them, and allocating that many objects triggers many collections: measured,
0.3 s of the 1.0 s from model text to simulator. The trees hold no reference cycles, so reference
counting frees whatever is dropped; pausing the collector for those phases loses nothing.

The pause is the library's only change to interpreter state: it is undone on the way out (also on
an error), nests, and counts threads, so the collector is left as the caller had it.
"""
from __future__ import annotations

import gc
import threading
from contextlib import contextmanager
from typing import Iterator

_lock = threading.Lock()
_depth = 0  # pauses in progress, over all threads
_was_enabled = False  # the collector's state when the outermost pause began


@contextmanager
def collector_paused() -> Iterator[None]:
    global _depth, _was_enabled
    with _lock:
        if _depth == 0:
            _was_enabled = gc.isenabled()
            gc.disable()
        _depth += 1
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0 and _was_enabled:
                gc.enable()
