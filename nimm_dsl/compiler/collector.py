"""Building a large model without the cyclic garbage collector's pauses.

Expanding and lowering a dense 100-district model creates some 10^5 syntax-tree and sympy nodes
that all stay alive until the simulator is built. Each full collection of the cyclic collector
walks every one of them, and allocating that many objects triggers many collections: measured,
0.3 s of the 1.0 s from model text to simulator. The trees hold no reference cycles, so reference
counting frees whatever is dropped; pausing the collector for those phases loses nothing.

The pause is the library's only change to interpreter state: it is undone on the way out (also on
an error), nests, and counts threads, so the collector is left as the caller had it. A process
forked meanwhile (runtime/fit/profile.py's workers) keeps only the forking thread's pauses: the
others' threads are not copied, so they could never end there.
"""
from __future__ import annotations

import gc
import os
import threading
from contextlib import contextmanager
from typing import Iterator

_lock = threading.Lock()
_depths: dict[int, int] = {}  # thread -> its pauses in progress
_was_enabled = False  # the collector's state when the outermost pause began


@contextmanager
def collector_paused() -> Iterator[None]:
    global _was_enabled
    me = threading.get_ident()
    with _lock:
        if not _depths:
            _was_enabled = gc.isenabled()
            gc.disable()
        _depths[me] = _depths.get(me, 0) + 1
    try:
        yield
    finally:
        with _lock:
            _depths[me] -= 1
            if not _depths[me]:
                del _depths[me]
            if not _depths and _was_enabled:
                gc.enable()


def _in_forked_child() -> None:
    global _lock
    _lock = threading.Lock()  # another thread may have held it at the fork
    me = threading.get_ident()
    for thread in [t for t in _depths if t != me]:
        del _depths[thread]
    if not _depths and _was_enabled:
        gc.enable()


os.register_at_fork(after_in_child=_in_forked_child)
