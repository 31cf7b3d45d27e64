"""How often a language model's FIRST proposal for a task binds, probes and fits without errors,
with the first version of the prompt against the current one (issue: agent part 1).

Run from the repository root with a language model behind an OpenAI-compatible endpoint (for
example ../shared/tools/llm_bridge.py answered by a person or another program):

    .venv/bin/python benchmarks/first_proposals.py --endpoint http://127.0.0.1:8765/v1 --llm bridge \
        benchmarks/tasks/epidemic.toml benchmarks/tasks/oncology.toml benchmarks/tasks/misspecified.toml

For every task, both prompts are sent once (old first, then new, each a fresh conversation) and
each reply is taken as it is — no repair round: check, bind to the training table, probe, fit.
Prints one markdown table (recorded in benchmarks/README.md) and keeps the replies in --keep DIR.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# The guide that `nimm generate` sent before the prompts were generated from the package's own
# tables (commit 4537245, nimm_dsl/llm/prompts.py), kept here verbatim as the baseline.
OLD_GUIDE = """\
You write models in the NIMM language (one statement per line, order does not matter).
Statements:
  model NAME "description"                      (first line, exactly once)
  time NAME [unit]                              (once, for dynamic models)
  unit NAME                                     (a new countable unit, e.g. person, cell)
  const NAME [unit] = VALUE                     (fixed)
  param NAME [unit] = VALUE in [LO, HI]         (estimated; always give bounds)
  state NAME [unit] = INIT in [LO, HI]
  input NAME [unit] = DEFAULT [interp step|linear]
  let NAME [unit] = EXPR                        (algebraic helper; unit optional)
  neural NAME(ARG, ...) [unit] = mlp(hidden = [16, 16], activation = tanh, init = zero, penalty = 1e-3)
  der(STATE) = EXPR      or      flow A -> B = RATE   (never both for one state)
  observe NAME [unit] = EXPR ~ normal(sigma = VALUE) | lognormal(sigma = VALUE) | poisson
  dose NAME: STATE += AMOUNT at TIME [every INTERVAL times N]     (*= for a factor)
  set NAME = EXPR [from TIME] [to TIME]         (override a param/const/input in a window)
  scenario NAME "doc" ... end                    (dose / set / remove lines inside)
Units are written in brackets: [1/day], [mg/L], [L/(h*kg)], [1]. A plain number standing alone
in a declaration takes the declared unit; next to names it is dimensionless, so write `5 [day]`.
der(X) must have the unit of X per time unit. Arguments of exp/log/sin/... and of neural calls
must be dimensionless: divide by a reference scale. Built-ins: exp log log10 sqrt abs sin cos tan
tanh min max ifelse(COND, A, B) pi. Reserved words may not be used as names.
Answer with the complete model in one ```nimm fenced block and nothing else."""


def old_messages(task_text: str) -> list[dict]:
    return [{"role": "system", "content": OLD_GUIDE},
            {"role": "user", "content": f"Write a NIMM model for this task:\n{task_text}"}]


def scenarios_defined(source: str, task) -> str:
    """How many of the task's scenarios the proposal defines, e.g. `2/2`."""
    import re

    names = set(re.findall(r"^\s*scenario\s+([A-Za-z_][A-Za-z0-9_]*)", source, re.MULTILINE))
    wanted = [c.scenario for c in task.counterfactuals]
    return f"{sum(w in names for w in wanted)}/{len(wanted)}" if wanted else "-"


def judge(source: str, task) -> tuple[str, str]:
    """(stage reached, detail): check / bind / probe failures, fit_failed, or ok."""
    from nimm_dsl.api import load_source
    from nimm_dsl.errors import NimmError
    from nimm_dsl.llm.pipeline import validate

    stage, diagnostics = validate(source, "proposal.nimm", data=task.train, probe=True)
    if stage != "clean":
        errors = [d for d in diagnostics if d.is_error]
        return stage, ", ".join(sorted({d.code for d in errors}))
    try:
        load_source(source, "proposal.nimm").fit(str(task.train), backend=task.fit.backend,
                                                 starts=task.fit.starts, progress=False)
    except NimmError as e:
        return "fit", str(e).splitlines()[0][:80]
    return "ok", ""


def main() -> None:
    from nimm_dsl.llm.client import OpenAIClient
    from nimm_dsl.llm.prompts import extract_model, proposal_messages, summarize_table, task_text
    from nimm_dsl.tasks import load_task

    parser = argparse.ArgumentParser()
    parser.add_argument("tasks", nargs="+")
    parser.add_argument("--endpoint")
    parser.add_argument("--llm")
    parser.add_argument("--replay", action="store_true",
                        help="judge the replies kept in --keep again instead of asking for new ones")
    parser.add_argument("--keep", default="first_proposals", help="folder for the replies")
    parser.add_argument("--timeout", type=float, default=3600.0)
    args = parser.parse_args()
    keep = Path(args.keep)
    keep.mkdir(parents=True, exist_ok=True)
    if not args.replay and not (args.endpoint and args.llm):
        parser.error("--endpoint and --llm are needed unless --replay")
    client = None if args.replay else OpenAIClient(args.endpoint, args.llm, timeout=args.timeout, max_retries=0)
    rows = []
    for path in args.tasks:
        task = load_task(path, read_held_out=False)
        text = task_text(task.description, [(c.scenario, c.description) for c in task.counterfactuals])
        for prompt, messages in (("old", old_messages(task.description)),
                                 ("new", proposal_messages(text, summarize_table(task.train)))):
            kept = keep / f"{task.name}.{prompt}.txt"
            if args.replay:
                reply = kept.read_text()
            else:
                reply = client.complete(messages)
                kept.write_text(reply)
            source = extract_model(reply)
            stage, detail = judge(source, task)
            rows.append((task.name, prompt, stage, detail, scenarios_defined(source, task)))
            print(f"{task.name} {prompt}: {stage} {detail}", file=sys.stderr, flush=True)
    print("| task | prompt | first proposal | errors | task's scenarios defined |")
    print("|---|---|---|---|---|")
    for name, prompt, stage, detail, defined in rows:
        verdict = "binds, probes and fits" if stage == "ok" else f"fails at {stage}"
        print(f"| {name} | {prompt} | {verdict} | {detail} | {defined} |")
    for prompt in ("old", "new"):
        ok = sum(1 for r in rows if r[1] == prompt and r[2] == "ok")
        total = sum(1 for r in rows if r[1] == prompt)
        print(f"\n{prompt} prompt: {ok} of {total} first proposals bind, probe and fit", end="")
    print()


if __name__ == "__main__":
    main()
