"""`nimm agent`: a tree search over candidate models with fitting in the loop (docs/agent.md).

1. Propose K branches with distinct mechanisms (one language-model conversation each).
2. Make each valid: check, bind to the training table, probe (the candidate pipeline of
   `llm/pipeline.py`), repairing from the diagnostics within a repair budget.
3. Fit and score every valid candidate in a child process (executor.py): validation hold-out,
   estimates, warnings, residual patterns, scenario runs.
4. Reflect and refine: show the language model the best candidates with their scores, residual
   patterns and warnings; ask for one small change to a chosen parent; the reply is a child node.
   Candidates whose let has a standard form get the other standard laws of its role as children,
   fitted without a language-model call (laws.py).
5. Expand best-first with an exploration bonus, one parent per branch first, until the budget of
   language-model calls is spent or the best validation score stops improving.
6. Deliver the best model refitted on the whole training table, and the plausible set with every
   requested scenario under each of its models (plausible.py).

Every decision is made at a generation barrier — after all of a generation's candidates are
scored — from the results in node order, so a run is the same on any executor whatever order
the fits finish in. The agent opens the task file and its training table only: held-out tables
are never read.
"""
from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

from ..llm.client import LLMError
from ..llm.pipeline import build_candidate, validate
from ..llm.prompts import language_guide, proposal_messages, summarize_table, task_text
from ..tasks.task import Task, load_task
from .score import describe_residuals
from .tree import Node, Tree

STAGE_STATUS = {"check": "check_failed", "bind": "bind_failed", "probe": "probe_failed",
                "reply": "no_reply", "clean": "pending"}


@dataclass
class AgentConfig:
    task: Path
    out: Path
    budget: int = 20  # language-model calls, repairs included
    branches: int = 3  # K initial branches
    expansions: int = 2  # refinements asked per generation
    repair_budget: int = 2
    validation: float = 0.2
    seed: int = 0
    patience: int = 2  # generations without improvement before stopping
    probe: bool = True
    probe_timeout: float = 60.0
    exploration: float = 0.3
    laws: bool = True
    backend: Optional[str] = None  # default: the task's [fit] backend
    starts: Optional[int] = None
    # ablations (benchmarks/agent_runs.py): "check" repairs from the checker alone, without the
    # data binding and the probe; search=False stops after the first branch's candidate
    feedback: str = "full"
    search: bool = True


class BudgetSpent(LLMError):
    """The run's budget of language-model calls is spent."""


class RecordingClient:
    """Counts calls against the budget and appends every request and reply to transcript.jsonl."""

    def __init__(self, client, tree: Tree, budget: int, transcript: Path):
        self.client, self.tree, self.budget, self.transcript = client, tree, budget, transcript
        self.last_usage = None

    @property
    def left(self) -> int:
        return max(0, self.budget - self.tree.llm_calls)

    def complete(self, messages: list[dict]) -> str:
        if self.left <= 0:
            raise BudgetSpent("the budget of language-model calls is spent")
        self.tree.llm_calls += 1
        entry = {"call": self.tree.llm_calls, "messages": messages}
        try:
            reply = self.client.complete(messages)
        except LLMError as e:
            entry["error"] = str(e)
            self._append(entry)
            raise
        self.last_usage = getattr(self.client, "last_usage", None)
        entry["reply"] = reply
        self._append(entry)
        return reply

    def _append(self, entry: dict) -> None:
        with open(self.transcript, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(entry) + "\n")


@dataclass
class AgentResult:
    tree: Tree
    best: Optional[Node]
    run_dir: Path
    plausible: dict = field(default_factory=dict)
    stopped_because: str = ""


