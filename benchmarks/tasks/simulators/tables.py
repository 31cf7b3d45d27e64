"""What every task simulator shares: CSV text from columns, and writing a task's tables."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Callable

import numpy as np

DATA = Path(__file__).resolve().parent.parent / "data"


def table(rows: dict) -> str:
    """CSV text: integers as they are, every other number to 8 significant digits."""
    cols = list(rows)
    arrays = [np.asarray(rows[c]) for c in cols]
    lines = [",".join(cols)]
    for i in range(len(arrays[0])):
        lines.append(",".join(str(a[i]) if a.dtype.kind == "i" else f"{a[i]:.8g}" for a in arrays))
    return "\n".join(lines) + "\n"


def write_tables(build: Callable[[], dict[str, str]], argv=None) -> None:
    """Write build()'s tables into the folder given on the command line (default: ../data)."""
    argv = sys.argv[1:] if argv is None else argv
    outdir = Path(argv[0]) if argv else DATA
    outdir.mkdir(parents=True, exist_ok=True)
    for name, text in build().items():
        (outdir / name).write_text(text)
