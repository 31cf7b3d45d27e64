"""Data of the `flu_school` benchmark task: writes data/flu_school_*.csv (deterministic).

Real data, nothing simulated: the influenza outbreak in a boys' boarding school in northern
England, 22 January - 4 February 1978 (examples/data/influenza_england_1978_school.csv; sources in
../README.md). This script only splits the table and drops the `date` column (the same
information as `day`): train days 1-8, test days 9-14. The true mechanism is unknown, so the
task's counterfactual has no truth table.

Run: .venv/bin/python benchmarks/tasks/simulators/flu_school.py [OUTDIR]  (default: ../data)
"""
from __future__ import annotations

import sys
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parent))  # the shared tables.py beside this file
from tables import write_tables  # noqa: E402

SOURCE = Path(__file__).resolve().parents[3] / "examples" / "data" / "influenza_england_1978_school.csv"
LAST_TRAIN_DAY = 8


def build() -> dict[str, str]:
    """File name -> CSV text of every table of the task."""
    header, *rows = SOURCE.read_text().strip().splitlines()
    assert header == "day,date,in_bed,convalescent", header
    keep = lambda line: ",".join(c for i, c in enumerate(line.split(",")) if i != 1)
    train = [keep(r) for r in rows if int(r.split(",")[0]) <= LAST_TRAIN_DAY]
    test = [keep(r) for r in rows if int(r.split(",")[0]) > LAST_TRAIN_DAY]
    return {"flu_school_train.csv": "\n".join([keep(header)] + train) + "\n",
            "flu_school_test.csv": "\n".join([keep(header)] + test) + "\n"}


if __name__ == "__main__":
    write_tables(build)