class Agent:
    def __init__(self, config: AgentConfig, client, executor,
                 progress: Optional[Callable[[str], None]] = None):
        self.config = config
        self.executor = executor
        self.progress = progress or (lambda line: print(line, file=sys.stderr, flush=True))
        self.task: Task = load_task(config.task, read_held_out=False)
        self.backend = config.backend or self.task.fit.backend
        self.starts = config.starts or self.task.fit.starts
        self.run_dir = Path(config.out)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        resuming = (self.run_dir / "tree.json").exists()
        self.tree = Tree.load(self.run_dir) if resuming else Tree()
        self.client = RecordingClient(client, self.tree, config.budget, self.run_dir / "transcript.jsonl")
        self.scenarios = [cf.scenario for cf in self.task.counterfactuals]
        self.task_text = task_text(self.task.description,
                                   [(cf.scenario, cf.description) for cf in self.task.counterfactuals])
        self.summary = summarize_table(self.task.train, self.task.tables)
        self.tables = self.task.table_access()  # what `table(...)` may read in every candidate

    # ---------------------------------------------------------------- the loop
    def run(self) -> AgentResult:
        started = time.perf_counter()
        generation = max((n.generation for n in self.tree.nodes), default=-1)
        if generation < 0:
            generation = 0
            self._propose(generation)
        self._score_pending()  # also what a resumed run left unscored
        self._save()
        best = self._best_score()
        stalled, reason = 0, "budget spent"
        if not self.config.search:
            reason = "no search (one candidate)"
        while self.config.search and self.client.left > 0:
            generation += 1
            if self.tree.best() is None:  # every proposal failed: propose again, told what failed
                self._propose(generation)
                self._score_pending()
                self._save()
                best = self._best_score()
                continue
            made = self._refine(generation)
            if not made:
                reason = "nothing left to expand"
                break
            self._score_pending()
            self._save()
            now = self._best_score()
            if now < best - 1e-12 * max(1.0, abs(best)):
                best, stalled = now, 0
            else:
                stalled += 1
                if stalled >= self.config.patience:
                    reason = f"no improvement in {stalled} generations"
                    break
        from .deliver import deliver

        result = deliver(self, reason)
        self.progress(f"[agent] done in {time.perf_counter() - started:.0f} s: {reason}; "
                      f"{len(self.tree.nodes)} nodes, {self.tree.llm_calls} language-model calls; "
                      f"best node {result.best.id if result.best else 'none'}")
        return result

    def _best_score(self) -> float:
        best = self.tree.best()
        return best.score if best else math.inf

    def _save(self) -> None:
        self.tree.save(self.run_dir)
        best = self.tree.best()
        done = sum(n.status != "pending" for n in self.tree.nodes)
        self.progress(f"[agent] nodes {done}/{len(self.tree.nodes)} done, best "
                      + (f"{best.score:.4g} (node {best.id})" if best else "none yet")
                      + f", language-model calls left {self.client.left}")

    # ---------------------------------------------------------------- proposing
    def _propose(self, generation: int) -> None:
        # a new round of proposals (every earlier one failed) is told what failed and why
        proposed: list[str] = [f"{_headline(n.source) or 'an invalid model'} (it failed: {n.status}"
                               + (f", {_first_line(n.error)}" if n.error else "") + ")"
                               for n in self.tree.nodes if n.parent is None]
        for k in range(self.config.branches if self.config.search else 1):
            if self.client.left <= 0:
                break
            direction = (f"This is proposal {k + 1} of {self.config.branches}: each proposal is a "
                         "different mechanism (a different structure, not other parameter values).")
            if proposed:
                direction += " Already proposed, so choose something else:\n" + "\n".join(
                    f"- {line}" for line in proposed)
            messages = proposal_messages(self.task_text, self.summary, direction)
            node = self._candidate(None, "propose", f"branch {k + 1}", messages, generation)
            proposed.append(_headline(node.source) or f"proposal {k + 1} (invalid)")

    def _candidate(self, parent: Optional[int], kind: str, change: str, messages, generation: int) -> Node:
        file = f"nodes/{len(self.tree.nodes):03d}.nimm"
        full = self.config.feedback == "full"
        candidate = build_candidate(self.client, messages, self.task_text,
                                    data=self.task.train if full else None,
                                    data_summary=self.summary, repair_budget=self.config.repair_budget,
                                    probe=self.config.probe and full,
                                    probe_timeout=self.config.probe_timeout, file=file,
                                    observes=self.task.observes if full else (),
                                    tables=self.tables)
        node = self.tree.add(parent, kind, change, candidate.source, generation)
        node.attempts = [a.to_json() for a in candidate.attempts]
        node.diagnostics = [d.to_dict() for d in candidate.diagnostics]
        node.prompt_tokens = sum(a.prompt_tokens or 0 for a in candidate.attempts) or None
        node.seconds = sum(a.seconds for a in candidate.attempts)
        node.status = STAGE_STATUS[candidate.stage]
        if candidate.last is not None and candidate.last.error:
            node.error = candidate.last.error
        note = candidate.attempts[0].note if candidate.attempts else ""
        if kind == "refine" and note:
            node.change = _change_line(note) or node.change
        elif kind == "propose" and _headline(node.source):
            node.change = f"{change}: {_headline(node.source)[len('model '):]}"
        if node.status == "pending":
            twin = self.tree.find_duplicate(node.source, node.id)
            if twin is not None:
                node.status, node.error = "duplicate", f"the same model as node {twin.id}"
        return node

    # ---------------------------------------------------------------- scoring
    def payload(self, node: Node, validation: Optional[float] = None, noise: Optional[dict] = None,
                full_fit: bool = False, seed: Optional[int] = None) -> dict:
        return {"source": node.source, "file": f"nodes/{node.id:03d}.nimm", "train": str(self.task.train),
                "validation": self.config.validation if validation is None else validation,
                "backend": self.backend, "starts": self.starts,
                "seed": self.config.seed if seed is None else seed,
                "observes": list(self.task.observes) if self.task.observes else None,
                "scenarios": self.scenarios, "noise": noise, "full_fit": full_fit,
                "lets": _shape_lets(node.source, self.tables),
                "tables": self.tables.to_plain() if self.task.tables else None}

    def _score_pending(self) -> None:
        pending = [n for n in self.tree.nodes if n.status == "pending"]
        if pending:
            self._apply(pending, self.executor.map([self.payload(n) for n in pending]))
            # what a neural term learnt is only worth reading if a second fit learns the same
            neural = [n for n in pending if n.status == "ok" and n.lets and "neural " in n.source]
            if neural:
                again = self.executor.map([self.payload(n, seed=self.config.seed + 1) for n in neural])
                for node, result in zip(neural, again):
                    node.lets_refit = result.get("lets") or {} if result.get("status") == "ok" else {}
        if self.config.laws:
            siblings = self._law_siblings()
            if siblings:
                self._apply(siblings, self.executor.map([self.payload(n) for n in siblings]))

    def _apply(self, nodes: list[Node], results: list[dict]) -> None:
        for node, result in zip(nodes, results):
            node.status = result.get("status", "fit_failed")
            node.error = result.get("error")
            for key in ("scores", "params", "stderr", "units", "labels", "warnings", "residuals", "noise",
                        "scenarios", "lets"):
                if key in result:
                    setattr(node, key, result[key])
            node.seconds += float(result.get("seconds") or 0.0)

    def _law_siblings(self) -> list[Node]:
        """Standard-law children of every scored candidate that has none yet (laws.py)."""
        from ..api import load_source
        from .laws import find_role_let, law_siblings

        made = []
        for node in list(self.tree.nodes):
            if node.status != "ok" or node.kind == "law" or any(
                    self.tree.nodes[c].kind == "law" for c in node.children):
                continue
            try:
                model = load_source(node.source, f"nodes/{node.id:03d}.nimm", self.tables)
                role_let = find_role_let(model)
                siblings = law_siblings(model, role_let) if role_let is not None else []
            except Exception:  # noqa: BLE001 - a law we cannot write is a sibling we skip
                continue
            for change, source in siblings:
                child = self.tree.add(node.id, "law", change, source, node.generation)
                stage, diagnostics = validate(source, f"nodes/{child.id:03d}.nimm", self.task.train,
                                              self.config.probe, self.config.probe_timeout,
                                              self.task.observes or (), self.tables)
                child.diagnostics = [d.to_dict() for d in diagnostics]
                child.status = STAGE_STATUS[stage]
                if child.status == "pending" and (twin := self.tree.find_duplicate(source, child.id)):
                    child.status, child.error = "duplicate", f"the same model as node {twin.id}"
                if child.status == "pending":
                    made.append(child)
        return made

    # ---------------------------------------------------------------- refining
    def choose_parents(self) -> list[Node]:
        """Best-first with an exploration bonus: lower priority is better; one parent per branch
        before any branch gets a second. Deterministic (ties by node id)."""
        scored = self.tree.scored()
        if not scored:
            return []
        best = scored[0].score if math.isfinite(scored[0].score) else 1.0
        total = sum(len(n.children) for n in scored) + 1
        scale = abs(best) if best else 1.0

        def priority(node: Node) -> tuple:
            refinements = sum(self.tree.nodes[c].kind == "refine" for c in node.children)
            bonus = self.config.exploration * scale * math.sqrt(math.log(total + 1) / (1 + refinements))
            return (node.score - bonus, node.id)

        ranked = sorted(scored, key=priority)
        chosen, branches = [], set()
        for node in ranked:  # one per branch first
            if node.branch not in branches:
                chosen.append(node)
                branches.add(node.branch)
        for node in ranked:
            if node not in chosen:
                chosen.append(node)
        return chosen[:self.config.expansions]

    def _refine(self, generation: int) -> list[Node]:
        made = []
        for parent in self.choose_parents():
            if self.client.left <= 0:
                break
            messages = self.reflection_messages(parent)
            made.append(self._candidate(parent.id, "refine", "refinement", messages, generation))
        return made

    def reflection_messages(self, parent: Node) -> list[dict]:
        best = self.tree.scored()[:3]
        lines = [f"Candidates so far (each is fitted without the last {self.config.validation:.0%} of each "
                 "series' points and scored on them: validation score = mean over observed quantities of "
                 "that hold-out RMSE divided by the data's spread; lower is better):"]
        for node in best:
            lines.append(f"- node {node.id} ({node.change}): validation {node.score:.4g}"
                         + (f", train RMSE {_fmt_dict(node.scores.get('train_rmse'))}" if node.scores else ""))
        failed = [n for n in self.tree.nodes if n.status not in ("ok", "pending", "duplicate")][-3:]
        for node in failed:
            reason = node.error or next((f"{d['code']} at line {d['line']}: {d['message']}"
                                         for d in node.diagnostics if d.get("severity") == "error"), "")
            lines.append(f"- node {node.id} ({node.change}) failed: {node.status}"
                         + (f" ({_first_line(reason)})" if reason else ""))
        lines.append(f"\nThe model to improve (node {parent.id}, validation {parent.score:.4g}):\n"
                     f"```nimm\n{parent.source}```")
        lines.append("Estimates (± standard error): " + ", ".join(
            _estimate_text(n, v, parent) for n, v in parent.params.items()))
        if parent.warnings:
            lines.append("Fit warnings:\n" + "\n".join(f"- {w}" for w in parent.warnings[:8]))
        binding = [d for d in parent.diagnostics if d.get("code", "").startswith(("W6", "W8"))]
        if binding:  # rule these out first: a fixed initial value far from the data (W606) ...
            lines.append("Checked against the training table and in a short simulation:\n" + "\n".join(
                f"- line {d['line']}: {d['code']} {d['message']}" + (f" ({d['hint']})" if d.get("hint") else "")
                for d in binding[:6]))
        lines.append("Residual patterns (data - model):\n" + "\n".join(
            f"- {describe_residuals(o, p)}" for o, p in parent.residuals.items()))
        for text in describe_lets(parent, self.tree):
            lines.append(text)
        lines.append(
            "Make ONE small, targeted change to this model that addresses the clearest defect above: "
            "change one mechanism (a rate law, a missing compartment or process, an initial value that "
            "should be a param), or replace a poorly fitting term by a neural term that refines a named "
            "`let` (init = zero, hidden = [8]), or replace a neural term by the mechanism its shape "
            "suggests. First write one line `CHANGE: <what you changed and why>`, then the complete "
            "model in one ```nimm fenced block.")
        return [{"role": "system", "content": language_guide()},
                {"role": "user", "content": f"Task:\n{self.task_text}\n\n{self.summary}\n\n" + "\n".join(lines)}]


