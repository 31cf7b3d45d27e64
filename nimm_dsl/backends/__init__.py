"""Numeric back ends: the IR -> a simulator (LANGUAGE.md §9 `compile`).

`BACKENDS` is the one registry of back-end names; `compile_ir` is the one place a name becomes a
simulator, and an unknown name is an error everywhere. Each back end's module (and so CasADi or
Torch) is imported on first use only, so that checking a model never loads them.
"""
from __future__ import annotations

from importlib import import_module

from ..compiler.collector import collector_paused

# name -> (module, compile function); both modules implement the contract in results.py/protocol.py
BACKENDS: dict[str, tuple[str, str]] = {
    "casadi": ("nimm_dsl.backends.casadi_backend", "compile_casadi"),
    "torch": ("nimm_dsl.backends.torch_backend", "compile_torch"),
}


class UnknownBackend(ValueError):
    """A back-end name that is not in BACKENDS."""


def check_backend(name: str) -> str:
    if name not in BACKENDS:
        raise UnknownBackend(f"unknown backend `{name}`: choose one of {', '.join(BACKENDS)}")
    return name


def compile_ir(ir, backend: str = "casadi", **options):
    """A simulator for `ir` on the named back end, built with the cyclic garbage collector
    paused (compiler/collector.py: a family model's IR holds 10^5 nodes that every collection
    would walk; that was two thirds of compiling the dense 100-district model)."""
    module, function = BACKENDS[check_backend(backend)]
    with collector_paused():
        return getattr(import_module(module), function)(ir, **options)
