"""The package's phases import only downwards (docs/architecture.md): a module may import its own
layer or a lower one, never a later phase. Function-level (lazy) imports count too."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "nimm_dsl"

# Lower number = lower layer. Each module is ranked by its longest matching prefix.
LAYERS = {
    "nimm_dsl.diagnostics": 0,
    "nimm_dsl.errors": 0,
    "nimm_dsl.grammar": 1,
    "nimm_dsl.compiler": 2,
    "nimm_dsl.backends": 3,
    "nimm_dsl.runtime": 4,
    "nimm_dsl.api": 5,
    "nimm_dsl": 9,  # the package's __init__: the public surface, re-exports from every layer
    "nimm_dsl.tasks": 6,
    "nimm_dsl.llm": 6,
    "nimm_dsl.agent": 7,
    "nimm_dsl.cli": 8,
}


def layer(module: str) -> int:
    if module == "nimm_dsl":
        return LAYERS[module]
    best = max((p for p in LAYERS if p != "nimm_dsl" and (module == p or module.startswith(p + "."))),
               key=len)
    return LAYERS[best]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported_modules(path: Path):
    """(line, absolute module name) for every import of the package in the file."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.startswith("nimm_dsl"):
                if node.module is None:  # `from . import x`: each x is a module or a name
                    for alias in node.names:
                        yield node.lineno, f"{target}.{alias.name}"
                else:
                    yield node.lineno, target
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("nimm_dsl"):
                    yield node.lineno, alias.name


MODULES = sorted(PACKAGE.rglob("*.py"))


@pytest.mark.parametrize("path", MODULES, ids=lambda p: module_name(p))
def test_imports_point_down(path):
    name = module_name(path)
    upward = [f"line {line}: {target} (layer {layer(target)})"
              for line, target in imported_modules(path) if layer(target) > layer(name)]
    assert not upward, f"{name} (layer {layer(name)}) imports a later phase: " + "; ".join(upward)


def test_the_bottom_layer_imports_nothing_from_the_package():
    for path in (PACKAGE / "diagnostics.py",):
        assert list(imported_modules(path)) == []


def test_the_checker_catches_an_upward_import():
    """The test above can fail: an upward import in a grammar module is found."""
    fake = PACKAGE / "grammar" / "_layer_probe.py"
    try:
        fake.write_text("def f():\n    from ..runtime import fit\n")
        found = list(imported_modules(fake))
    finally:
        fake.unlink()
    assert found == [(2, "nimm_dsl.runtime")]
    assert layer("nimm_dsl.runtime") > layer("nimm_dsl.grammar._layer_probe")
