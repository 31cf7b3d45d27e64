"""Numeric back ends: the IR -> a simulator (LANGUAGE.md §9 `compile`).

`BACKENDS` is the one registry of back-end names; `compile_ir` is the one place a name becomes a
simulator, and an unknown name is an error everywhere. Each back end's module (and so CasADi or
Torch) is imported on first use only, so that checking a model never loads them.
"""
from __future__ import annotations

from importlib import import_module

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
    """A simulator for `ir` on the named back end."""
    module, function = BACKENDS[check_backend(backend)]
    return getattr(import_module(module), function)(ir, **options)
