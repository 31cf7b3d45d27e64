"""The agent on benchmark tasks with a real language model, and two ablations (issue: agent part 2).

    .venv/bin/python benchmarks/agent_runs.py --endpoint http://127.0.0.1:8765/v1 --llm bridge \
        --budget 6 --out runs/bench benchmarks/tasks/oncology.toml benchmarks/tasks/misspecified.toml

Variants, each a fresh run per task:
  full           the agent as shipped: check + data binding + probe feedback, search, standard laws
  no-feedback    repairs from the checker alone (no binding, no probe diagnostics)
  one-candidate  no search: the first proposal and its repairs only

For every run: the share of the language model's candidates that ran and fitted, the best
validation score, and `nimm evaluate` of the delivered model (test RMSE and skill, counterfactual
RMSE). The agent itself never reads the held-out tables; the evaluation afterwards does. Prints one
markdown table, recorded in benchmarks/README.md.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

VARIANTS = {
    "full": {},
    "no-feedback": {"feedback": "check"},
    "one-candidate": {"search": False, "laws": False},
}


def first(metrics):
    return next(iter(metrics.values()), {}) if metrics else {}


def fmt(value, digits=3):
    return "—" if value is None else f"{value:.{digits}g}"


def main() -> None:
    import nimm_dsl
    from nimm_dsl.agent import AgentConfig, run_agent
    from nimm_dsl.agent.executor import LocalExecutor
    from nimm_dsl.llm.client import OpenAIClient

    parser = argparse.ArgumentParser()
    parser.add_argument("tasks", nargs="+")
    parser.add_argument("--endpoint", required=True)
    parser.add_argument("--llm", required=True)
    parser.add_argument("--budget", type=int, default=6)
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--out", default="runs/bench")
    parser.add_argument("--timeout", type=float, default=240.0, help="seconds per candidate fit")
    args = parser.parse_args()
    client = OpenAIClient(args.endpoint, args.llm, timeout=3600.0, max_retries=0)
    rows = []
    for task_path in args.tasks:
        task_path = Path(task_path)
        for variant in args.variants.split(","):
            out = Path(args.out) / f"{task_path.stem}.{variant}"
            config = AgentConfig(task_path, out, budget=args.budget, branches=2, expansions=2,
                                 repair_budget=2, **VARIANTS[variant])
            result = run_agent(config, client, LocalExecutor(2, timeout=args.timeout))
            proposed = [n for n in result.tree.nodes if n.kind != "law"]
            fitted = [n for n in proposed if n.status == "ok"]
            report = (nimm_dsl.evaluate(task_path, out / "best.nimm") if result.best else None)
            m = report.metrics if report else {}
            cf = "; ".join(f"{s}: {fmt(first(e).get('rmse'))}" if "error" not in e else f"{s}: {e['error']}"
                           for s, e in (m.get("counterfactual") or {}).items()) or "—"
            plausible = result.plausible.get("scenarios", {}) if result.plausible else {}
            verdicts = ", ".join(f"{s}: {'determined' if e.get('determined') else 'not determined'}"
                                 for s, e in plausible.items()) or "—"
            rows.append(f"| {task_path.stem} | {variant} | {result.tree.llm_calls} | {len(fitted)}/{len(proposed)} | "
                        f"{fmt(result.best.score if result.best else None)} | "
                        f"{fmt(first(m.get('test')).get('rmse'))} | {fmt(first(m.get('test')).get('skill'), 2)} | "
                        f"{cf} | {verdicts} |")
            print(rows[-1], file=sys.stderr, flush=True)
    print("| task | variant | LLM calls | candidates that fit | best validation | test RMSE | test skill | "
          "counterfactual RMSE | agent's verdict |")
    print("|---|---|---|---|---|---|---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