def describe_lets(node: Node, tree: Tree) -> list[str]:
    """What a let of a standard role or with a neural term does against its driver, over the
    data and under each scenario, with the other laws fitted as siblings."""
    out = []
    for let, shape in (node.lets or {}).items():
        data = shape["data"]
        text = (f"The effective quantity `{let}` against `{shape['driver']}`: over the data "
                f"{shape['driver']} spans {_span(data['driver_range'])} and {let} {_span(data['let_range'])}")
        for scenario, run in shape.get("scenarios", {}).items():
            text += (f"; under scenario `{scenario}` {shape['driver']} spans {_span(run['driver_range'])}"
                     + (" — OUTSIDE the range the data visited" if run.get("outside_data") else ""))
        out.append(text + ".")
        refit = (node.lets_refit or {}).get(let)
        if refit:
            spread = relative_gap(data["pairs"], refit["data"]["pairs"])
            if spread is not None:
                out.append(f"Fitted again from another start, `{let}` differs by at most {spread:.0%} of its "
                           "size over the data" + (" (the two fits agree: the learnt shape is what the data say)"
                                                   if spread < 0.1 else " (the two fits disagree: the data do not pin it down)"))
        law = best_law_for(let, node, tree)
        if law is not None:
            ratio = ratio_range(data["pairs"], law.lets[let]["data"]["pairs"])
            if ratio is not None:
                text = (f"Against the best fitted standard law for `{let}` (node {law.id}, "
                        f"{law.change.split(' (')[0]}): ratio {ratio[0]:.2g} to {ratio[1]:.2g} over the data")
                for scenario, run in shape.get("scenarios", {}).items():
                    theirs = law.lets[let].get("scenarios", {}).get(scenario)
                    r = ratio_range(run["pairs"], theirs["pairs"]) if theirs else None
                    if r is not None:
                        text += (f"; {r[0]:.2g} to {r[1]:.2g} under scenario `{scenario}`"
                                 + (" (outside the data)" if run.get("outside_data") else ""))
                out.append(text)
    siblings = [tree.nodes[c] for c in node.children if tree.nodes[c].kind == "law" and tree.nodes[c].status == "ok"]
    if siblings:
        out.append("Standard laws fitted in place of this let: " + "; ".join(
            f"node {s.id} {s.change.split(' (')[0]}: validation {s.score:.4g}" for s in siblings))
    return out


