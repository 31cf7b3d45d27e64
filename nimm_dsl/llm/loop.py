"""Generate, check, repair: ask for a model, check it, feed the diagnostics back until clean.

The model text is only ever parsed and checked here (data, never code), so a generated model
cannot run anything on the machine.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from ..diagnostics import Diagnostic, has_errors
from .client import ChatClient
from .prompts import extract_model, generation_messages, repair_messages


@dataclass
class Round:
    source: str
    diagnostics: list[Diagnostic]


@dataclass
class GenerationResult:
    task: str
    rounds: list[Round] = field(default_factory=list)

    @property
    def source(self) -> str:
        return self.rounds[-1].source if self.rounds else ""

    @property
    def diagnostics(self) -> list[Diagnostic]:
        return self.rounds[-1].diagnostics if self.rounds else []

    @property
    def ok(self) -> bool:
        return bool(self.rounds) and not has_errors(self.diagnostics)


def generate_model(task: str, client: ChatClient, max_rounds: int = 3,
                   file: str = "<generated>") -> GenerationResult:
    """Up to `max_rounds` model versions: the first generated, the rest repairs."""
    from ..api import check

    result = GenerationResult(task)
    messages = generation_messages(task)
    for _ in range(max(1, max_rounds)):
        source = extract_model(client.complete(messages))
        diagnostics = check(source, file)
        result.rounds.append(Round(source, diagnostics))
        if not has_errors(diagnostics):
            break
        messages = repair_messages(task, source, diagnostics)
    return result
