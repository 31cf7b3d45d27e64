"""The candidate pipeline: propose -> check -> bind -> probe -> repair (docs/agent.md).

Every model a language model proposes passes through here, for `nimm generate` and for each node
of the agent's search alike. Each stage's diagnostics are recorded; the first stage with errors
sends them back to the language model, until the candidate is clean or its repair budget is
spent. The reply is only ever parsed, checked and simulated by walking its tree: text from a
language model is data, never code. A hostile reply costs bounded time: the client caps its
size, the parser caps statements and diagnostics, and the probe runs in a child process with a
hard timeout.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Optional

from ..diagnostics import Diagnostic, has_errors
from .client import ChatClient, LLMError
from .prompts import extract_model, repair_messages

STAGES = ("reply", "check", "bind", "probe", "clean")


@dataclass
class Attempt:
    """One version of a candidate and where it stopped."""

    source: str
    stage: str  # the first stage that found errors, or "clean"
    diagnostics: list[Diagnostic] = field(default_factory=list)
    error: Optional[str] = None  # a reply that could not be had (LLMError)
    note: str = ""  # what the reply said outside its model block (e.g. the change it made)
    prompt_tokens: Optional[int] = None
    seconds: float = 0.0

    def to_json(self) -> dict:
        return {"stage": self.stage, "diagnostics": [d.to_dict() for d in self.diagnostics],
                "error": self.error, "note": self.note, "prompt_tokens": self.prompt_tokens,
                "seconds": round(self.seconds, 3)}


@dataclass
class Candidate:
    attempts: list[Attempt] = field(default_factory=list)

    @property
    def last(self) -> Optional[Attempt]:
        return self.attempts[-1] if self.attempts else None

    @property
    def source(self) -> str:
        return self.last.source if self.last else ""

    @property
    def diagnostics(self) -> list[Diagnostic]:
        return self.last.diagnostics if self.last else []

    @property
    def stage(self) -> str:
        return self.last.stage if self.last else "reply"

    @property
    def ok(self) -> bool:
        return self.stage == "clean"

    # the names of the first version of this API (`generate_model`)
    @property
    def rounds(self) -> list[Attempt]:
        return self.attempts


def validate(source: str, file: str = "<candidate>", data=None, probe: bool = True,
             probe_timeout: float = 60.0, observes=(), tables=None) -> tuple[str, list[Diagnostic]]:
    """(stage, diagnostics) of one model text: the first stage with errors, or "clean" with
    every warning found on the way. A language model's text may read no `table(...)` file
    unless `tables` (compiler.families.TableAccess) names the files its task provides."""
    from ..api import check, load_source
    from ..compiler.families import NO_TABLES
    from ..errors import ModelError

    tables = NO_TABLES if tables is None else tables
    diagnostics = check(source, file, tables)
    if has_errors(diagnostics):
        return "check", diagnostics
    try:
        model = load_source(source, file, tables)
        model.ir  # lowering problems are the checker's too
    except ModelError as e:
        return "check", diagnostics + list(e.diagnostics)
    if data is not None:
        from ..runtime.binding import bind, missing_observes

        found = bind(model, data) + missing_observes(model, observes)
        diagnostics = diagnostics + found
        if has_errors(found):
            return "bind", diagnostics
    if probe:
        from ..runtime.probe import probe as run_probe

        found = run_probe(model, data=data, timeout=probe_timeout)
        diagnostics = diagnostics + found
        if has_errors(found):
            return "probe", diagnostics
    return "clean", diagnostics


def build_candidate(client: ChatClient, messages: list[dict], task: str, data=None,
                    data_summary: Optional[str] = None, repair_budget: int = 3, probe: bool = True,
                    probe_timeout: float = 60.0, file: str = "<candidate>",
                    on_attempt: Optional[Callable[[Attempt], None]] = None, observes=(),
                    tables=None) -> Candidate:
    """Ask for a model with `messages`, then repair it from its diagnostics at most
    `repair_budget` times (so at most 1 + repair_budget language-model calls). `tables`: the
    files the task provides to `table(...)` (TableAccess; none by default)."""
    candidate = Candidate()
    for _ in range(1 + max(0, repair_budget)):
        started = time.perf_counter()
        try:
            reply = client.complete(messages)
        except LLMError as e:
            attempt = Attempt(candidate.source, "reply", [], error=str(e),
                              seconds=time.perf_counter() - started)
            candidate.attempts.append(attempt)
            if on_attempt:
                on_attempt(attempt)
            break
        source = extract_model(reply)
        stage, diagnostics = validate(source, file, data, probe, probe_timeout, observes, tables)
        usage = getattr(client, "last_usage", None)
        attempt = Attempt(source, stage, diagnostics, note=reply_note(reply),
                          prompt_tokens=getattr(usage, "prompt_tokens", None) if usage else None,
                          seconds=time.perf_counter() - started)
        candidate.attempts.append(attempt)
        if on_attempt:
            on_attempt(attempt)
        if stage == "clean":
            break
        messages = repair_messages(task, source, diagnostics, data_summary, stage)
    return candidate


MAX_NOTE_CHARS = 500


def reply_note(reply: str) -> str:
    """The reply's words outside its fenced model block, shortened (a refinement's `CHANGE:`)."""
    import re

    if "```" not in reply:  # a bare model (a constrained reply): no words around it
        return ""
    outside = re.sub(r"```.*?(```|$)", " ", reply, flags=re.DOTALL)
    text = " ".join(outside.split())
    return text[:MAX_NOTE_CHARS]


def generate_model(task: str, client: ChatClient, max_rounds: int = 3, file: str = "<generated>",
                   data=None, probe: bool = False, data_summary: Optional[str] = None) -> Candidate:
    """The one-candidate case (`nimm generate`): at most `max_rounds` versions."""
    from .prompts import proposal_messages

    messages = proposal_messages(task, data_summary)
    return build_candidate(client, messages, task, data=data, data_summary=data_summary,
                           repair_budget=max(1, max_rounds) - 1, probe=probe, file=file)