def _common(a_pairs, b_pairs):
    """Both curves (x, y pairs) on the x values of `a` that lie inside `b`'s x range."""
    import numpy as np

    a, b = np.asarray(a_pairs, float), np.asarray(b_pairs, float)
    if a.ndim != 2 or b.ndim != 2 or len(a) < 2 or len(b) < 2:
        return None
    b = b[np.argsort(b[:, 0])]
    inside = (a[:, 0] >= b[0, 0]) & (a[:, 0] <= b[-1, 0])
    if inside.sum() < 2:
        return None
    x = a[inside, 0]
    return a[inside, 1], np.interp(x, b[:, 0], b[:, 1])


def relative_gap(a_pairs, b_pairs):
    """max |a - b| over the common driver range, relative to the size of a."""
    import numpy as np

    both = _common(a_pairs, b_pairs)
    if both is None:
        return None
    a, b = both
    size = max(float(np.mean(np.abs(a))), 1e-12)
    return float(np.max(np.abs(a - b)) / size)


def ratio_range(a_pairs, b_pairs):
    """(min, max) of a / b over the common driver range, where b is not ~0."""
    import numpy as np

    both = _common(a_pairs, b_pairs)
    if both is None:
        return None
    a, b = both
    keep = np.abs(b) > 1e-9 * max(float(np.max(np.abs(b))), 1e-300)
    if not keep.any():
        return None
    r = a[keep] / b[keep]
    return float(r.min()), float(r.max())


