"""Ctrl-C that stops a run, even inside a solver that catches it.

CasADi checks for a pending signal inside its callbacks and turns the KeyboardInterrupt into its
own RuntimeError, which a fit counts as a failed start (the fit went on and wrote its result), or
IPOPT returns "User_Requested_Stop", a usable status. So a SIGINT also sets a flag here, and the
fitting loop calls `raise_if_interrupted` after every start, whatever the start returned.
"""
from __future__ import annotations

import contextlib
import signal
import threading

_requested = False


def _on_sigint(signum, frame):
    global _requested
    _requested = True
    raise KeyboardInterrupt


@contextlib.contextmanager
def interruptible():
    """For the duration, Ctrl-C raises KeyboardInterrupt and is remembered (outside the main
    thread, where Python delivers no signals, this does nothing)."""
    global _requested
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _requested = False
    previous = signal.signal(signal.SIGINT, _on_sigint)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def interrupted() -> bool:
    return _requested


def raise_if_interrupted() -> None:
    if _requested:
        raise KeyboardInterrupt
