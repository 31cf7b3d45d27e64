"""Chat clients: anything with `complete(messages) -> str` will do.

`OpenAIClient` talks to any OpenAI-compatible `/chat/completions` endpoint (vLLM, llama.cpp server,
SGLang, Ollama, hosted APIs) through the official `openai` SDK. `ScriptedClient` replays fixed
replies for in-process tests and offline pipelines.

The API key comes from `$NIMM_LLM_API_KEY` (or the `api_key` argument). It is sent to the endpoint's
own origin only and never appears in a message: redirects are not followed, a request to any other
origin is refused before it is sent, and plain `http://` is refused for a host other than this
machine unless `allow_insecure=True`. What the server answers is data: the reply text is
validated (a string, not empty, not cut off, not too large) and handed back, never run.
"""
from __future__ import annotations

import importlib
import ipaddress
import json
import os
import time
from dataclasses import dataclass
from importlib import resources
from typing import Iterable, Optional, Protocol
from urllib.parse import urlsplit

from ..errors import NimmError

API_KEY_ENV = "NIMM_LLM_API_KEY"
DEFAULT_TIMEOUT = 120.0  # seconds for one whole call, retries included
DEFAULT_MAX_RETRIES = 2
MAX_REPLY_CHARS = 200_000  # a model file is a few kB; anything near this is not a model
MAX_BODY_BYTES = 4_000_000  # the raw HTTP body, checked while it is read
CONSTRAINTS = ("none", "vllm", "llama-cpp", "sglang")
_NO_KEY = "no-key"  # the SDK insists on some key; servers without auth ignore the header


class ChatClient(Protocol):
    def complete(self, messages: list[dict]) -> str: ...


# ---------------------------------------------------------------- errors (one type per failure)
class LLMError(NimmError):
    """The language model could not be reached or answered in an unexpected form."""


class LLMConfigError(LLMError):
    """The endpoint, key or options cannot be used (nothing was sent)."""


class LLMInsecureEndpoint(LLMConfigError):
    """Plain http:// to a host other than this machine, without allow_insecure (nothing was sent)."""


class LLMConnectionError(LLMError):
    """The endpoint could not be reached."""


class LLMTimeout(LLMError):
    """No complete answer within the call's deadline."""


class LLMHTTPError(LLMError):
    """The endpoint answered with an HTTP error status (`.status`)."""

    def __init__(self, message: str, status: int):
        super().__init__(message)
        self.status = status


class LLMRedirect(LLMHTTPError):
    """The endpoint answered with a redirect, which is not followed (the key would go with it)."""


class LLMBadReply(LLMError):
    """The answer is not a chat completion: not JSON, no choices, content that is not text."""


class LLMEmptyReply(LLMBadReply):
    """The reply text is empty."""


class LLMTruncated(LLMBadReply):
    """The reply was cut off at the token limit (finish_reason `length`)."""


class LLMReplyTooLarge(LLMBadReply):
    """The reply (or the HTTP body) is larger than the cap."""


# ---------------------------------------------------------------- the scripted client
class ScriptedClient:
    """Returns the given replies in order (and records the prompts it was sent)."""

    last_usage = None

    def __init__(self, replies: Iterable[str]):
        self.replies = list(replies)
        self.prompts: list[list[dict]] = []

    def complete(self, messages: list[dict]) -> str:
        self.prompts.append(messages)
        if not self.replies:
            raise LLMError("the scripted client has no replies left")
        return self.replies.pop(0)