def best_law_for(let: str, node: Node, tree: Tree) -> Optional[Node]:
    """The best-scoring fitted model without neural terms that has a let of the same name."""
    laws = [n for n in tree.scored() if n is not node and let in (n.lets or {}) and "neural " not in n.source]
    return laws[0] if laws else None


def _span(bounds) -> str:
    return f"[{bounds[0]:.3g}, {bounds[1]:.3g}]"


def _estimate_text(name: str, value: float, node: Node) -> str:
    """`beta = 0.68 ± 1.1 [1/day] (at its upper bound; the standard error exceeds the estimate)`:
    what a modeler reads off a fit first, said outright (a language model misses a bound it must
    compare by itself)."""
    se = node.stderr.get(name)
    text = f"{name} = {value:.4g}" + (f" ± {se:.2g}" if se is not None else "")
    text += f" [{node.units[name]}]" if node.units.get(name) else ""
    notes = [label for label in node.labels.get(name, []) if se is not None or "determined" not in label]
    if se is None:
        notes.append("not determined by the data")
    elif abs(se) > abs(value):
        notes.append("the standard error exceeds the estimate: poorly determined by these data")
    return text + (f" ({'; '.join(notes)})" if notes else "")


def _shape_lets(source: str, tables=None) -> list[dict]:
    from ..api import load_source
    from .laws import shape_lets

    try:
        return shape_lets(load_source(source, "<candidate>", tables))
    except Exception:  # noqa: BLE001 - nothing to show is not a failure
        return []


def _headline(source: str) -> str:
    for line in source.splitlines():
        if line.strip().startswith("model "):
            return line.strip()[:160]
    return ""


def _change_line(note: str) -> str:
    import re

    m = re.search(r"CHANGE:\s*(.+?)(?:\s{2,}|$)", note)
    return (m.group(1) if m else note)[:200]


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0][:200] if text and text.strip() else ""


def _fmt_dict(values) -> str:
    if not values:
        return "n/a"
    return ", ".join(f"{k} {v:.4g}" if v is not None else f"{k} n/a" for k, v in values.items())


def run_agent(config: AgentConfig, client, executor, progress=None) -> AgentResult:
    return Agent(config, client, executor, progress).run()
