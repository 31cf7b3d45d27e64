"""The yardstick: every baseline of every task in benchmarks/tasks/, scored by `nimm evaluate`.

Run from the repository root:  .venv/bin/python benchmarks/nimm_tasks.py [TASK ...] [--workers N] [--timeout S]
Prints one markdown table (task × model: status, train RMSE, test RMSE and skill, counterfactual
error, seconds), recorded in benchmarks/README.md. Each evaluation runs in its own process, so
the seconds column is a cold `nimm evaluate` minus the interpreter start.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TASKS = ROOT / "benchmarks" / "tasks"
MODEL_ORDER = ("textbook", "neural", "hybrid", "true")


def evaluate(task: Path, model: Path, timeout: float) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.json"
        try:
            done = subprocess.run([sys.executable, "-m", "nimm_dsl.cli", "evaluate", str(task), str(model),
                                   "--output", str(report)], capture_output=True, text=True, cwd=ROOT,
                                  timeout=timeout)
        except subprocess.TimeoutExpired:
            return {"status": f"not finished in {timeout:g} s", "metrics": {}, "seconds": None}
        if report.exists():
            return json.loads(report.read_text())
        return {"status": f"exit {done.returncode}", "error": done.stderr.strip()[-300:], "metrics": {}}


def first(metrics: dict):
    """The first observed quantity's entry (the tables have one or two)."""
    return next(iter(metrics.values()), {}) if metrics else {}


def fmt(value, digits=3) -> str:
    return "—" if value is None else f"{value:.{digits}g}"


def row(task: str, model: str, report: dict) -> str:
    m = report.get("metrics") or {}
    train, test = first(m.get("train")), first(m.get("test"))
    cf_parts = []
    for scenario, entry in (m.get("counterfactual") or {}).items():
        if "error" in entry:
            cf_parts.append(f"{scenario}: {entry['error']}")
        elif entry:
            e = first(entry)
            cf_parts.append(f"{scenario}: {fmt(e.get('rmse'))} ({fmt(e.get('mean_abs_log_error'), 2)})")
    return (f"| {task} | {model} | {report.get('status')} | {fmt(train.get('rmse'))} | {fmt(test.get('rmse'))} | "
            f"{fmt(test.get('skill'), 2)} | {'; '.join(cf_parts) or '—'} | {fmt(report.get('seconds'), 2)} |")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("tasks", nargs="*", help="task names (default: every TOML in benchmarks/tasks)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds per evaluation")
    args = parser.parse_args()
    tasks = [TASKS / f"{name}.toml" for name in args.tasks] or sorted(TASKS.glob("*.toml"))
    jobs = []
    for task in tasks:
        folder = TASKS / "models" / task.stem
        for name in MODEL_ORDER:
            model = folder / f"{name}.nimm"
            if model.exists():
                jobs.append((task, name, model))
    with ThreadPoolExecutor(args.workers) as pool:
        reports = list(pool.map(lambda job: evaluate(job[0], job[2], args.timeout), jobs))
    print("| task | model | status | train RMSE | test RMSE | test skill | counterfactual RMSE (mean abs log error) | seconds |")
    print("|---|---|---|---|---|---|---|---|")
    for (task, name, _), report in zip(jobs, reports):
        print(row(task.stem, name, report))
        if report.get("status") != "ok" and report.get("error"):
            print(f"|  |  | {report['error'].splitlines()[0][:120]} |  |  |  |  |  |")


if __name__ == "__main__":
    main()