# ---------------------------------------------------------------- endpoint and grammar helpers
def is_loopback_host(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_endpoint(url: str, allow_insecure: bool = False) -> str:
    """The base URL without a trailing slash, or LLMConfigError before anything is sent."""
    if not isinstance(url, str) or not url.strip():
        raise LLMConfigError("no endpoint URL given (e.g. http://127.0.0.1:8000/v1)")
    url = url.strip()
    try:
        parts = urlsplit(url)
        host = parts.hostname
        parts.port  # noqa: B018 - raises ValueError for a malformed port
    except ValueError:
        raise LLMConfigError(f"malformed endpoint URL `{_shown(url)}`") from None
    if parts.scheme.lower() not in ("http", "https") or not host:
        raise LLMConfigError(f"the endpoint must be an http:// or https:// URL, got `{_shown(url)}`")
    if parts.username is not None or parts.password is not None:
        raise LLMConfigError(f"the endpoint URL carries credentials; give the key in ${API_KEY_ENV} instead")
    if parts.fragment:
        raise LLMConfigError(f"the endpoint URL has a #fragment: `{_shown(url)}`")
    if parts.scheme.lower() == "http" and not is_loopback_host(host) and not allow_insecure:
        raise LLMInsecureEndpoint(
            f"refusing plain http:// to `{host}`: the key and the prompts would cross the network "
            f"unencrypted. Use https://, or pass --allow-insecure (allow_insecure=True) if you mean it")
    return url.rstrip("/")


def _origin(url) -> tuple[str, str, int]:
    parts = urlsplit(str(url))
    scheme = parts.scheme.lower()
    return scheme, (parts.hostname or "").lower(), parts.port or (443 if scheme == "https" else 80)


def _shown(text: str, limit: int = 200) -> str:
    text = str(text)
    text = text if len(text) <= limit else text[:limit] + "…"
    return "".join(ch if ch.isprintable() else "?" for ch in text)


def generation_grammar(kind: str) -> str:
    """The whole-file generation grammar: `lark` (llguidance's dialect) or `gbnf`."""
    name = {"lark": "nimm_file.lark", "gbnf": "nimm_file.gbnf"}[kind]
    return resources.files("nimm_dsl.grammar").joinpath(name).read_text(encoding="utf-8")


def constraint_body(constrain: str) -> dict:
    """The extra request fields that make a server decode within the generation grammar."""
    if constrain == "none":
        return {}
    if constrain == "vllm":
        return {"structured_outputs": {"grammar": generation_grammar("lark")}}
    if constrain == "llama-cpp":
        return {"grammar": generation_grammar("gbnf")}
    if constrain == "sglang":
        return {"ebnf": generation_grammar("gbnf")}
    raise LLMConfigError(f"unknown constraint `{_shown(constrain)}`; use one of {', '.join(CONSTRAINTS)}")


@dataclass(frozen=True)
class Usage:
    """Token counts the server reported for the last call (None where it did not say)."""

    prompt_tokens: Optional[int] = None
    completion_tokens: Optional[int] = None
    total_tokens: Optional[int] = None


def _count(value) -> Optional[int]:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


# ---------------------------------------------------------------- the HTTP guard
def _http_module():
    """httpx or httpx2: whichever the installed SDK builds its client from."""
    import openai

    for cls in openai.DefaultHttpxClient.__mro__:
        root = cls.__module__.split(".")[0]
        if cls.__name__ == "Client" and root.startswith("httpx"):
            return importlib.import_module(root)
    return importlib.import_module("httpx")  # pragma: no cover - an SDK without the alias


def _guard_transport(http, inner, origin, client: "OpenAIClient"):
    """A transport that sends only to `origin`, within the client's deadline, and reads at most
    MAX_BODY_BYTES. It also drops the headers by which a server could stretch the SDK's retry
    pauses past the deadline (Retry-After) or force retries (x-should-retry)."""

    class _Capped(http.SyncByteStream):
        def __init__(self, stream):
            self.stream = stream

        def __iter__(self):
            size = 0
            for chunk in self.stream:
                size += len(chunk)
                if size > client.max_body_bytes:
                    raise LLMReplyTooLarge(f"the answer from {client.base_url} is larger than "
                                           f"{client.max_body_bytes} bytes; stopped reading")
                client._check_deadline()
                yield chunk

        def close(self):
            self.stream.close()

    class _Guard(http.BaseTransport):
        def handle_request(self, request):
            if _origin(request.url) != origin:
                raise LLMConfigError(
                    f"refusing to send a request to {_shown(_origin(request.url)[1])}: only "
                    f"{client.base_url} receives the key")
            remaining = client._check_deadline()
            timeout = dict(request.extensions.get("timeout") or {})
            request.extensions["timeout"] = {k: remaining if v is None else min(v, remaining)
                                             for k, v in timeout.items()} or {
                "connect": remaining, "read": remaining, "write": remaining, "pool": remaining}
            response = inner.handle_request(request)
            headers = [(k, v) for k, v in response.headers.multi_items()
                       if k.lower() not in ("retry-after", "retry-after-ms", "x-should-retry")]
            return http.Response(response.status_code, headers=headers, stream=_Capped(response.stream),
                                 extensions=response.extensions)

        def close(self):
            inner.close()

    return _Guard()


# ---------------------------------------------------------------- the OpenAI-compatible client
class OpenAIClient:
    """Chat completions from an OpenAI-compatible server through the `openai` SDK.

    `timeout` bounds one whole `complete` call, the SDK's retries (`max_retries`, for connection
    errors, 408/409/429 and 5xx) included: each attempt gets what is left of it, and reading stops
    when it runs out (a retry's back-off pause, at most a few seconds, may overshoot it).
    `constrain` sends the whole-file generation grammar with each request (see CONSTRAINTS).
    After each call, `last_usage` holds the server's token counts (or None).
    """

    def __init__(self, base_url: str, model: str, *, api_key: Optional[str] = None,
                 timeout: float = DEFAULT_TIMEOUT, max_retries: int = DEFAULT_MAX_RETRIES,
                 temperature: Optional[float] = 0.0, max_tokens: Optional[int] = None,
                 constrain: str = "none", allow_insecure: bool = False,
                 max_reply_chars: int = MAX_REPLY_CHARS, max_body_bytes: int = MAX_BODY_BYTES):
        self.base_url = check_endpoint(base_url, allow_insecure)
        if not isinstance(model, str) or not model.strip():
            raise LLMConfigError("no model name given (--llm NAME)")
        if not timeout > 0 or max_retries < 0:
            raise LLMConfigError("the timeout must be positive and max_retries not negative")
        self.model = model
        self.timeout = float(timeout)
        self.max_retries = int(max_retries)
        self.temperature = temperature
        self.max_tokens = max_tokens
        self.constrain = constrain
        self.extra_body = constraint_body(constrain)
        self.max_reply_chars = max_reply_chars
        self.max_body_bytes = max_body_bytes
        self.last_usage: Optional[Usage] = None
        self._deadline = float("inf")
        key = api_key if api_key is not None else os.environ.get(API_KEY_ENV)
        self._key = key.strip() if key and key.strip() else None

        import openai  # only `nimm generate` pays for the SDK

        http = _http_module()
        transport = _guard_transport(http, http.HTTPTransport(), _origin(self.base_url), self)
        # Our own HTTP client: no redirects (the SDK's default follows them, key included) and
        # the guard above; no proxy or netrc credentials from the environment.
        self._http = http.Client(transport=transport, follow_redirects=False, trust_env=False,
                                 timeout=self.timeout)
        omit = openai.Omit()
        # Explicit headers: our key or none, and nothing the SDK would read from OPENAI_* variables
        # (organization, project, custom Authorization) goes to this endpoint.
        headers = {"Authorization": f"Bearer {self._key}" if self._key else omit,
                   "OpenAI-Organization": omit, "OpenAI-Project": omit}
        self._sdk = openai.OpenAI(base_url=self.base_url, api_key=self._key or _NO_KEY,
                                  timeout=self.timeout, max_retries=self.max_retries,
                                  default_headers=headers, http_client=self._http)

    def __repr__(self) -> str:
        return f"OpenAIClient({self.base_url!r}, model={self.model!r}, constrain={self.constrain!r})"

    def close(self) -> None:
        self._sdk.close()

    # -- deadline
    def _check_deadline(self) -> float:
        remaining = self._deadline - time.monotonic()
        if remaining <= 0:
            raise LLMTimeout(f"no complete answer from {self.base_url} within {self.timeout:g} s")
        return remaining

    def _redact(self, text: str) -> str:
        return text.replace(self._key, "***") if self._key else text

    # -- one call
    def complete(self, messages: list[dict]) -> str:
        import openai

        self.last_usage = None
        request = {"model": self.model, "messages": messages}
        if self.temperature is not None:
            request["temperature"] = self.temperature
        if self.max_tokens is not None:
            request["max_tokens"] = self.max_tokens
        if self.extra_body:
            request["extra_body"] = self.extra_body
        if not self._key:  # the SDK wants the missing Authorization omitted on each request
            request["extra_headers"] = {"Authorization": openai.Omit()}
        self._deadline = time.monotonic() + self.timeout
        try:
            raw = self._sdk.chat.completions.with_raw_response.create(**request)
            body = raw.http_response.content
        except LLMError as e:
            raise type(e)(*self._redacted_args(e)) from None
        except openai.APIStatusError as e:
            raise self._status_error(e) from None
        except openai.APITimeoutError:
            raise LLMTimeout(f"no complete answer from {self.base_url} within {self.timeout:g} s") from None
        except openai.APIConnectionError as e:
            cause = e.__cause__
            if isinstance(cause, LLMError):  # raised by the guard, wrapped by older SDKs
                raise type(cause)(*self._redacted_args(cause)) from None
            reason = f": {_shown(self._redact(str(cause)))}" if cause is not None else ""
            raise LLMConnectionError(f"cannot reach the language model at {self.base_url}{reason}") from None
        except openai.OpenAIError as e:
            raise LLMError(f"the request to {self.base_url} failed: {_shown(self._redact(str(e)))}") from None
        finally:
            self._deadline = float("inf")
        return self._reply_text(body)

    def _redacted_args(self, error: LLMError) -> tuple:
        if isinstance(error, LLMHTTPError):
            return self._redact(str(error)), error.status
        return (self._redact(str(error)),)

    def _status_error(self, e) -> LLMHTTPError:
        status = e.status_code
        response = e.response
        if 300 <= status < 400:
            location = response.headers.get("location", "")
            return LLMRedirect(
                f"{self.base_url} answered {status} with a redirect to `{_shown(self._redact(location))}`; "
                f"redirects are not followed (the key would go along): give the final URL as the endpoint",
                status)
        try:
            detail = response.text
        except Exception:  # noqa: BLE001 - an undecodable body says nothing more
            detail = ""
        detail = _shown(self._redact(" ".join(detail.split())), 300)
        hint = {401: " (is $NIMM_LLM_API_KEY right?)", 404: " (is the model name or the /v1 base URL right?)"}
        return LLMHTTPError(f"{self.base_url} answered HTTP {status}{hint.get(status, '')}"
                            + (f": {detail}" if detail else ""), status)

    def _reply_text(self, body: bytes) -> str:
        where = f"the answer from {self.base_url}"
        try:
            payload = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            raise LLMBadReply(f"{where} is not JSON") from None
        if not isinstance(payload, dict):
            raise LLMBadReply(f"{where} is not a JSON object")
        usage = payload.get("usage")
        if isinstance(usage, dict):
            self.last_usage = Usage(_count(usage.get("prompt_tokens")), _count(usage.get("completion_tokens")),
                                    _count(usage.get("total_tokens")))
        choices = payload.get("choices")
        if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
            raise LLMBadReply(f"{where} has no choices")
        choice = choices[0]
        message = choice.get("message")
        content = message.get("content") if isinstance(message, dict) else None
        if not isinstance(content, str):
            raise LLMBadReply(f"{where} has no text in choices[0].message.content "
                              f"(found {type(content).__name__})")
        if len(content) > self.max_reply_chars:
            raise LLMReplyTooLarge(f"{where} is {len(content)} characters long; the cap is {self.max_reply_chars}")
        if choice.get("finish_reason") == "length":
            raise LLMTruncated(f"{where} was cut off at the token limit (finish_reason `length`); "
                               f"allow more tokens or ask for a smaller model")
        if not content.strip():
            raise LLMEmptyReply(f"{where} is empty")
        return content

