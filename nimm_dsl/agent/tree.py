"""The search tree and the run directory (the RUN_DIR layout of docs/agent.md).

Every node is one candidate model: where it came from (`parent`, `kind`, `change`), its text, its
diagnostics, its status and scores. The tree is written to `tree.json` after every generation,
so a stopped run resumes without repeating finished nodes.
"""
from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

from ..runtime.files import json_safe, write_text_atomic

# Node statuses: the candidate pipeline's stages, then the scoring's.
FINISHED = ("ok", "check_failed", "bind_failed", "probe_failed", "fit_failed", "simulate_failed",
            "timeout", "no_reply", "duplicate")


@dataclass
class Node:
    id: int
    parent: Optional[int]
    kind: str  # "propose" (a branch root) | "refine" (an LLM edit) | "law" (a standard-law sibling)
    change: str  # what this node changed, in words
    source: str
    status: str = "pending"
    diagnostics: list = field(default_factory=list)  # LANGUAGE.md §8 objects, every attempt's last
    attempts: list = field(default_factory=list)  # the candidate pipeline's stages per version
    scores: dict = field(default_factory=dict)
    params: dict = field(default_factory=dict)
    stderr: dict = field(default_factory=dict)
    units: dict = field(default_factory=dict)
    labels: dict = field(default_factory=dict)  # param -> ["at its upper bound", ...] (FitResult.labels)
    warnings: list = field(default_factory=list)
    residuals: dict = field(default_factory=dict)
    noise: dict = field(default_factory=dict)
    scenarios: dict = field(default_factory=dict)
    lets: dict = field(default_factory=dict)  # let -> its shape against its driver (score.py)
    lets_refit: dict = field(default_factory=dict)  # the same from a second fit (another seed)
    error: Optional[str] = None
    prompt_tokens: Optional[int] = None
    seconds: float = 0.0  # language-model and scoring time (a timing field: not compared)
    generation: int = 0
    branch: int = 0  # the id of the branch root
    children: list = field(default_factory=list)

    @property
    def score(self) -> float:
        value = self.scores.get("validation")
        return float("inf") if value is None or self.status != "ok" else float(value)


class Tree:
    def __init__(self, nodes: Optional[list[Node]] = None, llm_calls: int = 0):
        self.nodes: list[Node] = nodes or []
        self.llm_calls = llm_calls

    def add(self, parent: Optional[int], kind: str, change: str, source: str, generation: int) -> Node:
        node = Node(len(self.nodes), parent, kind, change, source, generation=generation)
        node.branch = node.id if parent is None else self.nodes[parent].branch
        self.nodes.append(node)
        if parent is not None:
            self.nodes[parent].children.append(node.id)
        return node

    def scored(self) -> list[Node]:
        """Nodes that fitted, best first (ties by id: deterministic)."""
        return sorted((n for n in self.nodes if n.status == "ok"), key=lambda n: (n.score, n.id))

    def best(self) -> Optional[Node]:
        scored = self.scored()
        return scored[0] if scored else None

    def find_duplicate(self, source: str, before: int) -> Optional[Node]:
        key = normalized(source)
        for node in self.nodes[:before]:
            if node.status != "duplicate" and normalized(node.source) == key:
                return node
        return None

    # ---------------------------------------------------------------- files
    def save(self, run_dir: Path) -> None:
        nodes_dir = run_dir / "nodes"
        nodes_dir.mkdir(parents=True, exist_ok=True)
        for node in self.nodes:
            path = nodes_dir / f"{node.id:03d}.nimm"
            if node.source and not path.exists():
                write_text_atomic(path, node.source)
        payload = {"llm_calls": self.llm_calls, "nodes": [_node_json(n) for n in self.nodes]}
        write_text_atomic(run_dir / "tree.json", json.dumps(payload, indent=1, allow_nan=False) + "\n")

    @classmethod
    def load(cls, run_dir: Path) -> "Tree":
        payload = json.loads((run_dir / "tree.json").read_text(encoding="utf-8"))
        fields = set(Node.__dataclass_fields__)
        nodes = [Node(**{k: v for k, v in entry.items() if k in fields}) for entry in payload["nodes"]]
        for node in nodes:
            if node.scores.get("validation") is None and node.status == "ok":
                node.scores["validation"] = None
        return cls(nodes, int(payload.get("llm_calls", 0)))


def _node_json(node: Node) -> dict:
    return json_safe(asdict(node))


_COMMENT = re.compile(r"#.*$", re.MULTILINE)


def normalized(source: str) -> str:
    """The model text up to comments, spacing, blank lines and statement order (the language is
    order-independent): two candidates with the same normalised text are one model."""
    units, block = [], None  # a scenario block stays one unit: its lines belong to it
    for line in _COMMENT.sub("", source).splitlines():
        squeezed = " ".join(line.split())
        if not squeezed:
            continue
        if block is not None:
            block.append(squeezed)
            if squeezed == "end":
                units.append("\n".join(block))
                block = None
        elif squeezed.startswith("scenario "):
            block = [squeezed]
        else:
            units.append(squeezed)
    if block is not None:
        units.append("\n".join(block))
    return "\n".join(sorted(units))
