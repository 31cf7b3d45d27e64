"""Chat clients: anything with `complete(messages) -> str` will do.

`OpenAICompatibleClient` speaks the common `/chat/completions` JSON protocol over HTTP with the
standard library (no extra dependency); `ScriptedClient` replays fixed replies for tests and
offline pipelines.
"""
from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from typing import Iterable, Optional, Protocol

from ..errors import NimmError


class ChatClient(Protocol):
    def complete(self, messages: list[dict]) -> str: ...


class LLMError(NimmError):
    """The language model could not be reached or answered in an unexpected form."""


class ScriptedClient:
    """Returns the given replies in order (and records the prompts it was sent)."""

    def __init__(self, replies: Iterable[str]):
        self.replies = list(replies)
        self.prompts: list[list[dict]] = []

    def complete(self, messages: list[dict]) -> str:
        self.prompts.append(messages)
        if not self.replies:
            raise LLMError("the scripted client has no replies left")
        return self.replies.pop(0)


class OpenAICompatibleClient:
    def __init__(self, base_url: str, model: str, api_key: Optional[str] = None,
                 timeout: float = 120.0, temperature: float = 0.0):
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model = model
        self.api_key = api_key if api_key is not None else os.environ.get("NIMM_LLM_API_KEY")
        self.timeout = timeout
        self.temperature = temperature

    def complete(self, messages: list[dict]) -> str:
        body = json.dumps({"model": self.model, "messages": messages,
                           "temperature": self.temperature}).encode()
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        request = urllib.request.Request(self.url, data=body, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                payload = json.loads(response.read().decode("utf-8"))
        except (urllib.error.URLError, TimeoutError, OSError) as e:
            raise LLMError(f"cannot reach the language model at {self.url}: {e}") from None
        except json.JSONDecodeError:
            raise LLMError(f"the language model at {self.url} did not answer with JSON") from None
        try:
            return payload["choices"][0]["message"]["content"]
        except (KeyError, IndexError, TypeError):
            raise LLMError(f"unexpected answer from {self.url}: no choices[0].message.content") from None
