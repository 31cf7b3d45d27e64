"""Data of the `lynx_hare` benchmark task: writes data/lynx_hare_*.csv (deterministic).

Real data, nothing simulated: the Hudson's Bay Company lynx and hare pelt records, 1900-1920, in
thousands of pelts (examples/data/hudson_bay_lynx_hare.csv; sources in ../README.md). This script
only splits the table: train 1900-1915, test 1916-1920. The true mechanism is unknown.

Run: .venv/bin/python benchmarks/tasks/simulators/lynx_hare.py [OUTDIR]  (default: ../data)
"""
from __future__ import annotations

import sys
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parent))  # the shared tables.py beside this file
from tables import write_tables  # noqa: E402

SOURCE = Path(__file__).resolve().parents[3] / "examples" / "data" / "hudson_bay_lynx_hare.csv"
LAST_TRAIN_YEAR = 1915


def build() -> dict[str, str]:
    """File name -> CSV text of every table of the task."""
    header, *rows = SOURCE.read_text().strip().splitlines()
    assert header == "year,hare,lynx", header
    train = [r for r in rows if int(r.split(",")[0]) <= LAST_TRAIN_YEAR]
    test = [r for r in rows if int(r.split(",")[0]) > LAST_TRAIN_YEAR]
    return {"lynx_hare_train.csv": "\n".join([header] + train) + "\n",
            "lynx_hare_test.csv": "\n".join([header] + test) + "\n"}


if __name__ == "__main__":
    write_tables(build)
