"""The cyclic collector is paused while a model is expanded and lowered (compiler/collector.py),
and left as the caller had it: enabled or disabled, after an error too, across threads."""
from __future__ import annotations

import gc
import os
import threading

import pytest

from nimm_dsl.compiler.check import check_source
from nimm_dsl.compiler.collector import collector_paused
from nimm_dsl.compiler.lower import LoweringError, lower

FAMILY = """model m
time t [day]
index district = 1..{n}
param beta [1/day] = 0.5 in [0, 1]
state I[d in district] [1] = 1
der(I[d]) = -beta * sum(k in district, I[k] / {divisor})
observe y[d in district] [1] = I[d] ~ normal(sigma = 1)
"""


def _pause_in_another_thread() -> tuple[threading.Event, threading.Thread]:
    """A thread that holds a pause until the returned event is set (join the thread after)."""
    inside, release = threading.Event(), threading.Event()

    def other():
        with collector_paused():
            inside.set()
            release.wait(5)

    thread = threading.Thread(target=other)
    thread.start()
    inside.wait(5)
    return release, thread


@pytest.fixture
def collector():
    was = gc.isenabled()
    yield
    gc.enable() if was else gc.disable()


@pytest.mark.parametrize("enabled", [True, False])
def test_lowering_pauses_the_collector_and_restores_the_callers_state(collector, enabled):
    gc.enable() if enabled else gc.disable()
    seen = []
    checked = check_source(FAMILY.format(n=3, divisor="d"))
    original = type(checked)._expanded

    def spy(self):
        seen.append(gc.isenabled())
        return original(self)

    type(checked)._expanded = spy
    try:
        lower(checked)
    finally:
        type(checked)._expanded = original
    assert seen and not any(seen)
    assert gc.isenabled() is enabled


def test_the_state_is_restored_after_a_lowering_error(collector):
    gc.enable()
    # zero only at d - k = 20, which the reduced check does not meet: the whole expansion's E504
    checked = check_source(FAMILY.format(n=25, divisor="(d - k - 20)"))
    with pytest.raises(LoweringError):
        lower(checked)
    assert gc.isenabled()


def test_overlapping_pauses_in_two_threads_end_with_the_collector_on(collector):
    gc.enable()
    release, thread = _pause_in_another_thread()
    with collector_paused():  # begins while the other thread's pause holds: it saw gc off
        release.set()
        thread.join(5)
        assert not gc.isenabled()
    assert gc.isenabled()


def test_compiling_pauses_the_collector_too(collector, monkeypatch):
    import nimm_dsl.backends.casadi_backend as casadi_backend
    from nimm_dsl.backends import compile_ir

    gc.enable()
    ir = lower(check_source(FAMILY.format(n=3, divisor="d")))
    seen = []
    monkeypatch.setattr(casadi_backend, "compile_casadi", lambda ir, **options: seen.append(gc.isenabled()))
    compile_ir(ir, "casadi")
    assert seen == [False] and gc.isenabled()


def test_a_child_forked_while_another_thread_pauses_gets_the_collector_back(collector):
    """runtime/fit/profile.py forks worker processes; a pause held by another thread at that
    moment can never end in the child (the thread is not copied), so its collector is the
    forking thread's: on, as that thread had it."""
    gc.enable()
    release, thread = _pause_in_another_thread()
    try:
        pid = os.fork()
        if pid == 0:  # the child: report and leave at once
            with collector_paused():  # and a pause of its own still works (no lock left held)
                paused = not gc.isenabled()
            os._exit(0 if paused and gc.isenabled() else 1)
        _, status = os.waitpid(pid, 0)
    finally:
        release.set()
        thread.join(5)
    assert os.waitstatus_to_exitcode(status) == 0
    assert gc.isenabled()
